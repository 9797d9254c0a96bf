/*
 * civil.h: days since 1970-01-01 from a civil date (proleptic Gregorian, UTC) and back.
 *
 * Shared by the ledger (period.c: calendar budget periods) and tallyctl (ISO-8601 times in
 * and out), so that both count days with the same code. It is header-only, static inline
 * and depends on nothing but the C library's headers, because tallyctl must not link the
 * ledger (which needs LMDB). The arithmetic is H. Hinnant's days-from-civil algorithm on eras of 400
 * years: integers only, no table, no time zone database, no libc time call, so the same
 * stamp gives the same date on every replica.
 */
#ifndef TALLY_LEDGER_CIVIL_H
#define TALLY_LEDGER_CIVIL_H

#include <assert.h>
#include <stdint.h>

/* a / b rounded towards minus infinity; `b` > 0 (the callers pass constants). */
static inline int64_t ledger__civil_floor_div(int64_t a, int64_t b)
{
    int64_t q = a / b;
    return (a % b != 0 && a < 0) ? q - 1 : q;
}

/* Days since 1970-01-01 of the civil date y-m-d; `m` in 1..12, `d` in 1..31. */
static inline int64_t ledger_days_from_civil(int64_t y, unsigned m, unsigned d)
{
    assert(m >= 1 && m <= 12 && d >= 1 && d <= 31); /* callers validate dates first */
    y -= m <= 2;
    int64_t era = ledger__civil_floor_div(y, 400);
    int64_t yoe = y - era * 400;                                   /* [0, 399] */
    int64_t doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1; /* [0, 365] */
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;           /* [0, 146096] */
    return era * 146097 + doe - 719468;
}

/* The civil date *y-*m-*d of day `days` since 1970-01-01; the inverse of
 * ledger_days_from_civil(). */
static inline void ledger_civil_from_days(int64_t days, int64_t *y, unsigned *m, unsigned *d)
{
    days += 719468;
    int64_t era = ledger__civil_floor_div(days, 146097);
    int64_t doe = days - era * 146097;
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    int64_t mp = (5 * doy + 2) / 153;
    *d = (unsigned)(doy - (153 * mp + 2) / 5 + 1);
    *m = (unsigned)(mp < 10 ? mp + 3 : mp - 9);
    *y = yoe + era * 400 + (*m <= 2);
    assert(*m >= 1 && *m <= 12 && *d >= 1 && *d <= 31);
}

#endif /* TALLY_LEDGER_CIVIL_H */
