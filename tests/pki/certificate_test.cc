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
