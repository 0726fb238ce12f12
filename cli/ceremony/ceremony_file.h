// A key ceremony described in one reviewed TOML file (`keywarden ceremony
// run FILE`; deploy/ceremony.example.toml documents every key). Parsing is
// strict: an unknown table or key, a value of the wrong type, a key the
// ceremony's kind does not use, a key type outside the allow-list or a PIN
// stops with file:line and the key's full name. Relative paths are taken
// relative to the directory of the file. Nothing here touches a token.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace keywarden::ceremony {

enum class Kind {
  kRoot,                // CA key, self-signed root, KRA cards, config, round-trip proof
  kSubordinate,         // CA key and a PKCS#10 request for the parent CA (nothing else)
  kSubordinateInstall,  // the parent's certificate installed, KRA cards, config, proof
};
// "root", "subordinate", "subordinate-install".
std::string_view KindName(Kind kind);

// Key types a ceremony may make (everything else is refused).
inline constexpr std::string_view kCaKeyAlgorithms[] = {"rsa3072", "rsa4096", "ec-p256", "ec-p384"};
// KRA keys decrypt content keys (RSA key transport): RSA only.
inline constexpr std::string_view kKraKeyAlgorithms[] = {"rsa2048", "rsa3072", "rsa4096"};

struct CardSpec {
  std::string token;  // PKCS#11 URI of the smart card
  std::string holder;
  std::string subject;  // of the KRA certificate
  std::string key_label = "kra";
  std::string certificate;  // output: the KRA certificate (PEM)
  uint32_t line = 0;        // where the [[kra.card]] starts, for messages
};

struct CeremonySpec {
  std::string path;    // the ceremony file
  std::string sha256;  // of its bytes, recorded in the transcript
  std::string name;
  Kind kind = Kind::kRoot;
  std::vector<std::string> witnesses;
  std::string transcript;  // output

  struct Ca {
    std::string name;  // [ca] name of the daemon's configuration
    std::string module;
    std::string token;
    std::string key_label;
    std::string key_algorithm = "rsa3072";
    std::string subject;
    std::string digest = "SHA256";
    bool pss = false;
    int validity_days = 3650;                      // root
    int path_length = -1;                          // root; -1: none
    std::string certificate;                       // output (root, subordinate-install)
    std::string request;                           // output (subordinate)
    std::string issued_certificate, parent_chain;  // inputs (subordinate-install)
    std::string chain;                             // output (subordinate-install)
  } ca;

  struct Kra {
    std::string key_algorithm = "rsa2048";
    int validity_days = 730;
    int count = 0;  // [kra] count of the daemon: KRAs per archived key
    std::string archival_scheme = "des3-rsa-pkcs1";
    std::vector<CardSpec> cards;
  } kra;

  struct ConfigOut {
    std::string fragment;  // output: the daemon's [ca], [hsm] and [kra]
    // Where keywardend will read the CA token's PIN: written into the
    // fragment, never read by the ceremony.
    std::string hsm_pin_source = "file:/run/credentials/keywardend.service/ca-pin";
  } config;

  // Every file the ceremony writes, the transcript last.
  std::vector<std::string> Outputs() const;
};

absl::StatusOr<CeremonySpec> ParseCeremonyFile(const std::string& path);
// `source` names the text in messages; relative paths resolve against `base_dir`.
absl::StatusOr<CeremonySpec> ParseCeremonyText(std::string_view text, const std::string& source,
                                               const std::string& base_dir);

}  // namespace keywarden::ceremony
