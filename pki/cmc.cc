#include "pki/cmc.h"

#include <cstring>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <openssl/x509.h>

#include "hsm/strings.h"
#include "pki/certificate.h"
#include "pki/der.h"

namespace keywarden::pki {
namespace {

constexpr char kOidSignedData[] = "1.2.840.113549.1.7.2";
constexpr char kOidContentType[] = "1.2.840.113549.1.9.3";
constexpr char kOidMessageDigest[] = "1.2.840.113549.1.9.4";

absl::Status Bad(const std::string& what) {
  return absl::InvalidArgumentError("CMC request: " + what);
}

absl::Status Failed(RequestCheck check, const std::string& what) {
  return RequestCheckError(check, "CMC request: " + what);
}

// Digest name for a digest or signature algorithm OID.
const char* DigestFor(const std::string& oid) {
  if (oid == "1.3.14.3.2.26" || oid == "1.2.840.113549.1.1.5") return "SHA1";
  if (oid == "2.16.840.1.101.3.4.2.1" || oid == "1.2.840.113549.1.1.11") return "SHA256";
  if (oid == "2.16.840.1.101.3.4.2.2" || oid == "1.2.840.113549.1.1.12") return "SHA384";
  if (oid == "2.16.840.1.101.3.4.2.3" || oid == "1.2.840.113549.1.1.13") return "SHA512";
  return nullptr;
}

std::vector<uint8_t> Digest(const char* name, std::span<const uint8_t> data) {
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  ossl::UniquePtr<EVP_MD> md(EVP_MD_fetch(nullptr, name, nullptr));
  if (!md || !EVP_Digest(data.data(), data.size(), out, &len, md.get(), nullptr)) return {};
  return {out, out + len};
}

// OID text of an AlgorithmIdentifier's algorithm.
std::string AlgorithmOid(const DerElement& alg) {
  DerReader r(alg.contents);
  DerElement oid;
  return r.Expect(der::kOid, &oid) ? OidToText(oid.contents) : std::string();
}

struct Attribute {
  std::string oid;
  std::vector<DerElement> values;
};

// Attributes (SEQUENCE { OID, SET OF value }) inside `contents`.
bool ReadAttributes(std::span<const uint8_t> contents, std::vector<Attribute>* out) {
  DerReader r(contents);
  while (!r.empty()) {
    DerElement seq, oid, set;
    if (!r.Expect(der::kSequence, &seq)) return false;
    DerReader a(seq.contents);
    if (!a.Expect(der::kOid, &oid) || !a.Expect(der::kSet, &set) || !a.empty()) return false;
    Attribute attr;
    attr.oid = OidToText(oid.contents);
    DerReader v(set.contents);
    while (!v.empty()) {
      DerElement value;
      if (!v.Next(&value)) return false;
      attr.values.push_back(value);
    }
    out->push_back(std::move(attr));
  }
  return true;
}

// The Windows CMC add-attributes control:
//   SEQUENCE { dataReference INTEGER, certReferences SEQUENCE OF INTEGER, attributes SET OF
//   Attribute }
absl::Status ReadAddAttributes(const DerElement& value, CmcRequest* out) {
  DerReader r(value.contents);
  DerElement data_ref, cert_refs, attrs;
  if (value.tag != der::kSequence || !r.Expect(der::kInteger, &data_ref) ||
      !r.Expect(der::kSequence, &cert_refs) || !r.Expect(der::kSet, &attrs)) {
    return Bad("the 1.3.6.1.4.1.311.10.10.1 control is malformed");
  }
  std::vector<Attribute> list;
  if (!ReadAttributes(attrs.contents, &list))
    return Bad("the 1.3.6.1.4.1.311.10.10.1 attributes are malformed");
  for (const Attribute& a : list) {
    if (a.oid == kOidEncryptedKeyHash) {
      if (a.values.size() != 1 || a.values[0].tag != der::kOctetString) {
        return Bad("the encrypted-key hash (1.3.6.1.4.1.311.21.21) is not one OCTET STRING");
      }
      if (out->encrypted_key_hash) return Bad("two encrypted-key hashes (1.3.6.1.4.1.311.21.21)");
      out->encrypted_key_hash.emplace(a.values[0].contents.begin(), a.values[0].contents.end());
    } else if (a.oid == kOidRequestClientInfo && !a.values.empty()) {
      out->client_info.assign(a.values[0].whole.begin(), a.values[0].whole.end());
    }
  }
  return absl::OkStatus();
}

absl::Status ReadPkiData(std::span<const uint8_t> content, CmcRequest* out) {
  DerReader top(content);
  DerElement pki, controls, requests;
  if (!top.Expect(der::kSequence, &pki) || !top.empty()) return Bad("PKIData is not a SEQUENCE");
  DerReader fields(pki.contents);
  if (!fields.Expect(der::kSequence, &controls) || !fields.Expect(der::kSequence, &requests)) {
    return Bad("PKIData has no controlSequence/reqSequence");
  }
  // controlSequence: TaggedAttribute ::= SEQUENCE { bodyPartID, attrType, attrValues SET }
  DerReader ctl(controls.contents);
  while (!ctl.empty()) {
    DerElement tagged, id, type, values;
    if (!ctl.Expect(der::kSequence, &tagged)) return Bad("a control is not a SEQUENCE");
    DerReader t(tagged.contents);
    if (!t.Expect(der::kInteger, &id) || !t.Expect(der::kOid, &type) ||
        !t.Expect(der::kSet, &values)) {
      return Bad("a control is malformed");
    }
    if (OidToText(type.contents) != kOidCmcAddAttributes) continue;  // other controls: ignored
    DerReader v(values.contents);
    while (!v.empty()) {
      DerElement value;
      if (!v.Next(&value)) return Bad("a control value is malformed");
      if (auto st = ReadAddAttributes(value, out); !st.ok()) return st;
    }
  }
  // reqSequence: exactly one [0] TaggedCertificationRequest.
  DerReader req(requests.contents);
  DerElement tcr;
  if (!req.Expect(der::ContextConstructed(0), &tcr)) {
    return Bad("reqSequence holds no PKCS#10 ([0] TaggedCertificationRequest)");
  }
  if (!req.empty()) return Bad("reqSequence holds more than one request");
  DerReader t(tcr.contents);
  DerElement body_id, csr;
  if (!t.Expect(der::kInteger, &body_id) || !t.Expect(der::kSequence, &csr) || !t.empty() ||
      !ReadSmallInt(body_id.contents, &out->pkcs10_body_part_id)) {
    return Bad("the TaggedCertificationRequest is malformed");
  }
  auto pkcs10 = ParsePkcs10(csr.whole);
  if (!pkcs10.ok()) {
    return Failed(RequestCheckOf(pkcs10.status()), std::string(pkcs10.status().message()));
  }
  out->pkcs10 = std::move(*pkcs10);
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<CmcRequest> ParseCmcRequest(std::span<const uint8_t> input, bool allow_removed_key,
                                           CmcSeen* seen) {
  CmcRequest out;
  out.der.assign(input.begin(), input.end());
  std::span<const uint8_t> data(out.der);

  // ContentInfo { signedData, [0] SignedData }
  DerReader top(data);
  DerElement ci, type, explicit0, sd;
  if (!top.Expect(der::kSequence, &ci) || !top.empty()) return Bad("not a single DER ContentInfo");
  DerReader cir(ci.contents);
  if (!cir.Expect(der::kOid, &type) || OidToText(type.contents) != kOidSignedData) {
    return Bad("the ContentInfo is not signedData");
  }
  if (!cir.Expect(der::ContextConstructed(0), &explicit0) || !cir.empty())
    return Bad("malformed ContentInfo");
  DerReader sdw(explicit0.contents);
  if (!sdw.Expect(der::kSequence, &sd) || !sdw.empty()) return Bad("malformed SignedData");

  // SignedData { version, digestAlgorithms, encapContentInfo, [0] certs, [1] crls, signerInfos }
  DerReader s(sd.contents);
  DerElement version, digests, encap, signer_infos, skip;
  if (!s.Expect(der::kInteger, &version) || !s.Expect(der::kSet, &digests) ||
      !s.Expect(der::kSequence, &encap)) {
    return Bad("malformed SignedData header");
  }
  s.Expect(der::ContextConstructed(0), &skip);  // certificates: Windows sends none
  s.Expect(der::ContextConstructed(1), &skip);
  if (!s.Expect(der::kSet, &signer_infos) || !s.empty())
    return Bad("malformed SignedData signerInfos");

  DerReader e(encap.contents);
  DerElement econtent_type, econtent_explicit, econtent;
  if (!e.Expect(der::kOid, &econtent_type) || OidToText(econtent_type.contents) != kOidPkiData) {
    return Bad("the signed content is not id-cct-PKIData (1.3.6.1.5.5.7.12.2)");
  }
  if (!e.Expect(der::ContextConstructed(0), &econtent_explicit) || !e.empty()) {
    return Bad("the PKIData content is missing");
  }
  DerReader ec(econtent_explicit.contents);
  if (!ec.Expect(der::kOctetString, &econtent) || !ec.empty())
    return Bad("the PKIData is not in an OCTET STRING");
  if (auto st = ReadPkiData(econtent.contents, &out); !st.ok()) return st;
  if (seen != nullptr) {
    seen->pkcs10_parsed = true;
    seen->subject = FormatName(X509_REQ_get_subject_name(out.pkcs10.req.get()));
    seen->spki_sha256 = out.pkcs10.spki_sha256();
    seen->template_name = out.pkcs10.template_name;
    seen->template_oid = out.pkcs10.template_oid;
    seen->carries_encrypted_key = out.encrypted_key_hash.has_value();
  }

  // Exactly one SignerInfo.
  DerReader sis(signer_infos.contents);
  DerElement si;
  if (!sis.Expect(der::kSequence, &si) || !sis.empty())
    return Bad("there must be exactly one SignerInfo");
  DerReader sr(si.contents);
  DerElement si_version, sid, digest_alg, signed_attrs, sig_alg, signature, unsigned_attrs;
  if (!sr.Expect(der::kInteger, &si_version) || !sr.Next(&sid) ||
      !sr.Expect(der::kSequence, &digest_alg)) {
    return Bad("malformed SignerInfo");
  }
  const bool has_signed_attrs = sr.Expect(der::ContextConstructed(0), &signed_attrs);
  if (!sr.Expect(der::kSequence, &sig_alg) || !sr.Expect(der::kOctetString, &signature)) {
    return Bad("malformed SignerInfo signature");
  }
  const bool has_unsigned_attrs = sr.Expect(der::ContextConstructed(1), &unsigned_attrs);
  if (!sr.empty()) return Bad("trailing data in the SignerInfo");

  const char* digest = DigestFor(AlgorithmOid(digest_alg));
  if (digest == nullptr) {
    return Failed(RequestCheck::kAlgorithm,
                  "unsupported digest algorithm " + AlgorithmOid(digest_alg));
  }
  out.digest = digest;
  // Unauthenticated but still checked: versions, and digestAlgorithms must
  // be well formed and list the signer's digest.
  int64_t sd_version = -1, si_ver = -1;
  if (!ReadSmallInt(version.contents, &sd_version) || (sd_version != 1 && sd_version != 3) ||
      !ReadSmallInt(si_version.contents, &si_ver) || (si_ver != 1 && si_ver != 3)) {
    return Bad("unsupported SignedData or SignerInfo version");
  }
  bool listed = false;
  DerReader algs(digests.contents);
  while (!algs.empty()) {
    DerElement alg;
    if (!algs.Expect(der::kSequence, &alg)) return Bad("malformed digestAlgorithms");
    const std::string oid = AlgorithmOid(alg);
    if (oid.empty()) return Bad("malformed digestAlgorithms");
    listed |= DigestFor(oid) != nullptr && std::string(DigestFor(oid)) == digest;
  }
  if (!listed) return Bad("the signer's digest algorithm is not in digestAlgorithms");
  // The request's own key signs: an RSA key (key archival and CMC are RSA).
  EVP_PKEY* key = out.pkcs10.public_key();
  if (!EVP_PKEY_is_a(key, "RSA")) {
    return Failed(RequestCheck::kAlgorithm,
                  std::string("the request's key is ") +
                      (EVP_PKEY_is_a(key, "EC") ? "an EC key" : "not an RSA key") +
                      "; CMC requests are signed with RSA keys only");
  }
  const std::string sig_oid = AlgorithmOid(sig_alg);
  if (sig_oid != "1.2.840.113549.1.1.1" && DigestFor(sig_oid) == nullptr) {
    return Failed(RequestCheck::kAlgorithm,
                  "unsupported signature algorithm " + sig_oid + " (RSA only)");
  }

  // The signer must be the request's own key.
  if (sid.tag == der::ContextPrimitive(0)) {
    out.signer_by_key_id = true;
    // SHA-1 of the subjectPublicKey bits as the PKCS#10 carries them (what
    // hsm::PublicKeySha1 computes by encoding the key again, which costs
    // more than the signature check below).
    const unsigned char* bits = nullptr;
    int bits_len = 0;
    X509_PUBKEY* spki = X509_REQ_get_X509_PUBKEY(out.pkcs10.req.get());
    unsigned char ski[SHA_DIGEST_LENGTH];
    if (spki == nullptr || X509_PUBKEY_get0_param(nullptr, &bits, &bits_len, nullptr, spki) != 1 ||
        bits == nullptr || SHA1(bits, static_cast<size_t>(bits_len), ski) == nullptr ||
        sid.contents.size() != sizeof ski ||
        std::memcmp(ski, sid.contents.data(), sizeof ski) != 0) {
      ERR_clear_error();
      return Failed(RequestCheck::kSigner, "the signer's key identifier is not the PKCS#10 key's");
    }
  } else if (sid.tag != der::kSequence) {
    return Bad("the SignerInfo identifies its signer in an unknown way");
  }

  // What was signed: the signed attributes re-tagged as a SET, or the content.
  std::vector<uint8_t> signed_bytes;
  if (has_signed_attrs) {
    std::vector<Attribute> attrs;
    if (!ReadAttributes(signed_attrs.contents, &attrs)) return Bad("malformed signed attributes");
    bool content_type_ok = false, digest_ok = false;
    const std::vector<uint8_t> expected = Digest(digest, econtent.contents);
    for (const Attribute& a : attrs) {
      if (a.oid == kOidContentType && a.values.size() == 1 && a.values[0].tag == der::kOid) {
        content_type_ok = OidToText(a.values[0].contents) == kOidPkiData;
      } else if (a.oid == kOidMessageDigest && a.values.size() == 1 &&
                 a.values[0].tag == der::kOctetString) {
        digest_ok = a.values[0].contents.size() == expected.size() &&
                    std::memcmp(a.values[0].contents.data(), expected.data(), expected.size()) == 0;
      }
    }
    if (!content_type_ok) return Bad("the signed contentType attribute is not id-cct-PKIData");
    if (!digest_ok) {
      return Failed(RequestCheck::kMessageDigest, "the messageDigest does not match the PKIData");
    }
    signed_bytes.assign(signed_attrs.whole.begin(), signed_attrs.whole.end());
    signed_bytes[0] = der::kSet;
  } else {
    signed_bytes.assign(econtent.contents.begin(), econtent.contents.end());
  }
  ossl::UniquePtr<EVP_MD_CTX> vctx(EVP_MD_CTX_new());
  if (EVP_DigestVerifyInit_ex(vctx.get(), nullptr, digest, nullptr, nullptr, key, nullptr) != 1 ||
      EVP_DigestVerify(vctx.get(), signature.contents.data(), signature.contents.size(),
                       signed_bytes.data(), signed_bytes.size()) != 1) {
    ERR_clear_error();
    return Failed(RequestCheck::kSignature,
                  "the CMS signature does not verify with the PKCS#10 public key");
  }

  // The encrypted private key, and its hash from the signed control.
  if (has_unsigned_attrs) {
    std::vector<Attribute> attrs;
    if (!ReadAttributes(unsigned_attrs.contents, &attrs))
      return Bad("malformed unsigned attributes");
    for (const Attribute& a : attrs) {
      if (a.oid != kOidArchivedKey) continue;
      if (a.values.size() != 1 || a.values[0].tag != der::kSequence || out.encrypted_key) {
        return Bad("the encrypted private key (1.3.6.1.4.1.311.21.13) must be one ContentInfo");
      }
      out.encrypted_key.emplace(a.values[0].whole.begin(), a.values[0].whole.end());
    }
  }
  if (out.encrypted_key) {
    // The form the CA stores: the same request without the 21.13 attribute,
    // so the database never holds a key the CA's own exchange key can open.
    // The signature still verifies (unsigned attributes are not signed).
    std::vector<uint8_t> kept_attrs;
    DerReader ua(unsigned_attrs.contents);
    DerElement attr;
    while (ua.Next(&attr)) {
      DerReader ar(attr.contents);
      DerElement oid;
      if (ar.Expect(der::kOid, &oid) && OidToText(oid.contents) == kOidArchivedKey) continue;
      kept_attrs.insert(kept_attrs.end(), attr.whole.begin(), attr.whole.end());
    }
    auto before = [](std::span<const uint8_t> outer, std::span<const uint8_t> inner) {
      return std::vector<uint8_t>(outer.data(), inner.data());
    };
    std::vector<uint8_t> si_contents = before(si.contents, unsigned_attrs.whole);
    if (!kept_attrs.empty()) {
      auto t = der::Tlv(der::ContextConstructed(1), kept_attrs);
      si_contents.insert(si_contents.end(), t.begin(), t.end());
    }
    std::vector<uint8_t> sd_contents = before(sd.contents, signer_infos.whole);
    auto sis_new = der::Tlv(der::kSet, der::Tlv(der::kSequence, si_contents));
    sd_contents.insert(sd_contents.end(), sis_new.begin(), sis_new.end());
    out.without_encrypted_key = der::Tlv(
        der::kSequence,
        der::Concat({der::Bytes(type.whole.begin(), type.whole.end()),
                     der::Tlv(der::ContextConstructed(0), der::Tlv(der::kSequence, sd_contents))}));
  }
  if (!out.encrypted_key && out.encrypted_key_hash && allow_removed_key) {
    out.encrypted_key_removed = true;
    return out;
  }
  if (out.encrypted_key && !out.encrypted_key_hash) {
    return Bad(
        "the encrypted private key has no hash (1.3.6.1.4.1.311.21.21) in the signed controls");
  }
  if (!out.encrypted_key && out.encrypted_key_hash) {
    return Bad("the signed controls hash an encrypted private key the request does not carry");
  }
  if (out.encrypted_key) {
    // SHA-1 over the whole ContentInfo; a hash of the CSR's digest length uses that digest.
    const size_t n = out.encrypted_key_hash->size();
    const char* hash = n == 20   ? "SHA1"
                       : n == 32 ? "SHA256"
                       : n == 48 ? "SHA384"
                       : n == 64 ? "SHA512"
                                 : nullptr;
    if (hash == nullptr || Digest(hash, *out.encrypted_key) != *out.encrypted_key_hash) {
      return Failed(RequestCheck::kKeyHash,
                    "the encrypted-key hash (1.3.6.1.4.1.311.21.21) does not match the encrypted "
                    "private key (1.3.6.1.4.1.311.21.13)");
    }
  }
  return out;
}

}  // namespace keywarden::pki
