#include "pki/kra_card.h"

#include <openssl/crypto.h>

#include <sys/mman.h>

#include <chrono>

#include <openssl/err.h>

#include "hsm/keys.h"
#include "hsm/module.h"
#include "hsm/status.h"
#include "hsm/strings.h"
#include "hsm/symmetric.h"
#include "pki/certificate.h"
#include "pki/envelope.h"
#include "pki/private_key_blob.h"
#include "pki/rewrap.h"

namespace keywarden::pki {
namespace {

using Clock = std::chrono::steady_clock;

double Since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

std::string Subject(X509* cert) {
  return FormatName(X509_get_subject_name(cert));
}

// Every certificate object on the token (public: no login needed), with its
// CKA_ID and CKA_LABEL, optionally narrowed to a label and/or id.
absl::StatusOr<std::vector<CardCertificate>> ReadCardCertificates(hsm::Token& token,
                                                                  const std::string& label,
                                                                  const std::vector<uint8_t>& id) {
  auto session = token.Acquire();
  if (!session.ok()) return session.status();
  CK_OBJECT_CLASS cls = CKO_CERTIFICATE;
  std::vector<CK_ATTRIBUTE> match = {hsm::Attr(CKA_CLASS, cls)};
  if (!label.empty()) match.push_back(hsm::Attr(CKA_LABEL, label.data(), label.size()));
  if (!id.empty()) match.push_back(hsm::Attr(CKA_ID, id.data(), id.size()));
  auto found = hsm::FindObjects(*session, match);
  if (!found.ok()) return found.status();
  std::vector<CardCertificate> out;
  for (CK_OBJECT_HANDLE h : *found) {
    auto value = hsm::GetAttribute(*session, h, CKA_VALUE);
    if (!value.ok()) return value.status();
    const unsigned char* p = value->data();
    ossl::UniquePtr<X509> cert(d2i_X509(nullptr, &p, static_cast<long>(value->size())));
    if (!cert) {
      ERR_clear_error();
      continue;  // a certificate object that is not X.509: not a KRA certificate
    }
    CardCertificate c;
    c.certificate = std::move(cert);
    auto cka_id = hsm::GetAttribute(*session, h, CKA_ID);
    if (cka_id.ok()) c.id = std::move(*cka_id);
    auto cka_label = hsm::GetAttribute(*session, h, CKA_LABEL);
    if (cka_label.ok()) c.label.assign(cka_label->begin(), cka_label->end());
    out.push_back(std::move(c));
  }
  return out;
}

}  // namespace

absl::StatusOr<std::unique_ptr<KraCard>> KraCard::Open(const hsm::Pkcs11Uri& uri,
                                                       const std::string& default_module) {
  const std::string spec = !uri.module_path().empty()   ? uri.module_path()
                           : !uri.module_name().empty() ? uri.module_name()
                                                        : default_module;
  if (spec.empty()) {
    return absl::InvalidArgumentError(
        StrCat("KRA card URI \"", uri.Redacted(),
               "\" names no module: give --module or set KEYWARDEN_PKCS11_MODULE"));
  }
  auto module = hsm::Module::Load(spec);
  if (!module.ok()) return module.status();
  auto token = hsm::Token::Open(*module, uri);
  if (!token.ok()) return token.status();
  return Create(std::move(*token), uri.object_label(), uri.object_id());
}

absl::StatusOr<std::unique_ptr<KraCard>> KraCard::FromToken(std::shared_ptr<hsm::Token> token) {
  return Create(std::move(token), "", {});
}

absl::StatusOr<std::unique_ptr<KraCard>> KraCard::Create(std::shared_ptr<hsm::Token> token,
                                                         const std::string& label,
                                                         const std::vector<uint8_t>& id) {
  auto crypto = hsm::CryptoContext::Create();
  if (!crypto.ok()) return crypto.status();
  std::unique_ptr<KraCard> card(new KraCard());
  card->token_ = std::move(token);
  card->crypto_ = std::move(*crypto);
  auto certs = ReadCardCertificates(*card->token_, label, id);
  if (!certs.ok()) return certs.status();
  card->certs_ = std::move(*certs);
  return card;
}

absl::StatusOr<const CardCertificate*> KraCard::Match(const RecoveryBlob& blob) const {
  for (const RecoveryRecipient& r : blob.recipients) {
    for (const CardCertificate& c : certs_) {
      if (r.Matches(c.certificate.get())) return &c;
    }
  }
  std::vector<std::string> would, has;
  for (const RecoveryRecipient& r : blob.recipients) would.push_back(StrCat("  ", r.Describe()));
  for (const CardCertificate& c : certs_) {
    has.push_back(StrCat("  \"", Subject(c.certificate.get()), "\" (SHA-1 ",
                         Sha1Thumbprint(c.certificate.get()), ")"));
  }
  return absl::NotFoundError(StrCat(
      "no KRA certificate on card \"", label(), "\" can decrypt this blob. It is encrypted to:\n",
      StrJoin(would, "\n"), "\nCard \"", label(), "\" holds",
      has.empty() ? std::string(" no certificate") : StrCat(":\n", StrJoin(has, "\n")),
      "\n(no PIN was asked for: insert the card of one of the KRAs above)"));
}

absl::Status KraCard::Login(const hsm::PinSource& pin) {
  if (login_failure_) return *login_failure_;
  if (token_->logged_in()) return absl::OkStatus();
  const CK_FLAGS flags = token_->info().info.flags;
  if (flags & CKF_USER_PIN_LOCKED) {
    login_failure_ = absl::PermissionDeniedError(
        StrCat("card \"", label(),
               "\": the user PIN is locked; no login was attempted (the "
               "card's security officer must unblock it)"));
    return *login_failure_;
  }
  auto value = pin.Read();
  if (!value.ok()) return value.status();  // nothing was sent to the card
  absl::Status st = token_->Login(*value);
  if (st.ok()) return st;
  const std::string message(st.message());
  std::string why;
  if (message.find("CKR_PIN_INCORRECT") != std::string::npos) {
    why = "wrong PIN (CKR_PIN_INCORRECT)";
  } else if (message.find("CKR_PIN_LOCKED") != std::string::npos) {
    why = "the PIN is locked (CKR_PIN_LOCKED)";
  } else {
    why = message;
  }
  login_failure_ = absl::Status(
      st.code() == absl::StatusCode::kUnknown ? absl::StatusCode::kPermissionDenied : st.code(),
      StrCat("card \"", label(), "\" refused the login: ", why,
             ". keywarden made exactly one login attempt and does not retry, so the card's "
             "retry counter dropped by at most one; check the PIN before running again",
             (flags & CKF_USER_PIN_FINAL_TRY) ? " (the card warned this was the final try)" : ""));
  return *login_failure_;
}

absl::StatusOr<EVP_PKEY*> KraCard::KeyFor(const CardCertificate& cert) {
  for (auto& [c, key] : keys_) {
    if (c == &cert) return key.get();
  }
  absl::StatusOr<std::shared_ptr<hsm::TokenKey>> key =
      absl::NotFoundError("certificate has no CKA_ID or label");
  if (!cert.id.empty()) key = hsm::FindPrivateKey(token_, "", cert.id);
  if (!key.ok() && !cert.label.empty() && !absl::IsFailedPrecondition(key.status())) {
    key = hsm::FindPrivateKey(token_, cert.label);
  }
  if (!key.ok()) {
    return absl::NotFoundError(StrCat("card \"", label(), "\" holds KRA certificate \"",
                                      Subject(cert.certificate.get()),
                                      "\" but not its private key: ", key.status().message()));
  }
  if (EVP_PKEY_eq((*key)->public_key.get(), X509_get0_pubkey(cert.certificate.get())) != 1) {
    ERR_clear_error();
    return absl::FailedPreconditionError(
        StrCat("card \"", label(), "\": the private key beside KRA certificate \"",
               Subject(cert.certificate.get()), "\" is not its key"));
  }
  auto pkey = crypto_->Load(*key);
  if (!pkey.ok()) return pkey.status();
  token_keys_.emplace_back(&cert, *key);
  keys_.emplace_back(&cert, std::move(*pkey));
  return keys_.back().second.get();
}

namespace {

// The decrypted archive parsed and checked against the user certificate.
absl::StatusOr<RecoveredKey> FinishRecovery(const RecoveryBlob& blob, const CardCertificate& kra,
                                            hsm::SecretBytes plaintext, RecoveryTiming& t,
                                            Clock::time_point start) {
  RecoveredKey recovered;
  auto parsed = ParsePrivateKeyPlaintext(plaintext.span(), &recovered.was_private_key_blob,
                                         &recovered.ai_key_alg);
  plaintext.Clear();
  if (!parsed.ok()) {
    return absl::DataLossError(
        StrCat("recovery: the decrypted archive is not a usable private key: ",
               parsed.status().message()));
  }
  recovered.key = std::move(*parsed);
  t.decrypt = Since(start);

  start = Clock::now();
  if (auto st =
          CheckKeyPairMatches(recovered.key.get(), X509_get0_pubkey(blob.user_certificate.get()));
      !st.ok()) {
    return absl::DataLossError(
        StrCat("recovery: the decrypted key does not belong to user "
               "certificate \"",
               Subject(blob.user_certificate.get()), "\": ", st.message()));
  }
  t.verify = Since(start);
  recovered.kra = &kra;
  return recovered;
}

// Keeps a secret's pages out of swap while it lives (best effort: without
// CAP_IPC_LOCK or with a small RLIMIT_MEMLOCK the memory is still wiped).
class MemoryLock {
 public:
  MemoryLock(const void* data, size_t size) : data_(data), size_(size) {
    locked_ = size_ > 0 && mlock(data_, size_) == 0;
  }
  ~MemoryLock() {
    if (locked_) munlock(data_, size_);
  }
  MemoryLock(const MemoryLock&) = delete;
  MemoryLock& operator=(const MemoryLock&) = delete;

 private:
  const void* data_;
  size_t size_;
  bool locked_ = false;
};

// A rewrap's content key (in the rewrapping KRA's locked, wiped memory) to
// `new_kras` in the CA's current form: threshold >= 2 a fresh split with
// coefficients from the card's RNG (threshold::ResplitContentKey), else one
// KeyTransRecipientInfo per KRA (the k = 1 form). The encryptedContentInfo
// is copied byte for byte and the result must read back as the same
// archive in that form.
absl::StatusOr<std::vector<uint8_t>> WrapContentKey(std::span<const uint8_t> content_key,
                                                    std::span<const uint8_t> eci,
                                                    KeyTransport transport,
                                                    const std::vector<X509*>& new_kras,
                                                    int threshold, hsm::Token& card) {
  absl::StatusOr<std::vector<uint8_t>> envelope = absl::UnknownError("unset");
  if (threshold >= 2) {
    envelope = threshold::ResplitContentKey(
        threshold, new_kras, transport, content_key, eci,
        [&card](std::span<uint8_t> out) -> absl::Status {
          auto bytes = card.GenerateRandom(out.size());  // C_GenerateRandom on the card
          if (!bytes.ok()) return bytes.status();
          if (bytes->size() != out.size()) {
            return absl::InternalError("the card's RNG returned a short block");
          }
          std::copy(bytes->begin(), bytes->end(), out.begin());
          OPENSSL_cleanse(bytes->data(), bytes->size());
          return absl::OkStatus();
        });
  } else {
    std::vector<KeyTransRecipient> recipients;
    for (X509* cert : new_kras) {
      auto wrapped = threshold::EncryptShare(X509_get0_pubkey(cert), transport, content_key);
      if (!wrapped.ok()) {
        return absl::Status(
            wrapped.status().code(),
            StrCat("rewrap: encrypting the content key to KRA \"", Subject(cert), "\" (SHA-1 ",
                   Sha1Thumbprint(cert), "): ", wrapped.status().message()));
      }
      recipients.push_back(KeyTransRecipient{cert, transport, std::move(*wrapped)});
    }
    envelope = BuildRewrappedEnvelope(eci, recipients);
  }
  if (!envelope.ok()) return envelope.status();
  auto check = ParseArchiveEnvelope(*envelope);
  bool same = check.ok() && check->encrypted_content_info.size() == eci.size() &&
              std::equal(eci.begin(), eci.end(), check->encrypted_content_info.begin()) &&
              check->threshold == (threshold >= 2);
  if (same && threshold >= 2) {
    auto t = threshold::ParseThresholdEnvelope(*envelope);
    same = t.ok() && t->k == threshold && t->n == static_cast<int>(new_kras.size());
  } else if (same) {
    same = check->recipients.size() == new_kras.size();
  }
  if (!same) {
    return absl::InternalError("rewrap: the new envelope does not read back as the same archive");
  }
  return envelope;
}

}  // namespace

absl::StatusOr<std::pair<const CardCertificate*, EVP_PKEY*>> KraCard::Ready(
    const RecoveryBlob& blob) {
  auto match = Match(blob);
  if (!match.ok()) return match.status();
  if (login_failure_) return *login_failure_;
  if (!token_->logged_in()) {
    return absl::FailedPreconditionError(StrCat("card \"", label(), "\": not logged in"));
  }
  auto key = KeyFor(**match);
  if (!key.ok()) return key.status();
  return std::pair<const CardCertificate*, EVP_PKEY*>(*match, *key);
}

absl::StatusOr<RecoveredKey> KraCard::Recover(const RecoveryBlob& blob, RecoveryTiming* timing) {
  if (blob.threshold) {
    return absl::FailedPreconditionError(
        StrCat("this archive needs ", blob.threshold->k, " of its ", blob.threshold->n,
               " KRAs: the other KRAs each run `keywarden recoverkey BLOB --contribute-to "
               "<this KRA> --card URI --out SHARE`, then this KRA runs `keywarden recoverkey BLOB "
               "OUT.pfx --card URI --shares SHARE1,...`"));
  }
  auto ready = Ready(blob);
  if (!ready.ok()) return ready.status();
  const CardCertificate& kra = *ready->first;
  auto key = ready->second;

  RecoveryTiming local;
  RecoveryTiming& t = timing != nullptr ? *timing : local;
  ossl::UniquePtr<CMS_ContentInfo> cms =
      ReadContentInfo(blob.enveloped_data, crypto_->libctx(), hsm::kTokenKeyProperties);
  if (!cms) {
    return absl::DataLossError("recovery: the blob's EnvelopedData is not a DER CMS ContentInfo");
  }

  // Report decryption failures instead of OpenSSL's default of carrying on
  // with a random key (a defence for online oracles; this is the card
  // holder's own offline tool, where a clear error matters).
  CMS_decrypt(cms.get(), nullptr, nullptr, nullptr, nullptr, CMS_DEBUG_DECRYPT);

  // The content-encryption key, decrypted by the card's private key.
  auto start = Clock::now();
  if (CMS_decrypt_set1_pkey_and_peer(cms.get(), key, kra.certificate.get(), nullptr) != 1) {
    return hsm::OpenSslError(
        StrCat("recovery: card \"", label(), "\" could not decrypt the ",
               "content key with the key of \"", Subject(kra.certificate.get()), "\""),
        absl::StatusCode::kDataLoss);
  }
  t.card = Since(start);

  // The archived key, decrypted in software into memory that is wiped.
  start = Clock::now();
  ossl::UniquePtr<BIO> out(BIO_new(BIO_s_secmem()));
  if (!out || CMS_decrypt(cms.get(), nullptr, nullptr, nullptr, out.get(),
                          CMS_BINARY | CMS_DEBUG_DECRYPT) != 1) {
    return hsm::OpenSslError("recovery: decrypt the archived key", absl::StatusCode::kDataLoss);
  }
  char* data = nullptr;
  const long len = BIO_get_mem_data(out.get(), &data);
  hsm::SecretBytes plaintext(
      std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(data), static_cast<size_t>(len)));
  out.reset();
  return FinishRecovery(blob, kra, std::move(plaintext), t, start);
}

absl::StatusOr<std::pair<const threshold::ShareEntry*, hsm::SecretBytes>> KraCard::OwnShare(
    const RecoveryBlob& blob, const CardCertificate& kra, EVP_PKEY* key) {
  const threshold::ShareEntry* mine = nullptr;
  for (const threshold::ShareEntry& e : blob.threshold->shares) {
    if (e.Names(kra.certificate.get())) mine = &e;
  }
  if (mine == nullptr) {
    return absl::NotFoundError(StrCat("card \"", label(), "\": certificate \"",
                                      Subject(kra.certificate.get()), "\" holds no share"));
  }
  auto share = threshold::DecryptShare(key, *blob.threshold, *mine, crypto_->libctx(),
                                       hsm::kTokenKeyProperties);
  if (!share.ok()) {
    return absl::Status(share.status().code(),
                        StrCat("card \"", label(), "\": ", share.status().message()));
  }
  return std::pair<const threshold::ShareEntry*, hsm::SecretBytes>(mine, std::move(*share));
}

absl::StatusOr<std::vector<uint8_t>> KraCard::Contribute(const RecoveryBlob& blob,
                                                         X509* coordinator) {
  if (!blob.threshold) {
    return absl::FailedPreconditionError(
        "this archive is not a threshold archive: any one of its KRAs recovers it alone "
        "(keywarden recoverkey BLOB OUT.pfx --card URI)");
  }
  const threshold::ShareEntry* theirs = nullptr;
  for (const threshold::ShareEntry& e : blob.threshold->shares) {
    if (e.Names(coordinator)) theirs = &e;
  }
  if (theirs == nullptr) {
    return absl::NotFoundError(
        StrCat("the coordinator \"", Subject(coordinator), "\" holds no share of this archive"));
  }
  auto ready = Ready(blob);
  if (!ready.ok()) return ready.status();
  if (theirs->Names(ready->first->certificate.get())) {
    return absl::InvalidArgumentError(
        "the coordinator is this card's own KRA: contribute to another KRA of the archive");
  }
  auto own = OwnShare(blob, *ready->first, ready->second);
  if (!own.ok()) return own.status();
  threshold::Contribution c;
  c.archive_digest = threshold::ArchiveDigest(blob.enveloped_data);
  c.index = own->first->index;
  c.contributor_issuer = own->first->issuer;
  c.contributor_serial = own->first->serial;
  c.share = std::move(own->second);
  // Sealed with the transport the archive uses for the coordinator's own
  // share: the coordinator's card is known to do it.
  return threshold::SealContribution(c, coordinator, theirs->transport);
}

absl::StatusOr<KraCard::Combined> KraCard::CombineShares(
    const RecoveryBlob& blob, const std::vector<std::vector<uint8_t>>& contributions,
    const std::vector<std::string>& names, RecoveryTiming& t) {
  const threshold::ThresholdEnvelope& env = *blob.threshold;
  auto ready = Ready(blob);
  if (!ready.ok()) return ready.status();
  const CardCertificate& kra = *ready->first;

  auto start = Clock::now();
  auto own = OwnShare(blob, kra, ready->second);
  if (!own.ok()) return own.status();
  const KeyTransport own_transport = own->first->transport;
  std::vector<shamir::Share> shares;
  shares.push_back({own->first->index, std::move(own->second)});
  const auto digest = threshold::ArchiveDigest(blob.enveloped_data);
  for (size_t i = 0; i < contributions.size(); ++i) {
    const std::string name = i < names.size() ? names[i] : StrCat("contribution ", i + 1);
    auto c = threshold::OpenContribution(contributions[i], ready->second, kra.certificate.get(),
                                         crypto_->libctx(), hsm::kTokenKeyProperties);
    if (!c.ok()) {
      return absl::Status(c.status().code(), StrCat(name, ": ", c.status().message()));
    }
    if (CRYPTO_memcmp(c->archive_digest.data(), digest.data(), digest.size()) != 0) {
      return absl::InvalidArgumentError(
          StrCat(name, ": it is a share of another archive, not of this blob"));
    }
    const threshold::ShareEntry* entry = env.ByIndex(c->index);
    if (entry == nullptr || entry->issuer != c->contributor_issuer ||
        entry->serial != c->contributor_serial) {
      return absl::InvalidArgumentError(StrCat(name, ": share ", static_cast<int>(c->index),
                                               " is not held by the KRA that sealed it"));
    }
    for (const shamir::Share& have : shares) {
      if (have.index == c->index) {
        return absl::InvalidArgumentError(StrCat(name, ": ", entry->Describe(), " is given twice"));
      }
    }
    const threshold::Commitment commitment =
        threshold::CommitTo(env.k, env.n, c->index, c->share.span());
    if (c->share.size() != threshold::ContentKeyLength(env.content.cipher) ||
        CRYPTO_memcmp(commitment.data(), entry->commitment.data(), commitment.size()) != 0) {
      return absl::DataLossError(
          StrCat(name, ": ", entry->Describe(), " does not match its commitment (a bad share)"));
    }
    shares.push_back({c->index, std::move(c->share)});
  }
  if (shares.size() < static_cast<size_t>(env.k)) {
    std::vector<std::string> missing;
    for (const threshold::ShareEntry& e : env.shares) {
      bool have = false;
      for (const shamir::Share& s : shares) have = have || s.index == e.index;
      if (have) continue;
      // The KRA by subject and SHA-1 when the blob carries its certificate
      // (what a card holder recognises), else by issuer and serial.
      std::string who = e.Describe();
      for (const RecoveryRecipient& r : blob.recipients) {
        if (r.share_index == e.index && r.certificate != nullptr) {
          who = StrCat("share ", static_cast<int>(e.index), " of KRA ", r.Describe());
        }
      }
      missing.push_back(std::move(who));
    }
    return absl::FailedPreconditionError(
        StrCat("this archive needs ", env.k, " shares and ", shares.size(),
               " were given: ", env.k - static_cast<int>(shares.size()),
               " more needed, from any of:\n  ", StrJoin(missing, "\n  ")));
  }
  t.card = Since(start);
  start = Clock::now();
  auto content_key = shamir::Combine(shares);
  if (!content_key.ok()) return content_key.status();
  t.combine = Since(start);
  Combined out;
  out.kra = &kra;
  out.transport = own_transport;
  out.content_key = std::move(*content_key);
  return out;
}

absl::StatusOr<RecoveredKey> KraCard::RecoverThreshold(
    const RecoveryBlob& blob, const std::vector<std::vector<uint8_t>>& contributions,
    const std::vector<std::string>& names, RecoveryTiming* timing) {
  if (!blob.threshold) {
    return absl::FailedPreconditionError(
        "this archive is not a threshold archive: recover it without --shares");
  }
  RecoveryTiming local;
  RecoveryTiming& t = timing != nullptr ? *timing : local;
  auto combined = CombineShares(blob, contributions, names, t);
  if (!combined.ok()) return combined.status();
  MemoryLock lock(combined->content_key.data(), combined->content_key.size());
  const auto start = Clock::now();
  auto plaintext = threshold::DecryptContent(blob.threshold->content, combined->content_key.span());
  combined->content_key.Clear();
  if (!plaintext.ok()) return plaintext.status();
  return FinishRecovery(blob, *combined->kra, std::move(*plaintext), t, start);
}

absl::StatusOr<RewrapResult> KraCard::RewrapThreshold(
    const RecoveryBlob& blob, const std::vector<std::vector<uint8_t>>& contributions,
    const std::vector<std::string>& names, const std::vector<X509*>& new_kras, int threshold) {
  if (!blob.threshold) {
    return absl::FailedPreconditionError(
        "this archive is not a threshold archive: one of its KRAs rewraps it alone (no --shares)");
  }
  if (new_kras.empty()) return absl::InvalidArgumentError("rewrap: no new KRA certificate");
  if (threshold < 1 || (threshold >= 2 && static_cast<size_t>(threshold) > new_kras.size())) {
    return absl::FailedPreconditionError(StrCat("rewrap: the CA's threshold ", threshold,
                                                " needs 1 <= k <= the ", new_kras.size(),
                                                " KRAs valid now"));
  }
  auto env = ParseArchiveEnvelope(blob.enveloped_data);
  if (!env.ok()) return env.status();
  RecoveryTiming t;
  // The old shares (this card's and the contributions sealed to it) are
  // checked against their commitments and combined; the content key lives
  // only in locked, wiped memory here and the archived key is never
  // decrypted.
  auto combined = CombineShares(blob, contributions, names, t);
  if (!combined.ok()) return combined.status();
  MemoryLock lock(combined->content_key.data(), combined->content_key.size());
  if (combined->content_key.size() != threshold::ContentKeyLength(blob.threshold->content.cipher)) {
    return absl::DataLossError("rewrap: the combined content key has the wrong length");
  }
  auto envelope = WrapContentKey(combined->content_key.span(), env->encrypted_content_info,
                                 combined->transport, new_kras, threshold, *token_);
  combined->content_key.Clear();
  if (!envelope.ok()) return envelope.status();
  RewrapResult result;
  result.kra = combined->kra;
  result.unwrapped_on_card = false;
  result.combined_shares = contributions.size() + 1;
  result.threshold = threshold;
  result.envelope = std::move(*envelope);
  return result;
}

absl::StatusOr<RewrapResult> KraCard::Rewrap(const RecoveryBlob& blob,
                                             const std::vector<X509*>& new_kras, int threshold) {
  if (blob.threshold) {
    return absl::FailedPreconditionError(StrCat(
        "this is a threshold archive (", blob.threshold->k, " of ", blob.threshold->n,
        " KRAs): ", blob.threshold->k - 1,
        " other KRA(s) of it each seal their share to this card's KRA (keywarden recoverkey BLOB "
        "--contribute-to KRA --card URI --out SHARE) and this KRA rewraps with --shares "
        "SHARE1,..."));
  }
  if (new_kras.empty()) return absl::InvalidArgumentError("rewrap: no new KRA certificate");
  if (threshold < 1 || (threshold >= 2 && static_cast<size_t>(threshold) > new_kras.size())) {
    return absl::FailedPreconditionError(StrCat("rewrap: the CA's threshold ", threshold,
                                                " needs 1 <= k <= the ", new_kras.size(),
                                                " KRAs valid now"));
  }
  auto env = ParseArchiveEnvelope(blob.enveloped_data);
  if (!env.ok()) return env.status();
  if (env->threshold) {
    return absl::FailedPreconditionError("rewrap: threshold archives are not rewrapped");
  }
  auto ready = Ready(blob);
  if (!ready.ok()) return ready.status();
  const CardCertificate& kra = *ready->first;
  const ArchiveRecipient* mine = nullptr;
  for (const ArchiveRecipient& r : env->recipients) {
    if (r.Names(kra.certificate.get())) mine = &r;
  }
  if (mine == nullptr) {
    return absl::NotFoundError(StrCat("card \"", label(), "\": the archive has no recipient for \"",
                                      Subject(kra.certificate.get()), "\""));
  }
  std::shared_ptr<hsm::TokenKey> token_key;
  for (auto& [c, k] : token_keys_) {
    if (c == &kra) token_key = k;
  }
  if (!token_key) return absl::InternalError("rewrap: the card key was not loaded");
  const hsm::SymmetricAlgorithm algorithm = env->cipher == ContentCipher::kDes3Cbc
                                                ? hsm::SymmetricAlgorithm::kDes3
                                                : hsm::SymmetricAlgorithm::kAes256;
  const hsm::WrapMechanism mechanism = mine->transport == KeyTransport::kRsaPkcs1
                                           ? hsm::WrapMechanism::kRsaPkcs1
                                           : hsm::WrapMechanism::kRsaOaepSha1;
  RewrapResult result;
  result.kra = &kra;
  result.threshold = threshold;
  if (threshold >= 2) {
    // k = 1 -> threshold (the CA's [kra] threshold was raised): the shares
    // are computed on the host, so the content key is decrypted on the card
    // into locked, wiped memory, split there and wiped (docs/THRESHOLD.md,
    // "Rewrap"). The archived key is never decrypted.
    result.unwrapped_on_card = false;
    hsm::SecretBytes content_key(512);
    MemoryLock lock(content_key.data(), content_key.size());
    size_t len = content_key.size();
    ossl::UniquePtr<EVP_PKEY_CTX> ctx(
        EVP_PKEY_CTX_new_from_pkey(crypto_->libctx(), ready->second, hsm::kTokenKeyProperties));
    if (!ctx || EVP_PKEY_decrypt_init(ctx.get()) != 1 ||
        EVP_PKEY_CTX_set_rsa_padding(ctx.get(), mechanism == hsm::WrapMechanism::kRsaPkcs1
                                                    ? RSA_PKCS1_PADDING
                                                    : RSA_PKCS1_OAEP_PADDING) != 1 ||
        EVP_PKEY_decrypt(ctx.get(), content_key.data(), &len, mine->encrypted_key.data(),
                         mine->encrypted_key.size()) != 1 ||
        len > content_key.size()) {
      return hsm::OpenSslError(StrCat("rewrap: card \"", label(),
                                      "\" could not decrypt the content key with the key of \"",
                                      Subject(kra.certificate.get()), "\""),
                               absl::StatusCode::kDataLoss);
    }
    content_key.Truncate(len);
    if (len != threshold::ContentKeyLength(env->cipher)) {
      return absl::DataLossError(StrCat("rewrap: the content key is ", len, " bytes, not the ",
                                        threshold::ContentKeyLength(env->cipher),
                                        " of the archive's cipher"));
    }
    auto envelope = WrapContentKey(content_key.span(), env->encrypted_content_info, mine->transport,
                                   new_kras, threshold, *token_);
    content_key.Clear();
    if (!envelope.ok()) return envelope.status();
    result.envelope = std::move(*envelope);
    return result;
  }
  std::optional<hsm::SessionKey> cek;
  auto unwrapped = hsm::SessionKey::Unwrap(token_, *token_key->handle, mechanism,
                                           mine->encrypted_key, algorithm);
  if (unwrapped.ok()) {
    cek.emplace(std::move(*unwrapped));
  } else if (absl::IsFailedPrecondition(unwrapped.status())) {
    // The card's key may decrypt but not unwrap (made without CKA_UNWRAP):
    // decrypt the content key on the card into a locked stack buffer, make it
    // a session object on the card again at once, and wipe the buffer.
    result.unwrapped_on_card = false;
    unsigned char buffer[512];
    const bool locked = mlock(buffer, sizeof buffer) == 0;
    size_t len = sizeof buffer;
    ossl::UniquePtr<EVP_PKEY_CTX> ctx(
        EVP_PKEY_CTX_new_from_pkey(crypto_->libctx(), ready->second, hsm::kTokenKeyProperties));
    const bool decrypted =
        ctx && EVP_PKEY_decrypt_init(ctx.get()) == 1 &&
        EVP_PKEY_CTX_set_rsa_padding(ctx.get(), mechanism == hsm::WrapMechanism::kRsaPkcs1
                                                    ? RSA_PKCS1_PADDING
                                                    : RSA_PKCS1_OAEP_PADDING) == 1 &&
        EVP_PKEY_decrypt(ctx.get(), buffer, &len, mine->encrypted_key.data(),
                         mine->encrypted_key.size()) == 1 &&
        len <= sizeof buffer;
    absl::StatusOr<hsm::SessionKey> imported =
        decrypted
            ? hsm::SessionKey::Import(token_, std::span<const uint8_t>(buffer, len), algorithm)
            : absl::StatusOr<hsm::SessionKey>(hsm::OpenSslError(
                  StrCat("rewrap: card \"", label(),
                         "\" could not decrypt the content key with the key of \"",
                         Subject(kra.certificate.get()), "\""),
                  absl::StatusCode::kDataLoss));
    OPENSSL_cleanse(buffer, sizeof buffer);
    if (locked) munlock(buffer, sizeof buffer);
    if (!imported.ok()) return imported.status();
    cek.emplace(std::move(*imported));
  } else {
    return unwrapped.status();
  }
  std::vector<KeyTransRecipient> recipients;
  for (X509* cert : new_kras) {
    auto wrapped = cek->WrapTo(X509_get0_pubkey(cert), mechanism);
    if (!wrapped.ok()) {
      return absl::Status(
          wrapped.status().code(),
          StrCat("rewrap: wrapping the content key to KRA \"", Subject(cert), "\" (SHA-1 ",
                 Sha1Thumbprint(cert), "): ", wrapped.status().message()));
    }
    recipients.push_back(KeyTransRecipient{cert, mine->transport, std::move(*wrapped)});
  }
  auto envelope = BuildRewrappedEnvelope(env->encrypted_content_info, recipients);
  if (!envelope.ok()) return envelope.status();
  // The result must read back as the same archive with the new recipients.
  auto check = ParseArchiveEnvelope(*envelope);
  if (!check.ok() || check->encrypted_content_info != env->encrypted_content_info ||
      check->recipients.size() != new_kras.size()) {
    return absl::InternalError("rewrap: the new envelope does not read back as the same archive");
  }
  result.envelope = std::move(*envelope);
  return result;
}

}  // namespace keywarden::pki
