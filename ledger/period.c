/*
 * period.c: budget periods in UTC, from integers only.
 *
 * Calendar arithmetic uses the days-from-civil algorithm (proleptic Gregorian, eras of
 * 400 years) in ledger/civil.h, so there is no table, no time zone database and no libc
 * time call: the same stamp gives the same period on every replica.
 */
#include "ledger/civil.h"
#include "ledger/ledger_internal.h"

#include <assert.h>

#define MS_PER_DAY 86400000LL

static int64_t floor_div(int64_t a, int64_t b)
{
    assert(b > 0);
    int64_t q = a / b;
    return (a % b != 0 && a < 0) ? q - 1 : q;
}

static int64_t period_start(uint8_t kind, int64_t period_ms, int64_t anchor_ms, int64_t now_ms)
{
    int64_t days = floor_div(now_ms, MS_PER_DAY);
    switch (kind) {
    case LEDGER_PERIOD_FIXED:
        assert(period_ms > 0);
        if (now_ms < anchor_ms) {
            return anchor_ms;
        }
        return anchor_ms + (now_ms - anchor_ms) / period_ms * period_ms;
    case LEDGER_PERIOD_DAY:
        return days * MS_PER_DAY;
    case LEDGER_PERIOD_WEEK: {
        /* 1970-01-01 was a Thursday: Monday-based weekday is (days + 3) mod 7. */
        int64_t monday = days - (days + 3 - floor_div(days + 3, 7) * 7);
        assert(monday <= days && days - monday < 7 && (monday + 3) % 7 == 0);
        return monday * MS_PER_DAY;
    }
    case LEDGER_PERIOD_MONTH: {
        int64_t y;
        unsigned m, d;
        ledger_civil_from_days(days, &y, &m, &d);
        return ledger_days_from_civil(y, m, 1) * MS_PER_DAY;
    }
    default:
        return 0;
    }
}

int64_t ledger__period_start(uint8_t kind, int64_t period_ms, int64_t anchor_ms, int64_t now_ms)
{
    int64_t start = period_start(kind, period_ms, anchor_ms, now_ms);
    /* The period contains now (a FIXED one not begun yet starts at its anchor). */
    assert(kind == LEDGER_PERIOD_NONE || kind >= LEDGER_PERIOD_MAX ||
           (kind == LEDGER_PERIOD_FIXED && now_ms < anchor_ms && start == anchor_ms) ||
           (start <= now_ms && now_ms < ledger__period_end(kind, period_ms, start)));
    return start;
}

int64_t ledger__period_end(uint8_t kind, int64_t period_ms, int64_t start_ms)
{
    switch (kind) {
    case LEDGER_PERIOD_FIXED:
        assert(period_ms > 0);
        return start_ms + period_ms;
    case LEDGER_PERIOD_DAY:
        return start_ms + MS_PER_DAY;
    case LEDGER_PERIOD_WEEK:
        return start_ms + 7 * MS_PER_DAY;
    case LEDGER_PERIOD_MONTH: {
        int64_t y;
        unsigned m, d;
        ledger_civil_from_days(floor_div(start_ms, MS_PER_DAY), &y, &m, &d);
        if (m == 12) {
            return ledger_days_from_civil(y + 1, 1, 1) * MS_PER_DAY;
        }
        return ledger_days_from_civil(y, m + 1, 1) * MS_PER_DAY;
    }
    default:
        return INT64_MAX;
    }
}
