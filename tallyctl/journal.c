/*
 * journal.c: journal export, the ledger's journal as CSV (RFC 4180) or JSON lines.
 *
 * The export streams: each page is printed as it arrives, so memory stays at one page
 * whatever the range, and a failure part way leaves the lines already written and exits
 * non-zero.
 */
#include "tallyctl/tallyctl.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

/* Write `s` as one CSV field: quoted (quotes doubled) when it holds a comma, quote or line
 * break, as RFC 4180 asks. */
static void csv_field(const char *s)
{
    if (strpbrk(s, ",\"\r\n") == NULL) {
        fputs(s, stdout);
        return;
    }
    fputc('"', stdout);
    for (const char *p = s; *p != '\0'; p++) {
        if (*p == '"') {
            fputc('"', stdout);
        }
        fputc(*p, stdout);
    }
    fputc('"', stdout);
}

static const char *const journal_columns[] = {
    "seq",   "ts_ms",           "time",       "kind",  "account",  "amount_micros", "tokens",
    "model", "period_start_ms", "request_id", "actor", "cmd_type", "admin_hash",
};

/* Print journal entry `e` as one CSV line or one JSON line, with journal_columns. */
static void print_journal_entry(const struct tally_journal_entry *e, bool jsonl)
{
    char t[CTL_TIME_TEXT], id[CTL_REQUEST_ID_HEX + 1], ah[2 * 32 + 1], num[32];
    bool admin = e->kind == TALLY_J_ADMIN;
    ctl__fmt_time(e->ts_ms, t);
    ctl__hex(e->request_id, sizeof(e->request_id), id);
    ctl__hex(e->admin_hash, sizeof(e->admin_hash), ah);
    if (jsonl) {
        struct ctl__jw w;
        ctl__jw_object_begin(&w);
        ctl__jw_u64(&w, "seq", e->seq);
        ctl__jw_i64(&w, "ts_ms", e->ts_ms);
        ctl__jw_str(&w, "time", t);
        ctl__jw_str(&w, "kind", tally_journal_kind_name(e->kind));
        ctl__jw_str(&w, "account", e->account);
        ctl__jw_i64(&w, "amount_micros", e->amount_micros);
        ctl__jw_u64(&w, "tokens", e->tokens);
        ctl__jw_str_or_null(&w, "model", e->model);
        ctl__jw_i64(&w, "period_start_ms", e->period_start_ms);
        ctl__jw_str(&w, "request_id", id);
        ctl__jw_str_or_null(&w, "actor", e->actor);
        if (admin) {
            ctl__jw_str(&w, "cmd_type", tally_cmd_type_name(e->cmd_type));
            ctl__jw_str(&w, "admin_hash", ah);
        } else {
            ctl__jw_null(&w, "cmd_type");
            ctl__jw_null(&w, "admin_hash");
        }
        ctl__jw_object_end(&w);
        return;
    }
    printf("%" PRIu64 ",%" PRId64 ",", e->seq, e->ts_ms);
    csv_field(t);
    fputc(',', stdout);
    csv_field(tally_journal_kind_name(e->kind));
    fputc(',', stdout);
    csv_field(e->account);
    snprintf(num, sizeof(num), "%" PRId64, e->amount_micros);
    printf(",%s,%" PRIu64 ",", num, e->tokens);
    csv_field(e->model);
    printf(",%" PRId64 ",%s,", e->period_start_ms, id);
    csv_field(e->actor);
    fputc(',', stdout);
    csv_field(admin ? tally_cmd_type_name(e->cmd_type) : "");
    printf(",%s\n", admin ? ah : "");
}

static int fetch_journal(struct ctl__ctx *x, const struct ctl__list_query *q,
                         const struct tally_cursor *cursor, void *items, uint32_t *got,
                         struct tally_cursor *next, struct tally_result *res)
{
    return tally_journal_list(x->c, q->name, q->since_ms, q->until_ms, cursor, TALLY_LIST_MAX,
                              q->flags, x->timeout_ms, items, got, next, res);
}

int ctl__cmd_journal_export(struct ctl__ctx *x)
{
    const struct ctl__args *a = x->a;
    struct ctl__list_query q = {.since_ms = 0, .until_ms = INT64_MAX, .flags = ctl__read_flags(x)};
    bool jsonl = x->json;
    if (ctl__opt_name(x, CTL_OPT_ACCOUNT, TALLY_NAME_MAX, &q.name) != 0 ||
        (a->given[CTL_OPT_SINCE] && ctl__opt_time(x, CTL_OPT_SINCE, &q.since_ms) != 0) ||
        (a->given[CTL_OPT_UNTIL] && ctl__opt_time(x, CTL_OPT_UNTIL, &q.until_ms) != 0)) {
        return CTL_USAGE;
    }
    if (q.since_ms >= q.until_ms) {
        return ctl__usage_error(x, "--since must be before --until");
    }
    if (a->given[CTL_OPT_FORMAT]) {
        if (strcmp(a->value[CTL_OPT_FORMAT], "csv") == 0) {
            jsonl = false;
        } else if (strcmp(a->value[CTL_OPT_FORMAT], "jsonl") == 0) {
            jsonl = true;
        } else {
            return ctl__usage_error(x, "--format: '%s' is not csv or jsonl",
                                    a->value[CTL_OPT_FORMAT]);
        }
    }
    int rc = ctl__ctx_client(x);
    if (rc != 0) {
        return rc;
    }
    struct tally_journal_entry *page_items = calloc(TALLY_LIST_MAX, sizeof(*page_items));
    if (page_items == NULL) {
        ctl__say_error(x->what, "out of memory");
        return CTL_UNAVAILABLE;
    }
    struct ctl__pager p = {.fetch = fetch_journal, .q = &q};
    while (!p.done) {
        uint32_t got;
        if ((rc = ctl__pager_next(x, &p, page_items, &got, "the output is incomplete")) != 0) {
            break;
        }
        if (p.page == 1 && !jsonl) {
            for (size_t i = 0; i < sizeof(journal_columns) / sizeof(journal_columns[0]); i++) {
                printf("%s%s", i ? "," : "", journal_columns[i]);
            }
            fputc('\n', stdout);
        }
        for (uint32_t i = 0; i < got; i++) {
            print_journal_entry(&page_items[i], jsonl);
        }
    }
    free(page_items);
    return rc;
}
