/*
 * parse.c: the values tallyctl reads from its command line: whole numbers in a range,
 * names, hex strings, times (ms since the epoch or UTC ISO-8601), durations and budget
 * periods, request ids.
 *
 * Each parser checks the whole value against its bound and, when it is bad, prints why
 * (naming the option or word it came from) and returns -1, so that a command can check
 * all its input before it opens the client. Dates go through ledger/civil.h, the same day
 * arithmetic the ledger uses for its periods.
 */
#include "tallyctl/tallyctl.h"
#include "ledger/civil.h"

#include <assert.h>
#include <inttypes.h>
#include <string.h>

#define OPT_LABEL_SIZE 32

int ctl__parse_uint(struct ctl__ctx *x, const char *label, const char *s, uint64_t min,
                    uint64_t max, uint64_t *out)
{
    uint64_t v = 0;
    if (s[0] == '-' && s[1] != '\0') {
        return ctl__usage_error(x, "%s: '%s' must not be negative", label, s), -1;
    }
    if (s[0] == '\0') {
        return ctl__usage_error(x, "%s: the value is empty", label), -1;
    }
    for (const char *p = s; *p != '\0'; p++) {
        if (*p < '0' || *p > '9') {
            return ctl__usage_error(x, "%s: '%s' is not a whole number", label, s), -1;
        }
        if (__builtin_mul_overflow(v, 10, &v) ||
            __builtin_add_overflow(v, (uint64_t)(*p - '0'), &v)) {
            return ctl__usage_error(x, "%s: '%s' is too large", label, s), -1;
        }
    }
    if (v < min || v > max) {
        return ctl__usage_error(x, "%s: %s is out of range (%" PRIu64 " .. %" PRIu64 ")", label, s,
                                min, max),
               -1;
    }
    *out = v;
    return 0;
}

int ctl__parse_int(struct ctl__ctx *x, const char *label, const char *s, int64_t min, int64_t max,
                   int64_t *out)
{
    uint64_t v;
    assert(min >= 0 && max >= min);
    if (ctl__parse_uint(x, label, s, (uint64_t)min, (uint64_t)max, &v) != 0) {
        return -1;
    }
    *out = (int64_t)v;
    return 0;
}

/* "--name" of option `o` into `buf` (OPT_LABEL_SIZE bytes), to name it in messages.
 * Returns buf. */
static const char *opt_label(enum ctl__opt_id o, char *buf)
{
    snprintf(buf, OPT_LABEL_SIZE, "--%s", ctl__opt_specs[o].name);
    return buf;
}

int ctl__opt_uint(struct ctl__ctx *x, enum ctl__opt_id o, uint64_t min, uint64_t max, uint64_t *out)
{
    char label[OPT_LABEL_SIZE];
    assert(x->a->given[o]);
    return ctl__parse_uint(x, opt_label(o, label), x->a->value[o], min, max, out);
}

int ctl__opt_int(struct ctl__ctx *x, enum ctl__opt_id o, int64_t min, int64_t max, int64_t *out)
{
    char label[OPT_LABEL_SIZE];
    assert(x->a->given[o]);
    return ctl__parse_int(x, opt_label(o, label), x->a->value[o], min, max, out);
}

int ctl__check_name(struct ctl__ctx *x, const char *label, const char *s, size_t max)
{
    size_t n = strlen(s);
    if (n == 0 || n > max) {
        return ctl__usage_error(x, "%s: a name is 1 to %zu bytes long", label, max), -1;
    }
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        bool ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
                  (ch >= '0' && ch <= '9') || strchr("._:/@-", ch) != NULL;
        if (!ok) {
            return ctl__usage_error(x, "%s: '%s' is not a valid name (letters, digits and ._:/@-)",
                                    label, s),
                   -1;
        }
    }
    return 0;
}

int ctl__opt_name(struct ctl__ctx *x, enum ctl__opt_id o, size_t max, const char **out)
{
    char label[OPT_LABEL_SIZE];
    *out = x->a->given[o] ? x->a->value[o] : NULL;
    return *out != NULL ? ctl__check_name(x, opt_label(o, label), *out, max) : 0;
}

int ctl__parse_hex(struct ctl__ctx *x, const char *label, const char *s, uint8_t *out, size_t n)
{
    char lower[2 * TALLY_KEY_HASH_SIZE + 1];
    size_t len = strlen(s);
    assert(n <= TALLY_KEY_HASH_SIZE);
    if (len != 2 * n) {
        return ctl__usage_error(x, "%s: '%s' is not %zu hex digits", label, s, 2 * n), -1;
    }
    for (size_t i = 0; i < len; i++) {
        char ch = s[i];
        if (ch >= 'A' && ch <= 'F') {
            ch = (char)(ch - 'A' + 'a');
        }
        if (!((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f'))) {
            return ctl__usage_error(x, "%s: '%s' is not %zu hex digits", label, s, 2 * n), -1;
        }
        lower[i] = ch;
    }
    lower[len] = '\0';
    if (tally_unhex(lower, out, n) != 0) {
        return ctl__usage_error(x, "%s: '%s' is not %zu hex digits", label, s, 2 * n), -1;
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
static int parse_time(struct ctl__ctx *x, const char *label, const char *s, int64_t *out_ms)
{
    if (s[0] >= '0' && s[0] <= '9' && strspn(s, "0123456789") == strlen(s)) {
        return ctl__parse_int(x, label, s, 0, TALLY_TIME_MAX_MS, out_ms);
    }
    if (s[0] == '-') {
        return ctl__usage_error(x, "%s: '%s' must not be negative", label, s), -1;
    }
    if (!parse_iso_time(s, out_ms)) {
        return ctl__usage_error(x,
                                "%s: '%s' is not a time (ms since the epoch, or UTC like "
                                "2026-11-01 or 2026-11-01T10:00:00Z)",
                                label, s),
               -1;
    }
    return 0;
}

int ctl__opt_time(struct ctl__ctx *x, enum ctl__opt_id o, int64_t *out_ms)
{
    char label[OPT_LABEL_SIZE];
    assert(x->a->given[o]);
    return parse_time(x, opt_label(o, label), x->a->value[o], out_ms);
}

int ctl__parse_period(struct ctl__ctx *x, const char *s, uint8_t *kind, int64_t *period_ms)
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
    } units[] = {{"ms", 1}, {"s", 1000}, {"m", 60000}, {"h", 3600000}, {"d", CTL_DAY_MS}};
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
            if (__builtin_mul_overflow(n, units[i].ms, &ms) || ms < TALLY_PERIOD_MIN_MS ||
                ms > TALLY_PERIOD_MAX_MS) {
                return ctl__usage_error(x, "--period: %s is out of range (1s .. 366d)", s), -1;
            }
            *kind = TALLY_PERIOD_FIXED;
            *period_ms = ms;
            return 0;
        }
    }
    return ctl__usage_error(x,
                            "--period: '%s' is not a period (none, day, week, month, or a duration "
                            "like 1h, 7d, 30d)",
                            s),
           -1;
}

int ctl__opt_request_id(struct ctl__ctx *x, uint8_t buf[TALLY_REQUEST_ID_SIZE], const uint8_t **out)
{
    *out = NULL;
    if (!x->a->given[CTL_OPT_ID]) {
        return 0;
    }
    if (ctl__parse_hex(x, "--id", x->a->value[CTL_OPT_ID], buf, TALLY_REQUEST_ID_SIZE) != 0) {
        return -1;
    }
    *out = buf;
    return 0;
}
