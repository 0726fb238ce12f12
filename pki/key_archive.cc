#include "pki/key_archive.h"

#include "hsm/strings.h"
#include "hsm/symmetric.h"
#include "pki/certificate.h"
#include "pki/envelope.h"

namespace keywarden::pki {

absl::StatusOr<ArchivalScheme> ParseArchivalScheme(std::string_view name) {
  if (name == "des3-rsa-pkcs1") return ArchivalScheme::kDes3RsaPkcs1;
  if (name == "aes256-rsa-oaep") return ArchivalScheme::kAes256RsaOaep;
  return absl::InvalidArgumentError(StrCat("unknown archival scheme \"", name,
                                           "\" (expected des3-rsa-pkcs1 or aes256-rsa-oaep)"));
}

std::string ArchivalSchemeName(ArchivalScheme scheme) {
  return scheme == ArchivalScheme::kAes256RsaOaep ? "aes256-rsa-oaep" : "des3-rsa-pkcs1";
}

absl::StatusOr<std::vector<uint8_t>> EnvelopeToKras(const std::shared_ptr<hsm::Token>& token,
                                                    hsm::SecretBytes& pkcs8,
                                                    const std::vector<X509*>& kras,
                                                    ArchivalScheme scheme) {
  const bool modern = scheme == ArchivalScheme::kAes256RsaOaep;
  if (kras.empty()) {
    pkcs8.Clear();
    return absl::InvalidArgumentError("no KRA certificate to archive to");
  }
  absl::StatusOr<EncryptedContent> content;
  std::vector<KeyTransRecipient> recipients;
  {
    // One session for the whole archive: the content key lives in it and
    // dies with it. Nothing else is leased while it is held.
    auto cek = hsm::SessionKey::Generate(
        token, modern ? hsm::SymmetricAlgorithm::kAes256 : hsm::SymmetricAlgorithm::kDes3);
    if (!cek.ok()) {
      pkcs8.Clear();
      return cek.status();
    }
    auto ct = cek->Encrypt(pkcs8.span());
    pkcs8.Clear();
    if (!ct.ok()) return ct.status();
    content = EncryptedContent{modern ? ContentCipher::kAes256Cbc : ContentCipher::kDes3Cbc,
                               std::move(ct->iv), std::move(ct->data)};
    for (X509* cert : kras) {
      auto wrapped = cek->WrapTo(X509_get0_pubkey(cert), modern ? hsm::WrapMechanism::kRsaOaepSha1
                                                                : hsm::WrapMechanism::kRsaPkcs1);
      if (!wrapped.ok()) {
        return absl::Status(wrapped.status().code(),
                            StrCat("wrapping the archive key to KRA ", Sha1Thumbprint(cert), ": ",
                                   wrapped.status().message()));
      }
      recipients.push_back(
          KeyTransRecipient{cert, modern ? KeyTransport::kRsaOaepSha1 : KeyTransport::kRsaPkcs1,
                            std::move(*wrapped)});
    }
  }
  return BuildEnvelopedData(recipients, *content);
}

}  // namespace keywarden::pki
