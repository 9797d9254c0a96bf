/*
 * model.c: the reference model of ledger_model_test.
 *
 * The model is a second, deliberately naive implementation of docs/ledger.md: plain
 * arrays and linear scans, written from the contract and not from the ledger's sources. Period
 * rollover and bucket drains are evaluated lazily, which is exact: an account's observable
 * spent depends only on whether `now` is still in the stored period, and draining a GCRA
 * bucket over [a, b] then [b, c] equals draining it over [a, c] (the clamp at 0 composes).
 *
 * Left out on purpose, because the contract does not pin them down: changing rpm/tpm
 * limits after creation (is the bucket kept?), model_limit_set after setup and period
 * changes on accounts with model limits (when does a model's spent restart?), retention
 * changes, and replaying or settling ids past the retention they are certain to have
 * (the model does not replicate the ledger's deletion timers). The journal is only
 * checked through ledger_check_invariants.
 */
#include "model.h"

void *xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n);
    if (q == NULL) {
        fprintf(stderr, "out of memory\n");
        abort();
    }
    return q;
}

/* ---- An open-addressing index from (request_id, command type) to an array slot. ---- */

static size_t htab_home(const struct htab *h, const uint8_t *id, uint8_t type)
{
    uint64_t a, b;
    memcpy(&a, id, 8);
    memcpy(&b, id + 8, 8);
    uint64_t x = a ^ (b * 0x9e3779b97f4a7c15ULL) ^ ((uint64_t)type << 56);
    x ^= x >> 31;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 29;
    return (size_t)(x & (h->cap - 1));
}

int32_t htab_get(const struct htab *h, const uint8_t *id, uint8_t type)
{
    for (size_t i = htab_home(h, id, type);; i = (i + 1) & (h->cap - 1)) {
        const struct hslot *s = &h->slot[i];
        if (!s->used) {
            return -1;
        }
        if (s->type == type && memcmp(s->id, id, LEDGER_REQUEST_ID_SIZE) == 0) {
            return s->val;
        }
    }
}

static void htab_insert(struct htab *h, const uint8_t *id, uint8_t type, int32_t val)
{
    size_t i = htab_home(h, id, type);
    while (h->slot[i].used) {
        i = (i + 1) & (h->cap - 1);
    }
    memcpy(h->slot[i].id, id, LEDGER_REQUEST_ID_SIZE);
    h->slot[i].type = type;
    h->slot[i].used = 1;
    h->slot[i].val = val;
    h->n++;
}

static void htab_init(struct htab *h, size_t cap)
{
    h->slot = calloc(cap, sizeof(*h->slot));
    if (h->slot == NULL) {
        abort();
    }
    h->cap = cap;
    h->n = 0;
}

/* Insert a key that is not in the table yet. */
static void htab_put(struct htab *h, const uint8_t *id, uint8_t type, int32_t val)
{
    if ((h->n + 1) * 2 > h->cap) {
        struct htab g;
        htab_init(&g, h->cap * 2);
        for (size_t i = 0; i < h->cap; i++) {
            if (h->slot[i].used) {
                htab_insert(&g, h->slot[i].id, h->slot[i].type, h->slot[i].val);
            }
        }
        free(h->slot);
        *h = g;
    }
    htab_insert(h, id, type, val);
}

/* ---- The reference model. ---- */

struct m_periods past_periods[M_ACCOUNTS_MAX];
struct m_state M;
struct m_outcome M_last;

void m_init(int64_t now)
{
    memset(&M, 0, sizeof(M));
    M.now = now;
    M.retention_ms = LEDGER_RETENTION_DEFAULT_MS;
    htab_init(&M.resv_idx, 1024);
    htab_init(&M.ans_idx, 1024);
}

void m_free(void)
{
    free(M.resv);
    free(M.open);
    free(M.ans);
    free(M.resv_idx.slot);
    free(M.ans_idx.slot);
    memset(&M, 0, sizeof(M));
    for (int i = 0; i < M_ACCOUNTS_MAX; i++) {
        free(past_periods[i].key);
    }
    memset(past_periods, 0, sizeof(past_periods));
}

static int m_find_account(const char *name)
{
    for (int i = 0; i < M.n_acct; i++) {
        if (strcmp(M.acct[i].name, name) == 0) {
            return i;
        }
    }
    return -1;
}

static int m_find_key(const uint8_t *hash)
{
    for (int i = 0; i < M.n_keys; i++) {
        if (memcmp(M.keys[i].hash, hash, LEDGER_KEY_HASH_SIZE) == 0) {
            return i;
        }
    }
    return -1;
}

int m_depth(int a)
{
    int d = 0;
    for (; a >= 0; a = M.acct[a].parent) {
        d++;
    }
    return d;
}

/* Height of the subtree under `a` (1 for an account without children). */
static int m_height(int a)
{
    int h = 0;
    for (int i = 0; i < M.n_acct; i++) {
        if (M.acct[i].parent == a) {
            int hc = m_height(i);
            h = hc > h ? hc : h;
        }
    }
    return h + 1;
}

static bool m_is_under(int x, int ancestor)
{
    for (; x >= 0; x = M.acct[x].parent) {
        if (x == ancestor) {
            return true;
        }
    }
    return false;
}

int m_active_keys(int a)
{
    int n = 0;
    for (int i = 0; i < M.n_keys; i++) {
        n += M.keys[i].account == a && !M.keys[i].revoked;
    }
    return n;
}

/* ---- Periods (UTC calendar arithmetic after Howard Hinnant's civil algorithms). ---- */

static int64_t days_from_civil(int64_t y, int64_t m, int64_t d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

static void civil_from_days(int64_t z, int64_t *y, int64_t *m)
{
    z += 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    int64_t doe = z - era * 146097;
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    int64_t mp = (5 * doy + 2) / 153;
    *m = mp < 10 ? mp + 3 : mp - 9;
    *y = yoe + era * 400 + (*m <= 2);
}

/* The period of account `a` that contains `now`: [0, INT64_MAX) without a period. */
void period_bounds(const struct m_account *a, int64_t now, int64_t *start, int64_t *end)
{
    /* "Without a period it starts when the budget was created or its period last changed" */
    *start = a->anchor_ms;
    *end = INT64_MAX;
    if (!(a->lim.set & LEDGER_LIM_PERIOD)) {
        return;
    }
    int64_t day = now / DAY_MS, y, m;
    switch (a->lim.period_kind) {
    case LEDGER_PERIOD_FIXED:
        *start = a->anchor_ms + (now - a->anchor_ms) / a->lim.period_ms * a->lim.period_ms;
        *end = *start + a->lim.period_ms;
        break;
    case LEDGER_PERIOD_DAY:
        *start = day * DAY_MS;
        *end = *start + DAY_MS;
        break;
    case LEDGER_PERIOD_WEEK: /* 1970-01-01 was a Thursday: Monday-based weekday (d + 3) % 7 */
        *start = (day - (day + 3) % 7) * DAY_MS;
        *end = *start + 7 * DAY_MS;
        break;
    case LEDGER_PERIOD_MONTH:
        civil_from_days(day, &y, &m);
        *start = days_from_civil(y, m, 1) * DAY_MS;
        *end = (m == 12 ? days_from_civil(y + 1, 1, 1) : days_from_civil(y, m + 1, 1)) * DAY_MS;
        break;
    default:
        break;
    }
}

/* The start of the period containing now: what the stored spent is counted against. */
int64_t period_key(const struct m_account *a, int64_t now)
{
    int64_t start, end;
    period_bounds(a, now, &start, &end);
    return start;
}

static void past_period_add(ptrdiff_t i, int64_t key)
{
    if (past_periods[i].n == past_periods[i].cap) {
        past_periods[i].cap = past_periods[i].cap ? 2 * past_periods[i].cap : 16;
        past_periods[i].key =
            xrealloc(past_periods[i].key, past_periods[i].cap * sizeof(*past_periods[i].key));
    }
    past_periods[i].key[past_periods[i].n++] = key;
}

/* Touch: spent restarts at 0 when now is past the stored period (or the period changed). */
void acct_roll(struct m_account *a, int64_t now)
{
    int64_t key = period_key(a, now);
    if (key != a->period_start) {
        if (a >= M.acct && a < M.acct + M_ACCOUNTS_MAX) {
            past_period_add(a - M.acct, a->period_start);
        }
        a->spent = 0;
        a->period_start = key;
    }
}

static void ml_roll(const struct m_account *a, struct m_mlimit *ml, int64_t now)
{
    int64_t key = period_key(a, now);
    if (key != ml->period_start) {
        ml->spent = 0;
        ml->period_start = key;
    }
}

/* ---- GCRA buckets, exact integers as in docs/ledger.md "Rate limits". ---- */

static int64_t bucket_level(const struct m_bucket *b, uint64_t rate, int64_t now)
{
    __int128 drained = (__int128)(now - b->last_ms) * rate;
    return drained >= b->level ? 0 : b->level - (int64_t)drained;
}

static void bucket_touch(struct m_bucket *b, uint64_t rate, int64_t now)
{
    b->level = bucket_level(b, rate, now);
    b->last_ms = now;
}

/* Drain to now, then add `tokens` (negative: refund, floored at 0). */
static void bucket_add(struct m_bucket *b, uint64_t rate, int64_t now, int64_t tokens)
{
    bucket_touch(b, rate, now);
    __int128 v = (__int128)b->level + (__int128)tokens * UNITS_PER_TOKEN;
    b->level = v < 0 ? 0 : (int64_t)v;
}

static uint64_t burst_of(uint64_t rate, uint64_t burst)
{
    return burst ? burst : rate;
}

/* Whether `cost` fits now; if not, the deny's remaining and retry_after_ms go into *r. */
static bool bucket_fits(const struct m_bucket *b, uint64_t rate, uint64_t burst, uint64_t cost,
                        int64_t now, struct ledger_result *r)
{
    if (cost == 0) {
        return true;
    }
    uint64_t eff = burst_of(rate, burst);
    __int128 cap = (__int128)eff * UNITS_PER_TOKEN;
    __int128 level = bucket_level(b, rate, now);
    __int128 need = level + (__int128)cost * UNITS_PER_TOKEN;
    if (need <= cap) {
        return true;
    }
    r->remaining = level >= cap ? 0 : (int64_t)((cap - level) / UNITS_PER_TOKEN);
    r->retry_after_ms = cost > eff ? -1 : (int64_t)((need - cap + rate - 1) / rate);
    return false;
}

/* Tokens (or requests) admissible now, as ledger_account_get reports them. */
uint64_t bucket_available(const struct m_bucket *b, uint64_t rate, uint64_t burst, int64_t now)
{
    __int128 cap = (__int128)burst_of(rate, burst) * UNITS_PER_TOKEN;
    __int128 level = bucket_level(b, rate, now);
    return level >= cap ? 0 : (uint64_t)((cap - level) / UNITS_PER_TOKEN);
}

/* ---- Argument checks (docs/ledger.md "Bounds"). ---- */

static bool amount_ok(int64_t v)
{
    return v >= 0 && v <= LEDGER_AMOUNT_MAX;
}

static bool rate_ok(uint64_t rate, uint64_t burst)
{
    return rate >= 1 && rate <= LEDGER_RATE_MAX && burst <= LEDGER_RATE_MAX;
}

static bool name_ok(const char *s, size_t max)
{
    size_t n = strlen(s);
    if (n == 0 || n > max) {
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        bool alnum =
            (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9');
        if (!alnum && strchr("._:/@-", ch) == NULL) {
            return false;
        }
    }
    return true;
}

static bool limits_ok(const struct ledger_limits *l)
{
    uint32_t s = l->set;
    if (s & ~(uint32_t)LEDGER_LIM_ALL) {
        return false;
    }
    if ((s & LEDGER_LIM_BUDGET) && !amount_ok(l->budget_micros)) {
        return false;
    }
    if ((s & LEDGER_LIM_SOFT_BUDGET) && !amount_ok(l->soft_budget_micros)) {
        return false;
    }
    if (s & LEDGER_LIM_PERIOD) {
        if (l->period_kind >= LEDGER_PERIOD_MAX) {
            return false;
        }
        if (l->period_kind == LEDGER_PERIOD_FIXED &&
            (l->period_ms < LEDGER_PERIOD_MIN_MS || l->period_ms > LEDGER_PERIOD_MAX_MS)) {
            return false;
        }
    }
    if ((s & LEDGER_LIM_RPM) && !rate_ok(l->rpm, l->rpm_burst)) {
        return false;
    }
    if ((s & LEDGER_LIM_TPM) && !rate_ok(l->tpm, l->tpm_burst)) {
        return false;
    }
    if ((s & LEDGER_LIM_PARALLEL) && l->max_parallel > LEDGER_PARALLEL_MAX) {
        return false;
    }
    if ((s & LEDGER_LIM_EXPIRES) &&
        (l->expires_at_ms < 0 || l->expires_at_ms > LEDGER_TIME_MAX_MS)) {
        return false;
    }
    if ((s & LEDGER_LIM_BLOCKED) && l->blocked > 1) {
        return false;
    }
    if ((s & LEDGER_LIM_EXPIRY_POLICY) && l->expiry_policy > LEDGER_EXPIRY_RELEASE) {
        return false;
    }
    return true;
}

static bool model_limits_ok(const struct ledger_model_limits *l)
{
    uint32_t s = l->set;
    if (s & ~(uint32_t)(LEDGER_LIM_BUDGET | LEDGER_LIM_RPM | LEDGER_LIM_TPM)) {
        return false;
    }
    if ((s & LEDGER_LIM_BUDGET) && !amount_ok(l->budget_micros)) {
        return false;
    }
    if ((s & LEDGER_LIM_RPM) && !rate_ok(l->rpm, l->rpm_burst)) {
        return false;
    }
    return !(s & LEDGER_LIM_TPM) || rate_ok(l->tpm, l->tpm_burst);
}

/* Copy the fields of src->set into *dst after removing `clear`. */
static void limits_merge(struct ledger_limits *dst, const struct ledger_limits *src, uint32_t clear)
{
    uint32_t s = src->set;
    dst->set &= ~clear;
    if (s & LEDGER_LIM_BUDGET) {
        dst->budget_micros = src->budget_micros;
    }
    if (s & LEDGER_LIM_SOFT_BUDGET) {
        dst->soft_budget_micros = src->soft_budget_micros;
    }
    if (s & LEDGER_LIM_PERIOD) {
        dst->period_kind = src->period_kind;
        dst->period_ms = src->period_ms;
    }
    if (s & LEDGER_LIM_RPM) {
        dst->rpm = src->rpm;
        dst->rpm_burst = src->rpm_burst;
    }
    if (s & LEDGER_LIM_TPM) {
        dst->tpm = src->tpm;
        dst->tpm_burst = src->tpm_burst;
    }
    if (s & LEDGER_LIM_PARALLEL) {
        dst->max_parallel = src->max_parallel;
    }
    if (s & LEDGER_LIM_EXPIRES) {
        dst->expires_at_ms = src->expires_at_ms;
    }
    if (s & LEDGER_LIM_BLOCKED) {
        dst->blocked = src->blocked;
    }
    if (s & LEDGER_LIM_EXPIRY_POLICY) {
        dst->expiry_policy = src->expiry_policy;
    }
    dst->set |= s;
}

/* ---- Idempotency: our own fingerprint over exactly the arguments (actor excluded). ---- */

static uint64_t fp_bytes(uint64_t h, const void *p, size_t n)
{
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++) {
        h = (h ^ b[i]) * 0x100000001b3ULL;
    }
    return h;
}

static uint64_t fp_i64(uint64_t h, int64_t v)
{
    return fp_bytes(h, &v, sizeof(v));
}

static uint64_t fp_str(uint64_t h, const char *s)
{
    return fp_bytes(h, s, strlen(s) + 1);
}

static uint64_t fp_limits(uint64_t h, const struct ledger_limits *l)
{
    h = fp_i64(h, l->set);
    h = fp_i64(h, l->period_kind);
    h = fp_i64(h, l->blocked);
    h = fp_i64(h, l->expiry_policy);
    h = fp_i64(h, l->budget_micros);
    h = fp_i64(h, l->soft_budget_micros);
    h = fp_i64(h, l->period_ms);
    h = fp_i64(h, (int64_t)l->rpm);
    h = fp_i64(h, (int64_t)l->rpm_burst);
    h = fp_i64(h, (int64_t)l->tpm);
    h = fp_i64(h, (int64_t)l->tpm_burst);
    h = fp_i64(h, (int64_t)l->max_parallel);
    return fp_i64(h, l->expires_at_ms);
}

static uint64_t cmd_fingerprint(const struct ledger_cmd *c)
{
    uint64_t h = fp_i64(0xcbf29ce484222325ULL, c->type);
    switch (c->type) {
    case LEDGER_CMD_ACCOUNT_CREATE:
        h = fp_str(fp_str(h, c->u.create.name), c->u.create.parent);
        return fp_limits(h, &c->u.create.limits);
    case LEDGER_CMD_ACCOUNT_UPDATE:
        h = fp_limits(fp_str(h, c->u.update.name), &c->u.update.limits);
        h = fp_i64(fp_i64(h, c->u.update.clear), c->u.update.set_parent);
        return fp_str(h, c->u.update.parent);
    case LEDGER_CMD_KEY_ADD:
    case LEDGER_CMD_KEY_REVOKE:
        h = fp_str(h, c->u.key.account);
        return fp_bytes(h, c->u.key.key_hash, LEDGER_KEY_HASH_SIZE);
    case LEDGER_CMD_MODEL_LIMIT_SET:
        h = fp_str(fp_str(h, c->u.model_limit.account), c->u.model_limit.model);
        h = fp_i64(fp_i64(h, c->u.model_limit.limits.set), c->u.model_limit.limits.budget_micros);
        h = fp_i64(fp_i64(h, (int64_t)c->u.model_limit.limits.rpm),
                   (int64_t)c->u.model_limit.limits.rpm_burst);
        return fp_i64(fp_i64(h, (int64_t)c->u.model_limit.limits.tpm),
                      (int64_t)c->u.model_limit.limits.tpm_burst);
    case LEDGER_CMD_RESERVE:
        h = fp_i64(h, c->u.reserve.by_account);
        h = fp_bytes(h, c->u.reserve.key_hash, LEDGER_KEY_HASH_SIZE);
        h = fp_str(h, c->u.reserve.account);
        h = fp_i64(fp_i64(h, c->u.reserve.estimate_micros), (int64_t)c->u.reserve.estimate_tokens);
        h = fp_i64(fp_str(h, c->u.reserve.model), c->u.reserve.ttl_ms);
        h = fp_i64(h, c->u.reserve.metadata_len);
        return fp_bytes(h, c->u.reserve.metadata, c->u.reserve.metadata_len);
    case LEDGER_CMD_SETTLE:
        h = fp_i64(h, c->u.settle.actual_micros);
        return fp_i64(h, (int64_t)c->u.settle.actual_tokens);
    case LEDGER_CMD_CONFIG_SET:
        return fp_i64(h, c->u.config.retention_ms);
    default:
        return h;
    }
}

/* ---- Commands of the model. Each returns the answer the contract prescribes. ---- */

static struct ledger_result m_result(const struct ledger_cmd *c, int32_t status)
{
    struct ledger_result r;
    memset(&r, 0, sizeof(r));
    r.status = status;
    r.cmd_type = c->type;
    memcpy(r.request_id, c->request_id, LEDGER_REQUEST_ID_SIZE);
    return r;
}

static struct ledger_result m_deny(struct ledger_result r, int reason, const char *account)
{
    r.status = LEDGER_DENIED;
    r.deny_reason = (uint8_t)reason;
    snprintf(r.account, sizeof(r.account), "%s", account);
    return r;
}

static void m_new_account_state(struct m_account *a, int64_t now)
{
    a->anchor_ms = now;
    a->period_start = period_key(a, now);
    a->rpm.last_ms = now;
    a->tpm.last_ms = now;
}

static struct ledger_result m_create(const struct ledger_cmd *c)
{
    const char *name = c->u.create.name, *parent = c->u.create.parent;
    if (!name_ok(name, LEDGER_NAME_MAX)) {
        return m_result(c, -LEDGER_ENAME);
    }
    if (!limits_ok(&c->u.create.limits)) {
        return m_result(c, -LEDGER_EINVAL);
    }
    if (m_find_account(name) >= 0) {
        return m_result(c, -LEDGER_EEXIST);
    }
    int p = -1;
    if (parent[0] != '\0') {
        p = m_find_account(parent);
        if (p < 0) {
            return m_result(c, -LEDGER_ENOTFOUND);
        }
        if (m_depth(p) + 1 > LEDGER_DEPTH_MAX) {
            return m_result(c, -LEDGER_EDEPTH);
        }
    }
    REQUIRE(M.n_acct < M_ACCOUNTS_MAX);
    struct m_account *a = &M.acct[M.n_acct++];
    memset(a, 0, sizeof(*a));
    snprintf(a->name, sizeof(a->name), "%s", name);
    a->parent = p;
    limits_merge(&a->lim, &c->u.create.limits, 0);
    m_new_account_state(a, M.now);
    return m_result(c, LEDGER_OK);
}

static struct ledger_result m_move(const struct ledger_cmd *c, int a)
{
    int p = -1;
    if (c->u.update.parent[0] != '\0') {
        p = m_find_account(c->u.update.parent);
        if (p < 0) {
            return m_result(c, -LEDGER_ENOTFOUND);
        }
        if (m_is_under(p, a)) {
            return m_result(c, -LEDGER_ECYCLE);
        }
        if (m_depth(p) + m_height(a) > LEDGER_DEPTH_MAX) {
            return m_result(c, -LEDGER_EDEPTH);
        }
    }
    M.acct[a].parent = p;
    return m_result(c, LEDGER_OK);
}

/* The limit part of an update: touched under the old period first, then the new period's
 * start is compared. */
void m_update_limits(struct m_account *a, const struct ledger_limits *nl, uint32_t clear)
{
    acct_roll(a, M.now);
    limits_merge(&a->lim, nl, clear);
    if ((nl->set | clear) & LEDGER_LIM_PERIOD) {
        a->anchor_ms = M.now; /* fixed and lifetime periods start where they were set */
        acct_roll(a, M.now);
    }
}

static struct ledger_result m_update(const struct ledger_cmd *c)
{
    int i = m_find_account(c->u.update.name);
    if (i < 0) {
        return m_result(c, -LEDGER_ENOTFOUND);
    }
    const struct ledger_limits *nl = &c->u.update.limits;
    if (!limits_ok(nl) || (c->u.update.clear & ~(uint32_t)LEDGER_LIM_ALL)) {
        return m_result(c, -LEDGER_EINVAL);
    }
    struct m_account *a = &M.acct[i];
    struct ledger_limits before = a->lim;
    if (c->u.update.set_parent) {
        struct ledger_result r = m_move(c, i);
        if (r.status != LEDGER_OK) {
            return r;
        }
    }
    m_update_limits(a, nl, c->u.update.clear);
    /* A rate limit that appears now starts with an empty bucket; the driver never changes
     * an existing one (the contract does not say what happens to its level). */
    if ((nl->set & LEDGER_LIM_RPM) && !(before.set & LEDGER_LIM_RPM)) {
        a->rpm = (struct m_bucket){0, M.now};
    }
    if ((nl->set & LEDGER_LIM_TPM) && !(before.set & LEDGER_LIM_TPM)) {
        a->tpm = (struct m_bucket){0, M.now};
    }
    return m_result(c, LEDGER_OK);
}

static struct ledger_result m_key_add(const struct ledger_cmd *c)
{
    if (m_find_key(c->u.key.key_hash) >= 0) {
        return m_result(c, -LEDGER_EEXIST);
    }
    int a = m_find_account(c->u.key.account);
    if (a < 0) {
        return m_result(c, -LEDGER_ENOTFOUND);
    }
    REQUIRE(M.n_keys < M_KEYS_MAX);
    struct m_key *k = &M.keys[M.n_keys++];
    memcpy(k->hash, c->u.key.key_hash, LEDGER_KEY_HASH_SIZE);
    k->account = a;
    k->revoked = false;
    return m_result(c, LEDGER_OK);
}

static struct ledger_result m_key_revoke(const struct ledger_cmd *c)
{
    int k = m_find_key(c->u.key.key_hash);
    if (k < 0) {
        return m_result(c, -LEDGER_ENOTFOUND);
    }
    M.keys[k].revoked = true;
    return m_result(c, LEDGER_OK);
}

/* Only used at setup: the driver never changes model limits afterwards. */
static struct ledger_result m_model_limit(const struct ledger_cmd *c)
{
    int i = m_find_account(c->u.model_limit.account);
    if (i < 0) {
        return m_result(c, -LEDGER_ENOTFOUND);
    }
    if (!name_ok(c->u.model_limit.model, LEDGER_MODEL_MAX)) {
        return m_result(c, -LEDGER_ENAME);
    }
    if (!model_limits_ok(&c->u.model_limit.limits)) {
        return m_result(c, -LEDGER_EINVAL);
    }
    struct m_account *a = &M.acct[i];
    REQUIRE(a->n_ml < M_ML_MAX);
    struct m_mlimit *ml = &a->ml[a->n_ml++];
    memset(ml, 0, sizeof(*ml));
    snprintf(ml->model, sizeof(ml->model), "%s", c->u.model_limit.model);
    ml->lim = c->u.model_limit.limits;
    ml->period_start = period_key(a, M.now);
    ml->rpm.last_ms = M.now;
    ml->tpm.last_ms = M.now;
    a->period_locked = true;
    return m_result(c, LEDGER_OK);
}

static struct ledger_result m_config(const struct ledger_cmd *c)
{
    int64_t v = c->u.config.retention_ms;
    if (v < 1 || v > LEDGER_RETENTION_MAX_MS) {
        return m_result(c, -LEDGER_EINVAL);
    }
    if (v < LEDGER_RETENTION_MIN_MS) {
        return m_result(c, -LEDGER_EINVAL); /* the ledger's minimum, after the shape check */
    }
    M.retention_ms = v;
    return m_result(c, LEDGER_OK);
}

static int m_match_model(const struct m_account *a, const char *model)
{
    if (model[0] == '\0') {
        return -1;
    }
    for (int j = 0; j < a->n_ml; j++) {
        if (strcmp(a->ml[j].model, model) == 0) {
            return j;
        }
    }
    return -1;
}

/* The checks of one model limit; false with the deny in *r. */
static bool m_check_model(const struct m_account *a, const struct m_mlimit *ml,
                          const struct ledger_cmd *c, struct ledger_result *r)
{
    int64_t est = c->u.reserve.estimate_micros, now = M.now;
    /* A denial writes nothing, so the stored value is not rolled here (see
     * MODEL_LIST_UNROLLED); the rolled value is what counts. */
    int64_t spent = period_key(a, now) == ml->period_start ? ml->spent : 0;
    if ((ml->lim.set & LEDGER_LIM_BUDGET) && spent + ml->held + est > ml->lim.budget_micros) {
        int64_t left = ml->lim.budget_micros - spent - ml->held;
        *r = m_deny(*r, LEDGER_DENY_MODEL_BUDGET, a->name);
        r->remaining = left > 0 ? left : 0;
        return false;
    }
    if ((ml->lim.set & LEDGER_LIM_RPM) &&
        !bucket_fits(&ml->rpm, ml->lim.rpm, ml->lim.rpm_burst, 1, now, r)) {
        *r = m_deny(*r, LEDGER_DENY_MODEL_RPM, a->name);
        return false;
    }
    if ((ml->lim.set & LEDGER_LIM_TPM) && !bucket_fits(&ml->tpm, ml->lim.tpm, ml->lim.tpm_burst,
                                                       c->u.reserve.estimate_tokens, now, r)) {
        *r = m_deny(*r, LEDGER_DENY_MODEL_TPM, a->name);
        return false;
    }
    return true;
}

/* The checks of one account of the chain, in the contract's order. */
static bool m_check_account(struct m_account *a, int ml, const struct ledger_cmd *c,
                            struct ledger_result *r)
{
    const struct ledger_limits *l = &a->lim;
    int64_t est = c->u.reserve.estimate_micros, now = M.now;
    acct_roll(a, now);
    if ((l->set & LEDGER_LIM_BLOCKED) && l->blocked) {
        *r = m_deny(*r, LEDGER_DENY_BLOCKED, a->name);
        return false;
    }
    if ((l->set & LEDGER_LIM_EXPIRES) && now >= l->expires_at_ms) {
        *r = m_deny(*r, LEDGER_DENY_EXPIRED, a->name);
        return false;
    }
    if ((l->set & LEDGER_LIM_PARALLEL) && (uint64_t)a->inflight >= l->max_parallel) {
        *r = m_deny(*r, LEDGER_DENY_PARALLEL, a->name);
        r->remaining = 0; /* inflight >= max_parallel: no free slot */
        return false;
    }
    if ((l->set & LEDGER_LIM_BUDGET) && a->spent + a->held + est > l->budget_micros) {
        int64_t left = l->budget_micros - a->spent - a->held;
        *r = m_deny(*r, LEDGER_DENY_BUDGET, a->name);
        r->remaining = left > 0 ? left : 0;
        return false;
    }
    if ((l->set & LEDGER_LIM_RPM) && !bucket_fits(&a->rpm, l->rpm, l->rpm_burst, 1, now, r)) {
        *r = m_deny(*r, LEDGER_DENY_RPM, a->name);
        return false;
    }
    if ((l->set & LEDGER_LIM_TPM) &&
        !bucket_fits(&a->tpm, l->tpm, l->tpm_burst, c->u.reserve.estimate_tokens, now, r)) {
        *r = m_deny(*r, LEDGER_DENY_TPM, a->name);
        return false;
    }
    return ml < 0 || m_check_model(a, &a->ml[ml], c, r);
}

static void m_open_add(int32_t idx)
{
    if (M.n_open == M.cap_open) {
        M.cap_open = M.cap_open ? M.cap_open * 2 : 256;
        M.open = xrealloc(M.open, M.cap_open * sizeof(*M.open));
    }
    M.resv[idx].open_pos = (int32_t)M.n_open;
    M.open[M.n_open++] = idx;
}

static void m_open_remove(int32_t idx)
{
    int32_t pos = M.resv[idx].open_pos;
    int32_t last = M.open[--M.n_open];
    M.open[pos] = last;
    M.resv[last].open_pos = pos;
    M.resv[idx].open_pos = -1;
}

static int32_t m_new_resv(const struct ledger_cmd *c)
{
    if (M.n_resv == M.cap_resv) {
        M.cap_resv = M.cap_resv ? M.cap_resv * 2 : 1024;
        M.resv = xrealloc(M.resv, M.cap_resv * sizeof(*M.resv));
    }
    int32_t idx = (int32_t)M.n_resv++;
    struct m_resv *v = &M.resv[idx];
    memset(v, 0, sizeof(*v));
    memcpy(v->id, c->request_id, LEDGER_REQUEST_ID_SIZE);
    v->state = LEDGER_RESV_OPEN;
    v->est = c->u.reserve.estimate_micros;
    v->tokens = c->u.reserve.estimate_tokens;
    v->expires_at = M.now + c->u.reserve.ttl_ms;
    v->created_index = M.index;
    htab_put(&M.resv_idx, v->id, 0, idx);
    m_open_add(idx);
    return idx;
}

static bool reserve_args_ok(const struct ledger_cmd *c)
{
    return amount_ok(c->u.reserve.estimate_micros) &&
           c->u.reserve.estimate_tokens <= LEDGER_TOKENS_MAX && c->u.reserve.ttl_ms >= 1 &&
           c->u.reserve.ttl_ms <= LEDGER_TTL_MAX_MS &&
           c->u.reserve.metadata_len <= LEDGER_METADATA_MAX &&
           (c->u.reserve.model[0] == '\0' || name_ok(c->u.reserve.model, LEDGER_MODEL_MAX));
}

/* All checks passed: hold on every account and matched model limit of the chain. */
static struct ledger_result m_grant(const struct ledger_cmd *c, const int *chain, const int *ml,
                                    int n)
{
    struct ledger_result r = m_result(c, LEDGER_OK);
    int32_t idx = m_new_resv(c);
    struct m_resv *v = &M.resv[idx];
    int64_t now = M.now, tokens = (int64_t)v->tokens;
    v->n_chain = n;
    for (int i = 0; i < n; i++) {
        struct m_account *a = &M.acct[chain[i]];
        v->chain[i] = chain[i];
        v->ml[i] = ml[i];
        a->held += v->est;
        a->inflight++;
        if (a->lim.set & LEDGER_LIM_RPM) {
            bucket_add(&a->rpm, a->lim.rpm, now, 1);
        }
        if (a->lim.set & LEDGER_LIM_TPM) {
            bucket_add(&a->tpm, a->lim.tpm, now, tokens);
        }
        if (ml[i] >= 0) {
            struct m_mlimit *m = &a->ml[ml[i]];
            m->held += v->est;
            m->inflight++;
            if (m->lim.set & LEDGER_LIM_RPM) {
                bucket_add(&m->rpm, m->lim.rpm, now, 1);
            }
            if (m->lim.set & LEDGER_LIM_TPM) {
                bucket_add(&m->tpm, m->lim.tpm, now, tokens);
            }
        }
    }
    for (int i = 0; i < n; i++) {
        const struct m_account *a = &M.acct[chain[i]];
        if ((a->lim.set & LEDGER_LIM_SOFT_BUDGET) &&
            a->spent + a->held > a->lim.soft_budget_micros) {
            r.flags |= LEDGER_RESULT_SOFT_BUDGET;
        }
    }
    r.expires_at_ms = v->expires_at;
    M_last.resv = idx;
    return r;
}

static struct ledger_result m_reserve(const struct ledger_cmd *c)
{
    struct ledger_result r = m_result(c, LEDGER_OK);
    if (htab_get(&M.resv_idx, c->request_id, 0) >= 0) {
        /* A record without a stored answer cannot happen inside the retention window the
         * driver stays in; reaching this means the model lost an answer. */
        fprintf(stderr, "model: reservation record without answer\n");
        abort();
    }
    if (!reserve_args_ok(c)) {
        return m_result(c, -LEDGER_EINVAL);
    }
    int leaf;
    if (c->u.reserve.by_account) {
        leaf = m_find_account(c->u.reserve.account);
        if (leaf < 0) {
            return m_result(c, -LEDGER_ENOTFOUND);
        }
    } else {
        int k = m_find_key(c->u.reserve.key_hash);
        if (k < 0) {
            return m_deny(r, LEDGER_DENY_UNKNOWN_KEY, "");
        }
        if (M.keys[k].revoked) {
            return m_deny(r, LEDGER_DENY_KEY_REVOKED, M.acct[M.keys[k].account].name);
        }
        leaf = M.keys[k].account;
    }
    int chain[LEDGER_DEPTH_MAX], ml[LEDGER_DEPTH_MAX], n = 0;
    for (int a = leaf; a >= 0; a = M.acct[a].parent) {
        REQUIRE(n < LEDGER_DEPTH_MAX);
        chain[n] = a;
        ml[n] = m_match_model(&M.acct[a], c->u.reserve.model);
        if (!m_check_account(&M.acct[a], ml[n], c, &r)) {
            return r;
        }
        n++;
    }
    return m_grant(c, chain, ml, n);
}

/* Release the holds of an open reservation; the caller charges or refunds. */
static void m_release_holds(struct m_resv *v)
{
    for (int i = 0; i < v->n_chain; i++) {
        struct m_account *a = &M.acct[v->chain[i]];
        a->held -= v->est;
        a->inflight--;
        if (v->ml[i] >= 0) {
            a->ml[v->ml[i]].held -= v->est;
            a->ml[v->ml[i]].inflight--;
        }
    }
}

/* Charge `amount` to every account of the chain (and matched model limits) in the period
 * containing now. */
static void m_charge(struct m_resv *v, int64_t amount)
{
    for (int i = 0; i < v->n_chain; i++) {
        struct m_account *a = &M.acct[v->chain[i]];
        acct_roll(a, M.now);
        a->spent += amount;
        a->lifetime += amount;
        v->exp_start[i] = a->period_start;
        if (v->ml[i] >= 0) {
            struct m_mlimit *m = &a->ml[v->ml[i]];
            ml_roll(a, m, M.now);
            m->spent += amount;
            v->exp_mstart[i] = m->period_start;
        }
    }
}

/* Correct tpm by `delta` tokens on every bucket of the chain (negative: refund). */
static void m_tpm_correct(const struct m_resv *v, int64_t delta)
{
    for (int i = 0; i < v->n_chain; i++) {
        struct m_account *a = &M.acct[v->chain[i]];
        if (a->lim.set & LEDGER_LIM_TPM) {
            bucket_add(&a->tpm, a->lim.tpm, M.now, delta);
        }
        if (v->ml[i] >= 0 && (a->ml[v->ml[i]].lim.set & LEDGER_LIM_TPM)) {
            struct m_mlimit *m = &a->ml[v->ml[i]];
            bucket_add(&m->tpm, m->lim.tpm, M.now, delta);
        }
    }
}

static void m_resolve(int32_t idx, uint8_t state)
{
    m_open_remove(idx);
    M.resv[idx].state = state;
    M.resv[idx].resolved_at = M.now;
}

/* Expiry of one open reservation, under its leaf's current policy. */
static bool m_in_a_range(uint64_t index)
{
    for (int i = 0; i < M.n_ranges; i++) {
        if (index > M.ranges[i].after && index < M.ranges[i].before) {
            return true;
        }
    }
    return false;
}

/* "created in an ambiguous range and nothing confirmed it from outside every range" */
static bool m_unconfirmed(const struct m_resv *v)
{
    return m_in_a_range(v->created_index) &&
           (v->confirmed_index == 0 || m_in_a_range(v->confirmed_index));
}

/* TERM_START: "records the ambiguous range (commit_index, B)"; at most 16 kept, those
 * older than the longest ttl dropped, the two oldest merged when full. */
static struct ledger_result m_term_start(const struct ledger_cmd *c)
{
    uint64_t after = c->u.term_start.commit_index;
    if (after >= M.index) {
        return m_result(c, -LEDGER_EINVAL);
    }
    int kept = 0;
    for (int i = 0; i < M.n_ranges; i++) {
        if (M.ranges[i].at + LEDGER_TTL_MAX_MS >= M.now) {
            M.ranges[kept++] = M.ranges[i];
        }
    }
    M.n_ranges = kept;
    if (after + 1 < M.index) {
        if (M.n_ranges == M_RANGES_MAX) {
            M.ranges[1].after = M.ranges[0].after;
            memmove(&M.ranges[0], &M.ranges[1], (M_RANGES_MAX - 1) * sizeof(M.ranges[0]));
            M.n_ranges--;
        }
        M.ranges[M.n_ranges++] = (struct m_range){after, M.index, M.now};
    }
    return m_result(c, LEDGER_OK);
}

static void m_expire(int32_t idx)
{
    struct m_resv *v = &M.resv[idx];
    const struct m_account *leaf = &M.acct[v->chain[0]];
    bool by_policy = (leaf->lim.set & LEDGER_LIM_EXPIRY_POLICY) &&
                     leaf->lim.expiry_policy == LEDGER_EXPIRY_RELEASE;
    bool unconfirmed = m_unconfirmed(v);
    S.unconfirmed_released += unconfirmed && !by_policy;
    bool release = by_policy || unconfirmed;
    m_release_holds(v);
    if (release) {
        m_tpm_correct(v, -(int64_t)v->tokens);
        v->expiry_charge = 0;
    } else {
        m_charge(v, v->est);
        v->expiry_charge = v->est;
    }
    v->charged = v->expiry_charge;
    m_resolve(idx, LEDGER_RESV_EXPIRED);
}

static int cmp_expiry(const void *pa, const void *pb)
{
    const struct m_resv *a = &M.resv[*(const int32_t *)pa], *b = &M.resv[*(const int32_t *)pb];
    if (a->expires_at != b->expires_at) {
        return a->expires_at < b->expires_at ? -1 : 1;
    }
    return memcmp(a->id, b->id, LEDGER_REQUEST_ID_SIZE);
}

/* Open reservation indexes sorted by (expires_at, request_id); *n set. Caller frees. */
int32_t *m_open_sorted(size_t *n)
{
    int32_t *v = xrealloc(NULL, (M.n_open + 1) * sizeof(*v));
    if (M.n_open > 0) { /* M.open is NULL until the first reservation */
        memcpy(v, M.open, M.n_open * sizeof(*v));
    }
    qsort(v, M.n_open, sizeof(*v), cmp_expiry);
    *n = M.n_open;
    return v;
}

/* Start of a batch: the clock, then expiry in (expires_at, request_id) order. */
size_t m_begin_batch(int64_t stamp_ms)
{
    if (stamp_ms < 0) {
        stamp_ms = 0;
    }
    if (stamp_ms > LEDGER_TIME_MAX_MS) {
        stamp_ms = LEDGER_TIME_MAX_MS;
    }
    M.now = stamp_ms > M.now ? stamp_ms : M.now;
    size_t n, due = 0;
    int32_t *v = m_open_sorted(&n);
    for (size_t i = 0; i < n && M.resv[v[i]].expires_at <= M.now; i++) {
        m_expire(v[i]);
        due++;
    }
    free(v);
    return due;
}

/* A settle or void after expiry: charge actual - expiry_charge, refunds only in the same
 * period. */
static struct ledger_result m_late(const struct ledger_cmd *c, int32_t idx, int64_t actual)
{
    struct m_resv *v = &M.resv[idx];
    int64_t corr = actual - v->expiry_charge;
    for (int i = 0; i < v->n_chain; i++) {
        struct m_account *a = &M.acct[v->chain[i]];
        acct_roll(a, M.now);
        if (corr >= 0 || a->period_start == v->exp_start[i]) {
            a->spent += corr;
            a->lifetime += corr;
        } else {
            v->charged_unsure = true;
            if (!DROPPED_REFUND_KEEPS_LIFETIME) {
                a->lifetime += corr;
            }
        }
        if (LATE_CORRECTS_MODEL_LIMITS && v->ml[i] >= 0) {
            struct m_mlimit *m = &a->ml[v->ml[i]];
            ml_roll(a, m, M.now);
            if (corr >= 0 || m->period_start == v->exp_mstart[i]) {
                m->spent += corr;
            }
        }
    }
    v->state = LEDGER_RESV_LATE_SETTLED;
    v->charged += corr;
    struct ledger_result r = m_result(c, LEDGER_OK);
    r.flags |= LEDGER_RESULT_LATE;
    r.charged_micros = corr;
    M_last.late = true;
    M_last.resv = idx;
    return r;
}

static struct ledger_result m_settle(const struct ledger_cmd *c)
{
    int64_t actual = c->u.settle.actual_micros;
    if (!amount_ok(actual) || c->u.settle.actual_tokens > LEDGER_TOKENS_MAX) {
        return m_result(c, -LEDGER_EINVAL);
    }
    int32_t idx = htab_get(&M.resv_idx, c->request_id, 0);
    if (idx < 0) {
        return m_result(c, -LEDGER_ENOTFOUND);
    }
    struct m_resv *v = &M.resv[idx];
    if (v->state == LEDGER_RESV_EXPIRED) {
        return m_late(c, idx, actual);
    }
    if (v->state != LEDGER_RESV_OPEN) {
        return m_result(c, -LEDGER_ERESOLVED);
    }
    m_release_holds(v);
    m_charge(v, actual);
    m_tpm_correct(v, (int64_t)c->u.settle.actual_tokens - (int64_t)v->tokens);
    v->charged = actual;
    m_resolve(idx, LEDGER_RESV_SETTLED);
    struct ledger_result r = m_result(c, LEDGER_OK);
    r.charged_micros = actual;
    r.overrun_micros = actual > v->est ? actual - v->est : 0;
    M_last.resv = idx;
    return r;
}

static struct ledger_result m_void(const struct ledger_cmd *c)
{
    int32_t idx = htab_get(&M.resv_idx, c->request_id, 0);
    if (idx < 0) {
        return m_result(c, -LEDGER_ENOTFOUND);
    }
    struct m_resv *v = &M.resv[idx];
    if (v->state == LEDGER_RESV_EXPIRED) {
        return m_late(c, idx, 0);
    }
    if (v->state != LEDGER_RESV_OPEN) {
        return m_result(c, -LEDGER_ERESOLVED);
    }
    m_release_holds(v);
    m_tpm_correct(v, -(int64_t)v->tokens);
    v->charged = 0;
    m_resolve(idx, LEDGER_RESV_VOIDED);
    M_last.resv = idx;
    return m_result(c, LEDGER_OK);
}

static struct ledger_result m_extend(const struct ledger_cmd *c)
{
    int64_t ttl = c->u.extend.ttl_ms;
    if (ttl < 1 || ttl > LEDGER_TTL_MAX_MS) {
        return m_result(c, -LEDGER_EINVAL);
    }
    int32_t idx = htab_get(&M.resv_idx, c->request_id, 0);
    if (idx < 0) {
        return m_result(c, -LEDGER_ENOTFOUND);
    }
    struct m_resv *v = &M.resv[idx];
    if (v->state != LEDGER_RESV_OPEN) {
        return m_result(c, -LEDGER_ERESOLVED);
    }
    if (M.now + ttl > v->expires_at) {
        v->expires_at = M.now + ttl;
    }
    v->confirmed_index = M.index; /* "an extend ... confirmed it" */
    struct ledger_result r = m_result(c, LEDGER_OK);
    r.expires_at_ms = v->expires_at;
    M_last.resv = idx;
    return r;
}

static struct ledger_result m_dispatch(const struct ledger_cmd *c)
{
    switch (c->type) {
    case LEDGER_CMD_ACCOUNT_CREATE:
        return m_create(c);
    case LEDGER_CMD_ACCOUNT_UPDATE:
        return m_update(c);
    case LEDGER_CMD_KEY_ADD:
        return m_key_add(c);
    case LEDGER_CMD_KEY_REVOKE:
        return m_key_revoke(c);
    case LEDGER_CMD_MODEL_LIMIT_SET:
        return m_model_limit(c);
    case LEDGER_CMD_RESERVE:
        return m_reserve(c);
    case LEDGER_CMD_SETTLE:
        return m_settle(c);
    case LEDGER_CMD_VOID:
        return m_void(c);
    case LEDGER_CMD_CONFIG_SET:
        return m_config(c);
    default:
        return m_result(c, -LEDGER_EINVAL);
    }
}

/* One command against the model: idempotency first, then the command, then the store. */
/* ---- Scopes (ledger.md, "Scopes"). ---- */

/* Whether account `a`'s current root is named in `scope` (names joined by ','). */
static bool m_root_in(const char *scope, int a)
{
    while (M.acct[a].parent >= 0) {
        a = M.acct[a].parent;
    }
    size_t n = strlen(M.acct[a].name);
    for (const char *p = scope; *p != '\0';) {
        size_t len = strcspn(p, ",");
        if (len == n && strncmp(p, M.acct[a].name, n) == 0) {
            return true;
        }
        p += len + (p[len] == ',');
    }
    return false;
}

/* An account name that is not an existing account under the scope is outside it. */
static bool m_name_in(const char *scope, const char *name)
{
    int a = m_find_account(name);
    return a >= 0 && m_root_in(scope, a);
}

/* An unknown key or reservation id is the command's own business. */
static bool m_key_in(const char *scope, const uint8_t *hash)
{
    int k = m_find_key(hash);
    return k < 0 || m_root_in(scope, M.keys[k].account);
}

static bool m_resv_in(const char *scope, const uint8_t *id)
{
    int32_t v = htab_get(&M.resv_idx, id, 0);
    return v < 0 || M.resv[v].n_chain == 0 ||
           m_root_in(scope, M.resv[v].chain[M.resv[v].n_chain - 1]);
}

static bool m_scope_allows(const struct ledger_cmd *c)
{
    const char *s = c->scope;
    switch (c->type) {
    case LEDGER_CMD_ACCOUNT_CREATE:
        return m_name_in(s, c->u.create.parent);
    case LEDGER_CMD_ACCOUNT_UPDATE:
        return m_name_in(s, c->u.update.name) &&
               (!c->u.update.set_parent || m_name_in(s, c->u.update.parent));
    case LEDGER_CMD_KEY_ADD:
        return m_name_in(s, c->u.key.account);
    case LEDGER_CMD_KEY_REVOKE:
        return m_key_in(s, c->u.key.key_hash);
    case LEDGER_CMD_MODEL_LIMIT_SET:
        return m_name_in(s, c->u.model_limit.account);
    case LEDGER_CMD_RESERVE:
        return c->u.reserve.by_account ? m_name_in(s, c->u.reserve.account)
                                       : m_key_in(s, c->u.reserve.key_hash);
    case LEDGER_CMD_SETTLE:
    case LEDGER_CMD_VOID:
    case LEDGER_CMD_EXTEND:
        return m_resv_in(s, c->request_id);
    default:
        return false;
    }
}

struct ledger_result m_apply(const struct ledger_cmd *c)
{
    memset(&M_last, 0, sizeof(M_last));
    M_last.resv = -1;
    /* Judged before anything, the stored answer included; nothing is stored. */
    if (c->scope[0] != '\0' && !m_scope_allows(c)) {
        return m_result(c, -LEDGER_EFORBIDDEN);
    }
    if (c->type == LEDGER_CMD_EXTEND) {
        return m_extend(c); /* never stored, never replayed */
    }
    if (c->type == LEDGER_CMD_TERM_START) {
        return m_term_start(c); /* likewise */
    }
    uint64_t fp = cmd_fingerprint(c);
    int32_t a = htab_get(&M.ans_idx, c->request_id, c->type);
    if (a >= 0) {
        if (M.ans[a].fp != fp) {
            M_last.conflict = true;
            return m_result(c, -LEDGER_ECONFLICT);
        }
        M_last.replayed = true;
        struct ledger_result r = M.ans[a].res;
        r.flags |= LEDGER_RESULT_REPLAYED;
        int32_t v = htab_get(&M.resv_idx, c->request_id, 0);
        if (REPLAY_SHOWS_RECORD_EXPIRY && c->type == LEDGER_CMD_RESERVE && v >= 0) {
            r.expires_at_ms = M.resv[v].expires_at;
        }
        if (c->type == LEDGER_CMD_RESERVE && v >= 0 && M.resv[v].state == LEDGER_RESV_OPEN) {
            M.resv[v].confirmed_index = M.index; /* "a replay of its reserve" confirms */
        }
        return r;
    }
    struct ledger_result r = m_dispatch(c);
    if (r.status < 0 && (c->type == LEDGER_CMD_SETTLE || c->type == LEDGER_CMD_VOID)) {
        return r; /* "These errors are not stored: they follow from the reservation record" */
    }
    if (M.n_ans == M.cap_ans) {
        M.cap_ans = M.cap_ans ? M.cap_ans * 2 : 4096;
        M.ans = xrealloc(M.ans, M.cap_ans * sizeof(*M.ans));
    }
    M.ans[M.n_ans].fp = fp;
    M.ans[M.n_ans].res = r;
    htab_put(&M.ans_idx, c->request_id, c->type, (int32_t)M.n_ans);
    M.n_ans++;
    M_last.stored = true;
    return r;
}
