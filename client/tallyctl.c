/*
 * tallyctl: the admin command line of a tally cluster, a thin layer over libtally
 * (client/tally.h): accounts and their limits, virtual keys, reservations by hand, the
 * journal, and the cluster's membership and status. docs/tallyctl.md is its manual.
 *
 * The one idea behind its shape: everything the user typed is parsed and checked before
 * anything is sent. main() splits argv into options (known by name, accepted anywhere on
 * the line) and positional words; the command table picks a handler by the first one or
 * two words and refuses options that command does not take; the handler checks every
 * value against the ledger's bounds, only then opens the client, makes its call (or pages
 * through a list to the end) and prints the answer as aligned text or as JSON. Every path
 * ends in one of four exit codes: 0 done or granted, 1 denied, 2 no usable answer (the
 * cluster is unavailable), 3 bad input or a refused request. Answers go to stdout; errors
 * go to stderr as one line "tallyctl: <what>: <why>".
 */
#include "client/tally.h"
#include "ledger/civil.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

/* ---- Exit codes and bounds. ---- */

enum {
    CTL_OK = 0,          /* done, or reserve granted */
    CTL_DENIED = 1,      /* reserve denied by a limit */
    CTL_UNAVAILABLE = 2, /* no usable answer: try again later */
    CTL_USAGE = 3,       /* bad input, or the request was refused */
};

#define AMOUNT_MAX INT64_C(1000000000000000) /* 10^15 micros */
#define TOKENS_MAX UINT64_C(1000000000000)   /* 10^12 tokens */
#define RATE_MAX UINT64_C(1000000000000)     /* rates and bursts */
#define PARALLEL_MAX UINT64_C(1000000000)    /* max_parallel */
#define DAY_MS INT64_C(86400000)
#define TTL_MAX_MS (7 * DAY_MS) /* reservation ttl */
#define TTL_DEFAULT_MS INT64_C(60000)
#define PERIOD_MIN_MS INT64_C(1000) /* a fixed budget period */
#define PERIOD_MAX_MS (366 * DAY_MS)
#define TIMEOUT_MAX_MS INT64_C(3600000)      /* --timeout */
#define STATUS_DEADLINE_MS INT64_C(2000)     /* a status probe without --timeout */
#define TIME_MAX_MS INT64_C(253402300799999) /* 9999-12-31T23:59:59.999Z */
#define WORDS_MAX 32                         /* positional words on one line */
#define PAGES_MAX 1000000                    /* pages of one listing */
#define STATUS_ADDRESSES_MAX 64              /* nodes one cluster status probes */
#define STATUS_ROUNDS_MAX 4                  /* rounds of learning member addresses */
#define SECRET_PREFIX "sk-tally-"
#define SECRET_RANDOM_BYTES 16 /* 128 bits, 32 hex digits */
#define SECRET_MAX 1024        /* a key secret given on the command line */
#define SECRET_SIZE (sizeof(SECRET_PREFIX) + 2 * SECRET_RANDOM_BYTES)
#define KEY_HASH_HEX (2 * TALLY_KEY_HASH_SIZE)
#define REQUEST_ID_HEX (2 * TALLY_REQUEST_ID_SIZE)
#define TIME_TEXT 40  /* fmt_time()'s buffer */
#define MONEY_TEXT 32 /* fmt_money()'s buffer */
#define KV_WIDTH 16   /* label column of key-value output */

/* ---- Options. ---- */

enum opt_id {
    /* Global: accepted by every command. */
    OPT_ENDPOINTS,
    OPT_TOKEN,
    OPT_TOKEN_FILE,
    OPT_TLS_CA,
    OPT_TLS_CERT,
    OPT_TLS_KEY,
    OPT_TLS_SERVER_NAME,
    OPT_JSON,
    OPT_TIMEOUT,
    OPT_HELP,
    /* Command options. */
    OPT_STALE,
    OPT_ID,
    OPT_PARENT,
    OPT_ROOT,
    OPT_BUDGET,
    OPT_SOFT_BUDGET,
    OPT_PERIOD,
    OPT_RPM,
    OPT_RPM_BURST,
    OPT_TPM,
    OPT_TPM_BURST,
    OPT_MAX_PARALLEL,
    OPT_EXPIRES_AT,
    OPT_EXPIRY_POLICY,
    OPT_BLOCKED,
    OPT_CLEAR,
    OPT_KEY,
    OPT_KEY_HASH,
    OPT_ACCOUNT,
    OPT_ESTIMATE,
    OPT_TOKENS,
    OPT_MODEL,
    OPT_TTL,
    OPT_ACTUAL,
    OPT_SINCE,
    OPT_UNTIL,
    OPT_FORMAT,
    OPT_COUNT
};

#define BIT(o) (UINT64_C(1) << (o))
#define GLOBAL_OPTS                                                                                \
    (BIT(OPT_ENDPOINTS) | BIT(OPT_TOKEN) | BIT(OPT_TOKEN_FILE) | BIT(OPT_TLS_CA) |                 \
     BIT(OPT_TLS_CERT) | BIT(OPT_TLS_KEY) | BIT(OPT_TLS_SERVER_NAME) | BIT(OPT_JSON) |             \
     BIT(OPT_TIMEOUT) | BIT(OPT_HELP))
#define LIMIT_OPTS                                                                                 \
    (BIT(OPT_BUDGET) | BIT(OPT_SOFT_BUDGET) | BIT(OPT_PERIOD) | BIT(OPT_RPM) |                     \
     BIT(OPT_RPM_BURST) | BIT(OPT_TPM) | BIT(OPT_TPM_BURST) | BIT(OPT_MAX_PARALLEL) |              \
     BIT(OPT_EXPIRES_AT) | BIT(OPT_EXPIRY_POLICY) | BIT(OPT_BLOCKED))

struct opt_spec {
    const char *name; /* without the leading "--" */
    bool takes_value;
};

static const struct opt_spec opt_specs[OPT_COUNT] = {
    [OPT_ENDPOINTS] = {"endpoints", true},
    [OPT_TOKEN] = {"token", true},
    [OPT_TOKEN_FILE] = {"token-file", true},
    [OPT_TLS_CA] = {"tls-ca", true},
    [OPT_TLS_CERT] = {"tls-cert", true},
    [OPT_TLS_KEY] = {"tls-key", true},
    [OPT_TLS_SERVER_NAME] = {"tls-server-name", true},
    [OPT_JSON] = {"json", false},
    [OPT_TIMEOUT] = {"timeout", true},
    [OPT_HELP] = {"help", false},
    [OPT_STALE] = {"stale", false},
    [OPT_ID] = {"id", true},
    [OPT_PARENT] = {"parent", true},
    [OPT_ROOT] = {"root", false},
    [OPT_BUDGET] = {"budget", true},
    [OPT_SOFT_BUDGET] = {"soft-budget", true},
    [OPT_PERIOD] = {"period", true},
    [OPT_RPM] = {"rpm", true},
    [OPT_RPM_BURST] = {"rpm-burst", true},
    [OPT_TPM] = {"tpm", true},
    [OPT_TPM_BURST] = {"tpm-burst", true},
    [OPT_MAX_PARALLEL] = {"max-parallel", true},
    [OPT_EXPIRES_AT] = {"expires-at", true},
    [OPT_EXPIRY_POLICY] = {"expiry-policy", true},
    [OPT_BLOCKED] = {"blocked", false},
    [OPT_CLEAR] = {"clear", true},
    [OPT_KEY] = {"key", true},
    [OPT_KEY_HASH] = {"key-hash", true},
    [OPT_ACCOUNT] = {"account", true},
    [OPT_ESTIMATE] = {"estimate", true},
    [OPT_TOKENS] = {"tokens", true},
    [OPT_MODEL] = {"model", true},
    [OPT_TTL] = {"ttl", true},
    [OPT_ACTUAL] = {"actual", true},
    [OPT_SINCE] = {"since", true},
    [OPT_UNTIL] = {"until", true},
    [OPT_FORMAT] = {"format", true},
};

/* The command line split up: options by id (values borrowed from argv; "" for a flag)
 * and the positional words in order. */
struct args {
    bool given[OPT_COUNT];
    const char *value[OPT_COUNT];
    char *words[WORDS_MAX];
    int n_words;
};

struct ctx;

/* One command: its words, how many positional words follow them, the options it takes
 * besides the global ones, and its handler (which returns the exit code). */
struct command {
    const char *group;
    const char *name; /* NULL: a one-word command */
    int min_words, max_words;
    uint64_t opts;
    int (*run)(struct ctx *x);
    const char *synopsis;
};

/* Everything a handler needs. The client is opened on demand by ctx_client(), after the
 * handler has checked its input, and closed by main(). */
struct ctx {
    const struct command *cmd;
    const struct args *a;
    char what[64]; /* "account create": the prefix of this command's messages */
    char **words;  /* the positional words after the command's own */
    int n_words;
    bool json;
    int64_t timeout_ms; /* 0: the library's default */
    struct tally *c;
    bool token_given; /* a token was configured (for the hint on an auth error) */
    char token[TALLY_TOKEN_MAX + 1];
};

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

/* Print "tallyctl: <what>: <message>" (or "tallyctl: <message>" when `what` is NULL) on
 * stderr as one line. */
__attribute__((format(printf, 2, 3))) static void say_error(const char *what, const char *fmt, ...)
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

/* Report bad input to the current command; returns CTL_USAGE. */
__attribute__((format(printf, 2, 3))) static int usage_error(struct ctx *x, const char *fmt, ...)
{
    char msg[640];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    say_error(x->what, "%s", msg);
    return CTL_USAGE;
}

/* The exit code for libtally error `code` (either sign): CTL_UNAVAILABLE when no usable
 * answer came (nothing is known, or the node failed: trying later may work), CTL_USAGE
 * when the request itself was refused. */
static int exit_code_of(int code)
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
    default:
        return NULL;
    }
}

/*
 * Report a failed call (rc < 0) about `subject` (may be NULL) with the answer in `res`
 * (may be NULL) and an optional `hint` (NULL: none), as one line; returns the exit code.
 */
static int call_failed(struct ctx *x, const char *subject, int rc, const struct tally_result *res,
                       const char *hint)
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
    say_error(what, "%s%s%s%s%s", tally_strerror(rc), message[0] != '\0' ? ": " : "", message,
              hint != NULL ? "; " : "", hint != NULL ? hint : "");
    return exit_code_of(rc);
}

/* ---- Formatting. ---- */

/*
 * Write `ms` (since the epoch) into `buf` (TIME_TEXT bytes) as UTC ISO-8601,
 * "2026-11-01T10:00:00Z", with ".mmm" before the Z when not a whole second. Times outside
 * 1970 .. 9999 are written as "<ms> ms". Returns buf.
 */
static const char *fmt_time(int64_t ms, char *buf)
{
    if (ms < 0 || ms > TIME_MAX_MS) {
        snprintf(buf, TIME_TEXT, "%" PRId64 " ms", ms);
        return buf;
    }
    int64_t y;
    unsigned mo, d;
    int64_t secs = ms / 1000, rem_ms = ms % 1000;
    ledger_civil_from_days(secs / 86400, &y, &mo, &d);
    int64_t sod = secs % 86400;
    int n = snprintf(buf, TIME_TEXT, "%04" PRId64 "-%02u-%02uT%02d:%02d:%02d", y, mo, d,
                     (int)(sod / 3600), (int)(sod / 60 % 60), (int)(sod % 60));
    assert(n > 0 && n < TIME_TEXT - 6);
    if (rem_ms != 0) {
        snprintf(buf + n, (size_t)(TIME_TEXT - n), ".%03dZ", (int)rem_ms);
    } else {
        snprintf(buf + n, (size_t)(TIME_TEXT - n), "Z");
    }
    return buf;
}

/* Write `micros` into `buf` (MONEY_TEXT bytes) as currency, "$1.234567" or "-$0.500000".
 * Returns buf. */
static const char *fmt_money(int64_t micros, char *buf)
{
    uint64_t mag = micros < 0 ? (uint64_t)0 - (uint64_t)micros : (uint64_t)micros;
    snprintf(buf, MONEY_TEXT, "%s$%" PRIu64 ".%06" PRIu64, micros < 0 ? "-" : "", mag / 1000000,
             mag % 1000000);
    return buf;
}

/* Write `ms` (> 0) into `buf` (32 bytes) in the largest unit that divides it: "30d",
 * "1h", "90m", "15s", "1500ms". Returns buf. */
static const char *fmt_duration(int64_t ms, char *buf)
{
    static const struct {
        const char *unit;
        int64_t ms;
    } units[] = {{"d", DAY_MS}, {"h", 3600000}, {"m", 60000}, {"s", 1000}};
    for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
        if (ms > 0 && ms % units[i].ms == 0) {
            snprintf(buf, 32, "%" PRId64 "%s", ms / units[i].ms, units[i].unit);
            return buf;
        }
    }
    snprintf(buf, 32, "%" PRId64 "ms", ms);
    return buf;
}

/* Lower-case hex of `n` bytes into `out` (2n + 1 bytes). Returns out. */
static const char *hex(const uint8_t *bytes, size_t n, char *out)
{
    tally_hex(bytes, n, out);
    return out;
}

/* "charge" or "release". */
static const char *expiry_policy_name(int policy)
{
    return policy == TALLY_EXPIRY_RELEASE ? "release" : "charge";
}

/* What a denial's `remaining` counts, by deny reason. */
static const char *remaining_unit(int reason)
{
    switch (reason) {
    case TALLY_DENY_BUDGET:
    case TALLY_DENY_MODEL_BUDGET:
        return "micros";
    case TALLY_DENY_RPM:
    case TALLY_DENY_MODEL_RPM:
        return "requests";
    case TALLY_DENY_TPM:
    case TALLY_DENY_MODEL_TPM:
        return "tokens";
    case TALLY_DENY_PARALLEL:
        return "slots";
    default:
        return "";
    }
}

/* ---- JSON output. ---- */

/* Length of the valid UTF-8 sequence at `p` (RFC 3629: no overlong forms, no surrogates,
 * at most U+10FFFF), or 0 if it is not one. */
static size_t utf8_len(const unsigned char *p)
{
    if (p[0] < 0x80) {
        return 1;
    }
    if (p[0] >= 0xc2 && p[0] <= 0xdf) {
        return (p[1] & 0xc0) == 0x80 ? 2 : 0;
    }
    if (p[0] >= 0xe0 && p[0] <= 0xef) {
        unsigned lo = p[0] == 0xe0 ? 0xa0 : 0x80, hi = p[0] == 0xed ? 0x9f : 0xbf;
        return p[1] >= lo && p[1] <= hi && (p[2] & 0xc0) == 0x80 ? 3 : 0;
    }
    if (p[0] >= 0xf0 && p[0] <= 0xf4) {
        unsigned lo = p[0] == 0xf0 ? 0x90 : 0x80, hi = p[0] == 0xf4 ? 0x8f : 0xbf;
        return p[1] >= lo && p[1] <= hi && (p[2] & 0xc0) == 0x80 && (p[3] & 0xc0) == 0x80 ? 4 : 0;
    }
    return 0;
}

/* Write `s` as a JSON string: quotes, backslashes and controls escaped; bytes that are
 * not valid UTF-8 become U+FFFD so the output is always valid JSON. */
static void json_string(FILE *f, const char *s)
{
    fputc('"', f);
    for (const unsigned char *p = (const unsigned char *)s; *p != '\0';) {
        size_t n = utf8_len(p);
        if (*p == '"' || *p == '\\') {
            fprintf(f, "\\%c", *p);
        } else if (*p == '\n') {
            fputs("\\n", f);
        } else if (*p == '\r') {
            fputs("\\r", f);
        } else if (*p == '\t') {
            fputs("\\t", f);
        } else if (*p < 0x20) {
            fprintf(f, "\\u%04x", *p);
        } else if (n == 0) {
            fputs("\\ufffd", f);
        } else {
            fwrite(p, 1, n, f);
        }
        p += n != 0 ? n : 1; /* ASCII and escapes are one byte; invalid bytes skip one */
    }
    fputc('"', f);
}

#define JW_DEPTH_MAX 8

/* A JSON writer on one stream; knows whether the open object or array needs a comma. */
struct jw {
    FILE *f;
    int depth;
    bool comma[JW_DEPTH_MAX];
};

static void jw_init(struct jw *w, FILE *f)
{
    memset(w, 0, sizeof(*w));
    w->f = f;
}

/* Begin a value: the comma before it and, inside an object, `"key":` (`key` NULL in an
 * array or at the top level). */
static void jw_sep(struct jw *w, const char *key)
{
    if (w->comma[w->depth]) {
        fputc(',', w->f);
    }
    w->comma[w->depth] = true;
    if (key != NULL) {
        json_string(w->f, key);
        fputc(':', w->f);
    }
}

/* Open an object (`bracket` '{') or array ('[') as a value under `key`. */
static void jw_open(struct jw *w, const char *key, char bracket)
{
    assert(w->depth + 1 < JW_DEPTH_MAX);
    jw_sep(w, key);
    fputc(bracket, w->f);
    w->depth++;
    w->comma[w->depth] = false;
}

/* Close what the matching jw_open() opened (`bracket` '}' or ']'). */
static void jw_close(struct jw *w, char bracket)
{
    assert(w->depth > 0);
    fputc(bracket, w->f);
    w->depth--;
}

/* End a top-level value with a newline; the next one starts afresh (JSON lines). */
static void jw_line(struct jw *w)
{
    assert(w->depth == 0);
    fputc('\n', w->f);
    w->comma[0] = false;
}

/* Scalar values under `key` (NULL in an array). */
static void jw_str(struct jw *w, const char *key, const char *s)
{
    jw_sep(w, key);
    json_string(w->f, s);
}

/* `s`, or null when it is empty. */
static void jw_str_or_null(struct jw *w, const char *key, const char *s)
{
    jw_sep(w, key);
    if (s[0] == '\0') {
        fputs("null", w->f);
    } else {
        json_string(w->f, s);
    }
}

static void jw_i64(struct jw *w, const char *key, int64_t v)
{
    jw_sep(w, key);
    fprintf(w->f, "%" PRId64, v);
}

static void jw_u64(struct jw *w, const char *key, uint64_t v)
{
    jw_sep(w, key);
    fprintf(w->f, "%" PRIu64, v);
}

static void jw_bool(struct jw *w, const char *key, bool v)
{
    jw_sep(w, key);
    fputs(v ? "true" : "false", w->f);
}

static void jw_null(struct jw *w, const char *key)
{
    jw_sep(w, key);
    fputs("null", w->f);
}

/* `v`, or null when it is not `present` (a limit not set, an unlimited value). */
static void jw_i64_or_null(struct jw *w, const char *key, bool present, int64_t v)
{
    if (present) {
        jw_i64(w, key, v);
    } else {
        jw_null(w, key);
    }
}

static void jw_u64_or_null(struct jw *w, const char *key, bool present, uint64_t v)
{
    if (present) {
        jw_u64(w, key, v);
    } else {
        jw_null(w, key);
    }
}

/* Start a top-level JSON object on stdout; jw_object_end() ends it and its line. */
static void jw_object_begin(struct jw *w)
{
    jw_init(w, stdout);
    jw_open(w, NULL, '{');
}

static void jw_object_end(struct jw *w)
{
    jw_close(w, '}');
    jw_line(w);
}

/* `n` (<= TALLY_METADATA_MAX) bytes as a lower-case hex string. */
static void jw_hex(struct jw *w, const char *key, const uint8_t *bytes, size_t n)
{
    char text[2 * TALLY_METADATA_MAX + 1];
    assert(n <= TALLY_METADATA_MAX);
    jw_str(w, key, hex(bytes, n, text));
}

/* The time `ms` as two fields, "<name>_ms" (the number) and "<name>" (ISO-8601); both null
 * when it is not `present`. */
static void jw_time_pair(struct jw *w, const char *name, bool present, int64_t ms)
{
    char key[32], text[TIME_TEXT];
    snprintf(key, sizeof(key), "%s_ms", name);
    jw_i64_or_null(w, key, present, ms);
    jw_str_or_null(w, name, present ? fmt_time(ms, text) : ""); /* fmt_time() is never "" */
}

/* ---- Human output: key-value lines and tables. ---- */

/* Print "label           value" on stdout; the value is sanitized. */
__attribute__((format(printf, 2, 3))) static void kv(const char *label, const char *fmt, ...)
{
    char value[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(value, sizeof(value), fmt, ap);
    va_end(ap);
    sanitize(value);
    printf("%-*s %s\n", KV_WIDTH, label, value);
}

#define TABLE_COLS_MAX 12

/*
 * A table collected in memory and printed with aligned columns. The first row is the
 * header. Allocation failure is sticky: later calls do nothing and table_print() reports
 * it, so callers need not check every cell.
 */
struct table {
    size_t ncols;
    const char *align; /* 'l' or 'r' per column (borrowed) */
    char **cells;      /* row-major, owned */
    size_t ncells, cap;
    bool failed;
};

/* Append one cell (formatted, sanitized) to the current row. */
__attribute__((format(printf, 2, 3))) static void table_add(struct table *t, const char *fmt, ...)
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

/* Start table `t` with columns aligned as `align` ("llr..."; borrowed) and the header
 * `headers` (one string per column). */
static void table_init(struct table *t, const char *align, const char *const *headers)
{
    memset(t, 0, sizeof(*t));
    t->align = align;
    t->ncols = strlen(align);
    assert(t->ncols > 0 && t->ncols <= TABLE_COLS_MAX);
    for (size_t i = 0; i < t->ncols; i++) {
        table_add(t, "%s", headers[i]);
    }
}

/* Print the table on stdout, columns two spaces apart. Returns 0, or -1 if an allocation
 * had failed (nothing printed). */
static int table_print(const struct table *t)
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
static void table_free(struct table *t)
{
    for (size_t i = 0; i < t->ncells; i++) {
        free(t->cells[i]);
    }
    free(t->cells);
    memset(t, 0, sizeof(*t));
}

/* Print `t` (or report that memory ran out), free it, and return the exit code. */
static int table_finish(struct ctx *x, struct table *t)
{
    int rc = table_print(t) == 0 ? CTL_OK : CTL_UNAVAILABLE;
    if (rc != CTL_OK) {
        say_error(x->what, "out of memory");
    }
    table_free(t);
    return rc;
}

/* ---- Parsing values. Each prints why a value is bad and returns -1; 0 on success. ---- */

/*
 * Parse `s`, all decimal digits, into *out within [min, max]. Refuses an empty string, a
 * sign (a negative is named as such), spaces, other characters and overflow. `label` names
 * the value in the message ("--budget", "ID").
 */
static int parse_uint(struct ctx *x, const char *label, const char *s, uint64_t min, uint64_t max,
                      uint64_t *out)
{
    uint64_t v = 0;
    if (s[0] == '-' && s[1] != '\0') {
        return usage_error(x, "%s: '%s' must not be negative", label, s), -1;
    }
    if (s[0] == '\0') {
        return usage_error(x, "%s: the value is empty", label), -1;
    }
    for (const char *p = s; *p != '\0'; p++) {
        if (*p < '0' || *p > '9') {
            return usage_error(x, "%s: '%s' is not a whole number", label, s), -1;
        }
        if (__builtin_mul_overflow(v, 10, &v) ||
            __builtin_add_overflow(v, (uint64_t)(*p - '0'), &v)) {
            return usage_error(x, "%s: '%s' is too large", label, s), -1;
        }
    }
    if (v < min || v > max) {
        return usage_error(x, "%s: %s is out of range (%" PRIu64 " .. %" PRIu64 ")", label, s, min,
                           max),
               -1;
    }
    *out = v;
    return 0;
}

/* parse_uint() into an int64_t; `max` must fit. */
static int parse_int(struct ctx *x, const char *label, const char *s, int64_t min, int64_t max,
                     int64_t *out)
{
    uint64_t v;
    assert(min >= 0 && max >= min);
    if (parse_uint(x, label, s, (uint64_t)min, (uint64_t)max, &v) != 0) {
        return -1;
    }
    *out = (int64_t)v;
    return 0;
}

#define OPT_LABEL_SIZE 32

/* "--name" of option `o` into `buf` (OPT_LABEL_SIZE bytes), to name it in messages.
 * Returns buf. */
static const char *opt_label(enum opt_id o, char *buf)
{
    snprintf(buf, OPT_LABEL_SIZE, "--%s", opt_specs[o].name);
    return buf;
}

/* The value of option `o` (given) as an unsigned integer in [min, max] (see parse_uint). */
static int opt_uint(struct ctx *x, enum opt_id o, uint64_t min, uint64_t max, uint64_t *out)
{
    char label[OPT_LABEL_SIZE];
    assert(x->a->given[o]);
    return parse_uint(x, opt_label(o, label), x->a->value[o], min, max, out);
}

/* opt_uint() into an int64_t (see parse_int). */
static int opt_int(struct ctx *x, enum opt_id o, int64_t min, int64_t max, int64_t *out)
{
    char label[OPT_LABEL_SIZE];
    assert(x->a->given[o]);
    return parse_int(x, opt_label(o, label), x->a->value[o], min, max, out);
}

/* Check that `s` is a name of 1..max bytes of [A-Za-z0-9._:/@-] (accounts, models). */
static int check_name(struct ctx *x, const char *label, const char *s, size_t max)
{
    size_t n = strlen(s);
    if (n == 0 || n > max) {
        return usage_error(x, "%s: a name is 1 to %zu bytes long", label, max), -1;
    }
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        bool ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
                  (ch >= '0' && ch <= '9') || strchr("._:/@-", ch) != NULL;
        if (!ok) {
            return usage_error(x, "%s: '%s' is not a valid name (letters, digits and ._:/@-)",
                               label, s),
                   -1;
        }
    }
    return 0;
}

/* The value of option `o` as a name of 1..max bytes (see check_name) into *out (borrowed
 * from argv), or NULL when the option is not given. */
static int opt_name(struct ctx *x, enum opt_id o, size_t max, const char **out)
{
    char label[OPT_LABEL_SIZE];
    *out = x->a->given[o] ? x->a->value[o] : NULL;
    return *out != NULL ? check_name(x, opt_label(o, label), *out, max) : 0;
}

/* Parse exactly 2n hex digits (either case) in `s` into `out`. */
static int parse_hex(struct ctx *x, const char *label, const char *s, uint8_t *out, size_t n)
{
    char lower[2 * TALLY_KEY_HASH_SIZE + 1];
    size_t len = strlen(s);
    assert(n <= TALLY_KEY_HASH_SIZE);
    if (len != 2 * n) {
        return usage_error(x, "%s: '%s' is not %zu hex digits", label, s, 2 * n), -1;
    }
    for (size_t i = 0; i < len; i++) {
        char ch = s[i];
        if (ch >= 'A' && ch <= 'F') {
            ch = (char)(ch - 'A' + 'a');
        }
        if (!((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f'))) {
            return usage_error(x, "%s: '%s' is not %zu hex digits", label, s, 2 * n), -1;
        }
        lower[i] = ch;
    }
    lower[len] = '\0';
    if (tally_unhex(lower, out, n) != 0) {
        return usage_error(x, "%s: '%s' is not %zu hex digits", label, s, 2 * n), -1;
    }
    return 0;
}

/* Read exactly `n` decimal digits at *p into *out and advance *p. */
static bool take_digits(const char **p, int n, unsigned *out)
{
    unsigned v = 0;
    for (int i = 0; i < n; i++) {
        char ch = (*p)[i];
        if (ch < '0' || ch > '9') {
            return false;
        }
        v = v * 10 + (unsigned)(ch - '0');
    }
    *p += n;
    *out = v;
    return true;
}

/*
 * Parse an ISO-8601 UTC date or date-time: "2026-11-01", "2026-11-01T10:00",
 * "2026-11-01T10:00:00", with an optional fraction of a second (milliseconds kept) and an
 * optional "Z" or "+00:00" ('T' may also be a space). Years 1970 .. 9999. Returns true and
 * the time in *out_ms, or false.
 */
static bool parse_iso_time(const char *s, int64_t *out_ms)
{
    static const unsigned mdays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    const char *p = s;
    unsigned y, mo, d, h = 0, mi = 0, sec = 0, ms = 0;
    if (!take_digits(&p, 4, &y) || *p++ != '-' || !take_digits(&p, 2, &mo) || *p++ != '-' ||
        !take_digits(&p, 2, &d)) {
        return false;
    }
    if (*p == 'T' || *p == 't' || *p == ' ') {
        p++;
        if (!take_digits(&p, 2, &h) || *p++ != ':' || !take_digits(&p, 2, &mi)) {
            return false;
        }
        if (*p == ':') {
            p++;
            if (!take_digits(&p, 2, &sec)) {
                return false;
            }
            if (*p == '.' || *p == ',') {
                p++;
                int digits = 0;
                while (*p >= '0' && *p <= '9') {
                    if (digits < 3) {
                        ms = ms * 10 + (unsigned)(*p - '0');
                    }
                    digits++;
                    p++;
                }
                if (digits == 0 || digits > 9) {
                    return false;
                }
                for (int i = digits; i < 3; i++) {
                    ms *= 10;
                }
            }
        }
        if (*p == 'Z' || *p == 'z') {
            p++;
        } else if (strcmp(p, "+00:00") == 0 || strcmp(p, "+0000") == 0) {
            p += strlen(p);
        }
    }
    if (*p != '\0' || y < 1970 || y > 9999 || mo < 1 || mo > 12 || h > 23 || mi > 59 || sec > 59) {
        return false;
    }
    bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    unsigned dim = mdays[mo - 1] + (mo == 2 && leap);
    if (d < 1 || d > dim) {
        return false;
    }
    int64_t days = ledger_days_from_civil(y, mo, d);
    *out_ms = ((days * 86400 + h * 3600 + mi * 60 + sec) * 1000) + ms;
    return true;
}

/* A time given as milliseconds since the epoch or as UTC ISO-8601 (parse_iso_time). */
static int parse_time(struct ctx *x, const char *label, const char *s, int64_t *out_ms)
{
    if (s[0] >= '0' && s[0] <= '9' && strspn(s, "0123456789") == strlen(s)) {
        return parse_int(x, label, s, 0, TIME_MAX_MS, out_ms);
    }
    if (s[0] == '-') {
        return usage_error(x, "%s: '%s' must not be negative", label, s), -1;
    }
    if (!parse_iso_time(s, out_ms)) {
        return usage_error(x,
                           "%s: '%s' is not a time (ms since the epoch, or UTC like "
                           "2026-11-01 or 2026-11-01T10:00:00Z)",
                           label, s),
               -1;
    }
    return 0;
}

/* The value of option `o` (given) as a time (see parse_time). */
static int opt_time(struct ctx *x, enum opt_id o, int64_t *out_ms)
{
    char label[OPT_LABEL_SIZE];
    assert(x->a->given[o]);
    return parse_time(x, opt_label(o, label), x->a->value[o], out_ms);
}

/*
 * Parse a budget period: "none", "day", "week", "month" (calendar, UTC), or a fixed
 * duration NUMBER UNIT with unit ms, s, m, h or d ("1h", "7d", "30d"), 1 s .. 366 d.
 */
static int parse_period(struct ctx *x, const char *s, uint8_t *kind, int64_t *period_ms)
{
    static const struct {
        const char *name;
        uint8_t kind;
    } named[] = {
        {"none", TALLY_PERIOD_NONE},     {"day", TALLY_PERIOD_DAY},
        {"daily", TALLY_PERIOD_DAY},     {"week", TALLY_PERIOD_WEEK},
        {"weekly", TALLY_PERIOD_WEEK},   {"month", TALLY_PERIOD_MONTH},
        {"monthly", TALLY_PERIOD_MONTH},
    };
    static const struct {
        const char *unit;
        int64_t ms;
    } units[] = {{"ms", 1}, {"s", 1000}, {"m", 60000}, {"h", 3600000}, {"d", DAY_MS}};
    for (size_t i = 0; i < sizeof(named) / sizeof(named[0]); i++) {
        if (strcmp(s, named[i].name) == 0) {
            *kind = named[i].kind;
            *period_ms = 0;
            return 0;
        }
    }
    size_t ndigits = strspn(s, "0123456789");
    for (size_t i = 0; ndigits > 0 && ndigits <= 12 && i < sizeof(units) / sizeof(units[0]); i++) {
        if (strcmp(s + ndigits, units[i].unit) == 0) {
            int64_t n = 0, ms;
            for (size_t j = 0; j < ndigits; j++) {
                n = n * 10 + (s[j] - '0'); /* at most 12 digits: no overflow */
            }
            if (__builtin_mul_overflow(n, units[i].ms, &ms) || ms < PERIOD_MIN_MS ||
                ms > PERIOD_MAX_MS) {
                return usage_error(x, "--period: %s is out of range (1s .. 366d)", s), -1;
            }
            *kind = TALLY_PERIOD_FIXED;
            *period_ms = ms;
            return 0;
        }
    }
    return usage_error(x,
                       "--period: '%s' is not a period (none, day, week, month, or a duration "
                       "like 1h, 7d, 30d)",
                       s),
           -1;
}

/* The request id from --id (32 hex digits) into `buf`, *out pointing at it; or *out NULL
 * when --id is not given (the client makes one). */
static int opt_request_id(struct ctx *x, uint8_t buf[TALLY_REQUEST_ID_SIZE], const uint8_t **out)
{
    *out = NULL;
    if (!x->a->given[OPT_ID]) {
        return 0;
    }
    if (parse_hex(x, "--id", x->a->value[OPT_ID], buf, TALLY_REQUEST_ID_SIZE) != 0) {
        return -1;
    }
    *out = buf;
    return 0;
}

/*
 * A rate limit from option `rate` (1 .. RATE_MAX) and its optional burst option `burst`
 * (0 .. RATE_MAX) into *per_minute and *burst_size, adding `bit` to *set when the rate is
 * given. A burst needs its rate, since the ledger sets both under one bit.
 */
static int rate_from_opts(struct ctx *x, enum opt_id rate, enum opt_id burst, uint64_t *per_minute,
                          uint64_t *burst_size, uint32_t bit, uint32_t *set)
{
    const bool *given = x->a->given;
    if (given[burst] && !given[rate]) {
        return usage_error(x, "--%s needs --%s", opt_specs[burst].name, opt_specs[rate].name), -1;
    }
    if (!given[rate]) {
        return 0;
    }
    if (opt_uint(x, rate, 1, RATE_MAX, per_minute) != 0 ||
        (given[burst] && opt_uint(x, burst, 0, RATE_MAX, burst_size) != 0)) {
        return -1;
    }
    *set |= bit;
    return 0;
}

/* The limits given as options (LIMIT_OPTS) into *lim; lim->set says which. */
static int limits_from_opts(struct ctx *x, struct tally_limits *lim)
{
    const bool *given = x->a->given;
    memset(lim, 0, sizeof(*lim));
    if (given[OPT_BUDGET]) {
        if (opt_int(x, OPT_BUDGET, 0, AMOUNT_MAX, &lim->budget_micros) != 0) {
            return -1;
        }
        lim->set |= TALLY_LIM_BUDGET;
    }
    if (given[OPT_SOFT_BUDGET]) {
        if (opt_int(x, OPT_SOFT_BUDGET, 0, AMOUNT_MAX, &lim->soft_budget_micros) != 0) {
            return -1;
        }
        lim->set |= TALLY_LIM_SOFT_BUDGET;
    }
    if (given[OPT_PERIOD]) {
        if (parse_period(x, x->a->value[OPT_PERIOD], &lim->period_kind, &lim->period_ms) != 0) {
            return -1;
        }
        lim->set |= TALLY_LIM_PERIOD;
    }
    if (rate_from_opts(x, OPT_RPM, OPT_RPM_BURST, &lim->rpm, &lim->rpm_burst, TALLY_LIM_RPM,
                       &lim->set) != 0 ||
        rate_from_opts(x, OPT_TPM, OPT_TPM_BURST, &lim->tpm, &lim->tpm_burst, TALLY_LIM_TPM,
                       &lim->set) != 0) {
        return -1;
    }
    if (given[OPT_MAX_PARALLEL]) {
        if (opt_uint(x, OPT_MAX_PARALLEL, 0, PARALLEL_MAX, &lim->max_parallel) != 0) {
            return -1;
        }
        lim->set |= TALLY_LIM_PARALLEL;
    }
    if (given[OPT_EXPIRES_AT]) {
        if (opt_time(x, OPT_EXPIRES_AT, &lim->expires_at_ms) != 0) {
            return -1;
        }
        lim->set |= TALLY_LIM_EXPIRES;
    }
    if (given[OPT_EXPIRY_POLICY]) {
        const char *v = x->a->value[OPT_EXPIRY_POLICY];
        if (strcmp(v, "charge") == 0) {
            lim->expiry_policy = TALLY_EXPIRY_CHARGE;
        } else if (strcmp(v, "release") == 0) {
            lim->expiry_policy = TALLY_EXPIRY_RELEASE;
        } else {
            return usage_error(x, "--expiry-policy: '%s' is not charge or release", v), -1;
        }
        lim->set |= TALLY_LIM_EXPIRY_POLICY;
    }
    if (given[OPT_BLOCKED]) {
        lim->blocked = 1;
        lim->set |= TALLY_LIM_BLOCKED;
    }
    return 0;
}

/* The limit names --clear takes ('_' may stand for '-'). */
static const struct {
    const char *name;
    uint32_t bit;
} limit_names[] = {
    {"budget", TALLY_LIM_BUDGET},
    {"soft-budget", TALLY_LIM_SOFT_BUDGET},
    {"period", TALLY_LIM_PERIOD},
    {"rpm", TALLY_LIM_RPM},
    {"tpm", TALLY_LIM_TPM},
    {"max-parallel", TALLY_LIM_PARALLEL},
    {"expires-at", TALLY_LIM_EXPIRES},
    {"blocked", TALLY_LIM_BLOCKED},
    {"expiry-policy", TALLY_LIM_EXPIRY_POLICY},
    {"all", TALLY_LIM_ALL},
};

/* Parse --clear's comma-separated limit names into TALLY_LIM_* bits. */
static int parse_clear(struct ctx *x, const char *s, uint32_t *out)
{
    const char *p = s;
    size_t words_max = strlen(s) + 1; /* a bound: each word takes at least one byte */
    *out = 0;
    for (size_t i = 0; i < words_max; i++) {
        size_t len = strcspn(p, ",");
        char word[32];
        if (len == 0 || len >= sizeof(word)) {
            return usage_error(x, "--clear: '%s' is not a list of limit names", s), -1;
        }
        memcpy(word, p, len);
        word[len] = '\0';
        for (char *q = word; *q != '\0'; q++) {
            *q = *q == '_' ? '-' : *q;
        }
        uint32_t bit = 0;
        for (size_t j = 0; j < sizeof(limit_names) / sizeof(limit_names[0]); j++) {
            if (strcmp(word, limit_names[j].name) == 0) {
                bit = limit_names[j].bit;
            }
        }
        if (bit == 0) {
            return usage_error(x,
                               "--clear: unknown limit '%s' (budget, soft-budget, period, rpm, "
                               "tpm, max-parallel, expires-at, blocked, expiry-policy, all)",
                               word),
                   -1;
        }
        *out |= bit;
        if (p[len] == '\0') {
            return 0;
        }
        p += len + 1;
    }
    return usage_error(x, "--clear: '%s' is not a list of limit names", s), -1;
}

/* ---- The client. ---- */

/*
 * Read the token file `path` into `out` (TALLY_TOKEN_MAX + 1 bytes): the bare token, its
 * trailing newline ("\n" or "\r\n") stripped. Returns 0, or -1 after printing why.
 */
static int read_token_file(const char *path, char *out)
{
    char buf[TALLY_TOKEN_MAX + 4];
    size_t n = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        say_error("token file", "%s: %s", path, strerror(errno));
        return -1;
    }
    while (n < sizeof(buf)) { /* bounded: each pass reads >= 1 byte or ends */
        ssize_t got = read(fd, buf + n, sizeof(buf) - n);
        if (got < 0 && errno == EINTR) {
            continue;
        }
        if (got < 0) {
            say_error("token file", "%s: %s", path, strerror(errno));
            close(fd);
            return -1;
        }
        if (got == 0) {
            break;
        }
        n += (size_t)got;
    }
    close(fd);
    if (n > 0 && buf[n - 1] == '\n') {
        n--;
        if (n > 0 && buf[n - 1] == '\r') {
            n--;
        }
    }
    if (n > TALLY_TOKEN_MAX) {
        say_error("token file", "%s: the token is longer than %d bytes", path, TALLY_TOKEN_MAX);
        return -1;
    }
    if (memchr(buf, '\n', n) != NULL || memchr(buf, '\0', n) != NULL) {
        say_error("token file", "%s: holds more than a bare token on one line", path);
        return -1;
    }
    memcpy(out, buf, n);
    out[n] = '\0';
    return 0;
}

/* Work out the token: --token, --token-file, TALLY_TOKEN, TALLY_TOKEN_FILE, in that order
 * (none: ""). Returns 0 or an exit code. */
static int resolve_token(struct ctx *x)
{
    const struct args *a = x->a;
    const char *token = NULL, *file = NULL;
    if (a->given[OPT_TOKEN] && a->given[OPT_TOKEN_FILE]) {
        return usage_error(x, "give --token or --token-file, not both");
    }
    if (a->given[OPT_TOKEN]) {
        token = a->value[OPT_TOKEN];
    } else if (a->given[OPT_TOKEN_FILE]) {
        file = a->value[OPT_TOKEN_FILE];
    } else if (getenv("TALLY_TOKEN") != NULL) {
        token = getenv("TALLY_TOKEN");
    } else if (getenv("TALLY_TOKEN_FILE") != NULL && getenv("TALLY_TOKEN_FILE")[0] != '\0') {
        file = getenv("TALLY_TOKEN_FILE");
    }
    x->token[0] = '\0';
    if (file != NULL) {
        if (read_token_file(file, x->token) != 0) {
            return CTL_USAGE;
        }
        x->token_given = true;
    } else if (token != NULL) {
        if (strlen(token) > TALLY_TOKEN_MAX) {
            return usage_error(x, "the token is longer than %d bytes", TALLY_TOKEN_MAX);
        }
        snprintf(x->token, sizeof(x->token), "%s", token);
        x->token_given = true;
    }
    return 0;
}

/* The value of option `o`, else of environment variable `env`, else NULL ("" is NULL). */
static const char *option_or_env(const struct ctx *x, int o, const char *env)
{
    const char *v = x->a->given[o] ? x->a->value[o] : getenv(env);
    return v != NULL && v[0] != '\0' ? v : NULL;
}

/* Open the client (once) from --endpoints / TALLY_ENDPOINTS and the token. Call only after
 * the command's input is checked. Returns 0 or an exit code (after printing why). */
static int ctx_client(struct ctx *x)
{
    struct tally_config cfg;
    char errmsg[TALLY_ERRMSG_SIZE] = "";
    const char *endpoints = option_or_env(x, OPT_ENDPOINTS, "TALLY_ENDPOINTS");
    if (x->c != NULL) {
        return 0;
    }
    if (endpoints == NULL) {
        return usage_error(x, "no endpoints: give --endpoints HOST:PORT,... or set "
                              "TALLY_ENDPOINTS");
    }
    int rc = resolve_token(x);
    if (rc != 0) {
        return rc;
    }
    tally_config_init(&cfg);
    cfg.endpoints = endpoints;
    cfg.token = x->token;
    /* TLS: flags, else TALLYCTL_TLS_* (not TALLY_TLS_*, which tallyd reads for its own
     * certificate and may be set in the same shell). */
    cfg.tls_ca_file = option_or_env(x, OPT_TLS_CA, "TALLYCTL_TLS_CA");
    cfg.tls_cert_file = option_or_env(x, OPT_TLS_CERT, "TALLYCTL_TLS_CERT");
    cfg.tls_key_file = option_or_env(x, OPT_TLS_KEY, "TALLYCTL_TLS_KEY");
    cfg.tls_server_name = option_or_env(x, OPT_TLS_SERVER_NAME, "TALLYCTL_TLS_SERVER_NAME");
    if (x->timeout_ms > 0) {
        cfg.deadline_ms = x->timeout_ms;
        if (x->timeout_ms < 1000) {
            cfg.connect_timeout_ms = x->timeout_ms;
        }
    }
    rc = tally_open(&x->c, &cfg, errmsg);
    if (rc < 0) {
        x->c = NULL;
        say_error(x->what, "%s: %s", tally_strerror(rc), errmsg[0] ? errmsg : "cannot open");
        return exit_code_of(rc);
    }
    return 0;
}

/* ---- Output shared by several commands. ---- */

/* Report a failed admin write; after UNAVAILABLE, say how to retry it safely. */
static int write_failed(struct ctx *x, const char *subject, int rc, const struct tally_result *res)
{
    char hint[128], id[REQUEST_ID_HEX + 1];
    if (exit_code_of(rc) == CTL_UNAVAILABLE) {
        snprintf(hint, sizeof(hint),
                 "the change may or may not be made: repeat it with --id %s to retry safely",
                 hex(res->request_id, TALLY_REQUEST_ID_SIZE, id));
        return call_failed(x, subject, rc, res, hint);
    }
    return call_failed(x, subject, rc, res, NULL);
}

/*
 * Print the answer to an admin write on `subject` ("acme") that returned `rc`: a failure as
 * write_failed() does; else human "account acme: created" (`label` "account"), or a JSON
 * object with the subject under `kind` ("account"). Returns the exit code.
 */
static int write_answer(struct ctx *x, const char *label, const char *kind, const char *subject,
                        const char *action, int rc, const struct tally_result *res)
{
    bool replayed = (res->flags & TALLY_RESULT_REPLAYED) != 0;
    char id[REQUEST_ID_HEX + 1];
    if (rc < 0) {
        return write_failed(x, subject, rc, res);
    }
    if (x->json) {
        struct jw w;
        jw_object_begin(&w);
        jw_bool(&w, "ok", true);
        jw_str(&w, "action", action);
        jw_str(&w, kind, subject);
        jw_str(&w, "request_id", hex(res->request_id, TALLY_REQUEST_ID_SIZE, id));
        jw_u64(&w, "index", res->index);
        jw_bool(&w, "replayed", replayed);
        jw_object_end(&w);
    } else {
        printf("%s %s: %s%s\n", label, subject, action,
               replayed ? " (replayed: this request id was answered before)" : "");
    }
    return CTL_OK;
}

/* Write the limits `l` as a JSON object under `key`: every field always present, null
 * when that limit is not set. */
static void json_limits(struct jw *w, const char *key, const struct tally_limits *l)
{
    uint32_t set = l->set;
    bool period = (set & TALLY_LIM_PERIOD) != 0;
    jw_open(w, key, '{');
    jw_i64_or_null(w, "budget_micros", set & TALLY_LIM_BUDGET, l->budget_micros);
    jw_i64_or_null(w, "soft_budget_micros", set & TALLY_LIM_SOFT_BUDGET, l->soft_budget_micros);
    jw_str_or_null(w, "period", period ? tally_period_name(l->period_kind) : "");
    jw_i64_or_null(w, "period_ms", period && l->period_kind == TALLY_PERIOD_FIXED, l->period_ms);
    jw_u64_or_null(w, "rpm", set & TALLY_LIM_RPM, l->rpm);
    jw_u64_or_null(w, "rpm_burst", set & TALLY_LIM_RPM, l->rpm_burst);
    jw_u64_or_null(w, "tpm", set & TALLY_LIM_TPM, l->tpm);
    jw_u64_or_null(w, "tpm_burst", set & TALLY_LIM_TPM, l->tpm_burst);
    jw_u64_or_null(w, "max_parallel", set & TALLY_LIM_PARALLEL, l->max_parallel);
    jw_time_pair(w, "expires_at", set & TALLY_LIM_EXPIRES, l->expires_at_ms);
    jw_bool(w, "blocked", (set & TALLY_LIM_BLOCKED) && l->blocked);
    jw_str(w, "expiry_policy",
           expiry_policy_name((set & TALLY_LIM_EXPIRY_POLICY) ? l->expiry_policy
                                                              : TALLY_EXPIRY_CHARGE));
    jw_close(w, '}');
}

/* Write `item`, a struct tally_account, as a JSON object (a value in an array or at the top
 * level). Unlimited values (remaining without a budget, availability without a rate, the
 * end of no period) are null. */
static void json_account(struct jw *w, const void *item)
{
    const struct tally_account *a = item;
    jw_open(w, NULL, '{');
    jw_str(w, "name", a->name);
    jw_u64(w, "id", a->id);
    jw_str_or_null(w, "parent", a->parent);
    jw_u64(w, "depth", a->depth);
    jw_time_pair(w, "created", true, a->created_ms);
    json_limits(w, "limits", &a->limits);
    jw_i64(w, "spent_micros", a->spent_micros);
    jw_i64(w, "held_micros", a->held_micros);
    jw_i64_or_null(w, "remaining_micros", a->remaining_micros != INT64_MAX, a->remaining_micros);
    jw_i64(w, "lifetime_spent_micros", a->lifetime_spent_micros);
    jw_i64(w, "overrun_micros", a->overrun_micros);
    jw_u64(w, "inflight", a->inflight);
    jw_time_pair(w, "period_start", true, a->period_start_ms);
    jw_time_pair(w, "period_end", a->period_end_ms != INT64_MAX, a->period_end_ms);
    jw_u64_or_null(w, "rpm_available", a->rpm_available != UINT64_MAX, a->rpm_available);
    jw_u64_or_null(w, "tpm_available", a->tpm_available != UINT64_MAX, a->tpm_available);
    jw_u64(w, "keys", a->n_keys);
    jw_close(w, '}');
}

/* "1200000 ($1.200000)" into `buf` (64 bytes). */
static const char *fmt_micros(int64_t micros, char *buf)
{
    char money[MONEY_TEXT];
    snprintf(buf, 64, "%" PRId64 " (%s)", micros, fmt_money(micros, money));
    return buf;
}

/* The budget period of `l`: "-" when none is set, a fixed one's duration ("7d", written
 * into `buf`, 32 bytes), else its name ("month"). */
static const char *fmt_period(const struct tally_limits *l, char *buf)
{
    if (!(l->set & TALLY_LIM_PERIOD)) {
        return "-";
    }
    if (l->period_kind == TALLY_PERIOD_FIXED) {
        return fmt_duration(l->period_ms, buf);
    }
    return tally_period_name(l->period_kind);
}

/* Print account `a` as key-value lines. */
static void print_account(const struct tally_account *a)
{
    const struct tally_limits *l = &a->limits;
    char b1[64], b2[64], t1[TIME_TEXT], t2[TIME_TEXT], dur[32];
    kv("name", "%s", a->name);
    kv("id", "%" PRIu64, a->id);
    kv("parent", "%s", a->parent[0] != '\0' ? a->parent : "- (root)");
    kv("depth", "%" PRIu32, a->depth);
    kv("created", "%s", fmt_time(a->created_ms, t1));
    kv("status", "%s", (l->set & TALLY_LIM_BLOCKED) && l->blocked ? "BLOCKED" : "active");
    kv("budget", "%s", (l->set & TALLY_LIM_BUDGET) ? fmt_micros(l->budget_micros, b1) : "-");
    kv("soft budget", "%s",
       (l->set & TALLY_LIM_SOFT_BUDGET) ? fmt_micros(l->soft_budget_micros, b1) : "-");
    bool fixed = (l->set & TALLY_LIM_PERIOD) && l->period_kind == TALLY_PERIOD_FIXED;
    kv("period", "%s%s", fixed ? "fixed " : "", fmt_period(l, dur));
    if (l->set & TALLY_LIM_RPM) {
        kv("rpm", "%" PRIu64 " (burst %" PRIu64 ")", l->rpm, l->rpm_burst ? l->rpm_burst : l->rpm);
    } else {
        kv("rpm", "-");
    }
    if (l->set & TALLY_LIM_TPM) {
        kv("tpm", "%" PRIu64 " (burst %" PRIu64 ")", l->tpm, l->tpm_burst ? l->tpm_burst : l->tpm);
    } else {
        kv("tpm", "-");
    }
    if (l->set & TALLY_LIM_PARALLEL) {
        kv("max parallel", "%" PRIu64, l->max_parallel);
    } else {
        kv("max parallel", "-");
    }
    kv("expires at", "%s", (l->set & TALLY_LIM_EXPIRES) ? fmt_time(l->expires_at_ms, t1) : "-");
    kv("expiry policy", "%s",
       expiry_policy_name((l->set & TALLY_LIM_EXPIRY_POLICY) ? l->expiry_policy
                                                             : TALLY_EXPIRY_CHARGE));
    kv("spent", "%s", fmt_micros(a->spent_micros, b1));
    kv("held", "%s", fmt_micros(a->held_micros, b1));
    kv("remaining", "%s",
       a->remaining_micros == INT64_MAX ? "unlimited" : fmt_micros(a->remaining_micros, b2));
    kv("lifetime spent", "%s", fmt_micros(a->lifetime_spent_micros, b1));
    kv("overrun", "%s", fmt_micros(a->overrun_micros, b1));
    kv("period start", "%s", fmt_time(a->period_start_ms, t1));
    kv("period end", "%s",
       a->period_end_ms == INT64_MAX ? "never" : fmt_time(a->period_end_ms, t2));
    if (a->rpm_available == UINT64_MAX) {
        kv("rpm available", "unlimited");
    } else {
        kv("rpm available", "%" PRIu64, a->rpm_available);
    }
    if (a->tpm_available == UINT64_MAX) {
        kv("tpm available", "unlimited");
    } else {
        kv("tpm available", "%" PRIu64, a->tpm_available);
    }
    kv("inflight", "%" PRIu64, a->inflight);
    kv("keys", "%" PRIu32 " active", a->n_keys);
}

/* Write `item`, a struct tally_reservation, as a JSON object (a value in an array or at the
 * top level). */
static void json_reservation(struct jw *w, const void *item)
{
    const struct tally_reservation *r = item;
    char id[REQUEST_ID_HEX + 1];
    size_t mlen = r->metadata_len <= TALLY_METADATA_MAX ? r->metadata_len : TALLY_METADATA_MAX;
    jw_open(w, NULL, '{');
    jw_str(w, "request_id", hex(r->request_id, TALLY_REQUEST_ID_SIZE, id));
    jw_str(w, "state", tally_resv_state_name(r->state));
    jw_str(w, "account", r->account);
    jw_str_or_null(w, "model", r->model);
    jw_i64(w, "estimate_micros", r->estimate_micros);
    jw_u64(w, "estimate_tokens", r->estimate_tokens);
    jw_time_pair(w, "created", true, r->created_ms);
    jw_time_pair(w, "expires_at", true, r->expires_at_ms);
    jw_i64(w, "charged_micros", r->charged_micros);
    jw_hex(w, "metadata_hex", r->metadata, mlen);
    jw_close(w, '}');
}

/* ---- Paged listings. ---- */

/* The flags of a query: TALLY_READ_STALE with --stale, else a linearizable read. */
static unsigned read_flags(const struct ctx *x)
{
    return x->a->given[OPT_STALE] ? TALLY_READ_STALE : 0;
}

/* What a listing asks for: the account it is limited to (NULL: all; for accounts, the
 * parent, NULL: the roots), the journal's time range [since, until), the read flags. */
struct list_query {
    const char *name;
    int64_t since_ms, until_ms;
    unsigned flags;
};

/*
 * Fetch the page of `q` that starts at `cursor` (0: the first) into `items`, which has room
 * for TALLY_LIST_MAX; the contract of libtally's list calls (*got items, *next the cursor of
 * the next page, 0 after the last).
 */
typedef int (*fetch_fn)(struct ctx *x, const struct list_query *q, uint64_t cursor, void *items,
                        uint32_t *got, uint64_t *next, struct tally_result *res);

static int fetch_accounts(struct ctx *x, const struct list_query *q, uint64_t cursor, void *items,
                          uint32_t *got, uint64_t *next, struct tally_result *res)
{
    return tally_account_list(x->c, q->name, cursor, TALLY_LIST_MAX, q->flags, x->timeout_ms, items,
                              got, next, res);
}

static int fetch_reservations(struct ctx *x, const struct list_query *q, uint64_t cursor,
                              void *items, uint32_t *got, uint64_t *next, struct tally_result *res)
{
    return tally_reservation_list(x->c, q->name, cursor, TALLY_LIST_MAX, q->flags, x->timeout_ms,
                                  items, got, next, res);
}

static int fetch_journal(struct ctx *x, const struct list_query *q, uint64_t cursor, void *items,
                         uint32_t *got, uint64_t *next, struct tally_result *res)
{
    return tally_journal_list(x->c, q->name, q->since_ms, q->until_ms, cursor, TALLY_LIST_MAX,
                              q->flags, x->timeout_ms, items, got, next, res);
}

/* A walk through the pages of a listing: set `fetch` and `q`, the rest zero, then call
 * pager_next() until `done`. */
struct pager {
    fetch_fn fetch;
    const struct list_query *q; /* borrowed */
    int page;                   /* pages fetched so far */
    uint64_t cursor;            /* where the next page starts */
    bool done;                  /* the last page was fetched */
};

/*
 * Fetch the next page of `p` into `items` (room for TALLY_LIST_MAX): *got items. Refuses a
 * malformed page (more than the page size, a cursor that does not move on) and gives up
 * after PAGES_MAX pages, so a loop until `done` is bounded. Returns 0, or an exit code after
 * printing why; `later_hint` (may be NULL) goes with a call that fails after the first page.
 */
static int pager_next(struct ctx *x, struct pager *p, void *items, uint32_t *got,
                      const char *later_hint)
{
    struct tally_result res = {0};
    uint64_t next = 0;
    assert(!p->done && p->page < PAGES_MAX);
    *got = 0;
    int rc = p->fetch(x, p->q, p->cursor, items, got, &next, &res);
    if (rc < 0) {
        return call_failed(x, p->q->name, rc, &res, p->page > 0 ? later_hint : NULL);
    }
    if (*got > TALLY_LIST_MAX || (next != 0 && next == p->cursor)) {
        say_error(x->what, "protocol: the server answered a malformed page");
        return CTL_UNAVAILABLE;
    }
    if (p->page + 1 >= PAGES_MAX && next != 0) {
        say_error(x->what, "more than %d pages: giving up", PAGES_MAX);
        return CTL_UNAVAILABLE;
    }
    p->page++;
    p->cursor = next;
    p->done = next == 0;
    return 0;
}

/*
 * Grow `*items` (of `size`-byte elements, capacity *cap) to hold at least `need`. Returns
 * 0 or -1 (out of memory; *items unchanged).
 */
static int grow(void **items, size_t *cap, size_t need, size_t size)
{
    if (need <= *cap) {
        return 0;
    }
    size_t n = *cap == 0 ? TALLY_LIST_MAX : *cap;
    while (n < need) { /* bounded: doubles towards need */
        n *= 2;
    }
    void *p = realloc(*items, n * size);
    if (p == NULL) {
        return -1;
    }
    *items = p;
    *cap = n;
    return 0;
}

/* Every item of `q` (all pages, `size` bytes each) into a new array *out of *n items (the
 * caller frees it). Returns 0 or an exit code. */
static int list_all(struct ctx *x, fetch_fn fetch, const struct list_query *q, size_t size,
                    void **out, size_t *n)
{
    struct pager p = {.fetch = fetch, .q = q};
    void *all = NULL;
    size_t cap = 0, count = 0;
    while (!p.done) {
        uint32_t got;
        if (grow(&all, &cap, count + TALLY_LIST_MAX, size) != 0) {
            free(all);
            say_error(x->what, "out of memory");
            return CTL_UNAVAILABLE;
        }
        int rc = pager_next(x, &p, (char *)all + count * size, &got, NULL);
        if (rc != 0) {
            free(all);
            return rc;
        }
        count += got;
    }
    *out = all;
    *n = count;
    return 0;
}

/* A listing command: the option naming its account, how its pages are fetched, and how one
 * item is printed as JSON and as a row of its table. */
struct listing {
    enum opt_id filter; /* --parent, --account */
    fetch_fn fetch;
    size_t item_size;
    void (*json_item)(struct jw *w, const void *item);
    const char *align; /* the table's columns, as table_init() takes them */
    const char *const *headers;
    void (*table_row)(struct table *t, const void *item);
};

/* Run listing `l`: check its filter option, fetch every page, print the items as a JSON
 * array or an aligned table. Returns the exit code. */
static int run_listing(struct ctx *x, const struct listing *l)
{
    struct list_query q = {.flags = read_flags(x)};
    void *all = NULL;
    size_t n = 0;
    if (opt_name(x, l->filter, TALLY_NAME_MAX, &q.name) != 0) {
        return CTL_USAGE;
    }
    int rc = ctx_client(x);
    if (rc != 0) {
        return rc;
    }
    if ((rc = list_all(x, l->fetch, &q, l->item_size, &all, &n)) != 0) {
        return rc;
    }
    const char *items = all;
    if (x->json) {
        struct jw w;
        jw_init(&w, stdout);
        jw_open(&w, NULL, '[');
        for (size_t i = 0; i < n; i++) {
            l->json_item(&w, items + i * l->item_size);
        }
        jw_close(&w, ']');
        jw_line(&w);
        free(all);
        return CTL_OK;
    }
    struct table t;
    table_init(&t, l->align, l->headers);
    for (size_t i = 0; i < n; i++) {
        l->table_row(&t, items + i * l->item_size);
    }
    free(all);
    return table_finish(x, &t);
}

/* ---- Commands: accounts. ---- */

/* account create NAME [--parent P] [limits] [--id HEX] */
static int cmd_account_create(struct ctx *x)
{
    const char *name = x->words[0], *parent = NULL;
    struct tally_limits lim;
    uint8_t idbuf[TALLY_REQUEST_ID_SIZE];
    const uint8_t *id;
    if (check_name(x, "NAME", name, TALLY_NAME_MAX) != 0 ||
        opt_name(x, OPT_PARENT, TALLY_NAME_MAX, &parent) != 0 || limits_from_opts(x, &lim) != 0 ||
        opt_request_id(x, idbuf, &id) != 0) {
        return CTL_USAGE;
    }
    int rc = ctx_client(x);
    if (rc != 0) {
        return rc;
    }
    struct tally_result res = {0};
    rc = tally_account_create(x->c, name, parent, lim.set ? &lim : NULL, id, x->timeout_ms, &res);
    return write_answer(x, "account", "account", name, "created", rc, &res);
}

/* account update NAME [limits] [--parent P | --root] [--clear LIST] [--id HEX] */
static int cmd_account_update(struct ctx *x)
{
    const char *name = x->words[0], *new_parent = NULL;
    struct tally_limits lim;
    uint32_t clear = 0;
    uint8_t idbuf[TALLY_REQUEST_ID_SIZE];
    const uint8_t *id;
    if (check_name(x, "NAME", name, TALLY_NAME_MAX) != 0) {
        return CTL_USAGE;
    }
    if (x->a->given[OPT_PARENT] && x->a->given[OPT_ROOT]) {
        return usage_error(x, "give --parent or --root, not both");
    }
    if (opt_name(x, OPT_PARENT, TALLY_NAME_MAX, &new_parent) != 0 ||
        limits_from_opts(x, &lim) != 0 || opt_request_id(x, idbuf, &id) != 0) {
        return CTL_USAGE;
    }
    if (x->a->given[OPT_ROOT]) {
        new_parent = "";
    }
    if (x->a->given[OPT_CLEAR] && parse_clear(x, x->a->value[OPT_CLEAR], &clear) != 0) {
        return CTL_USAGE;
    }
    if ((lim.set & clear) != 0) {
        return usage_error(x, "a limit is both set and cleared");
    }
    if (lim.set == 0 && clear == 0 && new_parent == NULL) {
        return usage_error(x, "nothing to change: give limits, --clear, --parent or --root");
    }
    int rc = ctx_client(x);
    if (rc != 0) {
        return rc;
    }
    struct tally_result res = {0};
    rc = tally_account_update(x->c, name, lim.set ? &lim : NULL, clear, new_parent, id,
                              x->timeout_ms, &res);
    return write_answer(x, "account", "account", name, "updated", rc, &res);
}

/* account block|unblock NAME [--id HEX]: set the blocked limit to 1 or 0. */
static int set_blocked(struct ctx *x, bool blocked)
{
    const char *name = x->words[0];
    struct tally_limits lim = {0};
    uint8_t idbuf[TALLY_REQUEST_ID_SIZE];
    const uint8_t *id;
    if (check_name(x, "NAME", name, TALLY_NAME_MAX) != 0 || opt_request_id(x, idbuf, &id) != 0) {
        return CTL_USAGE;
    }
    lim.set = TALLY_LIM_BLOCKED;
    lim.blocked = blocked ? 1 : 0;
    int rc = ctx_client(x);
    if (rc != 0) {
        return rc;
    }
    struct tally_result res = {0};
    rc = tally_account_update(x->c, name, &lim, 0, NULL, id, x->timeout_ms, &res);
    return write_answer(x, "account", "account", name, blocked ? "blocked" : "unblocked", rc, &res);
}

static int cmd_account_block(struct ctx *x)
{
    return set_blocked(x, true);
}

static int cmd_account_unblock(struct ctx *x)
{
    return set_blocked(x, false);
}

/* account show NAME [--stale] */
static int cmd_account_show(struct ctx *x)
{
    const char *name = x->words[0];
    struct tally_account acct;
    if (check_name(x, "NAME", name, TALLY_NAME_MAX) != 0) {
        return CTL_USAGE;
    }
    int rc = ctx_client(x);
    if (rc != 0) {
        return rc;
    }
    struct tally_result res = {0};
    memset(&acct, 0, sizeof(acct));
    rc = tally_account_get(x->c, name, read_flags(x), x->timeout_ms, &acct, &res);
    if (rc < 0) {
        return call_failed(x, name, rc, &res, NULL);
    }
    if (x->json) {
        struct jw w;
        jw_init(&w, stdout);
        json_account(&w, &acct);
        jw_line(&w);
    } else {
        print_account(&acct);
    }
    return CTL_OK;
}

/* `item`, a struct tally_account, as a row of the account list table. */
static void account_row(struct table *t, const void *item)
{
    const struct tally_account *a = item;
    const struct tally_limits *l = &a->limits;
    char m[MONEY_TEXT], dur[32];
    table_add(t, "%s", a->name);
    table_add(t, "%s", a->parent[0] ? a->parent : "-");
    table_add(t, "%s", (l->set & TALLY_LIM_BUDGET) ? fmt_money(l->budget_micros, m) : "-");
    table_add(t, "%s", fmt_period(l, dur));
    table_add(t, "%s", fmt_money(a->spent_micros, m));
    table_add(t, "%s", fmt_money(a->held_micros, m));
    table_add(t, "%s",
              a->remaining_micros == INT64_MAX ? "unlimited" : fmt_money(a->remaining_micros, m));
    table_add(t, "%" PRIu64, a->inflight);
    table_add(t, "%" PRIu32, a->n_keys);
    table_add(t, "%s", (l->set & TALLY_LIM_BLOCKED) && l->blocked ? "blocked" : "active");
}

/* account list [--parent P] [--stale]: the children of P (or the roots), every page. */
static int cmd_account_list(struct ctx *x)
{
    static const char *const headers[] = {"NAME", "PARENT",    "BUDGET",   "PERIOD", "SPENT",
                                          "HELD", "REMAINING", "INFLIGHT", "KEYS",   "STATUS"};
    static const struct listing accounts = {.filter = OPT_PARENT,
                                            .fetch = fetch_accounts,
                                            .item_size = sizeof(struct tally_account),
                                            .json_item = json_account,
                                            .align = "llrlrrrrrl",
                                            .headers = headers,
                                            .table_row = account_row};
    return run_listing(x, &accounts);
}

/* ---- Commands: keys. ---- */

/* A new key secret: SECRET_PREFIX and 32 hex digits of getrandom(2), into `out`
 * (SECRET_SIZE bytes). Returns 0 or -1 (errno set). */
static int new_secret(char out[SECRET_SIZE])
{
    uint8_t random[SECRET_RANDOM_BYTES];
    size_t got = 0;
    for (int tries = 0; got < sizeof(random) && tries < 100; tries++) {
        ssize_t n = getrandom(random + got, sizeof(random) - got, 0);
        if (n < 0 && errno != EINTR) {
            return -1;
        }
        if (n > 0) {
            got += (size_t)n;
        }
    }
    if (got < sizeof(random)) {
        errno = EAGAIN;
        return -1;
    }
    memcpy(out, SECRET_PREFIX, sizeof(SECRET_PREFIX) - 1);
    tally_hex(random, sizeof(random), out + sizeof(SECRET_PREFIX) - 1);
    explicit_bzero(random, sizeof(random));
    return 0;
}

/*
 * key add ACCOUNT [--key-hash HEX] [--id HEX]: without --key-hash, make a new secret, add
 * its hash and print the secret once (it is kept nowhere).
 */
static int cmd_key_add(struct ctx *x)
{
    const char *account = x->words[0];
    char secret[SECRET_SIZE] = "", hash_hex[KEY_HASH_HEX + 1], id_hex[REQUEST_ID_HEX + 1];
    uint8_t hash[TALLY_KEY_HASH_SIZE], idbuf[TALLY_REQUEST_ID_SIZE];
    const uint8_t *id;
    bool generated = !x->a->given[OPT_KEY_HASH];
    if (check_name(x, "ACCOUNT", account, TALLY_NAME_MAX) != 0 ||
        opt_request_id(x, idbuf, &id) != 0) {
        return CTL_USAGE;
    }
    if (!generated) {
        if (parse_hex(x, "--key-hash", x->a->value[OPT_KEY_HASH], hash, sizeof(hash)) != 0) {
            return CTL_USAGE;
        }
    } else {
        if (new_secret(secret) != 0) {
            say_error(x->what, "getrandom: %s", strerror(errno));
            return CTL_UNAVAILABLE;
        }
        if (tally_key_hash(secret, hash) != 0) {
            say_error(x->what, "cannot hash the new secret");
            return CTL_UNAVAILABLE;
        }
    }
    hex(hash, sizeof(hash), hash_hex);
    int rc = ctx_client(x);
    if (rc != 0) {
        explicit_bzero(secret, sizeof(secret));
        return rc;
    }
    struct tally_result res = {0};
    rc = tally_key_add(x->c, account, NULL, hash, id, x->timeout_ms, &res);
    if (rc < 0) {
        explicit_bzero(secret, sizeof(secret));
        if (generated && exit_code_of(rc) == CTL_UNAVAILABLE) {
            char hint[256];
            snprintf(hint, sizeof(hint),
                     "key %s may have been added without its secret being shown: revoke it "
                     "with 'tallyctl key revoke %s'",
                     hash_hex, hash_hex);
            return call_failed(x, account, rc, &res, hint);
        }
        return write_failed(x, account, rc, &res);
    }
    hex(res.request_id, TALLY_REQUEST_ID_SIZE, id_hex);
    if (x->json) {
        struct jw w;
        jw_object_begin(&w);
        jw_bool(&w, "ok", true);
        jw_str(&w, "action", "added");
        jw_str(&w, "account", account);
        jw_str_or_null(&w, "secret", secret); /* "" unless generated */
        jw_str(&w, "key_hash", hash_hex);
        jw_str(&w, "request_id", id_hex);
        jw_u64(&w, "index", res.index);
        jw_bool(&w, "replayed", (res.flags & TALLY_RESULT_REPLAYED) != 0);
        jw_object_end(&w);
    } else {
        kv("account", "%s", account);
        if (generated) {
            kv("secret", "%s", secret);
        }
        kv("key hash", "%s", hash_hex);
        if (res.flags & TALLY_RESULT_REPLAYED) {
            kv("note", "replayed: this request id was answered before");
        }
    }
    if (generated) {
        fprintf(x->json ? stderr : stdout, "store it now: it is not kept\n");
    }
    explicit_bzero(secret, sizeof(secret));
    return CTL_OK;
}

/* key revoke HASH [--id HEX] */
static int cmd_key_revoke(struct ctx *x)
{
    uint8_t hash[TALLY_KEY_HASH_SIZE], idbuf[TALLY_REQUEST_ID_SIZE];
    char hash_hex[KEY_HASH_HEX + 1];
    const uint8_t *id;
    if (parse_hex(x, "HASH", x->words[0], hash, sizeof(hash)) != 0 ||
        opt_request_id(x, idbuf, &id) != 0) {
        return CTL_USAGE;
    }
    hex(hash, sizeof(hash), hash_hex);
    int rc = ctx_client(x);
    if (rc != 0) {
        return rc;
    }
    struct tally_result res = {0};
    rc = tally_key_revoke(x->c, hash, id, x->timeout_ms, &res);
    return write_answer(x, "key", "key_hash", hash_hex, "revoked", rc, &res);
}

/* key show HASH [--stale]: the account a key maps to and whether it is revoked. */
static int cmd_key_show(struct ctx *x)
{
    uint8_t hash[TALLY_KEY_HASH_SIZE];
    char hash_hex[KEY_HASH_HEX + 1], account[TALLY_NAME_MAX + 1] = "";
    int revoked = 0;
    if (parse_hex(x, "HASH", x->words[0], hash, sizeof(hash)) != 0) {
        return CTL_USAGE;
    }
    hex(hash, sizeof(hash), hash_hex);
    int rc = ctx_client(x);
    if (rc != 0) {
        return rc;
    }
    struct tally_result res = {0};
    rc = tally_key_get(x->c, hash, read_flags(x), x->timeout_ms, account, &revoked, &res);
    if (rc < 0) {
        return call_failed(x, hash_hex, rc, &res, NULL);
    }
    account[TALLY_NAME_MAX] = '\0';
    if (x->json) {
        struct jw w;
        jw_object_begin(&w);
        jw_str(&w, "key_hash", hash_hex);
        jw_str(&w, "account", account);
        jw_bool(&w, "revoked", revoked != 0);
        jw_object_end(&w);
    } else {
        kv("key hash", "%s", hash_hex);
        kv("account", "%s", account);
        kv("status", "%s", revoked ? "REVOKED" : "active");
    }
    return CTL_OK;
}

/* key hash [SECRET]: the SHA-256 the ledger stores for a secret (read from the first line
 * of stdin when not given, so it stays out of the shell history). No cluster needed. */
static int cmd_key_hash(struct ctx *x)
{
    char line[SECRET_MAX + 2], hash_hex[KEY_HASH_HEX + 1];
    uint8_t hash[TALLY_KEY_HASH_SIZE];
    const char *secret;
    if (x->n_words == 1) {
        secret = x->words[0];
    } else {
        if (fgets(line, sizeof(line), stdin) == NULL) {
            return usage_error(x, "no secret on stdin");
        }
        line[strcspn(line, "\r\n")] = '\0';
        secret = line;
    }
    if (secret[0] == '\0' || strlen(secret) > SECRET_MAX) {
        explicit_bzero(line, sizeof(line));
        return usage_error(x, "SECRET: 1 to %d bytes", SECRET_MAX);
    }
    int rc = tally_key_hash(secret, hash);
    explicit_bzero(line, sizeof(line));
    if (rc != 0) {
        return usage_error(x, "SECRET: %s", tally_strerror(rc));
    }
    hex(hash, sizeof(hash), hash_hex);
    if (x->json) {
        struct jw w;
        jw_object_begin(&w);
        jw_str(&w, "key_hash", hash_hex);
        jw_object_end(&w);
    } else {
        printf("%s\n", hash_hex);
    }
    return CTL_OK;
}

/* ---- Commands: reservations. ---- */

/*
 * After an UNAVAILABLE reserve the client voids its id in the background; give that void
 * up to `budget_ms` to finish before the process exits (an abandoned hold would be charged
 * at its ttl under the default expiry policy).
 */
static void await_background_voids(struct tally *c, int64_t budget_ms)
{
    for (int64_t waited = 0; waited < budget_ms; waited += 20) {
        struct tally_stats st;
        tally_stats(c, &st);
        if (st.voids_done + st.voids_failed >= st.voids_queued) {
            return;
        }
        struct timespec ts = {0, 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}

/* Print a reserve's answer (granted or denied). */
static void print_reserve(struct ctx *x, const struct tally_result *res)
{
    char id[REQUEST_ID_HEX + 1], t[TIME_TEXT], m[MONEY_TEXT];
    bool granted = res->outcome == TALLY_GRANTED;
    bool replayed = (res->flags & TALLY_RESULT_REPLAYED) != 0;
    bool soft = (res->flags & TALLY_RESULT_SOFT_BUDGET) != 0;
    hex(res->request_id, TALLY_REQUEST_ID_SIZE, id);
    if (x->json) {
        struct jw w;
        jw_object_begin(&w);
        jw_str(&w, "outcome", tally_outcome_name(res->outcome));
        jw_str(&w, "request_id", id);
        /* Every field in both outcomes; those of the other outcome are null. */
        jw_time_pair(&w, "expires_at", granted, res->expires_at_ms);
        if (granted) {
            jw_bool(&w, "soft_budget", soft);
        } else {
            jw_null(&w, "soft_budget");
        }
        jw_str_or_null(&w, "reason", granted ? "" : tally_deny_reason_name(res->deny_reason));
        jw_str_or_null(&w, "account", granted ? "" : res->account);
        jw_i64_or_null(&w, "remaining", !granted, res->remaining);
        jw_i64_or_null(&w, "retry_after_ms", !granted, res->retry_after_ms);
        jw_str_or_null(&w, "message", granted ? "" : res->message);
        jw_u64(&w, "index", res->index);
        jw_bool(&w, "replayed", replayed);
        jw_object_end(&w);
        return;
    }
    kv("outcome", "%s", granted ? "granted" : "DENIED");
    kv("id", "%s", id);
    if (granted) {
        kv("expires at", "%s (%" PRId64 ")", fmt_time(res->expires_at_ms, t), res->expires_at_ms);
        if (soft) {
            kv("warning", "an account of the chain is past its soft budget");
        }
    } else {
        const char *unit = remaining_unit(res->deny_reason);
        kv("reason", "%s", tally_deny_reason_name(res->deny_reason));
        kv("account", "%s", res->account[0] ? res->account : "-");
        if (strcmp(unit, "micros") == 0) {
            kv("remaining", "%" PRId64 " micros (%s)", res->remaining,
               fmt_money(res->remaining, m));
        } else if (unit[0] != '\0') {
            kv("remaining", "%" PRId64 " %s", res->remaining, unit);
        }
        if (res->retry_after_ms < 0) {
            kv("retry after", "never (the request can never fit)");
        } else if (res->retry_after_ms > 0) {
            kv("retry after", "%" PRId64 " ms", res->retry_after_ms);
        } else {
            kv("retry after", "-");
        }
    }
    if (replayed) {
        kv("note", "replayed: this request id was answered before");
    }
}

/* reserve (--key SECRET | --key-hash HEX | --account A) --estimate MICROS [--tokens N]
 * [--model M] [--ttl MS] [--id HEX] */
static int cmd_reserve(struct ctx *x)
{
    const struct args *a = x->a;
    struct tally_reserve_args ra;
    uint8_t hash[TALLY_KEY_HASH_SIZE], idbuf[TALLY_REQUEST_ID_SIZE];
    memset(&ra, 0, sizeof(ra));
    if ((int)a->given[OPT_KEY] + (int)a->given[OPT_KEY_HASH] + (int)a->given[OPT_ACCOUNT] != 1) {
        return usage_error(x, "name the payer with one of --key, --key-hash or --account");
    }
    if (a->given[OPT_KEY]) {
        ra.key_secret = a->value[OPT_KEY];
        if (ra.key_secret[0] == '\0' || strlen(ra.key_secret) > SECRET_MAX) {
            return usage_error(x, "--key: 1 to %d bytes", SECRET_MAX);
        }
    } else if (a->given[OPT_KEY_HASH]) {
        if (parse_hex(x, "--key-hash", a->value[OPT_KEY_HASH], hash, sizeof(hash)) != 0) {
            return CTL_USAGE;
        }
        ra.key_hash = hash;
    } else if (opt_name(x, OPT_ACCOUNT, TALLY_NAME_MAX, &ra.account) != 0) {
        return CTL_USAGE;
    }
    if (!a->given[OPT_ESTIMATE]) {
        return usage_error(x, "--estimate MICROS is required");
    }
    if (opt_int(x, OPT_ESTIMATE, 0, AMOUNT_MAX, &ra.estimate_micros) != 0 ||
        (a->given[OPT_TOKENS] && opt_uint(x, OPT_TOKENS, 0, TOKENS_MAX, &ra.estimate_tokens)) ||
        opt_name(x, OPT_MODEL, TALLY_MODEL_MAX, &ra.model) != 0) {
        return CTL_USAGE;
    }
    ra.ttl_ms = TTL_DEFAULT_MS;
    if (a->given[OPT_TTL] && opt_int(x, OPT_TTL, 1, TTL_MAX_MS, &ra.ttl_ms) != 0) {
        return CTL_USAGE;
    }
    if (opt_request_id(x, idbuf, &ra.request_id) != 0) {
        return CTL_USAGE;
    }
    int rc = ctx_client(x);
    if (rc != 0) {
        return rc;
    }
    struct tally_result res = {0};
    rc = tally_reserve(x->c, &ra, x->timeout_ms, &res);
    if (rc < 0) {
        if (rc == -TALLY_EUNAVAILABLE) {
            await_background_voids(x->c, x->timeout_ms > 0 ? x->timeout_ms : STATUS_DEADLINE_MS);
            return call_failed(x, NULL, rc, &res,
                               "treat it as denied (the client voids any hold it made)");
        }
        return call_failed(x, NULL, rc, &res, NULL);
    }
    if (res.outcome != TALLY_GRANTED && res.outcome != TALLY_DENIED) {
        say_error(x->what, "unexpected outcome %s", tally_outcome_name(res.outcome));
        return CTL_UNAVAILABLE;
    }
    print_reserve(x, &res);
    return res.outcome == TALLY_GRANTED ? CTL_OK : CTL_DENIED;
}

/* What resolve() does to a reservation. */
enum resolve_kind {
    RESOLVE_SETTLE,
    RESOLVE_VOID,
    RESOLVE_EXTEND,
};

/* Print the answer to a settle, void or extend (`kind`) of reservation `id_hex`: the amounts
 * of a settle or of a late void, the new expiry of an extend. */
static void print_resolve(struct ctx *x, enum resolve_kind kind, const char *id_hex,
                          const struct tally_result *res)
{
    static const char *const actions[] = {
        [RESOLVE_SETTLE] = "settled", [RESOLVE_VOID] = "voided", [RESOLVE_EXTEND] = "extended"};
    const char *action = actions[kind];
    char b[64], t[TIME_TEXT];
    bool late = (res->flags & TALLY_RESULT_LATE) != 0;
    bool replayed = (res->flags & TALLY_RESULT_REPLAYED) != 0;
    bool amounts = kind == RESOLVE_SETTLE || (kind == RESOLVE_VOID && late);
    bool expiry = kind == RESOLVE_EXTEND;
    if (x->json) {
        struct jw w;
        jw_object_begin(&w);
        jw_bool(&w, "ok", true);
        jw_str(&w, "action", action);
        jw_str(&w, "request_id", id_hex);
        if (amounts) {
            jw_i64(&w, "charged_micros", res->charged_micros);
            jw_i64(&w, "overrun_micros", res->overrun_micros);
        }
        if (expiry) {
            jw_time_pair(&w, "expires_at", true, res->expires_at_ms);
        }
        jw_bool(&w, "late", late);
        jw_bool(&w, "replayed", replayed);
        jw_u64(&w, "index", res->index);
        jw_object_end(&w);
        return;
    }
    kv("outcome", "%s", action);
    kv("id", "%s", id_hex);
    if (amounts) {
        kv(late ? "correction" : "charged", "%s", fmt_micros(res->charged_micros, b));
        kv("overrun", "%s", fmt_micros(res->overrun_micros, b));
    }
    if (expiry) {
        kv("expires at", "%s (%" PRId64 ")", fmt_time(res->expires_at_ms, t), res->expires_at_ms);
    }
    if (late) {
        kv("note", "late: the reservation had expired; the amount is a correction");
    }
    if (replayed) {
        kv("note", "replayed: this was answered before");
    }
}

/* The reservation id in the first positional word. */
static int word_request_id(struct ctx *x, uint8_t id[TALLY_REQUEST_ID_SIZE])
{
    return parse_hex(x, "ID", x->words[0], id, TALLY_REQUEST_ID_SIZE);
}

/*
 * Settle (`amount`: the actual micros, with `tokens`), void, or extend (`amount`: the ttl
 * in ms) reservation `id`, its input already checked, and print the answer. A failure after
 * UNAVAILABLE says that repeating the command is safe. Returns the exit code.
 */
static int resolve(struct ctx *x, enum resolve_kind kind, const uint8_t id[TALLY_REQUEST_ID_SIZE],
                   int64_t amount, uint64_t tokens)
{
    char id_hex[REQUEST_ID_HEX + 1];
    hex(id, TALLY_REQUEST_ID_SIZE, id_hex);
    int rc = ctx_client(x);
    if (rc != 0) {
        return rc;
    }
    struct tally_result res = {0};
    if (kind == RESOLVE_SETTLE) {
        rc = tally_settle(x->c, id, amount, tokens, x->timeout_ms, &res);
    } else if (kind == RESOLVE_VOID) {
        rc = tally_void(x->c, id, x->timeout_ms, &res);
    } else {
        rc = tally_extend(x->c, id, amount, x->timeout_ms, &res);
    }
    if (rc < 0) {
        return call_failed(x, id_hex, rc, &res,
                           exit_code_of(rc) == CTL_UNAVAILABLE
                               ? "nothing is known: repeating the same command is safe"
                               : NULL);
    }
    print_resolve(x, kind, id_hex, &res);
    return CTL_OK;
}

/* settle ID --actual MICROS [--tokens N] */
static int cmd_settle(struct ctx *x)
{
    uint8_t id[TALLY_REQUEST_ID_SIZE];
    int64_t actual;
    uint64_t tokens = 0;
    if (word_request_id(x, id) != 0) {
        return CTL_USAGE;
    }
    if (!x->a->given[OPT_ACTUAL]) {
        return usage_error(x, "--actual MICROS is required");
    }
    if (opt_int(x, OPT_ACTUAL, 0, AMOUNT_MAX, &actual) != 0 ||
        (x->a->given[OPT_TOKENS] && opt_uint(x, OPT_TOKENS, 0, TOKENS_MAX, &tokens) != 0)) {
        return CTL_USAGE;
    }
    return resolve(x, RESOLVE_SETTLE, id, actual, tokens);
}

/* void ID */
static int cmd_void(struct ctx *x)
{
    uint8_t id[TALLY_REQUEST_ID_SIZE];
    if (word_request_id(x, id) != 0) {
        return CTL_USAGE;
    }
    return resolve(x, RESOLVE_VOID, id, 0, 0);
}

/* extend ID --ttl MS */
static int cmd_extend(struct ctx *x)
{
    uint8_t id[TALLY_REQUEST_ID_SIZE];
    int64_t ttl_ms;
    if (word_request_id(x, id) != 0) {
        return CTL_USAGE;
    }
    if (!x->a->given[OPT_TTL]) {
        return usage_error(x, "--ttl MS is required");
    }
    if (opt_int(x, OPT_TTL, 1, TTL_MAX_MS, &ttl_ms) != 0) {
        return CTL_USAGE;
    }
    return resolve(x, RESOLVE_EXTEND, id, ttl_ms, 0);
}

/* `item`, a struct tally_reservation, as a row of the reservations list table. */
static void reservation_row(struct table *t, const void *item)
{
    const struct tally_reservation *r = item;
    char id[REQUEST_ID_HEX + 1], m[MONEY_TEXT], t1[TIME_TEXT], t2[TIME_TEXT];
    table_add(t, "%s", hex(r->request_id, TALLY_REQUEST_ID_SIZE, id));
    table_add(t, "%s", r->account);
    table_add(t, "%s", r->model[0] ? r->model : "-");
    table_add(t, "%s", tally_resv_state_name(r->state));
    table_add(t, "%s", fmt_money(r->estimate_micros, m));
    table_add(t, "%" PRIu64, r->estimate_tokens);
    table_add(t, "%s", fmt_time(r->created_ms, t1));
    table_add(t, "%s", fmt_time(r->expires_at_ms, t2));
}

/* reservations list [--account A] [--stale]: open reservations, in expiry order. */
static int cmd_reservations_list(struct ctx *x)
{
    static const char *const headers[] = {"ID",       "ACCOUNT", "MODEL",   "STATE",
                                          "ESTIMATE", "TOKENS",  "CREATED", "EXPIRES"};
    static const struct listing reservations = {.filter = OPT_ACCOUNT,
                                                .fetch = fetch_reservations,
                                                .item_size = sizeof(struct tally_reservation),
                                                .json_item = json_reservation,
                                                .align = "llllrrll",
                                                .headers = headers,
                                                .table_row = reservation_row};
    return run_listing(x, &reservations);
}

/* reservations show ID [--stale]: one reservation, open or resolved and retained. */
static int cmd_reservations_show(struct ctx *x)
{
    uint8_t id[TALLY_REQUEST_ID_SIZE];
    char id_hex[REQUEST_ID_HEX + 1], b[64], t[TIME_TEXT];
    struct tally_reservation r;
    if (word_request_id(x, id) != 0) {
        return CTL_USAGE;
    }
    hex(id, sizeof(id), id_hex);
    int rc = ctx_client(x);
    if (rc != 0) {
        return rc;
    }
    struct tally_result res = {0};
    memset(&r, 0, sizeof(r));
    rc = tally_reservation_get(x->c, id, read_flags(x), x->timeout_ms, &r, &res);
    if (rc < 0) {
        return call_failed(x, id_hex, rc, &res, NULL);
    }
    if (x->json) {
        struct jw w;
        jw_init(&w, stdout);
        json_reservation(&w, &r);
        jw_line(&w);
        return CTL_OK;
    }
    kv("id", "%s", id_hex);
    kv("state", "%s", tally_resv_state_name(r.state));
    kv("account", "%s", r.account);
    kv("model", "%s", r.model[0] ? r.model : "-");
    kv("estimate", "%s", fmt_micros(r.estimate_micros, b));
    kv("tokens", "%" PRIu64, r.estimate_tokens);
    kv("created", "%s", fmt_time(r.created_ms, t));
    kv("expires at", "%s", fmt_time(r.expires_at_ms, t));
    kv("charged", "%s", fmt_micros(r.charged_micros, b));
    if (r.metadata_len > 0) {
        char meta[2 * TALLY_METADATA_MAX + 1];
        size_t len = r.metadata_len <= TALLY_METADATA_MAX ? r.metadata_len : TALLY_METADATA_MAX;
        kv("metadata (hex)", "%s", hex(r.metadata, len, meta));
    }
    return CTL_OK;
}

/* ---- Commands: journal. ---- */

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
    char t[TIME_TEXT], id[REQUEST_ID_HEX + 1], ah[2 * 32 + 1], num[32];
    bool admin = e->kind == TALLY_J_ADMIN;
    fmt_time(e->ts_ms, t);
    hex(e->request_id, sizeof(e->request_id), id);
    hex(e->admin_hash, sizeof(e->admin_hash), ah);
    if (jsonl) {
        struct jw w;
        jw_object_begin(&w);
        jw_u64(&w, "seq", e->seq);
        jw_i64(&w, "ts_ms", e->ts_ms);
        jw_str(&w, "time", t);
        jw_str(&w, "kind", tally_journal_kind_name(e->kind));
        jw_str(&w, "account", e->account);
        jw_i64(&w, "amount_micros", e->amount_micros);
        jw_u64(&w, "tokens", e->tokens);
        jw_str_or_null(&w, "model", e->model);
        jw_i64(&w, "period_start_ms", e->period_start_ms);
        jw_str(&w, "request_id", id);
        jw_str_or_null(&w, "actor", e->actor);
        if (admin) {
            jw_str(&w, "cmd_type", tally_cmd_type_name(e->cmd_type));
            jw_str(&w, "admin_hash", ah);
        } else {
            jw_null(&w, "cmd_type");
            jw_null(&w, "admin_hash");
        }
        jw_object_end(&w);
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

/*
 * journal export [--account A] [--since T] [--until T] [--format csv|jsonl] [--stale]:
 * entries with since <= ts < until, every page, streamed (a failure part way leaves the
 * lines already written and exits non-zero). --format decides; without it --json means
 * jsonl, else csv.
 */
static int cmd_journal_export(struct ctx *x)
{
    const struct args *a = x->a;
    struct list_query q = {.since_ms = 0, .until_ms = INT64_MAX, .flags = read_flags(x)};
    bool jsonl = x->json;
    if (opt_name(x, OPT_ACCOUNT, TALLY_NAME_MAX, &q.name) != 0 ||
        (a->given[OPT_SINCE] && opt_time(x, OPT_SINCE, &q.since_ms) != 0) ||
        (a->given[OPT_UNTIL] && opt_time(x, OPT_UNTIL, &q.until_ms) != 0)) {
        return CTL_USAGE;
    }
    if (q.since_ms >= q.until_ms) {
        return usage_error(x, "--since must be before --until");
    }
    if (a->given[OPT_FORMAT]) {
        if (strcmp(a->value[OPT_FORMAT], "csv") == 0) {
            jsonl = false;
        } else if (strcmp(a->value[OPT_FORMAT], "jsonl") == 0) {
            jsonl = true;
        } else {
            return usage_error(x, "--format: '%s' is not csv or jsonl", a->value[OPT_FORMAT]);
        }
    }
    int rc = ctx_client(x);
    if (rc != 0) {
        return rc;
    }
    struct tally_journal_entry *page_items = calloc(TALLY_LIST_MAX, sizeof(*page_items));
    if (page_items == NULL) {
        say_error(x->what, "out of memory");
        return CTL_UNAVAILABLE;
    }
    struct pager p = {.fetch = fetch_journal, .q = &q};
    while (!p.done) {
        uint32_t got;
        if ((rc = pager_next(x, &p, page_items, &got, "the output is incomplete")) != 0) {
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

/* ---- Commands: cluster. ---- */

/* One node probed by cluster status, on a thread of its own. */
struct probe {
    char address[TALLY_ADDRESS_MAX + 1];
    struct tally *c;
    int64_t deadline_ms;
    bool probed;
    int rc;
    struct tally_node_status st;
    struct tally_result res;
};

/* Thread body: one tally_status() call into the probe `arg`. */
static void *probe_run(void *arg)
{
    struct probe *p = arg;
    p->rc = tally_status(p->c, p->address, p->deadline_ms, &p->st, &p->res);
    return NULL;
}

/* Add `address` to probes[0 .. *n) unless present or full. Returns 0, or -1 if it does
 * not fit in TALLY_ADDRESS_MAX bytes. */
static int probe_add(struct probe *probes, size_t *n, const char *address, size_t len)
{
    if (len == 0 || len > TALLY_ADDRESS_MAX) {
        return -1;
    }
    for (size_t i = 0; i < *n; i++) {
        if (strlen(probes[i].address) == len && memcmp(probes[i].address, address, len) == 0) {
            return 0;
        }
    }
    if (*n < STATUS_ADDRESSES_MAX) {
        memset(&probes[*n], 0, sizeof(probes[*n]));
        memcpy(probes[*n].address, address, len);
        probes[*n].address[len] = '\0';
        (*n)++;
    }
    return 0;
}

/* Probe every address not probed yet, all at once (one thread each; inline if a thread
 * cannot be made). */
static void probe_round(struct probe *probes, size_t n, struct tally *c, int64_t deadline_ms)
{
    pthread_t threads[STATUS_ADDRESSES_MAX];
    bool started[STATUS_ADDRESSES_MAX] = {false};
    for (size_t i = 0; i < n; i++) {
        if (probes[i].probed) {
            continue;
        }
        probes[i].c = c;
        probes[i].deadline_ms = deadline_ms;
        started[i] = pthread_create(&threads[i], NULL, probe_run, &probes[i]) == 0;
        if (!started[i]) {
            probe_run(&probes[i]);
        }
    }
    for (size_t i = 0; i < n; i++) {
        if (started[i]) {
            pthread_join(threads[i], NULL);
        }
        probes[i].probed = true;
    }
}

/* One row of the cluster status table. */
struct status_row {
    uint64_t id; /* 0: unknown */
    const char *address;
    const struct probe *p;        /* NULL: a member no probe reached */
    const struct tally_member *m; /* its entry in some answer's member list, or NULL */
};

/* qsort order of status rows: by node id, unknown ids last, then by address. */
static int row_cmp(const void *a, const void *b)
{
    const struct status_row *x = a, *y = b;
    if ((x->id == 0) != (y->id == 0)) {
        return x->id == 0 ? 1 : -1;
    }
    if (x->id != y->id) {
        return x->id < y->id ? -1 : 1;
    }
    return strcmp(x->address, y->address);
}

/* The member entry for node `id` (or, with id 0, for client address `address`) in any
 * answered probe's member list; NULL if none. */
static const struct tally_member *find_member(const struct probe *probes, size_t n, uint64_t id,
                                              const char *address)
{
    for (size_t i = 0; i < n; i++) {
        if (probes[i].rc != 0) {
            continue;
        }
        uint32_t nm = probes[i].st.n_members;
        for (uint32_t j = 0; j < nm && j < TALLY_MEMBERS_MAX; j++) {
            const struct tally_member *m = &probes[i].st.members[j];
            if ((id != 0 && m->id == id) ||
                (id == 0 && address != NULL && strcmp(m->client_address, address) == 0)) {
                return m;
            }
        }
    }
    return NULL;
}

/* Whether rows[0 .. n) already has node `id` (never for id 0). */
static bool rows_have(const struct status_row *rows, size_t n, uint64_t id)
{
    for (size_t i = 0; i < n; i++) {
        if (id != 0 && rows[i].id == id) {
            return true;
        }
    }
    return false;
}

/* Print the status rows as a table or a JSON array. */
static void print_status(struct ctx *x, const struct status_row *rows, size_t n)
{
    if (x->json) {
        struct jw w;
        jw_init(&w, stdout);
        jw_open(&w, NULL, '[');
        for (size_t i = 0; i < n; i++) {
            const struct status_row *r = &rows[i];
            bool up = r->p != NULL && r->p->rc == 0;
            jw_open(&w, NULL, '{');
            jw_u64_or_null(&w, "id", r->id != 0, r->id);
            jw_str_or_null(&w, "address", r->address);
            jw_str(&w, "role",
                   up     ? tally_raft_state_name(r->p->st.raft_state)
                   : r->p ? "down"
                          : "unknown");
            if (r->m != NULL) {
                jw_str(&w, "member", tally_member_role_name(r->m->role));
            } else {
                jw_null(&w, "member");
            }
            if (up) {
                jw_u64(&w, "term", r->p->st.term);
                jw_u64(&w, "commit", r->p->st.commit_index);
                jw_u64(&w, "applied", r->p->st.applied_index);
                jw_bool(&w, "serving", r->p->st.serving != 0);
                jw_u64_or_null(&w, "leader_id", r->p->st.leader_id != 0, r->p->st.leader_id);
                jw_i64(&w, "ledger_now_ms", r->p->st.ledger_now_ms);
                jw_null(&w, "error");
            } else {
                jw_null(&w, "term");
                jw_null(&w, "commit");
                jw_null(&w, "applied");
                jw_null(&w, "serving");
                jw_null(&w, "leader_id");
                jw_null(&w, "ledger_now_ms");
                if (r->p != NULL) {
                    char err[TALLY_MESSAGE_MAX + 64];
                    snprintf(err, sizeof(err), "%s%s%s", tally_strerror(r->p->rc),
                             r->p->res.message[0] ? ": " : "", r->p->res.message);
                    jw_str(&w, "error", err);
                } else {
                    jw_str(&w, "error", "no client address known");
                }
            }
            jw_close(&w, '}');
        }
        jw_close(&w, ']');
        jw_line(&w);
        return;
    }
    static const char *const headers[] = {"ID",      "ADDRESS", "ROLE",   "TERM", "COMMIT",
                                          "APPLIED", "SERVING", "MEMBER", "NOTE"};
    bool notes = false; /* the NOTE column only when some node did not answer */
    for (size_t i = 0; i < n; i++) {
        notes = notes || rows[i].p == NULL || rows[i].p->rc != 0;
    }
    struct table t;
    table_init(&t, notes ? "rllrrrlll" : "rllrrrll", headers);
    for (size_t i = 0; i < n; i++) {
        const struct status_row *r = &rows[i];
        bool up = r->p != NULL && r->p->rc == 0;
        if (r->id != 0) {
            table_add(&t, "%" PRIu64, r->id);
        } else {
            table_add(&t, "-");
        }
        table_add(&t, "%s", r->address[0] ? r->address : "-");
        table_add(&t, "%s",
                  up     ? tally_raft_state_name(r->p->st.raft_state)
                  : r->p ? "down"
                         : "unknown");
        if (up) {
            table_add(&t, "%" PRIu64, r->p->st.term);
            table_add(&t, "%" PRIu64, r->p->st.commit_index);
            table_add(&t, "%" PRIu64, r->p->st.applied_index);
            table_add(&t, "%s", r->p->st.serving ? "yes" : "no");
        } else {
            for (int k = 0; k < 4; k++) {
                table_add(&t, "-");
            }
        }
        table_add(&t, "%s", r->m != NULL ? tally_member_role_name(r->m->role) : "-");
        if (!notes) {
            continue;
        } else if (up) {
            table_add(&t, "%s", "");
        } else if (r->p != NULL) {
            table_add(&t, "%s", tally_strerror(r->p->rc));
        } else {
            table_add(&t, "no client address known");
        }
    }
    (void)table_finish(x, &t);
}

/*
 * cluster status: tally_status() on every configured endpoint and on every member client
 * address the answers name (deduplicated), a row per node. Exit 2 if no node answered.
 */
static int cmd_cluster_status(struct ctx *x)
{
    static struct probe probes[STATUS_ADDRESSES_MAX];
    struct status_row rows[2 * STATUS_ADDRESSES_MAX];
    size_t n = 0, nrows = 0;
    int rc = ctx_client(x);
    if (rc != 0) {
        return rc;
    }
    const char *endpoints = option_or_env(x, OPT_ENDPOINTS, "TALLY_ENDPOINTS");
    for (const char *p = endpoints; *p != '\0';) {
        size_t len = strcspn(p, ",");
        if (probe_add(probes, &n, p, len) != 0) {
            return usage_error(x, "endpoints: '%.*s' is not HOST:PORT", (int)len, p);
        }
        p += len + (p[len] == ',');
    }
    int64_t deadline_ms = x->timeout_ms > 0 ? x->timeout_ms : STATUS_DEADLINE_MS;
    for (int round = 0; round < STATUS_ROUNDS_MAX; round++) {
        size_t before = n;
        probe_round(probes, n, x->c, deadline_ms);
        for (size_t i = 0; i < before; i++) {
            for (uint32_t j = 0;
                 probes[i].rc == 0 && j < probes[i].st.n_members && j < TALLY_MEMBERS_MAX; j++) {
                const char *ca = probes[i].st.members[j].client_address;
                (void)probe_add(probes, &n, ca, strnlen(ca, TALLY_ADDRESS_MAX + 1));
            }
        }
        if (n == before) {
            break;
        }
    }
    /* Rows: answered nodes first (one per node id, whatever address reached it), then
     * addresses that failed, then members that no address of ours reached. */
    int first_error = 0;
    bool any_up = false;
    for (size_t i = 0; i < n; i++) {
        if (probes[i].rc == 0 && probes[i].probed &&
            !rows_have(rows, nrows, probes[i].st.node_id)) {
            uint64_t id = probes[i].st.node_id;
            rows[nrows++] = (struct status_row){id, probes[i].address, &probes[i],
                                                find_member(probes, n, id, NULL)};
            any_up = true;
        }
    }
    for (size_t i = 0; i < n; i++) {
        if (probes[i].rc != 0 && probes[i].probed) {
            const struct tally_member *m = find_member(probes, n, 0, probes[i].address);
            uint64_t id = m != NULL ? m->id : 0;
            if (first_error == 0 || exit_code_of(first_error) == CTL_UNAVAILABLE) {
                first_error = probes[i].rc;
            }
            if (!rows_have(rows, nrows, id)) {
                rows[nrows++] = (struct status_row){id, probes[i].address, &probes[i], m};
            }
        }
    }
    for (size_t i = 0; i < n; i++) {
        for (uint32_t j = 0; probes[i].rc == 0 && j < probes[i].st.n_members &&
                             j < TALLY_MEMBERS_MAX && nrows < 2 * STATUS_ADDRESSES_MAX;
             j++) {
            const struct tally_member *m = &probes[i].st.members[j];
            if (!rows_have(rows, nrows, m->id)) {
                rows[nrows++] = (struct status_row){m->id, m->client_address, NULL, m};
            }
        }
    }
    qsort(rows, nrows, sizeof(rows[0]), row_cmp);
    print_status(x, rows, nrows);
    if (!any_up) {
        struct tally_result res = {0};
        if (first_error == 0) {
            first_error = -TALLY_EUNAVAILABLE;
        }
        snprintf(res.message, sizeof(res.message), "no node answered");
        return call_failed(x, NULL, first_error, &res, NULL);
    }
    return CTL_OK;
}

/* Parse a node id (> 0). */
static int parse_node_id(struct ctx *x, const char *s, uint64_t *id)
{
    return parse_uint(x, "ID", s, 1, UINT64_MAX, id);
}

/*
 * Print the answer to a membership change of node `id` (0: none named) that returned `rc`.
 * These carry no request id, so a failure after UNAVAILABLE says to look before repeating.
 * Returns the exit code.
 */
static int member_answer(struct ctx *x, const char *action, uint64_t id, int rc,
                         const struct tally_result *res)
{
    if (rc < 0) {
        return call_failed(x, NULL, rc, res,
                           exit_code_of(rc) == CTL_UNAVAILABLE
                               ? "check 'tallyctl cluster status' before repeating it"
                               : NULL);
    }
    if (x->json) {
        struct jw w;
        jw_object_begin(&w);
        jw_bool(&w, "ok", true);
        jw_str(&w, "action", action);
        jw_u64_or_null(&w, "node_id", id != 0, id);
        jw_object_end(&w);
    } else if (id != 0) {
        printf("node %" PRIu64 ": %s\n", id, action);
    } else {
        printf("%s\n", action);
    }
    return CTL_OK;
}

/* cluster transfer [ID]: hand leadership to node ID (none: any). */
static int cmd_cluster_transfer(struct ctx *x)
{
    uint64_t id = 0;
    if (x->n_words == 1 && parse_node_id(x, x->words[0], &id) != 0) {
        return CTL_USAGE;
    }
    int rc = ctx_client(x);
    if (rc != 0) {
        return rc;
    }
    struct tally_result res = {0};
    rc = tally_leader_transfer(x->c, id, x->timeout_ms, &res);
    return member_answer(x, "leadership transferred", id, rc, &res);
}

/* cluster add ID PEER_ADDR: add node ID (Raft peer address PEER_ADDR) as a voter. */
static int cmd_cluster_add(struct ctx *x)
{
    uint64_t id;
    const char *peer = x->words[1];
    if (parse_node_id(x, x->words[0], &id) != 0) {
        return CTL_USAGE;
    }
    const char *colon = strrchr(peer, ':');
    if (strlen(peer) > TALLY_ADDRESS_MAX || colon == NULL || colon == peer || colon[1] == '\0' ||
        strspn(colon + 1, "0123456789") != strlen(colon + 1)) {
        return usage_error(x, "PEER_ADDR: '%s' is not HOST:PORT (at most %d bytes)", peer,
                           TALLY_ADDRESS_MAX);
    }
    int rc = ctx_client(x);
    if (rc != 0) {
        return rc;
    }
    struct tally_result res = {0};
    rc = tally_member_add(x->c, id, peer, x->timeout_ms, &res);
    return member_answer(x, "added", id, rc, &res);
}

/* cluster remove ID */
static int cmd_cluster_remove(struct ctx *x)
{
    uint64_t id;
    if (parse_node_id(x, x->words[0], &id) != 0) {
        return CTL_USAGE;
    }
    int rc = ctx_client(x);
    if (rc != 0) {
        return rc;
    }
    struct tally_result res = {0};
    rc = tally_member_remove(x->c, id, x->timeout_ms, &res);
    return member_answer(x, "removed", id, rc, &res);
}

/* ---- The command table, usage, main. ---- */

static int cmd_help(struct ctx *x);

#define W(o) BIT(OPT_##o)
static const struct command commands[] = {
    {"account", "create", 1, 1, LIMIT_OPTS | W(PARENT) | W(ID), cmd_account_create,
     "account create NAME [--parent P] [LIMITS] [--id HEX32]"},
    {"account", "update", 1, 1, LIMIT_OPTS | W(PARENT) | W(ROOT) | W(CLEAR) | W(ID),
     cmd_account_update,
     "account update NAME [LIMITS] [--parent P | --root] [--clear LIMIT,...] [--id HEX32]"},
    {"account", "show", 1, 1, W(STALE), cmd_account_show, "account show NAME"},
    {"account", "list", 0, 0, W(PARENT) | W(STALE), cmd_account_list, "account list [--parent P]"},
    {"account", "block", 1, 1, W(ID), cmd_account_block, "account block NAME [--id HEX32]"},
    {"account", "unblock", 1, 1, W(ID), cmd_account_unblock, "account unblock NAME [--id HEX32]"},
    {"key", "add", 1, 1, W(KEY_HASH) | W(ID), cmd_key_add,
     "key add ACCOUNT [--key-hash HEX64] [--id HEX32]"},
    {"key", "revoke", 1, 1, W(ID), cmd_key_revoke, "key revoke HASH [--id HEX32]"},
    {"key", "show", 1, 1, W(STALE), cmd_key_show, "key show HASH"},
    {"key", "hash", 0, 1, 0, cmd_key_hash, "key hash [SECRET]   (no SECRET: read from stdin)"},
    {"reserve", NULL, 0, 0,
     W(KEY) | W(KEY_HASH) | W(ACCOUNT) | W(ESTIMATE) | W(TOKENS) | W(MODEL) | W(TTL) | W(ID),
     cmd_reserve,
     "reserve (--key SECRET | --key-hash HEX64 | --account A) --estimate MICROS [--tokens N] "
     "[--model M] [--ttl MS] [--id HEX32]"},
    {"settle", NULL, 1, 1, W(ACTUAL) | W(TOKENS), cmd_settle,
     "settle ID --actual MICROS [--tokens N]"},
    {"void", NULL, 1, 1, 0, cmd_void, "void ID"},
    {"extend", NULL, 1, 1, W(TTL), cmd_extend, "extend ID --ttl MS"},
    {"reservations", "list", 0, 0, W(ACCOUNT) | W(STALE), cmd_reservations_list,
     "reservations list [--account A]"},
    {"reservations", "show", 1, 1, W(STALE), cmd_reservations_show, "reservations show ID"},
    {"journal", "export", 0, 0, W(ACCOUNT) | W(SINCE) | W(UNTIL) | W(FORMAT) | W(STALE),
     cmd_journal_export,
     "journal export [--account A] [--since T] [--until T] [--format csv|jsonl]"},
    {"cluster", "status", 0, 0, 0, cmd_cluster_status, "cluster status"},
    {"cluster", "transfer", 0, 1, 0, cmd_cluster_transfer, "cluster transfer [ID]"},
    {"cluster", "add", 2, 2, 0, cmd_cluster_add, "cluster add ID PEER_ADDR"},
    {"cluster", "remove", 1, 1, 0, cmd_cluster_remove, "cluster remove ID"},
    {"help", NULL, 0, 1, 0, cmd_help, "help"},
};
#undef W

/* The usage text, built from the command table. */
static void usage(FILE *f)
{
    fputs("usage: tallyctl [--endpoints A,B,C] [--token T | --token-file F] [--json]\n"
          "                [--tls-ca F [--tls-cert F --tls-key F] [--tls-server-name N]]\n"
          "                [--timeout MS] COMMAND ...\n"
          "\n"
          "commands:\n",
          f);
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
        fprintf(f, "  %s\n", commands[i].synopsis);
    }
    fputs("\n"
          "LIMITS: [--budget MICROS] [--soft-budget MICROS]\n"
          "        [--period none|day|week|month|DURATION (1h, 1d, 7d, 30d, ...)]\n"
          "        [--rpm N [--rpm-burst N]] [--tpm N [--tpm-burst N]] [--max-parallel N]\n"
          "        [--expires-at T] [--expiry-policy charge|release] [--blocked]\n"
          "--clear takes: budget, soft-budget, period, rpm, tpm, max-parallel, expires-at,\n"
          "        blocked, expiry-policy, all\n"
          "Reads take --stale (any node answers, maybe behind). Times T: ms since the epoch\n"
          "or UTC ISO-8601 (2026-11-01, 2026-11-01T10:00:00Z). Money in micros (10^-6).\n"
          "Options may appear anywhere; '--' ends them.\n"
          "\n"
          "environment: TALLY_ENDPOINTS, TALLY_TOKEN, TALLY_TOKEN_FILE, TALLYCTL_TLS_CA,\n"
          "        TALLYCTL_TLS_CERT, TALLYCTL_TLS_KEY, TALLYCTL_TLS_SERVER_NAME (options win)\n"
          "exit status: 0 done/granted, 1 denied, 2 unavailable, 3 bad input or refused\n",
          f);
}

/* help: the usage on stdout. */
static int cmd_help(struct ctx *x)
{
    (void)x;
    usage(stdout);
    return CTL_OK;
}

/*
 * Split argv into options (by name, anywhere; "--name value" or "--name=value"; "-h" is
 * --help; "--" ends options) and positional words. Returns 0 or CTL_USAGE after printing
 * why.
 */
static int parse_argv(int argc, char **argv, struct args *a)
{
    bool words_only = false;
    memset(a, 0, sizeof(*a));
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        /* "-5" is a word, so that the command can say a negative is not allowed. */
        if (words_only || arg[0] != '-' || arg[1] == '\0' || (arg[1] >= '0' && arg[1] <= '9')) {
            if (a->n_words == WORDS_MAX) {
                say_error(NULL, "too many arguments");
                return CTL_USAGE;
            }
            a->words[a->n_words++] = argv[i];
            continue;
        }
        if (strcmp(arg, "--") == 0) {
            words_only = true;
            continue;
        }
        if (strcmp(arg, "-h") == 0) {
            a->given[OPT_HELP] = true;
            a->value[OPT_HELP] = "";
            continue;
        }
        const char *name = arg + 2, *eq = strchr(name, '=');
        size_t len = eq != NULL ? (size_t)(eq - name) : strlen(name);
        int o = -1;
        for (int k = 0; arg[1] == '-' && k < OPT_COUNT; k++) {
            if (strlen(opt_specs[k].name) == len && memcmp(opt_specs[k].name, name, len) == 0) {
                o = k;
            }
        }
        if (o < 0) {
            say_error(NULL, "unknown option '%s' (see tallyctl --help)", arg);
            return CTL_USAGE;
        }
        if (a->given[o] && opt_specs[o].takes_value) {
            say_error(NULL, "--%s is given twice", opt_specs[o].name);
            return CTL_USAGE;
        }
        if (!opt_specs[o].takes_value) {
            if (eq != NULL) {
                say_error(NULL, "--%s takes no value", opt_specs[o].name);
                return CTL_USAGE;
            }
            a->value[o] = "";
        } else if (eq != NULL) {
            a->value[o] = eq + 1;
        } else if (i + 1 < argc) {
            a->value[o] = argv[++i];
        } else {
            say_error(NULL, "--%s needs a value", opt_specs[o].name);
            return CTL_USAGE;
        }
        a->given[o] = true;
    }
    return 0;
}

/* The command named by the first words of `a`, and how many words name it; NULL after
 * printing why when there is none. */
static const struct command *find_command(const struct args *a, int *consumed)
{
    bool group_known = false;
    if (a->n_words == 0) {
        say_error(NULL, "no command given (see tallyctl --help)");
        return NULL;
    }
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
        const struct command *cmd = &commands[i];
        if (strcmp(cmd->group, a->words[0]) != 0) {
            continue;
        }
        group_known = true;
        if (cmd->name == NULL) {
            *consumed = 1;
            return cmd;
        }
        if (a->n_words > 1 && strcmp(cmd->name, a->words[1]) == 0) {
            *consumed = 2;
            return cmd;
        }
    }
    if (group_known) {
        char names[160] = "";
        for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
            if (strcmp(commands[i].group, a->words[0]) == 0 && commands[i].name != NULL) {
                size_t used = strlen(names);
                snprintf(names + used, sizeof(names) - used, "%s%s", used ? ", " : "",
                         commands[i].name);
            }
        }
        if (a->n_words > 1) {
            say_error(a->words[0], "unknown subcommand '%s' (one of: %s)", a->words[1], names);
        } else {
            say_error(a->words[0], "missing subcommand (one of: %s)", names);
        }
    } else {
        say_error(NULL, "unknown command '%s' (see tallyctl --help)", a->words[0]);
    }
    return NULL;
}

/* Parse, check the command and its options, run it; the exit code is the command's. */
int main(int argc, char **argv)
{
    static struct args a;
    static struct ctx x;
    int consumed = 0;
    int rc = parse_argv(argc, argv, &a);
    if (rc != 0) {
        return rc;
    }
    if (a.given[OPT_HELP]) {
        usage(stdout);
        return CTL_OK;
    }
    const struct command *cmd = find_command(&a, &consumed);
    if (cmd == NULL) {
        return CTL_USAGE;
    }
    x.cmd = cmd;
    x.a = &a;
    x.words = a.words + consumed;
    x.n_words = a.n_words - consumed;
    x.json = a.given[OPT_JSON];
    snprintf(x.what, sizeof(x.what), "%s%s%s", cmd->group, cmd->name ? " " : "",
             cmd->name ? cmd->name : "");
    for (int o = 0; o < OPT_COUNT; o++) {
        if (a.given[o] && !((GLOBAL_OPTS | cmd->opts) & BIT(o))) {
            return usage_error(&x, "does not take --%s (usage: tallyctl %s)", opt_specs[o].name,
                               cmd->synopsis);
        }
    }
    if (x.n_words < cmd->min_words || x.n_words > cmd->max_words) {
        return usage_error(&x, "%s (usage: tallyctl %s)",
                           x.n_words < cmd->min_words ? "missing argument" : "too many arguments",
                           cmd->synopsis);
    }
    if (a.given[OPT_TIMEOUT] && opt_int(&x, OPT_TIMEOUT, 1, TIMEOUT_MAX_MS, &x.timeout_ms) != 0) {
        return CTL_USAGE;
    }
    rc = cmd->run(&x);
    tally_close(x.c);
    explicit_bzero(x.token, sizeof(x.token));
    if (fflush(stdout) != 0 || ferror(stdout)) {
        say_error(NULL, "stdout: %s", strerror(errno));
        if (rc == CTL_OK || rc == CTL_DENIED) {
            rc = CTL_UNAVAILABLE;
        }
    }
    return rc;
}
