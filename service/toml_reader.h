// Strict reading of a TOML file with toml++: every table is read by a
// Section that knows its full key path ("hsm", "template[2]"), so any
// message names the file, the line and the key; unknown keys are errors.
// Used by keywarden.toml (service/config.cc) and by ceremony files
// (cli/ceremony). Indices in key paths count from 1, as operators count
// entries in a file: "template[2]" is the second [[template]].
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <exception>
#include <filesystem>
#include <initializer_list>
#include <limits>
#include <string>
#include <string_view>
#include <vector>

#include <toml++/toml.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "hsm/strings.h"
#include "service/config.h"

#ifndef KW_RETURN_IF_ERROR
#define KW_RETURN_IF_ERROR(expr)             \
  do {                                       \
    absl::Status kw_status_ = (expr);        \
    if (!kw_status_.ok()) return kw_status_; \
  } while (0)
#endif

namespace keywarden::service::strict_toml {

using Seconds = std::chrono::seconds;
using Choices = std::initializer_list<std::string_view>;

inline constexpr int kIntMax = std::numeric_limits<int>::max();

inline std::string JoinChoices(Choices choices) {
  std::string out;
  for (std::string_view c : choices) {
    if (!out.empty()) out += ", ";
    out += c;
  }
  return out;
}

inline bool OneOf(std::string_view value, Choices choices) {
  return std::find(choices.begin(), choices.end(), value) != choices.end();
}

inline const char* TypeName(toml::node_type type) {
  switch (type) {
    case toml::node_type::none:
      return "nothing";
    case toml::node_type::table:
      return "a table";
    case toml::node_type::array:
      return "an array";
    case toml::node_type::string:
      return "a string";
    case toml::node_type::integer:
      return "an integer";
    case toml::node_type::floating_point:
      return "a float";
    case toml::node_type::boolean:
      return "a boolean";
    case toml::node_type::date:
      return "a date";
    case toml::node_type::time:
      return "a time";
    case toml::node_type::date_time:
      return "a date-time";
  }
  return "an unknown type";
}

inline uint32_t NodeLine(const toml::node& node) {
  return node.source().begin.line;
}

// The file being parsed: names it in messages and resolves relative paths.
class Context {
 public:
  Context(std::string source, std::string base_dir)
      : source_(std::move(source)), base_dir_(std::move(base_dir)) {}

  // "file:line: message", or "file: message" when no line is known.
  absl::Status Error(uint32_t line, std::string_view message) const {
    if (line == 0) return absl::InvalidArgumentError(StrCat(source_, ": ", message));
    return absl::InvalidArgumentError(StrCat(source_, ":", line, ": ", message));
  }

  std::string ResolvePath(const std::string& path) const {
    if (path.empty() || base_dir_.empty() || path.front() == '/') return path;
    return (std::filesystem::path(base_dir_) / path).lexically_normal().string();
  }

 private:
  std::string source_;
  std::string base_dir_;
};

// One TOML table (a [section], a [[template]] entry, or the root). A missing
// section is a Section without a table: every key in it reads as absent.
class Section {
 public:
  Section(const Context& ctx, const toml::table* table, std::string path)
      : ctx_(&ctx), table_(table), path_(std::move(path)) {}

  const Context& ctx() const { return *ctx_; }
  const std::string& path() const { return path_; }
  uint32_t line() const { return table_ != nullptr ? NodeLine(*table_) : 0; }

  std::string KeyPath(std::string_view key) const {
    return path_.empty() ? std::string(key) : StrCat(path_, ".", key);
  }

  const toml::node* Find(std::string_view key) const {
    return table_ != nullptr ? table_->get(key) : nullptr;
  }
  bool Has(std::string_view key) const { return Find(key) != nullptr; }

  // The line of `key` (where the key is written), else of the section.
  uint32_t LineOf(std::string_view key) const {
    if (table_ == nullptr) return 0;
    auto it = table_->find(key);
    if (it == table_->end()) return line();
    if (uint32_t l = it->first.source().begin.line; l != 0) return l;
    if (uint32_t l = NodeLine(it->second); l != 0) return l;
    return line();
  }

  // `key "<path>": <what>` at the key's line.
  absl::Status Invalid(std::string_view key, std::string_view what) const {
    return ctx_->Error(LineOf(key), StrCat("key \"", KeyPath(key), "\": ", what));
  }
  absl::Status InvalidAt(uint32_t line, std::string_view key, std::string_view what) const {
    return ctx_->Error(line != 0 ? line : LineOf(key),
                       StrCat("key \"", KeyPath(key), "\": ", what));
  }

  absl::Status Missing(std::string_view key) const {
    return ctx_->Error(line(), StrCat("missing required key \"", KeyPath(key), "\""));
  }

  // Every key of the table must be in `allowed`; the first offender (by line)
  // is reported.
  absl::Status CheckKeys(Choices allowed) const {
    if (table_ == nullptr) return absl::OkStatus();
    const toml::key* worst = nullptr;
    const toml::node* worst_node = nullptr;
    uint32_t worst_line = 0;
    for (auto&& [key, node] : *table_) {
      if (OneOf(key.str(), allowed)) continue;
      uint32_t l = key.source().begin.line;
      if (l == 0) l = NodeLine(node);
      if (worst == nullptr || (l != 0 && (worst_line == 0 || l < worst_line))) {
        worst = &key;
        worst_node = &node;
        worst_line = l;
      }
    }
    if (worst == nullptr) return absl::OkStatus();
    bool is_table = worst_node->is_table() || worst_node->is_array_of_tables();
    return ctx_->Error(worst_line != 0 ? worst_line : line(),
                       StrCat("unknown ", is_table ? "table" : "key", " \"", KeyPath(worst->str()),
                              "\" (expected one of: ", JoinChoices(allowed), ")"));
  }

  absl::Status WrongType(std::string_view key, const toml::node& node,
                         std::string_view expected) const {
    return Invalid(key, StrCat("expected ", expected, ", got ", TypeName(node.type())));
  }

  // Sub-table: absent -> a Section without a table.
  absl::StatusOr<Section> Table(std::string_view key) const {
    const toml::node* node = Find(key);
    if (node == nullptr) return Section(*ctx_, nullptr, KeyPath(key));
    const toml::table* t = node->as_table();
    if (t == nullptr) return WrongType(key, *node, StrCat("a table ([", KeyPath(key), "])"));
    return Section(*ctx_, t, KeyPath(key));
  }

  // Array of tables ([[key]]): one Section per entry, "key[1]", "key[2]", ...
  absl::Status Tables(std::string_view key, std::vector<Section>& out) const {
    const toml::node* node = Find(key);
    if (node == nullptr) return absl::OkStatus();
    const toml::array* a = node->as_array();
    if (a == nullptr || !a->is_array_of_tables()) {
      // An empty array is not an array of tables to toml++, but it is harmless.
      if (a != nullptr && a->empty()) return absl::OkStatus();
      return WrongType(key, *node, StrCat("an array of tables ([[", KeyPath(key), "]])"));
    }
    for (size_t i = 0; i < a->size(); ++i) {
      out.emplace_back(*ctx_, a->get(i)->as_table(), StrCat(KeyPath(key), "[", i + 1, "]"));
    }
    return absl::OkStatus();
  }

  absl::Status ReadString(std::string_view key, std::string& out) const {
    const toml::node* node = Find(key);
    if (node == nullptr) return absl::OkStatus();
    const toml::value<std::string>* v = node->as_string();
    if (v == nullptr) return WrongType(key, *node, "a string");
    out = v->get();
    return absl::OkStatus();
  }

  // Present or not, the value must not end up empty.
  absl::Status ReadRequiredString(std::string_view key, std::string& out) const {
    KW_RETURN_IF_ERROR(ReadString(key, out));
    if (!Has(key)) return Missing(key);
    if (out.empty()) return Invalid(key, "must not be empty");
    return absl::OkStatus();
  }

  absl::Status ReadChoice(std::string_view key, Choices choices, std::string& out) const {
    std::string value = out;
    KW_RETURN_IF_ERROR(ReadString(key, value));
    if (!OneOf(value, choices)) {
      return Invalid(key, StrCat("\"", value, "\" is not one of: ", JoinChoices(choices)));
    }
    out = std::move(value);
    return absl::OkStatus();
  }

  absl::Status ReadInt(std::string_view key, int64_t min, int64_t max, int& out) const {
    const toml::node* node = Find(key);
    if (node == nullptr) return absl::OkStatus();
    const toml::value<int64_t>* v = node->as_integer();
    if (v == nullptr) return WrongType(key, *node, "an integer");
    int64_t n = v->get();
    if (n < min || n > max) {
      std::string range = max != kIntMax ? StrCat(min, "..", max)
                          : n < min      ? StrCat("at least ", min)
                                         : StrCat("at most ", max);
      return Invalid(key, StrCat(n, " is out of range (", range, ")"));
    }
    out = static_cast<int>(n);
    return absl::OkStatus();
  }

  absl::Status ReadBool(std::string_view key, bool& out) const {
    const toml::node* node = Find(key);
    if (node == nullptr) return absl::OkStatus();
    const toml::value<bool>* v = node->as_boolean();
    if (v == nullptr) return WrongType(key, *node, "a boolean (true or false)");
    out = v->get();
    return absl::OkStatus();
  }

  absl::Status ReadDuration(std::string_view key, Seconds& out) const {
    const toml::node* node = Find(key);
    if (node == nullptr) return absl::OkStatus();
    const toml::value<std::string>* v = node->as_string();
    if (v == nullptr) {
      return WrongType(key, *node, "a duration string such as \"90s\", \"15m\", \"12h\" or \"7d\"");
    }
    absl::StatusOr<Seconds> d = ParseDuration(v->get());
    if (!d.ok()) return Invalid(key, std::string(d.status().message()));
    out = *d;
    return absl::OkStatus();
  }

  // An array of strings; `lines` (if given) gets each element's line.
  absl::Status ReadStrings(std::string_view key, std::vector<std::string>& out,
                           std::vector<uint32_t>* lines = nullptr) const {
    const toml::node* node = Find(key);
    if (node == nullptr) return absl::OkStatus();
    const toml::array* a = node->as_array();
    if (a == nullptr) return WrongType(key, *node, "an array of strings");
    std::vector<std::string> values;
    std::vector<uint32_t> value_lines;
    for (size_t i = 0; i < a->size(); ++i) {
      const toml::node& element = *a->get(i);
      const toml::value<std::string>* v = element.as_string();
      if (v == nullptr) {
        std::string element_key = StrCat(key, "[", i + 1, "]");
        return InvalidAt(NodeLine(element), element_key,
                         StrCat("expected a string, got ", TypeName(element.type())));
      }
      values.push_back(v->get());
      value_lines.push_back(NodeLine(element) != 0 ? NodeLine(element) : LineOf(key));
    }
    out = std::move(values);
    if (lines != nullptr) *lines = std::move(value_lines);
    return absl::OkStatus();
  }

  // An array of strings, each one of `choices` (or accepted by `also`), no
  // repeats.
  absl::Status ReadStringSet(std::string_view key, Choices choices, bool (*also)(std::string_view),
                             std::string_view also_text, std::vector<std::string>& out) const {
    std::vector<std::string> values = out;
    std::vector<uint32_t> lines;
    KW_RETURN_IF_ERROR(ReadStrings(key, values, &lines));
    for (size_t i = 0; i < values.size() && i < lines.size(); ++i) {
      const std::string& v = values[i];
      if (!OneOf(v, choices) && (also == nullptr || !also(v))) {
        return InvalidAt(lines[i], key,
                         StrCat("\"", v, "\" is not one of: ", JoinChoices(choices), also_text));
      }
      if (std::find(values.begin(), values.begin() + static_cast<std::ptrdiff_t>(i), v) !=
          values.begin() + static_cast<std::ptrdiff_t>(i)) {
        return InvalidAt(lines[i], key, StrCat("\"", v, "\" is listed twice"));
      }
    }
    out = std::move(values);
    return absl::OkStatus();
  }

 private:
  const Context* ctx_;
  const toml::table* table_;
  std::string path_;
};

// Parses TOML text; a syntax error is "source:line:column: TOML syntax error: ...".
// Debian's toml++ is built with exceptions only: none leaves here.
inline absl::StatusOr<toml::table> Parse(std::string_view text, const std::string& source) {
  try {
    return toml::parse(text, std::string_view(source));
  } catch (const toml::parse_error& e) {
    const toml::source_position& at = e.source().begin;
    return absl::InvalidArgumentError(
        StrCat(source, ":", at.line, ":", at.column, ": TOML syntax error: ", e.description()));
  } catch (const std::exception& e) {
    return absl::InternalError(StrCat(source, ": reading TOML: ", e.what()));
  }
}

}  // namespace keywarden::service::strict_toml
