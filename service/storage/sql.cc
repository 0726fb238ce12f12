#include "service/storage/sql.h"

#include <charconv>

namespace keywarden::service::sql {

const char* DialectName(Dialect d) {
  return d == Dialect::kSqlite ? "SQLite" : "PostgreSQL";
}

bool Row::IsNull(size_t i) const {
  return i >= values_.size() || std::holds_alternative<std::monostate>(values_[i]);
}

int64_t Row::Int(size_t i) const {
  if (i >= values_.size()) return 0;
  const Value& v = values_[i];
  if (const int64_t* n = std::get_if<int64_t>(&v)) return *n;
  if (const std::string* s = std::get_if<std::string>(&v)) {
    int64_t n = 0;
    const auto [end, ec] = std::from_chars(s->data(), s->data() + s->size(), n);
    return ec == std::errc() && end == s->data() + s->size() ? n : 0;
  }
  return 0;
}

std::string Row::Text(size_t i) const {
  if (i >= values_.size()) return {};
  const Value& v = values_[i];
  if (const std::string* s = std::get_if<std::string>(&v)) return *s;
  if (const int64_t* n = std::get_if<int64_t>(&v)) return std::to_string(*n);
  if (const Bytes* b = std::get_if<Bytes>(&v)) return std::string(b->data.begin(), b->data.end());
  return {};
}

std::vector<uint8_t> Row::Blob(size_t i) const {
  if (i >= values_.size()) return {};
  const Value& v = values_[i];
  if (const Bytes* b = std::get_if<Bytes>(&v)) return b->data;
  if (const std::string* s = std::get_if<std::string>(&v)) return {s->begin(), s->end()};
  return {};
}

}  // namespace keywarden::service::sql
