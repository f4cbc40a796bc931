// Which request and response headers a proxy may pass on (RFC 9110 §7.6.1), as plain string
// checks so the forwarding code and its tests share one definition.
#pragma once

#include <string_view>

namespace accel {

// Connection-specific headers that never cross a proxy.
bool is_hop_by_hop(std::string_view name);

// True when `connection_value` (a Connection header) lists `name` as hop-by-hop too.
bool connection_lists(std::string_view connection_value, std::string_view name);

bool iequals(std::string_view a, std::string_view b);

// Whether an Accept header lets the answer have `media_type`: no Accept at all, the type itself,
// `type/*` or `*/*`, unless its q is 0 (RFC 9110 §12.5.1). Parameters of the type are not
// compared (registries send none that matter). A cached manifest is answered only when the
// client's Accept allows it; otherwise the upstream decides what to answer.
bool accept_allows(std::string_view accept, std::string_view media_type);

// Without the optional white space (spaces and tabs) HTTP allows around values.
std::string_view trim_ows(std::string_view s);

}  // namespace accel
