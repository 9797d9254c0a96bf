/*
 * server.h: the client-facing server of a node: a libuv listener speaking the protocol
 * of wire/wire.h on the node's loop thread.
 *
 * The one idea: the server never batches by itself. Every write it decodes becomes a
 * node_propose() call at once, and the node turns every command proposed during one
 * loop iteration into one Raft entry (group commit), so all clients' writes that
 * arrived together share one fsync. Answers are appended to their connection's output
 * buffer and flushed once per loop iteration, so a pipelining client gets many answers
 * per write(2).
 *
 * Bounds: a frame is at most max_frame bytes (checked before anything is allocated);
 * a connection has at most max_inflight requests waiting for an answer, after which the
 * server stops reading it until answers drain (backpressure, without blocking the loop);
 * so does a connection with more than 4 MiB of answers unread, and frames already read
 * wait undecoded meanwhile; at most max_connections connections are open, and at most
 * max_connections_per_address from one address. A connection must say HELLO within
 * hello_timeout_ms and, once authenticated, is closed after idle_timeout_ms idle.
 *
 * Authentication: the first frame must be HELLO with a bearer token whose SHA-256 is in
 * the token list; that fixes the connection's role and principal (recorded as the actor
 * of every command). Any other first frame, or a bad token, gets RPC_EAUTH and the
 * connection is closed.
 */
#ifndef TALLY_RPC_SERVER_H
#define TALLY_RPC_SERVER_H

#include "raft/node.h"
#include "rpc/metrics.h"
#include "wire/wire.h"

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#define RPC_TOKEN_NAME_MAX 48
#define RPC_IDLE_TIMEOUT_MS 300000 /* default idle timeout of an authenticated connection */
#define RPC_PER_ADDRESS_DIVISOR 16 /* default per-address limit: max_connections / this */
#define RPC_TOKENS_MAX 1024

/* One accepted credential: a bearer token or a client certificate, of which only the
 * SHA-256 is kept. Parsed entries are zeroed first, so two equal entries are equal
 * byte for byte (rpc_server_set_tokens compares them with memcmp). */
struct rpc_token {
    uint8_t sha256[32]; /* of the bearer token, or (cert) of the certificate's DER */
    bool cert;          /* the line said cert:HEX: only a client certificate matches */
    int role;           /* enum rpc_role */
    char name[RPC_TOKEN_NAME_MAX + 1]; /* the principal: [A-Za-z0-9._:@-], 1..48 bytes */
    char scope[LEDGER_SCOPE_MAX + 1];  /* root accounts joined by ','; "" unscoped */
};

/*
 * Read a token file: one credential per line, "ROLE NAME CREDENTIAL [scope=ROOT[,ROOT...]]"
 * (role admin, gateway or reader; CREDENTIAL the SHA-256 hex of a bearer token, or
 * "cert:" and the SHA-256 hex of a client certificate's DER; the scope, 1..
 * LEDGER_SCOPE_ROOTS_MAX valid account names, limits the credential to those root
 * accounts, none means all; '#' starts a comment; blank lines are skipped). At most
 * RPC_TOKENS_MAX entries, lines of at most 512 bytes. On success *out (malloc'd, caller
 * frees) holds *n entries. Returns 0 or -RPC_START_ECONFIG with "FILE:LINE: reason" in
 * errmsg (size bytes).
 */
int rpc_token_file_load(const char *path, struct rpc_token **out, size_t *n, char *errmsg,
                        size_t size);

/* SHA-256 of a bearer token. */
void rpc_token_hash(const char *token, uint8_t out[32]);

/* Where the server's log lines go: `level` ("info", "warn") and a logfmt `line`
 * (msg="..." key=value ...), both borrowed for the call. Runs on the loop thread. */
typedef void rpc_log_fn(const char *level, const char *line);

struct rpc_server_config {
    const char *address;            /* client listen address, IPv4 "a.b.c.d:port" */
    const struct rpc_token *tokens; /* borrowed: copied by rpc_server_start */
    size_t n_tokens;
    /* Log lines (failed logins, rate-limited); NULL: level=LEVEL LINE on stderr. */
    rpc_log_fn *log;
    /* Client addresses of the members, to name the leader in NOT_LEADER answers
     * (borrowed, copied by rpc_server_start). Members missing here are redirected by id
     * only, with an empty address. */
    const struct rpc_member *members;
    unsigned n_members;
    /* TLS on the client port (PEM files; all NULL: plain TCP). cert and key go together;
     * client_ca (may be NULL) also accepts client certificates it signed (rpc/tls.h). */
    const char *tls_cert_file;
    const char *tls_key_file;
    const char *tls_client_ca_file;
    size_t max_frame;         /* default RPC_FRAME_MAX */
    unsigned max_inflight;    /* per connection, default 4096 */
    unsigned max_connections; /* default 4096 */
    /* A connection must finish its TLS handshake and HELLO within this many ms, or it is
     * closed (0: RPC_HELLO_TIMEOUT_MS). Until HELLO succeeds its frames are bounded by
     * RPC_HELLO_FRAME_MAX, whatever max_frame says: a stranger holds at most that much. */
    unsigned hello_timeout_ms;
    /* An authenticated connection with no request in flight that neither reads nor
     * writes a byte for this many ms is closed (0: RPC_IDLE_TIMEOUT_MS). */
    unsigned idle_timeout_ms;
    /* At most this many connections from one IPv4 address are served; more are answered
     * RPC_EBUSY and closed (0: max_connections / RPC_PER_ADDRESS_DIVISOR, at least 1). */
    unsigned max_connections_per_address;
};

struct rpc_server;

/*
 * Listen on cfg->address on `loop` (borrowed) for `node` (borrowed; must outlive the
 * server). Returns 0, or -RPC_START_E* (rpc/errors.h) with a message in errmsg (size
 * bytes).
 */
int rpc_server_start(struct rpc_server **out, uv_loop_t *loop, struct node *node,
                     const struct rpc_server_config *cfg, char *errmsg, size_t size);

/*
 * Replace the accepted credentials with `tokens` (borrowed; copied), as a reload of the
 * token file. Every connection authenticated with an entry that is not in the new set,
 * byte for byte (removed, or its role or name changed), is closed at once; its requests
 * in flight get no answer. *closed (may be NULL) gets how many were closed. Returns 0,
 * or -RPC_START_ENOMEM with the old set and every connection kept.
 */
int rpc_server_set_tokens(struct rpc_server *s, const struct rpc_token *tokens, size_t n,
                          unsigned *closed);

/* Add the server's counters and the node's Raft figures to `m` (caller's). */
void rpc_server_metrics(struct rpc_server *s, struct rpc_metrics *m);

/*
 * Stop listening, close every connection (requests in flight get no answer), free the
 * server, then call cb(data) (cb may be NULL). Call before node_close(); every node
 * callback still pending for the server is answered into the void.
 */
void rpc_server_close(struct rpc_server *s, void (*cb)(void *data), void *data);

#endif /* TALLY_RPC_SERVER_H */
