/*
 * ledger_expiry_test.c: time and expiry against docs/ledger.md ("Batches and time",
 * "Expiry", "Settle, void, extend"): expiry order at batch start, the charge and
 * release policies of the leaf, late settles and voids as corrections (dropped when
 * the period closed), a clock that never goes backwards, and stale batch indexes.
 */
#define _GNU_SOURCE /* GNU extensions, as test.h sets them */

#include "ledger_testlib_extra.h"

#define EXPIRY_TTL 1000LL

/* The standard chain with `user` limits (NULL: none), reservation 100 of 100 micros
 * and `tokens` tokens reserved at TLX_T0 for EXPIRY_TTL, then the clock moved to its
 * expiry. */
static void expire_one(struct tl *t, const struct ledger_limits *user, uint64_t tokens)
{
    tlx_open_chain(t, NULL, NULL, user);
    REQUIRE(tl_run(t, tl_reserve(t, 100, "user", 100, tokens, EXPIRY_TTL)).status == LEDGER_OK);
    tlx_tick_to(t, TLX_T0 + EXPIRY_TTL);
    REQUIRE(tlx_resv(t, 100).state == LEDGER_RESV_EXPIRED);
}

static struct ledger_limits release_policy(void)
{
    struct ledger_limits l = {.set = LEDGER_LIM_EXPIRY_POLICY,
                              .expiry_policy = LEDGER_EXPIRY_RELEASE};
    return l;
}

/* Run a late settle (or void when `actual` < 0) and check its answer. */
static void check_late(struct tl *t, int64_t actual, int64_t correction)
{
    struct ledger_cmd c = actual < 0 ? tl_void(t, 100) : tl_settle(t, 100, actual, 0);
    struct ledger_result r = TLX_OK(t, c);
    CHECK_EQ_INT(r.flags & LEDGER_RESULT_LATE, LEDGER_RESULT_LATE);
    CHECK_EQ_INT(r.charged_micros, correction);
    CHECK_EQ_INT(tlx_resv(t, 100).state, LEDGER_RESV_LATE_SETTLED);
}

/* ---- Expiry. ---- */

static void expiry_resolves_in_expires_at_then_request_id_order(void)
{
    struct tl t;
    tlx_open_chain(&t, NULL, NULL, NULL);
    TLX_OK(&t, tl_reserve(&t, 103, "user", 1, 0, 1000));
    TLX_OK(&t, tl_reserve(&t, 101, "user", 1, 0, 2000));
    TLX_OK(&t, tl_reserve(&t, 102, "user", 1, 0, 1000));
    tlx_tick_to(&t, TLX_T0 + 2000);

    struct tlx_journal j;
    tlx_journal(&t, "user", &j);
    static const uint64_t order[] = {102, 103, 101};
    size_t k = 0;
    for (size_t i = 0; i < j.n; i++) {
        if (j.e[i].kind != LEDGER_J_EXPIRE_CHARGE) {
            continue;
        }
        REQUIRE(k < 3);
        if (!tlx_id_is(j.e[i].request_id, order[k])) {
            fprintf(stderr, "  expiry %zu is not reservation %" PRIu64 "\n", k, order[k]);
        }
        CHECK(tlx_id_is(j.e[i].request_id, order[k]));
        CHECK_EQ_INT(j.e[i].ts_ms, TLX_T0 + 2000);
        k++;
    }
    CHECK_EQ_INT(k, 3);
    TLX_CHECK_CHAIN(&t, 3, 0, 0);
    TL_CHECK_INVARIANTS(&t);
}

static void expiry_runs_before_the_batch_commands(void)
{
    struct tl t;
    tlx_open_chain(&t, NULL, NULL, NULL);
    TLX_OK(&t, tl_reserve(&t, 100, "user", 100, 0, 1000));
    TLX_OK(&t, tl_reserve(&t, 101, "user", 100, 0, 1000));

    t.now_ms = TLX_T0 + 999;
    struct ledger_result r = TLX_OK(&t, tl_settle(&t, 101, 80, 0));
    CHECK_EQ_INT(r.flags & LEDGER_RESULT_LATE, 0);
    CHECK_EQ_INT(tlx_resv(&t, 101).state, LEDGER_RESV_SETTLED);
    /* At expires_at the reservation expires first; the settle in the batch is late. */
    t.now_ms = TLX_T0 + 1000;
    check_late(&t, 80, -20);
    TLX_CHECK_CHAIN(&t, 160, 0, 0);
    TL_CHECK_INVARIANTS(&t);
}

static void expiry_charge_policy_charges_estimate_on_every_account(void)
{
    struct tl t;
    expire_one(&t, NULL, 0);

    TLX_CHECK_CHAIN(&t, 100, 0, 0);
    CHECK_EQ_INT(tlx_resv(&t, 100).charged_micros, 100);
    struct tlx_journal j;
    tlx_journal(&t, NULL, &j);
    CHECK_EQ_INT(tlx_journal_count(&j, LEDGER_J_EXPIRE_CHARGE, NULL), 3);
    TLX_CHECK_ENTRY(&j, LEDGER_J_EXPIRE_CHARGE, "user", 100, 100);
    TLX_CHECK_ENTRY(&j, LEDGER_J_EXPIRE_CHARGE, "team", 100, 100);
    TLX_CHECK_ENTRY(&j, LEDGER_J_EXPIRE_CHARGE, "org", 100, 100);
    TL_CHECK_INVARIANTS(&t);
}

static void expiry_release_policy_releases_and_refunds_tpm(void)
{
    struct tl t;
    struct ledger_limits lim = release_policy();
    lim.set |= LEDGER_LIM_TPM;
    lim.tpm = 1000;
    expire_one(&t, &lim, 100);

    TLX_CHECK_CHAIN(&t, 0, 0, 0);
    CHECK_EQ_INT(tlx_resv(&t, 100).charged_micros, 0);
    CHECK_EQ_INT(tl_account(&t, "user").tpm_available, 1000);
    struct tlx_journal j;
    tlx_journal(&t, NULL, &j);
    CHECK_EQ_INT(tlx_journal_count(&j, LEDGER_J_EXPIRE_RELEASE, NULL), 3);
    CHECK_EQ_INT(tlx_journal_count(&j, LEDGER_J_EXPIRE_CHARGE, NULL), 0);
    TLX_CHECK_ENTRY(&j, LEDGER_J_EXPIRE_RELEASE, "user", 100, 0);
    TLX_CHECK_ENTRY(&j, LEDGER_J_EXPIRE_RELEASE, "team", 100, 0);
    TLX_CHECK_ENTRY(&j, LEDGER_J_EXPIRE_RELEASE, "org", 100, 0);
    TL_CHECK_INVARIANTS(&t);
}

static void expiry_policy_is_the_leaf_accounts(void)
{
    struct tl t;
    struct ledger_limits release = release_policy();
    tlx_open_chain_on(&t, "team", &release);
    TLX_OK(&t, tl_reserve(&t, 100, "user", 100, 0, 1000));
    TLX_OK(&t, tl_reserve(&t, 101, "team", 10, 0, 1000));
    tlx_tick_to(&t, TLX_T0 + 1000);

    /* 100's leaf (user) charges, also on team; 101's leaf (team) releases, also on org. */
    TLX_CHECK_CHAIN(&t, 100, 0, 0);
    struct tlx_journal j;
    tlx_journal(&t, NULL, &j);
    TLX_CHECK_ENTRY(&j, LEDGER_J_EXPIRE_CHARGE, "team", 100, 100);
    TLX_CHECK_ENTRY(&j, LEDGER_J_EXPIRE_RELEASE, "org", 101, 0);
    TL_CHECK_INVARIANTS(&t);
}

static void expired_reservation_frees_its_parallel_slot(void)
{
    struct tl t;
    struct ledger_limits lim = {.set = LEDGER_LIM_PARALLEL, .max_parallel = 1};
    tlx_open_chain_on(&t, "user", &lim);
    TLX_OK(&t, tl_reserve(&t, 100, "user", 1, 0, 1000));
    struct ledger_result r = TLX_RUN(&t, tl_reserve(&t, 101, "user", 1, 0, 1000), LEDGER_DENIED);
    TLX_CHECK_DENY(r, LEDGER_DENY_PARALLEL, "user", 0, 0);

    t.now_ms = TLX_T0 + 1000;
    TLX_OK(&t, tl_reserve(&t, 102, "user", 1, 0, 1000));
    TLX_CHECK_CHAIN(&t, 1, 1, 1);
    TL_CHECK_INVARIANTS(&t);
}

/* ---- Late settle and void. ---- */

static void late_settle_charges_correction_above_estimate(void)
{
    struct tl t;
    expire_one(&t, NULL, 0);

    check_late(&t, 130, 30);
    TLX_CHECK_CHAIN(&t, 130, 0, 0);
    CHECK_EQ_INT(tlx_resv(&t, 100).charged_micros, 130);
    struct tlx_journal j;
    tlx_journal(&t, NULL, &j);
    TLX_CHECK_ENTRY(&j, LEDGER_J_CORRECTION, "user", 100, 30);
    TLX_CHECK_ENTRY(&j, LEDGER_J_CORRECTION, "team", 100, 30);
    TLX_CHECK_ENTRY(&j, LEDGER_J_CORRECTION, "org", 100, 30);
    TL_CHECK_INVARIANTS(&t);
}

static void late_settle_refunds_correction_below_estimate(void)
{
    struct tl t;
    expire_one(&t, NULL, 0);

    check_late(&t, 40, -60);
    TLX_CHECK_CHAIN(&t, 40, 0, 0);
    CHECK_EQ_INT(tlx_resv(&t, 100).charged_micros, 40);
    struct tlx_journal j;
    tlx_journal(&t, NULL, &j);
    TLX_CHECK_ENTRY(&j, LEDGER_J_CORRECTION, "user", 100, -60);
    TLX_CHECK_ENTRY(&j, LEDGER_J_CORRECTION, "org", 100, -60);
    TL_CHECK_INVARIANTS(&t);
}

static void late_settle_replay_returns_stored_answer(void)
{
    struct tl t;
    expire_one(&t, NULL, 0);
    check_late(&t, 40, -60);

    struct ledger_result r = TLX_OK(&t, tl_settle(&t, 100, 40, 0));
    CHECK_EQ_INT(r.flags & (LEDGER_RESULT_REPLAYED | LEDGER_RESULT_LATE),
                 LEDGER_RESULT_REPLAYED | LEDGER_RESULT_LATE);
    CHECK_EQ_INT(r.charged_micros, -60);
    TLX_RUN(&t, tl_settle(&t, 100, 50, 0), -LEDGER_ECONFLICT);
    TLX_RUN(&t, tl_void(&t, 100), -LEDGER_ERESOLVED);
    TLX_CHECK_CHAIN(&t, 40, 0, 0);
    struct tlx_journal j;
    tlx_journal(&t, NULL, &j);
    CHECK_EQ_INT(tlx_journal_count(&j, LEDGER_J_CORRECTION, NULL), 3);
    TL_CHECK_INVARIANTS(&t);
}

static void late_void_refunds_the_expiry_charge(void)
{
    struct tl t;
    expire_one(&t, NULL, 0);

    check_late(&t, -1, -100);
    TLX_CHECK_CHAIN(&t, 0, 0, 0);
    struct tlx_journal j;
    tlx_journal(&t, NULL, &j);
    TLX_CHECK_ENTRY(&j, LEDGER_J_CORRECTION, "team", 100, -100);
    TL_CHECK_INVARIANTS(&t);
}

static void late_settle_after_release_expiry_charges_actual(void)
{
    struct tl t;
    struct ledger_limits lim = release_policy();
    expire_one(&t, &lim, 0);

    check_late(&t, 70, 70);
    TLX_CHECK_CHAIN(&t, 70, 0, 0);
    TL_CHECK_INVARIANTS(&t);
}

static void late_settle_makes_no_tpm_correction(void)
{
    struct tl t;
    struct ledger_limits lim = tlx_tpm(1000, 0);
    expire_one(&t, &lim, 100);
    /* 100 tokens taken at T0, 1000 ms at 1000 units/ms drained 16.67 of them. */
    CHECK_EQ_INT(tl_account(&t, "user").tpm_available, 916);

    struct ledger_result r = TLX_OK(&t, tl_settle(&t, 100, 100, 900));
    CHECK_EQ_INT(r.flags & LEDGER_RESULT_LATE, LEDGER_RESULT_LATE);
    CHECK_EQ_INT(r.charged_micros, 0);
    CHECK_EQ_INT(tl_account(&t, "user").tpm_available, 916);
    TL_CHECK_INVARIANTS(&t);
}

/* expire_one() with a 60 s fixed period on user, then the clock moved into the next
 * period. */
static void expire_then_roll_user_period(struct tl *t)
{
    struct ledger_limits lim = tlx_fixed_period(60000);
    expire_one(t, &lim, 0);
    TLX_CHECK_ACCOUNT(t, "user", 100, 0, 0);
    t->now_ms = TLX_T0 + 60000;
}

static void late_refund_is_dropped_once_the_period_rolled_over(void)
{
    struct tl t;
    expire_then_roll_user_period(&t);

    check_late(&t, 40, -60);
    TLX_CHECK_ACCOUNT(&t, "user", 0, 0, 0);
    TLX_CHECK_ACCOUNT(&t, "team", 40, 0, 0);
    TLX_CHECK_ACCOUNT(&t, "org", 40, 0, 0);
    struct tlx_journal j;
    tlx_journal(&t, NULL, &j);
    TLX_CHECK_ENTRY(&j, LEDGER_J_CORRECTION, "user", 100, 0);
    TLX_CHECK_ENTRY(&j, LEDGER_J_CORRECTION, "team", 100, -60);
    TL_CHECK_INVARIANTS(&t);
}

static void late_charge_counts_in_the_current_period(void)
{
    struct tl t;
    expire_then_roll_user_period(&t);

    check_late(&t, 130, 30);
    TLX_CHECK_ACCOUNT(&t, "user", 30, 0, 0);
    TLX_CHECK_ACCOUNT(&t, "team", 130, 0, 0);
    struct tlx_journal j;
    tlx_journal(&t, NULL, &j);
    TLX_CHECK_ENTRY(&j, LEDGER_J_CORRECTION, "user", 100, 30);
    const struct ledger_journal_entry *e = tlx_journal_find(&j, LEDGER_J_CORRECTION, "user", 100);
    REQUIRE(e != NULL);
    CHECK_EQ_INT(e->period_start_ms, TLX_T0 + 60000);
    TL_CHECK_INVARIANTS(&t);
}

static void late_settle_after_retention_is_enotfound(void)
{
    struct tl t;
    tlx_open_chain(&t, NULL, NULL, NULL);
    TLX_OK(&t, tl_config(&t, LEDGER_RETENTION_MIN_MS));
    TLX_OK(&t, tl_reserve(&t, 100, "user", 100, 0, EXPIRY_TTL));
    tlx_tick_to(&t, TLX_T0 + EXPIRY_TTL);

    /* Expired (resolved) at T0 + EXPIRY_TTL, retained for 1 h. */
    t.now_ms = TLX_T0 + EXPIRY_TTL + LEDGER_RETENTION_MIN_MS;
    TLX_RUN(&t, tl_settle(&t, 100, 40, 0), -LEDGER_ENOTFOUND);
    TLX_CHECK_CHAIN(&t, 100, 0, 0);
    TL_CHECK_INVARIANTS(&t);
}

/* ---- Clock and indexes. ---- */

static void batch_with_older_stamp_uses_the_ledger_clock(void)
{
    struct tl t;
    tlx_open_chain(&t, NULL, NULL, NULL);
    tlx_tick_to(&t, TLX_T0 + 5000);

    t.now_ms = TLX_T0 + 1000;
    struct ledger_result r = TLX_OK(&t, tl_reserve(&t, 100, "user", 100, 0, 1000));
    CHECK_EQ_INT(r.expires_at_ms, TLX_T0 + 6000);
    CHECK_EQ_INT(ledger_now_ms(t.l), TLX_T0 + 5000);
    CHECK_EQ_INT(tlx_resv(&t, 100).created_ms, TLX_T0 + 5000);

    TLX_CHECK_EXPIRES_AT(&t, 100, TLX_T0 + 6000);
    TL_CHECK_INVARIANTS(&t);
}

static void batch_at_index_not_after_applied_is_estale(void)
{
    struct tl t;
    tlx_open_chain(&t, NULL, NULL, NULL);
    uint64_t applied = ledger_applied_index(t.l);
    REQUIRE(applied == t.index);
    struct ledger_cmd c = tl_reserve(&t, 100, "user", 100, 0, TLX_TTL);
    void *buf = NULL;
    size_t len = 0;
    REQUIRE(ledger_batch_encode(TLX_T0 + 1000, &c, 1, &buf, &len) == 0);
    struct ledger_result res[1];
    size_t n = 0;

    CHECK_EQ_INT(ledger_apply_batch(t.l, applied, buf, len, res, &n), -LEDGER_ESTALE);
    CHECK_EQ_INT(ledger_apply_batch(t.l, applied - 1, buf, len, res, &n), -LEDGER_ESTALE);
    free(buf);
    CHECK_EQ_INT(ledger_applied_index(t.l), applied);
    CHECK_EQ_INT(ledger_now_ms(t.l), TLX_T0);
    TLX_CHECK_CHAIN(&t, 0, 0, 0);
    /* The skipped reserve was not applied: the same id is new at the next index. */
    struct ledger_result r = TLX_OK(&t, c);
    CHECK_EQ_INT(r.flags & LEDGER_RESULT_REPLAYED, 0);
    TL_CHECK_INVARIANTS(&t);
}

int main(void)
{
    TEST_MAIN_BEGIN;
    TEST(expiry_resolves_in_expires_at_then_request_id_order);
    TEST(expiry_runs_before_the_batch_commands);
    TEST(expiry_charge_policy_charges_estimate_on_every_account);
    TEST(expiry_release_policy_releases_and_refunds_tpm);
    TEST(expiry_policy_is_the_leaf_accounts);
    TEST(expired_reservation_frees_its_parallel_slot);
    TEST(late_settle_charges_correction_above_estimate);
    TEST(late_settle_refunds_correction_below_estimate);
    TEST(late_settle_replay_returns_stored_answer);
    TEST(late_void_refunds_the_expiry_charge);
    TEST(late_settle_after_release_expiry_charges_actual);
    TEST(late_settle_makes_no_tpm_correction);
    TEST(late_refund_is_dropped_once_the_period_rolled_over);
    TEST(late_charge_counts_in_the_current_period);
    TEST(late_settle_after_retention_is_enotfound);
    TEST(batch_with_older_stamp_uses_the_ledger_clock);
    TEST(batch_at_index_not_after_applied_is_estale);
    TEST_MAIN_END;
}
