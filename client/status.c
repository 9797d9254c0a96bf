/*
 * status.c: tally_status(), the one call that does not go through the I/O thread: it asks
 * one named node over a short-lived connection of its own, on the caller's thread.
 */
#define _GNU_SOURCE
#include "client/tally.h"
#include "rpc/proto.h"

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

/* ---- Status of one node, on the caller's thread. ---- */

/* Wait for `events` on `fd` until `deadline_at_ms`. Returns 1 ready, 0 timed out, -1. */
static int wait_fd(int fd, short events, int64_t deadline_at_ms)
{
    for (;;) {
        int64_t left_ms = deadline_at_ms - client__mono_ms();
        if (left_ms <= 0) {
            return 0;
        }
        struct pollfd p = {.fd = fd, .events = events};
        int rc = poll(&p, 1, left_ms > 60000 ? 60000 : (int)left_ms);
        if (rc < 0 && errno == EINTR) {
            continue;
        }
        if (rc != 0) {
            return rc > 0 ? 1 : -1;
        }
    }
}

/* Connect to one of `ep`'s addresses by `deadline_at_ms`. Returns the fd or -code. */
static int direct_connect(const struct endpoint *ep, int64_t deadline_at_ms, char *why,
                          size_t why_size)
{
    struct addrinfo hints = {
        .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV};
    struct addrinfo *addrs;
    int rc = getaddrinfo(ep->host, ep->port, &hints, &addrs);
    if (rc != 0) {
        snprintf(why, why_size, "%s: %s", ep->text, gai_strerror(rc));
        return -TALLY_EUNAVAILABLE;
    }
    snprintf(why, why_size, "%s: no address", ep->text);
    for (struct addrinfo *ai = addrs; ai != NULL; ai = ai->ai_next) {
        int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            snprintf(why, why_size, "%s: socket: %s", ep->text, strerror(errno));
            continue;
        }
        int err = 0;
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
            err = errno;
            if (err == EINPROGRESS) {
                socklen_t len = sizeof(err);
                rc = wait_fd(fd, POLLOUT, deadline_at_ms);
                err = rc == 1 && getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 ? err
                      : rc == 0                                                        ? ETIMEDOUT
                                                                                       : errno;
            }
        }
        if (err == 0) {
            freeaddrinfo(addrs);
            return fd;
        }
        snprintf(why, why_size, "%s: connect: %s", ep->text, strerror(err));
        close(fd);
    }
    freeaddrinfo(addrs);
    return -TALLY_EUNAVAILABLE;
}

/* tally_status()'s own connection: a socket, and a TLS session over it when configured. */
struct direct {
    int fd;
    SSL *ssl; /* NULL: plain TCP */
    struct tls_io io;
};

/* The poll event an SSL_get_error() code waits for; 0 if it is a failure. */
static short tls_wait_events(int err)
{
    return err == SSL_ERROR_WANT_READ ? POLLIN : err == SSL_ERROR_WANT_WRITE ? POLLOUT : 0;
}

/* Run the TLS handshake on `d` with the node at `ep` by the deadline. Returns 0 or -code
 * with `why`. */
static int direct_handshake(struct tally *c, struct direct *d, const struct endpoint *ep,
                            int64_t deadline_at_ms, char *why, size_t why_size)
{
    d->io.fd = d->fd;
    d->io.err = 0;
    d->ssl = client__tls_session_new(c, ep->host, &d->io, why, why_size);
    if (d->ssl == NULL) {
        return -TALLY_EUNAVAILABLE;
    }
    for (;;) {
        ERR_clear_error();
        int rc = SSL_connect(d->ssl);
        if (rc == 1) {
            return 0;
        }
        int err = SSL_get_error(d->ssl, rc);
        short events = tls_wait_events(err);
        if (events == 0) {
            client__tls_failure(d->ssl, &d->io, err, "handshake", client__tls_name(c, ep->host),
                                why, why_size);
            return -TALLY_EUNAVAILABLE;
        }
        if (wait_fd(d->fd, events, deadline_at_ms) != 1) {
            snprintf(why, why_size, "no TLS handshake before the deadline");
            return -TALLY_EUNAVAILABLE;
        }
    }
}

/* Send `len` bytes on `d` by the deadline. Returns 0 or -1 with `why`. */
static int direct_send(struct direct *d, const uint8_t *data, size_t len, int64_t deadline_at_ms,
                       char *why, size_t why_size)
{
    size_t off = 0;
    while (off < len) {
        short events = POLLOUT;
        if (d->ssl != NULL) {
            /* After a wait, the same bytes are offered again (off has not moved). */
            size_t left = len - off;
            ERR_clear_error();
            int n = SSL_write(d->ssl, data + off, left > TLS_WRITE_MAX ? TLS_WRITE_MAX : (int)left);
            if (n > 0) {
                off += (size_t)n;
                continue;
            }
            int err = SSL_get_error(d->ssl, n);
            events = tls_wait_events(err);
            if (events == 0) {
                client__tls_failure(d->ssl, &d->io, err, "write", "", why, why_size);
                return -1;
            }
        } else {
            ssize_t n = send(d->fd, data + off, len - off, MSG_NOSIGNAL | MSG_DONTWAIT);
            if (n >= 0) {
                off += (size_t)n;
                continue;
            }
            if (errno == EINTR) {
                continue;
            }
            if (errno != EAGAIN && errno != EWOULDBLOCK) {
                snprintf(why, why_size, "cannot send the request: %s", strerror(errno));
                return -1;
            }
        }
        if (wait_fd(d->fd, events, deadline_at_ms) != 1) {
            snprintf(why, why_size, "cannot send the request before the deadline");
            return -1;
        }
    }
    return 0;
}

/* Read some bytes from `d` by the deadline (plaintext OpenSSL holds first). Returns the
 * count, or -TALLY_EUNAVAILABLE with `why`. */
static ssize_t direct_recv(struct direct *d, uint8_t *buf, size_t size, int64_t deadline_at_ms,
                           char *why, size_t why_size)
{
    for (;;) {
        short events = POLLIN;
        if (d->ssl != NULL) {
            ERR_clear_error();
            int n = SSL_read(d->ssl, buf, size > INT_MAX ? INT_MAX : (int)size);
            if (n > 0) {
                return n;
            }
            int err = SSL_get_error(d->ssl, n);
            events = tls_wait_events(err);
            if (events == 0) {
                client__tls_failure(d->ssl, &d->io, err, "read", "", why, why_size);
                return -TALLY_EUNAVAILABLE;
            }
        } else {
            ssize_t n = recv(d->fd, buf, size, MSG_DONTWAIT);
            if (n > 0) {
                return n;
            }
            if (n < 0 && errno == EINTR) {
                continue;
            }
            if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK)) {
                snprintf(why, why_size, "the node closed the connection");
                return -TALLY_EUNAVAILABLE;
            }
        }
        if (wait_fd(d->fd, events, deadline_at_ms) != 1) {
            snprintf(why, why_size, "no answer before the deadline");
            return -TALLY_EUNAVAILABLE;
        }
    }
}

/* Send `req` and read the answer to it (decoded as `op`) by the deadline. */
static int direct_exchange(struct direct *d, struct rpc_framer *fr, const struct rpc_request *req,
                           struct rpc_response *resp, int64_t deadline_at_ms, char *why,
                           size_t why_size)
{
    struct rpc_buf out = {0};
    memset(resp, 0, sizeof(*resp));
    if (rpc_request_encode(&out, req) != 0) {
        rpc_buf_free(&out);
        snprintf(why, why_size, "cannot encode the request");
        return -TALLY_ENOMEM;
    }
    int rc = direct_send(d, out.data, out.len, deadline_at_ms, why, why_size);
    rpc_buf_free(&out);
    if (rc != 0) {
        return -TALLY_EUNAVAILABLE;
    }
    for (;;) {
        const uint8_t *body;
        size_t len;
        char reason[RPC_MESSAGE_MAX + 1];
        rc = rpc_framer_next(fr, &body, &len);
        if (rc < 0) {
            snprintf(why, why_size, "the answer is larger than the frame bound");
            return -TALLY_EPROTO;
        }
        if (rc == 1) {
            if (rpc_response_decode(body, len, req->op, resp, reason) != 0 ||
                resp->seq != req->seq) {
                snprintf(why, why_size, "malformed answer: %s", reason);
                return -TALLY_EPROTO;
            }
            return 0;
        }
        uint8_t chunk[4096];
        ssize_t n = direct_recv(d, chunk, sizeof(chunk), deadline_at_ms, why, why_size);
        if (n < 0) {
            return (int)n;
        }
        if (rpc_framer_feed(fr, chunk, (size_t)n) != 0) {
            snprintf(why, why_size, "out of memory");
            return -TALLY_ENOMEM;
        }
    }
}

/* HELLO then STATUS on `d`. Returns 0 or -code with `why`. */
static int direct_status(struct tally *c, struct direct *d, int64_t deadline_at_ms,
                         struct tally_node_status *out, char *why, size_t why_size)
{
    struct rpc_framer fr;
    struct rpc_request req;
    struct rpc_response resp;
    rpc_framer_init(&fr, c->max_frame_bytes);
    memset(&req, 0, sizeof(req));
    req.seq = 1;
    req.op = RPC_OP_HELLO;
    req.u.hello.version = RPC_PROTOCOL_VERSION;
    client__copy_text(req.u.hello.token, sizeof(req.u.hello.token), c->token);
    int rc = direct_exchange(d, &fr, &req, &resp, deadline_at_ms, why, why_size);
    if (rc == 0 && resp.status != RPC_OK) {
        snprintf(why, why_size, "HELLO refused: %s: %s", rpc_status_name(resp.status),
                 resp.message);
        rc = resp.status == RPC_EAUTH ? -TALLY_EAUTH : -client__error_of_status(resp.status);
    }
    rpc_response_free(&resp);
    if (rc == 0) {
        memset(&req, 0, sizeof(req));
        req.seq = 2;
        req.op = RPC_OP_STATUS;
        rc = direct_exchange(d, &fr, &req, &resp, deadline_at_ms, why, why_size);
        if (rc == 0 && resp.status != RPC_OK) {
            snprintf(why, why_size, "%s: %s", rpc_status_name(resp.status), resp.message);
            rc = -client__error_of_status(resp.status);
        } else if (rc == 0) {
            client__status_from_wire(&resp.u.status, out);
        }
        rpc_response_free(&resp);
    }
    rpc_framer_free(&fr);
    return rc;
}

int tally_status(struct tally *c, const char *endpoint, int64_t deadline_ms,
                 struct tally_node_status *out, struct tally_result *res)
{
    struct endpoint ep;
    const char *msg;
    int code = client__check_call(c, deadline_ms, true, &msg);
    if (code != 0) {
        return client__fail_early(res, code, msg);
    }
    if (endpoint == NULL || out == NULL ||
        client__endpoint_parse(endpoint, strlen(endpoint), &ep) != 0) {
        return client__fail_early(res, TALLY_EINVAL, "endpoint is not host:port, or out is NULL");
    }
    int64_t deadline_at_ms = client__mono_ms() + (deadline_ms != 0 ? deadline_ms : c->deadline_ms);
    char why[WHY_MAX];
    int rc = direct_connect(&ep, deadline_at_ms, why, sizeof(why));
    if (rc >= 0) {
        struct direct d = {.fd = rc, .ssl = NULL};
        rc =
            c->tls_ctx != NULL ? direct_handshake(c, &d, &ep, deadline_at_ms, why, sizeof(why)) : 0;
        if (rc == 0) {
            rc = direct_status(c, &d, deadline_at_ms, out, why, sizeof(why));
        }
        SSL_free(d.ssl);
        close(d.fd);
    }
    if (res != NULL) {
        client__result_init(res, NULL);
        if (rc != 0) {
            client__result_fail(res, rc == -TALLY_EUNAVAILABLE ? TALLY_UNAVAILABLE : TALLY_ERROR,
                                -rc, "%s: %s", ep.text, why);
        }
    }
    return rc;
}
