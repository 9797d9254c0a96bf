/*
 * account.c: the account commands (create, update, block, unblock, show, list) and the
 * limits they take.
 *
 * Limits are read from options into a struct tally_limits whose `set` bits say which were
 * given, and --clear names the ones to remove; the ledger applies both under those bits. An
 * account is printed as key-value lines, as a row of the list table, or as a JSON object
 * in which every field is present (null when unlimited or unset).
 */
#include "tallyctl/tallyctl.h"

#include <inttypes.h>
#include <string.h>


/* ---- Limits from options. ---- */

/*
 * A rate limit from option `rate` (1 .. TALLY_RATE_MAX) and its optional burst option `burst`
 * (0 .. TALLY_RATE_MAX) into *per_minute and *burst_size, adding `bit` to *set when the rate is
 * given. A burst needs its rate, since the ledger sets both under one bit.
 */
static int rate_from_opts(struct ctl__ctx *x, enum ctl__opt_id rate, enum ctl__opt_id burst,
                          uint64_t *per_minute, uint64_t *burst_size, uint32_t bit, uint32_t *set)
{
    const bool *given = x->a->given;
    if (given[burst] && !given[rate]) {
        return ctl__usage_error(x, "--%s needs --%s", ctl__opt_specs[burst].name,
                                ctl__opt_specs[rate].name),
               -1;
    }
    if (!given[rate]) {
        return 0;
    }
    if (ctl__opt_uint(x, rate, 1, TALLY_RATE_MAX, per_minute) != 0 ||
        (given[burst] && ctl__opt_uint(x, burst, 0, TALLY_RATE_MAX, burst_size) != 0)) {
        return -1;
    }
    *set |= bit;
    return 0;
}

/* The limits given as options (LIMIT_OPTS in main.c) into *lim; lim->set says which. */
static int limits_from_opts(struct ctl__ctx *x, struct tally_limits *lim)
{
    const bool *given = x->a->given;
    memset(lim, 0, sizeof(*lim));
    if (given[CTL_OPT_BUDGET]) {
        if (ctl__opt_int(x, CTL_OPT_BUDGET, 0, TALLY_AMOUNT_MAX, &lim->budget_micros) != 0) {
            return -1;
        }
        lim->set |= TALLY_LIM_BUDGET;
    }
    if (given[CTL_OPT_SOFT_BUDGET]) {
        if (ctl__opt_int(x, CTL_OPT_SOFT_BUDGET, 0, TALLY_AMOUNT_MAX, &lim->soft_budget_micros) !=
            0) {
            return -1;
        }
        lim->set |= TALLY_LIM_SOFT_BUDGET;
    }
    if (given[CTL_OPT_PERIOD]) {
        if (ctl__parse_period(x, x->a->value[CTL_OPT_PERIOD], &lim->period_kind, &lim->period_ms) !=
            0) {
            return -1;
        }
        lim->set |= TALLY_LIM_PERIOD;
    }
    if (rate_from_opts(x, CTL_OPT_RPM, CTL_OPT_RPM_BURST, &lim->rpm, &lim->rpm_burst, TALLY_LIM_RPM,
                       &lim->set) != 0 ||
        rate_from_opts(x, CTL_OPT_TPM, CTL_OPT_TPM_BURST, &lim->tpm, &lim->tpm_burst, TALLY_LIM_TPM,
                       &lim->set) != 0) {
        return -1;
    }
    if (given[CTL_OPT_MAX_PARALLEL]) {
        if (ctl__opt_uint(x, CTL_OPT_MAX_PARALLEL, 0, TALLY_PARALLEL_MAX, &lim->max_parallel) != 0) {
            return -1;
        }
        lim->set |= TALLY_LIM_PARALLEL;
    }
    if (given[CTL_OPT_EXPIRES_AT]) {
        if (ctl__opt_time(x, CTL_OPT_EXPIRES_AT, &lim->expires_at_ms) != 0) {
            return -1;
        }
        lim->set |= TALLY_LIM_EXPIRES;
    }
    if (given[CTL_OPT_EXPIRY_POLICY]) {
        const char *v = x->a->value[CTL_OPT_EXPIRY_POLICY];
        if (strcmp(v, "charge") == 0) {
            lim->expiry_policy = TALLY_EXPIRY_CHARGE;
        } else if (strcmp(v, "release") == 0) {
            lim->expiry_policy = TALLY_EXPIRY_RELEASE;
        } else {
            return ctl__usage_error(x, "--expiry-policy: '%s' is not charge or release", v), -1;
        }
        lim->set |= TALLY_LIM_EXPIRY_POLICY;
    }
    if (given[CTL_OPT_BLOCKED]) {
        lim->blocked = 1;
        lim->set |= TALLY_LIM_BLOCKED;
    }
    return 0;
}

/* The limit names --clear takes ('_' may stand for '-'). */
static const struct {
    const char *name;
    uint32_t bit;
} limit_names[] = {
    {"budget", TALLY_LIM_BUDGET},
    {"soft-budget", TALLY_LIM_SOFT_BUDGET},
    {"period", TALLY_LIM_PERIOD},
    {"rpm", TALLY_LIM_RPM},
    {"tpm", TALLY_LIM_TPM},
    {"max-parallel", TALLY_LIM_PARALLEL},
    {"expires-at", TALLY_LIM_EXPIRES},
    {"blocked", TALLY_LIM_BLOCKED},
    {"expiry-policy", TALLY_LIM_EXPIRY_POLICY},
    {"all", TALLY_LIM_ALL},
};

/* Parse --clear's comma-separated limit names into TALLY_LIM_* bits. */
static int parse_clear(struct ctl__ctx *x, const char *s, uint32_t *out)
{
    const char *p = s;
    size_t words_max = strlen(s) + 1; /* a bound: each word takes at least one byte */
    *out = 0;
    for (size_t i = 0; i < words_max; i++) {
        size_t len = strcspn(p, ",");
        char word[32];
        if (len == 0 || len >= sizeof(word)) {
            return ctl__usage_error(x, "--clear: '%s' is not a list of limit names", s), -1;
        }
        memcpy(word, p, len);
        word[len] = '\0';
        for (char *q = word; *q != '\0'; q++) {
            *q = *q == '_' ? '-' : *q;
        }
        uint32_t bit = 0;
        for (size_t j = 0; j < sizeof(limit_names) / sizeof(limit_names[0]); j++) {
            if (strcmp(word, limit_names[j].name) == 0) {
                bit = limit_names[j].bit;
            }
        }
        if (bit == 0) {
            return ctl__usage_error(
                       x,
                       "--clear: unknown limit '%s' (budget, soft-budget, period, rpm, "
                       "tpm, max-parallel, expires-at, blocked, expiry-policy, all)",
                       word),
                   -1;
        }
        *out |= bit;
        if (p[len] == '\0') {
            return 0;
        }
        p += len + 1;
    }
    return ctl__usage_error(x, "--clear: '%s' is not a list of limit names", s), -1;
}

/* ---- Printing an account. ---- */

/* "charge" or "release". */
static const char *expiry_policy_name(int policy)
{
    return policy == TALLY_EXPIRY_RELEASE ? "release" : "charge";
}

/* Write the limits `l` as a JSON object under `key`: every field always present, null
 * when that limit is not set. */
static void json_limits(struct ctl__jw *w, const char *key, const struct tally_limits *l)
{
    uint32_t set = l->set;
    bool period = (set & TALLY_LIM_PERIOD) != 0;
    ctl__jw_open(w, key, '{');
    ctl__jw_i64_or_null(w, "budget_micros", set & TALLY_LIM_BUDGET, l->budget_micros);
    ctl__jw_i64_or_null(w, "soft_budget_micros", set & TALLY_LIM_SOFT_BUDGET,
                        l->soft_budget_micros);
    ctl__jw_str_or_null(w, "period", period ? tally_period_name(l->period_kind) : "");
    ctl__jw_i64_or_null(w, "period_ms", period && l->period_kind == TALLY_PERIOD_FIXED,
                        l->period_ms);
    ctl__jw_u64_or_null(w, "rpm", set & TALLY_LIM_RPM, l->rpm);
    ctl__jw_u64_or_null(w, "rpm_burst", set & TALLY_LIM_RPM, l->rpm_burst);
    ctl__jw_u64_or_null(w, "tpm", set & TALLY_LIM_TPM, l->tpm);
    ctl__jw_u64_or_null(w, "tpm_burst", set & TALLY_LIM_TPM, l->tpm_burst);
    ctl__jw_u64_or_null(w, "max_parallel", set & TALLY_LIM_PARALLEL, l->max_parallel);
    ctl__jw_time_pair(w, "expires_at", set & TALLY_LIM_EXPIRES, l->expires_at_ms);
    ctl__jw_bool(w, "blocked", (set & TALLY_LIM_BLOCKED) && l->blocked);
    ctl__jw_str(w, "expiry_policy",
                expiry_policy_name((set & TALLY_LIM_EXPIRY_POLICY) ? l->expiry_policy
                                                                   : TALLY_EXPIRY_CHARGE));
    ctl__jw_close(w, '}');
}

/* Write `item`, a struct tally_account, as a JSON object (a value in an array or at the top
 * level). Unlimited values (remaining without a budget, availability without a rate, the
 * end of no period) are null. */
static void json_account(struct ctl__jw *w, const void *item)
{
    const struct tally_account *a = item;
    ctl__jw_open(w, NULL, '{');
    ctl__jw_str(w, "name", a->name);
    ctl__jw_u64(w, "id", a->id);
    ctl__jw_str_or_null(w, "parent", a->parent);
    ctl__jw_u64(w, "depth", a->depth);
    ctl__jw_time_pair(w, "created", true, a->created_ms);
    json_limits(w, "limits", &a->limits);
    ctl__jw_i64(w, "spent_micros", a->spent_micros);
    ctl__jw_i64(w, "held_micros", a->held_micros);
    ctl__jw_i64_or_null(w, "remaining_micros", a->remaining_micros != INT64_MAX,
                        a->remaining_micros);
    ctl__jw_i64(w, "lifetime_spent_micros", a->lifetime_spent_micros);
    ctl__jw_i64(w, "overrun_micros", a->overrun_micros);
    ctl__jw_u64(w, "inflight", a->inflight);
    ctl__jw_time_pair(w, "period_start", true, a->period_start_ms);
    ctl__jw_time_pair(w, "period_end", a->period_end_ms != INT64_MAX, a->period_end_ms);
    ctl__jw_u64_or_null(w, "rpm_available", a->rpm_available != UINT64_MAX, a->rpm_available);
    ctl__jw_u64_or_null(w, "tpm_available", a->tpm_available != UINT64_MAX, a->tpm_available);
    ctl__jw_u64(w, "keys", a->n_keys);
    ctl__jw_close(w, '}');
}

/* The budget period of `l`: "-" when none is set, a fixed one's duration ("7d", written
 * into `buf`, 32 bytes), else its name ("month"). */
static const char *fmt_period(const struct tally_limits *l, char *buf)
{
    if (!(l->set & TALLY_LIM_PERIOD)) {
        return "-";
    }
    if (l->period_kind == TALLY_PERIOD_FIXED) {
        return ctl__fmt_duration(l->period_ms, buf);
    }
    return tally_period_name(l->period_kind);
}

/* Print account `a` as key-value lines. */
static void print_account(const struct tally_account *a)
{
    const struct tally_limits *l = &a->limits;
    char b1[64], b2[64], t1[CTL_TIME_TEXT], t2[CTL_TIME_TEXT], dur[32];
    ctl__kv("name", "%s", a->name);
    ctl__kv("id", "%" PRIu64, a->id);
    ctl__kv("parent", "%s", a->parent[0] != '\0' ? a->parent : "- (root)");
    ctl__kv("depth", "%" PRIu32, a->depth);
    ctl__kv("created", "%s", ctl__fmt_time(a->created_ms, t1));
    ctl__kv("status", "%s", (l->set & TALLY_LIM_BLOCKED) && l->blocked ? "BLOCKED" : "active");
    ctl__kv("budget", "%s",
            (l->set & TALLY_LIM_BUDGET) ? ctl__fmt_micros(l->budget_micros, b1) : "-");
    ctl__kv("soft budget", "%s",
            (l->set & TALLY_LIM_SOFT_BUDGET) ? ctl__fmt_micros(l->soft_budget_micros, b1) : "-");
    bool fixed = (l->set & TALLY_LIM_PERIOD) && l->period_kind == TALLY_PERIOD_FIXED;
    ctl__kv("period", "%s%s", fixed ? "fixed " : "", fmt_period(l, dur));
    if (l->set & TALLY_LIM_RPM) {
        ctl__kv("rpm", "%" PRIu64 " (burst %" PRIu64 ")", l->rpm,
                l->rpm_burst ? l->rpm_burst : l->rpm);
    } else {
        ctl__kv("rpm", "-");
    }
    if (l->set & TALLY_LIM_TPM) {
        ctl__kv("tpm", "%" PRIu64 " (burst %" PRIu64 ")", l->tpm,
                l->tpm_burst ? l->tpm_burst : l->tpm);
    } else {
        ctl__kv("tpm", "-");
    }
    if (l->set & TALLY_LIM_PARALLEL) {
        ctl__kv("max parallel", "%" PRIu64, l->max_parallel);
    } else {
        ctl__kv("max parallel", "-");
    }
    ctl__kv("expires at", "%s",
            (l->set & TALLY_LIM_EXPIRES) ? ctl__fmt_time(l->expires_at_ms, t1) : "-");
    ctl__kv("expiry policy", "%s",
            expiry_policy_name((l->set & TALLY_LIM_EXPIRY_POLICY) ? l->expiry_policy
                                                                  : TALLY_EXPIRY_CHARGE));
    ctl__kv("spent", "%s", ctl__fmt_micros(a->spent_micros, b1));
    ctl__kv("held", "%s", ctl__fmt_micros(a->held_micros, b1));
    ctl__kv("remaining", "%s",
            a->remaining_micros == INT64_MAX ? "unlimited"
                                             : ctl__fmt_micros(a->remaining_micros, b2));
    ctl__kv("lifetime spent", "%s", ctl__fmt_micros(a->lifetime_spent_micros, b1));
    ctl__kv("overrun", "%s", ctl__fmt_micros(a->overrun_micros, b1));
    ctl__kv("period start", "%s", ctl__fmt_time(a->period_start_ms, t1));
    ctl__kv("period end", "%s",
            a->period_end_ms == INT64_MAX ? "never" : ctl__fmt_time(a->period_end_ms, t2));
    if (a->rpm_available == UINT64_MAX) {
        ctl__kv("rpm available", "unlimited");
    } else {
        ctl__kv("rpm available", "%" PRIu64, a->rpm_available);
    }
    if (a->tpm_available == UINT64_MAX) {
        ctl__kv("tpm available", "unlimited");
    } else {
        ctl__kv("tpm available", "%" PRIu64, a->tpm_available);
    }
    ctl__kv("inflight", "%" PRIu64, a->inflight);
    ctl__kv("keys", "%" PRIu32 " active", a->n_keys);
}

/* ---- The commands. ---- */

int ctl__cmd_account_create(struct ctl__ctx *x)
{
    const char *name = x->words[0], *parent = NULL;
    struct tally_limits lim;
    uint8_t idbuf[TALLY_REQUEST_ID_SIZE];
    const uint8_t *id;
    if (ctl__check_name(x, "NAME", name, TALLY_NAME_MAX) != 0 ||
        ctl__opt_name(x, CTL_OPT_PARENT, TALLY_NAME_MAX, &parent) != 0 ||
        limits_from_opts(x, &lim) != 0 || ctl__opt_request_id(x, idbuf, &id) != 0) {
        return CTL_USAGE;
    }
    int rc = ctl__ctx_client(x);
    if (rc != 0) {
        return rc;
    }
    struct tally_result res = {0};
    rc = tally_account_create(x->c, name, parent, lim.set ? &lim : NULL, id, x->timeout_ms, &res);
    return ctl__write_answer(x, "account", "account", name, "created", rc, &res);
}

int ctl__cmd_account_update(struct ctl__ctx *x)
{
    const char *name = x->words[0], *new_parent = NULL;
    struct tally_limits lim;
    uint32_t clear = 0;
    uint8_t idbuf[TALLY_REQUEST_ID_SIZE];
    const uint8_t *id;
    if (ctl__check_name(x, "NAME", name, TALLY_NAME_MAX) != 0) {
        return CTL_USAGE;
    }
    if (x->a->given[CTL_OPT_PARENT] && x->a->given[CTL_OPT_ROOT]) {
        return ctl__usage_error(x, "give --parent or --root, not both");
    }
    if (ctl__opt_name(x, CTL_OPT_PARENT, TALLY_NAME_MAX, &new_parent) != 0 ||
        limits_from_opts(x, &lim) != 0 || ctl__opt_request_id(x, idbuf, &id) != 0) {
        return CTL_USAGE;
    }
    if (x->a->given[CTL_OPT_ROOT]) {
        new_parent = "";
    }
    if (x->a->given[CTL_OPT_CLEAR] && parse_clear(x, x->a->value[CTL_OPT_CLEAR], &clear) != 0) {
        return CTL_USAGE;
    }
    if ((lim.set & clear) != 0) {
        return ctl__usage_error(x, "a limit is both set and cleared");
    }
    if (lim.set == 0 && clear == 0 && new_parent == NULL) {
        return ctl__usage_error(x, "nothing to change: give limits, --clear, --parent or --root");
    }
    int rc = ctl__ctx_client(x);
    if (rc != 0) {
        return rc;
    }
    struct tally_result res = {0};
    rc = tally_account_update(x->c, name, lim.set ? &lim : NULL, clear, new_parent, id,
                              x->timeout_ms, &res);
    return ctl__write_answer(x, "account", "account", name, "updated", rc, &res);
}

/* account block|unblock NAME [--id HEX]: set the blocked limit to 1 or 0. */
static int set_blocked(struct ctl__ctx *x, bool blocked)
{
    const char *name = x->words[0];
    struct tally_limits lim = {0};
    uint8_t idbuf[TALLY_REQUEST_ID_SIZE];
    const uint8_t *id;
    if (ctl__check_name(x, "NAME", name, TALLY_NAME_MAX) != 0 ||
        ctl__opt_request_id(x, idbuf, &id) != 0) {
        return CTL_USAGE;
    }
    lim.set = TALLY_LIM_BLOCKED;
    lim.blocked = blocked ? 1 : 0;
    int rc = ctl__ctx_client(x);
    if (rc != 0) {
        return rc;
    }
    struct tally_result res = {0};
    rc = tally_account_update(x->c, name, &lim, 0, NULL, id, x->timeout_ms, &res);
    return ctl__write_answer(x, "account", "account", name, blocked ? "blocked" : "unblocked", rc,
                             &res);
}

int ctl__cmd_account_block(struct ctl__ctx *x)
{
    return set_blocked(x, true);
}

int ctl__cmd_account_unblock(struct ctl__ctx *x)
{
    return set_blocked(x, false);
}

int ctl__cmd_account_show(struct ctl__ctx *x)
{
    const char *name = x->words[0];
    struct tally_account acct;
    if (ctl__check_name(x, "NAME", name, TALLY_NAME_MAX) != 0) {
        return CTL_USAGE;
    }
    int rc = ctl__ctx_client(x);
    if (rc != 0) {
        return rc;
    }
    struct tally_result res = {0};
    memset(&acct, 0, sizeof(acct));
    rc = tally_account_get(x->c, name, ctl__read_flags(x), x->timeout_ms, &acct, &res);
    if (rc < 0) {
        return ctl__call_failed(x, name, rc, &res, NULL);
    }
    if (x->json) {
        struct ctl__jw w;
        ctl__jw_init(&w, stdout);
        json_account(&w, &acct);
        ctl__jw_line(&w);
    } else {
        print_account(&acct);
    }
    return CTL_OK;
}

static int fetch_accounts(struct ctl__ctx *x, const struct ctl__list_query *q,
                          const struct tally_cursor *cursor, void *items, uint32_t *got,
                          struct tally_cursor *next, struct tally_result *res)
{
    return tally_account_list(x->c, q->name, cursor, TALLY_LIST_MAX, q->flags, x->timeout_ms, items,
                              got, next, res);
}

/* `item`, a struct tally_account, as a row of the account list table. */
static void account_row(struct ctl__table *t, const void *item)
{
    const struct tally_account *a = item;
    const struct tally_limits *l = &a->limits;
    char m[CTL_MONEY_TEXT], dur[32];
    ctl__table_add(t, "%s", a->name);
    ctl__table_add(t, "%s", a->parent[0] ? a->parent : "-");
    ctl__table_add(t, "%s",
                   (l->set & TALLY_LIM_BUDGET) ? ctl__fmt_money(l->budget_micros, m) : "-");
    ctl__table_add(t, "%s", fmt_period(l, dur));
    ctl__table_add(t, "%s", ctl__fmt_money(a->spent_micros, m));
    ctl__table_add(t, "%s", ctl__fmt_money(a->held_micros, m));
    ctl__table_add(t, "%s",
                   a->remaining_micros == INT64_MAX ? "unlimited"
                                                    : ctl__fmt_money(a->remaining_micros, m));
    ctl__table_add(t, "%" PRIu64, a->inflight);
    ctl__table_add(t, "%" PRIu32, a->n_keys);
    ctl__table_add(t, "%s", (l->set & TALLY_LIM_BLOCKED) && l->blocked ? "blocked" : "active");
}

int ctl__cmd_account_list(struct ctl__ctx *x)
{
    static const char *const headers[] = {"NAME", "PARENT",    "BUDGET",   "PERIOD", "SPENT",
                                          "HELD", "REMAINING", "INFLIGHT", "KEYS",   "STATUS"};
    static const struct ctl__listing accounts = {.filter = CTL_OPT_PARENT,
                                                 .fetch = fetch_accounts,
                                                 .item_size = sizeof(struct tally_account),
                                                 .json_item = json_account,
                                                 .align = "llrlrrrrrl",
                                                 .headers = headers,
                                                 .table_row = account_row};
    return ctl__run_listing(x, &accounts);
}
