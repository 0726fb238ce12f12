// `keywarden ceremony run`: a whole key ceremony from one reviewed file
// (cli/ceremony/ceremony_file.h), in the spirit of Let's Encrypt's boulder
// ceremony tool:
//
//   preflight     every output must not exist and every key label must be
//                 free on its token: checked before any token is written;
//                 every token is logged in with its holder's PIN here.
//   ca-key        the CA key made on the CA token (sensitive, never
//                 extractable) -- or, for subordinate-install, found there.
//   root / request / install
//                 the self-signed root (serial from the token's RNG), or
//                 the PKCS#10 for the parent CA, or the parent's answer
//                 checked and stored; each signature verified at once,
//                 each certificate checked against its profile before it
//                 is written.
//   kra-N         per smart card: the KRA key made on the card, its
//                 certificate signed by the CA key, checked, written back
//                 to the card beside the key and to a file.
//   config        the daemon's [ca], [hsm] and [kra] fragment.
//   round-trip-proof
//                 a throwaway key archived to every new KRA with the
//                 daemon's code (pki::EnvelopeToKras on the CA token), put
//                 in a CA-signed recovery blob as getkey does, and
//                 recovered with each card (pki::KraCard).
//   transcript    a JSON record of every step signed by the CA key
//                 (pki/ceremony_transcript.h).
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/status/statusor.h"
#include "cli/ceremony/ceremony_file.h"
#include "hsm/ossl.h"
#include "hsm/pin.h"
#include "hsm/token.h"
#include "pki/key_archive.h"

namespace keywarden::ceremony {

// Where each token's PIN comes from. By default the holder types it at a
// prompt on the terminal. `automation` (token label -> file:/env: source)
// exists for tests and CI, which have no terminal: it is set only from the
// command line (--automation-pin), never from the ceremony file, and is not
// for production ceremonies.
struct PinPlan {
  std::map<std::string, std::string> automation;
  // The source for the token `label`, held by `holder`.
  absl::StatusOr<hsm::PinSource> For(const std::string& label, const std::string& holder) const;
};

struct RunOptions {
  std::string default_module;  // --module / $KEYWARDEN_PKCS11_MODULE
  PinPlan pins;
  // Called as each step starts ("preflight", "kra-1", ...), for the operator.
  std::function<void(const std::string& step, const std::string& what)> progress;
};

struct RunResult {
  nlohmann::json transcript;  // the signed body
  std::string text;           // a summary for the operator
};

absl::StatusOr<RunResult> RunCeremony(const CeremonySpec& spec, const RunOptions& options);

// The round-trip proof on its own (the last step of a ceremony; also run by
// tests against cards prepared by hand). `cards` are logged in.
struct ProofCard {
  std::string holder;
  std::shared_ptr<hsm::Token> token;
};
struct ProofInput {
  std::shared_ptr<hsm::Token> ca_token;
  OSSL_LIB_CTX* libctx = nullptr;  // of the CA key's CryptoContext
  EVP_PKEY* ca_key = nullptr;      // the CA signing key on the token
  X509* ca_certificate = nullptr;
  std::vector<X509*> ca_chain;
  std::vector<X509*> kra_certificates;
  std::vector<ProofCard> cards;
  pki::ArchivalScheme scheme = pki::ArchivalScheme::kDes3RsaPkcs1;
};
absl::StatusOr<nlohmann::json> ProveRoundTrip(const ProofInput& input);

}  // namespace keywarden::ceremony
