/*
 * tls.h: TLS for the client port, in user space (kernel TLS is not available), with
 * OpenSSL driven through memory BIOs so the libuv loop keeps owning the socket.
 *
 * The server hands every ciphertext chunk it reads to rpc_tls_input(), which runs the
 * handshake and appends whatever plaintext comes out; it encrypts answers with
 * rpc_tls_write() and sends what rpc_tls_take_output() gives it. Nothing here blocks or
 * touches a socket.
 *
 * Client certificates (optional): with a client CA configured, a client may present a
 * certificate signed by it; the handshake then verifies it. Verifying grants nothing: the
 * certificate's fingerprint (SHA-256 of its DER) must also be in the token file
 * (rpc/auth.c), which names its role and principal. A connection authenticated that way
 * may send HELLO with an empty token. Without a certificate a client authenticates by
 * token.
 */
#ifndef TALLY_RPC_TLS_H
#define TALLY_RPC_TLS_H

#include "rpc/errors.h"
#include "wire/wire.h"

#include <stddef.h>
#include <stdint.h>

struct rpc_tls_ctx;
struct rpc_tls;

/*
 * Load the server certificate chain and key (PEM files) and, if client_ca is not NULL,
 * the CA that signs client certificates. TLS 1.2 or later. Returns 0, or -RPC_START_ECONFIG
 * (-RPC_START_ENOMEM) with the reason (OpenSSL's, with the file name) in errmsg.
 */
int rpc_tls_ctx_new(struct rpc_tls_ctx **out, const char *cert_file, const char *key_file,
                    const char *client_ca_file, char *errmsg, size_t size);
void rpc_tls_ctx_free(struct rpc_tls_ctx *ctx);

/* A server-side session for one connection. 0 or -1 (out of memory). */
int rpc_tls_new(struct rpc_tls **out, struct rpc_tls_ctx *ctx);
void rpc_tls_free(struct rpc_tls *t);

/*
 * Feed `n` bytes read from the socket; append the plaintext they complete to `plain`.
 * Returns 0, or -1 if the session failed (bad handshake, bad record, unverifiable client
 * certificate): send what rpc_tls_take_output() still holds (an alert) and close.
 */
int rpc_tls_input(struct rpc_tls *t, const void *data, size_t n, struct rpc_buf *plain);

/* Encrypt `n` plaintext bytes (queued inside until the handshake is done). 0 or -1. */
int rpc_tls_write(struct rpc_tls *t, const void *data, size_t n);

/* Move every ciphertext byte waiting to be sent into `out` (appended). 0 or -1. */
int rpc_tls_take_output(struct rpc_tls *t, struct rpc_buf *out);

/* Whether ciphertext is waiting to be sent. */
bool rpc_tls_has_output(const struct rpc_tls *t);

/*
 * The SHA-256 of the DER of the client certificate the handshake verified, in `out`.
 * Returns 0, or -1 if the client presented none (or it did not verify).
 */
int rpc_tls_peer_fingerprint(struct rpc_tls *t, uint8_t out[32]);

/* After a failed session: why the client's certificate did not verify (OpenSSL's static
 * text), or NULL if the failure was not about a client certificate. */
const char *rpc_tls_verify_error(const struct rpc_tls *t);

#endif /* TALLY_RPC_TLS_H */
