// libFuzzer target: the upstream answers the proxy parses itself (tags lists, referrer indexes,
// WWW-Authenticate challenges). Upstream bytes are untrusted input too.
#include <cstdint>
#include <string>
#include <string_view>

#include "auth/challenge.hpp"
#include "proxy/referrers.hpp"
#include "proxy/tags_page.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view input(reinterpret_cast<const char*>(data), size);
  (void)accel::paginate_tags(input, "repo", 3, std::string("m"), "");
  (void)accel::paginate_tags(input, "repo", std::nullopt, std::nullopt, input.substr(0, 64));
  (void)accel::filter_referrers(input, std::string("application/x"));
  auto rewrite = accel::rewrite_bearer_realm(input, "http://127.0.0.1/auth/token/u");
  if (rewrite.original_realm && rewrite.header.find("http://127.0.0.1/auth/token/u") == std::string::npos) __builtin_trap();
  (void)accel::relative_link(input);
  return 0;
}
