// A signed audit checkpoint: the head of the audit chain (sequence number
// and hash) signed by the CA key, so that an insider who can write the
// database cannot remove the newest records or recompute the chain without
// it showing. Self-describing and verifiable with openssl alone:
//
//   ContentInfo { signedData,
//     SignedData v1
//       encapContentInfo { id-data, OCTET STRING = the body (below) }
//       certificates: the CA certificate
//       SignerInfo (issuerAndSerialNumber of the CA certificate; signedAttrs
//         contentType, signingTime, messageDigest; signature by the CA key) }
//
//   body: canonical JSON, one line, keys in this order, no spaces:
//   {"type":"keywarden-audit-checkpoint","version":1,"number":N,"seq":S,
//    "hash":"<64 hex>","time":T,"previous":"<64 hex or empty>"}
//   number: 1, 2, 3, ... (checkpoints are numbered without gaps)
//   seq, hash: the audit record the checkpoint vouches for (the head)
//   time: unix seconds when it was signed
//   previous: SHA-256 (hex) of the DER of checkpoint number-1 ("" for 1)
//
//   openssl cms -verify -binary -inform DER -purpose any -in cp.der -CAfile ca.pem
//   (prints the body; a subordinate CA: -CAfile with the chain to the root)
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "hsm/ossl.h"

namespace keywarden::pki {

struct AuditCheckpointBody {
  int64_t number = 0;
  int64_t seq = 0;
  std::vector<uint8_t> hash;  // 32 bytes
  int64_t time = 0;
  std::vector<uint8_t> previous;  // 32 bytes, or empty for checkpoint 1
};

// The canonical body text (what is signed).
std::string AuditCheckpointBodyText(const AuditCheckpointBody& body);

// Signs `body` with `ca_key` (a token key: pass its libctx and properties)
// and verifies the result with a software copy of `ca_certificate` before
// returning it (INTERNAL if that fails). InvalidArgument for a bad body.
absl::StatusOr<std::vector<uint8_t>> BuildAuditCheckpoint(OSSL_LIB_CTX* libctx, const char* propq,
                                                          EVP_PKEY* ca_key, X509* ca_certificate,
                                                          const AuditCheckpointBody& body);

// Opens a checkpoint: strict DER CMS SignedData with one signer, whose
// signature and messageDigest verify with `ca_certificate` (the only
// acceptable signer; certificates inside the checkpoint are not trusted),
// and a body in exactly the canonical form. DATA_LOSS names what is wrong.
absl::StatusOr<AuditCheckpointBody> ParseAuditCheckpoint(std::span<const uint8_t> der,
                                                         X509* ca_certificate);

// SHA-256 of a checkpoint's DER (what the next checkpoint's `previous` holds).
std::vector<uint8_t> AuditCheckpointDigest(std::span<const uint8_t> der);

}  // namespace keywarden::pki
