// Subject alternative names and the Windows template extensions: expected
// encodings are literal DER worked out by hand; decoding is checked with
// OpenSSL's own GENERAL_NAMES parser.
#include "pki/alt_names.h"

#include <openssl/x509v3.h>

#include <gtest/gtest.h>

namespace keywarden::pki {
namespace {

using Bytes = std::vector<uint8_t>;

TEST(TemplateExtensionTest, V2IsTheOidAndBothVersions) {
  // SEQUENCE { OID 1.3.6.1.4.1.311.21.8.1.1, INTEGER 100, INTEGER 0 }
  EXPECT_EQ(TemplateV2ExtensionValue("1.3.6.1.4.1.311.21.8.1.1", 100, 0),
            (Bytes{0x30, 0x13, 0x06, 0x0b, 0x2b, 0x06, 0x01, 0x04, 0x01, 0x82, 0x37,
                   0x15, 0x08, 0x01, 0x01, 0x02, 0x01, 0x64, 0x02, 0x01, 0x00}));
  // 200 needs a leading zero octet to stay positive.
  EXPECT_EQ(TemplateV2ExtensionValue("1.2.3", 200, 1),
            (Bytes{0x30, 0x0b, 0x06, 0x02, 0x2a, 0x03, 0x02, 0x02, 0x00, 0xc8, 0x02, 0x01, 0x01}));
  EXPECT_TRUE(TemplateV2ExtensionValue("not an oid", 1, 0).empty());
}

TEST(TemplateExtensionTest, V1IsTheNameAsABmpString) {
  EXPECT_EQ(TemplateV1ExtensionValue("User"),
            (Bytes{0x1e, 0x08, 0x00, 0x55, 0x00, 0x73, 0x00, 0x65, 0x00, 0x72}));
  // U+00E9 in the BMP; U+1F600 as a surrogate pair.
  EXPECT_EQ(TemplateV1ExtensionValue("\xc3\xa9\xf0\x9f\x98\x80"),
            (Bytes{0x1e, 0x06, 0x00, 0xe9, 0xd8, 0x3d, 0xde, 0x00}));
  EXPECT_TRUE(TemplateV1ExtensionValue("bad \xc3").empty());
  EXPECT_TRUE(TemplateV1ExtensionValue("\xed\xa0\x80").empty());  // an encoded surrogate
  EXPECT_TRUE(TemplateV1ExtensionValue("").empty());
}

TEST(AltNamesTest, EncodedNamesReadBackWithOpenSsl) {
  AltNames names;
  names.upns = {"alice@corp.example"};
  names.emails = {"alice@example.com"};
  names.dns_names = {"alice.example"};
  auto der = EncodeAltNames(names);
  ASSERT_TRUE(der.ok()) << der.status();
  const unsigned char* p = der->data();
  GENERAL_NAMES* decoded = d2i_GENERAL_NAMES(nullptr, &p, static_cast<long>(der->size()));
  ASSERT_NE(decoded, nullptr);
  EXPECT_EQ(p, der->data() + der->size());
  ASSERT_EQ(sk_GENERAL_NAME_num(decoded), 3);
  const GENERAL_NAME* upn = sk_GENERAL_NAME_value(decoded, 0);
  ASSERT_EQ(upn->type, GEN_OTHERNAME);
  char oid[64];
  OBJ_obj2txt(oid, sizeof oid, upn->d.otherName->type_id, 1);
  EXPECT_STREQ(oid, "1.3.6.1.4.1.311.20.2.3");
  ASSERT_EQ(upn->d.otherName->value->type, V_ASN1_UTF8STRING);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(
                            ASN1_STRING_get0_data(upn->d.otherName->value->value.utf8string)),
                        18),
            "alice@corp.example");
  EXPECT_EQ(sk_GENERAL_NAME_value(decoded, 1)->type, GEN_EMAIL);
  EXPECT_EQ(sk_GENERAL_NAME_value(decoded, 2)->type, GEN_DNS);
  GENERAL_NAMES_free(decoded);

  AltNames bad;
  bad.emails = {std::string("a\0b@example.com", 15)};
  EXPECT_FALSE(EncodeAltNames(bad).ok());
  EXPECT_FALSE(EncodeAltNames(AltNames{}).ok());
  AltNames other;
  other.others = {"URI https://x"};
  EXPECT_FALSE(EncodeAltNames(other).ok());
}

// A name with an embedded NUL ("alice@example.com\0.evil") is refused, not cut.
TEST(AltNamesTest, ARequestedNameWithANulIsRefused) {
  ossl::UniquePtr<X509_REQ> req(X509_REQ_new());
  GENERAL_NAMES* names = GENERAL_NAMES_new();
  GENERAL_NAME* email = GENERAL_NAME_new();
  ASN1_IA5STRING* text = ASN1_IA5STRING_new();
  const char value[] = "alice@example.com\0.evil";
  ASN1_STRING_set(text, value, sizeof value - 1);
  GENERAL_NAME_set0_value(email, GEN_EMAIL, text);
  sk_GENERAL_NAME_push(names, email);
  STACK_OF(X509_EXTENSION)* exts = sk_X509_EXTENSION_new_null();
  X509V3_add1_i2d(&exts, NID_subject_alt_name, names, 0, 0);
  X509_REQ_add_extensions(req.get(), exts);
  sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
  GENERAL_NAMES_free(names);
  auto read = RequestAltNames(req.get());
  ASSERT_FALSE(read.ok());
  EXPECT_NE(read.status().message().find("NUL"), std::string::npos) << read.status();

  // And a request without extensions has no names.
  ossl::UniquePtr<X509_REQ> plain(X509_REQ_new());
  auto none = RequestAltNames(plain.get());
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_TRUE(none->empty());
  EXPECT_FALSE(RequestExtensionValue(plain.get(), kSmimeCapabilitiesOid).has_value());
}

}  // namespace
}  // namespace keywarden::pki
