/*
 * nemesis.c: the chaos runner's faults and their schedule. Each nemesis injects one kind
 * of fault into the cluster of cluster.c, holds it for a random time and heals it; the
 * schedule draws them in shuffled rounds of every enabled kind, so each kind comes up
 * equally often, with a quiet period after each; `--faults` replaces the rounds by a
 * fixed script, to replay a finding.
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
 *
 * One idea behind the shape: every random choice of the faults is drawn from one
 * generator (runner_rng) on the main thread, in a fixed order, so a seed replays the
 * same fault sequence as long as the cluster answers the same way.
 */
#define _GNU_SOURCE
#include "chaos.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

enum nemesis { NEM_KILL, NEM_PAUSE, NEM_PARTITION, NEM_DISK, NEM_CLOCK, NEM_MEMBER, NEM_COUNT };
static const char *const nem_names[NEM_COUNT] = {"kill", "pause", "partition",
                                                 "disk", "clock", "member"};
static const char *const partition_kinds[] = {"isolate-leader", "isolate", "bridge", "link-down"};

static bool cut[CH_NODES][CH_NODES];
static bool link_down[CH_NODES];
static int faults[NEM_COUNT];
static bool enabled[NEM_COUNT] = {true, true, true, true, true, true};
/* Scripted faults (--faults): the next fault's node index, partition kind and clock
 * offset; -1 / 0 when the nemesis chooses. */
static int forced_target = -1;
static int forced_sub = -1;
static int64_t forced_offset;

/* ---- Network. ---- */

/* Node a's namespace drops every packet that comes from node b. */
static void net_block(int a, int b, bool add)
{
    ch_sh("ip -n %s rule %s pref 10 from %s iif eth0 blackhole", ch.nodes[a].ns,
          add ? "add" : "del", ch.nodes[b].ip);
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
            ch_sh("ip link set %s up", ch.nodes[a].veth);
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
                snprintf(cuts + len, cuts_size - len, "%s%d%d", len > 0 ? "," : "", ch.nodes[a].id,
                         ch.nodes[b].id);
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
        if (ch_sh("mount -o remount,size=%lluk %s", (unsigned long long)size_kib, n->dir) == 0) {
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
static void disk_free(struct ch_node *n, bool grow)
{
    char path[PATH_MAX + 16];
    fill_path(n, path, sizeof(path));
    unlink(path);
    if (grow && n->tmpfs_mb < 4096) {
        n->tmpfs_mb += 64;
    }
    ch_sh("mount -o remount,size=%lldm %s", (long long)n->tmpfs_mb, n->dir);
}

void nemesis_clock_set(const struct ch_node *n, int64_t offset_ms)
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
/* ---- The nemeses. ---- */

static int64_t quiet_min_ms(void)
{
    return ch.smoke ? 500 : 1000;
}

/* A running member node: the leader with probability pct/100, else a random one. */
static int pick_target(int pct)
{
    if (forced_target >= 0) {
        return forced_target;
    }
    int leader = cluster_find_leader(2000);
    if (leader >= 0 && ch_rand_range(&runner_rng, 1, 100) <= pct) {
        return leader;
    }
    int candidates[CH_NODES], n = 0;
    for (int i = 0; i < CH_NODES; i++) {
        if (ch.nodes[i].pid > 0 && ch.nodes[i].member) {
            candidates[n++] = i;
        }
    }
    return n > 0 ? candidates[ch_rand(&runner_rng) % (uint64_t)n] : -1;
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
    int leader = cluster_find_leader(2000);
    int t = pick_target(60);
    if (t < 0) {
        return;
    }
    fault_event("kill", t, "SIGKILL", t == leader);
    cluster_node_stop(&ch.nodes[t], SIGKILL);
    cluster_hold_ms(ch_rand_range(&runner_rng, 200, 3000));
    bool up = cluster_node_start(t);
    heal_event("kill", t, up ? "restarted" : "restart-failed");
}

static void nem_pause(void)
{
    int leader = cluster_find_leader(2000);
    int t = pick_target(60);
    if (t < 0) {
        return;
    }
    struct ch_node *n = &ch.nodes[t];
    kill(n->pid, SIGSTOP);
    n->paused = true;
    fault_event("pause", t, "SIGSTOP", t == leader);
    cluster_hold_ms(ch_rand_range(&runner_rng, 1000, 6000));
    if (n->pid > 0) {
        kill(n->pid, SIGCONT);
    }
    n->paused = false;
    heal_event("pause", t, "SIGCONT");
}

static void nem_partition(void)
{
    int sub = forced_sub >= 0 ? forced_sub : (int)(ch_rand(&runner_rng) % 4);
    int leader = cluster_find_leader(2000);
    int t = sub == 0 && leader >= 0 ? leader : (int)(ch_rand(&runner_rng) % CH_NODES);
    if (sub == 3 && leader >= 0 && ch_chance(&runner_rng, 1, 2)) {
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
        ch_sh("ip link set %s down", ch.nodes[t].veth);
        link_down[t] = true;
        break;
    }
    char cuts[64], down[16], detail[128];
    layout(cuts, sizeof(cuts), down, sizeof(down));
    snprintf(detail, sizeof(detail), "%s %s %s", partition_kinds[sub], cuts, down);
    fault_event("partition", t, detail, t == leader);
    cluster_hold_ms(ch_rand_range(&runner_rng, 2000, 8000));
    /* The heal is stamped before the rules go, so a grant stamped after it may be real. */
    heal_event("partition", t, partition_kinds[sub]);
    net_heal();
}

static void nem_disk(void)
{
    int leader = cluster_find_leader(2000);
    int t = pick_target(50);
    if (t < 0) {
        return;
    }
    struct ch_node *n = &ch.nodes[t];
    fault_event("disk", t, "full", t == leader);
    disk_fill(n);
    int64_t until = ch_now_us() + ch_rand_range(&runner_rng, 3000, 8000) * 1000;
    while (ch_now_us() < until && n->pid > 0 && !runner_interrupted) {
        cluster_hold_ms(50);
    }
    bool grow = ch_chance(&runner_rng, 1, 3);
    disk_free(n, grow);
    cluster_hold_ms(
        300); /* a node that hit ENOSPC just before the space came back is still reaped here */
    bool died = n->pid <= 0;
    bool up = !died || cluster_node_start(t);
    heal_event("disk", t, died ? (up ? "restarted" : "restart-failed") : "survived");
    if (grow) {
        ch_hist("N %lld remount %d %lld", (long long)ch_now_us(), n->id, (long long)n->tmpfs_mb);
    }
}

static void nem_clock(void)
{
    int leader = cluster_find_leader(2000);
    int t = pick_target(60);
    if (t < 0) {
        return;
    }
    int64_t offset =
        ch_rand_range(&runner_rng, 3000, 20000) * (ch_chance(&runner_rng, 1, 2) ? 1 : -1);
    if (forced_offset != 0) {
        offset = forced_offset;
    }
    char detail[32];
    snprintf(detail, sizeof(detail), "%lld", (long long)offset);
    nemesis_clock_set(&ch.nodes[t], offset);
    fault_event("clock", t, detail, t == leader);
    cluster_hold_ms(ch_rand_range(&runner_rng, 3000, 8000));
    nemesis_clock_set(&ch.nodes[t], 0);
    heal_event("clock", t, "0");
}

static void nem_member(void)
{
    int leader = cluster_find_leader(3000);
    if (leader < 0) {
        return;
    }
    int t = ch_chance(&runner_rng, 1, 3)
                ? leader
                : (leader + 1 + (int)(ch_rand(&runner_rng) % 2)) % CH_NODES;
    if (forced_target >= 0) {
        t = forced_target;
    }
    struct ch_node *n = &ch.nodes[t];
    char lags[128];
    cluster_peer_lags(leader, lags, sizeof(lags));
    ch_log("member: node %d leads; entries its peers lack:%s", ch.nodes[leader].id,
           lags[0] != '\0' ? lags : " unknown");
    fault_event("member", t, "remove", t == leader);
    if (!cluster_member_remove(t)) {
        ch_log("node %d could not be removed; leaving it", n->id);
        heal_event("member", t, "remove-failed");
        return;
    }
    n->member = false;
    ch_hist("N %lld member-removed %d", (long long)ch_now_us(), n->id);
    cluster_hold_ms(ch_rand_range(&runner_rng, 200, 1500));
    bool ok = cluster_member_restore(t);
    heal_event("member", t, ok ? "re-added" : "re-add-failed");
}

static void run_nemesis(enum nemesis k)
{
    faults[k]++;
    switch (k) {
    case NEM_KILL:
        nem_kill();
        break;
    case NEM_PAUSE:
        nem_pause();
        break;
    case NEM_PARTITION:
        nem_partition();
        break;
    case NEM_DISK:
        nem_disk();
        break;
    case NEM_CLOCK:
        nem_clock();
        break;
    default:
        nem_member();
        break;
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
int nemesis_script(const char *script)
{
    char buf[1024];
    snprintf(buf, sizeof(buf), "%s", script);
    char *save = NULL;
    for (char *step = strtok_r(buf, ",", &save); step != NULL && !runner_interrupted;
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
            cluster_hold_ms(arg1 != NULL ? strtoll(arg1, NULL, 10) : 1000);
            continue;
        }
        int k = 0;
        while (k < NEM_COUNT && strcmp(step, nem_names[k]) != 0) {
            k++;
        }
        if (k == NEM_COUNT) {
            ch_log("fault script: unknown step '%s'", step);
            return -1;
        }
        forced_target = -1;
        if (arg1 != NULL && strcmp(arg1, "leader") == 0) {
            forced_target = cluster_find_leader(5000);
        } else if (arg1 != NULL && strcmp(arg1, "follower") == 0) {
            int leader = cluster_find_leader(5000);
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
            if (strcmp(arg2, partition_kinds[j]) == 0) {
                forced_sub = j;
            }
        }
        if (arg2 != NULL && k == NEM_CLOCK) {
            forced_offset = strtoll(arg2, NULL, 10);
        }
        run_nemesis((enum nemesis)k);
        forced_target = forced_sub = -1;
        forced_offset = 0;
        cluster_reap_all();
        cluster_revive_all();
    }
    return 0;
}

/* Undo every fault: links, rules, pauses, clocks, disks, dead nodes, membership. */
void nemesis_heal_all(void)
{
    net_heal();
    for (int i = 0; i < CH_NODES; i++) {
        struct ch_node *n = &ch.nodes[i];
        if (n->paused && n->pid > 0) {
            kill(n->pid, SIGCONT);
        }
        n->paused = false;
        nemesis_clock_set(n, 0);
        disk_free(n, false);
    }
    cluster_reap_all();
    cluster_revive_all();
    for (int i = 0; i < CH_NODES; i++) {
        if (!ch.nodes[i].member) {
            cluster_member_restore(i);
        }
    }
}

/* ---- Which kinds, and when. ---- */

/* "all" or a comma-separated subset of the kinds. 0 or -1. */
int nemesis_parse(const char *list)
{
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
        while (k < NEM_COUNT && strcmp(w, nem_names[k]) != 0) {
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

void nemesis_hist_enabled(void)
{
    for (int k = 0; k < NEM_COUNT; k++) {
        if (enabled[k]) {
            ch_hist("nemesis %s", nem_names[k]);
        }
    }
}

void nemesis_rounds(int64_t end_us)
{
    int order[NEM_COUNT];
    int n_order = 0, next = 0;
    int64_t last_progress = 0;
    while (ch_now_us() < end_us && !runner_interrupted) {
        if (next == n_order) { /* a new round: every enabled kind once, shuffled */
            n_order = 0;
            for (int k = 0; k < NEM_COUNT; k++) {
                if (enabled[k]) {
                    order[n_order++] = k;
                }
            }
            for (int k = n_order - 1; k > 0; k--) {
                int j = (int)(ch_rand(&runner_rng) % (uint64_t)(k + 1));
                int tmp = order[k];
                order[k] = order[j];
                order[j] = tmp;
            }
            next = 0;
        }
        run_nemesis((enum nemesis)order[next++]);
        cluster_reap_all();
        cluster_revive_all();
        cluster_hold_ms(ch_rand_range(&runner_rng, quiet_min_ms(), 3 * quiet_min_ms()));
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
}
