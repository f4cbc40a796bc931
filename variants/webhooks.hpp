// Pre-conversion on push: the payloads Harbor and distribution send when an image is pushed,
// parsed into push events (plain logic, unit-tested), and the policy that says which formats
// to make for which repositories.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace accel {

struct PushEvent {
  std::string repository;  // "library/app"
  std::string digest;      // the pushed manifest or index
  std::string tag;         // may be empty
};

// Harbor's default webhook payload ({"type":"PUSH_ARTIFACT","event_data":{...}}) and its
// CloudEvents form (structured: {"specversion":"1.0","type":"harbor.artifact.pushed","data":
// {...}}; binary: `ce_type` given from the Ce-Type header and the body is the data). Events of
// other types yield nothing. Throws std::invalid_argument on malformed JSON.
std::vector<PushEvent> parse_harbor_webhook(std::string_view body, std::string_view ce_type_header = {});

// distribution's notifications envelope ({"events":[{"action":"push","target":{...}}]}): pushes of
// tagged manifests only (a pushed index also sends its untagged children, which are converted as
// part of the index).
std::vector<PushEvent> parse_registry_notification(std::string_view body);

// Glob over repository names: `*` matches within one path segment, `**` across segments.
bool repository_matches(std::string_view pattern, std::string_view repository);

}  // namespace accel
