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

namespace {

// "q=0", "q=0.0", "q=0.000" (with any white space and case): the range is refused.
bool refuses(std::string_view params) {
  while (!params.empty()) {
    size_t semi = params.find(';');
    std::string_view p = trim_ows(params.substr(0, semi));
    if (p.size() >= 2 && ascii_lower(p[0]) == 'q' && trim_ows(p.substr(1)).starts_with('=')) {
      std::string_view v = trim_ows(trim_ows(p.substr(1)).substr(1));
      if (v.empty() || v[0] != '0') return false;
      for (char c : v.substr(1))
        if (c != '.' && c != '0') return false;
      return true;
    }
    if (semi == std::string_view::npos) break;
    params.remove_prefix(semi + 1);
  }
  return false;
}

}  // namespace

bool accept_allows(std::string_view accept, std::string_view media_type) {
  if (trim_ows(accept).empty()) return true;
  const size_t slash = media_type.find('/');
  while (!accept.empty()) {
    size_t comma = accept.find(',');
    std::string_view entry = accept.substr(0, comma);
    size_t semi = entry.find(';');
    std::string_view range = trim_ows(entry.substr(0, semi));
    std::string_view params = semi == std::string_view::npos ? std::string_view() : entry.substr(semi + 1);
    bool matches = iequals(range, media_type) || range == "*/*" ||
                   (slash != std::string_view::npos && range.size() == slash + 2 && range.ends_with("/*") &&
                    iequals(range.substr(0, slash), media_type.substr(0, slash)));
    if (matches && !refuses(params)) return true;
    if (comma == std::string_view::npos) break;
    accept.remove_prefix(comma + 1);
  }
  return false;
}

}  // namespace accel
