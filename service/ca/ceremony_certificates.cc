#include "service/ca/ceremony_certificates.h"

#include <openssl/err.h>

#include <filesystem>

#include <nlohmann/json.hpp>

#include "hsm/strings.h"
#include "pki/ceremony_transcript.h"
#include "pki/certificate.h"
#include "service/ca/issuer.h"

namespace keywarden::service {

absl::StatusOr<size_t> RecordCeremonyCertificates(
    const std::string& transcript, X509* ca_certificate, Store& store,
    const std::function<void(const std::string& event, const std::string& details)>& audit) {
  auto fail = [&](const std::string& why) {
    return absl::FailedPreconditionError(
        StrCat("[ca] ceremony_transcript ", transcript, ": ", why));
  };
  auto v = pki::VerifyTranscript(transcript, X509_get0_pubkey(ca_certificate));
  if (!v.ok()) return fail(std::string(v.status().message()));
  if (!v->signer_expected) {
    return fail(StrCat("it is signed by the key of ", v->signer_path, ", not by this CA's key"));
  }
  if (!v->signature_ok) return fail("its signature does not verify with this CA's key");
  const std::filesystem::path dir = std::filesystem::path(transcript).parent_path();
  size_t recorded = 0;
  for (const pki::TranscriptOutputCheck& c : v->outputs) {
    if (c.kind != "kra-certificate") continue;
    if (!c.problem.empty()) return fail(c.problem);
    const std::string path = c.path.front() == '/' ? c.path : (dir / c.path).string();
    auto certs = pki::ReadPemCertificates(path);
    if (!certs.ok()) return fail(std::string(certs.status().message()));
    X509* cert = certs->front().get();
    if (X509_check_issued(ca_certificate, cert) != X509_V_OK ||
        X509_verify(cert, X509_get0_pubkey(ca_certificate)) != 1) {
      ERR_clear_error();
      return fail(StrCat(c.path, " is not signed by this CA"));
    }
    CertificateRecord record = CertificateRecordFor(cert, 0, "KeyRecoveryAgent");
    if (store.GetCertificate(record.serial).ok()) continue;  // recorded at an earlier start
    if (auto st = store.InsertCertificate(record); !st.ok()) return st;
    ++recorded;
    if (audit) {
      audit(
          "ca.ceremony_certificate_recorded",
          nlohmann::json{{"transcript", transcript},
                         {"ceremony", v->body.value(nlohmann::json::json_pointer("/ceremony/name"),
                                                    std::string())},
                         {"file", c.path},
                         {"serial", record.serial},
                         {"subject", record.subject},
                         {"sha1", record.sha1}}
              .dump());
    }
  }
  return recorded;
}

}  // namespace keywarden::service
