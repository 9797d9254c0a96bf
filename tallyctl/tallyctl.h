/*
 * tallyctl.h: what the files of tallyctl share. Not an API: nothing outside tallyctl/
 * includes it.
 *
 * tallyctl is split by concern: main.c (options, the command table, usage, dispatch, exit
 * codes), output.c (errors, formatting, key-value lines, tables, the answers several
 * commands share), json.c (the JSON writer), parse.c (values from the command line),
 * connect.c (the libtally client from flags and environment), page.c (paged listings), and
 * one file per command group: account.c, key.c, reservation.c, journal.c, cluster.c. Names
 * that cross files take the ctl__ prefix (CTL_ for constants and macros); everything else
 * is static in its file.
 */
#ifndef TALLY_TALLYCTL_H
#define TALLY_TALLYCTL_H

#include "client/tally.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* ---- Exit codes and bounds. ---- */

enum {
    CTL_OK = 0,          /* done, or reserve granted */
    CTL_DENIED = 1,      /* reserve denied by a limit */
    CTL_UNAVAILABLE = 2, /* no usable answer: try again later */
    CTL_USAGE = 3,       /* bad input, or the request was refused */
};

#define CTL_DAY_MS INT64_C(86400000)
#define CTL_STATUS_DEADLINE_MS INT64_C(2000)     /* a status probe without --timeout */
#define CTL_WORDS_MAX 32                         /* positional words on one line */
#define CTL_SECRET_MAX 1024                      /* a key secret given on the command line */
#define CTL_REQUEST_ID_HEX (2 * TALLY_REQUEST_ID_SIZE)
#define CTL_TIME_TEXT 40  /* ctl__fmt_time()'s buffer */
#define CTL_MONEY_TEXT 32 /* ctl__fmt_money()'s buffer */

/* ---- Options and the context of a command (main.c). ---- */

enum ctl__opt_id {
    /* Global: accepted by every command. */
    CTL_OPT_ENDPOINTS,
    CTL_OPT_TOKEN,
    CTL_OPT_TOKEN_FILE,
    CTL_OPT_TLS_CA,
    CTL_OPT_TLS_CERT,
    CTL_OPT_TLS_KEY,
    CTL_OPT_TLS_SERVER_NAME,
    CTL_OPT_JSON,
    CTL_OPT_TIMEOUT,
    CTL_OPT_HELP,
    /* Command options. */
    CTL_OPT_STALE,
    CTL_OPT_ID,
    CTL_OPT_PARENT,
    CTL_OPT_ROOT,
    CTL_OPT_BUDGET,
    CTL_OPT_SOFT_BUDGET,
    CTL_OPT_PERIOD,
    CTL_OPT_RPM,
    CTL_OPT_RPM_BURST,
    CTL_OPT_TPM,
    CTL_OPT_TPM_BURST,
    CTL_OPT_MAX_PARALLEL,
    CTL_OPT_EXPIRES_AT,
    CTL_OPT_EXPIRY_POLICY,
    CTL_OPT_BLOCKED,
    CTL_OPT_CLEAR,
    CTL_OPT_KEY,
    CTL_OPT_KEY_FILE,
    CTL_OPT_KEY_HASH,
    CTL_OPT_ACCOUNT,
    CTL_OPT_ESTIMATE,
    CTL_OPT_TOKENS,
    CTL_OPT_MODEL,
    CTL_OPT_TTL,
    CTL_OPT_ACTUAL,
    CTL_OPT_SINCE,
    CTL_OPT_UNTIL,
    CTL_OPT_FORMAT,
    CTL_OPT_ROLE,
    CTL_OPT_NAME,
    CTL_OPT_SCOPE,
    CTL_OPT_VOID_WAIT_MS,
    CTL_OPT_COUNT
};

struct ctl__opt_spec {
    const char *name; /* without the leading "--" */
    bool takes_value;
};

/* Every option by id: its name and whether it takes a value. */
extern const struct ctl__opt_spec ctl__opt_specs[CTL_OPT_COUNT];

/* The command line split up: options by id (values borrowed from argv; "" for a flag)
 * and the positional words in order. */
struct ctl__args {
    bool given[CTL_OPT_COUNT];
    const char *value[CTL_OPT_COUNT];
    char *words[CTL_WORDS_MAX];
    int n_words;
};

struct ctl__command; /* one entry of the command table (main.c) */

/* Everything a handler needs. The client is opened on demand by ctl__ctx_client(), after the
 * handler has checked its input, and closed by main(). */
struct ctl__ctx {
    const struct ctl__command *cmd;
    const struct ctl__args *a;
    char what[64]; /* "account create": the prefix of this command's messages */
    char **words;  /* the positional words after the command's own */
    int n_words;
    bool json;
    int64_t timeout_ms; /* 0: the library's default */
    struct tally *c;
    bool token_given; /* a token was configured (for the hint on an auth error) */
    char token[TALLY_TOKEN_MAX + 1];
};

/* ---- Errors, formatting, key-value lines, tables, shared answers (output.c). ---- */

/* Print "tallyctl: <what>: <message>" (or "tallyctl: <message>" when `what` is NULL) on
 * stderr as one line. */
__attribute__((format(printf, 2, 3))) void ctl__say_error(const char *what, const char *fmt, ...);

/* Report bad input to the current command; returns CTL_USAGE. */
__attribute__((format(printf, 2, 3))) int ctl__usage_error(struct ctl__ctx *x, const char *fmt,
                                                           ...);

/* The exit code for libtally error `code` (either sign): CTL_UNAVAILABLE when no usable
 * answer came (nothing is known, or the node failed: trying later may work), CTL_USAGE
 * when the request itself was refused. */
int ctl__exit_code_of(int code);

/*
 * Report a failed call (rc < 0) about `subject` (may be NULL) with the answer in `res`
 * (may be NULL) and an optional `hint` (NULL: none), as one line; returns the exit code.
 */
int ctl__call_failed(struct ctl__ctx *x, const char *subject, int rc,
                     const struct tally_result *res, const char *hint);

/*
 * Write `ms` (since the epoch) into `buf` (CTL_TIME_TEXT bytes) as UTC ISO-8601,
 * "2026-11-01T10:00:00Z", with ".mmm" before the Z when not a whole second. Times outside
 * 1970 .. 9999 are written as "<ms> ms". Returns buf.
 */
const char *ctl__fmt_time(int64_t ms, char *buf);

/* Write `micros` into `buf` (CTL_MONEY_TEXT bytes) as currency, "$1.234567" or "-$0.500000".
 * Returns buf. */
const char *ctl__fmt_money(int64_t micros, char *buf);

/* "1200000 ($1.200000)" into `buf` (64 bytes). */
const char *ctl__fmt_micros(int64_t micros, char *buf);

/* Write `ms` (> 0) into `buf` (32 bytes) in the largest unit that divides it: "30d",
 * "1h", "90m", "15s", "1500ms". Returns buf. */
const char *ctl__fmt_duration(int64_t ms, char *buf);

/* Lower-case hex of `n` bytes into `out` (2n + 1 bytes). Returns out. */
const char *ctl__hex(const uint8_t *bytes, size_t n, char *out);

/*
 * A table collected in memory and printed with aligned columns. The first row is the
 * header. Allocation failure is sticky: later calls do nothing and ctl__table_finish() reports
 * it, so callers need not check every cell.
 */
struct ctl__table {
    size_t ncols;
    const char *align; /* 'l' or 'r' per column (borrowed) */
    char **cells;      /* row-major, owned */
    size_t ncells, cap;
    bool failed;
};

/* Print "label           value" on stdout; the value is sanitized. */
__attribute__((format(printf, 2, 3))) void ctl__kv(const char *label, const char *fmt, ...);

/* Append one cell (formatted, sanitized) to the current row. */
__attribute__((format(printf, 2, 3))) void ctl__table_add(struct ctl__table *t, const char *fmt,
                                                          ...);

/* Start table `t` with columns aligned as `align` ("llr..."; borrowed) and the header
 * `headers` (one string per column). */
void ctl__table_init(struct ctl__table *t, const char *align, const char *const *headers);

/* Print `t` (or report that memory ran out), free it, and return the exit code. */
int ctl__table_finish(struct ctl__ctx *x, struct ctl__table *t);

/* Report a failed admin write; after UNAVAILABLE, say how to retry it safely. */
int ctl__write_failed(struct ctl__ctx *x, const char *subject, int rc,
                      const struct tally_result *res);

/*
 * Print the answer to an admin write on `subject` ("acme") that returned `rc`: a failure as
 * ctl__write_failed() does; else human "account acme: created" (`label` "account"), or a JSON
 * object with the subject under `kind` ("account"). Returns the exit code.
 */
int ctl__write_answer(struct ctl__ctx *x, const char *label, const char *kind, const char *subject,
                      const char *action, int rc, const struct tally_result *res);

/* ---- The JSON writer (json.c). ---- */

#define CTL_JW_DEPTH_MAX 8

/* A JSON writer on one stream; knows whether the open object or array needs a comma. */
struct ctl__jw {
    FILE *f;
    int depth;
    bool comma[CTL_JW_DEPTH_MAX];
};

/* Start writer `w` on stream `f` (borrowed), outside any object or array. */
void ctl__jw_init(struct ctl__jw *w, FILE *f);

/* Open an object (`bracket` '{') or array ('[') as a value under `key`. */
void ctl__jw_open(struct ctl__jw *w, const char *key, char bracket);

/* Close what the matching ctl__jw_open() opened (`bracket` '}' or ']'). */
void ctl__jw_close(struct ctl__jw *w, char bracket);

/* End a top-level value with a newline; the next one starts afresh (JSON lines). */
void ctl__jw_line(struct ctl__jw *w);

/* Scalar values under `key` (NULL in an array or at the top level). */
void ctl__jw_str(struct ctl__jw *w, const char *key, const char *s);
void ctl__jw_i64(struct ctl__jw *w, const char *key, int64_t v);
void ctl__jw_u64(struct ctl__jw *w, const char *key, uint64_t v);
void ctl__jw_bool(struct ctl__jw *w, const char *key, bool v);
void ctl__jw_null(struct ctl__jw *w, const char *key);

/* `s`, or null when it is empty. */
void ctl__jw_str_or_null(struct ctl__jw *w, const char *key, const char *s);

/* `v`, or null when it is not `present` (a limit not set, an unlimited value). */
void ctl__jw_i64_or_null(struct ctl__jw *w, const char *key, bool present, int64_t v);
void ctl__jw_u64_or_null(struct ctl__jw *w, const char *key, bool present, uint64_t v);

/* Start a top-level JSON object on stdout; ctl__jw_object_end() ends it and its line. */
void ctl__jw_object_begin(struct ctl__jw *w);
void ctl__jw_object_end(struct ctl__jw *w);

/* `n` (<= TALLY_METADATA_MAX) bytes as a lower-case hex string. */
void ctl__jw_hex(struct ctl__jw *w, const char *key, const uint8_t *bytes, size_t n);

/* The time `ms` as two fields, "<name>_ms" (the number) and "<name>" (ISO-8601); both null
 * when it is not `present`. */
void ctl__jw_time_pair(struct ctl__jw *w, const char *name, bool present, int64_t ms);

/* ---- Values from the command line (parse.c). ---- */

/* Each parser prints why a value is bad (naming it by `label` or its option) and returns
 * -1; 0 on success. */

/*
 * Parse `s`, all decimal digits, into *out within [min, max]. Refuses an empty string, a
 * sign (a negative is named as such), spaces, other characters and overflow. `label` names
 * the value in the message ("--budget", "ID").
 */
int ctl__parse_uint(struct ctl__ctx *x, const char *label, const char *s, uint64_t min,
                    uint64_t max, uint64_t *out);

/* ctl__parse_uint() into an int64_t; `max` must fit. */
int ctl__parse_int(struct ctl__ctx *x, const char *label, const char *s, int64_t min, int64_t max,
                   int64_t *out);

/* The value of option `o` (given) as an unsigned integer in [min, max] (see ctl__parse_uint). */
int ctl__opt_uint(struct ctl__ctx *x, enum ctl__opt_id o, uint64_t min, uint64_t max,
                  uint64_t *out);

/* ctl__opt_uint() into an int64_t (see ctl__parse_int). */
int ctl__opt_int(struct ctl__ctx *x, enum ctl__opt_id o, int64_t min, int64_t max, int64_t *out);

/* Check that `s` is a name of 1..max bytes of [A-Za-z0-9._:/@-] (accounts, models). */
int ctl__check_name(struct ctl__ctx *x, const char *label, const char *s, size_t max);

/* The value of option `o` as a name of 1..max bytes (see ctl__check_name) into *out (borrowed
 * from argv), or NULL when the option is not given. */
int ctl__opt_name(struct ctl__ctx *x, enum ctl__opt_id o, size_t max, const char **out);

/* Parse exactly 2n hex digits (either case) in `s` into `out`. */
int ctl__parse_hex(struct ctl__ctx *x, const char *label, const char *s, uint8_t *out, size_t n);

/* The value of option `o` (given) as a time: ms since the epoch (0 .. TALLY_TIME_MAX_MS) or
 * UTC ISO-8601 ("2026-11-01", "2026-11-01T10:00:00.5Z"; years 1970 .. 9999). */
int ctl__opt_time(struct ctl__ctx *x, enum ctl__opt_id o, int64_t *out_ms);

/*
 * Parse a budget period: "none", "day", "week", "month" (calendar, UTC), or a fixed
 * duration NUMBER UNIT with unit ms, s, m, h or d ("1h", "7d", "30d"), 1 s .. 366 d.
 */
int ctl__parse_period(struct ctl__ctx *x, const char *s, uint8_t *kind, int64_t *period_ms);

/* The request id from --id (32 hex digits) into `buf`, *out pointing at it; or *out NULL
 * when --id is not given (the client makes one). */
int ctl__opt_request_id(struct ctl__ctx *x, uint8_t buf[TALLY_REQUEST_ID_SIZE],
                        const uint8_t **out);

/* ---- The client (connect.c). ---- */

/*
 * Read the secret file `path` into `out` (max + 1 bytes): the bare secret, its trailing
 * newline ("\n" or "\r\n") stripped. Returns 0, or -1 after printing why, prefixed by
 * `what` ("token file", "key file").
 */
int ctl__read_secret_file(const char *what, const char *path, char *out, size_t max);

/* Warn on stderr, once per option, that --token and --key show their secret to anyone
 * who can list processes (ps), naming the way to give it instead. */
void ctl__warn_secrets_in_argv(const struct ctl__ctx *x);

/* The value of option `o`, else of environment variable `env`, else NULL ("" is NULL). */
const char *ctl__option_or_env(const struct ctl__ctx *x, int o, const char *env);

/* Open the client (once) from --endpoints / TALLY_ENDPOINTS and the token. Call only after
 * the command's input is checked. Returns 0 or an exit code (after printing why). */
int ctl__ctx_client(struct ctl__ctx *x);

/* The flags of a query: TALLY_READ_STALE with --stale, else a linearizable read. */
unsigned ctl__read_flags(const struct ctl__ctx *x);

/* ---- Paged listings (page.c). ---- */

/* What a listing asks for: the account it is limited to (NULL: all; for accounts, the
 * parent, NULL: the roots), the journal's time range [since, until), the read flags. */
struct ctl__list_query {
    const char *name;
    int64_t since_ms, until_ms;
    unsigned flags;
};

/*
 * Fetch the page of `q` that starts after `cursor` (len 0: the first) into `items`, which
 * has room for TALLY_LIST_MAX; the contract of libtally's list calls (*got items, *next the
 * cursor of the next page, of len 0 after the last).
 */
typedef int (*ctl__fetch_fn)(struct ctl__ctx *x, const struct ctl__list_query *q,
                             const struct tally_cursor *cursor, void *items, uint32_t *got,
                             struct tally_cursor *next, struct tally_result *res);

/* A walk through the pages of a listing: set `fetch` and `q`, the rest zero, then call
 * ctl__pager_next() until `done`. */
struct ctl__pager {
    ctl__fetch_fn fetch;
    const struct ctl__list_query *q; /* borrowed */
    int page;                        /* pages fetched so far */
    struct tally_cursor cursor;      /* where the next page starts */
    bool done;                       /* the last page was fetched */
};

/* A listing command: the option naming its account, how its pages are fetched, and how one
 * item is printed as JSON and as a row of its table. */
struct ctl__listing {
    enum ctl__opt_id filter; /* --parent, --account */
    ctl__fetch_fn fetch;
    size_t item_size;
    void (*json_item)(struct ctl__jw *w, const void *item);
    const char *align; /* the table's columns, as ctl__table_init() takes them */
    const char *const *headers;
    void (*table_row)(struct ctl__table *t, const void *item);
};

/*
 * Fetch the next page of `p` into `items` (room for TALLY_LIST_MAX): *got items. Refuses a
 * malformed page (more than the page size, a cursor that does not move on) and gives up
 * after PAGES_MAX (page.c) pages, so a loop until `done` is bounded. Returns 0, or an exit code
 * after printing why; `later_hint` (may be NULL) goes with a call that fails after the first page.
 */
int ctl__pager_next(struct ctl__ctx *x, struct ctl__pager *p, void *items, uint32_t *got,
                    const char *later_hint);

/* Run listing `l`: check its filter option, fetch every page, print the items as a JSON
 * array or an aligned table. Returns the exit code. */
int ctl__run_listing(struct ctl__ctx *x, const struct ctl__listing *l);

/* ---- The commands: each returns the exit code. ---- */

/* account.c */

/* account create NAME [--parent P] [limits] [--id HEX] */
int ctl__cmd_account_create(struct ctl__ctx *x);

/* account update NAME [limits] [--parent P | --root] [--clear LIST] [--id HEX] */
int ctl__cmd_account_update(struct ctl__ctx *x);

/* account block|unblock NAME [--id HEX]: set the blocked limit to 1 or 0. */
int ctl__cmd_account_block(struct ctl__ctx *x);
int ctl__cmd_account_unblock(struct ctl__ctx *x);

/* account show NAME [--stale] */
int ctl__cmd_account_show(struct ctl__ctx *x);

/* account list [--parent P] [--stale]: the children of P (or the roots), every page. */
int ctl__cmd_account_list(struct ctl__ctx *x);

/* key.c */

/*
 * key add ACCOUNT [--key-hash HEX] [--id HEX]: without --key-hash, make a new secret, add
 * its hash and print the secret once (it is kept nowhere).
 */
int ctl__cmd_key_add(struct ctl__ctx *x);

/* key revoke HASH [--id HEX] */
int ctl__cmd_key_revoke(struct ctl__ctx *x);

/* key show HASH [--stale]: the account a key maps to and whether it is revoked. */
int ctl__cmd_key_show(struct ctl__ctx *x);

/* key hash [SECRET]: the SHA-256 the ledger stores for a secret (read from the first line
 * of stdin when not given, so it stays out of the shell history). No cluster needed. */
int ctl__cmd_key_hash(struct ctl__ctx *x);

/* A new secret: `prefix` and 2 * n_random hex digits of getrandom(2) into `out`, which
 * holds strlen(prefix) + 2 * n_random + 1 bytes (n_random at most 64). Returns 0 or -1
 * (errno set). The caller wipes `out` when done. */
int ctl__new_secret(const char *prefix, size_t n_random, char *out);

/* token.c */

/* token new --role R --name N [--scope ROOT[,ROOT...]]: a new bearer token, shown once,
 * and the token-file line that admits it (the SHA-256 only). No cluster needed. */
int ctl__cmd_token_new(struct ctl__ctx *x);

/* reservation.c */

/* reserve (--key SECRET | --key-hash HEX | --account A) --estimate MICROS [--tokens N]
 * [--model M] [--ttl MS] [--id HEX] */
int ctl__cmd_reserve(struct ctl__ctx *x);

/* settle ID --actual MICROS [--tokens N] */
int ctl__cmd_settle(struct ctl__ctx *x);

/* void ID */
int ctl__cmd_void(struct ctl__ctx *x);

/* extend ID --ttl MS */
int ctl__cmd_extend(struct ctl__ctx *x);

/* reservations list [--account A] [--stale]: open reservations, in expiry order. */
int ctl__cmd_reservations_list(struct ctl__ctx *x);

/* reservations show ID [--stale]: one reservation, open or resolved and retained. */
int ctl__cmd_reservations_show(struct ctl__ctx *x);

/* journal.c */

/*
 * journal export [--account A] [--since T] [--until T] [--format csv|jsonl] [--stale]:
 * entries with since <= ts < until, every page, streamed (a failure part way leaves the
 * lines already written and exits non-zero). --format decides; without it --json means
 * jsonl, else csv.
 */
int ctl__cmd_journal_export(struct ctl__ctx *x);

/* cluster.c */

/*
 * cluster status: tally_status() on every configured endpoint and on every member client
 * address the answers name (deduplicated), a row per node. Exit 2 if no node answered.
 */
int ctl__cmd_cluster_status(struct ctl__ctx *x);

/* cluster transfer [ID]: hand leadership to node ID (none: any). */
int ctl__cmd_cluster_transfer(struct ctl__ctx *x);

/* cluster add ID PEER_ADDR: add node ID (Raft peer address PEER_ADDR) as a voter. */
int ctl__cmd_cluster_add(struct ctl__ctx *x);

/* cluster remove ID */
int ctl__cmd_cluster_remove(struct ctl__ctx *x);

#endif /* TALLY_TALLYCTL_H */
