/*
 * clock.h: ledger time as a node keeps it, and the batch stamp a leader makes from it.
 *
 * The one idea: ledger time runs on the monotonic clock, and the wall clock only steers
 * it. Each stamp is the previous one plus the monotonic time elapsed since, corrected
 * toward the wall clock by at most 1 ms per NODE_CLOCK_SLEW_MS of elapsed time (slewed,
 * never stepped), so a wall clock that jumps by days moves ledger time by at most 0.1 %
 * of the time that passes, and a wall clock put back does not stop it. Every node learns
 * ledger time from the batches it applies (node_clock_observe(): the stamp, and when it
 * applied it), so a new leader goes on from the last applied stamp plus the time its own
 * monotonic clock measured since: ledger time never goes backwards and never jumps.
 *
 * The functions are pure: the caller reads the clocks and passes their readings in, so
 * the unit test and the simulation drive them with any time they like. raft/propose.c
 * and raft/leader.c read CLOCK_MONOTONIC and CLOCK_REALTIME (plus the fault-injection
 * offset, which shifts only the wall reading) and call them.
 */
#ifndef TALLY_RAFT_CLOCK_H
#define TALLY_RAFT_CLOCK_H

#include <stdbool.h>
#include <stdint.h>

#define NODE_CLOCK_SLEW_MS 1000 /* 1 ms of correction per this many ms elapsed (0.1 %) */
#define NODE_CLOCK_STEP_MS 1000 /* wall and ledger time further apart: a clock step */

struct node_clock {
    bool set;             /* a stamp was made or observed */
    int64_t stamp_ms;     /* the latest ledger time made or observed */
    int64_t mono_ms;      /* the monotonic reading at which stamp_ms held */
    int64_t slew_mono_ms; /* correction is earned from here on (<= the last reading) */
    int64_t offset_ms;    /* wall minus ledger time at the last stamp or check */
    bool stepped;         /* |offset_ms| > NODE_CLOCK_STEP_MS at the last stamp or check */
    uint64_t steps;       /* times |offset_ms| went past NODE_CLOCK_STEP_MS */
};

/* An empty clock: its first stamp is the wall clock (a ledger that was never stamped). */
void node_clock_init(struct node_clock *c);

/*
 * Ledger time `stamp_ms` was applied at monotonic reading `mono_ms`. If it is later than
 * what c projects for `mono_ms` (node_clock_now()), it becomes c's anchor; otherwise c is
 * unchanged, so a leader that applies its own stamps keeps its own, later, time.
 * A stamp <= 0 is a ledger that was never stamped and changes nothing.
 */
void node_clock_observe(struct node_clock *c, int64_t stamp_ms, int64_t mono_ms);

/* The ledger time c projects for `mono_ms`: the anchor plus the monotonic time since,
 * without correction (0 if c is not set). */
int64_t node_clock_now(const struct node_clock *c, int64_t mono_ms);

/*
 * The next batch stamp at monotonic reading `mono_ms` and wall reading `wall_ms`:
 * stamp_ms + (mono_ms - mono_ms of the last stamp) + a correction toward wall_ms of at
 * most one ms per NODE_CLOCK_SLEW_MS earned since the last correction, never below the
 * last stamp, within [0, LEDGER_TIME_MAX_MS]. An empty clock stamps wall_ms. Updates c
 * (the new anchor, offset_ms, stepped, steps) and returns the stamp.
 */
int64_t node_clock_stamp(struct node_clock *c, int64_t mono_ms, int64_t wall_ms);

/*
 * Compare wall_ms with the ledger time c projects for mono_ms: sets offset_ms, stepped,
 * and counts a step when stepped turns true. Returns true when stepped changed. An empty
 * clock has offset 0.
 */
bool node_clock_check(struct node_clock *c, int64_t mono_ms, int64_t wall_ms);

#endif
