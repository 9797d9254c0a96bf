/*
 * listener.c: the server's connections (see server_internal.h for how the server is split).
 *
 * The one idea: this file moves bytes and never looks inside a request. It accepts
 * connections, reads and decrypts their bytes into a bounded framer, hands each decoded
 * request to handle.c, and writes the answers handle.c appends to a connection's output
 * buffer. Output is flushed once per loop iteration by a uv_check handle, so a
 * pipelining client gets many answers per write(2); a uv_idle handle keeps the loop from
 * sleeping in poll while output waits. Reading stops while a connection has too many
 * requests in flight or too much unsent output (backpressure, without blocking the loop),
 * and so does decoding, between two frames already read: a client that pipelines
 * requests without reading the answers holds at most RPC__OUTPUT_BYTES_MAX of them (plus
 * one answer) and one read of frames, however many it sent.
 *
 * Before a connection is served, it must come from an address with fewer than
 * max_connections_per_address connections open (counted in a small hash table); a sweep
 * closes connections that miss the HELLO deadline or stay idle once authenticated.
 *
 * Lifetimes: every pending request, write and scheduled flush holds a reference on its
 * connection, and every connection one on the server, so callbacks that arrive after a
 * client hung up (or after rpc_server_close) find valid memory and answer into the void.
 */
#include "rpc/server_internal.h"
#include "rpc/tls.h"

#include <assert.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>

struct write_req {
    uv_write_t req;
    struct rpc__conn *conn;
    struct rpc_buf buf;
};

/* ---- Connection lifetimes. ---- */

void rpc__conn_release(struct rpc__conn *c)
{
    assert(c->refs > 0);
    if (--c->refs == 0) {
        struct rpc_server *s = c->srv;
        rpc_framer_free(&c->framer);
        rpc_buf_free(&c->out);
        rpc_tls_free(c->tls);
        free(c);
        rpc__server_release(s);
    }
}

static void conn_closed_cb(uv_handle_t *h)
{
    rpc__conn_release(h->data);
}

/* ---- Connections per address. ---- */

static struct rpc__addr_count **addr_bucket(struct rpc_server *s, uint32_t addr)
{
    /* Fibonacci hashing: consecutive addresses spread over the buckets. */
    uint32_t h = (uint32_t)(addr * 2654435769u) >> 22;
    _Static_assert(RPC__ADDR_BUCKETS == 1u << 10, "the hash keeps 10 bits");
    return &s->addrs[h];
}

/* Count `c` against its address: false if the address already has its limit (or no
 * memory to count it), and then `c` is not counted. */
static bool addr_acquire(struct rpc__conn *c)
{
    struct rpc_server *s = c->srv;
    struct rpc__addr_count **b = addr_bucket(s, c->addr), *a = *b;
    while (a != NULL && a->addr != c->addr) {
        a = a->next;
    }
    if (a == NULL) {
        if ((a = calloc(1, sizeof(*a))) == NULL) {
            return false;
        }
        a->addr = c->addr;
        a->next = *b;
        *b = a;
    }
    if (a->n >= s->max_connections_per_address) {
        return false; /* a->n > 0: the entry stays for the connections it counts */
    }
    a->n++;
    c->addr_counted = true;
    return true;
}

static void addr_release(struct rpc__conn *c)
{
    if (!c->addr_counted) {
        return;
    }
    c->addr_counted = false;
    struct rpc__addr_count **p = addr_bucket(c->srv, c->addr);
    while ((*p)->addr != c->addr) {
        p = &(*p)->next; /* counted, so present */
    }
    struct rpc__addr_count *a = *p;
    assert(a->n > 0);
    if (--a->n == 0) {
        *p = a->next;
        free(a);
    }
}

/* The peer's IPv4 address (network byte order); 0 if it cannot be read. */
static uint32_t peer_addr(struct rpc__conn *c)
{
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &len) != 0 || ss.ss_family != AF_INET) {
        return 0;
    }
    return ((const struct sockaddr_in *)&ss)->sin_addr.s_addr;
}

void rpc__conn_close(struct rpc__conn *c)
{
    if (c->closing) {
        return;
    }
    struct rpc_server *s = c->srv;
    c->closing = true;
    if (c->prev != NULL) {
        c->prev->next = c->next;
    } else {
        s->conns = c->next;
    }
    if (c->next != NULL) {
        c->next->prev = c->prev;
    }
    s->n_conns--;
    s->m.connections_open = s->n_conns;
    addr_release(c);
    uv_close((uv_handle_t *)&c->tcp, conn_closed_cb);
}

/* ---- Output and backpressure. ---- */

static void idle_cb(uv_idle_t *h)
{
    (void)h; /* only keeps the loop from blocking in poll while output waits */
}

void rpc__conn_schedule_flush(struct rpc__conn *c)
{
    struct rpc_server *s = c->srv;
    if (c->dirty || c->closing) {
        return;
    }
    c->dirty = true;
    c->refs++;
    c->dirty_next = s->dirty;
    s->dirty = c;
    if (!s->closing) {
        uv_idle_start(&s->idle, idle_cb);
    }
}

static void read_start(struct rpc__conn *c);

static void conn_process(struct rpc__conn *c);

/* Answers appended or handed to uv_write, and not yet written. */
static size_t output_bytes(const struct rpc__conn *c)
{
    return c->out.len + c->unsent;
}

/* Reading and decoding resume when both the requests in flight and the output are low. */
void rpc__conn_backpressure_update(struct rpc__conn *c)
{
    struct rpc_server *s = c->srv;
    bool over = c->inflight >= s->max_inflight || output_bytes(c) >= RPC__OUTPUT_BYTES_MAX;
    bool under = c->inflight <= s->max_inflight / 2 && output_bytes(c) <= RPC__OUTPUT_BYTES_MAX / 2;
    if (over && c->reading) {
        rpc__conn_read_stop(c);
    } else if (under && !c->closing && !c->close_after_flush) {
        if (!c->reading) {
            read_start(c);
        } else if (c->decode_paused) {
            conn_process(c);
        }
    }
}

static void shutdown_cb(uv_shutdown_t *req, int status)
{
    (void)status;
    struct rpc__conn *c = req->data;
    free(req);
    rpc__conn_close(c);
    rpc__conn_release(c);
}

static void write_cb(uv_write_t *req, int status)
{
    struct write_req *w = (struct write_req *)req;
    struct rpc__conn *c = w->conn;
    c->unsent -= w->buf.len;
    c->active_ms = uv_now(c->srv->loop);
    rpc_buf_free(&w->buf);
    free(w);
    if (status != 0) {
        rpc__conn_close(c);
    } else if (!c->closing) {
        rpc__conn_backpressure_update(c);
    }
    rpc__conn_release(c);
}

/* The bytes to put on the wire now: the answers, encrypted on a TLS connection (with
 * whatever the handshake wants sent). 0, or -1 if TLS failed. */
static int take_wire_bytes(struct rpc__conn *c, struct rpc_buf *wire)
{
    if (c->tls == NULL) {
        *wire = c->out;
        memset(&c->out, 0, sizeof(c->out));
        return 0;
    }
    int rv = c->out.len > 0 ? rpc_tls_write(c->tls, c->out.data, c->out.len) : 0;
    c->out.len = 0;
    if (c->out.cap > RPC__READ_CHUNK_BYTES) {
        /* TLS holds its own copy now: a burst's buffer is not kept for the next one. */
        rpc_buf_free(&c->out);
    }
    if (rv == 0) {
        rv = rpc_tls_take_output(c->tls, wire);
    }
    return rv;
}

static void conn_flush(struct rpc__conn *c)
{
    if (c->closing || c->shut ||
        (c->out.len == 0 && (c->tls == NULL || !rpc_tls_has_output(c->tls)))) {
        return;
    }
    struct write_req *w = calloc(1, sizeof(*w));
    if (w == NULL) {
        rpc__conn_close(c);
        return;
    }
    w->conn = c;
    int rv = take_wire_bytes(c, &w->buf);
    if (rv != 0 || w->buf.len == 0) {
        /* Nothing to send yet: answers wait inside TLS for the handshake to finish. */
        rpc_buf_free(&w->buf);
        free(w);
        if (rv != 0) {
            rpc__conn_close(c);
        }
        return;
    }
    uv_buf_t buf = uv_buf_init((char *)w->buf.data, (unsigned)w->buf.len);
    c->unsent += w->buf.len;
    c->refs++;
    if (uv_write(&w->req, (uv_stream_t *)&c->tcp, &buf, 1, write_cb) != 0) {
        c->unsent -= w->buf.len;
        rpc_buf_free(&w->buf);
        free(w);
        rpc__conn_close(c);
        rpc__conn_release(c);
        return;
    }
    if (c->close_after_flush) {
        uv_shutdown_t *sh = malloc(sizeof(*sh));
        if (sh == NULL || uv_shutdown(sh, (uv_stream_t *)&c->tcp, shutdown_cb) != 0) {
            free(sh);
            rpc__conn_close(c);
            return;
        }
        sh->data = c;
        c->shut = true;
        c->refs++;
    }
    rpc__conn_backpressure_update(c);
}

void rpc__flush_dirty(struct rpc_server *s)
{
    struct rpc__conn *c = s->dirty;
    s->dirty = NULL;
    while (c != NULL) {
        struct rpc__conn *next = c->dirty_next;
        c->dirty = false;
        conn_flush(c);
        rpc__conn_release(c);
        c = next;
    }
}

/* Once per loop iteration: write every connection's accumulated answers. */
void rpc__flush_check_cb(uv_check_t *h)
{
    struct rpc_server *s = h->data;
    uv_idle_stop(&s->idle);
    rpc__flush_dirty(s);
}

/* ---- Reading and framing. ---- */

/* Whether `c` must stop decoding for now: it has as many requests in flight, or as many
 * answers waiting, as it may (backpressure_update resumes it). */
static bool decode_full(const struct rpc__conn *c)
{
    return c->inflight >= c->srv->max_inflight || output_bytes(c) >= RPC__OUTPUT_BYTES_MAX;
}

/* Decode and handle the complete frames buffered on `c`, until none is left or it is
 * full (then `decode_paused`). Does not nest: an answer given while decoding may update
 * backpressure, which must not decode the frames this call is walking. */
static void conn_process(struct rpc__conn *c)
{
    struct rpc_server *s = c->srv;
    const uint8_t *body;
    size_t len;
    int rv = 0;
    if (c->processing) {
        return;
    }
    c->processing = true;
    c->decode_paused = false;
    while (!c->closing && !c->close_after_flush) {
        if (decode_full(c)) {
            c->decode_paused = true;
            s->m.decode_pauses++;
            break;
        }
        if ((rv = rpc_framer_next(&c->framer, &body, &len)) == 0) {
            break;
        }
        if (rv < 0) {
            s->m.protocol_errors++;
            rpc__answer_error(c, 0, rv == -WIRE_ERANGE ? RPC_ETOOBIG : RPC_EINTERNAL,
                              rv == -WIRE_ERANGE ? "frame longer than the limit" : "out of memory",
                              true);
            break;
        }
        struct rpc_request req;
        uint64_t seq = 0;
        char why[RPC_MESSAGE_MAX + 1];
        if (rpc_request_decode(body, len, &req, &seq, why) != 0) {
            s->m.protocol_errors++;
            /* The framing still holds, so the stream can go on, unless the peer never
             * authenticated: then it is not worth serving. */
            rpc__answer_error(c, seq, RPC_EBADREQ, why, c->role == RPC_ROLE_NONE);
            continue;
        }
        rpc__handle_request(c, &req);
    }
    c->processing = false;
}

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    struct rpc__conn *c = h->data;
    struct rpc_server *s = c->srv;
    /* One shared buffer: read callbacks never nest on one loop thread. */
    *buf = uv_buf_init(s->read_buf, sizeof(s->read_buf));
}

/* Bytes read from the socket: decrypted on a TLS connection, then framed. 0, or -1 if
 * the connection is being closed. */
static int conn_input(struct rpc__conn *c, const void *data, size_t n)
{
    if (c->tls == NULL) {
        if (rpc_framer_feed(&c->framer, data, n) != 0) {
            rpc__conn_close(c);
            return -1;
        }
        return 0;
    }
    struct rpc_buf plain = {0};
    int rv = rpc_tls_input(c->tls, data, n, &plain);
    if (rv == 0 && plain.len > 0) {
        rv = rpc_framer_feed(&c->framer, plain.data, plain.len);
    }
    rpc_buf_free(&plain);
    if (rpc_tls_has_output(c->tls)) {
        rpc__conn_schedule_flush(c); /* handshake records, or the alert of a failure */
    }
    if (rv != 0) {
        c->srv->m.protocol_errors++;
        rpc__auth_tls_failed(c);
        c->close_after_flush = true;
        rpc__conn_read_stop(c);
        if (!rpc_tls_has_output(c->tls)) {
            rpc__conn_close(c);
        }
        return -1;
    }
    return 0;
}

static void read_cb(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    (void)buf;
    struct rpc__conn *c = stream->data;
    if (nread < 0) {
        rpc__conn_close(c);
        return;
    }
    if (nread == 0) {
        return;
    }
    c->active_ms = uv_now(c->srv->loop);
    if (conn_input(c, c->srv->read_buf, (size_t)nread) != 0) {
        return;
    }
    conn_process(c);
    if (!c->closing) {
        rpc__conn_backpressure_update(c);
    }
}

static void read_start(struct rpc__conn *c)
{
    if (!c->reading && uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, read_cb) == 0) {
        c->reading = true;
        /* Frames buffered while reading was stopped are handled now. */
        conn_process(c);
    }
}

void rpc__conn_read_stop(struct rpc__conn *c)
{
    if (c->reading) {
        uv_read_stop((uv_stream_t *)&c->tcp);
        c->reading = false;
    }
}

/* ---- Accepting. ---- */

void rpc__accept_cb(uv_stream_t *listener, int status)
{
    struct rpc_server *s = listener->data;
    if (status != 0 || s->closing) {
        return;
    }
    struct rpc__conn *c = calloc(1, sizeof(*c));
    if (c == NULL || uv_tcp_init(s->loop, &c->tcp) != 0) {
        free(c);
        return;
    }
    c->tcp.data = c;
    c->srv = s;
    c->refs = 1;
    s->refs++;
    rpc_framer_init(&c->framer, RPC_HELLO_FRAME_MAX); /* raised to max_frame by HELLO */
    c->accepted_ms = c->active_ms = uv_now(s->loop);
    if (uv_accept(listener, (uv_stream_t *)&c->tcp) != 0 ||
        (s->tls_ctx != NULL && rpc_tls_new(&c->tls, s->tls_ctx) != 0)) {
        c->closing = true;
        uv_close((uv_handle_t *)&c->tcp, conn_closed_cb);
        return;
    }
    c->next = s->conns;
    if (s->conns != NULL) {
        s->conns->prev = c;
    }
    s->conns = c;
    s->n_conns++;
    s->m.connections_total++;
    s->m.connections_open = s->n_conns;
    if (s->n_conns > s->max_connections) {
        s->m.refused_max_connections++;
        rpc__answer_error(c, 0, RPC_EBUSY, "too many connections", true);
        return;
    }
    c->addr = peer_addr(c);
    if (!addr_acquire(c)) {
        s->m.refused_per_address++;
        rpc__answer_error(c, 0, RPC_EBUSY, "too many connections from this address", true);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    read_start(c);
}

/* ---- Deadlines. ---- */

void rpc__sweep_cb(uv_timer_t *t)
{
    struct rpc_server *s = t->data;
    uint64_t now_ms = uv_now(s->loop);
    struct rpc__conn *next;
    for (struct rpc__conn *c = s->conns; c != NULL; c = next) {
        next = c->next; /* closing unlinks c */
        if (c->closing) {
            continue;
        }
        if (c->role == RPC_ROLE_NONE && now_ms - c->accepted_ms >= s->hello_timeout_ms) {
            /* Nothing is answered: the TLS handshake may not even be done. */
            s->m.hello_timeouts++;
            rpc__conn_close(c);
        } else if (c->role != RPC_ROLE_NONE && c->inflight == 0 &&
                   now_ms - c->active_ms >= s->idle_timeout_ms) {
            /* Output that has not moved for as long counts as idle too: a client that
             * stopped reading its answers holds them no longer than an idle one. */
            s->m.idle_timeouts++;
            rpc__conn_close(c);
        }
    }
}
