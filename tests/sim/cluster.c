/*
 * cluster.c: the simulated cluster: servers, stepping and the checks run after every step.
 *
 * Each fixture server is a real ledger (LMDB, LEDGER_OPEN_NOSYNC, its own mkdtemp
 * directory) behind the real FSM adapter. The checks run from the fixture's step hook,
 * so every step is checked, including the steps raft_fixture_elect/depose take
 * internally. They are kept cheap by work only when something changed: a ledger is
 * checked (invariants, state hash) only when its applied index moved, and its hash is
 * compared with the hash the first replica had at that same index, so two replicas
 * that ever pass through the same index must agree even if they are never there at
 * the same time.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* mkdtemp, nftw */
#endif

#include "sim.h"

#include <ftw.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SIM_STEP_CAP 2000000u /* steps in one sim_step_until, a bound on a stuck fixture */

/* ---- Generator. ---- */

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

void sim_rng_seed(struct sim_rng *r, uint64_t seed)
{
    for (int i = 0; i < 4; i++) {
        r->s[i] = splitmix64(&seed);
    }
}

static uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

uint64_t sim_rng_next(struct sim_rng *r)
{
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

uint64_t sim_rng_below(struct sim_rng *r, uint64_t n)
{
    return sim_rng_next(r) % n; /* the bias is irrelevant here */
}

int64_t sim_rng_range(struct sim_rng *r, int64_t lo, int64_t hi)
{
    return lo + (int64_t)sim_rng_below(r, (uint64_t)(hi - lo) + 1);
}

bool sim_rng_chance(struct sim_rng *r, uint64_t num, uint64_t den)
{
    return sim_rng_below(r, den) < num;
}

/* ---- Reporting. ---- */

void sim_fail(struct sim *s, const char *fmt, ...)
{
    if (s->failed) {
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->failure, sizeof(s->failure), fmt, ap);
    va_end(ap);
    s->failed = true;
    s->stats.violations++;
}

void sim_trace(struct sim *s, const char *fmt, ...)
{
    if (!s->cfg.verbose) {
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    printf("  [t=%llu] ", (unsigned long long)raft_fixture_time(&s->fx));
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
}

void sim_digest(struct sim *s, uint64_t v)
{
    for (int i = 0; i < 8; i++) {
        s->digest ^= (v >> (8 * i)) & 0xff;
        s->digest *= 0x100000001b3ULL;
    }
}

/* ---- Checks. ---- */

static void hex32(const uint8_t h[32], char out[17])
{
    for (int i = 0; i < 8; i++) {
        snprintf(out + 2 * i, 3, "%02x", h[i]);
    }
}

/* Remember the hash first seen at `index`, or compare with it. */
static void check_hash_at(struct sim *s, unsigned i, uint64_t index, const uint8_t h[32])
{
    if (index >= s->n_hashes) {
        size_t n = s->n_hashes ? s->n_hashes : 256;
        while (n <= index) {
            n *= 2;
        }
        struct sim_hash_seen *grown = realloc(s->hashes, n * sizeof(*grown));
        if (grown == NULL) {
            sim_fail(s, "check=oom");
            return;
        }
        memset(grown + s->n_hashes, 0, (n - s->n_hashes) * sizeof(*grown));
        s->hashes = grown;
        s->n_hashes = n;
    }
    struct sim_hash_seen *seen = &s->hashes[index];
    if (!seen->set) {
        *seen = (struct sim_hash_seen){true, {0}, i};
        memcpy(seen->hash, h, 32);
        return;
    }
    s->stats.hash_checks++;
    if (memcmp(seen->hash, h, 32) != 0) {
        char a[17], b[17];
        hex32(seen->hash, a);
        hex32(h, b);
        sim_fail(s,
                 "check=state_hash: servers %u and %u differ at ledger index %llu (%s.. vs %s..)",
                 seen->server, i, (unsigned long long)index, a, b);
    }
}

/* Figure 8: the overwritten batch's reservation must never reach a ledger. */
static void check_forbidden(struct sim *s, unsigned i)
{
    struct ledger_reservation_info info;
    if (s->forbid_set && ledger_reservation_get(s->srv[i].ledger, s->forbid_id, &info) == 0) {
        sim_fail(s, "check=figure8: server %u applied the overwritten entry (ledger index %llu)", i,
                 (unsigned long long)ledger_applied_index(s->srv[i].ledger));
    }
}

/* Check server i if its ledger moved since the last check. */
static void check_server(struct sim *s, unsigned i)
{
    struct sim_server *v = &s->srv[i];
    uint64_t index = ledger_applied_index(v->ledger);
    if (index == v->checked_index) {
        return;
    }
    v->checked_index = index;
    sim_digest(s, index);
    if (index > raft_last_applied(raft_fixture_get(&s->fx, i))) {
        sim_fail(s, "check=applied_index: server %u ledger at %llu, raft applied %llu", i,
                 (unsigned long long)index,
                 (unsigned long long)raft_last_applied(raft_fixture_get(&s->fx, i)));
        return;
    }
    if (ledger_check_invariants(v->ledger) != 0) {
        sim_fail(s, "check=invariants: server %u at ledger index %llu: %s", i,
                 (unsigned long long)index, ledger_errmsg(v->ledger));
        return;
    }
    uint8_t h[32];
    if (ledger_state_hash(v->ledger, h) != 0) {
        sim_fail(s, "check=state_hash: server %u cannot hash: %s", i, ledger_errmsg(v->ledger));
        return;
    }
    sim_digest(s, (uint64_t)h[0] | (uint64_t)h[1] << 8 | (uint64_t)h[2] << 16);
    check_hash_at(s, i, index, h);
    check_forbidden(s, i);
}

/* Ledger time, as tallyd keeps it: every server learns it from what it applied (its
 * monotonic clock is the fixture's) and compares it with its wall clock. Ledger time may
 * lead real time (base_ms + fixture time) by no more than the slew lets a leader earn,
 * 1 ms per NODE_CLOCK_SLEW_MS, whatever the wall clocks did: no period rolls early. */
static void check_time(struct sim *s, unsigned i)
{
    struct sim_server *v = &s->srv[i];
    int64_t t_ms = (int64_t)raft_fixture_time(&s->fx);
    int64_t now_ms = ledger_now_ms(v->ledger);
    node_clock_observe(&v->clock, now_ms, t_ms);
    node_clock_check(&v->clock, t_ms, sim_wall_ms(s, i));
    int64_t bound_ms = s->cfg.base_ms + t_ms + t_ms / NODE_CLOCK_SLEW_MS + 1;
    if (now_ms > bound_ms) {
        sim_fail(s,
                 "check=ledger_time: server %u at ledger time %lld, %lld ms ahead of real time "
                 "(at most %lld allowed)",
                 i, (long long)now_ms, (long long)(now_ms - s->cfg.base_ms - t_ms),
                 (long long)(t_ms / NODE_CLOCK_SLEW_MS + 1));
    }
}

void sim_check_all(struct sim *s)
{
    for (unsigned i = 0; i < s->n && !s->failed; i++) {
        check_server(s, i);
        check_time(s, i);
    }
}

void sim_check_converged(struct sim *s)
{
    uint8_t h0[32], h[32];
    unsigned first = 0;
    while (first < s->n && s->down[first]) {
        first++;
    }
    sim_check_all(s);
    if (s->failed || first == s->n || ledger_state_hash(s->srv[first].ledger, h0) != 0) {
        return;
    }
    uint64_t index0 = ledger_applied_index(s->srv[first].ledger);
    for (unsigned i = first + 1; i < s->n; i++) {
        if (s->down[i]) {
            continue;
        }
        uint64_t index = ledger_applied_index(s->srv[i].ledger);
        if (index != index0) {
            sim_fail(s, "check=converged: server %u at ledger index %llu, server %u at %llu", i,
                     (unsigned long long)index, first, (unsigned long long)index0);
            return;
        }
        if (ledger_state_hash(s->srv[i].ledger, h) != 0 || memcmp(h, h0, 32) != 0) {
            sim_fail(s, "check=converged: server %u state hash differs from server %u", i, first);
            return;
        }
    }
}

/* ---- Stepping. ---- */

static void trace_leader(struct sim *s)
{
    unsigned leader = sim_stable_leader(s);
    if (leader == s->last_leader) {
        return;
    }
    s->last_leader = leader;
    sim_digest(s, 0x1eade7 + leader);
    if (leader < s->n) {
        sim_trace(s, "leader: server %u, term %llu", leader,
                  (unsigned long long)raft_fixture_get(&s->fx, leader)->current_term);
    } else {
        sim_trace(s, "no stable leader");
    }
}

/* A server whose libraft gave up (RAFT_UNAVAILABLE: a write failed, or a message
 * contradicted its committed log) is stopped for good, as tallyd exits on it. The
 * fixture cannot restart a server from what it wrote, so it is not revived. */
static void stop_servers_that_gave_up(struct sim *s)
{
    for (unsigned i = 0; i < s->n; i++) {
        struct raft *r = raft_fixture_get(&s->fx, i);
        if (!s->down[i] && raft_fixture_alive(&s->fx, i) && raft_state(r) == RAFT_UNAVAILABLE) {
            sim_trace(s, "server %u gave up (%s): stopped", i, raft_errmsg(r));
            raft_fixture_kill(&s->fx, i);
            s->down[i] = true;
            s->stats.gave_up++;
        }
    }
}

/* The fixture's hook: runs after every step, also inside elect/depose. */
static void on_step(struct raft_fixture *f, struct raft_fixture_event *event)
{
    struct sim *s = (struct sim *)f; /* fx is the first member */
    s->stats.steps++;
    sim_digest(s, raft_fixture_time(f));
    sim_digest(s, (uint64_t)raft_fixture_event_type(event) << 8 |
                      raft_fixture_event_server_index(event));
    stop_servers_that_gave_up(s);
    trace_leader(s);
    sim_check_all(s);
}

void sim_step(struct sim *s)
{
    raft_fixture_step(&s->fx);
}

void sim_step_ms(struct sim *s, unsigned ms)
{
    raft_time start = raft_fixture_time(&s->fx);
    while (!s->failed && raft_fixture_time(&s->fx) - start < ms) {
        sim_step(s);
    }
}

bool sim_step_until(struct sim *s, bool (*done)(struct sim *s), unsigned max_ms)
{
    raft_time start = raft_fixture_time(&s->fx);
    for (unsigned n = 0; n < SIM_STEP_CAP && !s->failed; n++) {
        if (done(s)) {
            return true;
        }
        if (raft_fixture_time(&s->fx) - start >= max_ms) {
            return false;
        }
        sim_step(s);
    }
    return !s->failed && done(s);
}

static bool all_applied(struct sim *s)
{
    for (unsigned i = 0; i < s->n; i++) {
        if (!s->down[i] && raft_last_applied(raft_fixture_get(&s->fx, i)) < s->wait_index) {
            return false;
        }
    }
    return true;
}

bool sim_wait_all_applied(struct sim *s, unsigned leader, unsigned max_ms)
{
    s->wait_index = raft_last_index(raft_fixture_get(&s->fx, leader));
    return sim_step_until(s, all_applied, max_ms);
}

unsigned sim_leader(struct sim *s)
{
    unsigned best = s->n;
    raft_term term = 0;
    for (unsigned i = 0; i < s->n; i++) {
        struct raft *r = raft_fixture_get(&s->fx, i);
        if (raft_fixture_alive(&s->fx, i) && raft_state(r) == RAFT_LEADER &&
            r->current_term > term) {
            best = i;
            term = r->current_term;
        }
    }
    return best;
}

unsigned sim_stable_leader(struct sim *s)
{
    return raft_fixture_leader_index(&s->fx);
}

/* ---- Set-up and tear-down. ---- */

static void sim_fatal(struct node_fsm *f, const char *reason)
{
    struct sim *s = f->data;
    /* The adapter must not continue: report the seed so the run can be replayed. */
    fprintf(stderr, "seed=%llu check=fsm_fatal: %s\n", (unsigned long long)s->cfg.seed, reason);
    abort();
}

static int open_server(struct sim *s, unsigned i, size_t map_bytes)
{
    struct sim_server *v = &s->srv[i];
    char err[LEDGER_ERRMSG_SIZE] = "";
    snprintf(v->dir, sizeof(v->dir), "/tmp/tally-sim-XXXXXX");
    if (mkdtemp(v->dir) == NULL) {
        v->dir[0] = '\0';
        sim_fail(s, "check=setup: mkdtemp failed");
        return -1;
    }
    /* Retention of seconds (below the ledger's 1 h minimum), so that the end of retention
     * happens within a run's fixture time. */
    struct ledger_options o = {
        .flags = LEDGER_OPEN_NOSYNC, .initial_map_bytes = map_bytes, .retention_min_ms = 1};
    if (ledger_open(&v->ledger, v->dir, &o, err) != 0) {
        sim_fail(s, "check=setup: ledger_open: %s", err);
        return -1;
    }
    if (node_fsm_init(&v->fsm, v->ledger) != 0) {
        sim_fail(s, "check=setup: node_fsm_init");
        return -1;
    }
    v->fsm_ready = true;
    v->fsm.on_fatal = sim_fatal;
    v->fsm.data = s;
    return 0;
}

/* libraft's diagnostics: printed only with --trace-raft (the fixture's tracer prints
 * every line to stderr, thousands per seed). */
static void raft_trace(struct raft_tracer *t, int type, const void *data)
{
    struct sim_server *v = t->impl;
    const struct raft_tracer_info *info = data;
    if (type == RAFT_TRACER_DIAGNOSTIC && v->sim->cfg.trace_raft) {
        printf("    [%llu] %u: %s\n", (unsigned long long)raft_fixture_time(&v->sim->fx), v->index,
               info->diagnostic.message);
    }
}

/* Per-server raft settings; every randomized timeout must lie in [et, 2 et] or the
 * fixture's seeding loop never ends. */
static void configure_raft(struct sim *s, unsigned i)
{
    struct raft *r = raft_fixture_get(&s->fx, i);
    unsigned et = s->cfg.election_timeout_ms;
    struct sim_server *v = &s->srv[i];
    v->sim = s;
    v->index = i;
    v->tracer = (struct raft_tracer){.impl = v, .version = 2, .emit = raft_trace};
    r->tracer = &v->tracer;
    raft_set_election_timeout(r, et);
    raft_set_pre_vote(r, s->cfg.pre_vote);
    if (s->cfg.snapshots) {
        raft_set_snapshot_threshold(r, s->cfg.snapshot_threshold);
        raft_set_snapshot_trailing(r, s->cfg.snapshot_trailing);
    }
}

void sim_distinct_timeouts(struct sim *s)
{
    /* Ticks come every 100 ms on every server at once, so timeouts less than a tick
     * apart expire together: with the fixture's fixed (not random) timeouts that is a
     * split vote forever. A random order, a tick apart. */
    unsigned slot[SIM_MAX_SERVERS];
    for (unsigned i = 0; i < s->n; i++) {
        unsigned j = (unsigned)sim_rng_below(&s->rng, i + 1);
        slot[i] = slot[j];
        slot[j] = i;
    }
    for (unsigned i = 0; i < s->n; i++) {
        raft_fixture_set_randomized_election_timeout(&s->fx, i,
                                                     s->cfg.election_timeout_ms + 100 * slot[i]);
    }
}

static int start_fixture(struct sim *s)
{
    struct raft_configuration conf;
    if (raft_fixture_init(&s->fx) != 0) {
        sim_fail(s, "check=setup: raft_fixture_init");
        return -1;
    }
    s->fx_ready = true;
    for (unsigned i = 0; i < s->n; i++) {
        if (raft_fixture_grow(&s->fx, &s->srv[i].fsm.fsm) != 0) {
            sim_fail(s, "check=setup: raft_fixture_grow");
            return -1;
        }
        node_fsm_attach(&s->srv[i].fsm, raft_fixture_get(&s->fx, i));
        configure_raft(s, i);
        s->disk_ms[i] = 10; /* the fixture's default */
    }
    sim_distinct_timeouts(s);
    int rv = raft_fixture_configuration(&s->fx, s->n, &conf);
    if (rv == 0) {
        rv = raft_fixture_bootstrap(&s->fx, &conf);
        raft_configuration_close(&conf);
    }
    if (rv == 0) {
        raft_fixture_hook(&s->fx, on_step);
        rv = raft_fixture_start(&s->fx);
    }
    if (rv != 0) {
        sim_fail(s, "check=setup: bootstrap/start: %s", raft_strerror(rv));
        return -1;
    }
    return 0;
}

static bool has_stable_leader(struct sim *s)
{
    return sim_stable_leader(s) < s->n;
}

int sim_open(struct sim *s, const struct sim_config *cfg)
{
    memset(s, 0, sizeof(*s));
    s->cfg = *cfg;
    s->n = cfg->n_servers;
    s->last_leader = s->n;
    s->digest = 0xcbf29ce484222325ULL;
    sim_rng_seed(&s->rng, cfg->seed ^ 0x7a11e75eedULL);
    size_t map_bytes = sim_rng_chance(&s->rng, 1, 4) ? ((size_t)1 << 20) : 0;
    for (unsigned i = 0; i < s->n; i++) {
        if (open_server(s, i, map_bytes) != 0) {
            return -1;
        }
    }
    if (start_fixture(s) != 0) {
        return -1;
    }
    if (!sim_step_until(s, has_stable_leader, 20 * cfg->election_timeout_ms)) {
        sim_fail(s, "check=liveness: no leader after start");
        return -1;
    }
    return 0;
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

void sim_close(struct sim *s)
{
    s->closing = true;
    if (s->fx_ready) {
        /* Flushes pending I/O (entries may still be applied) and fails pending
         * proposals: the ledgers must still be open. */
        raft_fixture_close(&s->fx);
        s->fx_ready = false;
    }
    while (s->outstanding != NULL) { /* never fired: should not happen */
        struct sim_proposal *p = s->outstanding;
        s->outstanding = p->next;
        free(p);
    }
    for (unsigned i = 0; i < s->n; i++) {
        struct sim_server *v = &s->srv[i];
        s->stats.restores += v->fsm.restores;
        s->stats.clock_steps += v->clock.steps;
        if (v->fsm_ready) {
            node_fsm_close(&v->fsm);
        }
        ledger_close(v->ledger);
        if (v->dir[0] != '\0') {
            nftw(v->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
        }
    }
    sim_workload_free(s);
    free(s->hashes);
    s->hashes = NULL;
}

/* ---- Configuration and statistics. ---- */

void sim_config_from_seed(struct sim_config *c, uint64_t seed)
{
    static const unsigned timeouts[] = {300, 500, 1000}; /* 5 servers: not 300 */
    struct sim_rng r;
    const int64_t day_ms = 86400000LL;
    sim_rng_seed(&r, seed);
    memset(c, 0, sizeof(*c));
    c->seed = seed;
    c->n_servers = sim_rng_chance(&r, 1, 4) ? 5 : 3;
    c->steps = (unsigned)sim_rng_range(&r, 150, 400);
    c->election_timeout_ms = timeouts[sim_rng_below(&r, 3)];
    if (c->n_servers == 5 && c->election_timeout_ms < 400) {
        c->election_timeout_ms = 500; /* room for 5 timeouts a tick apart in [et, 2 et] */
    }
    c->pre_vote = sim_rng_chance(&r, 1, 2);
    c->snapshot_threshold = (unsigned)sim_rng_range(&r, 8, 64);
    c->snapshot_trailing = (unsigned)sim_rng_range(&r, 1, 16);
    c->propose_per_mille = (unsigned)sim_rng_range(&r, 60, 300);
    c->fault_per_mille = (unsigned)sim_rng_range(&r, 10, 60);
    /* Start a few seconds before a UTC midnight: day periods roll over in some runs. */
    c->base_ms = 1700000000000LL / day_ms * day_ms + day_ms - sim_rng_range(&r, 0, 20000);
    c->retention_ms = sim_rng_chance(&r, 1, 4) ? sim_rng_range(&r, 500, 4000) : 0;
}

const char *sim_fault_name(int kind)
{
    static const char *names[SIM_F_MAX] = {
        "partition", "reconnect", "kill",  "revive",           "net_latency", "disk_latency",
        "io_fault",  "depose",    "elect", "election_timeout", "clock_step",
    };
    return kind >= 0 && kind < SIM_F_MAX ? names[kind] : "?";
}

void sim_stats_add(struct sim_stats *into, const struct sim_stats *from)
{
    into->seeds += from->seeds;
    into->steps += from->steps;
    for (int k = 0; k < SIM_F_MAX; k++) {
        into->faults[k] += from->faults[k];
    }
    into->proposed += from->proposed;
    into->rejected += from->rejected;
    into->acked += from->acked;
    into->failed += from->failed;
    into->acked_cmds += from->acked_cmds;
    into->grants += from->grants;
    into->denials += from->denials;
    into->replays += from->replays;
    into->restores += from->restores;
    into->hash_checks += from->hash_checks;
    into->grants_verified += from->grants_verified;
    into->misattributed += from->misattributed;
    into->gave_up += from->gave_up;
    into->clock_steps += from->clock_steps;
    into->violations += from->violations;
}
