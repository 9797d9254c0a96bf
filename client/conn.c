/*
 * conn.c: the client's connection to one node: endpoints and their resolution, the
 * non-blocking connect, TLS, HELLO, reading frames and sending bytes. The one idea: the
 * connection is mechanism only, and reports what happens to it (up, failed, a frame)
 * through its struct conn_ops to the code that drives it, which decides what that means:
 * the I/O thread (io.c) for the calls it holds, tally_status() (status.c) for its one
 * question on the caller's thread. So there is one implementation of connect, TLS and
 * HELLO; this file touches no state of the client's but its connection's.
 *
 * TLS, when configured, is OpenSSL driven over the same non-blocking socket: a connection
 * goes CONNECTING -> TLS (handshake) -> HELLO -> READY, and every SSL_connect, SSL_read
 * and SSL_write that would block says which way (WANT_READ, WANT_WRITE) it waits, which
 * is what the loop polls for next. Two things differ from plain TCP: a write that waited
 * must be repeated with the same bytes (they stay at the head of the output buffer, which
 * may move and grow meanwhile), and bytes OpenSSL already decrypted are not on the socket
 * any more, so the loop does not sleep while SSL_pending() says some are left. The socket
 * BIO is our own so that a write to a dead peer cannot raise SIGPIPE in the application.
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

/* ---- Endpoints. ---- */

int client__endpoint_parse(const char *text, size_t len, struct endpoint *ep)
{
    memset(ep, 0, sizeof(*ep));
    if (len == 0 || len > TALLY_ADDRESS_MAX) {
        return -1;
    }
    memcpy(ep->text, text, len);
    const char *colon = strrchr(ep->text, ':');
    if (colon == NULL || colon == ep->text) {
        return -1;
    }
    const char *host = ep->text;
    size_t host_len = (size_t)(colon - ep->text);
    if (host[0] == '[') {
        if (host_len < 3 || host[host_len - 1] != ']') {
            return -1;
        }
        host++;
        host_len -= 2;
    } else if (memchr(host, ':', host_len) != NULL) {
        return -1; /* a bare IPv6 literal is ambiguous: it needs brackets */
    }
    memcpy(ep->host, host, host_len);
    const char *port = colon + 1;
    size_t port_len = strlen(port);
    if (port_len == 0 || port_len > 5 || strspn(port, "0123456789") != port_len) {
        return -1;
    }
    long value = strtol(port, NULL, 10);
    if (value < 1 || value > 65535) {
        return -1;
    }
    memcpy(ep->port, port, port_len + 1);
    return 0;
}

int client__endpoints_parse(const char *list, struct endpoint *eps, char *why, size_t why_size)
{
    int n = 0;
    const char *p = list;
    for (;;) {
        const char *end = strchr(p, ',');
        size_t len = end != NULL ? (size_t)(end - p) : strlen(p);
        while (len > 0 && (*p == ' ' || *p == '\t')) {
            p++;
            len--;
        }
        while (len > 0 && (p[len - 1] == ' ' || p[len - 1] == '\t')) {
            len--;
        }
        if (n == TALLY_ENDPOINTS_MAX) {
            snprintf(why, why_size, "more than %d endpoints", TALLY_ENDPOINTS_MAX);
            return -1;
        }
        if (client__endpoint_parse(p, len, &eps[n]) != 0) {
            snprintf(why, why_size, "endpoint %d (\"%.*s\") is not host:port", n + 1,
                     (int)(len < 80 ? len : 80), p);
            return -1;
        }
        n++;
        if (end == NULL) {
            return n;
        }
        p = end + 1;
    }
}

/* ---- TLS helpers. ---- */

/*
 * OpenSSL's own socket BIO writes with write(2), which raises SIGPIPE when the peer has
 * gone and would kill an application that does not ignore it. This BIO does the same
 * with send(MSG_NOSIGNAL) and recv(2) on a non-blocking socket, marking EAGAIN as
 * "retry" so that SSL_get_error() says WANT_READ or WANT_WRITE.
 */
static int tls_bio_write(BIO *b, const char *data, int len)
{
    struct tls_io *io = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    io->err = 0;
    for (;;) {
        ssize_t n = send(io->fd, data, (size_t)len, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n >= 0) {
            return (int)n;
        }
        if (errno == EINTR) {
            continue;
        }
        io->err = errno;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            BIO_set_retry_write(b);
        }
        return -1;
    }
}

static int tls_bio_read(BIO *b, char *data, int len)
{
    struct tls_io *io = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    io->err = 0;
    for (;;) {
        ssize_t n = recv(io->fd, data, (size_t)len, MSG_DONTWAIT);
        if (n >= 0) {
            return (int)n; /* 0: end of stream */
        }
        if (errno == EINTR) {
            continue;
        }
        io->err = errno;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            BIO_set_retry_read(b);
        }
        return -1;
    }
}

static long tls_bio_ctrl(BIO *b, int cmd, long num, void *ptr)
{
    (void)b;
    (void)num;
    (void)ptr;
    return cmd == BIO_CTRL_FLUSH ? 1 : 0; /* nothing is buffered here */
}

static BIO_METHOD *tls_bio_method; /* made once, kept for the life of the process */
static pthread_once_t tls_bio_once = PTHREAD_ONCE_INIT;

static void tls_bio_method_init(void)
{
    int index = BIO_get_new_index();
    BIO_METHOD *m = index > 0 ? BIO_meth_new(index | BIO_TYPE_SOURCE_SINK, "tally socket") : NULL;
    if (m != NULL &&
        (BIO_meth_set_write(m, tls_bio_write) != 1 || BIO_meth_set_read(m, tls_bio_read) != 1 ||
         BIO_meth_set_ctrl(m, tls_bio_ctrl) != 1)) {
        BIO_meth_free(m);
        m = NULL;
    }
    tls_bio_method = m;
}

int client__tls_bio_init(void)
{
    pthread_once(&tls_bio_once, tls_bio_method_init);
    return tls_bio_method != NULL ? 0 : -1;
}

const char *client__tls_name(const struct tally *c, const char *host)
{
    return c->tls_server_name[0] != '\0' ? c->tls_server_name : host;
}

static bool is_ip_literal(const char *name)
{
    unsigned char addr[sizeof(struct in6_addr)];
    return inet_pton(AF_INET, name, addr) == 1 || inet_pton(AF_INET6, name, addr) == 1;
}

void client__tls_reason(char *out, size_t size)
{
    const char *data = NULL;
    int flags = 0;
    unsigned long e = ERR_get_error_all(NULL, NULL, NULL, &data, &flags);
    const char *reason = e != 0 ? ERR_reason_error_string(e) : NULL;
    bool has_data = data != NULL && data[0] != '\0' && (flags & ERR_TXT_STRING) != 0;
    if (reason != NULL) {
        snprintf(out, size, "%s%s%.*s%s", reason, has_data ? " (" : "", has_data ? 80 : 0,
                 has_data ? data : "", has_data ? ")" : "");
    } else if (e != 0) {
        ERR_error_string_n(e, out, size);
    } else {
        snprintf(out, size, "unknown error");
    }
    ERR_clear_error();
}

bool client__tls_failure(SSL *ssl, const struct tls_io *io, int err, const char *what,
                         const char *name, char *why, size_t why_size)
{
    long verify = SSL_get_verify_result(ssl);
    char reason[128];
    bool verify_failed = false;
    if (err == SSL_ERROR_SSL && verify != X509_V_OK) {
        bool name_mismatch =
            verify == X509_V_ERR_HOSTNAME_MISMATCH || verify == X509_V_ERR_IP_ADDRESS_MISMATCH;
        snprintf(why, why_size, "tls: certificate verify failed: %s%s%.*s%s",
                 X509_verify_cert_error_string(verify), name_mismatch ? " (expected \"" : "",
                 name_mismatch ? 64 : 0, name_mismatch ? name : "", name_mismatch ? "\")" : "");
        verify_failed = true;
    } else if (err == SSL_ERROR_SSL) {
        client__tls_reason(reason, sizeof(reason));
        snprintf(why, why_size, "tls %s: %s", what, reason);
    } else if (err == SSL_ERROR_SYSCALL && io->err != 0) {
        snprintf(why, why_size, "tls %s: %s", what, strerror(io->err));
    } else if (err == SSL_ERROR_SYSCALL || err == SSL_ERROR_ZERO_RETURN) {
        snprintf(why, why_size, "tls %s: the node closed the connection", what);
    } else {
        snprintf(why, why_size, "tls %s: error %d", what, err);
    }
    ERR_clear_error();
    return verify_failed;
}

SSL *client__tls_session_new(const struct tally *c, const char *host, struct tls_io *io, char *why,
                             size_t why_size)
{
    const char *name = client__tls_name(c, host);
    char reason[128];
    assert(c->tls_ctx != NULL && tls_bio_method != NULL && io->fd >= 0);
    ERR_clear_error();
    SSL *ssl = SSL_new(c->tls_ctx);
    BIO *bio = ssl != NULL ? BIO_new(tls_bio_method) : NULL;
    if (bio == NULL) {
        SSL_free(ssl);
        ERR_clear_error();
        snprintf(why, why_size, "tls: out of memory");
        return NULL;
    }
    BIO_set_data(bio, io);
    BIO_set_init(bio, 1);
    SSL_set_bio(ssl, bio, bio); /* ssl owns the BIO */
    SSL_set_connect_state(ssl);
    SSL_set_hostflags(ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
    /* SSL_set1_host() takes an IP literal as an address to match; SNI carries names only. */
    if (SSL_set1_host(ssl, name) != 1 ||
        (!is_ip_literal(name) && SSL_set_tlsext_host_name(ssl, name) != 1)) {
        client__tls_reason(reason, sizeof(reason));
        snprintf(why, why_size, "tls: cannot use server name \"%.64s\": %s", name, reason);
        SSL_free(ssl);
        return NULL;
    }
    return ssl;
}

/* ---- The connection (the I/O thread's, or tally_status()'s on its caller's thread). ---- */

void client__conn_init(struct conn *k, const struct tally *c, const struct conn_ops *ops,
                       void *ops_arg)
{
    memset(k, 0, sizeof(*k));
    k->fd = -1;
    k->client = c;
    k->ops = ops;
    k->ops_arg = ops_arg;
    rpc_framer_init(&k->framer, c->max_frame_bytes);
}

void client__conn_close(struct conn *k)
{
    if (k->ssl != NULL) {
        SSL_free(k->ssl); /* no close_notify: the socket closes anyway */
        k->ssl = NULL;
    }
    k->tls_wait = 0;
    k->write_wants_read = false;
    k->read_wants_write = false;
    if (k->fd >= 0) {
        close(k->fd);
        k->fd = -1;
    }
    k->state = CONN_DOWN;
    k->epoch++;
    rpc_framer_free(&k->framer);
    rpc_framer_init(&k->framer, k->client->max_frame_bytes);
    k->out.len = 0;
    k->out_off = 0;
    k->silent_since_ms = 0;
    k->unavailable_streak = 0;
}

void client__conn_free(struct conn *k)
{
    SSL_free(k->ssl);
    k->ssl = NULL;
    if (k->fd >= 0) {
        close(k->fd);
        k->fd = -1;
    }
    client__conn_forget_addrs(k);
    rpc_framer_free(&k->framer);
    free(k->chunk);
    k->chunk = NULL;
    rpc_buf_free(&k->out);
}

void client__conn_forget_addrs(struct conn *k)
{
    if (k->addrs != NULL) {
        freeaddrinfo(k->addrs);
    }
    k->addrs = k->addr_next = NULL;
}

/* Report a failure to the driver, which closes the connection before it returns. */
static void conn_fail(struct conn *k, int64_t now_ms, unsigned fail, const char *why)
{
    k->ops->failed(k->ops_arg, now_ms, fail, why);
    assert(k->state == CONN_DOWN && k->fd < 0);
}

/*
 * Encrypt and send buffered bytes with SSL_write until it would wait. A write that waited
 * is repeated with the same bytes at the head (out_off does not move until SSL_write
 * takes them; the buffer may have moved and grown, which ACCEPT_MOVING_WRITE_BUFFER and a
 * length that never shrinks allow). Returns 0, or -1 if the connection failed.
 */
static int conn_flush_tls(struct conn *k, int64_t now_ms)
{
    char text[TLS_TEXT_MAX], why[WHY_MAX];
    while (k->out_off < k->out.len) {
        size_t left = k->out.len - k->out_off;
        ERR_clear_error();
        int n = SSL_write(k->ssl, k->out.data + k->out_off,
                          left > TLS_WRITE_MAX ? TLS_WRITE_MAX : (int)left);
        if (n > 0) {
            k->write_wants_read = false;
            k->out_off += (size_t)n;
            continue;
        }
        int err = SSL_get_error(k->ssl, n);
        if (err == SSL_ERROR_WANT_WRITE || err == SSL_ERROR_WANT_READ) {
            k->write_wants_read = err == SSL_ERROR_WANT_READ;
            return 0;
        }
        client__tls_failure(k->ssl, &k->io, err, "write", client__tls_name(k->client, k->host),
                            text, sizeof(text));
        snprintf(why, sizeof(why), "%s: %s", k->target, text);
        conn_fail(k, now_ms, 0, why);
        return -1;
    }
    k->out.len = 0;
    k->out_off = 0;
    return 0;
}

int client__conn_flush(struct conn *k, int64_t now_ms)
{
    if (k->ssl != NULL) {
        return conn_flush_tls(k, now_ms);
    }
    while (k->out_off < k->out.len) {
        ssize_t n = send(k->fd, k->out.data + k->out_off, k->out.len - k->out_off,
                         MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                return 0;
            }
            char why[WHY_MAX];
            snprintf(why, sizeof(why), "%s: send: %s", k->target, strerror(errno));
            conn_fail(k, now_ms, 0, why);
            return -1;
        }
        k->out_off += (size_t)n;
    }
    k->out.len = 0;
    k->out_off = 0;
    return 0;
}

int client__conn_resolve(struct conn *k, const struct endpoint *ep, char *why, size_t why_size)
{
    client__conn_forget_addrs(k);
    client__copy_text(k->target, sizeof(k->target), ep->text);
    client__copy_text(k->host, sizeof(k->host), ep->host);
    struct addrinfo hints = {
        .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV};
    int rc = getaddrinfo(ep->host, ep->port, &hints, &k->addrs);
    if (rc != 0) {
        k->addrs = NULL;
        snprintf(why, why_size, "%s: %s", ep->text, gai_strerror(rc));
        return -1;
    }
    k->addr_next = k->addrs;
    return 0;
}

void client__conn_connect(struct conn *k, int64_t now_ms)
{
    char why[WHY_MAX];
    assert(k->state == CONN_DOWN && k->fd < 0 && k->addr_next != NULL);
    const struct addrinfo *ai = k->addr_next;
    k->addr_next = ai->ai_next;
    k->fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (k->fd < 0) {
        snprintf(why, sizeof(why), "%s: socket: %s", k->target, strerror(errno));
        conn_fail(k, now_ms, CONN_FAIL_CONNECT, why);
        return;
    }
    int one = 1;
    (void)setsockopt(k->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (connect(k->fd, ai->ai_addr, ai->ai_addrlen) != 0 && errno != EINPROGRESS) {
        snprintf(why, sizeof(why), "%s: connect: %s", k->target, strerror(errno));
        conn_fail(k, now_ms, CONN_FAIL_CONNECT, why);
        return;
    }
    k->state = CONN_CONNECTING;
}

void client__conn_send_hello(struct conn *k, uint64_t seq, int64_t now_ms)
{
    struct rpc_request hello;
    memset(&hello, 0, sizeof(hello));
    hello.seq = k->hello_seq = seq;
    hello.op = RPC_OP_HELLO;
    hello.u.hello.version = RPC_PROTOCOL_VERSION;
    client__copy_text(hello.u.hello.token, sizeof(hello.u.hello.token), k->client->token);
    if (rpc_request_encode(&k->out, &hello) != 0) {
        k->out.failed = false;
        conn_fail(k, now_ms, CONN_FAIL_NOMEM, "out of memory encoding HELLO");
        return;
    }
    k->state = CONN_HELLO;
    client__conn_flush(k, now_ms);
}

/* Drive the TLS handshake as far as the socket allows; the connection is up once it is
 * done. A failed handshake is a failed connect (the I/O thread tries the next address or
 * endpoint). */
static void conn_handshake(struct conn *k, int64_t now_ms)
{
    char text[TLS_TEXT_MAX], why[WHY_MAX];
    assert(k->state == CONN_TLS && k->ssl != NULL);
    ERR_clear_error();
    int rc = SSL_connect(k->ssl);
    if (rc == 1) {
        k->tls_wait = 0;
        k->ops->up(k->ops_arg, now_ms);
        return;
    }
    int err = SSL_get_error(k->ssl, rc);
    if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
        k->tls_wait = err == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT;
        return;
    }
    bool verify_failed = client__tls_failure(
        k->ssl, &k->io, err, "handshake", client__tls_name(k->client, k->host), text, sizeof(text));
    snprintf(why, sizeof(why), "%s: %s", k->target, text);
    conn_fail(k, now_ms, CONN_FAIL_HANDSHAKE | (verify_failed ? CONN_FAIL_VERIFY : 0u), why);
}

/* The TCP connect finished (POLLOUT): check it, then start TLS, or the connection is up. */
static void conn_connected(struct conn *k, int64_t now_ms)
{
    int err = 0;
    socklen_t len = sizeof(err);
    char text[TLS_TEXT_MAX], why[WHY_MAX];
    if (getsockopt(k->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) {
        err = errno;
    }
    if (err != 0) {
        snprintf(why, sizeof(why), "%s: connect: %s", k->target, strerror(err));
        conn_fail(k, now_ms, CONN_FAIL_CONNECT, why);
        return;
    }
    if (k->client->tls_ctx == NULL) {
        k->ops->up(k->ops_arg, now_ms);
        return;
    }
    k->io.fd = k->fd;
    k->io.err = 0;
    k->ssl = client__tls_session_new(k->client, k->host, &k->io, text, sizeof(text));
    if (k->ssl == NULL) {
        snprintf(why, sizeof(why), "%s: %s", k->target, text);
        conn_fail(k, now_ms, 0, why);
        return;
    }
    k->state = CONN_TLS;
    conn_handshake(k, now_ms);
}

/*
 * Read up to `size` bytes from the connection, through TLS when it is on (one record's
 * plaintext at most). Returns the count, 0 if nothing can be read now, or -1 if the
 * connection ended or failed (why written, and *fail: enum conn_fail).
 */
static ssize_t conn_recv(struct conn *k, uint8_t *buf, size_t size, char *why, size_t why_size,
                         unsigned *fail)
{
    *fail = 0;
    if (k->ssl != NULL) {
        char text[TLS_TEXT_MAX];
        ERR_clear_error();
        int n = SSL_read(k->ssl, buf, size > INT_MAX ? INT_MAX : (int)size);
        if (n > 0) {
            k->read_wants_write = false;
            return n;
        }
        int err = SSL_get_error(k->ssl, n);
        if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
            k->read_wants_write = err == SSL_ERROR_WANT_WRITE;
            return 0;
        }
        client__tls_failure(k->ssl, &k->io, err, "read", client__tls_name(k->client, k->host), text,
                            sizeof(text));
        snprintf(why, why_size, "%s: %s", k->target, text);
        return -1;
    }
    for (;;) {
        ssize_t n = recv(k->fd, buf, size, MSG_DONTWAIT);
        if (n > 0) {
            return n;
        }
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            return 0;
        }
        snprintf(why, why_size, "%s closed the connection%s%s", k->target, n < 0 ? ": " : "",
                 n < 0 ? strerror(errno) : "");
        *fail = CONN_FAIL_CLOSED;
        return -1;
    }
}

/* Read what the socket has and hand every complete frame to the driver. */
static void conn_read(struct conn *k, int64_t now_ms)
{
    uint64_t epoch = k->epoch;
    char why[WHY_MAX];
    unsigned fail;
    if (k->chunk == NULL && (k->chunk = malloc(READ_CHUNK)) == NULL) {
        conn_fail(k, now_ms, CONN_FAIL_NOMEM, "out of memory reading a frame");
        return;
    }
    uint8_t *chunk = k->chunk;
    for (int i = 0; i < READS_PER_WAKE; i++) {
        ssize_t n = conn_recv(k, chunk, READ_CHUNK, why, sizeof(why), &fail);
        if (n == 0) {
            return;
        }
        if (n < 0) {
            conn_fail(k, now_ms, fail, why);
            return;
        }
        if (rpc_framer_feed(&k->framer, chunk, (size_t)n) != 0) {
            conn_fail(k, now_ms, CONN_FAIL_NOMEM, "out of memory reading a frame");
            return;
        }
        for (;;) {
            const uint8_t *body;
            size_t len;
            int rc = rpc_framer_next(&k->framer, &body, &len);
            if (rc == 0) {
                break;
            }
            if (rc < 0) {
                snprintf(why, sizeof(why), "%s sent a frame over %zu bytes", k->target,
                         k->client->max_frame_bytes);
                conn_fail(k, now_ms, CONN_FAIL_PROTO, why);
                return;
            }
            k->ops->frame(k->ops_arg, body, len, now_ms);
            if (k->epoch != epoch) {
                return; /* dropped while handling: the rest of the stream is void */
            }
        }
        /* The node is alive: silence is measured from now, and only while calls wait. */
        k->silent_since_ms = k->n_sent > 0 ? now_ms : 0;
        /* A short recv emptied the socket; SSL_read gives one record at a time, so TLS
         * reads on until OpenSSL says it would wait (or the bound is reached: then the
         * loop sees the socket readable, or SSL_pending(), and comes back). */
        if (k->ssl == NULL && (size_t)n < sizeof(chunk)) {
            return;
        }
    }
}

short client__conn_events(const struct conn *k)
{
    if (k->state == CONN_CONNECTING) {
        return POLLOUT;
    }
    if (k->state == CONN_TLS) {
        return k->tls_wait;
    }
    short events = POLLIN;
    if ((k->out.len > k->out_off && !k->write_wants_read) || k->read_wants_write) {
        events |= POLLOUT;
    }
    return events;
}

bool client__conn_buffered(const struct conn *k)
{
    return k->ssl != NULL && (k->state == CONN_HELLO || k->state == CONN_READY) &&
           SSL_pending(k->ssl) > 0;
}

void client__conn_io(struct conn *k, short revents, bool buffered, int64_t now_ms)
{
    if (k->state == CONN_CONNECTING) {
        conn_connected(k, now_ms);
        return;
    }
    if (k->state == CONN_TLS) {
        conn_handshake(k, now_ms);
        return;
    }
    /* A TLS write may wait for the socket readable, a TLS read for it writable. */
    bool writable = (revents & POLLOUT) || (k->write_wants_read && (revents & POLLIN));
    bool readable = (revents & (POLLIN | POLLHUP | POLLERR)) || buffered ||
                    (k->read_wants_write && (revents & POLLOUT));
    if (writable && client__conn_flush(k, now_ms) != 0) {
        return;
    }
    if (readable) {
        conn_read(k, now_ms);
    }
}
