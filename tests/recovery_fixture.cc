#include "tests/recovery_fixture.h"

#include "hsm/open.h"
#include "hsm/status.h"
#include "hsm/strings.h"
#include "pki/certificate.h"
#include "pki/envelope.h"
#include "pki/private_key_blob.h"
#include "pki/recovery_blob.h"

namespace keywarden::testing {
namespace {

absl::StatusOr<std::shared_ptr<hsm::Token>> OpenFixtureToken(const SoftHsmFixture& fixture,
                                                             const std::string& label) {
  auto uri = hsm::Pkcs11Uri::Parse(SoftHsmFixture::TokenUri(label));
  if (!uri.ok()) return uri.status();
  hsm::OpenOptions options;
  options.default_module = SoftHsmFixture::module_path();
  options.pin = hsm::PinSource::File(fixture.PinFile(label));
  return hsm::OpenToken(*uri, options);
}

}  // namespace

absl::StatusOr<std::unique_ptr<RecoveryPki>> RecoveryPki::Create(const SoftHsmFixture& fixture,
                                                                 const Options& options) {
  std::unique_ptr<RecoveryPki> pki(new RecoveryPki());
  auto crypto = hsm::CryptoContext::Create();
  if (!crypto.ok()) return crypto.status();
  pki->crypto_ = *crypto;
  auto ca = OpenFixtureToken(fixture, SoftHsmFixture::kCaToken);
  if (!ca.ok()) return ca.status();
  pki->ca_token_ = *ca;

  hsm::KeySpec spec;
  spec.algorithm = hsm::KeyAlgorithm::kRsa2048;
  spec.label = "ca-signing";
  auto ca_key = hsm::GenerateKeyPair(pki->ca_token_, spec);
  if (!ca_key.ok()) return ca_key.status();
  auto ca_pkey = pki->crypto_->Load(*ca_key);
  if (!ca_pkey.ok()) return ca_pkey.status();
  pki->ca_pkey_ = std::move(*ca_pkey);
  auto name = pki::ParseName(options.ca_name);
  if (!name.ok()) return name.status();
  pki::RootCaOptions root;
  root.subject = name->get();
  auto root_cert = pki::MakeSelfSignedRoot(pki->crypto_->libctx(), pki->ca_pkey_.get(), root);
  if (!root_cert.ok()) return root_cert.status();
  // A software copy: the certificate made from the token key caches it.
  pki->ca_cert_ = pki::SoftwareCopy(root_cert->get());

  for (size_t i = 0; i < options.kra_cards.size(); ++i) {
    const std::string& card = options.kra_cards[i];
    const Validity validity =
        i < options.kra_validity.size() ? options.kra_validity[i] : Validity{};
    RecoveryKra kra;
    kra.card = card;
    EVP_PKEY* public_key = nullptr;
    std::shared_ptr<hsm::Token> card_token;  // closed (logged out) at the end of this step
    ossl::UniquePtr<EVP_PKEY> card_public;
    if (card.empty()) {
      kra.software_key.reset(EVP_RSA_gen(2048));
      if (!kra.software_key) return hsm::OpenSslError("software KRA key");
      public_key = kra.software_key.get();
    } else {
      auto token = OpenFixtureToken(fixture, card);
      if (!token.ok()) return token.status();
      card_token = *token;
      hsm::KeySpec kspec;
      kspec.algorithm = hsm::KeyAlgorithm::kRsa2048;
      kspec.label = "kra-key";
      kspec.usage.sign = false;
      kspec.usage.decrypt = true;
      auto key = hsm::GenerateKeyPair(*token, kspec);
      if (!key.ok()) return key.status();
      kra.key_id = (*key)->id;
      card_public.reset(EVP_PKEY_dup((*key)->public_key.get()));
      public_key = card_public.get();
    }
    auto cert = pki->Issue(public_key, StrCat("KRA ", i + 1), /*kra=*/true, validity);
    if (!cert.ok()) return cert.status();
    kra.cert = std::move(*cert);
    if (card_token) {
      auto stored = hsm::ImportCertificate(*card_token, kra.cert.get(), "kra-key", kra.key_id);
      if (!stored.ok()) return stored.status();
    }
    pki->kras_.push_back(std::move(kra));
  }
  return pki;
}

absl::StatusOr<ossl::UniquePtr<X509>> RecoveryPki::Issue(EVP_PKEY* public_key,
                                                         const std::string& cn, bool kra,
                                                         const Validity& validity) {
  ossl::UniquePtr<X509> x(X509_new());
  auto serial = pki::RandomSerial();
  if (!x || !serial.ok()) return absl::InternalError("issue: new certificate");
  X509_set_version(x.get(), X509_VERSION_3);
  X509_set_serialNumber(x.get(), serial->get());
  X509_set_issuer_name(x.get(), X509_get_subject_name(ca_cert_.get()));
  auto subject = pki::ParseName(StrCat("CN=", cn, ",O=keywarden"));
  if (!subject.ok()) return subject.status();
  X509_set_subject_name(x.get(), subject->get());
  X509_gmtime_adj(X509_getm_notBefore(x.get()), validity.not_before);
  X509_gmtime_adj(X509_getm_notAfter(x.get()), validity.not_after);
  X509_set_pubkey(x.get(), public_key);
  const bool ok =
      pki::AddExtension(x.get(), ca_cert_.get(), NID_basic_constraints, "critical,CA:FALSE") &&
      pki::AddExtension(
          x.get(), ca_cert_.get(), NID_key_usage,
          kra ? "critical,keyEncipherment" : "critical,digitalSignature,keyEncipherment") &&
      pki::AddExtension(x.get(), ca_cert_.get(), NID_ext_key_usage,
                        kra ? "1.3.6.1.4.1.311.21.6" : "emailProtection,clientAuth") &&
      pki::AddExtension(x.get(), ca_cert_.get(), NID_subject_key_identifier, "hash") &&
      pki::AddExtension(x.get(), ca_cert_.get(), NID_authority_key_identifier, "keyid:always");
  if (!ok) return hsm::OpenSslError("issue: extensions");
  if (auto st = pki::SignCertificate(crypto_->libctx(), x.get(), ca_pkey_.get(), {}); !st.ok()) {
    return st;
  }
  return pki::SoftwareCopy(x.get());
}

absl::StatusOr<RecoveryUser> RecoveryPki::MakeUser(const std::string& cn, int bits) {
  RecoveryUser user;
  user.key.reset(EVP_RSA_gen(static_cast<unsigned>(bits)));
  if (!user.key) return hsm::OpenSslError("user key");
  auto cert = Issue(user.key.get(), cn, /*kra=*/false);
  if (!cert.ok()) return cert.status();
  user.cert = std::move(*cert);
  return user;
}

absl::StatusOr<std::vector<uint8_t>> RecoveryPki::Archive(const RecoveryUser& user,
                                                          const std::vector<size_t>& kras,
                                                          hsm::SymmetricAlgorithm algorithm,
                                                          hsm::WrapMechanism wrap,
                                                          const std::vector<uint8_t>* plaintext) {
  hsm::SecretBytes pkcs8;
  if (plaintext == nullptr) {
    auto der = pki::ToPkcs8(user.key.get());
    if (!der.ok()) return der.status();
    pkcs8 = std::move(*der);
  } else {
    pkcs8 = hsm::SecretBytes(*plaintext);
  }
  auto key = hsm::SessionKey::Generate(ca_token_, algorithm);
  if (!key.ok()) return key.status();
  auto ct = key->Encrypt(pkcs8.span());
  if (!ct.ok()) return ct.status();
  std::vector<pki::KeyTransRecipient> recipients;
  for (size_t i : kras) {
    if (i >= kras_.size()) return absl::InvalidArgumentError("archive: no such KRA");
    auto wrapped = key->WrapTo(X509_get0_pubkey(kras_[i].cert.get()), wrap);
    if (!wrapped.ok()) return wrapped.status();
    recipients.push_back({kras_[i].cert.get(),
                          wrap == hsm::WrapMechanism::kRsaPkcs1 ? pki::KeyTransport::kRsaPkcs1
                                                                : pki::KeyTransport::kRsaOaepSha1,
                          std::move(*wrapped)});
  }
  pki::EncryptedContent content{algorithm == hsm::SymmetricAlgorithm::kDes3
                                    ? pki::ContentCipher::kDes3Cbc
                                    : pki::ContentCipher::kAes256Cbc,
                                ct->iv, ct->data};
  return pki::BuildEnvelopedData(recipients, content);
}

absl::StatusOr<std::vector<uint8_t>> RecoveryPki::Blob(const RecoveryUser& user,
                                                       const std::vector<uint8_t>& envelope,
                                                       const std::vector<size_t>& kras) {
  pki::RecoveryBlobInput in;
  in.ca_key = ca_pkey_.get();
  in.ca_certificate = ca_cert_.get();
  in.user_certificate = user.cert.get();
  in.user_chain = {ca_cert_.get()};
  for (size_t i : kras) in.kra_certificates.push_back(kras_.at(i).cert.get());
  in.enveloped_data = envelope;
  return pki::BuildRecoveryBlob(crypto_->libctx(), hsm::kTokenKeyProperties, in);
}

}  // namespace keywarden::testing
