#include "variants/variant_request.hpp"

#include <cctype>

#include "proxy/http_headers.hpp"
#include "proxy/oci_names.hpp"

namespace accel {

namespace {

std::string lower(std::string_view s) {
  std::string out(s);
  for (auto& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

}  // namespace

std::optional<std::string> accept_format(std::string_view accept) {
  // media-range *( ";" parameter ) separated by commas; quoted values are not expected here.
  while (!accept.empty()) {
    size_t comma = accept.find(',');
    std::string_view range = accept.substr(0, comma);
    size_t semi = range.find(';');
    while (semi != std::string_view::npos) {
      std::string_view rest = range.substr(semi + 1);
      size_t next = rest.find(';');
      std::string_view param = trim_ows(rest.substr(0, next));
      size_t eq = param.find('=');
      if (eq != std::string_view::npos && iequals(trim_ows(param.substr(0, eq)), "accel-format")) {
        std::string_view value = trim_ows(param.substr(eq + 1));
        if (value.size() >= 2 && value.front() == '"' && value.back() == '"') value = value.substr(1, value.size() - 2);
        if (!value.empty()) return lower(value);
      }
      semi = next == std::string_view::npos ? std::string_view::npos : semi + 1 + next;
    }
    if (comma == std::string_view::npos) break;
    accept.remove_prefix(comma + 1);
  }
  return std::nullopt;
}

std::optional<VariantAsk> variant_asked(std::string_view reference, std::string_view format_header,
                                        std::string_view accept, const VariantsConfig& config) {
  // A digest names exact bytes: answering it with a variant would break content addressing
  // (containerd checks what it gets). Variants of a digest are found by tag or by referrers.
  if (!config.enabled || looks_like_digest(reference)) return std::nullopt;
  // Only a valid tag names a source image; anything else is the upstream's to answer.
  if (!is_valid_tag(reference)) return std::nullopt;
  for (const auto& [format, suffix] : config.suffixes) {
    if (suffix.empty() || reference.size() <= suffix.size() || !reference.ends_with(suffix)) continue;
    std::string source(reference.substr(0, reference.size() - suffix.size()));
    if (is_valid_tag(source)) return VariantAsk{format, source, VariantAsk::How::tag_suffix};
  }
  std::string named = lower(trim_ows(format_header));
  if (!named.empty() && config.suffixes.count(named)) return VariantAsk{named, std::string(reference), VariantAsk::How::header};
  if (auto f = accept_format(accept); f && config.suffixes.count(*f))
    return VariantAsk{*f, std::string(reference), VariantAsk::How::accept};
  return std::nullopt;
}

}  // namespace accel
