#include "service/archival/archiver.h"

#include <openssl/err.h>
#include <openssl/evp.h>

#include "absl/strings/cord.h"

#include "hsm/status.h"
#include "hsm/strings.h"
#include "hsm/token.h"
#include "pki/certificate.h"
#include "pki/envelope.h"
#include "pki/key_archive.h"
#include "pki/private_key_blob.h"
#include "pki/threshold.h"
#include "service/ca/issuer.h"
#include "service/errors.h"

namespace keywarden::service {
namespace {

std::vector<uint8_t> Sha1(std::span<const uint8_t> data) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  EVP_Digest(data.data(), data.size(), md, &n, EVP_sha1(), nullptr);
  return std::vector<uint8_t>(md, md + n);
}

}  // namespace

KeyArchiver::SelfTest KeyArchiver::RunSelfTest(CK_ULONG exchange_bits) {
  hsm::SelfTestOptions options;
  options.archival_only = true;
  options.live = true;
  options.archival_scheme = scheme_;
  options.exchange_bits = exchange_bits;
  SelfTest run;
  run.checks = hsm::RunSelfTest(token_, options);
  const bool passed = hsm::SelfTestPassed(run.checks);
  run.state = passed ? SelfTest::State::kPassed : SelfTest::State::kFailed;
  run.failures = hsm::SelfTestFailures(run.checks);
  std::lock_guard<std::mutex> lock(self_test_mu_);
  // A token that went away meanwhile says nothing about its mechanisms.
  if (passed || !hsm::SelfTestMetTokenFault(run.checks)) self_test_ = run;
  return run;
}

KeyArchiver::SelfTest KeyArchiver::self_test() const {
  std::lock_guard<std::mutex> lock(self_test_mu_);
  return self_test_;
}

absl::Status KeyArchiver::SelfTestRefusal() const {
  std::lock_guard<std::mutex> lock(self_test_mu_);
  if (self_test_.state != SelfTest::State::kFailed) return absl::OkStatus();
  absl::Status st = Error(
      hresult::kKeysetNotDefined,
      StrCat("the archival self-test of token \"", token_->label(), "\" failed (",
             self_test_.failures, "); key archival (", scheme_,
             ") is refused until the token passes it (keywarden token selftest --archival-only); "
             "keywarden does not switch to another provider"));
  st.SetPayload(hsm::kMechanismRefusedPayload, absl::Cord("1"));
  return st;
}

absl::StatusOr<std::shared_ptr<EVP_PKEY>> KeyArchiver::ExchangeKey(const ExchangeCertificate& x) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = exchange_keys_.find(x.serial);
  if (it != exchange_keys_.end()) return it->second;
  auto pkey = crypto_->Load(x.key);
  if (!pkey.ok()) return pkey.status();
  std::shared_ptr<EVP_PKEY> shared(pkey->release(), EVP_PKEY_free);
  exchange_keys_.emplace(x.serial, shared);
  return shared;
}

absl::StatusOr<hsm::SecretBytes> KeyArchiver::Decrypt(std::span<const uint8_t> encrypted_key) {
  auto envelope = pki::ClientEnvelope::Parse(encrypted_key, crypto_->libctx());
  if (!envelope.ok()) {
    return Error(hresult::kBadRequestKeyArchival, std::string(envelope.status().message()));
  }

  // Which exchange certificate was it encrypted to?
  std::vector<ExchangeCertificate> exchange = exchange_.Unexpired();
  std::vector<X509*> certificates;
  for (const ExchangeCertificate& x : exchange) certificates.push_back(x.certificate.get());
  std::optional<size_t> matched = envelope->Match(certificates);
  if (!matched) {
    // Perhaps to one another replica of this CA made moments ago: load the
    // store's list now and look again.
    if (auto st = exchange_.Refresh(); !st.ok()) return st;
    exchange = exchange_.Unexpired();
    certificates.clear();
    for (const ExchangeCertificate& x : exchange) certificates.push_back(x.certificate.get());
    matched = envelope->Match(certificates);
  }
  if (!matched) {
    std::vector<std::string> ours;
    for (const auto& x : exchange) ours.push_back(x.serial);
    const std::vector<std::string>& named = envelope->recipients();
    return Error(hresult::kNoDecryptCert,
                 StrCat("the private key is encrypted to ",
                        named.empty() ? std::string("no usable recipient") : StrJoin(named, "; "),
                        ", not to one of this CA's unexpired exchange certificates (serials ",
                        StrJoin(ours, ", "), ")"));
  }
  const ExchangeCertificate& match = exchange[*matched];
  auto pkey = ExchangeKey(match);
  if (!pkey.ok()) return pkey.status();

  // The RSA key transport runs on the token.
  hsm::Token& token = *match.key->token;
  const uint64_t faults_before = token.faults();
  (void)hsm::TakeMechanismRefusal();  // only this call's refusal counts
  auto plaintext = envelope->Decrypt(pkey->get(), match.certificate.get());
  if (!plaintext.ok()) {
    // OpenSSL does not say why the key transport failed: a token that
    // refused the mechanism the client chose (OAEP with SHA-256 on a token
    // that does SHA-1 only) or failed meanwhile is the CA's side, never the
    // client's data.
    if (auto refused = hsm::TakeMechanismRefusal(); refused.has_value()) {
      ERR_clear_error();
      absl::Status why(refused->code(),
                       StrCat("the exchange key's token could not decrypt the archived key: ",
                              refused->message(), " (a limit of the CA's token, not bad data)"));
      why.SetPayload(hsm::kMechanismRefusedPayload, absl::Cord("1"));
      return why;
    }
    if (token.faults() != faults_before || !token.available()) {
      return hsm::HsmUnavailable(StrCat("the exchange key on token \"", token.label(),
                                        "\" could not decrypt the archived key (",
                                        plaintext.status().message(), ")"));
    }
    return Error(hresult::kBadData,
                 StrCat("the encrypted private key does not decrypt with exchange certificate ",
                        match.serial, ": ", plaintext.status().message()));
  }
  // A key transport that "succeeded" while the token failed (a provider or
  // CMS may go on with a random key rather than reveal a padding failure)
  // gives bytes that are no key: the CA's fault, not the client's data.
  if (token.faults() != faults_before || !token.available()) {
    plaintext->Clear();
    return hsm::HsmUnavailable(StrCat("the exchange key on token \"", token.label(),
                                      "\" failed while decrypting the archived key"));
  }
  return plaintext;
}

absl::StatusOr<ArchivedKey> KeyArchiver::ArchiveSubmitted(
    std::span<const uint8_t> encrypted_key, const std::vector<uint8_t>& encrypted_key_hash,
    EVP_PKEY* request_public) {
  if (request_public == nullptr || !EVP_PKEY_is_a(request_public, "RSA")) {
    return Error(hresult::kBadAlgorithm,
                 "key archival is for RSA keys; the request's public key is not RSA");
  }
  // Nothing is spent on KRAs or the token when archival is not possible.
  if (auto usable = kras_.Usable(); !usable.ok()) return usable;
  if (auto refused = SelfTestRefusal(); !refused.ok()) return refused;
  auto plaintext = Decrypt(encrypted_key);
  if (!plaintext.ok()) return plaintext.status();
  bool was_blob = false;
  uint32_t ai_key_alg = 0;
  auto key = pki::ParsePrivateKeyPlaintext(plaintext->span(), &was_blob, &ai_key_alg);
  plaintext->Clear();
  if (!key.ok()) {
    return Error(hresult::kBadData,
                 StrCat("the decrypted private key is not usable: ", key.status().message()));
  }
  if (was_blob && ai_key_alg == pki::kCalgRsaSign) {
    return Error(hresult::kBadKeyType,
                 "the archived key is a signature key (PRIVATEKEYBLOB aiKeyAlg 0x2400, "
                 "AT_SIGNATURE); signature keys are never archived");
  }
  return Archive(key->get(), request_public, encrypted_key_hash);
}

absl::StatusOr<ArchivedKey> KeyArchiver::ArchiveKey(EVP_PKEY* private_key,
                                                    EVP_PKEY* certificate_public) {
  if (private_key == nullptr || !EVP_PKEY_is_a(private_key, "RSA")) {
    return Error(hresult::kBadAlgorithm, "key archival is for RSA keys; this key is not RSA");
  }
  if (auto usable = kras_.Usable(); !usable.ok()) return usable;
  if (auto refused = SelfTestRefusal(); !refused.ok()) return refused;
  return Archive(private_key, certificate_public, {});
}

absl::StatusOr<ArchivedKey> KeyArchiver::Archive(EVP_PKEY* private_key, EVP_PKEY* public_key,
                                                 std::vector<uint8_t> hash) {
  if (auto st = pki::CheckKeyPairMatches(private_key, public_key); !st.ok()) {
    return Error(hresult::kBadKey,
                 StrCat("key verification failed: the submitted private key does not pair with "
                        "the request's public key (",
                        st.message(), ")"));
  }
  auto pkcs8 = pki::ToPkcs8(private_key);
  if (!pkcs8.ok()) return pkcs8.status();

  auto kras = kras_.Select();
  if (!kras.ok()) return kras.status();
  const pki::ArchivalScheme scheme = scheme_ == "aes256-rsa-oaep"
                                         ? pki::ArchivalScheme::kAes256RsaOaep
                                         : pki::ArchivalScheme::kDes3RsaPkcs1;
  if (threshold_ >= 2) {
    const bool modern = scheme == pki::ArchivalScheme::kAes256RsaOaep;
    auto envelope = ThresholdEnvelope(*pkcs8, kras->certificates, modern);
    pkcs8->Clear();
    if (!envelope.ok()) return envelope.status();
    ArchivedKey out;
    out.scheme = StrCat(pki::ArchivalSchemeName(scheme), "-threshold-", threshold_, "of",
                        kras->certificates.size());
    out.kra_sha1 = kras->sha1;
    out.encrypted_key_hash = hash.empty() ? Sha1(*envelope) : std::move(hash);
    out.envelope = std::move(*envelope);
    return out;
  }
  std::vector<X509*> certificates;
  for (const auto& cert : kras->certificates) certificates.push_back(cert.get());
  auto envelope = pki::EnvelopeToKras(token_, *pkcs8, certificates, scheme);
  if (!envelope.ok()) return envelope.status();
  ArchivedKey out;
  out.scheme = pki::ArchivalSchemeName(scheme);
  out.kra_sha1 = kras->sha1;
  if (hash.empty()) {
    // Manual archival has no request hash: record the archive's own SHA-1.
    hash = Sha1(*envelope);
  }
  out.encrypted_key_hash = std::move(hash);
  out.envelope = std::move(*envelope);
  return out;
}

absl::StatusOr<std::vector<uint8_t>> KeyArchiver::ThresholdEnvelope(
    const hsm::SecretBytes& pkcs8, const std::vector<std::shared_ptr<X509>>& kras, bool modern) {
  pki::threshold::ArchiveSpec spec;
  spec.k = threshold_;
  spec.cipher = modern ? pki::ContentCipher::kAes256Cbc : pki::ContentCipher::kDes3Cbc;
  spec.transport = modern ? pki::KeyTransport::kRsaOaepSha1 : pki::KeyTransport::kRsaPkcs1;
  std::vector<X509*> certs;
  for (const auto& c : kras) certs.push_back(c.get());
  // Every random byte (content key, IV, polynomial coefficients) comes
  // from the token's RNG.
  return pki::threshold::MakeThresholdArchive(
      spec, certs, pkcs8.span(), [this](std::span<uint8_t> out) -> absl::Status {
        auto bytes = token_->GenerateRandom(out.size());
        if (!bytes.ok()) return bytes.status();
        std::copy(bytes->begin(), bytes->end(), out.begin());
        OPENSSL_cleanse(bytes->data(), bytes->size());
        return absl::OkStatus();
      });
}

}  // namespace keywarden::service
