/*
 * tally-ledger-demo: the ledger on its own, in a temporary directory.
 *
 * Builds an org -> team -> key chain with a budget, reserves and settles until the
 * budget denies, lets a reservation expire, and prints every answer and the accounts'
 * state. It is the README's first command until tallyd serves the cluster.
 */
#include "ledger/ledger.h"

#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static struct ledger *g_ledger;
static uint64_t g_index, g_next_id = 1;
static int64_t g_now_ms = 1767225600000LL; /* 2026-01-01T00:00:00Z */

static struct ledger_cmd cmd(uint8_t type)
{
    struct ledger_cmd c;
    memset(&c, 0, sizeof(c));
    c.type = type;
    uint64_t id = g_next_id++;
    memcpy(c.request_id, &id, sizeof(id));
    snprintf(c.actor, sizeof(c.actor), "demo");
    return c;
}

static struct ledger_result run(struct ledger_cmd c)
{
    static struct ledger_result results[LEDGER_BATCH_MAX_CMDS];
    void *buf;
    size_t len, n = 0;
    if (ledger_batch_encode(g_now_ms, &c, 1, &buf, &len) != 0 ||
        ledger_apply_batch(g_ledger, ++g_index, buf, len, results, &n) != 0 || n != 1) {
        fprintf(stderr, "demo: batch failed: %s\n", ledger_errmsg(g_ledger));
        exit(1);
    }
    free(buf);
    return results[0];
}

static void show(const char *what, struct ledger_result r)
{
    if (r.status == LEDGER_OK) {
        printf("%-34s ok", what);
        if (r.charged_micros) {
            printf("  charged=%lld", (long long)r.charged_micros);
        }
        printf("\n");
    } else if (r.status == LEDGER_DENIED) {
        printf("%-34s DENIED %s%s%s, remaining=%lld retry_after_ms=%lld\n", what,
               ledger_deny_reason_name(r.deny_reason), r.account[0] ? " on " : "", r.account,
               (long long)r.remaining, (long long)r.retry_after_ms);
    } else {
        printf("%-34s error: %s\n", what, ledger_strerror(r.status));
    }
}

static void account(const char *name)
{
    struct ledger_account_info a;
    if (ledger_account_get(g_ledger, name, &a) == 0) {
        printf("  %-12s spent=%-8lld held=%-8lld remaining=%-10lld inflight=%llu\n", a.name,
               (long long)a.spent_micros, (long long)a.held_micros,
               a.remaining_micros == INT64_MAX ? -1LL : (long long)a.remaining_micros,
               (unsigned long long)a.inflight);
    }
}

static struct ledger_cmd create(const char *name, const char *parent, int64_t budget)
{
    struct ledger_cmd c = cmd(LEDGER_CMD_ACCOUNT_CREATE);
    snprintf(c.u.create.name, sizeof(c.u.create.name), "%s", name);
    snprintf(c.u.create.parent, sizeof(c.u.create.parent), "%s", parent);
    if (budget >= 0) {
        c.u.create.limits.set = LEDGER_LIM_BUDGET | LEDGER_LIM_PERIOD;
        c.u.create.limits.budget_micros = budget;
        c.u.create.limits.period_kind = LEDGER_PERIOD_MONTH;
    }
    return c;
}

static struct ledger_cmd reserve(const char *secret, uint64_t id, int64_t estimate)
{
    struct ledger_cmd c = cmd(LEDGER_CMD_RESERVE);
    memcpy(c.request_id, &id, sizeof(id));
    SHA256((const unsigned char *)secret, strlen(secret), c.u.reserve.key_hash);
    c.u.reserve.estimate_micros = estimate;
    c.u.reserve.estimate_tokens = 1000;
    c.u.reserve.ttl_ms = 60000;
    return c;
}

static struct ledger_cmd settle(uint64_t id, int64_t actual)
{
    struct ledger_cmd c = cmd(LEDGER_CMD_SETTLE);
    memcpy(c.request_id, &id, sizeof(id));
    c.u.settle.actual_micros = actual;
    return c;
}

int main(void)
{
    char dir[] = "/tmp/tally-demo-XXXXXX", err[LEDGER_ERRMSG_SIZE];
    if (mkdtemp(dir) == NULL || ledger_open(&g_ledger, dir, NULL, err) != 0) {
        fprintf(stderr, "demo: cannot open a ledger in %s: %s\n", dir, err);
        return 1;
    }
    printf("ledger in %s\n\n", dir);
    show("create org acme (budget $1.00/month)", run(create("acme", "", 1000000)));
    show("create team acme/search", run(create("acme/search", "acme", 600000)));
    show("create key acme/search/k1", run(create("acme/search/k1", "acme/search", -1)));
    struct ledger_cmd key = cmd(LEDGER_CMD_KEY_ADD);
    snprintf(key.u.key.account, sizeof(key.u.key.account), "acme/search/k1");
    SHA256((const unsigned char *)"sk-demo", 7, key.u.key.key_hash);
    show("add key sk-demo", run(key));

    uint64_t rid = 1000;
    for (int i = 0; i < 4; i++, rid++) {
        char what[64];
        snprintf(what, sizeof(what), "reserve 200000 (request %llu)", (unsigned long long)rid);
        struct ledger_result r = run(reserve("sk-demo", rid, 200000));
        show(what, r);
        if (r.status == LEDGER_OK) {
            snprintf(what, sizeof(what), "settle %llu at 180000", (unsigned long long)rid);
            show(what, run(settle(rid, 180000)));
        }
    }
    show("replay of request 1000", run(reserve("sk-demo", 1000, 200000)));
    show("reserve with unknown key", run(reserve("sk-nope", 9999, 1)));
    show("reserve 50000 (request 2000)", run(reserve("sk-demo", 2000, 50000)));
    printf("\nafter the grants:\n");
    account("acme");
    account("acme/search");
    account("acme/search/k1");
    g_now_ms += 61000;
    printf("\n");
    show("61 s later: reserve 1 (2001)", run(reserve("sk-demo", 2001, 1)));
    printf("request 2000 expired and was charged its estimate:\n");
    account("acme/search");

    int inv = ledger_check_invariants(g_ledger);
    uint8_t hash[32];
    ledger_state_hash(g_ledger, hash);
    printf("\ninvariants: %s; state hash %02x%02x%02x%02x... at index %llu\n",
           inv == 0 ? "hold" : ledger_errmsg(g_ledger), hash[0], hash[1], hash[2], hash[3],
           (unsigned long long)ledger_applied_index(g_ledger));
    ledger_close(g_ledger);
    char rm[64];
    snprintf(rm, sizeof(rm), "rm -rf %s", dir);
    return system(rm) == 0 && inv == 0 ? 0 : 1;
}
