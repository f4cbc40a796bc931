// Pagination of tags/list (`n`, `last`, and the `Link` header), done by the proxy itself because
// some upstreams (distribution 2.8) ignore both parameters and always answer the whole list.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace accel {

struct TagsPage {
  std::string body;  // JSON {"name":..., "tags":[...]}
  std::string link;  // value for a Link header, empty for the last page
};

// Cuts the page asked for out of an upstream answer. `upstream_link` is the upstream's own Link
// header (kept, made relative, when the upstream paginated itself). Returns nullopt when the body
// is not a tags list (then it is passed through as it came).
std::optional<TagsPage> paginate_tags(std::string_view upstream_body, std::string_view repository,
                                      std::optional<uint64_t> n, std::optional<std::string> last,
                                      std::string_view upstream_link);

// Turns `<https://host/v2/...>; rel="next"` into `</v2/...>; rel="next"` so clients come back
// through the proxy instead of going to the upstream directly.
std::string relative_link(std::string_view link);

}  // namespace accel
