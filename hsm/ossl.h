// Owning pointers for OpenSSL objects, in the BoringSSL style: business code
// never calls *_free itself.
#pragma once

#include <memory>

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/cms.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <openssl/params.h>
#include <openssl/pkcs12.h>
#include <openssl/provider.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

namespace keywarden::ossl {

template <typename T>
struct Deleter;

#define KEYWARDEN_OSSL_DELETER(type, fn)      \
  template <>                                 \
  struct Deleter<type> {                      \
    void operator()(type* p) const { fn(p); } \
  };

KEYWARDEN_OSSL_DELETER(BIO, BIO_free_all)
KEYWARDEN_OSSL_DELETER(BIGNUM, BN_clear_free)
KEYWARDEN_OSSL_DELETER(BN_CTX, BN_CTX_free)
KEYWARDEN_OSSL_DELETER(CMS_ContentInfo, CMS_ContentInfo_free)
KEYWARDEN_OSSL_DELETER(ECDSA_SIG, ECDSA_SIG_free)
KEYWARDEN_OSSL_DELETER(EVP_CIPHER, EVP_CIPHER_free)
KEYWARDEN_OSSL_DELETER(EVP_CIPHER_CTX, EVP_CIPHER_CTX_free)
KEYWARDEN_OSSL_DELETER(EVP_MD, EVP_MD_free)
KEYWARDEN_OSSL_DELETER(EVP_MD_CTX, EVP_MD_CTX_free)
KEYWARDEN_OSSL_DELETER(EVP_PKEY, EVP_PKEY_free)
KEYWARDEN_OSSL_DELETER(EVP_PKEY_CTX, EVP_PKEY_CTX_free)
KEYWARDEN_OSSL_DELETER(OSSL_LIB_CTX, OSSL_LIB_CTX_free)
KEYWARDEN_OSSL_DELETER(OSSL_PARAM_BLD, OSSL_PARAM_BLD_free)
KEYWARDEN_OSSL_DELETER(OSSL_PARAM, OSSL_PARAM_free)
KEYWARDEN_OSSL_DELETER(X509, X509_free)
KEYWARDEN_OSSL_DELETER(X509_ALGOR, X509_ALGOR_free)
KEYWARDEN_OSSL_DELETER(X509_ATTRIBUTE, X509_ATTRIBUTE_free)
KEYWARDEN_OSSL_DELETER(X509_CRL, X509_CRL_free)
KEYWARDEN_OSSL_DELETER(X509_NAME, X509_NAME_free)
KEYWARDEN_OSSL_DELETER(X509_REQ, X509_REQ_free)
KEYWARDEN_OSSL_DELETER(X509_STORE, X509_STORE_free)
KEYWARDEN_OSSL_DELETER(X509_STORE_CTX, X509_STORE_CTX_free)
KEYWARDEN_OSSL_DELETER(ASN1_OBJECT, ASN1_OBJECT_free)
KEYWARDEN_OSSL_DELETER(ASN1_STRING, ASN1_STRING_free)
KEYWARDEN_OSSL_DELETER(PKCS12, PKCS12_free)
// The stack only: the certificates in it are not freed (they are borrowed).
KEYWARDEN_OSSL_DELETER(STACK_OF(X509), sk_X509_free)
KEYWARDEN_OSSL_DELETER(EXTENDED_KEY_USAGE, EXTENDED_KEY_USAGE_free)

#undef KEYWARDEN_OSSL_DELETER

template <typename T>
using UniquePtr = std::unique_ptr<T, Deleter<T>>;

}  // namespace keywarden::ossl
