/*
 * mp_walk.c: the msgpack walker of mp_walk.h.
 *
 * One recursive function: read the type byte, derive the header size, the body size and
 * the number of children, record the node, walk the children. A node's slot is taken
 * before its children are walked, so the array is in pre-order.
 */
#include "mp_walk.h"

#include <stdio.h>
#include <stdlib.h>

static uint64_t read_be(const uint8_t *p, size_t n)
{
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        v = v << 8 | p[i];
    }
    return v;
}

size_t mpw_walk(struct mpw_tree *t, const uint8_t *p, size_t len, size_t off, size_t parent)
{
    if (off >= len) {
        fprintf(stderr, "  mpw_walk: node past the end at %zu\n", off);
        return 0;
    }
    const uint8_t *q = p + off;
    uint8_t b = q[0];
    struct mpw_node nd = {.off = off, .hdr = 1, .parent = parent};
    size_t body = 0, children = 0;
    if (b <= 0x7f || (b >= 0xcc && b <= 0xcf)) {
        nd.kind = MPW_UINT;
        nd.hdr = b <= 0x7f ? 1 : 1 + ((size_t)1 << (b - 0xcc));
        nd.value = b <= 0x7f ? b : read_be(q + 1, nd.hdr - 1);
    } else if (b >= 0xe0 || (b >= 0xd0 && b <= 0xd3)) {
        nd.kind = MPW_INT;
        nd.hdr = b >= 0xe0 ? 1 : 1 + ((size_t)1 << (b - 0xd0));
    } else if ((b & 0xf0) == 0x90 || b == 0xdc || b == 0xdd) {
        nd.kind = MPW_ARRAY;
        nd.hdr = (b & 0xf0) == 0x90 ? 1 : b == 0xdc ? 3 : 5;
        children = nd.hdr == 1 ? (b & 0x0f) : read_be(q + 1, nd.hdr - 1);
        nd.value = children;
    } else if ((b & 0xe0) == 0xa0 || (b >= 0xd9 && b <= 0xdb)) {
        nd.kind = MPW_STR;
        nd.hdr = (b & 0xe0) == 0xa0 ? 1 : 1 + ((size_t)1 << (b - 0xd9));
        body = nd.hdr == 1 ? (b & 0x1f) : read_be(q + 1, nd.hdr - 1);
        nd.value = body;
    } else if (b >= 0xc4 && b <= 0xc6) {
        nd.kind = MPW_BIN;
        nd.hdr = 1 + ((size_t)1 << (b - 0xc4));
        body = read_be(q + 1, nd.hdr - 1);
        nd.value = body;
    } else if (b == 0xc0 || b == 0xc2 || b == 0xc3) {
        nd.kind = b == 0xc0 ? MPW_NIL : MPW_BOOL;
    } else if (b == 0xca || b == 0xcb) {
        nd.kind = MPW_FLOAT;
        body = b == 0xca ? 4 : 8;
    } else if ((b & 0xf0) == 0x80 || b == 0xde || b == 0xdf) {
        nd.kind = MPW_MAP;
        nd.hdr = (b & 0xf0) == 0x80 ? 1 : b == 0xde ? 3 : 5;
        nd.value = nd.hdr == 1 ? (b & 0x0f) : read_be(q + 1, nd.hdr - 1);
        children = 2 * nd.value;
    } else {
        fprintf(stderr, "  mpw_walk: unexpected type byte 0x%02x at %zu\n", b, off);
        return 0;
    }
    if (t->n == t->cap) {
        t->cap = t->cap != 0 ? 2 * t->cap : 256;
        t->nodes = realloc(t->nodes, t->cap * sizeof(*t->nodes));
        if (t->nodes == NULL) {
            fprintf(stderr, "  mpw_walk: out of memory\n");
            abort();
        }
    }
    size_t idx = t->n++;
    size_t end = off + nd.hdr + body;
    nd.all_arrays = nd.kind == MPW_ARRAY && children > 0;
    for (size_t i = 0; i < children; i++) {
        size_t child = t->n;
        end = mpw_walk(t, p, len, end, idx);
        if (end == 0) {
            return 0;
        }
        nd.all_arrays = nd.all_arrays && t->nodes[child].kind == MPW_ARRAY;
    }
    if (end > len) {
        fprintf(stderr, "  mpw_walk: node at %zu ends past the end\n", off);
        return 0;
    }
    nd.len = end - off;
    t->nodes[idx] = nd;
    return end;
}

void mpw_free(struct mpw_tree *t)
{
    free(t->nodes);
    t->nodes = NULL;
    t->n = t->cap = 0;
}
