/*
 * codec.h: encoding helpers shared inside ledger/ (the batch API is in ledger.h).
 */
#ifndef TALLY_LEDGER_CODEC_H
#define TALLY_LEDGER_CODEC_H

#include "ledger/ledger_internal.h"

#include "ledger/mp.h"

#include <msgpack.h>

/* Pack one command (validated by the caller) as the array the batch format uses. */
void ledger_pack_cmd(msgpack_packer *pk, const struct ledger_cmd *c);

/* Whether pack_cmd can encode `c`: a known type, strings within their bounds. The
 * ledger still validates every argument when it applies the command. */
bool ledger_cmd_encodable(const struct ledger_cmd *c);

/* Read one command in the pack_cmd form (bounded, non-allocating). false: malformed. */
bool ledger_read_cmd(struct mp_reader *r, struct ledger_cmd *c);

/* An account's limits as the fixed 13-field array both the log and the wire use, and
 * back (bounded; false: malformed). */
void ledger_pack_limits(msgpack_packer *pk, const struct ledger_limits *l);
bool ledger_read_limits(struct mp_reader *r, struct ledger_limits *l);

/* Encode one command alone (for the admin journal). *buf is malloc'd, caller frees. */
int ledger_cmd_encode(const struct ledger_cmd *c, void **buf, size_t *len);

/* 64-bit fingerprint of a command's type, id and arguments (the actor excluded): the
 * idempotency store's test for "the same request". */
uint64_t ledger_cmd_fingerprint(const struct ledger_cmd *c);

#endif /* TALLY_LEDGER_CODEC_H */
