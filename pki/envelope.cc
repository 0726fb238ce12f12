#include "pki/envelope.h"

#include <openssl/err.h>

#include <algorithm>
#include <climits>
#include <cstring>

#include "hsm/status.h"
#include "hsm/strings.h"
#include "pki/certificate.h"
#include "pki/der.h"

namespace keywarden::pki {
namespace {

using Bytes = std::vector<uint8_t>;

using der::Concat;
const Bytes kNull = der::kNullValue;
using der::Oid;
using der::Tlv;

template <typename T, typename F>
Bytes Der(T* object, F i2d) {
  unsigned char* der = nullptr;
  int len = i2d(object, &der);
  Bytes out(der, der + std::max(len, 0));
  OPENSSL_free(der);
  return out;
}

const Bytes kVersion0 = {0x02, 0x01, 0x00};

}  // namespace

absl::StatusOr<std::vector<uint8_t>> BuildEnvelopedData(
    const std::vector<KeyTransRecipient>& recipients, const EncryptedContent& content,
    const char* content_type) {
  if (recipients.empty()) return absl::InvalidArgumentError("envelope: no recipient");
  if (Oid(content_type).empty()) {
    return absl::InvalidArgumentError("envelope: the content type is not an OID");
  }
  const size_t iv_size = content.cipher == ContentCipher::kDes3Cbc ? 8 : 16;
  if (content.iv.size() != iv_size) {
    return absl::InvalidArgumentError(StrCat("envelope: IV must be ", iv_size, " bytes"));
  }
  if (content.ciphertext.empty() || content.ciphertext.size() % iv_size != 0) {
    return absl::InvalidArgumentError("envelope: ciphertext is not whole cipher blocks");
  }
  const Bytes cipher_alg =
      Tlv(0x30, Concat({Oid(content.cipher == ContentCipher::kDes3Cbc ? "1.2.840.113549.3.7"
                                                                      : "2.16.840.1.101.3.4.1.42"),
                        Tlv(0x04, content.iv)}));
  const Bytes encrypted_content_info =
      Tlv(0x30, Concat({Oid(content_type), cipher_alg, Tlv(0x80, content.ciphertext)}));
  return BuildEnvelopedDataAround(recipients, encrypted_content_info);
}

absl::StatusOr<std::vector<uint8_t>> BuildEnvelopedDataAround(
    const std::vector<KeyTransRecipient>& recipients,
    std::span<const uint8_t> encrypted_content_info) {
  if (recipients.empty()) return absl::InvalidArgumentError("envelope: no recipient");
  if (encrypted_content_info.empty() || encrypted_content_info[0] != 0x30) {
    return absl::InvalidArgumentError("envelope: the encryptedContentInfo is not a SEQUENCE");
  }
  std::vector<Bytes> infos;
  for (const KeyTransRecipient& r : recipients) {
    if (r.certificate == nullptr || r.encrypted_key.empty()) {
      return absl::InvalidArgumentError("envelope: a recipient has no certificate or wrapped key");
    }
    const Bytes issuer = Der(X509_get_issuer_name(r.certificate), i2d_X509_NAME);
    const Bytes serial = Der(X509_get0_serialNumber(r.certificate), i2d_ASN1_INTEGER);
    if (issuer.empty() || serial.empty())
      return hsm::OpenSslError("envelope: recipient certificate");
    // RSAES-OAEP with every parameter at its default (SHA-1, MGF1-SHA1, empty label).
    const Bytes key_alg = r.transport == KeyTransport::kRsaPkcs1
                              ? Tlv(0x30, Concat({Oid("1.2.840.113549.1.1.1"), kNull}))
                              : Tlv(0x30, Concat({Oid("1.2.840.113549.1.1.7"), Tlv(0x30, {})}));
    infos.push_back(Tlv(0x30, Concat({kVersion0, Tlv(0x30, Concat({issuer, serial})), key_alg,
                                      Tlv(0x04, r.encrypted_key)})));
  }
  // DER SET OF: ascending by encoding.
  std::sort(infos.begin(), infos.end(), [](const Bytes& a, const Bytes& b) {
    // Byte-wise, a prefix first (std::vector's operator<, spelled out:
    // GCC 12 at -O3 warns about the memcmp its operator<=> inlines).
    const size_t n = std::min(a.size(), b.size());
    const int c = n == 0 ? 0 : std::memcmp(a.data(), b.data(), n);
    return c != 0 ? c < 0 : a.size() < b.size();
  });
  Bytes recipient_set;
  for (const Bytes& i : infos) recipient_set.insert(recipient_set.end(), i.begin(), i.end());

  const Bytes enveloped =
      Tlv(0x30, Concat({kVersion0, Tlv(0x31, recipient_set),
                        Bytes(encrypted_content_info.begin(), encrypted_content_info.end())}));
  return Tlv(0x30, Concat({Oid("1.2.840.113549.1.7.3"), Tlv(0xa0, enveloped)}));
}

ossl::UniquePtr<CMS_ContentInfo> ReadContentInfo(std::span<const uint8_t> der, OSSL_LIB_CTX* libctx,
                                                 const char* propq, size_t* consumed) {
  if (consumed != nullptr) *consumed = 0;
  if (der.empty() || der.size() > static_cast<size_t>(LONG_MAX)) return nullptr;
  CMS_ContentInfo* raw = CMS_ContentInfo_new_ex(libctx, propq);
  if (raw == nullptr) return nullptr;
  const unsigned char* p = der.data();
  // On failure d2i has freed `raw` and set it to NULL.
  const bool ok = d2i_CMS_ContentInfo(&raw, &p, static_cast<long>(der.size())) != nullptr;
  ossl::UniquePtr<CMS_ContentInfo> cms(raw);
  if (!ok) {
    ERR_clear_error();
    return nullptr;
  }
  if (consumed != nullptr) *consumed = static_cast<size_t>(p - der.data());
  return cms;
}

absl::StatusOr<ClientEnvelope> ClientEnvelope::Parse(std::span<const uint8_t> der,
                                                     OSSL_LIB_CTX* libctx) {
  ClientEnvelope out;
  size_t consumed = 0;
  out.cms_ = ReadContentInfo(der, libctx, nullptr, &consumed);
  if (!out.cms_ || consumed != der.size()) {
    return absl::InvalidArgumentError(
        "the encrypted private key (1.3.6.1.4.1.311.21.13) is not a DER CMS ContentInfo");
  }
  if (OBJ_obj2nid(CMS_get0_type(out.cms_.get())) != NID_pkcs7_enveloped) {
    return absl::InvalidArgumentError(
        "the encrypted private key (1.3.6.1.4.1.311.21.13) is not CMS EnvelopedData");
  }
  STACK_OF(CMS_RecipientInfo)* infos = CMS_get0_RecipientInfos(out.cms_.get());
  for (int i = 0; i < sk_CMS_RecipientInfo_num(infos); ++i) {
    CMS_RecipientInfo* ri = sk_CMS_RecipientInfo_value(infos, i);
    if (CMS_RecipientInfo_type(ri) != CMS_RECIPINFO_TRANS) continue;
    ASN1_OCTET_STRING* keyid = nullptr;
    X509_NAME* issuer = nullptr;
    ASN1_INTEGER* serial = nullptr;
    if (CMS_RecipientInfo_ktri_get0_signer_id(ri, &keyid, &issuer, &serial) == 1 &&
        issuer != nullptr && serial != nullptr) {
      ossl::UniquePtr<BIGNUM> bn(ASN1_INTEGER_to_BN(serial, nullptr));
      char* hex = bn ? BN_bn2hex(bn.get()) : nullptr;
      out.recipients_.push_back(
          StrCat(FormatName(issuer), " serial ", hex != nullptr ? AsciiLower(hex) : "?"));
      OPENSSL_free(hex);
    }
  }
  ERR_clear_error();
  return out;
}

std::optional<size_t> ClientEnvelope::Match(std::span<X509* const> certificates) const {
  STACK_OF(CMS_RecipientInfo)* infos = CMS_get0_RecipientInfos(cms_.get());
  for (int i = 0; i < sk_CMS_RecipientInfo_num(infos); ++i) {
    CMS_RecipientInfo* ri = sk_CMS_RecipientInfo_value(infos, i);
    if (CMS_RecipientInfo_type(ri) != CMS_RECIPINFO_TRANS) continue;
    for (size_t c = 0; c < certificates.size(); ++c) {
      if (CMS_RecipientInfo_ktri_cert_cmp(ri, certificates[c]) == 0) {
        ERR_clear_error();
        return c;
      }
    }
  }
  ERR_clear_error();
  return std::nullopt;
}

absl::StatusOr<hsm::SecretBytes> ClientEnvelope::Decrypt(EVP_PKEY* key, X509* certificate) const {
  // Secure memory, wiped when the BIO is freed.
  ossl::UniquePtr<BIO> out(BIO_new(BIO_s_secmem()));
  if (!out || CMS_decrypt(cms_.get(), key, certificate, nullptr, out.get(), CMS_BINARY) != 1) {
    const unsigned long e = ERR_peek_last_error();
    char reason[256] = "no detail";
    if (e != 0) ERR_error_string_n(e, reason, sizeof reason);
    ERR_clear_error();
    return absl::InvalidArgumentError(reason);
  }
  char* data = nullptr;
  const long len = BIO_get_mem_data(out.get(), &data);
  if (len <= 0 || data == nullptr) {
    return absl::InvalidArgumentError("the encrypted private key decrypts to nothing");
  }
  return hsm::SecretBytes(
      std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(data), static_cast<size_t>(len)));
}

}  // namespace keywarden::pki
