/*
 * ledger_period_test.c: budget periods (docs/ledger.md "Period rollover").
 *
 * The first half checks the pure period arithmetic of ledger_internal.h against
 * dates computed independently with timegm(); the second half checks, through whole
 * batches, that a budget resets exactly at the period boundary while holds survive.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* GNU extensions, as test.h sets them; timegm() */
#endif

#include "ledger/ledger_internal.h"
#include "ledger_testlib.h"

#include <time.h>

#define DAY_MS (24LL * 3600 * 1000)
#define WEEK_MS (7 * DAY_MS)

/* ms since the epoch of a UTC date and time, computed by the C library. */
static int64_t utc_ms(int y, int mo, int d, int h, int mi, int s, int ms)
{
    struct tm tm = {.tm_year = y - 1900,
                    .tm_mon = mo - 1,
                    .tm_mday = d,
                    .tm_hour = h,
                    .tm_min = mi,
                    .tm_sec = s};
    return (int64_t)timegm(&tm) * 1000 + ms;
}

static int64_t utc_day(int y, int mo, int d)
{
    return utc_ms(y, mo, d, 0, 0, 0, 0);
}

static bool is_leap(int64_t y)
{
    return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

static unsigned days_in_month(int64_t y, unsigned m)
{
    static const unsigned len[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    return m == 2 && is_leap(y) ? 29 : len[m - 1];
}

/* The period of `kind` containing `now_ms` is [start, end). */
static void check_period(uint8_t kind, int64_t now_ms, int64_t start, int64_t end)
{
    int64_t got = ledger__period_start(kind, 0, 0, now_ms);
    CHECK_EQ_INT(got, start);
    CHECK_EQ_INT(ledger__period_end(kind, 0, got), end);
}

/* ---- Pure period arithmetic. ---- */

static void day_period_is_the_utc_calendar_day(void)
{
    check_period(LEDGER_PERIOD_DAY, utc_ms(2024, 3, 15, 13, 45, 12, 345), 1710460800000LL,
                 1710547200000LL);
}

static void day_period_starts_at_midnight_inclusive(void)
{
    int64_t midnight = utc_day(2024, 3, 16);
    check_period(LEDGER_PERIOD_DAY, midnight, midnight, midnight + DAY_MS);
    check_period(LEDGER_PERIOD_DAY, midnight - 1, midnight - DAY_MS, midnight);
}

static void day_period_of_the_epoch_and_of_the_last_day(void)
{
    check_period(LEDGER_PERIOD_DAY, 0, 0, DAY_MS);
    check_period(LEDGER_PERIOD_DAY, LEDGER_TIME_MAX_MS, utc_day(9999, 12, 31),
                 utc_day(9999, 12, 31) + DAY_MS);
}

static void week_period_starts_monday_midnight_utc(void)
{
    /* 1970-01-01 was a Thursday, so the first Monday is 1970-01-05 (day 4). */
    check_period(LEDGER_PERIOD_WEEK, 345600000LL, 345600000LL, 345600000LL + WEEK_MS);
    check_period(LEDGER_PERIOD_WEEK, utc_ms(1970, 1, 11, 23, 59, 59, 999), 345600000LL,
                 950400000LL);
}

static void week_period_of_a_sunday_is_the_monday_before(void)
{
    check_period(LEDGER_PERIOD_WEEK, utc_ms(2024, 3, 17, 23, 59, 59, 999), utc_day(2024, 3, 11),
                 utc_day(2024, 3, 18));
    check_period(LEDGER_PERIOD_WEEK, utc_day(2024, 3, 18), utc_day(2024, 3, 18),
                 utc_day(2024, 3, 25));
}

static void week_period_spans_the_year_change(void)
{
    check_period(LEDGER_PERIOD_WEEK, utc_ms(2024, 12, 31, 18, 0, 0, 0), utc_day(2024, 12, 30),
                 utc_day(2025, 1, 6));
    check_period(LEDGER_PERIOD_WEEK, utc_ms(2025, 1, 5, 12, 0, 0, 0), utc_day(2024, 12, 30),
                 utc_day(2025, 1, 6));
}

static void week_period_start_is_a_monday_for_every_day_of_a_decade(void)
{
    for (int64_t day = utc_day(2020, 1, 1) / DAY_MS; day < utc_day(2030, 1, 1) / DAY_MS; day++) {
        int64_t now = day * DAY_MS + 12345;
        int64_t start = ledger__period_start(LEDGER_PERIOD_WEEK, 0, 0, now);
        /* Day 4 (1970-01-05) is a Monday: Mondays are the days d with (d - 4) % 7 == 0. */
        int64_t start_day = start / DAY_MS;
        CHECK_EQ_INT(start % DAY_MS, 0);
        CHECK_EQ_INT((start_day - 4) % 7, 0);
        CHECK(start <= now && now - start < WEEK_MS);
    }
}

static void month_period_is_the_utc_calendar_month(void)
{
    check_period(LEDGER_PERIOD_MONTH, utc_ms(2024, 3, 15, 13, 45, 12, 345), utc_day(2024, 3, 1),
                 utc_day(2024, 4, 1));
    check_period(LEDGER_PERIOD_MONTH, utc_day(2024, 4, 1), utc_day(2024, 4, 1),
                 utc_day(2024, 5, 1));
}

static void month_period_of_february_in_leap_year_2024_has_29_days(void)
{
    check_period(LEDGER_PERIOD_MONTH, utc_ms(2024, 2, 29, 23, 59, 59, 999), 1706745600000LL,
                 1709251200000LL);
    CHECK_EQ_INT(1709251200000LL - 1706745600000LL, 29 * DAY_MS);
}

static void month_period_of_february_2100_has_28_days(void)
{
    /* 2100 is divisible by 100 and not by 400: not a leap year. */
    check_period(LEDGER_PERIOD_MONTH, utc_day(2100, 2, 10), 4105123200000LL, 4107542400000LL);
    CHECK_EQ_INT(4107542400000LL - 4105123200000LL, 28 * DAY_MS);
    check_period(LEDGER_PERIOD_MONTH, utc_day(2100, 3, 1), utc_day(2100, 3, 1),
                 utc_day(2100, 4, 1));
}

static void month_period_of_february_2000_has_29_days(void)
{
    check_period(LEDGER_PERIOD_MONTH, utc_day(2000, 2, 29), 949363200000LL, 951868800000LL);
}

static void month_period_of_december_ends_in_january_of_next_year(void)
{
    check_period(LEDGER_PERIOD_MONTH, utc_ms(2023, 12, 31, 23, 59, 59, 999), 1701388800000LL,
                 1704067200000LL);
    check_period(LEDGER_PERIOD_MONTH, utc_day(9999, 12, 31), utc_day(9999, 12, 1),
                 utc_day(9999, 12, 1) + 31 * DAY_MS);
}

static void fixed_period_counts_whole_periods_from_the_anchor(void)
{
    int64_t anchor = utc_ms(2024, 3, 15, 10, 20, 30, 400), hour = 3600 * 1000;
    int64_t now = anchor + 5 * hour + 17;
    CHECK_EQ_INT(ledger__period_start(LEDGER_PERIOD_FIXED, hour, anchor, now), anchor + 5 * hour);
    CHECK_EQ_INT(ledger__period_end(LEDGER_PERIOD_FIXED, hour, anchor + 5 * hour),
                 anchor + 6 * hour);
}

static void fixed_period_boundary_belongs_to_the_next_period(void)
{
    int64_t anchor = 1000, period = 7 * 1000;
    CHECK_EQ_INT(ledger__period_start(LEDGER_PERIOD_FIXED, period, anchor, anchor), anchor);
    CHECK_EQ_INT(ledger__period_start(LEDGER_PERIOD_FIXED, period, anchor, anchor + period - 1),
                 anchor);
    CHECK_EQ_INT(ledger__period_start(LEDGER_PERIOD_FIXED, period, anchor, anchor + period),
                 anchor + period);
}

static void fixed_period_with_anchor_after_now_starts_at_the_anchor(void)
{
    CHECK_EQ_INT(ledger__period_start(LEDGER_PERIOD_FIXED, 60000, 500000, 400000), 500000);
}

static void fixed_period_at_its_bounds_far_from_the_anchor(void)
{
    /* 366-day periods from the epoch up to the end of time: no overflow. */
    int64_t p = LEDGER_PERIOD_MAX_MS, k = LEDGER_TIME_MAX_MS / p;
    int64_t start = ledger__period_start(LEDGER_PERIOD_FIXED, p, 0, LEDGER_TIME_MAX_MS);
    CHECK_EQ_INT(start, k * p);
    CHECK_EQ_INT(ledger__period_end(LEDGER_PERIOD_FIXED, p, start), (k + 1) * p);
    /* 1 s periods anchored at 0: 253402300799 whole periods. */
    CHECK_EQ_INT(
        ledger__period_start(LEDGER_PERIOD_FIXED, LEDGER_PERIOD_MIN_MS, 0, LEDGER_TIME_MAX_MS),
        253402300799000LL);
}

static void none_period_is_the_whole_lifetime(void)
{
    CHECK_EQ_INT(ledger__period_start(LEDGER_PERIOD_NONE, 0, 0, 0), 0);
    CHECK_EQ_INT(ledger__period_start(LEDGER_PERIOD_NONE, 0, 0, LEDGER_TIME_MAX_MS), 0);
    CHECK_EQ_INT(ledger__period_end(LEDGER_PERIOD_NONE, 0, 0), INT64_MAX);
}

/* ---- Civil dates. ---- */

static void days_from_civil_of_known_dates(void)
{
    CHECK_EQ_INT(ledger_days_from_civil(1970, 1, 1), 0);
    CHECK_EQ_INT(ledger_days_from_civil(1969, 12, 31), -1);
    CHECK_EQ_INT(ledger_days_from_civil(2000, 3, 1), 11017);
    CHECK_EQ_INT(ledger_days_from_civil(1600, 1, 1), -135140);
    CHECK_EQ_INT(ledger_days_from_civil(1, 1, 1), -719162);
    CHECK_EQ_INT(ledger_days_from_civil(9999, 12, 31), 2932896);
}

static void days_from_civil_counts_every_date_from_1600_to_2400(void)
{
    int64_t expect = -135140; /* 1600-01-01 */
    for (int64_t y = 1600; y <= 2400; y++) {
        for (unsigned m = 1; m <= 12; m++) {
            for (unsigned d = 1; d <= days_in_month(y, m); d++) {
                int64_t got = ledger_days_from_civil(y, m, d);
                if (got != expect) {
                    fprintf(stderr, "  %04" PRId64 "-%02u-%02u\n", y, m, d);
                    CHECK_EQ_INT(got, expect);
                    return;
                }
                expect++;
            }
        }
    }
}

static void civil_from_days_round_trips_over_five_million_days(void)
{
    int64_t py = 0;
    unsigned pm = 0, pd = 0;
    ledger_civil_from_days(-1000001, &py, &pm, &pd);
    for (int64_t days = -1000000; days <= 4000000; days++) {
        int64_t y;
        unsigned m, d;
        ledger_civil_from_days(days, &y, &m, &d);
        /* The next day of (py, pm, pd) in the Gregorian calendar. */
        bool next_month = pd == days_in_month(py, pm);
        int64_t ey = next_month && pm == 12 ? py + 1 : py;
        unsigned em = next_month ? pm % 12 + 1 : pm, ed = next_month ? 1 : pd + 1;
        if (y != ey || m != em || d != ed || ledger_days_from_civil(y, m, d) != days) {
            fprintf(stderr, "  day %" PRId64 ": %" PRId64 "-%u-%u after %" PRId64 "-%u-%u\n", days,
                    y, m, d, py, pm, pd);
            CHECK(false);
            return;
        }
        py = y, pm = m, pd = d;
    }
}

/* ---- Through the ledger. ---- */

/* Create `name` with `budget` per period `kind` at t->now_ms and spend all of it. */
static void spend_whole_budget(struct tl *t, const char *name, uint8_t kind, int64_t budget)
{
    struct ledger_limits lim = {
        .set = LEDGER_LIM_BUDGET | LEDGER_LIM_PERIOD, .budget_micros = budget, .period_kind = kind};
    REQUIRE(tl_run(t, tl_create(t, name, "", &lim)).status == LEDGER_OK);
    REQUIRE(tl_run(t, tl_reserve(t, 1, name, budget, 0, 60000)).status == LEDGER_OK);
    REQUIRE(tl_run(t, tl_settle(t, 1, budget, 0)).status == LEDGER_OK);
    REQUIRE(tl_account(t, name).spent_micros == budget);
}

/* A reserve of 1 micro at `now_ms` is denied for the budget, and one at `now_ms + 1` is
 * granted in the period [next_start, next_end). */
static void check_budget_resets_after(struct tl *t, int64_t now_ms, int64_t next_start,
                                      int64_t next_end)
{
    t->now_ms = now_ms;
    struct ledger_result r = tl_run(t, tl_reserve(t, 2, "acct", 1, 0, 60000));
    CHECK_EQ_INT(r.status, LEDGER_DENIED);
    CHECK_EQ_INT(r.deny_reason, LEDGER_DENY_BUDGET);
    CHECK_EQ_STR(r.account, "acct");
    CHECK_EQ_INT(r.remaining, 0);

    t->now_ms = now_ms + 1;
    r = tl_run(t, tl_reserve(t, 3, "acct", 1, 0, 60000));
    CHECK_EQ_INT(r.status, LEDGER_OK);
    struct ledger_account_info a = tl_account(t, "acct");
    CHECK_EQ_INT(a.spent_micros, 0);
    CHECK_EQ_INT(a.held_micros, 1);
    CHECK_EQ_INT(a.period_start_ms, next_start);
    CHECK_EQ_INT(a.period_end_ms, next_end);
    TL_CHECK_INVARIANTS(t);
}

static void day_budget_resets_at_utc_midnight(void)
{
    struct tl t;
    tl_open(&t, utc_ms(2024, 3, 15, 12, 0, 0, 0));
    spend_whole_budget(&t, "acct", LEDGER_PERIOD_DAY, 100);
    check_budget_resets_after(&t, utc_ms(2024, 3, 15, 23, 59, 59, 999), utc_day(2024, 3, 16),
                              utc_day(2024, 3, 17));
    tl_close(&t);
}

static void month_budget_rolls_over_from_jan_31_to_feb_1(void)
{
    struct tl t;
    tl_open(&t, utc_ms(2024, 1, 10, 8, 0, 0, 0));
    spend_whole_budget(&t, "acct", LEDGER_PERIOD_MONTH, 5000);
    check_budget_resets_after(&t, utc_ms(2024, 1, 31, 23, 59, 59, 999), utc_day(2024, 2, 1),
                              utc_day(2024, 3, 1));
    tl_close(&t);
}

static void held_survives_rollover_and_spent_resets(void)
{
    struct tl t;
    tl_open(&t, utc_ms(2024, 3, 15, 10, 0, 0, 0));
    struct ledger_limits lim = {.set = LEDGER_LIM_BUDGET | LEDGER_LIM_PERIOD,
                                .budget_micros = 1000,
                                .period_kind = LEDGER_PERIOD_DAY};
    REQUIRE(tl_run(&t, tl_create(&t, "acct", "", &lim)).status == LEDGER_OK);
    REQUIRE(tl_run(&t, tl_reserve(&t, 1, "acct", 300, 0, 2 * DAY_MS)).status == LEDGER_OK);
    REQUIRE(tl_run(&t, tl_reserve(&t, 2, "acct", 200, 0, 60000)).status == LEDGER_OK);
    REQUIRE(tl_run(&t, tl_settle(&t, 2, 200, 0)).status == LEDGER_OK);

    t.now_ms = utc_day(2024, 3, 16);
    tl_tick(&t);
    struct ledger_account_info a = tl_account(&t, "acct");
    CHECK_EQ_INT(a.spent_micros, 0);
    CHECK_EQ_INT(a.held_micros, 300);
    CHECK_EQ_INT(a.inflight, 1);
    CHECK_EQ_INT(a.remaining_micros, 700);
    CHECK_EQ_INT(a.lifetime_spent_micros, 200);
    CHECK_EQ_INT(a.period_start_ms, utc_day(2024, 3, 16));

    struct ledger_result r = tl_run(&t, tl_reserve(&t, 3, "acct", 701, 0, 60000));
    CHECK_EQ_INT(r.status, LEDGER_DENIED);
    CHECK_EQ_INT(r.deny_reason, LEDGER_DENY_BUDGET);
    CHECK_EQ_INT(r.remaining, 700);
    CHECK_EQ_INT(tl_run(&t, tl_reserve(&t, 4, "acct", 700, 0, 60000)).status, LEDGER_OK);

    /* The hold from yesterday is charged in today's period when it settles. */
    CHECK_EQ_INT(tl_run(&t, tl_settle(&t, 1, 250, 0)).status, LEDGER_OK);
    a = tl_account(&t, "acct");
    CHECK_EQ_INT(a.spent_micros, 250);
    CHECK_EQ_INT(a.held_micros, 700);
    CHECK_EQ_INT(a.inflight, 1);
    TL_CHECK_INVARIANTS(&t);
    tl_close(&t);
}

int main(void)
{
    TEST_MAIN_BEGIN;
    TEST(day_period_is_the_utc_calendar_day);
    TEST(day_period_starts_at_midnight_inclusive);
    TEST(day_period_of_the_epoch_and_of_the_last_day);
    TEST(week_period_starts_monday_midnight_utc);
    TEST(week_period_of_a_sunday_is_the_monday_before);
    TEST(week_period_spans_the_year_change);
    TEST(week_period_start_is_a_monday_for_every_day_of_a_decade);
    TEST(month_period_is_the_utc_calendar_month);
    TEST(month_period_of_february_in_leap_year_2024_has_29_days);
    TEST(month_period_of_february_2100_has_28_days);
    TEST(month_period_of_february_2000_has_29_days);
    TEST(month_period_of_december_ends_in_january_of_next_year);
    TEST(fixed_period_counts_whole_periods_from_the_anchor);
    TEST(fixed_period_boundary_belongs_to_the_next_period);
    TEST(fixed_period_with_anchor_after_now_starts_at_the_anchor);
    TEST(fixed_period_at_its_bounds_far_from_the_anchor);
    TEST(none_period_is_the_whole_lifetime);
    TEST(days_from_civil_of_known_dates);
    TEST(days_from_civil_counts_every_date_from_1600_to_2400);
    TEST(civil_from_days_round_trips_over_five_million_days);
    TEST(day_budget_resets_at_utc_midnight);
    TEST(month_budget_rolls_over_from_jan_31_to_feb_1);
    TEST(held_survives_rollover_and_spent_resets);
    TEST_MAIN_END;
}
