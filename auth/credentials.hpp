// Client-side credentials for talking to registries as a client (the `convert` command, and
// conversions done with a configured robot account): Basic headers, token-service requests and
// answers, and docker's config.json. Plain functions; the HTTP exchange itself is elsewhere.
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "auth/challenge.hpp"

namespace accel {

struct Credentials {
  std::string username;
  std::string password;
  bool empty() const { return username.empty() && password.empty(); }
};

// "user:password" as given on a command line.
Credentials parse_credentials(std::string_view user_colon_password);

std::string basic_authorization(const Credentials& credentials);  // "Basic base64(user:pass)"

// The token request URL for a Bearer challenge: realm?service=...&scope=...
// `scope` overrides the challenge's scope when not empty. nullopt if the challenge has no realm.
std::optional<std::string> token_request_url(const Challenge& challenge, std::string_view scope);

// The token from a token service's JSON answer ("token" or OAuth2 "access_token").
std::optional<std::string> parse_token_response(std::string_view body);

// Credentials for `registry_host` from a docker config.json text (auths.<host>.auth, or
// username/password). Hosts are matched as written, with or without an https:// prefix.
std::optional<Credentials> credentials_from_docker_config(std::string_view config_json, std::string_view registry_host);

// Whether a presented shared secret (a webhook's Authorization header) equals the configured
// one, in time that does not depend on where they differ. An empty `expected` matches nothing.
bool secret_matches(std::string_view given, std::string_view expected);

// A short, stable name for one client (its peer address and Authorization value), 16 hex
// digits of a hash: what learned prefetch tells clients apart by. Never the credential itself.
std::string client_key(std::string_view peer_address, std::string_view authorization);

}  // namespace accel
