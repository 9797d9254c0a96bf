/*
 * ledger_rate_test.c: GCRA rate buckets (docs/ledger.md "Rate limits").
 *
 * A bucket counts in units (one token = 60 000 units) and drains `rate` units per
 * millisecond, so every expected value below is exact integer arithmetic on the
 * formulas of the contract. The last test shows a team's rpm limit through batches.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* GNU extensions, as test.h sets them */
#endif

#include "ledger/ledger_internal.h"
#include "ledger_testlib.h"

#define UNITS LEDGER_UNITS_PER_TOKEN
#define T0 1700000000000LL /* an arbitrary start time */

/* Drain the bucket to `now_ms`; if `cost` fits, take it and return true. Otherwise
 * return false with the deny's remaining and retry_after_ms. */
static bool try_take(struct ledger_bucket *b, uint64_t rate, uint64_t burst, int64_t now_ms,
                     uint64_t cost, int64_t *remaining, int64_t *retry_ms)
{
    ledger__bucket_drain(b, rate, now_ms);
    *remaining = -7, *retry_ms = -7;
    if (!ledger__bucket_fits(b, rate, burst, cost, remaining, retry_ms)) {
        return false;
    }
    ledger__bucket_take(b, cost);
    return true;
}

/* `count` requests of `cost` at `now_ms` are all admitted. */
static void take_all(struct ledger_bucket *b, uint64_t rate, uint64_t burst, int64_t now_ms,
                     uint64_t cost, int count)
{
    int64_t remaining, retry_ms;
    for (int i = 0; i < count; i++) {
        if (!try_take(b, rate, burst, now_ms, cost, &remaining, &retry_ms)) {
            fprintf(stderr, "  request %d of %d denied\n", i + 1, count);
            REQUIRE(false);
        }
    }
}

/* A request of `cost` at `now_ms` is denied with exactly these remaining / retry. */
static void check_denied(struct ledger_bucket *b, uint64_t rate, uint64_t burst, int64_t now_ms,
                         uint64_t cost, int64_t remaining, int64_t retry_ms)
{
    int64_t got_remaining, got_retry_ms;
    CHECK(!try_take(b, rate, burst, now_ms, cost, &got_remaining, &got_retry_ms));
    CHECK_EQ_INT(got_remaining, remaining);
    CHECK_EQ_INT(got_retry_ms, retry_ms);
}

static void rpm_60_burst_60_admits_60_at_once_then_retries_after_1000_ms(void)
{
    struct ledger_bucket b = {0, T0};
    take_all(&b, 60, 60, T0, 1, 60);
    CHECK_EQ_INT(b.level_units, 60 * UNITS);
    check_denied(&b, 60, 60, T0, 1, 0, 1000);
    CHECK_EQ_INT(b.level_units, 60 * UNITS); /* a deny takes nothing */
}

static void bucket_refills_one_request_per_second_at_rpm_60(void)
{
    struct ledger_bucket b = {0, T0};
    take_all(&b, 60, 60, T0, 1, 60);
    check_denied(&b, 60, 60, T0 + 999, 1, 0, 1);
    CHECK_EQ_INT(b.level_units, 60 * UNITS - 999 * 60);
    take_all(&b, 60, 60, T0 + 1000, 1, 1);
    check_denied(&b, 60, 60, T0 + 1000, 1, 0, 1000);
    ledger__bucket_drain(&b, 60, T0 + 31000);
    CHECK_EQ_INT(ledger__bucket_available(&b, 60), 30);
    CHECK_EQ_INT(b.last_ms, T0 + 31000);
}

static void bucket_drains_to_empty_and_not_below(void)
{
    struct ledger_bucket b = {0, T0};
    take_all(&b, 60, 60, T0, 1, 10);
    ledger__bucket_drain(&b, 60, T0 + 3600 * 1000);
    CHECK_EQ_INT(b.level_units, 0);
    CHECK_EQ_INT(ledger__bucket_available(&b, 60), 60);
}

static void burst_larger_than_rate_admits_the_burst_at_once(void)
{
    struct ledger_bucket b = {0, T0};
    take_all(&b, 60, 120, T0, 1, 120);
    check_denied(&b, 60, 120, T0, 1, 0, 1000);
    ledger__bucket_drain(&b, 60, T0 + 60000);
    CHECK_EQ_INT(b.level_units, 60 * UNITS);
    CHECK_EQ_INT(ledger__bucket_available(&b, 120), 60);
}

static void burst_smaller_than_rate_spaces_requests_by_rate(void)
{
    /* rpm 600: one request per 100 ms once the 10-request burst is used. */
    struct ledger_bucket b = {0, T0};
    take_all(&b, 600, 10, T0, 1, 10);
    check_denied(&b, 600, 10, T0, 1, 0, 100);
    check_denied(&b, 600, 10, T0 + 99, 1, 0, 1);
    take_all(&b, 600, 10, T0 + 100, 1, 1);
}

static void retry_after_rounds_up(void)
{
    /* rate 7 units/ms: missing 60 000 units takes 8571.43 ms, reported as 8572. */
    struct ledger_bucket b = {0, T0};
    take_all(&b, 7, 3, T0, 1, 3);
    check_denied(&b, 7, 3, T0, 1, 0, 8572);
}

static void tpm_cost_larger_than_burst_never_fits(void)
{
    struct ledger_bucket b = {0, T0};
    check_denied(&b, 1000, 1000, T0, 1001, 1000, -1);
    take_all(&b, 1000, 1000, T0, 400, 1);
    check_denied(&b, 1000, 1000, T0, 1001, 600, -1);
}

static void tpm_cost_within_burst_reports_remaining_and_retry(void)
{
    struct ledger_bucket b = {0, T0};
    take_all(&b, 1000, 1000, T0, 400, 1);
    /* 400 + 700 - 1000 = 100 tokens = 6 000 000 units at 1000 units/ms. */
    check_denied(&b, 1000, 1000, T0, 700, 600, 6000);
    take_all(&b, 1000, 1000, T0, 600, 1);
    CHECK_EQ_INT(ledger__bucket_available(&b, 1000), 0);
}

static void zero_cost_always_fits(void)
{
    struct ledger_bucket b = {0, T0};
    take_all(&b, 60, 60, T0, 1, 60);
    take_all(&b, 60, 60, T0, 0, 1);
    ledger__bucket_adjust(&b, 1000);
    take_all(&b, 60, 60, T0, 0, 1);
    CHECK_EQ_INT(b.level_units, 1060LL * UNITS);
}

static void adjust_up_creates_debt_beyond_capacity(void)
{
    struct ledger_bucket b = {0, T0};
    take_all(&b, 1000, 1000, T0, 1000, 1);
    ledger__bucket_adjust(&b, 500);
    CHECK_EQ_INT(b.level_units, 1500LL * UNITS);
    CHECK_EQ_INT(ledger__bucket_available(&b, 1000), 0);
    /* 1500 + 1 - 1000 = 501 tokens over: 501 * 60 ms at 1000 units/ms. */
    check_denied(&b, 1000, 1000, T0, 1, 0, 30060);
    /* After the debt drains, the bucket admits again. */
    take_all(&b, 1000, 1000, T0 + 30060, 1, 1);
}

static void adjust_down_refunds_and_saturates_at_zero(void)
{
    struct ledger_bucket b = {0, T0};
    take_all(&b, 1000, 1000, T0, 100, 1);
    ledger__bucket_adjust(&b, -40);
    CHECK_EQ_INT(b.level_units, 60LL * UNITS);
    ledger__bucket_adjust(&b, -500);
    CHECK_EQ_INT(b.level_units, 0);
    ledger__bucket_adjust(&b, -(int64_t)LEDGER_TOKENS_MAX);
    CHECK_EQ_INT(b.level_units, 0);
    CHECK_EQ_INT(b.last_ms, T0);
}

/* A bucket pushed into as much debt as it can hold. */
static struct ledger_bucket saturated_bucket(void)
{
    struct ledger_bucket b = {0, T0};
    ledger__bucket_adjust(&b, INT64_MAX);
    return b;
}

static void adjust_by_extreme_deltas_saturates(void)
{
    /* Where it saturates is the bucket's choice; it must hold far more than a maximal
     * bucket (6e16 units) and not move once there. */
    struct ledger_bucket b = saturated_bucket();
    int64_t saturated = b.level_units;
    CHECK(saturated >= 2 * (int64_t)LEDGER_RATE_MAX * UNITS);
    ledger__bucket_adjust(&b, (int64_t)LEDGER_TOKENS_MAX);
    CHECK_EQ_INT(b.level_units, saturated);
    ledger__bucket_adjust(&b, INT64_MAX);
    CHECK_EQ_INT(b.level_units, saturated);
    ledger__bucket_adjust(&b, -INT64_MAX);
    CHECK_EQ_INT(b.level_units, 0);
    ledger__bucket_adjust(&b, INT64_MIN);
    CHECK_EQ_INT(b.level_units, 0);
}

static void drain_over_a_huge_gap_does_not_overflow(void)
{
    /* 2.5e14 ms * 1e12 units/ms overflows int64 by far: the bucket is simply empty. */
    struct ledger_bucket b = {0, 0};
    take_all(&b, LEDGER_RATE_MAX, LEDGER_RATE_MAX, 0, LEDGER_TOKENS_MAX, 1);
    ledger__bucket_drain(&b, LEDGER_RATE_MAX, LEDGER_TIME_MAX_MS);
    CHECK_EQ_INT(b.level_units, 0);
    CHECK_EQ_INT(b.last_ms, LEDGER_TIME_MAX_MS);

    struct ledger_bucket debt = saturated_bucket();
    debt.last_ms = 0;
    ledger__bucket_drain(&debt, LEDGER_RATE_MAX, LEDGER_TIME_MAX_MS);
    CHECK_EQ_INT(debt.level_units, 0);
}

static void drain_backwards_in_time_changes_nothing(void)
{
    struct ledger_bucket b = {0, T0};
    take_all(&b, 60, 60, T0, 1, 5);
    ledger__bucket_drain(&b, 60, T0 - 100000);
    CHECK_EQ_INT(b.level_units, 5LL * UNITS);
    CHECK_EQ_INT(ledger__bucket_available(&b, 60), 55);
    CHECK_EQ_INT(b.last_ms, T0);
    ledger__bucket_drain(&b, 60, T0 + 1000);
    CHECK_EQ_INT(b.level_units, 4LL * UNITS);
}

static void max_rate_and_max_cost_do_not_overflow(void)
{
    /* capacity = 1e12 tokens * 60000 = 6e16 units: fits int64 with room to spare. */
    int64_t cap;
    REQUIRE(!__builtin_mul_overflow((int64_t)LEDGER_RATE_MAX, (int64_t)UNITS, &cap));
    struct ledger_bucket b = {0, T0};
    take_all(&b, LEDGER_RATE_MAX, LEDGER_RATE_MAX, T0, LEDGER_TOKENS_MAX, 1);
    CHECK_EQ_INT(b.level_units, cap);
    /* level + cost - capacity = 6e16 units at 1e12 units/ms: 60 000 ms. */
    check_denied(&b, LEDGER_RATE_MAX, LEDGER_RATE_MAX, T0, LEDGER_TOKENS_MAX, 0, 60000);
    ledger__bucket_adjust(&b, (int64_t)LEDGER_TOKENS_MAX);
    CHECK_EQ_INT(b.level_units, 2 * cap);
    check_denied(&b, LEDGER_RATE_MAX, LEDGER_RATE_MAX, T0, LEDGER_TOKENS_MAX, 0, 120000);
    check_denied(&b, LEDGER_RATE_MAX, LEDGER_RATE_MAX, T0, LEDGER_TOKENS_MAX + 1, 0, -1);
}

static void slowest_rate_with_max_cost_reports_exact_retry(void)
{
    /* rate 1 token/min drains 1 unit/ms: a full 1e12-token bucket empties in 6e16 ms. */
    struct ledger_bucket b = {0, T0};
    take_all(&b, 1, LEDGER_TOKENS_MAX, T0, LEDGER_TOKENS_MAX, 1);
    check_denied(&b, 1, LEDGER_TOKENS_MAX, T0, 1, 0, 60000);
    check_denied(&b, 1, LEDGER_TOKENS_MAX, T0, LEDGER_TOKENS_MAX, 0, 60000000000000000LL);
    check_denied(&b, 1, 1, T0, LEDGER_TOKENS_MAX, 0, -1);
}

static void saturated_debt_still_reports_exact_retry(void)
{
    /* need = level + 6e16 - 6e16 units at 1e12 units/ms, rounded up. */
    struct ledger_bucket b = saturated_bucket();
    int64_t level = b.level_units;
    int64_t expect = level / (int64_t)LEDGER_RATE_MAX + (level % (int64_t)LEDGER_RATE_MAX != 0);
    check_denied(&b, LEDGER_RATE_MAX, LEDGER_RATE_MAX, T0, LEDGER_TOKENS_MAX, 0, expect);
    /* At 1 unit/ms with a burst of 1, one request waits `level` ms. */
    check_denied(&b, 1, 1, T0, 1, 0, level);
    CHECK_EQ_INT(ledger__bucket_available(&b, LEDGER_RATE_MAX), 0);
}

static void available_counts_whole_tokens_that_fit(void)
{
    struct ledger_bucket b = {0, T0};
    CHECK_EQ_INT(ledger__bucket_available(&b, 60), 60);
    take_all(&b, 60, 60, T0, 1, 1);
    CHECK_EQ_INT(ledger__bucket_available(&b, 60), 59);
    ledger__bucket_drain(&b, 60, T0 + 1);
    CHECK_EQ_INT(b.level_units, UNITS - 60);
    CHECK_EQ_INT(ledger__bucket_available(&b, 60), 59); /* 59.001 tokens: floor */
    CHECK_EQ_INT(ledger__bucket_available(&b, LEDGER_RATE_MAX), LEDGER_RATE_MAX - 1);
}

/* ---- Through the ledger. ---- */

static struct ledger_result reserve_by_key(struct tl *t, uint64_t id, const char *secret)
{
    return tl_run(t, tl_reserve_key(t, id, secret, 0, 0, 60000));
}

static void team_rpm_throttles_two_keys_together(void)
{
    struct tl t;
    tl_open(&t, T0);
    struct ledger_limits team = {.set = LEDGER_LIM_RPM, .rpm = 2}; /* burst 0: 2 */
    REQUIRE(tl_run(&t, tl_create(&t, "team", "", &team)).status == LEDGER_OK);
    REQUIRE(tl_run(&t, tl_create(&t, "team/a", "team", NULL)).status == LEDGER_OK);
    REQUIRE(tl_run(&t, tl_create(&t, "team/b", "team", NULL)).status == LEDGER_OK);
    REQUIRE(tl_run(&t, tl_key_add(&t, "team/a", "sk-a")).status == LEDGER_OK);
    REQUIRE(tl_run(&t, tl_key_add(&t, "team/b", "sk-b")).status == LEDGER_OK);

    CHECK_EQ_INT(reserve_by_key(&t, 1, "sk-a").status, LEDGER_OK);
    CHECK_EQ_INT(reserve_by_key(&t, 2, "sk-b").status, LEDGER_OK);
    CHECK_EQ_INT(tl_account(&t, "team").rpm_available, 0);
    /* Capacity 120 000 units at 2 units/ms: the third request waits 30 s. */
    struct ledger_result r = reserve_by_key(&t, 3, "sk-a");
    CHECK_EQ_INT(r.status, LEDGER_DENIED);
    CHECK_EQ_INT(r.deny_reason, LEDGER_DENY_RPM);
    CHECK_EQ_STR(r.account, "team");
    CHECK_EQ_INT(r.remaining, 0);
    CHECK_EQ_INT(r.retry_after_ms, 30000);
    r = reserve_by_key(&t, 4, "sk-b");
    CHECK_EQ_INT(r.status, LEDGER_DENIED);
    CHECK_EQ_STR(r.account, "team");

    t.now_ms = T0 + 29999;
    CHECK_EQ_INT(reserve_by_key(&t, 5, "sk-b").status, LEDGER_DENIED);
    t.now_ms = T0 + 30000;
    CHECK_EQ_INT(reserve_by_key(&t, 6, "sk-b").status, LEDGER_OK);
    CHECK_EQ_INT(reserve_by_key(&t, 7, "sk-a").status, LEDGER_DENIED);
    CHECK_EQ_INT(tl_account(&t, "team").inflight, 3);
    TL_CHECK_INVARIANTS(&t);
    tl_close(&t);
}

int main(void)
{
    TEST_MAIN_BEGIN;
    TEST(rpm_60_burst_60_admits_60_at_once_then_retries_after_1000_ms);
    TEST(bucket_refills_one_request_per_second_at_rpm_60);
    TEST(bucket_drains_to_empty_and_not_below);
    TEST(burst_larger_than_rate_admits_the_burst_at_once);
    TEST(burst_smaller_than_rate_spaces_requests_by_rate);
    TEST(retry_after_rounds_up);
    TEST(tpm_cost_larger_than_burst_never_fits);
    TEST(tpm_cost_within_burst_reports_remaining_and_retry);
    TEST(zero_cost_always_fits);
    TEST(adjust_up_creates_debt_beyond_capacity);
    TEST(adjust_down_refunds_and_saturates_at_zero);
    TEST(adjust_by_extreme_deltas_saturates);
    TEST(drain_over_a_huge_gap_does_not_overflow);
    TEST(drain_backwards_in_time_changes_nothing);
    TEST(max_rate_and_max_cost_do_not_overflow);
    TEST(slowest_rate_with_max_cost_reports_exact_retry);
    TEST(saturated_debt_still_reports_exact_retry);
    TEST(available_counts_whole_tokens_that_fit);
    TEST(team_rpm_throttles_two_keys_together);
    TEST_MAIN_END;
}
