/*
 * fsm.c: the ledger as libraft's state machine (see fsm.h for the shape).
 */
#include "raft/fsm.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void default_fatal(struct node_fsm *f, const char *reason)
{
    (void)f;
    fprintf(stderr, "level=fatal msg=\"state machine cannot continue\" reason=\"%s\"\n", reason);
    abort();
}

static void fatal(struct node_fsm *f, const char *what)
{
    char reason[LEDGER_ERRMSG_SIZE + 64];
    snprintf(reason, sizeof(reason), "%s: %s", what, ledger_errmsg(f->ledger));
    f->on_fatal(f, reason);
}

static int fsm_apply(struct raft_fsm *fsm, const struct raft_buffer *buf, void **result)
{
    struct node_fsm *f = fsm->data;
    assert(f->raft != NULL);
    uint64_t index = raft_last_applied(f->raft) + 1;
    size_t n = 0;
    int rv = ledger_apply_batch(f->ledger, index, buf->base, buf->len, f->results, &n);
    struct node_apply_result *slot = &f->ring[index % NODE_RESULT_RING];
    free((void *)slot->results);
    *slot = (struct node_apply_result){index, 0, 0, NULL};
    switch (rv) {
    case 0:
        f->applied++;
        break;
    case -LEDGER_ESTALE:
    case -LEDGER_EDECODE:
        /* Already held, or rejected alike by every replica: skip, still applied. */
        slot->status = rv;
        f->skipped += rv == -LEDGER_ESTALE;
        break;
    default:
        fatal(f, "applying an entry");
        return RAFT_IOERR;
    }
    if (n > 0) {
        struct ledger_result *copy = malloc(n * sizeof(*copy));
        if (copy == NULL) {
            fatal(f, "out of memory keeping an entry's results");
            return RAFT_NOMEM;
        }
        memcpy(copy, f->results, n * sizeof(*copy));
        slot->results = copy;
        slot->n = n;
    }
    *result = slot;
    return 0;
}

static void chunks_free(struct node_fsm *f)
{
    for (unsigned i = 0; i < f->n_chunks; i++) {
        free(f->chunks[i].base);
    }
    free(f->chunks);
    f->chunks = NULL;
    f->n_chunks = 0;
}

static int fsm_snapshot(struct raft_fsm *fsm, struct raft_buffer *bufs[], unsigned *n_bufs)
{
    struct node_fsm *f = fsm->data;
    if (f->snap != NULL || f->chunks != NULL) {
        return RAFT_BUSY; /* the previous one is not finalized yet: libraft retries later */
    }
    if (ledger_snapshot_begin(f->ledger, &f->snap) != 0) {
        return RAFT_IOERR;
    }
    *bufs = NULL;
    *n_bufs = 0;
    return 0;
}

/* Snapshot writer: fills NODE_SNAPSHOT_CHUNK-sized buffers. */
static int chunk_write(void *ctx, const void *data, size_t len)
{
    struct node_fsm *f = ctx;
    const char *p = data;
    while (len > 0) {
        struct raft_buffer *last = f->n_chunks ? &f->chunks[f->n_chunks - 1] : NULL;
        if (last == NULL || last->len == NODE_SNAPSHOT_CHUNK) {
            if (f->n_chunks == NODE_SNAPSHOT_MAX_CHUNKS) {
                return -1;
            }
            struct raft_buffer *c = realloc(f->chunks, (f->n_chunks + 1) * sizeof(*c));
            if (c == NULL) {
                return -1;
            }
            f->chunks = c;
            last = &f->chunks[f->n_chunks];
            last->base = malloc(NODE_SNAPSHOT_CHUNK);
            last->len = 0;
            if (last->base == NULL) {
                return -1;
            }
            f->n_chunks++;
        }
        size_t room = NODE_SNAPSHOT_CHUNK - last->len;
        size_t take = len < room ? len : room;
        memcpy((char *)last->base + last->len, p, take);
        last->len += take;
        p += take;
        len -= take;
    }
    return 0;
}

static int fsm_snapshot_async(struct raft_fsm *fsm, struct raft_buffer *bufs[], unsigned *n_bufs)
{
    struct node_fsm *f = fsm->data;
    assert(f->snap != NULL && f->chunks == NULL);
    if (ledger_snapshot_export(f->snap, chunk_write, f) != 0) {
        /* libraft does not call snapshot_finalize after a failed snapshot_async. */
        chunks_free(f);
        ledger_snapshot_end(f->snap);
        f->snap = NULL;
        return RAFT_IOERR;
    }
    /* The buffers hold the whole frozen view now: release the read transaction at once,
     * not at finalize. libraft writes the buffers to disk in the background and calls
     * finalize on the loop thread afterwards; a batch applied meanwhile that must grow
     * the LMDB map waits for open exports, on the loop thread, so holding the view
     * until finalize would stall the node until that wait gave up. */
    ledger_snapshot_end(f->snap);
    f->snap = NULL;
    *bufs = f->chunks;
    *n_bufs = f->n_chunks;
    return 0;
}

static int fsm_snapshot_finalize(struct raft_fsm *fsm, struct raft_buffer *bufs[],
                                 unsigned *n_bufs)
{
    struct node_fsm *f = fsm->data;
    (void)bufs;
    (void)n_bufs;
    chunks_free(f);
    if (f->snap != NULL) {
        ledger_snapshot_end(f->snap);
        f->snap = NULL;
    }
    return 0;
}

struct mem_reader {
    const char *p;
    size_t left;
};

static int mem_read(void *ctx, void *buf, size_t len)
{
    struct mem_reader *m = ctx;
    if (len > m->left) {
        return -1;
    }
    memcpy(buf, m->p, len);
    m->p += len;
    m->left -= len;
    return 0;
}

static int fsm_restore(struct raft_fsm *fsm, struct raft_buffer *buf)
{
    struct node_fsm *f = fsm->data;
    uint64_t snapshot_index = 0;
    if (ledger_snapshot_stream_index(buf->base, buf->len, &snapshot_index) != 0) {
        fprintf(stderr, "level=error msg=\"snapshot rejected\" reason=\"not a ledger snapshot\"\n");
        return RAFT_CORRUPT;
    }
    /* libraft restores its last snapshot at start-up and replays the log after it. If
     * LMDB already holds that index or later, LMDB is the newer state: keep it; the
     * replayed entries it holds are skipped as stale. */
    if (ledger_applied_index(f->ledger) >= snapshot_index && snapshot_index != 0) {
        f->restores_skipped++;
        raft_free(buf->base);
        return 0;
    }
    struct mem_reader m = {buf->base, buf->len};
    int rv = ledger_snapshot_import(f->ledger, mem_read, &m);
    if (rv == -LEDGER_ECORRUPT) {
        fprintf(stderr, "level=error msg=\"snapshot rejected\" reason=\"%s\"\n",
                ledger_errmsg(f->ledger));
        return RAFT_CORRUPT;
    }
    if (rv != 0) {
        fatal(f, "restoring a snapshot");
        return RAFT_IOERR;
    }
    f->restores++;
    raft_free(buf->base);
    return 0;
}

int node_fsm_init(struct node_fsm *f, struct ledger *ledger)
{
    memset(f, 0, sizeof(*f));
    f->results = calloc(LEDGER_BATCH_MAX_CMDS, sizeof(*f->results));
    if (f->results == NULL) {
        return -LEDGER_ENOMEM;
    }
    f->ledger = ledger;
    f->on_fatal = default_fatal;
    f->fsm.version = 3;
    f->fsm.data = f;
    f->fsm.apply = fsm_apply;
    f->fsm.snapshot = fsm_snapshot;
    f->fsm.restore = fsm_restore;
    f->fsm.snapshot_finalize = fsm_snapshot_finalize;
    f->fsm.snapshot_async = fsm_snapshot_async;
    return 0;
}

void node_fsm_attach(struct node_fsm *f, struct raft *raft)
{
    f->raft = raft;
}

void node_fsm_close(struct node_fsm *f)
{
    chunks_free(f);
    ledger_snapshot_end(f->snap);
    f->snap = NULL;
    free(f->results);
    f->results = NULL;
    for (unsigned i = 0; i < NODE_RESULT_RING; i++) {
        free((void *)f->ring[i].results);
        f->ring[i] = (struct node_apply_result){0};
    }
}
