/*
 * mp_walk.h: a msgpack walker over valid encodings, for tests that mutate them.
 *
 * The mutation tests of the ledger codec and the wire protocol take a valid encoding, list
 * its objects with their offsets and header sizes, and cut, replace or re-header one at a
 * time. The walker trusts its input as far as a valid encoding allows (it reads a header's
 * length bytes without checking them) and refuses what a valid one never holds.
 */
#ifndef TALLY_MP_WALK_H
#define TALLY_MP_WALK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum mpw_kind {
    MPW_UINT,
    MPW_INT,
    MPW_NIL,
    MPW_BOOL,
    MPW_FLOAT,
    MPW_STR,
    MPW_BIN,
    MPW_ARRAY,
    MPW_MAP
};

struct mpw_node {
    size_t off, hdr, len; /* position, header bytes, header + body + descendants bytes */
    enum mpw_kind kind;
    uint64_t value;  /* a uint's value, a str's or bin's byte count, an array's element count,
                        a map's pair count; 0 for the rest */
    size_t parent;   /* index of the enclosing array or map, SIZE_MAX for the root */
    bool all_arrays; /* an array with at least one element, all of them arrays */
};

/* Objects in pre-order: an object's descendants follow it. The caller zeroes it before the
 * first walk and frees it with mpw_free(). */
struct mpw_tree {
    struct mpw_node *nodes;
    size_t n, cap;
};

/*
 * Appends the object at p[off] and its descendants to `t` (the object's parent is
 * `parent`, SIZE_MAX for a root). Returns the offset after the object, or 0 (with a line on
 * stderr) if it starts at or past `len`, ends past `len` or holds a type byte that is not
 * one of enum mpw_kind's (ext, 0xc1). Aborts when memory runs out. `p` is borrowed.
 */
size_t mpw_walk(struct mpw_tree *t, const uint8_t *p, size_t len, size_t off, size_t parent);

/* Frees the nodes; `t` is empty again. */
void mpw_free(struct mpw_tree *t);

#endif /* TALLY_MP_WALK_H */
