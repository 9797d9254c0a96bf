/*
 * tallyd_protocol_test.c: hostile and unauthorized input against a real three-node tallyd
 * cluster, over raw sockets.
 *
 *   tallyd_protocol_test <path to tallyd> [tls [<path to tallyctl>]]
 *   tallyd_protocol_test <path to tallyd-faults> lost_answer
 *
 * With `tls` the cluster serves TLS with a client CA, and the test also shows: token
 * auth over TLS; a client certificate the token file maps to a role by its fingerprint
 * authenticating without a token, with that role whatever its OU says; a gateway
 * certificate refused admin work; a certificate the CA signed but the token file does
 * not list refused; a certificate from another CA, and a plain TCP client, both cut off
 * without affecting anybody else. Given tallyctl, it also runs
 * tallyctl over TLS, with a token and with the admin client certificate.
 *
 * With `lost_answer` (tallyd-faults' --debug-lose-answers-file): a reserve that commits
 * but whose answer the node lost is answered `internal`, and the node voids it at once.
 *
 * Each bad input must get an error answer or a closed connection (or both), and the
 * node must go on serving everybody else: after every case a fresh connection still
 * authenticates and a write still commits.
 */
#define _GNU_SOURCE
#include "cluster.h"

#include <arpa/inet.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static uint64_t next_rid = 1;

static void fill_rid(uint8_t id[LEDGER_REQUEST_ID_SIZE])
{
    memset(id, 0, LEDGER_REQUEST_ID_SIZE);
    uint64_t v = next_rid++;
    memcpy(id, &v, sizeof(v));
    id[15] = 0x7e; /* distinct from ids other tests might use */
}

/* A write of `cmd` on an authenticated connection; returns the response status. */
static int write_cmd(struct rc *c, const struct ledger_cmd *cmd, struct rpc_response *resp)
{
    struct rpc_request req = {.op = RPC_OP_WRITE};
    req.u.write = *cmd;
    if (rc_call(c, &req, resp) != 0) {
        return -1;
    }
    return resp->status;
}

static struct ledger_cmd create_cmd(const char *name, int64_t budget)
{
    struct ledger_cmd cmd = {.type = LEDGER_CMD_ACCOUNT_CREATE};
    fill_rid(cmd.request_id);
    snprintf(cmd.u.create.name, sizeof(cmd.u.create.name), "%s", name);
    cmd.u.create.limits.set = LEDGER_LIM_BUDGET;
    cmd.u.create.limits.budget_micros = budget;
    return cmd;
}

static struct ledger_cmd reserve_cmd(const char *account, int64_t estimate)
{
    struct ledger_cmd cmd = {.type = LEDGER_CMD_RESERVE};
    fill_rid(cmd.request_id);
    cmd.u.reserve.by_account = 1;
    snprintf(cmd.u.reserve.account, sizeof(cmd.u.reserve.account), "%s", account);
    cmd.u.reserve.estimate_micros = estimate;
    cmd.u.reserve.ttl_ms = 60000;
    return cmd;
}

/* The cluster still serves: a new admin connection to the leader commits a reserve. */
static void still_serving(const char *after)
{
    int leader = cl_leader(10000);
    struct rc c;
    struct rpc_response resp;
    struct ledger_cmd cmd = reserve_cmd("proto-root", 1);
    if (leader < 0 || rc_open(&c, leader) != 0 || rc_hello(&c, CL_ADMIN_TOKEN) != RPC_OK ||
        write_cmd(&c, &cmd, &resp) != RPC_OK || resp.u.write.result.status != LEDGER_OK) {
        H_FAIL("after %s the cluster no longer grants a reserve", after);
    }
    rc_close(&c);
    h_say("ok: %s, and the node still serves", after);
}

/* Open an admin connection to the leader. */
static void open_admin(struct rc *c)
{
    int leader = cl_leader(10000);
    if (leader < 0 || rc_open(c, leader) != 0 || rc_hello(c, CL_ADMIN_TOKEN) != RPC_OK) {
        H_FAIL("cannot open an admin connection");
    }
}

/* Expect an error answer with `status` and then (if `closes`) a closed connection. */
static void expect_error(struct rc *c, int status, bool closes, const char *what)
{
    struct rpc_response resp;
    if (rc_recv(c, RPC_OP_STATUS, &resp, 5000) != 0) {
        H_FAIL("%s: no answer", what);
    }
    if (resp.status != status) {
        H_FAIL("%s: answered %s (%s), expected %s", what, rpc_status_name(resp.status),
               resp.message, rpc_status_name(status));
    }
    if (closes && !rc_closed(c, 5000)) {
        H_FAIL("%s: the connection stayed open", what);
    }
    h_say("%s: %s \"%s\"%s", what, rpc_status_name(resp.status), resp.message,
          closes ? ", connection closed" : "");
}

static void frame_header(uint8_t h[4], uint32_t len)
{
    uint32_t be = htonl(len);
    memcpy(h, &be, 4);
}

static void case_garbage(void)
{
    struct rc c;
    open_admin(&c);
    static const char junk[] = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    rc_send_raw(&c, junk, sizeof(junk) - 1);
    expect_error(&c, RPC_ETOOBIG, true, "garbage (an HTTP request)");
    rc_close(&c);
    still_serving("garbage");
}

static void case_oversized(void)
{
    struct rc c;
    open_admin(&c);
    uint8_t h[4];
    frame_header(h, RPC_FRAME_MAX + 1);
    rc_send_raw(&c, h, sizeof(h));
    expect_error(&c, RPC_ETOOBIG, true, "a length of 1 MiB + 1");
    rc_close(&c);
    still_serving("an oversized frame");
}

static void case_deep_nesting(void)
{
    struct rc c;
    open_admin(&c);
    /* [seq=1, op=2, [[[[ ... ]]]]] with 100000 levels: fixarray(1) bytes. */
    size_t depth = 100000;
    uint8_t *frame = malloc(4 + 3 + depth + 1);
    frame_header(frame, (uint32_t)(3 + depth + 1));
    frame[4] = 0x93; /* fixarray of 3 */
    frame[5] = 0x01; /* seq 1 */
    frame[6] = 0x02; /* op write */
    memset(frame + 7, 0x91, depth);
    frame[7 + depth] = 0x90;
    rc_send_raw(&c, frame, 4 + 3 + depth + 1);
    free(frame);
    expect_error(&c, RPC_EBADREQ, false, "100000 nested arrays in a write");
    rc_close(&c);
    still_serving("deep nesting");
}

static void case_huge_counts(void)
{
    struct rc c;
    open_admin(&c);
    /* A request array claiming 2^32 - 1 elements, then a write whose command claims as
     * many, then a str32 of 4 GiB: each must be refused without allocating. */
    static const uint8_t top[] = {0xdd, 0xff, 0xff, 0xff, 0xff, 0x01};
    static const uint8_t cmd[] = {0x93, 0x02, 0x02, 0xdd, 0xff, 0xff, 0xff, 0xff};
    static const uint8_t str[] = {0x94, 0x03, 0x01, 0x01, 0xdb, 0xff, 0xff, 0xff, 0xff};
    const struct {
        const uint8_t *body;
        size_t len;
        const char *what;
    } cases[] = {
        {top, sizeof(top), "an array of 2^32-1 elements"},
        {cmd, sizeof(cmd), "a command of 2^32-1 fields"},
        {str, sizeof(str), "a hello token of 4 GiB"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        uint8_t h[4];
        frame_header(h, (uint32_t)cases[i].len);
        rc_send_raw(&c, h, 4);
        rc_send_raw(&c, cases[i].body, cases[i].len);
        expect_error(&c, RPC_EBADREQ, false, cases[i].what);
    }
    rc_close(&c);
    still_serving("huge container counts");
}

/* The nodes run with this HELLO deadline (TALLY_HELLO_TIMEOUT_MS, set in main). */
#define HELLO_TIMEOUT_MS 2000

static void case_stranger_frame_bound(void)
{
    int leader = cl_leader(10000);
    struct rc c;
    if (rc_open(&c, leader) != 0) {
        H_FAIL("connect");
    }
    uint8_t h[4];
    frame_header(h, RPC_HELLO_FRAME_MAX + 1);
    rc_send_raw(&c, h, sizeof(h));
    expect_error(&c, RPC_ETOOBIG, true, "a frame of 1 KiB + 1 before hello");
    rc_close(&c);

    /* After HELLO the bound is --max-frame again: 2 KiB of junk is malformed, not too big. */
    open_admin(&c);
    static uint8_t junk[4 + 2048];
    frame_header(junk, 2048);
    memset(junk + 4, 0xc1, 2048); /* 0xc1: never valid msgpack */
    rc_send_raw(&c, junk, sizeof(junk));
    expect_error(&c, RPC_EBADREQ, false, "2 KiB of junk after hello");
    rc_close(&c);
    still_serving("a stranger's large frame");
}

static void case_hello_deadline(void)
{
    int leader = cl_leader(10000);
    struct rc silent, hello;
    if (rc_open(&silent, leader) != 0 || rc_open(&hello, leader) != 0 ||
        rc_hello(&hello, CL_ADMIN_TOKEN) != RPC_OK) {
        H_FAIL("connect");
    }
    uint64_t before = 0, after = 0;
    cl_metric(leader, "tally_hello_timeouts_total", &before);
    int64_t start_ms = h_now_ms();
    if (rc_closed(&silent, HELLO_TIMEOUT_MS / 2)) {
        H_FAIL("a silent connection was closed before the HELLO deadline");
    }
    if (!rc_closed(&silent, HELLO_TIMEOUT_MS * 2)) {
        H_FAIL("a silent connection is still open %d ms after the HELLO deadline",
               HELLO_TIMEOUT_MS);
    }
    int64_t closed_ms = h_now_ms() - start_ms;
    rc_close(&silent);
    /* The authenticated connection outlives the deadline and still answers. */
    struct rpc_request req = {.op = RPC_OP_STATUS};
    struct rpc_response resp;
    rc_send(&hello, &req);
    if (rc_recv(&hello, RPC_OP_STATUS, &resp, 5000) != 0 || resp.status != RPC_OK) {
        H_FAIL("an authenticated connection did not outlive the HELLO deadline");
    }
    rc_close(&hello);
    /* The figures reach /metrics four times a second. */
    for (int tries = 0; tries < 20 && after <= before; tries++) {
        if (cl_metric(leader, "tally_hello_timeouts_total", &after) != 0) {
            H_FAIL("no tally_hello_timeouts_total on /metrics");
        }
        if (after <= before) {
            h_sleep_ms(100);
        }
    }
    if (after <= before) {
        H_FAIL("tally_hello_timeouts_total did not count the closed connection");
    }
    h_say("a silent connection: closed after %lld ms (deadline %d ms); "
          "tally_hello_timeouts_total %llu -> %llu",
          (long long)closed_ms, HELLO_TIMEOUT_MS, (unsigned long long)before,
          (unsigned long long)after);
}

/* A HELLO deadline outside 100 .. 600000 ms is refused at start: exit 3, one line why. */
static void case_hello_deadline_bounds(const char *tallyd)
{
    const char *bad[] = {"99", "600001"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char name[32];
        snprintf(name, sizeof(name), "bad-hello-timeout-%zu", i);
        const char *const extra[] = {"--hello-timeout-ms", bad[i], "--peer-insecure", NULL};
        int status = cl_config_status(tallyd, name, extra);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 3) {
            H_FAIL("--hello-timeout-ms %s: tallyd did not exit 3 (wait status %d)", bad[i], status);
        }
        h_say("--hello-timeout-ms %s: exit 3", bad[i]);
    }
}

static void case_no_auth(void)
{
    int leader = cl_leader(10000);
    struct rc c;
    if (rc_open(&c, leader) != 0) {
        H_FAIL("connect");
    }
    struct ledger_cmd cmd = reserve_cmd("proto-root", 1);
    struct rpc_request req = {.op = RPC_OP_WRITE};
    req.u.write = cmd;
    rc_send(&c, &req);
    expect_error(&c, RPC_EAUTH, true, "a write before hello");
    rc_close(&c);

    if (rc_open(&c, leader) != 0) {
        H_FAIL("connect");
    }
    if (rc_hello(&c, "not-a-token") != RPC_EAUTH || !rc_closed(&c, 5000)) {
        H_FAIL("a bad token was not refused with the connection closed");
    }
    h_say("a bad token: unauthenticated, connection closed");
    rc_close(&c);
    still_serving("unauthenticated requests");
}

static void case_wrong_role(void)
{
    int leader = cl_leader(10000);
    struct rc c;
    struct rpc_response resp;
    if (rc_open(&c, leader) != 0 || rc_hello(&c, CL_GATEWAY_TOKEN) != RPC_OK) {
        H_FAIL("gateway hello");
    }
    struct ledger_cmd create = create_cmd("proto-gw-made", 10);
    if (write_cmd(&c, &create, &resp) != RPC_EFORBIDDEN) {
        H_FAIL("a gateway created an account: %s", rpc_status_name(resp.status));
    }
    struct ledger_cmd reserve = reserve_cmd("proto-root", 1);
    if (write_cmd(&c, &reserve, &resp) != RPC_OK || resp.u.write.result.status != LEDGER_OK) {
        H_FAIL("a gateway could not reserve after a forbidden request");
    }
    h_say("gateway: account create forbidden, reserve granted on the same connection");
    rc_close(&c);

    if (rc_open(&c, leader) != 0 || rc_hello(&c, CL_READER_TOKEN) != RPC_OK) {
        H_FAIL("reader hello");
    }
    reserve = reserve_cmd("proto-root", 1);
    if (write_cmd(&c, &reserve, &resp) != RPC_EFORBIDDEN) {
        H_FAIL("a reader reserved: %s", rpc_status_name(resp.status));
    }
    struct rpc_request req = {.op = RPC_OP_ACCOUNT_GET};
    snprintf(req.u.get.name, sizeof(req.u.get.name), "proto-root");
    if (rc_call(&c, &req, &resp) != 0 || resp.status != RPC_OK ||
        strcmp(resp.u.account.name, "proto-root") != 0) {
        H_FAIL("a reader could not read an account");
    }
    h_say("reader: reserve forbidden, account read (held %lld)",
          (long long)resp.u.account.held_micros);
    rc_close(&c);
    still_serving("wrong roles");
}

static void case_not_leader(void)
{
    int leader = cl_leader(10000);
    int follower = (leader + 1) % CL_NODES;
    struct rc c;
    struct rpc_response resp;
    if (rc_open(&c, follower) != 0 || rc_hello(&c, CL_ADMIN_TOKEN) != RPC_OK) {
        H_FAIL("follower hello");
    }
    struct ledger_cmd reserve = reserve_cmd("proto-root", 1);
    char expect[64];
    cl_endpoint(leader, expect, sizeof(expect));
    if (write_cmd(&c, &reserve, &resp) != RPC_ENOTLEADER ||
        resp.leader_id != (uint64_t)leader + 1 || strcmp(resp.leader_address, expect) != 0) {
        H_FAIL("follower answered %s leader %llu at \"%s\", expected not_leader %d at %s",
               rpc_status_name(resp.status), (unsigned long long)resp.leader_id,
               resp.leader_address, leader + 1, expect);
    }
    h_say("follower: not_leader, leader %llu at %s", (unsigned long long)resp.leader_id,
          resp.leader_address);
    struct rpc_request req = {.op = RPC_OP_ACCOUNT_GET};
    req.u.get.flags = RPC_READ_STALE;
    snprintf(req.u.get.name, sizeof(req.u.get.name), "proto-root");
    if (rc_call(&c, &req, &resp) != 0 || resp.status != RPC_OK) {
        H_FAIL("a follower refused a stale read: %s", rpc_status_name(resp.status));
    }
    h_say("follower: stale read served");
    rc_close(&c);
}

static void case_pipelined(void)
{
    /* 500 reserves written before any answer is read: every one answered, by seq. */
    struct rc c;
    open_admin(&c);
    enum { N = 500 };
    struct rpc_buf b = {0};
    for (int i = 0; i < N; i++) {
        struct rpc_request req = {.op = RPC_OP_WRITE, .seq = (uint64_t)i + 1};
        req.u.write = reserve_cmd("proto-root", 1);
        rpc_request_encode(&b, &req);
    }
    rc_send_raw(&c, b.data, b.len);
    rpc_buf_free(&b);
    static bool seen[N + 1];
    uint64_t max_index = 0;
    for (int i = 0; i < N; i++) {
        struct rpc_response resp;
        if (rc_recv(&c, RPC_OP_WRITE, &resp, 10000) != 0 || resp.status != RPC_OK ||
            resp.seq == 0 || resp.seq > N || seen[resp.seq]) {
            H_FAIL("pipelined answer %d missing or wrong", i);
        }
        seen[resp.seq] = true;
        max_index = resp.u.write.index > max_index ? resp.u.write.index : max_index;
    }
    h_say("500 pipelined reserves answered, last index %llu", (unsigned long long)max_index);
    rc_close(&c);
}

/* HELLO with an empty token over TLS with client certificate `cert`; its status. */
static int hello_with_cert(const char *cert)
{
    int leader = cl_leader(10000); /* status calls present no certificate */
    cl_tls_client = cert;
    struct rc c;
    int status = -1;
    if (rc_open(&c, leader) == 0) {
        status = rc_hello(&c, "");
        if (status == RPC_OK && strcmp(cert, "gateway") == 0) {
            struct rpc_response resp;
            struct ledger_cmd create = create_cmd("proto-cert-made", 10);
            if (write_cmd(&c, &create, &resp) != RPC_EFORBIDDEN) {
                H_FAIL("a gateway certificate created an account");
            }
        }
        if (status == RPC_OK && strcmp(cert, "admin") == 0) {
            struct rpc_response resp;
            struct ledger_cmd create = create_cmd("proto-cert-made", 10);
            if (write_cmd(&c, &create, &resp) != RPC_OK || resp.u.write.result.status != 0) {
                H_FAIL("an admin certificate could not create an account");
            }
        }
    }
    rc_close(&c);
    cl_tls_client = NULL;
    return status;
}

static void case_tls(void)
{
    if (hello_with_cert("admin") != RPC_OK) {
        H_FAIL("an admin client certificate was not accepted");
    }
    h_say("tls: admin certificate (mapped by fingerprint; OU=reader) authenticated without a "
          "token, created an account");
    if (hello_with_cert("gateway") != RPC_OK) {
        H_FAIL("a gateway client certificate was not accepted");
    }
    h_say("tls: gateway certificate (OU=admin) authenticated, account create forbidden");
    if (hello_with_cert("stranger") != RPC_EAUTH) {
        H_FAIL("a certificate signed by the CA but not in the token file was not refused");
    }
    h_say("tls: a CA-signed certificate not in the token file is refused");
    if (hello_with_cert("rogue") == RPC_OK) {
        H_FAIL("a certificate from another CA was accepted");
    }
    h_say("tls: a certificate from another CA is refused");
    /* No certificate and no token: refused. */
    int leader = cl_leader(10000);
    struct rc c;
    if (rc_open(&c, leader) != 0 || rc_hello(&c, "") != RPC_EAUTH) {
        H_FAIL("an empty token without a certificate was not refused");
    }
    rc_close(&c);
    /* A plain TCP client speaking the protocol to the TLS port gets cut off. */
    int fd = h_connect(cl_nodes[leader].client_port, 2000);
    struct rpc_request req = {.op = RPC_OP_HELLO, .seq = 1};
    req.u.hello.version = RPC_PROTOCOL_VERSION;
    snprintf(req.u.hello.token, sizeof(req.u.hello.token), "%s", CL_ADMIN_TOKEN);
    struct rpc_buf b = {0};
    rpc_request_encode(&b, &req);
    h_send_all(fd, b.data, b.len, 2000);
    rpc_buf_free(&b);
    uint8_t buf[4096];
    int64_t deadline = h_now_ms() + 5000;
    ssize_t n;
    while ((n = h_recv_some(fd, buf, sizeof(buf), 1000)) > 0 && h_now_ms() < deadline) {
    }
    if (n != 0 && !(n < 0 && h_now_ms() < deadline)) {
        H_FAIL("a plain TCP client was not cut off by the TLS port");
    }
    close(fd);
    h_say("tls: a plain TCP client is cut off");
    still_serving("TLS refusals");
}

/* tallyctl over TLS against the cluster: `auth` is the authentication options. */
static void tallyctl_over_tls(const char *tallyctl, const char *auth)
{
    char endpoints[256], cmd[4096];
    cl_endpoints(endpoints, sizeof(endpoints));
    snprintf(cmd, sizeof(cmd),
             "%s --endpoints %s --tls-ca %s/tls/ca.pem %s --json account show proto-root "
             "> %s/tallyctl.out 2>&1",
             tallyctl, endpoints, h_dir, auth, h_dir);
    int rv = system(cmd);
    if (rv != 0) {
        H_FAIL("tallyctl over TLS (%s) exited %d: see %s/tallyctl.out", auth, rv, h_dir);
    }
    h_say("tallyctl over TLS with %s: ok", auth);
}

/* The state of reservation `id` as the leader reads it; -1 if it cannot be read. */
static int resv_state(struct rc *c, const uint8_t id[LEDGER_REQUEST_ID_SIZE])
{
    struct rpc_request req = {.op = RPC_OP_RESV_GET};
    memcpy(req.u.get.request_id, id, LEDGER_REQUEST_ID_SIZE);
    struct rpc_response resp;
    if (rc_call(c, &req, &resp) != 0 || resp.status != RPC_OK) {
        return -1;
    }
    return resp.u.reservation.state;
}

/* A reserve whose answer is lost after it committed is answered `internal` and voided by
 * the node (not by the client: this one sends nothing more), so no hold stays. */
static void case_lost_answer(const char *lose_file)
{
    struct rc c;
    open_admin(&c);
    FILE *f = fopen(lose_file, "w");
    if (f == NULL) {
        H_FAIL("cannot create %s", lose_file);
    }
    fclose(f);
    usleep(600 * 1000); /* the nodes look for the file 4 times a second */
    struct ledger_cmd cmd = reserve_cmd("proto-root", 5);
    struct rpc_response resp;
    int status = write_cmd(&c, &cmd, &resp);
    unlink(lose_file);
    if (status != RPC_EINTERNAL) {
        H_FAIL("a reserve whose answer was lost was answered %d, not internal", status);
    }
    h_say("lost answer: %s \"%s\"", rpc_status_name(status), resp.message);
    int state = -1;
    for (int i = 0; i < 100 && state != LEDGER_RESV_VOIDED; i++) {
        usleep(50 * 1000);
        state = resv_state(&c, cmd.request_id);
    }
    if (state != LEDGER_RESV_VOIDED) {
        H_FAIL("the reserve answered internal was not voided (state %d)", state);
    }
    uint64_t voids = 0;
    int leader = cl_leader(10000);
    usleep(600 * 1000); /* the figures are published 4 times a second */
    if (cl_metric(leader, "tally_lost_answer_voids_total", &voids) != 0 || voids < 1) {
        H_FAIL("tally_lost_answer_voids_total is %llu", (unsigned long long)voids);
    }
    h_say("ok: the reserve answered internal was voided (tally_lost_answer_voids_total %llu)",
          (unsigned long long)voids);
    rc_close(&c);
    usleep(600 * 1000);
    still_serving("a lost answer");
}

/* The end of every run: the replicas agree, and every node stops cleanly. */
static int converge_and_stop(void)
{
    cl_converge_and_stop();
    h_pass();
    return 0;
}

int main(int argc, char **argv)
{
    bool tls = argc >= 3 && strcmp(argv[2], "tls") == 0;
    bool lost_answer = argc == 3 && strcmp(argv[2], "lost_answer") == 0;
    if (argc != 2 && !(tls && argc <= 4) && !lost_answer) {
        fprintf(stderr, "usage: %s <tallyd> [tls [<tallyctl>] | lost_answer]\n", argv[0]);
        return 2;
    }
    h_init("tally-protocol-test", 150);
    char lose_file[PATH_MAX];
    snprintf(lose_file, sizeof(lose_file), "%s/lose-answers", h_dir);
    if (lost_answer) {
        setenv("TALLY_DEBUG_LOSE_ANSWERS_FILE", lose_file, 1); /* the nodes inherit it */
    }
    char hello_timeout[16];
    snprintf(hello_timeout, sizeof(hello_timeout), "%d", HELLO_TIMEOUT_MS);
    setenv("TALLY_HELLO_TIMEOUT_MS", hello_timeout, 1); /* the nodes inherit it */
    if (tls) {
        cl_tls_setup();
    }
    cl_start(argv[1]);
    struct rc c;
    struct rpc_response resp;
    open_admin(&c);
    struct ledger_cmd create = create_cmd("proto-root", 1000000000);
    if (write_cmd(&c, &create, &resp) != RPC_OK || resp.u.write.result.status != LEDGER_OK) {
        H_FAIL("create the account");
    }
    rc_close(&c);
    if (lost_answer) {
        case_lost_answer(lose_file);
        return converge_and_stop();
    }
    case_garbage();
    case_oversized();
    case_deep_nesting();
    case_huge_counts();
    case_stranger_frame_bound();
    case_hello_deadline();
    case_hello_deadline_bounds(argv[1]);
    case_no_auth();
    case_wrong_role();
    case_not_leader();
    case_pipelined();
    if (tls) {
        case_tls();
    }
    if (tls && argc == 4) {
        char auth[PATH_MAX + 64];
        tallyctl_over_tls(argv[3], "--token " CL_ADMIN_TOKEN);
        snprintf(auth, sizeof(auth), "--tls-cert %s/tls/admin.pem --tls-key %s/tls/admin.key",
                 h_dir, h_dir);
        tallyctl_over_tls(argv[3], auth);
    }
    return converge_and_stop();
}
