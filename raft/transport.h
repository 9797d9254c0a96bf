/*
 * transport.h: the peer transport of a node, one of two:
 *   - mutual TLS (raft/peer_tls.h), the default: every peer proves with a certificate of
 *     the cluster CA which member it is;
 *   - plaintext (`--peer-insecure`): libraft's raft_uv TCP transport with TCP_NODELAY on
 *     every connection (libraft 0.22.1 leaves Nagle on, which delays pipelined
 *     AppendEntries by the peer's delayed ACK). Anyone who reaches the port is believed.
 *
 * `outer` is what the node hands to raft_uv_init(); in plaintext it forwards to `tcp`,
 * whose `data` field is taken. `outer.data` is free for libraft.
 */
#ifndef TALLY_RAFT_TRANSPORT_H
#define TALLY_RAFT_TRANSPORT_H

#include "raft/peer_tls.h"

#include <raft.h>
#include <raft/uv.h>

struct node_transport {
    struct raft_uv_transport outer; /* given to raft_uv_init */
    struct raft_uv_transport tcp;   /* libraft's own (plaintext only) */
    struct node_peer_tls *tls;      /* NULL in plaintext */
    raft_uv_accept_cb accept_cb;
    raft_uv_transport_close_cb close_cb;
};

/*
 * Set up the transport on `loop`: mutual TLS with `tls` (borrowed; its files are read
 * here), or plaintext if `tls` is NULL. 0 or a RAFT_* error with the reason in `why`.
 */
int node_transport_init(struct node_transport *nt, struct uv_loop_s *loop,
                        const struct node_peer_tls_config *tls, char *why, size_t size);

/* Release the transport (after libraft closed it, or if raft_uv_init failed). */
void node_transport_close(struct node_transport *nt);

/* Peer connections refused (always 0 in plaintext). */
uint64_t node_transport_refused(const struct node_transport *nt);

#endif /* TALLY_RAFT_TRANSPORT_H */
