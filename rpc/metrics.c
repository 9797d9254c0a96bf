/*
 * metrics.c: fixed-bucket histograms and the Prometheus text rendering of a
 * `struct rpc_metrics` (text exposition format 0.0.4).
 *
 * Rendering is a pure function of one plain struct: the HTTP thread renders its own
 * copy of the figures the loop thread published, so nothing here takes a lock or
 * touches loop state. Output goes through one bounded writer with snprintf semantics
 * (it counts what it would have written once the buffer is full), so a caller can size
 * its buffer with a first call and never gets a torn line it did not ask for.
 *
 * Every family gets "# HELP" and "# TYPE" lines; names are prefixed `tally_`; counters
 * end in `_total`; histogram buckets are made cumulative here (the struct keeps them
 * per bucket so that observing is one increment). Floats are printed in the shortest
 * form that reads back to the same double, with Prometheus's spelling of the specials.
 * The format assumes the "C" LC_NUMERIC locale (a decimal point), which the node never
 * changes.
 */
#include "rpc/metrics.h"

#include "wire/wire.h"

#include <assert.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const double rpc_batch_size_bounds[RPC_HIST_BUCKETS] = {
    1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768,
};

/* 50 us doubling: each literal is exactly twice the previous double (scaling by 2 is
 * exact), so the table equals 50e-6 * 2^i without the ugly digits of a computed one. */
const double rpc_commit_latency_bounds_s[RPC_HIST_BUCKETS] = {
    0.00005, 0.0001, 0.0002, 0.0004, 0.0008, 0.0016, 0.0032, 0.0064,
    0.0128,  0.0256, 0.0512, 0.1024, 0.2048, 0.4096, 0.8192, 1.6384,
};

/*
 * Count `v` in the first bucket whose bound is >= v (none: only in `count`, i.e. +Inf).
 * `bounds` must be strictly increasing; `v` must not be NaN (a NaN measurement is a bug
 * upstream and would poison `sum` forever).
 */
void rpc_histogram_observe(struct rpc_histogram *h, const double bounds[RPC_HIST_BUCKETS], double v)
{
    assert(h != NULL && bounds != NULL);
    assert(!isnan(v));
    for (int i = 0; i < RPC_HIST_BUCKETS; i++) {
        assert(i == 0 || bounds[i - 1] < bounds[i]);
        if (v <= bounds[i]) {
            h->bucket[i]++;
            break;
        }
    }
    h->count++;
    h->sum += v;
}

/* ---- The bounded writer. ---- */

/* `len` counts every byte asked for, even past `size`; buf[min(len, size - 1)] is NUL. */
struct writer {
    char *buf;
    size_t size;
    size_t len;
};

/* Append printf-style text. Once the buffer is full only the length grows. */
__attribute__((format(printf, 2, 3))) static void put(struct writer *w, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n;
    if (w->len < w->size) {
        n = vsnprintf(w->buf + w->len, w->size - w->len, fmt, ap);
    } else {
        n = vsnprintf(NULL, 0, fmt, ap);
    }
    va_end(ap);
    assert(n >= 0); /* only an encoding error, impossible with our formats */
    w->len += (size_t)n;
}

/* Append a label value with the format's escapes (backslash, quote, newline). */
static void put_label_value(struct writer *w, const char *s)
{
    for (; *s != '\0'; s++) {
        switch (*s) {
        case '\\':
            put(w, "\\\\");
            break;
        case '"':
            put(w, "\\\"");
            break;
        case '\n':
            put(w, "\\n");
            break;
        default:
            put(w, "%c", *s);
        }
    }
}

/*
 * Format `v` into out (32 bytes) as Prometheus reads floats: "+Inf", "-Inf", "NaN", or
 * the shortest of %.15g / %.17g that converts back to exactly `v`.
 */
static void format_double(double v, char out[32])
{
    if (isnan(v)) {
        snprintf(out, 32, "NaN");
    } else if (isinf(v)) {
        snprintf(out, 32, v > 0 ? "+Inf" : "-Inf");
    } else {
        snprintf(out, 32, "%.15g", v);
        if (strtod(out, NULL) != v) {
            snprintf(out, 32, "%.17g", v);
        }
    }
}

/* The "# HELP" and "# TYPE" lines of one family. */
static void put_family(struct writer *w, const char *name, const char *type, const char *help)
{
    put(w, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* A family with one unlabelled sample. */
static void put_u64(struct writer *w, const char *name, const char *type, const char *help,
                    uint64_t v)
{
    put_family(w, name, type, help);
    put(w, "%s %" PRIu64 "\n", name, v);
}

/* One sample with one label: name{label="value"} v. */
static void put_labelled(struct writer *w, const char *name, const char *label, const char *value,
                         uint64_t v)
{
    put(w, "%s{%s=\"", name, label);
    put_label_value(w, value);
    put(w, "\"} %" PRIu64 "\n", v);
}

/*
 * A histogram family: cumulative `_bucket{le=...}` for each finite bound, then
 * le="+Inf" (= count: every observation is <= +Inf), `_sum` and `_count`.
 */
static void put_histogram(struct writer *w, const char *name, const char *help,
                          const struct rpc_histogram *h, const double bounds[RPC_HIST_BUCKETS])
{
    char num[32];
    uint64_t cumulative = 0;
    put_family(w, name, "histogram", help);
    for (int i = 0; i < RPC_HIST_BUCKETS; i++) {
        cumulative += h->bucket[i];
        format_double(bounds[i], num);
        put(w, "%s_bucket{le=\"%s\"} %" PRIu64 "\n", name, num, cumulative);
    }
    /* Finite buckets never hold more than were observed; a struct that says otherwise
     * was corrupted by its producer. */
    assert(cumulative <= h->count);
    put(w, "%s_bucket{le=\"+Inf\"} %" PRIu64 "\n", name, h->count);
    format_double(h->sum, num);
    put(w, "%s_sum %s\n%s_count %" PRIu64 "\n", name, num, name, h->count);
}

/* ---- The families. ---- */

/* Role names by raft_state, as raft.h numbers them (RAFT_UNAVAILABLE=0 .. LEADER=3). */
static const char *const raft_roles[] = {"unknown", "follower", "candidate", "leader"};
#define RAFT_ROLES (int)(sizeof(raft_roles) / sizeof(raft_roles[0]))

/* Leader only: each other server's match index and how many entries it lacks. */
static void put_peers(struct writer *w, const struct rpc_metrics *m)
{
    unsigned n = m->n_peers < RPC_METRICS_PEERS_MAX ? m->n_peers : RPC_METRICS_PEERS_MAX;
    if (n == 0) {
        return; /* a family without samples would only say "not the leader" */
    }
    char id[24];
    put_family(w, "tally_raft_peer_match_index", "gauge",
               "Leader only: highest log index each other server is known to have stored.");
    for (unsigned i = 0; i < n; i++) {
        snprintf(id, sizeof(id), "%" PRIu64, m->peers[i].id);
        put_labelled(w, "tally_raft_peer_match_index", "peer", id, m->peers[i].match_index);
    }
    put_family(w, "tally_raft_peer_lag_entries", "gauge",
               "Leader only: log entries each other server lacks.");
    for (unsigned i = 0; i < n; i++) {
        uint64_t match = m->peers[i].match_index;
        snprintf(id, sizeof(id), "%" PRIu64, m->peers[i].id);
        put_labelled(w, "tally_raft_peer_lag_entries", "peer", id,
                     m->last_index > match ? m->last_index - match : 0);
    }
}

static void put_raft(struct writer *w, const struct rpc_metrics *m)
{
    put_u64(w, "tally_node_id", "gauge", "This node's Raft id.", m->node_id);
    put_u64(w, "tally_raft_term", "gauge", "Current Raft term as this node sees it.", m->term);
    put_family(w, "tally_raft_state", "gauge",
               "1 for this node's Raft role, 0 for the others (unknown: role not known).");
    int state = m->raft_state >= 0 && m->raft_state < RAFT_ROLES ? m->raft_state : 0;
    for (int i = 0; i < RAFT_ROLES; i++) {
        put_labelled(w, "tally_raft_state", "role", raft_roles[i], i == state ? 1 : 0);
    }
    put_u64(w, "tally_raft_leader_id", "gauge", "Id of the leader this node knows; 0: none.",
            m->leader_id);
    put_u64(w, "tally_raft_commit_index", "gauge", "Highest Raft index known committed.",
            m->commit_index);
    put_u64(w, "tally_peer_refused_total", "counter",
            "Peer connections refused (TLS, certificate, member id or handshake).",
            m->peer_refused);
    put_u64(w, "tally_raft_applied_index", "gauge", "Highest Raft index applied to the ledger.",
            m->applied_index);
    put_u64(w, "tally_serving", "gauge",
            "1 while this node is leader with its barrier committed (serves writes).",
            m->serving ? 1 : 0);
    put_peers(w, m);
    put_family(w, "tally_clock_offset_ms", "gauge",
               "Wall clock minus ledger time on this node, ms (ledger time slews 1 ms/s).");
    put(w, "tally_clock_offset_ms %" PRId64 "\n", m->clock_offset_ms);
    put_u64(w, "tally_clock_steps_total", "counter",
            "Times this node's wall clock went more than 1 s away from ledger time.",
            m->clock_steps);
}

static void put_traffic(struct writer *w, const struct rpc_metrics *m)
{
    static_assert(RPC_OP_MAX <= RPC_OP_SLOTS, "RPC_OP_SLOTS too small for enum rpc_op");
    put_family(w, "tally_requests_total", "counter", "Client requests received, by op.");
    for (int op = 1; op < RPC_OP_MAX; op++) {
        put_labelled(w, "tally_requests_total", "op", rpc_op_name(op), m->requests[op]);
    }
    put_family(w, "tally_writes_total", "counter",
               "Write commands answered, by result (ok, denied reserve, ledger error).");
    put_labelled(w, "tally_writes_total", "result", "ok", m->writes_ok);
    put_labelled(w, "tally_writes_total", "result", "denied", m->writes_denied);
    put_labelled(w, "tally_writes_total", "result", "failed", m->writes_failed);
    put_family(w, "tally_denials_total", "counter", "Reserves denied, by reason.");
    for (int r = 1; r < LEDGER_DENY_MAX; r++) {
        put_labelled(w, "tally_denials_total", "reason", ledger_deny_reason_name(r), m->denials[r]);
    }
    put_u64(w, "tally_not_leader_total", "counter", "Requests answered NOT_LEADER.", m->not_leader);
    put_u64(w, "tally_unavailable_total", "counter",
            "Requests answered UNAVAILABLE or with an unknown outcome.", m->unavailable);
    put_u64(w, "tally_overruns_total", "counter",
            "Settles whose actual cost exceeded the reserved estimate.", m->overruns);
    put_family(w, "tally_overrun_micros_total", "counter",
               "Total excess of actual cost over estimate in those settles, micros.");
    put(w, "tally_overrun_micros_total %" PRId64 "\n", m->overrun_micros);
    put_u64(w, "tally_lost_answer_voids_total", "counter",
            "Voids proposed for reserves whose answer was lost to an internal error.",
            m->lost_answer_voids);
}

static void put_connections(struct writer *w, const struct rpc_metrics *m)
{
    put_u64(w, "tally_connections_open", "gauge", "Client connections open now.",
            m->connections_open);
    put_u64(w, "tally_connections_total", "counter", "Client connections accepted.",
            m->connections_total);
    put_u64(w, "tally_auth_failures_total", "counter", "HELLOs refused (bad token or version).",
            m->auth_failures);
    put_u64(w, "tally_protocol_errors_total", "counter", "Connections closed for a bad frame.",
            m->protocol_errors);
    put_u64(w, "tally_hello_timeouts_total", "counter",
            "Connections closed for not saying HELLO within the deadline.", m->hello_timeouts);
    put_u64(w, "tally_idle_timeouts_total", "counter",
            "Authenticated connections closed for being idle past the idle timeout.",
            m->idle_timeouts);
    put_family(w, "tally_connections_refused_total", "counter",
               "Client connections refused (answered busy and closed), by limit.");
    put_labelled(w, "tally_connections_refused_total", "limit", "max_connections",
                 m->refused_max_connections);
    put_labelled(w, "tally_connections_refused_total", "limit", "per_address",
                 m->refused_per_address);
    put_u64(w, "tally_decode_pauses_total", "counter",
            "Times a connection's decoding paused for unread answers or requests in flight.",
            m->decode_pauses);
    put_u64(w, "tally_http_connections_refused_total", "counter",
            "HTTP connections refused for the per-address limit.", m->http_refused_per_address);
    put_u64(w, "tally_http_header_timeouts_total", "counter",
            "HTTP connections closed before their request headers arrived in time.",
            m->http_header_timeouts);
}

static void put_ledger(struct writer *w, const struct rpc_metrics *m)
{
    put_histogram(w, "tally_batch_size", "Commands per Raft entry proposed by this leader.",
                  &m->batch_size, rpc_batch_size_bounds);
    put_histogram(w, "tally_commit_latency_seconds",
                  "Time from proposing a command to answering it, seconds (leader).",
                  &m->commit_latency_s, rpc_commit_latency_bounds_s);
    put_u64(w, "tally_open_reservations", "gauge", "Reservations held and not yet settled.",
            m->open_reservations);
    put_u64(w, "tally_accounts", "gauge", "Accounts in the ledger.", m->accounts);
}

static void put_storage(struct writer *w, const struct rpc_metrics *m)
{
    put_u64(w, "tally_ledger_map_used_bytes", "gauge",
            "High-water mark of the ledger's LMDB map, bytes.", m->map_used_bytes);
    put_u64(w, "tally_ledger_map_max_bytes", "gauge",
            "The most the ledger's LMDB map may grow to (--max-ledger-bytes), bytes.",
            m->map_max_bytes);
    put_u64(w, "tally_disk_free_bytes", "gauge",
            "Bytes available on the file system of the data directory.", m->disk_free_bytes);
    put_u64(w, "tally_storage_reserve_bytes", "gauge",
            "The storage reserve (--storage-reserve-bytes), bytes.", m->storage_reserve_bytes);
    put_u64(w, "tally_storage_refusing", "gauge",
            "1 while the map or the disk is past the reserve (a leader refuses writes).",
            m->storage_refusing ? 1 : 0);
    put_u64(w, "tally_storage_refused_total", "counter",
            "Writes answered UNAVAILABLE with reason storage.", m->storage_refused);
}

/*
 * Render `m` (borrowed; NULL: nothing published yet, only tally_up) into buf (size
 * bytes, NUL-terminated when size > 0; buf may be NULL when size is 0). Returns the
 * full length as snprintf does.
 */
size_t rpc_metrics_render(const struct rpc_metrics *m, char *buf, size_t size)
{
    assert(buf != NULL || size == 0);
    struct writer w = {.buf = buf, .size = size, .len = 0};
    if (size > 0) {
        buf[0] = '\0';
    }
    put_u64(&w, "tally_up", "gauge", "1 while the tally node process runs.", 1);
    if (m != NULL) {
        put_raft(&w, m);
        put_traffic(&w, m);
        put_connections(&w, m);
        put_ledger(&w, m);
        put_storage(&w, m);
    }
    return w.len;
}
