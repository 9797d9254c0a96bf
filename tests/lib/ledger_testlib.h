/*
 * ledger_testlib.h: builders for ledger commands and a one-call way to apply them.
 *
 * struct tl wraps a ledger opened in a temp directory with its own Raft-like index
 * counter and a test-controlled clock (`now_ms`), so a test reads like a script:
 *
 *     struct tl t; tl_open(&t, 1000);
 *     struct ledger_result r = tl_run(&t, tl_create("org", "", NULL));
 *
 * The helpers are in ledger_testlib.c (the tally_testlib_ledger library); they report
 * through the harness (test.h): a REQUIRE inside one stops the calling test.
 */
#ifndef TALLY_LEDGER_TESTLIB_H
#define TALLY_LEDGER_TESTLIB_H

#include "ledger/ledger.h"
#include "test.h"

struct tl {
    struct ledger *l;
    const char *dir;
    uint64_t index;   /* next batch is applied at index + 1 */
    int64_t now_ms;   /* stamp of the next batch */
    uint64_t next_id; /* request ids from tl_next_id() */
};

/* Record that `l` is open in place of `replace` (NULL: a new slot); every ledger still
 * recorded is closed when the test ends. At most 64 open at once. */
void tl_track(struct ledger *l, struct ledger *replace);

/* Open a ledger in a fresh temp directory with options `o` (NULL: defaults), the clock at
 * `now_ms`; fails the test if it cannot. */
void tl_open_opts(struct tl *t, int64_t now_ms, const struct ledger_options *o);

/* tl_open_opts() with the default options. */
void tl_open(struct tl *t, int64_t now_ms);

/* Close the ledger (its directory stays until the test ends). */
void tl_close(struct tl *t);

/* A request id whose first 8 bytes are `n` big-endian and the rest zero. */
void tl_id(uint8_t id[LEDGER_REQUEST_ID_SIZE], uint64_t n);

/* The key hash libtally sends for `secret`: SHA-256 of its bytes. */
void tl_key_hash(const char *secret, uint8_t out[LEDGER_KEY_HASH_SIZE]);

/* A zeroed command of `type` with the next request id of `t` and actor "test". */
struct ledger_cmd tl_cmd(struct tl *t, uint8_t type);

/* Apply `n` commands as one batch at the next index; results into `out`. Returns
 * ledger_batch_encode()'s or ledger_apply_batch()'s error. */
int tl_apply(struct tl *t, const struct ledger_cmd *cmds, size_t n, struct ledger_result *out,
             size_t *n_out);

/* Apply one command as its own batch and return its result (fails the test on a batch
 * error). */
struct ledger_result tl_run(struct tl *t, struct ledger_cmd c);

/* Builders: a command of each type with the next request id of `t` (reserve, settle,
 * void and extend take the request id `id` instead); a NULL `lim` sets no limits. */
struct ledger_cmd tl_create(struct tl *t, const char *name, const char *parent,
                            const struct ledger_limits *lim);

struct ledger_cmd tl_update(struct tl *t, const char *name, const struct ledger_limits *lim,
                            uint32_t clear);

struct ledger_cmd tl_move(struct tl *t, const char *name, const char *parent);

struct ledger_cmd tl_key_add(struct tl *t, const char *account, const char *secret);

struct ledger_cmd tl_key_revoke(struct tl *t, const char *secret);

struct ledger_cmd tl_model_limit(struct tl *t, const char *account, const char *model,
                                 const struct ledger_model_limits *lim);

/* Reserve by account name with request id `id`. */
struct ledger_cmd tl_reserve(struct tl *t, uint64_t id, const char *account,
                             int64_t estimate_micros, uint64_t tokens, int64_t ttl_ms);

/* Reserve by virtual key secret (hashed here, as libtally does). */
struct ledger_cmd tl_reserve_key(struct tl *t, uint64_t id, const char *secret,
                                 int64_t estimate_micros, uint64_t tokens, int64_t ttl_ms);

struct ledger_cmd tl_settle(struct tl *t, uint64_t id, int64_t actual_micros,
                            uint64_t actual_tokens);

struct ledger_cmd tl_void(struct tl *t, uint64_t id);

struct ledger_cmd tl_extend(struct tl *t, uint64_t id, int64_t ttl_ms);

struct ledger_cmd tl_config(struct tl *t, int64_t retention_ms);

/* An extend of a reservation nobody holds: changes nothing but lets time advance. */
void tl_tick(struct tl *t);

/* Account state, failing the test if the account is missing. */
struct ledger_account_info tl_account(struct tl *t, const char *name);

/* Invariants hold, with the checker's message on failure. */
#define TL_CHECK_INVARIANTS(t)                                                                     \
    do {                                                                                           \
        int tl_rv_ = ledger_check_invariants((t)->l);                                              \
        if (tl_rv_ != 0) {                                                                         \
            fprintf(stderr, "  invariants: %s\n", ledger_errmsg((t)->l));                          \
        }                                                                                          \
        CHECK(tl_rv_ == 0);                                                                        \
    } while (0)

#endif /* TALLY_LEDGER_TESTLIB_H */
