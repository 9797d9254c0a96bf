/*
 * tallyd_storage_test.c: a three-node tallyd cluster on a small ledger map, filled up to
 * its storage reserve, over the raw protocol and libtally.
 *
 *   tallyd_storage_test <path to tallyd>
 *
 * With --max-ledger-bytes 4 MiB and --storage-reserve-bytes 2 MiB, reserves are written
 * until the leader answers UNAVAILABLE with the reason "storage". Then: reads still
 * answer (linearizable on the leader, stale on a follower), every node still runs, the
 * metrics say so, and libtally ends a reserve at once with TALLY_UNAVAILABLE naming
 * "storage". The whole cluster restarted on the same full map starts, reads, and still
 * refuses writes; restarted with --max-ledger-bytes 16 MiB it accepts them again, and
 * the replicas converge. Out-of-range storage flags make tallyd exit 3.
 */
#define _GNU_SOURCE
#include "cluster.h"

#include "client/tally.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#define SMALL_MAP "4194304"
#define LARGE_MAP "16777216"
#define RESERVE "2097152"
#define WAVE 32            /* reserves pipelined at once (under --max-inflight 64) */
#define RESERVES_MAX 40000 /* far more than 2 MiB of reservations: the test's own bound */

static const char *const small_flags[] = {"--max-ledger-bytes", SMALL_MAP,
                                          "--storage-reserve-bytes", RESERVE, NULL};
static const char *const large_flags[] = {"--max-ledger-bytes", LARGE_MAP,
                                          "--storage-reserve-bytes", RESERVE, NULL};
static uint64_t next_rid = 1;

static void fill_rid(uint8_t id[LEDGER_REQUEST_ID_SIZE])
{
    memset(id, 0, LEDGER_REQUEST_ID_SIZE);
    uint64_t v = next_rid++;
    memcpy(id, &v, sizeof(v));
    id[15] = 0x57;
}

/* A connection to node i, authenticated with `token`. */
static void open_to(struct rc *c, int i, const char *token)
{
    if (rc_open(c, i) != 0 || rc_hello(c, token) != RPC_OK) {
        H_FAIL("cannot open an authenticated connection to node %d", i + 1);
    }
}

static struct rpc_request reserve_req(void)
{
    struct rpc_request req = {.op = RPC_OP_WRITE};
    struct ledger_cmd *cmd = &req.u.write;
    cmd->type = LEDGER_CMD_RESERVE;
    fill_rid(cmd->request_id);
    cmd->u.reserve.by_account = 1;
    snprintf(cmd->u.reserve.account, sizeof(cmd->u.reserve.account), "fill");
    cmd->u.reserve.estimate_micros = 1000;
    cmd->u.reserve.ttl_ms = 3600000;
    return req;
}

static bool is_storage(const struct rpc_response *resp)
{
    return resp->status == RPC_EUNAVAILABLE &&
           strncmp(resp->message, RPC_REASON_STORAGE ":", strlen(RPC_REASON_STORAGE) + 1) == 0;
}

/* One write on the leader: its answer. */
static void write_one(struct rpc_request *req, struct rpc_response *resp)
{
    int leader = cl_leader(15000);
    if (leader < 0) {
        H_FAIL("no leader");
    }
    struct rc c;
    open_to(&c, leader, CL_ADMIN_TOKEN);
    if (rc_call(&c, req, resp) != 0) {
        H_FAIL("no answer to a write");
    }
    rc_close(&c);
}

/* Reserve in pipelined waves until the leader refuses for storage; returns the grants. */
static int fill_to_reserve(void)
{
    int leader = cl_leader(15000);
    struct rc c;
    open_to(&c, leader, CL_GATEWAY_TOKEN);
    int granted = 0;
    bool refused = false;
    while (!refused) {
        if (granted > RESERVES_MAX) {
            H_FAIL("%d reserves granted on a %s-byte map: never refused", granted, SMALL_MAP);
        }
        for (int k = 0; k < WAVE; k++) {
            struct rpc_request req = reserve_req();
            if (rc_send(&c, &req) != 0) {
                H_FAIL("send a reserve");
            }
        }
        for (int k = 0; k < WAVE; k++) {
            struct rpc_response resp;
            if (rc_recv(&c, RPC_OP_WRITE, &resp, 10000) != 0) {
                H_FAIL("no answer to a reserve after %d grants", granted);
            }
            if (resp.status == RPC_OK && resp.u.write.result.status == LEDGER_OK) {
                granted++;
            } else if (is_storage(&resp)) {
                refused = true;
            } else {
                H_FAIL("reserve answered %s: %s", rpc_status_name(resp.status), resp.message);
            }
        }
    }
    rc_close(&c);
    h_say("ok: refused for storage after %d grants", granted);
    return granted;
}

/* Account "fill" read from node i (stale unless it is the leader): its inflight count. */
static uint64_t read_fill(int i, uint32_t flags)
{
    struct rc c;
    open_to(&c, i, CL_READER_TOKEN);
    struct rpc_request req = {.op = RPC_OP_ACCOUNT_GET};
    snprintf(req.u.get.name, sizeof(req.u.get.name), "fill");
    req.u.get.flags = flags;
    struct rpc_response resp;
    if (rc_call(&c, &req, &resp) != 0 || resp.status != RPC_OK) {
        H_FAIL("account read on node %d failed", i + 1);
    }
    rc_close(&c);
    return resp.u.account.inflight;
}

static void expect_all_running(void)
{
    for (int i = 0; i < CL_NODES; i++) {
        int status;
        if (waitpid(cl_nodes[i].p.pid, &status, WNOHANG) != 0) {
            H_FAIL("node %d exited (status 0x%x)", i + 1, status);
        }
    }
}

/* Wait up to 3 s for node i's `series` to read `want` (or at least `want`): figures are
 * published 4 times a second. */
static void expect_metric_cmp(int i, const char *series, uint64_t want, bool at_least)
{
    uint64_t v = 0;
    int64_t deadline_ms = h_now_ms() + 3000;
    for (;;) {
        bool ok = cl_metric(i, series, &v) == 0 && (v == want || (at_least && v > want));
        if (ok) {
            return;
        }
        if (h_now_ms() > deadline_ms) {
            H_FAIL("node %d: %s is %llu, want %s%llu", i + 1, series, (unsigned long long)v,
                   at_least ? "at least " : "", (unsigned long long)want);
        }
        h_sleep_ms(50);
    }
}

static void expect_metric(int i, const char *series, uint64_t want)
{
    expect_metric_cmp(i, series, want, false);
}

/* Past the reserve: writes refused, reads answered, nobody exited, the metrics agree. */
static void expect_refusing(uint64_t open_holds)
{
    struct rpc_request req = reserve_req();
    struct rpc_response resp;
    write_one(&req, &resp);
    if (!is_storage(&resp)) {
        H_FAIL("a write past the reserve answered %s: %s", rpc_status_name(resp.status),
               resp.message);
    }
    int leader = cl_leader(15000);
    int follower = (leader + 1) % CL_NODES;
    if (read_fill(leader, 0) != open_holds || read_fill(follower, RPC_READ_STALE) != open_holds) {
        H_FAIL("reads past the reserve do not show the %llu holds", (unsigned long long)open_holds);
    }
    expect_all_running();
    expect_metric(leader, "tally_storage_refusing", 1);
    expect_metric(leader, "tally_ledger_map_max_bytes", strtoull(SMALL_MAP, NULL, 10));
    expect_metric_cmp(leader, "tally_storage_refused_total", 1, true);
    h_say("ok: writes refused for storage, reads answered, every node running");
}

/* libtally ends a reserve refused for storage at once, UNAVAILABLE, naming the reason. */
static void client_sees_storage(void)
{
    char endpoints[256];
    cl_endpoints(endpoints, sizeof(endpoints));
    struct tally_config cfg;
    tally_config_init(&cfg);
    cfg.endpoints = endpoints;
    cfg.token = CL_GATEWAY_TOKEN;
    struct tally *c;
    char errmsg[TALLY_ERRMSG_SIZE];
    if (tally_open(&c, &cfg, errmsg) != 0) {
        H_FAIL("tally_open: %s", errmsg);
    }
    struct tally_reserve_args args = {.account = "fill", .estimate_micros = 1000, .ttl_ms = 60000};
    struct tally_result res;
    int64_t start_ms = h_now_ms();
    int rc = tally_reserve(c, &args, 10000, &res);
    int64_t took_ms = h_now_ms() - start_ms;
    tally_close(c);
    if (rc != -TALLY_EUNAVAILABLE || res.outcome != TALLY_UNAVAILABLE ||
        strstr(res.message, RPC_REASON_STORAGE) == NULL) {
        H_FAIL("libtally: rc %d outcome %d message \"%s\"", rc, res.outcome, res.message);
    }
    if (took_ms > 5000) {
        H_FAIL("libtally waited %lld ms on a storage refusal", (long long)took_ms);
    }
    h_say("ok: libtally: UNAVAILABLE in %lld ms: %s", (long long)took_ms, res.message);
}

/* Out-of-range storage flags: tallyd exits 3 before it opens anything. */
static void bad_flags_refused(const char *tallyd)
{
    static const char *const bad[][3] = {
        {"--max-ledger-bytes", "4194303", NULL},          /* under 4 MiB */
        {"--max-ledger-bytes", "17592186044417", NULL},   /* over 16 TiB */
        {"--storage-reserve-bytes", "1048575", NULL},     /* under 1 MiB */
        {"--storage-reserve-bytes", "34359738369", NULL}, /* over half of 64 GiB */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char name[32];
        snprintf(name, sizeof(name), "bad-storage-flag-%zu", i);
        const char *const extra[] = {bad[i][0], bad[i][1], "--peer-insecure", NULL};
        int status = cl_config_status(tallyd, name, extra);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 3) {
            H_FAIL("%s %s: tallyd did not exit 3 (wait status %d)", bad[i][0], bad[i][1], status);
        }
        h_say("ok: %s %s: exit 3", bad[i][0], bad[i][1]);
    }
}

static void restart_all(const char *const *flags)
{
    for (int i = 0; i < CL_NODES; i++) {
        cl_stop(i, SIGTERM);
    }
    cl_extra_flags = flags;
    for (int i = 0; i < CL_NODES; i++) {
        cl_spawn(i);
    }
    if (cl_leader(20000) < 0) {
        H_FAIL("no leader after the restart");
    }
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s <tallyd>\n", argv[0]);
        return 2;
    }
    h_init("tally-storage-test", 170);
    bad_flags_refused(argv[1]);
    cl_extra_flags = small_flags;
    cl_start(argv[1]);
    struct rpc_request create = {.op = RPC_OP_WRITE};
    create.u.write.type = LEDGER_CMD_ACCOUNT_CREATE;
    fill_rid(create.u.write.request_id);
    snprintf(create.u.write.u.create.name, sizeof(create.u.write.u.create.name), "fill");
    struct rpc_response resp;
    write_one(&create, &resp);
    if (resp.status != RPC_OK || resp.u.write.result.status != LEDGER_OK) {
        H_FAIL("create the account: %s %s", rpc_status_name(resp.status), resp.message);
    }
    uint64_t holds = (uint64_t)fill_to_reserve();
    expect_refusing(holds);
    client_sees_storage();

    restart_all(small_flags);
    h_say("ok: the cluster restarted on the full map");
    expect_refusing(holds);

    restart_all(large_flags);
    struct rpc_request req = reserve_req();
    write_one(&req, &resp);
    if (resp.status != RPC_OK || resp.u.write.result.status != LEDGER_OK) {
        H_FAIL("a write after the map was enlarged answered %s: %s", rpc_status_name(resp.status),
               resp.message);
    }
    int leader = cl_leader(15000);
    expect_metric(leader, "tally_storage_refusing", 0);
    expect_metric(leader, "tally_ledger_map_max_bytes", strtoull(LARGE_MAP, NULL, 10));
    h_say("ok: writes resume on a larger map");
    char hash_hex[65];
    cl_converged(20000, 0, hash_hex);
    h_pass();
    return 0;
}
