/* OpenSSL: libcrypto for SCRAM-SHA-256 and md5 authentication, libssl for TLS (one crypto library for the project). */
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <openssl/crypto.h>
#include <openssl/ssl.h>
#include <openssl/err.h>
#include <openssl/buffer.h>

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
