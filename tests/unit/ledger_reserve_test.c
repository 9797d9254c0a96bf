/*
 * ledger_reserve_test.c: reserve, settle, void and extend against docs/ledger.md
 * ("Reserve", "Rate limits", "Settle, void, extend", "Journal"). Every test builds the
 * chain org <- team <- user (key TLX_KEY on user) with the limits it is about and
 * checks the exact answer and counters the contract gives.
 */
#define _GNU_SOURCE /* GNU extensions, as test.h sets them */

#include "ledger_testlib_extra.h"

/* ---- Grant. ---- */

static void reserve_grant_holds_on_every_account_of_chain(void)
{
    struct tl t;
    struct ledger_limits org = tlx_budget(1000), team = tlx_budget(500), user = tlx_budget(200);
    tlx_open_chain(&t, &org, &team, &user);

    struct ledger_result r = TLX_OK(&t, tl_reserve_key(&t, 100, TLX_KEY, 100, 0, TLX_TTL));
    CHECK_EQ_INT(r.expires_at_ms, TLX_T0 + TLX_TTL);
    CHECK_EQ_INT(r.flags & LEDGER_RESULT_REPLAYED, 0);
    TLX_CHECK_CHAIN(&t, 0, 100, 1);
    CHECK_EQ_INT(tl_account(&t, "org").remaining_micros, 900);
    CHECK_EQ_INT(tl_account(&t, "team").remaining_micros, 400);
    CHECK_EQ_INT(tl_account(&t, "user").remaining_micros, 100);
    TL_CHECK_INVARIANTS(&t);
}

/* ---- Deny reasons. ---- */

static void reserve_denies_unknown_key(void)
{
    struct tl t;
    tlx_open_chain(&t, NULL, NULL, NULL);

    struct ledger_result r =
        TLX_RUN(&t, tl_reserve_key(&t, 100, "sk-nobody", 10, 0, TLX_TTL), LEDGER_DENIED);
    CHECK_EQ_INT(r.deny_reason, LEDGER_DENY_UNKNOWN_KEY);
    TLX_CHECK_CHAIN(&t, 0, 0, 0);
    TL_CHECK_INVARIANTS(&t);
}

static void reserve_denies_revoked_key(void)
{
    struct tl t;
    tlx_open_chain(&t, NULL, NULL, NULL);
    TLX_OK(&t, tl_key_revoke(&t, TLX_KEY));

    struct ledger_result r =
        TLX_RUN(&t, tl_reserve_key(&t, 100, TLX_KEY, 10, 0, TLX_TTL), LEDGER_DENIED);
    CHECK_EQ_INT(r.deny_reason, LEDGER_DENY_KEY_REVOKED);
    TLX_CHECK_CHAIN(&t, 0, 0, 0);
    TL_CHECK_INVARIANTS(&t);
}

static void reserve_by_unknown_account_is_enotfound(void)
{
    struct tl t;
    tlx_open_chain(&t, NULL, NULL, NULL);

    TLX_RUN(&t, tl_reserve(&t, 100, "nobody", 10, 0, TLX_TTL), -LEDGER_ENOTFOUND);
    TLX_CHECK_CHAIN(&t, 0, 0, 0);
    TL_CHECK_INVARIANTS(&t);
}

static void reserve_denies_when_team_blocked(void)
{
    struct tl t;
    struct ledger_limits lim = {.set = LEDGER_LIM_BLOCKED, .blocked = 1};
    tlx_open_chain_on(&t, "team", &lim);

    struct ledger_result r =
        TLX_RUN(&t, tl_reserve(&t, 100, "user", 10, 0, TLX_TTL), LEDGER_DENIED);
    TLX_CHECK_DENY(r, LEDGER_DENY_BLOCKED, "team", 0, 0);
    TLX_CHECK_CHAIN(&t, 0, 0, 0);
    TL_CHECK_INVARIANTS(&t);
}

static void reserve_denies_from_org_expires_at(void)
{
    struct tl t;
    struct ledger_limits lim = {.set = LEDGER_LIM_EXPIRES, .expires_at_ms = TLX_T0 + 1000};
    tlx_open_chain_on(&t, "org", &lim);

    t.now_ms = TLX_T0 + 999;
    TLX_OK(&t, tl_reserve(&t, 100, "user", 10, 0, TLX_TTL));
    t.now_ms = TLX_T0 + 1000;
    struct ledger_result r =
        TLX_RUN(&t, tl_reserve(&t, 101, "user", 10, 0, TLX_TTL), LEDGER_DENIED);
    TLX_CHECK_DENY(r, LEDGER_DENY_EXPIRED, "org", 0, 0);
    TLX_CHECK_CHAIN(&t, 0, 10, 1);
    TL_CHECK_INVARIANTS(&t);
}

static void reserve_denies_when_team_parallel_slots_taken(void)
{
    struct tl t;
    struct ledger_limits lim = {.set = LEDGER_LIM_PARALLEL, .max_parallel = 2};
    tlx_open_chain_on(&t, "team", &lim);

    TLX_OK(&t, tl_reserve(&t, 100, "user", 10, 0, TLX_TTL));
    TLX_OK(&t, tl_reserve(&t, 101, "user", 10, 0, TLX_TTL));
    struct ledger_result r =
        TLX_RUN(&t, tl_reserve(&t, 102, "user", 10, 0, TLX_TTL), LEDGER_DENIED);
    TLX_CHECK_DENY(r, LEDGER_DENY_PARALLEL, "team", 0, 0);
    TLX_CHECK_CHAIN(&t, 0, 20, 2);
    TL_CHECK_INVARIANTS(&t);
}

/*
 * Budget 100 on `level`: spend 50, hold 30, then ask for 30 more. The deny names
 * `level` with remaining = budget - spent - held = 20.
 */
static void check_budget_deny_on(const char *level)
{
    struct tl t;
    struct ledger_limits lim = tlx_budget(100);
    tlx_open_chain_on(&t, level, &lim);

    TLX_OK(&t, tl_reserve(&t, 100, "user", 50, 0, TLX_TTL));
    TLX_OK(&t, tl_settle(&t, 100, 50, 0));
    TLX_OK(&t, tl_reserve(&t, 101, "user", 30, 0, TLX_TTL));
    struct ledger_result r =
        TLX_RUN(&t, tl_reserve(&t, 102, "user", 30, 0, TLX_TTL), LEDGER_DENIED);
    TLX_CHECK_DENY(r, LEDGER_DENY_BUDGET, level, 20, 0);
    TLX_CHECK_CHAIN(&t, 50, 30, 1);
    TL_CHECK_INVARIANTS(&t);
}

static void reserve_denies_when_user_budget_spent(void)
{
    check_budget_deny_on("user");
}

static void reserve_denies_when_team_budget_spent(void)
{
    check_budget_deny_on("team");
}

static void reserve_denies_when_org_budget_spent(void)
{
    check_budget_deny_on("org");
}

static void reserve_denies_rpm_with_exact_retry_after(void)
{
    struct tl t;
    /* 60 rpm, burst 2: capacity 120 000 units draining 60 units/ms. */
    struct ledger_limits lim = tlx_rpm(60, 2);
    tlx_open_chain_on(&t, "user", &lim);

    TLX_OK(&t, tl_reserve(&t, 100, "user", 1, 0, TLX_TTL));
    TLX_OK(&t, tl_reserve(&t, 101, "user", 1, 0, TLX_TTL));
    /* At +500 ms the level is 90 000: 30 000 units over, 500 ms at 60 units/ms. */
    t.now_ms = TLX_T0 + 500;
    struct ledger_result r = TLX_RUN(&t, tl_reserve(&t, 102, "user", 1, 0, TLX_TTL), LEDGER_DENIED);
    TLX_CHECK_DENY(r, LEDGER_DENY_RPM, "user", 0, 500);
    t.now_ms = TLX_T0 + 1000;
    TLX_OK(&t, tl_reserve(&t, 103, "user", 1, 0, TLX_TTL));
    TLX_CHECK_CHAIN(&t, 0, 3, 3);
    TL_CHECK_INVARIANTS(&t);
}

static void reserve_denies_tpm_with_exact_remaining_and_retry_after(void)
{
    struct tl t;
    struct ledger_limits lim = tlx_tpm(1000, 0);
    tlx_open_chain_on(&t, "user", &lim);

    TLX_OK(&t, tl_reserve(&t, 100, "user", 1, 700, TLX_TTL));
    /* 300 tokens left; 100 tokens over at 1000 units/ms: 6000 ms. */
    struct ledger_result r =
        TLX_RUN(&t, tl_reserve(&t, 101, "user", 1, 400, TLX_TTL), LEDGER_DENIED);
    TLX_CHECK_DENY(r, LEDGER_DENY_TPM, "user", 300, 6000);
    t.now_ms = TLX_T0 + 6000;
    TLX_OK(&t, tl_reserve(&t, 102, "user", 1, 400, TLX_TTL));
    TL_CHECK_INVARIANTS(&t);
}

static void reserve_denies_tpm_forever_when_tokens_exceed_burst(void)
{
    struct tl t;
    struct ledger_limits lim = tlx_tpm(1000, 500);
    tlx_open_chain_on(&t, "user", &lim);

    struct ledger_result r =
        TLX_RUN(&t, tl_reserve(&t, 100, "user", 1, 501, TLX_TTL), LEDGER_DENIED);
    TLX_CHECK_DENY(r, LEDGER_DENY_TPM, "user", 500, -1);
    TLX_OK(&t, tl_reserve(&t, 101, "user", 1, 500, TLX_TTL));
    TL_CHECK_INVARIANTS(&t);
}

/* ---- Model limits. ---- */

static int copy_model_cb(void *ctx, const struct ledger_model_info *info)
{
    *(struct ledger_model_info *)ctx = *info;
    return 0;
}

/* The standard chain with `lim` for model "gpt-4o" on team. */
static void open_chain_with_team_model_limit(struct tl *t, const struct ledger_model_limits *lim)
{
    tlx_open_chain(t, NULL, NULL, NULL);
    REQUIRE(tl_run(t, tl_model_limit(t, "team", "gpt-4o", lim)).status == LEDGER_OK);
}

static void reserve_denies_model_budget_only_for_that_model(void)
{
    struct tl t;
    struct ledger_model_limits lim = {.set = LEDGER_LIM_BUDGET, .budget_micros = 100};
    open_chain_with_team_model_limit(&t, &lim);

    TLX_OK(&t, tlx_reserve_model(&t, 100, "user", 60, 0, "gpt-4o"));
    struct ledger_result r =
        TLX_RUN(&t, tlx_reserve_model(&t, 101, "user", 50, 0, "gpt-4o"), LEDGER_DENIED);
    TLX_CHECK_DENY(r, LEDGER_DENY_MODEL_BUDGET, "team", 40, 0);
    TLX_OK(&t, tlx_reserve_model(&t, 102, "user", 50, 0, "gpt-3.5"));
    TLX_OK(&t, tl_reserve(&t, 103, "user", 50, 0, TLX_TTL));

    struct ledger_model_info m;
    memset(&m, 0, sizeof(m));
    REQUIRE(ledger_model_list(t.l, "team", copy_model_cb, &m) == 0);
    CHECK_EQ_STR(m.model, "gpt-4o");
    CHECK_EQ_INT(m.held_micros, 60);
    CHECK_EQ_INT(m.inflight, 1);
    TLX_CHECK_CHAIN(&t, 0, 160, 3);
    TL_CHECK_INVARIANTS(&t);
}

/* With `lim` for model "gpt-4o" on team, a reserve of `first` tokens is granted and
 * the next of `second` tokens is denied on team with these values. */
static void check_model_rate_deny(const struct ledger_model_limits *lim, uint64_t first,
                                  uint64_t second, int reason, int64_t remaining, int64_t retry)
{
    struct tl t;
    open_chain_with_team_model_limit(&t, lim);

    TLX_OK(&t, tlx_reserve_model(&t, 100, "user", 1, first, "gpt-4o"));
    struct ledger_result r =
        TLX_RUN(&t, tlx_reserve_model(&t, 101, "user", 1, second, "gpt-4o"), LEDGER_DENIED);
    TLX_CHECK_DENY(r, reason, "team", remaining, retry);
    TL_CHECK_INVARIANTS(&t);
}

static void reserve_denies_model_rpm(void)
{
    struct ledger_model_limits lim = {.set = LEDGER_LIM_RPM, .rpm = 1};
    check_model_rate_deny(&lim, 0, 0, LEDGER_DENY_MODEL_RPM, 0, 60000);
}

static void reserve_denies_model_tpm(void)
{
    /* 20 tokens left; 10 over at 100 units/ms: 6000 ms. */
    struct ledger_model_limits lim = {.set = LEDGER_LIM_TPM, .tpm = 100};
    check_model_rate_deny(&lim, 80, 30, LEDGER_DENY_MODEL_TPM, 20, 6000);
}

/* ---- Deny order and atomicity. ---- */

static void reserve_checks_leaf_before_root(void)
{
    struct tl t;
    struct ledger_limits b = tlx_budget(10);
    tlx_open_chain(&t, &b, NULL, &b);

    struct ledger_result r =
        TLX_RUN(&t, tl_reserve(&t, 100, "user", 20, 0, TLX_TTL), LEDGER_DENIED);
    TLX_CHECK_DENY(r, LEDGER_DENY_BUDGET, "user", 10, 0);
}

static void reserve_checks_every_limit_of_leaf_before_parent(void)
{
    struct tl t;
    struct ledger_limits blocked = {.set = LEDGER_LIM_BLOCKED, .blocked = 1};
    struct ledger_limits tpm = tlx_tpm(100, 0);
    tlx_open_chain(&t, &blocked, NULL, &tpm);

    struct ledger_result r =
        TLX_RUN(&t, tl_reserve(&t, 100, "user", 1, 200, TLX_TTL), LEDGER_DENIED);
    TLX_CHECK_DENY(r, LEDGER_DENY_TPM, "user", 100, -1);
}

static void reserve_checks_blocked_before_budget_on_same_account(void)
{
    struct tl t;
    struct ledger_limits lim = tlx_budget(10);
    lim.set |= LEDGER_LIM_BLOCKED;
    lim.blocked = 1;
    tlx_open_chain_on(&t, "team", &lim);

    struct ledger_result r =
        TLX_RUN(&t, tl_reserve(&t, 100, "user", 20, 0, TLX_TTL), LEDGER_DENIED);
    TLX_CHECK_DENY(r, LEDGER_DENY_BLOCKED, "team", 0, 0);
}

static void reserve_denied_on_org_leaves_user_and_team_untouched(void)
{
    struct tl t;
    struct ledger_limits org = tlx_budget(50), team = tlx_tpm(100, 0), user = tlx_rpm(1, 0);
    tlx_open_chain(&t, &org, &team, &user);

    struct ledger_result r =
        TLX_RUN(&t, tl_reserve(&t, 100, "user", 100, 100, TLX_TTL), LEDGER_DENIED);
    TLX_CHECK_DENY(r, LEDGER_DENY_BUDGET, "org", 50, 0);
    TLX_CHECK_CHAIN(&t, 0, 0, 0);
    CHECK_EQ_INT(tl_account(&t, "user").rpm_available, 1);
    CHECK_EQ_INT(tl_account(&t, "team").tpm_available, 100);
    /* The one request of user's rpm and all of team's tokens are still there. */
    TLX_OK(&t, tl_reserve(&t, 101, "user", 50, 100, TLX_TTL));
    TLX_CHECK_CHAIN(&t, 0, 50, 1);
    TL_CHECK_INVARIANTS(&t);
}

/* ---- Settle. ---- */

static void settle_charges_actual_on_every_account(void)
{
    struct tl t;
    tlx_open_chain(&t, NULL, NULL, NULL);
    TLX_OK(&t, tl_reserve(&t, 100, "user", 100, 0, TLX_TTL));

    struct ledger_result r = TLX_OK(&t, tl_settle(&t, 100, 80, 0));
    CHECK_EQ_INT(r.charged_micros, 80);
    CHECK_EQ_INT(r.overrun_micros, 0);
    TLX_CHECK_CHAIN(&t, 80, 0, 0);
    CHECK_EQ_INT(tl_account(&t, "user").lifetime_spent_micros, 80);
    CHECK_EQ_INT(tl_account(&t, "org").lifetime_spent_micros, 80);
    CHECK_EQ_INT(tl_account(&t, "team").overrun_micros, 0);
    struct ledger_reservation_info info = tlx_resv(&t, 100);
    CHECK_EQ_INT(info.state, LEDGER_RESV_SETTLED);
    CHECK_EQ_INT(info.charged_micros, 80);
    TL_CHECK_INVARIANTS(&t);
}

static void settle_records_overrun_and_next_reserve_is_denied(void)
{
    struct tl t;
    struct ledger_limits lim = tlx_budget(100);
    tlx_open_chain_on(&t, "user", &lim);
    TLX_OK(&t, tl_reserve(&t, 100, "user", 100, 0, TLX_TTL));

    struct ledger_result r = TLX_OK(&t, tl_settle(&t, 100, 150, 0));
    CHECK_EQ_INT(r.charged_micros, 150);
    CHECK_EQ_INT(r.overrun_micros, 50);
    TLX_CHECK_CHAIN(&t, 150, 0, 0);
    CHECK_EQ_INT(tl_account(&t, "user").overrun_micros, 50);
    CHECK_EQ_INT(tl_account(&t, "team").overrun_micros, 50);
    CHECK_EQ_INT(tl_account(&t, "org").overrun_micros, 50);

    r = TLX_RUN(&t, tl_reserve(&t, 101, "user", 1, 0, TLX_TTL), LEDGER_DENIED);
    TLX_CHECK_DENY(r, LEDGER_DENY_BUDGET, "user", 0, 0);
    TL_CHECK_INVARIANTS(&t);
}

static void settle_turns_token_underestimate_into_tpm_debt(void)
{
    struct tl t;
    struct ledger_limits lim = tlx_tpm(1000, 0);
    tlx_open_chain_on(&t, "user", &lim);
    TLX_OK(&t, tl_reserve(&t, 100, "user", 1, 500, TLX_TTL));
    TLX_OK(&t, tl_settle(&t, 100, 1, 1500));
    TL_CHECK_INVARIANTS(&t);

    /* Level 1500 tokens in a 1000-token bucket; 100 more is 600 over: 36 000 ms. The
     * header says remaining is never negative. */
    struct ledger_result r =
        TLX_RUN(&t, tl_reserve(&t, 101, "user", 1, 100, TLX_TTL), LEDGER_DENIED);
    TLX_CHECK_DENY(r, LEDGER_DENY_TPM, "user", 0, 36000);
    /* 35 999 ms later the level is 54 001 000 units: 99 tokens fit, 1 ms to go. */
    t.now_ms = TLX_T0 + 35999;
    r = TLX_RUN(&t, tl_reserve(&t, 102, "user", 1, 100, TLX_TTL), LEDGER_DENIED);
    TLX_CHECK_DENY(r, LEDGER_DENY_TPM, "user", 99, 1);
    t.now_ms = TLX_T0 + 36000;
    TLX_OK(&t, tl_reserve(&t, 103, "user", 1, 100, TLX_TTL));
    TL_CHECK_INVARIANTS(&t);
}

static void settle_refunds_token_overestimate(void)
{
    struct tl t;
    struct ledger_limits lim = tlx_tpm(1000, 0);
    tlx_open_chain_on(&t, "user", &lim);
    TLX_OK(&t, tl_reserve(&t, 100, "user", 1, 800, TLX_TTL));
    TLX_OK(&t, tl_settle(&t, 100, 1, 200));

    CHECK_EQ_INT(tl_account(&t, "user").tpm_available, 800);
    TLX_OK(&t, tl_reserve(&t, 101, "user", 1, 800, TLX_TTL));
    struct ledger_result r = TLX_RUN(&t, tl_reserve(&t, 102, "user", 1, 1, TLX_TTL), LEDGER_DENIED);
    TLX_CHECK_DENY(r, LEDGER_DENY_TPM, "user", 0, 60);
    TL_CHECK_INVARIANTS(&t);
}

static void settle_token_refund_stops_at_empty_bucket(void)
{
    struct tl t;
    struct ledger_limits lim = tlx_tpm(1000, 0);
    tlx_open_chain_on(&t, "user", &lim);
    TLX_OK(&t, tl_reserve(&t, 100, "user", 1, 800, TLX_TTL));
    /* 30 s drain 500 tokens: 300 left; refunding 800 empties the bucket, no credit. */
    t.now_ms = TLX_T0 + 30000;
    TLX_OK(&t, tl_settle(&t, 100, 1, 0));

    CHECK_EQ_INT(tl_account(&t, "user").tpm_available, 1000);
    TLX_OK(&t, tl_reserve(&t, 101, "user", 1, 1000, TLX_TTL));
    struct ledger_result r = TLX_RUN(&t, tl_reserve(&t, 102, "user", 1, 1, TLX_TTL), LEDGER_DENIED);
    TLX_CHECK_DENY(r, LEDGER_DENY_TPM, "user", 0, 60);
    TL_CHECK_INVARIANTS(&t);
}

/* The standard chain with a DAY period on user, reservation 100 of 100 micros settled
 * at 80 by actor "gw-1"; `j` gets the whole journal. */
static void settle_in_day_period(struct tl *t, struct tlx_journal *j)
{
    struct ledger_limits day = {.set = LEDGER_LIM_PERIOD, .period_kind = LEDGER_PERIOD_DAY};
    tlx_open_chain_on(t, "user", &day);
    TLX_OK(t, tl_reserve(t, 100, "user", 100, 0, TLX_TTL));
    struct ledger_cmd c = tl_settle(t, 100, 80, 7);
    snprintf(c.actor, sizeof(c.actor), "gw-1");
    TLX_OK(t, c);
    tlx_journal(t, NULL, j);
}

static void settle_journals_one_charge_per_account(void)
{
    struct tl t;
    struct tlx_journal j;
    settle_in_day_period(&t, &j);

    CHECK_EQ_INT(tlx_journal_count(&j, LEDGER_J_CHARGE, NULL), 3);
    const char *chain[] = {"user", "team", "org"};
    for (int i = 0; i < 3; i++) {
        TLX_CHECK_ENTRY(&j, LEDGER_J_CHARGE, chain[i], 100, 80);
        const struct ledger_journal_entry *e = tlx_journal_find(&j, LEDGER_J_CHARGE, chain[i], 100);
        REQUIRE(e != NULL);
        CHECK_EQ_STR(e->actor, "gw-1");
        CHECK_EQ_INT(e->ts_ms, TLX_T0);
    }
    CHECK_EQ_INT(tlx_journal_find(&j, LEDGER_J_CHARGE, "user", 100)->period_start_ms,
                 TLX_T0 - TLX_T0 % TLX_DAY_MS);
    TL_CHECK_INVARIANTS(&t);
}

/* The invariant "spent = sum of the journal amounts whose period_start is the
 * account's current period start" must hold with the period start the API reports,
 * also for an account without a period (ledger.h, ledger_account_info). */
static void journal_period_start_is_the_accounts_period_start(void)
{
    struct tl t;
    struct tlx_journal j;
    settle_in_day_period(&t, &j);

    const char *chain[] = {"user", "team", "org"};
    for (int i = 0; i < 3; i++) {
        const struct ledger_journal_entry *e = tlx_journal_find(&j, LEDGER_J_CHARGE, chain[i], 100);
        REQUIRE(e != NULL);
        struct ledger_account_info a = tl_account(&t, chain[i]);
        if (e->period_start_ms != a.period_start_ms) {
            fprintf(stderr, "  %s: journal period_start %" PRId64 ", account %" PRId64 "\n",
                    chain[i], e->period_start_ms, a.period_start_ms);
        }
        CHECK_EQ_INT(e->period_start_ms, a.period_start_ms);
    }
}

/* Events are numbered 1, 2, ... in log order; the entries one event yields for the
 * accounts of its chain share its number (ledger.h: ledger_journal_entry.seq). */
static void journal_numbers_events_from_one_in_log_order(void)
{
    struct tl t;
    struct tlx_journal j;
    settle_in_day_period(&t, &j);

    REQUIRE(j.n == 7); /* 3 creates, 1 key add, 1 settle charging 3 accounts */
    const uint64_t want[7] = {1, 2, 3, 4, 5, 5, 5};
    for (size_t i = 0; i < j.n; i++) {
        CHECK_EQ_INT(j.e[i].seq, want[i]);
    }
}

/* ---- Void and extend. ---- */

static void void_releases_holds_and_refunds_tpm_but_not_rpm(void)
{
    struct tl t;
    struct ledger_limits lim = tlx_rpm(1, 0);
    lim.set |= LEDGER_LIM_TPM;
    lim.tpm = 1000;
    tlx_open_chain_on(&t, "user", &lim);
    TLX_OK(&t, tl_reserve(&t, 100, "user", 100, 600, TLX_TTL));

    struct ledger_result r = TLX_OK(&t, tl_void(&t, 100));
    CHECK_EQ_INT(r.charged_micros, 0);
    TLX_CHECK_CHAIN(&t, 0, 0, 0);
    CHECK_EQ_INT(tl_account(&t, "user").tpm_available, 1000);
    CHECK_EQ_INT(tl_account(&t, "user").rpm_available, 0);
    CHECK_EQ_INT(tlx_resv(&t, 100).state, LEDGER_RESV_VOIDED);

    struct tlx_journal j;
    tlx_journal(&t, NULL, &j);
    CHECK_EQ_INT(tlx_journal_count(&j, LEDGER_J_RELEASE, NULL), 3);
    CHECK_EQ_INT(tlx_journal_count(&j, LEDGER_J_CHARGE, NULL), 0);
    TLX_CHECK_ENTRY(&j, LEDGER_J_RELEASE, "user", 100, 0);
    TLX_CHECK_ENTRY(&j, LEDGER_J_RELEASE, "team", 100, 0);
    TLX_CHECK_ENTRY(&j, LEDGER_J_RELEASE, "org", 100, 0);

    r = TLX_RUN(&t, tl_reserve(&t, 101, "user", 100, 600, TLX_TTL), LEDGER_DENIED);
    TLX_CHECK_DENY(r, LEDGER_DENY_RPM, "user", 0, 60000);
    TL_CHECK_INVARIANTS(&t);
}

static void extend_pushes_expires_at_by_max_rule(void)
{
    struct tl t;
    tlx_open_chain(&t, NULL, NULL, NULL);
    CHECK_EQ_INT(TLX_OK(&t, tl_reserve(&t, 100, "user", 100, 0, 1000)).expires_at_ms,
                 TLX_T0 + 1000);

    CHECK_EQ_INT(TLX_OK(&t, tl_extend(&t, 100, 5000)).expires_at_ms, TLX_T0 + 5000);
    CHECK_EQ_INT(TLX_OK(&t, tl_extend(&t, 100, 100)).expires_at_ms, TLX_T0 + 5000);
    CHECK_EQ_INT(tlx_resv(&t, 100).expires_at_ms, TLX_T0 + 5000);

    TLX_CHECK_EXPIRES_AT(&t, 100, TLX_T0 + 5000);
    TL_CHECK_INVARIANTS(&t);
}

static void extend_of_resolved_reservation_is_eresolved(void)
{
    struct tl t;
    tlx_open_chain(&t, NULL, NULL, NULL);
    TLX_OK(&t, tl_reserve(&t, 100, "user", 100, 0, TLX_TTL));
    TLX_OK(&t, tl_settle(&t, 100, 100, 0));

    TLX_RUN(&t, tl_extend(&t, 100, 5000), -LEDGER_ERESOLVED);
    TLX_RUN(&t, tl_extend(&t, 101, 5000), -LEDGER_ENOTFOUND);
    TL_CHECK_INVARIANTS(&t);
}

/* ---- Soft budget. ---- */

static void reserve_flags_soft_budget_once_spent_plus_held_exceeds_it(void)
{
    struct tl t;
    struct ledger_limits lim = {.set = LEDGER_LIM_SOFT_BUDGET, .soft_budget_micros = 100};
    tlx_open_chain_on(&t, "team", &lim);

    CHECK_EQ_INT(TLX_OK(&t, tl_reserve(&t, 100, "user", 60, 0, TLX_TTL)).flags &
                     LEDGER_RESULT_SOFT_BUDGET,
                 0);
    CHECK_EQ_INT(TLX_OK(&t, tl_reserve(&t, 101, "user", 40, 0, TLX_TTL)).flags &
                     LEDGER_RESULT_SOFT_BUDGET,
                 0);
    CHECK_EQ_INT(TLX_OK(&t, tl_reserve(&t, 102, "user", 1, 0, TLX_TTL)).flags &
                     LEDGER_RESULT_SOFT_BUDGET,
                 LEDGER_RESULT_SOFT_BUDGET);
    TLX_CHECK_CHAIN(&t, 0, 101, 3);
    TL_CHECK_INVARIANTS(&t);
}

/* Reserve and settle `micros` on user at the test's clock. */
static void spend(struct tl *t, uint64_t id, int64_t micros)
{
    TLX_OK(t, tl_reserve(t, id, "user", micros, 0, TLX_TTL));
    TLX_OK(t, tl_settle(t, id, micros, 0));
}

static void soft_budget_is_journaled_once_per_period(void)
{
    struct tl t;
    struct ledger_limits lim = tlx_fixed_period(60000);
    lim.set |= LEDGER_LIM_SOFT_BUDGET;
    lim.soft_budget_micros = 100;
    tlx_open_chain_on(&t, "user", &lim);

    struct tlx_journal j;
    spend(&t, 100, 150);
    spend(&t, 101, 10);
    tlx_journal(&t, "user", &j);
    CHECK_EQ_INT(tlx_journal_count(&j, LEDGER_J_SOFT_BUDGET, "user"), 1);

    t.now_ms = TLX_T0 + 60000;
    spend(&t, 102, 150);
    tlx_journal(&t, "user", &j);
    CHECK_EQ_INT(tlx_journal_count(&j, LEDGER_J_SOFT_BUDGET, "user"), 2);
    int64_t starts[2] = {0, 0};
    for (size_t i = 0, k = 0; i < j.n && k < 2; i++) {
        if (j.e[i].kind == LEDGER_J_SOFT_BUDGET) {
            starts[k++] = j.e[i].period_start_ms;
        }
    }
    CHECK_EQ_INT(starts[0], TLX_T0);
    CHECK_EQ_INT(starts[1], TLX_T0 + 60000);
    TL_CHECK_INVARIANTS(&t);
}

/* ---- Queries. ---- */

static void reservation_list_and_get_show_open_reservations(void)
{
    struct tl t;
    tlx_open_chain(&t, NULL, NULL, NULL);
    struct ledger_cmd c = tl_reserve(&t, 100, "user", 100, 7, 3000);
    snprintf(c.u.reserve.model, sizeof(c.u.reserve.model), "gpt-4o");
    c.u.reserve.metadata_len = 3;
    memcpy(c.u.reserve.metadata, "abc", 3);
    TLX_OK(&t, c);
    TLX_OK(&t, tl_reserve(&t, 101, "user", 20, 0, 1000));
    TLX_OK(&t, tl_reserve(&t, 102, "team", 30, 0, 2000));

    struct tlx_resv_list l;
    tlx_resv_list(&t, NULL, &l);
    REQUIRE(l.n == 3);
    CHECK(tlx_id_is(l.r[0].request_id, 101));
    CHECK(tlx_id_is(l.r[1].request_id, 102));
    CHECK(tlx_id_is(l.r[2].request_id, 100));
    tlx_resv_list(&t, "user", &l);
    CHECK_EQ_INT(l.n, 2);
    tlx_resv_list(&t, "org", &l);
    CHECK_EQ_INT(l.n, 3);

    struct ledger_reservation_info info = tlx_resv(&t, 100);
    CHECK_EQ_INT(info.state, LEDGER_RESV_OPEN);
    CHECK_EQ_STR(info.account, "user");
    CHECK_EQ_STR(info.model, "gpt-4o");
    CHECK_EQ_INT(info.estimate_micros, 100);
    CHECK_EQ_INT(info.estimate_tokens, 7);
    CHECK_EQ_INT(info.created_ms, TLX_T0);
    CHECK_EQ_INT(info.expires_at_ms, TLX_T0 + 3000);
    CHECK_EQ_INT(info.charged_micros, 0);
    CHECK_EQ_INT(info.metadata_len, 3);
    CHECK(memcmp(info.metadata, "abc", 3) == 0);

    TLX_OK(&t, tl_settle(&t, 101, 20, 0));
    tlx_resv_list(&t, "user", &l);
    REQUIRE(l.n == 1);
    CHECK(tlx_id_is(l.r[0].request_id, 100));
    CHECK_EQ_INT(tlx_resv(&t, 101).state, LEDGER_RESV_SETTLED);

    uint8_t unknown[LEDGER_REQUEST_ID_SIZE];
    tl_id(unknown, 999);
    CHECK_EQ_INT(ledger_reservation_get(t.l, unknown, &info), -LEDGER_ENOTFOUND);
    TL_CHECK_INVARIANTS(&t);
}

int main(void)
{
    TEST_MAIN_BEGIN;
    TEST(reserve_grant_holds_on_every_account_of_chain);
    TEST(reserve_denies_unknown_key);
    TEST(reserve_denies_revoked_key);
    TEST(reserve_by_unknown_account_is_enotfound);
    TEST(reserve_denies_when_team_blocked);
    TEST(reserve_denies_from_org_expires_at);
    TEST(reserve_denies_when_team_parallel_slots_taken);
    TEST(reserve_denies_when_user_budget_spent);
    TEST(reserve_denies_when_team_budget_spent);
    TEST(reserve_denies_when_org_budget_spent);
    TEST(reserve_denies_rpm_with_exact_retry_after);
    TEST(reserve_denies_tpm_with_exact_remaining_and_retry_after);
    TEST(reserve_denies_tpm_forever_when_tokens_exceed_burst);
    TEST(reserve_denies_model_budget_only_for_that_model);
    TEST(reserve_denies_model_rpm);
    TEST(reserve_denies_model_tpm);
    TEST(reserve_checks_leaf_before_root);
    TEST(reserve_checks_every_limit_of_leaf_before_parent);
    TEST(reserve_checks_blocked_before_budget_on_same_account);
    TEST(reserve_denied_on_org_leaves_user_and_team_untouched);
    TEST(settle_charges_actual_on_every_account);
    TEST(settle_records_overrun_and_next_reserve_is_denied);
    TEST(settle_turns_token_underestimate_into_tpm_debt);
    TEST(settle_refunds_token_overestimate);
    TEST(settle_token_refund_stops_at_empty_bucket);
    TEST(settle_journals_one_charge_per_account);
    TEST(journal_period_start_is_the_accounts_period_start);
    TEST(journal_numbers_events_from_one_in_log_order);
    TEST(void_releases_holds_and_refunds_tpm_but_not_rpm);
    TEST(extend_pushes_expires_at_by_max_rule);
    TEST(extend_of_resolved_reservation_is_eresolved);
    TEST(reserve_flags_soft_budget_once_spent_plus_held_exceeds_it);
    TEST(soft_budget_is_journaled_once_per_period);
    TEST(reservation_list_and_get_show_open_reservations);
    TEST_MAIN_END;
}
