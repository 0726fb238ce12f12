#include "pki/envelope.h"

#include <algorithm>

#include "hsm/status.h"
#include "hsm/strings.h"
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
    const std::vector<KeyTransRecipient>& recipients, const EncryptedContent& content) {
  if (recipients.empty()) return absl::InvalidArgumentError("envelope: no recipient");
  const size_t iv_size = content.cipher == ContentCipher::kDes3Cbc ? 8 : 16;
  if (content.iv.size() != iv_size) {
    return absl::InvalidArgumentError(StrCat("envelope: IV must be ", iv_size, " bytes"));
  }
  if (content.ciphertext.empty() || content.ciphertext.size() % iv_size != 0) {
    return absl::InvalidArgumentError("envelope: ciphertext is not whole cipher blocks");
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
  std::sort(infos.begin(), infos.end());  // DER SET OF: ascending by encoding
  Bytes recipient_set;
  for (const Bytes& i : infos) recipient_set.insert(recipient_set.end(), i.begin(), i.end());

  const Bytes cipher_alg =
      Tlv(0x30, Concat({Oid(content.cipher == ContentCipher::kDes3Cbc ? "1.2.840.113549.3.7"
                                                                      : "2.16.840.1.101.3.4.1.42"),
                        Tlv(0x04, content.iv)}));
  const Bytes encrypted_content_info =
      Tlv(0x30, Concat({Oid("1.2.840.113549.1.7.1"), cipher_alg, Tlv(0x80, content.ciphertext)}));
  const Bytes enveloped =
      Tlv(0x30, Concat({kVersion0, Tlv(0x31, recipient_set), encrypted_content_info}));
  return Tlv(0x30, Concat({Oid("1.2.840.113549.1.7.3"), Tlv(0xa0, enveloped)}));
}

}  // namespace keywarden::pki
