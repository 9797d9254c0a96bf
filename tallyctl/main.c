/*
 * main.c: tallyctl, the admin command line of a tally cluster, a thin layer over libtally
 * (client/tally.h): accounts and their limits, virtual keys, reservations by hand, the
 * journal, and the cluster's membership and status. docs/tallyctl.md is its manual. This
 * file holds the options, the command table, usage and dispatch; tallyctl.h says where
 * the rest lives.
 *
 * The one idea behind its shape: everything the user typed is parsed and checked before
 * anything is sent. main() splits argv into options (known by name, accepted anywhere on
 * the line) and positional words; the command table picks a handler by the first one or
 * two words and refuses options that command does not take; the handler checks every
 * value against the ledger's bounds, only then opens the client, makes its call (or pages
 * through a list to the end) and prints the answer as aligned text or as JSON. Every path
 * ends in one of four exit codes: 0 done or granted, 1 denied, 2 no usable answer (the
 * cluster is unavailable), 3 bad input or a refused request. Answers go to stdout; errors
 * go to stderr as one line "tallyctl: <what>: <why>".
 */
#include "tallyctl/tallyctl.h"

#include <errno.h>
#include <string.h>

#define TIMEOUT_MAX_MS INT64_C(3600000) /* --timeout */

/* ---- Options. ---- */

#define BIT(o) (UINT64_C(1) << (o))

#define GLOBAL_OPTS                                                                                \
    (BIT(CTL_OPT_ENDPOINTS) | BIT(CTL_OPT_TOKEN) | BIT(CTL_OPT_TOKEN_FILE) | BIT(CTL_OPT_TLS_CA) | \
     BIT(CTL_OPT_TLS_CERT) | BIT(CTL_OPT_TLS_KEY) | BIT(CTL_OPT_TLS_SERVER_NAME) |                 \
     BIT(CTL_OPT_JSON) | BIT(CTL_OPT_TIMEOUT) | BIT(CTL_OPT_HELP))

#define LIMIT_OPTS                                                                                 \
    (BIT(CTL_OPT_BUDGET) | BIT(CTL_OPT_SOFT_BUDGET) | BIT(CTL_OPT_PERIOD) | BIT(CTL_OPT_RPM) |     \
     BIT(CTL_OPT_RPM_BURST) | BIT(CTL_OPT_TPM) | BIT(CTL_OPT_TPM_BURST) |                          \
     BIT(CTL_OPT_MAX_PARALLEL) | BIT(CTL_OPT_EXPIRES_AT) | BIT(CTL_OPT_EXPIRY_POLICY) |            \
     BIT(CTL_OPT_BLOCKED))

const struct ctl__opt_spec ctl__opt_specs[CTL_OPT_COUNT] = {
    [CTL_OPT_ENDPOINTS] = {"endpoints", true},
    [CTL_OPT_TOKEN] = {"token", true},
    [CTL_OPT_TOKEN_FILE] = {"token-file", true},
    [CTL_OPT_TLS_CA] = {"tls-ca", true},
    [CTL_OPT_TLS_CERT] = {"tls-cert", true},
    [CTL_OPT_TLS_KEY] = {"tls-key", true},
    [CTL_OPT_TLS_SERVER_NAME] = {"tls-server-name", true},
    [CTL_OPT_JSON] = {"json", false},
    [CTL_OPT_TIMEOUT] = {"timeout", true},
    [CTL_OPT_HELP] = {"help", false},
    [CTL_OPT_STALE] = {"stale", false},
    [CTL_OPT_ID] = {"id", true},
    [CTL_OPT_PARENT] = {"parent", true},
    [CTL_OPT_ROOT] = {"root", false},
    [CTL_OPT_BUDGET] = {"budget", true},
    [CTL_OPT_SOFT_BUDGET] = {"soft-budget", true},
    [CTL_OPT_PERIOD] = {"period", true},
    [CTL_OPT_RPM] = {"rpm", true},
    [CTL_OPT_RPM_BURST] = {"rpm-burst", true},
    [CTL_OPT_TPM] = {"tpm", true},
    [CTL_OPT_TPM_BURST] = {"tpm-burst", true},
    [CTL_OPT_MAX_PARALLEL] = {"max-parallel", true},
    [CTL_OPT_EXPIRES_AT] = {"expires-at", true},
    [CTL_OPT_EXPIRY_POLICY] = {"expiry-policy", true},
    [CTL_OPT_BLOCKED] = {"blocked", false},
    [CTL_OPT_CLEAR] = {"clear", true},
    [CTL_OPT_KEY] = {"key", true},
    [CTL_OPT_KEY_FILE] = {"key-file", true},
    [CTL_OPT_KEY_HASH] = {"key-hash", true},
    [CTL_OPT_ACCOUNT] = {"account", true},
    [CTL_OPT_ESTIMATE] = {"estimate", true},
    [CTL_OPT_TOKENS] = {"tokens", true},
    [CTL_OPT_MODEL] = {"model", true},
    [CTL_OPT_TTL] = {"ttl", true},
    [CTL_OPT_ACTUAL] = {"actual", true},
    [CTL_OPT_SINCE] = {"since", true},
    [CTL_OPT_UNTIL] = {"until", true},
    [CTL_OPT_FORMAT] = {"format", true},
    [CTL_OPT_ROLE] = {"role", true},
    [CTL_OPT_NAME] = {"name", true},
    [CTL_OPT_SCOPE] = {"scope", true},
    [CTL_OPT_VOID_WAIT_MS] = {"void-wait-ms", true},
};

/* ---- The command table, usage, dispatch. ---- */

/* One command: its words, how many positional words follow them, the options it takes
 * besides the global ones, and its handler (which returns the exit code). */
struct ctl__command {
    const char *group;
    const char *name; /* NULL: a one-word command */
    int min_words, max_words;
    uint64_t opts;
    int (*run)(struct ctl__ctx *x);
    const char *synopsis;
};

static int cmd_help(struct ctl__ctx *x);

#define W(o) BIT(CTL_OPT_##o)

static const struct ctl__command commands[] = {
    {"account", "create", 1, 1, LIMIT_OPTS | W(PARENT) | W(ID), ctl__cmd_account_create,
     "account create NAME [--parent P] [LIMITS] [--id HEX32]"},
    {"account", "update", 1, 1, LIMIT_OPTS | W(PARENT) | W(ROOT) | W(CLEAR) | W(ID),
     ctl__cmd_account_update,
     "account update NAME [LIMITS] [--parent P | --root] [--clear LIMIT,...] [--id HEX32]"},
    {"account", "show", 1, 1, W(STALE), ctl__cmd_account_show, "account show NAME"},
    {"account", "list", 0, 0, W(PARENT) | W(STALE), ctl__cmd_account_list,
     "account list [--parent P]"},
    {"account", "block", 1, 1, W(ID), ctl__cmd_account_block, "account block NAME [--id HEX32]"},
    {"account", "unblock", 1, 1, W(ID), ctl__cmd_account_unblock,
     "account unblock NAME [--id HEX32]"},
    {"key", "add", 1, 1, W(KEY_HASH) | W(ID), ctl__cmd_key_add,
     "key add ACCOUNT [--key-hash HEX64] [--id HEX32]"},
    {"key", "revoke", 1, 1, W(ID), ctl__cmd_key_revoke, "key revoke HASH [--id HEX32]"},
    {"key", "show", 1, 1, W(STALE), ctl__cmd_key_show, "key show HASH"},
    {"key", "hash", 0, 1, 0, ctl__cmd_key_hash, "key hash [SECRET]   (no SECRET: read from stdin)"},
    {"reserve", NULL, 0, 0,
     W(KEY) | W(KEY_FILE) | W(KEY_HASH) | W(ACCOUNT) | W(ESTIMATE) | W(TOKENS) | W(MODEL) | W(TTL) |
         W(ID) | W(VOID_WAIT_MS),
     ctl__cmd_reserve,
     "reserve (--key-file F | --key SECRET | --key-hash HEX64 | --account A) --estimate MICROS "
     "[--tokens N] [--model M] [--ttl MS] [--id HEX32] [--void-wait-ms MS]"},
    {"settle", NULL, 1, 1, W(ACTUAL) | W(TOKENS), ctl__cmd_settle,
     "settle ID --actual MICROS [--tokens N]"},
    {"void", NULL, 1, 1, 0, ctl__cmd_void, "void ID"},
    {"extend", NULL, 1, 1, W(TTL), ctl__cmd_extend, "extend ID --ttl MS"},
    {"reservations", "list", 0, 0, W(ACCOUNT) | W(STALE), ctl__cmd_reservations_list,
     "reservations list [--account A]"},
    {"reservations", "show", 1, 1, W(STALE), ctl__cmd_reservations_show, "reservations show ID"},
    {"journal", "export", 0, 0, W(ACCOUNT) | W(SINCE) | W(UNTIL) | W(FORMAT) | W(STALE),
     ctl__cmd_journal_export,
     "journal export [--account A] [--since T] [--until T] [--format csv|jsonl]"},
    {"token", "new", 0, 0, W(ROLE) | W(NAME) | W(SCOPE), ctl__cmd_token_new,
     "token new --role admin|gateway|reader --name NAME [--scope ROOT[,ROOT...]]"},
    {"cluster", "status", 0, 0, 0, ctl__cmd_cluster_status, "cluster status"},
    {"cluster", "transfer", 0, 1, 0, ctl__cmd_cluster_transfer, "cluster transfer [ID]"},
    {"cluster", "add", 2, 2, 0, ctl__cmd_cluster_add, "cluster add ID PEER_ADDR"},
    {"cluster", "remove", 1, 1, 0, ctl__cmd_cluster_remove, "cluster remove ID"},
    {"help", NULL, 0, 1, 0, cmd_help, "help"},
};

#undef W

/* The usage text, built from the command table. */
static void usage(FILE *f)
{
    fputs("usage: tallyctl [--endpoints A,B,C] [--token T | --token-file F] [--json]\n"
          "                [--tls-ca F [--tls-cert F --tls-key F] [--tls-server-name N]]\n"
          "                [--timeout MS] COMMAND ...\n"
          "\n"
          "commands:\n",
          f);
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
        fprintf(f, "  %s\n", commands[i].synopsis);
    }
    fputs("\n"
          "LIMITS: [--budget MICROS] [--soft-budget MICROS]\n"
          "        [--period none|day|week|month|DURATION (1h, 1d, 7d, 30d, ...)]\n"
          "        [--rpm N [--rpm-burst N]] [--tpm N [--tpm-burst N]] [--max-parallel N]\n"
          "        [--expires-at T] [--expiry-policy charge|release] [--blocked]\n"
          "--clear takes: budget, soft-budget, period, rpm, tpm, max-parallel, expires-at,\n"
          "        blocked, expiry-policy, all\n"
          "Reads take --stale (any node answers, maybe behind). Times T: ms since the epoch\n"
          "or UTC ISO-8601 (2026-11-01, 2026-11-01T10:00:00Z). Money in micros (10^-6).\n"
          "Options may appear anywhere; '--' ends them.\n"
          "\n"
          "environment: TALLY_ENDPOINTS, TALLY_TOKEN, TALLY_TOKEN_FILE, TALLY_KEY,\n"
          "        TALLY_KEY_FILE, TALLYCTL_TLS_CA, TALLYCTL_TLS_CERT, TALLYCTL_TLS_KEY,\n"
          "        TALLYCTL_TLS_SERVER_NAME (options win; --token and --key warn: ps shows them)\n"
          "exit status: 0 done/granted, 1 denied, 2 unavailable, 3 bad input or refused\n",
          f);
}

/* help: the usage on stdout. */
static int cmd_help(struct ctl__ctx *x)
{
    (void)x;
    usage(stdout);
    return CTL_OK;
}

/*
 * Split argv into options (by name, anywhere; "--name value" or "--name=value"; "-h" is
 * --help; "--" ends options) and positional words. Returns 0 or CTL_USAGE after printing
 * why.
 */
static int parse_argv(int argc, char **argv, struct ctl__args *a)
{
    bool words_only = false;
    memset(a, 0, sizeof(*a));
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        /* "-5" is a word, so that the command can say a negative is not allowed. */
        if (words_only || arg[0] != '-' || arg[1] == '\0' || (arg[1] >= '0' && arg[1] <= '9')) {
            if (a->n_words == CTL_WORDS_MAX) {
                ctl__say_error(NULL, "too many arguments");
                return CTL_USAGE;
            }
            a->words[a->n_words++] = argv[i];
            continue;
        }
        if (strcmp(arg, "--") == 0) {
            words_only = true;
            continue;
        }
        if (strcmp(arg, "-h") == 0) {
            a->given[CTL_OPT_HELP] = true;
            a->value[CTL_OPT_HELP] = "";
            continue;
        }
        const char *name = arg + 2, *eq = strchr(name, '=');
        size_t len = eq != NULL ? (size_t)(eq - name) : strlen(name);
        int o = -1;
        for (int k = 0; arg[1] == '-' && k < CTL_OPT_COUNT; k++) {
            if (strlen(ctl__opt_specs[k].name) == len &&
                memcmp(ctl__opt_specs[k].name, name, len) == 0) {
                o = k;
            }
        }
        if (o < 0) {
            ctl__say_error(NULL, "unknown option '%s' (see tallyctl --help)", arg);
            return CTL_USAGE;
        }
        if (a->given[o] && ctl__opt_specs[o].takes_value) {
            ctl__say_error(NULL, "--%s is given twice", ctl__opt_specs[o].name);
            return CTL_USAGE;
        }
        if (!ctl__opt_specs[o].takes_value) {
            if (eq != NULL) {
                ctl__say_error(NULL, "--%s takes no value", ctl__opt_specs[o].name);
                return CTL_USAGE;
            }
            a->value[o] = "";
        } else if (eq != NULL) {
            a->value[o] = eq + 1;
        } else if (i + 1 < argc) {
            a->value[o] = argv[++i];
        } else {
            ctl__say_error(NULL, "--%s needs a value", ctl__opt_specs[o].name);
            return CTL_USAGE;
        }
        a->given[o] = true;
    }
    return 0;
}

/* The command named by the first words of `a`, and how many words name it; NULL after
 * printing why when there is none. */
static const struct ctl__command *find_command(const struct ctl__args *a, int *consumed)
{
    bool group_known = false;
    if (a->n_words == 0) {
        ctl__say_error(NULL, "no command given (see tallyctl --help)");
        return NULL;
    }
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
        const struct ctl__command *cmd = &commands[i];
        if (strcmp(cmd->group, a->words[0]) != 0) {
            continue;
        }
        group_known = true;
        if (cmd->name == NULL) {
            *consumed = 1;
            return cmd;
        }
        if (a->n_words > 1 && strcmp(cmd->name, a->words[1]) == 0) {
            *consumed = 2;
            return cmd;
        }
    }
    if (group_known) {
        char names[160] = "";
        for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
            if (strcmp(commands[i].group, a->words[0]) == 0 && commands[i].name != NULL) {
                size_t used = strlen(names);
                snprintf(names + used, sizeof(names) - used, "%s%s", used ? ", " : "",
                         commands[i].name);
            }
        }
        if (a->n_words > 1) {
            ctl__say_error(a->words[0], "unknown subcommand '%s' (one of: %s)", a->words[1], names);
        } else {
            ctl__say_error(a->words[0], "missing subcommand (one of: %s)", names);
        }
    } else {
        ctl__say_error(NULL, "unknown command '%s' (see tallyctl --help)", a->words[0]);
    }
    return NULL;
}

/* Parse, check the command and its options, run it; the exit code is the command's. */
int main(int argc, char **argv)
{
    static struct ctl__args a;
    static struct ctl__ctx x;
    int consumed = 0;
    int rc = parse_argv(argc, argv, &a);
    if (rc != 0) {
        return rc;
    }
    if (a.given[CTL_OPT_HELP]) {
        usage(stdout);
        return CTL_OK;
    }
    const struct ctl__command *cmd = find_command(&a, &consumed);
    if (cmd == NULL) {
        return CTL_USAGE;
    }
    x.cmd = cmd;
    x.a = &a;
    x.words = a.words + consumed;
    x.n_words = a.n_words - consumed;
    x.json = a.given[CTL_OPT_JSON];
    snprintf(x.what, sizeof(x.what), "%s%s%s", cmd->group, cmd->name ? " " : "",
             cmd->name ? cmd->name : "");
    for (int o = 0; o < CTL_OPT_COUNT; o++) {
        if (a.given[o] && !((GLOBAL_OPTS | cmd->opts) & BIT(o))) {
            return ctl__usage_error(&x, "does not take --%s (usage: tallyctl %s)",
                                    ctl__opt_specs[o].name, cmd->synopsis);
        }
    }
    if (x.n_words < cmd->min_words || x.n_words > cmd->max_words) {
        return ctl__usage_error(
            &x, "%s (usage: tallyctl %s)",
            x.n_words < cmd->min_words ? "missing argument" : "too many arguments", cmd->synopsis);
    }
    if (a.given[CTL_OPT_TIMEOUT] &&
        ctl__opt_int(&x, CTL_OPT_TIMEOUT, 1, TIMEOUT_MAX_MS, &x.timeout_ms) != 0) {
        return CTL_USAGE;
    }
    ctl__warn_secrets_in_argv(&x);
    rc = cmd->run(&x);
    tally_close(x.c);
    explicit_bzero(x.token, sizeof(x.token));
    if (fflush(stdout) != 0 || ferror(stdout)) {
        ctl__say_error(NULL, "stdout: %s", strerror(errno));
        if (rc == CTL_OK || rc == CTL_DENIED) {
            rc = CTL_UNAVAILABLE;
        }
    }
    return rc;
}
