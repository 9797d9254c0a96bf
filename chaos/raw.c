/*
 * raw.c: one short request on a raw protocol connection (wire/wire.h), for what libtally
 * does not expose: a node's state hash (RPC_OP_HASH). Plain TCP only; every step is
 * bounded by the caller's timeout.
 */
#define _GNU_SOURCE
#include "chaos.h"
#include "wire/wire.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

struct raw {
    int fd;
    int64_t deadline_us;
    uint64_t seq;
    struct rpc_framer framer;
};

static int left_ms(const struct raw *r)
{
    int64_t left = (r->deadline_us - ch_now_us()) / 1000;
    return left > 0 ? (int)left : 0;
}

static int raw_connect(struct raw *r, const char *ip, int port)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, ip, &sa.sin_addr) != 1) {
        return -1;
    }
    r->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (r->fd < 0) {
        return -1;
    }
    if (connect(r->fd, (struct sockaddr *)&sa, sizeof(sa)) != 0 && errno != EINPROGRESS) {
        return -1;
    }
    struct pollfd p = {.fd = r->fd, .events = POLLOUT};
    int err = 0;
    socklen_t len = sizeof(err);
    if (poll(&p, 1, left_ms(r)) != 1 || getsockopt(r->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 ||
        err != 0) {
        return -1;
    }
    return 0;
}

static int raw_send(struct raw *r, struct rpc_request *req)
{
    struct rpc_buf b = {0};
    req->seq = ++r->seq;
    int rv = rpc_request_encode(&b, req) == 0 ? 0 : -1;
    size_t off = 0;
    while (rv == 0 && off < b.len) {
        ssize_t n = send(r->fd, b.data + off, b.len - off, MSG_NOSIGNAL);
        if (n > 0) {
            off += (size_t)n;
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
            struct pollfd p = {.fd = r->fd, .events = POLLOUT};
            if (poll(&p, 1, left_ms(r)) == 1) {
                continue;
            }
        }
        rv = -1;
    }
    rpc_buf_free(&b);
    return rv;
}

static int raw_recv(struct raw *r, int op, struct rpc_response *resp)
{
    for (;;) {
        const uint8_t *body;
        size_t len;
        int rv = rpc_framer_next(&r->framer, &body, &len);
        if (rv < 0) {
            return -1;
        }
        if (rv == 1) {
            char why[RPC_MESSAGE_MAX + 1];
            return rpc_response_decode(body, len, op, resp, why);
        }
        struct pollfd p = {.fd = r->fd, .events = POLLIN};
        if (poll(&p, 1, left_ms(r)) != 1) {
            return -1;
        }
        uint8_t buf[4096];
        ssize_t n = recv(r->fd, buf, sizeof(buf), 0);
        if (n <= 0 || rpc_framer_feed(&r->framer, buf, (size_t)n) != 0) {
            return -1;
        }
    }
}

int raw_hash(const char *ip, int port, const char *token, int timeout_ms, uint64_t *applied,
             char hex[65])
{
    struct raw r = {.fd = -1, .deadline_us = ch_now_us() + (int64_t)timeout_ms * 1000};
    rpc_framer_init(&r.framer, RPC_FRAME_MAX);
    int rv = -1;
    struct rpc_request hello = {.op = RPC_OP_HELLO};
    struct rpc_request hash = {.op = RPC_OP_HASH};
    struct rpc_response resp;
    hello.u.hello.version = RPC_PROTOCOL_VERSION;
    snprintf(hello.u.hello.token, sizeof(hello.u.hello.token), "%s", token);
    if (raw_connect(&r, ip, port) == 0 && raw_send(&r, &hello) == 0 &&
        raw_recv(&r, RPC_OP_HELLO, &resp) == 0 && resp.status == RPC_OK &&
        raw_send(&r, &hash) == 0 && raw_recv(&r, RPC_OP_HASH, &resp) == 0 &&
        resp.status == RPC_OK) {
        *applied = resp.u.hash.applied_index;
        rpc_hex(resp.u.hash.state_hash, 32, hex);
        rv = 0;
    }
    if (r.fd >= 0) {
        close(r.fd);
    }
    rpc_framer_free(&r.framer);
    return rv;
}
