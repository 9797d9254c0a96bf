/*
 * peer_tls.c: the peer transport with mutual TLS (see peer_tls.h for the contract).
 *
 * The one idea: libraft keeps speaking plaintext to a stream, and that stream is one end
 * of a socketpair. A connection (struct conn) owns the TCP socket, the TLS session over
 * memory BIOs, and the other end of the pair (`inner`); it pumps bytes between them:
 *
 *     peer --TCP/TLS--> conn.tcp -> SSL_read  -> conn.inner --pair--> libraft's stream
 *     peer <-TCP/TLS--  conn.tcp <- SSL_write <- conn.inner <--pair-- libraft's stream
 *
 * The pair is made only once the peer is authenticated, so before that a stranger can
 * make a node hold one struct conn, NODE_PEER_CIPHER_MAX bytes of ciphertext, a
 * certificate chain of NODE_PEER_CERT_LIST_MAX and the libraft handshake (at most
 * PEER_HELLO_MAX bytes), for NODE_PEER_HANDSHAKE_MS, on at most NODE_PEER_UNAUTH_MAX
 * connections at once.
 *
 * Lifetimes: libraft owns the stream it is handed (raft_malloc'd, freed by libraft after
 * uv_close). When libraft closes it, the conn reads EOF on `inner` and closes itself;
 * when the peer goes, the conn closes `inner` and libraft reads EOF. A conn is freed once
 * its three handles are closed; the transport's close callback fires once every conn
 * and the listener are gone.
 */
#include "raft/peer_tls.h"

#include "raft/node.h"

#include <arpa/inet.h>
#include <assert.h>
#include <inttypes.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#define PEER_PROTOCOL 1 /* libraft's UV__TCP_HANDSHAKE_PROTOCOL */
#define PEER_PREAMBLE_BYTES 24
#define PEER_HELLO_MAX (PEER_PREAMBLE_BYTES + NODE_ADDRESS_MAX)
#define PEER_READ_CHUNK (64 * 1024)
#define PEER_PLAIN_CHUNK (16 * 1024)
#define PEER_LOG_INTERVAL_MS 1000
#define PEER_BACKLOG 64

enum conn_state { CONN_CONNECTING, CONN_HANDSHAKE, CONN_HELLO, CONN_PUMP, CONN_CLOSING };

struct conn {
    struct node_peer_tls *pt;
    struct conn *prev, *next;
    enum conn_state state;
    bool accepted; /* the server side of the connection */
    bool unauth;   /* accepted and not yet authenticated: counted in pt->n_unauth */
    uv_tcp_t tcp;
    uv_timer_t timer; /* the handshake deadline */
    uv_pipe_t inner;  /* our end of the pair, once authenticated */
    bool inner_open;
    unsigned open_handles;
    SSL *ssl;
    BIO *in, *out; /* owned by ssl */
    char remote[64];
    /* Connecting side: libraft's request and the member it is for. */
    uv_connect_t connect;
    struct raft_uv_connect *req;
    uint64_t want_id;
    /* Accepting side: the member the certificate names, and libraft's handshake. */
    uint64_t cert_id;
    uint8_t hello[PEER_HELLO_MAX];
    size_t hello_len, hello_want;
    /* Bytes handed to uv_write and not yet written, toward each side. */
    size_t tcp_queued, inner_queued;
    bool tcp_paused, inner_paused;
};

struct node_peer_tls {
    struct raft_uv_transport *outer;
    uv_loop_t *loop;
    struct node_peer_tls_config cfg;
    SSL_CTX *server_ctx, *client_ctx;
    uint64_t id;
    char address[NODE_ADDRESS_MAX];
    uv_tcp_t listener;
    bool listener_open;
    raft_uv_accept_cb accept_cb;
    raft_uv_transport_close_cb close_cb;
    bool closing;
    uv_idle_t close_idle; /* fires the close callback from the loop, never inside close */
    bool close_idle_open;
    struct conn *conns;
    uint64_t refused;
    unsigned n_unauth; /* accepted connections still in their handshake */
    uint64_t log_last_ms, log_suppressed;
    char read_buf[PEER_READ_CHUNK]; /* every read is consumed before the next one */
};

struct write_req {
    uv_write_t req;
    struct conn *c;
    size_t *queued;
    size_t len;
    char data[];
};

static void conn_close(struct conn *c, int connect_status);
static void conn_on_cipher(struct conn *c);
static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf);
static void tcp_read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);
static void inner_read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

/* ---- Logging and refusal. ---- */

static void logf_(struct node_peer_tls *pt, const char *level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void logf_(struct node_peer_tls *pt, const char *level, const char *fmt, ...)
{
    char text[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    if (pt->cfg.log != NULL) {
        pt->cfg.log(pt->cfg.data, level, text);
    }
}

/* Count a refused connection, log it (at most once a second: a stranger must not be
 * able to flood the log) and close it. */
static void refuse(struct conn *c, const char *reason)
{
    struct node_peer_tls *pt = c->pt;
    pt->refused++;
    uint64_t now_ms = uv_now(pt->loop);
    if (pt->log_last_ms == 0 || now_ms - pt->log_last_ms >= PEER_LOG_INTERVAL_MS) {
        logf_(pt, "warn",
              "msg=\"peer refused\" remote=%s side=%s reason=\"%s\" suppressed=%" PRIu64, c->remote,
              c->accepted ? "accept" : "connect", reason, pt->log_suppressed);
        pt->log_last_ms = now_ms;
        pt->log_suppressed = 0;
    } else {
        pt->log_suppressed++;
    }
    conn_close(c, RAFT_NOCONNECTION);
}

/* The reason a TLS step failed: the certificate check's, else OpenSSL's. */
static void tls_reason(struct conn *c, char *out, size_t size)
{
    long verify = SSL_get_verify_result(c->ssl);
    unsigned long e = ERR_peek_last_error();
    if (verify != X509_V_OK) {
        snprintf(out, size, "tls: certificate: %s", X509_verify_cert_error_string(verify));
    } else if (e != 0) {
        char msg[200];
        ERR_error_string_n(e, msg, sizeof(msg));
        snprintf(out, size, "tls: %s", msg);
    } else {
        snprintf(out, size, "tls: connection closed");
    }
    ERR_clear_error();
}

/* ---- Certificates. ---- */

uint64_t node_peer_cert_member(const void *cert)
{
    GENERAL_NAMES *names = X509_get_ext_d2i((const X509 *)cert, NID_subject_alt_name, NULL, NULL);
    uint64_t id = 0;
    int found = 0;
    size_t prefix = strlen(NODE_PEER_URI_PREFIX);
    for (int i = 0; names != NULL && i < sk_GENERAL_NAME_num(names); i++) {
        const GENERAL_NAME *g = sk_GENERAL_NAME_value(names, i);
        if (g->type != GEN_URI) {
            continue;
        }
        const char *s = (const char *)ASN1_STRING_get0_data(g->d.uniformResourceIdentifier);
        size_t len = (size_t)ASN1_STRING_length(g->d.uniformResourceIdentifier);
        if (len <= prefix || len > prefix + 20 || memcmp(s, NODE_PEER_URI_PREFIX, prefix) != 0) {
            continue;
        }
        uint64_t v = 0;
        bool ok = true;
        for (size_t k = prefix; k < len && ok; k++) {
            ok = s[k] >= '0' && s[k] <= '9' && !__builtin_mul_overflow(v, 10, &v) &&
                 !__builtin_add_overflow(v, (uint64_t)(s[k] - '0'), &v);
        }
        if (ok && v > 0) {
            id = v;
            found++;
        }
    }
    GENERAL_NAMES_free(names);
    return found == 1 ? id : 0; /* two member names in one certificate name nobody */
}

static int ssl_fail(char *why, size_t size, const char *what, const char *file)
{
    char reason[200] = "unknown error";
    unsigned long e = ERR_get_error();
    if (e != 0) {
        ERR_error_string_n(e, reason, sizeof(reason));
    }
    ERR_clear_error();
    snprintf(why, size, "%s %s: %s", what, file, reason);
    return RAFT_INVALID;
}

/* One context, server or client side: our certificate, the cluster CA, peer required. */
static int ctx_new(SSL_CTX **out, const SSL_METHOD *method, const struct node_peer_tls_config *cfg,
                   char *why, size_t size)
{
    SSL_CTX *ctx = SSL_CTX_new(method);
    if (ctx == NULL) {
        snprintf(why, size, "out of memory");
        return RAFT_NOMEM;
    }
    int rv = 0;
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_max_cert_list(ctx, NODE_PEER_CERT_LIST_MAX);
    SSL_CTX_set_verify_depth(ctx, 4);
    SSL_CTX_set_num_tickets(ctx, 0); /* no resumption: every connection shows its certificate */
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    if (SSL_CTX_use_certificate_chain_file(ctx, cfg->cert_file) != 1) {
        rv = ssl_fail(why, size, "peer certificate", cfg->cert_file);
    } else if (SSL_CTX_use_PrivateKey_file(ctx, cfg->key_file, SSL_FILETYPE_PEM) != 1) {
        rv = ssl_fail(why, size, "peer key", cfg->key_file);
    } else if (SSL_CTX_check_private_key(ctx) != 1) {
        rv = ssl_fail(why, size, "peer key does not match the certificate", cfg->key_file);
    } else if (SSL_CTX_load_verify_locations(ctx, cfg->ca_file, NULL) != 1) {
        rv = ssl_fail(why, size, "peer CA", cfg->ca_file);
    }
    if (rv != 0) {
        SSL_CTX_free(ctx);
        return rv;
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
    *out = ctx;
    return 0;
}

/* ---- Writing, toward either side. ---- */

static void write_cb(uv_write_t *req, int status)
{
    struct write_req *w = (struct write_req *)req;
    struct conn *c = w->c;
    assert(*w->queued >= w->len);
    *w->queued -= w->len;
    free(w);
    if (status != 0) {
        conn_close(c, RAFT_NOCONNECTION);
        return;
    }
    /* Resume the side we stopped reading once the other drained to half. */
    if (c->state != CONN_PUMP) {
        return;
    }
    if (c->inner_paused && c->tcp_queued <= NODE_PEER_QUEUED_MAX / 2) {
        c->inner_paused = false;
        uv_read_start((uv_stream_t *)&c->inner, alloc_cb, inner_read_cb);
    }
    if (c->tcp_paused && c->inner_queued <= NODE_PEER_QUEUED_MAX / 2) {
        c->tcp_paused = false;
        uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, tcp_read_cb);
    }
}

/* A write request for `len` bytes toward the side counted in `*queued`; NULL if out of
 * memory. */
static struct write_req *write_req_new(struct conn *c, size_t *queued, size_t len)
{
    struct write_req *w = malloc(sizeof(*w) + len);
    if (w != NULL) {
        w->c = c;
        w->queued = queued;
        w->len = len;
    }
    return w;
}

/* Hand `w` (filled) to libuv on `stream`; on failure it is freed. 0 or -1. */
static int write_req_send(struct write_req *w, uv_stream_t *stream)
{
    uv_buf_t buf = uv_buf_init(w->data, (unsigned)w->len);
    if (uv_write(&w->req, stream, &buf, 1, write_cb) != 0) {
        free(w);
        return -1;
    }
    *w->queued += w->len;
    return 0;
}

/* Queue `len` bytes (copied) toward libraft. 0 or -1. */
static int write_inner(struct conn *c, const void *data, size_t len)
{
    struct write_req *w = write_req_new(c, &c->inner_queued, len);
    if (w == NULL) {
        return -1;
    }
    memcpy(w->data, data, len);
    return write_req_send(w, (uv_stream_t *)&c->inner);
}

/* Send whatever ciphertext the session produced. 0 or -1. */
static int flush_tls(struct conn *c)
{
    size_t pending;
    while ((pending = BIO_ctrl_pending(c->out)) > 0) {
        struct write_req *w = write_req_new(c, &c->tcp_queued, pending);
        if (w == NULL) {
            return -1;
        }
        int n = BIO_read(c->out, w->data, (int)pending);
        assert(n == (int)pending);
        (void)n;
        if (write_req_send(w, (uv_stream_t *)&c->tcp) != 0) {
            return -1;
        }
    }
    return 0;
}

/* ---- Connection lifetime. ---- */

/* Fire the transport's close callback once nothing of it is open any more. */
static void maybe_closed(struct node_peer_tls *pt)
{
    if (pt->closing && pt->conns == NULL && !pt->listener_open && !pt->close_idle_open) {
        raft_uv_transport_close_cb cb = pt->close_cb;
        pt->close_cb = NULL;
        if (cb != NULL) {
            cb(pt->outer);
        }
    }
}

static void close_idle_cb(uv_handle_t *h)
{
    struct node_peer_tls *pt = h->data;
    /* Only now: the close callback may free pt, and libuv holds the handle until here. */
    pt->close_idle_open = false;
    maybe_closed(pt);
}

static void conn_handle_closed(uv_handle_t *h)
{
    struct conn *c = h->data;
    assert(c->open_handles > 0);
    if (--c->open_handles > 0) {
        return;
    }
    struct node_peer_tls *pt = c->pt;
    if (c->prev != NULL) {
        c->prev->next = c->next;
    } else {
        pt->conns = c->next;
    }
    if (c->next != NULL) {
        c->next->prev = c->prev;
    }
    SSL_free(c->ssl);
    free(c);
    maybe_closed(pt);
}

/* `c` is authenticated or closing: it no longer counts against NODE_PEER_UNAUTH_MAX. */
static void leave_handshake(struct conn *c)
{
    if (c->unauth) {
        assert(c->pt->n_unauth > 0);
        c->pt->n_unauth--;
        c->unauth = false;
    }
}

/* Close `c` once; a connect still waiting for its answer gets `connect_status`. */
static void conn_close(struct conn *c, int connect_status)
{
    if (c->state == CONN_CLOSING) {
        return;
    }
    c->state = CONN_CLOSING;
    leave_handshake(c);
    struct raft_uv_connect *req = c->req;
    c->req = NULL;
    uv_close((uv_handle_t *)&c->tcp, conn_handle_closed);
    uv_close((uv_handle_t *)&c->timer, conn_handle_closed);
    if (c->inner_open) {
        uv_close((uv_handle_t *)&c->inner, conn_handle_closed);
    }
    if (req != NULL) {
        req->cb(req, NULL, connect_status);
    }
}

static void deadline_cb(uv_timer_t *t)
{
    struct conn *c = t->data;
    if (!c->accepted) {
        conn_close(c, RAFT_NOCONNECTION); /* a slow or cut-off member: nobody to refuse */
    } else {
        refuse(c, "handshake not finished in time");
    }
}

/* A conn with its TCP handle and deadline timer set up and linked in; NULL if out of
 * memory. */
static struct conn *conn_new(struct node_peer_tls *pt, bool accepted)
{
    struct conn *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        return NULL;
    }
    c->ssl = SSL_new(accepted ? pt->server_ctx : pt->client_ctx);
    c->in = BIO_new(BIO_s_mem());
    c->out = BIO_new(BIO_s_mem());
    if (c->ssl == NULL || c->in == NULL || c->out == NULL) {
        BIO_free(c->in);
        BIO_free(c->out);
        SSL_free(c->ssl);
        free(c);
        return NULL;
    }
    SSL_set_bio(c->ssl, c->in, c->out);
    if (accepted) {
        SSL_set_accept_state(c->ssl);
    } else {
        SSL_set_connect_state(c->ssl);
    }
    c->pt = pt;
    c->accepted = accepted;
    c->state = accepted ? CONN_HANDSHAKE : CONN_CONNECTING;
    c->hello_want = PEER_PREAMBLE_BYTES;
    snprintf(c->remote, sizeof(c->remote), "unknown");
    uv_tcp_init(pt->loop, &c->tcp);
    uv_timer_init(pt->loop, &c->timer);
    c->tcp.data = c;
    c->timer.data = c;
    c->open_handles = 2;
    uv_timer_start(&c->timer, deadline_cb, NODE_PEER_HANDSHAKE_MS, 0);
    c->next = pt->conns;
    if (pt->conns != NULL) {
        pt->conns->prev = c;
    }
    pt->conns = c;
    return c;
}

/* Make the socketpair: our end becomes c->inner (reading), the other a raft_malloc'd
 * uv_pipe_t for libraft (which frees it), and c starts pumping. NULL on failure: the
 * caller closes c. */
static uv_stream_t *conn_pair(struct conn *c)
{
    int fds[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0) {
        return NULL;
    }
    uv_pipe_t *theirs = raft_malloc(sizeof(*theirs));
    if (theirs == NULL || uv_pipe_init(c->pt->loop, theirs, 0) != 0) {
        raft_free(theirs);
        close(fds[0]);
        close(fds[1]);
        return NULL;
    }
    if (uv_pipe_open(theirs, fds[1]) != 0) {
        close(fds[1]);
        close(fds[0]);
        uv_close((uv_handle_t *)theirs, (uv_close_cb)raft_free);
        return NULL;
    }
    uv_pipe_init(c->pt->loop, &c->inner, 0);
    c->inner.data = c;
    c->inner_open = true;
    c->open_handles++;
    int rv = uv_pipe_open(&c->inner, fds[0]);
    if (rv != 0) {
        close(fds[0]);
    } else {
        rv = uv_read_start((uv_stream_t *)&c->inner, alloc_cb, inner_read_cb);
    }
    if (rv != 0) {
        uv_close((uv_handle_t *)theirs, (uv_close_cb)raft_free);
        return NULL; /* inner is closed with the conn */
    }
    uv_timer_stop(&c->timer);
    leave_handshake(c);
    c->state = CONN_PUMP;
    return (uv_stream_t *)theirs;
}

/* ---- Reading and pumping. ---- */

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct conn *c = h->data;
    (void)suggested;
    *buf = uv_buf_init(c->pt->read_buf, sizeof(c->pt->read_buf));
}

static void tcp_read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct conn *c = s->data;
    if (nread == 0 || c->state == CONN_CLOSING) {
        return;
    }
    if (nread < 0) {
        /* On the connecting side, a close during the handshake is the other side
         * refusing us (it counts that) or going away: not a refusal of ours. */
        if (c->state == CONN_PUMP || !c->accepted) {
            conn_close(c, RAFT_NOCONNECTION);
        } else {
            refuse(c, "connection closed during the handshake");
        }
        return;
    }
    if (BIO_write(c->in, buf->base, (int)nread) != (int)nread) {
        conn_close(c, RAFT_NOCONNECTION);
        return;
    }
    if (c->state != CONN_PUMP && BIO_ctrl_pending(c->in) > NODE_PEER_CIPHER_MAX) {
        refuse(c, "too much data during the handshake");
        return;
    }
    conn_on_cipher(c);
}

/* Plaintext from libraft: encrypt it toward the peer. */
static void inner_read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct conn *c = s->data;
    if (nread == 0 || c->state == CONN_CLOSING) {
        return;
    }
    if (nread < 0) {
        conn_close(c, RAFT_NOCONNECTION); /* libraft closed its end */
        return;
    }
    /* A memory BIO never blocks, so SSL_write takes everything (no partial writes). */
    if (SSL_write(c->ssl, buf->base, (int)nread) != (int)nread || flush_tls(c) != 0) {
        ERR_clear_error();
        conn_close(c, RAFT_NOCONNECTION);
        return;
    }
    if (c->tcp_queued > NODE_PEER_QUEUED_MAX) {
        c->inner_paused = true;
        uv_read_stop(s);
    }
}

/* Decrypt what the session holds toward libraft. 0 or -1 (the conn is then closed). */
static int pump_to_inner(struct conn *c)
{
    char plain[PEER_PLAIN_CHUNK];
    for (;;) {
        int n = SSL_read(c->ssl, plain, sizeof(plain));
        if (n > 0) {
            if (write_inner(c, plain, (size_t)n) != 0) {
                conn_close(c, RAFT_NOCONNECTION);
                return -1;
            }
            continue;
        }
        int err = SSL_get_error(c->ssl, n);
        if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
            break;
        }
        ERR_clear_error();
        conn_close(c, RAFT_NOCONNECTION); /* a bad record, or the peer's close_notify */
        return -1;
    }
    if (c->inner_queued > NODE_PEER_QUEUED_MAX) {
        c->tcp_paused = true;
        uv_read_stop((uv_stream_t *)&c->tcp);
    }
    return 0;
}

/* ---- The handshakes. ---- */

static void put64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++) {
        p[i] = (uint8_t)(v >> (8 * i)); /* libraft's handshake is little-endian */
    }
}

static uint64_t get64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) {
        v = (v << 8) | p[i];
    }
    return v;
}

/* Connecting side, TLS done: is this the member we meant to reach? Then send libraft's
 * handshake inside the session and hand libraft its stream. */
static void connected(struct conn *c)
{
    X509 *cert = SSL_get1_peer_certificate(c->ssl);
    uint64_t id = cert != NULL ? node_peer_cert_member(cert) : 0;
    X509_free(cert);
    if (id != c->want_id) {
        char reason[96];
        snprintf(reason, sizeof(reason), "reached member %" PRIu64 ", wanted %" PRIu64, id,
                 c->want_id);
        refuse(c, reason);
        return;
    }
    struct node_peer_tls *pt = c->pt;
    size_t addr_len = strlen(pt->address) + 1;
    size_t padded = (addr_len + 7) / 8 * 8;
    uint8_t hello[PEER_HELLO_MAX + 8] = {0};
    assert(PEER_PREAMBLE_BYTES + padded <= sizeof(hello));
    put64(hello, PEER_PROTOCOL);
    put64(hello + 8, pt->id);
    put64(hello + 16, padded);
    memcpy(hello + PEER_PREAMBLE_BYTES, pt->address, addr_len);
    if (SSL_write(c->ssl, hello, (int)(PEER_PREAMBLE_BYTES + padded)) <= 0) {
        ERR_clear_error();
        conn_close(c, RAFT_NOCONNECTION);
        return;
    }
    uv_stream_t *stream = conn_pair(c);
    if (stream == NULL) {
        conn_close(c, RAFT_NOCONNECTION);
        return;
    }
    struct raft_uv_connect *req = c->req;
    c->req = NULL;
    req->cb(req, stream, 0);
}

/* Accepting side: check the complete libraft handshake in c->hello against the
 * certificate and the configuration, then hand libraft its stream. */
static void accept_hello(struct conn *c)
{
    struct node_peer_tls *pt = c->pt;
    uint64_t id = get64(c->hello + 8);
    const char *address = (const char *)c->hello + PEER_PREAMBLE_BYTES;
    char reason[128];
    if (id != c->cert_id) {
        snprintf(reason, sizeof(reason),
                 "handshake claims member %" PRIu64 ", certificate names %" PRIu64, id, c->cert_id);
        refuse(c, reason);
        return;
    }
    if (pt->cfg.is_member != NULL && !pt->cfg.is_member(pt->cfg.data, id)) {
        snprintf(reason, sizeof(reason), "member %" PRIu64 " is not in the configuration", id);
        refuse(c, reason);
        return;
    }
    uv_stream_t *stream = conn_pair(c);
    if (stream == NULL) {
        conn_close(c, RAFT_NOCONNECTION);
        return;
    }
    /* libraft copies the address; it sets stream->data and starts reading itself. */
    pt->accept_cb(pt->outer, id, address, stream);
}

/* Accepting side: read libraft's handshake out of the session, bounded: the preamble,
 * then an address of at most NODE_ADDRESS_MAX bytes that ends in NUL. */
static void read_hello(struct conn *c)
{
    while (c->state == CONN_HELLO && c->hello_len < c->hello_want) {
        int n = SSL_read(c->ssl, c->hello + c->hello_len, (int)(c->hello_want - c->hello_len));
        if (n <= 0) {
            int err = SSL_get_error(c->ssl, n);
            if (err != SSL_ERROR_WANT_READ && err != SSL_ERROR_WANT_WRITE) {
                char reason[256];
                tls_reason(c, reason, sizeof(reason));
                refuse(c, reason);
            }
            return;
        }
        c->hello_len += (size_t)n;
        if (c->hello_len == PEER_PREAMBLE_BYTES) {
            uint64_t protocol = get64(c->hello);
            uint64_t len = get64(c->hello + 16);
            if (protocol != PEER_PROTOCOL) {
                refuse(c, "handshake: unknown protocol");
                return;
            }
            if (len == 0 || len > NODE_ADDRESS_MAX) {
                refuse(c, "handshake: address length out of bounds");
                return;
            }
            c->hello_want = PEER_PREAMBLE_BYTES + (size_t)len;
        } else if (c->hello_len == c->hello_want) {
            if (c->hello[c->hello_want - 1] != '\0') {
                refuse(c, "handshake: address does not end in NUL");
                return;
            }
            accept_hello(c);
        }
    }
}

/* Accepting side, TLS done: which member does the certificate name? */
static void accepted_tls(struct conn *c)
{
    X509 *cert = SSL_get1_peer_certificate(c->ssl);
    c->cert_id = cert != NULL ? node_peer_cert_member(cert) : 0;
    X509_free(cert);
    if (c->cert_id == 0) {
        refuse(c, "certificate names no member (SAN URI " NODE_PEER_URI_PREFIX "<id>)");
        return;
    }
    c->state = CONN_HELLO;
}

/* Ciphertext arrived in c->in: advance whichever stage the connection is in. */
static void conn_on_cipher(struct conn *c)
{
    if (c->state == CONN_HANDSHAKE) {
        int rv = SSL_do_handshake(c->ssl);
        if (rv == 1) {
            if (c->accepted) {
                accepted_tls(c);
            } else {
                connected(c);
            }
        } else {
            int err = SSL_get_error(c->ssl, rv);
            if (err != SSL_ERROR_WANT_READ && err != SSL_ERROR_WANT_WRITE) {
                char reason[256];
                tls_reason(c, reason, sizeof(reason));
                flush_tls(c); /* the alert, so the peer learns why */
                refuse(c, reason);
                return;
            }
        }
    }
    if (c->state == CONN_HELLO) {
        read_hello(c);
    }
    if (c->state == CONN_PUMP) {
        pump_to_inner(c);
    }
    if (c->state != CONN_CLOSING && flush_tls(c) != 0) {
        conn_close(c, RAFT_NOCONNECTION);
    }
}

static void set_remote(struct conn *c)
{
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &len) == 0 && ss.ss_family == AF_INET) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)&ss;
        char ip[INET_ADDRSTRLEN] = "";
        uv_ip4_name(sin, ip, sizeof(ip));
        snprintf(c->remote, sizeof(c->remote), "%s:%u", ip, (unsigned)ntohs(sin->sin_port));
    }
}

/* ---- The transport. ---- */

static struct node_peer_tls *of(struct raft_uv_transport *t)
{
    return t->impl;
}

static int pt_init(struct raft_uv_transport *t, raft_id id, const char *address)
{
    struct node_peer_tls *pt = of(t);
    if (strlen(address) >= sizeof(pt->address)) {
        snprintf(t->errmsg, sizeof(t->errmsg), "address too long");
        return RAFT_INVALID;
    }
    pt->id = id;
    snprintf(pt->address, sizeof(pt->address), "%s", address);
    return 0;
}

/* "a.b.c.d:port" into `sa`. 0 or -1. */
static int parse_address(const char *address, struct sockaddr_in *sa)
{
    char host[NODE_ADDRESS_MAX];
    const char *colon = strrchr(address, ':');
    if (colon == NULL || (size_t)(colon - address) >= sizeof(host)) {
        return -1;
    }
    memcpy(host, address, (size_t)(colon - address));
    host[colon - address] = '\0';
    char *end;
    unsigned long port = strtoul(colon + 1, &end, 10);
    if (*end != '\0' || port == 0 || port > 65535) {
        return -1;
    }
    return uv_ip4_addr(host, (int)port, sa) == 0 ? 0 : -1;
}

static void listen_cb(uv_stream_t *server, int status)
{
    struct node_peer_tls *pt = server->data;
    if (status != 0 || pt->closing) {
        return;
    }
    struct conn *c = conn_new(pt, true);
    if (c == NULL) {
        uv_tcp_t *drop = malloc(sizeof(*drop)); /* accept and close: keep the backlog moving */
        if (drop != NULL) {
            uv_tcp_init(pt->loop, drop);
            uv_accept(server, (uv_stream_t *)drop);
            uv_close((uv_handle_t *)drop, (uv_close_cb)free);
        }
        return;
    }
    if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0 ||
        uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, tcp_read_cb) != 0) {
        conn_close(c, 0);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    set_remote(c);
    c->unauth = true;
    if (++pt->n_unauth > NODE_PEER_UNAUTH_MAX) {
        refuse(c, "too many unauthenticated connections");
    }
}

static int pt_listen(struct raft_uv_transport *t, raft_uv_accept_cb cb)
{
    struct node_peer_tls *pt = of(t);
    struct sockaddr_in sa;
    if (parse_address(pt->address, &sa) != 0) {
        snprintf(t->errmsg, sizeof(t->errmsg), "peer address %s is not IPv4 a.b.c.d:port",
                 pt->address);
        return RAFT_INVALID;
    }
    pt->accept_cb = cb;
    uv_tcp_init(pt->loop, &pt->listener);
    pt->listener.data = pt;
    pt->listener_open = true;
    int rv = uv_tcp_bind(&pt->listener, (const struct sockaddr *)&sa, 0);
    if (rv == 0) {
        rv = uv_listen((uv_stream_t *)&pt->listener, PEER_BACKLOG, listen_cb);
    }
    if (rv != 0) {
        snprintf(t->errmsg, sizeof(t->errmsg), "listen %s: %s", pt->address, uv_strerror(rv));
        return RAFT_IOERR; /* the listener is closed by close */
    }
    return 0;
}

static void connect_cb(uv_connect_t *req, int status)
{
    struct conn *c = req->data;
    if (c->state == CONN_CLOSING) {
        return;
    }
    if (status != 0) {
        conn_close(c, RAFT_NOCONNECTION);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    set_remote(c);
    c->state = CONN_HANDSHAKE;
    if (uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, tcp_read_cb) != 0) {
        conn_close(c, RAFT_NOCONNECTION);
        return;
    }
    conn_on_cipher(c); /* sends the ClientHello */
}

static int pt_connect(struct raft_uv_transport *t, struct raft_uv_connect *req, raft_id id,
                      const char *address, raft_uv_connect_cb cb)
{
    struct node_peer_tls *pt = of(t);
    struct sockaddr_in sa;
    if (parse_address(address, &sa) != 0) {
        snprintf(t->errmsg, sizeof(t->errmsg), "peer address %s is not IPv4 a.b.c.d:port", address);
        return RAFT_NOCONNECTION;
    }
    struct conn *c = conn_new(pt, false);
    if (c == NULL) {
        return RAFT_NOMEM;
    }
    req->cb = cb;
    c->want_id = id;
    snprintf(c->remote, sizeof(c->remote), "%s", address);
    c->connect.data = c;
    int rv = uv_tcp_connect(&c->connect, &c->tcp, (const struct sockaddr *)&sa, connect_cb);
    if (rv != 0) {
        conn_close(c, 0); /* req not yet set: libraft hears of it from the return value */
        return RAFT_NOCONNECTION;
    }
    c->req = req;
    return 0;
}

static void listener_closed(uv_handle_t *h)
{
    struct node_peer_tls *pt = h->data;
    pt->listener_open = false;
    maybe_closed(pt);
}

static void close_idle_fire(uv_idle_t *h)
{
    uv_idle_stop(h);
    uv_close((uv_handle_t *)h, close_idle_cb);
}

static void pt_close(struct raft_uv_transport *t, raft_uv_transport_close_cb cb)
{
    struct node_peer_tls *pt = of(t);
    assert(!pt->closing);
    pt->closing = true;
    pt->close_cb = cb;
    /* The callback must come from the loop even when nothing is open. */
    uv_idle_init(pt->loop, &pt->close_idle);
    pt->close_idle.data = pt;
    pt->close_idle_open = true;
    uv_idle_start(&pt->close_idle, close_idle_fire);
    if (pt->listener_open) {
        uv_close((uv_handle_t *)&pt->listener, listener_closed);
    }
    for (struct conn *c = pt->conns; c != NULL; c = c->next) {
        conn_close(c, RAFT_CANCELED);
    }
}

int node_peer_tls_init(struct node_peer_tls **out, struct raft_uv_transport *outer,
                       struct uv_loop_s *loop, const struct node_peer_tls_config *cfg, char *why,
                       size_t size)
{
    assert(cfg->cert_file != NULL && cfg->key_file != NULL && cfg->ca_file != NULL);
    struct node_peer_tls *pt = calloc(1, sizeof(*pt));
    if (pt == NULL) {
        snprintf(why, size, "out of memory");
        return RAFT_NOMEM;
    }
    int rv = ctx_new(&pt->server_ctx, TLS_server_method(), cfg, why, size);
    if (rv == 0) {
        rv = ctx_new(&pt->client_ctx, TLS_client_method(), cfg, why, size);
    }
    if (rv != 0) {
        SSL_CTX_free(pt->server_ctx);
        free(pt);
        return rv;
    }
    pt->loop = loop;
    pt->cfg = *cfg;
    pt->outer = outer;
    memset(outer, 0, sizeof(*outer));
    outer->version = 1;
    outer->impl = pt;
    outer->init = pt_init;
    outer->listen = pt_listen;
    outer->connect = pt_connect;
    outer->close = pt_close;
    *out = pt;
    return 0;
}

void node_peer_tls_free(struct node_peer_tls *pt)
{
    if (pt != NULL) {
        assert(pt->conns == NULL);
        SSL_CTX_free(pt->server_ctx);
        SSL_CTX_free(pt->client_ctx);
        free(pt);
    }
}

uint64_t node_peer_tls_refused(const struct node_peer_tls *pt)
{
    return pt->refused;
}
