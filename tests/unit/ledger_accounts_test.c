/*
 * ledger_accounts_test.c: accounts, keys and the admin journal against docs/ledger.md
 * ("Accounts", "Keys", "Journal"): names, the depth-8 forest, moves (cycles and the
 * depth of a moved subtree), limit updates and their bounds, key add/revoke.
 */
#define _GNU_SOURCE /* GNU extensions, as test.h sets them */

#include "ledger_testlib_extra.h"

/* Create `prefix`1 .. `prefix`n, each under the previous one, the first under
 * `parent` ("" for a root). */
static void make_chain(struct tl *t, const char *prefix, const char *parent, int n)
{
    char name[LEDGER_NAME_MAX + 1], prev[LEDGER_NAME_MAX + 1];
    snprintf(prev, sizeof(prev), "%s", parent);
    for (int i = 1; i <= n; i++) {
        snprintf(name, sizeof(name), "%s%d", prefix, i);
        tlx_create(t, name, prev, NULL);
        snprintf(prev, sizeof(prev), "%s", name);
    }
}

static int journal_length(struct tl *t)
{
    struct tlx_journal j;
    tlx_journal(t, NULL, &j);
    return (int)j.n;
}

static void check_depth(struct tl *t, const char *name, const char *parent, uint32_t depth)
{
    struct ledger_account_info a = tl_account(t, name);
    CHECK_EQ_STR(a.parent, parent);
    CHECK_EQ_INT(a.depth, depth);
}

/* ---- Create. ---- */

static void create_records_parent_depth_and_limits(void)
{
    struct tl t;
    struct ledger_limits lim = tlx_budget(500);
    tlx_open_chain(&t, NULL, &lim, NULL);

    check_depth(&t, "org", "", 1);
    check_depth(&t, "team", "org", 2);
    check_depth(&t, "user", "team", 3);
    struct ledger_account_info a = tl_account(&t, "team");
    CHECK_EQ_STR(a.name, "team");
    CHECK_EQ_INT(a.limits.set, LEDGER_LIM_BUDGET);
    CHECK_EQ_INT(a.limits.budget_micros, 500);
    CHECK_EQ_INT(a.created_ms, TLX_T0);
    CHECK_EQ_INT(a.remaining_micros, 500);
    CHECK_EQ_INT(tl_account(&t, "org").remaining_micros, INT64_MAX);
    CHECK_EQ_INT(tl_account(&t, "org").rpm_available, UINT64_MAX);
    CHECK_EQ_INT(tl_account(&t, "user").n_keys, 1);
    TL_CHECK_INVARIANTS(&t);
}

static void create_refuses_ninth_level_with_edepth(void)
{
    struct tl t;
    tl_open(&t, TLX_T0);
    make_chain(&t, "l", "", LEDGER_DEPTH_MAX);
    check_depth(&t, "l8", "l7", 8);

    TLX_RUN(&t, tl_create(&t, "l9", "l8", NULL), -LEDGER_EDEPTH);
    struct ledger_account_info a;
    CHECK_EQ_INT(ledger_account_get(t.l, "l9", &a), -LEDGER_ENOTFOUND);
    TL_CHECK_INVARIANTS(&t);
}

static void create_accepts_128_bytes_of_every_allowed_character(void)
{
    struct tl t;
    tl_open(&t, TLX_T0);
    const char alphabet[] = "ABCXYZabcxyz0189._:/@-";
    char name[LEDGER_NAME_MAX + 1];
    for (int i = 0; i < LEDGER_NAME_MAX; i++) {
        name[i] = alphabet[i % (sizeof(alphabet) - 1)];
    }
    name[LEDGER_NAME_MAX] = '\0';

    TLX_OK(&t, tl_create(&t, name, "", NULL));
    CHECK_EQ_STR(tl_account(&t, name).name, name);
    TL_CHECK_INVARIANTS(&t);
}

static void create_refuses_invalid_names_with_ename(void)
{
    static const char *const bad[] = {"", "a b", "a#b", "caf\xc3\xa9", "tab\tx", "a,b"};
    struct tl t;
    tl_open(&t, TLX_T0);

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct ledger_result r = tl_run(&t, tl_create(&t, bad[i], "", NULL));
        if (r.status != -LEDGER_ENAME) {
            fprintf(stderr, "  name \"%s\": status %d\n", bad[i], r.status);
        }
        CHECK_EQ_INT(r.status, -LEDGER_ENAME);
    }
    CHECK_EQ_INT(journal_length(&t), 0);
    TL_CHECK_INVARIANTS(&t);
}

/* A 129-byte name cannot even be NUL-terminated in the command: the encoder may refuse
 * it (EINVAL or ETOOBIG); if it encodes, applying it is ENAME. */
static void create_refuses_129_byte_name(void)
{
    struct tl t;
    tl_open(&t, TLX_T0);
    struct ledger_cmd c = tl_create(&t, "x", "", NULL);
    memset(c.u.create.name, 'a', sizeof(c.u.create.name));

    struct ledger_result res[1];
    size_t n = 0;
    int rv = tl_apply(&t, &c, 1, res, &n);
    if (rv == 0) {
        REQUIRE(n == 1);
        CHECK_EQ_INT(res[0].status, -LEDGER_ENAME);
    } else {
        CHECK(rv == -LEDGER_EINVAL || rv == -LEDGER_ETOOBIG);
    }
    CHECK_EQ_INT(journal_length(&t), 0);
    TL_CHECK_INVARIANTS(&t);
}

static void create_under_unknown_parent_is_enotfound(void)
{
    struct tl t;
    tl_open(&t, TLX_T0);

    TLX_RUN(&t, tl_create(&t, "team", "nobody", NULL), -LEDGER_ENOTFOUND);
    struct ledger_account_info a;
    CHECK_EQ_INT(ledger_account_get(t.l, "team", &a), -LEDGER_ENOTFOUND);
    TL_CHECK_INVARIANTS(&t);
}

static void create_of_existing_name_is_eexist(void)
{
    struct tl t;
    struct ledger_limits lim = tlx_budget(100);
    tlx_open_chain(&t, NULL, NULL, &lim);
    struct ledger_limits other = tlx_budget(999);

    TLX_RUN(&t, tl_create(&t, "user", "", &other), -LEDGER_EEXIST);
    check_depth(&t, "user", "team", 3);
    CHECK_EQ_INT(tl_account(&t, "user").limits.budget_micros, 100);
    TL_CHECK_INVARIANTS(&t);
}

/* ---- Moves. ---- */

static void move_under_itself_or_descendant_is_ecycle(void)
{
    struct tl t;
    tlx_open_chain(&t, NULL, NULL, NULL);

    TLX_RUN(&t, tl_move(&t, "org", "user"), -LEDGER_ECYCLE);
    TLX_RUN(&t, tl_move(&t, "org", "team"), -LEDGER_ECYCLE);
    TLX_RUN(&t, tl_move(&t, "team", "team"), -LEDGER_ECYCLE);
    check_depth(&t, "org", "", 1);
    check_depth(&t, "team", "org", 2);
    check_depth(&t, "user", "team", 3);
    TL_CHECK_INVARIANTS(&t);
}

static void move_refuses_subtree_that_would_exceed_depth(void)
{
    struct tl t;
    tl_open(&t, TLX_T0);
    make_chain(&t, "a", "", 5);
    make_chain(&t, "b", "", 4);

    /* a5 is at depth 5, the subtree b1..b4 is 4 high: 9 > 8. */
    TLX_RUN(&t, tl_move(&t, "b1", "a5"), -LEDGER_EDEPTH);
    check_depth(&t, "b1", "", 1);
    check_depth(&t, "b4", "b3", 4);
    /* Under a4: 4 + 4 = 8 fits. */
    TLX_OK(&t, tl_move(&t, "b1", "a4"));
    check_depth(&t, "b1", "a4", 5);
    check_depth(&t, "b4", "b3", 8);
    TL_CHECK_INVARIANTS(&t);
}

static void move_to_root_and_under_unknown_parent(void)
{
    struct tl t;
    tlx_open_chain(&t, NULL, NULL, NULL);

    TLX_RUN(&t, tl_move(&t, "team", "nobody"), -LEDGER_ENOTFOUND);
    check_depth(&t, "team", "org", 2);
    TLX_OK(&t, tl_move(&t, "team", ""));
    check_depth(&t, "team", "", 1);
    check_depth(&t, "user", "team", 2);
    TL_CHECK_INVARIANTS(&t);
}

static void move_keeps_open_reservation_on_its_old_chain(void)
{
    struct tl t;
    tlx_open_chain(&t, NULL, NULL, NULL);
    tlx_create(&t, "org2", "", NULL);
    TLX_OK(&t, tl_reserve(&t, 100, "user", 100, 0, TLX_TTL));

    TLX_OK(&t, tl_move(&t, "team", "org2"));
    TLX_CHECK_ACCOUNT(&t, "org", 0, 100, 1);
    TLX_CHECK_ACCOUNT(&t, "org2", 0, 0, 0);
    TL_CHECK_INVARIANTS(&t);

    TLX_OK(&t, tl_settle(&t, 100, 70, 0));
    TLX_CHECK_ACCOUNT(&t, "org", 70, 0, 0);
    TLX_CHECK_ACCOUNT(&t, "org2", 0, 0, 0);
    TLX_OK(&t, tl_reserve(&t, 101, "user", 10, 0, TLX_TTL));
    TLX_CHECK_ACCOUNT(&t, "org", 70, 0, 0);
    TLX_CHECK_ACCOUNT(&t, "org2", 0, 10, 1);
    TL_CHECK_INVARIANTS(&t);
}

/* ---- Updates. ---- */

static void update_changes_only_the_limits_it_sets(void)
{
    struct tl t;
    struct ledger_limits lim = tlx_budget(100);
    lim.set |= LEDGER_LIM_RPM;
    lim.rpm = 10;
    tlx_open_chain_on(&t, "user", &lim);

    struct ledger_limits upd = tlx_budget(200);
    TLX_OK(&t, tl_update(&t, "user", &upd, 0));
    struct ledger_account_info a = tl_account(&t, "user");
    CHECK_EQ_INT(a.limits.set, LEDGER_LIM_BUDGET | LEDGER_LIM_RPM);
    CHECK_EQ_INT(a.limits.budget_micros, 200);
    CHECK_EQ_INT(a.limits.rpm, 10);
    CHECK_EQ_INT(a.remaining_micros, 200);
    check_depth(&t, "user", "team", 3);
    TL_CHECK_INVARIANTS(&t);
}

static void update_clear_mask_removes_limits(void)
{
    struct tl t;
    struct ledger_limits lim = tlx_budget(100);
    lim.set |= LEDGER_LIM_RPM;
    lim.rpm = 1;
    tlx_open_chain_on(&t, "user", &lim);
    TLX_OK(&t, tl_reserve(&t, 100, "user", 100, 0, TLX_TTL));

    TLX_OK(&t, tl_update(&t, "user", NULL, LEDGER_LIM_BUDGET | LEDGER_LIM_RPM));
    struct ledger_account_info a = tl_account(&t, "user");
    CHECK_EQ_INT(a.limits.set, 0);
    CHECK_EQ_INT(a.remaining_micros, INT64_MAX);
    CHECK_EQ_INT(a.rpm_available, UINT64_MAX);
    /* Neither the spent budget nor the used request stops a reserve any more. */
    TLX_OK(&t, tl_reserve(&t, 101, "user", 100, 0, TLX_TTL));
    TLX_CHECK_ACCOUNT(&t, "user", 0, 200, 2);
    TL_CHECK_INVARIANTS(&t);
}

static void update_of_unknown_account_is_enotfound(void)
{
    struct tl t;
    tl_open(&t, TLX_T0);
    struct ledger_limits lim = tlx_budget(100);

    TLX_RUN(&t, tl_update(&t, "nobody", &lim, 0), -LEDGER_ENOTFOUND);
    TLX_RUN(&t, tl_move(&t, "nobody", ""), -LEDGER_ENOTFOUND);
    TL_CHECK_INVARIANTS(&t);
}

/* ---- Limit bounds. ---- */

static const struct {
    const char *what;
    struct ledger_limits lim;
} bad_limits[] = {
    {"negative budget", {.set = LEDGER_LIM_BUDGET, .budget_micros = -1}},
    {"budget above max", {.set = LEDGER_LIM_BUDGET, .budget_micros = LEDGER_AMOUNT_MAX + 1}},
    {"negative soft budget", {.set = LEDGER_LIM_SOFT_BUDGET, .soft_budget_micros = -1}},
    {"rpm 0", {.set = LEDGER_LIM_RPM, .rpm = 0}},
    {"rpm above max", {.set = LEDGER_LIM_RPM, .rpm = LEDGER_RATE_MAX + 1}},
    {"rpm burst above max", {.set = LEDGER_LIM_RPM, .rpm = 1, .rpm_burst = LEDGER_RATE_MAX + 1}},
    {"tpm 0", {.set = LEDGER_LIM_TPM, .tpm = 0}},
    {"max_parallel above max",
     {.set = LEDGER_LIM_PARALLEL, .max_parallel = LEDGER_PARALLEL_MAX + 1}},
    {"period below 1 s",
     {.set = LEDGER_LIM_PERIOD, .period_kind = LEDGER_PERIOD_FIXED, .period_ms = 999}},
    {"period above 366 d",
     {.set = LEDGER_LIM_PERIOD,
      .period_kind = LEDGER_PERIOD_FIXED,
      .period_ms = LEDGER_PERIOD_MAX_MS + 1}},
    {"unknown period kind", {.set = LEDGER_LIM_PERIOD, .period_kind = LEDGER_PERIOD_MAX}},
    {"blocked 2", {.set = LEDGER_LIM_BLOCKED, .blocked = 2}},
};

#define N_BAD_LIMITS (sizeof(bad_limits) / sizeof(bad_limits[0]))

static int limits_equal(const struct ledger_limits *a, const struct ledger_limits *b)
{
    return a->set == b->set && a->period_kind == b->period_kind && a->blocked == b->blocked &&
           a->expiry_policy == b->expiry_policy && a->budget_micros == b->budget_micros &&
           a->soft_budget_micros == b->soft_budget_micros && a->period_ms == b->period_ms &&
           a->rpm == b->rpm && a->rpm_burst == b->rpm_burst && a->tpm == b->tpm &&
           a->tpm_burst == b->tpm_burst && a->max_parallel == b->max_parallel &&
           a->expires_at_ms == b->expires_at_ms;
}

static void check_einval(struct tl *t, struct ledger_cmd c, const char *what)
{
    int before = journal_length(t);
    struct ledger_result r = tl_run(t, c);
    if (r.status != -LEDGER_EINVAL) {
        fprintf(stderr, "  %s: status %d, expected EINVAL\n", what, r.status);
    }
    CHECK_EQ_INT(r.status, -LEDGER_EINVAL);
    CHECK_EQ_INT(journal_length(t), before);
}

static void create_refuses_out_of_range_limits_with_einval(void)
{
    struct tl t;
    tl_open(&t, TLX_T0);

    for (size_t i = 0; i < N_BAD_LIMITS; i++) {
        check_einval(&t, tl_create(&t, "acct", "", &bad_limits[i].lim), bad_limits[i].what);
        struct ledger_account_info a;
        CHECK_EQ_INT(ledger_account_get(t.l, "acct", &a), -LEDGER_ENOTFOUND);
    }
    TL_CHECK_INVARIANTS(&t);
}

static void update_refuses_out_of_range_limits_with_einval(void)
{
    struct tl t;
    struct ledger_limits lim = tlx_budget(100);
    tlx_open_chain_on(&t, "user", &lim);
    struct ledger_limits before = tl_account(&t, "user").limits;

    for (size_t i = 0; i < N_BAD_LIMITS; i++) {
        check_einval(&t, tl_update(&t, "user", &bad_limits[i].lim, 0), bad_limits[i].what);
        struct ledger_limits after = tl_account(&t, "user").limits;
        if (!limits_equal(&before, &after)) {
            fprintf(stderr, "  %s: limits changed\n", bad_limits[i].what);
        }
        CHECK(limits_equal(&before, &after));
    }
    TL_CHECK_INVARIANTS(&t);
}

static void limits_at_their_bounds_are_accepted(void)
{
    struct tl t;
    tl_open(&t, TLX_T0);
    struct ledger_limits hi = {
        .set = LEDGER_LIM_BUDGET | LEDGER_LIM_SOFT_BUDGET | LEDGER_LIM_RPM | LEDGER_LIM_TPM |
               LEDGER_LIM_PARALLEL | LEDGER_LIM_PERIOD,
        .budget_micros = LEDGER_AMOUNT_MAX,
        .soft_budget_micros = LEDGER_AMOUNT_MAX,
        .rpm = LEDGER_RATE_MAX,
        .rpm_burst = LEDGER_RATE_MAX,
        .tpm = LEDGER_RATE_MAX,
        .tpm_burst = LEDGER_RATE_MAX,
        .max_parallel = LEDGER_PARALLEL_MAX,
        .period_kind = LEDGER_PERIOD_FIXED,
        .period_ms = LEDGER_PERIOD_MAX_MS,
    };
    struct ledger_limits lo = {
        .set = LEDGER_LIM_BUDGET | LEDGER_LIM_RPM | LEDGER_LIM_TPM | LEDGER_LIM_PARALLEL |
               LEDGER_LIM_PERIOD | LEDGER_LIM_BLOCKED,
        .budget_micros = 0,
        .rpm = 1,
        .tpm = 1,
        .max_parallel = 0,
        .period_kind = LEDGER_PERIOD_FIXED,
        .period_ms = LEDGER_PERIOD_MIN_MS,
        .blocked = 1,
    };

    TLX_OK(&t, tl_create(&t, "hi", "", &hi));
    TLX_OK(&t, tl_create(&t, "lo", "", &lo));
    CHECK_EQ_INT(tl_account(&t, "hi").limits.budget_micros, LEDGER_AMOUNT_MAX);
    CHECK_EQ_INT(tl_account(&t, "hi").limits.period_ms, LEDGER_PERIOD_MAX_MS);
    CHECK_EQ_INT(tl_account(&t, "lo").limits.period_ms, LEDGER_PERIOD_MIN_MS);
    TL_CHECK_INVARIANTS(&t);
}

/* ---- Keys. ---- */

static void key_add_of_known_hash_is_eexist_even_when_revoked(void)
{
    struct tl t;
    tlx_open_chain(&t, NULL, NULL, NULL);

    TLX_RUN(&t, tl_key_add(&t, "user", TLX_KEY), -LEDGER_EEXIST);
    TLX_RUN(&t, tl_key_add(&t, "team", TLX_KEY), -LEDGER_EEXIST);
    TLX_OK(&t, tl_key_revoke(&t, TLX_KEY));
    TLX_RUN(&t, tl_key_add(&t, "team", TLX_KEY), -LEDGER_EEXIST);

    uint8_t hash[LEDGER_KEY_HASH_SIZE];
    char account[LEDGER_NAME_MAX + 1];
    int revoked = -1;
    tl_key_hash(TLX_KEY, hash);
    REQUIRE(ledger_key_get(t.l, hash, account, &revoked) == 0);
    CHECK_EQ_STR(account, "user");
    CHECK_EQ_INT(revoked, 1);
    CHECK_EQ_INT(tl_account(&t, "team").n_keys, 0);
    TL_CHECK_INVARIANTS(&t);
}

static void key_add_to_unknown_account_is_enotfound(void)
{
    struct tl t;
    tl_open(&t, TLX_T0);

    TLX_RUN(&t, tl_key_add(&t, "nobody", "sk-x"), -LEDGER_ENOTFOUND);
    uint8_t hash[LEDGER_KEY_HASH_SIZE];
    char account[LEDGER_NAME_MAX + 1];
    int revoked = 0;
    tl_key_hash("sk-x", hash);
    CHECK_EQ_INT(ledger_key_get(t.l, hash, account, &revoked), -LEDGER_ENOTFOUND);
    TL_CHECK_INVARIANTS(&t);
}

static void key_revoke_twice_is_ok(void)
{
    struct tl t;
    tlx_open_chain(&t, NULL, NULL, NULL);

    TLX_OK(&t, tl_key_revoke(&t, TLX_KEY));
    TLX_OK(&t, tl_key_revoke(&t, TLX_KEY));
    CHECK_EQ_INT(tl_account(&t, "user").n_keys, 0);
    TL_CHECK_INVARIANTS(&t);
}

static void key_revoke_of_unknown_hash_is_enotfound(void)
{
    struct tl t;
    tlx_open_chain(&t, NULL, NULL, NULL);

    TLX_RUN(&t, tl_key_revoke(&t, "sk-nobody"), -LEDGER_ENOTFOUND);
    CHECK_EQ_INT(tl_account(&t, "user").n_keys, 1);
    TL_CHECK_INVARIANTS(&t);
}

static void key_get_maps_hash_to_account_and_counts_active_keys(void)
{
    struct tl t;
    tlx_open_chain(&t, NULL, NULL, NULL);
    TLX_OK(&t, tl_key_add(&t, "user", "sk-user-2"));
    CHECK_EQ_INT(tl_account(&t, "user").n_keys, 2);

    uint8_t hash[LEDGER_KEY_HASH_SIZE];
    char account[LEDGER_NAME_MAX + 1];
    int revoked = -1;
    tl_key_hash("sk-user-2", hash);
    REQUIRE(ledger_key_get(t.l, hash, account, &revoked) == 0);
    CHECK_EQ_STR(account, "user");
    CHECK_EQ_INT(revoked, 0);

    TLX_OK(&t, tl_key_revoke(&t, "sk-user-2"));
    REQUIRE(ledger_key_get(t.l, hash, account, &revoked) == 0);
    CHECK_EQ_INT(revoked, 1);
    CHECK_EQ_INT(tl_account(&t, "user").n_keys, 1);
    tl_key_hash("sk-nobody", hash);
    CHECK_EQ_INT(ledger_key_get(t.l, hash, account, &revoked), -LEDGER_ENOTFOUND);
    TL_CHECK_INVARIANTS(&t);
}

/* ---- Listing. ---- */

struct names {
    int n;
    char name[TLX_LIST_MAX][LEDGER_NAME_MAX + 1];
};

static int collect_name_cb(void *ctx, const struct ledger_account_info *info)
{
    struct names *ns = ctx;
    if (ns->n >= TLX_LIST_MAX) {
        return 1;
    }
    snprintf(ns->name[ns->n++], LEDGER_NAME_MAX + 1, "%s", info->name);
    return 0;
}

/* The names listed under `parent`, joined by ','. */
static const char *list_names(struct tl *t, const char *parent, char *out, size_t size)
{
    struct names ns;
    ns.n = 0;
    REQUIRE(ledger_account_list(t->l, parent, collect_name_cb, &ns) == 0);
    out[0] = '\0';
    for (int i = 0; i < ns.n; i++) {
        size_t len = strlen(out);
        snprintf(out + len, size - len, "%s%s", i ? "," : "", ns.name[i]);
    }
    return out;
}

static void account_list_gives_children_and_roots_in_name_order(void)
{
    struct tl t;
    tl_open(&t, TLX_T0);
    tlx_create(&t, "zeta", "", NULL);
    tlx_create(&t, "alpha", "", NULL);
    tlx_create(&t, "mid", "", NULL);
    tlx_create(&t, "c2", "alpha", NULL);
    tlx_create(&t, "c1", "alpha", NULL);
    tlx_create(&t, "g1", "c1", NULL);

    char buf[512];
    CHECK_EQ_STR(list_names(&t, NULL, buf, sizeof(buf)), "alpha,mid,zeta");
    CHECK_EQ_STR(list_names(&t, "", buf, sizeof(buf)), "alpha,mid,zeta");
    CHECK_EQ_STR(list_names(&t, "alpha", buf, sizeof(buf)), "c1,c2");
    CHECK_EQ_STR(list_names(&t, "c1", buf, sizeof(buf)), "g1");
    CHECK_EQ_STR(list_names(&t, "zeta", buf, sizeof(buf)), "");
}

/* ---- Admin journal. ---- */

static void admin_commands_journal_hash_chained_entries(void)
{
    static const uint8_t zero[32];
    static const uint8_t types[] = {
        LEDGER_CMD_ACCOUNT_CREATE, LEDGER_CMD_ACCOUNT_CREATE, LEDGER_CMD_ACCOUNT_UPDATE,
        LEDGER_CMD_KEY_ADD,        LEDGER_CMD_KEY_REVOKE,     LEDGER_CMD_MODEL_LIMIT_SET,
        LEDGER_CMD_CONFIG_SET,
    };
    struct tl t;
    tl_open(&t, TLX_T0);
    struct ledger_limits lim = tlx_budget(100);
    struct ledger_model_limits mlim = {.set = LEDGER_LIM_RPM, .rpm = 5};
    struct ledger_cmd c = tl_create(&t, "org", "", NULL);
    snprintf(c.actor, sizeof(c.actor), "admin@ops");
    TLX_OK(&t, c);
    TLX_OK(&t, tl_create(&t, "team", "org", NULL));
    TLX_OK(&t, tl_update(&t, "team", &lim, 0));
    TLX_OK(&t, tl_key_add(&t, "team", "sk-team"));
    TLX_OK(&t, tl_key_revoke(&t, "sk-team"));
    TLX_OK(&t, tl_model_limit(&t, "team", "gpt-4o", &mlim));
    TLX_OK(&t, tl_config(&t, LEDGER_RETENTION_DEFAULT_MS));

    struct tlx_journal j;
    tlx_journal(&t, NULL, &j);
    REQUIRE(j.n == sizeof(types));
    for (size_t i = 0; i < j.n; i++) {
        CHECK_EQ_INT(j.e[i].kind, LEDGER_J_ADMIN);
        CHECK_EQ_INT(j.e[i].cmd_type, types[i]);
        CHECK(memcmp(j.e[i].admin_hash, zero, 32) != 0);
        for (size_t k = 0; k < i; k++) {
            CHECK(memcmp(j.e[i].admin_hash, j.e[k].admin_hash, 32) != 0);
        }
    }
    CHECK_EQ_STR(j.e[0].actor, "admin@ops");
    CHECK_EQ_STR(j.e[0].account, "org");
    CHECK_EQ_STR(j.e[2].account, "team");
    tlx_journal(&t, "team", &j);
    CHECK_EQ_INT(tlx_journal_count(&j, LEDGER_J_ADMIN, "team"), j.n);
    CHECK(j.n >= 2);
    TL_CHECK_INVARIANTS(&t);
}

int main(void)
{
    TEST_MAIN_BEGIN;
    TEST(create_records_parent_depth_and_limits);
    TEST(create_refuses_ninth_level_with_edepth);
    TEST(create_accepts_128_bytes_of_every_allowed_character);
    TEST(create_refuses_invalid_names_with_ename);
    TEST(create_refuses_129_byte_name);
    TEST(create_under_unknown_parent_is_enotfound);
    TEST(create_of_existing_name_is_eexist);
    TEST(move_under_itself_or_descendant_is_ecycle);
    TEST(move_refuses_subtree_that_would_exceed_depth);
    TEST(move_to_root_and_under_unknown_parent);
    TEST(move_keeps_open_reservation_on_its_old_chain);
    TEST(update_changes_only_the_limits_it_sets);
    TEST(update_clear_mask_removes_limits);
    TEST(update_of_unknown_account_is_enotfound);
    TEST(create_refuses_out_of_range_limits_with_einval);
    TEST(update_refuses_out_of_range_limits_with_einval);
    TEST(limits_at_their_bounds_are_accepted);
    TEST(key_add_of_known_hash_is_eexist_even_when_revoked);
    TEST(key_add_to_unknown_account_is_enotfound);
    TEST(key_revoke_twice_is_ok);
    TEST(key_revoke_of_unknown_hash_is_enotfound);
    TEST(key_get_maps_hash_to_account_and_counts_active_keys);
    TEST(account_list_gives_children_and_roots_in_name_order);
    TEST(admin_commands_journal_hash_chained_entries);
    TEST_MAIN_END;
}
