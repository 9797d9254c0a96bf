/*
 * peer.h: the backends of peer-bench, the load generator that runs tally-bench's workload
 * against the systems tally is compared with (bench/compare).
 *
 * Every backend offers the same two operations on a budget row of key "k<i>" (or "hot"):
 *   reserve(key, amount): reserved += amount if reserved + amount <= limit (atomically);
 *                         granted when it did, denied when the limit said no;
 *   settle(key, amount, actual): reserved -= amount, spent += actual.
 * and does them over its own non-blocking connections, one per client, driven by
 * peer-bench's epoll loop: start() sends an operation, io() is called when the socket is
 * ready and says when the answer is in. So the peers get what tally-bench gives tally:
 * no thread per client, no blocking, every client's request on the wire at once.
 */
#ifndef TALLY_BENCH_PEER_H
#define TALLY_BENCH_PEER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PEER_KEY_MAX 32

struct peer_cfg {
    const char *target; /* backend-specific address (see each backend) */
    unsigned keys;      /* k0 .. k<keys-1>, plus "hot" */
    int64_t limit;      /* every row's limit (huge: nothing is denied by default) */
    bool setup;         /* (re)create the rows before running */
};

enum peer_op { PEER_RESERVE = 1, PEER_SETTLE = 2 };

/* io()'s answer. */
enum peer_status {
    PEER_PENDING = 0, /* keep waiting (see want_write) */
    PEER_DONE = 1,    /* the operation finished: see outcome */
    PEER_FAIL = -1,   /* the connection is unusable: the client stops (message in err) */
};

enum peer_outcome { PEER_GRANTED = 0, PEER_DENIED = 1, PEER_ERROR = 3 };

struct peer_answer {
    int outcome;      /* enum peer_outcome (PEER_DONE only) */
    bool want_write;  /* the connection has bytes to send: poll for EPOLLOUT too */
    uint32_t retries; /* CAS attempts beyond the first (etcd) */
    char err[200];    /* PEER_FAIL, or PEER_ERROR's reason */
};

struct peer_backend {
    const char *name;
    /* Once, before any open: check the target, create the rows when cfg->setup, and prepare
     * what every connection shares (scripts, the key cache). 0, or -1 with `err`. */
    int (*init)(const struct peer_cfg *cfg, char *err, size_t size);
    /* A new connection, ready for start() (blocking connect; non-blocking afterwards).
     * NULL with `err` on failure. */
    void *(*open)(const struct peer_cfg *cfg, char *err, size_t size);
    int (*fd)(void *conn);
    /* Begin one operation (none may be in progress) on key index `key` (cfg->keys: the hot
     * one); fills `ans` like io() (it may finish at once: PEER_DONE). */
    int (*start)(void *conn, enum peer_op op, uint32_t key, int64_t amount, int64_t actual,
                 struct peer_answer *ans);
    /* The socket is readable and/or writable. */
    int (*io)(void *conn, bool readable, bool writable, struct peer_answer *ans);
    void (*close)(void *conn);
    void (*fini)(void);
};

/* The row name of key index `key` (`cfg->keys` names the hot one) into `out`. */
void peer_key_name(const struct peer_cfg *cfg, uint32_t key, char out[PEER_KEY_MAX]);

extern const struct peer_backend peer_etcd;
#ifdef PEER_HAVE_PQ
extern const struct peer_backend peer_postgres;
#endif
#ifdef PEER_HAVE_HIREDIS
extern const struct peer_backend peer_redis;
#endif

#endif /* TALLY_BENCH_PEER_H */
