// CMC Full PKI Requests as Windows sends them (RFC 5272 + the Windows key
// archival extensions; see shared/vectors/windows-key-archival/README.md):
//
//   ContentInfo(signedData) -> SignedData, eContentType id-cct-PKIData
//     PKIData.controlSequence: 1.3.6.1.4.1.311.10.10.1 (CMC add-attributes)
//       holding 1.3.6.1.4.1.311.21.21 = hash of the encrypted key, and
//       optionally 1.3.6.1.4.1.311.21.20 client info; older layouts carry
//       more controls, which are ignored
//     PKIData.reqSequence: [0] { bodyPartID, PKCS#10 }
//   SignerInfo: signed by the PKCS#10 key (signer by subject key identifier
//     or issuer/serial), signed attributes contentType + messageDigest;
//     unsigned attribute 1.3.6.1.4.1.311.21.13 = ContentInfo(envelopedData):
//     the private key encrypted to the CA exchange certificate.
//
// ParseCmcRequest checks every step and says which one failed.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "pki/pkcs10.h"

namespace keywarden::pki {

inline constexpr char kOidEncryptedKeyHash[] = "1.3.6.1.4.1.311.21.21";
inline constexpr char kOidArchivedKey[] = "1.3.6.1.4.1.311.21.13";
inline constexpr char kOidCmcAddAttributes[] = "1.3.6.1.4.1.311.10.10.1";
inline constexpr char kOidRequestClientInfo[] = "1.3.6.1.4.1.311.21.20";
inline constexpr char kOidPkiData[] = "1.3.6.1.5.5.7.12.2";

struct CmcRequest {
  std::vector<uint8_t> der;
  Pkcs10Request pkcs10;  // self-signature verified
  int64_t pkcs10_body_part_id = 0;
  std::string digest;             // SignerInfo digest algorithm, e.g. "SHA1"
  bool signer_by_key_id = false;  // sid is [0] subjectKeyIdentifier
  // Key archival: the encrypted private key (the whole ContentInfo DER, as
  // carried in the 21.13 attribute) and its hash from the signed control.
  std::optional<std::vector<uint8_t>> encrypted_key;
  std::optional<std::vector<uint8_t>> encrypted_key_hash;
  std::vector<uint8_t> client_info;  // raw 21.20 value, when present
  // With an encrypted key: the request re-encoded without the 21.13
  // attribute (what the CA stores once the key is archived to KRAs).
  std::vector<uint8_t> without_encrypted_key;
  // Parsed with allow_removed_key: the hash is there, the key was removed.
  bool encrypted_key_removed = false;
};

// What could be read from a request before it was refused: set once the
// PKCS#10 inside has parsed and its self-signature verified (nothing here
// is key material; the subject is as the request names it, unbounded).
struct CmcSeen {
  bool pkcs10_parsed = false;
  std::string subject;      // RFC 4514
  std::string spki_sha256;  // pki::SpkiSha256 of the PKCS#10 key
  std::string template_name;
  std::string template_oid;
  bool carries_encrypted_key = false;
};

// Parses and verifies: structure (strict DER), the PKCS#10 inside, the CMS
// signature with the PKCS#10 public key (and the signer's key id when given
// that way), the messageDigest, the content type, and that the encrypted
// key's hash in the signed control matches the unsigned attribute. A
// request with an encrypted key but no hash is refused; so is one with a
// hash but no key, unless `allow_removed_key` (the CA re-reading a request
// it stored without the key). A refusal carries the check it failed
// (RequestCheckOf, pki/pkcs10.h): key-hash, message-digest, signature,
// signer, algorithm (a key or algorithm other than RSA / SHA-1..SHA-512),
// or structure. `seen`, when given, receives what was read safely.
absl::StatusOr<CmcRequest> ParseCmcRequest(std::span<const uint8_t> der,
                                           bool allow_removed_key = false, CmcSeen* seen = nullptr);

}  // namespace keywarden::pki
