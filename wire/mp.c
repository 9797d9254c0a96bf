/*
 * mp.c: the bounded msgpack reader (see mp.h for why it exists).
 */
#include "wire/mp.h"
#include <string.h>

static bool fail(struct mp_reader *r)
{
    r->ok = false;
    return false;
}

void mp_reader_init(struct mp_reader *r, const void *buf, size_t len)
{
    r->p = buf;
    r->end = r->p + len;
    r->ok = true;
}

size_t mp_left(const struct mp_reader *r)
{
    return (size_t)(r->end - r->p);
}

static bool take(struct mp_reader *r, size_t n, const uint8_t **out)
{
    if (!r->ok || mp_left(r) < n) {
        return fail(r);
    }
    *out = r->p;
    r->p += n;
    return true;
}

static uint64_t be(const uint8_t *b, size_t n)
{
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        v = (v << 8) | b[i];
    }
    return v;
}

/* Reads a big-endian length of `n` bytes. */
static bool take_be(struct mp_reader *r, size_t n, uint64_t *v)
{
    const uint8_t *b;
    if (!take(r, n, &b)) {
        return false;
    }
    *v = be(b, n);
    return true;
}

bool mp_read_array(struct mp_reader *r, uint32_t max, uint32_t *n)
{
    const uint8_t *t;
    uint64_t count;
    if (!take(r, 1, &t)) {
        return false;
    }
    if ((*t & 0xf0) == 0x90) {
        count = *t & 0x0f;
    } else if (*t == 0xdc) {
        if (!take_be(r, 2, &count)) {
            return false;
        }
    } else if (*t == 0xdd) {
        if (!take_be(r, 4, &count)) {
            return false;
        }
    } else {
        return fail(r);
    }
    if (count > max || count > mp_left(r)) {
        return fail(r);
    }
    *n = (uint32_t)count;
    return true;
}

/* Reads any integer as a sign flag and magnitude. */
static bool read_int(struct mp_reader *r, bool *negative, uint64_t *mag)
{
    const uint8_t *t;
    uint64_t v;
    if (!take(r, 1, &t)) {
        return false;
    }
    *negative = false;
    if (*t <= 0x7f) {
        *mag = *t;
        return true;
    }
    if (*t >= 0xe0) {
        *negative = true;
        *mag = (uint64_t)(256 - *t);
        return true;
    }
    switch (*t) {
    case 0xcc: case 0xcd: case 0xce: case 0xcf: {
        size_t n = (size_t)1 << (*t - 0xcc);
        if (!take_be(r, n, mag)) {
            return false;
        }
        return true;
    }
    case 0xd0: case 0xd1: case 0xd2: case 0xd3: {
        size_t n = (size_t)1 << (*t - 0xd0);
        if (!take_be(r, n, &v)) {
            return false;
        }
        /* Sign-extend the n-byte two's complement value. */
        int64_t s;
        if (n == 8) {
            s = (int64_t)v;
        } else {
            uint64_t sign = (uint64_t)1 << (8 * n - 1);
            s = (int64_t)(v ^ sign) - (int64_t)sign;
        }
        *negative = s < 0;
        *mag = s < 0 ? (uint64_t)0 - (uint64_t)s : (uint64_t)s;
        return true;
    }
    default:
        return fail(r);
    }
}

bool mp_read_u64(struct mp_reader *r, uint64_t *v)
{
    bool neg;
    uint64_t mag;
    if (!read_int(r, &neg, &mag)) {
        return false;
    }
    if (neg && mag != 0) {
        return fail(r);
    }
    *v = mag;
    return true;
}

bool mp_read_i64(struct mp_reader *r, int64_t *v)
{
    bool neg;
    uint64_t mag;
    if (!read_int(r, &neg, &mag)) {
        return false;
    }
    if (!neg && mag > (uint64_t)INT64_MAX) {
        return fail(r);
    }
    if (neg && mag > (uint64_t)INT64_MAX + 1) {
        return fail(r);
    }
    *v = neg ? (int64_t)(0 - mag) : (int64_t)mag;
    return true;
}

/* Header of a str (0xa0.., 0xd9-0xdb) or bin (0xc4-0xc6) of at most `max` bytes. */
static bool read_blob(struct mp_reader *r, bool is_str, size_t max, const uint8_t **b,
                      size_t *len)
{
    const uint8_t *t;
    uint64_t n;
    if (!take(r, 1, &t)) {
        return false;
    }
    if (is_str && (*t & 0xe0) == 0xa0) {
        n = *t & 0x1f;
    } else if (*t == (is_str ? 0xd9 : 0xc4)) {
        if (!take_be(r, 1, &n)) {
            return false;
        }
    } else if (*t == (is_str ? 0xda : 0xc5)) {
        if (!take_be(r, 2, &n)) {
            return false;
        }
    } else if (*t == (is_str ? 0xdb : 0xc6)) {
        if (!take_be(r, 4, &n)) {
            return false;
        }
    } else {
        return fail(r);
    }
    if (n > max) {
        return fail(r);
    }
    *len = (size_t)n;
    return take(r, (size_t)n, b);
}

bool mp_read_str(struct mp_reader *r, size_t max, const char **s, size_t *len)
{
    const uint8_t *b;
    if (!read_blob(r, true, max, &b, len)) {
        return false;
    }
    *s = (const char *)b;
    return true;
}

bool mp_read_bin(struct mp_reader *r, size_t max, const uint8_t **b, size_t *len)
{
    return read_blob(r, false, max, b, len);
}

bool mp_read_u8(struct mp_reader *r, uint8_t *v)
{
    uint64_t x;
    if (!mp_read_u64(r, &x) || x > UINT8_MAX) {
        return fail(r);
    }
    *v = (uint8_t)x;
    return true;
}

bool mp_read_u32(struct mp_reader *r, uint32_t *v)
{
    uint64_t x;
    if (!mp_read_u64(r, &x) || x > UINT32_MAX) {
        return fail(r);
    }
    *v = (uint32_t)x;
    return true;
}

bool mp_read_text(struct mp_reader *r, char *dst, size_t max)
{
    const char *s;
    size_t n;
    dst[0] = '\0';
    if (!mp_read_str(r, max, &s, &n) || memchr(s, '\0', n) != NULL) {
        return fail(r);
    }
    memcpy(dst, s, n);
    dst[n] = '\0';
    return true;
}

bool mp_read_fixed(struct mp_reader *r, uint8_t *dst, size_t size)
{
    const uint8_t *b;
    size_t n;
    if (!mp_read_bin(r, size, &b, &n) || n != size) {
        return fail(r);
    }
    memcpy(dst, b, n);
    return true;
}
