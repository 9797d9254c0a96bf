/*
 * rate.c: rpm/tpm limits as GCRA buckets in exact integers.
 *
 * A token is 60 000 units and a bucket of `rate` tokens per minute drains `rate` units
 * per millisecond, so refill needs no division and no floating point: the level is the
 * GCRA's (TAT - now) scaled by the rate. Every product is overflow-checked and
 * saturates, because a bucket left alone for years must not wrap.
 */
#include "ledger/ledger_internal.h"

#include <assert.h>

#define LEVEL_MAX (INT64_MAX / 4) /* saturation point of a bucket in debt */

static int64_t units(uint64_t tokens)
{
    int64_t u;
    if (tokens > (uint64_t)INT64_MAX ||
        __builtin_mul_overflow((int64_t)tokens, (int64_t)LEDGER_UNITS_PER_TOKEN, &u) ||
        u > LEVEL_MAX) {
        return LEVEL_MAX;
    }
    return u;
}

void ledger__bucket_drain(struct ledger_bucket *b, uint64_t rate, int64_t now_ms)
{
    assert(b->level_units >= 0);
    assert(rate > 0);
    if (now_ms <= b->last_ms) {
        return;
    }
    int64_t drained;
    if (rate > (uint64_t)INT64_MAX ||
        __builtin_mul_overflow(now_ms - b->last_ms, (int64_t)rate, &drained) ||
        drained >= b->level_units) {
        b->level_units = 0;
    } else {
        b->level_units -= drained;
    }
    b->last_ms = now_ms;
    assert(b->level_units >= 0);
}

bool ledger__bucket_fits(const struct ledger_bucket *b, uint64_t rate, uint64_t burst,
                        uint64_t cost, int64_t *remaining_tokens, int64_t *retry_after_ms)
{
    assert(rate > 0 && burst > 0);
    if (cost == 0) {
        return true;
    }
    int64_t capacity = units(burst);
    int64_t need = b->level_units + units(cost) - capacity; /* both <= LEVEL_MAX */
    if (need <= 0) {
        return true;
    }
    *remaining_tokens = (int64_t)ledger__bucket_available(b, burst);
    if (cost > burst) {
        *retry_after_ms = -1;
    } else {
        *retry_after_ms = (int64_t)(((uint64_t)need + rate - 1) / rate);
    }
    /* A denial reports less than the cost as remaining, and a wait of at least 1 ms. */
    assert(*remaining_tokens >= 0 && (uint64_t)*remaining_tokens < cost);
    assert(*retry_after_ms == -1 || *retry_after_ms >= 1);
    return false;
}

void ledger__bucket_take(struct ledger_bucket *b, uint64_t cost)
{
    ledger__bucket_adjust(b, cost > (uint64_t)INT64_MAX ? INT64_MAX : (int64_t)cost);
}

void ledger__bucket_adjust(struct ledger_bucket *b, int64_t delta_tokens)
{
    assert(b->level_units >= 0);
    if (delta_tokens >= 0) {
        int64_t level = b->level_units + units((uint64_t)delta_tokens);
        b->level_units = level > LEVEL_MAX ? LEVEL_MAX : level;
    } else {
        int64_t refund = delta_tokens == INT64_MIN ? LEVEL_MAX : units((uint64_t)-delta_tokens);
        b->level_units = refund >= b->level_units ? 0 : b->level_units - refund;
    }
    assert(b->level_units >= 0 && b->level_units <= LEVEL_MAX);
}

uint64_t ledger__bucket_available(const struct ledger_bucket *b, uint64_t burst)
{
    assert(b->level_units >= 0);
    int64_t capacity = units(burst);
    if (b->level_units >= capacity) {
        return 0;
    }
    return (uint64_t)((capacity - b->level_units) / LEDGER_UNITS_PER_TOKEN);
}
