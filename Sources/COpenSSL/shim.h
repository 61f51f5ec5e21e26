/* OpenSSL's libcrypto for SCRAM-SHA-256 and md5 authentication (one crypto library for the project). */
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <openssl/crypto.h>
