/*
 * client.c: libtally's front door: configuration and its validation, tally_open(),
 * tally_close(), tally_stats(), the names and helpers of the public API, and submit(),
 * the one place where a caller's thread hands a call to the I/O thread.
 *
 * One idea shapes the library: a single I/O thread owns everything that touches the
 * network (io.c drives it, conn.c is its connection), so none of that needs a lock.
 * Callers of any thread only build a `struct call` (calls.c: validated and fully copied),
 * append it to a submit list under the client's mutex and wake the I/O thread through an
 * eventfd. Blocking calls are the asynchronous ones plus a condition variable. The files
 * share one header, client_internal.h, whose names start with client__.
 */
#define _GNU_SOURCE
#include "client/tally.h"
#include "wire/wire.h"

#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/sha.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include "client/client_internal.h"

/* The public header mirrors the ledger's and the protocol's numbers; keep them equal. */
_Static_assert(TALLY_NAME_MAX == LEDGER_NAME_MAX, "name bound");
_Static_assert(TALLY_MODEL_MAX == LEDGER_MODEL_MAX, "model bound");
_Static_assert(TALLY_ACTOR_MAX == LEDGER_ACTOR_MAX, "actor bound");
_Static_assert(TALLY_METADATA_MAX == LEDGER_METADATA_MAX, "metadata bound");
_Static_assert(TALLY_KEY_HASH_SIZE == LEDGER_KEY_HASH_SIZE, "key hash size");
_Static_assert(TALLY_REQUEST_ID_SIZE == LEDGER_REQUEST_ID_SIZE, "request id size");
_Static_assert(TALLY_TOKEN_MAX == RPC_TOKEN_MAX, "token bound");
_Static_assert(TALLY_ADDRESS_MAX == RPC_ADDRESS_MAX, "address bound");
_Static_assert(TALLY_LIST_MAX == RPC_LIST_MAX, "list bound");
_Static_assert(TALLY_MEMBERS_MAX == RPC_MEMBERS_MAX, "members bound");
_Static_assert(TALLY_FRAME_DEFAULT == RPC_FRAME_MAX, "frame default");
_Static_assert(TALLY_FRAME_LIMIT == RPC_FRAME_LIMIT, "frame limit");
_Static_assert(TALLY_AMOUNT_MAX == LEDGER_AMOUNT_MAX && TALLY_TOKENS_MAX == LEDGER_TOKENS_MAX &&
                   TALLY_RATE_MAX == LEDGER_RATE_MAX && TALLY_PARALLEL_MAX == LEDGER_PARALLEL_MAX,
               "amount and count bounds");
_Static_assert(TALLY_TTL_MAX_MS == LEDGER_TTL_MAX_MS && TALLY_PERIOD_MIN_MS == LEDGER_PERIOD_MIN_MS &&
                   TALLY_PERIOD_MAX_MS == LEDGER_PERIOD_MAX_MS &&
                   TALLY_RETENTION_MIN_MS == LEDGER_RETENTION_MIN_MS &&
                   TALLY_RETENTION_MAX_MS == LEDGER_RETENTION_MAX_MS &&
                   TALLY_TIME_MAX_MS == LEDGER_TIME_MAX_MS,
               "time bounds");
#define SAME(a, b) ((int)(a) == (int)(b))
/* libtally's codes 1..16 are the ledger's, code for code (LEDGER_ERRORS in wire/types.h). */
#define SAME_AS_LEDGER(code, number, name, message)                                          \
    _Static_assert(SAME(TALLY_##code, LEDGER_##code), "TALLY_" #code " is LEDGER_" #code);
LEDGER_ERRORS(SAME_AS_LEDGER)
#undef SAME_AS_LEDGER
_Static_assert(SAME(TALLY_EFORBIDDEN + 1, LEDGER_ECODE_MAX), "ledger error codes");
_Static_assert(SAME(TALLY_CURSOR_MAX, RPC_CURSOR_MAX), "list cursors");
_Static_assert(SAME(TALLY_DENY_MODEL_TPM, LEDGER_DENY_MODEL_TPM) &&
                   SAME(TALLY_DENY_MAX, LEDGER_DENY_MAX),
               "deny reasons");
_Static_assert(SAME(TALLY_RESULT_REPLAYED, LEDGER_RESULT_REPLAYED) &&
                   SAME(TALLY_RESULT_SOFT_BUDGET, LEDGER_RESULT_SOFT_BUDGET) &&
                   SAME(TALLY_RESULT_LATE, LEDGER_RESULT_LATE),
               "result flags");
_Static_assert(SAME(TALLY_LIM_ALL, LEDGER_LIM_ALL) &&
                   SAME(TALLY_LIM_EXPIRY_POLICY, LEDGER_LIM_EXPIRY_POLICY),
               "limit bits");
_Static_assert(SAME(TALLY_PERIOD_MAX, LEDGER_PERIOD_MAX), "periods");
_Static_assert(SAME(TALLY_CMD_CONFIG_SET, LEDGER_CMD_CONFIG_SET), "command types");
_Static_assert(SAME(TALLY_J_ADMIN, LEDGER_J_ADMIN), "journal kinds");
_Static_assert(SAME(TALLY_RESV_LATE_SETTLED, LEDGER_RESV_LATE_SETTLED), "reservation states");

/* ---- Small helpers. ---- */

bool client__name_valid(const char *s, size_t max)
{
    if (s == NULL || s[0] == '\0' || !client__text_fits(s, max)) {
        return false;
    }
    for (const char *p = s; *p != '\0'; p++) {
        char ch = *p;
        bool ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
                  (ch >= '0' && ch <= '9') || ch == '.' || ch == '_' || ch == ':' || ch == '/' ||
                  ch == '@' || ch == '-';
        if (!ok) {
            return false;
        }
    }
    return true;
}

int client__random_bytes(void *buf, size_t n)
{
    uint8_t *p = buf;
    size_t got = 0;
    for (int tries = 0; got < n && tries < 100; tries++) {
        ssize_t r = getrandom(p + got, n - got, 0);
        if (r < 0) {
            if (errno == EINTR) {
                continue;
            }
            return -1;
        }
        got += (size_t)r;
    }
    return got == n ? 0 : -1;
}

/* ---- Names. ---- */

const char *tally_outcome_name(int outcome)
{
    switch (outcome) {
    case TALLY_GRANTED:
        return "granted";
    case TALLY_DENIED:
        return "denied";
    case TALLY_UNAVAILABLE:
        return "unavailable";
    case TALLY_ERROR:
        return "error";
    default:
        return "unknown";
    }
}

const char *tally_deny_reason_name(int reason)
{
    return ledger_deny_reason_name(reason); /* the same numbers, asserted above */
}

const char *tally_strerror(int code)
{
    /* The codes that come from the server or the client; the ledger's own are named by
     * the ledger's table. */
    static const char *const names[TALLY_ECODE_MAX] = {
        [TALLY_EUNAVAILABLE] = "unavailable",
        [TALLY_EAUTH] = "unauthenticated",
        [TALLY_EBADREQ] = "bad_request",
        [TALLY_EINTERNAL] = "internal",
        [TALLY_EPROTO] = "protocol_error",
        [TALLY_EBUSY] = "busy",
        [TALLY_ECLOSED] = "closed",
    };
    if (code < 0) {
        code = -code;
    }
    if (code < LEDGER_ECODE_MAX) {
        return ledger_error_name(code);
    }
    return code < TALLY_ECODE_MAX && names[code] != NULL ? names[code] : "unknown";
}

const char *tally_period_name(int period_kind)
{
    static const char *const names[TALLY_PERIOD_MAX] = {"none", "fixed", "day", "week", "month"};
    return period_kind >= 0 && period_kind < TALLY_PERIOD_MAX ? names[period_kind] : "unknown";
}

const char *tally_resv_state_name(int state)
{
    static const char *const names[] = {"open", "settled", "voided", "expired", "late_settled"};
    return state >= 0 && state < (int)(sizeof(names) / sizeof(names[0])) ? names[state] : "unknown";
}

const char *tally_journal_kind_name(int kind)
{
    static const char *const names[] = {
        NULL,         "charge",      "release", "expire_charge", "expire_release",
        "correction", "soft_budget", "admin"};
    return kind > 0 && kind < (int)(sizeof(names) / sizeof(names[0])) ? names[kind] : "unknown";
}

const char *tally_cmd_type_name(int cmd_type)
{
    static const char *const names[] = {
        NULL,      "account_create", "account_update", "key_add", "key_revoke", "model_limit_set",
        "reserve", "settle",         "void",           "extend",  "config_set"};
    return cmd_type > 0 && cmd_type < (int)(sizeof(names) / sizeof(names[0])) ? names[cmd_type]
                                                                              : "unknown";
}

const char *tally_raft_state_name(int state)
{
    switch (state) {
    case TALLY_RAFT_FOLLOWER:
        return "follower";
    case TALLY_RAFT_CANDIDATE:
        return "candidate";
    case TALLY_RAFT_LEADER:
        return "leader";
    default:
        return "unknown";
    }
}

const char *tally_member_role_name(int role)
{
    switch (role) {
    case TALLY_MEMBER_STANDBY:
        return "standby";
    case TALLY_MEMBER_VOTER:
        return "voter";
    case TALLY_MEMBER_SPARE:
        return "spare";
    default:
        return "unknown";
    }
}

/* ---- Helpers of the public API. ---- */

int tally_key_hash(const char *secret, uint8_t hash[TALLY_KEY_HASH_SIZE])
{
    if (secret == NULL || secret[0] == '\0' || hash == NULL) {
        return -TALLY_EINVAL;
    }
    SHA256((const unsigned char *)secret, strlen(secret), hash);
    return 0;
}

int tally_request_id_new(uint8_t id[TALLY_REQUEST_ID_SIZE])
{
    if (id == NULL) {
        return -TALLY_EINVAL;
    }
    return client__random_bytes(id, TALLY_REQUEST_ID_SIZE) == 0 ? 0 : -TALLY_EINTERNAL;
}

void tally_hex(const uint8_t *bytes, size_t n, char *out)
{
    rpc_hex(bytes, n, out);
}

int tally_unhex(const char *hex, uint8_t *out, size_t n)
{
    if (hex == NULL || out == NULL) {
        return -TALLY_EINVAL;
    }
    return rpc_unhex(hex, out, n) == 0 ? 0 : -TALLY_EINVAL;
}

void tally_config_init(struct tally_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->deadline_ms = DEFAULT_DEADLINE_MS;
    cfg->connect_timeout_ms = DEFAULT_CONNECT_TIMEOUT_MS;
    cfg->fail_open = 0;
    cfg->max_frame_bytes = RPC_FRAME_MAX;
    cfg->max_inflight = DEFAULT_MAX_INFLIGHT;
    cfg->void_deadline_ms = DEFAULT_VOID_DEADLINE_MS;
    cfg->backoff_min_ms = DEFAULT_BACKOFF_MIN_MS;
    cfg->backoff_max_ms = DEFAULT_BACKOFF_MAX_MS;
}

/* What a blocking call returns for a finished result. */
static int result_code(const struct tally_result *r)
{
    if (r->outcome == TALLY_GRANTED || r->outcome == TALLY_DENIED) {
        return 0;
    }
    assert(r->error > 0);
    return -r->error;
}

/* ---- Opening and closing. ---- */

static void set_errmsg(char *errmsg, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void set_errmsg(char *errmsg, const char *fmt, ...)
{
    if (errmsg == NULL) {
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(errmsg, TALLY_ERRMSG_SIZE, fmt, ap);
    va_end(ap);
}

static bool duration_ok(int64_t ms)
{
    return ms >= 0 && ms <= DURATION_MAX_MS;
}

/* Check `cfg` and copy it into `c` with defaults applied. Returns 0 or -TALLY_EINVAL. */
static int config_apply(struct tally *c, const struct tally_config *cfg, char *errmsg)
{
    char why[TALLY_ERRMSG_SIZE];
    if (cfg == NULL || client__is_empty(cfg->endpoints)) {
        set_errmsg(errmsg, "no endpoints configured");
        return -TALLY_EINVAL;
    }
    /* A client certificate may stand for the token: NULL is then "". */
    bool token_optional = !client__is_empty(cfg->tls_cert_file);
    if ((cfg->token == NULL && !token_optional) ||
        (cfg->token != NULL && !client__text_fits(cfg->token, TALLY_TOKEN_MAX))) {
        set_errmsg(errmsg, "the token is missing or longer than %d bytes", TALLY_TOKEN_MAX);
        return -TALLY_EINVAL;
    }
    int n = client__endpoints_parse(cfg->endpoints, c->endpoints, why, sizeof(why));
    if (n < 0) {
        set_errmsg(errmsg, "%s", why);
        return -TALLY_EINVAL;
    }
    if (!duration_ok(cfg->deadline_ms) || !duration_ok(cfg->connect_timeout_ms) ||
        !duration_ok(cfg->void_deadline_ms) || !duration_ok(cfg->backoff_min_ms) ||
        !duration_ok(cfg->backoff_max_ms)) {
        set_errmsg(errmsg, "a duration is negative or longer than a day");
        return -TALLY_EINVAL;
    }
    if (cfg->max_frame_bytes != 0 &&
        (cfg->max_frame_bytes < 4096 || cfg->max_frame_bytes > RPC_FRAME_LIMIT)) {
        set_errmsg(errmsg, "max_frame_bytes must be 4096 .. %u", RPC_FRAME_LIMIT);
        return -TALLY_EINVAL;
    }
    if (cfg->max_inflight > MAX_INFLIGHT_LIMIT) {
        set_errmsg(errmsg, "max_inflight must be at most %u", MAX_INFLIGHT_LIMIT);
        return -TALLY_EINVAL;
    }
    c->n_endpoints = (uint32_t)n;
    client__copy_text(c->token, sizeof(c->token), cfg->token);
    c->deadline_ms = cfg->deadline_ms != 0 ? cfg->deadline_ms : DEFAULT_DEADLINE_MS;
    c->connect_timeout_ms =
        cfg->connect_timeout_ms != 0 ? cfg->connect_timeout_ms : DEFAULT_CONNECT_TIMEOUT_MS;
    c->void_deadline_ms =
        cfg->void_deadline_ms != 0 ? cfg->void_deadline_ms : DEFAULT_VOID_DEADLINE_MS;
    c->backoff_min_ms = cfg->backoff_min_ms != 0 ? cfg->backoff_min_ms : DEFAULT_BACKOFF_MIN_MS;
    c->backoff_max_ms = cfg->backoff_max_ms != 0 ? cfg->backoff_max_ms : DEFAULT_BACKOFF_MAX_MS;
    if (c->backoff_max_ms < c->backoff_min_ms) {
        c->backoff_max_ms = c->backoff_min_ms;
    }
    /* A connection that answers nothing for this long is dead (black-holed node). */
    c->silence_ms = 2 * c->connect_timeout_ms;
    c->fail_open = cfg->fail_open != 0;
    c->max_frame_bytes = cfg->max_frame_bytes != 0 ? cfg->max_frame_bytes : RPC_FRAME_MAX;
    c->max_inflight = cfg->max_inflight != 0 ? cfg->max_inflight : DEFAULT_MAX_INFLIGHT;
    return 0;
}

/* The password callback of a key: none is asked for (a library must not prompt). */
static int tls_no_password(char *buf, int size, int rwflag, void *userdata)
{
    (void)buf;
    (void)size;
    (void)rwflag;
    (void)userdata;
    return 0;
}

/* Whether `path` (configuration field `what`) can be opened for reading; errmsg if not. */
static bool tls_file_readable(const char *what, const char *path, char *errmsg)
{
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        set_errmsg(errmsg, "%s %s: %s", what, path, strerror(errno));
        return false;
    }
    fclose(f);
    return true;
}

/*
 * Check the TLS fields of `cfg` and build the client's SSL_CTX from them (c->tls_ctx
 * stays NULL without tls_ca_file): verify the server always, TLS 1.2 or later, the client
 * certificate and key if given. Returns 0, -TALLY_EINVAL with OpenSSL's reason in errmsg,
 * or -TALLY_ENOMEM.
 */
static int tls_configure(struct tally *c, const struct tally_config *cfg, char *errmsg)
{
    bool has_cert = !client__is_empty(cfg->tls_cert_file);
    bool has_key = !client__is_empty(cfg->tls_key_file);
    char reason[128];
    if (client__is_empty(cfg->tls_ca_file)) {
        if (has_cert || has_key || !client__is_empty(cfg->tls_server_name)) {
            set_errmsg(errmsg, "tls_cert_file, tls_key_file and tls_server_name need tls_ca_file "
                               "(TLS is off without it)");
            return -TALLY_EINVAL;
        }
        return 0;
    }
    if (has_cert != has_key) {
        set_errmsg(errmsg, "tls_cert_file and tls_key_file go together: give both or neither");
        return -TALLY_EINVAL;
    }
    if (!client__is_empty(cfg->tls_server_name) &&
        !client__text_fits(cfg->tls_server_name, TLS_SERVER_NAME_MAX)) {
        set_errmsg(errmsg, "tls_server_name is longer than %d bytes", TLS_SERVER_NAME_MAX);
        return -TALLY_EINVAL;
    }
    client__copy_text(c->tls_server_name, sizeof(c->tls_server_name), cfg->tls_server_name);
    if (client__tls_bio_init() != 0) {
        set_errmsg(errmsg, "tls: cannot make the socket BIO method");
        return -TALLY_ENOMEM;
    }
    if (!tls_file_readable("tls_ca_file", cfg->tls_ca_file, errmsg) ||
        (has_cert && !tls_file_readable("tls_cert_file", cfg->tls_cert_file, errmsg)) ||
        (has_key && !tls_file_readable("tls_key_file", cfg->tls_key_file, errmsg))) {
        return -TALLY_EINVAL;
    }
    ERR_clear_error();
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (ctx == NULL) {
        client__tls_reason(reason, sizeof(reason));
        set_errmsg(errmsg, "tls: cannot make a context: %s", reason);
        return -TALLY_ENOMEM;
    }
    SSL_CTX_set_default_passwd_cb(ctx, tls_no_password);
    const char *what = NULL, *file = "";
    if (SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) != 1) {
        what = "tls: cannot require TLS 1.2";
    } else if (SSL_CTX_load_verify_locations(ctx, cfg->tls_ca_file, NULL) != 1) {
        what = "tls_ca_file";
        file = cfg->tls_ca_file;
    } else if (has_cert && SSL_CTX_use_certificate_chain_file(ctx, cfg->tls_cert_file) != 1) {
        what = "tls_cert_file";
        file = cfg->tls_cert_file;
    } else if (has_key &&
               SSL_CTX_use_PrivateKey_file(ctx, cfg->tls_key_file, SSL_FILETYPE_PEM) != 1) {
        /* OpenSSL 3 finds a key of another certificate here already. */
        unsigned long e = ERR_peek_error();
        bool mismatch =
            ERR_GET_LIB(e) == ERR_LIB_X509 && (ERR_GET_REASON(e) == X509_R_KEY_VALUES_MISMATCH ||
                                               ERR_GET_REASON(e) == X509_R_KEY_TYPE_MISMATCH);
        what = mismatch ? "tls_key_file does not match tls_cert_file:" : "tls_key_file";
        file = cfg->tls_key_file;
    } else if (has_key && SSL_CTX_check_private_key(ctx) != 1) {
        what = "tls_key_file does not match tls_cert_file:";
        file = cfg->tls_key_file;
    }
    if (what != NULL) {
        client__tls_reason(reason, sizeof(reason));
        set_errmsg(errmsg, "%s %s: %s", what, file, reason);
        SSL_CTX_free(ctx);
        return -TALLY_EINVAL;
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    c->tls_ctx = ctx;
    return 0;
}

/* Free what tally_open() allocated (the thread is not running). */
static void client_free(struct tally *c)
{
    client__conn_free(&c->conn);
    SSL_CTX_free(c->tls_ctx);
    if (c->wake_fd >= 0) {
        close(c->wake_fd);
    }
    free(c->heap);
    free(c->table);
    free(c->granted);
    pthread_cond_destroy(&c->room_cond);
    pthread_mutex_destroy(&c->mu);
    free(c);
}

/* Allocate the heap and the sent table for max_inflight callers' calls plus as many
 * background voids. */
static int alloc_tables(struct tally *c)
{
    c->heap_cap = 2 * (size_t)c->max_inflight;
    size_t buckets = 64;
    while (buckets < c->heap_cap) {
        buckets *= 2;
    }
    c->table_mask = buckets - 1;
    c->heap = calloc(c->heap_cap, sizeof(*c->heap));
    c->table = calloc(buckets, sizeof(*c->table));
    c->granted = calloc(GRANTED_SETS, sizeof(*c->granted));
    return c->heap != NULL && c->table != NULL && c->granted != NULL ? 0 : -1;
}

static int init_sync(struct tally *c)
{
    pthread_condattr_t attr;
    if (pthread_mutex_init(&c->mu, NULL) != 0) {
        return -1;
    }
    if (pthread_condattr_init(&attr) != 0) {
        pthread_mutex_destroy(&c->mu);
        return -1;
    }
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    int rc = pthread_cond_init(&c->room_cond, &attr);
    pthread_condattr_destroy(&attr);
    if (rc != 0) {
        pthread_mutex_destroy(&c->mu);
        return -1;
    }
    return 0;
}

int tally_open(struct tally **out, const struct tally_config *cfg, char *errmsg)
{
    if (out == NULL) {
        set_errmsg(errmsg, "out is NULL");
        return -TALLY_EINVAL;
    }
    *out = NULL;
    struct tally *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        set_errmsg(errmsg, "out of memory");
        return -TALLY_ENOMEM;
    }
    int rc = config_apply(c, cfg, errmsg);
    if (rc == 0) {
        rc = tls_configure(c, cfg, errmsg);
    }
    if (rc != 0) {
        free(c);
        return rc;
    }
    if (init_sync(c) != 0) {
        SSL_CTX_free(c->tls_ctx);
        free(c);
        set_errmsg(errmsg, "cannot create a mutex");
        return -TALLY_EINTERNAL;
    }
    client__io_init(c);
    c->wake_fd = -1;
    c->next_seq = 1;
    if (client__random_bytes(&c->rng, sizeof(c->rng)) != 0 || c->rng == 0) {
        c->rng = (uint64_t)client__mono_ms() | 1;
    }
    if (client__random_bytes(&c->ep_idx, sizeof(c->ep_idx)) != 0) {
        c->ep_idx = 0;
    }
    c->ep_idx %= c->n_endpoints; /* spread clients over the members */
    if (alloc_tables(c) != 0) {
        client_free(c);
        set_errmsg(errmsg, "out of memory");
        return -TALLY_ENOMEM;
    }
    c->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (c->wake_fd < 0) {
        set_errmsg(errmsg, "eventfd: %s", strerror(errno));
        client_free(c);
        return -TALLY_EINTERNAL;
    }
    rc = pthread_create(&c->thread, NULL, client__io_main, c);
    if (rc != 0) {
        set_errmsg(errmsg, "cannot start the I/O thread: %s", strerror(rc));
        client_free(c);
        return -TALLY_EINTERNAL;
    }
    c->thread_started = true;
    *out = c;
    return 0;
}

static void wake(struct tally *c)
{
    uint64_t one = 1;
    if (write(c->wake_fd, &one, sizeof(one)) < 0) {
        /* EAGAIN: the counter is already non-zero, the thread will wake anyway */
    }
}

void tally_close(struct tally *c)
{
    if (c == NULL) {
        return;
    }
    assert(!pthread_equal(pthread_self(), c->thread));
    pthread_mutex_lock(&c->mu);
    c->closing = true;
    pthread_cond_broadcast(&c->room_cond);
    pthread_mutex_unlock(&c->mu);
    wake(c);
    if (c->thread_started) {
        pthread_join(c->thread, NULL);
    }
    /* Calls submitted after the thread's last look (a contract violation) still end. */
    struct tally_result r;
    while (c->submit_head != NULL) {
        struct call *call = c->submit_head;
        c->submit_head = call->next;
        client__result_init(&r, call);
        client__result_fail(&r, TALLY_UNAVAILABLE, TALLY_ECLOSED, "the client is closing");
        if (call->waiter != NULL) {
            *call->res = r;
            call->waiter->done = true;
            pthread_cond_signal(&call->waiter->cond);
        } else if (call->cb != NULL) {
            call->cb(call->cb_arg, &r);
        }
        free(call);
    }
    client_free(c);
}

void tally_stats(struct tally *c, struct tally_stats *out)
{
    memset(out, 0, sizeof(*out));
    uint64_t *dst = (uint64_t *)out;
    uint64_t *src = (uint64_t *)&c->stats;
    size_t n = offsetof(struct tally_stats, endpoint) / sizeof(uint64_t);
    for (size_t i = 0; i < n; i++) {
        dst[i] = __atomic_load_n(&src[i], __ATOMIC_RELAXED);
    }
    pthread_mutex_lock(&c->mu);
    out->inflight = c->n_calls;
    client__copy_text(out->endpoint, sizeof(out->endpoint), c->endpoint_now);
    pthread_mutex_unlock(&c->mu);
}

/* ---- Submitting calls (any thread). ---- */

struct call *client__call_new(struct tally *c, uint8_t op, int64_t deadline_ms)
{
    struct call *call = calloc(1, sizeof(*call));
    if (call == NULL) {
        return NULL;
    }
    call->heap_idx = SIZE_MAX;
    call->req.op = op;
    call->deadline_at_ms = client__mono_ms() + (deadline_ms != 0 ? deadline_ms : c->deadline_ms);
    return call;
}

int client__check_call(struct tally *c, int64_t deadline_ms, bool blocking, const char **msg)
{
    if (c == NULL) {
        *msg = "the client is NULL";
        return TALLY_EINVAL;
    }
    if (!duration_ok(deadline_ms)) {
        *msg = "deadline_ms must be 0 .. one day";
        return TALLY_EINVAL;
    }
    if (blocking && c->thread_started && pthread_equal(pthread_self(), c->thread)) {
        *msg = "a blocking call from a callback would deadlock the I/O thread";
        return TALLY_EINVAL;
    }
    return 0;
}

/* Absolute CLOCK_MONOTONIC time of `at_ms`. */
static struct timespec timespec_at(int64_t at_ms)
{
    struct timespec ts = {.tv_sec = at_ms / 1000, .tv_nsec = (at_ms % 1000) * 1000000};
    return ts;
}

/*
 * Hand `call` (owned by the caller until then) to the I/O thread. When the client is full,
 * a blocking caller (`wait`) waits for room until the call's deadline; an asynchronous one
 * gets TALLY_EBUSY at once. Returns 0 (ownership transferred) or a positive error code (the
 * caller still owns the call).
 */
static int submit(struct tally *c, struct call *call, bool wait)
{
    pthread_mutex_lock(&c->mu);
    while (!c->closing && c->n_calls >= c->max_inflight) {
        if (!wait) {
            pthread_mutex_unlock(&c->mu);
            client__stat_add(&c->stats.busy, 1);
            return TALLY_EBUSY;
        }
        struct timespec ts = timespec_at(call->deadline_at_ms);
        c->n_room_waiters++;
        int rc = pthread_cond_timedwait(&c->room_cond, &c->mu, &ts);
        c->n_room_waiters--;
        if (rc == ETIMEDOUT && c->n_calls >= c->max_inflight) {
            pthread_mutex_unlock(&c->mu);
            client__stat_add(&c->stats.busy, 1);
            return TALLY_EBUSY;
        }
    }
    if (c->closing) {
        pthread_mutex_unlock(&c->mu);
        return TALLY_ECLOSED;
    }
    c->n_calls++;
    call->where = WHERE_PENDING;
    call->next = NULL;
    if (c->submit_tail != NULL) {
        c->submit_tail->next = call;
    } else {
        c->submit_head = call;
    }
    c->submit_tail = call;
    bool need_wake = !c->wake_pending;
    c->wake_pending = true;
    pthread_mutex_unlock(&c->mu);
    client__stat_add(&c->stats.calls, 1);
    if (need_wake) {
        wake(c);
    }
    return 0;
}

/* A submission refused for lack of room or because the client closes, as a result. */
static void refused_result(struct tally *c, const struct call *call, int code,
                           struct tally_result *r)
{
    client__result_init(r, call);
    if (code == TALLY_EBUSY) {
        client__result_fail(r, TALLY_UNAVAILABLE, TALLY_EBUSY,
                            "more than %u requests in flight in this client", c->max_inflight);
        client__stat_add(&c->stats.unavailable, 1);
        if (call->kind == CALL_RESERVE && c->fail_open) {
            r->outcome = TALLY_GRANTED;
            r->failed_open = 1;
            client__stat_add(&c->stats.failed_open, 1);
        }
    } else {
        client__result_fail(r, TALLY_UNAVAILABLE, code, "the client is closing");
    }
}

/*
 * Run `call` (owned; consumed) and wait for its answer in `res` (required). Returns what
 * the blocking API returns for that answer.
 */
static int run_blocking(struct tally *c, struct call *call, struct tally_result *res)
{
    struct waiter w;
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    int rc = pthread_cond_init(&w.cond, &attr);
    pthread_condattr_destroy(&attr);
    if (rc != 0) {
        free(call);
        return client__fail_early(res, TALLY_EINTERNAL, "cannot create a condition variable");
    }
    w.done = false;
    call->waiter = &w;
    call->res = res;
    rc = submit(c, call, true);
    if (rc != 0) {
        refused_result(c, call, rc, res);
        free(call);
        pthread_cond_destroy(&w.cond);
        return result_code(res);
    }
    pthread_mutex_lock(&c->mu);
    while (!w.done) {
        /* No time-out here: the I/O thread ends every call by its deadline. */
        pthread_cond_wait(&w.cond, &c->mu);
    }
    pthread_mutex_unlock(&c->mu);
    pthread_cond_destroy(&w.cond);
    return result_code(res);
}

/* Run `call` asynchronously: 0 if queued (cb will run), else -code (call freed). */
static int run_async(struct tally *c, struct call *call, tally_cb cb, void *arg)
{
    call->cb = cb;
    call->cb_arg = arg;
    int rc = submit(c, call, false);
    if (rc != 0) {
        free(call);
        return -rc;
    }
    return 0;
}

int client__run(struct tally *c, struct call *call, struct tally_result *res, tally_cb cb,
                void *arg)
{
    if (cb != NULL) {
        return run_async(c, call, cb, arg);
    }
    struct tally_result local;
    return run_blocking(c, call, res != NULL ? res : &local);
}
