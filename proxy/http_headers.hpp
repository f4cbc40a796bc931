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

// Without the optional white space (spaces and tabs) HTTP allows around values.
std::string_view trim_ows(std::string_view s);

}  // namespace accel
