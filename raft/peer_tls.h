/*
 * peer_tls.h: the peer transport with mutual TLS (see peer_tls.c for how bytes flow).
 *
 * A raft_uv_transport of its own: it listens and connects over TCP, runs a TLS handshake
 * against the cluster's CA in both directions (TLS 1.2 minimum, 1.3 preferred), checks
 * that the certificate names the member the connection is for (SAN URI
 * tally://member/<id>), reads or writes libraft's handshake inside the session, and only
 * then hands libraft a stream: one end of a socketpair, as a uv_pipe_t, whose other end
 * this transport pumps to and from the TLS session. libraft never sees an unauthenticated
 * byte.
 *
 * Refused (and counted, and logged at most once a second with the address and reason):
 * a failed TLS handshake (no certificate, another CA, expired, ...), a certificate that
 * names no member or another member than the one the handshake claims, a claimed id
 * outside the current configuration, a malformed or oversized libraft handshake, a
 * handshake not finished within NODE_PEER_HANDSHAKE_MS, a connection beyond
 * NODE_PEER_UNAUTH_MAX accepted ones still in their handshake.
 */
#ifndef TALLY_RAFT_PEER_TLS_H
#define TALLY_RAFT_PEER_TLS_H

#include <raft.h>
#include <raft/uv.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define NODE_PEER_HANDSHAKE_MS 5000             /* TCP connect + TLS + libraft handshake */
#define NODE_PEER_CIPHER_MAX (64 * 1024)        /* ciphertext held before the handshake ends */
#define NODE_PEER_QUEUED_MAX (4u * 1024 * 1024) /* bytes queued toward one side of a pump */
#define NODE_PEER_CERT_LIST_MAX (32 * 1024)     /* a peer's certificate chain */
#define NODE_PEER_UNAUTH_MAX 128                /* accepted connections still in their handshake */
#define NODE_PEER_URI_PREFIX "tally://member/"

struct node_peer_tls;

/* What the transport asks of its node. Both callbacks run on the loop thread. */
struct node_peer_tls_config {
    const char *cert_file; /* this member's certificate chain (PEM) */
    const char *key_file;  /* its key (PEM) */
    const char *ca_file;   /* the cluster CA: signs every member's certificate */
    /* Whether `id` may connect now (in the current configuration, or anyone while this
     * node knows no configuration yet: a joining node waits to be contacted). */
    bool (*is_member)(void *data, uint64_t id);
    /* One log line (`text` is logfmt fields without time or level). */
    void (*log)(void *data, const char *level, const char *text);
    void *data;
};

/*
 * Load the certificates and set up `*out` (owned by the caller until
 * node_peer_tls_free()) on `loop`; `outer` is filled as the raft_uv_transport to hand to
 * raft_uv_init (its `data` stays libraft's). 0, or a RAFT_* error with the reason (the
 * file and OpenSSL's message) in `why`.
 */
int node_peer_tls_init(struct node_peer_tls **out, struct raft_uv_transport *outer,
                       struct uv_loop_s *loop, const struct node_peer_tls_config *cfg, char *why,
                       size_t size);

/* Free what init made; after libraft closed the transport, or if raft_uv_init failed. */
void node_peer_tls_free(struct node_peer_tls *pt);

/* Connections refused since init. */
uint64_t node_peer_tls_refused(const struct node_peer_tls *pt);

/* The member id a certificate names (SAN URI tally://member/<id>), 0 if it names none or
 * more than one. `cert` is an X509 * (borrowed). */
uint64_t node_peer_cert_member(const void *cert);

#endif /* TALLY_RAFT_PEER_TLS_H */
