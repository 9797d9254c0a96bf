/*
 * ledger_decode_fuzz.c: libFuzzer target for ledger_batch_decode().
 *
 * Batches come from the Raft log, which a peer or a damaged disk can fill with
 * anything, so the decoder must never crash, never read outside its input (ASan) and
 * never hit undefined behaviour (UBSan). Beyond that the target checks what the API
 * promises: the only results are 0, -LEDGER_EDECODE and -LEDGER_ETOOBIG; what decodes
 * is within the bounds, so it encodes again; and decode(encode(x)) re-encodes to the
 * same bytes (the codec is a fixpoint after one round).
 *
 * Built with -DLEDGER_FUZZ_SEEDS this file is instead a program that writes a small
 * seed corpus of valid batches (made with ledger_batch_encode) into the directory
 * given as its argument. tests/fuzz/run.sh builds both and runs the fuzzer.
 */
#include "ledger/ledger.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static struct ledger_cmd decoded[LEDGER_BATCH_MAX_CMDS], again[LEDGER_BATCH_MAX_CMDS];

static void fail(const char *what, int rv)
{
    fprintf(stderr, "ledger_decode_fuzz: %s (%d)\n", what, rv);
    abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int64_t stamp = 0, stamp2 = 0;
    size_t n = 0, n2 = 0, len = 0, len2 = 0;
    void *buf = NULL, *buf2 = NULL;
    int rv = ledger_batch_decode(data, size, &stamp, decoded, LEDGER_BATCH_MAX_CMDS, &n);
    if (rv == -LEDGER_EDECODE || rv == -LEDGER_ETOOBIG) {
        return 0;
    }
    if (rv != 0 || n == 0 || n > LEDGER_BATCH_MAX_CMDS) {
        fail("decode returned an undocumented result", rv);
    }
    rv = ledger_batch_encode(stamp, decoded, n, &buf, &len);
    if (rv != 0) {
        fail("a decoded batch does not encode", rv);
    }
    rv = ledger_batch_decode(buf, len, &stamp2, again, LEDGER_BATCH_MAX_CMDS, &n2);
    if (rv != 0 || stamp2 != stamp || n2 != n) {
        fail("a re-encoded batch does not decode to the same count and stamp", rv);
    }
    rv = ledger_batch_encode(stamp2, again, n2, &buf2, &len2);
    if (rv != 0 || len2 != len || memcmp(buf, buf2, len) != 0) {
        fail("encode(decode(encode(decode(x)))) differs from encode(decode(x))", rv);
    }
    free(buf);
    free(buf2);
    return 0;
}

#ifdef LEDGER_FUZZ_SEEDS

/* A command of `type` with plausible fields; `i` varies them. */
static struct ledger_cmd seed_cmd(uint8_t type, unsigned i)
{
    struct ledger_cmd c;
    memset(&c, 0, sizeof(c));
    c.type = type;
    c.request_id[0] = (uint8_t)i;
    c.request_id[15] = type;
    snprintf(c.actor, sizeof(c.actor), "admin@%u", i);
    struct ledger_limits lim = {.set = LEDGER_LIM_ALL,
                                .period_kind = LEDGER_PERIOD_MONTH,
                                .budget_micros = 1000000 * (int64_t)(i + 1),
                                .soft_budget_micros = 800000,
                                .rpm = 60,
                                .tpm = 100000,
                                .tpm_burst = 200000,
                                .max_parallel = 4,
                                .expires_at_ms = 1800000000000LL};
    switch (type) {
    case LEDGER_CMD_ACCOUNT_CREATE:
        snprintf(c.u.create.name, sizeof(c.u.create.name), "org/team-%u", i);
        snprintf(c.u.create.parent, sizeof(c.u.create.parent), "org");
        c.u.create.limits = lim;
        break;
    case LEDGER_CMD_ACCOUNT_UPDATE:
        snprintf(c.u.update.name, sizeof(c.u.update.name), "org/team-%u", i);
        c.u.update.limits = lim;
        c.u.update.clear = LEDGER_LIM_RPM;
        c.u.update.set_parent = 1;
        break;
    case LEDGER_CMD_KEY_ADD:
    case LEDGER_CMD_KEY_REVOKE:
        snprintf(c.u.key.account, sizeof(c.u.key.account), "org/team-%u", i);
        memset(c.u.key.key_hash, 0x5a + (int)i, LEDGER_KEY_HASH_SIZE);
        break;
    case LEDGER_CMD_MODEL_LIMIT_SET:
        snprintf(c.u.model_limit.account, sizeof(c.u.model_limit.account), "org");
        snprintf(c.u.model_limit.model, sizeof(c.u.model_limit.model), "gpt-4o");
        c.u.model_limit.limits = (struct ledger_model_limits){
            .set = LEDGER_LIM_BUDGET | LEDGER_LIM_TPM, .budget_micros = 5000000, .tpm = 9000};
        break;
    case LEDGER_CMD_RESERVE:
        c.u.reserve.by_account = (uint8_t)(i & 1);
        memset(c.u.reserve.key_hash, 0x5a, LEDGER_KEY_HASH_SIZE);
        snprintf(c.u.reserve.account, sizeof(c.u.reserve.account), "org/team-%u", i);
        c.u.reserve.estimate_micros = 25000;
        c.u.reserve.estimate_tokens = 1500;
        snprintf(c.u.reserve.model, sizeof(c.u.reserve.model), "gpt-4o");
        c.u.reserve.ttl_ms = 120000;
        c.u.reserve.metadata_len = 12;
        memcpy(c.u.reserve.metadata, "{\"route\":1}", 12);
        break;
    case LEDGER_CMD_SETTLE:
        c.u.settle.actual_micros = 31000;
        c.u.settle.actual_tokens = 1800;
        break;
    case LEDGER_CMD_EXTEND:
        c.u.extend.ttl_ms = 60000;
        break;
    case LEDGER_CMD_CONFIG_SET:
        c.u.config.retention_ms = 3600000;
        break;
    default:
        break;
    }
    return c;
}

static int write_seed(const char *dir, unsigned k, int64_t stamp, const struct ledger_cmd *cmds,
                      size_t n)
{
    void *buf;
    size_t len;
    int rv = ledger_batch_encode(stamp, cmds, n, &buf, &len);
    if (rv != 0) {
        fprintf(stderr, "seed %u: encode: %d\n", k, rv);
        return 1;
    }
    char path[4096];
    snprintf(path, sizeof(path), "%s/seed-%02u", dir, k);
    FILE *f = fopen(path, "wb");
    int bad = f == NULL || fwrite(buf, 1, len, f) != len;
    if (f != NULL && fclose(f) != 0) {
        bad = 1;
    }
    free(buf);
    if (bad) {
        perror(path);
    }
    return bad;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s DIR\n", argv[0]);
        return 2;
    }
    struct ledger_cmd cmds[2 * (LEDGER_CMD_TYPE_MAX - 1)];
    unsigned k = 0;
    int bad = 0;
    /* One batch per command type, then one with every type twice. */
    for (uint8_t type = LEDGER_CMD_ACCOUNT_CREATE; type < LEDGER_CMD_TYPE_MAX; type++) {
        cmds[0] = seed_cmd(type, type);
        bad |= write_seed(argv[1], k++, 1700000000000LL + type, cmds, 1);
    }
    size_t n = 0;
    for (unsigned i = 0; i < 2; i++) {
        for (uint8_t type = LEDGER_CMD_ACCOUNT_CREATE; type < LEDGER_CMD_TYPE_MAX; type++) {
            cmds[n++] = seed_cmd(type, i);
        }
    }
    bad |= write_seed(argv[1], k++, 1700000000000LL, cmds, n);
    bad |= write_seed(argv[1], k++, -1, cmds, 3);
    bad |= write_seed(argv[1], k++, LEDGER_TIME_MAX_MS, cmds + 5, 2);
    return bad;
}

#endif /* LEDGER_FUZZ_SEEDS */
