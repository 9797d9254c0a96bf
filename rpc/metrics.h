/*
 * metrics.h: the figures a node exposes on its HTTP endpoint, and the endpoint.
 *
 * The loop thread owns every counter; the HTTP server runs on its own thread
 * (libmicrohttpd) and must not touch loop state. So the loop thread fills a plain
 * `struct rpc_metrics` and publishes a copy with rpc_http_publish() (a few times a
 * second and on every role change); the HTTP thread answers from the last copy under a
 * mutex. Nothing in a request to /metrics can block the loop.
 *
 * Endpoints: GET /healthz (200 "ok" while the process runs), GET /readyz (200 only when
 * a leader is known and this node has applied up to the commit index it knows, 503
 * otherwise, with the reason in the body), GET /metrics (Prometheus text format 0.0.4).
 * Anything else is 404; methods other than GET/HEAD are 405.
 */
#ifndef TALLY_RPC_METRICS_H
#define TALLY_RPC_METRICS_H

#include "ledger/ledger.h"
#include "rpc/errors.h"

#include <stdbool.h>
#include <stdint.h>

#define RPC_OP_SLOTS 16          /* request counters indexed by enum rpc_op (wire/wire.h) */
#define RPC_HIST_BUCKETS 16      /* finite buckets; +Inf is `count` */
#define RPC_HTTP_STALE_MS 2000   /* /readyz fails when the last publish is older */
#define RPC_METRICS_PEERS_MAX 16 /* servers in the configuration shown by /metrics */

/* A fixed-bucket histogram: bucket[i] counts observations <= bounds[i] (not cumulative
 * here; the exporter makes them cumulative). `sum` is in the histogram's unit. */
struct rpc_histogram {
    uint64_t bucket[RPC_HIST_BUCKETS];
    uint64_t count;
    double sum;
};

/* Upper bounds: batch sizes 1, 2, 4, ... 32768 commands; commit latency 50 us .. ~1.6 s
 * doubling (in seconds). */
extern const double rpc_batch_size_bounds[RPC_HIST_BUCKETS];
extern const double rpc_commit_latency_bounds_s[RPC_HIST_BUCKETS];

/* Record one observation `v` (in the histogram's unit) against `bounds`. */
void rpc_histogram_observe(struct rpc_histogram *h, const double bounds[RPC_HIST_BUCKETS],
                           double v);

struct rpc_metrics {
    uint64_t node_id;
    /* Raft, as this node sees it. */
    uint64_t term;
    int raft_state;     /* RAFT_FOLLOWER=1, RAFT_CANDIDATE=2, RAFT_LEADER=3, 0 unknown */
    uint64_t leader_id; /* 0: no leader known */
    uint64_t commit_index;
    uint64_t peer_refused;   /* peer connections refused by the TLS transport */
    uint64_t applied_index;  /* Raft's last applied */
    bool serving;            /* leader with its barrier committed */
    int64_t clock_offset_ms; /* wall minus ledger time as this node keeps it (raft/clock.h) */
    uint64_t clock_steps;    /* times the wall clock went more than 1 s from ledger time */
    /* Leader only (n_peers 0 otherwise): how far each other server has stored the log. */
    uint64_t last_index; /* the leader's last log index */
    unsigned n_peers;
    struct rpc_peer_progress {
        uint64_t id;
        uint64_t match_index;
    } peers[RPC_METRICS_PEERS_MAX];
    /* Client traffic. */
    uint64_t requests[RPC_OP_SLOTS];   /* by op */
    uint64_t writes_ok;                /* write commands answered LEDGER_OK */
    uint64_t writes_denied;            /* reserves denied */
    uint64_t writes_failed;            /* commands answered with a ledger error */
    uint64_t denials[LEDGER_DENY_MAX]; /* by enum ledger_deny_reason */
    uint64_t not_leader;               /* requests answered NOT_LEADER */
    uint64_t unavailable;              /* requests answered UNAVAILABLE or outcome-unknown */
    uint64_t overruns;                 /* settles whose actual exceeded the estimate */
    int64_t overrun_micros;            /* their total excess */
    uint64_t lost_answer_voids;        /* voids proposed for reserves answered EINTERNAL */
    uint64_t connections_open;
    uint64_t connections_total;
    uint64_t auth_failures;
    uint64_t protocol_errors;         /* bad frames: connection closed */
    uint64_t hello_timeouts;          /* no HELLO within the deadline: closed */
    uint64_t idle_timeouts;           /* authenticated, idle past the timeout: closed */
    uint64_t refused_max_connections; /* accepted over max_connections: busy, closed */
    uint64_t refused_per_address;     /* over the per-address limit: busy, closed */
    uint64_t decode_pauses;           /* decoding stopped for output or inflight room */
    /* The HTTP endpoint's own counts (filled by the HTTP thread into its copy). */
    uint64_t http_refused_per_address;
    uint64_t http_header_timeouts;
    struct rpc_histogram batch_size;       /* commands per Raft entry (leader) */
    struct rpc_histogram commit_latency_s; /* propose to answer, seconds (leader) */
    /* Ledger. */
    uint64_t open_reservations;
    uint64_t accounts;
    /* Storage (node_space()). */
    uint64_t map_used_bytes, map_max_bytes; /* the ledger's LMDB map */
    uint64_t disk_free_bytes;               /* free on the data dir's file system */
    uint64_t storage_reserve_bytes;
    uint64_t storage_refused; /* writes answered UNAVAILABLE `storage` */
    bool storage_refusing;    /* past the reserve now */
};

struct rpc_http;

/*
 * Start the endpoint on `address` ("host:port", IPv4) in its own thread. On success
 * *out is the caller's until rpc_http_stop(). Until the first publish, /readyz answers
 * 503 and /metrics only the process's up gauge. Returns 0 or -RPC_START_E* (rpc/errors.h)
 * with a message in errmsg (errmsg_size bytes).
 */
int rpc_http_start(struct rpc_http **out, const char *address, char *errmsg, size_t errmsg_size);

/* Replace the published figures with a copy of `m` (borrowed). Any thread. */
void rpc_http_publish(struct rpc_http *h, const struct rpc_metrics *m);

/* Stop the thread, close the socket, free `h`. */
void rpc_http_stop(struct rpc_http *h);

/* The TCP port the endpoint listens on: the kernel's choice when started with port 0
 * (tests, logs), or -1 if libmicrohttpd could not tell. Any thread. Also:
 * rpc_http_stop(NULL) does nothing. */
int rpc_http_port(const struct rpc_http *h);

/* Render `m` in Prometheus text format into buf (size bytes, NUL-terminated). Returns
 * the length, or the length it would need if that is >= size (as snprintf).
 * Also: `m` may be NULL (nothing published yet: only the tally_up gauge); buf may be
 * NULL when size is 0 (to measure). */
size_t rpc_metrics_render(const struct rpc_metrics *m, char *buf, size_t size);

#endif /* TALLY_RPC_METRICS_H */
