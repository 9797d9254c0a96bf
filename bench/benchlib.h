/*
 * benchlib.h: what tally-bench and peer-bench share: a log-bucketed latency histogram,
 * the monotonic clock, the report (a plain table or one flat JSON object) and small
 * option-parsing helpers.
 *
 * The histogram is HDR-style: a value v (nanoseconds) goes to the power-of-two range
 * [2^k, 2^(k+1)) that holds it, split into BENCH_HIST_SUB linear sub-buckets, so every
 * bucket is at most 1/BENCH_HIST_SUB (3.1%) of its values wide. Recording is a shift, a
 * count-leading-zeros and an increment: no sorting, no allocation, bounded memory, and
 * two histograms merge by adding their buckets. A percentile is the upper edge of the
 * bucket that holds it (clamped to the largest value seen), so it is never understated by
 * more than nothing and never overstated by more than 3.1%.
 */
#ifndef TALLY_BENCH_BENCHLIB_H
#define TALLY_BENCH_BENCHLIB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define BENCH_HIST_SUB_BITS 5
#define BENCH_HIST_SUB (1u << BENCH_HIST_SUB_BITS) /* linear sub-buckets per power of two */
/* Values below BENCH_HIST_SUB get one bucket each; then (64 - SUB_BITS) ranges of SUB. */
#define BENCH_HIST_BUCKETS ((64u - BENCH_HIST_SUB_BITS + 1u) * BENCH_HIST_SUB)

struct bench_hist {
    uint64_t count;
    uint64_t sum_ns; /* saturating: a mean over 584 years of latency is not needed */
    uint64_t min_ns, max_ns;
    uint64_t bucket[BENCH_HIST_BUCKETS];
};

/* Empty `h`. */
void bench_hist_init(struct bench_hist *h);

/* Count one value of `ns` nanoseconds. */
void bench_hist_add(struct bench_hist *h, uint64_t ns);

/* Add every count of `src` into `dst`. */
void bench_hist_merge(struct bench_hist *dst, const struct bench_hist *src);

/* The value at quantile `q` (0 < q <= 1) in nanoseconds: the upper edge of the bucket
 * holding the ceil(q * count)-th smallest value, at most max_ns. 0 for an empty histogram. */
uint64_t bench_hist_quantile(const struct bench_hist *h, double q);

/* Mean in nanoseconds (0 when empty). */
double bench_hist_mean(const struct bench_hist *h);

/* CLOCK_MONOTONIC in nanoseconds. */
uint64_t bench_now_ns(void);

/* Sleep `seconds` (fractions allowed), restarting after signals. */
void bench_sleep_s(double seconds);

/* The figures of one run, as both programs print them. */
struct bench_report {
    const char *system;   /* "tally", "postgres", "redis", "etcd" */
    const char *variant;  /* e.g. "appendfsync=always"; "" for none */
    unsigned clients;     /* closed loops */
    unsigned connections; /* client connections used */
    unsigned keys;        /* accounts drawn from uniformly; 1 for --hot */
    bool hot;             /* every operation on one hot key */
    double warmup_s;
    double duration_s; /* measured window */
    struct bench_hist reserve, settle;
    uint64_t granted, denied, unavailable, errors;
    uint64_t settle_errors;
    uint64_t retries;     /* peers: CAS retries (etcd); tally: client re-sends */
    double batch_mean;    /* commands per Raft entry; < 0 when unknown */
    uint64_t batch_cmds;  /* commands proposed during the run (delta) */
    uint64_t batch_count; /* Raft entries proposed during the run (delta) */
    char first_error[256];
};

/* Print `r` as a plain table (json false) or one JSON object on one line, to stdout. */
void bench_report_print(const struct bench_report *r, bool json);

/* Parse a positive number / unsigned option value; exit 2 with a message when bad. */
double bench_parse_seconds(const char *opt, const char *value);
unsigned bench_parse_uint(const char *opt, const char *value, unsigned min, unsigned max);

/*
 * One blocking HTTP/1.0 request to `hostport` ("a.b.c.d:port" or "name:port") with
 * `method`, `path` and `body` (NULL: none; sent as application/json), waiting at most
 * `timeout_ms` for each step. On success returns the HTTP status and writes the response
 * body (NUL-terminated, cut at `size` - 1 bytes) to `out`; returns -1 with a reason in `out`
 * when no answer came.
 */
int bench_http(const char *hostport, const char *method, const char *path, const char *body,
               int timeout_ms, char *out, size_t size);

/* Split "host:port" into `host` (size bytes) and *port. Returns 0 or -1. */
int bench_split_hostport(const char *hostport, char *host, size_t size, int *port);

/* A fast per-thread PRNG (xorshift64*); `state` must start non-zero. */
static inline uint64_t bench_rand(uint64_t *state)
{
    uint64_t x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    return x * UINT64_C(2685821657736338717);
}

/* Uniform in [0, n), n > 0 (Lemire's multiply-shift; the bias is below 2^-32 here). */
static inline uint32_t bench_rand_below(uint64_t *state, uint32_t n)
{
    return (uint32_t)(((bench_rand(state) >> 32) * (uint64_t)n) >> 32);
}

#endif /* TALLY_BENCH_BENCHLIB_H */
