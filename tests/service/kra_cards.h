// Key Recovery Agents on SoftHSM2 "smart cards" for tests and benchmarks
// that run a real keywardend: each KRA makes its key on its own card, signs
// a PKCS#10 there, enrols for a KRA certificate (EKU 1.3.6.1.4.1.311.21.6)
// from the daemon and stores the certificate on the card beside the key, as
// a KRA officer would. Then the daemon is told to use them by thumbprint.
#pragma once

#include <fstream>
#include <string>
#include <vector>

#include <openssl/x509.h>

#include "absl/status/statusor.h"
#include "hsm/keys.h"
#include "hsm/open.h"
#include "hsm/provider/provider.h"
#include "hsm/strings.h"
#include "keywarden/v1/keywarden.grpc.pb.h"
#include "pki/certificate.h"
#include "tests/service/daemon_harness.h"

namespace keywarden::testing {

// The template a KRA enrols with; add it to DaemonHarness::Options::extra_toml.
// Only "enrollee2" (CN=bob) may enrol for it: a KRA template has no default.
inline constexpr char kKraTemplateToml[] = R"(
[[template]]
name = "KeyRecoveryAgent"
key_usage = ["keyEncipherment"]
extended_key_usage = ["1.3.6.1.4.1.311.21.6"]
enrollees = ["CN=bob,O=keywarden test"]
)";

// Enrols the KRA on `card` (a token label of the daemon's SoftHSM2 fixture)
// as `who`; returns its certificate, which is also on the card.
inline absl::StatusOr<ossl::UniquePtr<X509>> EnrollKraCard(DaemonHarness& daemon,
                                                           const std::string& card,
                                                           const std::string& who = "enrollee2") {
  auto crypto = hsm::CryptoContext::Create();
  if (!crypto.ok()) return crypto.status();
  auto uri = hsm::Pkcs11Uri::Parse(StrCat("pkcs11:token=", card));
  if (!uri.ok()) return uri.status();
  hsm::OpenOptions open;
  open.default_module = SoftHsmFixture::module_path();
  open.pin = hsm::PinSource::File(daemon.tokens().PinFile(card));
  auto token = hsm::OpenToken(*uri, open);
  if (!token.ok()) return token.status();
  hsm::KeySpec spec;
  spec.label = "kra";
  spec.usage.sign = true;  // signs its own certificate request
  spec.usage.decrypt = true;
  auto key = hsm::GenerateKeyPair(*token, spec);
  if (!key.ok()) return key.status();
  auto pkey = (*crypto)->Load(*key);
  if (!pkey.ok()) return pkey.status();
  auto subject = pki::ParseName(StrCat("CN=KRA ", card, ",O=keywarden test"));
  if (!subject.ok()) return subject.status();
  auto csr = pki::MakeCaRequest((*crypto)->libctx(), pkey->get(), subject->get(), {});
  if (!csr.ok()) return csr.status();
  unsigned char* der = nullptr;
  const int len = i2d_X509_REQ(csr->get(), &der);
  if (len <= 0) return absl::InternalError("i2d_X509_REQ failed");
  v1::SubmitRequest in;
  in.set_request(std::string(reinterpret_cast<char*>(der), static_cast<size_t>(len)));
  OPENSSL_free(der);
  in.set_template_name("KeyRecoveryAgent");
  auto stub = v1::Enrollment::NewStub(daemon.Channel(who));
  grpc::ClientContext ctx;
  v1::EnrollmentResult issued;
  if (grpc::Status st = stub->Submit(&ctx, in, &issued); !st.ok()) {
    return absl::UnavailableError(StrCat("KRA enrolment for ", card, ": ", st.error_message()));
  }
  if (issued.disposition() != v1::DISPOSITION_ISSUED) {
    return absl::FailedPreconditionError(
        StrCat("KRA enrolment for ", card, " not issued: ", issued.message()));
  }
  const auto* p = reinterpret_cast<const unsigned char*>(issued.certificate().data());
  ossl::UniquePtr<X509> cert(d2i_X509(nullptr, &p, static_cast<long>(issued.certificate().size())));
  if (!cert) return absl::DataLossError("the issued KRA certificate does not parse");
  if (auto stored = hsm::ImportCertificate(**token, cert.get(), "kra", (*key)->id); !stored.ok()) {
    return stored.status();
  }
  return cert;
}

// Stops the daemon, configures these KRAs by thumbprint with `count` per
// archival, and starts it again.
inline absl::Status UseKras(DaemonHarness& daemon, const std::vector<std::string>& thumbprints,
                            int count, int threshold = 1) {
  if (auto st = daemon.Stop(); !st.ok()) return st;
  {
    std::ofstream config(daemon.config_path(), std::ios::app);
    config << "\n[kra]\ncertificates = [\"" << StrJoin(thumbprints, "\", \"")
           << "\"]\ncount = " << count << "\nthreshold = " << threshold << "\n";
    if (!config) return absl::InternalError("cannot append [kra] to " + daemon.config_path());
  }
  return daemon.Restart();
}

}  // namespace keywarden::testing
