// cRLDistributionPoints and authorityInfoAccess values: checked against DER
// written out by hand from RFC 5280's ASN.1 and decoded with OpenSSL's own
// parsers (not keywarden's).
#include "pki/publication_extensions.h"

#include <gtest/gtest.h>
#include <openssl/x509v3.h>

#include <string>
#include <vector>

namespace keywarden::pki {
namespace {

std::vector<uint8_t> Bytes(std::initializer_list<int> values) {
  std::vector<uint8_t> out;
  for (int v : values) out.push_back(static_cast<uint8_t>(v));
  return out;
}
std::vector<uint8_t> Ascii(const std::string& s) {
  return std::vector<uint8_t>(s.begin(), s.end());
}
std::vector<uint8_t> Cat(std::vector<uint8_t> a, const std::vector<uint8_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

std::string Uri(const GENERAL_NAME* name) {
  if (name == nullptr || name->type != GEN_URI) return "(not a URI)";
  const ASN1_IA5STRING* s = name->d.uniformResourceIdentifier;
  return std::string(reinterpret_cast<const char*>(ASN1_STRING_get0_data(s)),
                     static_cast<size_t>(ASN1_STRING_length(s)));
}

TEST(PublicationExtensionsTest, OneCrlUrlIsTheDerOfRfc5280) {
  // SEQUENCE { SEQUENCE { [0] { [0] { [6] "http://a/b" } } } }
  const auto expected =
      Cat(Bytes({0x30, 0x12, 0x30, 0x10, 0xa0, 0x0e, 0xa0, 0x0c, 0x86, 0x0a}), Ascii("http://a/b"));
  EXPECT_EQ(CrlDistributionPointsValue({"http://a/b"}), expected);
}

TEST(PublicationExtensionsTest, OneCaIssuersUrlIsTheDerOfRfc5280) {
  // SEQUENCE { SEQUENCE { OID 1.3.6.1.5.5.7.48.2, [6] "http://a/c" } }
  const auto whole = Cat(Bytes({0x30, 0x18, 0x30, 0x16, 0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05,
                                0x07, 0x30, 0x02, 0x86, 0x0a}),
                         Ascii("http://a/c"));
  EXPECT_EQ(AuthorityInfoAccessValue({"http://a/c"}), whole);
}

TEST(PublicationExtensionsTest, SeveralCrlUrlsAreOneDistributionPointAsOpensslReadsIt) {
  const std::vector<std::string> urls = {"http://pki.example.com/ca.crl",
                                         "http://[2001:db8::1]:8080/a%20b.crl"};
  const auto der = CrlDistributionPointsValue(urls);
  const unsigned char* p = der.data();
  CRL_DIST_POINTS* points = d2i_CRL_DIST_POINTS(nullptr, &p, static_cast<long>(der.size()));
  ASSERT_NE(points, nullptr);
  EXPECT_EQ(p, der.data() + der.size());
  ASSERT_EQ(sk_DIST_POINT_num(points), 1);
  const DIST_POINT* point = sk_DIST_POINT_value(points, 0);
  ASSERT_NE(point->distpoint, nullptr);
  EXPECT_EQ(point->distpoint->type, 0);  // fullName
  EXPECT_EQ(point->reasons, nullptr);
  EXPECT_EQ(point->CRLissuer, nullptr);
  const GENERAL_NAMES* names = point->distpoint->name.fullname;
  ASSERT_EQ(sk_GENERAL_NAME_num(names), 2);
  EXPECT_EQ(Uri(sk_GENERAL_NAME_value(names, 0)), urls[0]);
  EXPECT_EQ(Uri(sk_GENERAL_NAME_value(names, 1)), urls[1]);
  CRL_DIST_POINTS_free(points);
}

TEST(PublicationExtensionsTest, EachCaIssuersUrlIsAnAccessDescriptionAsOpensslReadsIt) {
  const std::vector<std::string> urls = {"http://pki.example.com/ca.crt",
                                         "http://backup.example.com/ca.crt"};
  const auto der = AuthorityInfoAccessValue(urls);
  const unsigned char* p = der.data();
  AUTHORITY_INFO_ACCESS* aia =
      d2i_AUTHORITY_INFO_ACCESS(nullptr, &p, static_cast<long>(der.size()));
  ASSERT_NE(aia, nullptr);
  ASSERT_EQ(sk_ACCESS_DESCRIPTION_num(aia), 2);
  for (int i = 0; i < 2; ++i) {
    const ACCESS_DESCRIPTION* d = sk_ACCESS_DESCRIPTION_value(aia, i);
    EXPECT_EQ(OBJ_obj2nid(d->method), NID_ad_ca_issuers);
    EXPECT_EQ(Uri(d->location), urls[static_cast<size_t>(i)]);
  }
  AUTHORITY_INFO_ACCESS_free(aia);
}

TEST(PublicationExtensionsTest, NoUrlOrANonAsciiOneEncodesNothing) {
  EXPECT_TRUE(CrlDistributionPointsValue({}).empty());
  EXPECT_TRUE(AuthorityInfoAccessValue({}).empty());
  EXPECT_TRUE(CrlDistributionPointsValue({"http://a/\xc3\xa9.crl"}).empty());
  EXPECT_TRUE(AuthorityInfoAccessValue({"http://a/ok.crt", "http://a/\xff"}).empty());
  EXPECT_TRUE(CrlDistributionPointsValue({""}).empty());
}

}  // namespace
}  // namespace keywarden::pki
