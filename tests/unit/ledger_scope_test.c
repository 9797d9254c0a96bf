/*
 * ledger_scope_test.c: scopes and paged reads against docs/ledger.md ("Scopes", "Paged
 * and scoped reads"): a command carrying a scope may touch only what lies under its
 * roots, anything else is EFORBIDDEN and leaves no trace (no hold, no journal record, no
 * stored answer); scoped reads see only their roots; list cursors resume after a key.
 */
#define _GNU_SOURCE /* GNU extensions, as test.h sets them */

#include "ledger_testlib_extra.h"
#include "wire/wire.h"

#include <string.h>

/* Two tenants: org-a <- a-team <- a-user (key "ka") and org-b <- b-team <- b-user ("kb"). */
static void open_tenants(struct tl *t)
{
    tl_open(t, TLX_T0);
    const char *tree[][2] = {{"org-a", ""}, {"a-team", "org-a"}, {"a-user", "a-team"},
                             {"org-b", ""}, {"b-team", "org-b"}, {"b-user", "b-team"}};
    for (size_t i = 0; i < sizeof(tree) / sizeof(tree[0]); i++) {
        tlx_create(t, tree[i][0], tree[i][1], NULL);
    }
    TLX_OK(t, tl_key_add(t, "a-user", "ka"));
    TLX_OK(t, tl_key_add(t, "b-user", "kb"));
}

static struct ledger_cmd in_scope(struct ledger_cmd c, const char *scope)
{
    snprintf(c.scope, sizeof(c.scope), "%s", scope);
    return c;
}

/* What a refused command may not change: the counts of reservations and journal records
 * and every account's held and inflight. */
struct trace {
    struct ledger_counts counts;
    int64_t held[2];
    uint64_t inflight[2];
};

static struct trace trace_of(struct tl *t)
{
    struct trace tr;
    memset(&tr, 0, sizeof(tr));
    REQUIRE(ledger_counts(t->l, &tr.counts) == 0);
    const char *users[2] = {"a-user", "b-user"};
    for (int i = 0; i < 2; i++) {
        struct ledger_account_info a = tl_account(t, users[i]);
        tr.held[i] = a.held_micros;
        tr.inflight[i] = a.inflight;
    }
    return tr;
}

static void check_no_trace(struct tl *t, const struct trace *before)
{
    struct trace now = trace_of(t);
    CHECK_EQ_INT(now.counts.reservations, before->counts.reservations);
    CHECK_EQ_INT(now.counts.journal, before->counts.journal);
    CHECK_EQ_INT(now.held[0], before->held[0]);
    CHECK_EQ_INT(now.held[1], before->held[1]);
    CHECK_EQ_INT(now.inflight[0], before->inflight[0]);
    CHECK_EQ_INT(now.inflight[1], before->inflight[1]);
}

/* `c` is refused with EFORBIDDEN, says nothing of what it named, and changes nothing. */
static void check_forbidden(struct tl *t, struct ledger_cmd c)
{
    struct trace before = trace_of(t);
    struct ledger_result r = TLX_RUN(t, c, -LEDGER_EFORBIDDEN);
    CHECK_EQ_STR(r.account, "");
    CHECK_EQ_INT(r.flags, 0);
    check_no_trace(t, &before);
}

static void reserve_outside_the_scope_is_forbidden_and_leaves_no_trace(void)
{
    struct tl t;
    open_tenants(&t);
    check_forbidden(&t, in_scope(tl_reserve(&t, 100, "b-user", 10, 0, TLX_TTL), "org-a"));
    check_forbidden(&t, in_scope(tl_reserve(&t, 100, "org-b", 10, 0, TLX_TTL), "org-a"));
    check_forbidden(&t, in_scope(tl_reserve_key(&t, 100, "kb", 10, 0, TLX_TTL), "org-a"));
    /* A name that exists nowhere is refused alike: no probing other tenants' names. */
    check_forbidden(&t, in_scope(tl_reserve(&t, 100, "no-such", 10, 0, TLX_TTL), "org-a"));
    /* Nothing was stored under id 100: its owner's scope uses it afresh. */
    struct ledger_result r =
        TLX_OK(&t, in_scope(tl_reserve(&t, 100, "b-user", 10, 0, TLX_TTL), "org-b"));
    CHECK(!(r.flags & LEDGER_RESULT_REPLAYED));
    TL_CHECK_INVARIANTS(&t);
}

static void reserve_inside_the_scope_is_judged_as_ever(void)
{
    struct tl t;
    open_tenants(&t);
    TLX_OK(&t, in_scope(tl_reserve(&t, 100, "a-user", 10, 0, TLX_TTL), "org-a"));
    TLX_OK(&t, in_scope(tl_reserve_key(&t, 101, "kb", 10, 0, TLX_TTL), "org-a,org-b"));
    TLX_OK(&t, in_scope(tl_reserve(&t, 102, "a-team", 10, 0, TLX_TTL), "org-b,org-a"));
    /* An unknown key is the reserve's own answer, not a scope question. */
    struct ledger_result r = TLX_RUN(
        &t, in_scope(tl_reserve_key(&t, 103, "nobody", 10, 0, TLX_TTL), "org-a"), LEDGER_DENIED);
    CHECK_EQ_INT(r.deny_reason, LEDGER_DENY_UNKNOWN_KEY);
    TL_CHECK_INVARIANTS(&t);
}

static void settle_void_extend_of_another_scopes_reservation_are_forbidden(void)
{
    struct tl t;
    open_tenants(&t);
    TLX_OK(&t, in_scope(tl_reserve_key(&t, 100, "kb", 10, 0, TLX_TTL), "org-b"));
    check_forbidden(&t, in_scope(tl_settle(&t, 100, 1000000000000000LL, 0), "org-a"));
    check_forbidden(&t, in_scope(tl_void(&t, 100), "org-a"));
    check_forbidden(&t, in_scope(tl_extend(&t, 100, TLX_TTL), "org-a"));
    /* The owner still resolves it, as if nothing had happened. */
    TLX_OK(&t, in_scope(tl_settle(&t, 100, 7, 0), "org-b"));
    CHECK_EQ_INT(tl_account(&t, "org-b").spent_micros, 7);
    /* An id that names nothing is the command's own answer. */
    TLX_RUN(&t, in_scope(tl_void(&t, 999), "org-a"), -LEDGER_ENOTFOUND);
    TL_CHECK_INVARIANTS(&t);
}

static void replay_from_another_scope_learns_nothing(void)
{
    struct tl t;
    open_tenants(&t);
    struct ledger_cmd c = in_scope(tl_reserve_key(&t, 100, "ka", 10, 0, TLX_TTL), "org-a");
    TLX_OK(&t, c);
    TLX_OK(&t, in_scope(tl_settle(&t, 100, 5, 0), "org-a"));
    /* The same bytes under another scope: refused before the stored answer is read. */
    check_forbidden(&t, in_scope(c, "org-b"));
    check_forbidden(&t, in_scope(tl_settle(&t, 100, 5, 0), "org-b"));
    /* The owner's replays still answer from the store. */
    struct ledger_result r = TLX_OK(&t, c);
    CHECK(r.flags & LEDGER_RESULT_REPLAYED);
    TL_CHECK_INVARIANTS(&t);
}

static void scoped_admin_acts_only_under_its_roots(void)
{
    struct tl t;
    open_tenants(&t);
    struct ledger_limits lim = tlx_budget(100);
    TLX_OK(&t, in_scope(tl_create(&t, "a-new", "org-a", NULL), "org-a"));
    TLX_OK(&t, in_scope(tl_update(&t, "a-team", &lim, 0), "org-a"));
    TLX_OK(&t, in_scope(tl_move(&t, "a-new", "a-team"), "org-a"));
    TLX_OK(&t, in_scope(tl_key_add(&t, "a-new", "ka2"), "org-a"));
    TLX_OK(&t, in_scope(tl_key_revoke(&t, "ka2"), "org-a"));
    check_forbidden(&t, in_scope(tl_create(&t, "org-c", "", NULL), "org-a"));
    check_forbidden(&t, in_scope(tl_create(&t, "b-new", "b-team", NULL), "org-a"));
    check_forbidden(&t, in_scope(tl_update(&t, "b-team", &lim, 0), "org-a"));
    check_forbidden(&t, in_scope(tl_update(&t, "org-b", &lim, 0), "org-a"));
    check_forbidden(&t, in_scope(tl_move(&t, "a-new", "b-team"), "org-a"));
    check_forbidden(&t, in_scope(tl_move(&t, "b-user", "a-team"), "org-a"));
    check_forbidden(&t, in_scope(tl_move(&t, "a-new", ""), "org-a"));
    check_forbidden(&t, in_scope(tl_key_add(&t, "b-user", "kb2"), "org-a"));
    check_forbidden(&t, in_scope(tl_key_revoke(&t, "kb"), "org-a"));
    struct ledger_model_limits ml = {.set = LEDGER_LIM_BUDGET, .budget_micros = 5};
    check_forbidden(&t, in_scope(tl_model_limit(&t, "b-user", "m", &ml), "org-a"));
    check_forbidden(&t, in_scope(tl_config(&t, 3600000), "org-a"));
    CHECK_EQ_INT(tl_account(&t, "b-team").limits.set, 0);
    TL_CHECK_INVARIANTS(&t);
}

static void malformed_scope_is_einval(void)
{
    struct tl t;
    open_tenants(&t);
    const char *bad[] = {"org-a,", ",org-a", "org-a,,org-b", "org a",
                         "a,b,c,d,e,f,g,h,i,j,k,l,m,n,o,p,q"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        TLX_RUN(&t, in_scope(tl_reserve(&t, 100 + i, "a-user", 1, 0, TLX_TTL), bad[i]),
                -LEDGER_EINVAL);
    }
    CHECK(ledger_scope_valid("a,b,c,d,e,f,g,h,i,j,k,l,m,n,o,p"));
    CHECK(ledger_scope_valid(""));
    TL_CHECK_INVARIANTS(&t);
}

/* ---- Reads. ---- */

struct names {
    size_t n, stop_at;
    char name[64][LEDGER_NAME_MAX + 1];
};

static int take_account(void *ctx, const struct ledger_account_info *a)
{
    struct names *k = ctx;
    if (k->n == k->stop_at || k->n == 64) {
        return 1;
    }
    snprintf(k->name[k->n++], LEDGER_NAME_MAX + 1, "%s", a->name);
    return 0;
}

static int take_resv(void *ctx, const struct ledger_reservation_info *r)
{
    struct names *k = ctx;
    if (k->n == k->stop_at || k->n == 64) {
        return 1;
    }
    snprintf(k->name[k->n++], LEDGER_NAME_MAX + 1, "%s", r->account);
    return 0;
}

static int take_entry(void *ctx, const struct ledger_journal_entry *e)
{
    struct names *k = ctx;
    if (k->n == k->stop_at || k->n == 64) {
        return 1;
    }
    /* Test names are short: the seq and the name always fit. */
    snprintf(k->name[k->n++], LEDGER_NAME_MAX + 1, "%llu:%.100s", (unsigned long long)e->seq,
             e->account);
    return 0;
}

static void scoped_reads_see_only_their_roots(void)
{
    struct tl t;
    open_tenants(&t);
    TLX_OK(&t, tl_reserve(&t, 100, "a-user", 10, 0, TLX_TTL));
    TLX_OK(&t, tl_reserve(&t, 101, "b-user", 10, 0, TLX_TTL));
    TLX_OK(&t, tl_settle(&t, 101, 3, 0));
    TLX_OK(&t, tl_reserve(&t, 102, "b-user", 10, 0, TLX_TTL));
    struct ledger_account_info info;
    CHECK_EQ_INT(ledger_account_get_scoped(t.l, "org-a", "a-team", &info), 0);
    CHECK_EQ_INT(ledger_account_get_scoped(t.l, "org-a", "b-team", &info), -LEDGER_EFORBIDDEN);
    CHECK_EQ_INT(ledger_account_get_scoped(t.l, "org-a", "nope", &info), -LEDGER_EFORBIDDEN);
    CHECK_EQ_INT(ledger_account_get_scoped(t.l, "", "nope", &info), -LEDGER_ENOTFOUND);
    uint8_t id[LEDGER_REQUEST_ID_SIZE], kh[LEDGER_KEY_HASH_SIZE];
    struct ledger_reservation_info ri;
    tl_id(id, 102);
    CHECK_EQ_INT(ledger_reservation_get_scoped(t.l, "org-a", id, &ri), -LEDGER_EFORBIDDEN);
    CHECK_EQ_INT(ledger_reservation_get_scoped(t.l, "org-b", id, &ri), 0);
    char account[LEDGER_NAME_MAX + 1];
    int revoked;
    tl_key_hash("kb", kh);
    CHECK_EQ_INT(ledger_key_get_scoped(t.l, "org-a", kh, account, &revoked), -LEDGER_EFORBIDDEN);

    struct ledger_page page = {.scope = "org-a"};
    struct names k = {.stop_at = 64};
    CHECK_EQ_INT(ledger_account_list_page(t.l, NULL, &page, take_account, &k), 0);
    CHECK_EQ_INT(k.n, 1);
    CHECK_EQ_STR(k.name[0], "org-a");
    CHECK_EQ_INT(ledger_account_list_page(t.l, "org-b", &page, take_account, &k),
                 -LEDGER_EFORBIDDEN);
    k.n = 0;
    CHECK_EQ_INT(ledger_reservation_list_page(t.l, NULL, &page, take_resv, &k), 0);
    CHECK_EQ_INT(k.n, 1);
    CHECK_EQ_STR(k.name[0], "a-user");
    CHECK_EQ_INT(ledger_reservation_list_page(t.l, "b-user", &page, take_resv, &k),
                 -LEDGER_EFORBIDDEN);
    k.n = 0;
    CHECK_EQ_INT(ledger_journal_list_page(t.l, NULL, 0, INT64_MAX, &page, take_entry, &k), 0);
    for (size_t i = 0; i < k.n; i++) {
        CHECK(strstr(k.name[i], ":b-") == NULL && strstr(k.name[i], ":org-b") == NULL);
    }
    CHECK(k.n >= 4); /* the admin entries of org-a's accounts and key */
    CHECK_EQ_INT(ledger_journal_list_page(t.l, "b-user", 0, INT64_MAX, &page, take_entry, &k),
                 -LEDGER_EFORBIDDEN);
}

/* Walk a list `per_page` items at a time, each page resuming after the last's cursor. */
static void walk_pages(struct tl *t, int which, size_t per_page, struct names *all)
{
    struct ledger_page page = {.scope = ""};
    all->n = 0;
    for (int pages = 0; pages < 64; pages++) {
        struct names k = {.stop_at = per_page};
        page.last_len = 0;
        int rv = which == 0 ? ledger_account_list_page(t->l, "", &page, take_account, &k)
                 : which == 1
                     ? ledger_reservation_list_page(t->l, NULL, &page, take_resv, &k)
                     : ledger_journal_list_page(t->l, NULL, 0, INT64_MAX, &page, take_entry, &k);
        CHECK(rv == 0 || rv == 1);
        for (size_t i = 0; i < k.n; i++) {
            memcpy(all->name[all->n++], k.name[i], LEDGER_NAME_MAX + 1);
        }
        if (rv == 0) {
            return;
        }
        page.after_len = page.last_len;
        memcpy(page.after, page.last, page.last_len);
    }
    CHECK(!"more than 64 pages");
}

static void list_cursors_resume_after_the_last_key(void)
{
    struct tl t;
    open_tenants(&t);
    for (int i = 0; i < 7; i++) {
        char name[16];
        snprintf(name, sizeof(name), "root-%d", i);
        tlx_create(&t, name, "", NULL);
        TLX_OK(&t,
               tl_reserve(&t, 100 + (uint64_t)i, i % 2 ? "a-user" : "b-user", 1, 0, TLX_TTL + i));
    }
    for (int which = 0; which < 3; which++) {
        struct names whole, paged;
        walk_pages(&t, which, 64, &whole);
        CHECK(whole.n > 3);
        for (size_t per_page = 1; per_page <= 3; per_page++) {
            walk_pages(&t, which, per_page, &paged);
            CHECK_EQ_INT(paged.n, whole.n);
            for (size_t i = 0; i < whole.n && i < paged.n; i++) {
                CHECK_EQ_STR(paged.name[i], whole.name[i]);
            }
        }
    }
    struct ledger_page bad = {.after_len = 3};
    struct names k = {.stop_at = 64};
    CHECK_EQ_INT(ledger_reservation_list_page(t.l, NULL, &bad, take_resv, &k), -LEDGER_EINVAL);
    CHECK_EQ_INT(ledger_journal_list_page(t.l, NULL, 0, INT64_MAX, &bad, take_entry, &k),
                 -LEDGER_EINVAL);
}

int main(void)
{
    TEST_MAIN_BEGIN;
    TEST(reserve_outside_the_scope_is_forbidden_and_leaves_no_trace);
    TEST(reserve_inside_the_scope_is_judged_as_ever);
    TEST(settle_void_extend_of_another_scopes_reservation_are_forbidden);
    TEST(replay_from_another_scope_learns_nothing);
    TEST(scoped_admin_acts_only_under_its_roots);
    TEST(malformed_scope_is_einval);
    TEST(scoped_reads_see_only_their_roots);
    TEST(list_cursors_resume_after_the_last_key);
    TEST_MAIN_END;
}
