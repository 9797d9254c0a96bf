/*
 * json.c: tallyctl's JSON writer, a few functions over one FILE.
 *
 * The writer keeps only what it needs to put commas in the right places (one flag per
 * open object or array, at most CTL_JW_DEPTH_MAX deep) and writes as it goes: no tree is
 * built. Strings are always valid JSON (controls escaped, bytes that are not UTF-8 written
 * as U+FFFD), so --json output parses whatever the server or the user put in a name.
 */
#include "tallyctl/tallyctl.h"

#include <assert.h>
#include <inttypes.h>
#include <string.h>

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

void ctl__jw_init(struct ctl__jw *w, FILE *f)
{
    memset(w, 0, sizeof(*w));
    w->f = f;
}

/* Begin a value: the comma before it and, inside an object, `"key":` (`key` NULL in an
 * array or at the top level). */
static void jw_sep(struct ctl__jw *w, const char *key)
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

void ctl__jw_open(struct ctl__jw *w, const char *key, char bracket)
{
    assert(w->depth + 1 < CTL_JW_DEPTH_MAX);
    jw_sep(w, key);
    fputc(bracket, w->f);
    w->depth++;
    w->comma[w->depth] = false;
}

void ctl__jw_close(struct ctl__jw *w, char bracket)
{
    assert(w->depth > 0);
    fputc(bracket, w->f);
    w->depth--;
}

void ctl__jw_line(struct ctl__jw *w)
{
    assert(w->depth == 0);
    fputc('\n', w->f);
    w->comma[0] = false;
}

void ctl__jw_str(struct ctl__jw *w, const char *key, const char *s)
{
    jw_sep(w, key);
    json_string(w->f, s);
}

void ctl__jw_str_or_null(struct ctl__jw *w, const char *key, const char *s)
{
    jw_sep(w, key);
    if (s[0] == '\0') {
        fputs("null", w->f);
    } else {
        json_string(w->f, s);
    }
}

void ctl__jw_i64(struct ctl__jw *w, const char *key, int64_t v)
{
    jw_sep(w, key);
    fprintf(w->f, "%" PRId64, v);
}

void ctl__jw_u64(struct ctl__jw *w, const char *key, uint64_t v)
{
    jw_sep(w, key);
    fprintf(w->f, "%" PRIu64, v);
}

void ctl__jw_bool(struct ctl__jw *w, const char *key, bool v)
{
    jw_sep(w, key);
    fputs(v ? "true" : "false", w->f);
}

void ctl__jw_null(struct ctl__jw *w, const char *key)
{
    jw_sep(w, key);
    fputs("null", w->f);
}

void ctl__jw_i64_or_null(struct ctl__jw *w, const char *key, bool present, int64_t v)
{
    if (present) {
        ctl__jw_i64(w, key, v);
    } else {
        ctl__jw_null(w, key);
    }
}

void ctl__jw_u64_or_null(struct ctl__jw *w, const char *key, bool present, uint64_t v)
{
    if (present) {
        ctl__jw_u64(w, key, v);
    } else {
        ctl__jw_null(w, key);
    }
}

void ctl__jw_object_begin(struct ctl__jw *w)
{
    ctl__jw_init(w, stdout);
    ctl__jw_open(w, NULL, '{');
}

void ctl__jw_object_end(struct ctl__jw *w)
{
    ctl__jw_close(w, '}');
    ctl__jw_line(w);
}

void ctl__jw_hex(struct ctl__jw *w, const char *key, const uint8_t *bytes, size_t n)
{
    char text[2 * TALLY_METADATA_MAX + 1];
    assert(n <= TALLY_METADATA_MAX);
    ctl__jw_str(w, key, ctl__hex(bytes, n, text));
}

void ctl__jw_time_pair(struct ctl__jw *w, const char *name, bool present, int64_t ms)
{
    char key[32], text[CTL_TIME_TEXT];
    snprintf(key, sizeof(key), "%s_ms", name);
    ctl__jw_i64_or_null(w, key, present, ms);
    ctl__jw_str_or_null(w, name,
                        present ? ctl__fmt_time(ms, text) : ""); /* ctl__fmt_time() is never "" */
}
