/*
 * peer_message_fuzz.c: libFuzzer target for libraft's decoding of a peer's messages, the
 * code every byte after the handshake on a Raft peer port reaches.
 *
 * It is libraft's own code, built from the patched source tree into the target
 * (uv_encoding.c, configuration.c and what they need; tests/fuzz/run.sh lists them): the
 * input is read the way uv_recv.c reads a connection's stream, which cannot be linked
 * without raft_uv's whole server:
 *
 *   - a 16-byte preamble: the message type (byte 0) and version (byte 2) in the first
 *     little-endian word, the header's length in the second; 0 is refused, a length
 *     longer than the rest of the input is a message still arriving (nothing to do);
 *   - the header, in a buffer of exactly its length, given to uvDecodeMessage(), which
 *     says how long the payload is;
 *   - the payload (again exactly its length, if the input holds it): for an
 *     AppendEntries, uvDecodeEntriesBatch() places the entries in it; each entry's bytes
 *     are then read, as the state machine reads them, and a RAFT_CHANGE entry is decoded
 *     as a configuration, as libraft does when it appends one. For an InstallSnapshot the
 *     payload is the snapshot's data.
 *
 * ASan and UBSan catch a read outside the header, the payload or an entry; the target
 * also checks that a refused message owns nothing and that a decoded one's entry count
 * fits its header.
 *
 * Built with -DPEER_FUZZ_SEEDS this file is instead a program that writes a seed corpus
 * into the directory given as its argument: one message of each type encoded by libraft's
 * uvEncodeMessage(), with entries of both kinds and a three-server configuration.
 */
#include <raft.h>

#include "configuration.h"
#include "uv_encoding.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PREAMBLE_BYTES 16

static void fail(const char *what, int type, int rv)
{
    fprintf(stderr, "peer_message_fuzz: %s (type %d, rv %d)\n", what, type, rv);
    abort();
}

static uint64_t le64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) {
        v = v << 8 | p[i];
    }
    return v;
}

/* Read every byte of each entry, as the FSM does; decode configuration changes. */
static void use_entries(const struct raft_append_entries *ae)
{
    volatile uint8_t sum = 0;
    for (unsigned i = 0; i < ae->n_entries; i++) {
        const struct raft_entry *e = &ae->entries[i];
        for (size_t j = 0; j < e->buf.len; j++) {
            sum ^= ((const uint8_t *)e->buf.base)[j];
        }
        if (e->type == RAFT_CHANGE && e->buf.len > 0) {
            struct raft_configuration conf;
            if (configurationDecode(&e->buf, &conf) == 0) {
                configurationClose(&conf);
            }
        }
    }
    (void)sum;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < PREAMBLE_BYTES) {
        return 0;
    }
    uint64_t preamble0 = le64(data);
    uint64_t header_len = le64(data + 8);
    size_t rest = size - PREAMBLE_BYTES;
    if (header_len == 0 || header_len > rest) {
        return 0;
    }
    uint8_t type = (uint8_t)preamble0;
    uint8_t version = (uint8_t)(preamble0 >> 16);

    uv_buf_t header = {.base = malloc(header_len), .len = header_len};
    if (header.base == NULL) {
        return 0;
    }
    memcpy(header.base, data + PREAMBLE_BYTES, header_len);
    struct raft_message message;
    size_t payload_len = 0;
    int rv = uvDecodeMessage(type, version, &header, &message, &payload_len);
    free(header.base);
    if (rv != 0) {
        if (type == RAFT_APPEND_ENTRIES && message.append_entries.entries != NULL) {
            fail("a refused AppendEntries still holds entries", type, rv);
        }
        return 0;
    }
    if (type == RAFT_APPEND_ENTRIES && message.append_entries.n_entries > (header_len - 40) / 16) {
        fail("more entries than the header holds", type, rv);
    }

    rest -= header_len;
    const uint8_t *payload_in = data + PREAMBLE_BYTES + header_len;
    uint8_t *payload = NULL;
    if (payload_len > 0 && payload_len <= rest) {
        payload = malloc(payload_len);
        if (payload != NULL) {
            memcpy(payload, payload_in, payload_len);
            if (type == RAFT_APPEND_ENTRIES) {
                uvDecodeEntriesBatch(payload, 0, message.append_entries.entries,
                                     message.append_entries.n_entries);
                use_entries(&message.append_entries);
            }
        }
    }
    free(payload);
    if (type == RAFT_APPEND_ENTRIES) {
        raft_free(message.append_entries.entries);
    }
    if (type == RAFT_INSTALL_SNAPSHOT) {
        configurationClose(&message.install_snapshot.conf);
    }
    return 0;
}

#ifdef PEER_FUZZ_SEEDS
static void write_seed(const char *dir, const char *name, const struct raft_message *m)
{
    uv_buf_t *bufs;
    unsigned n;
    if (uvEncodeMessage(m, &bufs, &n) != 0) {
        fail("uvEncodeMessage", m->type, -1);
    }
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (f == NULL) {
        fail("cannot write a seed", m->type, -1);
    }
    for (unsigned i = 0; i < n; i++) {
        if (bufs[i].len > 0 && fwrite(bufs[i].base, 1, bufs[i].len, f) != bufs[i].len) {
            fail("cannot write a seed", m->type, -1);
        }
    }
    fclose(f);
    raft_free(bufs[0].base);
    raft_free(bufs);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s DIR\n", argv[0]);
        return 2;
    }
    const char *dir = argv[1];
    struct raft_configuration conf;
    configurationInit(&conf);
    if (configurationAdd(&conf, 1, "127.0.0.1:7101", RAFT_VOTER) != 0 ||
        configurationAdd(&conf, 2, "127.0.0.1:7102", RAFT_VOTER) != 0 ||
        configurationAdd(&conf, 3, "127.0.0.1:7103", RAFT_STANDBY) != 0) {
        fail("configuration", 0, -1);
    }
    struct raft_buffer conf_buf;
    if (configurationEncode(&conf, &conf_buf) != 0) {
        fail("configurationEncode", 0, -1);
    }
    static uint8_t command[16] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};
    struct raft_entry entries[2] = {
        {.term = 3, .type = RAFT_COMMAND, .buf = {.base = command, .len = sizeof(command)}},
        {.term = 3, .type = RAFT_CHANGE, .buf = conf_buf},
    };
    struct raft_message m;

    memset(&m, 0, sizeof(m));
    m.type = RAFT_REQUEST_VOTE;
    m.request_vote = (struct raft_request_vote){.version = 2,
                                                .term = 4,
                                                .candidate_id = 2,
                                                .last_log_index = 9,
                                                .last_log_term = 3,
                                                .pre_vote = true};
    write_seed(dir, "request_vote", &m);

    memset(&m, 0, sizeof(m));
    m.type = RAFT_REQUEST_VOTE_RESULT;
    m.request_vote_result =
        (struct raft_request_vote_result){.version = 2, .term = 4, .vote_granted = 1};
    write_seed(dir, "request_vote_result", &m);

    memset(&m, 0, sizeof(m));
    m.type = RAFT_APPEND_ENTRIES;
    m.append_entries = (struct raft_append_entries){.term = 3,
                                                    .prev_log_index = 7,
                                                    .prev_log_term = 3,
                                                    .leader_commit = 7,
                                                    .entries = entries,
                                                    .n_entries = 2};
    write_seed(dir, "append_entries", &m);
    m.append_entries.n_entries = 0;
    write_seed(dir, "heartbeat", &m);

    memset(&m, 0, sizeof(m));
    m.type = RAFT_APPEND_ENTRIES_RESULT;
    m.append_entries_result = (struct raft_append_entries_result){
        .version = 2, .term = 3, .rejected = 0, .last_log_index = 9, .capacity = 100};
    write_seed(dir, "append_entries_result", &m);

    memset(&m, 0, sizeof(m));
    m.type = RAFT_INSTALL_SNAPSHOT;
    m.install_snapshot =
        (struct raft_install_snapshot){.term = 3,
                                       .last_index = 9,
                                       .last_term = 3,
                                       .conf_index = 8,
                                       .conf = conf,
                                       .data = {.base = command, .len = sizeof(command)}};
    write_seed(dir, "install_snapshot", &m);

    memset(&m, 0, sizeof(m));
    m.type = RAFT_TIMEOUT_NOW;
    m.timeout_now = (struct raft_timeout_now){.term = 3, .last_log_index = 9, .last_log_term = 3};
    write_seed(dir, "timeout_now", &m);

    raft_free(conf_buf.base);
    configurationClose(&conf);
    return 0;
}
#endif
