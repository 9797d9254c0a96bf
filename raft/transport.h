/*
 * transport.h: the peer transport of a node: libraft's raft_uv TCP transport with
 * TCP_NODELAY on every connection (libraft 0.22.1 leaves Nagle on, which delays
 * pipelined AppendEntries by the peer's delayed ACK).
 *
 * `outer` is what the node hands to raft_uv_init(); it forwards to `tcp`. The `data`
 * field of `tcp` is taken; `outer.data` is free for libraft.
 */
#ifndef TALLY_RAFT_TRANSPORT_H
#define TALLY_RAFT_TRANSPORT_H

#include <raft.h>
#include <raft/uv.h>

struct node_transport {
    struct raft_uv_transport outer; /* given to raft_uv_init */
    struct raft_uv_transport tcp;   /* libraft's own */
    raft_uv_accept_cb accept_cb;
    raft_uv_transport_close_cb close_cb;
};

/* Set up both transports on `loop`. 0 or a RAFT_* error. */
int node_transport_init(struct node_transport *nt, struct uv_loop_s *loop);

/* Release the TCP transport (after libraft closed it, or if raft_uv_init failed). */
void node_transport_close(struct node_transport *nt);

#endif /* TALLY_RAFT_TRANSPORT_H */
