/*
 * node_clock_test.c: the batch stamp (raft/clock.c), a pure function of the previous
 * stamp, the monotonic reading and the wall reading.
 *
 * Ledger time follows the monotonic clock; the wall clock steers it by at most 1 ms per
 * second elapsed; a wall clock that steps by 40 days either way neither moves ledger time
 * at once nor stops it; a new leader goes on from the stamp it last applied.
 */
#include "test.h" /* first: it sets _GNU_SOURCE */
#include "raft/clock.h"
#include "wire/wire.h"

#define T0 1700000000000LL /* a wall time, ms */
#define DAY_MS 86400000LL

static void empty_clock_stamps_the_wall_clock(void)
{
    struct node_clock c;
    node_clock_init(&c);
    CHECK_EQ_INT(node_clock_now(&c, 5000), 0);
    CHECK_EQ_INT(node_clock_stamp(&c, 5000, T0), T0);
    CHECK_EQ_INT(c.offset_ms, 0);
    CHECK_EQ_INT(c.steps, 0);
    node_clock_init(&c);
    CHECK_EQ_INT(node_clock_stamp(&c, 5000, -7), 0); /* clamped into [0, 9999-12-31] */
    node_clock_init(&c);
    CHECK_EQ_INT(node_clock_stamp(&c, 5000, LEDGER_TIME_MAX_MS + 5), LEDGER_TIME_MAX_MS);
    CHECK_EQ_INT(node_clock_stamp(&c, 9000, LEDGER_TIME_MAX_MS), LEDGER_TIME_MAX_MS);
}

static void stamps_follow_the_monotonic_clock_when_the_wall_agrees(void)
{
    struct node_clock c;
    node_clock_init(&c);
    node_clock_stamp(&c, 100, T0);
    CHECK_EQ_INT(node_clock_stamp(&c, 100, T0), T0); /* no time elapsed: the same stamp */
    CHECK_EQ_INT(node_clock_stamp(&c, 1100, T0 + 1000), T0 + 1000);
    CHECK_EQ_INT(node_clock_stamp(&c, 61100, T0 + 61000), T0 + 61000);
    CHECK_EQ_INT(c.steps, 0);
}

static void forward_step_of_40_days_slews_1_ms_per_second(void)
{
    struct node_clock c;
    node_clock_init(&c);
    node_clock_stamp(&c, 0, T0);
    int64_t wall = T0 + 40 * DAY_MS;
    CHECK_EQ_INT(node_clock_stamp(&c, 1000, wall + 1000), T0 + 1000 + 1);
    CHECK(c.stepped);
    CHECK_EQ_INT(c.steps, 1);
    CHECK_EQ_INT(c.offset_ms, 40 * DAY_MS - 1);
    CHECK_EQ_INT(node_clock_stamp(&c, 11000, wall + 11000), T0 + 11000 + 11);
    CHECK_EQ_INT(c.steps, 1); /* one step, however long it lasts */
    /* An hour later ledger time is 3.6 s ahead of real time, not 40 days. */
    CHECK_EQ_INT(node_clock_stamp(&c, 3600000, wall + 3600000), T0 + 3600000 + 3600);
}

static void backward_step_of_40_days_does_not_stop_ledger_time(void)
{
    struct node_clock c;
    node_clock_init(&c);
    node_clock_stamp(&c, 0, T0);
    int64_t wall = T0 - 40 * DAY_MS;
    int64_t a = node_clock_stamp(&c, 5000, wall + 5000);
    int64_t b = node_clock_stamp(&c, 6000, wall + 6000);
    CHECK_EQ_INT(a, T0 + 5000 - 5);
    CHECK_EQ_INT(b - a, 999); /* two reserves a second apart: a second apart, less 1 ms */
    CHECK(c.offset_ms < -39 * DAY_MS);
    CHECK_EQ_INT(c.steps, 1);
}

static void frequent_stamps_slew_at_the_same_rate_as_rare_ones(void)
{
    struct node_clock often, rare;
    node_clock_init(&often);
    node_clock_init(&rare);
    node_clock_stamp(&often, 0, T0);
    node_clock_stamp(&rare, 0, T0);
    int64_t wall = T0 + 40 * DAY_MS;
    int64_t last = 0;
    for (int64_t ms = 1; ms <= 10000; ms++) {
        int64_t s = node_clock_stamp(&often, ms, wall + ms);
        CHECK(s >= last);
        last = s;
    }
    CHECK_EQ_INT(last, T0 + 10000 + 10);
    CHECK_EQ_INT(node_clock_stamp(&rare, 10000, wall + 10000), last);
}

static void a_small_drift_is_closed_and_not_overshot(void)
{
    struct node_clock c;
    node_clock_init(&c);
    node_clock_stamp(&c, 0, T0);
    /* The wall clock runs 5 ms ahead: closed after 5 s, then followed exactly. */
    CHECK_EQ_INT(node_clock_stamp(&c, 2000, T0 + 2005), T0 + 2002);
    CHECK_EQ_INT(node_clock_stamp(&c, 9000, T0 + 9005), T0 + 9005);
    CHECK_EQ_INT(node_clock_stamp(&c, 20000, T0 + 20005), T0 + 20005);
    CHECK_EQ_INT(c.offset_ms, 0);
    CHECK_EQ_INT(c.steps, 0);
}

static void a_new_leader_goes_on_from_the_last_applied_stamp(void)
{
    struct node_clock c;
    node_clock_init(&c);
    node_clock_observe(&c, 0, 10); /* a ledger never stamped: nothing learned */
    CHECK(!c.set);
    /* Its own monotonic clock reads 777 when it applies stamp T0. */
    node_clock_observe(&c, T0, 777);
    CHECK_EQ_INT(node_clock_now(&c, 777 + 2500), T0 + 2500);
    /* Elected 3 s later with a wall clock 40 days ahead: 3 ms of correction, no jump. */
    CHECK_EQ_INT(node_clock_stamp(&c, 3777, T0 + 40 * DAY_MS), T0 + 3000 + 3);
    /* The same with a wall clock that agrees. */
    node_clock_init(&c);
    node_clock_observe(&c, T0, 777);
    CHECK_EQ_INT(node_clock_stamp(&c, 3777, T0 + 3000), T0 + 3000);
}

static void observe_only_moves_ledger_time_forward(void)
{
    struct node_clock c;
    node_clock_init(&c);
    node_clock_stamp(&c, 1000, T0);
    /* The leader applies its own stamp later: its own time is ahead, nothing changes. */
    node_clock_observe(&c, T0, 1500);
    CHECK_EQ_INT(node_clock_now(&c, 2000), T0 + 1000);
    /* An earlier stamp changes nothing either. */
    node_clock_observe(&c, T0 - 50000, 2000);
    CHECK_EQ_INT(node_clock_now(&c, 2000), T0 + 1000);
    /* A later one (another leader's) is the new anchor. */
    node_clock_observe(&c, T0 + 5000, 2000);
    CHECK_EQ_INT(node_clock_now(&c, 3000), T0 + 6000);
    /* A monotonic reading before the anchor counts as no time: never backwards. */
    CHECK_EQ_INT(node_clock_stamp(&c, 1000, T0), T0 + 5000);
}

static void check_counts_each_step_once(void)
{
    struct node_clock c;
    node_clock_init(&c);
    CHECK(!node_clock_check(&c, 0, T0)); /* not set: offset 0 */
    CHECK_EQ_INT(c.offset_ms, 0);
    node_clock_stamp(&c, 0, T0);
    CHECK(!node_clock_check(&c, 500, T0 + 1500)); /* 1000 ms off: within the bound */
    CHECK_EQ_INT(c.offset_ms, 1000);
    CHECK(node_clock_check(&c, 500, T0 + 1501));
    CHECK(c.stepped);
    CHECK_EQ_INT(c.steps, 1);
    CHECK(!node_clock_check(&c, 600, T0 - DAY_MS));
    CHECK_EQ_INT(c.steps, 1);
    CHECK(node_clock_check(&c, 700, T0 + 700));
    CHECK(!c.stepped);
    CHECK(node_clock_check(&c, 800, T0 - DAY_MS));
    CHECK_EQ_INT(c.steps, 2);
    CHECK_EQ_INT(c.offset_ms, -DAY_MS - 800);
}

static void extreme_readings_stay_in_range(void)
{
    struct node_clock c;
    node_clock_init(&c);
    node_clock_stamp(&c, INT64_MIN, T0);
    CHECK_EQ_INT(node_clock_now(&c, INT64_MAX), LEDGER_TIME_MAX_MS);
    CHECK_EQ_INT(node_clock_stamp(&c, INT64_MAX, INT64_MIN), LEDGER_TIME_MAX_MS);
    CHECK_EQ_INT(node_clock_stamp(&c, INT64_MIN, INT64_MAX), LEDGER_TIME_MAX_MS);
    node_clock_observe(&c, INT64_MAX, INT64_MIN);
    CHECK_EQ_INT(node_clock_now(&c, 0), LEDGER_TIME_MAX_MS);
}

int main(void)
{
    TEST_MAIN_BEGIN;
    TEST(empty_clock_stamps_the_wall_clock);
    TEST(stamps_follow_the_monotonic_clock_when_the_wall_agrees);
    TEST(forward_step_of_40_days_slews_1_ms_per_second);
    TEST(backward_step_of_40_days_does_not_stop_ledger_time);
    TEST(frequent_stamps_slew_at_the_same_rate_as_rare_ones);
    TEST(a_small_drift_is_closed_and_not_overshot);
    TEST(a_new_leader_goes_on_from_the_last_applied_stamp);
    TEST(observe_only_moves_ledger_time_forward);
    TEST(check_counts_each_step_once);
    TEST(extreme_readings_stay_in_range);
    TEST_MAIN_END;
}
