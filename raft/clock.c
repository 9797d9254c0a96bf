/*
 * clock.c: ledger time as a node keeps it (raft/clock.h is the contract), and the node's
 * use of it: reading the clocks, learning ledger time from applied batches, stamping a
 * batch, and the log lines of a wall clock that stepped away from ledger time.
 *
 * The rule is pure arithmetic on readings the caller passes in, so it is the same in
 * tallyd, the unit test and the simulation; only the node__clock_* functions at the end
 * read clocks. Correction is earned from slew_mono_ms in whole milliseconds: consuming
 * only the whole part keeps the remainder for the next stamp, so a leader that stamps
 * every few microseconds slews at the same rate as one that stamps once a second.
 */
#include "raft/clock.h"

#include "raft/node_internal.h"
#include "wire/wire.h"

#include <assert.h>
#include <inttypes.h>
#include <time.h>

#define CLOCK_LOG_INTERVAL_MS 60000 /* a stepped clock is logged again at most this often */

/* t_ms within the ledger's time range [0, LEDGER_TIME_MAX_MS]. */
static int64_t clamp_time(int64_t t_ms)
{
    return t_ms < 0 ? 0 : t_ms > LEDGER_TIME_MAX_MS ? LEDGER_TIME_MAX_MS : t_ms;
}

/* Ledger time stamp_ms held at monotonic reading mono_ms; correction is earned anew. */
static void anchor(struct node_clock *c, int64_t stamp_ms, int64_t mono_ms)
{
    c->set = true;
    c->stamp_ms = stamp_ms;
    c->mono_ms = mono_ms;
    c->slew_mono_ms = mono_ms;
}

void node_clock_init(struct node_clock *c)
{
    *c = (struct node_clock){0};
}

int64_t node_clock_now(const struct node_clock *c, int64_t mono_ms)
{
    if (!c->set) {
        return 0;
    }
    /* A reading before the anchor (another clock's, in a test) counts as no time; the
     * bound keeps the sum from overflowing whatever the readings. */
    int64_t elapsed_ms = 0;
    if (mono_ms > c->mono_ms && __builtin_sub_overflow(mono_ms, c->mono_ms, &elapsed_ms)) {
        elapsed_ms = LEDGER_TIME_MAX_MS;
    }
    elapsed_ms = elapsed_ms > LEDGER_TIME_MAX_MS ? LEDGER_TIME_MAX_MS : elapsed_ms;
    return clamp_time(c->stamp_ms + elapsed_ms);
}

void node_clock_observe(struct node_clock *c, int64_t stamp_ms, int64_t mono_ms)
{
    if (stamp_ms <= 0) {
        return;
    }
    stamp_ms = clamp_time(stamp_ms);
    if (!c->set || stamp_ms > node_clock_now(c, mono_ms)) {
        anchor(c, stamp_ms, mono_ms);
    }
}

bool node_clock_check(struct node_clock *c, int64_t mono_ms, int64_t wall_ms)
{
    bool was = c->stepped;
    c->offset_ms = c->set ? clamp_time(wall_ms) - node_clock_now(c, mono_ms) : 0;
    c->stepped = c->offset_ms > NODE_CLOCK_STEP_MS || c->offset_ms < -NODE_CLOCK_STEP_MS;
    if (c->stepped && !was) {
        c->steps++;
    }
    return c->stepped != was;
}

int64_t node_clock_stamp(struct node_clock *c, int64_t mono_ms, int64_t wall_ms)
{
    wall_ms = clamp_time(wall_ms);
    if (!c->set) {
        anchor(c, wall_ms, mono_ms);
        node_clock_check(c, mono_ms, wall_ms);
        return wall_ms;
    }
    int64_t base_ms = node_clock_now(c, mono_ms);
    int64_t credit_ms = 0;
    int64_t earned_ms = 0;
    if (mono_ms > c->slew_mono_ms &&
        !__builtin_sub_overflow(mono_ms, c->slew_mono_ms, &earned_ms)) {
        credit_ms = earned_ms / NODE_CLOCK_SLEW_MS;
        c->slew_mono_ms += credit_ms * NODE_CLOCK_SLEW_MS;
    }
    int64_t gap_ms = wall_ms - base_ms; /* both in [0, LEDGER_TIME_MAX_MS]: no overflow */
    int64_t corr_ms = gap_ms > credit_ms ? credit_ms : gap_ms < -credit_ms ? -credit_ms : gap_ms;
    int64_t stamp_ms = clamp_time(base_ms + corr_ms);
    /* The credit never exceeds the time elapsed since the anchor (slew_mono_ms starts
     * there), so a slowing correction cannot take a stamp below the last one; only the
     * clamp at LEDGER_TIME_MAX_MS could, and the floor keeps it there. */
    assert(stamp_ms >= c->stamp_ms || base_ms == LEDGER_TIME_MAX_MS);
    stamp_ms = stamp_ms > c->stamp_ms ? stamp_ms : c->stamp_ms;
    c->stamp_ms = stamp_ms;
    c->mono_ms = mono_ms > c->mono_ms ? mono_ms : c->mono_ms;
    node_clock_check(c, c->mono_ms, wall_ms);
    return stamp_ms;
}

/* ---- The node's clock: readings and log lines. ---- */

static int64_t read_ms(clockid_t id)
{
    struct timespec ts;
    if (clock_gettime(id, &ts) != 0) {
        return 0;
    }
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The wall clock the slewing sees: CLOCK_REALTIME plus the fault-injection offset. */
static int64_t wall_ms(const struct node *n)
{
    return read_ms(CLOCK_REALTIME) + n->clock_offset_ms;
}

/* Log a step when it starts, again at most every CLOCK_LOG_INTERVAL_MS while it lasts,
 * and its end. */
static void log_step(struct node *n, bool changed, int64_t mono_ms)
{
    const struct node_clock *c = &n->clock;
    if (c->stepped && (changed || mono_ms >= n->clock_log_due_ms)) {
        node__logf(n, "warn",
                   "msg=\"wall clock is away from ledger time; ledger time keeps the monotonic "
                   "clock and slews toward it at 1 ms/s\" offset_ms=%" PRId64 " ledger_ms=%" PRId64
                   " steps=%" PRIu64,
                   c->offset_ms, node_clock_now(c, mono_ms), c->steps);
        n->clock_log_due_ms = mono_ms + CLOCK_LOG_INTERVAL_MS;
    } else if (!c->stepped && changed) {
        node__logf(n, "info",
                   "msg=\"wall clock back within 1 s of ledger time\" offset_ms=%" PRId64,
                   c->offset_ms);
    }
}

void node__clock_observe(struct node *n)
{
    int64_t mono_ms = read_ms(CLOCK_MONOTONIC);
    node_clock_observe(&n->clock, ledger_now_ms(n->ledger), mono_ms);
    log_step(n, node_clock_check(&n->clock, mono_ms, wall_ms(n)), mono_ms);
}

int64_t node__clock_stamp(struct node *n)
{
    int64_t mono_ms = read_ms(CLOCK_MONOTONIC);
    /* Everything committed before this term is applied (the barrier): never below it. */
    node_clock_observe(&n->clock, ledger_now_ms(n->ledger), mono_ms);
    bool was = n->clock.stepped;
    int64_t stamp_ms = node_clock_stamp(&n->clock, mono_ms, wall_ms(n));
    log_step(n, n->clock.stepped != was, mono_ms);
    return stamp_ms;
}

int64_t node__clock_offset_ms(const struct node *n)
{
    return n->clock.set ? wall_ms(n) - node_clock_now(&n->clock, read_ms(CLOCK_MONOTONIC)) : 0;
}
