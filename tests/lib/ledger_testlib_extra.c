/*
 * ledger_testlib_extra.c: the chain, checks and query collectors of ledger_testlib_extra.h.
 *
 * Each check prints what it found against what was expected, with the caller's file and
 * line, and counts a failure without stopping the test; only the lookups a test cannot go
 * on without (an account, a reservation, a query) REQUIRE.
 */
#include "ledger_testlib_extra.h"

struct ledger_limits tlx_budget(int64_t budget_micros)
{
    struct ledger_limits l;
    memset(&l, 0, sizeof(l));
    l.set = LEDGER_LIM_BUDGET;
    l.budget_micros = budget_micros;
    return l;
}

struct ledger_limits tlx_rpm(uint64_t rpm, uint64_t burst)
{
    struct ledger_limits l;
    memset(&l, 0, sizeof(l));
    l.set = LEDGER_LIM_RPM;
    l.rpm = rpm;
    l.rpm_burst = burst;
    return l;
}

struct ledger_limits tlx_tpm(uint64_t tpm, uint64_t burst)
{
    struct ledger_limits l;
    memset(&l, 0, sizeof(l));
    l.set = LEDGER_LIM_TPM;
    l.tpm = tpm;
    l.tpm_burst = burst;
    return l;
}

struct ledger_limits tlx_fixed_period(int64_t period_ms)
{
    struct ledger_limits l;
    memset(&l, 0, sizeof(l));
    l.set = LEDGER_LIM_PERIOD;
    l.period_kind = LEDGER_PERIOD_FIXED;
    l.period_ms = period_ms;
    return l;
}

struct ledger_result tlx_run_at(struct tl *t, struct ledger_cmd c, int status, const char *file,
                                int line)
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

void tlx_check_deny_at(const struct ledger_result *r, int reason, const char *account,
                       int64_t remaining, int64_t retry_after_ms, const char *file, int line)
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

void tlx_check_account_at(struct tl *t, const char *name, int64_t spent, int64_t held,
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

void tlx_create(struct tl *t, const char *name, const char *parent, const struct ledger_limits *lim)
{
    struct ledger_result r = tl_run(t, tl_create(t, name, parent, lim));
    if (r.status != LEDGER_OK) {
        fprintf(stderr, "  tlx_create(%s): %d %s\n", name, r.status, ledger_errmsg(t->l));
    }
    REQUIRE(r.status == LEDGER_OK);
}

void tlx_open_chain(struct tl *t, const struct ledger_limits *org, const struct ledger_limits *team,
                    const struct ledger_limits *user)
{
    tl_open(t, TLX_T0);
    tlx_create(t, "org", "", org);
    tlx_create(t, "team", "org", team);
    tlx_create(t, "user", "team", user);
    REQUIRE(tl_run(t, tl_key_add(t, "user", TLX_KEY)).status == LEDGER_OK);
}

void tlx_open_chain_on(struct tl *t, const char *level, const struct ledger_limits *lim)
{
    tlx_open_chain(t, strcmp(level, "org") == 0 ? lim : NULL,
                   strcmp(level, "team") == 0 ? lim : NULL,
                   strcmp(level, "user") == 0 ? lim : NULL);
}

void tlx_reopen(struct tl *t)
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

void tlx_tick_to(struct tl *t, int64_t now_ms)
{
    t->now_ms = now_ms;
    tl_tick(t);
}

struct ledger_cmd tlx_reserve_model(struct tl *t, uint64_t id, const char *account,
                                    int64_t estimate_micros, uint64_t tokens, const char *model)
{
    struct ledger_cmd c = tl_reserve(t, id, account, estimate_micros, tokens, TLX_TTL);
    snprintf(c.u.reserve.model, sizeof(c.u.reserve.model), "%s", model);
    return c;
}

int tlx_id_is(const uint8_t id[LEDGER_REQUEST_ID_SIZE], uint64_t n)
{
    uint8_t want[LEDGER_REQUEST_ID_SIZE];
    tl_id(want, n);
    return memcmp(id, want, sizeof(want)) == 0;
}

static int tlx_journal_cb(void *ctx, const struct ledger_journal_entry *entry)
{
    struct tlx_journal *j = ctx;
    if (j->n >= TLX_JOURNAL_MAX) {
        return 1;
    }
    j->e[j->n++] = *entry;
    return 0;
}

void tlx_journal(struct tl *t, const char *account, struct tlx_journal *j)
{
    j->n = 0;
    REQUIRE(ledger_journal_list(t->l, account, 0, INT64_MAX, tlx_journal_cb, j) == 0);
}

size_t tlx_journal_count(const struct tlx_journal *j, uint8_t kind, const char *account)
{
    size_t n = 0;
    for (size_t i = 0; i < j->n; i++) {
        if (j->e[i].kind == kind && (account == NULL || strcmp(j->e[i].account, account) == 0)) {
            n++;
        }
    }
    return n;
}

const struct ledger_journal_entry *tlx_journal_find(const struct tlx_journal *j, uint8_t kind,
                                                    const char *account, uint64_t id)
{
    for (size_t i = 0; i < j->n; i++) {
        const struct ledger_journal_entry *e = &j->e[i];
        if (e->kind == kind && strcmp(e->account, account) == 0 && tlx_id_is(e->request_id, id)) {
            return e;
        }
    }
    return NULL;
}

void tlx_check_entry_at(const struct tlx_journal *j, uint8_t kind, const char *account, uint64_t id,
                        int64_t amount, const char *file, int line)
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

static int tlx_resv_cb(void *ctx, const struct ledger_reservation_info *info)
{
    struct tlx_resv_list *l = ctx;
    if (l->n >= TLX_LIST_MAX) {
        return 1;
    }
    l->r[l->n++] = *info;
    return 0;
}

void tlx_resv_list(struct tl *t, const char *account, struct tlx_resv_list *l)
{
    l->n = 0;
    REQUIRE(ledger_reservation_list(t->l, account, tlx_resv_cb, l) == 0);
}

struct ledger_reservation_info tlx_resv(struct tl *t, uint64_t id)
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

void tlx_check_expires_at_at(struct tl *t, uint64_t id, int64_t at_ms, const char *file, int line)
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
