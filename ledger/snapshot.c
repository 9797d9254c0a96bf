/*
 * snapshot.c: the whole ledger as one self-checking stream, and its state hash.
 *
 * Export walks every database of a frozen read transaction in key order and writes
 * records [db (1), key length (4), value length (4), key, value], then an end marker and
 * a SHA-256 of everything before it. Import reads such a stream into a write
 * transaction that first empties every database, bounding each length before reading
 * the bytes, and commits only when the trailer matches: a torn or altered snapshot
 * leaves the ledger as it was.
 */
#include "ledger/store.h"

#include <assert.h>
#include <inttypes.h>
#include <openssl/sha.h>
#include <stdlib.h>
#include <string.h>

#define SNAP_MAGIC "TALLYSN1"
#define SNAP_END 0xff
#define SNAP_KEY_MAX 511          /* LMDB's default maximum key size */
#define SNAP_VALUE_MAX (1u << 20) /* no record comes near this */
#define SNAP_CHUNK (64u << 10)

/* The header is the magic and the map size (16 bytes); ledger_snapshot_stream_index()
 * finds the applied index in the first record because the meta database sorts first. */
_Static_assert(sizeof(SNAP_MAGIC) - 1 == 8, "the snapshot magic is 8 bytes");
_Static_assert(DB_META == 0, "the meta record is the first of a snapshot");

struct ledger_snapshot {
    struct ledger *l;
    MDB_txn *txn;
    uint64_t index;
    uint64_t bytes; /* records' size, for the importer's map */
};

static void snap_release(struct ledger_snapshot *s)
{
    if (s->txn == NULL) {
        return;
    }
    mdb_txn_abort(s->txn);
    s->txn = NULL;
    pthread_mutex_lock(&s->l->snap_mu);
    assert(s->l->snapshots_active > 0); /* this snapshot is one of them */
    s->l->snapshots_active--;
    pthread_cond_broadcast(&s->l->snap_cv);
    pthread_mutex_unlock(&s->l->snap_mu);
}

int ledger_snapshot_begin(struct ledger *l, struct ledger_snapshot **out)
{
    assert(l->txn == NULL); /* on the ledger's thread, between batches */
    struct ledger_snapshot *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        return -LEDGER_ENOMEM;
    }
    s->l = l;
    int rc = mdb_txn_begin(l->env, NULL, MDB_RDONLY, &s->txn);
    if (rc != 0) {
        free(s);
        return ledger__set_error(l, -LEDGER_EIO, "snapshot: %s", mdb_strerror(rc));
    }
    pthread_mutex_lock(&l->snap_mu);
    l->snapshots_active++;
    pthread_mutex_unlock(&l->snap_mu);
    MDB_val k = {1, "m"}, v;
    if (mdb_get(s->txn, l->dbi[DB_META], &k, &v) == 0 && v.mv_size == sizeof(struct meta_rec)) {
        struct meta_rec m;
        memcpy(&m, v.mv_data, sizeof(m));
        s->index = m.applied_index;
    }
    MDB_envinfo info;
    MDB_stat st;
    mdb_env_info(l->env, &info);
    mdb_env_stat(l->env, &st);
    s->bytes = (uint64_t)(info.me_last_pgno + 1) * st.ms_psize;
    *out = s;
    return 0;
}

uint64_t ledger_snapshot_index(const struct ledger_snapshot *s)
{
    return s->index;
}

void ledger_snapshot_end(struct ledger_snapshot *s)
{
    if (s == NULL) {
        return;
    }
    snap_release(s);
    free(s);
}

/* Buffered writer that hashes what it writes. */
struct snap_out {
    ledger_write_fn write;
    void *ctx;
    SHA256_CTX sha;
    uint8_t *buf;
    size_t len;
    bool failed;
};

static void out_flush(struct snap_out *o)
{
    if (!o->failed && o->len > 0 && o->write(o->ctx, o->buf, o->len) != 0) {
        o->failed = true;
    }
    o->len = 0;
}

static void out_bytes(struct snap_out *o, const void *p, size_t n, bool hash)
{
    if (hash) {
        SHA256_Update(&o->sha, p, n);
    }
    const uint8_t *b = p;
    while (n > 0 && !o->failed) {
        assert(o->len < SNAP_CHUNK); /* a full chunk is flushed at once */
        size_t room = SNAP_CHUNK - o->len;
        size_t take = n < room ? n : room;
        memcpy(o->buf + o->len, b, take);
        o->len += take;
        b += take;
        n -= take;
        if (o->len == SNAP_CHUNK) {
            out_flush(o);
        }
    }
}

static void put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static uint32_t get_be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Visit every record of every database in order: the canonical order of the state. */
typedef void (*record_fn)(void *ctx, uint8_t db, const MDB_val *k, const MDB_val *v);

static int walk_all(struct ledger *l, MDB_txn *txn, record_fn fn, void *ctx)
{
    for (int db = 0; db < DB_COUNT; db++) {
        MDB_cursor *cur;
        int rc = mdb_cursor_open(txn, l->dbi[db], &cur);
        if (rc != 0) {
            return rc;
        }
        MDB_val k, v;
        while ((rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) == 0) {
            fn(ctx, (uint8_t)db, &k, &v);
        }
        mdb_cursor_close(cur);
        if (rc != MDB_NOTFOUND) {
            return rc;
        }
    }
    return 0;
}

static void export_record(void *ctx, uint8_t db, const MDB_val *k, const MDB_val *v)
{
    struct snap_out *o = ctx;
    /* Export only what import accepts: a larger record would make the snapshot unreadable. */
    assert(k->mv_size >= 1 && k->mv_size <= SNAP_KEY_MAX && v->mv_size <= SNAP_VALUE_MAX);
    uint8_t head[9];
    head[0] = db;
    put_be32(head + 1, (uint32_t)k->mv_size);
    put_be32(head + 5, (uint32_t)v->mv_size);
    out_bytes(o, head, sizeof(head), true);
    out_bytes(o, k->mv_data, k->mv_size, true);
    out_bytes(o, v->mv_data, v->mv_size, true);
}

int ledger_snapshot_export(struct ledger_snapshot *s, ledger_write_fn write, void *ctx)
{
    if (s->txn == NULL) {
        return -LEDGER_EINVAL; /* exported already */
    }
    struct snap_out o = {.write = write, .ctx = ctx};
    o.buf = malloc(SNAP_CHUNK);
    if (o.buf == NULL) {
        return -LEDGER_ENOMEM;
    }
    SHA256_Init(&o.sha);
    uint8_t head[16];
    memcpy(head, SNAP_MAGIC, 8);
    ledger__be64(head + 8, s->bytes);
    out_bytes(&o, head, sizeof(head), true);
    int rc = walk_all(s->l, s->txn, export_record, &o);
    uint8_t end = SNAP_END, digest[32];
    out_bytes(&o, &end, 1, true);
    SHA256_Final(digest, &o.sha);
    out_bytes(&o, digest, sizeof(digest), false);
    out_flush(&o);
    free(o.buf);
    /* The frozen view is no longer needed: let the map grow again. */
    snap_release(s);
    return (rc != 0 || o.failed) ? -LEDGER_EIO : 0;
}

int ledger_snapshot_stream_index(const void *buf, size_t len, uint64_t *index)
{
    const uint8_t *p = buf;
    const size_t head = 16, rec = 9 + 1 + sizeof(struct meta_rec);
    *index = 0;
    if (len < head + 1 || memcmp(p, SNAP_MAGIC, 8) != 0) {
        return -LEDGER_ECORRUPT;
    }
    p += head;
    /* The meta database sorts first; a ledger that applied nothing has no record. */
    if (len < head + rec || p[0] != DB_META || get_be32(p + 1) != 1 ||
        get_be32(p + 5) != sizeof(struct meta_rec) || p[9] != 'm') {
        return 0;
    }
    struct meta_rec m;
    memcpy(&m, p + 10, sizeof(m));
    *index = m.applied_index;
    return 0;
}

/* ---- Import. ---- */

struct snap_in {
    ledger_read_fn read;
    void *ctx;
    SHA256_CTX sha;
};

static bool in_bytes(struct snap_in *in, void *p, size_t n)
{
    if (n == 0) {
        return true;
    }
    if (in->read(in->ctx, p, n) != 0) {
        return false;
    }
    SHA256_Update(&in->sha, p, n);
    return true;
}

/* Read records into `txn` until the end marker. 0, or -LEDGER_ECORRUPT / an LMDB error. */
static int import_records(struct ledger *l, MDB_txn *txn, struct snap_in *in, uint8_t *kbuf,
                          uint8_t *vbuf)
{
    for (;;) {
        uint8_t db;
        if (!in_bytes(in, &db, 1)) {
            return -LEDGER_ECORRUPT;
        }
        if (db == SNAP_END) {
            return 0;
        }
        uint8_t lens[8];
        if (db >= DB_COUNT || !in_bytes(in, lens, 8)) {
            return -LEDGER_ECORRUPT;
        }
        uint32_t klen = get_be32(lens), vlen = get_be32(lens + 4);
        if (klen == 0 || klen > SNAP_KEY_MAX || vlen > SNAP_VALUE_MAX ||
            !in_bytes(in, kbuf, klen) || !in_bytes(in, vbuf, vlen)) {
            return -LEDGER_ECORRUPT;
        }
        MDB_val k = {klen, kbuf}, v = {vlen, vbuf};
        int rc = mdb_put(txn, l->dbi[db], &k, &v, MDB_APPEND);
        if (rc == MDB_KEYEXIST) {
            return -LEDGER_ECORRUPT; /* out of order */
        }
        if (rc != 0) {
            return rc;
        }
    }
}

static int import_into(struct ledger *l, struct snap_in *in, uint8_t *kbuf, uint8_t *vbuf)
{
    uint8_t head[16];
    if (!in_bytes(in, head, sizeof(head)) || memcmp(head, SNAP_MAGIC, 8) != 0) {
        return ledger__set_error(l, -LEDGER_ECORRUPT, "snapshot: bad magic");
    }
    /* Make room first: a stream cannot be re-read after MDB_MAP_FULL. */
    uint64_t need = ledger__get_be64(head + 8) * 2;
    if (need > l->map_bytes && need <= l->max_map_bytes) {
        if (mdb_env_set_mapsize(l->env, need) == 0) {
            l->map_bytes = need;
        }
    }
    MDB_txn *txn;
    int rc = mdb_txn_begin(l->env, NULL, 0, &txn);
    if (rc != 0) {
        return ledger__set_error(l, -LEDGER_EIO, "snapshot: %s", mdb_strerror(rc));
    }
    for (int db = 0; db < DB_COUNT && rc == 0; db++) {
        rc = mdb_drop(txn, l->dbi[db], 0);
    }
    if (rc == 0) {
        rc = import_records(l, txn, in, kbuf, vbuf);
    }
    uint8_t want[32], got[32];
    SHA256_Final(want, &in->sha);
    if (rc == 0 && (in->read(in->ctx, got, 32) != 0 || memcmp(want, got, 32) != 0)) {
        rc = -LEDGER_ECORRUPT;
    }
    /* A ledger that never applied a batch has no meta record: it imports as new. */
    MDB_val mk = {1, "m"}, mv;
    struct meta_rec meta;
    ledger__meta_new(&meta);
    if (rc == 0) {
        int got_meta = mdb_get(txn, l->dbi[DB_META], &mk, &mv);
        if (got_meta == 0 && mv.mv_size == sizeof(meta)) {
            memcpy(&meta, mv.mv_data, sizeof(meta));
        }
        if ((got_meta != 0 && got_meta != MDB_NOTFOUND) ||
            (got_meta == 0 && mv.mv_size != sizeof(meta))) {
            rc = -LEDGER_ECORRUPT;
        } else if (meta.format != STORE_FORMAT) {
            mdb_txn_abort(txn);
            return ledger__set_error(l, -LEDGER_ECORRUPT,
                                     "snapshot: store format %" PRIu64
                                     ", this build reads only format %d",
                                     meta.format, STORE_FORMAT);
        }
    }
    if (rc != 0) {
        mdb_txn_abort(txn);
        if (rc < 0) {
            return ledger__set_error(l, rc, "snapshot: corrupt or truncated stream");
        }
        return ledger__set_error(l, -LEDGER_EIO, "snapshot: %s", mdb_strerror(rc));
    }
    rc = mdb_txn_commit(txn);
    if (rc != 0) {
        return ledger__set_error(l, -LEDGER_EIO, "snapshot commit: %s", mdb_strerror(rc));
    }
    l->meta = meta;
    return 0;
}

int ledger_snapshot_import(struct ledger *l, ledger_read_fn read, void *ctx)
{
    assert(l->txn == NULL); /* on the ledger's thread, between batches */
    struct snap_in in = {.read = read, .ctx = ctx};
    uint8_t *kbuf = malloc(SNAP_KEY_MAX), *vbuf = malloc(SNAP_VALUE_MAX);
    int rv = -LEDGER_ENOMEM;
    if (kbuf != NULL && vbuf != NULL) {
        SHA256_Init(&in.sha);
        rv = import_into(l, &in, kbuf, vbuf);
    }
    free(kbuf);
    free(vbuf);
    return rv;
}

/* ---- State hash. ---- */

static void hash_record(void *ctx, uint8_t db, const MDB_val *k, const MDB_val *v)
{
    SHA256_CTX *sha = ctx;
    /* The hash covers what the ledger holds, not where it stands in the log: the applied
     * index and the clock are left out, so a batch that changed nothing (every command
     * refused) leaves the hash as it was. Replicas are compared at one applied index. */
    struct meta_rec meta;
    MDB_val masked;
    if (db == DB_META && v->mv_size == sizeof(meta)) {
        memcpy(&meta, v->mv_data, sizeof(meta));
        meta.applied_index = 0;
        meta.clock_ms = 0;
        masked = (MDB_val){.mv_size = sizeof(meta), .mv_data = &meta};
        v = &masked;
    }
    uint8_t head[9];
    head[0] = db;
    put_be32(head + 1, (uint32_t)k->mv_size);
    put_be32(head + 5, (uint32_t)v->mv_size);
    SHA256_Update(sha, head, sizeof(head));
    SHA256_Update(sha, k->mv_data, k->mv_size);
    SHA256_Update(sha, v->mv_data, v->mv_size);
}

/* The state hash of what `txn` sees: 0, or an LMDB error code. */
static int hash_txn(struct ledger *l, MDB_txn *txn, uint8_t out[32])
{
    SHA256_CTX sha;
    SHA256_Init(&sha);
    int rc = walk_all(l, txn, hash_record, &sha);
    SHA256_Final(out, &sha);
    return rc;
}

int ledger_state_hash(struct ledger *l, uint8_t out[32])
{
    MDB_txn *txn;
    int rc = mdb_txn_begin(l->env, NULL, MDB_RDONLY, &txn);
    if (rc != 0) {
        return ledger__set_error(l, -LEDGER_EIO, "state hash: %s", mdb_strerror(rc));
    }
    rc = hash_txn(l, txn, out);
    mdb_txn_abort(txn);
    return rc == 0 ? 0 : ledger__set_error(l, -LEDGER_EIO, "state hash: %s", mdb_strerror(rc));
}

int ledger_snapshot_hash(struct ledger_snapshot *s, uint8_t out[32])
{
    if (s->txn == NULL) {
        return -LEDGER_EINVAL; /* exported or hashed already */
    }
    /* No errmsg: this may run on another thread than the ledger's. */
    int rc = hash_txn(s->l, s->txn, out);
    snap_release(s);
    return rc == 0 ? 0 : -LEDGER_EIO;
}
