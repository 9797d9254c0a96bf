/*
 * apply.h: what ledger.c, admin.c, reserve.c and resolve.c share while a batch applies.
 * Internal to ledger/ (the API is ledger.h); every name here is ledger__ so that a use
 * outside the module shows in review.
 *
 * All of these run inside the batch's write transaction on the ledger's thread. LMDB
 * failures set the ledger's `fatal` and the caller stops where it is.
 */
#ifndef TALLY_LEDGER_APPLY_H
#define TALLY_LEDGER_APPLY_H

#include "ledger/store.h"

/* ---- The transaction, accounts, models, timers, journal, results (ledger.c). ---- */
uint32_t ledger__acct_depth(struct ledger *l, uint64_t id);
void ledger__acct_dirty(struct acct_rec *a);
struct acct_rec *ledger__acct_load(struct ledger *l, uint64_t id);
void ledger__acct_roll(struct acct_rec *a, int64_t now_ms);
int64_t ledger__acct_spent_now(const struct acct_rec *a, int64_t now_ms);
struct cache_entry *ledger__cache_insert(struct ledger *l, uint64_t id);
void ledger__cache_make_room(struct ledger *l);
uint32_t ledger__chain_load(struct ledger *l, uint64_t id, uint64_t ids[LEDGER_DEPTH_MAX],
                            struct acct_rec *recs[LEDGER_DEPTH_MAX]);
bool ledger__db_del(struct ledger *l, int db, const void *k, size_t klen);
int ledger__db_get(struct ledger *l, int db, const void *k, size_t klen, MDB_val *v);
/* A record of exactly `size` bytes into `out`: 1 found, 0 not found, -1 (fatal set) on an
 * LMDB error or a record of another size. */
int ledger__db_get_fixed(struct ledger *l, int db, const void *k, size_t klen, void *out,
                         size_t size);
bool ledger__db_put(struct ledger *l, int db, const void *k, size_t klen, const void *v,
                    size_t vlen, unsigned flags);
bool ledger__failed(struct ledger *l, int rc);
void ledger__journal_append(struct ledger *l, struct jrec *j, const void *payload, size_t plen);
void ledger__jrec_init(struct ledger *l, struct jrec *j, uint64_t kind, const uint8_t *request_id,
                       const char *actor);
int ledger__model_get(struct ledger *l, uint64_t account_id, const char *model,
                      struct model_rec *out);
void ledger__model_put(struct ledger *l, uint64_t account_id, const char *model,
                       const struct model_rec *m);
void ledger__model_roll(struct model_rec *m, const struct acct_rec *a, int64_t now_ms);
uint64_t ledger__name_lookup(struct ledger *l, const char *name);
void ledger__result_account(struct ledger *l, struct ledger_result *r, uint64_t id);
void ledger__soft_budget_check(struct ledger *l, struct acct_rec *a, const uint8_t *request_id,
                               const char *actor);
void ledger__timer_put(struct ledger *l, int64_t due_ms, const uint8_t *request_id, uint8_t kind);
/* The fingerprint of `c`: the first 128 bits of SHA-256 over ledger_cmd_fingerprint_feed(). */
struct ledger__fp ledger__cmd_fingerprint(const struct ledger_cmd *c);
bool ledger__fp_equal(const struct ledger__fp *a, const struct ledger__fp *b);

/* ---- Scopes (scope.c). ---- */
/* Whether `c` (whose scope is valid) stays inside its scope: false is EFORBIDDEN. */
bool ledger__scope_allows(struct ledger *l, const struct ledger_cmd *c);

/* ---- Admin commands (admin.c). ---- */
void ledger__exec_admin(struct ledger *l, const struct ledger_cmd *c, struct ledger_result *r);
int ledger__key_get(struct ledger *l, const uint8_t *hash, struct key_rec *out);

/* ---- Reserve (reserve.c). ---- */
void ledger__exec_reserve(struct ledger *l, const struct ledger_cmd *c, struct ledger_result *r);
int ledger__resv_get(struct ledger *l, const uint8_t *id, struct resv_rec *out);
void ledger__resv_put(struct ledger *l, const uint8_t *id, const struct resv_rec *rec);

/* ---- Resolving reservations and running timers (resolve.c). ---- */
void ledger__exec_extend(struct ledger *l, const struct ledger_cmd *c, struct ledger_result *r);
void ledger__exec_resolve(struct ledger *l, const struct ledger_cmd *c, struct ledger_result *r);
void ledger__run_timers(struct ledger *l);

/* ---- Unconfirmed reservations (ambiguous.c). ---- */
/* Apply a TERM_START: remember the range of entries it committed unanswered. */
void ledger__exec_term_start(struct ledger *l, const struct ledger_cmd *c, struct ledger_result *r);
/* Whether `rec` came from an ambiguous range and nothing outside one confirmed it:
 * then its expiry releases, never charges. */
bool ledger__resv_unconfirmed(const struct ledger *l, const struct resv_rec *rec);

#endif /* TALLY_LEDGER_APPLY_H */
