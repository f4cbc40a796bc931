#include "proxy/request_target.hpp"

#include <array>

namespace accel {
namespace {

// RFC 3986 pchar without pct-encoded: unreserved / sub-delims / ":" / "@".
constexpr std::array<bool, 256> make_pchar_table() {
  std::array<bool, 256> t{};
  for (int c = 'a'; c <= 'z'; ++c) t[c] = true;
  for (int c = 'A'; c <= 'Z'; ++c) t[c] = true;
  for (int c = '0'; c <= '9'; ++c) t[c] = true;
  for (unsigned char c : std::string_view("-._~!$&'()*+,;=:@")) t[c] = true;
  return t;
}
constexpr std::array<bool, 256> kPchar = make_pchar_table();

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Every character is a pchar, '/', one of `extra`, or a valid percent-encoding.
bool valid_component(std::string_view s, std::string_view extra) {
  for (size_t i = 0; i < s.size(); ++i) {
    const char c = s[i];
    if (kPchar[static_cast<unsigned char>(c)] || c == '/' || extra.find(c) != std::string_view::npos) continue;
    if (c == '%' && i + 2 < s.size() && hex_value(s[i + 1]) >= 0 && hex_value(s[i + 2]) >= 0) {
      i += 2;
      continue;
    }
    return false;
  }
  return true;
}

// Percent-decodes a validated query component.
std::string decode(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '%') {
      out += static_cast<char>(hex_value(s[i + 1]) * 16 + hex_value(s[i + 2]));
      i += 2;
    } else {
      out += s[i] == '+' ? ' ' : s[i];
    }
  }
  return out;
}

}  // namespace

std::optional<RequestTarget> parse_request_target(std::string_view target) {
  if (target.empty() || target.front() != '/') return std::nullopt;
  const size_t question = target.find('?');
  RequestTarget out;
  out.path = target.substr(0, question);
  if (!valid_component(out.path, "")) return std::nullopt;
  if (question == std::string_view::npos) return out;

  std::string_view query = target.substr(question + 1);
  if (!valid_component(query, "?")) return std::nullopt;
  // "a=1&b" is two parameters; an empty query is one empty parameter.
  while (true) {
    const size_t amp = query.find('&');
    std::string_view param = query.substr(0, amp);
    const size_t eq = param.find('=');
    out.query.push_back({decode(param.substr(0, eq)),
                         eq == std::string_view::npos ? std::string() : decode(param.substr(eq + 1))});
    if (amp == std::string_view::npos) break;
    query.remove_prefix(amp + 1);
  }
  return out;
}

}  // namespace accel
