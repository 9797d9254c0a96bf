/*
 * mp.h: a bounded, non-allocating msgpack reader; part of wire/wire.h (include that).
 *
 * msgpack-c's unpacker allocates whatever a length prefix asks for (five bytes can
 * make it reserve 1 GiB), so input from the log or the network is read with this
 * cursor instead: every length and count is checked against the bytes that are left
 * and against the caller's bound before it is used, and strings are returned as
 * pointers into the buffer. The first failure sticks: later reads fail too, so a
 * caller may check `ok` once at the end of a record.
 */
#ifndef TALLY_WIRE_MP_H
#define TALLY_WIRE_MP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct mp_reader {
    const uint8_t *p;
    const uint8_t *end;
    bool ok;
};

void mp_reader_init(struct mp_reader *r, const void *buf, size_t len);

/* Array header with at most `max` elements (each needs at least one byte left). */
bool mp_read_array(struct mp_reader *r, uint32_t max, uint32_t *n);

/* Any integer that fits. */
bool mp_read_u64(struct mp_reader *r, uint64_t *v);
bool mp_read_i64(struct mp_reader *r, int64_t *v);

/* str of at most `max` bytes (borrowed pointer into the buffer). */
bool mp_read_str(struct mp_reader *r, size_t max, const char **s, size_t *len);

/* bin of at most `max` bytes (borrowed pointer into the buffer). */
bool mp_read_bin(struct mp_reader *r, size_t max, const uint8_t **b, size_t *len);

/* Integers that must fit the narrower type (a larger value fails the reader). */
bool mp_read_u8(struct mp_reader *r, uint8_t *v);
bool mp_read_u32(struct mp_reader *r, uint32_t *v);

/* A str of at most `max` bytes without NUL, copied NUL-terminated into `dst` (max + 1
 * bytes); on failure dst is "". */
bool mp_read_text(struct mp_reader *r, char *dst, size_t max);

/* A bin of exactly `size` bytes, copied into `dst`. */
bool mp_read_fixed(struct mp_reader *r, uint8_t *dst, size_t size);

/* Bytes left unread. */
size_t mp_left(const struct mp_reader *r);

#endif /* TALLY_WIRE_MP_H */
