// `accel-proxy convert` (a whole image, registry or OCI layout to registry or OCI layout) and
// `accel-proxy convert-layer` (one layer file to one blob file, for tests and benchmarks), and
// `accel-proxy check` (an accelerated image checked as its consumer would check it).
#pragma once

#include <string_view>
#include <vector>

namespace accel {

int run_convert_command(const std::vector<std::string_view>& args);
int run_convert_layer_command(const std::vector<std::string_view>& args);
int run_check_command(const std::vector<std::string_view>& args);

}  // namespace accel
