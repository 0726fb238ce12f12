#include "pki/rewrap.h"

#include <openssl/err.h>

#include <algorithm>

#include "hsm/strings.h"
#include "pki/certificate.h"
#include "pki/der.h"

namespace keywarden::pki {
namespace {

using Bytes = std::vector<uint8_t>;

template <typename T, typename F>
Bytes Der(T* object, F i2d) {
  unsigned char* out = nullptr;
  const int len = i2d(object, &out);
  Bytes bytes(out, out + std::max(len, 0));
  OPENSSL_free(out);
  return bytes;
}

absl::Status Bad(std::string_view what) {
  return absl::InvalidArgumentError(StrCat("the archive envelope is malformed: ", what));
}

bool Equal(std::span<const uint8_t> a, std::span<const uint8_t> b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin());
}

absl::StatusOr<ArchiveRecipient> ParseKeyTrans(std::span<const uint8_t> contents, size_t n) {
  const std::string which = StrCat("RecipientInfo ", n + 1);
  DerReader r(contents);
  DerElement version, rid, alg, key;
  int64_t v = -1;
  if (!r.Expect(der::kInteger, &version) || !ReadSmallInt(version.contents, &v) || v != 0) {
    return Bad(StrCat(which, " is not a version 0 KeyTransRecipientInfo (issuerAndSerialNumber)"));
  }
  if (!r.Expect(der::kSequence, &rid)) return Bad(StrCat(which, ": no issuerAndSerialNumber"));
  if (!r.Expect(der::kSequence, &alg) || !r.Expect(der::kOctetString, &key) || !r.empty()) {
    return Bad(StrCat(which, ": not keyEncryptionAlgorithm, encryptedKey"));
  }
  ArchiveRecipient out;
  DerReader ias(rid.contents);
  DerElement issuer, serial;
  if (!ias.Expect(der::kSequence, &issuer) || !ias.Expect(der::kInteger, &serial) || !ias.empty()) {
    return Bad(StrCat(which, ": issuerAndSerialNumber is not Name, INTEGER"));
  }
  out.issuer.assign(issuer.whole.begin(), issuer.whole.end());
  out.serial.assign(serial.whole.begin(), serial.whole.end());
  DerReader a(alg.contents);
  DerElement oid, params;
  if (!a.Expect(der::kOid, &oid)) return Bad(StrCat(which, ": keyEncryptionAlgorithm has no OID"));
  const std::string name = OidToText(oid.contents);
  const bool has_params = a.Next(&params);
  if (!a.empty()) return Bad(StrCat(which, ": keyEncryptionAlgorithm has extra fields"));
  if (name == "1.2.840.113549.1.1.1" && (!has_params || Equal(params.whole, der::kNullValue))) {
    out.transport = KeyTransport::kRsaPkcs1;
  } else if (name == "1.2.840.113549.1.1.7" &&
             (!has_params || (params.tag == der::kSequence && params.contents.empty()))) {
    out.transport = KeyTransport::kRsaOaepSha1;
  } else {
    return Bad(StrCat(which, ": key transport ", name.empty() ? "?" : name,
                      " is neither rsaEncryption nor rsaesOaep with default parameters"));
  }
  if (key.contents.empty()) return Bad(StrCat(which, ": empty encryptedKey"));
  out.encrypted_key.assign(key.contents.begin(), key.contents.end());
  return out;
}

}  // namespace

bool ArchiveRecipient::Names(X509* cert) const {
  if (cert == nullptr) return false;
  return Equal(issuer, Der(X509_get_issuer_name(cert), i2d_X509_NAME)) &&
         Equal(serial, Der(X509_get0_serialNumber(cert), i2d_ASN1_INTEGER));
}

std::string ArchiveRecipient::Describe() const {
  const unsigned char* p = issuer.data();
  ossl::UniquePtr<X509_NAME> name(d2i_X509_NAME(nullptr, &p, static_cast<long>(issuer.size())));
  ERR_clear_error();
  const size_t skip = serial.size() > 2 ? 2 : serial.size();  // tag, short length
  return StrCat(name ? FormatName(name.get()) : std::string("?"), " serial ",
                HexString(std::span<const uint8_t>(serial).subspan(skip)));
}

absl::StatusOr<ArchiveEnvelope> ParseArchiveEnvelope(std::span<const uint8_t> der) {
  DerReader top(der);
  DerElement ci;
  if (!top.Expect(der::kSequence, &ci) || !top.empty()) {
    return Bad("not one DER ContentInfo (trailing or missing bytes)");
  }
  DerReader c(ci.contents);
  DerElement type, explicit0;
  if (!c.Expect(der::kOid, &type) || OidToText(type.contents) != "1.2.840.113549.1.7.3") {
    return Bad("the ContentInfo is not of type envelopedData (1.2.840.113549.1.7.3)");
  }
  if (!c.Expect(der::ContextConstructed(0), &explicit0) || !c.empty()) {
    return Bad("the ContentInfo has no [0] content");
  }
  DerReader e0(explicit0.contents);
  DerElement env;
  if (!e0.Expect(der::kSequence, &env) || !e0.empty()) return Bad("no EnvelopedData");
  DerReader e(env.contents);
  DerElement version, recipients, eci;
  int64_t v = -1;
  if (!e.Expect(der::kInteger, &version) || !ReadSmallInt(version.contents, &v) ||
      (v != 0 && v != 3)) {
    return Bad("EnvelopedData version is not 0 (or 3 for a threshold archive)");
  }
  if (!e.Expect(der::kSet, &recipients)) {
    return Bad("EnvelopedData has originatorInfo or no RecipientInfos");
  }
  if (!e.Expect(der::kSequence, &eci) || !e.empty()) {
    return Bad("EnvelopedData is not RecipientInfos, encryptedContentInfo (no unprotectedAttrs)");
  }
  ArchiveEnvelope out;
  out.encrypted_content_info.assign(eci.whole.begin(), eci.whole.end());
  DerReader ec(eci.contents);
  DerElement ctype, alg, ciphertext;
  if (!ec.Expect(der::kOid, &ctype) || !ec.Expect(der::kSequence, &alg) ||
      !ec.Expect(der::ContextPrimitive(0), &ciphertext) || !ec.empty()) {
    return Bad("encryptedContentInfo is not contentType, algorithm, [0] encryptedContent");
  }
  DerReader a(alg.contents);
  DerElement alg_oid, iv;
  if (!a.Expect(der::kOid, &alg_oid) || !a.Expect(der::kOctetString, &iv) || !a.empty()) {
    return Bad("the content encryption algorithm is not OID, IV");
  }
  const std::string cipher = OidToText(alg_oid.contents);
  size_t block = 0;
  if (cipher == "1.2.840.113549.3.7") {
    out.cipher = ContentCipher::kDes3Cbc;
    block = 8;
  } else if (cipher == "2.16.840.1.101.3.4.1.42") {
    out.cipher = ContentCipher::kAes256Cbc;
    block = 16;
  } else {
    return Bad(StrCat("content cipher ", cipher.empty() ? "?" : cipher,
                      " is neither DES-EDE3-CBC nor AES-256-CBC"));
  }
  if (iv.contents.size() != block || ciphertext.contents.empty() ||
      ciphertext.contents.size() % block != 0) {
    return Bad("the IV or the encrypted content is not whole cipher blocks");
  }
  DerReader rs(recipients.contents);
  DerElement ri;
  while (!rs.empty()) {
    if (!rs.Next(&ri)) return Bad("a RecipientInfo is not DER");
    if (ri.tag == der::ContextConstructed(4)) {
      out.threshold = true;  // OtherRecipientInfo: a threshold share
      continue;
    }
    if (ri.tag != der::kSequence) {
      return Bad(
          StrCat("RecipientInfo ", out.recipients.size() + 1, " is not a KeyTransRecipientInfo"));
    }
    auto r = ParseKeyTrans(ri.contents, out.recipients.size());
    if (!r.ok()) return r.status();
    out.recipients.push_back(std::move(*r));
  }
  if (out.threshold) {
    if (v != 3 || !out.recipients.empty()) {
      return Bad("a threshold archive mixes share and key-transport recipients");
    }
    return out;
  }
  if (v != 0) return Bad("EnvelopedData version 3 without threshold shares");
  if (out.recipients.empty()) return Bad("no RecipientInfo");
  return out;
}

absl::StatusOr<std::vector<uint8_t>> BuildRewrappedEnvelope(
    std::span<const uint8_t> encrypted_content_info,
    const std::vector<KeyTransRecipient>& recipients) {
  return BuildEnvelopedDataAround(recipients, encrypted_content_info);
}

}  // namespace keywarden::pki
