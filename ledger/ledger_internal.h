/*
 * ledger_internal.h: pieces of the ledger shared between its files and unit tests.
 * Not part of the API: nothing outside ledger/ and tests/ includes it.
 */
#ifndef TALLY_LEDGER_INTERNAL_H
#define TALLY_LEDGER_INTERNAL_H

#include "ledger/civil.h" /* ledger_days_from_civil(), ledger_civil_from_days() */
#include "ledger/ledger.h"

#include <stdbool.h>

/* ---- Periods (period.c). All times are ms since the epoch, UTC, >= 0. ---- */

/*
 * Start of the period of kind `kind` that contains `now_ms`. FIXED periods are
 * `period_ms` long and start at anchor_ms + k * period_ms (anchor_ms <= now_ms, else
 * the anchor is the start). NONE returns 0.
 */
int64_t ledger__period_start(uint8_t kind, int64_t period_ms, int64_t anchor_ms, int64_t now_ms);

/* End (exclusive) of the period that starts at `start_ms`; INT64_MAX for NONE. */
int64_t ledger__period_end(uint8_t kind, int64_t period_ms, int64_t start_ms);

/* ---- Rate buckets (rate.c): GCRA in exact integers, see docs/ledger.md. ---- */

#define LEDGER_UNITS_PER_TOKEN 60000 /* one token = 60 000 units; a bucket drains `rate`/ms */

struct ledger_bucket {
    int64_t level_units; /* content at last_ms, >= 0; may exceed capacity (debt) */
    int64_t last_ms;
};

/* Drain the bucket to `now_ms` at `rate` tokens per minute. now_ms < last_ms is
 * treated as now_ms == last_ms. */
void ledger__bucket_drain(struct ledger_bucket *b, uint64_t rate, int64_t now_ms);

/*
 * Would `cost` tokens fit in a drained bucket of capacity `burst` tokens? Returns
 * true, or false with *remaining_tokens (what fits now) and *retry_after_ms (-1 when
 * cost > burst: it never fits).
 */
bool ledger__bucket_fits(const struct ledger_bucket *b, uint64_t rate, uint64_t burst,
                        uint64_t cost, int64_t *remaining_tokens, int64_t *retry_after_ms);

/* Add `cost` tokens (after ledger__bucket_fits said yes). */
void ledger__bucket_take(struct ledger_bucket *b, uint64_t cost);

/* Add (delta > 0, debt) or refund (delta < 0, down to empty) `delta_tokens`. Saturates
 * instead of overflowing. */
void ledger__bucket_adjust(struct ledger_bucket *b, int64_t delta_tokens);

/* Tokens that fit now in a drained bucket of capacity `burst` (floor). */
uint64_t ledger__bucket_available(const struct ledger_bucket *b, uint64_t burst);

#endif /* TALLY_LEDGER_INTERNAL_H */
