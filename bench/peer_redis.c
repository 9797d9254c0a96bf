/*
 * peer_redis.c: peer-bench's Redis backend (hiredis).
 *
 * One hash per key with fields reserved, spent and lim. The check-and-add cannot be one
 * Redis command, so it is a Lua script (run atomically by the server), called by its SHA:
 *   reserve: if reserved + amount <= lim then HINCRBY reserved amount; 1 else 0
 *   settle:  HINCRBY reserved -amount; HINCRBY spent actual
 * Durability is the server's: bench/compare runs one instance with `appendonly yes` and
 * `appendfsync always` (the AOF is fsynced before the replies of each event-loop turn go
 * out, so concurrent clients share an fsync) and one with `appendfsync everysec` (a reply
 * may be lost for up to a second on a crash).
 *
 * Connections are hiredis contexts switched to non-blocking after a blocking connect:
 * redisAppendCommand + redisBufferWrite to send, redisBufferRead +
 * redisGetReplyFromReader to collect, driven by peer-bench's epoll loop.
 */
#include "bench/peer.h"

#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

static const char RESERVE_LUA[] =
    "local v = redis.call('HMGET', KEYS[1], 'reserved', 'lim')\n"
    "local r, l, e = tonumber(v[1]), tonumber(v[2]), tonumber(ARGV[1])\n"
    "if r == nil or l == nil then return redis.error_reply('no such budget') end\n"
    "if r + e <= l then redis.call('HINCRBY', KEYS[1], 'reserved', e) return 1 end\n"
    "return 0\n";
static const char SETTLE_LUA[] = "redis.call('HINCRBY', KEYS[1], 'reserved', -tonumber(ARGV[1]))\n"
                                 "redis.call('HINCRBY', KEYS[1], 'spent', tonumber(ARGV[2]))\n"
                                 "return 1\n";

static char g_reserve_sha[64], g_settle_sha[64];

struct rconn {
    redisContext *ctx;
    const struct peer_cfg *cfg; /* borrowed */
    int op;
};

static redisContext *connect_redis(const char *target, char *err, size_t size)
{
    char host[128];
    const char *colon = strrchr(target, ':');
    if (colon == NULL || (size_t)(colon - target) >= sizeof(host)) {
        snprintf(err, size, "target must be HOST:PORT, got '%s'", target);
        return NULL;
    }
    memcpy(host, target, (size_t)(colon - target));
    host[colon - target] = '\0';
    struct timeval tv = {.tv_sec = 5};
    redisContext *ctx = redisConnectWithTimeout(host, atoi(colon + 1), tv);
    if (ctx == NULL || ctx->err) {
        snprintf(err, size, "connect %s: %s", target, ctx != NULL ? ctx->errstr : "out of memory");
        if (ctx != NULL) {
            redisFree(ctx);
        }
        return NULL;
    }
    int one = 1;
    setsockopt(ctx->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    return ctx;
}

/* Run one blocking command; returns its reply (caller frees) or NULL with `err`. */
static redisReply *cmd(redisContext *ctx, char *err, size_t size, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(ctx, fmt, ap);
    va_end(ap);
    if (r == NULL) {
        snprintf(err, size, "%s", ctx->errstr);
        return NULL;
    }
    if (r->type == REDIS_REPLY_ERROR) {
        snprintf(err, size, "%s", r->str);
        freeReplyObject(r);
        return NULL;
    }
    return r;
}

static int load_script(redisContext *ctx, const char *lua, char sha[64], char *err, size_t size)
{
    redisReply *r = cmd(ctx, err, size, "SCRIPT LOAD %s", lua);
    if (r == NULL) {
        return -1;
    }
    if (r->type != REDIS_REPLY_STRING || r->len >= 64) {
        snprintf(err, size, "SCRIPT LOAD: unexpected reply");
        freeReplyObject(r);
        return -1;
    }
    memcpy(sha, r->str, (size_t)r->len);
    sha[r->len] = '\0';
    freeReplyObject(r);
    return 0;
}

static int redis_init(const struct peer_cfg *cfg, char *err, size_t size)
{
    redisContext *ctx = connect_redis(cfg->target, err, size);
    if (ctx == NULL) {
        return -1;
    }
    int rc = 0;
    redisReply *r = cmd(ctx, err, size, "CONFIG GET appendfsync");
    if (r != NULL) {
        if (r->type == REDIS_REPLY_ARRAY && r->elements == 2) {
            fprintf(stderr, "peer-bench: redis: appendfsync %s\n", r->element[1]->str);
        }
        freeReplyObject(r);
    }
    if (load_script(ctx, RESERVE_LUA, g_reserve_sha, err, size) != 0 ||
        load_script(ctx, SETTLE_LUA, g_settle_sha, err, size) != 0) {
        rc = -1;
    }
    if (rc == 0 && cfg->setup) {
        /* Pipelined: one HSET per key, then every reply. */
        char key[PEER_KEY_MAX];
        for (uint32_t k = 0; k <= cfg->keys; k++) {
            peer_key_name(cfg, k, key);
            redisAppendCommand(ctx, "HSET %s reserved 0 spent 0 lim %lld", key,
                               (long long)cfg->limit);
        }
        for (uint32_t k = 0; k <= cfg->keys && rc == 0; k++) {
            void *reply = NULL;
            if (redisGetReply(ctx, &reply) != REDIS_OK) {
                snprintf(err, size, "HSET: %s", ctx->errstr);
                rc = -1;
            } else {
                if (((redisReply *)reply)->type == REDIS_REPLY_ERROR) {
                    snprintf(err, size, "HSET: %s", ((redisReply *)reply)->str);
                    rc = -1;
                }
                freeReplyObject(reply);
            }
        }
    }
    redisFree(ctx);
    return rc;
}

static void *redis_open(const struct peer_cfg *cfg, char *err, size_t size)
{
    redisContext *ctx = connect_redis(cfg->target, err, size);
    if (ctx == NULL) {
        return NULL;
    }
    /* From here hiredis treats EAGAIN as "later" (it checks REDIS_BLOCK). */
    int fl = fcntl(ctx->fd, F_GETFL);
    if (fl < 0 || fcntl(ctx->fd, F_SETFL, fl | O_NONBLOCK) != 0) {
        snprintf(err, size, "fcntl O_NONBLOCK failed");
        redisFree(ctx);
        return NULL;
    }
    ctx->flags &= ~REDIS_BLOCK;
    struct rconn *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        redisFree(ctx);
        snprintf(err, size, "out of memory");
        return NULL;
    }
    c->ctx = ctx;
    c->cfg = cfg;
    return c;
}

static int redis_fd(void *conn)
{
    return ((struct rconn *)conn)->ctx->fd;
}

static int fail(struct rconn *c, struct peer_answer *ans)
{
    snprintf(ans->err, sizeof(ans->err), "%s", c->ctx->errstr[0] ? c->ctx->errstr : "I/O error");
    return PEER_FAIL;
}

static int flush(struct rconn *c, struct peer_answer *ans)
{
    int done = 0;
    if (redisBufferWrite(c->ctx, &done) != REDIS_OK) {
        return fail(c, ans);
    }
    ans->want_write = !done;
    return PEER_PENDING;
}

static int collect(struct rconn *c, struct peer_answer *ans)
{
    void *reply = NULL;
    if (redisGetReplyFromReader(c->ctx, &reply) != REDIS_OK) {
        return fail(c, ans);
    }
    if (reply == NULL) {
        return PEER_PENDING;
    }
    redisReply *r = reply;
    if (r->type == REDIS_REPLY_INTEGER) {
        ans->outcome = r->integer == 1 ? PEER_GRANTED : PEER_DENIED;
        if (c->op == PEER_SETTLE && r->integer != 1) {
            ans->outcome = PEER_ERROR;
            snprintf(ans->err, sizeof(ans->err), "settle answered %lld", (long long)r->integer);
        }
    } else {
        ans->outcome = PEER_ERROR;
        snprintf(ans->err, sizeof(ans->err), "%s",
                 r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply type");
    }
    freeReplyObject(r);
    c->op = 0;
    return PEER_DONE;
}

static int redis_start(void *conn, enum peer_op op, uint32_t key, int64_t amount, int64_t actual,
                       struct peer_answer *ans)
{
    struct rconn *c = conn;
    char k[PEER_KEY_MAX];
    peer_key_name(c->cfg, key, k);
    c->op = op;
    int rc;
    if (op == PEER_RESERVE) {
        rc =
            redisAppendCommand(c->ctx, "EVALSHA %s 1 %s %lld", g_reserve_sha, k, (long long)amount);
    } else {
        rc = redisAppendCommand(c->ctx, "EVALSHA %s 1 %s %lld %lld", g_settle_sha, k,
                                (long long)amount, (long long)actual);
    }
    if (rc != REDIS_OK) {
        return fail(c, ans);
    }
    return flush(c, ans);
}

static int redis_io(void *conn, bool readable, bool writable, struct peer_answer *ans)
{
    struct rconn *c = conn;
    if (writable) {
        if (flush(c, ans) == PEER_FAIL) {
            return PEER_FAIL;
        }
    }
    if (readable && redisBufferRead(c->ctx) != REDIS_OK) {
        return fail(c, ans);
    }
    int st = collect(c, ans);
    if (st == PEER_PENDING) {
        ans->want_write = sdslen(c->ctx->obuf) > 0;
    }
    return st;
}

static void redis_close(void *conn)
{
    struct rconn *c = conn;
    if (c != NULL) {
        redisFree(c->ctx);
        free(c);
    }
}

static void redis_fini(void)
{
}

const struct peer_backend peer_redis = {
    .name = "redis",
    .init = redis_init,
    .open = redis_open,
    .fd = redis_fd,
    .start = redis_start,
    .io = redis_io,
    .close = redis_close,
    .fini = redis_fini,
};
