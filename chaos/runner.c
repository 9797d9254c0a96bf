/*
 * runner.c: tally-chaos, the Jepsen-style run against three real tallyd processes.
 *
 *   tally-chaos --cluster FILE --duration SECONDS [--seed N] [--workers N] [--rate N] [--smoke]
 *               [--nemeses all|KIND,...] [--faults SCRIPT]
 *
 * FILE is written by chaos/run.sh, which made the network namespaces, the bridge, the
 * veth pairs and the tmpfs data dirs and removes them again whatever happens; this
 * program touches only what that file names. The main thread owns the tallyd processes
 * (they die with it: PR_SET_PDEATHSIG) and is the nemesis: it injects one fault at a
 * time, drawn from shuffled rounds of every kind so each kind comes up equally often,
 * holds it for a random time and heals it. Worker threads (workload.c) play gateways the
 * whole time. At the end the runner heals everything, waits for the replicas to converge,
 * writes the final state of every node to final.txt, replays a sample of ids, and stops
 * the nodes. It judges nothing: tally-chaos-check does (check.c).
 *
 * Faults (history `N` lines, see chaos.h and docs/chaos.md):
 *   kill       SIGKILL a node (the leader 60% of the time), restart it after 0.2-3 s
 *   pause      SIGSTOP a node (the leader 60%), SIGCONT after 1-6 s
 *   partition  drop packets between nodes with `ip rule ... blackhole` on the receiving
 *              side: isolate the leader, isolate a random node (majority/minority), a
 *              bridge (two nodes that see only the third), or take one node's veth down
 *   disk       shrink a node's tmpfs data dir to what it holds (ENOSPC on its next
 *              growth); it must stop (exit 74) or keep serving correctly; then give
 *              the size back (sometimes more) and restart it
 *   clock      shift a node's clock (the leader 60%) by +-3..20 s through its
 *              --debug-clock-offset-file, then back to 0
 *   member     remove a node from the Raft configuration, stop it, wipe its data dir,
 *              restart it with --join and add it back (each step confirmed committed
 *              before the next: wiping a node that is still a voter would be an
 *              operator's error, not the system's)
 */
#define _GNU_SOURCE
#include "chaos.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

enum nemesis { NEM_KILL, NEM_PAUSE, NEM_PARTITION, NEM_DISK, NEM_CLOCK, NEM_MEMBER, NEM_COUNT };

static struct tally *ctl; /* admin client: status, membership, setup */
static uint64_t rng;
static volatile sig_atomic_t interrupted;
static bool cut[CH_NODES][CH_NODES];
static bool link_down[CH_NODES];
static int64_t tmpfs_mb[CH_NODES];
static int faults[NEM_COUNT];
static bool enabled[NEM_COUNT] = {true, true, true, true, true, true};
static bool bootstrapped; /* after the first start every start uses --join */
/* Scripted faults (--faults): the next fault's node index, partition kind and clock
 * offset; -1 / 0 when the nemesis chooses. */
static int forced_target = -1;
static int forced_sub = -1;
static int64_t forced_offset;

/* ---- Shell commands on what run.sh created. ---- */

__attribute__((format(printf, 1, 2))) static int sh(const char *fmt, ...)
{
    char cmd[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof(cmd), fmt, ap);
    va_end(ap);
    int rv = system(cmd);
    if (rv != 0) {
        ch_log("command failed (%d): %s", rv, cmd);
    }
    return rv;
}

/* ---- Nodes. ---- */

static void hold_ms(int64_t ms);

static void node_spawn(struct ch_node *n, bool join)
{
    char id[16], peer[64], client[64], http[64], members[512] = "";
    for (int m = 0; m < CH_NODES; m++) {
        size_t len = strlen(members);
        snprintf(members + len, sizeof(members) - len, "%s%d=%s:%d/%s:%d", m > 0 ? "," : "",
                 ch.nodes[m].id, ch.nodes[m].ip, CH_PEER_PORT, ch.nodes[m].ip, CH_CLIENT_PORT);
    }
    snprintf(id, sizeof(id), "%d", n->id);
    snprintf(peer, sizeof(peer), "%s:%d", n->ip, CH_PEER_PORT);
    snprintf(client, sizeof(client), "%s:%d", n->ip, CH_CLIENT_PORT);
    snprintf(http, sizeof(http), "%s:%d", n->ip, CH_HTTP_PORT);
    char *argv[] = {ch.tallyd, "--id", id, "--data-dir", n->dir, "--peer-listen", peer,
                    "--client-listen", client, "--http-listen", http, "--members", members,
                    "--token-file", ch.token_file, "--snapshot-threshold",
                    /* often in the smoke run (snapshot installs get exercised); less
                     * often in long runs, where the ledger grows large */
                    ch.smoke ? "256" : "1024", "--snapshot-trailing", ch.smoke ? "64" : "128",
                    "--debug-clock-offset-file", n->clock_file,
                    join ? "--join" : NULL, NULL};
    char nspath[PATH_MAX];
    snprintf(nspath, sizeof(nspath), "/run/netns/%s", n->ns);
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid == 0) {
        /* The child dies with the runner's main thread, which made it. */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) {
            _exit(1);
        }
        setpgid(0, 0); /* a terminal's Ctrl-C goes to run.sh, which stops us in order */
        int fd = open(nspath, O_RDONLY | O_CLOEXEC);
        if (fd < 0 || setns(fd, CLONE_NEWNET) != 0) {
            _exit(126);
        }
        int log = open(n->log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        if (log >= 0) {
            dup2(log, 1);
            dup2(log, 2);
        }
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        /* A node that crashes leaves a core dump in the run directory, for gdb. */
        struct rlimit core = {RLIM_INFINITY, RLIM_INFINITY};
        setrlimit(RLIMIT_CORE, &core);
        if (chdir(ch.dir) != 0) {
            _exit(126);
        }
        execv(ch.tallyd, argv);
        _exit(127);
    }
    if (pid < 0) {
        ch_log("fork: %s", strerror(errno));
        return;
    }
    n->pid = pid;
    n->paused = false;
    ch_hist("N %lld start %d %d", (long long)ch_now_us(), n->id, join ? 1 : 0);
}

static void describe_status(int status, char *out, size_t size)
{
    if (WIFEXITED(status)) {
        snprintf(out, size, "code=%d", WEXITSTATUS(status));
    } else if (WIFSIGNALED(status)) {
        snprintf(out, size, "signal=%d", WTERMSIG(status));
    } else {
        snprintf(out, size, "status=0x%x", status);
    }
}

/* Reap nodes that ended on their own; each is an `exit` event. Returns how many. */
static int reap_all(void)
{
    int n_dead = 0;
    for (int i = 0; i < CH_NODES; i++) {
        struct ch_node *n = &ch.nodes[i];
        int status;
        if (n->pid > 0 && waitpid(n->pid, &status, WNOHANG) == n->pid) {
            char how[32];
            describe_status(status, how, sizeof(how));
            ch_hist("N %lld exit %d %s", (long long)ch_now_us(), n->id, how);
            ch_log("node %d exited on its own (%s)", n->id, how);
            n->pid = 0;
            n->paused = false;
            n_dead++;
        }
    }
    return n_dead;
}

/* Stop node n with `sig` (SIGKILL after 8 s) and reap it; a `stop` event. */
static void node_stop(struct ch_node *n, int sig)
{
    if (n->pid <= 0) {
        return;
    }
    if (n->paused) {
        kill(n->pid, SIGCONT);
        n->paused = false;
    }
    kill(n->pid, sig);
    int status = 0;
    int64_t deadline = ch_now_us() + 8000000;
    while (waitpid(n->pid, &status, WNOHANG) != n->pid) {
        if (ch_now_us() > deadline) {
            kill(n->pid, SIGKILL);
            waitpid(n->pid, &status, 0);
            break;
        }
        ch_sleep_ms(10);
    }
    char how[32];
    describe_status(status, how, sizeof(how));
    ch_hist("N %lld stop %d %d %s", (long long)ch_now_us(), n->id, sig, how);
    n->pid = 0;
}

static int node_status(struct ch_node *n, struct tally_node_status *st, int timeout_ms)
{
    if (n->pid <= 0 || n->paused) {
        return -1;
    }
    struct tally_result res;
    return tally_status(ctl, n->endpoint, timeout_ms, st, &res) == 0 ? 0 : -1;
}

/* Wait until node n answers STATUS; false if it exits or does not within timeout_ms. */
static bool node_wait_up(struct ch_node *n, int timeout_ms)
{
    int64_t deadline = ch_now_us() + (int64_t)timeout_ms * 1000;
    while (ch_now_us() < deadline) {
        struct tally_node_status st;
        if (node_status(n, &st, 300) == 0) {
            return true;
        }
        int status;
        if (n->pid > 0 && waitpid(n->pid, &status, WNOHANG) == n->pid) {
            char how[32];
            describe_status(status, how, sizeof(how));
            ch_hist("N %lld start-failed %d %s", (long long)ch_now_us(), n->id, how);
            ch_log("node %d did not start (%s); see %s", n->id, how, n->log);
            n->pid = 0;
            return false;
        }
        ch_sleep_ms(50);
    }
    return false;
}

/* Index of the node that leads and serves, waiting up to timeout_ms; -1 if none. */
static int find_leader(int timeout_ms)
{
    int64_t deadline = ch_now_us() + (int64_t)timeout_ms * 1000;
    do {
        for (int i = 0; i < CH_NODES; i++) {
            struct tally_node_status st;
            if (node_status(&ch.nodes[i], &st, 300) == 0 && st.raft_state == TALLY_RAFT_LEADER &&
                st.serving) {
                return i;
            }
        }
        ch_sleep_ms(50);
    } while (ch_now_us() < deadline);
    return -1;
}

/* Start node i (with --join after the first bootstrap) and wait for it, retrying a few
 * times if it fails to start. */
static bool node_start(int i)
{
    struct ch_node *n = &ch.nodes[i];
    for (int attempt = 0; attempt < 3; attempt++) {
        node_spawn(n, bootstrapped);
        if (node_wait_up(n, 15000)) {
            ch_hist("N %lld up %d", (long long)ch_now_us(), n->id);
            return true;
        }
        if (n->pid > 0) {
            node_stop(n, SIGKILL);
        }
        ch_sleep_ms(500);
    }
    return false;
}

/* Restart every member node that is not running. */
static void revive_all(void)
{
    for (int i = 0; i < CH_NODES; i++) {
        if (ch.nodes[i].pid <= 0 && ch.nodes[i].member) {
            node_start(i);
        }
    }
}

/* ---- Network. ---- */

/* Node a's namespace drops every packet that comes from node b. */
static void net_block(int a, int b, bool add)
{
    sh("ip -n %s rule %s pref 10 from %s iif eth0 blackhole", ch.nodes[a].ns, add ? "add" : "del",
       ch.nodes[b].ip);
}

static void net_cut(int a, int b)
{
    if (!cut[a][b]) {
        net_block(a, b, true);
        net_block(b, a, true);
        cut[a][b] = cut[b][a] = true;
    }
}

static void net_heal(void)
{
    for (int a = 0; a < CH_NODES; a++) {
        for (int b = a + 1; b < CH_NODES; b++) {
            if (cut[a][b]) {
                net_block(a, b, false);
                net_block(b, a, false);
                cut[a][b] = cut[b][a] = false;
            }
        }
        if (link_down[a]) {
            sh("ip link set %s up", ch.nodes[a].veth);
            link_down[a] = false;
        }
    }
}

/* "12,13" (cut pairs by node id) or "-"; "2" (nodes whose link is down) or "-". */
static void layout(char *cuts, size_t cuts_size, char *down, size_t down_size)
{
    cuts[0] = down[0] = '\0';
    for (int a = 0; a < CH_NODES; a++) {
        for (int b = a + 1; b < CH_NODES; b++) {
            if (cut[a][b]) {
                size_t len = strlen(cuts);
                snprintf(cuts + len, cuts_size - len, "%s%d%d", len > 0 ? "," : "",
                         ch.nodes[a].id, ch.nodes[b].id);
            }
        }
        if (link_down[a]) {
            size_t len = strlen(down);
            snprintf(down + len, down_size - len, "%s%d", len > 0 ? "," : "", ch.nodes[a].id);
        }
    }
    if (cuts[0] == '\0') {
        snprintf(cuts, cuts_size, "-");
    }
    if (down[0] == '\0') {
        snprintf(down, down_size, "-");
    }
}

/* ---- Disk and clock. ---- */

static void fill_path(const struct ch_node *n, char *out, size_t size)
{
    snprintf(out, size, "%s/chaos-fill", n->dir);
}

/*
 * Leave node n's tmpfs no free space: shrink it to what it holds plus 256 KiB (a remount,
 * instant), so the node's next growth hits ENOSPC. Writing a filler instead would zero
 * gigabytes of memory on every fault and starve the nodes of CPU; it is only the
 * fallback if the remount is refused.
 */
static void disk_fill(struct ch_node *n)
{
    struct statvfs vfs;
    if (statvfs(n->dir, &vfs) == 0) {
        uint64_t used = (uint64_t)(vfs.f_blocks - vfs.f_bfree) * vfs.f_frsize;
        uint64_t size_kib = (used >> 10) + 256;
        if (sh("mount -o remount,size=%lluk %s", (unsigned long long)size_kib, n->dir) == 0) {
            ch_hist("N %lld shrunk %d %llu", (long long)ch_now_us(), n->id,
                    (unsigned long long)size_kib);
            return;
        }
    }
    char path[PATH_MAX + 16];
    fill_path(n, path, sizeof(path));
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        ch_log("disk fill %s: %s", path, strerror(errno));
        return;
    }
    off_t size = 0;
    if (fstatvfs(fd, &vfs) == 0) {
        off_t want = (off_t)vfs.f_bavail * (off_t)vfs.f_frsize;
        for (int attempt = 0; attempt < 8 && want > 0; attempt++, want -= want / 8) {
            if (fallocate(fd, 0, 0, want) == 0) {
                size = want;
                break;
            }
        }
    }
    static const char zeros[4096];
    lseek(fd, size, SEEK_SET);
    for (int k = 0; k < 1 << 16 && write(fd, zeros, sizeof(zeros)) > 0; k++) {
    }
    close(fd);
}

/* Give node n's tmpfs its size back (64 MiB more when `grow`) and drop any filler. */
static void disk_free(struct ch_node *n, int i, bool grow)
{
    char path[PATH_MAX + 16];
    fill_path(n, path, sizeof(path));
    unlink(path);
    if (grow && tmpfs_mb[i] < 4096) {
        tmpfs_mb[i] += 64;
    }
    sh("mount -o remount,size=%lldm %s", (long long)tmpfs_mb[i], n->dir);
}

static void clock_set(const struct ch_node *n, int64_t offset_ms)
{
    char tmp[PATH_MAX + 48];
    snprintf(tmp, sizeof(tmp), "%s.tmp", n->clock_file);
    FILE *f = fopen(tmp, "we");
    if (f == NULL) {
        ch_log("clock file %s: %s", tmp, strerror(errno));
        return;
    }
    fprintf(f, "%lld\n", (long long)offset_ms);
    fclose(f);
    rename(tmp, n->clock_file);
}

/* ---- Membership. ---- */

/* GET /metrics of node t into `body` (NUL-terminated); 0, or -1 within about 1 s. */
static int fetch_metrics(int t, char *body, size_t size)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(CH_HTTP_PORT)};
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || inet_pton(AF_INET, ch.nodes[t].ip, &sa.sin_addr) != 1) {
        if (fd >= 0) {
            close(fd);
        }
        return -1;
    }
    struct timeval tv = {.tv_usec = 500000}; /* bounds connect, send and each recv */
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    static const char get[] = "GET /metrics HTTP/1.0\r\n\r\n";
    size_t len = 0;
    ssize_t n;
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0 &&
        send(fd, get, sizeof(get) - 1, MSG_NOSIGNAL) == (ssize_t)(sizeof(get) - 1)) {
        while (len < size - 1 && (n = recv(fd, body + len, size - 1 - len, 0)) > 0) {
            len += (size_t)n;
        }
    }
    close(fd);
    body[len] = '\0';
    return len > 0 ? 0 : -1;
}

/* The leader's view of how many entries each peer lacks, as " 1=0 3=812" ("" when
 * unknown): the first thing to know when writes stall around a membership change. */
static void peer_lags(int leader, char *out, size_t size)
{
    static char body[1 << 16];
    out[0] = '\0';
    if (leader < 0 || fetch_metrics(leader, body, sizeof(body)) != 0) {
        return;
    }
    static const char series[] = "\ntally_raft_peer_lag_entries{peer=\"";
    size_t used = 0;
    for (const char *p = strstr(body, series); p != NULL; p = strstr(p + 1, series)) {
        unsigned peer = 0;
        unsigned long long lag = 0;
        if (sscanf(p + sizeof(series) - 1, "%u\"} %llu", &peer, &lag) == 2 && used < size) {
            int w = snprintf(out + used, size - used, " %u=%llu", peer, lag);
            used += w > 0 ? (size_t)w : 0;
        }
    }
}

/* Whether the leader's configuration lists node id (as a voter if `voter`). */
static int config_has(int leader, uint64_t id, bool voter)
{
    struct tally_node_status st;
    if (leader < 0 || node_status(&ch.nodes[leader], &st, 500) != 0) {
        return -1;
    }
    for (uint32_t k = 0; k < st.n_members; k++) {
        if (st.members[k].id == id) {
            return !voter || st.members[k].role == TALLY_MEMBER_VOTER;
        }
    }
    return 0;
}

static bool member_remove(int t)
{
    uint64_t id = (uint64_t)ch.nodes[t].id;
    int64_t deadline = ch_now_us() + 20 * 1000000LL;
    while (ch_now_us() < deadline) {
        struct tally_result res;
        int rv = tally_member_remove(ctl, id, 5000, &res);
        int leader = find_leader(3000);
        if (leader >= 0 && leader != t && config_has(leader, id, false) == 0) {
            /* Committed? The node's data dir is wiped next: wiping a node that is still a
             * voter would be an operator error (an empty voter may elect a stale leader),
             * so the removal must be confirmed by a barrier (a linearizable read). */
            struct tally_account acc;
            struct tally_result rres;
            if (tally_account_get(ctl, ch_accounts[0].name, 0, 5000, &acc, &rres) == 0) {
                int again = find_leader(3000);
                if (again >= 0 && again != t && config_has(again, id, false) == 0) {
                    return true;
                }
            }
        }
        if (rv != 0) {
            ch_log("member remove %llu: %s (%s)", (unsigned long long)id, tally_strerror(rv),
                   res.message);
        }
        hold_ms(300);
    }
    return false;
}

/* Whether node t has applied what the leader had committed. */
static bool caught_up(int t, int leader)
{
    struct tally_node_status ls, ns;
    return node_status(&ch.nodes[leader], &ls, 500) == 0 &&
           node_status(&ch.nodes[t], &ns, 500) == 0 && ns.applied_index >= ls.commit_index;
}

/*
 * Add node t back and wait until it is a voter in a *committed* configuration and has
 * caught up. A leader's STATUS shows its newest configuration, committed or not, so a
 * voter seen there is confirmed by a linearizable read (a barrier on the leader, which
 * commits every entry before it) and a second look. A node left a non-voter for 10 s
 * (its promotion was lost with a leader, or it did not catch up in time) is added again,
 * which promotes it (a `member-stuck-spare` event).
 */
static bool member_add(int t)
{
    uint64_t id = (uint64_t)ch.nodes[t].id;
    char peer[64];
    snprintf(peer, sizeof(peer), "%s:%d", ch.nodes[t].ip, CH_PEER_PORT);
    int64_t deadline = ch_now_us() + 45 * 1000000LL;
    int64_t spare_since = 0;
    while (ch_now_us() < deadline && !interrupted) {
        int leader = find_leader(3000);
        if (leader < 0) {
            hold_ms(300);
            continue;
        }
        int present = config_has(leader, id, false);
        int voter = config_has(leader, id, true);
        if (voter == 1) {
            struct tally_account acc;
            struct tally_result res;
            if (tally_account_get(ctl, ch_accounts[0].name, 0, 5000, &acc, &res) == 0) {
                int again = find_leader(3000);
                if (again >= 0 && config_has(again, id, true) == 1 && caught_up(t, again)) {
                    return true;
                }
            }
            hold_ms(200);
            continue;
        }
        if (present == 0 || (present == 1 && spare_since != 0 &&
                             ch_now_us() - spare_since > 10 * 1000000LL)) {
            if (present == 1) {
                ch_hist("N %lld member-stuck-spare %d", (long long)ch_now_us(), ch.nodes[t].id);
                ch_log("node %llu stayed a non-voter for 10 s: adding it again to promote it",
                       (unsigned long long)id);
            }
            struct tally_result res;
            int rv = tally_member_add(ctl, id, peer, 10000, &res);
            ch_hist("N %lld member-add-call %d %s", (long long)ch_now_us(), ch.nodes[t].id,
                    rv == 0 ? "ok" : tally_strerror(rv));
            if (rv != 0) {
                ch_log("member add %llu: %s (%s)", (unsigned long long)id, tally_strerror(rv),
                       res.message);
            }
            spare_since = 0;
            continue;
        }
        if (present == 1 && spare_since == 0) {
            /* present, not a voter: the promotion is under way, or it was lost */
            spare_since = ch_now_us();
        }
        hold_ms(300);
    }
    return false;
}

/* Make node t a voter again (wiping it first if it is not in the configuration). */
static bool member_restore(int t)
{
    struct ch_node *n = &ch.nodes[t];
    if (n->pid > 0) {
        node_stop(n, SIGTERM);
    }
    sh("find %s -mindepth 1 -delete", n->dir);
    ch_hist("N %lld wiped %d", (long long)ch_now_us(), n->id);
    node_spawn(n, true);
    if (!node_wait_up(n, 15000)) {
        return false;
    }
    ch_hist("N %lld up %d", (long long)ch_now_us(), n->id);
    if (!member_add(t)) {
        return false;
    }
    n->member = true;
    ch_hist("N %lld member-added %d", (long long)ch_now_us(), n->id);
    return true;
}

/* ---- The nemeses. ---- */

static int64_t quiet_min_ms(void)
{
    return ch.smoke ? 500 : 1000;
}

/* Sleep, reaping nodes that die meanwhile and flushing the history. */
static void hold_ms(int64_t ms)
{
    int64_t until = ch_now_us() + ms * 1000;
    while (ch_now_us() < until && !interrupted) {
        reap_all();
        ch_hist_flush();
        int64_t left = (until - ch_now_us()) / 1000;
        ch_sleep_ms(left < 50 ? left : 50);
    }
}

/* A running member node: the leader with probability pct/100, else a random one. */
static int pick_target(int pct)
{
    if (forced_target >= 0) {
        return forced_target;
    }
    int leader = find_leader(2000);
    if (leader >= 0 && ch_rand_range(&rng, 1, 100) <= pct) {
        return leader;
    }
    int candidates[CH_NODES], n = 0;
    for (int i = 0; i < CH_NODES; i++) {
        if (ch.nodes[i].pid > 0 && ch.nodes[i].member) {
            candidates[n++] = i;
        }
    }
    return n > 0 ? candidates[ch_rand(&rng) % (uint64_t)n] : -1;
}

static void fault_event(const char *kind, int t, const char *detail, int was_leader)
{
    ch_hist("N %lld fault %s %d %s %d", (long long)ch_now_us(), kind, ch.nodes[t].id, detail,
            was_leader);
    ch_log("fault %s on node %d (%s)%s", kind, ch.nodes[t].id, detail,
           was_leader ? " [leader]" : "");
}

static void heal_event(const char *kind, int t, const char *detail)
{
    ch_hist("N %lld heal %s %d %s", (long long)ch_now_us(), kind, ch.nodes[t].id, detail);
}

static void nem_kill(void)
{
    int leader = find_leader(2000);
    int t = pick_target(60);
    if (t < 0) {
        return;
    }
    fault_event("kill", t, "SIGKILL", t == leader);
    node_stop(&ch.nodes[t], SIGKILL);
    hold_ms(ch_rand_range(&rng, 200, 3000));
    bool up = node_start(t);
    heal_event("kill", t, up ? "restarted" : "restart-failed");
}

static void nem_pause(void)
{
    int leader = find_leader(2000);
    int t = pick_target(60);
    if (t < 0) {
        return;
    }
    struct ch_node *n = &ch.nodes[t];
    kill(n->pid, SIGSTOP);
    n->paused = true;
    fault_event("pause", t, "SIGSTOP", t == leader);
    hold_ms(ch_rand_range(&rng, 1000, 6000));
    if (n->pid > 0) {
        kill(n->pid, SIGCONT);
    }
    n->paused = false;
    heal_event("pause", t, "SIGCONT");
}

static void nem_partition(void)
{
    static const char *const subs[] = {"isolate-leader", "isolate", "bridge", "link-down"};
    int sub = forced_sub >= 0 ? forced_sub : (int)(ch_rand(&rng) % 4);
    int leader = find_leader(2000);
    int t = sub == 0 && leader >= 0 ? leader : (int)(ch_rand(&rng) % CH_NODES);
    if (sub == 3 && leader >= 0 && ch_chance(&rng, 1, 2)) {
        t = leader;
    }
    if (forced_target >= 0) {
        t = forced_target;
    }
    switch (sub) {
    case 0:
    case 1:
        for (int x = 0; x < CH_NODES; x++) {
            if (x != t) {
                net_cut(t, x);
            }
        }
        break;
    case 2: /* t is the bridge: the other two see only t */
        net_cut((t + 1) % CH_NODES, (t + 2) % CH_NODES);
        break;
    default:
        sh("ip link set %s down", ch.nodes[t].veth);
        link_down[t] = true;
        break;
    }
    char cuts[64], down[16], detail[128];
    layout(cuts, sizeof(cuts), down, sizeof(down));
    snprintf(detail, sizeof(detail), "%s %s %s", subs[sub], cuts, down);
    fault_event("partition", t, detail, t == leader);
    hold_ms(ch_rand_range(&rng, 2000, 8000));
    /* The heal is stamped before the rules go, so a grant stamped after it may be real. */
    heal_event("partition", t, subs[sub]);
    net_heal();
}

static void nem_disk(void)
{
    int leader = find_leader(2000);
    int t = pick_target(50);
    if (t < 0) {
        return;
    }
    struct ch_node *n = &ch.nodes[t];
    fault_event("disk", t, "full", t == leader);
    disk_fill(n);
    int64_t until = ch_now_us() + ch_rand_range(&rng, 3000, 8000) * 1000;
    while (ch_now_us() < until && n->pid > 0 && !interrupted) {
        hold_ms(50);
    }
    bool grow = ch_chance(&rng, 1, 3);
    disk_free(n, t, grow);
    hold_ms(300); /* a node that hit ENOSPC just before the space came back is still reaped here */
    bool died = n->pid <= 0;
    bool up = !died || node_start(t);
    heal_event("disk", t, died ? (up ? "restarted" : "restart-failed") : "survived");
    if (grow) {
        ch_hist("N %lld remount %d %lld", (long long)ch_now_us(), n->id, (long long)tmpfs_mb[t]);
    }
}

static void nem_clock(void)
{
    int leader = find_leader(2000);
    int t = pick_target(60);
    if (t < 0) {
        return;
    }
    int64_t offset = ch_rand_range(&rng, 3000, 20000) * (ch_chance(&rng, 1, 2) ? 1 : -1);
    if (forced_offset != 0) {
        offset = forced_offset;
    }
    char detail[32];
    snprintf(detail, sizeof(detail), "%lld", (long long)offset);
    clock_set(&ch.nodes[t], offset);
    fault_event("clock", t, detail, t == leader);
    hold_ms(ch_rand_range(&rng, 3000, 8000));
    clock_set(&ch.nodes[t], 0);
    heal_event("clock", t, "0");
}

static void nem_member(void)
{
    int leader = find_leader(3000);
    if (leader < 0) {
        return;
    }
    int t = ch_chance(&rng, 1, 3) ? leader : (leader + 1 + (int)(ch_rand(&rng) % 2)) % CH_NODES;
    if (forced_target >= 0) {
        t = forced_target;
    }
    struct ch_node *n = &ch.nodes[t];
    char lags[128];
    peer_lags(leader, lags, sizeof(lags));
    ch_log("member: node %d leads; entries its peers lack:%s", ch.nodes[leader].id,
           lags[0] != '\0' ? lags : " unknown");
    fault_event("member", t, "remove", t == leader);
    if (!member_remove(t)) {
        ch_log("node %d could not be removed; leaving it", n->id);
        heal_event("member", t, "remove-failed");
        return;
    }
    n->member = false;
    ch_hist("N %lld member-removed %d", (long long)ch_now_us(), n->id);
    hold_ms(ch_rand_range(&rng, 200, 1500));
    bool ok = member_restore(t);
    heal_event("member", t, ok ? "re-added" : "re-add-failed");
}

static void run_nemesis(enum nemesis k)
{
    faults[k]++;
    switch (k) {
    case NEM_KILL: nem_kill(); break;
    case NEM_PAUSE: nem_pause(); break;
    case NEM_PARTITION: nem_partition(); break;
    case NEM_DISK: nem_disk(); break;
    case NEM_CLOCK: nem_clock(); break;
    default: nem_member(); break;
    }
}

/*
 * Run a fault script instead of random rounds: comma-separated steps
 *   KIND[:TARGET[:ARG]]   KIND kill|pause|partition|disk|clock|member; TARGET leader,
 *                         follower, any or a node id; ARG the partition kind
 *                         (isolate-leader|isolate|bridge|link-down) or the clock offset ms
 *   hold:MS               no fault for MS milliseconds
 * e.g. "member:follower,hold:10000,kill:follower,hold:3000,kill:leader,hold:10000".
 * Returns -1 on a step it cannot read.
 */
static int run_script(const char *script)
{
    static const char *const kinds[NEM_COUNT] = {"kill", "pause", "partition",
                                                 "disk", "clock", "member"};
    static const char *const subs[] = {"isolate-leader", "isolate", "bridge", "link-down"};
    char buf[1024];
    snprintf(buf, sizeof(buf), "%s", script);
    char *save = NULL;
    for (char *step = strtok_r(buf, ",", &save); step != NULL && !interrupted;
         step = strtok_r(NULL, ",", &save)) {
        char *arg2 = NULL, *arg1 = strchr(step, ':');
        if (arg1 != NULL) {
            *arg1++ = '\0';
            arg2 = strchr(arg1, ':');
            if (arg2 != NULL) {
                *arg2++ = '\0';
            }
        }
        if (strcmp(step, "hold") == 0) {
            hold_ms(arg1 != NULL ? strtoll(arg1, NULL, 10) : 1000);
            continue;
        }
        int k = 0;
        while (k < NEM_COUNT && strcmp(step, kinds[k]) != 0) {
            k++;
        }
        if (k == NEM_COUNT) {
            ch_log("fault script: unknown step '%s'", step);
            return -1;
        }
        forced_target = -1;
        if (arg1 != NULL && strcmp(arg1, "leader") == 0) {
            forced_target = find_leader(5000);
        } else if (arg1 != NULL && strcmp(arg1, "follower") == 0) {
            int leader = find_leader(5000);
            for (int i = 0; i < CH_NODES && forced_target < 0; i++) {
                if (i != leader && ch.nodes[i].pid > 0 && ch.nodes[i].member) {
                    forced_target = i;
                }
            }
        } else if (arg1 != NULL && strcmp(arg1, "any") != 0) {
            for (int i = 0; i < CH_NODES; i++) {
                if (ch.nodes[i].id == atoi(arg1)) {
                    forced_target = i;
                }
            }
        }
        forced_sub = -1;
        forced_offset = 0;
        for (int j = 0; arg2 != NULL && j < 4; j++) {
            if (strcmp(arg2, subs[j]) == 0) {
                forced_sub = j;
            }
        }
        if (arg2 != NULL && k == NEM_CLOCK) {
            forced_offset = strtoll(arg2, NULL, 10);
        }
        run_nemesis((enum nemesis)k);
        forced_target = forced_sub = -1;
        forced_offset = 0;
        reap_all();
        revive_all();
    }
    return 0;
}

/* Undo every fault: links, rules, pauses, clocks, disks, dead nodes, membership. */
static void heal_all(void)
{
    net_heal();
    for (int i = 0; i < CH_NODES; i++) {
        struct ch_node *n = &ch.nodes[i];
        if (n->paused && n->pid > 0) {
            kill(n->pid, SIGCONT);
        }
        n->paused = false;
        clock_set(n, 0);
        disk_free(n, i, false);
    }
    reap_all();
    revive_all();
    for (int i = 0; i < CH_NODES; i++) {
        if (!ch.nodes[i].member) {
            member_restore(i);
        }
    }
}

/* ---- Setup. ---- */

static int setup_accounts(void)
{
    for (int i = 0; i < ch_n_accounts; i++) {
        const struct ch_account *a = &ch_accounts[i];
        struct tally_limits lim = {0};
        if (a->budget_micros >= 0) {
            lim.set |= TALLY_LIM_BUDGET;
            lim.budget_micros = a->budget_micros;
        }
        if (a->max_parallel >= 0) {
            lim.set |= TALLY_LIM_PARALLEL;
            lim.max_parallel = (uint64_t)a->max_parallel;
        }
        if (a->rpm >= 0) {
            lim.set |= TALLY_LIM_RPM;
            lim.rpm = (uint64_t)a->rpm;
            lim.rpm_burst = (uint64_t)a->rpm_burst;
        }
        if (a->release) {
            lim.set |= TALLY_LIM_EXPIRY_POLICY;
            lim.expiry_policy = TALLY_EXPIRY_RELEASE;
        }
        uint8_t rid[TALLY_REQUEST_ID_SIZE];
        tally_request_id_new(rid);
        int rv = -TALLY_EUNAVAILABLE;
        for (int attempt = 0; attempt < 10 && rv == -TALLY_EUNAVAILABLE; attempt++) {
            struct tally_result res;
            rv = tally_account_create(ctl, a->name, a->parent, &lim, rid, 5000, &res);
            if (rv != 0) {
                ch_log("create %s: %s (%s)", a->name, tally_strerror(rv), res.message);
            }
        }
        if (rv != 0) {
            return -1;
        }
        if (a->by_key) {
            char secret[64];
            ch_key_secret(i, secret, sizeof(secret));
            tally_request_id_new(rid);
            rv = -TALLY_EUNAVAILABLE;
            for (int attempt = 0; attempt < 10 && rv == -TALLY_EUNAVAILABLE; attempt++) {
                struct tally_result res;
                rv = tally_key_add(ctl, a->name, secret, NULL, rid, 5000, &res);
            }
            if (rv != 0) {
                ch_log("key add %s: %s", a->name, tally_strerror(rv));
                return -1;
            }
        }
        ch_hist("acct %s %s %lld %lld %lld %lld %s", a->name, a->parent ? a->parent : "-",
                (long long)a->budget_micros, (long long)a->max_parallel, (long long)a->rpm,
                (long long)a->rpm_burst, a->release ? "release" : "charge");
    }
    return 0;
}

static int read_cluster_file(const char *path)
{
    FILE *f = fopen(path, "re");
    if (f == NULL) {
        fprintf(stderr, "tally-chaos: cannot read %s\n", path);
        return -1;
    }
    char line[2048], key[64], v1[PATH_MAX], v2[128], v3[128], v4[128];
    int n_nodes = 0;
    while (fgets(line, sizeof(line), f) != NULL) {
        int id;
        if (sscanf(line, "node %d %63s %31s %63s %4095s", &id, v2, v3, v4, v1) == 5 &&
            n_nodes < CH_NODES) {
            struct ch_node *n = &ch.nodes[n_nodes++];
            n->id = id;
            snprintf(n->ns, sizeof(n->ns), "%.63s", v2);
            snprintf(n->ip, sizeof(n->ip), "%.31s", v3);
            snprintf(n->veth, sizeof(n->veth), "%.63s", v4);
            snprintf(n->dir, sizeof(n->dir), "%s", v1);
            continue;
        }
        if (sscanf(line, "%63s %4095s", key, v1) != 2) {
            continue;
        }
        if (strcmp(key, "dir") == 0) {
            snprintf(ch.dir, sizeof(ch.dir), "%s", v1);
        } else if (strcmp(key, "tallyd") == 0) {
            snprintf(ch.tallyd, sizeof(ch.tallyd), "%s", v1);
        } else if (strcmp(key, "token_file") == 0) {
            snprintf(ch.token_file, sizeof(ch.token_file), "%s", v1);
        } else if (strcmp(key, "admin_token") == 0) {
            snprintf(ch.admin_token, sizeof(ch.admin_token), "%.127s", v1);
        } else if (strcmp(key, "gateway_token") == 0) {
            snprintf(ch.gateway_token, sizeof(ch.gateway_token), "%.127s", v1);
        } else if (strcmp(key, "reader_token") == 0) {
            snprintf(ch.reader_token, sizeof(ch.reader_token), "%.127s", v1);
        }
    }
    fclose(f);
    if (n_nodes != CH_NODES || ch.dir[0] == '\0' || ch.tallyd[0] == '\0' ||
        ch.admin_token[0] == '\0' || ch.gateway_token[0] == '\0' || ch.reader_token[0] == '\0') {
        fprintf(stderr, "tally-chaos: %s is incomplete\n", path);
        return -1;
    }
    /* Local copies: source and destination are both inside `ch` (-Wrestrict). */
    char dir[PATH_MAX], endpoints[sizeof(ch.endpoints)] = "";
    snprintf(dir, sizeof(dir), "%s", ch.dir);
    for (int i = 0; i < CH_NODES; i++) {
        struct ch_node *n = &ch.nodes[i];
        char ip[sizeof(n->ip)];
        snprintf(ip, sizeof(ip), "%s", n->ip);
        snprintf(n->endpoint, sizeof(n->endpoint), "%s:%d", ip, CH_CLIENT_PORT);
        snprintf(n->clock_file, sizeof(n->clock_file), "%s/clock%d", dir, n->id);
        snprintf(n->log, sizeof(n->log), "%s/node%d.log", dir, n->id);
        n->member = true;
        size_t len = strlen(endpoints);
        snprintf(endpoints + len, sizeof(endpoints) - len, "%s%s:%d", i > 0 ? "," : "", ip,
                 CH_CLIENT_PORT);
        snprintf(ch.endpoints, sizeof(ch.endpoints), "%s", endpoints);
        struct statvfs vfs;
        tmpfs_mb[i] = statvfs(n->dir, &vfs) == 0
                          ? (int64_t)((uint64_t)vfs.f_blocks * vfs.f_frsize >> 20)
                          : 256;
    }
    return 0;
}

/* ---- The end: convergence and the final state. ---- */

static const char *const resv_states[] = {"open", "settled", "voided", "expired", "late"};

struct reader_job {
    int node;
    size_t from, to;
    char (*lines)[200];
};

static void *reader_main(void *arg)
{
    struct reader_job *j = arg;
    struct ch_node *n = &ch.nodes[j->node];
    struct tally *c = ch_client(n->endpoint, ch.reader_token, 5000);
    const struct wl_reserve *resv;
    size_t n_resv;
    wl_reserves(&resv, &n_resv);
    for (size_t k = j->from; k < j->to; k++) {
        char hex[33];
        ch_id_hex(resv[k].id, hex);
        struct tally_reservation r;
        struct tally_result res;
        int rv = c != NULL ? -TALLY_EUNAVAILABLE : -TALLY_EINTERNAL;
        for (int attempt = 0; c != NULL && attempt < 3; attempt++) {
            rv = tally_reservation_get(c, resv[k].id, TALLY_READ_STALE, 5000, &r, &res);
            if (rv != -TALLY_EUNAVAILABLE) {
                break;
            }
        }
        if (rv == 0) {
            snprintf(j->lines[k - j->from], 200, "R %d %s %s %s %lld %lld %lld %lld", n->id, hex,
                     r.state < 5 ? resv_states[r.state] : "unknown", r.account,
                     (long long)r.estimate_micros, (long long)r.created_ms,
                     (long long)r.expires_at_ms, (long long)r.charged_micros);
        } else {
            snprintf(j->lines[k - j->from], 200, "R %d %s %s", n->id, hex,
                     rv == -TALLY_ENOTFOUND ? "notfound" : "error");
        }
    }
    tally_close(c);
    return NULL;
}

/* Every reserve id's record on every node, two reader threads per node. */
static void write_records(FILE *out)
{
    const struct wl_reserve *resv;
    size_t n_resv;
    wl_reserves(&resv, &n_resv);
    enum { PER_NODE = 2 };
    struct reader_job jobs[CH_NODES * PER_NODE];
    pthread_t th[CH_NODES * PER_NODE];
    for (int i = 0; i < CH_NODES * PER_NODE; i++) {
        size_t part = (n_resv + PER_NODE - 1) / PER_NODE;
        jobs[i].node = i / PER_NODE;
        jobs[i].from = (size_t)(i % PER_NODE) * part;
        jobs[i].to = jobs[i].from + part < n_resv ? jobs[i].from + part : n_resv;
        if (jobs[i].from > jobs[i].to) {
            jobs[i].from = jobs[i].to;
        }
        jobs[i].lines = calloc(jobs[i].to - jobs[i].from + 1, 200);
        pthread_create(&th[i], NULL, reader_main, &jobs[i]);
    }
    for (int i = 0; i < CH_NODES * PER_NODE; i++) {
        pthread_join(th[i], NULL);
        for (size_t k = 0; k < jobs[i].to - jobs[i].from; k++) {
            fprintf(out, "%s\n", jobs[i].lines[k]);
        }
        free(jobs[i].lines);
    }
}

static const char *journal_kind(int kind)
{
    switch (kind) {
    case TALLY_J_CHARGE: return "charge";
    case TALLY_J_RELEASE: return "release";
    case TALLY_J_EXPIRE_CHARGE: return "expire-charge";
    case TALLY_J_EXPIRE_RELEASE: return "expire-release";
    case TALLY_J_CORRECTION: return "correction";
    case TALLY_J_SOFT_BUDGET: return "soft-budget";
    case TALLY_J_ADMIN: return "admin";
    default: return "unknown";
    }
}

static void write_journal(FILE *out, int node)
{
    struct tally *c = ch_client(ch.nodes[node].endpoint, ch.reader_token, 10000);
    if (c == NULL) {
        fprintf(out, "Jerror %d\n", ch.nodes[node].id);
        return;
    }
    static struct tally_journal_entry items[TALLY_LIST_MAX];
    uint64_t cursor = 0;
    size_t total = 0;
    do {
        uint32_t n = 0;
        uint64_t next = 0;
        struct tally_result res;
        int rv = tally_journal_list(c, NULL, 0, INT64_MAX, cursor, TALLY_LIST_MAX,
                                    TALLY_READ_STALE, 10000, items, &n, &next, &res);
        if (rv != 0) {
            fprintf(out, "Jerror %d %s\n", ch.nodes[node].id, tally_strerror(rv));
            break;
        }
        for (uint32_t k = 0; k < n; k++) {
            char hex[33];
            ch_id_hex(items[k].request_id, hex);
            fprintf(out, "J %llu %lld %s %s %s %lld %lld\n", (unsigned long long)items[k].seq,
                    (long long)items[k].ts_ms, journal_kind(items[k].kind),
                    items[k].account[0] ? items[k].account : "-", hex,
                    (long long)items[k].amount_micros, (long long)items[k].period_start_ms);
        }
        total += n;
        cursor = next;
    } while (cursor != 0);
    tally_close(c);
    ch_log("journal: %zu entries from node %d", total, ch.nodes[node].id);
}

/* Wait until every node reports the same applied index and state hash. */
static bool converge(int timeout_s, uint64_t *applied_out, char hash_out[65])
{
    int64_t deadline = ch_now_us() + (int64_t)timeout_s * 1000000;
    while (ch_now_us() < deadline && !interrupted) {
        reap_all();
        revive_all();
        uint64_t applied[CH_NODES];
        char hex[CH_NODES][65];
        bool same = find_leader(2000) >= 0;
        for (int i = 0; i < CH_NODES && same; i++) {
            if (raw_hash(ch.nodes[i].ip, CH_CLIENT_PORT, ch.reader_token, 3000, &applied[i],
                         hex[i]) != 0 ||
                (i > 0 && (applied[i] != applied[0] || strcmp(hex[i], hex[0]) != 0))) {
                same = false;
            }
        }
        if (same) {
            *applied_out = applied[0];
            snprintf(hash_out, 65, "%s", hex[0]);
            return true;
        }
        ch_sleep_ms(250);
    }
    return false;
}

static void write_final(const char *path)
{
    FILE *out = fopen(path, "we");
    if (out == NULL) {
        ch_log("cannot write %s", path);
        return;
    }
    uint64_t applied = 0;
    char hash[65] = "-";
    bool ok = converge(90, &applied, hash);
    fprintf(out, "converged %d %llu %s\n", ok ? 1 : 0, (unsigned long long)applied, hash);
    ch_log("%s at applied index %llu, state hash %.16s", ok ? "converged" : "NOT converged",
           (unsigned long long)applied, hash);
    for (int i = 0; i < CH_NODES; i++) {
        struct ch_node *n = &ch.nodes[i];
        struct tally_node_status st;
        uint64_t app = 0;
        char hex[65] = "-";
        if (raw_hash(n->ip, CH_CLIENT_PORT, ch.reader_token, 3000, &app, hex) == 0) {
            fprintf(out, "H %d %llu %s\n", n->id, (unsigned long long)app, hex);
        } else {
            fprintf(out, "H %d 0 -\n", n->id);
        }
        if (node_status(n, &st, 2000) == 0) {
            fprintf(out, "S %d %s %llu %llu %llu %llu %u", n->id,
                    tally_raft_state_name(st.raft_state), (unsigned long long)st.leader_id,
                    (unsigned long long)st.term, (unsigned long long)st.commit_index,
                    (unsigned long long)st.applied_index, st.n_members);
            for (uint32_t k = 0; k < st.n_members; k++) {
                fprintf(out, " %llu:%s", (unsigned long long)st.members[k].id,
                        tally_member_role_name(st.members[k].role));
            }
            fprintf(out, "\n");
        } else {
            fprintf(out, "S %d down\n", n->id);
        }
        struct tally *c = ch_client(n->endpoint, ch.reader_token, 5000);
        for (int a = 0; c != NULL && a < ch_n_accounts; a++) {
            struct tally_account acc;
            struct tally_result res;
            int rv = tally_account_get(c, ch_accounts[a].name, TALLY_READ_STALE, 5000, &acc, &res);
            if (rv == 0) {
                fprintf(out, "A %d %s %lld %lld %llu %lld %lld\n", n->id, acc.name,
                        (long long)acc.spent_micros, (long long)acc.held_micros,
                        (unsigned long long)acc.inflight, (long long)acc.lifetime_spent_micros,
                        (long long)acc.overrun_micros);
            } else {
                fprintf(out, "A %d %s error\n", n->id, ch_accounts[a].name);
            }
        }
        tally_close(c);
    }
    int64_t t0 = ch_now_us();
    write_records(out);
    ch_log("records read from every node in %.1f s", (double)(ch_now_us() - t0) / 1e6);
    write_journal(out, 0);
    fclose(out);
}

/* ---- Main. ---- */

static void on_signal(int sig)
{
    (void)sig;
    interrupted = 1;
}

/* "all" or a comma-separated subset of the kinds. 0 or -1. */
static int parse_nemeses(const char *list)
{
    static const char *const kinds[NEM_COUNT] = {"kill", "pause", "partition",
                                                 "disk", "clock", "member"};
    if (strcmp(list, "all") == 0) {
        for (int k = 0; k < NEM_COUNT; k++) {
            enabled[k] = true;
        }
        return 0;
    }
    char buf[256];
    snprintf(buf, sizeof(buf), "%s", list);
    for (int k = 0; k < NEM_COUNT; k++) {
        enabled[k] = false;
    }
    int n = 0;
    char *save = NULL;
    for (char *w = strtok_r(buf, ",", &save); w != NULL; w = strtok_r(NULL, ",", &save)) {
        int k = 0;
        while (k < NEM_COUNT && strcmp(w, kinds[k]) != 0) {
            k++;
        }
        if (k == NEM_COUNT) {
            fprintf(stderr, "tally-chaos: unknown nemesis '%s'\n", w);
            return -1;
        }
        enabled[k] = true;
        n++;
    }
    return n > 0 ? 0 : -1;
}

static void usage(void)
{
    fprintf(stderr, "usage: tally-chaos --cluster FILE --duration SECONDS [--seed N] "
                    "[--workers N] [--rate OPS_PER_WORKER_S] [--smoke] [--faults SCRIPT] "
                    "[--nemeses all|KIND,...]\n");
}

static void stop_everything(void)
{
    for (int i = 0; i < CH_NODES; i++) {
        if (ch.nodes[i].pid > 0) {
            node_stop(&ch.nodes[i], SIGTERM);
        }
    }
}

int main(int argc, char **argv)
{
    const char *cluster = NULL;
    const char *script = NULL;
    ch.duration_s = 120;
    ch.seed = (uint64_t)time(NULL);
    ch.workers = 6;
    ch.ops_per_worker_s = 50;
    static const struct option opts[] = {
        {"cluster", required_argument, NULL, 'c'}, {"duration", required_argument, NULL, 'd'},
        {"seed", required_argument, NULL, 's'},    {"workers", required_argument, NULL, 'w'},
        {"rate", required_argument, NULL, 'r'},    {"smoke", no_argument, NULL, 'S'},
        {"faults", required_argument, NULL, 'f'},  {"nemeses", required_argument, NULL, 'n'},
        {NULL, 0, NULL, 0}};
    int o;
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (o) {
        case 'c': cluster = optarg; break;
        case 'd': ch.duration_s = strtoll(optarg, NULL, 10); break;
        case 's': ch.seed = strtoull(optarg, NULL, 10); break;
        case 'w': ch.workers = atoi(optarg); break;
        case 'r': ch.ops_per_worker_s = atoi(optarg); break;
        case 'S': ch.smoke = true; break;
        case 'f': script = optarg; break;
        case 'n':
            if (parse_nemeses(optarg) != 0) {
                usage();
                return 2;
            }
            break;
        default: usage(); return 2;
        }
    }
    if (cluster == NULL || ch.duration_s <= 0 || ch.workers < 1 || ch.workers > CH_WORKERS_MAX - 1) {
        usage();
        return 2;
    }
    /* run.sh's trap cleans up what it made; if run.sh itself dies, so do we. */
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    ch_clock_start();
    if (read_cluster_file(cluster) != 0) {
        return 2;
    }
    rng = ch.seed ? ch.seed : 1;
    ch.nonce = (uint32_t)(ch_rand(&rng) >> 32);
    char path[PATH_MAX + 32];
    snprintf(path, sizeof(path), "%s/runner.log", ch.dir);
    ch_log_open(path);
    snprintf(path, sizeof(path), "%s/history.txt", ch.dir);
    if (ch_hist_open(path) != 0) {
        ch_log("cannot write %s", path);
        return 2;
    }
    ch_log("seed %llu, %lld s, %d workers, nodes %s", (unsigned long long)ch.seed,
           (long long)ch.duration_s, ch.workers, ch.endpoints);
    ch_hist("# tally chaos history v1");
    ch_hist("seed %llu", (unsigned long long)ch.seed);
    ch_hist("start_wall_ms %lld", (long long)ch_wall_ms());
    ch_hist("duration_s %lld", (long long)ch.duration_s);
    for (int k = 0; k < NEM_COUNT; k++) {
        static const char *const kinds[NEM_COUNT] = {"kill", "pause", "partition",
                                                     "disk", "clock", "member"};
        if (enabled[k]) {
            ch_hist("nemesis %s", kinds[k]);
        }
    }
    for (int i = 0; i < CH_NODES; i++) {
        ch_hist("node %d %s", ch.nodes[i].id, ch.nodes[i].ip);
        clock_set(&ch.nodes[i], 0);
    }
    ctl = ch_client(ch.endpoints, ch.admin_token, 5000);
    if (ctl == NULL) {
        return 2;
    }
    for (int i = 0; i < CH_NODES; i++) {
        node_spawn(&ch.nodes[i], false);
    }
    bootstrapped = true;
    for (int i = 0; i < CH_NODES; i++) {
        if (!node_wait_up(&ch.nodes[i], 15000)) {
            ch_log("node %d did not come up", ch.nodes[i].id);
            stop_everything();
            return 2;
        }
    }
    if (find_leader(30000) < 0 || setup_accounts() != 0) {
        ch_log("the cluster did not become ready");
        stop_everything();
        return 2;
    }
    ch_hist_flush();
    if (wl_start() != 0) {
        stop_everything();
        return 2;
    }
    ch_log("workload started; faults begin");
    hold_ms(ch.smoke ? 2000 : 5000); /* a fault-free start, as a baseline */

    if (script != NULL && run_script(script) != 0) {
        interrupted = 1;
    }
    int64_t end_us = script != NULL ? 0 : ch.duration_s * 1000000;
    int order[NEM_COUNT];
    int n_order = 0, next = 0;
    int64_t last_progress = 0;
    while (ch_now_us() < end_us && !interrupted) {
        if (next == n_order) { /* a new round: every enabled kind once, shuffled */
            n_order = 0;
            for (int k = 0; k < NEM_COUNT; k++) {
                if (enabled[k]) {
                    order[n_order++] = k;
                }
            }
            for (int k = n_order - 1; k > 0; k--) {
                int j = (int)(ch_rand(&rng) % (uint64_t)(k + 1));
                int tmp = order[k];
                order[k] = order[j];
                order[j] = tmp;
            }
            next = 0;
        }
        run_nemesis((enum nemesis)order[next++]);
        reap_all();
        revive_all();
        hold_ms(ch_rand_range(&rng, quiet_min_ms(), 3 * quiet_min_ms()));
        if (ch_now_us() - last_progress > 15000000) {
            uint64_t ops, grants;
            wl_progress(&ops, &grants);
            ch_log("progress: %llu operations, %llu grants; faults kill %d pause %d partition "
                   "%d disk %d clock %d member %d",
                   (unsigned long long)ops, (unsigned long long)grants, faults[NEM_KILL],
                   faults[NEM_PAUSE], faults[NEM_PARTITION], faults[NEM_DISK], faults[NEM_CLOCK],
                   faults[NEM_MEMBER]);
            last_progress = ch_now_us();
        }
    }
    if (interrupted) {
        ch_log("interrupted: stopping the nodes");
        ch_hist("N %lld interrupted", (long long)ch_now_us());
        stop_everything();
        ch_hist_close();
        return 3;
    }
    ch_log("healing everything");
    heal_all();
    ch_hist("N %lld heal-all", (long long)ch_now_us());
    hold_ms(ch.smoke ? 2000 : 5000); /* fault-free tail: the cluster must serve again */
    wl_stop();
    if (interrupted) {
        ch_log("interrupted");
        stop_everything();
        ch_hist_close();
        return 3;
    }
    snprintf(path, sizeof(path), "%s/final.txt", ch.dir);
    write_final(path);
    ch_hist_flush();
    wl_final_replays(ch.smoke ? 200 : 1000, ch.smoke ? 100 : 500);
    ch_hist("N %lld end", (long long)ch_now_us());
    tally_close(ctl);
    stop_everything();
    ch_hist_close();
    ch_log("done");
    return 0;
}
