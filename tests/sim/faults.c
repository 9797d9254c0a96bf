/*
 * faults.c: the faults a seed injects, and healing them all for the liveness phase.
 *
 * Only the fixture's own levers are used: disconnect/reconnect (one way or both),
 * kill/revive (a killed server keeps its memory: it is a paused, unreachable
 * process, not a restart), network and disk latency, I/O faults (by default the
 * leader's append of a new batch fails as the write completes; in hostile mode the
 * n-th next I/O of any server fails: an append, a truncate, a term or vote write, a
 * send), randomized election timeouts, and forced elections with depose/elect; and
 * one lever of the sim's own: a server's wall clock, which only steers ledger time.
 *
 * raft_fixture_elect and raft_fixture_depose only assert their preconditions, and
 * the packaged libraft is built with assertions off: calling them in the wrong state
 * writes the follower fields of a leader's or candidate's state union. So their
 * preconditions are checked here before every call.
 */
#include "sim.h"

#define DEFAULT_NETWORK_LATENCY_MS 15

bool sim_killed(struct sim *s, unsigned i)
{
    return !raft_fixture_alive(&s->fx, i);
}

void sim_kill(struct sim *s, unsigned i)
{
    raft_fixture_kill(&s->fx, i);
    sim_trace(s, "kill %u", i);
}

void sim_revive(struct sim *s, unsigned i)
{
    raft_fixture_revive(&s->fx, i);
    sim_trace(s, "revive %u", i);
}

static void cut_one_way(struct sim *s, unsigned i, unsigned j)
{
    raft_fixture_disconnect(&s->fx, i, j);
    s->cut[i][j] = true;
}

static void mend_one_way(struct sim *s, unsigned i, unsigned j)
{
    raft_fixture_reconnect(&s->fx, i, j);
    s->cut[i][j] = false;
}

void sim_disconnect(struct sim *s, unsigned i, unsigned j)
{
    cut_one_way(s, i, j);
    cut_one_way(s, j, i);
}

void sim_reconnect(struct sim *s, unsigned i, unsigned j)
{
    mend_one_way(s, i, j);
    mend_one_way(s, j, i);
}

/* Whether server i is alive and reaches (both ways) a majority counting itself. */
static bool reaches_majority(struct sim *s, unsigned i)
{
    unsigned reach = 1;
    for (unsigned j = 0; j < s->n; j++) {
        reach += j != i && !sim_killed(s, j) && !s->cut[i][j] && !s->cut[j][i];
    }
    return !sim_killed(s, i) && reach > s->n / 2;
}

bool sim_depose(struct sim *s)
{
    unsigned leader = sim_stable_leader(s);
    if (leader == s->n || raft_state(raft_fixture_get(&s->fx, leader)) != RAFT_LEADER) {
        return false;
    }
    /* depose writes follower_state.randomized_election_timeout of every other server:
     * harmless for a candidate (same offset), but on a stale leader it overwrites
     * leader_state.progress. */
    for (unsigned j = 0; j < s->n; j++) {
        if (j != leader && raft_state(raft_fixture_get(&s->fx, j)) == RAFT_LEADER) {
            return false;
        }
    }
    sim_trace(s, "depose %u", leader);
    raft_fixture_depose(&s->fx);
    return sim_stable_leader(s) == s->n;
}

/* raft_fixture_start_elect's preconditions: no leader and every server a follower. */
static bool can_elect(struct sim *s, unsigned i)
{
    if (sim_stable_leader(s) < s->n || !reaches_majority(s, i)) {
        return false;
    }
    for (unsigned j = 0; j < s->n; j++) {
        if (raft_state(raft_fixture_get(&s->fx, j)) != RAFT_FOLLOWER) {
            return false;
        }
    }
    return true;
}

bool sim_elect(struct sim *s, unsigned i)
{
    if (!can_elect(s, i)) {
        return false;
    }
    sim_trace(s, "elect %u", i);
    raft_fixture_elect(&s->fx, i);
    return sim_stable_leader(s) == i;
}

/* ---- Random faults. ---- */

static void fault_partition(struct sim *s)
{
    unsigned i = (unsigned)sim_rng_below(&s->rng, s->n);
    unsigned j = (i + 1 + (unsigned)sim_rng_below(&s->rng, s->n - 1)) % s->n;
    if (sim_rng_chance(&s->rng, 1, 4)) {
        cut_one_way(s, i, j);
        sim_trace(s, "cut %u -> %u", i, j);
    } else {
        sim_disconnect(s, i, j);
        sim_trace(s, "cut %u <-> %u", i, j);
    }
}

static bool fault_reconnect(struct sim *s)
{
    unsigned pairs[SIM_MAX_SERVERS * SIM_MAX_SERVERS][2], n = 0;
    for (unsigned i = 0; i < s->n; i++) {
        for (unsigned j = 0; j < s->n; j++) {
            if (s->cut[i][j]) {
                pairs[n][0] = i;
                pairs[n++][1] = j;
            }
        }
    }
    if (n == 0) {
        return false;
    }
    unsigned k = (unsigned)sim_rng_below(&s->rng, n);
    mend_one_way(s, pairs[k][0], pairs[k][1]);
    sim_trace(s, "mend %u -> %u", pairs[k][0], pairs[k][1]);
    return true;
}

static unsigned n_killed(struct sim *s)
{
    unsigned n = 0;
    for (unsigned i = 0; i < s->n; i++) {
        n += sim_killed(s, i);
    }
    return n;
}

/* Pick a server with sim_killed() == killed, or s->n. */
static unsigned pick_server(struct sim *s, bool killed)
{
    unsigned start = (unsigned)sim_rng_below(&s->rng, s->n);
    for (unsigned k = 0; k < s->n; k++) {
        unsigned i = (start + k) % s->n;
        if (sim_killed(s, i) == killed && !s->down[i]) {
            return i;
        }
    }
    return s->n;
}

static bool fault_kill(struct sim *s)
{
    /* Losing the majority happens, but less often: the cluster must then grant nothing. */
    if (n_killed(s) + 1 > s->n / 2 && !sim_rng_chance(&s->rng, 1, 4)) {
        return false;
    }
    unsigned i = pick_server(s, false);
    if (i == s->n) {
        return false;
    }
    sim_kill(s, i);
    return true;
}

static bool fault_revive(struct sim *s)
{
    unsigned i = pick_server(s, true);
    if (i == s->n) {
        return false;
    }
    sim_revive(s, i);
    return true;
}

static void set_disk_latency(struct sim *s, unsigned i, unsigned ms)
{
    raft_fixture_set_disk_latency(&s->fx, i, ms);
    s->disk_ms[i] = ms;
}

/* The fixture completes a server's writes in order of submit time + latency, so a
 * lower latency lets a later write finish before an earlier one: no disk does that,
 * and libraft 0.22.1 does not survive it (its count of pending writes goes wrong and
 * the server stays follower and rejects every vote, for good). So a server's disk only
 * gets slower, unless hostile. Networks may reorder: any latency. */
static bool fault_latency(struct sim *s, bool disk)
{
    static const unsigned net_ms[] = {1, 5, 15, 40, 90, 150};
    static const unsigned disk_ms[] = {1, 5, 10, 20, 40, 80, 200};
    unsigned i = (unsigned)sim_rng_below(&s->rng, s->n);
    if (!disk) {
        unsigned ms = net_ms[sim_rng_below(&s->rng, 6)];
        raft_fixture_set_network_latency(&s->fx, i, ms);
        sim_trace(s, "network latency of %u: %u ms", i, ms);
        return true;
    }
    unsigned ms = disk_ms[sim_rng_below(&s->rng, 7)];
    if (ms < s->disk_ms[i] && !s->cfg.hostile) {
        return false;
    }
    set_disk_latency(s, i, ms);
    sim_trace(s, "disk latency of %u: %u ms", i, ms);
    return true;
}

/* A stable leader's write fails as it completes (an asynchronous disk error): the
 * fault is armed right after a new batch is proposed and disarmed once a disk event of
 * the leader was stepped. The failing I/O is that write or an earlier one still in
 * flight, or, if a tick or a message comes first, one of the leader's sends (a lost
 * message). A failed write makes libraft give up (patch 0005), and the sim stops that
 * server for good (cluster.c); the synchronous failure has its own scenario. */
static bool fault_leader_append(struct sim *s)
{
    unsigned leader = sim_stable_leader(s);
    if (leader == s->n || sim_leader(s) != leader || sim_propose_random_to(s, leader) != 0) {
        return false;
    }
    raft_fixture_io_fault(&s->fx, leader, 0, 1);
    sim_trace(s, "leader %u: a write fails (last index %llu)", leader,
              (unsigned long long)raft_last_index(raft_fixture_get(&s->fx, leader)));
    for (unsigned k = 0; k < 64 && !s->failed; k++) {
        struct raft_fixture_event *ev = raft_fixture_step(&s->fx);
        if (raft_fixture_event_type(ev) == RAFT_FIXTURE_DISK &&
            raft_fixture_event_server_index(ev) == leader) {
            break;
        }
    }
    raft_fixture_io_fault(&s->fx, leader, -1, 0);
    return true;
}

/* Any I/O of any server fails, after a few more (hostile mode only: faults armed this
 * way can stop a majority for good, which the liveness check then reports). */
static void fault_io(struct sim *s)
{
    unsigned i = (unsigned)sim_rng_below(&s->rng, s->n);
    int delay = (int)sim_rng_range(&s->rng, 0, 8);
    int repeat = (int)sim_rng_range(&s->rng, 1, 3);
    raft_fixture_io_fault(&s->fx, i, delay, repeat);
    sim_trace(s, "io fault on %u after %d ops, %d times", i, delay, repeat);
}

/* Whether one more server may be stopped for good with a majority left. */
static bool may_lose_a_server(const struct sim *s)
{
    unsigned down = 0;
    for (unsigned i = 0; i < s->n; i++) {
        down += s->down[i];
    }
    return down + 1 <= (s->n - 1) / 2;
}

static void fault_timeout(struct sim *s)
{
    unsigned i = (unsigned)sim_rng_below(&s->rng, s->n);
    unsigned et = s->cfg.election_timeout_ms;
    raft_fixture_set_randomized_election_timeout(&s->fx, i,
                                                 et + (unsigned)sim_rng_below(&s->rng, et + 1));
}

/* A forced election: depose the stable leader, then elect a random server. */
static bool fault_elect(struct sim *s)
{
    if (sim_stable_leader(s) < s->n && !sim_depose(s)) {
        return false;
    }
    unsigned i = (unsigned)sim_rng_below(&s->rng, s->n);
    if (!can_elect(s, i)) {
        return false;
    }
    sim_elect(s, i);
    return true;
}

/* A server's wall clock steps 40 days either way, a few seconds, or back to right. Only
 * its wall reading moves; ledger time must keep the fixture's (monotonic) time, which
 * cluster.c checks every step. */
static void fault_clock_step(struct sim *s)
{
    static const int64_t day_ms = 86400000LL;
    unsigned i = (unsigned)sim_rng_below(&s->rng, s->n);
    int64_t offsets[] = {40 * day_ms, -40 * day_ms, sim_rng_range(&s->rng, -20000, 20000), 0};
    s->srv[i].wall_offset_ms = offsets[sim_rng_below(&s->rng, 4)];
    sim_trace(s, "wall clock of %u: %+lld ms", i, (long long)s->srv[i].wall_offset_ms);
}

static bool inject(struct sim *s, int kind)
{
    switch (kind) {
    case SIM_F_PARTITION:
        fault_partition(s);
        return true;
    case SIM_F_RECONNECT:
        return fault_reconnect(s);
    case SIM_F_KILL:
        return fault_kill(s);
    case SIM_F_REVIVE:
        return fault_revive(s);
    case SIM_F_NET_LATENCY:
    case SIM_F_DISK_LATENCY:
        return fault_latency(s, kind == SIM_F_DISK_LATENCY);
    case SIM_F_IO_FAULT:
        /* A failed write stops its server for good (it gives up, and the fixture cannot
         * restart it from its disk): keep a majority able to come back. */
        if (!may_lose_a_server(s)) {
            return false;
        }
        if (!s->cfg.hostile) {
            return fault_leader_append(s);
        }
        fault_io(s);
        return true;
    case SIM_F_DEPOSE:
        return sim_depose(s);
    case SIM_F_ELECT:
        return fault_elect(s);
    case SIM_F_CLOCK_STEP:
        fault_clock_step(s);
        return true;
    default:
        fault_timeout(s);
        return true;
    }
}

void sim_random_fault(struct sim *s)
{
    /* Weights per kind, in enum order. */
    static const unsigned weight[SIM_F_MAX] = {18, 20, 10, 12, 8, 8, 10, 4, 4, 6, 4};
    unsigned total = 0, roll;
    for (int k = 0; k < SIM_F_MAX; k++) {
        total += weight[k];
    }
    roll = (unsigned)sim_rng_below(&s->rng, total);
    int kind = 0;
    while (roll >= weight[kind]) {
        roll -= weight[kind++];
    }
    if (inject(s, kind)) {
        s->stats.faults[kind]++;
        sim_digest(s, 0xfa0175 + (uint64_t)kind);
    }
}

void sim_heal(struct sim *s)
{
    for (unsigned i = 0; i < s->n; i++) {
        for (unsigned j = 0; j < s->n; j++) {
            if (s->cut[i][j]) {
                mend_one_way(s, i, j);
            }
        }
    }
    for (unsigned i = 0; i < s->n; i++) {
        if (sim_killed(s, i) && !s->down[i]) {
            sim_revive(s, i);
        }
        /* Disks keep their latency: a faster disk would reorder writes in flight. */
        raft_fixture_set_network_latency(&s->fx, i, DEFAULT_NETWORK_LATENCY_MS);
        raft_fixture_io_fault(&s->fx, i, -1, 0); /* a negative countdown disables faults */
        s->srv[i].wall_offset_ms = 0;
    }
    sim_distinct_timeouts(s);
    sim_trace(s, "healed");
}
