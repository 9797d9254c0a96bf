/*
 * peer_etcd.c: peer-bench's etcd backend: compare-and-swap transactions over etcd's v3
 * JSON API (the gRPC gateway, POST /v3/kv/txn), on plain non-blocking sockets with HTTP/1.1
 * keep-alive.
 *
 * etcd has no atomic add, so reserve and settle are the canonical CAS loop: the value of
 * key "tb/<key>" is the text "reserved spent lim", and an operation sends
 *   compare: mod_revision(key) == the revision it last saw
 *   success: put(key, the new value computed from what it saw)
 *   failure: range(key)                       (the current value, to retry with)
 * A failed compare costs a Raft round like a successful one; the failure branch carries the
 * fresh value, so a retry needs no extra read. What a client last saw of each key is kept in
 * one cache shared by every connection of the process (loaded by a range over all keys at
 * start), so a key another client just changed is usually already known. A reserve the
 * cached value would deny is confirmed by a read-only txn on the same revision.
 *
 * Why the JSON gateway and not gRPC: it is etcd's documented language-neutral API and
 * needs no generated code; it costs etcd a JSON<->protobuf translation and an in-process
 * gRPC hop per request, so etcd's figures here are a little below what a Go clientv3 gets.
 * etcdctl (a process per request) would have been far slower. Every client talks to the
 * leader (found with /v3/maintenance/status), as clientv3 ends up doing for writes.
 */
#define _GNU_SOURCE
#include "bench/benchlib.h"
#include "bench/peer.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#define PREFIX "tb/"
#define ENDPOINTS_MAX 9
#define IO_BUF (64u << 10)
#define TXN_PUTS 100 /* etcd's default --max-txn-ops is 128 */

struct cached {
    int64_t rev; /* mod_revision last seen; 0: unknown */
    int64_t reserved, spent, lim;
};

static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static struct cached *g_cache; /* [keys + 1] */
static unsigned g_nkeys;
static char g_leader[128];

struct econn {
    int fd;
    const struct peer_cfg *cfg; /* borrowed */
    /* the operation */
    int op;
    uint32_t key;
    int64_t amount, actual;
    bool check_only;    /* the txn only confirms a denial */
    struct cached next; /* what the txn's put writes (rev: the revision it compares) */
    uint32_t attempts;
    /* I/O */
    char out[4096];
    size_t out_len, out_off;
    char in[IO_BUF];
    size_t in_len;
};

/* ---- base64 ---- */

static const char B64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static size_t b64_encode(const void *data, size_t n, char *out)
{
    const unsigned char *p = data;
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16;
        if (i + 1 < n) {
            v |= (uint32_t)p[i + 1] << 8;
        }
        if (i + 2 < n) {
            v |= p[i + 2];
        }
        out[o++] = B64[(v >> 18) & 63];
        out[o++] = B64[(v >> 12) & 63];
        out[o++] = i + 1 < n ? B64[(v >> 6) & 63] : '=';
        out[o++] = i + 2 < n ? B64[v & 63] : '=';
    }
    out[o] = '\0';
    return o;
}

static int b64_val(char c)
{
    const char *p = c != '\0' ? strchr(B64, c) : NULL;
    return p != NULL ? (int)(p - B64) : -1;
}

/* Decode the base64 text at `in` up to the closing quote into `out` (size bytes, NUL
 * terminated). Returns the length or -1. */
static int b64_decode_quoted(const char *in, char *out, size_t size)
{
    size_t o = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (; *in != '"' && *in != '\0'; in++) {
        if (*in == '=') {
            continue;
        }
        int v = b64_val(*in);
        if (v < 0) {
            return -1;
        }
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (o + 1 >= size) {
                return -1;
            }
            out[o++] = (char)((acc >> bits) & 0xff);
        }
    }
    out[o] = '\0';
    return (int)o;
}

/* ---- JSON bits (the gateway's answers have a fixed shape) ---- */

/* The int64 after `name` ("\"mod_revision\":\"") at or after `from`; -1 if absent. */
static int64_t json_int(const char *from, const char *name, const char **after)
{
    const char *p = strstr(from, name);
    if (p == NULL) {
        return -1;
    }
    p += strlen(name);
    char *end = NULL;
    long long v = strtoll(p, &end, 10);
    if (after != NULL) {
        *after = end;
    }
    return (end == p) ? -1 : v;
}

/* Parse one kv of a range answer starting at `p` (at or before its "key"). Returns the
 * position after it, or NULL when there is none. */
static const char *parse_kv(const char *p, uint32_t *key, struct cached *out, bool *ok)
{
    *ok = false;
    const char *k = strstr(p, "\"key\":\"");
    if (k == NULL) {
        return NULL;
    }
    k += 7;
    char name[128];
    if (b64_decode_quoted(k, name, sizeof(name)) < 0) {
        return NULL;
    }
    const char *after = k;
    int64_t rev = json_int(k, "\"mod_revision\":\"", &after);
    const char *v = strstr(after, "\"value\":\"");
    if (rev < 0 || v == NULL) {
        return NULL;
    }
    v += 9;
    char text[128];
    if (b64_decode_quoted(v, text, sizeof(text)) < 0) {
        return NULL;
    }
    const char *end = strchr(v, '"');
    long long r, s, l;
    if (strncmp(name, PREFIX, strlen(PREFIX)) == 0 &&
        sscanf(text, "%lld %lld %lld", &r, &s, &l) == 3) {
        const char *n = name + strlen(PREFIX);
        if (strcmp(n, "hot") == 0) {
            *key = g_nkeys;
            *ok = true;
        } else if (n[0] == 'k') {
            char *e = NULL;
            unsigned long i = strtoul(n + 1, &e, 10);
            if (*e == '\0' && i < g_nkeys) {
                *key = (uint32_t)i;
                *ok = true;
            }
        }
        out->rev = rev;
        out->reserved = r;
        out->spent = s;
        out->lim = l;
    }
    return end != NULL ? end : v;
}

/* Remember what was seen of `key`, unless the cache already knows a newer revision. */
static void cache_store(uint32_t key, const struct cached *c)
{
    pthread_mutex_lock(&g_mu);
    if (c->rev > g_cache[key].rev) {
        g_cache[key] = *c;
    }
    pthread_mutex_unlock(&g_mu);
}

static struct cached cache_load(uint32_t key)
{
    pthread_mutex_lock(&g_mu);
    struct cached c = g_cache[key];
    pthread_mutex_unlock(&g_mu);
    return c;
}

/* ---- set-up (blocking) ---- */

static void key_b64(const struct peer_cfg *cfg, uint32_t key, char *out)
{
    char name[PEER_KEY_MAX], full[PEER_KEY_MAX + 8];
    peer_key_name(cfg, key, name);
    snprintf(full, sizeof(full), PREFIX "%s", name);
    b64_encode(full, strlen(full), out);
}

static int find_leader(const char *endpoints, char *err, size_t size)
{
    char copy[1024];
    snprintf(copy, sizeof(copy), "%s", endpoints);
    char body[4096];
    char *save = NULL;
    for (char *ep = strtok_r(copy, ",", &save); ep != NULL; ep = strtok_r(NULL, ",", &save)) {
        int st = bench_http(ep, "POST", "/v3/maintenance/status", "{}", 2000, body, sizeof(body));
        if (st != 200) {
            continue;
        }
        const char *h = strstr(body, "\"member_id\":\"");
        const char *l = strstr(body, "\"leader\":\"");
        if (h == NULL || l == NULL) {
            continue;
        }
        h += 13;
        l += 10;
        size_t hn = strcspn(h, "\""), ln = strcspn(l, "\"");
        if (hn == ln && strncmp(h, l, hn) == 0) {
            snprintf(g_leader, sizeof(g_leader), "%s", ep);
            return 0;
        }
    }
    snprintf(err, size, "no etcd leader among %s", endpoints);
    return -1;
}

static int etcd_init(const struct peer_cfg *cfg, char *err, size_t size)
{
    g_nkeys = cfg->keys;
    g_cache = calloc(cfg->keys + 1, sizeof(*g_cache));
    if (g_cache == NULL) {
        snprintf(err, size, "out of memory");
        return -1;
    }
    /* A fresh cluster may still be electing: give it a few seconds. */
    int rc = -1;
    for (int i = 0; i < 50 && rc != 0; i++) {
        rc = find_leader(cfg->target, err, size);
        if (rc != 0) {
            bench_sleep_s(0.2);
        }
    }
    if (rc != 0) {
        return -1;
    }
    size_t cap = 1u << 20;
    char *buf = malloc(cap), *req = malloc(cap);
    if (buf == NULL || req == NULL) {
        free(buf);
        free(req);
        snprintf(err, size, "out of memory");
        return -1;
    }
    rc = 0;
    if (cfg->setup) {
        /* Puts in txns of TXN_PUTS. */
        for (uint32_t k = 0; k <= cfg->keys && rc == 0;) {
            size_t o = (size_t)snprintf(req, cap, "{\"success\":[");
            for (unsigned j = 0; j < TXN_PUTS && k <= cfg->keys; j++, k++) {
                char kb[64], vb[128], text[96];
                key_b64(cfg, k, kb);
                int tn = snprintf(text, sizeof(text), "0 0 %lld", (long long)cfg->limit);
                b64_encode(text, (size_t)tn, vb);
                o += (size_t)snprintf(req + o, cap - o,
                                      "%s{\"request_put\":{\"key\":\"%s\",\"value\":\"%s\"}}",
                                      j ? "," : "", kb, vb);
            }
            snprintf(req + o, cap - o, "]}");
            int st = bench_http(g_leader, "POST", "/v3/kv/txn", req, 5000, buf, cap);
            if (st != 200) {
                snprintf(err, size, "set-up txn: HTTP %d: %.120s", st, buf);
                rc = -1;
            }
        }
    }
    if (rc == 0) {
        /* Load the cache: every key under the prefix. */
        char kb[32], eb[32];
        b64_encode(PREFIX, strlen(PREFIX), kb);
        char end[] = PREFIX;
        end[strlen(end) - 1]++;
        b64_encode(end, strlen(end), eb);
        snprintf(req, cap, "{\"key\":\"%s\",\"range_end\":\"%s\"}", kb, eb);
        int st = bench_http(g_leader, "POST", "/v3/kv/range", req, 5000, buf, cap);
        if (st != 200) {
            snprintf(err, size, "range: HTTP %d: %.120s", st, buf);
            rc = -1;
        } else {
            unsigned loaded = 0;
            const char *p = strstr(buf, "\"kvs\":");
            while (p != NULL) {
                uint32_t key;
                struct cached c;
                bool ok;
                p = parse_kv(p, &key, &c, &ok);
                if (ok) {
                    g_cache[key] = c;
                    loaded++;
                }
            }
            if (loaded < cfg->keys + 1) {
                snprintf(err, size, "found %u of %u keys: run with --setup", loaded, cfg->keys + 1);
                rc = -1;
            }
        }
    }
    free(buf);
    free(req);
    return rc;
}

/* ---- connections ---- */

static void *etcd_open(const struct peer_cfg *cfg, char *err, size_t size)
{
    char host[128];
    int port;
    if (bench_split_hostport(g_leader, host, sizeof(host), &port) != 0) {
        snprintf(err, size, "bad leader address %s", g_leader);
        return NULL;
    }
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) {
        snprintf(err, size, "etcd endpoints must be IPv4 literals, got %s", host);
        return NULL;
    }
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        snprintf(err, size, "connect %s: %s", g_leader, strerror(errno));
        if (fd >= 0) {
            close(fd);
        }
        return NULL;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    struct econn *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        close(fd);
        snprintf(err, size, "out of memory");
        return NULL;
    }
    c->fd = fd;
    c->cfg = cfg;
    return c;
}

static int etcd_fd(void *conn)
{
    return ((struct econn *)conn)->fd;
}

static int fail(struct peer_answer *ans, const char *fmt, const char *detail)
{
    snprintf(ans->err, sizeof(ans->err), fmt, detail);
    return PEER_FAIL;
}

static int flush(struct econn *c, struct peer_answer *ans)
{
    while (c->out_off < c->out_len) {
        ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            ans->want_write = true;
            return PEER_PENDING;
        }
        if (n < 0) {
            return fail(ans, "send: %s", strerror(errno));
        }
        c->out_off += (size_t)n;
    }
    ans->want_write = false;
    return PEER_PENDING;
}

/* Build and send the txn for the current operation from the cached value. */
static int send_txn(struct econn *c, struct peer_answer *ans)
{
    struct cached v = cache_load(c->key);
    int64_t reserved = v.reserved, spent = v.spent;
    c->check_only = false;
    if (c->op == PEER_RESERVE) {
        if (reserved + c->amount <= v.lim) {
            reserved += c->amount;
        } else {
            c->check_only = true;
        }
    } else {
        reserved -= c->amount;
        spent += c->actual;
    }
    char kb[64], vb[128], text[96], body[1024];
    key_b64(c->cfg, c->key, kb);
    int tn = snprintf(text, sizeof(text), "%lld %lld %lld", (long long)reserved, (long long)spent,
                      (long long)v.lim);
    b64_encode(text, (size_t)tn, vb);
    int bn;
    if (c->check_only) {
        bn = snprintf(body, sizeof(body),
                      "{\"compare\":[{\"result\":\"EQUAL\",\"target\":\"MOD\",\"key\":\"%s\","
                      "\"mod_revision\":\"%lld\"}],\"success\":[],"
                      "\"failure\":[{\"request_range\":{\"key\":\"%s\"}}]}",
                      kb, (long long)v.rev, kb);
    } else {
        bn = snprintf(body, sizeof(body),
                      "{\"compare\":[{\"result\":\"EQUAL\",\"target\":\"MOD\",\"key\":\"%s\","
                      "\"mod_revision\":\"%lld\"}],"
                      "\"success\":[{\"request_put\":{\"key\":\"%s\",\"value\":\"%s\"}}],"
                      "\"failure\":[{\"request_range\":{\"key\":\"%s\"}}]}",
                      kb, (long long)v.rev, kb, vb, kb);
    }
    int hn = snprintf(c->out, sizeof(c->out),
                      "POST /v3/kv/txn HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                      "Content-Length: %d\r\n\r\n%s",
                      g_leader, bn, body);
    if (hn < 0 || (size_t)hn >= sizeof(c->out)) {
        return fail(ans, "%s", "request too long");
    }
    c->out_len = (size_t)hn;
    c->out_off = 0;
    c->attempts++;
    c->next = (struct cached){.rev = v.rev, .reserved = reserved, .spent = spent, .lim = v.lim};
    return flush(c, ans);
}

static int etcd_start(void *conn, enum peer_op op, uint32_t key, int64_t amount, int64_t actual,
                      struct peer_answer *ans)
{
    struct econn *c = conn;
    c->op = op;
    c->key = key;
    c->amount = amount;
    c->actual = actual;
    c->attempts = 0;
    return send_txn(c, ans);
}

/* Locate one complete HTTP response in c->in: its status, body and total length.
 * Returns 1 complete, 0 not yet, -1 malformed. The body is NUL-terminated in place (a
 * chunked body is de-chunked in place). */
static int parse_response(struct econn *c, int *status, char **body, size_t *total)
{
    c->in[c->in_len] = '\0';
    char *sep = strstr(c->in, "\r\n\r\n");
    if (sep == NULL) {
        return c->in_len >= IO_BUF - 1 ? -1 : 0;
    }
    if (sscanf(c->in, "HTTP/1.%*d %d", status) != 1) {
        return -1;
    }
    size_t head = (size_t)(sep + 4 - c->in);
    char *cl = strcasestr(c->in, "\r\ncontent-length:");
    if (cl != NULL && cl < sep) {
        size_t len = strtoul(cl + 17, NULL, 10);
        if (head + len > IO_BUF - 1) {
            return -1;
        }
        if (c->in_len < head + len) {
            return 0;
        }
        *body = c->in + head;
        *total = head + len;
        return 1;
    }
    char *te = strcasestr(c->in, "\r\ntransfer-encoding: chunked");
    if (te == NULL || te > sep) {
        return -1;
    }
    /* Chunked: walk the chunks; when all are in, compact them after the head. */
    size_t p = head, o = head;
    for (;;) {
        char *line_end = strstr(c->in + p, "\r\n");
        if (line_end == NULL) {
            return 0;
        }
        size_t n = strtoul(c->in + p, NULL, 16);
        size_t data = (size_t)(line_end + 2 - c->in);
        if (data + n + 2 > c->in_len) {
            return 0;
        }
        if (n == 0) {
            /* final chunk (no trailers expected) */
            size_t end = data + 2;
            c->in[o] = '\0';
            *body = c->in + head;
            *total = end;
            return 1;
        }
        memmove(c->in + o, c->in + data, n);
        o += n;
        p = data + n + 2;
    }
}

static int etcd_io(void *conn, bool readable, bool writable, struct peer_answer *ans)
{
    struct econn *c = conn;
    if (writable && c->out_off < c->out_len) {
        if (flush(c, ans) == PEER_FAIL) {
            return PEER_FAIL;
        }
    }
    ans->want_write = c->out_off < c->out_len;
    if (!readable) {
        return PEER_PENDING;
    }
    for (;;) {
        if (c->in_len >= IO_BUF - 1) {
            return fail(ans, "%s", "response too large");
        }
        ssize_t n = recv(c->fd, c->in + c->in_len, IO_BUF - 1 - c->in_len, 0);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            break;
        }
        if (n <= 0) {
            return fail(ans, "recv: %s", n == 0 ? "connection closed" : strerror(errno));
        }
        c->in_len += (size_t)n;
    }
    int status = 0;
    char *body = NULL;
    size_t total = 0;
    int pr = parse_response(c, &status, &body, &total);
    if (pr < 0) {
        return fail(ans, "%s", "malformed HTTP response");
    }
    if (pr == 0) {
        return PEER_PENDING;
    }
    bool succeeded = strstr(body, "\"succeeded\":true") != NULL;
    int64_t rev = json_int(body, "\"revision\":\"", NULL);
    struct cached seen = {0};
    uint32_t seen_key = UINT32_MAX;
    bool seen_ok = false;
    if (status == 200 && !succeeded) {
        const char *kvs = strstr(body, "\"kvs\":");
        if (kvs != NULL) {
            parse_kv(kvs, &seen_key, &seen, &seen_ok);
        }
    }
    char snippet[120];
    snprintf(snippet, sizeof(snippet), "%.100s", body);
    /* drop the response from the buffer (keep-alive: nothing else can be there) */
    memmove(c->in, c->in + total, c->in_len - total);
    c->in_len -= total;

    if (status != 200) {
        ans->outcome = PEER_ERROR;
        snprintf(ans->err, sizeof(ans->err), "HTTP %d: %s", status, snippet);
        c->op = 0;
        return PEER_DONE;
    }
    if (succeeded) {
        ans->retries = c->attempts - 1;
        if (c->check_only) {
            ans->outcome = PEER_DENIED;
        } else {
            /* The compare held, so nothing changed the key between the value the put was
             * computed from and the put: the put's value at the txn's revision is exact. A
             * newer value another client already cached is kept (cache_store). */
            struct cached now = c->next;
            now.rev = rev;
            cache_store(c->key, &now);
            ans->outcome = PEER_GRANTED;
        }
        c->op = 0;
        return PEER_DONE;
    }
    /* The compare failed: learn the current value and try again. */
    if (!seen_ok || seen_key != c->key) {
        ans->outcome = PEER_ERROR;
        snprintf(ans->err, sizeof(ans->err), "txn failed without the current value: %s", snippet);
        c->op = 0;
        return PEER_DONE;
    }
    cache_store(c->key, &seen);
    if (c->attempts >= 10000) {
        ans->outcome = PEER_ERROR;
        snprintf(ans->err, sizeof(ans->err), "gave up after %u CAS attempts", c->attempts);
        c->op = 0;
        return PEER_DONE;
    }
    return send_txn(c, ans);
}

static void etcd_close(void *conn)
{
    struct econn *c = conn;
    if (c != NULL) {
        close(c->fd);
        free(c);
    }
}

static void etcd_fini(void)
{
    free(g_cache);
    g_cache = NULL;
}

const struct peer_backend peer_etcd = {
    .name = "etcd",
    .init = etcd_init,
    .open = etcd_open,
    .fd = etcd_fd,
    .start = etcd_start,
    .io = etcd_io,
    .close = etcd_close,
    .fini = etcd_fini,
};
