#include "pki/publication_extensions.h"

#include <algorithm>

#include "pki/der.h"

namespace keywarden::pki {
namespace {

constexpr uint8_t kUriTag = der::ContextPrimitive(6);  // GeneralName uniformResourceIdentifier

bool Ia5(const std::string& s) {
  return !s.empty() && std::all_of(s.begin(), s.end(),
                                   [](char c) { return static_cast<unsigned char>(c) < 0x80; });
}

der::Bytes Uri(const std::string& url) {
  return der::Tlv(kUriTag, std::span(reinterpret_cast<const uint8_t*>(url.data()), url.size()));
}

}  // namespace

std::vector<uint8_t> CrlDistributionPointsValue(const std::vector<std::string>& urls) {
  if (urls.empty()) return {};
  der::Bytes names;
  for (const auto& url : urls) {
    if (!Ia5(url)) return {};
    der::Bytes one = Uri(url);
    names.insert(names.end(), one.begin(), one.end());
  }
  // DistributionPoint { distributionPoint [0] { fullName [0] GeneralNames } }
  // (implicit tags: fullName's [0] replaces the GeneralNames SEQUENCE tag,
  // the CHOICE under distributionPoint makes the outer [0] explicit).
  der::Bytes full_name = der::Tlv(der::ContextConstructed(0), names);
  der::Bytes point_name = der::Tlv(der::ContextConstructed(0), full_name);
  der::Bytes point = der::Tlv(der::kSequence, point_name);
  return der::Tlv(der::kSequence, point);
}

std::vector<uint8_t> AuthorityInfoAccessValue(const std::vector<std::string>& ca_issuers_urls) {
  if (ca_issuers_urls.empty()) return {};
  der::Bytes descriptions;
  for (const auto& url : ca_issuers_urls) {
    if (!Ia5(url)) return {};
    der::Bytes d = der::Tlv(der::kSequence, der::Concat({der::Oid(kCaIssuersOid), Uri(url)}));
    descriptions.insert(descriptions.end(), d.begin(), d.end());
  }
  return der::Tlv(der::kSequence, descriptions);
}

}  // namespace keywarden::pki
