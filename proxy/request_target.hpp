// Splits an origin-form request target (RFC 9112 §3.2.1: absolute-path ["?" query]) into its
// path and its query parameters, checking every character against RFC 3986.
//
// Written by hand because it runs on every request: Boost.URL's parser did the same job at about
// a tenth of the proxy's instructions per relayed manifest request. Its answers are Boost.URL's
// (`parse_origin_form` and `params()`), which the unit tests and the route fuzz target check.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace accel {

struct QueryParam {
  std::string key;
  std::string value;  // percent-decoded, '+' read as a space (as HTML forms and Boost.URL do)
};

struct RequestTarget {
  std::string_view path;  // as sent: still percent-encoded
  std::vector<QueryParam> query;
};

// nullopt when the target is not a valid origin-form (no leading '/', a character RFC 3986 does
// not allow there, or a '%' not followed by two hex digits).
std::optional<RequestTarget> parse_request_target(std::string_view target);

}  // namespace accel
