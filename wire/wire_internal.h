/*
 * wire_internal.h: what cmd.c and proto.c share inside wire/ (not part of wire.h).
 *
 * Both write msgpack with the same three helpers, so a string is bounded and packed the
 * same way in a command and in a protocol message.
 */
#ifndef TALLY_WIRE_INTERNAL_H
#define TALLY_WIRE_INTERNAL_H

#include <msgpack.h>
#include <stdbool.h>
#include <stddef.h>
#include <string.h>

/* Whether `s` is NUL-terminated within max + 1 bytes (at most `max` bytes long). */
static inline bool wire__str_fits(const char *s, size_t max)
{
    return strnlen(s, max + 1) <= max;
}

/* Pack `s` as a msgpack str: at most `max` bytes are read even if the array is not
 * terminated (decoders refuse longer strings, so what is written stays valid). */
static inline void wire__pack_str(msgpack_packer *pk, const char *s, size_t max)
{
    size_t n = strnlen(s, max);
    msgpack_pack_str(pk, n);
    msgpack_pack_str_body(pk, s, n);
}

/* Pack `n` bytes at `b` as a msgpack bin. */
static inline void wire__pack_bin(msgpack_packer *pk, const void *b, size_t n)
{
    msgpack_pack_bin(pk, n);
    msgpack_pack_bin_body(pk, b, n);
}

#endif /* TALLY_WIRE_INTERNAL_H */
