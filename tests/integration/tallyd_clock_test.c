/*
 * tallyd_clock_test.c: ledger time on real processes when every node's wall clock
 * steps 40 days ahead (tallyd-faults' --debug-clock-offset-file, through the inherited
 * TALLY_DEBUG_CLOCK_OFFSET_FILE).
 *
 *   tallyd_clock_test <path to tallyd-faults> <path to tallyd>
 *
 * First, the production tallyd has no debug clock: it refuses --debug-clock-offset-file
 * and its usage does not name it, while tallyd-faults' does.
 *
 * Reserves keep being stamped on real time (their created time, expires_at - ttl, stays
 * within seconds of this process's wall clock), the leader's /metrics shows the step
 * (tally_clock_offset_ms about 40 days, tally_clock_steps_total at least 1), and once the
 * clock is put right two reserves a second apart are stamped about a second apart:
 * ledger time did not stand still.
 */
#define _GNU_SOURCE
#include "cluster.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define STEP_MS 3456000000LL /* 40 days */
#define TTL_MS 60000
#define SLACK_MS 3000 /* commit latency and a loaded machine */

static char clock_file[PATH_MAX];
static uint64_t next_rid = 1;

static int64_t wall_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Every node's wall clock is offset by `offset_ms` from the next re-read (4 a second). */
static void set_offset(long long offset_ms)
{
    char tmp[PATH_MAX + 8];
    snprintf(tmp, sizeof(tmp), "%s.tmp", clock_file);
    FILE *f = fopen(tmp, "w");
    if (f == NULL) {
        H_FAIL("cannot write %s", tmp);
    }
    fprintf(f, "%lld\n", offset_ms);
    fclose(f);
    if (rename(tmp, clock_file) != 0) {
        H_FAIL("cannot rename %s", tmp);
    }
    usleep(700 * 1000);
}

static void write_ok(struct ledger_cmd *cmd, struct rpc_response *resp, const char *what)
{
    memset(cmd->request_id, 0, LEDGER_REQUEST_ID_SIZE);
    memcpy(cmd->request_id, &next_rid, sizeof(next_rid));
    next_rid++;
    cmd->request_id[15] = 0xc1;
    struct rc c;
    int leader = cl_leader(10000);
    if (leader < 0 || rc_open(&c, leader) != 0 || rc_hello(&c, CL_ADMIN_TOKEN) != RPC_OK) {
        H_FAIL("%s: cannot open an admin connection", what);
    }
    struct rpc_request req = {.op = RPC_OP_WRITE};
    req.u.write = *cmd;
    if (rc_call(&c, &req, resp) != 0 || resp->status != RPC_OK ||
        resp->u.write.result.status != LEDGER_OK) {
        H_FAIL("%s: not granted", what);
    }
    rc_close(&c);
}

/* A reserve on clock-root; returns its ledger time (expires_at - ttl). */
static int64_t reserve_time(const char *what)
{
    struct ledger_cmd cmd = {.type = LEDGER_CMD_RESERVE};
    cmd.u.reserve.by_account = 1;
    snprintf(cmd.u.reserve.account, sizeof(cmd.u.reserve.account), "clock-root");
    cmd.u.reserve.estimate_micros = 1;
    cmd.u.reserve.ttl_ms = TTL_MS;
    struct rpc_response resp;
    write_ok(&cmd, &resp, what);
    return resp.u.write.result.expires_at_ms - TTL_MS;
}

/* Ledger time `t_ms` is within SLACK_MS of this process's wall clock. */
static void expect_real_time(int64_t t_ms, const char *what)
{
    int64_t wall_ms = wall_now_ms();
    if (t_ms > wall_ms + SLACK_MS || t_ms < wall_ms - SLACK_MS) {
        H_FAIL("%s: stamped %lld, %lld ms from the wall clock", what, (long long)t_ms,
               (long long)(t_ms - wall_ms));
    }
    h_say("%s: stamped %lld ms from the wall clock", what, (long long)(t_ms - wall_ms));
}

/* Exit status of `command` run by the shell, or -1. */
static int run_status(const char *fmt, const char *binary)
{
    char command[PATH_MAX + 128];
    snprintf(command, sizeof(command), fmt, binary);
    int rc = system(command);
    return rc != -1 && WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

static void debug_clock_only_in_tallyd_faults(const char *faults, const char *tallyd)
{
    if (run_status("%s --debug-clock-offset-file /nonexistent 2>&1 | grep -q unrecognized",
                   tallyd) != 0 ||
        run_status("%s --help 2>&1 | grep -q debug-clock", tallyd) == 0) {
        H_FAIL("the production tallyd has --debug-clock-offset-file");
    }
    if (run_status("%s --help 2>&1 | grep -q debug-clock-offset-file", faults) != 0) {
        H_FAIL("tallyd-faults does not name --debug-clock-offset-file");
    }
    h_say("ok: --debug-clock-offset-file is only in tallyd-faults");
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s <tallyd-faults> <tallyd>\n", argv[0]);
        return 2;
    }
    h_init("tally-clock-test", 150);
    debug_clock_only_in_tallyd_faults(argv[1], argv[2]);
    snprintf(clock_file, sizeof(clock_file), "%s/clock", h_dir);
    setenv("TALLY_DEBUG_CLOCK_OFFSET_FILE", clock_file, 1); /* the nodes inherit it */
    cl_start(argv[1]);
    struct ledger_cmd create = {.type = LEDGER_CMD_ACCOUNT_CREATE};
    snprintf(create.u.create.name, sizeof(create.u.create.name), "clock-root");
    struct rpc_response resp;
    write_ok(&create, &resp, "create clock-root");
    expect_real_time(reserve_time("before the step"), "before the step");

    set_offset(STEP_MS);
    expect_real_time(reserve_time("40 days ahead"), "40 days ahead");
    int leader = cl_leader(10000);
    usleep(600 * 1000); /* the figures are published 4 times a second */
    uint64_t offset = 0, steps = 0;
    if (cl_metric(leader, "tally_clock_offset_ms", &offset) != 0 ||
        offset < (uint64_t)(STEP_MS - 60000) || offset > (uint64_t)(STEP_MS + 60000)) {
        H_FAIL("tally_clock_offset_ms is %llu on the leader", (unsigned long long)offset);
    }
    if (cl_metric(leader, "tally_clock_steps_total", &steps) != 0 || steps < 1) {
        H_FAIL("tally_clock_steps_total is %llu on the leader", (unsigned long long)steps);
    }
    h_say("ok: the leader shows tally_clock_offset_ms %llu, tally_clock_steps_total %llu",
          (unsigned long long)offset, (unsigned long long)steps);

    set_offset(0);
    int64_t a = reserve_time("put right");
    expect_real_time(a, "put right");
    usleep(1000 * 1000);
    int64_t b = reserve_time("a second later");
    if (b - a < 700 || b - a > 1000 + SLACK_MS) {
        H_FAIL("two reserves a second apart were stamped %lld ms apart", (long long)(b - a));
    }
    h_say("ok: two reserves a second apart were stamped %lld ms apart", (long long)(b - a));
    cl_converge_and_stop();
    h_pass();
    return 0;
}
