/*
 * transport.c: the choice between the two peer transports (see transport.h), and the
 * plaintext one: libraft's TCP transport with Nagle's algorithm off.
 *
 * libraft 0.22.1's raft_uv_tcp never sets TCP_NODELAY, so a small AppendEntries written
 * right after another waits for the follower's delayed ACK (about 40 ms on Linux): a
 * quarter of all commits landed in the 25-51 ms latency bucket under load. This
 * transport forwards every call to the TCP one and sets TCP_NODELAY on each stream it
 * hands to libraft, accepted or connected.
 */
#include "raft/transport.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

/* A connect request in flight: libraft's request and callback, behind ours. */
struct connect_req {
    struct raft_uv_connect inner;
    struct raft_uv_connect *outer;
    struct node_transport *nt;
};

static void no_delay(struct uv_stream_s *stream)
{
    if (stream != NULL && stream->type == UV_TCP) {
        uv_tcp_nodelay((uv_tcp_t *)stream, 1);
    }
}

static struct node_transport *of(struct raft_uv_transport *outer)
{
    return outer->impl;
}

static int nt_init(struct raft_uv_transport *t, raft_id id, const char *address)
{
    struct node_transport *nt = of(t);
    int rv = nt->tcp.init(&nt->tcp, id, address);
    if (rv != 0) {
        memcpy(t->errmsg, nt->tcp.errmsg, sizeof(t->errmsg));
    }
    return rv;
}

static void accept_cb(struct raft_uv_transport *inner, raft_id id, const char *address,
                      struct uv_stream_s *stream)
{
    struct node_transport *nt = inner->data;
    no_delay(stream);
    nt->accept_cb(&nt->outer, id, address, stream);
}

static int nt_listen(struct raft_uv_transport *t, raft_uv_accept_cb cb)
{
    struct node_transport *nt = of(t);
    nt->accept_cb = cb;
    int rv = nt->tcp.listen(&nt->tcp, accept_cb);
    if (rv != 0) {
        memcpy(t->errmsg, nt->tcp.errmsg, sizeof(t->errmsg));
    }
    return rv;
}

static void connect_cb(struct raft_uv_connect *inner, struct uv_stream_s *stream, int status)
{
    struct connect_req *req = inner->data;
    struct raft_uv_connect *outer = req->outer;
    free(req);
    if (status == 0) {
        no_delay(stream);
    }
    outer->cb(outer, stream, status);
}

static int nt_connect(struct raft_uv_transport *t, struct raft_uv_connect *outer, raft_id id,
                      const char *address, raft_uv_connect_cb cb)
{
    struct node_transport *nt = of(t);
    struct connect_req *req = calloc(1, sizeof(*req));
    if (req == NULL) {
        return RAFT_NOMEM;
    }
    outer->cb = cb;
    req->outer = outer;
    req->nt = nt;
    req->inner.data = req;
    int rv = nt->tcp.connect(&nt->tcp, &req->inner, id, address, connect_cb);
    if (rv != 0) {
        memcpy(t->errmsg, nt->tcp.errmsg, sizeof(t->errmsg));
        free(req);
    }
    return rv;
}

static void close_cb(struct raft_uv_transport *inner)
{
    struct node_transport *nt = inner->data;
    raft_uv_transport_close_cb cb = nt->close_cb;
    if (cb != NULL) {
        cb(&nt->outer);
    }
}

static void nt_close(struct raft_uv_transport *t, raft_uv_transport_close_cb cb)
{
    struct node_transport *nt = of(t);
    nt->close_cb = cb;
    nt->tcp.close(&nt->tcp, close_cb);
}

int node_transport_init(struct node_transport *nt, struct uv_loop_s *loop,
                        const struct node_peer_tls_config *tls, char *why, size_t size)
{
    memset(nt, 0, sizeof(*nt));
    if (tls != NULL) {
        return node_peer_tls_init(&nt->tls, &nt->outer, loop, tls, why, size);
    }
    nt->tcp.version = 1; /* libraft 0.22 refuses a transport without a version */
    int rv = raft_uv_tcp_init(&nt->tcp, loop);
    if (rv != 0) {
        snprintf(why, size, "raft_uv_tcp_init: %s", raft_strerror(rv));
        return rv;
    }
    nt->tcp.data = nt;
    nt->outer.version = 1;
    nt->outer.impl = nt;
    nt->outer.init = nt_init;
    nt->outer.listen = nt_listen;
    nt->outer.connect = nt_connect;
    nt->outer.close = nt_close;
    return 0;
}

void node_transport_close(struct node_transport *nt)
{
    if (nt->tls != NULL) {
        node_peer_tls_free(nt->tls);
        nt->tls = NULL;
    } else {
        raft_uv_tcp_close(&nt->tcp);
    }
}

uint64_t node_transport_refused(const struct node_transport *nt)
{
    return nt->tls != NULL ? node_peer_tls_refused(nt->tls) : 0;
}
