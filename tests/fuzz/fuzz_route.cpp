// libFuzzer target: request-target classification. Whatever comes in, a registry route marked
// well-formed must carry a valid name and reference, and whatever is forwarded must be the
// client's own path and must not escape /v2/.
// The request target is also read by Boost.URL: the hand-written parser must read it the same.
#include <boost/url/parse.hpp>
#include <cstdint>
#include <string>
#include <string_view>

#include "proxy/oci_names.hpp"
#include "proxy/request_target.hpp"
#include "proxy/route.hpp"

static void check_target_reading(std::string_view input) {
  auto ours = accel::parse_request_target(input);
  auto url = boost::urls::parse_origin_form(input);
  if (ours.has_value() != url.has_value()) __builtin_trap();
  if (!ours) return;
  if (ours->path != url->encoded_path()) __builtin_trap();
  size_t i = 0;
  if (url->has_query())
    for (auto p : url->params()) {
      if (i >= ours->query.size() || ours->query[i].key != p.key || ours->query[i].value != p.value) __builtin_trap();
      ++i;
    }
  if (i != ours->query.size()) __builtin_trap();
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view input(reinterpret_cast<const char*>(data), size);
  check_target_reading(input);
  auto route = accel::parse_route(input);
  using K = accel::RouteKind;
  const bool named = route.kind == K::manifest || route.kind == K::blob || route.kind == K::tags ||
                     route.kind == K::referrers;
  // A well-formed route carries a valid name and reference: only those reach the cache and variants.
  if (named && route.well_formed) {
    if (!accel::is_valid_repository(route.repository)) __builtin_trap();
    if (route.kind != K::tags && !accel::is_valid_digest(route.reference) &&
        !(route.kind == K::manifest && accel::is_valid_tag(route.reference)))
      __builtin_trap();
  }
  if (named || route.kind == K::blob_upload || route.kind == K::unrecognized) {
    // Whatever is forwarded is the client's own path, and it cannot escape /v2/.
    auto path = accel::upstream_path(route);
    if (path != route.path) __builtin_trap();
    if (path.find('%') != std::string::npos || !path.starts_with("/v2/")) __builtin_trap();
    // No segment may be empty, "." or ".." (a tag may contain "..", but never be it); the
    // upload-start URL's trailing slash is the one empty segment allowed.
    std::string_view checked(path);
    if (route.kind == K::blob_upload && checked.ends_with("/blobs/uploads/")) checked.remove_suffix(1);
    size_t start = 4;
    while (start <= checked.size()) {
      size_t slash = checked.find('/', start);
      if (slash == std::string::npos) slash = checked.size();
      std::string_view segment(checked.data() + start, slash - start);
      if (segment.empty() || segment == "." || segment == "..") __builtin_trap();
      start = slash + 1;
    }
    (void)accel::upstream_query(route);
  }
  return 0;
}
