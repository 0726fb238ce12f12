// Throwaway SoftHSM2 tokens for a test process (see README.md here).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace keywarden::testing {

struct FixtureToken {
  std::string label;
  std::string so_pin;
  std::string user_pin;
};

class SoftHsmFixture {
 public:
  // The CA HSM token and three KRA cards (kra-card-1..3): what most tests
  // need, and quicker to make than the full set.
  static const std::vector<FixtureToken>& StandardTokens();
  // The standard tokens plus kra-card-4 and kra-card-5 (threshold 3-of-5
  // tests): the full set make-tokens.sh makes without token arguments.
  static const std::vector<FixtureToken>& FiveKraCards();
  static constexpr char kCaToken[] = "keywarden-ca";
  static constexpr char kKraCard1[] = "kra-card-1";
  static constexpr char kKraCard2[] = "kra-card-2";
  static constexpr char kKraCard3[] = "kra-card-3";
  static constexpr char kKraCard4[] = "kra-card-4";
  static constexpr char kKraCard5[] = "kra-card-5";

  // Makes the tokens in a new directory under $TMPDIR and sets SOFTHSM2_CONF
  // for this process. Call before the SoftHSM2 module is first loaded.
  static absl::StatusOr<std::unique_ptr<SoftHsmFixture>> Create(
      const std::vector<FixtureToken>& tokens = StandardTokens());
  ~SoftHsmFixture();

  const std::string& dir() const { return dir_; }
  std::string conf_path() const { return dir_ + "/softhsm2.conf"; }
  static std::string module_path();
  // "pkcs11:token=LABEL"
  static std::string TokenUri(const std::string& label);
  std::string PinFile(const std::string& label) const { return dir_ + "/pins/" + label + ".pin"; }
  const FixtureToken& token(const std::string& label) const;

 private:
  SoftHsmFixture(std::string dir, std::vector<FixtureToken> tokens)
      : dir_(std::move(dir)), tokens_(std::move(tokens)) {}
  std::string dir_;
  std::vector<FixtureToken> tokens_;
};

}  // namespace keywarden::testing
