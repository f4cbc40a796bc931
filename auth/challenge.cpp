#include "auth/challenge.hpp"

#include <cctype>

namespace accel {
namespace {

bool is_token_char(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) || std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos;
}

void skip_space(std::string_view s, size_t& i) {
  while (i < s.size() && (s[i] == ' ' || s[i] == '\t')) ++i;
}

}  // namespace

std::optional<std::string> Challenge::param(std::string_view name) const {
  for (const auto& [k, v] : params)
    if (k.size() == name.size() && std::equal(k.begin(), k.end(), name.begin(), [](char a, char b) {
          return std::tolower(static_cast<unsigned char>(a)) == std::tolower(static_cast<unsigned char>(b));
        }))
      return v;
  return std::nullopt;
}

std::optional<Challenge> parse_challenge(std::string_view s) {
  Challenge c;
  size_t i = 0;
  skip_space(s, i);
  while (i < s.size() && is_token_char(s[i])) c.scheme += s[i++];
  if (c.scheme.empty()) return std::nullopt;
  while (true) {
    skip_space(s, i);
    if (i >= s.size()) break;
    std::string key;
    while (i < s.size() && is_token_char(s[i])) key += s[i++];
    skip_space(s, i);
    if (key.empty() || i >= s.size() || s[i] != '=') {
      // token68 (e.g. Basic's credentials form) or a second challenge: stop at the first.
      if (c.params.empty() && !key.empty()) return c;
      return c.params.empty() ? std::nullopt : std::optional<Challenge>(c);
    }
    ++i;
    skip_space(s, i);
    std::string value;
    if (i < s.size() && s[i] == '"') {
      ++i;
      bool closed = false;
      while (i < s.size()) {
        char ch = s[i++];
        if (ch == '\\' && i < s.size()) { value += s[i++]; continue; }
        if (ch == '"') { closed = true; break; }
        value += ch;
      }
      if (!closed) return std::nullopt;
    } else {
      while (i < s.size() && is_token_char(s[i])) value += s[i++];
    }
    c.params.emplace_back(std::move(key), std::move(value));
    skip_space(s, i);
    if (i < s.size() && s[i] == ',') ++i;
  }
  return c;
}

std::string format_challenge(const Challenge& c) {
  std::string out = c.scheme;
  for (size_t n = 0; n < c.params.size(); ++n) {
    out += n == 0 ? " " : ",";
    out += c.params[n].first;
    out += "=\"";
    for (char ch : c.params[n].second) {
      if (ch == '"' || ch == '\\') out += '\\';
      out += ch;
    }
    out += '"';
  }
  return out;
}

RealmRewrite rewrite_bearer_realm(std::string_view header, std::string_view new_realm) {
  RealmRewrite out{std::string(header), std::nullopt};
  auto c = parse_challenge(header);
  if (!c || c->scheme.size() != 6) return out;
  std::string scheme = c->scheme;
  for (auto& ch : scheme) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  if (scheme != "bearer") return out;
  for (auto& [k, v] : c->params) {
    std::string key = k;
    for (auto& ch : key) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    if (key == "realm") {
      out.original_realm = v;
      v = std::string(new_realm);
    }
  }
  if (out.original_realm) out.header = format_challenge(*c);
  return out;
}

void TokenRealms::remember(const std::string& upstream, const std::string& realm) {
  std::lock_guard lock(mutex_);
  realms_[upstream] = realm;
}

std::optional<std::string> TokenRealms::lookup(const std::string& upstream) const {
  std::lock_guard lock(mutex_);
  auto it = realms_.find(upstream);
  if (it == realms_.end()) return std::nullopt;
  return it->second;
}

}  // namespace accel
