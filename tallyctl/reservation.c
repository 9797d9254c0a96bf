/*
 * reservation.c: reservations by hand: reserve, settle, void, extend, and the
 * reservations list and show commands.
 *
 * reserve exits 0 when granted and 1 when denied, so scripts can branch on it; settle, void
 * and extend share one path (resolve()) because they differ only in the call made and in
 * what their answer carries. After UNAVAILABLE each says what is safe to do next.
 */
#include "tallyctl/tallyctl.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define TTL_DEFAULT_MS INT64_C(60000)
#define VOID_WAIT_DEFAULT_MS INT64_C(10000) /* --void-wait-ms */
#define VOID_WAIT_MAX_MS INT64_C(3600000)
#define VOID_POLL_MS 20

/* ---- Reserve. ---- */

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

/*
 * After an UNAVAILABLE reserve the client voids its id in the background. Wait up to
 * `budget_ms` for that void and say on stderr how it ended: the process exit ends the
 * void, and the hold, if the reserve committed, then lasts until its ttl (released, not
 * charged, when the ledger found it unconfirmed; docs/ledger.md).
 */
static void await_background_void(struct ctl__ctx *x, const uint8_t *request_id, int64_t budget_ms)
{
    char id[CTL_REQUEST_ID_HEX + 1];
    ctl__hex(request_id, TALLY_REQUEST_ID_SIZE, id);
    struct tally_stats st;
    tally_stats(x->c, &st);
    if (st.voids_queued == 0) {
        return; /* never sent (or a grant this client saw): nothing can have been held */
    }
    for (int64_t waited = 0;; waited += VOID_POLL_MS) {
        tally_stats(x->c, &st);
        if (st.voids_done + st.voids_failed >= st.voids_queued || waited >= budget_ms) {
            break;
        }
        struct timespec ts = {0, VOID_POLL_MS * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    if (st.voids_done >= st.voids_queued) {
        ctl__say_error(x->what, "void of %s went through: no hold remains", id);
    } else if (st.voids_failed > 0) {
        ctl__say_error(x->what,
                       "void of %s was refused: if the reserve committed, its hold lasts "
                       "until its ttl",
                       id);
    } else {
        ctl__say_error(x->what,
                       "void of %s did not go through within %" PRId64
                       " ms: if the reserve committed, its hold lasts until its ttl and is "
                       "released then, not charged",
                       id, budget_ms);
    }
}

/* Print a reserve's answer (granted or denied). */
static void print_reserve(struct ctl__ctx *x, const struct tally_result *res)
{
    char id[CTL_REQUEST_ID_HEX + 1], t[CTL_TIME_TEXT], m[CTL_MONEY_TEXT];
    bool granted = res->outcome == TALLY_GRANTED;
    bool replayed = (res->flags & TALLY_RESULT_REPLAYED) != 0;
    bool soft = (res->flags & TALLY_RESULT_SOFT_BUDGET) != 0;
    ctl__hex(res->request_id, TALLY_REQUEST_ID_SIZE, id);
    if (x->json) {
        struct ctl__jw w;
        ctl__jw_object_begin(&w);
        ctl__jw_str(&w, "outcome", tally_outcome_name(res->outcome));
        ctl__jw_str(&w, "request_id", id);
        /* Every field in both outcomes; those of the other outcome are null. */
        ctl__jw_time_pair(&w, "expires_at", granted, res->expires_at_ms);
        if (granted) {
            ctl__jw_bool(&w, "soft_budget", soft);
        } else {
            ctl__jw_null(&w, "soft_budget");
        }
        ctl__jw_str_or_null(&w, "reason", granted ? "" : tally_deny_reason_name(res->deny_reason));
        ctl__jw_str_or_null(&w, "account", granted ? "" : res->account);
        ctl__jw_i64_or_null(&w, "remaining", !granted, res->remaining);
        ctl__jw_i64_or_null(&w, "retry_after_ms", !granted, res->retry_after_ms);
        ctl__jw_str_or_null(&w, "message", granted ? "" : res->message);
        ctl__jw_u64(&w, "index", res->index);
        ctl__jw_bool(&w, "replayed", replayed);
        ctl__jw_object_end(&w);
        return;
    }
    ctl__kv("outcome", "%s", granted ? "granted" : "DENIED");
    ctl__kv("id", "%s", id);
    if (granted) {
        ctl__kv("expires at", "%s (%" PRId64 ")", ctl__fmt_time(res->expires_at_ms, t),
                res->expires_at_ms);
        if (soft) {
            ctl__kv("warning", "an account of the chain is past its soft budget");
        }
    } else {
        const char *unit = remaining_unit(res->deny_reason);
        ctl__kv("reason", "%s", tally_deny_reason_name(res->deny_reason));
        ctl__kv("account", "%s", res->account[0] ? res->account : "-");
        if (strcmp(unit, "micros") == 0) {
            ctl__kv("remaining", "%" PRId64 " micros (%s)", res->remaining,
                    ctl__fmt_money(res->remaining, m));
        } else if (unit[0] != '\0') {
            ctl__kv("remaining", "%" PRId64 " %s", res->remaining, unit);
        }
        if (res->retry_after_ms < 0) {
            ctl__kv("retry after", "never (the request can never fit)");
        } else if (res->retry_after_ms > 0) {
            ctl__kv("retry after", "%" PRId64 " ms", res->retry_after_ms);
        } else {
            ctl__kv("retry after", "-");
        }
    }
    if (replayed) {
        ctl__kv("note", "replayed: this request id was answered before");
    }
}

/* A non-empty environment variable, or NULL. */
static const char *env_set(const char *name)
{
    const char *v = getenv(name);
    return v != NULL && v[0] != '\0' ? v : NULL;
}

/*
 * Fill the reserve's payer from exactly one of --key-file, --key, --key-hash and
 * --account; with none of them, from TALLY_KEY, else TALLY_KEY_FILE. `secret`
 * (CTL_SECRET_MAX + 1 bytes) receives a secret read from a file, `hash` a --key-hash.
 * Returns 0 or CTL_USAGE (said).
 */
static int reserve_payer(struct ctl__ctx *x, struct tally_reserve_args *ra,
                         uint8_t hash[TALLY_KEY_HASH_SIZE], char *secret)
{
    const struct ctl__args *a = x->a;
    int given = (int)a->given[CTL_OPT_KEY] + (int)a->given[CTL_OPT_KEY_FILE] +
                (int)a->given[CTL_OPT_KEY_HASH] + (int)a->given[CTL_OPT_ACCOUNT];
    const char *file = NULL, *source = "--key";
    if (given > 1 ||
        (given == 0 && env_set("TALLY_KEY") == NULL && env_set("TALLY_KEY_FILE") == NULL)) {
        return ctl__usage_error(x, "name the payer with one of --key-file, --key, --key-hash or "
                                   "--account (or set TALLY_KEY or TALLY_KEY_FILE)");
    }
    if (a->given[CTL_OPT_KEY_HASH] && ctl__parse_hex(x, "--key-hash", a->value[CTL_OPT_KEY_HASH],
                                                     hash, TALLY_KEY_HASH_SIZE) != 0) {
        return CTL_USAGE;
    }
    if (a->given[CTL_OPT_KEY_HASH]) {
        ra->key_hash = hash;
        return 0;
    }
    if (a->given[CTL_OPT_ACCOUNT]) {
        return ctl__opt_name(x, CTL_OPT_ACCOUNT, TALLY_NAME_MAX, &ra->account) != 0 ? CTL_USAGE : 0;
    }
    if (a->given[CTL_OPT_KEY]) {
        ra->key_secret = a->value[CTL_OPT_KEY];
    } else if (a->given[CTL_OPT_KEY_FILE]) {
        file = a->value[CTL_OPT_KEY_FILE];
        source = "--key-file";
    } else if (env_set("TALLY_KEY") != NULL) {
        ra->key_secret = env_set("TALLY_KEY");
        source = "TALLY_KEY";
    } else {
        file = env_set("TALLY_KEY_FILE");
        source = "TALLY_KEY_FILE";
    }
    if (file != NULL) {
        if (ctl__read_secret_file("key file", file, secret, CTL_SECRET_MAX) != 0) {
            return CTL_USAGE;
        }
        ra->key_secret = secret;
    }
    if (ra->key_secret[0] == '\0' || strlen(ra->key_secret) > CTL_SECRET_MAX) {
        return ctl__usage_error(x, "%s: the key must be 1 to %d bytes", source, CTL_SECRET_MAX);
    }
    return 0;
}

int ctl__cmd_reserve(struct ctl__ctx *x)
{
    const struct ctl__args *a = x->a;
    struct tally_reserve_args ra;
    uint8_t hash[TALLY_KEY_HASH_SIZE], idbuf[TALLY_REQUEST_ID_SIZE];
    char secret[CTL_SECRET_MAX + 1];
    memset(&ra, 0, sizeof(ra));
    if (reserve_payer(x, &ra, hash, secret) != 0) {
        return CTL_USAGE;
    }
    if (!a->given[CTL_OPT_ESTIMATE]) {
        return ctl__usage_error(x, "--estimate MICROS is required");
    }
    if (ctl__opt_int(x, CTL_OPT_ESTIMATE, 0, TALLY_AMOUNT_MAX, &ra.estimate_micros) != 0 ||
        (a->given[CTL_OPT_TOKENS] &&
         ctl__opt_uint(x, CTL_OPT_TOKENS, 0, TALLY_TOKENS_MAX, &ra.estimate_tokens)) ||
        ctl__opt_name(x, CTL_OPT_MODEL, TALLY_MODEL_MAX, &ra.model) != 0) {
        return CTL_USAGE;
    }
    ra.ttl_ms = TTL_DEFAULT_MS;
    if (a->given[CTL_OPT_TTL] && ctl__opt_int(x, CTL_OPT_TTL, 1, TALLY_TTL_MAX_MS, &ra.ttl_ms) != 0) {
        return CTL_USAGE;
    }
    if (ctl__opt_request_id(x, idbuf, &ra.request_id) != 0) {
        return CTL_USAGE;
    }
    int64_t void_wait_ms = VOID_WAIT_DEFAULT_MS;
    if (a->given[CTL_OPT_VOID_WAIT_MS] &&
        ctl__opt_int(x, CTL_OPT_VOID_WAIT_MS, 0, VOID_WAIT_MAX_MS, &void_wait_ms) != 0) {
        return CTL_USAGE;
    }
    int rc = ctl__ctx_client(x);
    if (rc != 0) {
        return rc;
    }
    struct tally_result res = {0};
    rc = tally_reserve(x->c, &ra, x->timeout_ms, &res);
    explicit_bzero(secret, sizeof(secret));
    if (rc < 0) {
        if (rc == -TALLY_EUNAVAILABLE) {
            rc = ctl__call_failed(x, NULL, rc, &res,
                                  "treat it as denied (the client voids any hold it made)");
            await_background_void(x, res.request_id, void_wait_ms);
            return rc;
        }
        return ctl__call_failed(x, NULL, rc, &res, NULL);
    }
    if (res.outcome != TALLY_GRANTED && res.outcome != TALLY_DENIED) {
        ctl__say_error(x->what, "unexpected outcome %s", tally_outcome_name(res.outcome));
        return CTL_UNAVAILABLE;
    }
    print_reserve(x, &res);
    return res.outcome == TALLY_GRANTED ? CTL_OK : CTL_DENIED;
}

/* ---- Settle, void, extend. ---- */

/* What resolve() does to a reservation. */
enum resolve_kind {
    RESOLVE_SETTLE,
    RESOLVE_VOID,
    RESOLVE_EXTEND,
};

/* Print the answer to a settle, void or extend (`kind`) of reservation `id_hex`: the amounts
 * of a settle or of a late void, the new expiry of an extend. */
static void print_resolve(struct ctl__ctx *x, enum resolve_kind kind, const char *id_hex,
                          const struct tally_result *res)
{
    static const char *const actions[] = {
        [RESOLVE_SETTLE] = "settled", [RESOLVE_VOID] = "voided", [RESOLVE_EXTEND] = "extended"};
    const char *action = actions[kind];
    char b[64], t[CTL_TIME_TEXT];
    bool late = (res->flags & TALLY_RESULT_LATE) != 0;
    bool replayed = (res->flags & TALLY_RESULT_REPLAYED) != 0;
    bool amounts = kind == RESOLVE_SETTLE || (kind == RESOLVE_VOID && late);
    bool expiry = kind == RESOLVE_EXTEND;
    if (x->json) {
        struct ctl__jw w;
        ctl__jw_object_begin(&w);
        ctl__jw_bool(&w, "ok", true);
        ctl__jw_str(&w, "action", action);
        ctl__jw_str(&w, "request_id", id_hex);
        if (amounts) {
            ctl__jw_i64(&w, "charged_micros", res->charged_micros);
            ctl__jw_i64(&w, "overrun_micros", res->overrun_micros);
        }
        if (expiry) {
            ctl__jw_time_pair(&w, "expires_at", true, res->expires_at_ms);
        }
        ctl__jw_bool(&w, "late", late);
        ctl__jw_bool(&w, "replayed", replayed);
        ctl__jw_u64(&w, "index", res->index);
        ctl__jw_object_end(&w);
        return;
    }
    ctl__kv("outcome", "%s", action);
    ctl__kv("id", "%s", id_hex);
    if (amounts) {
        ctl__kv(late ? "correction" : "charged", "%s", ctl__fmt_micros(res->charged_micros, b));
        ctl__kv("overrun", "%s", ctl__fmt_micros(res->overrun_micros, b));
    }
    if (expiry) {
        ctl__kv("expires at", "%s (%" PRId64 ")", ctl__fmt_time(res->expires_at_ms, t),
                res->expires_at_ms);
    }
    if (late) {
        ctl__kv("note", "late: the reservation had expired; the amount is a correction");
    }
    if (replayed) {
        ctl__kv("note", "replayed: this was answered before");
    }
}

/* The reservation id in the first positional word. */
static int word_request_id(struct ctl__ctx *x, uint8_t id[TALLY_REQUEST_ID_SIZE])
{
    return ctl__parse_hex(x, "ID", x->words[0], id, TALLY_REQUEST_ID_SIZE);
}

/*
 * Settle (`amount`: the actual micros, with `tokens`), void, or extend (`amount`: the ttl
 * in ms) reservation `id`, its input already checked, and print the answer. A failure after
 * UNAVAILABLE says that repeating the command is safe. Returns the exit code.
 */
static int resolve(struct ctl__ctx *x, enum resolve_kind kind,
                   const uint8_t id[TALLY_REQUEST_ID_SIZE], int64_t amount, uint64_t tokens)
{
    char id_hex[CTL_REQUEST_ID_HEX + 1];
    ctl__hex(id, TALLY_REQUEST_ID_SIZE, id_hex);
    int rc = ctl__ctx_client(x);
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
        return ctl__call_failed(x, id_hex, rc, &res,
                                ctl__exit_code_of(rc) == CTL_UNAVAILABLE
                                    ? "nothing is known: repeating the same command is safe"
                                    : NULL);
    }
    print_resolve(x, kind, id_hex, &res);
    return CTL_OK;
}

int ctl__cmd_settle(struct ctl__ctx *x)
{
    uint8_t id[TALLY_REQUEST_ID_SIZE];
    int64_t actual;
    uint64_t tokens = 0;
    if (word_request_id(x, id) != 0) {
        return CTL_USAGE;
    }
    if (!x->a->given[CTL_OPT_ACTUAL]) {
        return ctl__usage_error(x, "--actual MICROS is required");
    }
    if (ctl__opt_int(x, CTL_OPT_ACTUAL, 0, TALLY_AMOUNT_MAX, &actual) != 0 ||
        (x->a->given[CTL_OPT_TOKENS] &&
         ctl__opt_uint(x, CTL_OPT_TOKENS, 0, TALLY_TOKENS_MAX, &tokens) != 0)) {
        return CTL_USAGE;
    }
    return resolve(x, RESOLVE_SETTLE, id, actual, tokens);
}

int ctl__cmd_void(struct ctl__ctx *x)
{
    uint8_t id[TALLY_REQUEST_ID_SIZE];
    if (word_request_id(x, id) != 0) {
        return CTL_USAGE;
    }
    return resolve(x, RESOLVE_VOID, id, 0, 0);
}

int ctl__cmd_extend(struct ctl__ctx *x)
{
    uint8_t id[TALLY_REQUEST_ID_SIZE];
    int64_t ttl_ms;
    if (word_request_id(x, id) != 0) {
        return CTL_USAGE;
    }
    if (!x->a->given[CTL_OPT_TTL]) {
        return ctl__usage_error(x, "--ttl MS is required");
    }
    if (ctl__opt_int(x, CTL_OPT_TTL, 1, TALLY_TTL_MAX_MS, &ttl_ms) != 0) {
        return CTL_USAGE;
    }
    return resolve(x, RESOLVE_EXTEND, id, ttl_ms, 0);
}

/* ---- Listing and showing reservations. ---- */

/* Write `item`, a struct tally_reservation, as a JSON object (a value in an array or at the
 * top level). */
static void json_reservation(struct ctl__jw *w, const void *item)
{
    const struct tally_reservation *r = item;
    char id[CTL_REQUEST_ID_HEX + 1];
    size_t mlen = r->metadata_len <= TALLY_METADATA_MAX ? r->metadata_len : TALLY_METADATA_MAX;
    ctl__jw_open(w, NULL, '{');
    ctl__jw_str(w, "request_id", ctl__hex(r->request_id, TALLY_REQUEST_ID_SIZE, id));
    ctl__jw_str(w, "state", tally_resv_state_name(r->state));
    ctl__jw_str(w, "account", r->account);
    ctl__jw_str_or_null(w, "model", r->model);
    ctl__jw_i64(w, "estimate_micros", r->estimate_micros);
    ctl__jw_u64(w, "estimate_tokens", r->estimate_tokens);
    ctl__jw_time_pair(w, "created", true, r->created_ms);
    ctl__jw_time_pair(w, "expires_at", true, r->expires_at_ms);
    ctl__jw_i64(w, "charged_micros", r->charged_micros);
    ctl__jw_hex(w, "metadata_hex", r->metadata, mlen);
    ctl__jw_close(w, '}');
}

static int fetch_reservations(struct ctl__ctx *x, const struct ctl__list_query *q,
                              const struct tally_cursor *cursor, void *items, uint32_t *got,
                              struct tally_cursor *next, struct tally_result *res)
{
    return tally_reservation_list(x->c, q->name, cursor, TALLY_LIST_MAX, q->flags, x->timeout_ms,
                                  items, got, next, res);
}

/* `item`, a struct tally_reservation, as a row of the reservations list table. */
static void reservation_row(struct ctl__table *t, const void *item)
{
    const struct tally_reservation *r = item;
    char id[CTL_REQUEST_ID_HEX + 1], m[CTL_MONEY_TEXT], t1[CTL_TIME_TEXT], t2[CTL_TIME_TEXT];
    ctl__table_add(t, "%s", ctl__hex(r->request_id, TALLY_REQUEST_ID_SIZE, id));
    ctl__table_add(t, "%s", r->account);
    ctl__table_add(t, "%s", r->model[0] ? r->model : "-");
    ctl__table_add(t, "%s", tally_resv_state_name(r->state));
    ctl__table_add(t, "%s", ctl__fmt_money(r->estimate_micros, m));
    ctl__table_add(t, "%" PRIu64, r->estimate_tokens);
    ctl__table_add(t, "%s", ctl__fmt_time(r->created_ms, t1));
    ctl__table_add(t, "%s", ctl__fmt_time(r->expires_at_ms, t2));
}

int ctl__cmd_reservations_list(struct ctl__ctx *x)
{
    static const char *const headers[] = {"ID",       "ACCOUNT", "MODEL",   "STATE",
                                          "ESTIMATE", "TOKENS",  "CREATED", "EXPIRES"};
    static const struct ctl__listing reservations = {.filter = CTL_OPT_ACCOUNT,
                                                     .fetch = fetch_reservations,
                                                     .item_size = sizeof(struct tally_reservation),
                                                     .json_item = json_reservation,
                                                     .align = "llllrrll",
                                                     .headers = headers,
                                                     .table_row = reservation_row};
    return ctl__run_listing(x, &reservations);
}

int ctl__cmd_reservations_show(struct ctl__ctx *x)
{
    uint8_t id[TALLY_REQUEST_ID_SIZE];
    char id_hex[CTL_REQUEST_ID_HEX + 1], b[64], t[CTL_TIME_TEXT];
    struct tally_reservation r;
    if (word_request_id(x, id) != 0) {
        return CTL_USAGE;
    }
    ctl__hex(id, sizeof(id), id_hex);
    int rc = ctl__ctx_client(x);
    if (rc != 0) {
        return rc;
    }
    struct tally_result res = {0};
    memset(&r, 0, sizeof(r));
    rc = tally_reservation_get(x->c, id, ctl__read_flags(x), x->timeout_ms, &r, &res);
    if (rc < 0) {
        return ctl__call_failed(x, id_hex, rc, &res, NULL);
    }
    if (x->json) {
        struct ctl__jw w;
        ctl__jw_init(&w, stdout);
        json_reservation(&w, &r);
        ctl__jw_line(&w);
        return CTL_OK;
    }
    ctl__kv("id", "%s", id_hex);
    ctl__kv("state", "%s", tally_resv_state_name(r.state));
    ctl__kv("account", "%s", r.account);
    ctl__kv("model", "%s", r.model[0] ? r.model : "-");
    ctl__kv("estimate", "%s", ctl__fmt_micros(r.estimate_micros, b));
    ctl__kv("tokens", "%" PRIu64, r.estimate_tokens);
    ctl__kv("created", "%s", ctl__fmt_time(r.created_ms, t));
    ctl__kv("expires at", "%s", ctl__fmt_time(r.expires_at_ms, t));
    ctl__kv("charged", "%s", ctl__fmt_micros(r.charged_micros, b));
    if (r.metadata_len > 0) {
        char meta[2 * TALLY_METADATA_MAX + 1];
        size_t len = r.metadata_len <= TALLY_METADATA_MAX ? r.metadata_len : TALLY_METADATA_MAX;
        ctl__kv("metadata (hex)", "%s", ctl__hex(r.metadata, len, meta));
    }
    return CTL_OK;
}
