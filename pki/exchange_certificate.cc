#include "pki/exchange_certificate.h"

#include <ctime>
#include <memory>
#include <string>

#include <openssl/err.h>
#include <openssl/x509v3.h>

#include "hsm/strings.h"
#include "pki/certificate.h"

namespace keywarden::pki {
namespace {

absl::Status Refuse(X509* exchange, std::string_view why) {
  const std::string serial = [&] {
    const ASN1_INTEGER* s = X509_get0_serialNumber(exchange);
    ossl::UniquePtr<BIGNUM> bn(ASN1_INTEGER_to_BN(s, nullptr));
    char* hex = bn ? BN_bn2hex(bn.get()) : nullptr;
    std::string out = hex != nullptr ? AsciiLower(hex) : std::string("?");
    OPENSSL_free(hex);
    return out;
  }();
  ERR_clear_error();
  return absl::FailedPreconditionError(StrCat("the CA exchange certificate (serial ", serial, ") ",
                                              why, "; refusing to encrypt the private key to it"));
}

// "2024-05-01 12:00:00Z" for an ASN1_TIME.
std::string TimeText(const ASN1_TIME* t) {
  struct tm tm {};
  if (ASN1_TIME_to_tm(t, &tm) != 1) return "?";
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%SZ", &tm);
  return buf;
}

bool HasEku(X509* cert, const char* oid) {
  auto* ekus =
      static_cast<EXTENDED_KEY_USAGE*>(X509_get_ext_d2i(cert, NID_ext_key_usage, nullptr, nullptr));
  if (ekus == nullptr) return false;
  bool found = false;
  for (int i = 0; i < sk_ASN1_OBJECT_num(ekus); ++i) {
    char buf[128];
    const int n = OBJ_obj2txt(buf, sizeof buf, sk_ASN1_OBJECT_value(ekus, i), 1);
    if (n > 0 && n < static_cast<int>(sizeof buf) && std::string(buf) == oid) found = true;
  }
  EXTENDED_KEY_USAGE_free(ekus);
  return found;
}

struct StackDeleter {
  void operator()(STACK_OF(X509) * s) const { sk_X509_free(s); }
};

}  // namespace

absl::Status VerifyExchangeCertificate(X509* exchange, const ExchangeTrust& trust) {
  if (exchange == nullptr) return absl::InvalidArgumentError("no CA exchange certificate");
  if (trust.ca_chain.empty() || trust.ca_chain[0] == nullptr) {
    return absl::InvalidArgumentError(
        "no CA certificate to check the CA exchange certificate against");
  }
  X509* ca = trust.ca_chain[0];
  const time_t now = trust.now != 0 ? static_cast<time_t>(trust.now) : std::time(nullptr);

  // RSA only.
  EVP_PKEY* key = X509_get0_pubkey(exchange);
  if (key == nullptr) return Refuse(exchange, "has an unreadable public key");
  if (EVP_PKEY_is_a(key, "RSA") != 1) {
    return Refuse(exchange, StrCat("has a ", EVP_PKEY_get0_type_name(key),
                                   " key, not RSA (key archival encrypts to RSA keys only)"));
  }

  // Issued and signed by the CA key.
  if (X509_NAME_cmp(X509_get_issuer_name(exchange), X509_get_subject_name(ca)) != 0) {
    return Refuse(exchange,
                  StrCat("was issued by \"", FormatName(X509_get_issuer_name(exchange)),
                         "\", not by the CA \"", FormatName(X509_get_subject_name(ca)), "\""));
  }
  EVP_PKEY* ca_key = X509_get0_pubkey(ca);
  if (ca_key == nullptr || X509_verify(exchange, ca_key) != 1) {
    return Refuse(exchange, StrCat("is not signed by the CA key (the signature does not verify "
                                   "with the public key of \"",
                                   FormatName(X509_get_subject_name(ca)), "\")"));
  }
  const int issued = X509_check_issued(ca, exchange);
  if (issued != X509_V_OK) {
    return Refuse(exchange, StrCat("does not name the CA as its issuer: ",
                                   X509_verify_cert_error_string(issued)));
  }

  // Validity.
  time_t t = now;
  if (X509_cmp_time(X509_get0_notBefore(exchange), &t) > 0) {
    return Refuse(exchange,
                  StrCat("is not valid before ", TimeText(X509_get0_notBefore(exchange))));
  }
  if (X509_cmp_time(X509_get0_notAfter(exchange), &t) < 0) {
    return Refuse(exchange, StrCat("expired on ", TimeText(X509_get0_notAfter(exchange))));
  }

  // Purpose: CA exchange, key encipherment.
  if (!HasEku(exchange, kOidCaExchange)) {
    return Refuse(exchange, StrCat("has no extendedKeyUsage ", kOidCaExchange, " (CA exchange)"));
  }
  const uint32_t flags = X509_get_extension_flags(exchange);
  if ((flags & EXFLAG_INVALID) != 0) return Refuse(exchange, "has malformed extensions");
  if ((flags & EXFLAG_KUSAGE) == 0) {
    return Refuse(exchange, "has no keyUsage extension (keyEncipherment is required)");
  }
  if ((X509_get_key_usage(exchange) & KU_KEY_ENCIPHERMENT) == 0) {
    return Refuse(exchange, "has a keyUsage without keyEncipherment");
  }

  // The path to a trust anchor, through the CA certificate.
  ossl::UniquePtr<X509_STORE> store(X509_STORE_new());
  std::unique_ptr<STACK_OF(X509), StackDeleter> untrusted(sk_X509_new_null());
  if (!store || !untrusted) return absl::InternalError("out of memory");
  const std::vector<X509*>& anchors = trust.trust_anchors;
  if (anchors.empty()) {
    if (trust.ca_chain.back() == nullptr) return absl::InvalidArgumentError("null CA certificate");
    X509_STORE_add_cert(store.get(), trust.ca_chain.back());
  }
  for (X509* a : anchors) {
    if (a == nullptr || X509_STORE_add_cert(store.get(), a) != 1) {
      return absl::InvalidArgumentError("a trust anchor is not a usable certificate");
    }
  }
  for (X509* c : trust.ca_chain) {
    if (c != nullptr) sk_X509_push(untrusted.get(), c);
  }
  ossl::UniquePtr<X509_STORE_CTX> ctx(X509_STORE_CTX_new());
  if (!ctx || X509_STORE_CTX_init(ctx.get(), store.get(), exchange, untrusted.get()) != 1) {
    return absl::InternalError("certificate path validation could not start");
  }
  X509_VERIFY_PARAM* param = X509_STORE_CTX_get0_param(ctx.get());
  X509_VERIFY_PARAM_set_time(param, now);
  // An anchor may be the issuing CA itself rather than a self-signed root.
  X509_VERIFY_PARAM_set_flags(param, X509_V_FLAG_PARTIAL_CHAIN);
  if (X509_verify_cert(ctx.get()) != 1) {
    const int err = X509_STORE_CTX_get_error(ctx.get());
    const int depth = X509_STORE_CTX_get_error_depth(ctx.get());
    X509* at = X509_STORE_CTX_get_current_cert(ctx.get());
    return Refuse(exchange,
                  StrCat("does not chain to a trusted CA: ", X509_verify_cert_error_string(err),
                         " (at depth ", depth,
                         at != nullptr ? StrCat(", \"", FormatName(X509_get_subject_name(at)), "\"")
                                       : std::string(),
                         ")"));
  }
  // The path found must run through the CA's key, not another certificate
  // that merely shares the CA's name.
  STACK_OF(X509)* chain = X509_STORE_CTX_get0_chain(ctx.get());
  if (chain == nullptr || sk_X509_num(chain) < 2 ||
      EVP_PKEY_eq(X509_get0_pubkey(sk_X509_value(chain, 1)), ca_key) != 1) {
    return Refuse(exchange, "chains to a trust anchor through a key other than the CA's");
  }
  ERR_clear_error();
  return absl::OkStatus();
}

}  // namespace keywarden::pki
