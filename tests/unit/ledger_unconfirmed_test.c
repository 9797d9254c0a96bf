/*
 * ledger_unconfirmed_test.c: unconfirmed reservations against docs/ledger.md
 * ("Unconfirmed reservations"): a reserve committed by a new leader's TERM_START without
 * anyone knowing whether it was answered is released at expiry, never charged, unless a
 * settle, an extend or a replay of the reserve from outside the range confirmed it.
 */
#define _GNU_SOURCE /* GNU extensions, as test.h sets them */

#include "ledger_testlib_extra.h"

#define TTL_MS 1000LL

/* A TERM_START naming `commit_index` as what the new leader knew committed. */
static struct ledger_result term_start(struct tl *t, uint64_t commit_index)
{
    struct ledger_cmd c;
    memset(&c, 0, sizeof(c));
    c.type = LEDGER_CMD_TERM_START;
    snprintf(c.actor, sizeof(c.actor), "raft");
    c.u.term_start.commit_index = commit_index;
    return tl_run(t, c);
}

/* The standard chain; reservation 100 of 100 micros granted from an entry the TERM_START
 * that follows leaves unconfirmed. */
static void reserve_unconfirmed(struct tl *t)
{
    tlx_open_chain(t, NULL, NULL, NULL);
    uint64_t known_committed = t->index;
    REQUIRE(tl_run(t, tl_reserve(t, 100, "user", 100, 0, TTL_MS)).status == LEDGER_OK);
    REQUIRE(term_start(t, known_committed).status == LEDGER_OK);
    TLX_CHECK_CHAIN(t, 0, 100, 1);
}

static void unconfirmed_then_expired_is_released(void)
{
    struct tl t;
    reserve_unconfirmed(&t);
    tlx_tick_to(&t, TLX_T0 + TTL_MS);
    CHECK_EQ_INT(tlx_resv(&t, 100).state, LEDGER_RESV_EXPIRED);
    TLX_CHECK_CHAIN(&t, 0, 0, 0);
    struct tlx_journal j;
    tlx_journal(&t, "user", &j);
    CHECK_EQ_INT(tlx_journal_count(&j, LEDGER_J_EXPIRE_CHARGE, NULL), 0);
    TLX_CHECK_ENTRY(&j, LEDGER_J_EXPIRE_RELEASE, "user", 100, 0);
    TL_CHECK_INVARIANTS(&t);
}

static void answered_reserve_is_still_charged_at_expiry(void)
{
    struct tl t;
    tlx_open_chain(&t, NULL, NULL, NULL);
    REQUIRE(tl_run(&t, tl_reserve(&t, 100, "user", 100, 0, TTL_MS)).status == LEDGER_OK);
    /* The new leader knew the reserve committed: nothing ambiguous. */
    REQUIRE(term_start(&t, t.index).status == LEDGER_OK);
    tlx_tick_to(&t, TLX_T0 + TTL_MS);
    TLX_CHECK_CHAIN(&t, 100, 0, 0);
    struct tlx_journal j;
    tlx_journal(&t, "user", &j);
    TLX_CHECK_ENTRY(&j, LEDGER_J_EXPIRE_CHARGE, "user", 100, 100);
    TL_CHECK_INVARIANTS(&t);
}

static void unconfirmed_then_settled_is_charged_normally(void)
{
    struct tl t;
    reserve_unconfirmed(&t);
    CHECK_EQ_INT(TLX_OK(&t, tl_settle(&t, 100, 70, 0)).charged_micros, 70);
    TLX_CHECK_CHAIN(&t, 70, 0, 0);
    tlx_tick_to(&t, TLX_T0 + TTL_MS);
    TLX_CHECK_CHAIN(&t, 70, 0, 0);
    TL_CHECK_INVARIANTS(&t);
}

static void unconfirmed_then_replayed_is_confirmed(void)
{
    struct tl t;
    reserve_unconfirmed(&t);
    struct ledger_result r = tl_run(&t, tl_reserve(&t, 100, "user", 100, 0, TTL_MS));
    CHECK_EQ_INT(r.status, LEDGER_OK);
    CHECK_EQ_INT(r.flags & LEDGER_RESULT_REPLAYED, LEDGER_RESULT_REPLAYED);
    tlx_tick_to(&t, TLX_T0 + TTL_MS);
    TLX_CHECK_CHAIN(&t, 100, 0, 0);
    struct tlx_journal j;
    tlx_journal(&t, "user", &j);
    TLX_CHECK_ENTRY(&j, LEDGER_J_EXPIRE_CHARGE, "user", 100, 100);
    TL_CHECK_INVARIANTS(&t);
}

static void unconfirmed_then_extended_is_confirmed(void)
{
    struct tl t;
    reserve_unconfirmed(&t);
    TLX_OK(&t, tl_extend(&t, 100, TTL_MS));
    tlx_tick_to(&t, TLX_T0 + 2 * TTL_MS);
    TLX_CHECK_CHAIN(&t, 100, 0, 0);
    TL_CHECK_INVARIANTS(&t);
}

/* A replay inside the range itself was no more answered than the reserve. */
static void replay_inside_the_range_does_not_confirm(void)
{
    struct tl t;
    tlx_open_chain(&t, NULL, NULL, NULL);
    uint64_t known_committed = t.index;
    REQUIRE(tl_run(&t, tl_reserve(&t, 100, "user", 100, 0, TTL_MS)).status == LEDGER_OK);
    REQUIRE(tl_run(&t, tl_reserve(&t, 100, "user", 100, 0, TTL_MS)).status == LEDGER_OK);
    REQUIRE(term_start(&t, known_committed).status == LEDGER_OK);
    tlx_tick_to(&t, TLX_T0 + TTL_MS);
    TLX_CHECK_CHAIN(&t, 0, 0, 0);
    TL_CHECK_INVARIANTS(&t);
}

static void unconfirmed_survives_a_reopen(void)
{
    struct tl t;
    reserve_unconfirmed(&t);
    tlx_reopen(&t);
    tlx_tick_to(&t, TLX_T0 + TTL_MS);
    TLX_CHECK_CHAIN(&t, 0, 0, 0);
    TL_CHECK_INVARIANTS(&t);
}

static void term_start_not_after_its_commit_index_is_refused(void)
{
    struct tl t;
    tlx_open_chain(&t, NULL, NULL, NULL);
    CHECK_EQ_INT(term_start(&t, t.index + 1).status, -LEDGER_EINVAL);
    CHECK_EQ_INT(term_start(&t, t.index + 5).status, -LEDGER_EINVAL);
    TL_CHECK_INVARIANTS(&t);
}

/* More elections than the ledger keeps ranges for: the oldest ranges merge, so a
 * reservation from the first one is still never charged. */
static void many_elections_keep_the_oldest_range(void)
{
    struct tl t;
    reserve_unconfirmed(&t);
    for (int i = 0; i < 40; i++) {
        uint64_t known = t.index;
        TLX_OK(&t, tl_reserve(&t, 1000 + (uint64_t)i, "user", 1, 0, 10 * TTL_MS));
        TLX_OK(&t, tl_void(&t, 1000 + (uint64_t)i));
        REQUIRE(term_start(&t, known).status == LEDGER_OK);
    }
    tlx_tick_to(&t, TLX_T0 + TTL_MS);
    TLX_CHECK_CHAIN(&t, 0, 0, 0);
    TL_CHECK_INVARIANTS(&t);
}

int main(void)
{
    TEST_MAIN_BEGIN;
    TEST(unconfirmed_then_expired_is_released);
    TEST(answered_reserve_is_still_charged_at_expiry);
    TEST(unconfirmed_then_settled_is_charged_normally);
    TEST(unconfirmed_then_replayed_is_confirmed);
    TEST(unconfirmed_then_extended_is_confirmed);
    TEST(replay_inside_the_range_does_not_confirm);
    TEST(unconfirmed_survives_a_reopen);
    TEST(term_start_not_after_its_commit_index_is_refused);
    TEST(many_elections_keep_the_oldest_range);
    TEST_MAIN_END;
}
