/*
 * peer_handshake_fuzz.c: libFuzzer target for the handshake libraft's TCP transport reads
 * from every connection to a Raft peer port, before anything else.
 *
 * The handshake is parsed inside uv_tcp_listen.c's read callbacks, which only a socket
 * reaches, so the target runs libraft's real listener (raft_uv_tcp, built from the
 * patched source tree into the target) on a loopback port of its own uv loop, started
 * once. Each input is one connection: the bytes are written, the write side is shut, and
 * the loop runs until the listener has either handed the connection to the accept
 * callback or closed it (at the end of the input if not before). The accept callback
 * copies the address as raft_uv's (uv_recv.c) does, with strlen.
 *
 * ASan catches a read past the address buffer (the bug patch 0007 fixes) or any other;
 * the target also checks that every connection ends within a second, that an accepted
 * address is shorter than the input, and that what was accepted started with protocol 1.
 *
 * Built with -DPEER_FUZZ_SEEDS this file is instead a program that writes a seed corpus
 * into the directory given as its argument: a valid handshake, the unterminated one of
 * the finding, and one declaring an oversized address.
 */
#include <raft.h>
#include <raft/uv.h>
#include <uv.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define END_MS_MAX 1000

static void fail(const char *what, long v)
{
    fprintf(stderr, "peer_handshake_fuzz: %s (%ld)\n", what, v);
    abort();
}

static struct {
    uv_loop_t loop;
    struct raft_uv_transport transport;
    struct sockaddr_in addr;
    char address[32];
    unsigned accepted;
    size_t accepted_len;
} fz;

static void close_and_free(uv_handle_t *handle)
{
    raft_free(handle);
}

static void on_accept(struct raft_uv_transport *t, raft_id id, const char *address,
                      struct uv_stream_s *stream)
{
    (void)t;
    (void)id;
    fz.accepted++;
    fz.accepted_len = strlen(address);
    uv_close((uv_handle_t *)stream, close_and_free);
}

/* Bind a socket to port 0 for the kernel's pick, free it, and listen there. */
static void start_listener(void)
{
    signal(SIGPIPE, SIG_IGN);
    fz.addr =
        (struct sockaddr_in){.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(fz.addr);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0 || bind(fd, (struct sockaddr *)&fz.addr, sizeof(fz.addr)) != 0 ||
        getsockname(fd, (struct sockaddr *)&fz.addr, &len) != 0) {
        fail("cannot find a free loopback port", errno);
    }
    close(fd);
    snprintf(fz.address, sizeof(fz.address), "127.0.0.1:%d", ntohs(fz.addr.sin_port));
    if (uv_loop_init(&fz.loop) != 0) {
        fail("uv_loop_init", 0);
    }
    fz.transport.version = 1;
    if (raft_uv_tcp_init(&fz.transport, &fz.loop) != 0 ||
        fz.transport.init(&fz.transport, 1, fz.address) != 0 ||
        fz.transport.listen(&fz.transport, on_accept) != 0) {
        fail("the raft_uv_tcp listener does not start", 0);
    }
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (fz.address[0] == '\0') {
        start_listener();
    }
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&fz.addr, sizeof(fz.addr)) != 0) {
        fail("cannot connect to the listener", errno);
    }
    /* The listener may close before reading everything: a short write is fine. */
    if (size > 0 && send(fd, data, size, MSG_NOSIGNAL) < 0 && errno != EPIPE &&
        errno != ECONNRESET) {
        fail("send", errno);
    }
    shutdown(fd, SHUT_WR);

    unsigned accepted_before = fz.accepted;
    int64_t deadline = now_ms() + END_MS_MAX;
    for (;;) {
        uv_run(&fz.loop, UV_RUN_NOWAIT);
        char c;
        ssize_t n = recv(fd, &c, 1, MSG_DONTWAIT);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)) {
            break; /* closed by the listener, or by the accept callback */
        }
        if (n > 0) {
            fail("the listener sent bytes during a handshake", n);
        }
        if (now_ms() > deadline) {
            fail("a connection neither accepted nor closed", (long)size);
        }
    }
    close(fd);
    /* Run the close callbacks of this connection before the next one. */
    uv_run(&fz.loop, UV_RUN_NOWAIT);

    if (fz.accepted != accepted_before) {
        if (size < 24 || data[0] != 1 || memcmp(data + 1, "\0\0\0\0\0\0\0", 7) != 0) {
            fail("accepted a handshake that is not protocol 1", (long)size);
        }
        if (fz.accepted_len >= size - 24) {
            fail("an accepted address as long as the input after the preamble",
                 (long)fz.accepted_len);
        }
    }
    return 0;
}

#ifdef PEER_FUZZ_SEEDS
static void put_le(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++) {
        p[i] = (uint8_t)(v >> (8 * i));
    }
}

static void write_seed(const char *dir, const char *name, uint64_t id, uint64_t address_len,
                       const char *address, size_t address_bytes)
{
    uint8_t buf[64] = {0};
    put_le(buf, 1);
    put_le(buf + 8, id);
    put_le(buf + 16, address_len);
    if (address_bytes > sizeof(buf) - 24) {
        fail("seed too long", (long)address_bytes);
    }
    memcpy(buf + 24, address, address_bytes);
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (f == NULL || fwrite(buf, 1, 24 + address_bytes, f) != 24 + address_bytes) {
        fail("cannot write a seed", 0);
    }
    fclose(f);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s DIR\n", argv[0]);
        return 2;
    }
    static const char valid[16] = "127.0.0.1:7102"; /* NUL-padded to 16 bytes */
    write_seed(argv[1], "valid", 2, sizeof(valid), valid, sizeof(valid));
    write_seed(argv[1], "unterminated", 2, 8, "AAAAAAAA", 8);
    write_seed(argv[1], "oversized", 2, 1u << 20, "", 0);
    return 0;
}
#endif
