// The registry of layer formats: every plug-in is listed here once, and everything else (CLI,
// proxy, cache keys) finds formats by name.
#pragma once

#include <string_view>
#include <vector>

#include "convert/layer_format.hpp"

namespace accel::convert {

// nullptr when no format has that name.
const LayerFormat* find_format(std::string_view name);
std::vector<const LayerFormat*> all_formats();

}  // namespace accel::convert
