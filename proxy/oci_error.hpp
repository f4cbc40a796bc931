// The error body of the distribution spec: {"errors":[{"code":..., "message":..., "detail":...}]}.
#pragma once

#include <string>
#include <string_view>

namespace accel {

std::string oci_error_json(std::string_view code, std::string_view message);

}  // namespace accel
