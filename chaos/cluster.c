/*
 * cluster.c: the chaos runner's three tallyd processes. It reads the cluster file that
 * chaos/run.sh wrote (namespaces, addresses, veths, data dirs), starts each node inside
 * its network namespace, stops, reaps and restarts it, asks it for STATUS, finds the
 * leader, and changes the Raft configuration: remove a node, wipe it, add it back, each
 * step confirmed committed before the next.
 *
 * One idea behind the shape: all of it runs on the runner's main thread, which owns the
 * processes (they die with it: PR_SET_PDEATHSIG) and is the only thread that forks,
 * signals or reaps them, so the nodes' pid, paused and member fields in `ch` need no
 * lock. A process event (start, up, exit, stop, start-failed, wiped, member-added) is
 * written to the history here, where it happens.
 */
#define _GNU_SOURCE
#include "chaos.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

struct tally *cluster_ctl;
static bool bootstrapped; /* after the first start every start uses --join */

/* ---- The cluster file (run.sh's: namespaces, addresses, data dirs, tokens). ---- */

int cluster_read_file(const char *path)
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
        } else if (strcmp(key, "peer_tls") == 0) {
            snprintf(ch.peer_tls, sizeof(ch.peer_tls), "%s", v1);
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
        n->tmpfs_mb = statvfs(n->dir, &vfs) == 0
                          ? (int64_t)((uint64_t)vfs.f_blocks * vfs.f_frsize >> 20)
                          : 256;
    }
    return 0;
}

/* ---- Nodes. ---- */

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
    char cert[PATH_MAX + 32], key[PATH_MAX + 32], ca[PATH_MAX + 32];
    snprintf(cert, sizeof(cert), "%s/member%d.pem", ch.peer_tls, n->id);
    snprintf(key, sizeof(key), "%s/member%d.key", ch.peer_tls, n->id);
    snprintf(ca, sizeof(ca), "%s/ca.pem", ch.peer_tls);
    char *argv[32] = {ch.tallyd, "--id", id, "--data-dir", n->dir, "--peer-listen", peer,
                      "--client-listen", client, "--http-listen", http, "--members", members,
                      "--token-file", ch.token_file, "--snapshot-threshold",
                      /* often in the smoke run (snapshot installs get exercised); less
                       * often in long runs, where the ledger grows large */
                      ch.smoke ? "256" : "1024", "--snapshot-trailing", ch.smoke ? "64" : "128",
                      "--debug-clock-offset-file", n->clock_file,
                      /* the default reserve (256 MiB) is the smoke run's whole tmpfs */
                      "--storage-reserve-bytes", "8388608"};
    int argc = 23;
    if (join) {
        argv[argc++] = "--join";
    }
    if (ch.peer_tls[0] != '\0') {
        char *peer_tls[] = {"--peer-cert", cert, "--peer-key", key, "--peer-ca", ca};
        for (size_t k = 0; k < sizeof(peer_tls) / sizeof(peer_tls[0]); k++) {
            argv[argc++] = peer_tls[k];
        }
    } else {
        argv[argc++] = "--peer-insecure";
    }
    argv[argc] = NULL;
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
int cluster_reap_all(void)
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
void cluster_node_stop(struct ch_node *n, int sig)
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

int cluster_node_status(struct ch_node *n, struct tally_node_status *st, int timeout_ms)
{
    if (n->pid <= 0 || n->paused) {
        return -1;
    }
    struct tally_result res;
    return tally_status(cluster_ctl, n->endpoint, timeout_ms, st, &res) == 0 ? 0 : -1;
}

/* Wait until node n answers STATUS; false if it exits or does not within timeout_ms. */
static bool node_wait_up(struct ch_node *n, int timeout_ms)
{
    int64_t deadline = ch_now_us() + (int64_t)timeout_ms * 1000;
    while (ch_now_us() < deadline) {
        struct tally_node_status st;
        if (cluster_node_status(n, &st, 300) == 0) {
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
int cluster_find_leader(int timeout_ms)
{
    int64_t deadline = ch_now_us() + (int64_t)timeout_ms * 1000;
    do {
        for (int i = 0; i < CH_NODES; i++) {
            struct tally_node_status st;
            if (cluster_node_status(&ch.nodes[i], &st, 300) == 0 &&
                st.raft_state == TALLY_RAFT_LEADER && st.serving) {
                return i;
            }
        }
        ch_sleep_ms(50);
    } while (ch_now_us() < deadline);
    return -1;
}

/* Start node i (with --join after the first bootstrap) and wait for it, retrying a few
 * times if it fails to start. */
bool cluster_node_start(int i)
{
    struct ch_node *n = &ch.nodes[i];
    for (int attempt = 0; attempt < 3; attempt++) {
        node_spawn(n, bootstrapped);
        if (node_wait_up(n, 15000)) {
            ch_hist("N %lld up %d", (long long)ch_now_us(), n->id);
            return true;
        }
        if (n->pid > 0) {
            cluster_node_stop(n, SIGKILL);
        }
        ch_sleep_ms(500);
    }
    return false;
}

/* Restart every member node that is not running. */
void cluster_revive_all(void)
{
    for (int i = 0; i < CH_NODES; i++) {
        if (ch.nodes[i].pid <= 0 && ch.nodes[i].member) {
            cluster_node_start(i);
        }
    }
}

/* Bootstrap the cluster: start every node without --join, then wait for each. */
int cluster_start_all(void)
{
    for (int i = 0; i < CH_NODES; i++) {
        node_spawn(&ch.nodes[i], false);
    }
    bootstrapped = true;
    for (int i = 0; i < CH_NODES; i++) {
        if (!node_wait_up(&ch.nodes[i], 15000)) {
            ch_log("node %d did not come up", ch.nodes[i].id);
            return -1;
        }
    }
    return 0;
}

void cluster_stop_all(void)
{
    for (int i = 0; i < CH_NODES; i++) {
        if (ch.nodes[i].pid > 0) {
            cluster_node_stop(&ch.nodes[i], SIGTERM);
        }
    }
}

/* Sleep, reaping nodes that die meanwhile and flushing the history. */
void cluster_hold_ms(int64_t ms)
{
    int64_t until = ch_now_us() + ms * 1000;
    while (ch_now_us() < until && !runner_interrupted) {
        cluster_reap_all();
        ch_hist_flush();
        int64_t left = (until - ch_now_us()) / 1000;
        ch_sleep_ms(left < 50 ? left : 50);
    }
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
void cluster_peer_lags(int leader, char *out, size_t size)
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
    if (leader < 0 || cluster_node_status(&ch.nodes[leader], &st, 500) != 0) {
        return -1;
    }
    for (uint32_t k = 0; k < st.n_members; k++) {
        if (st.members[k].id == id) {
            return !voter || st.members[k].role == TALLY_MEMBER_VOTER;
        }
    }
    return 0;
}

bool cluster_member_remove(int t)
{
    uint64_t id = (uint64_t)ch.nodes[t].id;
    int64_t deadline = ch_now_us() + 20 * 1000000LL;
    while (ch_now_us() < deadline) {
        struct tally_result res;
        int rv = tally_member_remove(cluster_ctl, id, 5000, &res);
        int leader = cluster_find_leader(3000);
        if (leader >= 0 && leader != t && config_has(leader, id, false) == 0) {
            /* Committed? The node's data dir is wiped next: wiping a node that is still a
             * voter would be an operator error (an empty voter may elect a stale leader),
             * so the removal must be confirmed by a barrier (a linearizable read). */
            struct tally_account acc;
            struct tally_result rres;
            if (tally_account_get(cluster_ctl, ch_accounts[0].name, 0, 5000, &acc, &rres) == 0) {
                int again = cluster_find_leader(3000);
                if (again >= 0 && again != t && config_has(again, id, false) == 0) {
                    return true;
                }
            }
        }
        if (rv != 0) {
            ch_log("member remove %llu: %s (%s)", (unsigned long long)id, tally_strerror(rv),
                   res.message);
        }
        cluster_hold_ms(300);
    }
    return false;
}

/* Whether node t has applied what the leader had committed. */
static bool caught_up(int t, int leader)
{
    struct tally_node_status ls, ns;
    return cluster_node_status(&ch.nodes[leader], &ls, 500) == 0 &&
           cluster_node_status(&ch.nodes[t], &ns, 500) == 0 && ns.applied_index >= ls.commit_index;
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
    while (ch_now_us() < deadline && !runner_interrupted) {
        int leader = cluster_find_leader(3000);
        if (leader < 0) {
            cluster_hold_ms(300);
            continue;
        }
        int present = config_has(leader, id, false);
        int voter = config_has(leader, id, true);
        if (voter == 1) {
            struct tally_account acc;
            struct tally_result res;
            if (tally_account_get(cluster_ctl, ch_accounts[0].name, 0, 5000, &acc, &res) == 0) {
                int again = cluster_find_leader(3000);
                if (again >= 0 && config_has(again, id, true) == 1 && caught_up(t, again)) {
                    return true;
                }
            }
            cluster_hold_ms(200);
            continue;
        }
        if (present == 0 ||
            (present == 1 && spare_since != 0 && ch_now_us() - spare_since > 10 * 1000000LL)) {
            if (present == 1) {
                ch_hist("N %lld member-stuck-spare %d", (long long)ch_now_us(), ch.nodes[t].id);
                ch_log("node %llu stayed a non-voter for 10 s: adding it again to promote it",
                       (unsigned long long)id);
            }
            struct tally_result res;
            int rv = tally_member_add(cluster_ctl, id, peer, 10000, &res);
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
        cluster_hold_ms(300);
    }
    return false;
}

/* Make node t a voter again (wiping it first if it is not in the configuration). */
bool cluster_member_restore(int t)
{
    struct ch_node *n = &ch.nodes[t];
    if (n->pid > 0) {
        cluster_node_stop(n, SIGTERM);
    }
    ch_sh("find %s -mindepth 1 -delete", n->dir);
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
