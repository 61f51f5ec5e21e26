/* OpenSSL: libcrypto for SCRAM-SHA-256 and md5 authentication, libssl for TLS (one crypto library for the project). */
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <openssl/crypto.h>
#include <openssl/ssl.h>
#include <openssl/err.h>
#include <openssl/buffer.h>
#include <string.h>

/* Function-like macros Swift does not import. */
/* TLS 1.2 or later; idle connections give their buffers back; no renegotiation (a denial-of-service lever
   PostgreSQL does not use). */
static inline void cutover_ssl_ctx_configure(SSL_CTX *ctx) {
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION);
}
static inline int cutover_ssl_set_host_name(SSL *ssl, const char *name) { return (int)SSL_set_tlsext_host_name(ssl, name); }
/* A memory BIO's pending bytes without copying them out, and emptying it afterwards. */
static inline long cutover_bio_mem_data(BIO *b, char **data) { return BIO_get_mem_data(b, data); }
static inline int cutover_bio_reset(BIO *b) { return (int)BIO_reset(b); }
/* How much a memory BIO has allocated (it keeps the most it ever held, and BIO_reset zeroes all of it). */
static inline size_t cutover_bio_mem_capacity(BIO *b) { BUF_MEM *m = NULL; BIO_get_mem_ptr(b, &m); return m ? m->max : 0; }
static inline const char *cutover_ssl_cipher_name(const SSL *ssl) { return SSL_get_cipher_name(ssl); }

/* ALPN "postgresql" (PostgreSQL 17's direct TLS negotiation): chosen when the client offers it; a client
   that offers none (the SSLRequest way) continues without. */
static const unsigned char cutover_alpn_postgresql[] = "\x0apostgresql";
static int cutover_alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                               const unsigned char *in, unsigned int inlen, void *arg) {
    (void)ssl; (void)arg;
    if (SSL_select_next_proto((unsigned char **)out, outlen, cutover_alpn_postgresql, 11, in, inlen) == OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_OK;
    return SSL_TLSEXT_ERR_NOACK;
}
static inline void cutover_ssl_ctx_offer_postgresql_alpn(SSL_CTX *ctx) { SSL_CTX_set_alpn_select_cb(ctx, cutover_alpn_select, NULL); }
static inline int cutover_ssl_alpn_is_postgresql(const SSL *ssl) {
    const unsigned char *p = NULL; unsigned int n = 0;
    SSL_get0_alpn_selected(ssl, &p, &n);
    return n == 10 && memcmp(p, "postgresql", 10) == 0;
}
