/*
 * client_test.c: libtally without a cluster.
 *
 * What can be shown without tallyd: configuration defaults and checks, argument
 * validation (nothing is queued for a bad call), key hashing (SHA-256 known vectors),
 * names, deadlines against a closed port (UNAVAILABLE within the deadline, fail-open
 * flagged, async callbacks, the in-flight bound), and, against a tiny in-process fake
 * node built on wire/wire.h, the parts of the I/O thread that need a peer: a refused token
 * ends calls at once with EAUTH; answers that come back out of order reach the right
 * callers; a node that accepts but never answers makes a reserve UNAVAILABLE and the
 * client then sends a void of the same request id; a NOT_LEADER naming an address that is
 * not a configured endpoint is not followed (a listener there sees no connection), one
 * naming a configured endpoint is. Leader following and retries against real nodes are
 * integration tests.
 *
 * TLS: the same fake node can speak TLS (SSL_accept on its blocking socket) with
 * certificates the test makes with the OpenSSL API (a CA, a rogue CA, server and client
 * certificates): a verified round trip (pipelined reserves, a large answer spread over
 * many records, tally_status), a client certificate standing for the token, a write
 * stalled by a node that does not read, and the failures an operator must be able to
 * read: unknown CA, wrong server name, a plain node, unusable files at tally_open().
 */
#include "test.h"

#include "client/tally.h"
#include "wire/wire.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* A TCP port on 127.0.0.1 that nothing listens on (bound, then closed). */
static uint16_t closed_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    REQUIRE(fd >= 0);
    REQUIRE(bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0);
    REQUIRE(getsockname(fd, (struct sockaddr *)&a, &len) == 0);
    close(fd);
    return ntohs(a.sin_port);
}

/* A client of `endpoints` with the token "secret-token" and short time-outs. */
static struct tally *open_endpoints(const char *endpoints, int fail_open, uint32_t max_inflight)
{
    char errmsg[TALLY_ERRMSG_SIZE] = "";
    struct tally_config cfg;
    struct tally *c = NULL;
    tally_config_init(&cfg);
    cfg.endpoints = endpoints;
    cfg.token = "secret-token";
    cfg.fail_open = fail_open;
    cfg.max_inflight = max_inflight;
    cfg.connect_timeout_ms = 200;
    cfg.void_deadline_ms = 1000;
    int rc = tally_open(&c, &cfg, errmsg);
    if (rc != 0) {
        fprintf(stderr, "  tally_open: %s\n", errmsg);
    }
    REQUIRE(rc == 0 && c != NULL);
    return c;
}

static struct tally *open_at(uint16_t port, int fail_open, uint32_t max_inflight)
{
    char endpoints[64];
    snprintf(endpoints, sizeof(endpoints), "127.0.0.1:%u", port);
    return open_endpoints(endpoints, fail_open, max_inflight);
}

static struct tally_reserve_args reserve_args(const char *secret)
{
    struct tally_reserve_args a = {0};
    a.key_secret = secret;
    a.estimate_micros = 1000;
    a.estimate_tokens = 10;
    a.ttl_ms = 60000;
    return a;
}

/* ---- Configuration. ---- */

static void config_init_writes_defaults(void)
{
    struct tally_config cfg;
    memset(&cfg, 0xab, sizeof(cfg));
    tally_config_init(&cfg);
    CHECK(cfg.endpoints == NULL && cfg.token == NULL);
    CHECK_EQ_INT(cfg.deadline_ms, 2000);
    CHECK_EQ_INT(cfg.connect_timeout_ms, 1000);
    CHECK_EQ_INT(cfg.fail_open, 0);
    CHECK_EQ_INT(cfg.max_frame_bytes, TALLY_FRAME_DEFAULT);
    CHECK_EQ_INT(cfg.max_inflight, 4096);
    CHECK_EQ_INT(cfg.void_deadline_ms, 30000);
    CHECK_EQ_INT(cfg.backoff_min_ms, 10);
    CHECK_EQ_INT(cfg.backoff_max_ms, 200);
    CHECK(cfg.tls_ca_file == NULL && cfg.tls_cert_file == NULL && cfg.tls_key_file == NULL &&
          cfg.tls_server_name == NULL);
}

static int open_with(const char *endpoints, const char *token, char *errmsg)
{
    struct tally_config cfg = {0};
    struct tally *c = NULL;
    cfg.endpoints = endpoints;
    cfg.token = token;
    int rc = tally_open(&c, &cfg, errmsg);
    CHECK((rc == 0) == (c != NULL));
    tally_close(c);
    return rc;
}

static void open_checks_the_configuration(void)
{
    char errmsg[TALLY_ERRMSG_SIZE];
    char long_token[TALLY_TOKEN_MAX + 2];
    memset(long_token, 't', sizeof(long_token) - 1);
    long_token[sizeof(long_token) - 1] = '\0';
    CHECK_EQ_INT(open_with(NULL, "t", errmsg), -TALLY_EINVAL);
    CHECK_EQ_INT(open_with("", "t", errmsg), -TALLY_EINVAL);
    CHECK_EQ_INT(open_with("127.0.0.1:7000", NULL, errmsg), -TALLY_EINVAL);
    CHECK_EQ_INT(open_with("127.0.0.1:7000", long_token, errmsg), -TALLY_EINVAL);
    CHECK_EQ_INT(open_with("nohost", "t", errmsg), -TALLY_EINVAL);
    CHECK_EQ_INT(open_with(":7000", "t", errmsg), -TALLY_EINVAL);
    CHECK_EQ_INT(open_with("host:0", "t", errmsg), -TALLY_EINVAL);
    CHECK_EQ_INT(open_with("host:65536", "t", errmsg), -TALLY_EINVAL);
    CHECK_EQ_INT(open_with("host:70a", "t", errmsg), -TALLY_EINVAL);
    CHECK_EQ_INT(open_with("::1:7000", "t", errmsg), -TALLY_EINVAL); /* needs [::1] */
    CHECK_EQ_INT(open_with("a:1,,b:2", "t", errmsg), -TALLY_EINVAL);
    CHECK(strstr(errmsg, "endpoint 2") != NULL);
    CHECK_EQ_INT(open_with("a:1,b:2,c:3,d:4,e:5,f:6,g:7,h:8,i:9,j:10,k:11,l:12,m:13,n:14,o:15,"
                           "p:16,q:17",
                           "t", errmsg),
                 -TALLY_EINVAL);
    CHECK_EQ_INT(open_with("127.0.0.1:7000", "", errmsg), 0);
    CHECK_EQ_INT(open_with("[::1]:7000, localhost:7001 ,10.0.0.3:7002", "t", errmsg), 0);

    struct tally_config cfg = {0};
    struct tally *c = NULL;
    cfg.endpoints = "127.0.0.1:7000";
    cfg.token = "t";
    cfg.deadline_ms = -1;
    CHECK_EQ_INT(tally_open(&c, &cfg, errmsg), -TALLY_EINVAL);
    cfg.deadline_ms = 0;
    cfg.max_frame_bytes = 100;
    CHECK_EQ_INT(tally_open(&c, &cfg, errmsg), -TALLY_EINVAL);
    cfg.max_frame_bytes = TALLY_FRAME_LIMIT + 1;
    CHECK_EQ_INT(tally_open(&c, &cfg, errmsg), -TALLY_EINVAL);
    CHECK(c == NULL);
    CHECK_EQ_INT(tally_open(&c, NULL, NULL), -TALLY_EINVAL);
    tally_close(NULL);
}

/* ---- Helpers without a client. ---- */

static void key_hash_is_sha256_hex(void)
{
    uint8_t hash[TALLY_KEY_HASH_SIZE];
    char hex[2 * TALLY_KEY_HASH_SIZE + 1];
    REQUIRE(tally_key_hash("abc", hash) == 0);
    tally_hex(hash, sizeof(hash), hex);
    CHECK_EQ_STR(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    REQUIRE(tally_key_hash("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq", hash) == 0);
    tally_hex(hash, sizeof(hash), hex);
    CHECK_EQ_STR(hex, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
    CHECK_EQ_INT(tally_key_hash("", hash), -TALLY_EINVAL);
    CHECK_EQ_INT(tally_key_hash(NULL, hash), -TALLY_EINVAL);
}

static void hex_round_trips(void)
{
    const uint8_t bytes[4] = {0x00, 0x7f, 0xa5, 0xff};
    uint8_t back[4];
    char hex[9];
    tally_hex(bytes, 4, hex);
    CHECK_EQ_STR(hex, "007fa5ff");
    CHECK_EQ_INT(tally_unhex("007FA5ff", back, 4), 0);
    CHECK(memcmp(back, bytes, 4) == 0);
    CHECK_EQ_INT(tally_unhex("007fa5f", back, 4), -TALLY_EINVAL);
    CHECK_EQ_INT(tally_unhex("007fa5fg", back, 4), -TALLY_EINVAL);
    CHECK_EQ_INT(tally_unhex(NULL, back, 4), -TALLY_EINVAL);
}

static void request_ids_are_random(void)
{
    uint8_t a[TALLY_REQUEST_ID_SIZE], b[TALLY_REQUEST_ID_SIZE];
    REQUIRE(tally_request_id_new(a) == 0);
    REQUIRE(tally_request_id_new(b) == 0);
    CHECK(memcmp(a, b, sizeof(a)) != 0);
}

static void names_cover_every_value(void)
{
    CHECK_EQ_STR(tally_outcome_name(TALLY_GRANTED), "granted");
    CHECK_EQ_STR(tally_outcome_name(TALLY_DENIED), "denied");
    CHECK_EQ_STR(tally_outcome_name(TALLY_UNAVAILABLE), "unavailable");
    CHECK_EQ_STR(tally_outcome_name(TALLY_ERROR), "error");
    CHECK_EQ_STR(tally_outcome_name(99), "unknown");
    CHECK_EQ_STR(tally_deny_reason_name(TALLY_DENY_BUDGET), "budget");
    CHECK_EQ_STR(tally_deny_reason_name(TALLY_DENY_MODEL_TPM), "model_tpm");
    CHECK_EQ_STR(tally_deny_reason_name(TALLY_DENY_MAX), "unknown");
    CHECK_EQ_STR(tally_deny_reason_name(-1), "unknown");
    CHECK_EQ_STR(tally_strerror(-TALLY_ENOTFOUND), "not_found");
    CHECK_EQ_STR(tally_strerror(TALLY_ERESOLVED), "already_resolved");
    CHECK_EQ_STR(tally_strerror(TALLY_ECONFLICT), "conflict");
    CHECK_EQ_STR(tally_strerror(-TALLY_EAUTH), "unauthenticated");
    CHECK_EQ_STR(tally_strerror(20), "unknown");
    CHECK_EQ_STR(tally_strerror(TALLY_ECODE_MAX), "unknown");
    CHECK_EQ_STR(tally_strerror(-TALLY_EFORBIDDEN), "forbidden");
    for (int code = 1; code <= TALLY_EFORBIDDEN; code++) {
        CHECK(strcmp(tally_strerror(code), "unknown") != 0);
    }
    for (int code = TALLY_EUNAVAILABLE; code < TALLY_ECODE_MAX; code++) {
        /* 34 was TALLY_EFORBIDDEN before it joined the ledger's codes as 16. */
        CHECK(code == 34 || strcmp(tally_strerror(code), "unknown") != 0);
    }
    CHECK_EQ_STR(tally_period_name(TALLY_PERIOD_MONTH), "month");
    CHECK_EQ_STR(tally_resv_state_name(TALLY_RESV_LATE_SETTLED), "late_settled");
    CHECK_EQ_STR(tally_journal_kind_name(TALLY_J_ADMIN), "admin");
    CHECK_EQ_STR(tally_journal_kind_name(0), "unknown");
    CHECK_EQ_STR(tally_cmd_type_name(TALLY_CMD_CONFIG_SET), "config_set");
    CHECK_EQ_STR(tally_raft_state_name(TALLY_RAFT_LEADER), "leader");
    CHECK_EQ_STR(tally_member_role_name(TALLY_MEMBER_VOTER), "voter");
}

/* ---- Argument validation: refused before anything is queued. ---- */

static void never_cb(void *arg, const struct tally_result *res)
{
    (void)arg;
    (void)res;
    abort();
}

static void expect_refused(int rc, const struct tally_result *res, int code)
{
    CHECK_EQ_INT(rc, -code);
    CHECK_EQ_INT(res->outcome, TALLY_ERROR);
    CHECK_EQ_INT(res->error, code);
    CHECK(res->message[0] != '\0');
}

static void bad_reserves_are_refused(void)
{
    struct tally *c = open_at(closed_port(), 0, 0);
    struct tally_result res;
    struct tally_reserve_args a = reserve_args("sk-1");
    uint8_t hash[TALLY_KEY_HASH_SIZE] = {1};
    char metadata[TALLY_METADATA_MAX + 1] = {0};

    a.key_secret = NULL;
    expect_refused(tally_reserve(c, &a, 0, &res), &res, TALLY_EINVAL); /* no payer */
    a.key_secret = "sk-1";
    a.key_hash = hash;
    expect_refused(tally_reserve(c, &a, 0, &res), &res, TALLY_EINVAL); /* two payers */
    a = reserve_args("");
    expect_refused(tally_reserve(c, &a, 0, &res), &res, TALLY_EINVAL);
    a = reserve_args(NULL);
    a.account = "team a";
    expect_refused(tally_reserve(c, &a, 0, &res), &res, TALLY_ENAME);
    a = reserve_args("sk-1");
    a.model = "gpt 4";
    expect_refused(tally_reserve(c, &a, 0, &res), &res, TALLY_ENAME);
    a = reserve_args("sk-1");
    a.ttl_ms = 0;
    expect_refused(tally_reserve(c, &a, 0, &res), &res, TALLY_EINVAL);
    a.ttl_ms = 8LL * 24 * 3600 * 1000;
    expect_refused(tally_reserve(c, &a, 0, &res), &res, TALLY_EINVAL);
    a = reserve_args("sk-1");
    a.estimate_micros = -1;
    expect_refused(tally_reserve(c, &a, 0, &res), &res, TALLY_EINVAL);
    a.estimate_micros = 1000000000000001LL;
    expect_refused(tally_reserve(c, &a, 0, &res), &res, TALLY_EINVAL);
    a = reserve_args("sk-1");
    a.metadata = metadata;
    a.metadata_len = sizeof(metadata);
    expect_refused(tally_reserve(c, &a, 0, &res), &res, TALLY_EINVAL);
    a = reserve_args("sk-1");
    expect_refused(tally_reserve(c, &a, -5, &res), &res, TALLY_EINVAL);
    CHECK_EQ_INT(tally_reserve(c, &a, 0, NULL), -TALLY_EINVAL);
    CHECK_EQ_INT(tally_reserve(NULL, &a, 0, &res), -TALLY_EINVAL);
    CHECK_EQ_INT(tally_reserve_async(c, &a, 0, NULL, NULL), -TALLY_EINVAL);
    a.ttl_ms = 0;
    CHECK_EQ_INT(tally_reserve_async(c, &a, 0, never_cb, NULL), -TALLY_EINVAL);

    struct tally_stats st;
    tally_stats(c, &st);
    CHECK_EQ_INT(st.calls, 0);
    tally_close(c);
}

/* Limits out of range fail on the caller's thread with wire/'s check, the same the ledger
 * makes; before it, libtally sent them and a cluster had to answer. */
static void limits_out_of_range_are_refused_before_sending(void)
{
    struct tally *c = open_at(closed_port(), 0, 0);
    struct tally_result res;
    struct tally_limits budget = {.set = TALLY_LIM_BUDGET, .budget_micros = -1};
    struct tally_limits rpm = {.set = TALLY_LIM_RPM, .rpm = 0};
    struct tally_limits period = {.set = TALLY_LIM_PERIOD, .period_kind = TALLY_PERIOD_FIXED,
                                  .period_ms = TALLY_PERIOD_MIN_MS - 1};
    struct tally_limits parallel = {.set = TALLY_LIM_PARALLEL,
                                    .max_parallel = TALLY_PARALLEL_MAX + 1};
    struct tally_model_limits model_tpm = {.set = TALLY_LIM_TPM, .tpm = TALLY_RATE_MAX + 1};

    expect_refused(tally_account_create(c, "org", NULL, &budget, NULL, 0, &res), &res,
                   TALLY_EINVAL);
    expect_refused(tally_account_update(c, "org", &rpm, 0, NULL, NULL, 0, &res), &res,
                   TALLY_EINVAL);
    expect_refused(tally_account_update(c, "org", &period, 0, NULL, NULL, 0, &res), &res,
                   TALLY_EINVAL);
    expect_refused(tally_account_create(c, "org", NULL, &parallel, NULL, 0, &res), &res,
                   TALLY_EINVAL);
    expect_refused(tally_model_limit_set(c, "org", "gpt-4", &model_tpm, NULL, 0, &res), &res,
                   TALLY_EINVAL);
    expect_refused(tally_retention_set(c, TALLY_RETENTION_MAX_MS + 1, NULL, 0, &res), &res,
                   TALLY_EINVAL);

    struct tally_stats st;
    tally_stats(c, &st);
    CHECK_EQ_INT(st.calls, 0);
    tally_close(c);
}

static void bad_other_calls_are_refused(void)
{
    struct tally *c = open_at(closed_port(), 0, 0);
    struct tally_result res;
    uint8_t id[TALLY_REQUEST_ID_SIZE] = {7};
    struct tally_account accounts[2];
    struct tally_journal_entry entries[1];
    struct tally_node_status status;
    struct tally_limits limits = {.set = 1u << 12};
    struct tally_model_limits model_limits = {.set = TALLY_LIM_PARALLEL};
    uint32_t n;
    struct tally_cursor next, too_long = {.len = TALLY_CURSOR_MAX + 1};

    expect_refused(tally_settle(c, NULL, 1, 1, 0, &res), &res, TALLY_EINVAL);
    expect_refused(tally_settle(c, id, -1, 1, 0, &res), &res, TALLY_EINVAL);
    expect_refused(tally_extend(c, id, 0, 0, &res), &res, TALLY_EINVAL);
    CHECK_EQ_INT(tally_void(c, NULL, 0, NULL), -TALLY_EINVAL);
    CHECK_EQ_INT(tally_void_async(c, id, 0, NULL, NULL), -TALLY_EINVAL);
    expect_refused(tally_account_create(c, "", NULL, NULL, NULL, 0, &res), &res, TALLY_ENAME);
    expect_refused(tally_account_create(c, "org", "bad parent", NULL, NULL, 0, &res), &res,
                   TALLY_ENAME);
    expect_refused(tally_account_update(c, "org", &limits, 0, NULL, NULL, 0, &res), &res,
                   TALLY_EINVAL);
    expect_refused(tally_key_add(c, "org", NULL, NULL, NULL, 0, &res), &res, TALLY_EINVAL);
    expect_refused(tally_key_add(c, "org", "sk", id, NULL, 0, &res), &res, TALLY_EINVAL);
    expect_refused(tally_key_revoke(c, NULL, NULL, 0, &res), &res, TALLY_EINVAL);
    expect_refused(tally_model_limit_set(c, "org", "gpt-4", &model_limits, NULL, 0, &res), &res,
                   TALLY_EINVAL);
    expect_refused(tally_retention_set(c, 0, NULL, 0, &res), &res, TALLY_EINVAL);
    expect_refused(tally_retention_set(c, TALLY_RETENTION_MIN_MS - 1, NULL, 0, &res), &res,
                   TALLY_EINVAL);
    CHECK(strstr(res.message, "minimum of 1 h") != NULL);
    expect_refused(tally_account_get(c, "org", 0x8, 0, &accounts[0], &res), &res, TALLY_EINVAL);
    expect_refused(tally_account_list(c, NULL, NULL, 0, 0, 0, accounts, &n, &next, &res), &res,
                   TALLY_EINVAL);
    expect_refused(
        tally_account_list(c, NULL, NULL, TALLY_LIST_MAX + 1, 0, 0, accounts, &n, &next, &res),
        &res, TALLY_EINVAL);
    expect_refused(tally_account_list(c, NULL, &too_long, 1, 0, 0, accounts, &n, &next, &res), &res,
                   TALLY_EINVAL);
    expect_refused(tally_journal_list(c, "org", 10, 5, NULL, 1, 0, 0, entries, &n, &next, &res),
                   &res, TALLY_EINVAL);
    expect_refused(tally_member_add(c, 0, "10.0.0.4:9000", 0, &res), &res, TALLY_EINVAL);
    expect_refused(tally_member_add(c, 4, "nowhere", 0, &res), &res, TALLY_EINVAL);
    expect_refused(tally_member_remove(c, 0, 0, &res), &res, TALLY_EINVAL);
    expect_refused(tally_status(c, "no-port", 0, &status, &res), &res, TALLY_EINVAL);

    struct tally_stats st;
    tally_stats(c, &st);
    CHECK_EQ_INT(st.calls, 0);
    tally_close(c);
}

/* ---- Deadlines against a closed port. ---- */

static void reserve_to_closed_port_is_unavailable_by_the_deadline(void)
{
    struct tally *c = open_at(closed_port(), 0, 0);
    struct tally_result res;
    struct tally_reserve_args a = reserve_args("sk-1");
    uint8_t zero[TALLY_REQUEST_ID_SIZE] = {0};
    int64_t start_ms = now_ms();
    int rc = tally_reserve(c, &a, 300, &res);
    int64_t took_ms = now_ms() - start_ms;
    CHECK_EQ_INT(rc, -TALLY_EUNAVAILABLE);
    CHECK_EQ_INT(res.outcome, TALLY_UNAVAILABLE);
    CHECK_EQ_INT(res.error, TALLY_EUNAVAILABLE);
    CHECK_EQ_INT(res.failed_open, 0);
    CHECK_EQ_INT(res.attempts, 0);
    CHECK(memcmp(res.request_id, zero, sizeof(zero)) != 0);
    CHECK(strstr(res.message, "connect") != NULL);
    CHECK(took_ms >= 280 && took_ms < 800);

    struct tally_stats st;
    tally_stats(c, &st);
    CHECK_EQ_INT(st.calls, 1);
    CHECK_EQ_INT(st.unavailable, 1);
    CHECK_EQ_INT(st.voids_queued, 0); /* never sent: nothing to void */
    CHECK_EQ_INT(st.requests_sent, 0);
    CHECK_EQ_INT(st.inflight, 0);
    tally_close(c);
}

static void fail_open_grants_with_a_flag(void)
{
    struct tally *c = open_at(closed_port(), 1, 0);
    struct tally_result res;
    struct tally_reserve_args a = reserve_args("sk-1");
    CHECK_EQ_INT(tally_reserve(c, &a, 100, &res), 0);
    CHECK_EQ_INT(res.outcome, TALLY_GRANTED);
    CHECK_EQ_INT(res.failed_open, 1);
    CHECK_EQ_INT(res.error, TALLY_EUNAVAILABLE);
    /* Fail-open is only for reserve: a settle still says UNAVAILABLE. */
    CHECK_EQ_INT(tally_settle(c, res.request_id, 10, 1, 100, &res), -TALLY_EUNAVAILABLE);
    CHECK_EQ_INT(res.outcome, TALLY_UNAVAILABLE);
    CHECK_EQ_INT(res.failed_open, 0);
    struct tally_stats st;
    tally_stats(c, &st);
    CHECK_EQ_INT(st.failed_open, 1);
    CHECK_EQ_INT(st.unavailable, 2);
    tally_close(c);
}

static void caller_request_id_is_kept(void)
{
    struct tally *c = open_at(closed_port(), 0, 0);
    struct tally_result res;
    struct tally_reserve_args a = reserve_args(NULL);
    uint8_t id[TALLY_REQUEST_ID_SIZE];
    memset(id, 0x5a, sizeof(id));
    a.account = "team-a";
    a.request_id = id;
    CHECK_EQ_INT(tally_reserve(c, &a, 50, &res), -TALLY_EUNAVAILABLE);
    CHECK(memcmp(res.request_id, id, sizeof(id)) == 0);
    CHECK_EQ_INT(tally_settle(c, id, 1, 1, 50, &res), -TALLY_EUNAVAILABLE);
    CHECK(memcmp(res.request_id, id, sizeof(id)) == 0);
    tally_close(c);
}

static void reads_and_status_time_out_too(void)
{
    uint16_t port = closed_port();
    struct tally *c = open_at(port, 0, 0);
    struct tally_result res;
    struct tally_account account;
    struct tally_node_status status;
    char endpoint[32];
    CHECK_EQ_INT(tally_account_get(c, "org", TALLY_READ_STALE, 100, &account, &res),
                 -TALLY_EUNAVAILABLE);
    CHECK_EQ_INT(res.outcome, TALLY_UNAVAILABLE);
    snprintf(endpoint, sizeof(endpoint), "127.0.0.1:%u", port);
    int64_t start_ms = now_ms();
    CHECK_EQ_INT(tally_status(c, endpoint, 200, &status, &res), -TALLY_EUNAVAILABLE);
    CHECK(now_ms() - start_ms < 400);
    CHECK_EQ_INT(res.outcome, TALLY_UNAVAILABLE);
    CHECK(strstr(res.message, endpoint) != NULL);
    tally_close(c);
}

/* ---- Asynchronous calls. ---- */

struct async_box {
    pthread_mutex_t mu;
    pthread_cond_t cond;
    int calls;
    int last_outcome, last_error;
    pthread_t thread;
};

static void async_cb(void *arg, const struct tally_result *res)
{
    struct async_box *b = arg;
    pthread_mutex_lock(&b->mu);
    b->calls++;
    b->last_outcome = res->outcome;
    b->last_error = res->error;
    b->thread = pthread_self();
    pthread_cond_broadcast(&b->cond);
    pthread_mutex_unlock(&b->mu);
}

static void async_box_init(struct async_box *b)
{
    memset(b, 0, sizeof(*b));
    pthread_mutex_init(&b->mu, NULL);
    pthread_cond_init(&b->cond, NULL);
}

static void async_box_wait(struct async_box *b, int calls)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += 5;
    pthread_mutex_lock(&b->mu);
    while (b->calls < calls) {
        if (pthread_cond_timedwait(&b->cond, &b->mu, &ts) != 0) {
            break;
        }
    }
    pthread_mutex_unlock(&b->mu);
}

static void async_reserve_calls_back_on_the_io_thread(void)
{
    struct tally *c = open_at(closed_port(), 0, 0);
    struct async_box box;
    struct tally_reserve_args a = reserve_args("sk-async");
    async_box_init(&box);
    int64_t start_ms = now_ms();
    CHECK_EQ_INT(tally_reserve_async(c, &a, 150, async_cb, &box), 0);
    async_box_wait(&box, 1);
    CHECK(now_ms() - start_ms < 600);
    CHECK_EQ_INT(box.calls, 1);
    CHECK_EQ_INT(box.last_outcome, TALLY_UNAVAILABLE);
    CHECK(!pthread_equal(box.thread, pthread_self()));
    tally_close(c);
    CHECK_EQ_INT(box.calls, 1); /* exactly once */
}

static void close_ends_queued_calls(void)
{
    struct tally *c = open_at(closed_port(), 0, 0);
    struct async_box box;
    uint8_t id[TALLY_REQUEST_ID_SIZE] = {1};
    async_box_init(&box);
    CHECK_EQ_INT(tally_void_async(c, id, 60000, async_cb, &box), 0);
    CHECK_EQ_INT(tally_settle_async(c, id, 5, 0, 60000, async_cb, &box), 0);
    CHECK_EQ_INT(tally_extend_async(c, id, 1000, 60000, async_cb, &box), 0);
    tally_close(c);
    CHECK_EQ_INT(box.calls, 3);
    CHECK_EQ_INT(box.last_outcome, TALLY_UNAVAILABLE);
    CHECK_EQ_INT(box.last_error, TALLY_ECLOSED);
}

static void inflight_bound_refuses_async_and_times_out_blocking(void)
{
    struct tally *c = open_at(closed_port(), 0, 2);
    struct async_box box;
    struct tally_reserve_args a = reserve_args("sk-1");
    struct tally_result res;
    async_box_init(&box);
    CHECK_EQ_INT(tally_reserve_async(c, &a, 2000, async_cb, &box), 0);
    CHECK_EQ_INT(tally_reserve_async(c, &a, 2000, async_cb, &box), 0);
    CHECK_EQ_INT(tally_reserve_async(c, &a, 2000, async_cb, &box), -TALLY_EBUSY);
    int64_t start_ms = now_ms();
    CHECK_EQ_INT(tally_reserve(c, &a, 100, &res), -TALLY_EBUSY);
    CHECK(now_ms() - start_ms >= 90);
    CHECK_EQ_INT(res.outcome, TALLY_UNAVAILABLE);
    CHECK_EQ_INT(res.error, TALLY_EBUSY);
    struct tally_stats st;
    tally_stats(c, &st);
    CHECK_EQ_INT(st.inflight, 2);
    CHECK_EQ_INT(st.busy, 2);
    tally_close(c);
    CHECK_EQ_INT(box.calls, 2);
}

struct hammer {
    struct tally *c;
    int unavailable;
};

static void *hammer_main(void *arg)
{
    struct hammer *h = arg;
    struct tally_reserve_args a = reserve_args("sk-hammer");
    struct tally_result res;
    for (int i = 0; i < 20; i++) {
        if (tally_reserve(h->c, &a, 20, &res) == -TALLY_EUNAVAILABLE) {
            h->unavailable++;
        }
    }
    return NULL;
}

static void many_threads_share_one_client(void)
{
    struct tally *c = open_at(closed_port(), 0, 0);
    pthread_t threads[8];
    struct hammer h[8];
    for (int i = 0; i < 8; i++) {
        h[i].c = c;
        h[i].unavailable = 0;
        REQUIRE(pthread_create(&threads[i], NULL, hammer_main, &h[i]) == 0);
    }
    int total = 0;
    for (int i = 0; i < 8; i++) {
        pthread_join(threads[i], NULL);
        total += h[i].unavailable;
    }
    CHECK_EQ_INT(total, 160);
    struct tally_stats st;
    tally_stats(c, &st);
    CHECK_EQ_INT(st.calls, 160);
    CHECK_EQ_INT(st.unavailable, 160);
    CHECK_EQ_INT(st.inflight, 0);
    tally_close(c);
}

/* ---- A tiny fake node (wire/wire.h) for what needs a peer. ---- */

enum fake_mode {
    FAKE_EAUTH,    /* refuse HELLO */
    FAKE_SILENT,   /* accept HELLO, never answer anything else */
    FAKE_REVERSE,  /* answer writes in batches of `batch`, last first */
    FAKE_REDIRECT, /* answer writes NOT_LEADER, naming `leader_address` */
    /* Answer every write at once, granted, but not as the answer to it: */
    FAKE_WRONG_ID,   /* the result carries another request id */
    FAKE_WRONG_TYPE, /* the result is of another command type */
    FAKE_WRONG_OP,   /* the answer is shaped as a STATUS answer */
};

struct fake {
    int listen_fd;
    uint16_t port;
    int mode;
    int batch;
    SSL_CTX *tls;      /* NULL: plain TCP; else SSL_accept every connection */
    int stall_ms;      /* after answering HELLO, read nothing for this long (once) */
    int list_name_len; /* account names in list answers are this long */
    pthread_t thread;
    struct fake_conn *conns[16]; /* live connections, one thread each */
    int n_conns;
    pthread_mutex_t mu;
    int stop;
    int hellos;
    int n_writes;
    int total_writes;
    int handshakes_ok, handshakes_failed;
    char token[RPC_TOKEN_MAX + 1]; /* of the last HELLO */
    char peer_subject[256];        /* the client certificate's subject, "" if none */
    char leader_address[64];       /* FAKE_REDIRECT: the leader its answers name */
    uint8_t types[64];
    uint8_t ids[64][16];
};

/* One accepted connection of the fake: a blocking socket, TLS over it or not. */
struct peer {
    int fd;
    SSL *ssl;
};

static int fake_stopping(struct fake *f)
{
    pthread_mutex_lock(&f->mu);
    int stop = f->stop;
    pthread_mutex_unlock(&f->mu);
    return stop;
}

static void send_all(const struct peer *p, const struct rpc_buf *b)
{
    size_t off = 0;
    while (off < b->len) {
        ssize_t n = p->ssl != NULL ? SSL_write(p->ssl, b->data + off, (int)(b->len - off))
                                   : send(p->fd, b->data + off, b->len - off, MSG_NOSIGNAL);
        if (n <= 0) {
            return;
        }
        off += (size_t)n;
    }
}

/* Answer write `q` granted (even estimate) or denied (odd), echoing the estimate; with
 * `mode` a FAKE_WRONG_*, granted but wrong in that way. */
static void fake_answer_write(const struct peer *peer, const struct rpc_request *q, int mode)
{
    struct rpc_response resp;
    struct rpc_buf out = {0};
    memset(&resp, 0, sizeof(resp));
    resp.seq = q->seq;
    resp.u.write.index = 42;
    struct ledger_result *x = &resp.u.write.result;
    x->cmd_type = q->u.write.type;
    memcpy(x->request_id, q->u.write.request_id, 16);
    x->remaining = q->u.write.u.reserve.estimate_micros;
    if (mode == FAKE_WRONG_ID) {
        x->request_id[15] ^= 1;
    } else if (mode == FAKE_WRONG_TYPE) {
        x->cmd_type = q->u.write.type == LEDGER_CMD_SETTLE ? LEDGER_CMD_VOID : LEDGER_CMD_SETTLE;
    } else if (mode != FAKE_WRONG_OP && q->u.write.u.reserve.estimate_micros % 2 == 1) {
        x->status = LEDGER_DENIED;
        x->deny_reason = LEDGER_DENY_BUDGET;
        snprintf(x->account, sizeof(x->account), "team");
    }
    int op = mode == FAKE_WRONG_OP ? RPC_OP_STATUS : RPC_OP_WRITE;
    if (rpc_response_encode(&out, op, &resp) == 0) {
        send_all(peer, &out);
    }
    rpc_buf_free(&out);
}

static void fake_flush(const struct peer *peer, struct rpc_request *held, int *n_held)
{
    for (int i = *n_held - 1; i >= 0; i--) {
        fake_answer_write(peer, &held[i], FAKE_REVERSE);
    }
    *n_held = 0;
}

/* Answer STATUS as node 7, alone in its cluster and leading it. */
static void fake_answer_status(const struct peer *peer, const struct rpc_request *q)
{
    struct rpc_response resp;
    struct rpc_buf out = {0};
    memset(&resp, 0, sizeof(resp));
    resp.seq = q->seq;
    resp.u.status.node_id = 7;
    resp.u.status.term = 3;
    resp.u.status.raft_state = TALLY_RAFT_LEADER;
    resp.u.status.leader_id = 7;
    resp.u.status.n_members = 1;
    resp.u.status.members[0].id = 7;
    resp.u.status.members[0].role = TALLY_MEMBER_VOTER;
    snprintf(resp.u.status.members[0].peer_address, RPC_ADDRESS_MAX + 1, "127.0.0.1:1");
    if (rpc_response_encode(&out, RPC_OP_STATUS, &resp) == 0) {
        send_all(peer, &out);
    }
    rpc_buf_free(&out);
}

/* Answer an account list with `limit` accounts named "a<n>-xxx...", list_name_len long. */
static void fake_answer_list(struct fake *f, const struct peer *peer, const struct rpc_request *q)
{
    struct rpc_response resp;
    struct rpc_buf out = {0};
    uint32_t n = q->u.list.limit;
    struct ledger_account_info *items = calloc(n, sizeof(*items));
    if (items == NULL) {
        return;
    }
    for (uint32_t i = 0; i < n; i++) {
        int len = snprintf(items[i].name, sizeof(items[i].name), "a%u-", i);
        while (len < f->list_name_len && len < LEDGER_NAME_MAX) {
            items[i].name[len++] = 'x';
        }
        items[i].name[len] = '\0';
        items[i].id = i + 1;
        items[i].depth = 1;
    }
    memset(&resp, 0, sizeof(resp));
    resp.seq = q->seq;
    resp.u.list.n = n;
    resp.u.list.items.accounts = items;
    if (rpc_response_encode(&out, RPC_OP_ACCOUNT_LIST, &resp) == 0) {
        send_all(peer, &out);
    }
    rpc_buf_free(&out);
    free(items);
}

/* Handle one request; returns -1 to close the connection. */
static int fake_request(struct fake *f, const struct peer *peer, struct rpc_request *q,
                        struct rpc_request *held, int *n_held)
{
    struct rpc_buf out = {0};
    if (q->op == RPC_OP_STATUS) {
        fake_answer_status(peer, q);
        return 0;
    }
    if (q->op == RPC_OP_ACCOUNT_LIST) {
        fake_answer_list(f, peer, q);
        return 0;
    }
    if (q->op == RPC_OP_HELLO) {
        pthread_mutex_lock(&f->mu);
        f->hellos++;
        snprintf(f->token, sizeof(f->token), "%s", q->u.hello.token);
        pthread_mutex_unlock(&f->mu);
        if (f->mode == FAKE_EAUTH) {
            rpc_error_encode(&out, q->seq, RPC_EAUTH, "bad token", 0, "");
            send_all(peer, &out);
            rpc_buf_free(&out);
            return -1;
        }
        struct rpc_response resp;
        memset(&resp, 0, sizeof(resp));
        resp.seq = q->seq;
        resp.u.hello.role = RPC_ROLE_GATEWAY;
        resp.u.hello.node_id = 1;
        rpc_response_encode(&out, RPC_OP_HELLO, &resp);
        send_all(peer, &out);
        rpc_buf_free(&out);
        pthread_mutex_lock(&f->mu);
        int stall_ms = f->stall_ms;
        f->stall_ms = 0;
        pthread_mutex_unlock(&f->mu);
        if (stall_ms > 0) {
            usleep((useconds_t)stall_ms * 1000); /* the client's writes pile up */
        }
        return 0;
    }
    if (q->op == RPC_OP_WRITE) {
        pthread_mutex_lock(&f->mu);
        f->total_writes++;
        if (f->n_writes < 64) {
            f->types[f->n_writes] = q->u.write.type;
            memcpy(f->ids[f->n_writes], q->u.write.request_id, 16);
            f->n_writes++;
        }
        int mode = f->mode; /* a test may change it while connected */
        pthread_mutex_unlock(&f->mu);
        if (mode == FAKE_WRONG_ID || mode == FAKE_WRONG_TYPE || mode == FAKE_WRONG_OP) {
            fake_answer_write(peer, q, mode);
        } else if (mode == FAKE_REVERSE) {
            held[(*n_held)++] = *q;
            if (*n_held == f->batch) {
                fake_flush(peer, held, n_held);
            }
        }
        if (mode == FAKE_REDIRECT) {
            rpc_error_encode(&out, q->seq, RPC_ENOTLEADER, "not the leader", 2, f->leader_address);
            send_all(peer, &out);
            rpc_buf_free(&out);
        }
    }
    return 0;
}

static void fake_serve(struct fake *f, const struct peer *peer)
{
    struct rpc_framer fr;
    struct rpc_request *held = calloc(64, sizeof(*held));
    int n_held = 0;
    if (held == NULL) {
        return;
    }
    rpc_framer_init(&fr, RPC_FRAME_MAX);
    while (!fake_stopping(f)) {
        /* Records OpenSSL already took off the socket are not signalled by poll(). */
        if (peer->ssl == NULL || SSL_pending(peer->ssl) == 0) {
            struct pollfd p = {.fd = peer->fd, .events = POLLIN};
            int rc = poll(&p, 1, 50);
            if (rc == 0) {
                continue;
            }
        }
        uint8_t chunk[4096];
        ssize_t n = peer->ssl != NULL ? SSL_read(peer->ssl, chunk, sizeof(chunk))
                                      : recv(peer->fd, chunk, sizeof(chunk), 0);
        if (n <= 0 || rpc_framer_feed(&fr, chunk, (size_t)n) != 0) {
            break;
        }
        const uint8_t *body;
        size_t len;
        int close_it = 0;
        while (!close_it && rpc_framer_next(&fr, &body, &len) == 1) {
            struct rpc_request q;
            char why[RPC_MESSAGE_MAX + 1];
            if (rpc_request_decode(body, len, &q, NULL, why) != 0 ||
                fake_request(f, peer, &q, held, &n_held) != 0) {
                close_it = 1;
            }
        }
        if (close_it) {
            break;
        }
    }
    rpc_framer_free(&fr);
    free(held);
}

/* The TLS side of an accepted connection: 0, or -1 if the handshake failed. */
static int fake_tls_accept(struct fake *f, struct peer *p)
{
    p->ssl = SSL_new(f->tls);
    int ok = p->ssl != NULL && SSL_set_fd(p->ssl, p->fd) == 1 && SSL_accept(p->ssl) == 1;
    ERR_clear_error();
    pthread_mutex_lock(&f->mu);
    if (ok) {
        f->handshakes_ok++;
        X509 *cert = SSL_get1_peer_certificate(p->ssl);
        f->peer_subject[0] = '\0';
        if (cert != NULL) {
            X509_NAME_oneline(X509_get_subject_name(cert), f->peer_subject,
                              sizeof(f->peer_subject));
        }
        X509_free(cert);
    } else {
        f->handshakes_failed++;
    }
    pthread_mutex_unlock(&f->mu);
    return ok ? 0 : -1;
}

struct fake_conn {
    struct fake *f;
    struct peer peer;
    pthread_t thread;
    int done; /* under f->mu */
};

/* One accepted connection, on a thread of its own. */
static void *fake_conn_main(void *arg)
{
    struct fake_conn *fc = arg;
    if (fc->f->tls == NULL || fake_tls_accept(fc->f, &fc->peer) == 0) {
        fake_serve(fc->f, &fc->peer);
    }
    SSL_free(fc->peer.ssl);
    close(fc->peer.fd);
    pthread_mutex_lock(&fc->f->mu);
    fc->done = 1;
    pthread_mutex_unlock(&fc->f->mu);
    return NULL;
}

/* Join the connection threads that ended (all of them with `all`). */
static void fake_reap(struct fake *f, int all)
{
    int kept = 0;
    for (int i = 0; i < f->n_conns; i++) {
        struct fake_conn *fc = f->conns[i];
        pthread_mutex_lock(&f->mu);
        int done = fc->done;
        pthread_mutex_unlock(&f->mu);
        if (done || all) {
            pthread_join(fc->thread, NULL);
            free(fc);
        } else {
            f->conns[kept++] = fc;
        }
    }
    f->n_conns = kept;
}

static void *fake_main(void *arg)
{
    struct fake *f = arg;
    /* A client gone mid-write must not kill the test: SIGPIPE stays pending on the fake's
     * threads (which inherit this mask). */
    sigset_t pipe_set;
    sigemptyset(&pipe_set);
    sigaddset(&pipe_set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_set, NULL);
    while (!fake_stopping(f)) {
        struct pollfd p = {.fd = f->listen_fd, .events = POLLIN};
        if (poll(&p, 1, 50) <= 0) {
            continue;
        }
        int fd = accept(f->listen_fd, NULL, NULL);
        if (fd < 0) {
            continue;
        }
        /* Blocking I/O, but never stuck for good on a client that went quiet. */
        struct timeval tv = {.tv_sec = 3};
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
        fake_reap(f, 0);
        struct fake_conn *fc = calloc(1, sizeof(*fc));
        if (fc == NULL || f->n_conns == (int)(sizeof(f->conns) / sizeof(f->conns[0]))) {
            free(fc);
            close(fd);
            continue;
        }
        fc->f = f;
        fc->peer.fd = fd;
        if (pthread_create(&fc->thread, NULL, fake_conn_main, fc) != 0) {
            free(fc);
            close(fd);
            continue;
        }
        f->conns[f->n_conns++] = fc;
    }
    fake_reap(f, 1);
    return NULL;
}

/* Start a fake node in `mode`; over TLS with `tls` (owned by the fake from now on). */
static void fake_start_tls(struct fake *f, int mode, int batch, SSL_CTX *tls)
{
    memset(f, 0, sizeof(*f));
    f->mode = mode;
    f->batch = batch;
    f->tls = tls;
    pthread_mutex_init(&f->mu, NULL);
    f->listen_fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    REQUIRE(f->listen_fd >= 0);
    REQUIRE(bind(f->listen_fd, (struct sockaddr *)&a, sizeof(a)) == 0);
    REQUIRE(listen(f->listen_fd, 16) == 0);
    REQUIRE(getsockname(f->listen_fd, (struct sockaddr *)&a, &len) == 0);
    f->port = ntohs(a.sin_port);
    REQUIRE(pthread_create(&f->thread, NULL, fake_main, f) == 0);
}

static void fake_start(struct fake *f, int mode, int batch)
{
    fake_start_tls(f, mode, batch, NULL);
}

static void fake_stop(struct fake *f)
{
    pthread_mutex_lock(&f->mu);
    f->stop = 1;
    pthread_mutex_unlock(&f->mu);
    pthread_join(f->thread, NULL);
    close(f->listen_fd);
    pthread_mutex_destroy(&f->mu);
    SSL_CTX_free(f->tls);
}

static void refused_token_ends_calls_with_eauth(void)
{
    struct fake f;
    fake_start(&f, FAKE_EAUTH, 0);
    struct tally *c = open_at(f.port, 1, 0);
    struct tally_result res;
    struct tally_reserve_args a = reserve_args("sk-1");
    int64_t start_ms = now_ms();
    CHECK_EQ_INT(tally_reserve(c, &a, 2000, &res), -TALLY_EAUTH);
    CHECK(now_ms() - start_ms < 1000);      /* not retried until the deadline */
    CHECK_EQ_INT(res.outcome, TALLY_ERROR); /* fail-open does not cover a wrong token */
    CHECK_EQ_INT(res.failed_open, 0);
    CHECK(strstr(res.message, "bad token") != NULL);
    tally_close(c);
    fake_stop(&f);
}

struct pipelined {
    struct tally *c;
    int64_t estimate_micros;
    int rc;
    struct tally_result res;
};

static void *pipelined_main(void *arg)
{
    struct pipelined *p = arg;
    struct tally_reserve_args a = reserve_args("sk-pipe");
    a.estimate_micros = p->estimate_micros;
    p->rc = tally_reserve(p->c, &a, 3000, &p->res);
    return NULL;
}

static void out_of_order_answers_reach_their_callers(void)
{
    enum { N = 8 };
    struct fake f;
    fake_start(&f, FAKE_REVERSE, N);
    struct tally *c = open_at(f.port, 0, 0);
    pthread_t threads[N];
    struct pipelined p[N];
    for (int i = 0; i < N; i++) {
        p[i].c = c;
        p[i].estimate_micros = 1000 + i;
        REQUIRE(pthread_create(&threads[i], NULL, pipelined_main, &p[i]) == 0);
    }
    for (int i = 0; i < N; i++) {
        pthread_join(threads[i], NULL);
    }
    for (int i = 0; i < N; i++) {
        CHECK_EQ_INT(p[i].rc, 0);
        CHECK_EQ_INT(p[i].res.remaining, p[i].estimate_micros);
        CHECK_EQ_INT(p[i].res.index, 42);
        CHECK_EQ_INT(p[i].res.attempts, 1);
        if (i % 2 == 1) {
            CHECK_EQ_INT(p[i].res.outcome, TALLY_DENIED);
            CHECK_EQ_INT(p[i].res.deny_reason, TALLY_DENY_BUDGET);
            CHECK_EQ_STR(p[i].res.account, "team");
        } else {
            CHECK_EQ_INT(p[i].res.outcome, TALLY_GRANTED);
        }
    }
    pthread_mutex_lock(&f.mu);
    CHECK_EQ_INT(f.n_writes, N);
    CHECK_EQ_INT(f.hellos, 1); /* one connection, pipelined */
    for (int i = 0; i < f.n_writes; i++) {
        int found = 0;
        for (int j = 0; j < N; j++) {
            found += memcmp(f.ids[i], p[j].res.request_id, 16) == 0;
        }
        CHECK_EQ_INT(found, 1);
    }
    pthread_mutex_unlock(&f.mu);
    struct tally_stats st;
    tally_stats(c, &st);
    CHECK_EQ_INT(st.requests_sent, N);
    CHECK_EQ_INT(st.connects, 1);
    CHECK_EQ_INT(st.connected, 1);
    tally_close(c);
    fake_stop(&f);
}

/* Count the VOIDs of `id` the fake has seen. */
static int fake_voids_of(struct fake *f, const uint8_t *id)
{
    int n = 0;
    pthread_mutex_lock(&f->mu);
    for (int w = 0; w < f->n_writes; w++) {
        n += f->types[w] == LEDGER_CMD_VOID && memcmp(f->ids[w], id, 16) == 0;
    }
    pthread_mutex_unlock(&f->mu);
    return n;
}

static void unanswered_reserve_is_voided_in_the_background(void)
{
    struct fake f;
    fake_start(&f, FAKE_SILENT, 0);
    struct tally *c = open_at(f.port, 1, 0);
    struct tally_result res;
    struct tally_reserve_args a = reserve_args("sk-1");
    int64_t start_ms = now_ms();
    CHECK_EQ_INT(tally_reserve(c, &a, 150, &res), 0);
    CHECK(now_ms() - start_ms < 600);
    CHECK_EQ_INT(res.outcome, TALLY_GRANTED);
    CHECK_EQ_INT(res.failed_open, 1);
    CHECK(res.attempts >= 1);
    /* The void goes out on the same (silent) connection or, after the silence time-out,
     * on a new one; either way the node sees a VOID of the reserve's id. */
    for (int i = 0; i < 100 && fake_voids_of(&f, res.request_id) == 0; i++) {
        usleep(10000);
    }
    CHECK(fake_voids_of(&f, res.request_id) >= 1);
    pthread_mutex_lock(&f.mu);
    CHECK(f.n_writes >= 2);
    CHECK_EQ_INT(f.types[0], LEDGER_CMD_RESERVE);
    pthread_mutex_unlock(&f.mu);
    struct tally_stats st;
    tally_stats(c, &st);
    CHECK_EQ_INT(st.voids_queued, 1);
    CHECK_EQ_INT(st.failed_open, 1);
    tally_close(c);
    fake_stop(&f);
}

/* A listening socket on loopback that never accepts: a connection to it would wait in
 * its backlog, where poll() sees it. */
static int trap_listen(uint16_t *port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    REQUIRE(fd >= 0);
    REQUIRE(bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0);
    REQUIRE(listen(fd, 16) == 0);
    REQUIRE(getsockname(fd, (struct sockaddr *)&a, &len) == 0);
    *port = ntohs(a.sin_port);
    return fd;
}

/* A client of `endpoints` whose first connection goes to `first` (a client starts at a
 * random endpoint: reopen until it is that one). */
static struct tally *open_starting_at(const char *endpoints, const char *first)
{
    for (int attempt = 0; attempt < 100; attempt++) {
        struct tally *c = open_endpoints(endpoints, 0, 0);
        struct tally_stats st;
        int64_t deadline_ms = now_ms() + 1000;
        do {
            tally_stats(c, &st);
        } while (st.endpoint[0] == '\0' && now_ms() < deadline_ms && usleep(1000) == 0);
        if (strcmp(st.endpoint, first) == 0) {
            return c;
        }
        tally_close(c);
    }
    REQUIRE(!"no client started at the wanted endpoint");
    return NULL;
}

/* A node that is not the leader names one the client was not configured with: the
 * client does not go there (its token would), it tries its own endpoints until the
 * deadline. */
static void redirect_to_an_unconfigured_address_is_not_followed(void)
{
    uint16_t trap_port;
    int trap = trap_listen(&trap_port);
    struct fake f;
    fake_start(&f, FAKE_REDIRECT, 0);
    snprintf(f.leader_address, sizeof(f.leader_address), "127.0.0.1:%u", trap_port);
    struct tally *c = open_at(f.port, 0, 0);
    struct tally_result res;
    struct tally_reserve_args a = reserve_args("sk-1");
    CHECK_EQ_INT(tally_reserve(c, &a, 500, &res), -TALLY_EUNAVAILABLE);
    CHECK(strstr(res.message, "is not a configured endpoint: not followed") != NULL);
    struct tally_stats st;
    tally_stats(c, &st);
    CHECK_EQ_INT(st.redirects, 0);
    tally_close(c);
    pthread_mutex_lock(&f.mu);
    CHECK(f.hellos >= 2); /* it came back to its one endpoint */
    pthread_mutex_unlock(&f.mu);
    struct pollfd p = {.fd = trap, .events = POLLIN};
    CHECK_EQ_INT(poll(&p, 1, 0), 0); /* nobody connected to the named address */
    close(trap);
    fake_stop(&f);
}

/* The same redirect to an address the client was configured with is followed. */
static void redirect_to_a_configured_endpoint_is_followed(void)
{
    struct fake follower, leader;
    fake_start(&leader, FAKE_REVERSE, 1);
    fake_start(&follower, FAKE_REDIRECT, 0);
    snprintf(follower.leader_address, sizeof(follower.leader_address), "127.0.0.1:%u", leader.port);
    char endpoints[64], first[32];
    snprintf(endpoints, sizeof(endpoints), "127.0.0.1:%u,127.0.0.1:%u", follower.port, leader.port);
    snprintf(first, sizeof(first), "127.0.0.1:%u", follower.port);
    struct tally *c = open_starting_at(endpoints, first);
    struct tally_result res;
    struct tally_reserve_args a = reserve_args("sk-1");
    CHECK_EQ_INT(tally_reserve(c, &a, 2000, &res), 0);
    CHECK_EQ_INT(res.outcome, TALLY_GRANTED);
    struct tally_stats st;
    tally_stats(c, &st);
    CHECK_EQ_INT(st.redirects, 1);
    tally_close(c);
    fake_stop(&follower);
    fake_stop(&leader);
}

/* An answer that is not the answer to the call (another request id, another command type,
 * another op's shape) is a protocol error: the call fails with TALLY_EPROTO and says why,
 * never a grant, the connection is dropped, and the reserve's id is voided in the
 * background in case the node did grant it. */
static void answer_to_another_request_fails_the_call(void)
{
    static const struct {
        int mode;
        const char *says;
    } cases[] = {
        {FAKE_WRONG_ID, "another request id"},
        {FAKE_WRONG_TYPE, "is of type"},
        {FAKE_WRONG_OP, "malformed answer"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct fake f;
        fake_start(&f, cases[i].mode, 0);
        struct tally *c = open_at(f.port, 1, 0);
        struct tally_result res;
        struct tally_reserve_args a = reserve_args("sk-1");
        CHECK_EQ_INT(tally_reserve(c, &a, 2000, &res), -TALLY_EPROTO);
        CHECK_EQ_INT(res.outcome, TALLY_ERROR);
        CHECK_EQ_INT(res.error, TALLY_EPROTO);
        CHECK_EQ_INT(res.failed_open, 0);
        if (strstr(res.message, cases[i].says) == NULL) {
            fprintf(stderr, "  mode %d: message \"%s\"\n", cases[i].mode, res.message);
            CHECK(false);
        }
        for (int w = 0; w < 100 && fake_voids_of(&f, res.request_id) == 0; w++) {
            usleep(10000);
        }
        CHECK(fake_voids_of(&f, res.request_id) >= 1);
        struct tally_stats st;
        tally_stats(c, &st);
        CHECK_EQ_INT(st.voids_queued, 1);
        CHECK(st.reconnects >= 1);
        /* A settle is refused the same way (it starts no void). */
        uint8_t id[TALLY_REQUEST_ID_SIZE] = {1};
        CHECK_EQ_INT(tally_settle(c, id, 10, 1, 2000, &res), -TALLY_EPROTO);
        CHECK_EQ_INT(res.outcome, TALLY_ERROR);
        tally_close(c);
        fake_stop(&f);
    }
}

/* A gateway that resubmits a reserve it holds (same id) must not lose the grant when the
 * resubmission ends UNAVAILABLE: the client does not void an id it has seen granted.
 * An id it never saw granted is still voided. */
static void resubmitted_grant_is_not_voided(void)
{
    struct fake f;
    fake_start(&f, FAKE_REVERSE, 1); /* answers every write at once, granted */
    struct tally *c = open_at(f.port, 0, 0);
    struct tally_result res;
    struct tally_reserve_args a = reserve_args("sk-1");
    uint8_t held[16], fresh[16];
    memset(held, 0xa1, sizeof(held));
    memset(fresh, 0xb2, sizeof(fresh));
    a.request_id = held;
    CHECK_EQ_INT(tally_reserve(c, &a, 2000, &res), 0);
    CHECK_EQ_INT(res.outcome, TALLY_GRANTED);

    pthread_mutex_lock(&f.mu);
    f.mode = FAKE_SILENT; /* from now on nothing is answered */
    pthread_mutex_unlock(&f.mu);
    CHECK_EQ_INT(tally_reserve(c, &a, 150, &res), -TALLY_EUNAVAILABLE);
    CHECK_EQ_INT(res.outcome, TALLY_UNAVAILABLE);
    a.request_id = fresh;
    CHECK_EQ_INT(tally_reserve(c, &a, 150, &res), -TALLY_EUNAVAILABLE);

    /* The fresh id's void goes out; then nothing more may come for the held one. */
    for (int i = 0; i < 100 && fake_voids_of(&f, fresh) == 0; i++) {
        usleep(10000);
    }
    CHECK_EQ_INT(fake_voids_of(&f, fresh), 1);
    usleep(100000);
    CHECK_EQ_INT(fake_voids_of(&f, held), 0);
    struct tally_stats st;
    tally_stats(c, &st);
    CHECK_EQ_INT(st.voids_skipped, 1);
    CHECK_EQ_INT(st.voids_queued, 1);
    tally_close(c);
    fake_stop(&f);
}

/* Gateways often number their ids (a fixed prefix and a counter in the last bytes): a
 * grant must still be remembered after many later grants of neighbouring ids. */
static void resubmitted_grant_is_not_voided_among_sequential_ids(void)
{
    struct fake f;
    fake_start(&f, FAKE_REVERSE, 1);
    struct tally *c = open_at(f.port, 0, 0);
    struct tally_result res;
    struct tally_reserve_args a = reserve_args("sk-1");
    uint8_t ids[200][16];
    for (int i = 0; i < 200; i++) {
        memset(ids[i], 0, sizeof(ids[i]));
        memcpy(ids[i], "\xcf\x4b\xcd\x7d\x06", 5); /* prefix, worker */
        ids[i][14] = (uint8_t)(0x51 + i / 256);       /* big-endian counter */
        ids[i][15] = (uint8_t)(i % 256);
        a.request_id = ids[i];
        CHECK_EQ_INT(tally_reserve(c, &a, 2000, &res), 0);
        CHECK_EQ_INT(res.outcome, TALLY_GRANTED);
    }
    pthread_mutex_lock(&f.mu);
    f.mode = FAKE_SILENT;
    pthread_mutex_unlock(&f.mu);
    a.request_id = ids[0]; /* the oldest grant, 199 grants ago */
    CHECK_EQ_INT(tally_reserve(c, &a, 150, &res), -TALLY_EUNAVAILABLE);
    usleep(200000);
    CHECK_EQ_INT(fake_voids_of(&f, ids[0]), 0);
    struct tally_stats st;
    tally_stats(c, &st);
    CHECK_EQ_INT(st.voids_skipped, 1);
    CHECK_EQ_INT(st.voids_queued, 0);
    tally_close(c);
    fake_stop(&f);
}

/* ---- TLS. ---- */

/* Test certificates (PEM files in a temp dir), made with the OpenSSL API. */
struct pki {
    char ca[300];            /* the cluster's CA */
    char server_cert[300];   /* signed by ca: DNS:localhost, IP:127.0.0.1 */
    char server_key[300];    /* also the key of the two server certificates below */
    char dns_only_cert[300]; /* signed by ca: DNS:localhost only */
    char rogue_cert[300];    /* signed by a CA the client does not trust */
    char client_cert[300];   /* signed by ca: OU=admin, CN=ops */
    char client_key[300];
    char garbage[300]; /* not PEM */
};

static EVP_PKEY *pki_key(void)
{
    EVP_PKEY *key = EVP_EC_gen("P-256");
    REQUIRE(key != NULL);
    return key;
}

static void pki_ext(X509 *cert, X509 *issuer, int nid, const char *value)
{
    X509V3_CTX ctx;
    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, issuer, cert, NULL, NULL, 0);
    X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
    REQUIRE(ext != NULL);
    REQUIRE(X509_add_ext(cert, ext, -1) == 1);
    X509_EXTENSION_free(ext);
}

/* A certificate of `key` named OU=`ou` (may be NULL), CN=`cn`, signed by `issuer` with
 * `issuer_key` (self-signed CA when issuer is NULL). `san` NULL makes a CA. */
static X509 *pki_cert(EVP_PKEY *key, const char *ou, const char *cn, const char *san, X509 *issuer,
                      EVP_PKEY *issuer_key)
{
    static long serial = 1;
    X509 *x = X509_new();
    REQUIRE(x != NULL);
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), serial++);
    X509_gmtime_adj(X509_getm_notBefore(x), -3600);
    X509_gmtime_adj(X509_getm_notAfter(x), 86400);
    REQUIRE(X509_set_pubkey(x, key) == 1);
    X509_NAME *name = X509_get_subject_name(x);
    if (ou != NULL) {
        X509_NAME_add_entry_by_txt(name, "OU", MBSTRING_ASC, (const unsigned char *)ou, -1, -1, 0);
    }
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0);
    X509_set_issuer_name(x, issuer != NULL ? X509_get_subject_name(issuer) : name);
    X509 *signer = issuer != NULL ? issuer : x;
    if (san == NULL) {
        pki_ext(x, signer, NID_basic_constraints, "critical,CA:TRUE");
        pki_ext(x, signer, NID_key_usage, "critical,keyCertSign,cRLSign");
    } else {
        pki_ext(x, signer, NID_basic_constraints, "CA:FALSE");
        pki_ext(x, signer, NID_subject_alt_name, san);
    }
    REQUIRE(X509_sign(x, issuer_key != NULL ? issuer_key : key, EVP_sha256()) > 0);
    return x;
}

static void pki_write(const char *path, X509 *cert, EVP_PKEY *key)
{
    FILE *f = fopen(path, "w");
    REQUIRE(f != NULL);
    int ok = cert != NULL ? PEM_write_X509(f, cert)
                          : PEM_write_PrivateKey(f, key, NULL, NULL, 0, NULL, NULL);
    fclose(f);
    REQUIRE(ok == 1);
}

static void pki_make(struct pki *p)
{
    const char *dir = test_tmpdir();
    snprintf(p->ca, sizeof(p->ca), "%s/ca.pem", dir);
    snprintf(p->server_cert, sizeof(p->server_cert), "%s/server.pem", dir);
    snprintf(p->server_key, sizeof(p->server_key), "%s/server.key", dir);
    snprintf(p->dns_only_cert, sizeof(p->dns_only_cert), "%s/dns-only.pem", dir);
    snprintf(p->rogue_cert, sizeof(p->rogue_cert), "%s/rogue.pem", dir);
    snprintf(p->client_cert, sizeof(p->client_cert), "%s/client.pem", dir);
    snprintf(p->client_key, sizeof(p->client_key), "%s/client.key", dir);
    snprintf(p->garbage, sizeof(p->garbage), "%s/garbage.pem", dir);
    EVP_PKEY *ca_key = pki_key(), *rogue_key = pki_key(), *server_key = pki_key();
    EVP_PKEY *client_key = pki_key();
    X509 *ca = pki_cert(ca_key, NULL, "tally test CA", NULL, NULL, NULL);
    X509 *rogue = pki_cert(rogue_key, NULL, "rogue CA", NULL, NULL, NULL);
    X509 *server = pki_cert(server_key, NULL, "node", "DNS:localhost,IP:127.0.0.1", ca, ca_key);
    X509 *dns_only = pki_cert(server_key, NULL, "node", "DNS:localhost", ca, ca_key);
    X509 *rogue_server =
        pki_cert(server_key, NULL, "node", "DNS:localhost,IP:127.0.0.1", rogue, rogue_key);
    X509 *client = pki_cert(client_key, "admin", "ops", "DNS:ops", ca, ca_key);
    pki_write(p->ca, ca, NULL);
    pki_write(p->server_cert, server, NULL);
    pki_write(p->server_key, NULL, server_key);
    pki_write(p->dns_only_cert, dns_only, NULL);
    pki_write(p->rogue_cert, rogue_server, NULL);
    pki_write(p->client_cert, client, NULL);
    pki_write(p->client_key, NULL, client_key);
    FILE *f = fopen(p->garbage, "w");
    REQUIRE(f != NULL);
    fputs("not a certificate\n", f);
    fclose(f);
    X509_free(ca);
    X509_free(rogue);
    X509_free(server);
    X509_free(dns_only);
    X509_free(rogue_server);
    X509_free(client);
    EVP_PKEY_free(ca_key);
    EVP_PKEY_free(rogue_key);
    EVP_PKEY_free(server_key);
    EVP_PKEY_free(client_key);
}

/* A server context presenting `cert` (key: the pki's server key); with `client_ca`, a
 * client certificate is optional but must verify against it (as tallyd does). */
static SSL_CTX *server_ctx(const struct pki *p, const char *cert, const char *client_ca)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    REQUIRE(ctx != NULL);
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    REQUIRE(SSL_CTX_use_certificate_chain_file(ctx, cert) == 1);
    REQUIRE(SSL_CTX_use_PrivateKey_file(ctx, p->server_key, SSL_FILETYPE_PEM) == 1);
    if (client_ca != NULL) {
        REQUIRE(SSL_CTX_load_verify_locations(ctx, client_ca, NULL) == 1);
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    }
    return ctx;
}

/* The TLS fields of a configuration (NULL: unset). */
struct tls_opts {
    const char *ca, *cert, *key, *server_name;
    const char *token;
    int64_t connect_timeout_ms;
};

static int open_tls(struct tally **out, uint16_t port, const struct tls_opts *o, char *errmsg)
{
    char endpoints[64];
    struct tally_config cfg;
    tally_config_init(&cfg);
    snprintf(endpoints, sizeof(endpoints), "127.0.0.1:%u", port);
    cfg.endpoints = endpoints;
    cfg.token = o->token;
    cfg.connect_timeout_ms = o->connect_timeout_ms != 0 ? o->connect_timeout_ms : 200;
    cfg.void_deadline_ms = 1000;
    cfg.tls_ca_file = o->ca;
    cfg.tls_cert_file = o->cert;
    cfg.tls_key_file = o->key;
    cfg.tls_server_name = o->server_name;
    *out = NULL;
    return tally_open(out, &cfg, errmsg);
}

static struct tally *open_tls_ok(uint16_t port, const struct tls_opts *o)
{
    char errmsg[TALLY_ERRMSG_SIZE] = "";
    struct tally *c;
    int rc = open_tls(&c, port, o, errmsg);
    if (rc != 0) {
        fprintf(stderr, "  tally_open: %s\n", errmsg);
    }
    REQUIRE(rc == 0 && c != NULL);
    return c;
}

static void tls_round_trip_is_verified_and_pipelined(void)
{
    enum { N = 8 };
    struct pki pki;
    struct fake f;
    pki_make(&pki);
    fake_start_tls(&f, FAKE_REVERSE, N, server_ctx(&pki, pki.server_cert, NULL));
    f.list_name_len = 120; /* 512 of them: an answer of many TLS records */
    struct tls_opts o = {.ca = pki.ca, .token = "secret-token"};
    struct tally *c = open_tls_ok(f.port, &o); /* server name: "127.0.0.1" (IP SAN) */
    pthread_t threads[N];
    struct pipelined p[N];
    for (int i = 0; i < N; i++) {
        p[i].c = c;
        p[i].estimate_micros = 2000 + i;
        REQUIRE(pthread_create(&threads[i], NULL, pipelined_main, &p[i]) == 0);
    }
    for (int i = 0; i < N; i++) {
        pthread_join(threads[i], NULL);
    }
    for (int i = 0; i < N; i++) {
        CHECK_EQ_INT(p[i].rc, 0);
        CHECK_EQ_INT(p[i].res.outcome, i % 2 == 1 ? TALLY_DENIED : TALLY_GRANTED);
        CHECK_EQ_INT(p[i].res.remaining, p[i].estimate_micros);
    }

    static struct tally_account accounts[TALLY_LIST_MAX];
    struct tally_result res;
    uint32_t n = 0;
    struct tally_cursor next = {.len = 1};
    CHECK_EQ_INT(
        tally_account_list(c, NULL, NULL, TALLY_LIST_MAX, 0, 2000, accounts, &n, &next, &res), 0);
    CHECK_EQ_INT(n, TALLY_LIST_MAX);
    CHECK_EQ_INT(next.len, 0);
    CHECK_EQ_INT(strlen(accounts[TALLY_LIST_MAX - 1].name), 120);
    CHECK(strncmp(accounts[TALLY_LIST_MAX - 1].name, "a511-xx", 7) == 0);

    struct tally_node_status status;
    char endpoint[32];
    snprintf(endpoint, sizeof(endpoint), "127.0.0.1:%u", f.port);
    CHECK_EQ_INT(tally_status(c, endpoint, 2000, &status, &res), 0);
    CHECK_EQ_INT(status.node_id, 7);
    CHECK_EQ_INT(status.raft_state, TALLY_RAFT_LEADER);

    struct tally_stats st;
    tally_stats(c, &st);
    CHECK_EQ_INT(st.connects, 1);
    CHECK_EQ_INT(st.requests_sent, N + 1);
    tally_close(c);
    fake_stop(&f);
    CHECK_EQ_INT(f.handshakes_ok, 2); /* the client's connection and tally_status()'s */
    CHECK_EQ_INT(f.handshakes_failed, 0);
    CHECK_EQ_INT(f.hellos, 2);
    CHECK_EQ_STR(f.token, "secret-token");
    CHECK_EQ_STR(f.peer_subject, "");
}

static void tls_client_certificate_stands_for_the_token(void)
{
    struct pki pki;
    struct fake f;
    pki_make(&pki);
    fake_start_tls(&f, FAKE_REVERSE, 1, server_ctx(&pki, pki.server_cert, pki.ca));
    /* token NULL: allowed with a certificate; the name is checked against DNS:localhost. */
    struct tls_opts o = {
        .ca = pki.ca, .cert = pki.client_cert, .key = pki.client_key, .server_name = "localhost"};
    struct tally *c = open_tls_ok(f.port, &o);
    struct tally_reserve_args a = reserve_args("sk-cert");
    struct tally_result res;
    CHECK_EQ_INT(tally_reserve(c, &a, 2000, &res), 0);
    CHECK_EQ_INT(res.outcome, TALLY_GRANTED);
    tally_close(c);
    fake_stop(&f);
    CHECK_EQ_INT(f.hellos, 1);
    CHECK_EQ_STR(f.token, "");
    CHECK(strstr(f.peer_subject, "OU=admin") != NULL);
    CHECK(strstr(f.peer_subject, "CN=ops") != NULL);
}

static void tls_write_waits_for_a_node_that_does_not_read(void)
{
    enum { N = 600 };
    struct pki pki;
    struct fake f;
    struct async_box box;
    static uint8_t metadata[TALLY_METADATA_MAX];
    pki_make(&pki);
    memset(metadata, 'm', sizeof(metadata));
    fake_start_tls(&f, FAKE_REVERSE, 1, server_ctx(&pki, pki.server_cert, NULL));
    f.stall_ms = 400; /* meanwhile ~200 KB of requests fill the socket buffers */
    /* Loopback's 64 KiB segments let the kernel buffer megabytes; small segments and a
     * small window (announced when the client connects) make SSL_write wait. */
    int mss = 536, rcvbuf = 4096;
    REQUIRE(setsockopt(f.listen_fd, IPPROTO_TCP, TCP_MAXSEG, &mss, sizeof(mss)) == 0);
    REQUIRE(setsockopt(f.listen_fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf)) == 0);
    struct tls_opts o = {.ca = pki.ca, .token = "t"};
    struct tally *c = open_tls_ok(f.port, &o);
    async_box_init(&box);
    struct tally_reserve_args a = reserve_args("sk-stall");
    a.metadata = metadata;
    a.metadata_len = sizeof(metadata);
    int granted = 0;
    for (int i = 0; i < N; i++) {
        if (i == N / 2) {
            usleep(100 * 1000); /* the rest arrives while a write waits: the buffer grows */
        }
        a.estimate_micros = 2 * i; /* even: granted */
        CHECK_EQ_INT(tally_reserve_async(c, &a, 5000, async_cb, &box), 0);
    }
    async_box_wait(&box, N);
    pthread_mutex_lock(&box.mu);
    CHECK_EQ_INT(box.calls, N);
    granted = box.last_outcome == TALLY_GRANTED;
    pthread_mutex_unlock(&box.mu);
    CHECK(granted);
    struct tally_stats st;
    tally_stats(c, &st);
    CHECK_EQ_INT(st.unavailable, 0);
    CHECK_EQ_INT(st.connects, 1);
    CHECK_EQ_INT(st.retries, 0);
    tally_close(c);
    fake_stop(&f);
    CHECK_EQ_INT(f.total_writes, N);
}

/* A reserve that cannot verify the node ends UNAVAILABLE by its deadline and says why. */
static void expect_verify_failure(struct tally *c, const char *detail)
{
    struct tally_reserve_args a = reserve_args("sk-1");
    struct tally_result res;
    int64_t start_ms = now_ms();
    CHECK_EQ_INT(tally_reserve(c, &a, 500, &res), -TALLY_EUNAVAILABLE);
    int64_t took_ms = now_ms() - start_ms;
    CHECK(took_ms >= 480 && took_ms < 1000);
    CHECK_EQ_INT(res.outcome, TALLY_UNAVAILABLE);
    CHECK_EQ_INT(res.error, TALLY_EUNAVAILABLE);
    CHECK_EQ_INT(res.attempts, 0);
    CHECK(strstr(res.message, "certificate verify failed") != NULL);
    CHECK(strstr(res.message, detail) != NULL);
    if (strstr(res.message, detail) == NULL) {
        fprintf(stderr, "  message: %s\n", res.message);
    }
}

static void tls_unknown_ca_is_unavailable_and_says_why(void)
{
    struct pki pki;
    struct fake f;
    pki_make(&pki);
    fake_start_tls(&f, FAKE_REVERSE, 1, server_ctx(&pki, pki.rogue_cert, NULL));
    struct tls_opts o = {.ca = pki.ca, .token = "t"};
    struct tally *c = open_tls_ok(f.port, &o);
    expect_verify_failure(c, "unable to get local issuer certificate");

    struct tally_node_status status;
    struct tally_result res;
    char endpoint[32];
    snprintf(endpoint, sizeof(endpoint), "127.0.0.1:%u", f.port);
    CHECK_EQ_INT(tally_status(c, endpoint, 500, &status, &res), -TALLY_EUNAVAILABLE);
    CHECK_EQ_INT(res.outcome, TALLY_UNAVAILABLE);
    CHECK(strstr(res.message, "certificate verify failed") != NULL);
    tally_close(c);
    fake_stop(&f);
    CHECK(f.handshakes_failed >= 2); /* retried until the deadline */
    CHECK_EQ_INT(f.handshakes_ok, 0);
    CHECK_EQ_INT(f.hellos, 0);
}

static void tls_wrong_server_name_is_unavailable_and_says_why(void)
{
    struct pki pki;
    struct fake f;
    pki_make(&pki);
    fake_start_tls(&f, FAKE_REVERSE, 1, server_ctx(&pki, pki.dns_only_cert, NULL));
    /* The default name is the endpoint's host, 127.0.0.1: not in DNS:localhost. */
    struct tls_opts o = {.ca = pki.ca, .token = "t"};
    struct tally *c = open_tls_ok(f.port, &o);
    expect_verify_failure(c, "IP address mismatch");
    tally_close(c);
    /* A configured name must match too. */
    o.server_name = "wrong.example";
    c = open_tls_ok(f.port, &o);
    expect_verify_failure(c, "hostname mismatch (expected \"wrong.example\")");
    struct tally_node_status status;
    struct tally_result res;
    char endpoint[32];
    snprintf(endpoint, sizeof(endpoint), "127.0.0.1:%u", f.port);
    CHECK_EQ_INT(tally_status(c, endpoint, 500, &status, &res), -TALLY_EUNAVAILABLE);
    CHECK(strstr(res.message, "hostname mismatch") != NULL);
    tally_close(c);
    /* And "localhost" is the name it carries. */
    o.server_name = "localhost";
    c = open_tls_ok(f.port, &o);
    CHECK_EQ_INT(tally_status(c, endpoint, 2000, &status, &res), 0);
    tally_close(c);
    fake_stop(&f);
    CHECK(f.hellos >= 1); /* tally_status(); the I/O thread's own connection may say HELLO */
}

static void tls_to_a_plain_node_times_out_within_the_connect_timeout(void)
{
    struct pki pki;
    struct fake f;
    pki_make(&pki);
    fake_start(&f, FAKE_SILENT, 0); /* reads the ClientHello as a frame, answers nothing */
    struct tls_opts o = {.ca = pki.ca, .token = "t", .connect_timeout_ms = 150};
    struct tally *c = open_tls_ok(f.port, &o);
    struct tally_reserve_args a = reserve_args("sk-1");
    struct tally_result res;
    int64_t start_ms = now_ms();
    CHECK_EQ_INT(tally_reserve(c, &a, 400, &res), -TALLY_EUNAVAILABLE);
    CHECK(now_ms() - start_ms < 800);
    CHECK(strstr(res.message, "no TLS handshake within 150 ms") != NULL);
    struct tally_node_status status;
    char endpoint[32];
    snprintf(endpoint, sizeof(endpoint), "127.0.0.1:%u", f.port);
    start_ms = now_ms();
    CHECK_EQ_INT(tally_status(c, endpoint, 200, &status, &res), -TALLY_EUNAVAILABLE);
    CHECK(now_ms() - start_ms < 500);
    CHECK(strstr(res.message, "TLS handshake") != NULL);
    tally_close(c);
    fake_stop(&f);
    CHECK_EQ_INT(f.hellos, 0);
}

static void tls_open_checks_its_files(void)
{
    struct pki pki;
    struct tally *c;
    char errmsg[TALLY_ERRMSG_SIZE];
    char missing[320];
    char long_name[300];
    pki_make(&pki);
    snprintf(missing, sizeof(missing), "%s.missing", pki.ca);
    memset(long_name, 'n', sizeof(long_name) - 1);
    long_name[sizeof(long_name) - 1] = '\0';
    struct {
        struct tls_opts o;
        const char *says;
    } cases[] = {
        {{.ca = missing, .token = "t"}, "No such file"},
        {{.ca = pki.garbage, .token = "t"}, "tls_ca_file"},
        {{.ca = pki.ca, .cert = pki.client_cert, .token = "t"}, "both or neither"},
        {{.ca = pki.ca, .key = pki.client_key, .token = "t"}, "both or neither"},
        {{.ca = pki.ca, .cert = missing, .key = pki.client_key, .token = "t"}, "tls_cert_file"},
        {{.ca = pki.ca, .cert = pki.garbage, .key = pki.client_key, .token = "t"}, "tls_cert_file"},
        {{.ca = pki.ca, .cert = pki.client_cert, .key = pki.garbage, .token = "t"}, "tls_key_file"},
        {{.ca = pki.ca, .cert = pki.client_cert, .key = pki.server_key, .token = "t"},
         "does not match tls_cert_file"},
        {{.cert = pki.client_cert, .key = pki.client_key, .token = "t"}, "need tls_ca_file"},
        {{.server_name = "localhost", .token = "t"}, "need tls_ca_file"},
        {{.ca = pki.ca, .server_name = long_name, .token = "t"}, "tls_server_name"},
        {{.ca = pki.ca}, "token"}, /* without a certificate the token is required */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        errmsg[0] = '\0';
        CHECK_EQ_INT(open_tls(&c, 7000, &cases[i].o, errmsg), -TALLY_EINVAL);
        CHECK(c == NULL);
        if (strstr(errmsg, cases[i].says) == NULL) {
            fprintf(stderr, "  case %zu: errmsg \"%s\" lacks \"%s\"\n", i, errmsg, cases[i].says);
            CHECK(0);
        }
    }
    struct tls_opts good = {.ca = pki.ca, .cert = pki.client_cert, .key = pki.client_key};
    CHECK_EQ_INT(open_tls(&c, 7000, &good, errmsg), 0);
    tally_close(c);
}

int main(void)
{
    TEST_MAIN_BEGIN;
    TEST(config_init_writes_defaults);
    TEST(open_checks_the_configuration);
    TEST(key_hash_is_sha256_hex);
    TEST(hex_round_trips);
    TEST(request_ids_are_random);
    TEST(names_cover_every_value);
    TEST(bad_reserves_are_refused);
    TEST(limits_out_of_range_are_refused_before_sending);
    TEST(bad_other_calls_are_refused);
    TEST(reserve_to_closed_port_is_unavailable_by_the_deadline);
    TEST(fail_open_grants_with_a_flag);
    TEST(caller_request_id_is_kept);
    TEST(reads_and_status_time_out_too);
    TEST(async_reserve_calls_back_on_the_io_thread);
    TEST(close_ends_queued_calls);
    TEST(inflight_bound_refuses_async_and_times_out_blocking);
    TEST(many_threads_share_one_client);
    TEST(refused_token_ends_calls_with_eauth);
    TEST(out_of_order_answers_reach_their_callers);
    TEST(unanswered_reserve_is_voided_in_the_background);
    TEST(resubmitted_grant_is_not_voided);
    TEST(redirect_to_an_unconfigured_address_is_not_followed);
    TEST(redirect_to_a_configured_endpoint_is_followed);
    TEST(answer_to_another_request_fails_the_call);
    TEST(resubmitted_grant_is_not_voided_among_sequential_ids);
    TEST(tls_round_trip_is_verified_and_pipelined);
    TEST(tls_client_certificate_stands_for_the_token);
    TEST(tls_write_waits_for_a_node_that_does_not_read);
    TEST(tls_unknown_ca_is_unavailable_and_says_why);
    TEST(tls_wrong_server_name_is_unavailable_and_says_why);
    TEST(tls_to_a_plain_node_times_out_within_the_connect_timeout);
    TEST(tls_open_checks_its_files);
    TEST_MAIN_END;
}
