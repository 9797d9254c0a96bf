/*
 * output.c: what tallyctl prints besides JSON: errors on stderr, values formatted for
 * people, key-value lines and aligned tables on stdout, and the answers that several
 * commands share.
 *
 * Everything printed passes through here so that the rules hold in one place: an error is
 * one sanitized line "tallyctl: <what>: <why>" and its exit code follows from the libtally
 * error; a value from the server or the user never puts a control byte on a terminal;
 * tables are collected in memory first, so that columns align and an allocation failure
 * prints nothing rather than half a table.
 */
#include "tallyctl/tallyctl.h"
#include "ledger/civil.h"

#include <assert.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#define KV_WIDTH 16 /* label column of key-value output */
#define TABLE_COLS_MAX 12

/* ---- Error output. ---- */

/* Replace bytes a terminal could misread (controls, non-ASCII) in `s` with '?', so that
 * text from the server or the user stays on one plain line. */
static void sanitize(char *s)
{
    for (unsigned char *p = (unsigned char *)s; *p != '\0'; p++) {
        if (*p < 0x20 || *p >= 0x7f) {
            *p = '?';
        }
    }
}

__attribute__((format(printf, 2, 3))) void ctl__say_error(const char *what, const char *fmt, ...)
{
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    sanitize(msg);
    if (what != NULL) {
        fprintf(stderr, "tallyctl: %s: %s\n", what, msg);
    } else {
        fprintf(stderr, "tallyctl: %s\n", msg);
    }
}

__attribute__((format(printf, 2, 3))) int ctl__usage_error(struct ctl__ctx *x, const char *fmt, ...)
{
    char msg[640];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    ctl__say_error(x->what, "%s", msg);
    return CTL_USAGE;
}

int ctl__exit_code_of(int code)
{
    switch (code < 0 ? -code : code) {
    case TALLY_EUNAVAILABLE:
    case TALLY_EBUSY:
    case TALLY_ECLOSED:
    case TALLY_EPROTO:
    case TALLY_EINTERNAL:
    case TALLY_EIO:
    case TALLY_ECORRUPT:
    case TALLY_ENOMEM:
        return CTL_UNAVAILABLE;
    default:
        return CTL_USAGE;
    }
}

/* A sentence for the ledger's own error codes (the cluster answered and changed nothing);
 * NULL for the others, whose messages say more. */
static const char *ledger_error_text(int code)
{
    switch (code < 0 ? -code : code) {
    case TALLY_EINVAL:
        return "an argument is out of range or malformed";
    case TALLY_ENAME:
        return "an account or model name is not valid";
    case TALLY_ENOTFOUND:
        return "no such account, key or reservation";
    case TALLY_EEXIST:
        return "it exists already";
    case TALLY_ECONFLICT:
        return "this request id was used before with other arguments";
    case TALLY_ERESOLVED:
        return "the reservation is already settled or voided";
    case TALLY_EDEPTH:
        return "the account chain would be deeper than 8";
    case TALLY_ECYCLE:
        return "the new parent would make a cycle";
    case TALLY_EOVERFLOW:
        return "a counter would overflow";
    case TALLY_EDECODE:
        return "the ledger could not decode the command";
    case TALLY_ETOOBIG:
        return "a field or answer exceeds its bound";
    case TALLY_EIO:
        return "storage error on the node";
    case TALLY_ECORRUPT:
        return "corrupt state on the node";
    case TALLY_EFORBIDDEN:
        return "outside the token's scope (or not an account under it)";
    default:
        return NULL;
    }
}

int ctl__call_failed(struct ctl__ctx *x, const char *subject, int rc,
                     const struct tally_result *res, const char *hint)
{
    char what[sizeof(x->what) + TALLY_NAME_MAX + 4];
    const char *message = res != NULL ? res->message : "";
    assert(rc < 0);
    if (subject != NULL && subject[0] != '\0') {
        snprintf(what, sizeof(what), "%s %s", x->what, subject);
    } else {
        snprintf(what, sizeof(what), "%s", x->what);
    }
    /* The library's message for a ledger error only repeats the code's name
     * ("ledger: conflict"); say what it means instead. */
    const char *text = ledger_error_text(rc);
    if (text != NULL && (message[0] == '\0' || (strncmp(message, "ledger: ", 8) == 0 &&
                                                strcmp(message + 8, tally_strerror(rc)) == 0))) {
        message = text;
    }
    if ((rc == -TALLY_EAUTH) && hint == NULL && !x->token_given) {
        hint = "no token was given: use --token, --token-file, TALLY_TOKEN or TALLY_TOKEN_FILE "
               "(or a client certificate with --tls-cert and --tls-key)";
    }
    ctl__say_error(what, "%s%s%s%s%s", tally_strerror(rc), message[0] != '\0' ? ": " : "", message,
                   hint != NULL ? "; " : "", hint != NULL ? hint : "");
    return ctl__exit_code_of(rc);
}

/* ---- Formatting. ---- */

const char *ctl__fmt_time(int64_t ms, char *buf)
{
    if (ms < 0 || ms > TALLY_TIME_MAX_MS) {
        snprintf(buf, CTL_TIME_TEXT, "%" PRId64 " ms", ms);
        return buf;
    }
    int64_t y;
    unsigned mo, d;
    int64_t secs = ms / 1000, rem_ms = ms % 1000;
    ledger_civil_from_days(secs / 86400, &y, &mo, &d);
    int64_t sod = secs % 86400;
    int n = snprintf(buf, CTL_TIME_TEXT, "%04" PRId64 "-%02u-%02uT%02d:%02d:%02d", y, mo, d,
                     (int)(sod / 3600), (int)(sod / 60 % 60), (int)(sod % 60));
    assert(n > 0 && n < CTL_TIME_TEXT - 6);
    if (rem_ms != 0) {
        snprintf(buf + n, (size_t)(CTL_TIME_TEXT - n), ".%03dZ", (int)rem_ms);
    } else {
        snprintf(buf + n, (size_t)(CTL_TIME_TEXT - n), "Z");
    }
    return buf;
}

const char *ctl__fmt_money(int64_t micros, char *buf)
{
    uint64_t mag = micros < 0 ? (uint64_t)0 - (uint64_t)micros : (uint64_t)micros;
    snprintf(buf, CTL_MONEY_TEXT, "%s$%" PRIu64 ".%06" PRIu64, micros < 0 ? "-" : "", mag / 1000000,
             mag % 1000000);
    return buf;
}

const char *ctl__fmt_micros(int64_t micros, char *buf)
{
    char money[CTL_MONEY_TEXT];
    snprintf(buf, 64, "%" PRId64 " (%s)", micros, ctl__fmt_money(micros, money));
    return buf;
}

const char *ctl__fmt_duration(int64_t ms, char *buf)
{
    static const struct {
        const char *unit;
        int64_t ms;
    } units[] = {{"d", CTL_DAY_MS}, {"h", 3600000}, {"m", 60000}, {"s", 1000}};
    for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
        if (ms > 0 && ms % units[i].ms == 0) {
            snprintf(buf, 32, "%" PRId64 "%s", ms / units[i].ms, units[i].unit);
            return buf;
        }
    }
    snprintf(buf, 32, "%" PRId64 "ms", ms);
    return buf;
}

const char *ctl__hex(const uint8_t *bytes, size_t n, char *out)
{
    tally_hex(bytes, n, out);
    return out;
}

/* ---- Key-value lines and tables. ---- */

__attribute__((format(printf, 2, 3))) void ctl__kv(const char *label, const char *fmt, ...)
{
    char value[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(value, sizeof(value), fmt, ap);
    va_end(ap);
    sanitize(value);
    printf("%-*s %s\n", KV_WIDTH, label, value);
}

__attribute__((format(printf, 2, 3))) void ctl__table_add(struct ctl__table *t, const char *fmt,
                                                          ...)
{
    va_list ap;
    if (t->failed) {
        return;
    }
    if (t->ncells == t->cap) {
        size_t cap = t->cap == 0 ? 64 : 2 * t->cap;
        char **cells = realloc(t->cells, cap * sizeof(*cells));
        if (cells == NULL) {
            t->failed = true;
            return;
        }
        t->cells = cells;
        t->cap = cap;
    }
    va_start(ap, fmt);
    va_list again;
    va_copy(again, ap);
    int n = vsnprintf(NULL, 0, fmt, ap);
    char *cell = n >= 0 ? malloc((size_t)n + 1) : NULL;
    if (cell != NULL) {
        vsnprintf(cell, (size_t)n + 1, fmt, again);
    }
    va_end(again);
    va_end(ap);
    if (cell == NULL) {
        t->failed = true;
        return;
    }
    sanitize(cell);
    t->cells[t->ncells++] = cell;
}

void ctl__table_init(struct ctl__table *t, const char *align, const char *const *headers)
{
    memset(t, 0, sizeof(*t));
    t->align = align;
    t->ncols = strlen(align);
    assert(t->ncols > 0 && t->ncols <= TABLE_COLS_MAX);
    for (size_t i = 0; i < t->ncols; i++) {
        ctl__table_add(t, "%s", headers[i]);
    }
}

/* Print the table on stdout, columns two spaces apart. Returns 0, or -1 if an allocation
 * had failed (nothing printed). */
static int table_print(const struct ctl__table *t)
{
    size_t width[TABLE_COLS_MAX] = {0};
    if (t->failed) {
        return -1;
    }
    assert(t->ncells % t->ncols == 0);
    for (size_t i = 0; i < t->ncells; i++) {
        size_t len = strlen(t->cells[i]);
        if (len > width[i % t->ncols]) {
            width[i % t->ncols] = len;
        }
    }
    for (size_t row = 0; row < t->ncells; row += t->ncols) {
        char *const *cells = t->cells + row;
        size_t end = t->ncols; /* trailing empty cells are not printed (no trailing blanks) */
        while (end > 1 && cells[end - 1][0] == '\0') {
            end--;
        }
        for (size_t col = 0; col < end; col++) {
            bool last = col + 1 == end;
            int w = (int)width[col];
            if (t->align[col] == 'r') {
                printf("%*s", w, cells[col]);
            } else if (last) {
                printf("%s", cells[col]);
            } else {
                printf("%-*s", w, cells[col]);
            }
            fputs(last ? "\n" : "  ", stdout);
        }
    }
    return 0;
}

/* Free the cells; `t` may then be initialized again. */
static void table_free(struct ctl__table *t)
{
    for (size_t i = 0; i < t->ncells; i++) {
        free(t->cells[i]);
    }
    free(t->cells);
    memset(t, 0, sizeof(*t));
}

int ctl__table_finish(struct ctl__ctx *x, struct ctl__table *t)
{
    int rc = table_print(t) == 0 ? CTL_OK : CTL_UNAVAILABLE;
    if (rc != CTL_OK) {
        ctl__say_error(x->what, "out of memory");
    }
    table_free(t);
    return rc;
}

/* ---- Answers shared by several commands. ---- */

int ctl__write_failed(struct ctl__ctx *x, const char *subject, int rc,
                      const struct tally_result *res)
{
    char hint[128], id[CTL_REQUEST_ID_HEX + 1];
    if (ctl__exit_code_of(rc) == CTL_UNAVAILABLE) {
        snprintf(hint, sizeof(hint),
                 "the change may or may not be made: repeat it with --id %s to retry safely",
                 ctl__hex(res->request_id, TALLY_REQUEST_ID_SIZE, id));
        return ctl__call_failed(x, subject, rc, res, hint);
    }
    return ctl__call_failed(x, subject, rc, res, NULL);
}

int ctl__write_answer(struct ctl__ctx *x, const char *label, const char *kind, const char *subject,
                      const char *action, int rc, const struct tally_result *res)
{
    bool replayed = (res->flags & TALLY_RESULT_REPLAYED) != 0;
    char id[CTL_REQUEST_ID_HEX + 1];
    if (rc < 0) {
        return ctl__write_failed(x, subject, rc, res);
    }
    if (x->json) {
        struct ctl__jw w;
        ctl__jw_object_begin(&w);
        ctl__jw_bool(&w, "ok", true);
        ctl__jw_str(&w, "action", action);
        ctl__jw_str(&w, kind, subject);
        ctl__jw_str(&w, "request_id", ctl__hex(res->request_id, TALLY_REQUEST_ID_SIZE, id));
        ctl__jw_u64(&w, "index", res->index);
        ctl__jw_bool(&w, "replayed", replayed);
        ctl__jw_object_end(&w);
    } else {
        printf("%s %s: %s%s\n", label, subject, action,
               replayed ? " (replayed: this request id was answered before)" : "");
    }
    return CTL_OK;
}
