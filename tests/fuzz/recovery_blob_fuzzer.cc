// libFuzzer target: recovery blobs as a Key Recovery Agent reads them
// (file bytes, PEM or DER, then verified against a trust anchor). The
// anchor is a throwaway self-signed certificate, so only the parsing and
// the refusals are exercised. Never a crash.
#include <openssl/evp.h>
#include <openssl/x509.h>

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "pki/recovery_blob.h"

namespace {

std::vector<keywarden::ossl::UniquePtr<X509>> Anchors() {
  using keywarden::ossl::UniquePtr;
  UniquePtr<EVP_PKEY> key(EVP_EC_gen("P-256"));
  UniquePtr<X509> cert(X509_new());
  X509_set_version(cert.get(), X509_VERSION_3);
  ASN1_INTEGER_set(X509_get_serialNumber(cert.get()), 1);
  X509_NAME_add_entry_by_txt(X509_get_subject_name(cert.get()), "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>("fuzz anchor"), -1, -1, 0);
  X509_set_issuer_name(cert.get(), X509_get_subject_name(cert.get()));
  X509_gmtime_adj(X509_getm_notBefore(cert.get()), 0);
  X509_gmtime_adj(X509_getm_notAfter(cert.get()), 3600);
  X509_set_pubkey(cert.get(), key.get());
  X509_sign(cert.get(), key.get(), EVP_sha256());
  std::vector<UniquePtr<X509>> out;
  out.push_back(std::move(cert));
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace keywarden::pki;
  static const auto anchors = Anchors();
  auto der = RecoveryBlobDer(std::span<const uint8_t>(data, size));
  if (!der.ok()) return 0;
  (void)ParseRecoveryBlob(*der, anchors);
  return 0;
}
