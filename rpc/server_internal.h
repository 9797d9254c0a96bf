/*
 * server_internal.h: what the files of the client-facing server share, and nothing else
 * (rpc/server.h is the contract).
 *
 * The one idea: a connection is not a gateway. The server is four files, one concern
 * each, all on the node's loop thread:
 *   - listener.c: the listener, connection lifetimes, reading and framing, output
 *     buffers, the once-per-iteration flush and backpressure;
 *   - handle.c: what each decoded request does and the answer it gets (writes, reads,
 *     status, membership), and the requests waiting for the node;
 *   - auth.c: token files, HELLO, client-certificate roles, role/op permissions;
 *   - server.c: the life cycle (start, metrics, close).
 * The structs below are shared by all four; the functions are the only calls that cross
 * files. Everything else is static in its file.
 */
#ifndef TALLY_RPC_SERVER_INTERNAL_H
#define TALLY_RPC_SERVER_INTERNAL_H

#include "rpc/server.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#define RPC__READ_CHUNK_BYTES (64u << 10)
/* Answers a connection may have waiting (appended, or handed to uv_write and not yet
 * written) before the server stops decoding its frames; decoding resumes at half. */
#define RPC__OUTPUT_BYTES_MAX (4u << 20)
#define RPC__ADDR_BUCKETS 1024u /* hash buckets of the per-address connection counts */
#define RPC__AUTH_LOG_PER_SECOND 10

struct rpc_tls;
struct rpc_tls_ctx;
struct rpc__hash_job;

/* Open connections from one IPv4 address (only while there is at least one). */
struct rpc__addr_count {
    uint32_t addr; /* network byte order */
    unsigned n;
    struct rpc__addr_count *next; /* same bucket */
};

struct rpc__conn {
    uv_tcp_t tcp;
    struct rpc_server *srv;
    struct rpc__conn *prev, *next; /* srv->conns */
    struct rpc__conn *dirty_next;  /* srv->dirty, while `dirty` */
    struct rpc_framer framer;
    struct rpc_tls *tls; /* NULL on a plain connection */
    struct rpc_buf out;  /* answers (plaintext) not yet handed to uv_write */
    size_t unsent;       /* bytes handed to uv_write and not yet written */
    int role;            /* enum rpc_role */
    char principal[LEDGER_ACTOR_MAX + 1];
    /* The token-file entry HELLO matched (a copy; zero before): a reload closes the
     * connection if the new file lacks it. */
    struct rpc_token cred;
    char scope[LEDGER_SCOPE_MAX + 1]; /* the credential's roots, "" unscoped: fixed at HELLO */
    uint64_t accepted_ms; /* loop time of accept: HELLO must succeed within hello_timeout_ms */
    uint64_t active_ms;   /* loop time of the last bytes read or written: the idle timeout */
    uint32_t addr;        /* the peer's IPv4 address, network byte order */
    unsigned inflight;    /* pending requests */
    unsigned refs;        /* handle + pending requests + writes */
    bool reading, dirty, closing, close_after_flush, shut;
    bool addr_counted;  /* counted in srv->addrs (released when it closes) */
    bool processing;    /* inside conn_process: it does not nest */
    bool decode_paused; /* frames left in the framer for want of output or inflight room */
};

struct rpc_server {
    uv_loop_t *loop;
    struct node *node;
    uv_tcp_t listener;
    uv_check_t check;
    uv_idle_t idle;
    uv_timer_t sweep_timer; /* closes connections past the HELLO deadline or idle */
    unsigned open_handles;  /* handles not yet closed, + 1 while a HASH runs */
    struct rpc_token *tokens;
    size_t n_tokens;
    rpc_log_fn *log;
    /* Failed-login lines: at most RPC__AUTH_LOG_PER_SECOND per second of loop time; the
     * rest are counted and the count goes on the next line logged. */
    uint64_t auth_log_second;
    unsigned auth_log_lines;
    uint64_t auth_log_suppressed;
    struct rpc_tls_ctx *tls_ctx; /* NULL: plain TCP */
    struct rpc_member members[RPC_MEMBERS_MAX];
    unsigned n_members;
    size_t max_frame;
    unsigned max_inflight, max_connections, max_connections_per_address;
    uint64_t hello_timeout_ms, idle_timeout_ms;
    struct rpc__addr_count *addrs[RPC__ADDR_BUCKETS];
    struct rpc__hash_job *hash_job; /* the one HASH running on the thread pool, or NULL */
    struct rpc__conn *conns;
    struct rpc__conn *dirty;
    unsigned n_conns;
    unsigned refs; /* 1 while open + 1 per connection alive */
    bool closing;
    void (*close_cb)(void *);
    void *close_data;
    char read_buf[RPC__READ_CHUNK_BYTES];
    bool read_buf_busy;
    struct rpc_metrics m; /* traffic counters only; Raft figures filled on demand */
};

/* ---- listener.c: deadlines ---- */

/* Every quarter of the shorter of the two deadlines: close each connection that has not
 * said HELLO (successfully) within hello_timeout_ms of its accept, and each
 * authenticated one with no request in flight that has neither read nor written a byte
 * for idle_timeout_ms. */
void rpc__sweep_cb(uv_timer_t *t);

/* ---- server.c ---- */

/* Drop one reference on `s`; the last one frees it (tokens and TLS context too). */
void rpc__server_release(struct rpc_server *s);

/* One of the server's handles closed, or its HASH job ended: the last one, once the
 * server is closing, calls the close callback and drops the server's own reference. */
void rpc__server_handle_done(struct rpc_server *s);

/* ---- hash.c ---- */

/* Answer HASH: the ledger's state hash is computed on libuv's thread pool, from a read
 * transaction of its own, and answered when done. One at a time per server: a HASH
 * that arrives while another runs is answered RPC_EBUSY. */
void rpc__hash_start(struct rpc__conn *c, const struct rpc_request *req);

/* ---- listener.c ---- */

/* Drop one reference on `c`; the last one frees it and releases its server. */
void rpc__conn_release(struct rpc__conn *c);

/* Unlink `c` from its server and close its handle (no-op if already closing). Requests
 * in flight keep `c` alive, marked closing, until they end. */
void rpc__conn_close(struct rpc__conn *c);

/* Have `c`'s output written at the end of this loop iteration (takes a reference until
 * then; no-op if already scheduled or closing). */
void rpc__conn_schedule_flush(struct rpc__conn *c);

/* Stop reading `c` (no-op if not reading). */
void rpc__conn_read_stop(struct rpc__conn *c);

/* Stop or resume reading `c` by its requests in flight and its unsent output. */
void rpc__conn_backpressure_update(struct rpc__conn *c);

/* The listener's connection callback (uv_listen); `listener->data` is the server. */
void rpc__accept_cb(uv_stream_t *listener, int status);

/* Take every connection off the server's dirty list, write its output (a closing
 * connection writes nothing) and drop the reference the list held on it. */
void rpc__flush_dirty(struct rpc_server *s);

/* The server's uv_check callback: write every connection's accumulated answers. */
void rpc__flush_check_cb(uv_check_t *h);

/* ---- handle.c ---- */

/* Append an error answer to `c`'s output (counting not_leader and unavailable; a
 * NOT_LEADER answer names the leader); `close` also stops reading and ends the
 * connection once the answer is written. */
void rpc__answer_error(struct rpc__conn *c, uint64_t seq, int status, const char *message,
                       bool close);

/* A success answer to `seq` starts here, as an error (RPC_EINTERNAL, "no answer was
 * decided"): the path that fills the payload sets RPC_OK, so one that forgot to answers
 * an error, never an empty success. */
struct rpc_response rpc__answer_begin(uint64_t seq);

/* Append the answer `resp` (borrowed) to op `op` to `c`'s output; an answer that cannot
 * be encoded becomes RPC_EINTERNAL (then returns false). */
bool rpc__answer(struct rpc__conn *c, int op, const struct rpc_response *resp);

/* Count, authorize and carry out one decoded request (borrowed; copied if it has to
 * wait for the node). Every request gets exactly one answer, unless `c` closes first. */
void rpc__handle_request(struct rpc__conn *c, const struct rpc_request *req);

/* ---- auth.c ---- */

/* Whether `c` may make `req`: it must have said HELLO first, and its role must allow
 * the op. If not, the refusal is answered (RPC_EAUTH closes the connection) and the
 * result is false. */
bool rpc__auth_check(struct rpc__conn *c, const struct rpc_request *req);

/* Answer HELLO: fix `c`'s role and principal from the bearer token, or, with no token
 * on a TLS connection, from the client certificate. A second HELLO is RPC_EBADREQ; a
 * bad version, token or certificate is RPC_EAUTH and closes the connection. */
void rpc__auth_hello(struct rpc__conn *c, const struct rpc_request *req);

/* `c`'s TLS session failed: if a client certificate did not verify, log the failed
 * login (the rest of the failure is the listener's). */
void rpc__auth_tls_failed(struct rpc__conn *c);

#endif /* TALLY_RPC_SERVER_INTERNAL_H */
