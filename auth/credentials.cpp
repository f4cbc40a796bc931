#include "auth/credentials.hpp"

#include <cstdio>
#include <functional>

#include <boost/url/encode.hpp>
#include <boost/url/rfc/unreserved_chars.hpp>
#include <nlohmann/json.hpp>
#include <openssl/evp.h>

namespace accel {
namespace {

std::string base64_encode(std::string_view raw) {
  std::string out(4 * ((raw.size() + 2) / 3) + 1, '\0');
  int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()), reinterpret_cast<const unsigned char*>(raw.data()),
                          static_cast<int>(raw.size()));
  out.resize(static_cast<size_t>(n));
  return out;
}

std::optional<std::string> base64_decode(std::string_view text) {
  if (text.size() % 4 != 0) return std::nullopt;
  std::string out(text.size() / 4 * 3, '\0');
  int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(out.data()), reinterpret_cast<const unsigned char*>(text.data()),
                          static_cast<int>(text.size()));
  if (n < 0) return std::nullopt;
  size_t len = static_cast<size_t>(n);
  if (!text.empty() && text.back() == '=') --len;  // EVP_DecodeBlock counts padding as data
  if (text.size() >= 2 && text[text.size() - 2] == '=') --len;
  out.resize(len);
  return out;
}

}  // namespace

Credentials parse_credentials(std::string_view s) {
  size_t colon = s.find(':');
  if (colon == std::string_view::npos) return {std::string(s), ""};
  return {std::string(s.substr(0, colon)), std::string(s.substr(colon + 1))};
}

bool secret_matches(std::string_view given, std::string_view expected) {
  if (expected.empty() || given.size() != expected.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < expected.size(); ++i) diff |= static_cast<unsigned char>(given[i] ^ expected[i]);
  return diff == 0;
}

std::string basic_authorization(const Credentials& c) { return "Basic " + base64_encode(c.username + ":" + c.password); }

std::optional<std::string> token_request_url(const Challenge& challenge, std::string_view scope) {
  auto realm = challenge.param("realm");
  if (!realm || realm->empty()) return std::nullopt;
  namespace u = boost::urls;
  std::string url = *realm;
  char sep = url.find('?') == std::string::npos ? '?' : '&';
  if (auto service = challenge.param("service")) {
    url += sep;
    url += "service=" + u::encode(*service, u::unreserved_chars);
    sep = '&';
  }
  std::string s = scope.empty() ? challenge.param("scope").value_or("") : std::string(scope);
  if (!s.empty()) {
    url += sep;
    url += "scope=" + u::encode(s, u::unreserved_chars);
  }
  return url;
}

std::optional<std::string> parse_token_response(std::string_view body) {
  auto doc = nlohmann::json::parse(body, nullptr, false);
  if (!doc.is_object()) return std::nullopt;
  for (const char* key : {"token", "access_token"})
    if (doc.contains(key) && doc[key].is_string() && !doc[key].get<std::string>().empty()) return doc[key].get<std::string>();
  return std::nullopt;
}

std::optional<Credentials> credentials_from_docker_config(std::string_view config_json, std::string_view host) {
  auto doc = nlohmann::json::parse(config_json, nullptr, false);
  if (!doc.is_object() || !doc.contains("auths") || !doc["auths"].is_object()) return std::nullopt;
  for (const auto& [key, entry] : doc["auths"].items()) {
    std::string_view k = key;
    if (k.starts_with("https://")) k.remove_prefix(8);
    else if (k.starts_with("http://")) k.remove_prefix(7);
    if (auto slash = k.find('/'); slash != std::string_view::npos) k = k.substr(0, slash);
    if (k != host || !entry.is_object()) continue;
    if (entry.contains("auth") && entry["auth"].is_string()) {
      auto decoded = base64_decode(entry["auth"].get<std::string>());
      if (decoded) return parse_credentials(*decoded);
    }
    if (entry.contains("username") && entry["username"].is_string())
      return Credentials{entry["username"].get<std::string>(), entry.value("password", "")};
  }
  return std::nullopt;
}

std::string client_key(std::string_view peer_address, std::string_view authorization) {
  std::string who(peer_address);
  who += '\n';
  who += authorization;
  char key[17];
  std::snprintf(key, sizeof key, "%016zx", std::hash<std::string>{}(who));
  return key;
}

}  // namespace accel
