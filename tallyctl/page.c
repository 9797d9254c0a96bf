/*
 * page.c: paged listings. libtally answers a list call with at most TALLY_LIST_MAX items
 * and a cursor; tallyctl walks the pages to the end.
 *
 * A pager fetches one page at a time and refuses a malformed one (too many items, a cursor
 * that does not move on), and no walk goes past PAGES_MAX pages, so every loop over a
 * listing is bounded. ctl__run_listing() is the shape of the list commands: check the filter,
 * collect every page, print a JSON array or an aligned table.
 */
#include "tallyctl/tallyctl.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

#define PAGES_MAX 1000000 /* pages of one listing */

int ctl__pager_next(struct ctl__ctx *x, struct ctl__pager *p, void *items, uint32_t *got,
                    const char *later_hint)
{
    struct tally_result res = {0};
    struct tally_cursor next = {0};
    assert(!p->done && p->page < PAGES_MAX);
    *got = 0;
    int rc = p->fetch(x, p->q, &p->cursor, items, got, &next, &res);
    if (rc < 0) {
        return ctl__call_failed(x, p->q->name, rc, &res, p->page > 0 ? later_hint : NULL);
    }
    bool same = next.len == p->cursor.len && memcmp(next.bytes, p->cursor.bytes, next.len) == 0;
    if (*got > TALLY_LIST_MAX || next.len > TALLY_CURSOR_MAX || (next.len != 0 && same)) {
        ctl__say_error(x->what, "protocol: the server answered a malformed page");
        return CTL_UNAVAILABLE;
    }
    if (p->page + 1 >= PAGES_MAX && next.len != 0) {
        ctl__say_error(x->what, "more than %d pages: giving up", PAGES_MAX);
        return CTL_UNAVAILABLE;
    }
    p->page++;
    p->cursor = next;
    p->done = next.len == 0;
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
static int list_all(struct ctl__ctx *x, ctl__fetch_fn fetch, const struct ctl__list_query *q,
                    size_t size, void **out, size_t *n)
{
    struct ctl__pager p = {.fetch = fetch, .q = q};
    void *all = NULL;
    size_t cap = 0, count = 0;
    while (!p.done) {
        uint32_t got;
        if (grow(&all, &cap, count + TALLY_LIST_MAX, size) != 0) {
            free(all);
            ctl__say_error(x->what, "out of memory");
            return CTL_UNAVAILABLE;
        }
        int rc = ctl__pager_next(x, &p, (char *)all + count * size, &got, NULL);
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

int ctl__run_listing(struct ctl__ctx *x, const struct ctl__listing *l)
{
    struct ctl__list_query q = {.flags = ctl__read_flags(x)};
    void *all = NULL;
    size_t n = 0;
    if (ctl__opt_name(x, l->filter, TALLY_NAME_MAX, &q.name) != 0) {
        return CTL_USAGE;
    }
    int rc = ctl__ctx_client(x);
    if (rc != 0) {
        return rc;
    }
    if ((rc = list_all(x, l->fetch, &q, l->item_size, &all, &n)) != 0) {
        return rc;
    }
    const char *items = all;
    if (x->json) {
        struct ctl__jw w;
        ctl__jw_init(&w, stdout);
        ctl__jw_open(&w, NULL, '[');
        for (size_t i = 0; i < n; i++) {
            l->json_item(&w, items + i * l->item_size);
        }
        ctl__jw_close(&w, ']');
        ctl__jw_line(&w);
        free(all);
        return CTL_OK;
    }
    struct ctl__table t;
    ctl__table_init(&t, l->align, l->headers);
    for (size_t i = 0; i < n; i++) {
        l->table_row(&t, items + i * l->item_size);
    }
    free(all);
    return ctl__table_finish(x, &t);
}
