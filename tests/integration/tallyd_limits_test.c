/*
 * tallyd_limits_test.c: what a node bounds before and after authentication, against a
 * real three-node tallyd cluster over raw sockets.
 *
 *   tallyd_limits_test <path to tallyd> [tls] [case]
 *
 * Each case sets a node up to be exhausted and measures that it is not: 200 strangers
 * holding partial frames (the node's RSS, the HELLO deadline), idle connections (the
 * idle timeout), one address opening too many connections (the per-address limit), a
 * reader pipelining thousands of list requests without reading the answers (the output
 * bound inside the decode loop), two HASH requests at once (the one worker), and 64
 * stalled HTTP sockets (the HTTP per-address limit and header timeout). Clients bind
 * distinct loopback addresses (127.0.0.0/8 is all loopback on Linux) where a case needs
 * "another address". Short deadlines come from the environment the nodes inherit; the
 * new flags out of range must stop tallyd at start. With a case name (strangers, idle,
 * per_address, burst, hash, http, flag_bounds) only that case runs. With `tls` the
 * client port serves TLS and the cases that need no source address of their own run on
 * it: strangers (whose partial frames are then partial TLS records, held by the
 * handshake), burst, hash, http.
 */
#define _GNU_SOURCE
#include "cluster.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#define HELLO_TIMEOUT_MS 2000
#define IDLE_TIMEOUT_MS 3000
#define PER_ADDRESS 64
/* AddressSanitizer's redzones and allocator about double the memory of the small
 * allocations a connection makes (an OpenSSL session is hundreds of them): the bounds are
 * the in every other build, twice them under ASan. */
#if defined(__SANITIZE_ADDRESS__)
#define RSS_SANITIZER_FACTOR 2
#else
#define RSS_SANITIZER_FACTOR 1
#endif
#define RSS_GROWTH_MAX_KB (16 * 1024 * RSS_SANITIZER_FACTOR)
#define STRANGERS 200
#define BURST_ACCOUNTS RPC_LIST_MAX
#define BURST_LISTS 4000
#define BURST_RSS_GROWTH_MAX_KB (24 * 1024 * RSS_SANITIZER_FACTOR)
#define HTTP_STALLED 64

static uint64_t next_rid = 1;
static bool tls; /* the client port serves TLS */
static const char *tallyd_path;

/* VmRSS of node i, in KiB. */
static long rss_kb(int i)
{
    char path[64], line[256];
    snprintf(path, sizeof(path), "/proc/%d/status", (int)cl_nodes[i].p.pid);
    FILE *f = fopen(path, "r");
    long kb = -1;
    if (f == NULL) {
        H_FAIL("cannot read %s", path);
    }
    while (fgets(line, sizeof(line), f) != NULL) {
        if (sscanf(line, "VmRSS: %ld kB", &kb) == 1) {
            break;
        }
    }
    fclose(f);
    if (kb < 0) {
        H_FAIL("no VmRSS in %s", path);
    }
    return kb;
}

/* A /metrics series of node i, once the node has published what happened until now
 * (it publishes every 250 ms). */
static uint64_t metric(int i, const char *series)
{
    uint64_t v = 0;
    h_sleep_ms(300);
    if (cl_metric(i, series, &v) != 0) {
        H_FAIL("node %d has no %s on /metrics", i + 1, series);
    }
    return v;
}

/* A plain TCP connection from `src` (a loopback address) to `port`, non-blocking; -1 if
 * it is not connected within 2 s. */
static int connect_from(const char *src, int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    struct sockaddr_in from = {.sin_family = AF_INET};
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, src, &from.sin_addr);
    to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || bind(fd, (struct sockaddr *)&from, sizeof(from)) != 0 ||
        (connect(fd, (struct sockaddr *)&to, sizeof(to)) != 0 && errno != EINPROGRESS)) {
        if (fd >= 0) {
            close(fd);
        }
        return -1;
    }
    struct pollfd pfd = {fd, POLLOUT, 0};
    int err = 0;
    socklen_t len = sizeof(err);
    if (poll(&pfd, 1, 2000) != 1 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 ||
        err != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* A raw protocol connection from `src` to node i's client port (plain TCP). */
static void rc_open_from(struct rc *c, int i, const char *src)
{
    memset(c, 0, sizeof(*c));
    c->fd = connect_from(src, cl_nodes[i].client_port);
    if (c->fd < 0) {
        H_FAIL("connect from %s to node %d", src, i + 1);
    }
    rpc_framer_init(&c->framer, RPC_FRAME_LIMIT);
}

/* Whether the peer closed (or reset) `fd` within timeout_ms; reads and discards. */
static bool fd_closed(int fd, int timeout_ms)
{
    char buf[4096];
    ssize_t n;
    while ((n = h_recv_some(fd, buf, sizeof(buf), timeout_ms)) > 0) {
    }
    return n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR);
}

/* Whether `fd` is still open now (nothing to read, no EOF). */
static bool fd_open(int fd)
{
    char c;
    ssize_t n = recv(fd, &c, 1, MSG_DONTWAIT | MSG_PEEK);
    return n < 0 && errno == EAGAIN;
}

/* 200 unauthenticated sockets, each with a partial frame: half announce 1 MiB (refused
 * at once by the 1 KiB bound before HELLO), half announce 1000 bytes and send 500 of
 * them (held until the HELLO deadline). The node's RSS grows by less than 16 MiB, and
 * every socket is closed by the deadline (x1.25) but the held ones not long before. */
static void case_strangers(void)
{
    static int fds[STRANGERS];
    static uint8_t junk[256 << 10];
    memset(junk, 'x', sizeof(junk));
    long rss_before = rss_kb(0);
    uint64_t timeouts_before = metric(0, "tally_hello_timeouts_total");
    int64_t start = h_now_ms();
    for (int i = 0; i < STRANGERS; i++) {
        char src[32];
        snprintf(src, sizeof(src), "127.0.0.%d", 10 + i / 50); /* under the address limit */
        fds[i] = connect_from(src, cl_nodes[0].client_port);
        if (fds[i] < 0) {
            H_FAIL("stranger %d could not connect", i);
        }
        bool big = i % 2 == 0;
        uint32_t announced = big ? 1u << 20 : 1000;
        uint8_t head[4] = {(uint8_t)(announced >> 24), (uint8_t)(announced >> 16),
                           (uint8_t)(announced >> 8), (uint8_t)announced};
        /* Over TLS: a handshake record announcing 512 bytes; junk fails the handshake. */
        static const uint8_t record[5] = {0x16, 0x03, 0x01, 0x02, 0x00};
        if (!tls) {
            send(fds[i], head, sizeof(head), MSG_NOSIGNAL | MSG_DONTWAIT);
        } else if (!big) {
            send(fds[i], record, sizeof(record), MSG_NOSIGNAL | MSG_DONTWAIT);
        }
        /* Without the bound the node would buffer all of this; errors (a reset after
         * the refusal) do not matter. */
        send(fds[i], junk, big ? sizeof(junk) : 500, MSG_NOSIGNAL | MSG_DONTWAIT);
    }
    h_sleep_ms(300);
    long grown_kb = rss_kb(0) - rss_before;
    h_say("strangers: %d sockets with partial frames, RSS grew %ld KiB", STRANGERS, grown_kb);
    if (grown_kb >= RSS_GROWTH_MAX_KB) {
        H_FAIL("200 strangers grew the node by %ld KiB (bound %d)", grown_kb, RSS_GROWTH_MAX_KB);
    }
    int open_early = 0;
    for (int i = 1; i < STRANGERS; i += 2) {
        open_early += fd_open(fds[i]);
    }
    if (h_now_ms() - start < HELLO_TIMEOUT_MS / 2 && open_early < STRANGERS / 2) {
        H_FAIL("only %d of %d held strangers open before the deadline", open_early, STRANGERS / 2);
    }
    for (int i = 0; i < STRANGERS; i++) {
        int left = (int)(start + HELLO_TIMEOUT_MS * 5 / 4 + 1500 - h_now_ms());
        if (!fd_closed(fds[i], left > 0 ? left : 1)) {
            H_FAIL("stranger %d still open %lld ms after it connected", i,
                   (long long)(h_now_ms() - start));
        }
        close(fds[i]);
    }
    uint64_t timeouts = metric(0, "tally_hello_timeouts_total") - timeouts_before;
    if (timeouts < STRANGERS / 2) {
        H_FAIL("tally_hello_timeouts_total counted %llu of %d", (unsigned long long)timeouts,
               STRANGERS / 2);
    }
    h_say("strangers: all closed by the deadline, %llu HELLO timeouts counted",
          (unsigned long long)timeouts);
}

/* An authenticated connection that says nothing is closed after the idle timeout; one
 * that keeps asking is not. */
static void case_idle(void)
{
    uint64_t before = metric(0, "tally_idle_timeouts_total");
    struct rc quiet, busy;
    rc_open_from(&quiet, 0, "127.0.0.30");
    rc_open_from(&busy, 0, "127.0.0.30");
    if (rc_hello(&quiet, CL_READER_TOKEN) != RPC_OK || rc_hello(&busy, CL_READER_TOKEN) != RPC_OK) {
        H_FAIL("idle: HELLO refused");
    }
    int64_t start = h_now_ms();
    while (h_now_ms() - start < IDLE_TIMEOUT_MS * 2) {
        struct rpc_request req = {.op = RPC_OP_STATUS};
        struct rpc_response resp;
        if (rc_call(&busy, &req, &resp) != 0 || resp.status != RPC_OK) {
            H_FAIL("idle: a connection asking every 500 ms was closed after %lld ms",
                   (long long)(h_now_ms() - start));
        }
        h_sleep_ms(500);
    }
    if (!rc_closed(&quiet, 100)) {
        H_FAIL("idle: a silent connection is still open after %d ms", IDLE_TIMEOUT_MS * 2);
    }
    uint64_t counted = metric(0, "tally_idle_timeouts_total") - before;
    if (counted < 1) {
        H_FAIL("idle: tally_idle_timeouts_total did not count the closed connection");
    }
    rc_close(&quiet);
    rc_close(&busy);
    h_say("idle: silent connection closed, busy one kept, %llu counted",
          (unsigned long long)counted);
}

/* PER_ADDRESS connections from one address are served, one more is answered busy and
 * closed; another address is unaffected; closing one makes room again. */
static void case_per_address(void)
{
    static struct rc conns[PER_ADDRESS];
    uint64_t before = metric(0, "tally_connections_refused_total{limit=\"per_address\"}");
    for (int i = 0; i < PER_ADDRESS; i++) {
        rc_open_from(&conns[i], 0, "127.0.0.40");
        if (rc_hello(&conns[i], CL_READER_TOKEN) != RPC_OK) {
            H_FAIL("per-address: connection %d of %d refused", i + 1, PER_ADDRESS);
        }
    }
    struct rc extra, other;
    struct rpc_response resp;
    rc_open_from(&extra, 0, "127.0.0.40");
    if (rc_recv(&extra, RPC_OP_HELLO, &resp, 2000) != 0 || resp.status != RPC_EBUSY ||
        !rc_closed(&extra, 2000)) {
        H_FAIL("per-address: connection %d from one address was not refused busy", PER_ADDRESS + 1);
    }
    rc_close(&extra);
    rc_open_from(&other, 0, "127.0.0.41");
    if (rc_hello(&other, CL_READER_TOKEN) != RPC_OK) {
        H_FAIL("per-address: another address was refused");
    }
    rc_close(&other);
    rc_close(&conns[0]);
    int64_t deadline = h_now_ms() + 2000;
    for (;;) {
        rc_open_from(&extra, 0, "127.0.0.40");
        int status = rc_hello(&extra, CL_READER_TOKEN);
        rc_close(&extra);
        if (status == RPC_OK) {
            break;
        }
        if (h_now_ms() > deadline) {
            H_FAIL("per-address: a closed connection did not make room (status %d)", status);
        }
        h_sleep_ms(50);
    }
    for (int i = 1; i < PER_ADDRESS; i++) {
        rc_close(&conns[i]);
    }
    uint64_t refused = metric(0, "tally_connections_refused_total{limit=\"per_address\"}") - before;
    if (refused < 1) {
        H_FAIL("per-address: the refusal was not counted");
    }
    h_say("per-address: %d served, the next refused busy (%llu counted), others unaffected",
          PER_ADDRESS, (unsigned long long)refused);
}

static void create_accounts(void)
{
    struct rc c;
    if (rc_open(&c, cl_leader(10000)) != 0 || rc_hello(&c, CL_ADMIN_TOKEN) != RPC_OK) {
        H_FAIL("admin HELLO");
    }
    for (int i = 0; i < BURST_ACCOUNTS; i++) {
        struct rpc_request req = {.op = RPC_OP_WRITE};
        struct rpc_response resp;
        struct ledger_cmd *cmd = &req.u.write;
        cmd->type = LEDGER_CMD_ACCOUNT_CREATE;
        uint64_t rid = next_rid++;
        memcpy(cmd->request_id, &rid, sizeof(rid));
        cmd->request_id[15] = 0x5a;
        snprintf(cmd->u.create.name, sizeof(cmd->u.create.name), "burst-account-%04d", i);
        if (rc_call(&c, &req, &resp) != 0 || resp.status != RPC_OK ||
            resp.u.write.result.status != LEDGER_OK) {
            H_FAIL("create account %d", i);
        }
    }
    rc_close(&c);
}

/* A reader sends BURST_LISTS stale account lists (each answered with every account)
 * without reading: the node's RSS stays bounded; then it reads every answer. */
static void case_reader_burst(void)
{
    create_accounts();
    char hash[65];
    cl_converged(20000, 0, hash); /* node 1 has every account */
    struct rc c;
    if (rc_open(&c, 0) != 0 || rc_hello(&c, CL_READER_TOKEN) != RPC_OK) {
        H_FAIL("reader HELLO");
    }
    uint64_t pauses_before = metric(0, "tally_decode_pauses_total");
    long rss_before = rss_kb(0);
    struct rpc_buf b = {0};
    for (int i = 0; i < BURST_LISTS; i++) {
        struct rpc_request req = {.op = RPC_OP_ACCOUNT_LIST, .seq = (uint64_t)i + 1};
        req.u.list.limit = RPC_LIST_MAX;
        req.u.list.flags = RPC_READ_STALE;
        rpc_request_encode(&b, &req);
    }
    if (rc_send_raw(&c, b.data, b.len) != 0) {
        H_FAIL("burst: send %zu bytes of list requests", b.len);
    }
    h_say("burst: %d list requests (%zu bytes) sent, reading nothing", BURST_LISTS, b.len);
    rpc_buf_free(&b);
    h_sleep_ms(700);
    long grown_kb = rss_kb(0) - rss_before;
    h_say("burst: RSS grew %ld KiB", grown_kb);
    if (grown_kb >= BURST_RSS_GROWTH_MAX_KB) {
        H_FAIL("burst: a reader's unread answers grew the node by %ld KiB (bound %d)", grown_kb,
               BURST_RSS_GROWTH_MAX_KB);
    }
    for (int i = 0; i < BURST_LISTS; i++) {
        struct rpc_response resp;
        if (rc_recv(&c, RPC_OP_ACCOUNT_LIST, &resp, 10000) != 0 || resp.status != RPC_OK ||
            resp.seq != (uint64_t)i + 1 || resp.u.list.n < BURST_ACCOUNTS) {
            H_FAIL("burst: answer %d missing or wrong", i + 1);
        }
        rpc_response_free(&resp);
    }
    uint64_t pauses = metric(0, "tally_decode_pauses_total") - pauses_before;
    if (pauses < 1) {
        H_FAIL("burst: decoding never paused");
    }
    rc_close(&c);
    h_say("burst: every answer read, decoding paused %llu times", (unsigned long long)pauses);
}

/* Two HASH requests at once: one is computed, the other answered busy. */
static void case_hash(void)
{
    struct rc c;
    if (rc_open(&c, 0) != 0 || rc_hello(&c, CL_ADMIN_TOKEN) != RPC_OK) {
        H_FAIL("hash: HELLO");
    }
    struct rpc_buf b = {0};
    for (int i = 0; i < 2; i++) {
        struct rpc_request req = {.op = RPC_OP_HASH, .seq = (uint64_t)i + 1};
        rpc_request_encode(&b, &req);
    }
    rc_send_raw(&c, b.data, b.len);
    rpc_buf_free(&b);
    int ok = 0, busy = 0;
    for (int i = 0; i < 2; i++) {
        struct rpc_response resp;
        if (rc_recv(&c, RPC_OP_HASH, &resp, 10000) != 0) {
            H_FAIL("hash: answer %d missing", i + 1);
        }
        ok += resp.status == RPC_OK;
        busy += resp.status == RPC_EBUSY;
    }
    if (ok != 1 || busy != 1) {
        H_FAIL("hash: two at once gave %d ok and %d busy, not 1 and 1", ok, busy);
    }
    rc_close(&c);
    h_say("hash: two at once, one computed and one busy");
}

/* An HTTP/1.1 GET of `path` from `src` to node i: the status code, or -1. */
static int http_get(int i, const char *src, const char *path)
{
    int fd = connect_from(src, cl_nodes[i].http_port);
    if (fd < 0) {
        return -1;
    }
    char req[256], resp[512];
    int n =
        snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n", path);
    int status = -1;
    ssize_t got = -1;
    if (h_send_all(fd, req, (size_t)n, 2000) == 0 &&
        (got = h_recv_some(fd, resp, sizeof(resp) - 1, 2000)) > 0) {
        resp[got] = '\0';
        sscanf(resp, "HTTP/1.1 %d", &status);
    }
    close(fd);
    return status;
}

/* 64 sockets from one address stall in their request headers: /readyz from another
 * address still answers, and the stalled ones are closed by the header timeout. */
static void case_http_stalled(void)
{
    static int fds[HTTP_STALLED];
    int connected = 0;
    for (int i = 0; i < HTTP_STALLED; i++) {
        fds[i] = connect_from("127.0.0.1", cl_nodes[0].http_port);
        if (fds[i] >= 0) {
            connected++;
            send(fds[i], "GET /readyz HTTP/1.1\r\nHost: t\r\n", 31, MSG_NOSIGNAL);
        }
    }
    h_sleep_ms(200);
    int64_t start = h_now_ms();
    int status = http_get(0, "127.0.0.2", "/readyz");
    if (status != 200) {
        H_FAIL("http: with %d stalled sockets from 127.0.0.1, /readyz from 127.0.0.2 got %d",
               connected, status);
    }
    h_say("http: %d stalled sockets, /readyz from 127.0.0.2 answered 200 in %lld ms", connected,
          (long long)(h_now_ms() - start));
    for (int i = 0; i < HTTP_STALLED; i++) {
        if (fds[i] >= 0) {
            if (!fd_closed(fds[i], 8000)) {
                H_FAIL("http: stalled socket %d still open after the header timeout", i);
            }
            close(fds[i]);
        }
    }
    uint64_t refused = metric(0, "tally_http_connections_refused_total");
    uint64_t timeouts = metric(0, "tally_http_header_timeouts_total");
    if (refused < 1 || timeouts < 1) {
        H_FAIL("http: refused %llu, header timeouts %llu: both should count",
               (unsigned long long)refused, (unsigned long long)timeouts);
    }
    h_say("http: stalled sockets closed; %llu refused, %llu header timeouts counted",
          (unsigned long long)refused, (unsigned long long)timeouts);
}

/* Whether the file at `path` contains `text`. */
static bool file_contains(const char *path, const char *text)
{
    static char buf[16384];
    FILE *f = fopen(path, "r");
    size_t n = f != NULL ? fread(buf, 1, sizeof(buf) - 1, f) : 0;
    if (f != NULL) {
        fclose(f);
    }
    buf[n] = '\0';
    return strstr(buf, text) != NULL;
}

/* The new limits out of their ranges are refused at start: exit 3, one line saying
 * which. (Plaintext peers are allowed explicitly, so that it is this flag that fails.) */
static void case_flag_bounds(void)
{
    static const char *const bad[][3] = {
        {"--idle-timeout-ms", "999", "--idle-timeout-ms must be 1000 .. 86400000"},
        {"--idle-timeout-ms", "86400001", "--idle-timeout-ms must be 1000 .. 86400000"},
        {"--max-connections-per-address", "4097", "--max-connections-per-address must be"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char name[32], log[PATH_MAX + 40];
        snprintf(name, sizeof(name), "bad-flag-%zu", i);
        snprintf(log, sizeof(log), "%s/%s.log", h_dir, name);
        const char *const extra[] = {"--peer-insecure", bad[i][0], bad[i][1], NULL};
        int status = cl_config_status(tallyd_path, name, extra);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 3 || !file_contains(log, bad[i][2])) {
            H_FAIL("%s %s: tallyd did not exit 3 saying \"%s\" (wait status %d, see %s)", bad[i][0],
                   bad[i][1], bad[i][2], status, log);
        }
        h_say("%s %s: exit 3", bad[i][0], bad[i][1]);
    }
}

static const struct {
    const char *name;
    void (*run)(void);
    bool over_tls; /* runs in the tls mode too */
} cases[] = {
    {"strangers", case_strangers, true},
    {"idle", case_idle, false},
    {"per_address", case_per_address, false},
    {"burst", case_reader_burst, true},
    {"hash", case_hash, true},
    {"http", case_http_stalled, true},
    {"flag_bounds", case_flag_bounds, false},
};

int main(int argc, char **argv)
{
    tls = argc >= 3 && strcmp(argv[2], "tls") == 0;
    const char *only = argc == 3 + tls ? argv[2 + tls] : NULL;
    if (argc < 2 || argc > 3 + tls) {
        fprintf(stderr, "usage: %s <tallyd> [tls] [case]\n", argv[0]);
        return 2;
    }
    h_init("tally-limits-test", 170);
    char v[16];
    snprintf(v, sizeof(v), "%d", HELLO_TIMEOUT_MS);
    setenv("TALLY_HELLO_TIMEOUT_MS", v, 1); /* the nodes inherit these */
    snprintf(v, sizeof(v), "%d", IDLE_TIMEOUT_MS);
    setenv("TALLY_IDLE_TIMEOUT_MS", v, 1);
    snprintf(v, sizeof(v), "%d", PER_ADDRESS);
    setenv("TALLY_MAX_CONNECTIONS_PER_ADDRESS", v, 1);
    /* Under AddressSanitizer, freed memory waits in a quarantine (256 MiB) that RSS would
     * count: keep it small, so RSS shows what the node holds. Other builds ignore it. */
    const char *asan = getenv("ASAN_OPTIONS");
    char asan_options[1024];
    snprintf(asan_options, sizeof(asan_options), "%s%squarantine_size_mb=1",
             asan != NULL ? asan : "", asan != NULL && asan[0] != '\0' ? ":" : "");
    setenv("ASAN_OPTIONS", asan_options, 1);
    tallyd_path = argv[1];
    if (tls) {
        cl_tls_setup();
    }
    cl_start(argv[1]);
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        if ((only == NULL || strcmp(only, cases[i].name) == 0) && (!tls || cases[i].over_tls)) {
            cases[i].run();
        }
    }
    cl_converge_and_stop();
    h_pass();
    return 0;
}
