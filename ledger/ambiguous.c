/*
 * ambiguous.c: reservations granted from log entries nobody may have been told about.
 *
 * A leader that loses its quorum has appended entries whose callers were answered
 * UNAVAILABLE (or nothing at all); a later leader may still commit them. Such a leader's
 * first entry, TERM_START, carries the commit index it knew when elected: the entries
 * strictly between that index and the TERM_START were committed without the leader
 * knowing whether anyone was answered. The ledger keeps these ranges in its meta record,
 * and a reservation created in one of them is *unconfirmed* until an extend or a replay of
 * its reserve is applied from outside every range; an unconfirmed reservation is released
 * at expiry, never charged (docs/ledger.md, Unconfirmed reservations). Everything is
 * decided from the log: every replica keeps the same ranges and decides alike.
 */
#include "wire/wire.h"
#include "ledger/apply.h"

#include <assert.h>
#include <string.h>

static bool in_a_range(const struct meta_rec *m, uint64_t index)
{
    assert(m->n_ranges <= AMBIGUOUS_RANGES_MAX);
    for (uint64_t i = 0; i < m->n_ranges; i++) {
        if (index > m->ranges[i].after && index < m->ranges[i].before) {
            return true;
        }
    }
    return false;
}

bool ledger__resv_unconfirmed(const struct ledger *l, const struct resv_rec *rec)
{
    const struct meta_rec *m = &l->work;
    return in_a_range(m, rec->created_index) &&
           (rec->confirmed_index == 0 || in_a_range(m, rec->confirmed_index));
}

/* Drop ranges no open unconfirmed reservation can still come from: one created in a
 * range and never extended expires at most LEDGER_TTL_MAX_MS after it, and its timer
 * fires before any command of a later batch runs. */
static void ranges_prune(struct meta_rec *m, int64_t now_ms)
{
    uint64_t kept = 0;
    for (uint64_t i = 0; i < m->n_ranges; i++) {
        if (m->ranges[i].at_ms + LEDGER_TTL_MAX_MS >= now_ms) {
            m->ranges[kept++] = m->ranges[i];
        }
    }
    m->n_ranges = kept;
}

void ledger__exec_term_start(struct ledger *l, const struct ledger_cmd *c, struct ledger_result *r)
{
    struct meta_rec *m = &l->work;
    uint64_t after = c->u.term_start.commit_index;
    uint64_t before = m->applied_index;
    /* A leader's commit index is below its own first entry; anything else is not a
     * TERM_START a leader wrote, and changes nothing. */
    if (after >= before) {
        r->status = -LEDGER_EINVAL;
        return;
    }
    r->status = LEDGER_OK;
    ranges_prune(m, l->now_ms);
    if (after + 1 == before) {
        return; /* nothing was left uncommitted */
    }
    if (m->n_ranges == AMBIGUOUS_RANGES_MAX) {
        /* Merge the two oldest: the merged range may also cover answered entries, whose
         * reservations are then released rather than charged if never settled. Bounded
         * state wins over those few, and the error is never a charge. */
        m->ranges[1].after = m->ranges[0].after;
        memmove(&m->ranges[0], &m->ranges[1], (AMBIGUOUS_RANGES_MAX - 1) * sizeof(m->ranges[0]));
        m->n_ranges--;
    }
    m->ranges[m->n_ranges++] = (struct ambiguous_range){after, before, l->now_ms};
}
