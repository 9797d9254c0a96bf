/*
 * ledger_testlib_extra.h: helpers shared by the ledger unit tests on top of
 * ledger_testlib.h: a standard org <- team <- user chain, status/deny/account checks
 * that report the caller's line, and collectors for the query callbacks.
 *
 * Everything is static inline: include it from any test file.
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

static inline struct ledger_limits tlx_budget(int64_t budget_micros)
{
    struct ledger_limits l;
    memset(&l, 0, sizeof(l));
    l.set = LEDGER_LIM_BUDGET;
    l.budget_micros = budget_micros;
    return l;
}

static inline struct ledger_limits tlx_rpm(uint64_t rpm, uint64_t burst)
{
    struct ledger_limits l;
    memset(&l, 0, sizeof(l));
    l.set = LEDGER_LIM_RPM;
    l.rpm = rpm;
    l.rpm_burst = burst;
    return l;
}

static inline struct ledger_limits tlx_tpm(uint64_t tpm, uint64_t burst)
{
    struct ledger_limits l;
    memset(&l, 0, sizeof(l));
    l.set = LEDGER_LIM_TPM;
    l.tpm = tpm;
    l.tpm_burst = burst;
    return l;
}

/* A FIXED period of `period_ms`, anchored when it is set. */
static inline struct ledger_limits tlx_fixed_period(int64_t period_ms)
{
    struct ledger_limits l;
    memset(&l, 0, sizeof(l));
    l.set = LEDGER_LIM_PERIOD;
    l.period_kind = LEDGER_PERIOD_FIXED;
    l.period_ms = period_ms;
    return l;
}

/* ---- Running commands with the caller's line in the message. ---- */

static inline struct ledger_result tlx_run_at(struct tl *t, struct ledger_cmd c, int status,
                                              const char *file, int line)
{
    struct ledger_result r = tl_run(t, c);
    if (r.status != status) {
        fprintf(stderr, "  %s:%d: status %d (%s, deny %s at \"%s\"), expected %d\n", file, line,
                r.status, r.status < 0 ? ledger_strerror(r.status) : "-",
                ledger_deny_reason_name(r.deny_reason), r.account, status);
        test_failures_in_current++;
    }
    return r;
}

/* Run `c` as one batch and check its status; evaluates to the result. */
#define TLX_RUN(t, c, status) tlx_run_at((t), (c), (status), __FILE__, __LINE__)
#define TLX_OK(t, c) TLX_RUN((t), (c), LEDGER_OK)

static inline void tlx_check_deny_at(const struct ledger_result *r, int reason, const char *account,
                                     int64_t remaining, int64_t retry_after_ms, const char *file,
                                     int line)
{
    if (r->status != LEDGER_DENIED || r->deny_reason != reason ||
        strcmp(r->account, account) != 0 || r->remaining != remaining ||
        r->retry_after_ms != retry_after_ms) {
        fprintf(stderr,
                "  %s:%d: answer status %d %s \"%s\" remaining %" PRId64 " retry %" PRId64
                ", expected DENIED %s \"%s\" remaining %" PRId64 " retry %" PRId64 "\n",
                file, line, r->status, ledger_deny_reason_name(r->deny_reason), r->account,
                r->remaining, r->retry_after_ms, ledger_deny_reason_name(reason), account,
                remaining, retry_after_ms);
        test_failures_in_current++;
    }
}

/* `r` is DENIED for `reason` on `account` with exactly `remaining` and `retry`. */
#define TLX_CHECK_DENY(r, reason, account, remaining, retry)                                       \
    tlx_check_deny_at(&(r), (reason), (account), (remaining), (retry), __FILE__, __LINE__)

static inline void tlx_check_account_at(struct tl *t, const char *name, int64_t spent, int64_t held,
                                        uint64_t inflight, const char *file, int line)
{
    struct ledger_account_info a;
    memset(&a, 0, sizeof(a));
    int rv = ledger_account_get(t->l, name, &a);
    if (rv != 0 || a.spent_micros != spent || a.held_micros != held || a.inflight != inflight) {
        fprintf(stderr,
                "  %s:%d: account \"%s\" (rv %d) spent %" PRId64 " held %" PRId64
                " inflight %" PRIu64 ", expected %" PRId64 " %" PRId64 " %" PRIu64 "\n",
                file, line, name, rv, a.spent_micros, a.held_micros, a.inflight, spent, held,
                inflight);
        test_failures_in_current++;
    }
}

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
static inline void tlx_create(struct tl *t, const char *name, const char *parent,
                              const struct ledger_limits *lim)
{
    struct ledger_result r = tl_run(t, tl_create(t, name, parent, lim));
    if (r.status != LEDGER_OK) {
        fprintf(stderr, "  tlx_create(%s): %d %s\n", name, r.status, ledger_errmsg(t->l));
    }
    REQUIRE(r.status == LEDGER_OK);
}

/* Open a ledger at TLX_T0 holding org <- team <- user with these limits (NULL: none)
 * and key TLX_KEY on user. */
static inline void tlx_open_chain(struct tl *t, const struct ledger_limits *org,
                                  const struct ledger_limits *team,
                                  const struct ledger_limits *user)
{
    tl_open(t, TLX_T0);
    tlx_create(t, "org", "", org);
    tlx_create(t, "team", "org", team);
    tlx_create(t, "user", "team", user);
    REQUIRE(tl_run(t, tl_key_add(t, "user", TLX_KEY)).status == LEDGER_OK);
}

/* The standard chain with `lim` on the account named `level` only. */
static inline void tlx_open_chain_on(struct tl *t, const char *level,
                                     const struct ledger_limits *lim)
{
    tlx_open_chain(t, strcmp(level, "org") == 0 ? lim : NULL,
                   strcmp(level, "team") == 0 ? lim : NULL,
                   strcmp(level, "user") == 0 ? lim : NULL);
}

/* Reopen the ledger in the same directory (a restart). */
static inline void tlx_reopen(struct tl *t)
{
    char err[LEDGER_ERRMSG_SIZE] = "";
    tl_close(t);
    int rv = ledger_open(&t->l, t->dir, NULL, err);
    if (rv != 0) {
        fprintf(stderr, "ledger_open: %d %s\n", rv, err);
    }
    REQUIRE(rv == 0);
    tl_track(t->l, NULL);
}

/* Move the clock to `now_ms` and apply an effect-free batch there (expiry runs). */
static inline void tlx_tick_to(struct tl *t, int64_t now_ms)
{
    t->now_ms = now_ms;
    tl_tick(t);
}

/* A reserve by account naming `model`. */
static inline struct ledger_cmd tlx_reserve_model(struct tl *t, uint64_t id, const char *account,
                                                  int64_t estimate_micros, uint64_t tokens,
                                                  const char *model)
{
    struct ledger_cmd c = tl_reserve(t, id, account, estimate_micros, tokens, TLX_TTL);
    snprintf(c.u.reserve.model, sizeof(c.u.reserve.model), "%s", model);
    return c;
}

/* ---- Request ids. ---- */

static inline int tlx_id_is(const uint8_t id[LEDGER_REQUEST_ID_SIZE], uint64_t n)
{
    uint8_t want[LEDGER_REQUEST_ID_SIZE];
    tl_id(want, n);
    return memcmp(id, want, sizeof(want)) == 0;
}

/* ---- Journal. ---- */

struct tlx_journal {
    size_t n;
    struct ledger_journal_entry e[TLX_JOURNAL_MAX];
};

static inline int tlx_journal_cb(void *ctx, const struct ledger_journal_entry *entry)
{
    struct tlx_journal *j = ctx;
    if (j->n >= TLX_JOURNAL_MAX) {
        return 1;
    }
    j->e[j->n++] = *entry;
    return 0;
}

/* Every journal entry of `account` (NULL: all), in log order. */
static inline void tlx_journal(struct tl *t, const char *account, struct tlx_journal *j)
{
    j->n = 0;
    REQUIRE(ledger_journal_list(t->l, account, 0, INT64_MAX, tlx_journal_cb, j) == 0);
}

/* Entries of kind `kind` for `account` (NULL: any account). */
static inline size_t tlx_journal_count(const struct tlx_journal *j, uint8_t kind,
                                       const char *account)
{
    size_t n = 0;
    for (size_t i = 0; i < j->n; i++) {
        if (j->e[i].kind == kind && (account == NULL || strcmp(j->e[i].account, account) == 0)) {
            n++;
        }
    }
    return n;
}

/* The first entry of kind `kind` for `account` and request id `id`, or NULL. */
static inline const struct ledger_journal_entry *
tlx_journal_find(const struct tlx_journal *j, uint8_t kind, const char *account, uint64_t id)
{
    for (size_t i = 0; i < j->n; i++) {
        const struct ledger_journal_entry *e = &j->e[i];
        if (e->kind == kind && strcmp(e->account, account) == 0 && tlx_id_is(e->request_id, id)) {
            return e;
        }
    }
    return NULL;
}

static inline void tlx_check_entry_at(const struct tlx_journal *j, uint8_t kind,
                                      const char *account, uint64_t id, int64_t amount,
                                      const char *file, int line)
{
    const struct ledger_journal_entry *e = tlx_journal_find(j, kind, account, id);
    if (e == NULL) {
        fprintf(stderr, "  %s:%d: no journal entry kind %d for \"%s\" id %" PRIu64 "\n", file, line,
                kind, account, id);
        test_failures_in_current++;
    } else if (e->amount_micros != amount) {
        fprintf(stderr,
                "  %s:%d: journal kind %d \"%s\" id %" PRIu64 " amount %" PRId64
                ", expected %" PRId64 "\n",
                file, line, kind, account, id, e->amount_micros, amount);
        test_failures_in_current++;
    }
}

/* The journal has an entry of `kind` for `account` and reservation `id` with `amount`. */
#define TLX_CHECK_ENTRY(j, kind, account, id, amount)                                              \
    tlx_check_entry_at((j), (kind), (account), (id), (amount), __FILE__, __LINE__)

/* ---- Reservations. ---- */

struct tlx_resv_list {
    size_t n;
    struct ledger_reservation_info r[TLX_LIST_MAX];
};

static inline int tlx_resv_cb(void *ctx, const struct ledger_reservation_info *info)
{
    struct tlx_resv_list *l = ctx;
    if (l->n >= TLX_LIST_MAX) {
        return 1;
    }
    l->r[l->n++] = *info;
    return 0;
}

/* Open reservations whose chain contains `account` (NULL: all). */
static inline void tlx_resv_list(struct tl *t, const char *account, struct tlx_resv_list *l)
{
    l->n = 0;
    REQUIRE(ledger_reservation_list(t->l, account, tlx_resv_cb, l) == 0);
}

/* Reservation `id`, failing the test if it is not stored. */
static inline struct ledger_reservation_info tlx_resv(struct tl *t, uint64_t id)
{
    uint8_t rid[LEDGER_REQUEST_ID_SIZE];
    struct ledger_reservation_info info;
    tl_id(rid, id);
    int rv = ledger_reservation_get(t->l, rid, &info);
    if (rv != 0) {
        fprintf(stderr, "tlx_resv(%" PRIu64 "): %d\n", id, rv);
    }
    REQUIRE(rv == 0);
    return info;
}

static inline void tlx_check_expires_at_at(struct tl *t, uint64_t id, int64_t at_ms,
                                           const char *file, int line)
{
    tlx_tick_to(t, at_ms - 1);
    uint8_t before = tlx_resv(t, id).state;
    tlx_tick_to(t, at_ms);
    uint8_t after = tlx_resv(t, id).state;
    if (before != LEDGER_RESV_OPEN || after != LEDGER_RESV_EXPIRED) {
        fprintf(stderr,
                "  %s:%d: reservation %" PRIu64 " state %d at %" PRId64 " and %d at %" PRId64
                ", expected open then expired\n",
                file, line, id, before, at_ms - 1, after, at_ms);
        test_failures_in_current++;
    }
}

/* Reservation `id` is still open 1 ms before `at_ms` and expired at `at_ms` (moves the
 * clock to `at_ms`). */
#define TLX_CHECK_EXPIRES_AT(t, id, at_ms)                                                         \
    tlx_check_expires_at_at((t), (id), (at_ms), __FILE__, __LINE__)

#endif /* TALLY_LEDGER_TESTLIB_EXTRA_H */
