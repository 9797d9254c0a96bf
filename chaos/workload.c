/*
 * workload.c: the chaos clients. Each worker thread owns one libtally client (so the
 * endpoint it is connected to after a call is the node that answered) and plays a
 * gateway: it reserves against a random leaf with an id it chose, holds the reservation
 * for a while, then settles or voids it; sometimes it extends one, abandons one to expiry,
 * holds a short-ttl one past its expiry (a late settle), or sends a conflicting second
 * resolution. Every finished operation is resubmitted later with probability 1/2, with
 * the same id and arguments (idempotency must answer it from the store), except reserves
 * whose outcome is unknown: libtally voids those in the background and the header says
 * not to reuse them. A settle or void with an unknown outcome is retried with the same id
 * and arguments until it gets an answer.
 *
 * Every call is one `I` line before and one `C` line after in the history (chaos.h).
 */
#define _GNU_SOURCE
#include "chaos.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_OPEN 2     /* open reservations per worker */
#define RESUB_MAX 64   /* operations waiting to be resubmitted, per worker */
#define RETRIES_MAX 40 /* attempts of one settle/void with an unknown outcome */

enum op_kind { OP_RESERVE, OP_SETTLE, OP_VOID, OP_EXTEND };
static const char *const op_names[] = {"reserve", "settle", "void", "extend"};

struct op {
    int kind;
    uint8_t id[TALLY_REQUEST_ID_SIZE];
    int leaf;
    int64_t a, b; /* reserve: estimate, ttl; settle: actual, tokens; extend: ttl */
    uint64_t c;   /* reserve: tokens */
};

struct slot {
    struct op reserve;
    int64_t due_us;
    bool pending; /* `retry` is a settle/void whose outcome is unknown */
    struct op retry;
    int attempts;
};

struct worker {
    int idx;
    struct tally *c;
    uint64_t rng;
    uint64_t counter;
    struct slot open[MAX_OPEN];
    int n_open;
    struct op resub[RESUB_MAX];
    int n_resub;
    pthread_t th;
};

static struct worker workers[CH_WORKERS_MAX];
static atomic_bool stop;
static atomic_ullong n_ops, n_grants;

static pthread_mutex_t reg_mu = PTHREAD_MUTEX_INITIALIZER;
static struct wl_reserve *reg_resv;
static size_t n_resv, cap_resv;
static struct wl_resolution *reg_resol;
static size_t n_resol, cap_resol;

static int leaves[16];
static int n_leaves;

/* ---- Registry. ---- */

/* The array v (*cap elements, n used) with room for one more, moved if it had to grow;
 * NULL (v unchanged) if there is no memory. */
static void *reg_grow(void *v, size_t *cap, size_t n, size_t elem_size)
{
    if (n < *cap) {
        return v;
    }
    size_t grown = *cap ? 2 * *cap : 4096;
    void *p = realloc(v, grown * elem_size);
    if (p != NULL) {
        *cap = grown;
    }
    return p;
}

static void register_reserve(const struct op *op, int definite)
{
    pthread_mutex_lock(&reg_mu);
    void *grown = reg_grow(reg_resv, &cap_resv, n_resv, sizeof(*reg_resv));
    if (grown == NULL) {
        pthread_mutex_unlock(&reg_mu);
        return;
    }
    reg_resv = grown;
    struct wl_reserve *r = &reg_resv[n_resv++];
    memcpy(r->id, op->id, sizeof(r->id));
    r->leaf = op->leaf;
    r->estimate_micros = op->a;
    r->ttl_ms = op->b;
    r->tokens = op->c;
    r->definite = definite;
    pthread_mutex_unlock(&reg_mu);
}

static void register_resolution(const struct op *op)
{
    pthread_mutex_lock(&reg_mu);
    void *grown = reg_grow(reg_resol, &cap_resol, n_resol, sizeof(*reg_resol));
    if (grown == NULL) {
        pthread_mutex_unlock(&reg_mu);
        return;
    }
    reg_resol = grown;
    struct wl_resolution *r = &reg_resol[n_resol++];
    memcpy(r->id, op->id, sizeof(r->id));
    r->leaf = op->leaf;
    r->is_void = op->kind == OP_VOID;
    r->actual_micros = op->a;
    r->tokens = (uint64_t)op->b;
    pthread_mutex_unlock(&reg_mu);
}

void wl_reserves(const struct wl_reserve **out, size_t *n)
{
    *out = reg_resv;
    *n = n_resv;
}

void wl_resolutions(const struct wl_resolution **out, size_t *n)
{
    *out = reg_resol;
    *n = n_resol;
}

void wl_progress(uint64_t *ops, uint64_t *grants)
{
    *ops = atomic_load(&n_ops);
    *grants = atomic_load(&n_grants);
}

/* ---- One call. ---- */

static void new_id(struct worker *w, uint8_t id[TALLY_REQUEST_ID_SIZE])
{
    uint64_t n = ++w->counter;
    memset(id, 0, TALLY_REQUEST_ID_SIZE);
    id[0] = (uint8_t)(ch.nonce >> 24);
    id[1] = (uint8_t)(ch.nonce >> 16);
    id[2] = (uint8_t)(ch.nonce >> 8);
    id[3] = (uint8_t)ch.nonce;
    id[4] = (uint8_t)w->idx;
    for (int i = 0; i < 8; i++) {
        id[15 - i] = (uint8_t)(n >> (8 * i));
    }
}

/* Run `op` on w's client, with I and C lines in the history; the answer in *res. */
static void run_op(struct worker *w, const struct op *op, int resub, const char *phase,
                   int64_t deadline_ms, struct tally_result *res)
{
    char hex[33], secret[64];
    ch_id_hex(op->id, hex);
    const struct ch_account *acct = &ch_accounts[op->leaf];
    int64_t t_inv = ch_now_us();
    ch_hist("I %lld %d %s %s %s %lld %lld %llu %lld %s", (long long)t_inv, w->idx,
            op_names[op->kind], hex, acct->name, (long long)op->a, (long long)op->b,
            (unsigned long long)op->c, (long long)deadline_ms, phase);
    memset(res, 0, sizeof(*res));
    res->outcome = -1;
    int rv = 0;
    switch (op->kind) {
    case OP_RESERVE: {
        struct tally_reserve_args args = {.estimate_micros = op->a,
                                          .ttl_ms = op->b,
                                          .estimate_tokens = op->c,
                                          .request_id = op->id};
        if (acct->by_key) {
            ch_key_secret(op->leaf, secret, sizeof(secret));
            args.key_secret = secret;
        } else {
            args.account = acct->name;
        }
        rv = tally_reserve(w->c, &args, deadline_ms, res);
        break;
    }
    case OP_SETTLE:
        rv = tally_settle(w->c, op->id, op->a, (uint64_t)op->b, deadline_ms, res);
        break;
    case OP_VOID:
        rv = tally_void(w->c, op->id, deadline_ms, res);
        break;
    default:
        rv = tally_extend(w->c, op->id, op->a, deadline_ms, res);
        break;
    }
    if (res->outcome < 0) { /* defensive: a call that did not fill its result */
        res->outcome = TALLY_ERROR;
        res->error = rv < 0 ? -rv : TALLY_EINTERNAL;
    }
    int64_t t_done = ch_now_us();
    struct tally_stats st;
    tally_stats(w->c, &st);
    int node = ch_node_of_endpoint(st.endpoint);
    int64_t x1 = 0, x2 = 0;
    if (op->kind == OP_RESERVE) {
        x1 = res->expires_at_ms;
        x2 = res->deny_reason;
    } else if (op->kind == OP_EXTEND) {
        x1 = res->expires_at_ms;
    } else {
        x1 = res->charged_micros;
        x2 = res->overrun_micros;
    }
    ch_hist("C %lld %lld %d %s %s %s %lld %lld %llu %s %d %u %llu %d %u %lld %lld %d %s",
            (long long)t_done, (long long)t_inv, w->idx, op_names[op->kind], hex, acct->name,
            (long long)op->a, (long long)op->b, (unsigned long long)op->c, ch_outcome_word(res),
            res->error, res->flags, (unsigned long long)res->index, node, res->attempts,
            (long long)x1, (long long)x2, resub, phase);
    atomic_fetch_add(&n_ops, 1);
    if (op->kind == OP_RESERVE && res->outcome == TALLY_GRANTED) {
        atomic_fetch_add(&n_grants, 1);
    }
}

static int64_t op_deadline(struct worker *w)
{
    return ch_rand_range(&w->rng, 800, 2500);
}

static bool definite(const struct tally_result *res)
{
    return res->outcome == TALLY_GRANTED || res->outcome == TALLY_DENIED ||
           res->outcome == TALLY_ERROR;
}

/* Remember `op` for a later resubmission with probability 1/2. */
static void maybe_resubmit_later(struct worker *w, const struct op *op)
{
    if (!ch_chance(&w->rng, 1, 2)) {
        return;
    }
    if (w->n_resub == RESUB_MAX) {
        w->resub[ch_rand(&w->rng) % RESUB_MAX] = *op; /* the oldest are forgotten at random */
        return;
    }
    w->resub[w->n_resub++] = *op;
}

static void do_resubmit(struct worker *w)
{
    int k = (int)(ch_rand(&w->rng) % (uint64_t)w->n_resub);
    struct op op = w->resub[k];
    w->resub[k] = w->resub[--w->n_resub];
    struct tally_result res;
    run_op(w, &op, 1, "run", op_deadline(w), &res);
}

static void remove_slot(struct worker *w, int k)
{
    w->open[k] = w->open[--w->n_open];
}

/* Settle or void open reservation k (or retry its unknown resolution). */
static void resolve(struct worker *w, int k)
{
    struct slot *s = &w->open[k];
    const struct ch_account *acct = &ch_accounts[s->reserve.leaf];
    struct op op;
    if (s->pending) {
        op = s->retry;
    } else {
        op = s->reserve;
        if (ch_chance(&w->rng, 15, 100)) {
            op.kind = OP_VOID;
            op.a = op.b = 0;
        } else {
            int64_t est = s->reserve.a;
            op.kind = OP_SETTLE;
            op.a = acct->full_charge ? est * ch_rand_range(&w->rng, 50, 100) / 100
                                     : ch_rand_range(&w->rng, 0, 20);
            op.b = ch_rand_range(&w->rng, 0, (int64_t)s->reserve.c);
        }
        op.c = 0;
    }
    struct tally_result res;
    run_op(w, &op, 0, "run", op_deadline(w), &res);
    s->attempts++;
    maybe_resubmit_later(w, &op);
    if (definite(&res) || s->attempts >= RETRIES_MAX) {
        if (res.outcome == TALLY_GRANTED) {
            register_resolution(&op);
            if (ch_chance(&w->rng, 1, 20)) {
                /* A conflicting second resolution: must be refused (ERESOLVED). */
                struct op other = op;
                other.kind = op.kind == OP_SETTLE ? OP_VOID : OP_SETTLE;
                other.a = other.kind == OP_SETTLE ? 1 : 0;
                other.b = 0;
                run_op(w, &other, 0, "run", op_deadline(w), &res);
            }
        }
        remove_slot(w, k);
        return;
    }
    s->pending = true;
    s->retry = op;
    s->due_us = ch_now_us() + ch_rand_range(&w->rng, 100, 1000) * 1000;
}

static void new_reserve(struct worker *w)
{
    struct op op = {.kind = OP_RESERVE};
    op.leaf = leaves[ch_rand(&w->rng) % (uint64_t)n_leaves];
    const struct ch_account *acct = &ch_accounts[op.leaf];
    new_id(w, op.id);
    /* An abandoned reservation is never resolved: its short ttl makes expiry do it. A
     * short-ttl one may be settled after it expired (a late settle). */
    bool abandon = acct->abandon && ch_chance(&w->rng, 1, 30);
    bool short_ttl = ch_chance(&w->rng, 1, 20);
    op.a = ch_rand_range(&w->rng, acct->est_min, acct->est_max);
    op.b = abandon     ? ch_rand_range(&w->rng, 1500, 5000)
           : short_ttl ? ch_rand_range(&w->rng, 800, 1500)
                       : ch_rand_range(&w->rng, 30000, 60000);
    op.c = (uint64_t)ch_rand_range(&w->rng, 0, 2000);
    struct tally_result res;
    run_op(w, &op, 0, "run", op_deadline(w), &res);
    register_reserve(&op, res.outcome == TALLY_GRANTED  ? 1
                          : res.outcome == TALLY_DENIED ? 2
                                                        : 0);
    if (res.outcome == TALLY_GRANTED || res.outcome == TALLY_DENIED) {
        maybe_resubmit_later(w, &op);
    }
    if (res.outcome != TALLY_GRANTED) {
        return;
    }
    if (abandon) {
        return;
    }
    struct slot *s = &w->open[w->n_open++];
    memset(s, 0, sizeof(*s));
    s->reserve = op;
    s->due_us = ch_now_us() + (short_ttl ? ch_rand_range(&w->rng, 0, 2500)
                                         : ch_rand_range(&w->rng, 0, 300)) *
                                  1000;
}

static void extend_one(struct worker *w)
{
    int k = (int)(ch_rand(&w->rng) % (uint64_t)w->n_open);
    struct op op = w->open[k].reserve;
    op.kind = OP_EXTEND;
    op.a = ch_rand_range(&w->rng, 30000, 60000);
    op.b = 0;
    op.c = 0;
    struct tally_result res;
    run_op(w, &op, 0, "run", op_deadline(w), &res);
    maybe_resubmit_later(w, &op);
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    int64_t pause_max_ms = 2000 / (ch.ops_per_worker_s > 0 ? ch.ops_per_worker_s : 50);
    while (!atomic_load(&stop)) {
        ch_sleep_ms(ch_rand_range(&w->rng, 0, pause_max_ms));
        if (w->n_resub > 0 && ch_chance(&w->rng, 1, 4)) {
            do_resubmit(w);
            continue;
        }
        int64_t now = ch_now_us();
        int due = -1;
        for (int k = 0; k < w->n_open && due < 0; k++) {
            if (w->open[k].due_us <= now) {
                due = k;
            }
        }
        if (due >= 0) {
            resolve(w, due);
        } else if (w->n_open < MAX_OPEN) {
            new_reserve(w);
        } else if (ch_chance(&w->rng, 1, 5)) {
            extend_one(w);
        }
    }
    return NULL;
}

int wl_start(void)
{
    n_leaves = 0;
    for (int i = 0; i < ch_n_accounts; i++) {
        if (ch_accounts[i].est_max > 0) {
            leaves[n_leaves++] = i;
        }
    }
    for (int i = 0; i < ch.workers; i++) {
        struct worker *w = &workers[i];
        memset(w, 0, sizeof(*w));
        w->idx = i + 1;
        w->rng = ch.seed * 0x100000001b3ULL + (uint64_t)i * 0x9e3779b97f4a7c15ULL + 1;
        w->c = ch_client(ch.endpoints, ch.gateway_token, 2000);
        if (w->c == NULL) {
            return -1;
        }
    }
    for (int i = 0; i < ch.workers; i++) {
        if (pthread_create(&workers[i].th, NULL, worker_main, &workers[i]) != 0) {
            ch_log("pthread_create failed");
            atomic_store(&stop, true);
            for (int j = 0; j < i; j++) {
                pthread_join(workers[j].th, NULL);
            }
            return -1;
        }
    }
    return 0;
}

void wl_stop(void)
{
    atomic_store(&stop, true);
    for (int i = 0; i < ch.workers; i++) {
        pthread_join(workers[i].th, NULL);
    }
    /* Background voids of UNAVAILABLE reserves: give them a bounded time to finish. */
    int64_t deadline = ch_now_us() + 25 * 1000000LL;
    uint64_t queued = 0, done = 0, failed = 0;
    for (;;) {
        queued = done = failed = 0;
        for (int i = 0; i < ch.workers; i++) {
            struct tally_stats st;
            tally_stats(workers[i].c, &st);
            queued += st.voids_queued;
            done += st.voids_done;
            failed += st.voids_failed;
        }
        if (done + failed >= queued || ch_now_us() > deadline) {
            break;
        }
        ch_sleep_ms(100);
    }
    ch_hist("N %lld voids %llu %llu %llu", (long long)ch_now_us(), (unsigned long long)queued,
            (unsigned long long)done, (unsigned long long)failed);
    ch_log("background voids: %llu queued, %llu done, %llu failed or pending",
           (unsigned long long)queued, (unsigned long long)done,
           (unsigned long long)(queued - done));
    for (int i = 0; i < ch.workers; i++) {
        tally_close(workers[i].c);
        workers[i].c = NULL;
    }
}

void wl_final_replays(size_t n_reserves, size_t n_resolutions)
{
    struct worker w = {.idx = ch.workers + 1, .rng = ch.seed ^ 0xfeedULL};
    w.c = ch_client(ch.endpoints, ch.gateway_token, 5000);
    if (w.c == NULL) {
        return;
    }
    size_t n_def = 0;
    for (size_t i = 0; i < n_resv; i++) {
        n_def += reg_resv[i].definite != 0;
    }
    /* Bounded: 90 s in all, and a cluster that stopped answering ends the phase. */
    int64_t deadline = ch_now_us() + 90 * 1000000LL;
    int unanswered = 0;
    size_t done = 0;
    for (size_t tries = 0; done < n_reserves && n_def > 0 && tries < 20 * n_reserves &&
                           ch_now_us() < deadline && unanswered < 5;
         tries++) {
        const struct wl_reserve *r = &reg_resv[ch_rand(&w.rng) % n_resv];
        if (r->definite == 0) {
            continue;
        }
        struct op op = {.kind = OP_RESERVE, .leaf = r->leaf, .a = r->estimate_micros,
                        .b = r->ttl_ms, .c = r->tokens};
        memcpy(op.id, r->id, sizeof(op.id));
        struct tally_result res;
        run_op(&w, &op, 1, "final", 5000, &res);
        unanswered = res.outcome == TALLY_UNAVAILABLE ? unanswered + 1 : 0;
        done++;
    }
    for (size_t i = 0; i < n_resolutions && n_resol > 0 && ch_now_us() < deadline &&
                       unanswered < 5;
         i++) {
        const struct wl_resolution *r = &reg_resol[ch_rand(&w.rng) % n_resol];
        struct op op = {.kind = r->is_void ? OP_VOID : OP_SETTLE, .leaf = r->leaf,
                        .a = r->actual_micros, .b = (int64_t)r->tokens};
        memcpy(op.id, r->id, sizeof(op.id));
        struct tally_result res;
        run_op(&w, &op, 1, "final", 5000, &res);
        unanswered = res.outcome == TALLY_UNAVAILABLE ? unanswered + 1 : 0;
    }
    tally_close(w.c);
}
