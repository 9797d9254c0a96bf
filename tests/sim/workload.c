/*
 * workload.c: the simulated gateway: an account forest with tight limits, random
 * reserve/settle/void/extend traffic with replays, proposals and acknowledgements.
 *
 * Everything goes through the log, the accounts too, so every replica builds the same
 * forest. Budgets, rates, parallelism and ttls are small so that the fixture's few
 * seconds of time see denials, expiries, period roll-overs and (with a short
 * retention) pruned answers. The client side remembers every reserve it proposed
 * (to settle, void, extend and replay them, like a gateway retrying after a timeout)
 * and every grant the cluster acknowledged: at the end each acknowledged grant must be
 * on every replica. An acknowledgement is an apply callback with status 0 on the
 * server it was proposed to; its results are copied out at once because the adapter
 * reuses that memory for the next entry.
 */
#include "sim.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* From main.c (which owns the test harness and ledger_testlib.h). */
void sim_request_id(uint8_t id[LEDGER_REQUEST_ID_SIZE], uint64_t n);
void sim_key_hash(unsigned key, uint8_t out[LEDGER_KEY_HASH_SIZE]);

static const char *const team_names[SIM_N_TEAMS] = {"team-a", "team-b"};
static const char *const key_names[SIM_N_KEYS] = {"key-a1", "key-a2", "key-b1", "key-b2"};

/* ---- Command builders. ---- */

static struct ledger_cmd new_cmd(struct sim *s, uint8_t type)
{
    struct ledger_cmd c;
    memset(&c, 0, sizeof(c));
    c.type = type;
    sim_request_id(c.request_id, s->wl.next_id++);
    snprintf(c.actor, sizeof(c.actor), "sim");
    return c;
}

struct ledger_cmd sim_cmd_create(struct sim *s, const char *name, const char *parent,
                                 const struct ledger_limits *lim)
{
    struct ledger_cmd c = new_cmd(s, LEDGER_CMD_ACCOUNT_CREATE);
    snprintf(c.u.create.name, sizeof(c.u.create.name), "%s", name);
    snprintf(c.u.create.parent, sizeof(c.u.create.parent), "%s", parent);
    c.u.create.limits = *lim;
    return c;
}

struct ledger_cmd sim_cmd_reserve(struct sim *s, unsigned key, int64_t estimate_micros,
                                  int64_t ttl_ms)
{
    struct ledger_cmd c = new_cmd(s, LEDGER_CMD_RESERVE);
    sim_key_hash(key, c.u.reserve.key_hash);
    c.u.reserve.estimate_micros = estimate_micros;
    c.u.reserve.ttl_ms = ttl_ms;
    return c;
}

/* ---- The account forest: org -> 2 teams -> 4 keys. ---- */

static struct ledger_limits org_limits(struct sim *s)
{
    struct ledger_limits l = {0};
    l.set = LEDGER_LIM_BUDGET | LEDGER_LIM_SOFT_BUDGET | LEDGER_LIM_RPM | LEDGER_LIM_PARALLEL;
    l.budget_micros = sim_rng_range(&s->rng, 20000, 200000);
    l.soft_budget_micros = l.budget_micros / 2;
    l.rpm = (uint64_t)sim_rng_range(&s->rng, 120, 2000);
    l.max_parallel = (uint64_t)sim_rng_range(&s->rng, 3, 12);
    switch (sim_rng_below(&s->rng, 3)) {
    case 0: /* lifetime budget */
        break;
    case 1:
        l.set |= LEDGER_LIM_PERIOD;
        l.period_kind = LEDGER_PERIOD_FIXED;
        l.period_ms = sim_rng_range(&s->rng, 1000, 8000);
        break;
    default:
        l.set |= LEDGER_LIM_PERIOD;
        l.period_kind = LEDGER_PERIOD_DAY;
        break;
    }
    return l;
}

static struct ledger_limits team_limits(struct sim *s)
{
    struct ledger_limits l = {0};
    l.set = LEDGER_LIM_BUDGET | LEDGER_LIM_TPM | LEDGER_LIM_PARALLEL;
    l.budget_micros = sim_rng_range(&s->rng, 10000, 100000);
    l.tpm = (uint64_t)sim_rng_range(&s->rng, 2000, 60000);
    l.tpm_burst = l.tpm / 2;
    l.max_parallel = (uint64_t)sim_rng_range(&s->rng, 2, 6);
    return l;
}

static struct ledger_limits key_limits(struct sim *s)
{
    struct ledger_limits l = {0};
    l.set = LEDGER_LIM_BUDGET | LEDGER_LIM_RPM | LEDGER_LIM_PARALLEL | LEDGER_LIM_EXPIRY_POLICY;
    l.budget_micros = sim_rng_range(&s->rng, 5000, 60000);
    l.rpm = (uint64_t)sim_rng_range(&s->rng, 30, 600);
    l.rpm_burst = (uint64_t)sim_rng_range(&s->rng, 1, 10);
    l.max_parallel = (uint64_t)sim_rng_range(&s->rng, 1, 3);
    l.expiry_policy = sim_rng_chance(&s->rng, 1, 3) ? LEDGER_EXPIRY_RELEASE : LEDGER_EXPIRY_CHARGE;
    if (sim_rng_chance(&s->rng, 1, 4)) {
        l.set |= LEDGER_LIM_PERIOD;
        l.period_kind = LEDGER_PERIOD_FIXED;
        l.period_ms = sim_rng_range(&s->rng, 1000, 5000);
    }
    return l;
}

/* The set-up batch: retention, the forest, the keys, one model limit. */
static size_t setup_cmds(struct sim *s, struct ledger_cmd *cmds)
{
    size_t n = 0;
    if (s->cfg.retention_ms > 0) {
        cmds[n] = new_cmd(s, LEDGER_CMD_CONFIG_SET);
        cmds[n++].u.config.retention_ms = s->cfg.retention_ms;
    }
    struct ledger_limits l = org_limits(s);
    cmds[n++] = sim_cmd_create(s, "org", "", &l);
    for (unsigned t = 0; t < SIM_N_TEAMS; t++) {
        l = team_limits(s);
        cmds[n++] = sim_cmd_create(s, team_names[t], "org", &l);
    }
    for (unsigned k = 0; k < SIM_N_KEYS; k++) {
        l = key_limits(s);
        cmds[n++] = sim_cmd_create(s, key_names[k], team_names[k / 2], &l);
        cmds[n] = new_cmd(s, LEDGER_CMD_KEY_ADD);
        snprintf(cmds[n].u.key.account, sizeof(cmds[n].u.key.account), "%s", key_names[k]);
        sim_key_hash(k, cmds[n++].u.key.key_hash);
    }
    cmds[n] = new_cmd(s, LEDGER_CMD_MODEL_LIMIT_SET);
    snprintf(cmds[n].u.model_limit.account, LEDGER_NAME_MAX + 1, "%s", team_names[0]);
    snprintf(cmds[n].u.model_limit.model, LEDGER_MODEL_MAX + 1, "%s", SIM_MODEL);
    cmds[n].u.model_limit.limits.set = LEDGER_LIM_BUDGET | LEDGER_LIM_RPM;
    cmds[n].u.model_limit.limits.budget_micros = sim_rng_range(&s->rng, 5000, 30000);
    cmds[n++].u.model_limit.limits.rpm = (uint64_t)sim_rng_range(&s->rng, 30, 300);
    return n;
}

int sim_setup_accounts(struct sim *s)
{
    struct sim_proposal *p = sim_proposal_new(s, 1);
    if (p == NULL) {
        return -1;
    }
    p->n = setup_cmds(s, p->cmds);
    unsigned leader = sim_leader(s);
    if (leader == s->n || sim_propose(s, leader, p) != 0) {
        sim_fail(s, "check=setup: cannot propose the account forest");
        return -1;
    }
    for (unsigned ms = 0; ms < 20000 && s->last_ack_tag != 1 && !s->failed; ms += 100) {
        if (s->last_fail_tag == 1) {
            sim_fail(s, "check=setup: the account forest batch failed");
            return -1;
        }
        raft_time t = raft_fixture_time(&s->fx);
        while (raft_fixture_time(&s->fx) < t + 100 && s->last_ack_tag != 1 && !s->failed) {
            sim_step(s);
        }
    }
    if (s->last_ack_tag != 1) {
        sim_fail(s, "check=setup: the account forest was not acknowledged");
        return -1;
    }
    s->wl.setup_done = true;
    return 0;
}

/* ---- Random commands. ---- */

/* Remember a proposed reserve (for settles, voids, extends and replays). */
static void remember_reserve(struct sim *s, const struct ledger_cmd *c)
{
    struct sim_workload *w = &s->wl;
    if (w->n_reserves == w->cap_reserves) {
        size_t cap = w->cap_reserves ? 2 * w->cap_reserves : 256;
        struct ledger_cmd *grown = realloc(w->reserves, cap * sizeof(*grown));
        if (grown == NULL) {
            sim_fail(s, "check=oom");
            return;
        }
        w->reserves = grown;
        w->cap_reserves = cap;
    }
    w->reserves[w->n_reserves++] = *c;
}

static const struct ledger_cmd *pick_reserve(struct sim *s)
{
    if (s->wl.n_reserves == 0) {
        return NULL;
    }
    /* Mostly recent ones: those are the open reservations. */
    size_t n = s->wl.n_reserves;
    size_t back = sim_rng_chance(&s->rng, 3, 4) ? sim_rng_below(&s->rng, n < 24 ? n : 24)
                                                : sim_rng_below(&s->rng, n);
    return &s->wl.reserves[n - 1 - back];
}

static struct ledger_cmd random_reserve(struct sim *s)
{
    unsigned key = (unsigned)sim_rng_below(&s->rng, SIM_N_KEYS);
    int64_t estimate = sim_rng_chance(&s->rng, 1, 10) ? sim_rng_range(&s->rng, 10000, 80000)
                                                      : sim_rng_range(&s->rng, 1, 4000);
    struct ledger_cmd c = sim_cmd_reserve(s, key, estimate, sim_rng_range(&s->rng, 50, 4000));
    if (sim_rng_chance(&s->rng, 1, 4)) { /* by account name, sometimes a team's */
        c.u.reserve.by_account = 1;
        const char *name = sim_rng_chance(&s->rng, 1, 4) ? team_names[key / 2] : key_names[key];
        snprintf(c.u.reserve.account, sizeof(c.u.reserve.account), "%s", name);
    }
    c.u.reserve.estimate_tokens = (uint64_t)sim_rng_range(&s->rng, 0, 3000);
    if (sim_rng_chance(&s->rng, 1, 3)) {
        snprintf(c.u.reserve.model, sizeof(c.u.reserve.model), "%s", SIM_MODEL);
    }
    if (sim_rng_chance(&s->rng, 1, 50)) {
        c.u.reserve.estimate_micros = -1; /* EINVAL, answer stored */
    }
    return c;
}

/* Settle, void or extend an earlier reservation (or an unknown id). */
static struct ledger_cmd resolve_cmd(struct sim *s, uint8_t type)
{
    const struct ledger_cmd *r = pick_reserve(s);
    struct ledger_cmd c = new_cmd(s, type);
    if (r != NULL && !sim_rng_chance(&s->rng, 1, 20)) {
        memcpy(c.request_id, r->request_id, LEDGER_REQUEST_ID_SIZE);
    }
    int64_t estimate = r != NULL ? r->u.reserve.estimate_micros : 100;
    if (type == LEDGER_CMD_SETTLE) {
        c.u.settle.actual_micros = sim_rng_range(&s->rng, 0, estimate > 0 ? 2 * estimate : 10);
        c.u.settle.actual_tokens = (uint64_t)sim_rng_range(&s->rng, 0, 4000);
    } else if (type == LEDGER_CMD_EXTEND) {
        c.u.extend.ttl_ms = sim_rng_range(&s->rng, 50, 3000);
    }
    return c;
}

/* An old reserve sent again: verbatim (a retry), or changed (a conflict). */
static struct ledger_cmd replay_cmd(struct sim *s)
{
    const struct ledger_cmd *r = pick_reserve(s);
    if (r == NULL) {
        return random_reserve(s);
    }
    struct ledger_cmd c = *r;
    if (sim_rng_chance(&s->rng, 1, 5)) {
        c.u.reserve.estimate_micros += 1;
    }
    return c;
}

/* An admin change: a key's budget, blocking, or a team's parallelism. */
static struct ledger_cmd admin_cmd(struct sim *s)
{
    struct ledger_cmd c = new_cmd(s, LEDGER_CMD_ACCOUNT_UPDATE);
    unsigned key = (unsigned)sim_rng_below(&s->rng, SIM_N_KEYS);
    switch (sim_rng_below(&s->rng, 3)) {
    case 0:
        snprintf(c.u.update.name, sizeof(c.u.update.name), "%s", key_names[key]);
        c.u.update.limits.set = LEDGER_LIM_BUDGET;
        c.u.update.limits.budget_micros = sim_rng_range(&s->rng, 1000, 60000);
        break;
    case 1:
        snprintf(c.u.update.name, sizeof(c.u.update.name), "%s", key_names[key]);
        c.u.update.limits.set = LEDGER_LIM_BLOCKED;
        c.u.update.limits.blocked = sim_rng_chance(&s->rng, 1, 3);
        break;
    default:
        snprintf(c.u.update.name, sizeof(c.u.update.name), "%s", team_names[key / 2]);
        c.u.update.limits.set = LEDGER_LIM_PARALLEL;
        c.u.update.limits.max_parallel = (uint64_t)sim_rng_range(&s->rng, 1, 6);
        break;
    }
    return c;
}

static struct ledger_cmd random_cmd(struct sim *s)
{
    uint64_t roll = sim_rng_below(&s->rng, 100);
    if (roll < 42) {
        return random_reserve(s);
    }
    if (roll < 62) {
        return resolve_cmd(s, LEDGER_CMD_SETTLE);
    }
    if (roll < 72) {
        return resolve_cmd(s, LEDGER_CMD_VOID);
    }
    if (roll < 80) {
        return resolve_cmd(s, LEDGER_CMD_EXTEND);
    }
    if (roll < 96) {
        return replay_cmd(s);
    }
    return admin_cmd(s);
}

void sim_random_batch(struct sim *s, struct sim_proposal *p)
{
    p->n = sim_rng_chance(&s->rng, 1, 2) ? (size_t)sim_rng_range(&s->rng, 1, 4)
                                         : (size_t)sim_rng_range(&s->rng, 1, SIM_BATCH_MAX);
    for (size_t i = 0; i < p->n; i++) {
        p->cmds[i] = random_cmd(s);
    }
}

/* ---- Proposals and acknowledgements. ---- */

struct sim_proposal *sim_proposal_new(struct sim *s, int tag)
{
    struct sim_proposal *p = calloc(1, sizeof(*p));
    if (p == NULL) {
        sim_fail(s, "check=oom");
        return NULL;
    }
    p->sim = s;
    p->tag = tag;
    return p;
}

static void unlink_proposal(struct sim *s, struct sim_proposal *p)
{
    for (struct sim_proposal **pp = &s->outstanding; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == p) {
            *pp = p->next;
            return;
        }
    }
}

/* The leaf account a reserve command names (for checking the stored reservation). */
static void reserve_leaf(const struct ledger_cmd *c, char out[LEDGER_NAME_MAX + 1])
{
    out[0] = '\0';
    if (c->u.reserve.by_account) {
        snprintf(out, LEDGER_NAME_MAX + 1, "%s", c->u.reserve.account);
        return;
    }
    for (unsigned k = 0; k < SIM_N_KEYS; k++) {
        uint8_t h[LEDGER_KEY_HASH_SIZE];
        sim_key_hash(k, h);
        if (memcmp(h, c->u.reserve.key_hash, sizeof(h)) == 0) {
            snprintf(out, LEDGER_NAME_MAX + 1, "%s", key_names[k]);
        }
    }
}

static void record_grant(struct sim *s, const struct ledger_cmd *c, const struct ledger_result *r)
{
    struct sim_workload *w = &s->wl;
    if (w->n_grants == w->cap_grants) {
        size_t cap = w->cap_grants ? 2 * w->cap_grants : 256;
        struct sim_grant *grown = realloc(w->grants, cap * sizeof(*grown));
        if (grown == NULL) {
            sim_fail(s, "check=oom");
            return;
        }
        w->grants = grown;
        w->cap_grants = cap;
    }
    struct sim_grant *g = &w->grants[w->n_grants++];
    memcpy(g->request_id, c->request_id, LEDGER_REQUEST_ID_SIZE);
    reserve_leaf(c, g->account);
    g->estimate_micros = c->u.reserve.estimate_micros;
    g->estimate_tokens = c->u.reserve.estimate_tokens;
    /* A replayed answer is the stored one; its expiry may predate an extend. */
    g->created_ms =
        (r->flags & LEDGER_RESULT_REPLAYED) ? -1 : r->expires_at_ms - c->u.reserve.ttl_ms;
}

/* Copy out what an acknowledged batch answered (the adapter reuses the memory). */
static void record_ack(struct sim *s, struct sim_proposal *p, const struct node_apply_result *ar)
{
    if (ar != NULL && ar->index != p->req.index) {
        /* raft/fsm.c keeps one result slot; libraft applies every newly committed entry
         * before it fires their callbacks, so an earlier entry's callback reads a later
         * entry's results. */
        if (s->cfg.allow_misattributed_acks) {
            s->stats.misattributed++;
            s->stats.acked++;
            return;
        }
        sim_fail(s,
                 "check=ack_result: the apply callback of the entry at index %llu carries "
                 "the adapter's result of index %llu (%zu results for %zu commands)",
                 (unsigned long long)p->req.index, (unsigned long long)ar->index, ar->n, p->n);
        return;
    }
    if (ar == NULL || ar->status != 0 || ar->n != p->n) {
        sim_fail(s,
                 "check=ack: proposal at index %llu acknowledged with result index %llu, "
                 "status %d, %zu results for %zu commands",
                 (unsigned long long)p->req.index, ar ? (unsigned long long)ar->index : 0ULL,
                 ar ? ar->status : 0, ar ? ar->n : (size_t)0, p->n);
        return;
    }
    s->stats.acked++;
    s->stats.acked_cmds += p->n;
    memcpy(s->last_results, ar->results, p->n * sizeof(*ar->results));
    sim_digest(s, ar->index);
    for (size_t i = 0; i < p->n; i++) {
        const struct ledger_result *r = &ar->results[i];
        const struct ledger_cmd *c = &p->cmds[i];
        sim_digest(s, (uint64_t)(uint32_t)r->status << 16 | r->flags);
        if (r->cmd_type != c->type || memcmp(r->request_id, c->request_id, 16) != 0) {
            sim_fail(s, "check=ack: result %zu of index %llu answers another command", i,
                     (unsigned long long)ar->index);
            return;
        }
        s->stats.replays += (r->flags & LEDGER_RESULT_REPLAYED) != 0;
        if (c->type != LEDGER_CMD_RESERVE) {
            continue;
        }
        if (r->status == LEDGER_OK) {
            s->stats.grants++;
            record_grant(s, c, r);
        } else if (r->status == LEDGER_DENIED) {
            s->stats.denials++;
        }
    }
}

static void apply_cb(struct raft_apply *req, int status, void *result)
{
    struct sim_proposal *p = req->data;
    struct sim *s = p->sim;
    unlink_proposal(s, p);
    if (!s->closing) {
        if (status == 0) {
            s->last_ack_tag = p->tag;
            if (p->tag >= 0 && p->tag < 64) {
                s->acked_tags |= 1ULL << p->tag;
            }
            record_ack(s, p, result);
        } else {
            s->stats.failed++;
            s->last_fail_tag = p->tag;
            if (p->tag >= 0 && p->tag < 64) {
                s->failed_tags |= 1ULL << p->tag;
            }
        }
    }
    free(p);
}

int64_t sim_wall_ms(struct sim *s, unsigned i)
{
    return s->cfg.base_ms + (int64_t)raft_fixture_time(&s->fx) + s->srv[i].wall_offset_ms;
}

/* Encode with the proposer's ledger time (tallyd's stamp rule) into a raft_malloc'd
 * buffer. */
static int encode_batch(struct sim *s, unsigned i, struct sim_proposal *p, struct raft_buffer *b)
{
    struct sim_server *v = &s->srv[i];
    int64_t mono_ms = (int64_t)raft_fixture_time(&s->fx);
    node_clock_observe(&v->clock, ledger_now_ms(v->ledger), mono_ms);
    /* tallyd's leader stamps only after its barrier, having applied every stamped batch
     * committed before its term; the sim also proposes to leaders that have not. One
     * that has applied none after the set-up batch was committed sends stamp 0, which
     * the ledger takes as its own last stamp, instead of starting ledger time at its
     * wall clock as the first leader of a new cluster does. */
    int64_t stamp = 0;
    if (v->clock.set || !s->wl.setup_done) {
        stamp = node_clock_stamp(&v->clock, mono_ms, sim_wall_ms(s, i));
    }
    sim_digest(s, (uint64_t)stamp);
    void *buf = NULL;
    size_t len = 0;
    int rv = ledger_batch_encode(stamp, p->cmds, p->n, &buf, &len);
    if (rv != 0 || len % 8 != 0) {
        free(buf);
        sim_fail(s, "check=encode: ledger_batch_encode %d, %zu bytes", rv, len);
        return -1;
    }
    b->base = raft_malloc(len);
    if (b->base == NULL) {
        free(buf);
        sim_fail(s, "check=oom");
        return -1;
    }
    memcpy(b->base, buf, len);
    b->len = len;
    free(buf);
    return 0;
}

int sim_propose(struct sim *s, unsigned i, struct sim_proposal *p)
{
    struct raft_buffer b;
    if (encode_batch(s, i, p, &b) != 0) {
        free(p);
        return RAFT_NOMEM;
    }
    for (size_t k = 0; k < p->n; k++) {
        if (p->cmds[k].type == LEDGER_CMD_RESERVE) {
            remember_reserve(s, &p->cmds[k]);
        }
    }
    p->server = i;
    p->req.data = p;
    int rv = raft_apply(raft_fixture_get(&s->fx, i), &p->req, &b, 1, apply_cb);
    if (rv != 0) {
        /* On failure the buffer is ours (libraft patch 0005; unpatched 0.22.1 had freed
         * it already when the failure was a write's, and tallyd's node freed it again). */
        raft_free(b.base);
        s->stats.rejected++;
        sim_trace(s, "raft_apply on %u: %s", i, raft_strerror(rv));
        free(p);
        return rv;
    }
    s->stats.proposed++;
    p->next = s->outstanding;
    s->outstanding = p;
    return 0;
}

void sim_propose_random(struct sim *s)
{
    unsigned leader = sim_leader(s);
    /* Sometimes a server that still believes it leads (a stale leader). */
    for (unsigned i = 0; i < s->n && sim_rng_chance(&s->rng, 1, 8); i++) {
        if (i != leader && raft_fixture_alive(&s->fx, i) &&
            raft_state(raft_fixture_get(&s->fx, i)) == RAFT_LEADER) {
            leader = i;
        }
    }
    if (leader < s->n) {
        sim_propose_random_to(s, leader);
    }
}

int sim_propose_random_to(struct sim *s, unsigned i)
{
    struct sim_proposal *p = sim_proposal_new(s, 0);
    if (p == NULL) {
        return RAFT_NOMEM;
    }
    sim_random_batch(s, p);
    return sim_propose(s, i, p);
}

static bool has_leader(struct sim *s)
{
    return sim_leader(s) < s->n && sim_stable_leader(s) < s->n;
}

int sim_propose_until_acked(struct sim *s, unsigned max_ms)
{
    raft_time start = raft_fixture_time(&s->fx);
    int tag = 1000;
    while (!s->failed && raft_fixture_time(&s->fx) - start < max_ms) {
        if (!sim_step_until(s, has_leader, 10 * s->cfg.election_timeout_ms)) {
            /* The fixture's timeouts are fixed, not random: a server with a stale log
             * and the shortest timeout can start every election first, forever (without
             * pre-vote). Re-drawing the order is what randomization does for real. */
            sim_distinct_timeouts(s);
            continue;
        }
        struct sim_proposal *p = sim_proposal_new(s, ++tag);
        if (p == NULL) {
            return -1;
        }
        sim_random_batch(s, p);
        if (sim_propose(s, sim_leader(s), p) != 0) {
            sim_step(s);
            continue;
        }
        raft_time t = raft_fixture_time(&s->fx);
        while (!s->failed && s->last_ack_tag != tag && s->last_fail_tag != tag &&
               raft_fixture_time(&s->fx) - t < 4 * s->cfg.election_timeout_ms) {
            sim_step(s);
        }
        if (s->last_ack_tag == tag) {
            return 0;
        }
    }
    return -1;
}

/* ---- The final check of acknowledged grants. ---- */

/* True if server i holds grant g as granted. */
static bool check_grant_on(struct sim *s, const struct sim_grant *g, unsigned i)
{
    struct ledger *l = s->srv[i].ledger;
    struct ledger_reservation_info info;
    char id[17];
    for (int k = 0; k < 8; k++) {
        snprintf(id + 2 * k, 3, "%02x", g->request_id[k]);
    }
    /* A resolved reservation is dropped after the retention window, never before
     * created + retention; after that its id may even be granted anew. */
    bool may_be_pruned =
        s->cfg.retention_ms > 0 &&
        (g->created_ms < 0 || g->created_ms + s->cfg.retention_ms <= ledger_now_ms(l));
    if (ledger_reservation_get(l, g->request_id, &info) != 0) {
        if (!may_be_pruned) {
            sim_fail(s,
                     "check=acked_grant: reservation %s.. acknowledged as granted is missing "
                     "on server %u",
                     id, i);
        }
        return false;
    }
    if (!may_be_pruned &&
        (strcmp(info.account, g->account) != 0 || info.estimate_micros != g->estimate_micros ||
         info.estimate_tokens != g->estimate_tokens ||
         (g->created_ms >= 0 && info.created_ms != g->created_ms))) {
        sim_fail(s,
                 "check=acked_grant: reservation %s.. on server %u is not the one granted "
                 "(%s/%lld/%lld vs %s/%lld/%lld)",
                 id, i, info.account, (long long)info.estimate_micros, (long long)info.created_ms,
                 g->account, (long long)g->estimate_micros, (long long)g->created_ms);
        return false;
    }
    return true;
}

void sim_check_grants(struct sim *s)
{
    for (size_t k = 0; k < s->wl.n_grants && !s->failed; k++) {
        unsigned found = 0, up = 0;
        for (unsigned i = 0; i < s->n && !s->failed; i++) {
            if (!s->down[i]) {
                up++;
                found += check_grant_on(s, &s->wl.grants[k], i);
            }
        }
        s->stats.grants_verified += found == up;
    }
}

void sim_workload_free(struct sim *s)
{
    free(s->wl.reserves);
    free(s->wl.grants);
    memset(&s->wl, 0, sizeof(s->wl));
}
