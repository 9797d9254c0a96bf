/*
 * benchlib.c: the latency histogram, the clock and the report shared by tally-bench and
 * peer-bench (see benchlib.h). Both programs print the same figures under the same names,
 * so bench/compare reads them with one parser.
 */
#define _GNU_SOURCE
#include "bench/benchlib.h"

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <netdb.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

void bench_hist_init(struct bench_hist *h)
{
    memset(h, 0, sizeof(*h));
    h->min_ns = UINT64_MAX;
}

static unsigned bucket_of(uint64_t v)
{
    if (v < BENCH_HIST_SUB) {
        return (unsigned)v;
    }
    unsigned k = 63u - (unsigned)__builtin_clzll(v); /* 2^k <= v < 2^(k+1), k >= SUB_BITS */
    unsigned shift = k - BENCH_HIST_SUB_BITS;
    unsigned sub = (unsigned)(v >> shift) - BENCH_HIST_SUB; /* 0 .. SUB-1 */
    unsigned idx = (shift + 1u) * BENCH_HIST_SUB + sub;
    assert(idx < BENCH_HIST_BUCKETS);
    return idx;
}

/* The largest value that falls into bucket `idx`. */
static uint64_t bucket_top(unsigned idx)
{
    assert(idx < BENCH_HIST_BUCKETS);
    if (idx < BENCH_HIST_SUB) {
        return idx;
    }
    unsigned shift = idx / BENCH_HIST_SUB - 1u;
    uint64_t sub = idx % BENCH_HIST_SUB;
    uint64_t low = (BENCH_HIST_SUB + sub) << shift;
    return low + ((UINT64_C(1) << shift) - 1u);
}

void bench_hist_add(struct bench_hist *h, uint64_t ns)
{
    h->bucket[bucket_of(ns)]++;
    h->count++;
    if (__builtin_add_overflow(h->sum_ns, ns, &h->sum_ns)) {
        h->sum_ns = UINT64_MAX;
    }
    if (ns < h->min_ns) {
        h->min_ns = ns;
    }
    if (ns > h->max_ns) {
        h->max_ns = ns;
    }
}

void bench_hist_merge(struct bench_hist *dst, const struct bench_hist *src)
{
    for (unsigned i = 0; i < BENCH_HIST_BUCKETS; i++) {
        dst->bucket[i] += src->bucket[i];
    }
    dst->count += src->count;
    if (__builtin_add_overflow(dst->sum_ns, src->sum_ns, &dst->sum_ns)) {
        dst->sum_ns = UINT64_MAX;
    }
    if (src->min_ns < dst->min_ns) {
        dst->min_ns = src->min_ns;
    }
    if (src->max_ns > dst->max_ns) {
        dst->max_ns = src->max_ns;
    }
}

uint64_t bench_hist_quantile(const struct bench_hist *h, double q)
{
    assert(q > 0 && q <= 1);
    if (h->count == 0) {
        return 0;
    }
    uint64_t rank = (uint64_t)ceil(q * (double)h->count);
    if (rank < 1) {
        rank = 1;
    }
    uint64_t seen = 0;
    for (unsigned i = 0; i < BENCH_HIST_BUCKETS; i++) {
        seen += h->bucket[i];
        if (seen >= rank) {
            uint64_t top = bucket_top(i);
            return top < h->max_ns ? top : h->max_ns;
        }
    }
    return h->max_ns;
}

double bench_hist_mean(const struct bench_hist *h)
{
    return h->count == 0 ? 0.0 : (double)h->sum_ns / (double)h->count;
}

uint64_t bench_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * UINT64_C(1000000000) + (uint64_t)ts.tv_nsec;
}

void bench_sleep_s(double seconds)
{
    if (seconds <= 0) {
        return;
    }
    struct timespec ts = {.tv_sec = (time_t)seconds,
                          .tv_nsec = (long)((seconds - floor(seconds)) * 1e9)};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

double bench_parse_seconds(const char *opt, const char *value)
{
    char *end = NULL;
    errno = 0;
    double v = strtod(value, &end);
    if (errno != 0 || end == value || *end != '\0' || !(v >= 0) || v > 86400) {
        fprintf(stderr, "%s: want seconds (0 .. 86400), got '%s'\n", opt, value);
        exit(2);
    }
    return v;
}

unsigned bench_parse_uint(const char *opt, const char *value, unsigned min, unsigned max)
{
    char *end = NULL;
    errno = 0;
    unsigned long v = strtoul(value, &end, 10);
    if (errno != 0 || end == value || *end != '\0' || value[0] == '-' || v < min || v > max) {
        fprintf(stderr, "%s: want an integer %u .. %u, got '%s'\n", opt, min, max, value);
        exit(2);
    }
    return (unsigned)v;
}

static double ms_of(uint64_t ns)
{
    return (double)ns / 1e6;
}

static double rate(uint64_t n, double seconds)
{
    return seconds > 0 ? (double)n / seconds : 0.0;
}

/* A number with thousands separators, for the table. */
static const char *grouped(char *buf, size_t size, double v)
{
    char digits[32];
    snprintf(digits, sizeof(digits), "%.0f", v);
    size_t n = strlen(digits), o = 0;
    for (size_t i = 0; i < n && o + 2 < size; i++) {
        if (i > 0 && (n - i) % 3 == 0) {
            buf[o++] = ',';
        }
        buf[o++] = digits[i];
    }
    buf[o] = '\0';
    return buf;
}

static void table_row(const char *name, const struct bench_hist *h, double seconds)
{
    char ops[32];
    printf("  %-8s %12s %9.3f %9.3f %9.3f %9.3f %9.3f %9.3f\n", name,
           grouped(ops, sizeof(ops), rate(h->count, seconds)), ms_of(bench_hist_quantile(h, 0.5)),
           ms_of(bench_hist_quantile(h, 0.99)), ms_of(bench_hist_quantile(h, 0.999)),
           ms_of(h->count ? h->max_ns : 0), bench_hist_mean(h) / 1e6,
           ms_of(h->count ? h->min_ns : 0));
}

static void json_hist(const char *name, const struct bench_hist *h, double seconds)
{
    printf(",\"%s_ops\":%" PRIu64 ",\"%s_per_s\":%.1f", name, h->count, name,
           rate(h->count, seconds));
    static const struct {
        const char *label;
        double q;
    } qs[] = {{"p50", 0.5}, {"p90", 0.9}, {"p99", 0.99}, {"p999", 0.999}};
    for (size_t i = 0; i < sizeof(qs) / sizeof(qs[0]); i++) {
        printf(",\"%s_%s_us\":%.1f", name, qs[i].label,
               (double)bench_hist_quantile(h, qs[i].q) / 1e3);
    }
    printf(",\"%s_max_us\":%.1f,\"%s_mean_us\":%.1f", name,
           (double)(h->count ? h->max_ns : 0) / 1e3, name, bench_hist_mean(h) / 1e3);
}

/* JSON string body of `s` (the texts here are ours or short error messages). */
static void json_str(const char *s)
{
    putchar('"');
    for (; *s != '\0'; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') {
            printf("\\%c", ch);
        } else if (ch < 0x20) {
            printf("\\u%04x", ch);
        } else {
            putchar(ch);
        }
    }
    putchar('"');
}

void bench_report_print(const struct bench_report *r, bool json)
{
    double s = r->duration_s;
    if (json) {
        printf("{\"system\":");
        json_str(r->system);
        printf(",\"variant\":");
        json_str(r->variant != NULL ? r->variant : "");
        printf(",\"clients\":%u,\"connections\":%u,\"keys\":%u,\"hot\":%s,\"warmup_s\":%.2f,"
               "\"duration_s\":%.3f",
               r->clients, r->connections, r->keys, r->hot ? "true" : "false", r->warmup_s, s);
        json_hist("reserve", &r->reserve, s);
        json_hist("settle", &r->settle, s);
        printf(",\"granted\":%" PRIu64 ",\"denied\":%" PRIu64 ",\"unavailable\":%" PRIu64
               ",\"errors\":%" PRIu64 ",\"settle_errors\":%" PRIu64 ",\"retries\":%" PRIu64,
               r->granted, r->denied, r->unavailable, r->errors, r->settle_errors, r->retries);
        if (r->batch_mean >= 0) {
            printf(",\"batch_mean\":%.2f,\"batch_commands\":%" PRIu64 ",\"batch_entries\":%" PRIu64,
                   r->batch_mean, r->batch_cmds, r->batch_count);
        } else {
            printf(",\"batch_mean\":null");
        }
        printf(",\"first_error\":");
        json_str(r->first_error);
        printf("}\n");
        fflush(stdout);
        return;
    }
    char keys[64];
    if (r->hot) {
        snprintf(keys, sizeof(keys), "all on one hot key");
    } else {
        snprintf(keys, sizeof(keys), "uniform over %u keys", r->keys);
    }
    printf("%s%s%s%s: %u client%s on %u connection%s, %s; %.1f s measured after %.1f s "
           "warm-up\n",
           r->system, r->variant != NULL && r->variant[0] ? " (" : "",
           r->variant != NULL ? r->variant : "", r->variant != NULL && r->variant[0] ? ")" : "",
           r->clients, r->clients == 1 ? "" : "s", r->connections, r->connections == 1 ? "" : "s",
           keys, s, r->warmup_s);
    printf("  %-8s %12s %9s %9s %9s %9s %9s %9s\n", "op", "ops/s", "p50 ms", "p99 ms", "p99.9 ms",
           "max ms", "mean ms", "min ms");
    table_row("reserve", &r->reserve, s);
    table_row("settle", &r->settle, s);
    char a[32], b[32];
    printf("  pairs/s %s   granted %" PRIu64 "   denied %" PRIu64 "   unavailable %" PRIu64
           "   errors %" PRIu64 " (settle %" PRIu64 ")",
           grouped(a, sizeof(a), rate(r->settle.count, s)), r->granted, r->denied, r->unavailable,
           r->errors, r->settle_errors);
    if (r->retries > 0) {
        printf("   retries %" PRIu64, r->retries);
    }
    printf("\n");
    if (r->batch_mean >= 0) {
        printf("  mean batch size %.2f commands per Raft entry (%s commands in %s entries)\n",
               r->batch_mean, grouped(a, sizeof(a), (double)r->batch_cmds),
               grouped(b, sizeof(b), (double)r->batch_count));
    }
    if (r->first_error[0] != '\0') {
        printf("  first error: %s\n", r->first_error);
    }
    fflush(stdout);
}

int bench_split_hostport(const char *hostport, char *host, size_t size, int *port)
{
    const char *colon = strrchr(hostport, ':');
    if (colon == NULL || colon == hostport || (size_t)(colon - hostport) >= size) {
        return -1;
    }
    char *end = NULL;
    long p = strtol(colon + 1, &end, 10);
    if (end == colon + 1 || *end != '\0' || p <= 0 || p > 65535) {
        return -1;
    }
    memcpy(host, hostport, (size_t)(colon - hostport));
    host[colon - hostport] = '\0';
    *port = (int)p;
    return 0;
}

int bench_http(const char *hostport, const char *method, const char *path, const char *body,
               int timeout_ms, char *out, size_t size)
{
    assert(size > 1);
    out[0] = '\0';
    char host[256], portstr[16];
    int port;
    if (bench_split_hostport(hostport, host, sizeof(host), &port) != 0) {
        snprintf(out, size, "bad address '%s'", hostport);
        return -1;
    }
    snprintf(portstr, sizeof(portstr), "%d", port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *ai = NULL;
    int rc = getaddrinfo(host, portstr, &hints, &ai);
    if (rc != 0) {
        snprintf(out, size, "%s: %s", hostport, gai_strerror(rc));
        return -1;
    }
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        freeaddrinfo(ai);
        snprintf(out, size, "socket: %s", strerror(errno));
        return -1;
    }
    struct timeval tv = {.tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    rc = connect(fd, ai->ai_addr, ai->ai_addrlen);
    freeaddrinfo(ai);
    if (rc != 0) {
        snprintf(out, size, "connect %s: %s", hostport, strerror(errno));
        close(fd);
        return -1;
    }
    size_t body_len = body != NULL ? strlen(body) : 0;
    char head[512];
    int n = snprintf(head, sizeof(head),
                     "%s %s HTTP/1.0\r\nHost: %s\r\nContent-Type: application/json\r\n"
                     "Content-Length: %zu\r\nConnection: close\r\n\r\n",
                     method, path, hostport, body_len);
    if (n < 0 || (size_t)n >= sizeof(head) || write(fd, head, (size_t)n) != n ||
        (body_len > 0 && write(fd, body, body_len) != (ssize_t)body_len)) {
        snprintf(out, size, "write %s: %s", hostport, strerror(errno));
        close(fd);
        return -1;
    }
    /* Read the whole answer into `out`; the head is dropped below. */
    size_t got = 0;
    for (;;) {
        if (got + 1 >= size) {
            break;
        }
        ssize_t r = read(fd, out + got, size - 1 - got);
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r < 0) {
            int e = errno;
            close(fd);
            snprintf(out, size, "read %s: %s", hostport, strerror(e));
            return -1;
        }
        if (r == 0) {
            break;
        }
        got += (size_t)r;
    }
    close(fd);
    out[got] = '\0';
    int status = 0;
    if (sscanf(out, "HTTP/%*d.%*d %d", &status) != 1) {
        snprintf(out, size, "%s: not an HTTP answer", hostport);
        return -1;
    }
    char *sep = strstr(out, "\r\n\r\n");
    size_t skip = sep != NULL ? (size_t)(sep + 4 - out) : got;
    memmove(out, out + skip, got - skip + 1);
    return status;
}
