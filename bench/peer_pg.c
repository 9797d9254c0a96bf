/*
 * peer_pg.c: peer-bench's PostgreSQL backend (libpq).
 *
 * One table, one row per key:
 *   budgets(key text primary key, reserved bigint, spent bigint, lim bigint)
 * reserve is the single statement a LiteLLM-style spend store would run,
 *   UPDATE budgets SET reserved = reserved + $1 WHERE key = $2 AND reserved + $1 <= lim
 * (one row updated: granted; none: denied), settle
 *   UPDATE budgets SET reserved = reserved - $1, spent = spent + $2 WHERE key = $3
 * each a prepared statement in its own implicit transaction, so each commit is durable
 * (the server runs with fsync on and synchronous_commit on: the caller checks that, see
 * bench/compare). Concurrent commits share WAL flushes (PostgreSQL's group commit).
 *
 * Connections use libpq's asynchronous calls (PQsendQueryPrepared, PQconsumeInput,
 * PQisBusy, PQgetResult) in non-blocking mode, so peer-bench's epoll loop drives them.
 */
#include "bench/peer.h"

#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define INT8OID 20
#define TEXTOID 25

struct pgconn {
    PGconn *pg;
    const struct peer_cfg *cfg; /* borrowed: peer-bench's, lives as long as the run */
    int op;
    int affected; /* rows of the last command of the operation */
    bool failed;
    char failure[160];
};

static int exec_ok(PGconn *pg, const char *sql, char *err, size_t size)
{
    PGresult *r = PQexec(pg, sql);
    ExecStatusType st = PQresultStatus(r);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
        snprintf(err, size, "%.60s: %s", sql, PQresultErrorMessage(r));
        PQclear(r);
        return -1;
    }
    PQclear(r);
    return 0;
}

/* Server notices ("table does not exist, skipping") are not the benchmark's business. */
static void ignore_notice(void *arg, const char *message)
{
    (void)arg;
    (void)message;
}

static PGconn *connect_pg(const char *conninfo, char *err, size_t size)
{
    PGconn *pg = PQconnectdb(conninfo);
    if (pg == NULL || PQstatus(pg) != CONNECTION_OK) {
        snprintf(err, size, "connect: %s", pg != NULL ? PQerrorMessage(pg) : "out of memory");
        PQfinish(pg);
        return NULL;
    }
    PQsetNoticeProcessor(pg, ignore_notice, NULL);
    return pg;
}

static int pg_init(const struct peer_cfg *cfg, char *err, size_t size)
{
    PGconn *pg = connect_pg(cfg->target, err, size);
    if (pg == NULL) {
        return -1;
    }
    /* Say what durability the server gives: the comparison is only fair with both on. */
    const char *fsync = "?", *sc = "?";
    PGresult *r1 = PQexec(pg, "SHOW fsync");
    PGresult *r2 = PQexec(pg, "SHOW synchronous_commit");
    if (PQresultStatus(r1) == PGRES_TUPLES_OK && PQntuples(r1) == 1) {
        fsync = PQgetvalue(r1, 0, 0);
    }
    if (PQresultStatus(r2) == PGRES_TUPLES_OK && PQntuples(r2) == 1) {
        sc = PQgetvalue(r2, 0, 0);
    }
    if (strcmp(fsync, "on") != 0 || strcmp(sc, "on") != 0) {
        fprintf(stderr, "peer-bench: postgres: warning: fsync=%s synchronous_commit=%s\n", fsync,
                sc);
    }
    PQclear(r1);
    PQclear(r2);
    int rc = 0;
    if (cfg->setup) {
        char sql[512];
        snprintf(sql, sizeof(sql),
                 "INSERT INTO budgets SELECT 'k' || g, 0, 0, %lld FROM generate_series(0, %u) g;"
                 "INSERT INTO budgets VALUES ('hot', 0, 0, %lld)",
                 (long long)cfg->limit, cfg->keys - 1, (long long)cfg->limit);
        if (exec_ok(pg, "DROP TABLE IF EXISTS budgets", err, size) != 0 ||
            exec_ok(pg,
                    "CREATE TABLE budgets (key text PRIMARY KEY, reserved bigint NOT NULL, "
                    "spent bigint NOT NULL, lim bigint NOT NULL)",
                    err, size) != 0 ||
            exec_ok(pg, sql, err, size) != 0 ||
            exec_ok(pg, "VACUUM ANALYZE budgets", err, size) != 0) {
            rc = -1;
        }
    }
    PQfinish(pg);
    return rc;
}

static void *pg_open(const struct peer_cfg *cfg, char *err, size_t size)
{
    PGconn *pg = connect_pg(cfg->target, err, size);
    if (pg == NULL) {
        return NULL;
    }
    static const Oid reserve_types[2] = {INT8OID, TEXTOID};
    static const Oid settle_types[3] = {INT8OID, INT8OID, TEXTOID};
    PGresult *r1 = PQprepare(pg, "reserve",
                             "UPDATE budgets SET reserved = reserved + $1 "
                             "WHERE key = $2 AND reserved + $1 <= lim",
                             2, reserve_types);
    PGresult *r2 = PQprepare(pg, "settle",
                             "UPDATE budgets SET reserved = reserved - $1, spent = spent + $2 "
                             "WHERE key = $3",
                             3, settle_types);
    bool ok = PQresultStatus(r1) == PGRES_COMMAND_OK && PQresultStatus(r2) == PGRES_COMMAND_OK;
    if (!ok) {
        snprintf(err, size, "prepare: %s%s", PQresultErrorMessage(r1), PQresultErrorMessage(r2));
    }
    PQclear(r1);
    PQclear(r2);
    if (!ok || PQsetnonblocking(pg, 1) != 0) {
        if (ok) {
            snprintf(err, size, "PQsetnonblocking: %s", PQerrorMessage(pg));
        }
        PQfinish(pg);
        return NULL;
    }
    struct pgconn *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        PQfinish(pg);
        snprintf(err, size, "out of memory");
        return NULL;
    }
    c->pg = pg;
    c->cfg = cfg;
    return c;
}

static int pg_fd(void *conn)
{
    return PQsocket(((struct pgconn *)conn)->pg);
}

static int fail(struct pgconn *c, struct peer_answer *ans)
{
    snprintf(ans->err, sizeof(ans->err), "%s", PQerrorMessage(c->pg));
    return PEER_FAIL;
}

/* Flush and collect: PEER_DONE once every result of the operation is in. */
static int pg_progress(struct pgconn *c, struct peer_answer *ans)
{
    int f = PQflush(c->pg);
    if (f < 0) {
        return fail(c, ans);
    }
    ans->want_write = f == 1;
    while (!PQisBusy(c->pg)) {
        PGresult *r = PQgetResult(c->pg);
        if (r == NULL) {
            /* Every result of the statement is in. */
            if (c->failed) {
                ans->outcome = PEER_ERROR;
                snprintf(ans->err, sizeof(ans->err), "%s", c->failure);
            } else if (c->op == PEER_RESERVE) {
                ans->outcome = c->affected == 1 ? PEER_GRANTED : PEER_DENIED;
            } else {
                ans->outcome = c->affected == 1 ? PEER_GRANTED : PEER_ERROR;
                if (c->affected != 1) {
                    snprintf(ans->err, sizeof(ans->err), "settle updated %d rows", c->affected);
                }
            }
            c->op = 0;
            return PEER_DONE;
        }
        if (PQresultStatus(r) == PGRES_COMMAND_OK) {
            c->affected = atoi(PQcmdTuples(r));
        } else {
            c->failed = true;
            snprintf(c->failure, sizeof(c->failure), "%s", PQresultErrorMessage(r));
        }
        PQclear(r);
    }
    return PEER_PENDING;
}

static int pg_start(void *conn, enum peer_op op, uint32_t key, int64_t amount, int64_t actual,
                    struct peer_answer *ans)
{
    struct pgconn *c = conn;
    char k[PEER_KEY_MAX], a[24], b[24];
    peer_key_name(c->cfg, key, k);
    snprintf(a, sizeof(a), "%lld", (long long)amount);
    snprintf(b, sizeof(b), "%lld", (long long)actual);
    c->op = op;
    c->affected = -1;
    c->failed = false;
    int sent;
    if (op == PEER_RESERVE) {
        const char *vals[2] = {a, k};
        sent = PQsendQueryPrepared(c->pg, "reserve", 2, vals, NULL, NULL, 0);
    } else {
        const char *vals[3] = {a, b, k};
        sent = PQsendQueryPrepared(c->pg, "settle", 3, vals, NULL, NULL, 0);
    }
    if (!sent) {
        return fail(c, ans);
    }
    return pg_progress(c, ans);
}

static int pg_io(void *conn, bool readable, bool writable, struct peer_answer *ans)
{
    struct pgconn *c = conn;
    (void)writable;
    if (readable && !PQconsumeInput(c->pg)) {
        return fail(c, ans);
    }
    return pg_progress(c, ans);
}

static void pg_close(void *conn)
{
    struct pgconn *c = conn;
    if (c != NULL) {
        PQfinish(c->pg);
        free(c);
    }
}

static void pg_fini(void)
{
}

const struct peer_backend peer_postgres = {
    .name = "postgres",
    .init = pg_init,
    .open = pg_open,
    .fd = pg_fd,
    .start = pg_start,
    .io = pg_io,
    .close = pg_close,
    .fini = pg_fini,
};
