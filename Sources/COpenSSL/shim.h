/* OpenSSL: libcrypto for SCRAM-SHA-256 and md5 authentication, libssl for TLS (one crypto library for the project). */
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <openssl/crypto.h>
#include <openssl/ssl.h>
#include <openssl/err.h>
#include <openssl/buffer.h>
#include <openssl/pem.h>
#include <openssl/x509_vfy.h>
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

/* Client certificates (auth = "cert"): ask every TLS client for one, checked against the CA file; a client
   that sends none still connects (only cert users need one), one that sends an untrusted one fails the
   handshake, as PostgreSQL does with ssl_ca_file set. The session id context lets OpenSSL resume sessions
   of a context that verifies peers. */
static inline void cutover_ssl_ctx_request_client_certificates(SSL_CTX *ctx, STACK_OF(X509_NAME) *names) {
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_CLIENT_ONCE, NULL);
    if (names) SSL_CTX_set_client_CA_list(ctx, names);
    static const unsigned char sid[] = "cutover";
    SSL_CTX_set_session_id_context(ctx, sid, sizeof sid - 1);
}
/* Certificate revocation lists for client certificates (PostgreSQL's ssl_crl_file): every CRL in the PEM file
   goes into the context's store and every certificate of a client's chain must then be checked against its
   issuer's CRL (X509_V_FLAG_CRL_CHECK_ALL, as PostgreSQL sets). Returns the number of CRLs added: 0 (a file
   without one would make every client certificate fail "unable to get certificate CRL") or -1 is an error. */
static inline int cutover_ssl_ctx_load_crls(SSL_CTX *ctx, const char *path) {
    BIO *in = BIO_new_file(path, "r");
    if (!in) return -1;
    X509_STORE *store = SSL_CTX_get_cert_store(ctx);
    int added = 0;
    X509_CRL *crl;
    while ((crl = PEM_read_bio_X509_CRL(in, NULL, NULL, NULL)) != NULL) {
        int ok = X509_STORE_add_crl(store, crl);
        X509_CRL_free(crl);
        if (!ok) { BIO_free(in); return -1; }
        added++;
    }
    BIO_free(in);
    /* The loop ends at the end of the file ("no start line"); anything else is a damaged CRL, left queued. */
    unsigned long last = ERR_peek_last_error();
    if (last != 0 && !(ERR_GET_LIB(last) == ERR_LIB_PEM && ERR_GET_REASON(last) == PEM_R_NO_START_LINE)) return -1;
    ERR_clear_error();
    if (added > 0) X509_STORE_set_flags(store, X509_V_FLAG_CRL_CHECK | X509_V_FLAG_CRL_CHECK_ALL);
    return added;
}
/* The verified peer certificate's subject CN as UTF-8 into `out` (NUL-terminated): its length, or -1 when
   there is no verified certificate, no CN, more than one, or one with an embedded NUL (refused, as
   PostgreSQL refuses them: "a\0b" must not pass for "a"). */
static inline int cutover_ssl_peer_common_name(const SSL *ssl, char *out, int size) {
    X509 *cert = SSL_get0_peer_certificate(ssl);
    if (!cert || SSL_get_verify_result(ssl) != X509_V_OK) return -1;
    X509_NAME *subject = X509_get_subject_name(cert);
    int i = X509_NAME_get_index_by_NID(subject, NID_commonName, -1);
    if (i < 0 || X509_NAME_get_index_by_NID(subject, NID_commonName, i) >= 0) return -1;
    unsigned char *utf8 = NULL;
    int n = ASN1_STRING_to_UTF8(&utf8, X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subject, i)));
    if (n < 0) return -1;
    if (n >= size || memchr(utf8, 0, (size_t)n)) { OPENSSL_free(utf8); return -1; }
    memcpy(out, utf8, (size_t)n);
    out[n] = 0;
    OPENSSL_free(utf8);
    return n;
}
