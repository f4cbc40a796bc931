#include "proxy/oci_error.hpp"

#include <nlohmann/json.hpp>

namespace accel {

std::string oci_error_json(std::string_view code, std::string_view message) {
  nlohmann::json body = {{"errors", nlohmann::json::array({{{"code", code}, {"message", message}}})}};
  return body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

}  // namespace accel
