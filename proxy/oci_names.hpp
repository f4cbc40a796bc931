// Validation of the names the distribution spec puts in URLs: repository names, tags and
// digests. The proxy's own features (the cache, variants, the referrers fallback, conversions)
// act only on names that pass; a request with a bad one is forwarded, and the upstream's answer
// relayed, so a client sees what its registry says (docs/DECISIONS.md).
#pragma once

#include <string_view>

namespace accel {

// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`, at most 255 bytes.
bool is_valid_repository(std::string_view name);

// `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
bool is_valid_tag(std::string_view tag);

// `algorithm:encoded` for the algorithms registries implement: sha256 (64 lowercase hex) and
// sha512 (128 lowercase hex).
bool is_valid_digest(std::string_view digest);

// True when `reference` looks like a digest (contains ':'); tags never contain one.
inline bool looks_like_digest(std::string_view reference) {
  return reference.find(':') != std::string_view::npos;
}

}  // namespace accel
