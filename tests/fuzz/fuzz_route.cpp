// libFuzzer target: request-target classification. Whatever comes in, a registry route that is
// accepted must carry a valid name and reference, and its upstream path must not escape /v2/.
#include <cstdint>
#include <string>
#include <string_view>

#include "proxy/oci_names.hpp"
#include "proxy/route.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view input(reinterpret_cast<const char*>(data), size);
  auto route = accel::parse_route(input);
  using K = accel::RouteKind;
  if (route.kind == K::manifest || route.kind == K::blob || route.kind == K::tags || route.kind == K::referrers) {
    if (!accel::is_valid_repository(route.repository)) __builtin_trap();
    auto path = accel::upstream_path(route);
    if (path.find('%') != std::string::npos || !path.starts_with("/v2/")) __builtin_trap();
    // No segment may be "." or ".." (a tag may contain "..", but never be it).
    size_t start = 0;
    while (start <= path.size()) {
      size_t slash = path.find('/', start);
      if (slash == std::string::npos) slash = path.size();
      std::string_view segment(path.data() + start, slash - start);
      if (segment == "." || segment == "..") __builtin_trap();
      start = slash + 1;
    }
    (void)accel::upstream_query(route);
  }
  return 0;
}
