#include "pki/audit_checkpoint.h"

#include <openssl/cms.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include <cinttypes>
#include <cstdio>

#include "hsm/status.h"
#include "hsm/strings.h"

namespace keywarden::pki {
namespace {

using Bytes = std::vector<uint8_t>;
using hsm::OpenSslError;

constexpr size_t kHashSize = 32;

absl::Status Bad(std::string_view what) {
  return absl::DataLossError(StrCat("audit checkpoint: ", what));
}

Bytes CmsDer(CMS_ContentInfo* cms) {
  unsigned char* der = nullptr;
  const int len = i2d_CMS_ContentInfo(cms, &der);
  Bytes out(der, der + std::max(len, 0));
  OPENSSL_free(der);
  return out;
}

// A copy of `cert` decoded in the default library context: the checks run
// in software, whatever context the original came from.
ossl::UniquePtr<X509> SoftwareCopy(X509* cert) {
  unsigned char* der = nullptr;
  const int len = i2d_X509(cert, &der);
  if (len <= 0) return nullptr;
  const unsigned char* p = der;
  ossl::UniquePtr<X509> copy(d2i_X509(nullptr, &p, len));
  OPENSSL_free(der);
  return copy;
}

bool HexDecode(const std::string& hex, Bytes& out) {
  if (hex.size() % 2 != 0) return false;
  out.clear();
  for (size_t i = 0; i < hex.size(); i += 2) {
    unsigned int v = 0;
    if (std::sscanf(hex.c_str() + i, "%2x", &v) != 1) return false;
    out.push_back(static_cast<uint8_t>(v));
  }
  return true;
}

}  // namespace

std::string AuditCheckpointBodyText(const AuditCheckpointBody& b) {
  return StrCat("{\"type\":\"keywarden-audit-checkpoint\",\"version\":1,\"number\":", b.number,
                ",\"seq\":", b.seq, ",\"hash\":\"", HexString(b.hash), "\",\"time\":", b.time,
                ",\"previous\":\"", HexString(b.previous), "\"}");
}

std::vector<uint8_t> AuditCheckpointDigest(std::span<const uint8_t> der) {
  Bytes digest(EVP_MAX_MD_SIZE);
  unsigned int len = 0;
  if (EVP_Digest(der.data(), der.size(), digest.data(), &len, EVP_sha256(), nullptr) != 1) {
    ERR_clear_error();
    return {};
  }
  digest.resize(len);
  return digest;
}

absl::StatusOr<std::vector<uint8_t>> BuildAuditCheckpoint(OSSL_LIB_CTX* libctx, const char* propq,
                                                          EVP_PKEY* ca_key, X509* ca_certificate,
                                                          const AuditCheckpointBody& body) {
  if (ca_key == nullptr || ca_certificate == nullptr) {
    return absl::InvalidArgumentError("audit checkpoint: no CA key or certificate");
  }
  if (body.number < 1 || body.seq < 1 || body.hash.size() != kHashSize ||
      (body.number == 1) != body.previous.empty() ||
      (!body.previous.empty() && body.previous.size() != kHashSize)) {
    return absl::InvalidArgumentError(
        StrCat("audit checkpoint: bad body ", AuditCheckpointBodyText(body)));
  }
  const std::string text = AuditCheckpointBodyText(body);
  const unsigned int flags = CMS_BINARY | CMS_PARTIAL | CMS_NOSMIMECAP;
  ossl::UniquePtr<CMS_ContentInfo> cms(
      CMS_sign_ex(nullptr, nullptr, nullptr, nullptr, flags, libctx, propq));
  if (!cms) return OpenSslError("audit checkpoint: new SignedData");
  ossl::UniquePtr<EVP_MD> md(EVP_MD_fetch(libctx, "SHA256", propq));
  if (!md) return OpenSslError("audit checkpoint: digest SHA256");
  if (CMS_add1_signer(cms.get(), ca_certificate, ca_key, md.get(), flags) == nullptr) {
    return OpenSslError("audit checkpoint: add signer");
  }
  ossl::UniquePtr<BIO> content(BIO_new_mem_buf(text.data(), static_cast<int>(text.size())));
  if (!content || CMS_final(cms.get(), content.get(), nullptr, CMS_BINARY) != 1) {
    return OpenSslError("audit checkpoint: sign with the CA key");
  }
  Bytes out = CmsDer(cms.get());
  if (out.empty()) return OpenSslError("audit checkpoint: encode");
  // Every CA signature is verified before it is stored.
  auto check = ParseAuditCheckpoint(out, ca_certificate);
  if (!check.ok()) {
    return absl::InternalError(
        StrCat("audit checkpoint: the checkpoint just signed does not verify: ",
               check.status().message()));
  }
  if (AuditCheckpointBodyText(*check) != text) {
    return absl::InternalError(
        "audit checkpoint: the checkpoint just signed reads back differently");
  }
  return out;
}

absl::StatusOr<AuditCheckpointBody> ParseAuditCheckpoint(std::span<const uint8_t> der,
                                                         X509* ca_certificate) {
  if (ca_certificate == nullptr) {
    return absl::InvalidArgumentError("audit checkpoint: no CA certificate to verify it with");
  }
  if (der.empty()) return Bad("empty");
  const unsigned char* p = der.data();
  ossl::UniquePtr<CMS_ContentInfo> cms(
      d2i_CMS_ContentInfo(nullptr, &p, static_cast<long>(der.size())));
  if (!cms || p != der.data() + der.size()) {
    ERR_clear_error();
    return Bad("not a DER CMS message (or bytes after it)");
  }
  if (CmsDer(cms.get()) != Bytes(der.begin(), der.end())) {
    return Bad("not strict DER (re-encodes differently)");
  }
  if (OBJ_obj2nid(CMS_get0_type(cms.get())) != NID_pkcs7_signed) return Bad("not a SignedData");
  if (OBJ_obj2nid(CMS_get0_eContentType(cms.get())) != NID_pkcs7_data) {
    return Bad("the signed content is not id-data");
  }
  STACK_OF(CMS_SignerInfo)* signers = CMS_get0_SignerInfos(cms.get());
  if (signers == nullptr || sk_CMS_SignerInfo_num(signers) != 1) {
    return Bad("not exactly one signer");
  }
  ossl::UniquePtr<X509> ca = SoftwareCopy(ca_certificate);
  if (!ca) return OpenSslError("audit checkpoint: copy the CA certificate");
  struct StackFree {
    void operator()(STACK_OF(X509) * s) const { sk_X509_free(s); }
  };
  std::unique_ptr<STACK_OF(X509), StackFree> only(sk_X509_new_null());
  if (!only || sk_X509_push(only.get(), ca.get()) <= 0) return OpenSslError("audit checkpoint");
  ossl::UniquePtr<BIO> out(BIO_new(BIO_s_mem()));
  if (!out) return OpenSslError("audit checkpoint");
  // The CA certificate given is the only acceptable signer (CMS_NOINTERN);
  // it is the trust anchor itself, so there is no chain to build.
  if (CMS_verify(cms.get(), only.get(), nullptr, nullptr, out.get(),
                 CMS_BINARY | CMS_NOINTERN | CMS_NO_SIGNER_CERT_VERIFY) != 1) {
    ERR_clear_error();
    return Bad(
        "the signature does not verify with the CA certificate (altered, or signed by another "
        "key)");
  }
  char* data = nullptr;
  const long len = BIO_get_mem_data(out.get(), &data);
  const std::string text(data, data + std::max(len, 0L));

  AuditCheckpointBody body;
  long long number = 0, seq = 0, time = 0;
  char hash[65] = {}, previous[65] = {};
  int consumed = 0;
  const int n =
      std::sscanf(text.c_str(),
                  "{\"type\":\"keywarden-audit-checkpoint\",\"version\":1,\"number\":%lld,"
                  "\"seq\":%lld,\"hash\":\"%64[0-9a-f]\",\"time\":%lld,\"previous\":\"%n",
                  &number, &seq, hash, &time, &consumed);
  if (n != 4 || consumed == 0) return Bad(StrCat("the body is not a checkpoint: ", text));
  if (std::sscanf(text.c_str() + consumed, "%64[0-9a-f]", previous) != 1) previous[0] = 0;
  body.number = number;
  body.seq = seq;
  body.time = time;
  if (!HexDecode(hash, body.hash) || !HexDecode(previous, body.previous)) {
    return Bad(StrCat("the body is not a checkpoint: ", text));
  }
  if (AuditCheckpointBodyText(body) != text || body.hash.size() != kHashSize || body.number < 1 ||
      body.seq < 1 || (body.number == 1) != body.previous.empty() ||
      (!body.previous.empty() && body.previous.size() != kHashSize)) {
    return Bad(StrCat("the body is not in canonical form: ", text));
  }
  return body;
}

}  // namespace keywarden::pki
