/*
 * cmd_equal.h: field-by-field comparison of ledger commands and results, for the round
 * trips of the ledger codec and of the wire protocol (whose write requests carry a command
 * and whose answers a result) and for replicas that must answer alike.
 *
 * Each difference is a CHECK of the harness (test.h): it counts against the current test,
 * names the field, and the test goes on.
 */
#ifndef TALLY_CMD_EQUAL_H
#define TALLY_CMD_EQUAL_H

#include "ledger/ledger.h"

/* Every field of `a` equals the same field of `b`. */
void check_limits_equal(const struct ledger_limits *a, const struct ledger_limits *b);

/* `b` has the type of `a`, its request id, actor and scope, and every argument field of
 * that type (both the account and the key hash of a reserve or a key command, whichever it
 * uses). */
void check_cmd_equal(const struct ledger_cmd *a, const struct ledger_cmd *b);

/* Every field of result `b` equals the same field of `a`. */
void check_result_equal(const struct ledger_result *a, const struct ledger_result *b);

#endif /* TALLY_CMD_EQUAL_H */
