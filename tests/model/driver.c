/*
 * driver.c: ledger_model_test's driver: it draws commands, runs each through the model
 * (model.c) and the ledger in batches, and compares answers and state.
 *
 * The driver draws commands that hit the interesting cases often: tight budgets, rate
 * limits near their bursts, replays of old request ids with and without altered
 * arguments, settles, voids and extends of open, resolved, expired and unknown ids, limit
 * changes, blocking, moves and key revocation, with a clock that mostly stands still and
 * sometimes jumps hours or days. After every batch every answer and every account's
 * counters are compared; the first difference stops the run with the seed and step that
 * reproduce it.
 */
#include "model.h"

#include <stdarg.h>

/* ---- Deterministic randomness: splitmix64, so a seed replays on every libc. ---- */

uint64_t rng_state;

static uint64_t rng_next(void)
{
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static uint64_t rng_below(uint64_t n)
{
    return n == 0 ? 0 : rng_next() % n;
}

/* Uniform in [lo, hi]. */
int64_t rng_range(int64_t lo, int64_t hi)
{
    return lo + (int64_t)rng_below((uint64_t)(hi - lo) + 1);
}

bool rng_chance(unsigned per_mille)
{
    return rng_below(1000) < per_mille;
}

static void rng_bytes(uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        p[i] = (uint8_t)rng_next();
    }
}

/* ---- The driver: random commands aimed at the interesting cases. ---- */

struct d_state D;
struct d_stats S;

static const char *const UNKNOWN_NAMES[] = {"nobody", "org/t9", "solo/zz"};

static void hex_id(char out[2 * LEDGER_REQUEST_ID_SIZE + 1], const uint8_t *id)
{
    for (int i = 0; i < LEDGER_REQUEST_ID_SIZE; i++) {
        snprintf(out + 2 * i, 3, "%02x", id[i]);
    }
}

static void print_limits(const struct ledger_limits *l)
{
    printf(" set=0x%x", l->set);
    if (l->set & LEDGER_LIM_BUDGET) {
        printf(" budget=%" PRId64, l->budget_micros);
    }
    if (l->set & LEDGER_LIM_SOFT_BUDGET) {
        printf(" soft=%" PRId64, l->soft_budget_micros);
    }
    if (l->set & LEDGER_LIM_PERIOD) {
        printf(" period=%u/%" PRId64, l->period_kind, l->period_ms);
    }
    if (l->set & LEDGER_LIM_RPM) {
        printf(" rpm=%" PRIu64 "/%" PRIu64, l->rpm, l->rpm_burst);
    }
    if (l->set & LEDGER_LIM_TPM) {
        printf(" tpm=%" PRIu64 "/%" PRIu64, l->tpm, l->tpm_burst);
    }
    if (l->set & LEDGER_LIM_PARALLEL) {
        printf(" parallel=%" PRIu64, l->max_parallel);
    }
    if (l->set & LEDGER_LIM_EXPIRES) {
        printf(" expires=%" PRId64, l->expires_at_ms);
    }
    if (l->set & LEDGER_LIM_BLOCKED) {
        printf(" blocked=%u", l->blocked);
    }
    if (l->set & LEDGER_LIM_EXPIRY_POLICY) {
        printf(" policy=%u", l->expiry_policy);
    }
}

static void print_cmd(const struct ledger_cmd *c)
{
    char id[2 * LEDGER_REQUEST_ID_SIZE + 1], kh[2 * LEDGER_REQUEST_ID_SIZE + 1];
    hex_id(id, c->request_id);
    switch (c->type) {
    case LEDGER_CMD_ACCOUNT_CREATE:
        printf("create id=%s name=%s parent=%s", id, c->u.create.name, c->u.create.parent);
        print_limits(&c->u.create.limits);
        break;
    case LEDGER_CMD_ACCOUNT_UPDATE:
        printf("update id=%s name=%s clear=0x%x", id, c->u.update.name, c->u.update.clear);
        if (c->u.update.set_parent) {
            printf(" parent=\"%s\"", c->u.update.parent);
        }
        print_limits(&c->u.update.limits);
        break;
    case LEDGER_CMD_KEY_ADD:
    case LEDGER_CMD_KEY_REVOKE:
        hex_id(kh, c->u.key.key_hash);
        printf("%s id=%s account=%s hash=%.16s",
               c->type == LEDGER_CMD_KEY_ADD ? "key_add" : "key_revoke", id, c->u.key.account, kh);
        break;
    case LEDGER_CMD_MODEL_LIMIT_SET:
        printf("model_limit id=%s account=%s model=%s", id, c->u.model_limit.account,
               c->u.model_limit.model);
        break;
    case LEDGER_CMD_RESERVE:
        hex_id(kh, c->u.reserve.key_hash);
        printf("reserve id=%s %s=%s est=%" PRId64 " tokens=%" PRIu64 " model=%s ttl=%" PRId64
               " meta=%u actor=%s",
               id, c->u.reserve.by_account ? "account" : "key",
               c->u.reserve.by_account ? c->u.reserve.account : kh, c->u.reserve.estimate_micros,
               c->u.reserve.estimate_tokens, c->u.reserve.model, c->u.reserve.ttl_ms,
               c->u.reserve.metadata_len, c->actor);
        break;
    case LEDGER_CMD_SETTLE:
        printf("settle id=%s actual=%" PRId64 " tokens=%" PRIu64, id, c->u.settle.actual_micros,
               c->u.settle.actual_tokens);
        break;
    case LEDGER_CMD_VOID:
        printf("void id=%s", id);
        break;
    case LEDGER_CMD_EXTEND:
        printf("extend id=%s ttl=%" PRId64, id, c->u.extend.ttl_ms);
        break;
    case LEDGER_CMD_CONFIG_SET:
        printf("config id=%s retention=%" PRId64, id, c->u.config.retention_ms);
        break;
    case LEDGER_CMD_TERM_START:
        printf("term_start commit_index=%" PRIu64, c->u.term_start.commit_index);
        break;
    default:
        printf("type %u id=%s", c->type, id);
    }
    printf("\n");
}

static void print_result(const char *label, const struct ledger_result *r)
{
    printf("    %s: status=%d(%s) type=%u deny=%s account=%s remaining=%" PRId64 " retry=%" PRId64
           " charged=%" PRId64 " overrun=%" PRId64 " expires=%" PRId64 " flags=0x%x\n",
           label, r->status,
           r->status < 0 ? ledger_strerror(r->status) : (r->status ? "DENIED" : "OK"), r->cmd_type,
           ledger_deny_reason_name(r->deny_reason), r->account, r->remaining, r->retry_after_ms,
           r->charged_micros, r->overrun_micros, r->expires_at_ms, r->flags);
}

/* Print the batch and stop the test: the model and the ledger disagree (or the run broke). */
static void fail(size_t at, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void fail(size_t at, const char *fmt, ...)
{
    printf("MISMATCH seed=%" PRIu64 " step=%" PRIu64 " batch=%" PRIu64 " index=%" PRIu64
           " now=%" PRId64 ": ",
           D.seed, D.step - D.n + (at < D.n ? at : D.n - 1), D.batch, D.t.index, M.now);
    va_list ap;
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n  batch of %zu commands (step of the first: %" PRIu64 "):\n", D.n, D.step - D.n);
    for (size_t i = 0; i < D.n; i++) {
        printf("%s [%zu] ", i == at ? ">>" : "  ", i);
        print_cmd(&D.cmds[i]);
        if (i == at || D.trace) {
            print_result("expected", &D.exp[i]);
            print_result("actual  ", &D.got[i]);
        }
    }
    printf("  replay with: TALLY_SEED=%" PRIu64 "\n", D.seed);
    REQUIRE(0);
}

/* ---- Picking commands. ---- */

static void fresh_id(uint8_t id[LEDGER_REQUEST_ID_SIZE])
{
    rng_bytes(id, LEDGER_REQUEST_ID_SIZE);
}

static struct ledger_cmd new_cmd(uint8_t type)
{
    struct ledger_cmd c = tl_cmd(&D.t, type);
    fresh_id(c.request_id);
    return c;
}

int setup_accounts; /* accounts of the initial forest */

static const char *random_account_name(void)
{
    if (rng_chance(30)) {
        return UNKNOWN_NAMES[rng_below(3)];
    }
    /* Mostly the initial forest, whose limits were chosen to be tight but passable. */
    int n = rng_chance(700) ? setup_accounts : M.n_acct;
    return M.acct[rng_below((uint64_t)n)].name;
}

static int64_t random_estimate(void)
{
    uint64_t p = rng_below(1000);
    if (p < 50) {
        return 0;
    }
    if (p < 550) {
        return rng_range(1, 5000);
    }
    if (p < 900) {
        return rng_range(5000, 100000);
    }
    return rng_range(100000, 2000000);
}

static uint64_t random_tokens(void)
{
    uint64_t p = rng_below(1000);
    if (p < 100) {
        return 0;
    }
    if (p < 800) {
        return (uint64_t)rng_range(1, 2000);
    }
    return (uint64_t)rng_range(2000, 50000);
}

static int64_t random_ttl(void)
{
    uint64_t p = rng_below(1000);
    if (p < 100) {
        return rng_range(1, 100);
    }
    if (p < 600) {
        return rng_range(1000, 60000);
    }
    if (p < 900) {
        return rng_range(60000, 3600000);
    }
    return rng_range(3600000, LEDGER_TTL_MAX_MS);
}

static const char *random_model(void)
{
    uint64_t p = rng_below(100);
    return p < 60 ? "" : p < 80 ? "m1" : p < 95 ? "m2" : "m3";
}

static struct ledger_cmd gen_reserve(void)
{
    struct ledger_cmd c = new_cmd(LEDGER_CMD_RESERVE);
    if (rng_chance(300)) {
        c.u.reserve.by_account = 1;
        snprintf(c.u.reserve.account, sizeof(c.u.reserve.account), "%s", random_account_name());
    } else if (M.n_keys > 0 && rng_chance(920)) {
        /* Mostly an active key: revoked ones are picked by the tries running out. */
        int k = (int)rng_below((uint64_t)M.n_keys);
        for (int tries = 0; tries < 8 && M.keys[k].revoked && rng_chance(900); tries++) {
            k = (int)rng_below((uint64_t)M.n_keys);
        }
        memcpy(c.u.reserve.key_hash, M.keys[k].hash, LEDGER_KEY_HASH_SIZE);
    } else {
        tl_key_hash("sk-never-added", c.u.reserve.key_hash);
        c.u.reserve.key_hash[0] = (uint8_t)rng_next();
    }
    c.u.reserve.estimate_micros = random_estimate();
    c.u.reserve.estimate_tokens = random_tokens();
    c.u.reserve.ttl_ms = random_ttl();
    snprintf(c.u.reserve.model, sizeof(c.u.reserve.model), "%s", random_model());
    c.u.reserve.metadata_len = (uint16_t)rng_below(17);
    rng_bytes(c.u.reserve.metadata, c.u.reserve.metadata_len);
    if (rng_chance(10)) { /* one argument out of range */
        switch (rng_below(4)) {
        case 0:
            c.u.reserve.estimate_micros = rng_chance(500) ? -1 : LEDGER_AMOUNT_MAX + 1;
            break;
        case 1:
            c.u.reserve.estimate_tokens = LEDGER_TOKENS_MAX + 1;
            break;
        case 2:
            c.u.reserve.ttl_ms = 0;
            break;
        default:
            c.u.reserve.ttl_ms = LEDGER_TTL_MAX_MS + 1;
        }
    }
    return c;
}

/* Whether the record of a reservation is certainly still retained at now. */
static bool resv_retained(const struct m_resv *v)
{
    return v->state == LEDGER_RESV_OPEN || v->resolved_at + M.retention_ms > M.now;
}

/* A reservation id to settle, void or extend: open, resolved, expired, made none, unknown. */
static void pick_target(uint8_t id[LEDGER_REQUEST_ID_SIZE], bool *open)
{
    uint64_t p = rng_below(100);
    uint64_t nr = D.n_recent < RECENT_MAX ? D.n_recent : RECENT_MAX;
    *open = false;
    if (p < 50 && M.n_open > 0) {
        memcpy(id, M.resv[M.open[rng_below(M.n_open)]].id, LEDGER_REQUEST_ID_SIZE);
        *open = true;
        return;
    }
    if (p < 80 && nr > 0) {
        bool want_expired = p >= 65;
        for (int tries = 0; tries < 16; tries++) {
            const struct m_resv *v = &M.resv[D.recent[rng_below(nr)]];
            if (v->state != LEDGER_RESV_OPEN && resv_retained(v) &&
                (!want_expired || v->state == LEDGER_RESV_EXPIRED)) {
                memcpy(id, v->id, LEDGER_REQUEST_ID_SIZE);
                return;
            }
        }
    }
    if (p < 90 && D.n_dead > 0) {
        uint64_t nd = D.n_dead < DEAD_MAX ? D.n_dead : DEAD_MAX;
        memcpy(id, D.dead[rng_below(nd)], LEDGER_REQUEST_ID_SIZE);
        return;
    }
    fresh_id(id);
}

static struct ledger_cmd gen_settle(void)
{
    struct ledger_cmd c = new_cmd(LEDGER_CMD_SETTLE);
    bool open;
    pick_target(c.request_id, &open);
    int32_t idx = htab_get(&M.resv_idx, c.request_id, 0);
    int64_t est = idx >= 0 ? M.resv[idx].est : random_estimate();
    uint64_t tok = idx >= 0 ? M.resv[idx].tokens : random_tokens();
    uint64_t p = rng_below(100);
    c.u.settle.actual_micros = p < 10   ? 0
                               : p < 50 ? rng_range(0, est)
                               : p < 75 ? est
                                        : est + rng_range(1, est + 1000);
    p = rng_below(100);
    c.u.settle.actual_tokens = p < 10   ? 0
                               : p < 40 ? (uint64_t)rng_range(0, (int64_t)tok)
                               : p < 70 ? tok
                                        : tok + (uint64_t)rng_range(1, (int64_t)tok + 500);
    if (open && rng_chance(30)) { /* out of range only where the answer is certain */
        if (rng_chance(700)) {
            c.u.settle.actual_micros = rng_chance(500) ? -1 : LEDGER_AMOUNT_MAX + 1;
        } else {
            c.u.settle.actual_tokens = LEDGER_TOKENS_MAX + 1;
        }
    }
    return c;
}

static struct ledger_cmd gen_void(void)
{
    struct ledger_cmd c = new_cmd(LEDGER_CMD_VOID);
    bool open;
    pick_target(c.request_id, &open);
    return c;
}

static struct ledger_cmd gen_extend(void)
{
    struct ledger_cmd c = new_cmd(LEDGER_CMD_EXTEND);
    bool open;
    pick_target(c.request_id, &open);
    c.u.extend.ttl_ms = random_ttl();
    if (open && rng_chance(30)) {
        c.u.extend.ttl_ms = rng_chance(500) ? 0 : LEDGER_TTL_MAX_MS + 1;
    }
    return c;
}

static int64_t random_budget(void)
{
    static const int64_t budgets[] = {0,       20000,    100000,   500000,
                                      2000000, 10000000, 50000000, 200000000};
    return budgets[rng_below(sizeof(budgets) / sizeof(budgets[0]))];
}

static void random_period(struct ledger_limits *l)
{
    static const int64_t lens[] = {1000, 60000, 600000, 3600000, DAY_MS, LEDGER_PERIOD_MAX_MS};
    l->set |= LEDGER_LIM_PERIOD;
    l->period_kind = (uint8_t)rng_below(LEDGER_PERIOD_MAX);
    l->period_ms = 0;
    if (l->period_kind == LEDGER_PERIOD_FIXED) {
        l->period_ms = rng_chance(200) ? rng_range(LEDGER_PERIOD_MIN_MS, 7 * DAY_MS)
                                       : lens[rng_below(sizeof(lens) / sizeof(lens[0]))];
    }
}

/* One out-of-range limit (EINVAL). */
static void invalid_limit(struct ledger_limits *l)
{
    switch (rng_below(8)) {
    case 0:
        l->set |= LEDGER_LIM_BUDGET;
        l->budget_micros = -1;
        break;
    case 1:
        l->set |= LEDGER_LIM_SOFT_BUDGET;
        l->soft_budget_micros = LEDGER_AMOUNT_MAX + 1;
        break;
    case 2:
        l->set |= LEDGER_LIM_PERIOD;
        l->period_kind = LEDGER_PERIOD_FIXED;
        l->period_ms = rng_chance(500) ? LEDGER_PERIOD_MIN_MS - 1 : LEDGER_PERIOD_MAX_MS + 1;
        break;
    case 3:
        l->set |= LEDGER_LIM_PERIOD;
        l->period_kind = LEDGER_PERIOD_MAX;
        break;
    case 4:
        l->set |= LEDGER_LIM_RPM;
        l->rpm = 0;
        break;
    case 5:
        l->set |= LEDGER_LIM_TPM;
        l->tpm = 10;
        l->tpm_burst = LEDGER_RATE_MAX + 1;
        break;
    case 6:
        l->set |= LEDGER_LIM_PARALLEL;
        l->max_parallel = LEDGER_PARALLEL_MAX + 1;
        break;
    default:
        l->set |= LEDGER_LIM_EXPIRY_POLICY;
        l->expiry_policy = 2;
    }
}

/* One limit change for account `a` into *l / *clear, avoiding bits already touched. */
static void random_limit_change(const struct m_account *a, struct ledger_limits *l, uint32_t *clear)
{
    uint32_t used = l->set | *clear;
    uint64_t p = rng_below(100);
    uint32_t bit;
    if (p < 30) {
        bit = LEDGER_LIM_BUDGET;
        l->budget_micros = random_budget();
    } else if (p < 40) {
        bit = LEDGER_LIM_SOFT_BUDGET;
        l->soft_budget_micros = random_budget();
    } else if (p < 55 && !a->period_locked) {
        bit = LEDGER_LIM_PERIOD;
        if (!(used & bit)) {
            random_period(l);
            l->set &= ~bit; /* set or cleared below */
        }
    } else if (p < 63) {
        bit = LEDGER_LIM_BLOCKED;
        l->blocked = rng_chance(200);
    } else if (p < 73) {
        bit = LEDGER_LIM_PARALLEL;
        static const uint64_t par[] = {0, 3, 10, 50, 1000};
        l->max_parallel = par[rng_below(5)];
    } else if (p < 80) {
        /* Mostly far ahead: an expired account denies everything below it until cleared. */
        bit = LEDGER_LIM_EXPIRES;
        static const int64_t near[] = {-1000, 0, 1, 5000, 3600000};
        static const int64_t far[] = {DAY_MS, 30 * DAY_MS, 365 * DAY_MS};
        l->expires_at_ms = M.now + (rng_chance(250) ? near[rng_below(5)] : far[rng_below(3)]);
    } else {
        bit = LEDGER_LIM_EXPIRY_POLICY;
        l->expiry_policy = (uint8_t)rng_below(2);
    }
    if (used & bit) {
        return;
    }
    /* Clearing is likelier for the kinds that deny everything below the account. */
    bool sticky =
        bit == LEDGER_LIM_BLOCKED || bit == LEDGER_LIM_EXPIRES || bit == LEDGER_LIM_PARALLEL;
    if (rng_chance(sticky ? 400 : 150)) {
        *clear |= bit;
    } else {
        l->set |= bit;
    }
}

/* Whether the update would move account `a` back into a period it counted in before. */
static bool period_revisited(const struct m_account *a, const struct ledger_limits *nl,
                             uint32_t clear)
{
    struct m_account sim = *a; /* a copy: its rolls are not recorded in past_periods */
    m_update_limits(&sim, nl, clear);
    if (sim.period_start == period_key(a, M.now)) {
        return false;
    }
    if (sim.period_start == a->period_start) {
        return true; /* the stored period, which now has rolled past (DAY Mon -> WEEK Tue) */
    }
    ptrdiff_t i = a - M.acct;
    for (size_t j = 0; j < past_periods[i].n; j++) {
        if (past_periods[i].key[j] == sim.period_start) {
            return true;
        }
    }
    return false;
}

static struct ledger_cmd gen_update(void)
{
    struct ledger_cmd c = new_cmd(LEDGER_CMD_ACCOUNT_UPDATE);
    uint64_t p = rng_below(100);
    if (p < 3) { /* unknown account */
        snprintf(c.u.update.name, sizeof(c.u.update.name), "%s", UNKNOWN_NAMES[rng_below(3)]);
        c.u.update.limits.set = LEDGER_LIM_BUDGET;
        return c;
    }
    const struct m_account *a = &M.acct[rng_below((uint64_t)M.n_acct)];
    snprintf(c.u.update.name, sizeof(c.u.update.name), "%s", a->name);
    if (p < 12) { /* a move: ECYCLE, EDEPTH, ENOTFOUND or OK */
        c.u.update.set_parent = 1;
        const char *np = rng_chance(150) ? "" : random_account_name();
        snprintf(c.u.update.parent, sizeof(c.u.update.parent), "%s", np);
        return c;
    }
    if (p < 20) {
        invalid_limit(&c.u.update.limits);
        return c;
    }
    /* Half the time an account that denies everything is healed, else denials pile up. */
    bool blocked = (a->lim.set & LEDGER_LIM_BLOCKED) && a->lim.blocked;
    bool expired = (a->lim.set & LEDGER_LIM_EXPIRES) && M.now >= a->lim.expires_at_ms;
    if ((blocked || expired) && rng_chance(500)) {
        c.u.update.clear = (blocked ? LEDGER_LIM_BLOCKED : 0) | (expired ? LEDGER_LIM_EXPIRES : 0);
        return c;
    }
    random_limit_change(a, &c.u.update.limits, &c.u.update.clear);
    if (rng_chance(250)) {
        random_limit_change(a, &c.u.update.limits, &c.u.update.clear);
    }
    /* Setting a budget and its period together is how an operator changes a plan. */
    if ((c.u.update.limits.set & LEDGER_LIM_BUDGET) && !a->period_locked && rng_chance(200) &&
        !((c.u.update.limits.set | c.u.update.clear) & LEDGER_LIM_PERIOD)) {
        random_period(&c.u.update.limits);
    }
    if (AVOID_PERIOD_REVISITS && period_revisited(a, &c.u.update.limits, c.u.update.clear)) {
        c.u.update.limits.set &= ~(uint32_t)LEDGER_LIM_PERIOD;
        c.u.update.clear &= ~(uint32_t)LEDGER_LIM_PERIOD;
    }
    return c;
}

static struct ledger_cmd gen_create(void)
{
    struct ledger_cmd c = new_cmd(LEDGER_CMD_ACCOUNT_CREATE);
    struct ledger_limits *l = &c.u.create.limits;
    uint64_t p = rng_below(100);
    const char *parent = rng_chance(100) ? "" : M.acct[rng_below((uint64_t)M.n_acct)].name;
    snprintf(c.u.create.parent, sizeof(c.u.create.parent), "%s", parent);
    if (p < 15) { /* duplicate */
        snprintf(c.u.create.name, sizeof(c.u.create.name), "%s",
                 M.acct[rng_below((uint64_t)M.n_acct)].name);
        return c;
    }
    if (p < 25) {
        snprintf(c.u.create.name, sizeof(c.u.create.name), "bad name %" PRIu64, D.next_account);
        return c;
    }
    snprintf(c.u.create.name, sizeof(c.u.create.name), "n%" PRIu64, D.next_account++);
    if (p < 35) {
        snprintf(c.u.create.parent, sizeof(c.u.create.parent), "%s", UNKNOWN_NAMES[0]);
        return c;
    }
    if (p < 45) { /* under no parent, so EDEPTH cannot compete with EINVAL */
        c.u.create.parent[0] = '\0';
        invalid_limit(l);
        return c;
    }
    if (M.n_acct >= 20) { /* enough accounts: the name is taken (EEXIST) */
        snprintf(c.u.create.name, sizeof(c.u.create.name), "%s", M.acct[0].name);
        return c;
    }
    if (rng_chance(700)) {
        l->set |= LEDGER_LIM_BUDGET;
        l->budget_micros = random_budget();
    }
    if (rng_chance(500)) {
        random_period(l);
    }
    if (rng_chance(300)) {
        l->set |= LEDGER_LIM_RPM;
        l->rpm = (uint64_t)rng_range(1, 200);
        l->rpm_burst = (uint64_t)rng_range(0, 20);
    }
    if (rng_chance(300)) {
        l->set |= LEDGER_LIM_TPM;
        l->tpm = (uint64_t)rng_range(100, 50000);
        l->tpm_burst = (uint64_t)rng_range(0, 10000);
    }
    if (rng_chance(200)) {
        l->set |= LEDGER_LIM_PARALLEL;
        l->max_parallel = (uint64_t)rng_range(0, 10);
    }
    if (rng_chance(300)) {
        l->set |= LEDGER_LIM_EXPIRY_POLICY;
        l->expiry_policy = (uint8_t)rng_below(2);
    }
    return c;
}

static struct ledger_cmd gen_key(void)
{
    uint64_t p = rng_below(100);
    char secret[64];
    if ((p < 70 && M.n_keys < M_KEYS_MAX) || M.n_keys == 0) {
        snprintf(secret, sizeof(secret), "sk-%" PRIu64, D.next_secret++);
        struct ledger_cmd c = tl_key_add(&D.t, random_account_name(), secret);
        fresh_id(c.request_id);
        return c;
    }
    if (p < 80) { /* a known hash again: EEXIST */
        struct ledger_cmd c = tl_key_add(&D.t, M.acct[rng_below((uint64_t)M.n_acct)].name, "x");
        memcpy(c.u.key.key_hash, M.keys[rng_below((uint64_t)M.n_keys)].hash, LEDGER_KEY_HASH_SIZE);
        fresh_id(c.request_id);
        return c;
    }
    struct ledger_cmd c = tl_key_revoke(&D.t, "sk-never-added");
    fresh_id(c.request_id);
    if (p < 95) {
        memcpy(c.u.key.key_hash, M.keys[rng_below((uint64_t)M.n_keys)].hash, LEDGER_KEY_HASH_SIZE);
    }
    return c;
}

static struct ledger_cmd gen_config(void)
{
    struct ledger_cmd c = new_cmd(LEDGER_CMD_CONFIG_SET);
    uint64_t p = rng_below(4);
    /* Only the default is set: a changed retention would blur which ids are retained. */
    c.u.config.retention_ms = p == 0   ? LEDGER_RETENTION_DEFAULT_MS
                              : p == 1 ? 0
                              : p == 2 ? LEDGER_RETENTION_MIN_MS - 1
                                       : LEDGER_RETENTION_MAX_MS + 1;
    return c;
}

/* Whether a stored answer is certainly still in the store at now. */
static bool hist_retained(const struct hist *h)
{
    if (h->resv >= 0) {
        return resv_retained(&M.resv[h->resv]);
    }
    return h->stored_at + M.retention_ms > M.now;
}

/* Change one argument of a stored command, so it must answer ECONFLICT. */
static void alter_args(struct ledger_cmd *c)
{
    switch (c->type) {
    case LEDGER_CMD_ACCOUNT_CREATE:
        strncat(c->u.create.name, "x", sizeof(c->u.create.name) - strlen(c->u.create.name) - 1);
        break;
    case LEDGER_CMD_ACCOUNT_UPDATE:
        strncat(c->u.update.name, "x", sizeof(c->u.update.name) - strlen(c->u.update.name) - 1);
        break;
    case LEDGER_CMD_KEY_ADD:
        strncat(c->u.key.account, "x", sizeof(c->u.key.account) - strlen(c->u.key.account) - 1);
        break;
    case LEDGER_CMD_KEY_REVOKE:
        c->u.key.key_hash[31] ^= 1;
        break;
    case LEDGER_CMD_RESERVE:
        switch (rng_below(3)) {
        case 0:
            c->u.reserve.estimate_micros += 1;
            break;
        case 1:
            c->u.reserve.estimate_tokens += 1;
            break;
        default:
            c->u.reserve.ttl_ms += 1;
        }
        break;
    case LEDGER_CMD_SETTLE:
        c->u.settle.actual_micros += 1;
        break;
    case LEDGER_CMD_CONFIG_SET:
        c->u.config.retention_ms += 1;
        break;
    default: /* void has no arguments to alter */
        break;
    }
}

/* A replay of a stored command, half of them with one argument changed; false if none. */
static bool gen_replay(struct ledger_cmd *out)
{
    uint64_t n = D.n_hist < HIST_MAX ? D.n_hist : HIST_MAX;
    if (n == 0) {
        return false;
    }
    const struct hist *h = &D.hist[rng_below(n)];
    if (!hist_retained(h)) {
        return false;
    }
    *out = h->cmd;
    if (rng_chance(500)) {
        alter_args(out);
    } else if (rng_chance(300)) { /* the actor is not part of the fingerprint */
        snprintf(out->actor, sizeof(out->actor), "other-actor");
    }
    return true;
}

/* A scope for `c` now and then: one or two roots of the model, or a name nobody has. */
static void maybe_scope(struct ledger_cmd *c)
{
    if (!rng_chance(60)) {
        return;
    }
    int roots[M_ACCOUNTS_MAX], n = 0;
    for (int i = 0; i < M.n_acct; i++) {
        if (M.acct[i].parent < 0) {
            roots[n++] = i;
        }
    }
    const char *first =
        n > 0 && !rng_chance(100) ? M.acct[roots[rng_below((uint64_t)n)]].name : "nobody";
    snprintf(c->scope, sizeof(c->scope), "%s", first);
    if (n > 0 && rng_chance(300)) {
        size_t used = strlen(c->scope);
        snprintf(c->scope + used, sizeof(c->scope) - used, ",%s",
                 M.acct[roots[rng_below((uint64_t)n)]].name);
    }
}

static struct ledger_cmd gen_fresh(void);

/* A new leader's TERM_START: mostly naming a commit index a few batches back (so the
 * reserves, replays and extends since are ambiguous), sometimes one not below this
 * batch's index (refused). */
static struct ledger_cmd gen_term_start(void)
{
    struct ledger_cmd c;
    memset(&c, 0, sizeof(c));
    c.type = LEDGER_CMD_TERM_START;
    snprintf(c.actor, sizeof(c.actor), "raft");
    uint64_t back = rng_below(24);
    back = back < M.index - 1 ? back : M.index - 1;
    c.u.term_start.commit_index = rng_chance(50) ? M.index + rng_below(3) : M.index - 1 - back;
    return c;
}

/* The next batch's index: Raft indexes may skip (configuration entries). */
void pick_index(void)
{
    M.index = D.t.index + (rng_chance(10) ? 1 + rng_below(5) : 1);
}

struct ledger_cmd gen_command(void)
{
    struct ledger_cmd c;
    if (rng_chance(8)) {
        S.term_starts++;
        return gen_term_start();
    }
    if (rng_chance(250) && gen_replay(&c)) {
        maybe_scope(&c);
        return c;
    }
    c = gen_fresh();
    maybe_scope(&c);
    return c;
}

static struct ledger_cmd gen_fresh(void)
{
    uint64_t p = rng_below(1000);
    if (p < 500) {
        return gen_reserve();
    }
    if (p < 700) {
        return gen_settle();
    }
    if (p < 780) {
        return gen_void();
    }
    if (p < 860) {
        return gen_extend();
    }
    if (p < 945) {
        return gen_update();
    }
    if (p < 975) {
        return gen_key();
    }
    if (p < 995) {
        return gen_create();
    }
    return gen_config();
}

/* Bookkeeping after the model answered command `c` (replay pools and statistics). */
void note_command(const struct ledger_cmd *c, const struct ledger_result *r)
{
    S.cmds++;
    if (M_last.replayed) {
        S.replays++;
    }
    if (M_last.conflict) {
        S.conflicts++;
    }
    if (!M_last.replayed && !M_last.conflict) {
        if (r->status < 0 && -r->status < LEDGER_ECODE_MAX) {
            S.errors[-r->status]++;
        }
        if (c->type == LEDGER_CMD_RESERVE && r->status == LEDGER_OK) {
            S.grants++;
            S.soft_flagged += (r->flags & LEDGER_RESULT_SOFT_BUDGET) != 0;
        }
        if (r->status == LEDGER_DENIED && r->deny_reason < LEDGER_DENY_MAX) {
            S.denies[r->deny_reason]++;
        }
        if (r->status == LEDGER_OK) {
            S.settles += c->type == LEDGER_CMD_SETTLE;
            S.voids += c->type == LEDGER_CMD_VOID;
            S.extends += c->type == LEDGER_CMD_EXTEND;
            S.late += M_last.late;
        }
    }
    if (M_last.stored) {
        struct hist *h = &D.hist[D.n_hist++ % HIST_MAX];
        h->cmd = *c;
        h->stored_at = M.now;
        /* Reserve, settle and void answers live in the reservation record (if any). */
        bool in_record = c->type == LEDGER_CMD_RESERVE || c->type == LEDGER_CMD_SETTLE ||
                         c->type == LEDGER_CMD_VOID;
        h->resv = in_record ? M_last.resv : -1;
    }
    if (M_last.stored && c->type == LEDGER_CMD_RESERVE) {
        if (M_last.resv >= 0) {
            D.recent[D.n_recent++ % RECENT_MAX] = M_last.resv;
        } else {
            memcpy(D.dead[D.n_dead++ % DEAD_MAX], c->request_id, LEDGER_REQUEST_ID_SIZE);
        }
    }
}

/* ---- Comparing the ledger with the model. ---- */

static bool is_key_reason(int reason)
{
    return reason == LEDGER_DENY_UNKNOWN_KEY || reason == LEDGER_DENY_KEY_REVOKED;
}

static bool reason_has_remaining(int reason)
{
    return reason >= LEDGER_DENY_PARALLEL && reason < LEDGER_DENY_MAX;
}

/* The name of the first field where `g` differs from `e` in what the contract defines. */
static const char *result_diff(const struct ledger_cmd *c, const struct ledger_result *e,
                               const struct ledger_result *g)
{
    if (g->status != e->status) {
        return "status";
    }
    if (g->cmd_type != c->type) {
        return "cmd_type";
    }
    if (memcmp(g->request_id, c->request_id, LEDGER_REQUEST_ID_SIZE) != 0) {
        return "request_id";
    }
    uint16_t mask = LEDGER_RESULT_REPLAYED;
    if (c->type == LEDGER_CMD_SETTLE || c->type == LEDGER_CMD_VOID) {
        mask |= LEDGER_RESULT_LATE;
    }
    if (c->type == LEDGER_CMD_RESERVE && e->status == LEDGER_OK) {
        mask |= LEDGER_RESULT_SOFT_BUDGET;
    }
    if ((g->flags & mask) != (e->flags & mask)) {
        return "flags";
    }
    if (e->status == -LEDGER_ECONFLICT) {
        return NULL;
    }
    bool ok = e->status == LEDGER_OK, late = (e->flags & LEDGER_RESULT_LATE) != 0;
    switch (c->type) {
    case LEDGER_CMD_RESERVE:
        if (g->deny_reason != e->deny_reason) {
            return "deny_reason";
        }
        if (ok && g->expires_at_ms != e->expires_at_ms) {
            return "expires_at_ms";
        }
        if (e->status == LEDGER_DENIED && !is_key_reason(e->deny_reason)) {
            if (strcmp(g->account, e->account) != 0) {
                return "account";
            }
            if (reason_has_remaining(e->deny_reason) && g->remaining != e->remaining) {
                return "remaining";
            }
            if (g->retry_after_ms != e->retry_after_ms) {
                return "retry_after_ms";
            }
        }
        return NULL;
    case LEDGER_CMD_SETTLE:
    case LEDGER_CMD_VOID:
        if (ok && g->charged_micros != e->charged_micros) {
            return "charged_micros";
        }
        if (ok && !late && c->type == LEDGER_CMD_SETTLE && g->overrun_micros != e->overrun_micros) {
            return "overrun_micros";
        }
        return NULL;
    case LEDGER_CMD_EXTEND:
        return ok && g->expires_at_ms != e->expires_at_ms ? "expires_at_ms" : NULL;
    default:
        return NULL;
    }
}

#define EXPECT_FIELD(field, expected, actual)                                                      \
    do {                                                                                           \
        long long e_ = (long long)(expected), a_ = (long long)(actual);                            \
        if (e_ != a_) {                                                                            \
            fail(D.n, "account %s: %s expected %lld, ledger %lld", a->name, field, e_, a_);        \
        }                                                                                          \
    } while (0)

#define EXPECT_U64(field, expected, actual)                                                        \
    do {                                                                                           \
        unsigned long long e_ = (expected), a_ = (actual);                                         \
        if (e_ != a_) {                                                                            \
            fail(D.n, "account %s: %s expected %llu, ledger %llu", a->name, field, e_, a_);        \
        }                                                                                          \
    } while (0)

static void check_limits(const struct m_account *a, const struct ledger_limits *g)
{
    const struct ledger_limits *e = &a->lim;
    EXPECT_FIELD("limits.set", e->set, g->set);
    if (e->set & LEDGER_LIM_BUDGET) {
        EXPECT_FIELD("limits.budget_micros", e->budget_micros, g->budget_micros);
    }
    if (e->set & LEDGER_LIM_SOFT_BUDGET) {
        EXPECT_FIELD("limits.soft_budget_micros", e->soft_budget_micros, g->soft_budget_micros);
    }
    if (e->set & LEDGER_LIM_PERIOD) {
        EXPECT_FIELD("limits.period_kind", e->period_kind, g->period_kind);
        if (e->period_kind == LEDGER_PERIOD_FIXED) {
            EXPECT_FIELD("limits.period_ms", e->period_ms, g->period_ms);
        }
    }
    if (e->set & LEDGER_LIM_RPM) {
        EXPECT_U64("limits.rpm", e->rpm, g->rpm);
    }
    if (e->set & LEDGER_LIM_TPM) {
        EXPECT_U64("limits.tpm", e->tpm, g->tpm);
    }
    if (e->set & LEDGER_LIM_PARALLEL) {
        EXPECT_U64("limits.max_parallel", e->max_parallel, g->max_parallel);
    }
    if (e->set & LEDGER_LIM_EXPIRES) {
        EXPECT_FIELD("limits.expires_at_ms", e->expires_at_ms, g->expires_at_ms);
    }
    if (e->set & LEDGER_LIM_BLOCKED) {
        EXPECT_FIELD("limits.blocked", e->blocked, g->blocked);
    }
    if (e->set & LEDGER_LIM_EXPIRY_POLICY) {
        EXPECT_FIELD("limits.expiry_policy", e->expiry_policy, g->expiry_policy);
    }
}

struct model_list_ctx {
    struct ledger_model_info info[8];
    int n;
};

static int collect_model(void *ctx, const struct ledger_model_info *info)
{
    struct model_list_ctx *m = ctx;
    if (m->n < 8) {
        m->info[m->n] = *info;
    }
    m->n++;
    return 0;
}

static void check_models(struct m_account *a)
{
    struct model_list_ctx got = {.n = 0};
    int rv = ledger_model_list(D.t.l, a->name, collect_model, &got);
    if (rv != 0) {
        fail(D.n, "ledger_model_list(%s) = %d", a->name, rv);
    }
    EXPECT_FIELD("model limits count", a->n_ml, got.n);
    for (int j = 0; j < a->n_ml; j++) {
        struct m_mlimit *ml = &a->ml[j];
        const struct ledger_model_info *g = NULL;
        for (int k = 0; k < got.n && k < 8; k++) {
            if (strcmp(got.info[k].model, ml->model) == 0) {
                g = &got.info[k];
            }
        }
        if (g == NULL) {
            fail(D.n, "account %s: model limit %s missing", a->name, ml->model);
            return;
        }
        /* Not rolled here: the ledger's stored value only rolls when a command touches it. */
        bool rolled = period_key(a, M.now) != ml->period_start;
        EXPECT_FIELD("model held_micros", ml->held, g->held_micros);
        EXPECT_FIELD("model inflight", ml->inflight, g->inflight);
        int64_t spent = rolled ? 0 : ml->spent;
        if (CHECK_MODEL_SPENT && !(MODEL_LIST_UNROLLED && rolled) && spent != g->spent_micros) {
            fail(D.n, "account %s model %s: spent_micros expected %" PRId64 ", ledger %" PRId64,
                 a->name, ml->model, spent, g->spent_micros);
        }
    }
}

static void check_account(struct m_account *a)
{
    struct ledger_account_info g;
    int rv = ledger_account_get(D.t.l, a->name, &g);
    if (rv != 0) {
        fail(D.n, "ledger_account_get(%s) = %d", a->name, rv);
    }
    acct_roll(a, M.now);
    EXPECT_FIELD("spent_micros", a->spent, g.spent_micros);
    EXPECT_FIELD("held_micros", a->held, g.held_micros);
    EXPECT_FIELD("inflight", a->inflight, g.inflight);
    EXPECT_FIELD("lifetime_spent_micros", a->lifetime, g.lifetime_spent_micros);
    EXPECT_FIELD("depth", m_depth((int)(a - M.acct)), g.depth);
    EXPECT_FIELD("n_keys", m_active_keys((int)(a - M.acct)), g.n_keys);
    const char *parent = a->parent >= 0 ? M.acct[a->parent].name : "";
    if (strcmp(parent, g.parent) != 0) {
        fail(D.n, "account %s: parent expected \"%s\", ledger \"%s\"", a->name, parent, g.parent);
    }
    if (CHECK_PERIOD_BOUNDS) {
        int64_t start, end;
        period_bounds(a, M.now, &start, &end);
        EXPECT_FIELD("period_start_ms", start, g.period_start_ms);
        EXPECT_FIELD("period_end_ms", end, g.period_end_ms);
    }
    if (CHECK_AVAILABLE) {
        const struct ledger_limits *l = &a->lim;
        uint64_t rpm = (l->set & LEDGER_LIM_RPM)
                           ? bucket_available(&a->rpm, l->rpm, l->rpm_burst, M.now)
                           : UINT64_MAX;
        uint64_t tpm = (l->set & LEDGER_LIM_TPM)
                           ? bucket_available(&a->tpm, l->tpm, l->tpm_burst, M.now)
                           : UINT64_MAX;
        EXPECT_U64("rpm_available", rpm, g.rpm_available);
        EXPECT_U64("tpm_available", tpm, g.tpm_available);
    }
    if (CHECK_LIMITS) {
        check_limits(a, &g.limits);
    }
    if (a->n_ml > 0) {
        check_models(a);
    }
}

struct resv_list_ctx {
    struct ledger_reservation_info *v;
    size_t n, cap;
};

static int collect_resv(void *ctx, const struct ledger_reservation_info *info)
{
    struct resv_list_ctx *r = ctx;
    if (r->n == r->cap) {
        r->cap = r->cap ? r->cap * 2 : 256;
        r->v = xrealloc(r->v, r->cap * sizeof(*r->v));
    }
    r->v[r->n++] = *info;
    return 0;
}

/* Every open reservation, in (expires_at, request_id) order, as the model holds them. */
static void check_open_list(void)
{
    struct resv_list_ctx got = {NULL, 0, 0};
    int rv = ledger_reservation_list(D.t.l, NULL, collect_resv, &got);
    size_t n, i;
    int32_t *e = m_open_sorted(&n);
    const char *bad = rv != 0 ? "return value" : NULL;
    for (i = 0; bad == NULL && i < n && i < got.n; i++) {
        const struct m_resv *v = &M.resv[e[i]];
        const struct ledger_reservation_info *g = &got.v[i];
        if (memcmp(g->request_id, v->id, LEDGER_REQUEST_ID_SIZE) != 0) {
            bad = "request_id (order)";
        } else if (g->expires_at_ms != v->expires_at || g->state != LEDGER_RESV_OPEN ||
                   g->estimate_micros != v->est || g->estimate_tokens != v->tokens ||
                   strcmp(g->account, M.acct[v->chain[0]].name) != 0) {
            bad = "fields";
        }
    }
    if (bad == NULL && got.n != n) {
        bad = "count";
    }
    if (bad != NULL) {
        char want[2 * LEDGER_REQUEST_ID_SIZE + 1] = "-", have[2 * LEDGER_REQUEST_ID_SIZE + 1] = "-";
        i = i > 0 && strcmp(bad, "count") != 0 ? i - 1 : i;
        if (i < n) {
            hex_id(want, M.resv[e[i]].id);
        }
        if (i < got.n) {
            hex_id(have, got.v[i].request_id);
        }
        fail(D.n,
             "open reservation list: %s differs at %zu (rv=%d, %zu listed, %zu open): "
             "expected %s, ledger %s",
             bad, i, rv, got.n, n, want, have);
    }
    free(e);
    free(got.v);
}

/* The record of the reservation command `c` names, as ledger_reservation_get shows it. */
static void check_resv_record(size_t at, const struct ledger_cmd *c)
{
    struct ledger_reservation_info g;
    int rv = ledger_reservation_get(D.t.l, c->request_id, &g);
    int32_t idx = htab_get(&M.resv_idx, c->request_id, 0);
    if (idx < 0) {
        if (rv != -LEDGER_ENOTFOUND) {
            fail(at, "ledger_reservation_get: expected ENOTFOUND, got %d", rv);
        }
        return;
    }
    const struct m_resv *v = &M.resv[idx];
    if (!resv_retained(v)) {
        return; /* an old answer replayed: the record may be gone already */
    }
    if (rv != 0) {
        fail(at, "ledger_reservation_get: expected the record, got %d", rv);
    }
    if (g.state != v->state) {
        fail(at, "reservation state expected %u, ledger %u", v->state, g.state);
    }
    if (g.expires_at_ms != v->expires_at) {
        fail(at, "reservation expires_at expected %" PRId64 ", ledger %" PRId64, v->expires_at,
             g.expires_at_ms);
    }
    if (CHECK_RESV_CHARGED && !v->charged_unsure && g.charged_micros != v->charged) {
        fail(at, "reservation charged_micros expected %" PRId64 ", ledger %" PRId64, v->charged,
             g.charged_micros);
    }
}

void check_batch_results(void)
{
    for (size_t i = 0; i < D.n; i++) {
        const char *what = result_diff(&D.cmds[i], &D.exp[i], &D.got[i]);
        if (what != NULL) {
            fail(i, "result field %s differs", what);
        }
    }
    for (size_t i = 0; i < D.n; i++) {
        uint8_t type = D.cmds[i].type;
        if (type >= LEDGER_CMD_RESERVE && type <= LEDGER_CMD_EXTEND) {
            check_resv_record(i, &D.cmds[i]);
        }
    }
}

void check_state(void)
{
    if (ledger_applied_index(D.t.l) != D.t.index) {
        fail(D.n, "applied index %" PRIu64 ", expected %" PRIu64, ledger_applied_index(D.t.l),
             D.t.index);
    }
    if (ledger_now_ms(D.t.l) != M.now) {
        fail(D.n, "ledger clock %" PRId64 ", expected %" PRId64, ledger_now_ms(D.t.l), M.now);
    }
    for (int i = 0; i < M.n_acct; i++) {
        check_account(&M.acct[i]);
    }
    if (CHECK_RESV_LIST && D.batch % 8 == 0) {
        check_open_list();
    }
    if (D.batch % D.check_every == 0) {
        S.invariant_checks++;
        if (ledger_check_invariants(D.t.l) != 0) {
            fail(D.n, "ledger_check_invariants: %s", ledger_errmsg(D.t.l));
        }
    }
}

/* ---- Applying batches. ---- */

/* TALLY_MODEL_TRACE=1: every command with the model's answer, before the ledger runs it (so
 * a crash in the ledger still shows its batch), then the ledger's answers. */
void print_batch(bool applied)
{
    printf("batch %" PRIu64 " now %" PRId64 " %s\n", D.batch + !applied, M.now,
           applied ? "ledger answers:" : "commands and expected answers:");
    for (size_t i = 0; i < D.n; i++) {
        printf("  [%" PRIu64 "] ", D.step - D.n + i);
        print_cmd(&D.cmds[i]);
        print_result(applied ? "got" : "expected", applied ? &D.got[i] : &D.exp[i]);
    }
}

int64_t next_stamp(void)
{
    uint64_t p = rng_below(1000);
    int64_t now = M.now;
    if (p < 20) {
        return now - rng_range(1, 10000); /* a leader whose clock is behind: clamped */
    }
    if (p < 470) {
        return now;
    }
    if (p < 720) {
        return now + rng_range(1, 1000);
    }
    if (p < 900) {
        return now + rng_range(1000, 60000);
    }
    if (p < 960) {
        return now + rng_range(60000, 3600000);
    }
    if (p < 990) {
        return now + rng_range(3600000, 12 * 3600000LL);
    }
    return now + rng_range(DAY_MS, 3 * DAY_MS);
}

/* Encode and apply D.cmds[0..n) at the next index, with the occasional stale re-apply and
 * undecodable batch around it. */
void apply_batch(int64_t stamp)
{
    void *buf = NULL;
    size_t len = 0, n_got = 0;
    int rv = ledger_batch_encode(stamp, D.cmds, D.n, &buf, &len);
    if (rv != 0 || len % 8 != 0) {
        fail(D.n, "ledger_batch_encode = %d, len %zu", rv, len);
    }
    D.t.index = M.index; /* pick_index() */
    D.t.now_ms = stamp;
    rv = ledger_apply_batch(D.t.l, D.t.index, buf, len, D.got, &n_got);
    if (rv != 0 || n_got != D.n) {
        free(buf);
        fail(D.n, "ledger_apply_batch = %d (%s), %zu results for %zu commands", rv,
             ledger_errmsg(D.t.l), n_got, D.n);
    }
    if (rng_chance(10)) {
        struct ledger_result scratch[BATCH_MAX];
        rv = ledger_apply_batch(D.t.l, D.t.index - rng_below(2), buf, len, scratch, &n_got);
        S.stale++;
        if (rv != -LEDGER_ESTALE) {
            free(buf);
            fail(D.n, "re-applying an applied index returned %d, expected ESTALE", rv);
        }
    }
    free(buf);
}

/* An undecodable batch: recorded as applied, no results, nothing else changes. */
void apply_garbage(void)
{
    uint8_t junk[16];
    memset(junk, 0xc1, sizeof(junk)); /* 0xc1 is never used in msgpack */
    size_t n_got = 99;
    D.t.index++;
    int rv = ledger_apply_batch(D.t.l, D.t.index, junk, sizeof(junk), D.got, &n_got);
    S.garbage++;
    if (rv != -LEDGER_EDECODE || n_got != 0 || ledger_applied_index(D.t.l) != D.t.index) {
        fail(D.n, "garbage batch: rv %d, %zu results, applied index %" PRIu64, rv, n_got,
             ledger_applied_index(D.t.l));
    }
}

/* ---- Setup: a small forest with every kind of limit. ---- */

static struct ledger_limits lim_budget(int64_t budget, int64_t soft, uint8_t kind, int64_t len)
{
    struct ledger_limits l;
    memset(&l, 0, sizeof(l));
    l.set = LEDGER_LIM_BUDGET | LEDGER_LIM_PERIOD;
    l.budget_micros = budget;
    l.period_kind = kind;
    l.period_ms = len;
    if (soft > 0) {
        l.set |= LEDGER_LIM_SOFT_BUDGET;
        l.soft_budget_micros = soft;
    }
    return l;
}

static void add_setup(struct ledger_cmd c)
{
    REQUIRE(D.n < BATCH_MAX);
    fresh_id(c.request_id);
    D.cmds[D.n++] = c;
}

void setup_forest(void)
{
    struct tl *t = &D.t;
    struct ledger_limits l = lim_budget(20000000, 15000000, LEDGER_PERIOD_DAY, 0);
    l.set |= LEDGER_LIM_RPM;
    l.rpm = 600;
    l.rpm_burst = 100;
    add_setup(tl_create(t, "org", "", &l));
    l = lim_budget(5000000, 3000000, LEDGER_PERIOD_FIXED, 3600000);
    l.set |= LEDGER_LIM_TPM | LEDGER_LIM_PARALLEL;
    l.tpm = 100000;
    l.tpm_burst = 20000;
    l.max_parallel = 20;
    add_setup(tl_create(t, "org/t1", "org", &l));
    l = lim_budget(10000000, 0, LEDGER_PERIOD_WEEK, 0);
    add_setup(tl_create(t, "org/t2", "org", &l));
    l = lim_budget(500000, 0, LEDGER_PERIOD_NONE, 0);
    l.set |= LEDGER_LIM_RPM | LEDGER_LIM_EXPIRY_POLICY;
    l.rpm = 30;
    l.rpm_burst = 5;
    l.expiry_policy = LEDGER_EXPIRY_RELEASE;
    add_setup(tl_create(t, "org/t1/k1", "org/t1", &l));
    l = lim_budget(300000, 200000, LEDGER_PERIOD_DAY, 0);
    l.set |= LEDGER_LIM_PARALLEL;
    l.max_parallel = 3;
    add_setup(tl_create(t, "org/t1/k2", "org/t1", &l));
    l = lim_budget(1500000, 0, LEDGER_PERIOD_MONTH, 0);
    l.set |= LEDGER_LIM_TPM | LEDGER_LIM_EXPIRY_POLICY;
    l.tpm = 3000;
    l.tpm_burst = 1000;
    l.expiry_policy = LEDGER_EXPIRY_RELEASE;
    add_setup(tl_create(t, "org/t2/k3", "org/t2", &l));
    memset(&l, 0, sizeof(l));
    l.set = LEDGER_LIM_EXPIRES;
    l.expires_at_ms = M.now + 2 * DAY_MS;
    add_setup(tl_create(t, "org/t2/k4", "org/t2", &l));
    l = lim_budget(2000000, 1000000, LEDGER_PERIOD_FIXED, 600000);
    add_setup(tl_create(t, "solo", "", &l));
    memset(&l, 0, sizeof(l));
    l.set = LEDGER_LIM_RPM;
    l.rpm = 100;
    add_setup(tl_create(t, "solo/a", "solo", &l));
    memset(&l, 0, sizeof(l));
    l.set = LEDGER_LIM_PARALLEL | LEDGER_LIM_TPM;
    l.max_parallel = 5;
    l.tpm = 20000;
    l.tpm_burst = 5000;
    add_setup(tl_create(t, "solo/a/b", "solo/a", &l));
    memset(&l, 0, sizeof(l));
    l.set = LEDGER_LIM_BUDGET | LEDGER_LIM_EXPIRY_POLICY;
    l.budget_micros = 100000;
    l.expiry_policy = LEDGER_EXPIRY_RELEASE;
    add_setup(tl_create(t, "solo/a/b/c", "solo/a/b", &l));

    struct ledger_model_limits ml = {
        .set = LEDGER_LIM_RPM | LEDGER_LIM_TPM, .rpm = 20, .rpm_burst = 3, .tpm = 5000};
    add_setup(tl_model_limit(t, "org/t2", "m1", &ml));
    ml = (struct ledger_model_limits){.set = LEDGER_LIM_BUDGET, .budget_micros = 1000000};
    add_setup(tl_model_limit(t, "org/t2", "m2", &ml));
    ml = (struct ledger_model_limits){
        .set = LEDGER_LIM_BUDGET | LEDGER_LIM_RPM, .budget_micros = 200000, .rpm = 10};
    add_setup(tl_model_limit(t, "org/t2/k3", "m2", &ml));

    static const char *const owners[] = {"org/t1/k1", "org/t1/k1", "org/t1/k2",  "org/t2/k3",
                                         "org/t2/k4", "org/t1",    "solo/a/b/c", "solo/a/b"};
    for (size_t i = 0; i < sizeof(owners) / sizeof(owners[0]); i++) {
        char secret[32];
        snprintf(secret, sizeof(secret), "sk-%" PRIu64, D.next_secret++);
        add_setup(tl_key_add(t, owners[i], secret));
    }
}
