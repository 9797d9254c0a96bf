/*
 * ledger_testlib_extra.h: helpers shared by the ledger unit tests on top of
 * ledger_testlib.h: a standard org <- team <- user chain, status/deny/account checks
 * that report the caller's line, and collectors for the query callbacks.
 *
 * The helpers are in ledger_testlib_extra.c (the tally_testlib_ledger library); a check
 * that fails counts against the calling test and names the caller's file and line.
 */
#ifndef TALLY_LEDGER_TESTLIB_EXTRA_H
#define TALLY_LEDGER_TESTLIB_EXTRA_H

#include "ledger_testlib.h"

#define TLX_T0 1700000000000LL /* 2023-11-14T22:13:20Z: the clock of a fresh test */
#define TLX_TTL 60000LL        /* a ttl no test reaches unless it means to */
#define TLX_DAY_MS 86400000LL
#define TLX_KEY "sk-user" /* the key secret of the chain's leaf */
#define TLX_JOURNAL_MAX 256
#define TLX_LIST_MAX 64

/* ---- Limits. ---- */

/* Limits with only a budget, only an rpm bucket or only a tpm bucket set. */
struct ledger_limits tlx_budget(int64_t budget_micros);

struct ledger_limits tlx_rpm(uint64_t rpm, uint64_t burst);

struct ledger_limits tlx_tpm(uint64_t tpm, uint64_t burst);

/* A FIXED period of `period_ms`, anchored when it is set. */
struct ledger_limits tlx_fixed_period(int64_t period_ms);

/* ---- Running commands with the caller's line in the message. ---- */

/* TLX_RUN's body. */
struct ledger_result tlx_run_at(struct tl *t, struct ledger_cmd c, int status, const char *file,
                                int line);

/* Run `c` as one batch and check its status; evaluates to the result. */
#define TLX_RUN(t, c, status) tlx_run_at((t), (c), (status), __FILE__, __LINE__)
#define TLX_OK(t, c) TLX_RUN((t), (c), LEDGER_OK)

/* TLX_CHECK_DENY's body. */
void tlx_check_deny_at(const struct ledger_result *r, int reason, const char *account,
                       int64_t remaining, int64_t retry_after_ms, const char *file, int line);

/* `r` is DENIED for `reason` on `account` with exactly `remaining` and `retry`. */
#define TLX_CHECK_DENY(r, reason, account, remaining, retry)                                       \
    tlx_check_deny_at(&(r), (reason), (account), (remaining), (retry), __FILE__, __LINE__)

/* TLX_CHECK_ACCOUNT's body. */
void tlx_check_account_at(struct tl *t, const char *name, int64_t spent, int64_t held,
                          uint64_t inflight, const char *file, int line);

/* Account `name` has exactly this spent, held and inflight. */
#define TLX_CHECK_ACCOUNT(t, name, spent, held, inflight)                                          \
    tlx_check_account_at((t), (name), (spent), (held), (inflight), __FILE__, __LINE__)

/* Every account of the standard chain (user, team, org) has this spent, held, inflight. */
#define TLX_CHECK_CHAIN(t, spent, held, inflight)                                                  \
    do {                                                                                           \
        TLX_CHECK_ACCOUNT((t), "user", (spent), (held), (inflight));                               \
        TLX_CHECK_ACCOUNT((t), "team", (spent), (held), (inflight));                               \
        TLX_CHECK_ACCOUNT((t), "org", (spent), (held), (inflight));                                \
    } while (0)

/* ---- The standard chain. ---- */

/* Create account `name` under `parent` with `lim` (NULL: none), failing the test if
 * it is refused. */
void tlx_create(struct tl *t, const char *name, const char *parent,
                const struct ledger_limits *lim);

/* Open a ledger at TLX_T0 holding org <- team <- user with these limits (NULL: none)
 * and key TLX_KEY on user. */
void tlx_open_chain(struct tl *t, const struct ledger_limits *org, const struct ledger_limits *team,
                    const struct ledger_limits *user);

/* The standard chain with `lim` on the account named `level` only. */
void tlx_open_chain_on(struct tl *t, const char *level, const struct ledger_limits *lim);

/* Reopen the ledger in the same directory (a restart). */
void tlx_reopen(struct tl *t);

/* Move the clock to `now_ms` and apply an effect-free batch there (expiry runs). */
void tlx_tick_to(struct tl *t, int64_t now_ms);

/* A reserve by account naming `model`. */
struct ledger_cmd tlx_reserve_model(struct tl *t, uint64_t id, const char *account,
                                    int64_t estimate_micros, uint64_t tokens, const char *model);

/* ---- Request ids. ---- */

/* `id` is tl_id()'s id for `n`. */
int tlx_id_is(const uint8_t id[LEDGER_REQUEST_ID_SIZE], uint64_t n);

/* ---- Journal. ---- */

struct tlx_journal {
    size_t n;
    struct ledger_journal_entry e[TLX_JOURNAL_MAX];
};

/* Every journal entry of `account` (NULL: all), in log order. */
void tlx_journal(struct tl *t, const char *account, struct tlx_journal *j);

/* Entries of kind `kind` for `account` (NULL: any account). */
size_t tlx_journal_count(const struct tlx_journal *j, uint8_t kind, const char *account);

/* The first entry of kind `kind` for `account` and request id `id`, or NULL. */
const struct ledger_journal_entry *tlx_journal_find(const struct tlx_journal *j, uint8_t kind,
                                                    const char *account, uint64_t id);

/* TLX_CHECK_ENTRY's body. */
void tlx_check_entry_at(const struct tlx_journal *j, uint8_t kind, const char *account, uint64_t id,
                        int64_t amount, const char *file, int line);

/* The journal has an entry of `kind` for `account` and reservation `id` with `amount`. */
#define TLX_CHECK_ENTRY(j, kind, account, id, amount)                                              \
    tlx_check_entry_at((j), (kind), (account), (id), (amount), __FILE__, __LINE__)

/* ---- Reservations. ---- */

struct tlx_resv_list {
    size_t n;
    struct ledger_reservation_info r[TLX_LIST_MAX];
};

/* Open reservations whose chain contains `account` (NULL: all). */
void tlx_resv_list(struct tl *t, const char *account, struct tlx_resv_list *l);

/* Reservation `id`, failing the test if it is not stored. */
struct ledger_reservation_info tlx_resv(struct tl *t, uint64_t id);

/* TLX_CHECK_EXPIRES_AT's body. */
void tlx_check_expires_at_at(struct tl *t, uint64_t id, int64_t at_ms, const char *file, int line);

/* Reservation `id` is still open 1 ms before `at_ms` and expired at `at_ms` (moves the
 * clock to `at_ms`). */
#define TLX_CHECK_EXPIRES_AT(t, id, at_ms)                                                         \
    tlx_check_expires_at_at((t), (id), (at_ms), __FILE__, __LINE__)

#endif /* TALLY_LEDGER_TESTLIB_EXTRA_H */
