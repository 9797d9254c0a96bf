/*
 * check_safety.c: tally-chaos-check's rules on answers, records and nodes (rules 1-5, 7
 * and 8 of check.c, and recovery): every answer agrees with every other answer for the
 * same id, nothing acknowledged is lost, nothing is resolved twice, the replicas and the
 * journal agree with the records, no grant comes from a minority side, and nodes stop
 * only the way they may. Rule 6, the limits in Raft-index order, is check_limits.c.
 *
 * One idea behind the shape: every rule is a pass over the tables check_read.c filled;
 * ck_answers() runs first and writes what the answers say into each id's entry
 * (granted, denied, resolved, by which index), which the later passes read.
 */
#define _GNU_SOURCE
#include "check.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

long ck_n_replay_after_extend;
long ck_n_stuck_spare;
long ck_n_bg_voided_grants;

/* ---- Rules 1-5. ---- */

/* Rules 1 and 2, and what the answers say about each id. */
void ck_answers(void)
{
    for (size_t i = 0; i < ck_ops.n; i++) {
        struct ck_op *o = &ck_ops.v[i];
        struct ck_idinfo *d = &ck_ids.v[o->id];
        bool replayed = (o->flags & CK_F_REPLAYED) != 0;
        if (o->outcome != CK_OC_UNAVAILABLE) {
            d->only_unsent = false;
        }
        d->any_attempt = true;
        if (o->err == CK_E_ECONFLICT) {
            ck_violation("conflict",
                         "%s %s answered ECONFLICT, but every resubmission repeats the "
                         "same arguments",
                         ck_op_names[o->kind], d->hex);
        }
        if (o->err == CK_E_EPROTO) {
            ck_violation("protocol", "%s %s: the server's answer could not be trusted",
                         ck_op_names[o->kind], d->hex);
        }
        switch (o->kind) {
        case CK_OP_RESERVE:
            if (!d->have_reserve) {
                d->have_reserve = true;
                d->leaf = o->leaf;
                d->est = o->a;
                d->ttl = o->b;
            }
            if (o->outcome == CK_OC_OK) {
                if (!replayed) {
                    d->fresh_grants++;
                    d->g_exact = o->index;
                    d->grant_expires = o->x1;
                    d->have_fresh_expires = true;
                } else {
                    if (d->g_ub == 0 || o->index < d->g_ub) {
                        d->g_ub = o->index;
                    }
                    if (!d->granted) {
                        d->grant_expires = o->x1;
                    }
                }
                d->granted = true;
            } else if (o->outcome == CK_OC_UNAVAILABLE || o->outcome == CK_OC_TIMEOUT) {
                d->bg_void = true;
            } else if (o->outcome == CK_OC_DENIED) {
                if (d->denied && d->deny_reason != (int)o->x2) {
                    ck_violation("replay-differs", "reserve %s denied for different reasons",
                                 d->hex);
                }
                d->denied = true;
                d->deny_reason = (int)o->x2;
            }
            break;
        case CK_OP_SETTLE:
        case CK_OP_VOID: {
            bool is_settle = o->kind == CK_OP_SETTLE;
            if (is_settle) {
                if (d->sent_settle && d->first_settle_actual != o->a) {
                    d->settle_args_differ = true;
                }
                if (!d->sent_settle) {
                    d->first_settle_actual = o->a;
                }
                d->sent_settle = true;
            } else {
                d->sent_void = true;
            }
            if (o->outcome == CK_OC_OK) {
                if (is_settle) {
                    if (d->have_settle_charged && d->settle_charged != o->x1) {
                        ck_violation("replay-differs", "settle %s answered charged %lld and %lld",
                                     d->hex, (long long)d->settle_charged, (long long)o->x1);
                    }
                    d->have_settle_charged = true;
                    d->settle_charged = o->x1;
                    d->settle_ok = true;
                    d->settle_actual = o->a;
                } else {
                    d->void_ok = true;
                }
                if (!replayed) {
                    d->fresh_resolutions++;
                    d->r_exact = o->index;
                    d->r_kind = o->kind;
                }
            }
            break;
        }
        default:
            if (d->first_extend_us == 0 || o->t_inv < d->first_extend_us) {
                d->first_extend_us = o->t_inv;
            }
            break;
        }
    }
    /* Second pass: rules that need every answer of an id. */
    for (size_t i = 0; i < ck_ops.n; i++) {
        struct ck_op *o = &ck_ops.v[i];
        struct ck_idinfo *d = &ck_ids.v[o->id];
        if (o->kind == CK_OP_RESERVE && o->outcome == CK_OC_OK && (o->flags & CK_F_REPLAYED) &&
            d->have_fresh_expires && o->x1 != d->grant_expires) {
            /* The stored answer must come back; an extend in between moves the expiry the
             * ledger reports (docs/chaos.md: a documented difference, not a violation). */
            if (d->first_extend_us != 0 && d->first_extend_us < o->t_inv &&
                o->x1 > d->grant_expires) {
                ck_n_replay_after_extend++;
            } else {
                ck_violation("replay-differs",
                             "reserve %s granted with expiry %lld, replayed "
                             "with %lld",
                             d->hex, (long long)d->grant_expires, (long long)o->x1);
            }
        }
        if ((o->kind == CK_OP_SETTLE || o->kind == CK_OP_VOID) && o->err == CK_E_ERESOLVED) {
            bool other =
                o->kind == CK_OP_SETTLE ? (d->sent_void || d->settle_args_differ) : d->sent_settle;
            if (!other && d->bg_void && d->granted) {
                /* A resubmitted reserve of a granted id timed out, and libtally voided the
                 * id in the background: the live reservation is gone (docs/chaos.md, D). */
                if (!d->counted_bg_void) {
                    d->counted_bg_void = true;
                    ck_n_bg_voided_grants++;
                }
            } else if (!other) {
                ck_violation("spurious-resolved",
                             "%s %s answered ERESOLVED but no other resolution "
                             "of it was ever sent",
                             ck_op_names[o->kind], d->hex);
            }
        }
        if (o->kind != CK_OP_RESERVE && o->err == CK_E_ENOTFOUND && d->granted) {
            ck_violation("lost-grant", "%s %s answered ENOTFOUND for an acknowledged grant",
                         ck_op_names[o->kind], d->hex);
        }
    }
    for (size_t i = 0; i < ck_ids.n; i++) {
        struct ck_idinfo *d = &ck_ids.v[i];
        if (d->granted && d->denied) {
            ck_violation("denied-then-granted", "reserve %s was both granted and denied", d->hex);
        }
        if (d->fresh_grants > 1) {
            ck_violation("granted-twice", "reserve %s granted fresh %d times", d->hex,
                         d->fresh_grants);
        }
        if (d->fresh_resolutions > 1 || (d->settle_ok && d->void_ok)) {
            ck_violation("resolved-twice",
                         "reservation %s resolved more than once (%d fresh, "
                         "settle %d void %d)",
                         d->hex, d->fresh_resolutions, d->settle_ok, d->void_ok);
        }
    }
}

/* The record of id d on the first node that has one (they are compared elsewhere). */
const struct ck_rec *ck_record_of(const struct ck_idinfo *d)
{
    for (int n = 0; n < CK_NODES; n++) {
        if (d->rec[n].state != CK_R_MISSING && d->rec[n].state != CK_R_ERROR) {
            return &d->rec[n];
        }
    }
    return NULL;
}

/* Rules 3 and 4. */
void ck_records(long *n_acked_grants, long *n_acked_res, long *n_unknown_committed)
{
    for (size_t i = 0; i < ck_ids.n; i++) {
        struct ck_idinfo *d = &ck_ids.v[i];
        if (!d->have_reserve) {
            continue;
        }
        /* replicas agree */
        for (int n = 1; n < CK_NODES; n++) {
            const struct ck_rec *a = &d->rec[0], *b = &d->rec[n];
            if (a->state == CK_R_MISSING || b->state == CK_R_MISSING || a->state == CK_R_ERROR ||
                b->state == CK_R_ERROR) {
                continue;
            }
            if (a->state != b->state ||
                (a->state >= 0 &&
                 (a->est != b->est || a->charged != b->charged || a->created != b->created))) {
                ck_violation("replicas-differ", "reservation %s: node %d says %s, node %d says %s",
                             d->hex, ck_node_ids[0],
                             a->state >= 0 ? ck_rec_names[a->state] : "none", ck_node_ids[n],
                             b->state >= 0 ? ck_rec_names[b->state] : "none");
            }
        }
        for (int n = 0; n < CK_NODES; n++) {
            if (ck_fin.present && ck_fin.converged &&
                (d->rec[n].state == CK_R_MISSING || d->rec[n].state == CK_R_ERROR)) {
                ck_violation("unreadable", "reservation %s could not be read from node %d", d->hex,
                             ck_node_ids[n]);
            }
        }
        const struct ck_rec *r = ck_record_of(d);
        if (r == NULL) {
            continue;
        }
        if (d->granted) {
            (*n_acked_grants)++;
            if (r->state == CK_R_NOTFOUND) {
                ck_violation("lost-grant", "acknowledged grant %s (%s, %lld) has no reservation",
                             d->hex, ck_accts[d->leaf].name, (long long)d->est);
                continue;
            }
            if (r->est != d->est || r->leaf != d->leaf) {
                ck_violation("grant-differs", "reservation %s holds %lld on %s; granted %lld on %s",
                             d->hex, (long long)r->est, r->leaf >= 0 ? ck_accts[r->leaf].name : "?",
                             (long long)d->est, ck_accts[d->leaf].name);
            }
            if (d->have_fresh_expires && r->created != d->grant_expires - d->ttl) {
                ck_violation("grant-differs", "reservation %s created at %lld; the grant said %lld",
                             d->hex, (long long)r->created, (long long)(d->grant_expires - d->ttl));
            }
        } else if (d->denied && r->state != CK_R_NOTFOUND) {
            ck_violation("denied-holds", "denied reserve %s has a reservation (%s)", d->hex,
                         ck_rec_names[r->state]);
        } else if (d->only_unsent && r->state != CK_R_NOTFOUND) {
            ck_violation("phantom", "reserve %s was never sent but has a reservation", d->hex);
        } else if (!d->granted && !d->denied && r->state >= 0) {
            (*n_unknown_committed)++;
        }
        if (d->settle_ok) {
            (*n_acked_res)++;
            bool ok = (r->state == CK_R_SETTLED || r->state == CK_R_LATE) &&
                      r->charged == d->settle_actual;
            if (!ok) {
                ck_violation("lost-settle",
                             "acknowledged settle %s of %lld: the reservation is %s "
                             "with %lld charged",
                             d->hex, (long long)d->settle_actual,
                             r->state >= 0 ? ck_rec_names[r->state] : "gone",
                             (long long)r->charged);
            }
        }
        if (d->void_ok) {
            (*n_acked_res)++;
            bool ok = (r->state == CK_R_VOIDED || r->state == CK_R_LATE) && r->charged == 0;
            if (!ok) {
                ck_violation("lost-void",
                             "acknowledged void %s: the reservation is %s with %lld "
                             "charged",
                             d->hex, r->state >= 0 ? ck_rec_names[r->state] : "gone",
                             (long long)r->charged);
            }
        }
        /* the journal (rule 4) */
        if (ck_fin.journal_error || ck_fin.n_journal == 0) {
            continue;
        }
        if (d->j_resolutions > 1 || d->j_corrections > 1 ||
            (d->j_corrections > 0 && d->j_expires == 0)) {
            ck_violation("journal-twice",
                         "reservation %s: %d resolutions, %d expiries, %d "
                         "corrections in the journal",
                         d->hex, d->j_resolutions, d->j_expires, d->j_corrections);
        }
        int want_res = r->state == CK_R_OPEN || r->state == CK_R_NOTFOUND ? 0 : 1;
        int want_exp = r->state == CK_R_EXPIRED || r->state == CK_R_LATE ? 1 : 0;
        int want_cor = r->state == CK_R_LATE ? 1 : 0;
        if (r->state >= CK_R_NOTFOUND &&
            (d->j_resolutions != want_res || d->j_expires != want_exp ||
             d->j_corrections != want_cor)) {
            ck_violation("journal-differs",
                         "reservation %s is %s but the journal has %d "
                         "resolutions, %d expiries, %d corrections",
                         d->hex, r->state >= 0 ? ck_rec_names[r->state] : "not found",
                         d->j_resolutions, d->j_expires, d->j_corrections);
        }
    }
}

/* Rule 5. */
void ck_final_state(void)
{
    if (!ck_fin.present) {
        ck_violation("no-final-state", "final.txt is missing: the run did not finish");
        return;
    }
    if (!ck_fin.converged) {
        ck_violation("not-converged", "the replicas did not reach the same applied index and "
                                      "state hash after the faults were healed");
    }
    for (int n = 0; n < CK_NODES; n++) {
        if (strcmp(ck_fin.h_hash[n], ck_fin.h_hash[0]) != 0 ||
            ck_fin.h_applied[n] != ck_fin.h_applied[0] || ck_fin.h_hash[n][0] == '-' ||
            ck_fin.h_hash[n][0] == '\0') {
            ck_violation("hash-differs",
                         "node %d: applied %llu hash %.16s; node %d: applied %llu "
                         "hash %.16s",
                         ck_node_ids[n], (unsigned long long)ck_fin.h_applied[n], ck_fin.h_hash[n],
                         ck_node_ids[0], (unsigned long long)ck_fin.h_applied[0], ck_fin.h_hash[0]);
        }
        if (!ck_fin.s_up[n] || ck_fin.s_voters[n] != CK_NODES) {
            ck_violation("membership", "node %d at the end: %s, %d voters", ck_node_ids[n],
                         ck_fin.s_up[n] ? "up" : "down", ck_fin.s_voters[n]);
        }
    }
    /* the model: sums over the records */
    for (size_t i = 0; i < ck_ids.n; i++) {
        const struct ck_rec *r = ck_record_of(&ck_ids.v[i]);
        if (r == NULL || r->state < 0 || r->leaf < 0) {
            continue;
        }
        for (int a = r->leaf, depth = 0; a >= 0 && depth < CK_LEAF_CHAIN_MAX;
             a = ck_accts[a].parent, depth++) {
            if (r->state == CK_R_OPEN) {
                ck_accts[a].m_held += r->est;
                ck_accts[a].m_inflight++;
            } else {
                ck_accts[a].m_spent += r->charged;
            }
        }
    }
    for (int a = 0; a < ck_n_accts; a++) {
        struct ck_account *ac = &ck_accts[a];
        for (int n = 0; n < CK_NODES; n++) {
            if (!ac->have[n]) {
                ck_violation("unreadable", "account %s could not be read from node %d", ac->name,
                             ck_node_ids[n]);
                continue;
            }
            if (ac->spent[n] != ac->m_spent || ac->held[n] != ac->m_held ||
                ac->inflight[n] != ac->m_inflight) {
                ck_violation("state-differs",
                             "%s on node %d: spent %lld held %lld inflight %lld; "
                             "the reservations say spent %lld held %lld inflight %lld",
                             ac->name, ck_node_ids[n], (long long)ac->spent[n],
                             (long long)ac->held[n], (long long)ac->inflight[n],
                             (long long)ac->m_spent, (long long)ac->m_held,
                             (long long)ac->m_inflight);
            }
        }
        if (ck_fin.n_journal > 0 && !ck_fin.journal_error && ac->j_spent != ac->m_spent) {
            ck_violation("journal-differs", "%s: the journal charges %lld, the reservations %lld",
                         ac->name, (long long)ac->j_spent, (long long)ac->m_spent);
        }
    }
}

/* ---- Rule 7: no grant from a minority side. ---- */

/* Whether node id `nid` is cut off from a majority under layout (cuts "12,13", down "2"). */
static bool minority(int nid, const char *cuts, const char *down)
{
    if (strchr(down, '0' + nid) != NULL) {
        return true;
    }
    int reach = 1;
    for (int m = 0; m < CK_NODES; m++) {
        int mid = ck_node_ids[m];
        if (mid == nid || strchr(down, '0' + mid) != NULL) {
            continue;
        }
        char p1[3] = {(char)('0' + nid), (char)('0' + mid), 0};
        char p2[3] = {(char)('0' + mid), (char)('0' + nid), 0};
        if (strstr(cuts, p1) == NULL && strstr(cuts, p2) == NULL) {
            reach++;
        }
    }
    return reach * 2 <= CK_NODES;
}

long ck_minority_grants(void)
{
    long checked = 0;
    for (size_t e = 0; e < ck_nems.n; e++) {
        struct ck_nem *f = &ck_nems.v[e];
        if (strcmp(f->event, "fault") != 0 || strcmp(f->kind, "partition") != 0) {
            continue;
        }
        int64_t heal = INT64_MAX;
        for (size_t h = e + 1; h < ck_nems.n; h++) {
            if (strcmp(ck_nems.v[h].event, "heal") == 0 &&
                strcmp(ck_nems.v[h].kind, "partition") == 0) {
                heal = ck_nems.v[h].t;
                break;
            }
        }
        /* f->a: sub-kind, f->b: cuts, f->c: down */
        for (size_t i = 0; i < ck_ops.n; i++) {
            struct ck_op *o = &ck_ops.v[i];
            if (o->kind != CK_OP_RESERVE || o->outcome != CK_OC_OK || (o->flags & CK_F_REPLAYED) ||
                o->t_inv < f->t || o->t_done > heal || o->node == 0) {
                continue;
            }
            checked++;
            if (minority(o->node, f->b, f->c)) {
                ck_violation("minority-grant",
                             "reserve %s granted by node %d at %.3f s, cut off "
                             "by partition %s (%s, down %s) since %.3f s",
                             ck_ids.v[o->id].hex, o->node, (double)o->t_done / 1e6, f->a, f->b,
                             f->c, (double)f->t / 1e6);
            }
        }
    }
    return checked;
}

/* ---- Rule 8: node exits. ---- */

void ck_node_exits(int *n_exit74)
{
    for (size_t e = 0; e < ck_nems.n; e++) {
        struct ck_nem *x = &ck_nems.v[e];
        if (strcmp(x->event, "exit") == 0) {
            /* allowed only as 74 inside a disk fault on that node */
            bool in_disk = false;
            for (size_t k = e; k-- > 0;) {
                struct ck_nem *y = &ck_nems.v[k];
                if (y->node != x->node || strcmp(y->kind, "disk") != 0) {
                    continue;
                }
                in_disk = strcmp(y->event, "fault") == 0;
                break;
            }
            if (in_disk && strcmp(x->a, "code=74") == 0) {
                (*n_exit74)++;
            } else {
                ck_violation("node-exit", "node %d exited on its own (%s) at %.3f s%s", x->node,
                             x->a, (double)x->t / 1e6, in_disk ? " during a full disk" : "");
            }
        } else if (strcmp(x->event, "start-failed") == 0) {
            ck_violation("start-failed", "node %d did not start (%s) at %.3f s", x->node, x->a,
                         (double)x->t / 1e6);
        } else if (strcmp(x->event, "stop") == 0 && atoi(x->a) == 15 &&
                   strcmp(x->b, "code=0") != 0) {
            ck_violation("unclean-stop", "node %d on SIGTERM: %s at %.3f s", x->node, x->b,
                         (double)x->t / 1e6);
        } else if (strcmp(x->event, "member-stuck-spare") == 0) {
            ck_n_stuck_spare++;
        } else if (strcmp(x->event, "heal") == 0 && (strstr(x->a, "failed") != NULL)) {
            ck_violation("heal-failed", "%s fault on node %d could not be healed (%s) at %.3f s",
                         x->kind, x->node, x->a, (double)x->t / 1e6);
        }
    }
}

/* The cluster must grant again once every fault is healed (the run ends with a fault-free
 * tail of a few seconds): a grant completed after `heal-all`. */
void ck_recovery(void)
{
    int64_t healed = -1;
    for (size_t e = 0; e < ck_nems.n; e++) {
        if (strcmp(ck_nems.v[e].event, "heal-all") == 0) {
            healed = ck_nems.v[e].t;
        }
    }
    if (healed < 0) {
        return;
    }
    for (size_t i = 0; i < ck_ops.n; i++) {
        if (!ck_ops.v[i].final && ck_ops.v[i].kind == CK_OP_RESERVE &&
            ck_ops.v[i].outcome == CK_OC_OK && ck_ops.v[i].t_done > healed) {
            return;
        }
    }
    ck_violation("no-recovery",
                 "no grant after every fault was healed (at %.3f s): the cluster "
                 "did not come back",
                 (double)healed / 1e6);
}
