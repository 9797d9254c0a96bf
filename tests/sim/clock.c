/*
 * clock.c: the clock-steps scenario: the leader's wall clock steps 40 days (forward or
 * back, by the seed), is put right, then a follower whose clock stepped the other way
 * is elected. Ledger time must keep the fixture's time, which is every server's
 * monotonic clock, throughout (cluster.c also checks every step that it never leads
 * real time by more than the slew).
 *
 * Each phase probes what a stepped clock used to break: a monthly budget spent before the
 * step stays spent (the period does not roll early); an rpm bucket of one request per
 * second refuses a second request at once and grants one a second later (refill keeps
 * real time: neither immediate, nor frozen); a 2 s ttl is still open after 1 s and
 * expired after 2.3 s (expiry keeps real time); two reserves a known fixture time apart
 * are stamped that far apart, give or take the slew; and the stepped server's clock
 * shows the step (node_clock's offset_ms and steps, the figures tallyd exports as
 * tally_clock_offset_ms and tally_clock_steps_total). No random workload: it would
 * settle and void the probes' reservations.
 */
#include "sim.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define STEP_MS (40LL * 86400000LL) /* the wall clock step: 40 days */
#define TTL_SHORT_MS 2000
#define TTL_LONG_MS 600000
#define ACK_WAIT_MS 8000
#define ELECTION_LAG_MS 10000 /* ledger time a leader change may leave behind */

#define EXPECT SIM_EXPECT

enum { T_MONTH, T_RATE, T_TTL, N_ACCOUNTS };
static const char *const names[N_ACCOUNTS] = {"clk-month", "clk-rate", "clk-ttl"};

static struct ledger_cmd reserve_on(struct sim *s, int account, int64_t micros, int64_t ttl_ms)
{
    struct ledger_cmd c = sim_cmd_reserve(s, 0, micros, ttl_ms);
    c.u.reserve.by_account = 1;
    snprintf(c.u.reserve.account, sizeof(c.u.reserve.account), "%s", names[account]);
    return c;
}

/* Propose cmds[0..n) on the leader as one batch and step until it is acknowledged; its
 * answers are then in s->last_results. Returns the fixture time it was stamped at. */
static int64_t run_batch(struct sim *s, int tag, const struct ledger_cmd *cmds, size_t n)
{
    unsigned leader = sim_leader(s);
    struct sim_proposal *p = leader < s->n ? sim_proposal_new(s, tag) : NULL;
    EXPECT(s, p != NULL, "check=clock_steps: no leader to propose batch %d to", tag);
    if (p == NULL) {
        return 0;
    }
    memcpy(p->cmds, cmds, n * sizeof(*cmds));
    p->n = n;
    int64_t at_ms = (int64_t)raft_fixture_time(&s->fx);
    int rv = sim_propose(s, leader, p);
    EXPECT(s, rv == 0, "check=clock_steps: batch %d refused: %s", tag, raft_strerror(rv));
    raft_time start = raft_fixture_time(&s->fx);
    while (!s->failed && s->last_ack_tag != tag && s->last_fail_tag != tag &&
           raft_fixture_time(&s->fx) - start < ACK_WAIT_MS) {
        sim_step(s);
    }
    EXPECT(s, s->last_ack_tag == tag, "check=clock_steps: batch %d was not acknowledged", tag);
    return at_ms;
}

/* The accounts, then the month's budget spent (reserve and settle all of it). */
static void create_accounts(struct sim *s)
{
    struct ledger_cmd c[4];
    struct ledger_limits month = {.set = LEDGER_LIM_BUDGET | LEDGER_LIM_PERIOD,
                                  .budget_micros = 1000,
                                  .period_kind = LEDGER_PERIOD_MONTH};
    struct ledger_limits rate = {.set = LEDGER_LIM_RPM, .rpm = 60, .rpm_burst = 1};
    struct ledger_limits ttl = {.set = LEDGER_LIM_EXPIRY_POLICY,
                                .expiry_policy = LEDGER_EXPIRY_RELEASE};
    c[0] = sim_cmd_create(s, names[T_MONTH], "", &month);
    c[1] = sim_cmd_create(s, names[T_RATE], "", &rate);
    c[2] = sim_cmd_create(s, names[T_TTL], "", &ttl);
    c[3] = reserve_on(s, T_MONTH, 1000, TTL_LONG_MS);
    run_batch(s, 2, c, 4);
    EXPECT(s, s->last_results[3].status == LEDGER_OK, "check=clock_steps: the month's reserve");
    struct ledger_cmd settle = c[3];
    settle.type = LEDGER_CMD_SETTLE;
    memset(&settle.u, 0, sizeof(settle.u));
    settle.u.settle.actual_micros = 1000;
    run_batch(s, 3, &settle, 1);
    EXPECT(s, s->last_results[0].status == LEDGER_OK, "check=clock_steps: the month's settle");
}

static int reservation_state(struct sim *s, unsigned i, const uint8_t *id)
{
    struct ledger_reservation_info info;
    return ledger_reservation_get(s->srv[i].ledger, id, &info) == 0 ? info.state : -1;
}

/* One probe of every rule, on whoever leads; `phase` names it in failures. */
static void probe(struct sim *s, int phase)
{
    int tag = 10 * (phase + 1);
    struct ledger_cmd c[4];
    c[0] = reserve_on(s, T_MONTH, 1, TTL_LONG_MS);
    c[1] = reserve_on(s, T_RATE, 1, TTL_LONG_MS);
    c[2] = reserve_on(s, T_RATE, 1, TTL_LONG_MS);
    c[3] = reserve_on(s, T_TTL, 1, TTL_SHORT_MS);
    int64_t t1 = run_batch(s, tag, c, 4);
    const struct ledger_result *r = s->last_results;
    EXPECT(s, r[0].status == LEDGER_DENIED && r[0].deny_reason == LEDGER_DENY_BUDGET,
           "check=clock_steps: phase %d: the spent month's budget granted (status %d): the "
           "period rolled early",
           phase, r[0].status);
    EXPECT(s,
           r[1].status == LEDGER_OK && r[2].status == LEDGER_DENIED &&
               r[2].deny_reason == LEDGER_DENY_RPM,
           "check=clock_steps: phase %d: one request a second: %d then %d (reason %d)", phase,
           r[1].status, r[2].status, r[2].deny_reason);
    EXPECT(s, r[3].status == LEDGER_OK, "check=clock_steps: phase %d: the ttl reserve", phase);
    int64_t created1 = r[3].expires_at_ms - TTL_SHORT_MS;
    uint8_t ttl_id[LEDGER_REQUEST_ID_SIZE];
    memcpy(ttl_id, c[3].request_id, sizeof(ttl_id));

    sim_step_ms(s, 1100);
    c[0] = reserve_on(s, T_RATE, 1, TTL_LONG_MS);
    run_batch(s, tag + 1, c, 1);
    EXPECT(s, s->last_results[0].status == LEDGER_OK,
           "check=clock_steps: phase %d: no rpm refill 1.1 s later (status %d, reason %d)", phase,
           s->last_results[0].status, s->last_results[0].deny_reason);
    unsigned leader = sim_leader(s);
    EXPECT(s, leader < s->n && reservation_state(s, leader, ttl_id) == LEDGER_RESV_OPEN,
           "check=clock_steps: phase %d: a 2 s ttl is not open after 1.1 s (state %d)", phase,
           leader < s->n ? reservation_state(s, leader, ttl_id) : -2);

    sim_step_ms(s, 1200);
    c[0] = reserve_on(s, T_TTL, 1, TTL_LONG_MS);
    int64_t t2 = run_batch(s, tag + 2, c, 1);
    int64_t created2 = s->last_results[0].expires_at_ms - TTL_LONG_MS;
    leader = sim_leader(s);
    EXPECT(s, leader < s->n && reservation_state(s, leader, ttl_id) == LEDGER_RESV_EXPIRED,
           "check=clock_steps: phase %d: a 2 s ttl did not expire after 2.3 s", phase);
    int64_t apart = created2 - created1, want = t2 - t1;
    EXPECT(s,
           apart >= want - want / NODE_CLOCK_SLEW_MS - 1 &&
               apart <= want + want / NODE_CLOCK_SLEW_MS + 1,
           "check=clock_steps: phase %d: reserves %lld ms apart were stamped %lld ms apart", phase,
           (long long)want, (long long)apart);
}

/* The stepped server's clock shows the step. */
static void expect_step_seen(struct sim *s, unsigned i, int phase)
{
    const struct node_clock *c = &s->srv[i].clock;
    EXPECT(s,
           c->steps >= 1 && c->stepped &&
               (c->offset_ms > 39 * 86400000LL || c->offset_ms < -39 * 86400000LL),
           "check=clock_steps: phase %d: server %u's clock does not show the step (offset %lld, "
           "steps %llu)",
           phase, i, (long long)c->offset_ms, (unsigned long long)c->steps);
}

/* Leadership moves to server `to`, whose wall clock stepped; ledger time goes on from
 * where it was. */
static void change_leader(struct sim *s, unsigned to)
{
    int64_t before_ms = ledger_now_ms(s->srv[to].ledger);
    for (int tries = 0; tries < 20 && sim_stable_leader(s) != to && !s->failed; tries++) {
        sim_depose(s);
        if (!sim_elect(s, to)) {
            sim_step_ms(s, 200);
        }
    }
    EXPECT(s, sim_stable_leader(s) == to, "check=clock_steps: server %u not elected", to);
    struct ledger_cmd c = reserve_on(s, T_TTL, 1, TTL_LONG_MS);
    int64_t at_ms = run_batch(s, 5, &c, 1);
    int64_t stamp_ms = s->last_results[0].expires_at_ms - TTL_LONG_MS;
    int64_t real_ms = s->cfg.base_ms + at_ms;
    EXPECT(s, stamp_ms >= before_ms && stamp_ms >= real_ms - ELECTION_LAG_MS,
           "check=clock_steps: the new leader stamped %lld: %lld ms behind real time, %lld ms "
           "after the last stamp it applied",
           (long long)stamp_ms, (long long)(real_ms - stamp_ms), (long long)(stamp_ms - before_ms));
}

static void run_clock_steps(struct sim *s)
{
    create_accounts(s);
    probe(s, 0);
    unsigned first = sim_leader(s);
    if (s->failed || first == s->n) {
        return;
    }
    int64_t dir = sim_rng_chance(&s->rng, 1, 2) ? 1 : -1;
    s->srv[first].wall_offset_ms = dir * STEP_MS;
    sim_trace(s, "wall clock of leader %u: %+lld ms", first, (long long)(dir * STEP_MS));
    probe(s, 1);
    expect_step_seen(s, first, 1);
    s->srv[first].wall_offset_ms = 0; /* put right: ledger time must not stand still */
    probe(s, 2);
    unsigned next = (first + 1 + (unsigned)sim_rng_below(&s->rng, s->n - 1)) % s->n;
    s->srv[next].wall_offset_ms = -dir * STEP_MS;
    change_leader(s, next);
    probe(s, 3);
    expect_step_seen(s, next, 3);
    s->srv[next].wall_offset_ms = 0;
    unsigned leader = sim_leader(s);
    EXPECT(s, leader < s->n && sim_wait_all_applied(s, leader, 30000),
           "check=clock_steps: not every server applied the log");
    sim_check_converged(s);
    sim_check_grants(s);
}

static bool clock_steps_seed(const struct sim_options *o, struct sim_stats *total, uint64_t seed)
{
    struct sim *s = malloc(sizeof(*s));
    if (s == NULL) {
        return false;
    }
    struct sim_config cfg;
    sim_config_from_seed(&cfg, seed);
    sim_config_apply(&cfg, o);
    cfg.n_servers = 3;
    cfg.election_timeout_ms = 1000;
    cfg.retention_ms = 0;
    if (sim_open(s, &cfg) == 0 && sim_setup_accounts(s) == 0) {
        run_clock_steps(s);
    }
    bool ok = !s->failed;
    if (!ok) {
        printf("scenario=clock-steps seed=%llu FAIL %s (replay: tally-sim --scenario clock-steps "
               "--first %llu --seeds 1 -v)\n",
               (unsigned long long)seed, s->failure, (unsigned long long)seed);
    }
    sim_close(s);
    s->stats.seeds = 1;
    sim_stats_add(total, &s->stats);
    free(s);
    return ok;
}

bool sim_scenario_clock_steps(const struct sim_options *o, struct sim_stats *total, uint64_t first,
                              uint64_t n)
{
    bool ok = true;
    for (uint64_t seed = first; seed < first + n; seed++) {
        ok &= clock_steps_seed(o, total, seed);
    }
    return ok;
}
