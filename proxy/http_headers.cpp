#include "proxy/http_headers.hpp"

namespace accel {

namespace {
// ASCII only, as HTTP field names are; std::tolower would consult the locale per character.
char ascii_lower(char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c + ('a' - 'A')) : c; }
}  // namespace

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (ascii_lower(a[i]) != ascii_lower(b[i])) return false;
  return true;
}

std::string_view trim_ows(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

bool is_hop_by_hop(std::string_view name) {
  // Runs for every field of every request and answer: the length picks the one or two
  // candidates to compare.
  switch (name.size()) {
    case 2: return iequals(name, "te");
    case 7: return iequals(name, "trailer") || iequals(name, "upgrade");
    case 10: return iequals(name, "connection") || iequals(name, "keep-alive");
    case 16: return iequals(name, "proxy-connection");
    case 17: return iequals(name, "transfer-encoding");
    case 18: return iequals(name, "proxy-authenticate");
    case 19: return iequals(name, "proxy-authorization");
    default: return false;
  }
}

bool connection_lists(std::string_view value, std::string_view name) {
  while (!value.empty()) {
    size_t comma = value.find(',');
    std::string_view token = trim_ows(value.substr(0, comma));
    if (iequals(token, name)) return true;
    if (comma == std::string_view::npos) break;
    value.remove_prefix(comma + 1);
  }
  return false;
}

}  // namespace accel
