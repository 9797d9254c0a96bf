/*
 * node_boot_id_test.c: the node's boot id and the ledger it trusts (raft/storage.c).
 *
 * The node keeps "BOOT_ID clean|open" beside its ledger and rebuilds a ledger left open
 * under another boot (a machine crash may have torn its pages). These tests give the node
 * a boot id file of their own (node_config.boot_id_path) and look at the ledger the node
 * opened, before it starts: a ledger with history was trusted, an empty one was discarded
 * for libraft to rebuild.
 */
#include "test.h" /* first: it sets _GNU_SOURCE */
#include "ledger_testlib.h"
#include "raft/node.h"

#include <stdio.h>
#include <sys/stat.h>
#include <uv.h>

/* A data dir whose ledger has applied one batch and is marked "`boot` `state`". */
static const char *data_dir_with_ledger(const char *boot, const char *state)
{
    const char *dir = test_tmpdir();
    char path[512];
    snprintf(path, sizeof(path), "%s/ledger", dir);
    REQUIRE(mkdir(path, 0750) == 0);
    struct tl t = {.dir = path, .now_ms = 1000};
    char err[LEDGER_ERRMSG_SIZE] = "";
    REQUIRE(ledger_open(&t.l, path, NULL, err) == 0);
    REQUIRE(tl_run(&t, tl_create(&t, "org", "", NULL)).status == LEDGER_OK);
    REQUIRE(ledger_applied_index(t.l) == 1);
    ledger_close(t.l);
    snprintf(path, sizeof(path), "%s/ledger.boot", dir);
    FILE *f = fopen(path, "w");
    REQUIRE(f != NULL);
    fprintf(f, "%s %s\n", boot, state);
    fclose(f);
    return dir;
}

/* A file holding `text` (NULL: a path that does not exist); valid until the next call. */
static const char *boot_id_file(const char *text)
{
    static char path[512];
    snprintf(path, sizeof(path), "%s/boot_id", test_tmpdir());
    if (text != NULL) {
        FILE *f = fopen(path, "w");
        REQUIRE(f != NULL);
        fprintf(f, "%s\n", text);
        fclose(f);
    }
    return path;
}

/* Open a node on `dir` with `boot_path` and `allow`; returns node_open()'s result and,
 * when it opened, the applied index of the ledger it kept (then closes it). */
static int open_node(const char *dir, const char *boot_path, bool allow, uint64_t *applied,
                     char *errmsg)
{
    uv_loop_t loop;
    REQUIRE(uv_loop_init(&loop) == 0);
    struct node_config cfg;
    node_config_init(&cfg);
    cfg.id = 1;
    cfg.dir = dir;
    cfg.address = "127.0.0.1:1";
    cfg.on_fatal = node_exit_fatal;
    cfg.boot_id_path = boot_path;
    cfg.allow_unknown_boot_id = allow;
    cfg.peer_insecure = true; /* the node is opened, never connected */
    struct node *node = NULL;
    int rv = node_open(&node, &loop, &cfg, errmsg);
    if (rv == 0) {
        *applied = ledger_applied_index(node_ledger(node));
        node_close(node, NULL, NULL);
    }
    REQUIRE(uv_run(&loop, UV_RUN_DEFAULT) == 0);
    REQUIRE(uv_loop_close(&loop) == 0);
    return rv;
}

static void unreadable_boot_id_refuses_to_open(void)
{
    const char *dir = data_dir_with_ledger("b1", "open");
    char errmsg[NODE_ERRMSG_SIZE] = "";
    uint64_t applied = 99;
    CHECK_EQ_INT(open_node(dir, boot_id_file(NULL), false, &applied, errmsg), -NODE_EIO);
    CHECK(strstr(errmsg, "cannot read the boot id") != NULL);
    CHECK(strstr(errmsg, "--allow-unknown-boot-id") != NULL);
    /* An empty file is no boot id either. */
    CHECK_EQ_INT(open_node(dir, boot_id_file(""), false, &applied, errmsg), -NODE_EIO);
    /* Nothing was touched: under its own boot the ledger is still trusted. */
    CHECK_EQ_INT(open_node(dir, boot_id_file("b1"), false, &applied, errmsg), 0);
    CHECK_EQ_INT(applied, 1);
}

static void ledger_left_open_is_trusted_only_under_the_same_boot(void)
{
    char errmsg[NODE_ERRMSG_SIZE] = "";
    uint64_t applied = 99;
    const char *dir = data_dir_with_ledger("b1", "open");
    CHECK_EQ_INT(open_node(dir, boot_id_file("b1"), false, &applied, errmsg), 0);
    CHECK_EQ_INT(applied, 1); /* a process crash: the pages are in the kernel */
    dir = data_dir_with_ledger("b1", "open");
    CHECK_EQ_INT(open_node(dir, boot_id_file("b2"), false, &applied, errmsg), 0);
    CHECK_EQ_INT(applied, 0); /* a machine crash: rebuilt */
    dir = data_dir_with_ledger("b1", "clean");
    CHECK_EQ_INT(open_node(dir, boot_id_file("b2"), false, &applied, errmsg), 0);
    CHECK_EQ_INT(applied, 1); /* closed cleanly (synced) before the reboot */
}

/* Allowed to start without a boot id, the node cannot tell a process crash from a machine
 * crash: it rebuilds every ledger not closed cleanly, and keeps a clean one. */
static void unknown_boot_id_allowed_rebuilds_every_unclean_ledger(void)
{
    char errmsg[NODE_ERRMSG_SIZE] = "";
    uint64_t applied = 99;
    const char *dir = data_dir_with_ledger("b1", "open");
    CHECK_EQ_INT(open_node(dir, boot_id_file(NULL), true, &applied, errmsg), 0);
    CHECK_EQ_INT(applied, 0);
    dir = data_dir_with_ledger("b1", "clean");
    CHECK_EQ_INT(open_node(dir, boot_id_file(NULL), true, &applied, errmsg), 0);
    CHECK_EQ_INT(applied, 1);
    /* Left open under an unknown boot: not trusted even when the boot id is readable
     * again, nor when it is still unknown. */
    dir = data_dir_with_ledger("unknown", "open");
    CHECK_EQ_INT(open_node(dir, boot_id_file("b1"), false, &applied, errmsg), 0);
    CHECK_EQ_INT(applied, 0);
    dir = data_dir_with_ledger("unknown", "open");
    CHECK_EQ_INT(open_node(dir, boot_id_file(NULL), true, &applied, errmsg), 0);
    CHECK_EQ_INT(applied, 0);
    /* A file that says "unknown" is not a boot id. */
    dir = data_dir_with_ledger("unknown", "open");
    CHECK_EQ_INT(open_node(dir, boot_id_file("unknown"), false, &applied, errmsg), -NODE_EIO);
}

int main(void)
{
    TEST_MAIN_BEGIN;
    TEST(unreadable_boot_id_refuses_to_open);
    TEST(ledger_left_open_is_trusted_only_under_the_same_boot);
    TEST(unknown_boot_id_allowed_rebuilds_every_unclean_ledger);
    TEST_MAIN_END;
}
