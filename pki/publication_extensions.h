// Where relying parties find revocation and the issuer (RFC 5280): the
// extension values an issued certificate carries so that a verifier can
// download the CRL and the CA certificate by itself.
//   cRLDistributionPoints 2.5.29.31 (§4.2.1.13)
//   authorityInfoAccess   1.3.6.1.5.5.7.1.1 with caIssuers (§4.2.2.1)
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace keywarden::pki {

inline constexpr char kCrlDistributionPointsOid[] = "2.5.29.31";
inline constexpr char kAuthorityInfoAccessOid[] = "1.3.6.1.5.5.7.1.1";
inline constexpr char kCaIssuersOid[] = "1.3.6.1.5.5.7.48.2";

// The extnValue contents of cRLDistributionPoints: ONE DistributionPoint
// whose fullName lists every URL as a uniformResourceIdentifier -- the
// URLs are alternative locations of the same CRL (RFC 5280 §4.2.1.13;
// Windows CAs write their LDAP and HTTP locations the same way). No
// reasons and no cRLIssuer: the CA's full CRL covers every reason. Empty
// when `urls` is empty or a URL is not IA5 (7-bit ASCII) text.
std::vector<uint8_t> CrlDistributionPointsValue(const std::vector<std::string>& urls);

// The extnValue contents of authorityInfoAccess: one AccessDescription
// (id-ad-caIssuers, URI) per URL, in order. Empty when `urls` is empty or
// a URL is not IA5 text.
std::vector<uint8_t> AuthorityInfoAccessValue(const std::vector<std::string>& ca_issuers_urls);

}  // namespace keywarden::pki
