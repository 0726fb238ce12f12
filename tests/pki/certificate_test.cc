#include "pki/certificate.h"

#include <sys/stat.h>

#include <gtest/gtest.h>

#include "pki/files.h"
#include "tests/test_util.h"

namespace keywarden::testing {
namespace {

TEST(ParseNameTest, Rfc4514ListsTheMostSpecificRdnFirst) {
  auto name = pki::ParseName("CN=Demo Root CA,O=keywarden,C=DE");
  ASSERT_TRUE(name.ok()) << name.status();
  ASSERT_EQ(X509_NAME_entry_count(name->get()), 3);
  // DER order: C, O, CN.
  EXPECT_EQ(OBJ_obj2nid(X509_NAME_ENTRY_get_object(X509_NAME_get_entry(name->get(), 0))),
            NID_countryName);
  EXPECT_EQ(pki::FormatName(name->get()), "CN=Demo Root CA,O=keywarden,C=DE");
}

TEST(ParseNameTest, SlashFormIsInEncodingOrderAndEscapesWork) {
  auto slash = pki::ParseName("/C=DE/O=keywarden/CN=Demo");
  ASSERT_TRUE(slash.ok());
  EXPECT_EQ(pki::FormatName(slash->get()), "CN=Demo,O=keywarden,C=DE");
  auto escaped = pki::ParseName("CN=Smith\\, John,O=Example");
  ASSERT_TRUE(escaped.ok()) << escaped.status();
  EXPECT_EQ(X509_NAME_entry_count(escaped->get()), 2);
}

TEST(ParseNameTest, BadNamesSayWhatIsWrong) {
  auto unknown = pki::ParseName("XX=1");
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(unknown.status().message().find("unknown attribute type \"XX\""),
            absl::string_view::npos);
  EXPECT_FALSE(pki::ParseName("CN").ok());
  EXPECT_FALSE(pki::ParseName("CN=a,,O=b").ok());
  EXPECT_FALSE(pki::ParseName("CN=a\\").ok());
  auto too_long = pki::ParseName("C=DEU");  // countryName is two letters
  EXPECT_FALSE(too_long.ok());
}

// The value of the only attribute of a one-entry name, as bytes.
std::string OnlyValue(const X509_NAME* name) {
  const ASN1_STRING* v = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(name, 0));
  return std::string(reinterpret_cast<const char*>(ASN1_STRING_get0_data(v)),
                     static_cast<size_t>(ASN1_STRING_length(v)));
}

TEST(ParseNameTest, HexPairsAndEscapedSpacesAreRfc4514) {
  auto hex = pki::ParseName("CN=officer\\00evil");
  ASSERT_TRUE(hex.ok()) << hex.status();
  EXPECT_EQ(OnlyValue(hex->get()), std::string("officer\0evil", 12));
  auto spaces = pki::ParseName("CN=\\ lead and trail\\ ");
  ASSERT_TRUE(spaces.ok()) << spaces.status();
  EXPECT_EQ(OnlyValue(spaces->get()), " lead and trail ");
  auto plain = pki::ParseName("CN=  trimmed  ");
  ASSERT_TRUE(plain.ok());
  EXPECT_EQ(OnlyValue(plain->get()), "trimmed");
}

TEST(ParseNameTest, AMultiValuedRdnIsOneRdn) {
  auto name = pki::ParseName("OU=Unit+CN=Someone,O=Example");
  ASSERT_TRUE(name.ok()) << name.status();
  ASSERT_EQ(X509_NAME_entry_count(name->get()), 3);
  // O, then one RDN of two values.
  EXPECT_EQ(X509_NAME_ENTRY_set(X509_NAME_get_entry(name->get(), 1)),
            X509_NAME_ENTRY_set(X509_NAME_get_entry(name->get(), 2)));
  EXPECT_NE(X509_NAME_ENTRY_set(X509_NAME_get_entry(name->get(), 0)),
            X509_NAME_ENTRY_set(X509_NAME_get_entry(name->get(), 1)));
  EXPECT_EQ(pki::FormatName(name->get()), "OU=Unit+CN=Someone,O=Example");
}

// Principals are compared as formatted strings: a name formats to a string
// that parses back to the same name, control bytes included (a NUL cannot
// shorten a name: "officer\0evil" is not "officer"). Found by name_fuzzer.
TEST(ParseNameTest, FormattingRoundTrips) {
  for (const std::string& text :
       {std::string("CN=\x01\x00`p\x00\x00\x0c"
                    "2 lead",
                    16),
        std::string("CN=officer\0evil,O=x", 19), std::string("CN=a\\\\b"),
        std::string("/O=z/OU=x+CN=y"), std::string("CN=a\\,b+OU=x,O=y"),
        std::string("CN=\\#23,O=\\ lead"), std::string("CN=caf\xc3\xa9,O=x")}) {
    auto name = pki::ParseName(text);
    ASSERT_TRUE(name.ok()) << name.status();
    const std::string once = pki::FormatName(name->get());
    auto again = pki::ParseName(once);
    ASSERT_TRUE(again.ok()) << once << ": " << again.status();
    EXPECT_EQ(pki::FormatName(again->get()), once);
    EXPECT_EQ(X509_NAME_cmp(name->get(), again->get()), 0) << once;
  }
  auto nul = pki::ParseName(std::string("CN=officer\0evil,O=x", 19));
  ASSERT_TRUE(nul.ok());
  EXPECT_EQ(pki::FormatName(nul->get()), "CN=officer\\00evil,O=x");
}

TEST(RandomSerialTest, SerialsArePositiveFullLengthAndDistinct) {
  auto a = pki::RandomSerial(), b = pki::RandomSerial();
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(ASN1_INTEGER_cmp(a->get(), b->get()) == 0, false);
  ossl::UniquePtr<BIGNUM> bn(ASN1_INTEGER_to_BN(a->get(), nullptr));
  EXPECT_FALSE(BN_is_negative(bn.get()));
  EXPECT_GE(BN_num_bits(bn.get()), 121);  // 16 bytes, first byte non-zero
  EXPECT_FALSE(pki::RandomSerial(4).ok());
}

TEST(RootCertificateTest, SoftwareKeyRootPassesOpensslVerify) {
  auto key = SoftwareRsaKey();
  auto subject = pki::ParseName("CN=Software Root");
  pki::RootCaOptions options;
  options.subject = subject->get();
  auto cert = pki::MakeSelfSignedRoot(nullptr, key.get(), options);
  ASSERT_TRUE(cert.ok()) << cert.status();
  TempDir dir;
  WriteFile(dir.File("ca.pem"), pki::ToPem(cert->get()));
  auto r = RunCommand("openssl verify -CAfile " + dir.File("ca.pem") + " " + dir.File("ca.pem"));
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(pki::Sha1Thumbprint(cert->get()).size(), 40u);
}

TEST(RootCertificateTest, EmptySubjectAndSillyValidityAreRefused) {
  auto key = SoftwareRsaKey();
  ossl::UniquePtr<X509_NAME> empty(X509_NAME_new());
  pki::RootCaOptions options;
  options.subject = empty.get();
  EXPECT_EQ(pki::MakeSelfSignedRoot(nullptr, key.get(), options).status().code(),
            absl::StatusCode::kInvalidArgument);
  auto subject = pki::ParseName("CN=x");
  options.subject = subject->get();
  options.validity_days = 0;
  EXPECT_EQ(pki::MakeSelfSignedRoot(nullptr, key.get(), options).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(FilesTest, RefusesToOverwriteAndReplacesOnlyWhenAsked) {
  TempDir dir;
  const std::string path = dir.File("out.pem");
  ASSERT_TRUE(pki::WriteFileAtomically(path, std::string("one"), pki::Overwrite::kRefuse).ok());
  auto again = pki::WriteFileAtomically(path, std::string("two"), pki::Overwrite::kRefuse);
  EXPECT_EQ(again.code(), absl::StatusCode::kAlreadyExists);
  auto bytes = pki::ReadFileBytes(path);
  ASSERT_TRUE(bytes.ok());
  EXPECT_EQ(std::string(bytes->begin(), bytes->end()), "one");
  ASSERT_TRUE(
      pki::WriteFileAtomically(path, std::string("two"), pki::Overwrite::kReplace, 0600).ok());
  bytes = pki::ReadFileBytes(path);
  EXPECT_EQ(std::string(bytes->begin(), bytes->end()), "two");
  struct stat st;
  ASSERT_EQ(stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  // No temporary files left behind.
  auto ls = RunCommand("ls -A " + dir.path());
  EXPECT_EQ(ls.output, "out.pem\n");
}

TEST(FilesTest, MissingDirectoryAndOversizedReadsAreClearErrors) {
  auto st =
      pki::WriteFileAtomically("/nonexistent-dir/x", std::string("x"), pki::Overwrite::kRefuse);
  EXPECT_FALSE(st.ok());
  EXPECT_NE(st.message().find("/nonexistent-dir"), absl::string_view::npos) << st;
  TempDir dir;
  WriteFile(dir.File("big"), std::string(100, 'x'));
  EXPECT_EQ(pki::ReadFileBytes(dir.File("big"), 10).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(pki::ReadFileBytes(dir.File("missing")).status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace keywarden::testing
