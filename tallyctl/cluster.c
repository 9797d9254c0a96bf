/*
 * cluster.c: the cluster commands: status, and the membership changes (transfer, add,
 * remove).
 *
 * cluster status asks every node it can find, all at once (a thread per node), and learns
 * the member addresses from the answers for a few bounded rounds, so that one table shows
 * every node, including those that did not answer. Membership changes carry no request id,
 * so after UNAVAILABLE they say to look before repeating.
 */
#include "tallyctl/tallyctl.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define STATUS_ADDRESSES_MAX 64 /* nodes one cluster status probes */
#define STATUS_ROUNDS_MAX 4     /* rounds of learning member addresses */

/* ---- Status. ---- */

/* One node probed by cluster status, on a thread of its own. */
struct probe {
    char address[TALLY_ADDRESS_MAX + 1];
    struct tally *c;
    int64_t deadline_ms;
    bool probed;
    int rc;
    struct tally_node_status st;
    struct tally_result res;
};

/* Thread body: one tally_status() call into the probe `arg`. */
static void *probe_run(void *arg)
{
    struct probe *p = arg;
    p->rc = tally_status(p->c, p->address, p->deadline_ms, &p->st, &p->res);
    return NULL;
}

/* Add `address` to probes[0 .. *n) unless present or full. Returns 0, or -1 if it does
 * not fit in TALLY_ADDRESS_MAX bytes. */
static int probe_add(struct probe *probes, size_t *n, const char *address, size_t len)
{
    if (len == 0 || len > TALLY_ADDRESS_MAX) {
        return -1;
    }
    for (size_t i = 0; i < *n; i++) {
        if (strlen(probes[i].address) == len && memcmp(probes[i].address, address, len) == 0) {
            return 0;
        }
    }
    if (*n < STATUS_ADDRESSES_MAX) {
        memset(&probes[*n], 0, sizeof(probes[*n]));
        memcpy(probes[*n].address, address, len);
        probes[*n].address[len] = '\0';
        (*n)++;
    }
    return 0;
}

/* Probe every address not probed yet, all at once (one thread each; inline if a thread
 * cannot be made). */
static void probe_round(struct probe *probes, size_t n, struct tally *c, int64_t deadline_ms)
{
    pthread_t threads[STATUS_ADDRESSES_MAX];
    bool started[STATUS_ADDRESSES_MAX] = {false};
    for (size_t i = 0; i < n; i++) {
        if (probes[i].probed) {
            continue;
        }
        probes[i].c = c;
        probes[i].deadline_ms = deadline_ms;
        started[i] = pthread_create(&threads[i], NULL, probe_run, &probes[i]) == 0;
        if (!started[i]) {
            probe_run(&probes[i]);
        }
    }
    for (size_t i = 0; i < n; i++) {
        if (started[i]) {
            pthread_join(threads[i], NULL);
        }
        probes[i].probed = true;
    }
}

/* One row of the cluster status table. */
struct status_row {
    uint64_t id; /* 0: unknown */
    const char *address;
    const struct probe *p;        /* NULL: a member no probe reached */
    const struct tally_member *m; /* its entry in some answer's member list, or NULL */
};

/* qsort order of status rows: by node id, unknown ids last, then by address. */
static int row_cmp(const void *a, const void *b)
{
    const struct status_row *x = a, *y = b;
    if ((x->id == 0) != (y->id == 0)) {
        return x->id == 0 ? 1 : -1;
    }
    if (x->id != y->id) {
        return x->id < y->id ? -1 : 1;
    }
    return strcmp(x->address, y->address);
}

/* The member entry for node `id` (or, with id 0, for client address `address`) in any
 * answered probe's member list; NULL if none. */
static const struct tally_member *find_member(const struct probe *probes, size_t n, uint64_t id,
                                              const char *address)
{
    for (size_t i = 0; i < n; i++) {
        if (probes[i].rc != 0) {
            continue;
        }
        uint32_t nm = probes[i].st.n_members;
        for (uint32_t j = 0; j < nm && j < TALLY_MEMBERS_MAX; j++) {
            const struct tally_member *m = &probes[i].st.members[j];
            if ((id != 0 && m->id == id) ||
                (id == 0 && address != NULL && strcmp(m->client_address, address) == 0)) {
                return m;
            }
        }
    }
    return NULL;
}

/* Whether rows[0 .. n) already has node `id` (never for id 0). */
static bool rows_have(const struct status_row *rows, size_t n, uint64_t id)
{
    for (size_t i = 0; i < n; i++) {
        if (id != 0 && rows[i].id == id) {
            return true;
        }
    }
    return false;
}

/* Print the status rows as a table or a JSON array. */
static void print_status(struct ctl__ctx *x, const struct status_row *rows, size_t n)
{
    if (x->json) {
        struct ctl__jw w;
        ctl__jw_init(&w, stdout);
        ctl__jw_open(&w, NULL, '[');
        for (size_t i = 0; i < n; i++) {
            const struct status_row *r = &rows[i];
            bool up = r->p != NULL && r->p->rc == 0;
            ctl__jw_open(&w, NULL, '{');
            ctl__jw_u64_or_null(&w, "id", r->id != 0, r->id);
            ctl__jw_str_or_null(&w, "address", r->address);
            ctl__jw_str(&w, "role",
                        up     ? tally_raft_state_name(r->p->st.raft_state)
                        : r->p ? "down"
                               : "unknown");
            if (r->m != NULL) {
                ctl__jw_str(&w, "member", tally_member_role_name(r->m->role));
            } else {
                ctl__jw_null(&w, "member");
            }
            if (up) {
                ctl__jw_u64(&w, "term", r->p->st.term);
                ctl__jw_u64(&w, "commit", r->p->st.commit_index);
                ctl__jw_u64(&w, "applied", r->p->st.applied_index);
                ctl__jw_bool(&w, "serving", r->p->st.serving != 0);
                ctl__jw_u64_or_null(&w, "leader_id", r->p->st.leader_id != 0, r->p->st.leader_id);
                ctl__jw_i64(&w, "ledger_now_ms", r->p->st.ledger_now_ms);
                ctl__jw_null(&w, "error");
            } else {
                ctl__jw_null(&w, "term");
                ctl__jw_null(&w, "commit");
                ctl__jw_null(&w, "applied");
                ctl__jw_null(&w, "serving");
                ctl__jw_null(&w, "leader_id");
                ctl__jw_null(&w, "ledger_now_ms");
                if (r->p != NULL) {
                    char err[TALLY_MESSAGE_MAX + 64];
                    snprintf(err, sizeof(err), "%s%s%s", tally_strerror(r->p->rc),
                             r->p->res.message[0] ? ": " : "", r->p->res.message);
                    ctl__jw_str(&w, "error", err);
                } else {
                    ctl__jw_str(&w, "error", "no client address known");
                }
            }
            ctl__jw_close(&w, '}');
        }
        ctl__jw_close(&w, ']');
        ctl__jw_line(&w);
        return;
    }
    static const char *const headers[] = {"ID",      "ADDRESS", "ROLE",   "TERM", "COMMIT",
                                          "APPLIED", "SERVING", "MEMBER", "NOTE"};
    bool notes = false; /* the NOTE column only when some node did not answer */
    for (size_t i = 0; i < n; i++) {
        notes = notes || rows[i].p == NULL || rows[i].p->rc != 0;
    }
    struct ctl__table t;
    ctl__table_init(&t, notes ? "rllrrrlll" : "rllrrrll", headers);
    for (size_t i = 0; i < n; i++) {
        const struct status_row *r = &rows[i];
        bool up = r->p != NULL && r->p->rc == 0;
        if (r->id != 0) {
            ctl__table_add(&t, "%" PRIu64, r->id);
        } else {
            ctl__table_add(&t, "-");
        }
        ctl__table_add(&t, "%s", r->address[0] ? r->address : "-");
        ctl__table_add(&t, "%s",
                       up     ? tally_raft_state_name(r->p->st.raft_state)
                       : r->p ? "down"
                              : "unknown");
        if (up) {
            ctl__table_add(&t, "%" PRIu64, r->p->st.term);
            ctl__table_add(&t, "%" PRIu64, r->p->st.commit_index);
            ctl__table_add(&t, "%" PRIu64, r->p->st.applied_index);
            ctl__table_add(&t, "%s", r->p->st.serving ? "yes" : "no");
        } else {
            for (int k = 0; k < 4; k++) {
                ctl__table_add(&t, "-");
            }
        }
        ctl__table_add(&t, "%s", r->m != NULL ? tally_member_role_name(r->m->role) : "-");
        if (!notes) {
            continue;
        } else if (up) {
            ctl__table_add(&t, "%s", "");
        } else if (r->p != NULL) {
            ctl__table_add(&t, "%s", tally_strerror(r->p->rc));
        } else {
            ctl__table_add(&t, "no client address known");
        }
    }
    (void)ctl__table_finish(x, &t);
}

int ctl__cmd_cluster_status(struct ctl__ctx *x)
{
    static struct probe probes[STATUS_ADDRESSES_MAX];
    struct status_row rows[2 * STATUS_ADDRESSES_MAX];
    size_t n = 0, nrows = 0;
    int rc = ctl__ctx_client(x);
    if (rc != 0) {
        return rc;
    }
    const char *endpoints = ctl__option_or_env(x, CTL_OPT_ENDPOINTS, "TALLY_ENDPOINTS");
    for (const char *p = endpoints; *p != '\0';) {
        size_t len = strcspn(p, ",");
        if (probe_add(probes, &n, p, len) != 0) {
            return ctl__usage_error(x, "endpoints: '%.*s' is not HOST:PORT", (int)len, p);
        }
        p += len + (p[len] == ',');
    }
    int64_t deadline_ms = x->timeout_ms > 0 ? x->timeout_ms : CTL_STATUS_DEADLINE_MS;
    for (int round = 0; round < STATUS_ROUNDS_MAX; round++) {
        size_t before = n;
        probe_round(probes, n, x->c, deadline_ms);
        for (size_t i = 0; i < before; i++) {
            for (uint32_t j = 0;
                 probes[i].rc == 0 && j < probes[i].st.n_members && j < TALLY_MEMBERS_MAX; j++) {
                const char *ca = probes[i].st.members[j].client_address;
                (void)probe_add(probes, &n, ca, strnlen(ca, TALLY_ADDRESS_MAX + 1));
            }
        }
        if (n == before) {
            break;
        }
    }
    /* Rows: answered nodes first (one per node id, whatever address reached it), then
     * addresses that failed, then members that no address of ours reached. */
    int first_error = 0;
    bool any_up = false;
    for (size_t i = 0; i < n; i++) {
        if (probes[i].rc == 0 && probes[i].probed &&
            !rows_have(rows, nrows, probes[i].st.node_id)) {
            uint64_t id = probes[i].st.node_id;
            rows[nrows++] = (struct status_row){id, probes[i].address, &probes[i],
                                                find_member(probes, n, id, NULL)};
            any_up = true;
        }
    }
    for (size_t i = 0; i < n; i++) {
        if (probes[i].rc != 0 && probes[i].probed) {
            const struct tally_member *m = find_member(probes, n, 0, probes[i].address);
            uint64_t id = m != NULL ? m->id : 0;
            if (first_error == 0 || ctl__exit_code_of(first_error) == CTL_UNAVAILABLE) {
                first_error = probes[i].rc;
            }
            if (!rows_have(rows, nrows, id)) {
                rows[nrows++] = (struct status_row){id, probes[i].address, &probes[i], m};
            }
        }
    }
    for (size_t i = 0; i < n; i++) {
        for (uint32_t j = 0; probes[i].rc == 0 && j < probes[i].st.n_members &&
                             j < TALLY_MEMBERS_MAX && nrows < 2 * STATUS_ADDRESSES_MAX;
             j++) {
            const struct tally_member *m = &probes[i].st.members[j];
            if (!rows_have(rows, nrows, m->id)) {
                rows[nrows++] = (struct status_row){m->id, m->client_address, NULL, m};
            }
        }
    }
    qsort(rows, nrows, sizeof(rows[0]), row_cmp);
    print_status(x, rows, nrows);
    if (!any_up) {
        struct tally_result res = {0};
        if (first_error == 0) {
            first_error = -TALLY_EUNAVAILABLE;
        }
        snprintf(res.message, sizeof(res.message), "no node answered");
        return ctl__call_failed(x, NULL, first_error, &res, NULL);
    }
    return CTL_OK;
}

/* ---- Membership. ---- */

/* Parse a node id (> 0). */
static int parse_node_id(struct ctl__ctx *x, const char *s, uint64_t *id)
{
    return ctl__parse_uint(x, "ID", s, 1, UINT64_MAX, id);
}

/*
 * Print the answer to a membership change of node `id` (0: none named) that returned `rc`.
 * These carry no request id, so a failure after UNAVAILABLE says to look before repeating.
 * Returns the exit code.
 */
static int member_answer(struct ctl__ctx *x, const char *action, uint64_t id, int rc,
                         const struct tally_result *res)
{
    if (rc < 0) {
        return ctl__call_failed(x, NULL, rc, res,
                                ctl__exit_code_of(rc) == CTL_UNAVAILABLE
                                    ? "check 'tallyctl cluster status' before repeating it"
                                    : NULL);
    }
    if (x->json) {
        struct ctl__jw w;
        ctl__jw_object_begin(&w);
        ctl__jw_bool(&w, "ok", true);
        ctl__jw_str(&w, "action", action);
        ctl__jw_u64_or_null(&w, "node_id", id != 0, id);
        ctl__jw_object_end(&w);
    } else if (id != 0) {
        printf("node %" PRIu64 ": %s\n", id, action);
    } else {
        printf("%s\n", action);
    }
    return CTL_OK;
}

int ctl__cmd_cluster_transfer(struct ctl__ctx *x)
{
    uint64_t id = 0;
    if (x->n_words == 1 && parse_node_id(x, x->words[0], &id) != 0) {
        return CTL_USAGE;
    }
    int rc = ctl__ctx_client(x);
    if (rc != 0) {
        return rc;
    }
    struct tally_result res = {0};
    rc = tally_leader_transfer(x->c, id, x->timeout_ms, &res);
    return member_answer(x, "leadership transferred", id, rc, &res);
}

int ctl__cmd_cluster_add(struct ctl__ctx *x)
{
    uint64_t id;
    const char *peer = x->words[1];
    if (parse_node_id(x, x->words[0], &id) != 0) {
        return CTL_USAGE;
    }
    const char *colon = strrchr(peer, ':');
    if (strlen(peer) > TALLY_ADDRESS_MAX || colon == NULL || colon == peer || colon[1] == '\0' ||
        strspn(colon + 1, "0123456789") != strlen(colon + 1)) {
        return ctl__usage_error(x, "PEER_ADDR: '%s' is not HOST:PORT (at most %d bytes)", peer,
                                TALLY_ADDRESS_MAX);
    }
    int rc = ctl__ctx_client(x);
    if (rc != 0) {
        return rc;
    }
    struct tally_result res = {0};
    rc = tally_member_add(x->c, id, peer, x->timeout_ms, &res);
    return member_answer(x, "added", id, rc, &res);
}

int ctl__cmd_cluster_remove(struct ctl__ctx *x)
{
    uint64_t id;
    if (parse_node_id(x, x->words[0], &id) != 0) {
        return CTL_USAGE;
    }
    int rc = ctl__ctx_client(x);
    if (rc != 0) {
        return rc;
    }
    struct tally_result res = {0};
    rc = tally_member_remove(x->c, id, x->timeout_ms, &res);
    return member_answer(x, "removed", id, rc, &res);
}
