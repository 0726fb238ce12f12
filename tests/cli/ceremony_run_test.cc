// `keywarden ceremony run` and `ceremony verify` on SoftHSM2 tokens (the CA
// token and KRA cards of softhsm-fixtures). Results are checked with
// independent tools: openssl (certificates, the transcript's signature over
// its canonical JSON, which python3 rebuilds), pkcs11-tool (what is on the
// tokens), python3's tomllib (the configuration fragment) and sha256sum.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>

#include "cli/ceremony/ceremony.h"
#include "cli/ceremony/ceremony_file.h"
#include "hsm/keys.h"
#include "hsm/open.h"
#include "hsm/provider/provider.h"
#include "pki/certificate.h"
#include "service/ca/ceremony_certificates.h"
#include "service/storage/store.h"
#include "softhsm-fixtures/fixture.h"
#include "tests/test_util.h"

#ifndef KEYWARDEN_CLI
#error "KEYWARDEN_CLI must be the path of the keywarden binary"
#endif

namespace keywarden::testing {
namespace {

std::string ReadText(const std::string& path) {
  std::ifstream f(path);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

std::string Pin(const std::string& path) {
  std::string pin = ReadText(path);
  while (!pin.empty() && (pin.back() == '\n' || pin.back() == '\r')) pin.pop_back();
  return pin;
}

class CeremonyRunTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto f = SoftHsmFixture::Create();
    ASSERT_TRUE(f.ok()) << f.status();
    fixture_ = std::move(*f);
  }

  std::string Pins() const {
    std::string out;
    for (const char* t : {SoftHsmFixture::kCaToken, SoftHsmFixture::kKraCard1,
                          SoftHsmFixture::kKraCard2, SoftHsmFixture::kKraCard3}) {
      out += StrCat(" --automation-pin ", t, "=file:", fixture_->PinFile(t));
    }
    return out;
  }

  CommandResult Keywarden(const std::string& args) {
    return RunCommand("KEYWARDEN_PKCS11_MODULE=" + SoftHsmFixture::module_path() + " " +
                      KEYWARDEN_CLI + " " + args + " </dev/null");
  }
  CommandResult Run(const std::string& file) { return Keywarden("ceremony run " + file + Pins()); }

  // A root ceremony on the CA token and kra-card-1/2 (outputs under out/).
  std::string RootCeremony(const std::string& ca_extra = "", const std::string& card_extra = "") {
    return StrCat(R"([ceremony]
name = "Test root ceremony"
kind = "root"
witnesses = ["Wanda Witness", "Ivan Inspector"]
transcript = "out/transcript.json"

[ca]
name = "Test Root CA"
token = "pkcs11:token=keywarden-ca"
key_label = "ca-root"
key_algorithm = "ec-p256"
subject = "CN=Test Root CA,O=keywarden test"
validity_days = 365
path_length = 0
certificate = "out/ca.pem"
)",
                  ca_extra, R"(
[kra]
count = 2
validity_days = 90

[[kra.card]]
token = "pkcs11:token=kra-card-1"
holder = "Alice"
subject = "CN=KRA Alice,O=keywarden test"
certificate = "out/kra/alice.pem"
)",
                  card_extra, R"(
[[kra.card]]
token = "pkcs11:token=kra-card-2"
holder = "Bob"
subject = "CN=KRA Bob,O=keywarden test"
certificate = "out/kra/bob.pem"

[config]
fragment = "out/keywarden-ceremony.toml"
hsm_pin_source = "file:/etc/keywarden/ca.pin"
)");
  }

  std::string Write(const std::string& text, const std::string& name = "ceremony.toml") {
    WriteFile(tmp_.File(name), text);
    return tmp_.File(name);
  }

  // Objects on a token as pkcs11-tool lists them (logged in).
  std::string Objects(const std::string& token) {
    return RunCommand("pkcs11-tool --module " + SoftHsmFixture::module_path() + " --token-label " +
                      token + " --login --pin " + Pin(fixture_->PinFile(token)) +
                      " --list-objects 2>&1")
        .output;
  }

  std::unique_ptr<SoftHsmFixture> fixture_;
  TempDir tmp_;
};

TEST_F(CeremonyRunTest, ExampleFileParses) {
  auto spec = ceremony::ParseCeremonyFile(KEYWARDEN_SOURCE_DIR "/deploy/ceremony.example.toml");
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->kind, ceremony::Kind::kRoot);
  EXPECT_EQ(spec->ca.key_algorithm, "rsa3072");
  EXPECT_EQ(spec->kra.cards.size(), 3u);
  EXPECT_EQ(spec->kra.count, 2);
  EXPECT_EQ(spec->witnesses.size(), 2u);
  EXPECT_EQ(spec->kra.cards[1].key_label, "kra");  // the default
  EXPECT_TRUE(spec->transcript.ends_with("ceremony-out/transcript.json")) << spec->transcript;
}

TEST_F(CeremonyRunTest, UnknownKeyFailsWithFileAndLine) {
  // Line 9 of the file is the misspelt key.
  std::string text = RootCeremony();
  text.replace(text.find("key_label = \"ca-root\""), 21, "key_lable = \"ca-root\"");
  ASSERT_EQ(std::count(text.begin(), text.begin() + text.find("key_lable"), '\n'), 9);
  auto r = Keywarden("ceremony run " + Write(text) + Pins());
  EXPECT_NE(r.exit_code, 0);
  EXPECT_TRUE(Contains(r.output, "ceremony.toml:10: unknown key \"ca.key_lable\"")) << r.output;
  EXPECT_FALSE(Contains(Objects("keywarden-ca"), "ca-root"));
}

TEST_F(CeremonyRunTest, DisallowedKeyTypesAreRefused) {
  std::string text = RootCeremony();
  text.replace(text.find("\"ec-p256\""), 9, "\"rsa2048\"");
  auto spec = ceremony::ParseCeremonyText(text, "c.toml", tmp_.path());
  ASSERT_FALSE(spec.ok());
  EXPECT_TRUE(Contains(std::string(spec.status().message()), "c.toml:11: key \"ca.key_algorithm\""))
      << spec.status();
  EXPECT_TRUE(Contains(std::string(spec.status().message()), "rsa3072, rsa4096, ec-p256, ec-p384"))
      << spec.status();
  // A KRA key must be RSA (key transport), and 1024 bits is no size at all.
  for (const char* bad : {"ec-p256", "rsa1024"}) {
    std::string t = RootCeremony();
    t.replace(t.find("count = 2"), 9, StrCat("count = 2\nkey_algorithm = \"", bad, "\""));
    auto refused = ceremony::ParseCeremonyText(t, "c.toml", tmp_.path());
    ASSERT_FALSE(refused.ok()) << bad;
    EXPECT_TRUE(Contains(std::string(refused.status().message()), "key \"kra.key_algorithm\""))
        << refused.status();
  }
}

TEST_F(CeremonyRunTest, PinsInTheFileAreRefused) {
  auto pin_key =
      ceremony::ParseCeremonyText(RootCeremony("", "pin = \"1234\"\n"), "c.toml", tmp_.path());
  ASSERT_FALSE(pin_key.ok());
  const std::string m(pin_key.status().message());
  EXPECT_TRUE(Contains(m, "key \"kra.card[1].pin\"")) << m;
  EXPECT_TRUE(Contains(m, "PINs never go in a ceremony file")) << m;
  EXPECT_FALSE(Contains(m, "1234")) << m;
  std::string uri = RootCeremony();
  uri.replace(uri.find("pkcs11:token=kra-card-1"), 23, "pkcs11:token=kra-card-1?pin-value=5678");
  auto in_uri = ceremony::ParseCeremonyText(uri, "c.toml", tmp_.path());
  ASSERT_FALSE(in_uri.ok());
  EXPECT_TRUE(Contains(std::string(in_uri.status().message()), "pin-value")) << in_uri.status();
  EXPECT_FALSE(Contains(std::string(in_uri.status().message()), "5678")) << in_uri.status();
  // And through the binary: nothing on any token.
  auto r = Keywarden("ceremony run " + Write(RootCeremony("", "user_pin = \"1234\"\n")) + Pins());
  EXPECT_NE(r.exit_code, 0);
  EXPECT_TRUE(Contains(r.output, "PINs never go in a ceremony file")) << r.output;
  EXPECT_FALSE(Contains(Objects("kra-card-1"), "kra"));
}

// Without --automation-pin each holder is asked on the terminal; with no
// terminal (setsid: no controlling tty) the run stops in preflight.
TEST_F(CeremonyRunTest, PinsAreAskedOnTheTerminalAndNothingIsWrittenWithoutOne) {
  auto r = RunCommand("KEYWARDEN_PKCS11_MODULE=" + SoftHsmFixture::module_path() + " setsid -w " +
                      KEYWARDEN_CLI + " ceremony run " + Write(RootCeremony()) + " </dev/null");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_TRUE(Contains(r.output,
                       "PIN of token \"keywarden-ca\" (CA token): PIN prompt: no "
                       "terminal"))
      << r.output;
  EXPECT_TRUE(Contains(r.output, "Nothing was written")) << r.output;
  EXPECT_FALSE(Contains(Objects("keywarden-ca"), "ca-root"));
  EXPECT_FALSE(FileExists(tmp_.File("out")));
}

TEST_F(CeremonyRunTest, RootCeremonyEndToEndCheckedWithIndependentTools) {
  auto r = Run(Write(RootCeremony()));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::string out = tmp_.File("out");
  // openssl: the root verifies, each KRA chains to it with the KRA profile.
  auto v = RunCommand("openssl verify -x509_strict -CAfile " + out + "/ca.pem " + out +
                      "/kra/alice.pem " + out + "/kra/bob.pem");
  EXPECT_EQ(v.exit_code, 0) << v.output;
  auto root = RunCommand("openssl x509 -noout -text -in " + out + "/ca.pem");
  EXPECT_TRUE(Contains(root.output, "CA:TRUE, pathlen:0")) << root.output;
  EXPECT_TRUE(Contains(root.output, "Certificate Sign, CRL Sign")) << root.output;
  auto kra = RunCommand("openssl x509 -noout -text -in " + out + "/kra/bob.pem");
  EXPECT_TRUE(Contains(kra.output, "CA:FALSE")) << kra.output;
  EXPECT_TRUE(Contains(kra.output, "Key Encipherment")) << kra.output;
  EXPECT_TRUE(Contains(kra.output, "1.3.6.1.4.1.311.21.6")) << kra.output;
  EXPECT_TRUE(Contains(kra.output, "Subject: O = keywarden test, CN = KRA Bob")) << kra.output;
  // Serial numbers of at least 64 bits (openssl prints the hex bytes).
  auto serial = RunCommand("openssl x509 -noout -serial -in " + out + "/kra/alice.pem");
  EXPECT_GE(serial.output.size(), std::string("serial=").size() + 16 + 1) << serial.output;

  // pkcs11-tool: the KRA key and its certificate are on the card, the key
  // sensitive and never extractable; the CA key likewise on the CA token.
  const std::string card = Objects("kra-card-1");
  EXPECT_TRUE(Contains(card, "Private Key Object; RSA")) << card;
  EXPECT_TRUE(Contains(card, "Public Key Object; RSA 2048 bits")) << card;
  EXPECT_TRUE(Contains(card, "Certificate Object; type = X.509 cert")) << card;
  EXPECT_TRUE(Contains(card, "never extractable")) << card;
  EXPECT_TRUE(Contains(card, "subject:    DN: O=keywarden test, CN=KRA Alice")) << card;
  const std::string ca = Objects("keywarden-ca");
  EXPECT_TRUE(Contains(ca, "label:      ca-root")) << ca;
  EXPECT_TRUE(Contains(ca, "never extractable")) << ca;

  // The transcript: its outputs' hashes are what sha256sum says ...
  const std::string transcript = out + "/transcript.json";
  auto hashes = RunCommand(
      "cd " + out +
      " && python3 -c 'import json,sys,subprocess; t=json.load(open(\"transcript.json\"))"
      "[\"transcript\"]; [print(o[\"sha256\"]+\"  \"+o[\"path\"]) for o in t[\"outputs\"]]' "
      "| sha256sum -c -");
  EXPECT_EQ(hashes.exit_code, 0) << hashes.output;
  EXPECT_TRUE(Contains(hashes.output, "kra/bob.pem: OK")) << hashes.output;
  EXPECT_TRUE(Contains(hashes.output, "keywarden-ceremony.toml: OK")) << hashes.output;
  // ... and its signature verifies with openssl over the canonical JSON
  // that python3 rebuilds (sorted keys, no whitespace).
  auto sig = RunCommand(
      "cd " + out +
      " && python3 -c 'import json,base64; f=json.load(open(\"transcript.json\")); "
      "open(\"body.bin\",\"wb\").write(json.dumps(f[\"transcript\"],sort_keys=True,"
      "separators=(\",\",\":\"),ensure_ascii=False).encode()); "
      "open(\"sig.bin\",\"wb\").write(base64.b64decode(f[\"signature\"][\"value\"]))' && "
      "openssl x509 -in ca.pem -pubkey -noout > pub.pem && "
      "openssl dgst -sha256 -verify pub.pem -signature sig.bin body.bin && rm body.bin sig.bin "
      "pub.pem");
  EXPECT_EQ(sig.exit_code, 0) << sig.output;
  EXPECT_TRUE(Contains(sig.output, "Verified OK")) << sig.output;
  const std::string t = ReadText(transcript);
  EXPECT_TRUE(Contains(t, "\"Wanda Witness\"")) << t;
  EXPECT_TRUE(Contains(t, "\"round-trip-proof\"")) << t;
  EXPECT_TRUE(Contains(t, "\"recovered\": true")) << t;

  // The fragment is TOML that says what the daemon needs (python3 tomllib).
  auto frag = RunCommand(
      "python3 -c 'import tomllib; c=tomllib.load(open(\"" + out +
      "/keywarden-ceremony.toml\",\"rb\")); print(c[\"ca\"][\"certificate\"], "
      "c[\"hsm\"][\"signing_key\"], c[\"hsm\"][\"pin_source\"], c[\"kra\"][\"certificates\"], "
      "c[\"kra\"][\"count\"], c[\"ca\"][\"ceremony_transcript\"])'");
  EXPECT_EQ(frag.exit_code, 0) << frag.output;
  EXPECT_TRUE(Contains(frag.output,
                       "ca.pem pkcs11:token=keywarden-ca;object=ca-root;type=private "
                       "file:/etc/keywarden/ca.pin ['kra/alice.pem', 'kra/bob.pem'] 2 "
                       "transcript.json"))
      << frag.output;

  // keywarden ceremony verify agrees.
  auto verify = Keywarden("ceremony verify " + transcript + " --ca-cert " + out + "/ca.pem");
  EXPECT_EQ(verify.exit_code, 0) << verify.output;
}

TEST_F(CeremonyRunTest, ExistingOutputIsRefusedBeforeAnyTokenIsTouched) {
  std::filesystem::create_directories(tmp_.File("out/kra"));
  WriteFile(tmp_.File("out/kra/bob.pem"), "already here\n");
  auto r = Run(Write(RootCeremony()));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_TRUE(Contains(r.output, "the output " + tmp_.File("out/kra/bob.pem") + " exists"))
      << r.output;
  EXPECT_TRUE(Contains(r.output, "Nothing was written")) << r.output;
  EXPECT_FALSE(Contains(Objects("keywarden-ca"), "ca-root"));
  EXPECT_FALSE(Contains(Objects("kra-card-1"), "label:      kra"));
  EXPECT_FALSE(FileExists(tmp_.File("out/ca.pem")));
  EXPECT_EQ(ReadText(tmp_.File("out/kra/bob.pem")), "already here\n");
}

TEST_F(CeremonyRunTest, TakenLabelOnACardIsRefusedBeforeAnyTokenIsWritten) {
  auto keygen = Keywarden("token keygen --token pkcs11:token=kra-card-2 --pin-source file:" +
                          fixture_->PinFile(SoftHsmFixture::kKraCard2) + " --label kra --decrypt");
  ASSERT_EQ(keygen.exit_code, 0) << keygen.output;
  auto r = Run(Write(RootCeremony()));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_TRUE(Contains(r.output, "key label \"kra\" is taken on card \"kra-card-2\" (Bob)"))
      << r.output;
  EXPECT_FALSE(Contains(Objects("keywarden-ca"), "ca-root"));
  EXPECT_FALSE(Contains(Objects("kra-card-1"), "label:      kra"));
  EXPECT_FALSE(FileExists(tmp_.File("out/ca.pem")));
  // The CA key label is checked the same way.
  auto ca_keygen = Keywarden("token keygen --token pkcs11:token=keywarden-ca --pin-source file:" +
                             fixture_->PinFile(SoftHsmFixture::kCaToken) + " --label ca-root");
  ASSERT_EQ(ca_keygen.exit_code, 0) << ca_keygen.output;
  std::string other = RootCeremony();
  other.replace(other.find("kra-card-2"), 10, "kra-card-3");
  auto r2 = Run(Write(other, "other.toml"));
  EXPECT_NE(r2.exit_code, 0);
  EXPECT_TRUE(Contains(r2.output, "key label \"ca-root\" is taken on token \"keywarden-ca\""))
      << r2.output;
  EXPECT_FALSE(Contains(Objects("kra-card-3"), "label:      kra"));
}

TEST_F(CeremonyRunTest, VerifyNamesATamperedTranscriptAndATamperedOutput) {
  ASSERT_EQ(Run(Write(RootCeremony())).exit_code, 0);
  const std::string transcript = tmp_.File("out/transcript.json");
  const std::string original = ReadText(transcript);
  // A witness's name changed after signing.
  std::string edited = original;
  edited.replace(edited.find("Ivan Inspector"), 14, "Eve Eavesdrop");
  WriteFile(transcript, edited);
  auto r = Keywarden("ceremony verify " + transcript);
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_TRUE(Contains(r.output, "signature does not verify")) << r.output;
  // The transcript restored; a KRA certificate replaced.
  WriteFile(transcript, original);
  ASSERT_EQ(Keywarden("ceremony verify " + transcript).exit_code, 0);
  WriteFile(tmp_.File("out/kra/alice.pem"), ReadText(tmp_.File("out/kra/bob.pem")));
  auto r2 = Keywarden("ceremony verify " + transcript);
  EXPECT_EQ(r2.exit_code, 1) << r2.output;
  EXPECT_TRUE(Contains(r2.output, "MISMATCH  kra/alice.pem")) << r2.output;
  EXPECT_FALSE(Contains(r2.output, "MISMATCH  kra/bob.pem")) << r2.output;
  // Signed by some other key than the CA the operator expects.
  WriteFile(tmp_.File("out/kra/alice.pem"), ReadText(tmp_.File("out/kra/bob.pem")));
  auto r3 =
      Keywarden("ceremony verify " + transcript + " --ca-cert " + tmp_.File("out/kra/bob.pem"));
  EXPECT_EQ(r3.exit_code, 1) << r3.output;
  EXPECT_TRUE(Contains(r3.output, "not by the expected CA key")) << r3.output;
}

// keywardend ([ca] ceremony_transcript) records the ceremony's KRA
// certificates only from an intact transcript signed by its own key.
TEST_F(CeremonyRunTest, DaemonRecordsTheCeremonyKrasOnlyFromAnIntactTranscript) {
  ASSERT_EQ(Run(Write(RootCeremony())).exit_code, 0);
  auto store = service::OpenSqliteStore(tmp_.File("ca.db"));
  ASSERT_TRUE(store.ok()) << store.status();
  auto ca = pki::ReadPemCertificates(tmp_.File("out/ca.pem"));
  auto bob = pki::ReadPemCertificates(tmp_.File("out/kra/bob.pem"));
  ASSERT_TRUE(ca.ok() && bob.ok());
  std::vector<std::string> events;
  auto audit = [&](const std::string& event, const std::string&) { events.push_back(event); };
  const std::string transcript = tmp_.File("out/transcript.json");
  auto recorded =
      service::RecordCeremonyCertificates(transcript, ca->front().get(), **store, audit);
  ASSERT_TRUE(recorded.ok()) << recorded.status();
  EXPECT_EQ(*recorded, 2u);
  EXPECT_EQ(events.size(), 2u);
  // The serial as openssl prints it, lower-case.
  auto serial = RunCommand("openssl x509 -noout -serial -in " + tmp_.File("out/kra/bob.pem"));
  std::string hex = serial.output.substr(serial.output.find('=') + 1);
  hex = hex.substr(0, hex.find('\n'));
  std::transform(hex.begin(), hex.end(), hex.begin(),
                 [](unsigned char ch) { return std::tolower(ch); });
  auto row = (*store)->GetCertificate(hex);
  ASSERT_TRUE(row.ok()) << row.status() << " " << hex;
  EXPECT_EQ(row->template_name, "KeyRecoveryAgent");
  // A second start records nothing new.
  auto again = service::RecordCeremonyCertificates(transcript, ca->front().get(), **store, audit);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(*again, 0u);
  // Another CA's key: refused.
  auto other = service::RecordCeremonyCertificates(transcript, bob->front().get(), **store, audit);
  ASSERT_FALSE(other.ok());
  EXPECT_TRUE(Contains(std::string(other.status().message()), "not by this CA's key"))
      << other.status();
  // A KRA certificate file replaced: refused, naming it.
  WriteFile(tmp_.File("out/kra/alice.pem"), ReadText(tmp_.File("out/kra/bob.pem")));
  auto tampered =
      service::RecordCeremonyCertificates(transcript, ca->front().get(), **store, audit);
  ASSERT_FALSE(tampered.ok());
  EXPECT_TRUE(Contains(std::string(tampered.status().message()), "kra/alice.pem has changed"))
      << tampered.status();
}

TEST_F(CeremonyRunTest, RoundTripProofFailsWhenACardHoldsTheWrongKey) {
  ASSERT_EQ(Run(Write(RootCeremony())).exit_code, 0);
  // pkcs11-tool replaces Bob's KRA key by another with the same label and id.
  const std::string pin = Pin(fixture_->PinFile(SoftHsmFixture::kKraCard2));
  const std::string tool = "pkcs11-tool --module " + SoftHsmFixture::module_path() +
                           " --token-label kra-card-2 --login --pin " + pin;
  auto listed = RunCommand(tool + " --list-objects --type privkey");
  const size_t at = listed.output.find("ID:");
  ASSERT_NE(at, std::string::npos) << listed.output;
  std::string id = listed.output.substr(at + 3);
  id = id.substr(id.find_first_not_of(' '));
  id = id.substr(0, id.find('\n'));
  ASSERT_EQ(RunCommand(tool + " --delete-object --type privkey --label kra").exit_code, 0);
  ASSERT_EQ(RunCommand(tool + " --delete-object --type pubkey --label kra").exit_code, 0);
  auto gen = RunCommand(tool + " --keypairgen --key-type rsa:2048 --label kra --id " + id +
                        " --usage-decrypt");
  ASSERT_EQ(gen.exit_code, 0) << gen.output;

  // The proof, run again over the same CA and certificates.
  auto open = [&](const char* label) {
    hsm::OpenOptions o;
    o.default_module = SoftHsmFixture::module_path();
    o.pin = hsm::PinSource::File(fixture_->PinFile(label));
    auto t = hsm::OpenToken(*hsm::Pkcs11Uri::Parse(SoftHsmFixture::TokenUri(label)), o);
    EXPECT_TRUE(t.ok()) << t.status();
    return *t;
  };
  auto ca_token = open(SoftHsmFixture::kCaToken);
  auto crypto = hsm::CryptoContext::Create();
  ASSERT_TRUE(crypto.ok());
  auto ca_key = hsm::FindPrivateKey(ca_token, "ca-root");
  ASSERT_TRUE(ca_key.ok()) << ca_key.status();
  auto ca_pkey = (*crypto)->Load(*ca_key);
  ASSERT_TRUE(ca_pkey.ok());
  auto ca_cert = pki::ReadPemCertificates(tmp_.File("out/ca.pem"));
  auto alice = pki::ReadPemCertificates(tmp_.File("out/kra/alice.pem"));
  auto bob = pki::ReadPemCertificates(tmp_.File("out/kra/bob.pem"));
  ASSERT_TRUE(ca_cert.ok() && alice.ok() && bob.ok());
  ceremony::ProofInput in;
  in.ca_token = ca_token;
  in.libctx = (*crypto)->libctx();
  in.ca_key = ca_pkey->get();
  in.ca_certificate = ca_cert->front().get();
  in.kra_certificates = {alice->front().get(), bob->front().get()};
  in.cards = {{"Alice", open(SoftHsmFixture::kKraCard1)}};
  auto good = ceremony::ProveRoundTrip(in);  // the control: Alice's card is intact
  ASSERT_TRUE(good.ok()) << good.status();
  in.cards.push_back({"Bob", open(SoftHsmFixture::kKraCard2)});
  auto proof = ceremony::ProveRoundTrip(in);
  ASSERT_FALSE(proof.ok());
  const std::string m(proof.status().message());
  EXPECT_TRUE(Contains(m, "card \"kra-card-2\" (Bob) did not recover the throwaway key")) << m;
  EXPECT_TRUE(Contains(m, "is not its key")) << m;
}

TEST_F(CeremonyRunTest, SubordinateThenInstallWithAParentCaMadeByOpenssl) {
  const std::string sub = StrCat(R"([ceremony]
name = "Test subordinate"
kind = "subordinate"
witnesses = ["Wanda Witness"]
transcript = "sub/transcript.json"

[ca]
token = "pkcs11:token=keywarden-ca"
key_label = "ca-issuing"
key_algorithm = "rsa3072"
subject = "CN=Test Issuing CA,O=keywarden test"
request = "sub/ca.csr"
)");
  auto r = Run(Write(sub, "sub.toml"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  // The transcript is signed by the CA key and verifies with the request's key.
  auto v = Keywarden("ceremony verify " + tmp_.File("sub/transcript.json"));
  EXPECT_EQ(v.exit_code, 0) << v.output;
  EXPECT_TRUE(Contains(v.output, "ca.csr (request")) << v.output;
  // openssl agrees: the signature verifies with the public key in the request.
  auto sig = RunCommand(
      "cd " + tmp_.File("sub") +
      " && python3 -c 'import json,base64; f=json.load(open(\"transcript.json\")); "
      "open(\"body.bin\",\"wb\").write(json.dumps(f[\"transcript\"],sort_keys=True,"
      "separators=(\",\",\":\"),ensure_ascii=False).encode()); "
      "open(\"sig.bin\",\"wb\").write(base64.b64decode(f[\"signature\"][\"value\"]))' && "
      "openssl req -in ca.csr -pubkey -noout > pub.pem && "
      "openssl dgst -sha256 -verify pub.pem -signature sig.bin body.bin && rm body.bin sig.bin "
      "pub.pem");
  EXPECT_TRUE(Contains(sig.output, "Verified OK")) << sig.output;

  // The parent CA: openssl, in software.
  const std::string d = tmp_.path();
  ASSERT_EQ(RunCommand("cd " + d +
                       " && openssl req -x509 -newkey rsa:3072 -nodes -keyout parent.key -out "
                       "parent.pem -days 3650 -subj '/CN=Parent Root' 2>&1")
                .exit_code,
            0);
  WriteFile(tmp_.File("ext.cnf"),
            "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign,"
            "digitalSignature\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n");
  auto sign = RunCommand("cd " + d +
                         " && openssl x509 -req -in sub/ca.csr -CA parent.pem -CAkey parent.key "
                         "-CAcreateserial -days 1825 -extfile ext.cnf -out issued.pem 2>&1");
  ASSERT_EQ(sign.exit_code, 0) << sign.output;

  const std::string install = R"([ceremony]
name = "Test subordinate install"
kind = "subordinate-install"
witnesses = ["Wanda Witness"]
transcript = "inst/transcript.json"

[ca]
name = "Test Issuing CA"
token = "pkcs11:token=keywarden-ca"
key_label = "ca-issuing"
issued_certificate = "issued.pem"
parent_chain = "parent.pem"
certificate = "inst/ca.pem"
chain = "inst/chain.pem"

[kra]
count = 1
key_algorithm = "rsa3072"
archival_scheme = "aes256-rsa-oaep"

[[kra.card]]
token = "pkcs11:token=kra-card-3"
holder = "Carol"
subject = "CN=KRA Carol"
certificate = "inst/carol.pem"

[config]
fragment = "inst/fragment.toml"
)";
  auto r2 = Run(Write(install, "install.toml"));
  ASSERT_EQ(r2.exit_code, 0) << r2.output;
  auto chain = RunCommand("openssl verify -CAfile " + d + "/parent.pem -untrusted " + d +
                          "/inst/ca.pem " + d + "/inst/carol.pem");
  EXPECT_EQ(chain.exit_code, 0) << chain.output;
  const std::string t = ReadText(tmp_.File("inst/transcript.json"));
  EXPECT_TRUE(Contains(t, "\"scheme\": \"aes256-rsa-oaep\"")) << t;
  EXPECT_TRUE(Contains(t, "\"content_cipher\": \"aes-256-cbc\"")) << t;
  EXPECT_EQ(Keywarden("ceremony verify " + tmp_.File("inst/transcript.json") + " --ca-cert " +
                      tmp_.File("inst/ca.pem"))
                .exit_code,
            0);
  EXPECT_TRUE(Contains(ReadText(tmp_.File("inst/fragment.toml")), "chain = \"chain.pem\""));
}

}  // namespace
}  // namespace keywarden::testing
