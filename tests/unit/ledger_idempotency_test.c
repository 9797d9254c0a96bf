/*
 * ledger_idempotency_test.c: stored answers against docs/ledger.md ("Idempotency",
 * "Settle, void, extend"): replays answer from the store and change nothing, a reused
 * id with other arguments is ECONFLICT, answers survive a restart and are forgotten
 * after the retention window, and a reservation resolves at most once.
 */
#define _GNU_SOURCE /* GNU extensions, as test.h sets them */

#include "ledger_testlib_extra.h"

static int replayed(const struct ledger_result *r)
{
    return (r->flags & LEDGER_RESULT_REPLAYED) != 0;
}

/* The standard chain with no limits and reservation 100 of 100 micros open on user. */
static void open_with_reservation(struct tl *t)
{
    tlx_open_chain(t, NULL, NULL, NULL);
    REQUIRE(tl_run(t, tl_reserve(t, 100, "user", 100, 0, TLX_TTL)).status == LEDGER_OK);
}

/* ---- Reserve. ---- */

static void reserve_replay_returns_stored_grant_without_holding_twice(void)
{
    struct tl t;
    tlx_open_chain(&t, NULL, NULL, NULL);
    struct ledger_cmd c = tl_reserve(&t, 100, "user", 100, 0, TLX_TTL);
    struct ledger_result first = TLX_OK(&t, c);
    CHECK(!replayed(&first));

    t.now_ms = TLX_T0 + 1000;
    struct ledger_result again = TLX_OK(&t, c);
    CHECK(replayed(&again));
    CHECK_EQ_INT(again.expires_at_ms, TLX_T0 + TLX_TTL);
    TLX_CHECK_CHAIN(&t, 0, 100, 1);
    TL_CHECK_INVARIANTS(&t);
}

static void reserve_replay_of_denial_stays_denied_after_budget_frees(void)
{
    struct tl t;
    struct ledger_limits lim = tlx_budget(100);
    tlx_open_chain_on(&t, "user", &lim);
    TLX_OK(&t, tl_reserve(&t, 100, "user", 100, 0, TLX_TTL));
    struct ledger_cmd c = tl_reserve(&t, 101, "user", 50, 0, TLX_TTL);
    struct ledger_result r = TLX_RUN(&t, c, LEDGER_DENIED);
    TLX_CHECK_DENY(r, LEDGER_DENY_BUDGET, "user", 0, 0);
    TLX_OK(&t, tl_void(&t, 100));

    r = TLX_RUN(&t, c, LEDGER_DENIED);
    TLX_CHECK_DENY(r, LEDGER_DENY_BUDGET, "user", 0, 0);
    CHECK(replayed(&r));
    TLX_CHECK_CHAIN(&t, 0, 0, 0);
    TLX_OK(&t, tl_reserve(&t, 102, "user", 50, 0, TLX_TTL));
    TL_CHECK_INVARIANTS(&t);
}

static void reserve_with_same_id_and_other_estimate_is_econflict(void)
{
    struct tl t;
    tlx_open_chain(&t, NULL, NULL, NULL);
    struct ledger_cmd c = tl_reserve(&t, 100, "user", 100, 0, TLX_TTL);
    TLX_OK(&t, c);

    struct ledger_cmd other = tl_reserve(&t, 100, "user", 200, 0, TLX_TTL);
    struct ledger_result r = TLX_RUN(&t, other, -LEDGER_ECONFLICT);
    CHECK(!replayed(&r));
    /* Nothing was stored: the conflict is found again, the original still replays. */
    r = TLX_RUN(&t, other, -LEDGER_ECONFLICT);
    CHECK(!replayed(&r));
    r = TLX_OK(&t, c);
    CHECK(replayed(&r));
    TLX_CHECK_CHAIN(&t, 0, 100, 1);
    TL_CHECK_INVARIANTS(&t);
}

static void error_answers_are_stored_and_replayed(void)
{
    struct tl t;
    tlx_open_chain(&t, NULL, NULL, NULL);
    struct ledger_cmd c = tl_reserve(&t, 100, "user", -1, 0, TLX_TTL);

    struct ledger_result r = TLX_RUN(&t, c, -LEDGER_EINVAL);
    CHECK(!replayed(&r));
    r = TLX_RUN(&t, c, -LEDGER_EINVAL);
    CHECK(replayed(&r));
    TLX_CHECK_CHAIN(&t, 0, 0, 0);
    TL_CHECK_INVARIANTS(&t);
}

/* ---- Settle and void. ---- */

static void settle_replay_returns_stored_answer_and_charges_once(void)
{
    struct tl t;
    open_with_reservation(&t);
    struct ledger_cmd c = tl_settle(&t, 100, 80, 0);
    TLX_OK(&t, c);

    struct ledger_result r = TLX_OK(&t, c);
    CHECK(replayed(&r));
    CHECK_EQ_INT(r.charged_micros, 80);
    TLX_CHECK_CHAIN(&t, 80, 0, 0);
    struct tlx_journal j;
    tlx_journal(&t, NULL, &j);
    CHECK_EQ_INT(tlx_journal_count(&j, LEDGER_J_CHARGE, NULL), 3);
    TL_CHECK_INVARIANTS(&t);
}

static void settle_with_other_actual_is_econflict(void)
{
    struct tl t;
    open_with_reservation(&t);
    TLX_OK(&t, tl_settle(&t, 100, 80, 0));

    TLX_RUN(&t, tl_settle(&t, 100, 90, 0), -LEDGER_ECONFLICT);
    TLX_RUN(&t, tl_settle(&t, 100, 80, 1), -LEDGER_ECONFLICT);
    TLX_CHECK_CHAIN(&t, 80, 0, 0);
    CHECK_EQ_INT(tlx_resv(&t, 100).charged_micros, 80);
    TL_CHECK_INVARIANTS(&t);
}

/* ERESOLVED follows from the record, so it is the answer every time (not stored). */
static void void_after_settle_is_eresolved_every_time(void)
{
    struct tl t;
    open_with_reservation(&t);
    TLX_OK(&t, tl_settle(&t, 100, 80, 0));
    struct ledger_cmd v = tl_void(&t, 100);

    struct ledger_result r = TLX_RUN(&t, v, -LEDGER_ERESOLVED);
    CHECK(!replayed(&r));
    r = TLX_RUN(&t, v, -LEDGER_ERESOLVED);
    CHECK(!replayed(&r));
    TLX_CHECK_CHAIN(&t, 80, 0, 0);
    CHECK_EQ_INT(tlx_resv(&t, 100).state, LEDGER_RESV_SETTLED);
    TL_CHECK_INVARIANTS(&t);
}

static void settle_after_void_is_eresolved(void)
{
    struct tl t;
    open_with_reservation(&t);
    TLX_OK(&t, tl_void(&t, 100));

    TLX_RUN(&t, tl_settle(&t, 100, 80, 0), -LEDGER_ERESOLVED);
    TLX_CHECK_CHAIN(&t, 0, 0, 0);
    CHECK_EQ_INT(tlx_resv(&t, 100).state, LEDGER_RESV_VOIDED);
    TL_CHECK_INVARIANTS(&t);
}

/* ENOTFOUND is not stored: a settle retried after its reserve finally landed settles. */
static void settle_of_unknown_id_is_enotfound_until_reserved(void)
{
    struct tl t;
    tlx_open_chain(&t, NULL, NULL, NULL);
    struct ledger_cmd s = tl_settle(&t, 100, 80, 0);
    TLX_RUN(&t, s, -LEDGER_ENOTFOUND);

    TLX_OK(&t, tl_reserve(&t, 100, "user", 100, 0, TLX_TTL));
    struct ledger_result r = TLX_OK(&t, s);
    CHECK(!replayed(&r));
    CHECK_EQ_INT(r.charged_micros, 80);
    TLX_CHECK_CHAIN(&t, 80, 0, 0);
    TL_CHECK_INVARIANTS(&t);
}

static void reservation_resolves_at_most_once(void)
{
    struct tl t;
    tlx_open_chain(&t, NULL, NULL, NULL);
    TLX_OK(&t, tl_reserve(&t, 100, "user", 100, 0, 1000));
    TLX_OK(&t, tl_void(&t, 100));
    TLX_RUN(&t, tl_settle(&t, 100, 100, 0), -LEDGER_ERESOLVED);
    tlx_tick_to(&t, TLX_T0 + 2000);

    CHECK_EQ_INT(tlx_resv(&t, 100).state, LEDGER_RESV_VOIDED);
    TLX_CHECK_CHAIN(&t, 0, 0, 0);
    struct tlx_journal j;
    tlx_journal(&t, NULL, &j);
    CHECK_EQ_INT(tlx_journal_count(&j, LEDGER_J_RELEASE, NULL), 3);
    CHECK_EQ_INT(tlx_journal_count(&j, LEDGER_J_CHARGE, NULL), 0);
    CHECK_EQ_INT(tlx_journal_count(&j, LEDGER_J_EXPIRE_CHARGE, NULL), 0);
    CHECK_EQ_INT(tlx_journal_count(&j, LEDGER_J_EXPIRE_RELEASE, NULL), 0);
    TL_CHECK_INVARIANTS(&t);
}

/* ---- Batches, restarts, retention. ---- */

static void replay_within_one_batch_is_answered_from_the_first(void)
{
    struct tl t;
    tlx_open_chain(&t, NULL, NULL, NULL);
    struct ledger_cmd cmds[4];
    cmds[0] = tl_reserve(&t, 100, "user", 100, 0, TLX_TTL);
    cmds[1] = cmds[0];
    cmds[2] = tl_settle(&t, 100, 80, 0);
    cmds[3] = cmds[2];
    struct ledger_result res[4];
    size_t n = 0;

    REQUIRE(tl_apply(&t, cmds, 4, res, &n) == 0);
    REQUIRE(n == 4);
    for (size_t i = 0; i < 4; i++) {
        CHECK_EQ_INT(res[i].status, LEDGER_OK);
        CHECK_EQ_INT(replayed(&res[i]), i % 2);
    }
    CHECK_EQ_INT(res[1].expires_at_ms, res[0].expires_at_ms);
    CHECK_EQ_INT(res[3].charged_micros, 80);
    TLX_CHECK_CHAIN(&t, 80, 0, 0);
    TL_CHECK_INVARIANTS(&t);
}

static void replay_after_restart_returns_stored_answer(void)
{
    struct tl t;
    tlx_open_chain(&t, NULL, NULL, NULL);
    struct ledger_cmd c = tl_reserve(&t, 100, "user", 100, 0, TLX_TTL);
    TLX_OK(&t, c);

    tlx_reopen(&t);
    CHECK_EQ_INT(ledger_applied_index(t.l), t.index);
    CHECK_EQ_INT(ledger_now_ms(t.l), TLX_T0);
    struct ledger_result r = TLX_OK(&t, c);
    CHECK(replayed(&r));
    CHECK_EQ_INT(r.expires_at_ms, TLX_T0 + TLX_TTL);
    TLX_CHECK_CHAIN(&t, 0, 100, 1);
    TL_CHECK_INVARIANTS(&t);
}

static void answers_are_forgotten_after_retention(void)
{
    struct tl t;
    struct ledger_limits lim = tlx_budget(100);
    tlx_open_chain_on(&t, "user", &lim);
    TLX_OK(&t, tl_config(&t, LEDGER_RETENTION_MIN_MS));
    TLX_RUN(&t, tl_reserve(&t, 100, "user", 200, 0, TLX_TTL), LEDGER_DENIED);

    t.now_ms = TLX_T0 + LEDGER_RETENTION_MIN_MS - 1;
    TLX_RUN(&t, tl_reserve(&t, 100, "user", 50, 0, TLX_TTL), -LEDGER_ECONFLICT);
    t.now_ms = TLX_T0 + LEDGER_RETENTION_MIN_MS;
    struct ledger_result r = TLX_OK(&t, tl_reserve(&t, 100, "user", 50, 0, TLX_TTL));
    CHECK(!replayed(&r));
    TLX_CHECK_CHAIN(&t, 0, 50, 1);
    TL_CHECK_INVARIANTS(&t);
}

static void resolved_reservation_is_kept_for_retention_after_resolving(void)
{
    struct tl t;
    tlx_open_chain(&t, NULL, NULL, NULL);
    TLX_OK(&t, tl_config(&t, LEDGER_RETENTION_MIN_MS));
    struct ledger_cmd c = tl_reserve(&t, 100, "user", 100, 0, 200);
    TLX_OK(&t, c);
    t.now_ms = TLX_T0 + 100;
    TLX_OK(&t, tl_settle(&t, 100, 100, 0));

    /* Expires at T0 + 200, resolved at T0 + 100: kept until T0 + 100 + retention. */
    tlx_tick_to(&t, TLX_T0 + 100 + LEDGER_RETENTION_MIN_MS - 1);
    CHECK_EQ_INT(tlx_resv(&t, 100).state, LEDGER_RESV_SETTLED);
    tlx_tick_to(&t, TLX_T0 + 100 + LEDGER_RETENTION_MIN_MS);
    uint8_t id[LEDGER_REQUEST_ID_SIZE];
    struct ledger_reservation_info info;
    tl_id(id, 100);
    CHECK_EQ_INT(ledger_reservation_get(t.l, id, &info), -LEDGER_ENOTFOUND);

    struct ledger_result r = TLX_OK(&t, c);
    CHECK(!replayed(&r));
    TLX_CHECK_CHAIN(&t, 100, 100, 1);
    TL_CHECK_INVARIANTS(&t);
}

/* Retention below 1 h is refused (a retried id could be granted twice once its answer is
 * gone) and changes nothing; a ledger opened with a lower minimum accepts it. */
static void retention_below_one_hour_is_refused(void)
{
    struct tl t;
    tlx_open_chain(&t, NULL, NULL, NULL);
    TLX_RUN(&t, tl_config(&t, LEDGER_RETENTION_MIN_MS - 1), -LEDGER_EINVAL);
    TLX_RUN(&t, tl_config(&t, 1000), -LEDGER_EINVAL);
    /* The default retention (24 h) still holds: an answer of 2 h ago is replayed. */
    TLX_OK(&t, tl_reserve(&t, 100, "user", 100, 0, 200));
    t.now_ms = TLX_T0 + 2 * LEDGER_RETENTION_MIN_MS;
    struct ledger_result r = TLX_OK(&t, tl_reserve(&t, 100, "user", 100, 0, 200));
    CHECK(replayed(&r));
    TLX_OK(&t, tl_config(&t, LEDGER_RETENTION_MIN_MS));

    struct tl low;
    struct ledger_options o = {.retention_min_ms = 1};
    tl_open_opts(&low, TLX_T0, &o);
    TLX_OK(&low, tl_config(&low, 1000));
    TL_CHECK_INVARIANTS(&t);
}

int main(void)
{
    TEST_MAIN_BEGIN;
    TEST(reserve_replay_returns_stored_grant_without_holding_twice);
    TEST(reserve_replay_of_denial_stays_denied_after_budget_frees);
    TEST(reserve_with_same_id_and_other_estimate_is_econflict);
    TEST(error_answers_are_stored_and_replayed);
    TEST(settle_replay_returns_stored_answer_and_charges_once);
    TEST(settle_with_other_actual_is_econflict);
    TEST(void_after_settle_is_eresolved_every_time);
    TEST(settle_after_void_is_eresolved);
    TEST(settle_of_unknown_id_is_enotfound_until_reserved);
    TEST(reservation_resolves_at_most_once);
    TEST(replay_within_one_batch_is_answered_from_the_first);
    TEST(replay_after_restart_returns_stored_answer);
    TEST(answers_are_forgotten_after_retention);
    TEST(retention_below_one_hour_is_refused);
    TEST(resolved_reservation_is_kept_for_retention_after_resolving);
    TEST_MAIN_END;
}
