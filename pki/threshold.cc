#include "pki/threshold.h"

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#include <algorithm>
#include <climits>
#include <set>

#include "absl/strings/str_cat.h"
#include "hsm/status.h"
#include "pki/der.h"
#include "pki/shamir.h"

namespace keywarden::pki::threshold {
namespace {

using absl::StrCat;
using Bytes = std::vector<uint8_t>;
using der::Concat;
using der::Oid;
using der::Tlv;

constexpr char kEnvelopedDataOid[] = "1.2.840.113549.1.7.3";
constexpr char kRsaEncryptionOid[] = "1.2.840.113549.1.1.1";
constexpr char kRsaOaepOid[] = "1.2.840.113549.1.1.7";
constexpr char kDes3CbcOid[] = "1.2.840.113549.3.7";
constexpr char kAes256CbcOid[] = "2.16.840.1.101.3.4.1.42";
constexpr char kCommitmentDomain[] = "keywarden threshold share v1";
// RSA-16384 is the largest modulus a share could be encrypted to.
constexpr size_t kMaxEncryptedShare = 2048;
constexpr size_t kMaxShareLength = 64;

template <typename T, typename F>
Bytes Der(T* object, F i2d) {
  if (object == nullptr) return {};
  unsigned char* out = nullptr;
  const int len = i2d(object, &out);
  if (len <= 0) return {};
  Bytes der(out, out + len);
  OPENSSL_free(out);
  return der;
}

Bytes KeyTransportAlgorithm(KeyTransport transport) {
  // RSAES-OAEP with every parameter at its default (SHA-1, MGF1-SHA1, empty label).
  return transport == KeyTransport::kRsaPkcs1
             ? Tlv(der::kSequence, Concat({Oid(kRsaEncryptionOid), der::kNullValue}))
             : Tlv(der::kSequence, Concat({Oid(kRsaOaepOid), Tlv(der::kSequence, {})}));
}

absl::Status Malformed(std::string_view what) {
  return absl::InvalidArgumentError(StrCat("threshold archive: ", std::string(what)));
}

bool SameBytes(std::span<const uint8_t> a, std::span<const uint8_t> b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin());
}

// OID contents compared by encoding: keywarden's arc under 2.25 is a
// 128-bit UUID, longer than OidToText reads.
bool IsOid(const DerElement& e, const char* dotted) {
  const Bytes tlv = Oid(dotted);
  return e.tag == der::kOid && SameBytes(e.whole, tlv);
}

std::string NameText(std::span<const uint8_t> name_der) {
  const unsigned char* p = name_der.data();
  ossl::UniquePtr<X509_NAME> name(d2i_X509_NAME(nullptr, &p, static_cast<long>(name_der.size())));
  if (!name) {
    ERR_clear_error();
    return "(unreadable name)";
  }
  ossl::UniquePtr<BIO> bio(BIO_new(BIO_s_mem()));
  X509_NAME_print_ex(bio.get(), name.get(), 0, XN_FLAG_RFC2253);
  char* data = nullptr;
  const long len = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<size_t>(len > 0 ? len : 0));
}

std::string Hex(std::span<const uint8_t> bytes) {
  static constexpr char kDigits[] = "0123456789ABCDEF";
  std::string out;
  for (uint8_t b : bytes) {
    out.push_back(kDigits[b >> 4]);
    out.push_back(kDigits[b & 15]);
  }
  return out;
}

// The INTEGER contents of a DER INTEGER TLV (for messages).
std::span<const uint8_t> IntegerContents(std::span<const uint8_t> tlv) {
  DerReader r(tlv);
  DerElement e;
  if (!r.Expect(der::kInteger, &e)) return {};
  return e.contents;
}

bool ReadIssuerAndSerial(std::span<const uint8_t> contents, Bytes* issuer, Bytes* serial) {
  DerReader r(contents);
  DerElement name, number;
  if (!r.Expect(der::kSequence, &name) || !r.Expect(der::kInteger, &number) || !r.empty()) {
    return false;
  }
  if (number.contents.empty() || (number.contents[0] & 0x80) != 0) return false;  // positive
  issuer->assign(name.whole.begin(), name.whole.end());
  serial->assign(number.whole.begin(), number.whole.end());
  return true;
}

bool ReadKeyTransport(std::span<const uint8_t> whole, KeyTransport* out) {
  if (SameBytes(whole, KeyTransportAlgorithm(KeyTransport::kRsaPkcs1))) {
    *out = KeyTransport::kRsaPkcs1;
    return true;
  }
  if (SameBytes(whole, KeyTransportAlgorithm(KeyTransport::kRsaOaepSha1))) {
    *out = KeyTransport::kRsaOaepSha1;
    return true;
  }
  return false;
}

bool ReadInt(DerReader& r, int64_t min, int64_t max, int64_t* out) {
  DerElement e;
  return r.Expect(der::kInteger, &e) && ReadSmallInt(e.contents, out) && *out >= min && *out <= max;
}

absl::StatusOr<ShareEntry> ReadShare(std::span<const uint8_t> contents, int64_t* k, int64_t* n) {
  DerReader r(contents);
  ShareEntry entry;
  int64_t version = 0, index = 0;
  if (!ReadInt(r, 1, 1, &version)) return Malformed("a share's version is not 1");
  if (!ReadInt(r, 2, shamir::kMaxShares, k)) return Malformed("a share's threshold is not 2..255");
  if (!ReadInt(r, 2, shamir::kMaxShares, n)) return Malformed("a share's count is not 2..255");
  if (*k > *n) return Malformed(StrCat("threshold ", *k, " is larger than the share count ", *n));
  if (!ReadInt(r, 1, shamir::kMaxShares, &index)) return Malformed("a share's index is not 1..255");
  entry.index = static_cast<uint8_t>(index);
  DerElement rid, alg, encrypted, commitment;
  if (!r.Expect(der::kSequence, &rid) ||
      !ReadIssuerAndSerial(rid.contents, &entry.issuer, &entry.serial)) {
    return Malformed(StrCat("share ", index, ": the KRA is not an IssuerAndSerialNumber"));
  }
  if (!r.Expect(der::kSequence, &alg) || !ReadKeyTransport(alg.whole, &entry.transport)) {
    return Malformed(
        StrCat("share ", index, ": the key encryption is not rsaEncryption or rsaesOaep (SHA-1)"));
  }
  if (!r.Expect(der::kOctetString, &encrypted) || encrypted.contents.empty() ||
      encrypted.contents.size() > kMaxEncryptedShare) {
    return Malformed(StrCat("share ", index, ": the encrypted share is missing or too long"));
  }
  entry.encrypted_share.assign(encrypted.contents.begin(), encrypted.contents.end());
  if (!r.Expect(der::kOctetString, &commitment) ||
      commitment.contents.size() != entry.commitment.size()) {
    return Malformed(StrCat("share ", index, ": the commitment is not 32 bytes"));
  }
  std::copy(commitment.contents.begin(), commitment.contents.end(), entry.commitment.begin());
  if (!r.empty()) return Malformed(StrCat("share ", index, ": trailing data"));
  return entry;
}

absl::StatusOr<EncryptedContent> ReadEncryptedContent(std::span<const uint8_t> contents,
                                                      std::string_view expected_type) {
  DerReader r(contents);
  DerElement type, alg, data;
  if (!r.Expect(der::kOid, &type) || OidToText(type.contents) != expected_type) {
    return Malformed(StrCat("the content type is not ", std::string(expected_type)));
  }
  if (!r.Expect(der::kSequence, &alg)) return Malformed("no content encryption algorithm");
  DerReader ar(alg.contents);
  DerElement alg_oid, iv;
  if (!ar.Expect(der::kOid, &alg_oid) || !ar.Expect(der::kOctetString, &iv) || !ar.empty()) {
    return Malformed("the content encryption algorithm is not an OID with an IV");
  }
  EncryptedContent out;
  const std::string oid = OidToText(alg_oid.contents);
  if (oid == kDes3CbcOid) {
    out.cipher = ContentCipher::kDes3Cbc;
  } else if (oid == kAes256CbcOid) {
    out.cipher = ContentCipher::kAes256Cbc;
  } else {
    return Malformed(StrCat("content cipher ", oid, " is not DES-EDE3-CBC or AES-256-CBC"));
  }
  const size_t block = out.cipher == ContentCipher::kDes3Cbc ? 8 : 16;
  if (iv.contents.size() != block) return Malformed("the IV is not one cipher block");
  if (!r.Expect(der::ContextPrimitive(0), &data) || data.contents.empty() ||
      data.contents.size() % block != 0) {
    return Malformed("the encrypted content is missing or not whole cipher blocks");
  }
  if (!r.empty()) return Malformed("trailing data after the encrypted content");
  out.iv.assign(iv.contents.begin(), iv.contents.end());
  out.ciphertext.assign(data.contents.begin(), data.contents.end());
  return out;
}

const EVP_CIPHER* CipherOf(ContentCipher cipher) {
  return cipher == ContentCipher::kDes3Cbc ? EVP_des_ede3_cbc() : EVP_aes_256_cbc();
}

absl::Status SetPadding(EVP_PKEY_CTX* ctx, KeyTransport transport) {
  const int padding =
      transport == KeyTransport::kRsaPkcs1 ? RSA_PKCS1_PADDING : RSA_PKCS1_OAEP_PADDING;
  if (EVP_PKEY_CTX_set_rsa_padding(ctx, padding) != 1) {
    return hsm::OpenSslError("threshold: set the RSA padding");
  }
  if (transport == KeyTransport::kRsaOaepSha1 &&
      (EVP_PKEY_CTX_set_rsa_oaep_md_name(ctx, "SHA1", nullptr) != 1 ||
       EVP_PKEY_CTX_set_rsa_mgf1_md_name(ctx, "SHA1", nullptr) != 1)) {
    return hsm::OpenSslError("threshold: set the OAEP digests");
  }
  return absl::OkStatus();
}

}  // namespace

Commitment CommitTo(int k, int n, uint8_t index, std::span<const uint8_t> share) {
  Commitment out{};
  const uint8_t header[3] = {static_cast<uint8_t>(k), static_cast<uint8_t>(n), index};
  ossl::UniquePtr<EVP_MD_CTX> ctx(EVP_MD_CTX_new());
  unsigned int len = 0;
  if (!ctx || EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) != 1 ||
      EVP_DigestUpdate(ctx.get(), kCommitmentDomain, sizeof kCommitmentDomain - 1) != 1 ||
      EVP_DigestUpdate(ctx.get(), header, sizeof header) != 1 ||
      EVP_DigestUpdate(ctx.get(), share.data(), share.size()) != 1 ||
      EVP_DigestFinal_ex(ctx.get(), out.data(), &len) != 1) {
    // SHA-256 of memory cannot fail short of allocation failure; a zero
    // commitment matches no share (the comparison is of the full digest).
    out.fill(0);
  }
  return out;
}

absl::StatusOr<std::vector<uint8_t>> BuildThresholdEnvelopedDataAround(
    int k, const std::vector<ShareRecipient>& recipients,
    std::span<const uint8_t> encrypted_content_info) {
  const int n = static_cast<int>(recipients.size());
  if (k < 2 || n < k || n > shamir::kMaxShares) {
    return absl::InvalidArgumentError(
        StrCat("threshold archive: ", k, " of ", n, " is not 2 <= k <= n <= 255"));
  }
  if (encrypted_content_info.empty()) {
    return absl::InvalidArgumentError("threshold archive: no encryptedContentInfo");
  }
  std::set<int> indexes;
  std::vector<Bytes> infos;
  for (const ShareRecipient& r : recipients) {
    if (r.certificate == nullptr || r.encrypted_share.empty() || r.index == 0 ||
        !indexes.insert(r.index).second) {
      return absl::InvalidArgumentError(
          StrCat("threshold archive: share ", static_cast<int>(r.index),
                 " has no certificate, no encrypted share, index 0, or an index used twice"));
    }
    const Bytes issuer = Der(X509_get_issuer_name(r.certificate), i2d_X509_NAME);
    const Bytes serial = Der(X509_get0_serialNumber(r.certificate), i2d_ASN1_INTEGER);
    if (issuer.empty() || serial.empty()) return hsm::OpenSslError("threshold archive: KRA");
    const Bytes share = Tlv(
        der::kSequence,
        Concat({der::SmallInteger(1), der::SmallInteger(static_cast<uint64_t>(k)),
                der::SmallInteger(static_cast<uint64_t>(n)), der::SmallInteger(r.index),
                Tlv(der::kSequence, Concat({issuer, serial})), KeyTransportAlgorithm(r.transport),
                Tlv(der::kOctetString, r.encrypted_share), Tlv(der::kOctetString, r.commitment)}));
    infos.push_back(Tlv(der::ContextConstructed(4), Concat({Oid(kThresholdShareOid), share})));
  }
  std::sort(infos.begin(), infos.end());  // DER SET OF: ascending by encoding
  Bytes recipient_set;
  for (const Bytes& i : infos) recipient_set.insert(recipient_set.end(), i.begin(), i.end());
  // RFC 5652 §6.1: version 3 when any RecipientInfo is an ori.
  const Bytes enveloped =
      Tlv(der::kSequence,
          Concat({der::SmallInteger(3), Tlv(der::kSet, recipient_set),
                  Bytes(encrypted_content_info.begin(), encrypted_content_info.end())}));
  return Tlv(der::kSequence,
             Concat({Oid(kEnvelopedDataOid), Tlv(der::ContextConstructed(0), enveloped)}));
}

absl::StatusOr<std::vector<uint8_t>> BuildThresholdEnvelopedData(
    int k, const std::vector<ShareRecipient>& recipients, const EncryptedContent& content) {
  const size_t block = content.cipher == ContentCipher::kDes3Cbc ? 8 : 16;
  if (content.iv.size() != block || content.ciphertext.empty() ||
      content.ciphertext.size() % block != 0) {
    return absl::InvalidArgumentError("threshold archive: the content is not IV + whole blocks");
  }
  const Bytes cipher_alg =
      Tlv(der::kSequence,
          Concat({Oid(content.cipher == ContentCipher::kDes3Cbc ? kDes3CbcOid : kAes256CbcOid),
                  Tlv(der::kOctetString, content.iv)}));
  const Bytes encrypted_content_info =
      Tlv(der::kSequence,
          Concat({Oid(kIdDataOid), cipher_alg, Tlv(der::ContextPrimitive(0), content.ciphertext)}));
  return BuildThresholdEnvelopedDataAround(k, recipients, encrypted_content_info);
}

bool ShareEntry::Names(X509* certificate) const {
  if (certificate == nullptr) return false;
  const Bytes cert_issuer = Der(X509_get_issuer_name(certificate), i2d_X509_NAME);
  const Bytes cert_serial = Der(X509_get0_serialNumber(certificate), i2d_ASN1_INTEGER);
  return cert_issuer == issuer && cert_serial == serial;
}

std::string ShareEntry::Describe() const {
  return StrCat("share ", static_cast<int>(index), " (KRA issuer \"", NameText(issuer),
                "\", serial ", Hex(IntegerContents(serial)), ")");
}

const ShareEntry* ThresholdEnvelope::ByIndex(uint8_t index) const {
  for (const ShareEntry& s : shares) {
    if (s.index == index) return &s;
  }
  return nullptr;
}

namespace {

// The EnvelopedData contents inside ContentInfo, or empty.
bool EnvelopedDataContents(std::span<const uint8_t> der, DerElement* out) {
  DerReader r(der);
  DerElement info;
  if (!r.Expect(der::kSequence, &info) || !r.empty()) return false;
  DerReader ir(info.contents);
  DerElement type, explicit0;
  if (!ir.Expect(der::kOid, &type) || OidToText(type.contents) != kEnvelopedDataOid ||
      !ir.Expect(der::ContextConstructed(0), &explicit0) || !ir.empty()) {
    return false;
  }
  DerReader er(explicit0.contents);
  return er.Expect(der::kSequence, out) && er.empty();
}

}  // namespace

bool IsThresholdEnvelope(std::span<const uint8_t> der) {
  DerElement enveloped;
  if (!EnvelopedDataContents(der, &enveloped)) return false;
  DerReader r(enveloped.contents);
  DerElement version, recipients;
  if (!r.Expect(der::kInteger, &version) || !r.Expect(der::kSet, &recipients)) return false;
  DerReader rr(recipients.contents);
  DerElement info;
  while (rr.Next(&info)) {
    if (info.tag != der::ContextConstructed(4)) continue;
    DerReader oi(info.contents);
    DerElement type;
    if (oi.Expect(der::kOid, &type) && IsOid(type, kThresholdShareOid)) return true;
  }
  return false;
}

absl::StatusOr<ThresholdEnvelope> ParseThresholdEnvelope(std::span<const uint8_t> der) {
  DerElement enveloped;
  if (!EnvelopedDataContents(der, &enveloped)) {
    return Malformed("not a DER ContentInfo { envelopedData, EnvelopedData }");
  }
  DerReader r(enveloped.contents);
  int64_t version = 0;
  if (!ReadInt(r, 3, 3, &version)) return Malformed("the EnvelopedData version is not 3");
  DerElement recipients, encrypted;
  if (!r.Expect(der::kSet, &recipients)) {
    return Malformed("no recipientInfos (an originatorInfo is not allowed)");
  }
  if (!r.Expect(der::kSequence, &encrypted)) return Malformed("no encryptedContentInfo");
  if (!r.empty()) return Malformed("unprotected attributes or trailing data");

  ThresholdEnvelope out;
  int64_t k = 0, n = 0;
  std::set<int> indexes;
  DerReader rr(recipients.contents);
  while (!rr.empty()) {
    DerElement info;
    if (!rr.Next(&info)) return Malformed("a recipientInfo is not DER");
    if (info.tag != der::ContextConstructed(4)) {
      return Malformed("a recipient is not a keywarden threshold share");
    }
    DerReader oi(info.contents);
    DerElement type, value;
    if (!oi.Expect(der::kOid, &type) || !IsOid(type, kThresholdShareOid) ||
        !oi.Expect(der::kSequence, &value) || !oi.empty()) {
      return Malformed("an OtherRecipientInfo is not a keywarden threshold share");
    }
    int64_t share_k = 0, share_n = 0;
    auto entry = ReadShare(value.contents, &share_k, &share_n);
    if (!entry.ok()) return entry.status();
    if (out.shares.empty()) {
      k = share_k;
      n = share_n;
    } else if (share_k != k || share_n != n) {
      return Malformed(StrCat("share ", static_cast<int>(entry->index), " says ", share_k, " of ",
                              share_n, ", another says ", k, " of ", n));
    }
    if (!indexes.insert(entry->index).second) {
      return Malformed(StrCat("share index ", static_cast<int>(entry->index), " appears twice"));
    }
    if (out.shares.size() >= static_cast<size_t>(shamir::kMaxShares)) {
      return Malformed("more than 255 shares");
    }
    out.shares.push_back(std::move(*entry));
  }
  if (out.shares.empty()) return Malformed("no share");
  if (static_cast<int64_t>(out.shares.size()) != n) {
    return Malformed(
        StrCat("the shares say there are ", n, ", the archive holds ", out.shares.size()));
  }
  out.k = static_cast<int>(k);
  out.n = static_cast<int>(n);
  auto content = ReadEncryptedContent(encrypted.contents, kIdDataOid);
  if (!content.ok()) return content.status();
  out.content = std::move(*content);
  return out;
}

size_t ContentKeyLength(ContentCipher cipher) {
  return cipher == ContentCipher::kDes3Cbc ? 24 : 32;
}

absl::StatusOr<std::vector<uint8_t>> EncryptShare(EVP_PKEY* kra_public, KeyTransport transport,
                                                  std::span<const uint8_t> share,
                                                  OSSL_LIB_CTX* libctx) {
  if (kra_public == nullptr || EVP_PKEY_get_base_id(kra_public) != EVP_PKEY_RSA) {
    return absl::InvalidArgumentError("threshold: a KRA key is not RSA");
  }
  ossl::UniquePtr<EVP_PKEY_CTX> ctx(EVP_PKEY_CTX_new_from_pkey(libctx, kra_public, nullptr));
  if (!ctx || EVP_PKEY_encrypt_init(ctx.get()) != 1) {
    return hsm::OpenSslError("threshold: encrypt a share");
  }
  if (auto s = SetPadding(ctx.get(), transport); !s.ok()) return s;
  size_t len = 0;
  if (EVP_PKEY_encrypt(ctx.get(), nullptr, &len, share.data(), share.size()) != 1) {
    return hsm::OpenSslError("threshold: encrypt a share");
  }
  std::vector<uint8_t> out(len);
  if (EVP_PKEY_encrypt(ctx.get(), out.data(), &len, share.data(), share.size()) != 1) {
    return hsm::OpenSslError("threshold: encrypt a share");
  }
  out.resize(len);
  return out;
}

absl::StatusOr<hsm::SecretBytes> DecryptShare(EVP_PKEY* kra_private, const ThresholdEnvelope& env,
                                              const ShareEntry& entry, OSSL_LIB_CTX* libctx,
                                              const char* propq) {
  ossl::UniquePtr<EVP_PKEY_CTX> ctx(EVP_PKEY_CTX_new_from_pkey(libctx, kra_private, propq));
  if (!ctx || EVP_PKEY_decrypt_init(ctx.get()) != 1) {
    return hsm::OpenSslError(StrCat("threshold: decrypt ", entry.Describe()));
  }
  if (auto s = SetPadding(ctx.get(), entry.transport); !s.ok()) return s;
  size_t len = 0;
  if (EVP_PKEY_decrypt(ctx.get(), nullptr, &len, entry.encrypted_share.data(),
                       entry.encrypted_share.size()) != 1) {
    return hsm::OpenSslError(StrCat("threshold: decrypt ", entry.Describe()),
                             absl::StatusCode::kDataLoss);
  }
  hsm::SecretBytes share(len);
  if (EVP_PKEY_decrypt(ctx.get(), share.data(), &len, entry.encrypted_share.data(),
                       entry.encrypted_share.size()) != 1) {
    return hsm::OpenSslError(StrCat("threshold: decrypt ", entry.Describe()),
                             absl::StatusCode::kDataLoss);
  }
  share.Truncate(len);
  const Commitment c = CommitTo(env.k, env.n, entry.index, share.span());
  if (share.size() != ContentKeyLength(env.content.cipher) ||
      CRYPTO_memcmp(c.data(), entry.commitment.data(), c.size()) != 0) {
    return absl::DataLossError(
        StrCat("threshold: ", entry.Describe(), " does not match its commitment"));
  }
  return share;
}

absl::StatusOr<EncryptedContent> EncryptContent(ContentCipher cipher,
                                                std::span<const uint8_t> content_key,
                                                std::span<const uint8_t> iv,
                                                std::span<const uint8_t> plaintext) {
  const EVP_CIPHER* c = CipherOf(cipher);
  if (content_key.size() != ContentKeyLength(cipher) ||
      iv.size() != static_cast<size_t>(EVP_CIPHER_get_iv_length(c))) {
    return absl::InvalidArgumentError("threshold: content key or IV of the wrong length");
  }
  if (plaintext.size() > static_cast<size_t>(INT_MAX) - 64) {
    return absl::InvalidArgumentError("threshold: content too long");
  }
  ossl::UniquePtr<EVP_CIPHER_CTX> ctx(EVP_CIPHER_CTX_new());
  EncryptedContent out;
  out.cipher = cipher;
  out.iv.assign(iv.begin(), iv.end());
  out.ciphertext.resize(plaintext.size() + 32);
  int len = 0, tail = 0;
  if (!ctx || EVP_EncryptInit_ex(ctx.get(), c, nullptr, content_key.data(), iv.data()) != 1 ||
      EVP_EncryptUpdate(ctx.get(), out.ciphertext.data(), &len, plaintext.data(),
                        static_cast<int>(plaintext.size())) != 1 ||
      EVP_EncryptFinal_ex(ctx.get(), out.ciphertext.data() + len, &tail) != 1) {
    return hsm::OpenSslError("threshold: encrypt the content");
  }
  out.ciphertext.resize(static_cast<size_t>(len + tail));
  return out;
}

absl::StatusOr<hsm::SecretBytes> DecryptContent(const EncryptedContent& content,
                                                std::span<const uint8_t> content_key) {
  const EVP_CIPHER* c = CipherOf(content.cipher);
  if (content_key.size() != ContentKeyLength(content.cipher) ||
      content.iv.size() != static_cast<size_t>(EVP_CIPHER_get_iv_length(c)) ||
      content.ciphertext.size() > static_cast<size_t>(INT_MAX) - 64) {
    return absl::InvalidArgumentError("threshold: content key, IV or content of the wrong length");
  }
  ossl::UniquePtr<EVP_CIPHER_CTX> ctx(EVP_CIPHER_CTX_new());
  hsm::SecretBytes out(content.ciphertext.size() + 32);
  int len = 0, tail = 0;
  if (!ctx ||
      EVP_DecryptInit_ex(ctx.get(), c, nullptr, content_key.data(), content.iv.data()) != 1 ||
      EVP_DecryptUpdate(ctx.get(), out.data(), &len, content.ciphertext.data(),
                        static_cast<int>(content.ciphertext.size())) != 1 ||
      EVP_DecryptFinal_ex(ctx.get(), out.data() + len, &tail) != 1) {
    ERR_clear_error();
    return absl::DataLossError("threshold: the content does not decrypt under the combined key");
  }
  out.Truncate(static_cast<size_t>(len + tail));
  return out;
}

std::array<uint8_t, 32> ArchiveDigest(std::span<const uint8_t> archive_der) {
  std::array<uint8_t, 32> out{};
  unsigned int len = 0;
  if (EVP_Digest(archive_der.data(), archive_der.size(), out.data(), &len, EVP_sha256(), nullptr) !=
      1) {
    out.fill(0);
  }
  return out;
}

absl::StatusOr<Contribution> ParseContributionContent(std::span<const uint8_t> der) {
  auto bad = [](std::string_view what) {
    return absl::InvalidArgumentError(StrCat("share contribution: ", std::string(what)));
  };
  DerReader top(der);
  DerElement seq;
  if (!top.Expect(der::kSequence, &seq) || !top.empty()) return bad("not one DER SEQUENCE");
  DerReader r(seq.contents);
  int64_t version = 0, index = 0;
  if (!ReadInt(r, 1, 1, &version)) return bad("the version is not 1");
  DerElement digest, rid, share;
  Contribution out;
  if (!r.Expect(der::kOctetString, &digest) || digest.contents.size() != 32) {
    return bad("the archive digest is not 32 bytes");
  }
  std::copy(digest.contents.begin(), digest.contents.end(), out.archive_digest.begin());
  if (!ReadInt(r, 1, shamir::kMaxShares, &index)) return bad("the share index is not 1..255");
  out.index = static_cast<uint8_t>(index);
  if (!r.Expect(der::kSequence, &rid) ||
      !ReadIssuerAndSerial(rid.contents, &out.contributor_issuer, &out.contributor_serial)) {
    return bad("the contributor is not an IssuerAndSerialNumber");
  }
  if (!r.Expect(der::kOctetString, &share) || share.contents.empty() ||
      share.contents.size() > kMaxShareLength) {
    return bad("the share is missing or longer than 64 bytes");
  }
  out.share = hsm::SecretBytes(share.contents);
  if (!r.empty()) return bad("trailing data");
  return out;
}

absl::StatusOr<std::vector<uint8_t>> SealContribution(const Contribution& contribution,
                                                      X509* coordinator, KeyTransport transport) {
  if (coordinator == nullptr || contribution.share.empty() || contribution.index == 0) {
    return absl::InvalidArgumentError("share contribution: no coordinator, share or index");
  }
  const Bytes rid = Tlv(der::kSequence,
                        Concat({contribution.contributor_issuer, contribution.contributor_serial}));
  Bytes share_tlv = Tlv(der::kOctetString, contribution.share.span());
  Bytes content =
      Tlv(der::kSequence,
          Concat({der::SmallInteger(1), Tlv(der::kOctetString, contribution.archive_digest),
                  der::SmallInteger(contribution.index), rid, share_tlv}));
  OPENSSL_cleanse(share_tlv.data(), share_tlv.size());
  hsm::SecretBytes plaintext(content);
  OPENSSL_cleanse(content.data(), content.size());

  hsm::SecretBytes key(32);
  uint8_t iv[16];
  if (RAND_bytes(key.data(), static_cast<int>(key.size())) != 1 || RAND_bytes(iv, sizeof iv) != 1) {
    return hsm::OpenSslError("share contribution: random content key");
  }
  auto encrypted = EncryptContent(ContentCipher::kAes256Cbc, key.span(), iv, plaintext.span());
  if (!encrypted.ok()) return encrypted.status();
  auto wrapped = EncryptShare(X509_get0_pubkey(coordinator), transport, key.span());
  if (!wrapped.ok()) return wrapped.status();
  KeyTransRecipient recipient;
  recipient.certificate = coordinator;
  recipient.transport = transport;
  recipient.encrypted_key = std::move(*wrapped);
  return BuildEnvelopedData({recipient}, *encrypted, kShareContributionOid);
}

absl::StatusOr<Contribution> OpenContribution(std::span<const uint8_t> der,
                                              EVP_PKEY* coordinator_key, X509* coordinator,
                                              OSSL_LIB_CTX* libctx, const char* propq) {
  ossl::UniquePtr<CMS_ContentInfo> cms = ReadContentInfo(der, libctx, propq);
  if (!cms || OBJ_obj2nid(CMS_get0_type(cms.get())) != NID_pkcs7_enveloped) {
    return absl::InvalidArgumentError("share contribution: not a DER CMS EnvelopedData");
  }
  char type[128] = {};
  OBJ_obj2txt(type, sizeof type, CMS_get0_eContentType(cms.get()), 1);
  if (std::string_view(type) != kShareContributionOid) {
    return absl::InvalidArgumentError(
        StrCat("share contribution: the content type is ", type, ", not a keywarden share"));
  }
  CMS_decrypt(cms.get(), nullptr, nullptr, nullptr, nullptr, CMS_DEBUG_DECRYPT);
  if (CMS_decrypt_set1_pkey_and_peer(cms.get(), coordinator_key, coordinator, nullptr) != 1) {
    return hsm::OpenSslError(
        "share contribution: it is not encrypted to this coordinator's KRA key",
        absl::StatusCode::kDataLoss);
  }
  ossl::UniquePtr<BIO> out(BIO_new(BIO_s_secmem()));
  if (!out || CMS_decrypt(cms.get(), nullptr, nullptr, nullptr, out.get(),
                          CMS_BINARY | CMS_DEBUG_DECRYPT) != 1) {
    return hsm::OpenSslError("share contribution: decrypt", absl::StatusCode::kDataLoss);
  }
  char* data = nullptr;
  const long len = BIO_get_mem_data(out.get(), &data);
  if (len <= 0 || data == nullptr) {
    return absl::DataLossError("share contribution: decrypts to nothing");
  }
  return ParseContributionContent(
      std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(data), static_cast<size_t>(len)));
}

absl::StatusOr<std::vector<uint8_t>> MakeThresholdArchive(
    const ArchiveSpec& spec, const std::vector<X509*>& kras, std::span<const uint8_t> plaintext,
    const std::function<absl::Status(std::span<uint8_t>)>& random) {
  const int n = static_cast<int>(kras.size());
  if (spec.k < 2 || spec.k > n) {
    return absl::FailedPreconditionError(
        StrCat("threshold ", spec.k, " needs 2 <= k <= the ", n, " KRAs selected"));
  }
  hsm::SecretBytes content_key(ContentKeyLength(spec.cipher));
  std::vector<uint8_t> iv(spec.cipher == ContentCipher::kDes3Cbc ? 8 : 16);
  if (auto s = random(std::span<uint8_t>(content_key.data(), content_key.size())); !s.ok()) {
    return s;
  }
  if (auto s = random(iv); !s.ok()) return s;
  auto content = EncryptContent(spec.cipher, content_key.span(), iv, plaintext);
  if (!content.ok()) return content.status();
  auto shares = shamir::Split(content_key.span(), spec.k, n, random);
  if (!shares.ok()) return shares.status();
  std::vector<ShareRecipient> recipients;
  for (int i = 0; i < n; ++i) {
    const shamir::Share& share = (*shares)[static_cast<size_t>(i)];
    X509* cert = kras[static_cast<size_t>(i)];
    ShareRecipient r;
    r.certificate = cert;
    r.transport = spec.transport;
    r.index = share.index;
    auto encrypted = EncryptShare(cert != nullptr ? X509_get0_pubkey(cert) : nullptr,
                                  spec.transport, share.value.span());
    if (!encrypted.ok()) {
      return absl::Status(
          encrypted.status().code(),
          StrCat("encrypting share ", i + 1, " to KRA \"",
                 cert != nullptr ? NameText(Der(X509_get_subject_name(cert), i2d_X509_NAME))
                                 : std::string("(none)"),
                 "\": ", encrypted.status().message()));
    }
    r.encrypted_share = std::move(*encrypted);
    r.commitment = CommitTo(spec.k, n, share.index, share.value.span());
    recipients.push_back(std::move(r));
  }
  // A fault in the sharing must be found now, never at recovery.
  auto combined =
      shamir::Combine(std::span<const shamir::Share>(shares->data(), static_cast<size_t>(spec.k)));
  if (!combined.ok() || combined->size() != content_key.size() ||
      CRYPTO_memcmp(combined->data(), content_key.data(), content_key.size()) != 0) {
    return absl::InternalError("threshold archive: the shares do not give the content key back");
  }
  return BuildThresholdEnvelopedData(spec.k, recipients, *content);
}

absl::StatusOr<std::vector<uint8_t>> ResplitContentKey(
    int k, const std::vector<X509*>& kras, KeyTransport transport,
    std::span<const uint8_t> content_key, std::span<const uint8_t> encrypted_content_info,
    const std::function<absl::Status(std::span<uint8_t>)>& random) {
  const int n = static_cast<int>(kras.size());
  if (k < 2 || k > n || n > shamir::kMaxShares) {
    return absl::FailedPreconditionError(
        StrCat("threshold ", k, " needs 2 <= k <= the ", n, " KRAs to rewrap to"));
  }
  auto shares = shamir::Split(content_key, k, n, random);
  if (!shares.ok()) return shares.status();
  std::vector<ShareRecipient> recipients;
  for (int i = 0; i < n; ++i) {
    const shamir::Share& share = (*shares)[static_cast<size_t>(i)];
    X509* cert = kras[static_cast<size_t>(i)];
    ShareRecipient r;
    r.certificate = cert;
    r.transport = transport;
    r.index = share.index;
    auto encrypted = EncryptShare(cert != nullptr ? X509_get0_pubkey(cert) : nullptr, transport,
                                  share.value.span());
    if (!encrypted.ok()) {
      return absl::Status(
          encrypted.status().code(),
          StrCat("encrypting new share ", i + 1, " to KRA \"",
                 cert != nullptr ? NameText(Der(X509_get_subject_name(cert), i2d_X509_NAME))
                                 : std::string("(none)"),
                 "\": ", encrypted.status().message()));
    }
    r.encrypted_share = std::move(*encrypted);
    r.commitment = CommitTo(k, n, share.index, share.value.span());
    recipients.push_back(std::move(r));
  }
  // Every window of k consecutive shares (all n of them, cyclically) must
  // give the content key back: a fault in the sharing is found now.
  for (int start = 0; start < n; ++start) {
    std::vector<shamir::Share> subset;
    for (int j = 0; j < k; ++j) {
      const shamir::Share& s = (*shares)[static_cast<size_t>((start + j) % n)];
      subset.push_back({s.index, s.value});
    }
    auto combined = shamir::Combine(subset);
    if (!combined.ok() || combined->size() != content_key.size() ||
        CRYPTO_memcmp(combined->data(), content_key.data(), content_key.size()) != 0) {
      return absl::InternalError("rewrap: the new shares do not give the content key back");
    }
  }
  return BuildThresholdEnvelopedDataAround(k, recipients, encrypted_content_info);
}

}  // namespace keywarden::pki::threshold
