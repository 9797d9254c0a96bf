/*
 * tallyd_scope_test.c: two tenants on a real three-node tallyd cluster, each with a
 * gateway token scoped to its own root (cluster.c's token file), over the raw protocol.
 *
 *   tallyd_scope_test <path to tallyd> [<path to tallyctl>]
 *
 * Every cross-scope operation of one gateway against the other's accounts (reserve by
 * account and by key; settle, void and extend of the other's reservation; account show
 * and list; reservations; journal; HASH) is refused or filtered, and the refused ones
 * change nothing: every node's state hash is what it was before them, and the other
 * tenant's counters, its open reservations and the journal, as the unscoped admin sees
 * them, are as they were. A scoped admin may work only under its root, and
 * list cursors page through long listings without gaps or repeats. Given tallyctl, a
 * scoped gateway's tallyctl is refused the other's account (exit 3, "forbidden") and
 * lists only its own root.
 */
#define _GNU_SOURCE
#include "cluster.h"

#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#define BIG_MICROS 1000000000000000LL /* 10^15: the settle of the audit's finding */

static uint64_t next_rid = 1;

static void fill_rid(uint8_t id[LEDGER_REQUEST_ID_SIZE])
{
    memset(id, 0, LEDGER_REQUEST_ID_SIZE);
    uint64_t v = next_rid++;
    memcpy(id, &v, sizeof(v));
    id[15] = 0x5c;
}

/* A connection to the leader, authenticated with `token`. */
static void open_as(struct rc *c, const char *token)
{
    int leader = cl_leader(10000);
    if (leader < 0 || rc_open(c, leader) != 0 || rc_hello(c, token) != RPC_OK) {
        H_FAIL("cannot open a connection to the leader");
    }
}

/* Write `cmd`; the answer's status (RPC_*), the ledger's status in *ledger_status. */
static int write_cmd(struct rc *c, const struct ledger_cmd *cmd, int *ledger_status)
{
    struct rpc_request req = {.op = RPC_OP_WRITE};
    struct rpc_response resp;
    req.u.write = *cmd;
    if (rc_call(c, &req, &resp) != 0) {
        H_FAIL("no answer to a write");
    }
    *ledger_status = resp.status == RPC_OK ? resp.u.write.result.status : 1;
    return resp.status;
}

/* The write must commit with ledger status `want`. */
static void expect_write(struct rc *c, const struct ledger_cmd *cmd, int want, const char *what)
{
    int got;
    int status = write_cmd(c, cmd, &got);
    if (status != RPC_OK || got != want) {
        H_FAIL("%s: answer %s, ledger %d (%s), want ledger %d", what, rpc_status_name(status), got,
               ledger_error_name(got), want);
    }
    h_say("ok: %s: %s", what, want == 0 ? "ok" : ledger_error_name(want));
}

static struct ledger_cmd create_cmd(const char *name, const char *parent, int64_t budget)
{
    struct ledger_cmd cmd = {.type = LEDGER_CMD_ACCOUNT_CREATE};
    fill_rid(cmd.request_id);
    snprintf(cmd.u.create.name, sizeof(cmd.u.create.name), "%s", name);
    snprintf(cmd.u.create.parent, sizeof(cmd.u.create.parent), "%s", parent);
    if (budget > 0) {
        cmd.u.create.limits.set = LEDGER_LIM_BUDGET;
        cmd.u.create.limits.budget_micros = budget;
    }
    return cmd;
}

static void key_hash(const char *secret, uint8_t out[LEDGER_KEY_HASH_SIZE])
{
    SHA256((const unsigned char *)secret, strlen(secret), out); /* as libtally hashes a key */
}

static struct ledger_cmd key_add_cmd(const char *account, const char *secret)
{
    struct ledger_cmd cmd = {.type = LEDGER_CMD_KEY_ADD};
    fill_rid(cmd.request_id);
    snprintf(cmd.u.key.account, sizeof(cmd.u.key.account), "%s", account);
    key_hash(secret, cmd.u.key.key_hash);
    return cmd;
}

static struct ledger_cmd reserve_cmd(const char *account, const char *key_secret)
{
    struct ledger_cmd cmd = {.type = LEDGER_CMD_RESERVE};
    fill_rid(cmd.request_id);
    if (account != NULL) {
        cmd.u.reserve.by_account = 1;
        snprintf(cmd.u.reserve.account, sizeof(cmd.u.reserve.account), "%s", account);
    } else {
        key_hash(key_secret, cmd.u.reserve.key_hash);
    }
    cmd.u.reserve.estimate_micros = 1000;
    cmd.u.reserve.ttl_ms = 600000;
    return cmd;
}

static struct ledger_cmd resolve_cmd(uint8_t type, const uint8_t id[LEDGER_REQUEST_ID_SIZE])
{
    struct ledger_cmd cmd = {.type = type};
    memcpy(cmd.request_id, id, LEDGER_REQUEST_ID_SIZE);
    if (type == LEDGER_CMD_SETTLE) {
        cmd.u.settle.actual_micros = BIG_MICROS;
    } else if (type == LEDGER_CMD_EXTEND) {
        cmd.u.extend.ttl_ms = 3600000;
    }
    return cmd;
}

/* ---- Reads. ---- */

/* Send a read; its answer's status. The caller frees resp with rpc_response_free(). */
static int read_req(struct rc *c, struct rpc_request *req, struct rpc_response *resp)
{
    if (rc_call(c, req, resp) != 0) {
        H_FAIL("no answer to %s", rpc_op_name(req->op));
    }
    return resp->status;
}

static int account_get(struct rc *c, const char *name, struct ledger_account_info *out)
{
    struct rpc_request req = {.op = RPC_OP_ACCOUNT_GET};
    struct rpc_response resp;
    snprintf(req.u.get.name, sizeof(req.u.get.name), "%s", name);
    int status = read_req(c, &req, &resp);
    if (status == RPC_OK && out != NULL) {
        *out = resp.u.account;
    }
    return status;
}

/* One page of list `op` filtered by `filter` after `cursor` (len 0: the first page). */
static int list_page(struct rc *c, int op, const char *filter, const uint8_t *cursor,
                     uint16_t cursor_len, uint32_t limit, struct rpc_response *resp)
{
    struct rpc_request req = {.op = (uint8_t)op};
    snprintf(req.u.list.filter, sizeof(req.u.list.filter), "%s", filter);
    if (cursor_len > 0) {
        memcpy(req.u.list.cursor, cursor, cursor_len);
    }
    req.u.list.cursor_len = cursor_len;
    req.u.list.limit = limit;
    req.u.list.until_ms = 0;
    return read_req(c, &req, resp);
}

/* Every item of list `op` (no filter), page by page of `limit`, as one text per item
 * ("name" or "seq:account") joined into `out`; returns the item count. */
static size_t list_all(struct rc *c, int op, uint32_t limit, char *out, size_t size)
{
    uint8_t cursor[RPC_CURSOR_MAX];
    uint16_t cursor_len = 0;
    size_t n = 0;
    out[0] = '\0';
    for (int pages = 0; pages < 1000; pages++) {
        struct rpc_response resp;
        if (list_page(c, op, "", cursor, cursor_len, limit, &resp) != RPC_OK) {
            H_FAIL("%s: %s", rpc_op_name(op), resp.message);
        }
        for (uint32_t i = 0; i < resp.u.list.n; i++) {
            size_t used = strlen(out);
            if (op == RPC_OP_ACCOUNT_LIST) {
                snprintf(out + used, size - used, "%s ", resp.u.list.items.accounts[i].name);
            } else if (op == RPC_OP_RESV_LIST) {
                snprintf(out + used, size - used, "%s ", resp.u.list.items.reservations[i].account);
            } else {
                snprintf(out + used, size - used, "%llu:%s ",
                         (unsigned long long)resp.u.list.items.entries[i].seq,
                         resp.u.list.items.entries[i].account);
            }
            n++;
        }
        bool last = resp.u.list.next_len == 0;
        if (!last &&
            (resp.u.list.n != limit || (resp.u.list.next_len == cursor_len &&
                                        memcmp(resp.u.list.next, cursor, cursor_len) == 0))) {
            H_FAIL("%s: a page with a cursor that does not move on", rpc_op_name(op));
        }
        memcpy(cursor, resp.u.list.next, resp.u.list.next_len);
        cursor_len = resp.u.list.next_len;
        rpc_response_free(&resp);
        if (last) {
            return n;
        }
    }
    H_FAIL("%s: more than 1000 pages", rpc_op_name(op));
}

static int hash_status(const char *token)
{
    struct rc c;
    struct rpc_request req = {.op = RPC_OP_HASH};
    struct rpc_response resp;
    open_as(&c, token);
    int status = read_req(&c, &req, &resp);
    rc_close(&c);
    return status;
}

/* What the unscoped admin sees of org-b: its counters, open reservations, journal. */
struct view {
    struct ledger_account_info org_b, b_team;
    char resv[4096], journal[16384];
    size_t n_resv, n_journal;
};

static void view_of(struct view *v)
{
    struct rc c;
    open_as(&c, CL_ADMIN_TOKEN);
    if (account_get(&c, "org-b", &v->org_b) != RPC_OK ||
        account_get(&c, "b-team", &v->b_team) != RPC_OK) {
        H_FAIL("the admin cannot read org-b");
    }
    v->n_resv = list_all(&c, RPC_OP_RESV_LIST, RPC_LIST_MAX, v->resv, sizeof(v->resv));
    v->n_journal = list_all(&c, RPC_OP_JOURNAL, RPC_LIST_MAX, v->journal, sizeof(v->journal));
    rc_close(&c);
}

static void check_same_view(const struct view *a, const struct view *b)
{
    const struct ledger_account_info *x[2] = {&a->org_b, &a->b_team};
    const struct ledger_account_info *y[2] = {&b->org_b, &b->b_team};
    for (int i = 0; i < 2; i++) {
        if (x[i]->held_micros != y[i]->held_micros || x[i]->spent_micros != y[i]->spent_micros ||
            x[i]->inflight != y[i]->inflight ||
            x[i]->limits.budget_micros != y[i]->limits.budget_micros) {
            H_FAIL("%s changed: held %lld -> %lld, spent %lld -> %lld", x[i]->name,
                   (long long)x[i]->held_micros, (long long)y[i]->held_micros,
                   (long long)x[i]->spent_micros, (long long)y[i]->spent_micros);
        }
    }
    if (a->n_resv != b->n_resv || strcmp(a->resv, b->resv) != 0) {
        H_FAIL("open reservations changed: %s -> %s", a->resv, b->resv);
    }
    if (a->n_journal != b->n_journal || strcmp(a->journal, b->journal) != 0) {
        H_FAIL("the journal changed: %zu -> %zu entries", a->n_journal, b->n_journal);
    }
    h_say("ok: org-b's counters, open reservations and the journal are unchanged");
}

/* ---- The cases. ---- */

static uint8_t rid_a[LEDGER_REQUEST_ID_SIZE], rid_b[LEDGER_REQUEST_ID_SIZE];

static void setup_tenants(void)
{
    struct rc c;
    open_as(&c, CL_ADMIN_TOKEN);
    struct ledger_cmd cmds[] = {
        create_cmd("org-a", "", 1000000000), create_cmd("a-team", "org-a", 0),
        create_cmd("org-b", "", 1000000000), create_cmd("b-team", "org-b", 0),
        key_add_cmd("a-team", "key-a"),      key_add_cmd("b-team", "key-b"),
    };
    for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++) {
        expect_write(&c, &cmds[i], LEDGER_OK, "admin sets up the tenants");
    }
    rc_close(&c);
    struct ledger_cmd ra = reserve_cmd("a-team", NULL), rb = reserve_cmd(NULL, "key-b");
    memcpy(rid_a, ra.request_id, sizeof(rid_a));
    memcpy(rid_b, rb.request_id, sizeof(rid_b));
    open_as(&c, CL_GATEWAY_A_TOKEN);
    expect_write(&c, &ra, LEDGER_OK, "gateway A reserves on its own account");
    rc_close(&c);
    open_as(&c, CL_GATEWAY_B_TOKEN);
    expect_write(&c, &rb, LEDGER_OK, "gateway B reserves by its own key");
    rc_close(&c);
}

/* Gateway `token` (scope `mine`) against the tenant whose accounts are `root`, `team`,
 * key `key` and open reservation `rid`. */
static void cross_writes(const char *token, const char *root, const char *team, const char *key,
                         const uint8_t *rid)
{
    struct rc c;
    open_as(&c, token);
    struct ledger_cmd by_account = reserve_cmd(team, NULL), by_root = reserve_cmd(root, NULL);
    struct ledger_cmd by_key = reserve_cmd(NULL, key), nowhere = reserve_cmd("no-such", NULL);
    struct ledger_cmd settle = resolve_cmd(LEDGER_CMD_SETTLE, rid);
    struct ledger_cmd cancel = resolve_cmd(LEDGER_CMD_VOID, rid);
    struct ledger_cmd extend = resolve_cmd(LEDGER_CMD_EXTEND, rid);
    expect_write(&c, &by_account, -LEDGER_EFORBIDDEN, "reserve on the other's team");
    expect_write(&c, &by_root, -LEDGER_EFORBIDDEN, "reserve on the other's root");
    expect_write(&c, &by_key, -LEDGER_EFORBIDDEN, "reserve by the other's key");
    expect_write(&c, &nowhere, -LEDGER_EFORBIDDEN, "reserve on an account nobody has");
    expect_write(&c, &settle, -LEDGER_EFORBIDDEN, "settle of the other's reservation at 10^15");
    expect_write(&c, &cancel, -LEDGER_EFORBIDDEN, "void of the other's reservation");
    expect_write(&c, &extend, -LEDGER_EFORBIDDEN, "extend of the other's reservation");
    /* A scoped credential can never send an unscoped command: the server writes the
     * connection's scope over whatever the client put there. */
    snprintf(by_account.scope, sizeof(by_account.scope), "%s", "");
    fill_rid(by_account.request_id);
    expect_write(&c, &by_account, -LEDGER_EFORBIDDEN, "reserve claiming no scope");
    rc_close(&c);
}

static void cross_reads(const char *token, const char *mine, const char *root, const char *team,
                        const uint8_t *rid)
{
    struct rc c;
    struct rpc_response resp;
    char text[16384];
    open_as(&c, token);
    if (account_get(&c, team, NULL) != RPC_EFORBIDDEN ||
        account_get(&c, root, NULL) != RPC_EFORBIDDEN ||
        account_get(&c, "no-such", NULL) != RPC_EFORBIDDEN || account_get(&c, mine, NULL) != 0) {
        H_FAIL("account show across scopes was not refused (or its own was)");
    }
    struct rpc_request get = {.op = RPC_OP_RESV_GET};
    memcpy(get.u.get.request_id, rid, LEDGER_REQUEST_ID_SIZE);
    if (read_req(&c, &get, &resp) != RPC_EFORBIDDEN) {
        H_FAIL("reservation show across scopes was not refused");
    }
    char want[32];
    snprintf(want, sizeof(want), "%s ", mine);
    list_all(&c, RPC_OP_ACCOUNT_LIST, RPC_LIST_MAX, text, sizeof(text));
    if (strcmp(text, want) != 0) {
        H_FAIL("the roots listed to a scoped gateway: '%s', want only %s", text, mine);
    }
    size_t n = list_all(&c, RPC_OP_RESV_LIST, RPC_LIST_MAX, text, sizeof(text));
    if (n != 1 || strstr(text, team) != NULL) {
        H_FAIL("the reservations listed to a scoped gateway: '%s'", text);
    }
    n = list_all(&c, RPC_OP_JOURNAL, RPC_LIST_MAX, text, sizeof(text));
    char other[32];
    snprintf(other, sizeof(other), ":%s ", team);
    if (n == 0 || strstr(text, other) != NULL) {
        H_FAIL("the journal listed to a scoped gateway: '%s'", text);
    }
    snprintf(other, sizeof(other), ":%s ", root);
    if (strstr(text, other) != NULL) {
        H_FAIL("the journal listed to a scoped gateway names %s: '%s'", root, text);
    }
    const int ops[3] = {RPC_OP_ACCOUNT_LIST, RPC_OP_RESV_LIST, RPC_OP_JOURNAL};
    for (int i = 0; i < 3; i++) {
        if (list_page(&c, ops[i], i == 0 ? root : team, NULL, 0, 10, &resp) != RPC_EFORBIDDEN) {
            H_FAIL("%s filtered on the other's account was not refused", rpc_op_name(ops[i]));
        }
        rpc_response_free(&resp);
    }
    rc_close(&c);
    h_say("ok: %s sees only %s: shows refused, lists filtered", token, mine);
}

static void scoped_admin(void)
{
    struct rc c;
    open_as(&c, CL_ADMIN_A_TOKEN);
    struct ledger_cmd root = create_cmd("org-c", "", 0), other = create_cmd("b-sub", "org-b", 0);
    struct ledger_cmd own = create_cmd("a-sub", "a-team", 0);
    expect_write(&c, &root, -LEDGER_EFORBIDDEN, "scoped admin creates a root");
    expect_write(&c, &other, -LEDGER_EFORBIDDEN, "scoped admin creates under org-b");
    expect_write(&c, &own, LEDGER_OK, "scoped admin creates under org-a");
    struct rpc_request transfer = {.op = RPC_OP_MEMBERSHIP};
    struct rpc_response resp;
    transfer.u.membership.kind = RPC_MEMBER_TRANSFER;
    if (read_req(&c, &transfer, &resp) != RPC_EFORBIDDEN) {
        H_FAIL("a scoped admin was not refused a leadership transfer");
    }
    h_say("ok: scoped admin refused a membership change");
    rc_close(&c);
}

static void list_cursors_page_without_gaps(void)
{
    struct rc c;
    open_as(&c, CL_ADMIN_TOKEN);
    for (int i = 0; i < 40; i++) {
        char name[32];
        snprintf(name, sizeof(name), "page-%02d", i);
        struct ledger_cmd cmd = create_cmd(name, "", 0);
        int status;
        if (write_cmd(&c, &cmd, &status) != RPC_OK || status != LEDGER_OK) {
            H_FAIL("create %s", name);
        }
        struct ledger_cmd hold = reserve_cmd(name, NULL);
        hold.u.reserve.ttl_ms += i % 3; /* ties in expiry are ordered by request id */
        if (i < 12 && (write_cmd(&c, &hold, &status) != RPC_OK || status != LEDGER_OK)) {
            H_FAIL("reserve on %s", name);
        }
    }
    static char whole[65536], paged[65536];
    const int ops[3] = {RPC_OP_ACCOUNT_LIST, RPC_OP_RESV_LIST, RPC_OP_JOURNAL};
    for (int i = 0; i < 3; i++) {
        size_t n = list_all(&c, ops[i], RPC_LIST_MAX, whole, sizeof(whole));
        for (uint32_t limit = 1; limit <= 7; limit += 3) {
            size_t m = list_all(&c, ops[i], limit, paged, sizeof(paged));
            if (m != n || strcmp(whole, paged) != 0) {
                H_FAIL("%s in pages of %u: %zu items, want %zu", rpc_op_name(ops[i]), limit, m, n);
            }
        }
        h_say("ok: %s: %zu items, the same in pages of 1, 4 and 7", rpc_op_name(ops[i]), n);
    }
    struct rpc_response resp;
    uint8_t bad[3] = {1, 2, 3};
    if (list_page(&c, RPC_OP_JOURNAL, "", bad, sizeof(bad), 5, &resp) != RPC_EBADREQ) {
        H_FAIL("a journal cursor of the wrong shape was not refused");
    }
    rc_close(&c);
}

/* tallyctl with `token` running `args`: its exit status; stdout and stderr in `out`. */
static int tallyctl_run(const char *tallyctl, const char *token, const char *args, char *out,
                        size_t size)
{
    char endpoints[256], cmd[2 * PATH_MAX + 1024], path[PATH_MAX];
    cl_endpoints(endpoints, sizeof(endpoints));
    snprintf(path, sizeof(path), "%s/tallyctl.out", h_dir);
    /* The token travels in the environment: on the command line tallyctl warns. */
    snprintf(cmd, sizeof(cmd), "TALLY_TOKEN='%s' %s --endpoints %s %s > %s 2>&1", token, tallyctl,
             endpoints, args, path);
    int rv = system(cmd);
    FILE *f = fopen(path, "r");
    size_t n = f != NULL ? fread(out, 1, size - 1, f) : 0;
    out[n] = '\0';
    if (f != NULL) {
        fclose(f);
    }
    return rv != -1 && WIFEXITED(rv) ? WEXITSTATUS(rv) : -1;
}

static void tallyctl_scoped(const char *tallyctl)
{
    static char out[1 << 18];
    int rv = tallyctl_run(tallyctl, CL_GATEWAY_A_TOKEN, "account show b-team", out, sizeof(out));
    if (rv != 3 || strstr(out, "forbidden") == NULL) {
        H_FAIL("tallyctl account show across scopes: exit %d, '%s'", rv, out);
    }
    rv = tallyctl_run(tallyctl, CL_GATEWAY_A_TOKEN, "--json account list", out, sizeof(out));
    if (rv != 0 || strstr(out, "\"org-a\"") == NULL || strstr(out, "org-b") != NULL ||
        strstr(out, "page-") != NULL) {
        H_FAIL("tallyctl account list with a scoped token: exit %d, '%s'", rv, out);
    }
    /* More roots than one page holds (TALLY_LIST_MAX): tallyctl follows the cursor. */
    struct rc c;
    open_as(&c, CL_ADMIN_TOKEN);
    for (int i = 0; i < 500; i++) {
        char name[32];
        snprintf(name, sizeof(name), "bulk-%03d", i);
        struct ledger_cmd cmd = create_cmd(name, "", 0);
        int status;
        if (write_cmd(&c, &cmd, &status) != RPC_OK || status != LEDGER_OK) {
            H_FAIL("create %s", name);
        }
    }
    rc_close(&c);
    rv = tallyctl_run(tallyctl, CL_ADMIN_TOKEN, "account list", out, sizeof(out));
    size_t rows = 0;
    for (const char *p = out; (p = strchr(p, '\n')) != NULL; p++) {
        rows++;
    }
    /* A header, then org-a, org-b, page-00..39 and bulk-000..499. */
    if (rv != 0 || rows != 1 + 2 + 40 + 500 || strstr(out, "bulk-499") == NULL ||
        strstr(out, "page-39") == NULL || strstr(out, "org-b") == NULL) {
        H_FAIL("tallyctl account list over two pages: exit %d, %zu rows", rv, rows);
    }
    h_say("ok: tallyctl: forbidden across scopes, scoped listings, 542 roots over two pages");
}

int main(int argc, char **argv)
{
    if (argc != 2 && argc != 3) {
        fprintf(stderr, "usage: %s <tallyd> [<tallyctl>]\n", argv[0]);
        return 2;
    }
    h_init("tally-scope-test", 150);
    cl_start(argv[1]);
    setup_tenants();
    struct view before, after;
    view_of(&before);
    char hash_before[65], hash_after[65];
    cl_converged(20000, 0, hash_before);
    cross_writes(CL_GATEWAY_A_TOKEN, "org-b", "b-team", "key-b", rid_b);
    cross_reads(CL_GATEWAY_A_TOKEN, "org-a", "org-b", "b-team", rid_b);
    cross_writes(CL_GATEWAY_B_TOKEN, "org-a", "a-team", "key-a", rid_a);
    cross_reads(CL_GATEWAY_B_TOKEN, "org-b", "org-a", "a-team", rid_a);
    if (hash_status(CL_GATEWAY_A_TOKEN) != RPC_EFORBIDDEN ||
        hash_status(CL_READER_TOKEN) != RPC_EFORBIDDEN ||
        hash_status(CL_ADMIN_A_TOKEN) != RPC_EFORBIDDEN || hash_status(CL_ADMIN_TOKEN) != RPC_OK) {
        H_FAIL("HASH is not for unscoped admins only");
    }
    h_say("ok: HASH refused to gateways, readers and a scoped admin");
    view_of(&after);
    check_same_view(&before, &after);
    cl_converged(20000, 0, hash_after);
    if (strcmp(hash_before, hash_after) != 0) {
        H_FAIL("the refused operations changed the state hash: %.16s... -> %.16s...",
               hash_before, hash_after);
    }
    h_say("ok: every node's state hash is unchanged by the refused operations (%.16s...)",
          hash_after);
    /* The owner still settles its reservation, as if nothing had happened. */
    struct rc c;
    open_as(&c, CL_GATEWAY_B_TOKEN);
    struct ledger_cmd settle = resolve_cmd(LEDGER_CMD_SETTLE, rid_b);
    settle.u.settle.actual_micros = 700;
    expect_write(&c, &settle, LEDGER_OK, "gateway B settles its own reservation");
    rc_close(&c);
    scoped_admin();
    list_cursors_page_without_gaps();
    if (argc == 3) {
        tallyctl_scoped(argv[2]);
    }
    char hash_hex[65];
    cl_converged(20000, 0, hash_hex);
    h_pass();
    return 0;
}
