// How a client asks for an accelerated variant of a manifest (plain logic, unit-tested):
//   - tag suffix:  app:1.0-estargz            (suffix per format, from the config)
//   - a header:    X-Accel-Format: estargz     (containerd's hosts.toml can add it to every request)
//   - Accept:      any media type carrying the parameter accel-format=estargz
// The broad Accept lists containerd, skopeo and podman send never carry that parameter, so they
// always get what they got before.
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "proxy/config.hpp"

namespace accel {

struct VariantAsk {
  enum class How { tag_suffix, header, accept };
  std::string format;
  std::string source_reference;  // the tag without the suffix, or the reference as asked
  How how = How::tag_suffix;
};

// For a manifest request of `reference`: which variant is asked for, if any. A header or Accept
// naming an unknown format is ignored (the client gets the original), and so is any request by
// digest (a digest names exact bytes) or by a reference that is not a valid tag.
std::optional<VariantAsk> variant_asked(std::string_view reference, std::string_view format_header,
                                        std::string_view accept, const VariantsConfig& config);

// The value of the accel-format parameter in an Accept header, if any media range has one.
std::optional<std::string> accept_format(std::string_view accept);

}  // namespace accel
