// The signed record of a key ceremony (`keywarden ceremony run`), and its
// check (`keywarden ceremony verify`; keywardend reads the KRA certificates
// a transcript lists). The file is one JSON object:
//
//   { "format": "keywarden-ceremony-transcript/1",
//     "transcript": { ...every step, witnesses, "outputs": [{"path",
//                     "kind", "sha256"}...], "signer": {"path", "kind"} },
//     "signature": { "digest": "SHA256", "padding": "pkcs1"|"pss"|"ecdsa",
//                    "value": base64 } }
//
// The signature covers the UTF-8 bytes of `transcript` serialised by
// nlohmann::json's dump() (no whitespace, keys sorted, integers only: the
// transcript holds no floating-point numbers, so the form is canonical).
// It is made with the new CA key on its token and verified right away.
// The signer is an output of the ceremony: the CA certificate ("kind":
// "certificate"), or for a subordinate whose certificate is not issued yet
// the PKCS#10 request ("kind": "request"), whose public key is the CA key.
// Output paths are relative to the transcript's directory.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/status/statusor.h"
#include "hsm/ossl.h"
#include "pki/certificate.h"

namespace keywarden::pki {

inline constexpr char kTranscriptFormat[] = "keywarden-ceremony-transcript/1";

// Signs `body` with `key` (a token key in `libctx`/`propq`) and checks the
// signature with `public_key` (a software copy) before returning the file
// text. `body` must hold "outputs" and "signer".
absl::StatusOr<std::string> SignTranscript(const nlohmann::json& body, OSSL_LIB_CTX* libctx,
                                           const char* propq, EVP_PKEY* key, EVP_PKEY* public_key,
                                           const SignatureOptions& signature);

struct TranscriptOutputCheck {
  std::string path;  // as recorded (relative to the transcript)
  std::string kind;  // "ca-certificate", "kra-certificate", ...
  std::string expected_sha256;
  std::string actual_sha256;  // empty when the file could not be read
  std::string problem;        // empty when the file is there with the recorded hash
};

struct VerifiedTranscript {
  nlohmann::json body;  // the signed "transcript" object
  std::string signer_path, signer_kind;
  std::string signer_key_sha256;  // SHA-256 of the signer's SubjectPublicKeyInfo
  bool signature_ok = false;
  bool signer_expected = true;  // false: not the key the caller expected
  std::vector<TranscriptOutputCheck> outputs;
  std::vector<std::string> problems;  // every mismatch, named; empty when all is well
  bool ok() const { return signature_ok && problems.empty(); }
};

// Reads and checks a transcript: the structure, the signer file (an output
// with its recorded hash), the signature with the signer's public key, and
// the SHA-256 of every output file. `expected_signer` (optional) must be
// the signer's public key. Mismatches are reported in `problems`, not as
// an error status; an error status means the file is not a transcript.
absl::StatusOr<VerifiedTranscript> VerifyTranscript(const std::string& path,
                                                    EVP_PKEY* expected_signer = nullptr);

// The public key of a certificate or a PKCS#10 request file (PEM or DER).
absl::StatusOr<ossl::UniquePtr<EVP_PKEY>> SignerPublicKey(const std::string& path,
                                                          const std::string& kind);

}  // namespace keywarden::pki
