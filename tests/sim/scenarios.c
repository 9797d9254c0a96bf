/*
 * scenarios.c: named regression runs, each a scripted fault sequence with its own
 * assertions on top of the checks every step gets.
 *
 * figure8: the Raft paper's Figure 8 on 5 servers. (a) S0 leads and gets entry A onto
 * S1 only; (b) S4 is elected by S2, S3 and itself and appends A' (same index, later
 * term) to its own log only; (c) S0 is elected again, in a later term, and gets A onto
 * S2: A is now on a majority (S0, S1, S2) and must still not be committed; (d) S4 is
 * elected by S1 and S3 and overwrites A with A' everywhere. The step hook fails the run
 * the moment any ledger holds A's reservation; at the end A' is on every ledger. In
 * (c) libraft >= 0.17 appends a barrier of the new term at once (it holds an older
 * uncommitted entry), and any follower acknowledging in the new term receives it; the
 * scenario then keeps S1 and S3 away from S0 so that the barrier is only on S0 and S2.
 * Without a barrier (older libraft) S1 stays connected and acknowledges A by heartbeat,
 * so S0 knows A is on 3 of 5 servers: a leader that commits by counting replicas
 * (libraft < 0.17.1) applies A there and the run fails.
 *
 * leader-disk-fault: the leader's append of a new batch fails, twice: when the write
 * completes (async) and inside raft_apply (sync). Async: the followers' copies are a
 * majority, so the batch may be committed and acknowledged; it must then be on every
 * replica. Sync: raft_apply fails and the batch is never acknowledged; libraft 0.22.1
 * cannot continue after that, so the leader is stopped for good (fail-stop, what a
 * node must do on a Raft I/O error). Both: the cluster recovers (a new grant is
 * acknowledged, every live server applies the whole log) and the replicas agree.
 *
 * snapshot-install: a follower is paused while the leader takes snapshots with few
 * trailing entries; revived, it can only catch up by InstallSnapshot, which goes
 * through the adapter's restore. (Random seeds run without snapshots unless hostile:
 * see main.c.)
 *
 * Elections are steered with the fixture's randomized timeouts (the favoured server's
 * is the minimum, the others' the maximum), not with raft_fixture_elect, whose
 * preconditions (every server a follower) do not hold mid-scenario.
 */
#include "sim.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SCENARIO_SEED 8 /* drives only the account limits and the workload filler */

#define EXPECT SIM_EXPECT

static struct raft *srv_raft(struct sim *s, unsigned i)
{
    return raft_fixture_get(&s->fx, i);
}

static bool is_leader(struct sim *s, unsigned i)
{
    return raft_state(srv_raft(s, i)) == RAFT_LEADER;
}

static raft_term max_term(struct sim *s)
{
    raft_term t = 0;
    for (unsigned i = 0; i < s->n; i++) {
        t = srv_raft(s, i)->current_term > t ? srv_raft(s, i)->current_term : t;
    }
    return t;
}

/* Step until server i leads in a term after `after`, at most max_ms. */
static bool wait_leader(struct sim *s, unsigned i, raft_term after, unsigned max_ms)
{
    raft_time start = raft_fixture_time(&s->fx);
    while (!s->failed && !(is_leader(s, i) && srv_raft(s, i)->current_term > after)) {
        if (raft_fixture_time(&s->fx) - start >= max_ms) {
            return false;
        }
        sim_step(s);
    }
    return !s->failed;
}

#define step_ms sim_step_ms

/* Server i times out first from its next timer reset on. */
static void favour(struct sim *s, unsigned i)
{
    unsigned et = s->cfg.election_timeout_ms;
    for (unsigned j = 0; j < s->n; j++) {
        raft_fixture_set_randomized_election_timeout(&s->fx, j, j == i ? et : 2 * et);
    }
}

static void isolate(struct sim *s, unsigned i)
{
    for (unsigned j = 0; j < s->n; j++) {
        if (j != i) {
            sim_disconnect(s, i, j);
        }
    }
}

static void connect_all(struct sim *s)
{
    for (unsigned i = 0; i < s->n; i++) {
        for (unsigned j = i + 1; j < s->n; j++) {
            sim_reconnect(s, i, j);
        }
    }
}

/* Open n servers, make server 0 the leader, create the accounts everywhere. */
static int scenario_open(struct sim *s, unsigned n, const struct sim_options *o)
{
    struct sim_config cfg;
    sim_config_from_seed(&cfg, SCENARIO_SEED);
    sim_config_apply(&cfg, o);
    cfg.n_servers = n;
    cfg.election_timeout_ms = 1000;
    cfg.pre_vote = false;
    cfg.retention_ms = 0;
    if (sim_open(s, &cfg) != 0) {
        return -1;
    }
    if (sim_stable_leader(s) != 0 && (!sim_depose(s) || !sim_elect(s, 0))) {
        sim_fail(s, "check=scenario: cannot make server 0 the leader");
        return -1;
    }
    if (sim_setup_accounts(s) != 0 || !sim_wait_all_applied(s, 0, 10000)) {
        sim_fail(s, "check=scenario: the accounts did not reach every server");
        return -1;
    }
    return 0;
}

/* Propose one reserve (key 0, a small estimate) tagged `tag` on server i. Returns the
 * raft index of its entry (0 if raft_apply refused it) and the request id in `id`. */
static raft_index propose_reserve(struct sim *s, unsigned i, int tag,
                                  uint8_t id[LEDGER_REQUEST_ID_SIZE], int *rv)
{
    struct sim_proposal *p = sim_proposal_new(s, tag);
    if (p == NULL) {
        *rv = RAFT_NOMEM;
        return 0;
    }
    p->n = 1;
    p->cmds[0] = sim_cmd_reserve(s, 0, 100, 60000);
    memcpy(id, p->cmds[0].request_id, LEDGER_REQUEST_ID_SIZE);
    *rv = sim_propose(s, i, p); /* p belongs to the apply callback (or is freed) now */
    return *rv == 0 ? raft_last_index(srv_raft(s, i)) : 0;
}

static bool held_everywhere(struct sim *s, const uint8_t id[LEDGER_REQUEST_ID_SIZE])
{
    struct ledger_reservation_info info;
    for (unsigned i = 0; i < s->n; i++) {
        if (ledger_reservation_get(s->srv[i].ledger, id, &info) != 0) {
            return false;
        }
    }
    return true;
}

/* Verdict and clean-up shared by the scenarios. */
static bool scenario_end(struct sim *s, const char *name, struct sim_stats *total)
{
    bool ok = !s->failed;
    if (!ok) {
        printf("scenario=%s FAIL %s\n", name, s->failure);
    }
    sim_close(s);
    s->stats.seeds = 1;
    sim_stats_add(total, &s->stats);
    free(s);
    return ok;
}

/* ---- Figure 8. ---- */

struct fig8 {
    uint8_t a[LEDGER_REQUEST_ID_SIZE], a2[LEDGER_REQUEST_ID_SIZE];
    raft_index index_a, index_a2;
    raft_term term_a, term_a2;
};

/* (a) S0 leads and replicates A to S1 only. */
static void fig8_a(struct sim *s, struct fig8 *f)
{
    favour(s, 4); /* from now on S4 times out first */
    step_ms(s, 300);
    for (unsigned j = 2; j < 5; j++) {
        sim_disconnect(s, 0, j);
    }
    int rv;
    f->term_a = srv_raft(s, 0)->current_term;
    f->index_a = propose_reserve(s, 0, 2, f->a, &rv);
    EXPECT(s, f->index_a > 0, "check=figure8: S0 refused A: %s", raft_strerror(rv));
    memcpy(s->forbid_id, f->a, sizeof(f->a));
    s->forbid_set = true; /* from here on, no ledger may ever hold A */
    step_ms(s, 100);
    EXPECT(s, raft_last_index(srv_raft(s, 1)) >= f->index_a, "check=figure8: S1 lacks A");
    EXPECT(s, srv_raft(s, 0)->commit_index < f->index_a, "check=figure8: A committed on 2 of 5");
}

/* (b) S0 and S1 stop; S4 is elected by S2, S3, S4 and appends A' only to its own log
 * (at A's index: S4 holds no uncommitted entries, so it appends no barrier). */
static void fig8_b(struct sim *s, struct fig8 *f)
{
    sim_kill(s, 0);
    sim_kill(s, 1);
    EXPECT(s, wait_leader(s, 4, max_term(s), 20000), "check=figure8: S4 not elected in (b)");
    f->term_a2 = srv_raft(s, 4)->current_term;
    isolate(s, 4); /* before its first messages are flushed */
    int rv;
    f->index_a2 = propose_reserve(s, 4, 3, f->a2, &rv);
    EXPECT(s, f->index_a2 == f->index_a, "check=figure8: A' at index %llu, A at %llu",
           (unsigned long long)f->index_a2, (unsigned long long)f->index_a);
    step_ms(s, 20); /* S4 persists A' */
    sim_kill(s, 4);
}

/* (c) S0 returns and is elected in a later term by S2 and S3, and gets A onto S2: A is
 * then on S0, S1 and S2, a majority. libraft >= 0.17 appends a barrier of the new term
 * at once when it holds older uncommitted entries, and a follower acknowledging in the
 * new term receives it, so S1 (still stopped) never acknowledges and S3 is cut off
 * right after the vote: the barrier is only on S0 and S2 and A must stay uncommitted.
 * Without a barrier (the old behaviour) S1 is revived and acknowledges A by heartbeat:
 * S0 then knows A is on 3 of 5 servers, which is exactly when a leader counting
 * replicas commits it. */
static void fig8_c(struct sim *s, struct fig8 *f)
{
    isolate(s, 2);
    sim_reconnect(s, 0, 2);
    sim_reconnect(s, 0, 3);
    favour(s, 0);
    sim_revive(s, 0);
    EXPECT(s, wait_leader(s, 0, f->term_a2, 20000), "check=figure8: S0 not re-elected in (c)");
    struct raft *s0 = srv_raft(s, 0);
    bool barrier = raft_last_index(s0) > f->index_a;
    sim_disconnect(s, 0, 3); /* before anything of the new term is flushed to S3 */
    if (!barrier) {
        sim_revive(s, 1);
    }
    sim_trace(s, "figure8 (c): S0 leads term %llu, barrier %d",
              (unsigned long long)s0->current_term, barrier);
    step_ms(s, 400);
    EXPECT(s, raft_last_index(srv_raft(s, 2)) >= f->index_a, "check=figure8: S2 did not receive A");
    EXPECT(s,
           raft_last_index(srv_raft(s, 1)) == f->index_a &&
               raft_last_index(srv_raft(s, 3)) < f->index_a,
           "check=figure8: S1 or S3 received entries of the new term");
    /* The Figure 8 moment: A is on 3 of 5 servers, yet it must not be committed. */
    EXPECT(s, s0->commit_index < f->index_a,
           "check=figure8: S0 committed A (term %llu) by counting replicas in term %llu",
           (unsigned long long)f->term_a, (unsigned long long)s0->current_term);
}

/* (d) S0 stops again; S4 is elected by S1, S3, S4 and overwrites A with A'. (e) All
 * rejoin and converge on A'. */
static void fig8_d(struct sim *s, struct fig8 *f)
{
    sim_kill(s, 0);
    isolate(s, 2);
    if (sim_killed(s, 1)) {
        sim_revive(s, 1);
    }
    sim_reconnect(s, 4, 1);
    sim_reconnect(s, 4, 3);
    sim_reconnect(s, 1, 3);
    favour(s, 4);
    sim_revive(s, 4);
    EXPECT(s, wait_leader(s, 4, max_term(s), 30000), "check=figure8: S4 not re-elected in (d)");
    step_ms(s, 500);
    connect_all(s);
    sim_revive(s, 0);
    sim_distinct_timeouts(s);
    EXPECT(s, sim_propose_until_acked(s, 30000) == 0, "check=figure8: no progress after (e)");
    unsigned leader = sim_leader(s);
    EXPECT(s, leader < s->n && sim_wait_all_applied(s, leader, 30000),
           "check=figure8: not every server applied the log");
    sim_check_converged(s);
    EXPECT(s, held_everywhere(s, f->a2), "check=figure8: A' is not on every ledger");
    (void)f;
}

bool sim_scenario_figure8(const struct sim_options *o, struct sim_stats *total)
{
    struct sim *s = malloc(sizeof(*s));
    if (s == NULL) {
        return false;
    }
    struct fig8 f = {0};
    if (scenario_open(s, 5, o) == 0) {
        fig8_a(s, &f);
        fig8_b(s, &f);
        fig8_c(s, &f);
        fig8_d(s, &f);
        sim_check_grants(s);
    }
    return scenario_end(s, "figure8", total);
}

/* ---- A failed disk write on the leader. ---- */

/* The leader's append fails: synchronously inside raft_apply (`sync`), or when the
 * write completes. */
static void disk_fault_run(struct sim *s, bool sync)
{
    uint8_t id[LEDGER_REQUEST_ID_SIZE];
    int rv;
    /* A 1 ms disk: the append completes before any other I/O of the leader. */
    raft_fixture_set_disk_latency(&s->fx, 0, 1);
    if (sync) {
        raft_fixture_io_fault(&s->fx, 0, 0, 1); /* the first I/O of raft_apply: the append */
    }
    raft_index index = propose_reserve(s, 0, 2, id, &rv);
    if (!sync) {
        raft_fixture_io_fault(&s->fx, 0, 0, 1); /* the next I/O: the append completing */
    }
    sim_trace(s, "raft_apply with a failing append (%s): %s, index %llu", sync ? "sync" : "async",
              rv ? raft_strerror(rv) : "accepted", (unsigned long long)index);
    step_ms(s, 50);
    raft_fixture_io_fault(&s->fx, 0, -1, 0);
    raft_fixture_set_disk_latency(&s->fx, 0, 10);
    if (sync) {
        EXPECT(s, rv != 0, "check=leader_disk_fault: raft_apply accepted a failed append");
    }
    /* Either way libraft gives up on the leader (patch 0005; before it, the leader
     * stayed leader and never committed again), and the sim stops it, as tallyd exits. */
    EXPECT(s, s->down[0], "check=leader_disk_fault: the leader did not give up on a failed write");
    step_ms(s, 2000);
    /* A failed synchronous append is never acknowledged. A failed completion may be:
     * the followers' copies are a majority; then the grant must be everywhere. */
    EXPECT(s, !sync || !(s->acked_tags & (1u << 2)),
           "check=leader_disk_fault: the batch whose append failed was acknowledged");
    EXPECT(s, sim_propose_until_acked(s, 30000) == 0,
           "check=leader_disk_fault: no batch acknowledged after the failed append");
    unsigned leader = sim_leader(s);
    EXPECT(s, leader < s->n, "check=leader_disk_fault: no leader after recovery");
    if (!s->failed) { /* a grant after recovery, to be found on every live replica */
        propose_reserve(s, leader, 3, id, &rv);
        step_ms(s, 500);
        EXPECT(s, s->acked_tags & (1u << 3), "check=leader_disk_fault: no grant after recovery");
    }
    EXPECT(s, sim_wait_all_applied(s, leader, 30000),
           "check=leader_disk_fault: not every server applied the log");
    sim_check_converged(s);
    sim_check_grants(s);
    EXPECT(s, s->stats.grants_verified > 0, "check=leader_disk_fault: no grant was verified");
}

bool sim_scenario_leader_disk_fault(const struct sim_options *o, struct sim_stats *total)
{
    bool ok = true;
    for (int sync = 0; sync < 2; sync++) {
        struct sim *s = malloc(sizeof(*s));
        if (s == NULL) {
            return false;
        }
        if (scenario_open(s, 3, o) == 0) {
            disk_fault_run(s, sync);
        }
        ok &= scenario_end(s, sync ? "leader-disk-fault/sync" : "leader-disk-fault/async", total);
    }
    return ok;
}

/* ---- Catching up through InstallSnapshot. ---- */

bool sim_scenario_snapshot_install(const struct sim_options *o, struct sim_stats *total)
{
    struct sim *s = malloc(sizeof(*s));
    if (s == NULL) {
        return false;
    }
    if (scenario_open(s, 3, o) == 0) {
        s->cfg.snapshots = true;
        for (unsigned i = 0; i < s->n; i++) {
            raft_set_snapshot_threshold(srv_raft(s, i), 8);
            raft_set_snapshot_trailing(srv_raft(s, i), 2);
        }
        sim_kill(s, 2);
        for (int k = 0; k < 40 && !s->failed; k++) {
            sim_propose_random(s);
            step_ms(s, 30);
        }
        step_ms(s, 500);
        sim_revive(s, 2);
        EXPECT(s, sim_wait_all_applied(s, 0, 30000), "check=snapshot: server 2 did not catch up");
        EXPECT(s, s->srv[2].fsm.restores > 0, "check=snapshot: no snapshot was installed");
        sim_check_converged(s);
        sim_check_grants(s);
    }
    return scenario_end(s, "snapshot-install", total);
}
