/*
 * http.c: the node's HTTP endpoint (/healthz, /readyz, /metrics) on libmicrohttpd.
 *
 * The loop thread must never wait on an HTTP client, and the HTTP thread must never
 * read loop state. So the two share exactly one thing: a copy of `struct rpc_metrics`
 * behind a mutex. rpc_http_publish() overwrites it (a memcpy under the lock); each
 * request copies it out under the same lock and does all its work (deciding
 * readiness, rendering, allocating) on its own copy with the lock released.
 *
 * libmicrohttpd does all HTTP parsing, timeouts and the overall connection limit, in one
 * internal polling thread using epoll/poll (MHD_USE_AUTO), never select(): the node has
 * many client sockets, and select() cannot watch a descriptor numbered FD_SETSIZE or
 * more. So that one address cannot take every connection (and /readyz with them), this
 * file counts the connections of each address in that thread (accept policy and
 * connection notifications) and refuses more than HTTP_PER_ADDRESS_LIMIT; a connection
 * gets HTTP_HEADER_TIMEOUT_S of silence to finish its request headers, the longer
 * HTTP_TIMEOUT_S once a request has been read.
 * It binds only the IPv4 address it is given. Its log lines are captured while the
 * daemon starts (to explain a failure in errmsg) and go to stderr afterwards.
 */
#include "rpc/metrics.h"

#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/socket.h>

#define HTTP_CONNECTION_LIMIT 64u /* concurrent scrapes and probes */
#define HTTP_PER_ADDRESS_LIMIT 8u /* of them from one IPv4 address */
#define HTTP_HEADER_TIMEOUT_S 5u  /* silence allowed before the request headers are complete */
#define HTTP_TIMEOUT_S 10u        /* an idle or slow connection is closed after this */
#define HTTP_HOST_MAX 64          /* bytes of the host part of "host:port" */
#define HTTP_LOG_MAX 256          /* bytes of the captured start-up message */

struct rpc_http {
    struct MHD_Daemon *daemon;
    int port; /* bound port, fixed once started */
    pthread_mutex_t mu;
    /* Under mu. */
    bool published;
    int64_t published_ms; /* CLOCK_MONOTONIC of the last publish */
    struct rpc_metrics metrics;
    bool starting;                /* capture MHD's messages into start_log */
    char start_log[HTTP_LOG_MAX]; /* first message MHD logged while starting; "" none */
    /* MHD's thread only (accept policy, notifications, requests): no lock. */
    struct http_addr {
        uint32_t addr; /* network byte order */
        unsigned n;    /* open connections; 0: a free slot */
    } addrs[HTTP_CONNECTION_LIMIT];
    uint64_t refused_per_address;
    uint64_t header_timeouts;
};

/* One connection's state (MHD's socket context): its address and when it started. */
struct http_conn {
    uint32_t addr;
    int64_t started_ms;
    bool headers_seen; /* a request's headers arrived */
};

/* ---- Address parsing. ---- */

/*
 * Parse "a.b.c.d:port" (port 0..65535; 0 asks the kernel for a free one) into *sa.
 * Returns 0, or -1 with the reason in why (why_size bytes).
 */
static int parse_address(const char *address, struct sockaddr_in *sa, char *why, size_t why_size)
{
    const char *colon = strrchr(address, ':');
    if (colon == NULL) {
        snprintf(why, why_size, "expected host:port");
        return -1;
    }
    size_t host_len = (size_t)(colon - address);
    char host[HTTP_HOST_MAX];
    if (host_len == 0 || host_len >= sizeof(host)) {
        snprintf(why, why_size, "bad host");
        return -1;
    }
    memcpy(host, address, host_len);
    host[host_len] = '\0';
    memset(sa, 0, sizeof(*sa));
    sa->sin_family = AF_INET;
    if (inet_pton(AF_INET, host, &sa->sin_addr) != 1) {
        snprintf(why, why_size, "host is not an IPv4 address");
        return -1;
    }
    const char *p = colon + 1;
    unsigned long port = 0;
    if (*p == '\0') {
        snprintf(why, why_size, "missing port");
        return -1;
    }
    /* Digits only, checked one by one: strtoul would accept signs and spaces. Checking
     * the range at every digit also keeps `port` far from overflow. */
    for (; *p != '\0'; p++) {
        if (*p < '0' || *p > '9') {
            snprintf(why, why_size, "bad port");
            return -1;
        }
        port = port * 10 + (unsigned long)(*p - '0');
        if (port > 65535) {
            snprintf(why, why_size, "port out of range");
            return -1;
        }
    }
    sa->sin_port = htons((uint16_t)port);
    return 0;
}

/* ---- libmicrohttpd callbacks. ---- */

/*
 * MHD's logger. While the daemon starts, keep the first message for errmsg (it names
 * the failed syscall and errno); later, print to stderr. Called from the starting
 * thread or from MHD's thread, hence the lock.
 */
__attribute__((format(printf, 2, 0))) static void http_log(void *cls, const char *fmt, va_list ap)
{
    struct rpc_http *h = cls;
    char line[HTTP_LOG_MAX];
    vsnprintf(line, sizeof(line), fmt, ap);
    line[strcspn(line, "\r\n")] = '\0';
    pthread_mutex_lock(&h->mu);
    bool capture = h->starting;
    if (capture && h->start_log[0] == '\0') {
        snprintf(h->start_log, sizeof(h->start_log), "%s", line);
    }
    pthread_mutex_unlock(&h->mu);
    if (!capture) {
        fprintf(stderr, "http: %s\n", line);
    }
}

/*
 * Queue a response of `len` bytes from `body` with `content_type`. `mode` as MHD's:
 * PERSISTENT (static text), MUST_COPY (borrowed), or MUST_FREE (malloc'd; ownership
 * passes here: MHD frees it once sent, or this function does if MHD cannot take it).
 * Returns MHD's result; MHD_NO makes MHD close the connection.
 */
static enum MHD_Result respond(struct MHD_Connection *c, unsigned int status, char *body,
                               size_t len, enum MHD_ResponseMemoryMode mode,
                               const char *content_type)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(len, body, mode);
    if (r == NULL) {
        if (mode == MHD_RESPMEM_MUST_FREE) {
            free(body);
        }
        return MHD_NO;
    }
    enum MHD_Result ok = MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
    if (ok == MHD_YES && status == MHD_HTTP_METHOD_NOT_ALLOWED) {
        ok = MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, "GET, HEAD");
    }
    if (ok == MHD_YES) {
        ok = MHD_queue_response(c, status, r);
    }
    MHD_destroy_response(r); /* drops our reference; a queued response lives on */
    return ok;
}

/* A text body: `text` is copied unless it is a string literal (persistent). */
static enum MHD_Result respond_text(struct MHD_Connection *c, unsigned int status, const char *text,
                                    enum MHD_ResponseMemoryMode mode)
{
    return respond(c, status, (char *)text, strlen(text), mode, "text/plain; charset=utf-8");
}

static int64_t monotonic_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* A copy of the published figures into *m and their age (*age_ms, may be NULL);
 * returns whether anything was published. */
static bool snapshot(struct rpc_http *h, struct rpc_metrics *m, int64_t *age_ms)
{
    pthread_mutex_lock(&h->mu);
    bool published = h->published;
    if (published) {
        *m = h->metrics;
        if (age_ms != NULL) {
            *age_ms = monotonic_ms() - h->published_ms;
        }
    }
    pthread_mutex_unlock(&h->mu);
    return published;
}

/* /readyz: 200 "ready" only with a known leader and nothing committed left to apply. */
static enum MHD_Result answer_readyz(struct rpc_http *h, struct MHD_Connection *c)
{
    struct rpc_metrics m;
    int64_t age_ms = 0;
    if (!snapshot(h, &m, &age_ms)) {
        return respond_text(c, MHD_HTTP_SERVICE_UNAVAILABLE, "starting\n", MHD_RESPMEM_PERSISTENT);
    }
    if (age_ms > RPC_HTTP_STALE_MS) {
        /* The loop thread stopped publishing: it is stuck, so the node serves nobody. */
        return respond_text(c, MHD_HTTP_SERVICE_UNAVAILABLE,
                            "stale: the node's loop is not responding\n", MHD_RESPMEM_PERSISTENT);
    }
    if (m.leader_id == 0) {
        return respond_text(c, MHD_HTTP_SERVICE_UNAVAILABLE, "no leader known\n",
                            MHD_RESPMEM_PERSISTENT);
    }
    if (m.applied_index < m.commit_index) {
        char why[96];
        int n = snprintf(why, sizeof(why), "applying: applied %" PRIu64 " of commit %" PRIu64 "\n",
                         m.applied_index, m.commit_index);
        assert(n > 0 && (size_t)n < sizeof(why)); /* two 20-digit numbers fit */
        return respond_text(c, MHD_HTTP_SERVICE_UNAVAILABLE, why, MHD_RESPMEM_MUST_COPY);
    }
    return respond_text(c, MHD_HTTP_OK, "ready\n", MHD_RESPMEM_PERSISTENT);
}

/* /metrics: the published figures (or only tally_up before the first publish). */
static enum MHD_Result answer_metrics(struct rpc_http *h, struct MHD_Connection *c)
{
    struct rpc_metrics m;
    const struct rpc_metrics *mp = snapshot(h, &m, NULL) ? &m : NULL;
    m.http_refused_per_address = h->refused_per_address;
    m.http_header_timeouts = h->header_timeouts;
    size_t len = rpc_metrics_render(mp, NULL, 0);
    char *body = malloc(len + 1);
    if (body == NULL) {
        return MHD_NO;
    }
    size_t again = rpc_metrics_render(mp, body, len + 1);
    assert(again == len); /* rendering is a pure function of the copy */
    (void)again;
    return respond(c, MHD_HTTP_OK, body, len, MHD_RESPMEM_MUST_FREE,
                   "text/plain; version=0.0.4; charset=utf-8");
}

/* ---- Connections per address (MHD's thread). ---- */

/* The slot counting `addr`, or NULL. */
static struct http_addr *addr_find(struct rpc_http *h, uint32_t addr)
{
    for (unsigned i = 0; i < HTTP_CONNECTION_LIMIT; i++) {
        if (h->addrs[i].n > 0 && h->addrs[i].addr == addr) {
            return &h->addrs[i];
        }
    }
    return NULL;
}

static uint32_t ipv4_of(const struct sockaddr *sa)
{
    return sa != NULL && sa->sa_family == AF_INET
               ? ((const struct sockaddr_in *)(const void *)sa)->sin_addr.s_addr
               : 0;
}

/* MHD's accept policy: refuse an address that has HTTP_PER_ADDRESS_LIMIT connections.
 * MHD accepts and notifies STARTED in this same thread right after, so the count this
 * reads is the count the new connection joins. */
static enum MHD_Result http_accept(void *cls, const struct sockaddr *sa, socklen_t len)
{
    struct rpc_http *h = cls;
    (void)len;
    const struct http_addr *a = addr_find(h, ipv4_of(sa));
    if (a != NULL && a->n >= HTTP_PER_ADDRESS_LIMIT) {
        h->refused_per_address++;
        return MHD_NO;
    }
    return MHD_YES;
}

static void conn_started(struct rpc_http *h, struct MHD_Connection *c, void **socket_context)
{
    const union MHD_ConnectionInfo *info =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    struct http_conn *hc = calloc(1, sizeof(*hc));
    if (hc == NULL) {
        return; /* not counted: the connection is served anyway */
    }
    hc->addr = ipv4_of(info != NULL ? info->client_addr : NULL);
    hc->started_ms = monotonic_ms();
    struct http_addr *a = addr_find(h, hc->addr);
    for (unsigned i = 0; a == NULL && i < HTTP_CONNECTION_LIMIT; i++) {
        if (h->addrs[i].n == 0) {
            a = &h->addrs[i];
            a->addr = hc->addr;
        }
    }
    if (a == NULL) {
        /* MHD holds at most HTTP_CONNECTION_LIMIT connections, so this is not reached;
         * if it were, the connection would be served uncounted. */
        free(hc);
        return;
    }
    a->n++;
    *socket_context = hc;
}

static void conn_closed(struct rpc_http *h, void **socket_context)
{
    struct http_conn *hc = *socket_context;
    if (hc == NULL) {
        return;
    }
    struct http_addr *a = addr_find(h, hc->addr);
    assert(a != NULL && a->n > 0);
    a->n--;
    /* MHD says only that it closed; a connection that never completed its headers and
     * lasted the header timeout was closed for it. */
    if (!hc->headers_seen &&
        monotonic_ms() - hc->started_ms >= (int64_t)HTTP_HEADER_TIMEOUT_S * 1000 - 100) {
        h->header_timeouts++;
    }
    free(hc);
    *socket_context = NULL;
}

/* MHD's connection notifications: count each connection against its address. */
static void http_notify(void *cls, struct MHD_Connection *c, void **socket_context,
                        enum MHD_ConnectionNotificationCode code)
{
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
        conn_started(cls, c, socket_context);
    } else if (code == MHD_CONNECTION_NOTIFY_CLOSED) {
        conn_closed(cls, socket_context);
    }
}

/* Headers of a request arrived on `c`: it gets the longer timeout from now on. */
static void headers_arrived(struct MHD_Connection *c)
{
    const union MHD_ConnectionInfo *info =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    if (info != NULL && info->socket_context != NULL) {
        ((struct http_conn *)info->socket_context)->headers_seen = true;
    }
    MHD_set_connection_option(c, MHD_CONNECTION_OPTION_TIMEOUT, HTTP_TIMEOUT_S);
}

/* Marks a request whose headers were seen (MHD's per-request pointer; never freed). */
static int headers_seen;

/*
 * MHD's request handler: routes by method and path. MHD calls it once with the headers,
 * then with each piece of a request body, then once more with none. A 405 is answered
 * at the first call, which makes MHD close the connection without reading the body.
 * GET/HEAD are answered at the last call: answering earlier would also close the
 * connection, and scrapers keep theirs alive. A body sent with a GET is discarded
 * (MHD hands it over in pieces bounded by its read buffer).
 */
static enum MHD_Result http_handle(void *cls, struct MHD_Connection *c, const char *url,
                                   const char *method, const char *version, const char *upload_data,
                                   size_t *upload_data_size, void **con_cls)
{
    struct rpc_http *h = cls;
    (void)version;
    (void)upload_data;
    /* MHD sends the headers of a GET answer without its body for HEAD. */
    if (strcmp(method, MHD_HTTP_METHOD_GET) != 0 && strcmp(method, MHD_HTTP_METHOD_HEAD) != 0) {
        return respond_text(c, MHD_HTTP_METHOD_NOT_ALLOWED, "method not allowed\n",
                            MHD_RESPMEM_PERSISTENT);
    }
    if (*con_cls == NULL) {
        *con_cls = &headers_seen;
        headers_arrived(c);
        return MHD_YES;
    }
    if (*upload_data_size != 0) {
        *upload_data_size = 0;
        return MHD_YES;
    }
    if (strcmp(url, "/healthz") == 0) {
        return respond_text(c, MHD_HTTP_OK, "ok\n", MHD_RESPMEM_PERSISTENT);
    }
    if (strcmp(url, "/readyz") == 0) {
        return answer_readyz(h, c);
    }
    if (strcmp(url, "/metrics") == 0) {
        return answer_metrics(h, c);
    }
    return respond_text(c, MHD_HTTP_NOT_FOUND, "not found\n", MHD_RESPMEM_PERSISTENT);
}

/* ---- Lifecycle. ---- */

/* Start MHD on `sa` for `h`; on failure write the reason (MHD's, else errno's) to why. */
static int start_daemon(struct rpc_http *h, const struct sockaddr_in *sa, char *why,
                        size_t why_size)
{
    unsigned int flags = MHD_USE_AUTO | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG;
    errno = 0;
    /* The logger must be the first option, or MHD logs the options before it to stderr
     * (and complains about the order). */
    h->daemon = MHD_start_daemon(
        flags, ntohs(sa->sin_port), http_accept, h, http_handle, h, MHD_OPTION_EXTERNAL_LOGGER,
        http_log, h, MHD_OPTION_SOCK_ADDR, (const struct sockaddr *)sa, MHD_OPTION_CONNECTION_LIMIT,
        HTTP_CONNECTION_LIMIT, MHD_OPTION_CONNECTION_TIMEOUT, HTTP_HEADER_TIMEOUT_S,
        MHD_OPTION_NOTIFY_CONNECTION, http_notify, h, MHD_OPTION_END);
    int err = errno;
    pthread_mutex_lock(&h->mu);
    h->starting = false;
    if (h->daemon == NULL) {
        snprintf(why, why_size, "%s",
                 h->start_log[0] != '\0' ? h->start_log
                 : err != 0              ? strerror(err)
                                         : "libmicrohttpd could not start");
    }
    pthread_mutex_unlock(&h->mu);
    return h->daemon == NULL ? -1 : 0;
}

/* The port MHD bound (the kernel's choice when asked for 0), or -1. */
static int bound_port(struct MHD_Daemon *d)
{
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
    if (info == NULL || info->port == 0) {
        return -1;
    }
    return info->port;
}

int rpc_http_start(struct rpc_http **out, const char *address, char *errmsg, size_t errmsg_size)
{
    assert(out != NULL && address != NULL && errmsg != NULL);
    char why[HTTP_LOG_MAX];
    struct sockaddr_in sa;
    *out = NULL;
    if (parse_address(address, &sa, why, sizeof(why)) != 0) {
        snprintf(errmsg, errmsg_size, "http: cannot listen on %s: %s", address, why);
        return -RPC_START_ECONFIG;
    }
    struct rpc_http *h = calloc(1, sizeof(*h));
    if (h == NULL) {
        snprintf(errmsg, errmsg_size, "http: out of memory");
        return -RPC_START_ENOMEM;
    }
    int rv = pthread_mutex_init(&h->mu, NULL);
    if (rv != 0) {
        snprintf(errmsg, errmsg_size, "http: mutex: %s", strerror(rv));
        free(h);
        return -RPC_START_ENOMEM;
    }
    h->starting = true;
    if (start_daemon(h, &sa, why, sizeof(why)) != 0) {
        snprintf(errmsg, errmsg_size, "http: cannot listen on %s: %s", address, why);
        pthread_mutex_destroy(&h->mu);
        free(h);
        return -RPC_START_ELISTEN;
    }
    h->port = bound_port(h->daemon);
    *out = h;
    return 0;
}

void rpc_http_publish(struct rpc_http *h, const struct rpc_metrics *m)
{
    assert(h != NULL && m != NULL);
    pthread_mutex_lock(&h->mu);
    h->metrics = *m;
    h->published = true;
    h->published_ms = monotonic_ms();
    pthread_mutex_unlock(&h->mu);
}

int rpc_http_port(const struct rpc_http *h)
{
    assert(h != NULL);
    return h->port;
}

void rpc_http_stop(struct rpc_http *h)
{
    if (h == NULL) {
        return;
    }
    /* Joins MHD's thread and closes every socket: no callback runs after this. */
    MHD_stop_daemon(h->daemon);
    pthread_mutex_destroy(&h->mu);
    free(h);
}
