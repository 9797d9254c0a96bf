/*
 * ledger-bench: how many reserve+settle commands the ledger applies per second.
 *
 * One process, one ledger in a temp directory, batches of BATCH commands (default
 * 256): each batch settles the reservations granted by the previous batch and
 * reserves as many new ones, on keys spread over an org -> team -> key chain, so every
 * command touches three accounts. Batches are encoded before the clock starts (that is
 * the leader's work, not the state machine's); the timed part is ledger_apply_batch,
 * decode included. Prints one line per run and the median.
 *
 *   ledger-bench [--batches N] [--batch N] [--keys N] [--runs N] [--sync]
 *
 * Without --sync the ledger runs as a replica does (LEDGER_OPEN_NOSYNC: the Raft log is
 * the durable record); --sync fsyncs every batch.
 */
#include "ledger/ledger.h"

#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct opts {
    int batches, batch, keys, runs;
    int sync;
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void id_of(uint8_t id[LEDGER_REQUEST_ID_SIZE], uint64_t n)
{
    memset(id, 0, LEDGER_REQUEST_ID_SIZE);
    memcpy(id, &n, sizeof(n));
    id[15] = 0x5a;
}

static void key_of(uint8_t hash[LEDGER_KEY_HASH_SIZE], int k)
{
    char secret[32];
    snprintf(secret, sizeof(secret), "sk-bench-%d", k);
    SHA256((const unsigned char *)secret, strlen(secret), hash);
}

/* Batches: setup first, then the timed reserve/settle stream. */
struct encoded {
    void *buf;
    size_t len;
};

static struct ledger_cmd base_cmd(uint8_t type, uint64_t id)
{
    struct ledger_cmd c;
    memset(&c, 0, sizeof(c));
    c.type = type;
    id_of(c.request_id, id);
    snprintf(c.actor, sizeof(c.actor), "bench");
    return c;
}

static int encode_setup(const struct opts *o, struct ledger_cmd *cmds, struct encoded *out,
                        int *n_out)
{
    int n = 0, b = 0;
    uint64_t id = 1ULL << 62;
    struct ledger_cmd c = base_cmd(LEDGER_CMD_ACCOUNT_CREATE, id++);
    snprintf(c.u.create.name, sizeof(c.u.create.name), "org");
    c.u.create.limits.set = LEDGER_LIM_BUDGET | LEDGER_LIM_PERIOD | LEDGER_LIM_RPM;
    c.u.create.limits.budget_micros = LEDGER_AMOUNT_MAX;
    c.u.create.limits.period_kind = LEDGER_PERIOD_MONTH;
    c.u.create.limits.rpm = 1000000000;
    cmds[n++] = c;
    for (int t = 0; t < 10; t++) {
        c = base_cmd(LEDGER_CMD_ACCOUNT_CREATE, id++);
        snprintf(c.u.create.name, sizeof(c.u.create.name), "org/team%d", t);
        snprintf(c.u.create.parent, sizeof(c.u.create.parent), "org");
        c.u.create.limits.set = LEDGER_LIM_BUDGET | LEDGER_LIM_TPM | LEDGER_LIM_PARALLEL;
        c.u.create.limits.budget_micros = LEDGER_AMOUNT_MAX;
        c.u.create.limits.tpm = 1000000000000ULL;
        c.u.create.limits.max_parallel = 1000000;
        cmds[n++] = c;
    }
    for (int k = 0; k < o->keys; k++) {
        c = base_cmd(LEDGER_CMD_ACCOUNT_CREATE, id++);
        snprintf(c.u.create.name, sizeof(c.u.create.name), "org/team%d/key%d", k % 10, k);
        snprintf(c.u.create.parent, sizeof(c.u.create.parent), "org/team%d", k % 10);
        c.u.create.limits.set = LEDGER_LIM_BUDGET;
        c.u.create.limits.budget_micros = LEDGER_AMOUNT_MAX;
        cmds[n++] = c;
        c = base_cmd(LEDGER_CMD_KEY_ADD, id++);
        snprintf(c.u.key.account, sizeof(c.u.key.account), "org/team%d/key%d", k % 10, k);
        key_of(c.u.key.key_hash, k);
        cmds[n++] = c;
    }
    for (int i = 0; i < n; i += LEDGER_BATCH_MAX_CMDS / 2, b++) {
        int m = n - i < LEDGER_BATCH_MAX_CMDS / 2 ? n - i : LEDGER_BATCH_MAX_CMDS / 2;
        if (ledger_batch_encode(1767225600000LL, cmds + i, (size_t)m, &out[b].buf,
                                &out[b].len) != 0) {
            return -1;
        }
    }
    *n_out = b;
    return 0;
}

/* Batch i reserves ids [i*half, (i+1)*half) and settles those of batch i - 1. */
static int encode_stream(const struct opts *o, struct ledger_cmd *cmds, struct encoded *out)
{
    int half = o->batch / 2;
    uint64_t seed = 0x9E3779B97F4A7C15ULL;
    for (int i = 0; i < o->batches; i++) {
        int n = 0;
        for (int j = 0; j < half; j++) {
            uint64_t rid = (uint64_t)i * half + j + 1;
            struct ledger_cmd c = base_cmd(LEDGER_CMD_RESERVE, rid);
            seed ^= seed << 13, seed ^= seed >> 7, seed ^= seed << 17;
            key_of(c.u.reserve.key_hash, (int)(seed % (uint64_t)o->keys));
            c.u.reserve.estimate_micros = 2000;
            c.u.reserve.estimate_tokens = 500;
            c.u.reserve.ttl_ms = 600000;
            cmds[n++] = c;
            if (i > 0) {
                c = base_cmd(LEDGER_CMD_SETTLE, rid - half);
                c.u.settle.actual_micros = 1500;
                c.u.settle.actual_tokens = 450;
                cmds[n++] = c;
            }
        }
        int64_t stamp = 1767225600000LL + i; /* one millisecond per batch */
        if (ledger_batch_encode(stamp, cmds, (size_t)n, &out[i].buf, &out[i].len) != 0) {
            return -1;
        }
    }
    return 0;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double run_once(const struct opts *o, struct encoded *setup, int n_setup,
                       struct encoded *stream, struct ledger_result *results, long *denied)
{
    char dir[] = "/tmp/tally-bench-XXXXXX", err[LEDGER_ERRMSG_SIZE], rm[64];
    struct ledger *l;
    struct ledger_options lo = {.flags = o->sync ? 0 : LEDGER_OPEN_NOSYNC};
    if (mkdtemp(dir) == NULL || ledger_open(&l, dir, &lo, err) != 0) {
        fprintf(stderr, "ledger-bench: open: %s\n", err);
        exit(1);
    }
    uint64_t index = 0;
    size_t n;
    for (int i = 0; i < n_setup; i++) {
        if (ledger_apply_batch(l, ++index, setup[i].buf, setup[i].len, results, &n) != 0) {
            fprintf(stderr, "ledger-bench: setup: %s\n", ledger_errmsg(l));
            exit(1);
        }
    }
    long cmds = 0;
    *denied = 0;
    double t0 = now_s();
    for (int i = 0; i < o->batches; i++) {
        if (ledger_apply_batch(l, ++index, stream[i].buf, stream[i].len, results, &n) != 0) {
            fprintf(stderr, "ledger-bench: batch %d: %s\n", i, ledger_errmsg(l));
            exit(1);
        }
        for (size_t j = 0; j < n; j++) {
            *denied += results[j].status != LEDGER_OK;
        }
        cmds += (long)n;
    }
    double secs = now_s() - t0;
    if (ledger_check_invariants(l) != 0) {
        fprintf(stderr, "ledger-bench: invariants: %s\n", ledger_errmsg(l));
        exit(1);
    }
    ledger_close(l);
    snprintf(rm, sizeof(rm), "rm -rf %s", dir);
    if (system(rm) != 0) {
        fprintf(stderr, "ledger-bench: could not remove %s\n", dir);
    }
    return (double)cmds / secs;
}

static int parse(int argc, char **argv, struct opts *o)
{
    for (int i = 1; i < argc; i++) {
        int *dst = NULL;
        if (strcmp(argv[i], "--sync") == 0) {
            o->sync = 1;
            continue;
        }
        if (strcmp(argv[i], "--batches") == 0) {
            dst = &o->batches;
        } else if (strcmp(argv[i], "--batch") == 0) {
            dst = &o->batch;
        } else if (strcmp(argv[i], "--keys") == 0) {
            dst = &o->keys;
        } else if (strcmp(argv[i], "--runs") == 0) {
            dst = &o->runs;
        }
        if (dst == NULL || i + 1 >= argc || (*dst = atoi(argv[++i])) <= 0) {
            return -1;
        }
    }
    if (o->batch < 2 || o->batch > LEDGER_BATCH_MAX_CMDS || o->keys > 100000) {
        return -1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    struct opts o = {.batches = 2000, .batch = 256, .keys = 1000, .runs = 5};
    if (parse(argc, argv, &o) != 0) {
        fprintf(stderr, "usage: ledger-bench [--batches N] [--batch 2..%d] [--keys N<=100000] "
                        "[--runs N] [--sync]\n", LEDGER_BATCH_MAX_CMDS);
        return 3;
    }
    struct ledger_cmd *cmds = calloc(2 * (size_t)o.keys + 64, sizeof(*cmds));
    struct ledger_cmd *bcmds = calloc((size_t)o.batch, sizeof(*bcmds));
    struct encoded *setup = calloc((size_t)o.keys / 100 + 8, sizeof(*setup));
    struct encoded *stream = calloc((size_t)o.batches, sizeof(*stream));
    struct ledger_result *results = calloc(LEDGER_BATCH_MAX_CMDS, sizeof(*results));
    double *rates = calloc((size_t)o.runs, sizeof(*rates));
    int n_setup;
    if (!cmds || !bcmds || !setup || !stream || !results || !rates ||
        encode_setup(&o, cmds, setup, &n_setup) != 0 || encode_stream(&o, bcmds, stream) != 0) {
        fprintf(stderr, "ledger-bench: cannot prepare batches\n");
        return 1;
    }
    printf("ledger-bench: %d batches of %d (reserve+settle pairs), %d keys in 10 teams under "
           "one org, %s\n", o.batches, o.batch, o.keys, o.sync ? "fsync per batch" : "nosync");
    for (int r = 0; r < o.runs; r++) {
        long denied;
        rates[r] = run_once(&o, setup, n_setup, stream, results, &denied);
        printf("  run %d: %.0f commands/s (%.0f reserve+settle pairs/s), %ld not ok\n", r + 1,
               rates[r], rates[r] / 2, denied);
    }
    qsort(rates, (size_t)o.runs, sizeof(*rates), cmp_double);
    double median = rates[o.runs / 2];
    printf("median: %.0f commands/s = %.0f reserve+settle pairs/s\n", median, median / 2);
    return 0;
}
