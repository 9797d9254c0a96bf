/*
 * tls.c: server-side TLS over memory BIOs (see tls.h).
 *
 * Each session has two memory BIOs: `in` receives the ciphertext the loop read, `out`
 * collects what OpenSSL wants sent. Plaintext written before the handshake finished is
 * kept in `pending` and written once SSL_write can take it, so the caller never has to
 * know about WANT_READ.
 */
#include "rpc/tls.h"

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PLAIN_CHUNK 16384

struct rpc_tls_ctx {
    SSL_CTX *ssl;
};

struct rpc_tls {
    SSL *ssl;
    BIO *in, *out;         /* owned by ssl */
    struct rpc_buf pending; /* plaintext written before SSL_write could take it */
};

static void ssl_error(char *errmsg, size_t size, const char *what, const char *file)
{
    char reason[256] = "unknown error";
    unsigned long e = ERR_get_error();
    if (e != 0) {
        ERR_error_string_n(e, reason, sizeof(reason));
    }
    ERR_clear_error();
    snprintf(errmsg, size, "%s %s: %s", what, file != NULL ? file : "", reason);
}

int rpc_tls_ctx_new(struct rpc_tls_ctx **out, const char *cert_file, const char *key_file,
                    const char *client_ca_file, char *errmsg, size_t size)
{
    struct rpc_tls_ctx *ctx = calloc(1, sizeof(*ctx));
    if (ctx == NULL || (ctx->ssl = SSL_CTX_new(TLS_server_method())) == NULL) {
        free(ctx);
        snprintf(errmsg, size, "out of memory");
        return -RPC_START_ENOMEM;
    }
    SSL_CTX_set_min_proto_version(ctx->ssl, TLS1_2_VERSION);
    SSL_CTX_set_mode(ctx->ssl, SSL_MODE_ENABLE_PARTIAL_WRITE);
    if (SSL_CTX_use_certificate_chain_file(ctx->ssl, cert_file) != 1) {
        ssl_error(errmsg, size, "tls certificate", cert_file);
    } else if (SSL_CTX_use_PrivateKey_file(ctx->ssl, key_file, SSL_FILETYPE_PEM) != 1) {
        ssl_error(errmsg, size, "tls key", key_file);
    } else if (SSL_CTX_check_private_key(ctx->ssl) != 1) {
        ssl_error(errmsg, size, "tls key does not match the certificate", key_file);
    } else if (client_ca_file != NULL &&
               SSL_CTX_load_verify_locations(ctx->ssl, client_ca_file, NULL) != 1) {
        ssl_error(errmsg, size, "tls client CA", client_ca_file);
    } else {
        if (client_ca_file != NULL) {
            /* A certificate is optional (tokens still work), but one presented must verify. */
            SSL_CTX_set_verify(ctx->ssl, SSL_VERIFY_PEER, NULL);
            STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(client_ca_file);
            if (names != NULL) {
                SSL_CTX_set_client_CA_list(ctx->ssl, names);
            }
        }
        *out = ctx;
        return 0;
    }
    SSL_CTX_free(ctx->ssl);
    free(ctx);
    return -RPC_START_ECONFIG;
}

void rpc_tls_ctx_free(struct rpc_tls_ctx *ctx)
{
    if (ctx != NULL) {
        SSL_CTX_free(ctx->ssl);
        free(ctx);
    }
}

int rpc_tls_new(struct rpc_tls **out, struct rpc_tls_ctx *ctx)
{
    struct rpc_tls *t = calloc(1, sizeof(*t));
    if (t == NULL) {
        return -1;
    }
    t->ssl = SSL_new(ctx->ssl);
    t->in = BIO_new(BIO_s_mem());
    t->out = BIO_new(BIO_s_mem());
    if (t->ssl == NULL || t->in == NULL || t->out == NULL) {
        BIO_free(t->in);
        BIO_free(t->out);
        SSL_free(t->ssl);
        free(t);
        return -1;
    }
    SSL_set_bio(t->ssl, t->in, t->out);
    SSL_set_accept_state(t->ssl);
    *out = t;
    return 0;
}

void rpc_tls_free(struct rpc_tls *t)
{
    if (t != NULL) {
        SSL_free(t->ssl); /* frees both BIOs */
        rpc_buf_free(&t->pending);
        free(t);
    }
}

/* Hand `pending` plaintext to SSL_write as far as it takes it. 0 or -1. */
static int flush_pending(struct rpc_tls *t)
{
    size_t done = 0;
    while (done < t->pending.len) {
        size_t chunk = t->pending.len - done;
        int n = SSL_write(t->ssl, t->pending.data + done, chunk > INT32_MAX ? INT32_MAX : (int)chunk);
        if (n <= 0) {
            int err = SSL_get_error(t->ssl, n);
            if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
                break; /* handshake not done: kept for later */
            }
            ERR_clear_error();
            return -1;
        }
        done += (size_t)n;
    }
    if (done > 0) {
        memmove(t->pending.data, t->pending.data + done, t->pending.len - done);
        t->pending.len -= done;
    }
    return 0;
}

int rpc_tls_input(struct rpc_tls *t, const void *data, size_t n, struct rpc_buf *plain)
{
    if (n > 0 && BIO_write(t->in, data, (int)n) != (int)n) {
        return -1;
    }
    uint8_t chunk[PLAIN_CHUNK];
    for (;;) {
        int got = SSL_read(t->ssl, chunk, sizeof(chunk));
        if (got > 0) {
            if (rpc_buf_append(plain, chunk, (size_t)got) != 0) {
                return -1;
            }
            continue;
        }
        int err = SSL_get_error(t->ssl, got);
        if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
            break;
        }
        ERR_clear_error();
        return -1; /* a failed handshake, a bad record, or the peer's close_notify */
    }
    return flush_pending(t);
}

int rpc_tls_write(struct rpc_tls *t, const void *data, size_t n)
{
    if (rpc_buf_append(&t->pending, data, n) != 0) {
        return -1;
    }
    return flush_pending(t);
}

int rpc_tls_take_output(struct rpc_tls *t, struct rpc_buf *out)
{
    char chunk[PLAIN_CHUNK];
    int n;
    while ((n = BIO_read(t->out, chunk, sizeof(chunk))) > 0) {
        if (rpc_buf_append(out, chunk, (size_t)n) != 0) {
            return -1;
        }
    }
    return 0;
}

bool rpc_tls_has_output(const struct rpc_tls *t)
{
    return BIO_ctrl_pending(t->out) > 0;
}

int rpc_tls_peer_fingerprint(struct rpc_tls *t, uint8_t out[32])
{
    X509 *cert = SSL_get1_peer_certificate(t->ssl);
    unsigned int len = 0;
    int rv = -1;
    if (cert != NULL && SSL_get_verify_result(t->ssl) == X509_V_OK &&
        X509_digest(cert, EVP_sha256(), out, &len) == 1 && len == 32) {
        rv = 0;
    }
    X509_free(cert);
    return rv;
}

const char *rpc_tls_verify_error(const struct rpc_tls *t)
{
    long result = SSL_get_verify_result(t->ssl);
    return result == X509_V_OK ? NULL : X509_verify_cert_error_string(result);
}
