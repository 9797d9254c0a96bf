/*
 * client_test.c: libtally without a cluster.
 *
 * What can be shown without tallyd: configuration defaults and checks, argument
 * validation (nothing is queued for a bad call), key hashing (SHA-256 known vectors),
 * names, deadlines against a closed port (UNAVAILABLE within the deadline, fail-open
 * flagged, async callbacks, the in-flight bound), and, against a tiny in-process fake
 * node built on rpc/proto.h, the parts of the I/O thread that need a peer: a refused token
 * ends calls at once with EAUTH; answers that come back out of order reach the right
 * callers; a node that accepts but never answers makes a reserve UNAVAILABLE and the
 * client then sends a void of the same request id. Leader following and retries against
 * real nodes are integration tests.
 */
#include "test.h"

#include "client/tally.h"
#include "rpc/proto.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <sys/socket.h>
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

static struct tally *open_at(uint16_t port, int fail_open, uint32_t max_inflight)
{
    char endpoints[64];
    char errmsg[TALLY_ERRMSG_SIZE] = "";
    struct tally_config cfg;
    struct tally *c = NULL;
    tally_config_init(&cfg);
    snprintf(endpoints, sizeof(endpoints), "127.0.0.1:%u", port);
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
    for (int code = 1; code <= TALLY_ESTALE; code++) {
        CHECK(strcmp(tally_strerror(code), "unknown") != 0);
    }
    for (int code = TALLY_EUNAVAILABLE; code < TALLY_ECODE_MAX; code++) {
        CHECK(strcmp(tally_strerror(code), "unknown") != 0);
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
    uint64_t next;

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
    expect_refused(tally_account_get(c, "org", 0x8, 0, &accounts[0], &res), &res, TALLY_EINVAL);
    expect_refused(tally_account_list(c, NULL, 0, 0, 0, 0, accounts, &n, &next, &res), &res,
                   TALLY_EINVAL);
    expect_refused(
        tally_account_list(c, NULL, 0, TALLY_LIST_MAX + 1, 0, 0, accounts, &n, &next, &res), &res,
        TALLY_EINVAL);
    expect_refused(tally_journal_list(c, "org", 10, 5, 0, 1, 0, 0, entries, &n, &next, &res), &res,
                   TALLY_EINVAL);
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

/* ---- A tiny fake node (rpc/proto.h) for what needs a peer. ---- */

enum fake_mode {
    FAKE_EAUTH,   /* refuse HELLO */
    FAKE_SILENT,  /* accept HELLO, never answer anything else */
    FAKE_REVERSE, /* answer writes in batches of `batch`, last first */
};

struct fake {
    int listen_fd;
    uint16_t port;
    int mode;
    int batch;
    pthread_t thread;
    pthread_mutex_t mu;
    int stop;
    int hellos;
    int n_writes;
    uint8_t types[64];
    uint8_t ids[64][16];
};

static int fake_stopping(struct fake *f)
{
    pthread_mutex_lock(&f->mu);
    int stop = f->stop;
    pthread_mutex_unlock(&f->mu);
    return stop;
}

static void send_all(int fd, const struct rpc_buf *b)
{
    size_t off = 0;
    while (off < b->len) {
        ssize_t n = send(fd, b->data + off, b->len - off, MSG_NOSIGNAL);
        if (n <= 0) {
            return;
        }
        off += (size_t)n;
    }
}

/* Answer write `q` granted (even estimate) or denied (odd), echoing the estimate. */
static void fake_answer_write(int fd, const struct rpc_request *q)
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
    if (q->u.write.u.reserve.estimate_micros % 2 == 1) {
        x->status = LEDGER_DENIED;
        x->deny_reason = LEDGER_DENY_BUDGET;
        snprintf(x->account, sizeof(x->account), "team");
    }
    if (rpc_response_encode(&out, RPC_OP_WRITE, &resp) == 0) {
        send_all(fd, &out);
    }
    rpc_buf_free(&out);
}

static void fake_flush(int fd, struct rpc_request *held, int *n_held)
{
    for (int i = *n_held - 1; i >= 0; i--) {
        fake_answer_write(fd, &held[i]);
    }
    *n_held = 0;
}

/* Handle one request; returns -1 to close the connection. */
static int fake_request(struct fake *f, int fd, struct rpc_request *q, struct rpc_request *held,
                        int *n_held)
{
    struct rpc_buf out = {0};
    if (q->op == RPC_OP_HELLO) {
        pthread_mutex_lock(&f->mu);
        f->hellos++;
        pthread_mutex_unlock(&f->mu);
        if (f->mode == FAKE_EAUTH) {
            rpc_error_encode(&out, q->seq, RPC_EAUTH, "bad token", 0, "");
            send_all(fd, &out);
            rpc_buf_free(&out);
            return -1;
        }
        struct rpc_response resp;
        memset(&resp, 0, sizeof(resp));
        resp.seq = q->seq;
        resp.u.hello.role = RPC_ROLE_GATEWAY;
        resp.u.hello.node_id = 1;
        rpc_response_encode(&out, RPC_OP_HELLO, &resp);
        send_all(fd, &out);
        rpc_buf_free(&out);
        return 0;
    }
    if (q->op == RPC_OP_WRITE) {
        pthread_mutex_lock(&f->mu);
        if (f->n_writes < 64) {
            f->types[f->n_writes] = q->u.write.type;
            memcpy(f->ids[f->n_writes], q->u.write.request_id, 16);
            f->n_writes++;
        }
        pthread_mutex_unlock(&f->mu);
        if (f->mode == FAKE_REVERSE) {
            held[(*n_held)++] = *q;
            if (*n_held == f->batch) {
                fake_flush(fd, held, n_held);
            }
        }
    }
    return 0;
}

static void fake_serve(struct fake *f, int fd)
{
    struct rpc_framer fr;
    static struct rpc_request held[64];
    int n_held = 0;
    rpc_framer_init(&fr, RPC_FRAME_MAX);
    while (!fake_stopping(f)) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int rc = poll(&p, 1, 50);
        if (rc == 0) {
            continue;
        }
        uint8_t chunk[4096];
        ssize_t n = recv(fd, chunk, sizeof(chunk), 0);
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
                fake_request(f, fd, &q, held, &n_held) != 0) {
                close_it = 1;
            }
        }
        if (close_it) {
            break;
        }
    }
    rpc_framer_free(&fr);
    close(fd);
}

static void *fake_main(void *arg)
{
    struct fake *f = arg;
    while (!fake_stopping(f)) {
        struct pollfd p = {.fd = f->listen_fd, .events = POLLIN};
        if (poll(&p, 1, 50) <= 0) {
            continue;
        }
        int fd = accept(f->listen_fd, NULL, NULL);
        if (fd >= 0) {
            fake_serve(f, fd);
        }
    }
    return NULL;
}

static void fake_start(struct fake *f, int mode, int batch)
{
    memset(f, 0, sizeof(*f));
    f->mode = mode;
    f->batch = batch;
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

static void fake_stop(struct fake *f)
{
    pthread_mutex_lock(&f->mu);
    f->stop = 1;
    pthread_mutex_unlock(&f->mu);
    pthread_join(f->thread, NULL);
    close(f->listen_fd);
    pthread_mutex_destroy(&f->mu);
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
    int saw_void = 0;
    for (int i = 0; i < 100 && !saw_void; i++) {
        usleep(10000);
        pthread_mutex_lock(&f.mu);
        for (int w = 0; w < f.n_writes; w++) {
            if (f.types[w] == LEDGER_CMD_VOID && memcmp(f.ids[w], res.request_id, 16) == 0) {
                saw_void = 1;
            }
        }
        pthread_mutex_unlock(&f.mu);
    }
    CHECK(saw_void);
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
    TEST_MAIN_END;
}
