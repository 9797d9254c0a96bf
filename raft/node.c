/*
 * node.c: the replicated node on raft_uv (see node.h for the contract): configuration,
 * open, start and close.
 *
 * The one idea: open builds the node bottom-up (the ledger and its adapter, then raft_uv
 * over the node's peer transport, TLS or plaintext, then libraft) and unwinds in reverse on
 * failure; close runs top-down from raft_close's callback, answering whatever is still waiting
 * before the handles, the ledger and the struct go. The concerns in between live in their own files
 * (raft/node_internal.h lists them).
 */
#include "raft/node_internal.h"

#include <assert.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- Configuration. ---- */

void node_config_init(struct node_config *c)
{
    memset(c, 0, sizeof(*c));
    c->election_timeout_ms = 1000;
    c->heartbeat_ms = 100;
    c->snapshot_threshold = 8192; /* a snapshot copies the whole ledger: not too often */
    c->snapshot_trailing = 1024;
    c->max_ledger_bytes = NODE_LEDGER_BYTES_DEFAULT;
}

static int config_check(const struct node_config *c, char *why, size_t size)
{
    if (c->id == 0 || c->dir == NULL || c->address == NULL || c->on_fatal == NULL) {
        snprintf(why, size, "id, dir, address and on_fatal are required");
    } else if (strlen(c->dir) + sizeof("/ledger") > NODE_DIR_MAX) {
        snprintf(why, size, "data directory path too long");
    } else if (strlen(c->address) >= NODE_ADDRESS_MAX) {
        snprintf(why, size, "address too long");
    } else if (c->n_members > NODE_MEMBERS_MAX || (c->bootstrap && c->n_members == 0)) {
        snprintf(why, size, "bootstrap needs 1..%d members", NODE_MEMBERS_MAX);
    } else if (c->heartbeat_ms == 0 || c->election_timeout_ms <= c->heartbeat_ms) {
        snprintf(why, size, "election timeout must exceed the heartbeat");
    } else if (c->peer_insecure == (c->peer_cert_file != NULL)) {
        snprintf(why, size, "choose peer TLS (certificate, key and CA) or peer_insecure");
    } else if (c->peer_cert_file != NULL && (c->peer_key_file == NULL || c->peer_ca_file == NULL)) {
        snprintf(why, size, "peer TLS needs a certificate, a key and a CA");
    } else if (c->snapshot_threshold == 0) {
        snprintf(why, size, "snapshot threshold must be positive");
    } else if (!node__storage_config_ok(c, why, size)) {
        return -NODE_EINVAL;
    } else {
        for (unsigned i = 0; i < c->n_members; i++) {
            const struct node_member *m = &c->members[i];
            if (m->id == 0 || memchr(m->address, '\0', NODE_ADDRESS_MAX) == NULL ||
                m->address[0] == '\0') {
                snprintf(why, size, "member %u has no id or address", i);
                return -NODE_EINVAL;
            }
        }
        return 0;
    }
    return -NODE_EINVAL;
}

/* ---- Open and start. ---- */

static int node_alloc(struct node **out, uv_loop_t *loop, const struct node_config *cfg)
{
    struct node *n = calloc(1, sizeof(*n));
    if (n == NULL) {
        return -NODE_ENOMEM;
    }
    n->queue = calloc(NODE_QUEUE_MAX, sizeof(*n->queue));
    n->props = calloc(NODE_QUEUE_MAX, sizeof(*n->props));
    n->spare = calloc(NODE_QUEUE_MAX, sizeof(*n->spare));
    if (n->queue == NULL || n->props == NULL || n->spare == NULL) {
        free(n->queue);
        free(n->props);
        free(n->spare);
        free(n);
        return -NODE_ENOMEM;
    }
    n->loop = loop;
    n->id = cfg->id;
    n->cfg = *cfg;
    snprintf(n->address, sizeof(n->address), "%s", cfg->address);
    snprintf(n->raft_dir, sizeof(n->raft_dir), "%s/raft", cfg->dir);
    n->cfg.address = n->address;
    n->cfg.dir = NULL; /* only raft_dir and the ledger's path are kept */
    n->cfg.peer_cert_file = n->cfg.peer_key_file = n->cfg.peer_ca_file = NULL; /* read once */
    *out = n;
    return 0;
}

static void node_free(struct node *n)
{
    free(n->queue);
    free(n->props);
    free(n->spare);
    free(n);
}

/* Whether member `id` may connect: it is in the latest configuration this node knows,
 * or this node knows none yet (it was started to join and waits to be contacted). */
static bool peer_is_member(void *data, uint64_t id)
{
    const struct node *n = data;
    const struct raft_configuration *c = &n->raft.configuration;
    for (unsigned i = 0; i < c->n; i++) {
        if (c->servers[i].id == id) {
            return true;
        }
    }
    return c->n == 0;
}

static void peer_log(void *data, const char *level, const char *text)
{
    node__logf(data, level, "%s", text);
}

/* The peer transport, raft_uv_init (auto-recovery off) and raft_init, unwound on failure. */
static int node_open_raft(struct node *n, const struct node_config *cfg, char *why, size_t size)
{
    int rv = node__make_dirs(n->raft_dir, why, size);
    if (rv != 0) {
        return rv;
    }
    struct node_peer_tls_config tls = {
        .cert_file = cfg->peer_cert_file,
        .key_file = cfg->peer_key_file,
        .ca_file = cfg->peer_ca_file,
        .is_member = peer_is_member,
        .log = peer_log,
        .data = n,
    };
    rv = node_transport_init(&n->transport, n->loop, cfg->peer_insecure ? NULL : &tls, why, size);
    if (rv != 0) {
        /* A certificate, key or CA that does not load is the caller's configuration. */
        return rv == RAFT_INVALID ? -NODE_EINVAL : node__from_raft(rv);
    }
    rv = raft_uv_init(&n->io, n->loop, n->raft_dir, &n->transport.outer);
    if (rv != 0) {
        snprintf(why, size, "raft_uv_init %.100s: %.130s", n->raft_dir, n->io.errmsg);
        node_transport_close(&n->transport);
        return node__from_raft(rv);
    }
    /* A corrupt or truncated segment must stop the node, not be silently dropped. */
    raft_uv_set_auto_recovery(&n->io, false);
    rv = raft_init(&n->raft, &n->io, &n->fsm.fsm, n->id, n->address);
    if (rv != 0) {
        snprintf(why, size, "raft_init: %s", raft_errmsg(&n->raft));
        raft_uv_close(&n->io);
        node_transport_close(&n->transport);
        return node__from_raft(rv);
    }
    n->raft.data = n;
    node_fsm_attach(&n->fsm, &n->raft);
    raft_set_election_timeout(&n->raft, n->cfg.election_timeout_ms);
    raft_set_heartbeat_timeout(&n->raft, n->cfg.heartbeat_ms);
    raft_set_pre_vote(&n->raft, true);
    raft_set_snapshot_threshold(&n->raft, n->cfg.snapshot_threshold);
    raft_set_snapshot_trailing(&n->raft, n->cfg.snapshot_trailing);
    return 0;
}

int node_open(struct node **out, uv_loop_t *loop, const struct node_config *cfg, char *errmsg)
{
    char why[NODE_ERRMSG_SIZE] = "";
    struct node *n = NULL;
    int rv = config_check(cfg, why, sizeof(why));
    if (rv == 0) {
        rv = node_alloc(&n, loop, cfg);
        if (rv != 0) {
            snprintf(why, sizeof(why), "out of memory");
        }
    }
    if (rv == 0) {
        rv = node__open_ledger(n, cfg->dir, why, sizeof(why));
        if (rv == 0) {
            rv = node_open_raft(n, cfg, why, sizeof(why));
            if (rv != 0) {
                node__close_ledger(n);
            }
        }
        if (rv != 0) {
            node_free(n);
        }
    }
    if (errmsg != NULL) {
        snprintf(errmsg, NODE_ERRMSG_SIZE, "%s", why);
    }
    if (rv == 0) {
        *out = n;
    }
    return rv;
}

static int node_bootstrap(struct node *n)
{
    struct raft_configuration conf;
    raft_configuration_init(&conf);
    int rv = 0;
    for (unsigned i = 0; i < n->cfg.n_members && rv == 0; i++) {
        const struct node_member *m = &n->cfg.members[i];
        rv = raft_configuration_add(&conf, m->id, m->address, RAFT_VOTER);
    }
    if (rv == 0) {
        rv = raft_bootstrap(&n->raft, &conf);
    }
    raft_configuration_close(&conf);
    if (rv == RAFT_CANTBOOTSTRAP) {
        node__logf(n, "info", "msg=\"restart: raft state exists, not bootstrapping\"");
        return 0;
    }
    if (rv != 0) {
        return node__error(n, -node__from_raft(rv), "bootstrap: %s (%s)", raft_strerror(rv),
                           raft_errmsg(&n->raft));
    }
    node__logf(n, "info", "msg=\"bootstrapped\" members=%u", n->cfg.n_members);
    return 0;
}

int node_start(struct node *n)
{
    assert(!n->started && !n->closing);
    int rv = uv_check_init(n->loop, &n->check);
    if (rv == 0) {
        rv = uv_idle_init(n->loop, &n->idle);
        if (rv != 0) {
            uv_close((uv_handle_t *)&n->check, NULL); /* closed before the loop runs on */
        }
    }
    if (rv != 0) {
        return node__error(n, NODE_EIO, "uv handle init: %s", uv_strerror(rv));
    }
    n->check.data = n;
    n->idle.data = n;
    n->handles = true;
    n->open_handles = 2;
    if (n->cfg.bootstrap) {
        rv = node_bootstrap(n);
        if (rv != 0) {
            return rv;
        }
    }
    rv = raft_start(&n->raft);
    if (rv != 0) {
        return node__error(n, -node__from_raft(rv), "raft_start: %s (%s)", raft_strerror(rv),
                           raft_errmsg(&n->raft));
    }
    n->started = true;
    rv = uv_check_start(&n->check, node__check_cb);
    if (rv != 0) {
        return node__error(n, NODE_EIO, "uv_check_start: %s", uv_strerror(rv));
    }
    node__logf(n, "info",
               "msg=\"started\" address=%s last_applied=%" PRIu64 " ledger_applied=%" PRIu64,
               n->address, (uint64_t)raft_last_applied(&n->raft), ledger_applied_index(n->ledger));
    return 0;
}

/* ---- Close. ---- */

static void node_finish_close(struct node *n)
{
    node_close_cb cb = n->close_cb;
    void *data = n->close_data;
    node__logf(n, "info", "msg=\"closed\"");
    node__close_ledger(n);
    node_free(n);
    if (cb != NULL) {
        cb(data);
    }
}

static void handle_close_cb(uv_handle_t *h)
{
    struct node *n = h->data;
    assert(n->open_handles > 0);
    if (--n->open_handles == 0) {
        node_finish_close(n);
    }
}

static void raft_closed_cb(struct raft *r)
{
    struct node *n = r->data;
    raft_uv_close(&n->io);
    node_transport_close(&n->transport);
    /* libraft failed its pending requests while closing; anything left is answered. */
    while (n->inflight_head != NULL) {
        struct node_batch *b = n->inflight_head;
        node__inflight_unlink(n, b);
        node__batch_finish(n, b, -NODE_ESHUTDOWN);
    }
    if (n->change != NULL) {
        node__change_finish(n->change, -NODE_ESHUTDOWN);
    }
    if (!n->handles) {
        node_finish_close(n);
        return;
    }
    uv_close((uv_handle_t *)&n->check, handle_close_cb);
    uv_close((uv_handle_t *)&n->idle, handle_close_cb);
}

void node_close(struct node *n, node_close_cb cb, void *data)
{
    assert(!n->closing);
    n->closing = true;
    n->close_cb = cb;
    n->close_data = data;
    n->ready = false;
    node__queue_fail(n, -NODE_ESHUTDOWN);
    raft_close(&n->raft, raft_closed_cb);
}
