/*
 * server.c: the client-facing server's life cycle (see server.h for the contract).
 *
 * The one idea: this file only builds, reports on and takes down the server; the work
 * is elsewhere (server_internal.h names the files). Starting checks the configuration
 * before anything is allocated and unwinds what it did on failure; closing stops the
 * listener and every connection at once, and the server is freed only when its last
 * connection's last reference is gone.
 */
#include "rpc/server_internal.h"
#include "rpc/tls.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int parse_ipv4(const char *address, struct sockaddr_in *sa)
{
    char host[64];
    const char *colon = strrchr(address, ':');
    char *end;
    if (colon == NULL || (size_t)(colon - address) >= sizeof(host)) {
        return -1;
    }
    long port = strtol(colon + 1, &end, 10);
    if (*end != '\0' || colon[1] == '\0' || port < 0 || port > 65535) {
        return -1;
    }
    snprintf(host, sizeof(host), "%.*s", (int)(colon - address), address);
    return uv_ip4_addr(host, (int)port, sa) == 0 ? 0 : -1;
}

int rpc_server_start(struct rpc_server **out, uv_loop_t *loop, struct node *node,
                     const struct rpc_server_config *cfg, char *errmsg, size_t size)
{
    struct sockaddr_in sa;
    if (cfg->address == NULL || parse_ipv4(cfg->address, &sa) != 0) {
        snprintf(errmsg, size, "client address \"%s\" is not IPv4 host:port",
                 cfg->address != NULL ? cfg->address : "");
        return -RPC_START_ECONFIG;
    }
    if (cfg->n_members > RPC_MEMBERS_MAX) {
        snprintf(errmsg, size, "at most %d members", RPC_MEMBERS_MAX);
        return -RPC_START_ECONFIG;
    }
    struct rpc_server *s = calloc(1, sizeof(*s));
    if (s == NULL ||
        (cfg->n_tokens > 0 && (s->tokens = malloc(cfg->n_tokens * sizeof(*s->tokens))) == NULL)) {
        free(s);
        snprintf(errmsg, size, "out of memory");
        return -RPC_START_ENOMEM;
    }
    if (cfg->n_tokens > 0) {
        memcpy(s->tokens, cfg->tokens, cfg->n_tokens * sizeof(*s->tokens));
    }
    s->n_tokens = cfg->n_tokens;
    s->log = cfg->log;
    memcpy(s->members, cfg->members, cfg->n_members * sizeof(*s->members));
    s->n_members = cfg->n_members;
    s->loop = loop;
    s->node = node;
    s->refs = 1;
    s->max_frame = cfg->max_frame != 0 ? cfg->max_frame : RPC_FRAME_MAX;
    s->max_inflight = cfg->max_inflight != 0 ? cfg->max_inflight : 4096;
    s->max_connections = cfg->max_connections != 0 ? cfg->max_connections : 4096;
    s->hello_timeout_ms = cfg->hello_timeout_ms != 0 ? cfg->hello_timeout_ms : RPC_HELLO_TIMEOUT_MS;
    s->idle_timeout_ms = cfg->idle_timeout_ms != 0 ? cfg->idle_timeout_ms : RPC_IDLE_TIMEOUT_MS;
    s->max_connections_per_address = cfg->max_connections_per_address;
    if (s->max_connections_per_address == 0) {
        s->max_connections_per_address = s->max_connections / RPC_PER_ADDRESS_DIVISOR;
        s->max_connections_per_address += s->max_connections_per_address == 0;
    }
    s->m.node_id = node_id(node);
    if (s->max_frame > RPC_FRAME_LIMIT) {
        s->max_frame = RPC_FRAME_LIMIT;
    }
    int rv_tls = cfg->tls_cert_file == NULL
                     ? 0
                     : rpc_tls_ctx_new(&s->tls_ctx, cfg->tls_cert_file, cfg->tls_key_file,
                                       cfg->tls_client_ca_file, errmsg, size);
    if (rv_tls != 0) {
        free(s->tokens);
        free(s);
        return rv_tls;
    }
    uv_tcp_init(loop, &s->listener);
    uv_check_init(loop, &s->check);
    uv_idle_init(loop, &s->idle);
    uv_timer_init(loop, &s->sweep_timer);
    s->open_handles = 4;
    s->listener.data = s->check.data = s->idle.data = s->sweep_timer.data = s;
    int rv = uv_tcp_bind(&s->listener, (const struct sockaddr *)&sa, 0);
    if (rv == 0) {
        rv = uv_listen((uv_stream_t *)&s->listener, 511, rpc__accept_cb);
    }
    if (rv != 0) {
        snprintf(errmsg, size, "cannot listen on %s: %s", cfg->address, uv_strerror(rv));
        rpc_server_close(s, NULL, NULL);
        return -RPC_START_ELISTEN;
    }
    uv_check_start(&s->check, rpc__flush_check_cb);
    /* Four sweeps per deadline: a silent connection lives at most 1.25 times it. */
    uint64_t deadline_ms =
        s->hello_timeout_ms < s->idle_timeout_ms ? s->hello_timeout_ms : s->idle_timeout_ms;
    uint64_t sweep_ms = deadline_ms / 4 > 0 ? deadline_ms / 4 : 1;
    uv_timer_start(&s->sweep_timer, rpc__sweep_cb, sweep_ms, sweep_ms);
    *out = s;
    return 0;
}

void rpc_server_metrics(struct rpc_server *s, struct rpc_metrics *m)
{
    struct node_stats ns;
    *m = s->m;
    node_stats(s->node, &ns);
    m->term = ns.term;
    m->raft_state = ns.state;
    node_leader(s->node, &m->leader_id, NULL);
    m->commit_index = ns.commit_index;
    m->peer_refused = ns.peer_refused;
    m->applied_index = ns.last_applied;
    m->serving = node_ready(s->node);
    m->last_index = ns.last_index;
    struct node_space space;
    node_space(s->node, &space);
    m->map_used_bytes = space.map_used_bytes;
    m->map_max_bytes = space.map_max_bytes;
    m->disk_free_bytes = space.disk_free_bytes;
    m->storage_reserve_bytes = space.reserve_bytes;
    m->storage_refused = space.refused;
    m->storage_refusing = space.refusing;
    struct node_member members[RPC_METRICS_PEERS_MAX];
    int roles[RPC_METRICS_PEERS_MAX];
    unsigned n = node_members(s->node, members, roles, RPC_METRICS_PEERS_MAX);
    m->n_peers = 0;
    for (unsigned i = 0; i < n; i++) {
        struct rpc_peer_progress *p = &m->peers[m->n_peers];
        if (members[i].id != m->node_id &&
            node_peer_match(s->node, members[i].id, &p->match_index) == 0) {
            p->id = members[i].id;
            m->n_peers++;
        }
    }
    memset(&m->batch_size, 0, sizeof(m->batch_size));
    for (unsigned i = 0; i < NODE_BATCH_SIZE_BUCKETS && i < RPC_HIST_BUCKETS; i++) {
        m->batch_size.bucket[i] = ns.batch_sizes[i];
        m->batch_size.count += ns.batch_sizes[i];
    }
    m->batch_size.sum = (double)ns.commands;
}

void rpc__server_release(struct rpc_server *s)
{
    assert(s->refs > 0);
    if (--s->refs == 0) {
        for (unsigned i = 0; i < RPC__ADDR_BUCKETS; i++) {
            assert(s->addrs[i] == NULL); /* every connection released its count */
        }
        rpc_tls_ctx_free(s->tls_ctx);
        free(s->tokens);
        free(s);
    }
}

void rpc__server_handle_done(struct rpc_server *s)
{
    assert(s->open_handles > 0);
    if (--s->open_handles == 0) {
        if (s->close_cb != NULL) {
            s->close_cb(s->close_data);
        }
        rpc__server_release(s);
    }
}

static void server_handle_closed(uv_handle_t *h)
{
    rpc__server_handle_done(h->data);
}

void rpc_server_close(struct rpc_server *s, void (*cb)(void *), void *data)
{
    assert(!s->closing);
    s->closing = true;
    s->close_cb = cb;
    s->close_data = data;
    while (s->conns != NULL) {
        rpc__conn_close(s->conns);
    }
    /* Connections marked dirty keep a reference until the check handle runs; it will
     * not run again, so drop them here (all are closing: nothing is written). */
    rpc__flush_dirty(s);
    uv_close((uv_handle_t *)&s->listener, server_handle_closed);
    uv_close((uv_handle_t *)&s->check, server_handle_closed);
    uv_close((uv_handle_t *)&s->idle, server_handle_closed);
    uv_close((uv_handle_t *)&s->sweep_timer, server_handle_closed);
}
