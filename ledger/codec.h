/*
 * codec.h: encoding helpers shared inside ledger/ (the batch API is in ledger.h).
 */
#ifndef TALLY_LEDGER_CODEC_H
#define TALLY_LEDGER_CODEC_H

#include "ledger/ledger_internal.h"

#include <msgpack.h>

/* Pack one command (validated by the caller) as the array the batch format uses. */
void ledger_pack_cmd(msgpack_packer *pk, const struct ledger_cmd *c);

/* Encode one command alone (for the admin journal). *buf is malloc'd, caller frees. */
int ledger_cmd_encode(const struct ledger_cmd *c, void **buf, size_t *len);

/* 64-bit fingerprint of a command's type, id and arguments (the actor excluded): the
 * idempotency store's test for "the same request". */
uint64_t ledger_cmd_fingerprint(const struct ledger_cmd *c);

#endif /* TALLY_LEDGER_CODEC_H */
