#include "variants/writeback.hpp"

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "convert/sha256.hpp"
#include "proxy/referrers.hpp"

namespace accel {

namespace {

constexpr int kLinkAttempts = 4;  // fallback-index updates lost to concurrent writers, retried
constexpr int kTagAttempts = 3;   // suffix-tag writes refused by a precondition, retried

// The subject digest a manifest names, or "".
std::string subject_of(const convert::ManifestBytes& manifest) {
  auto doc = nlohmann::json::parse(manifest.bytes, nullptr, false);
  if (!doc.is_object() || !doc.contains("subject") || !doc["subject"].is_object()) return {};
  const auto& digest = doc["subject"]["digest"];
  return digest.is_string() ? digest.get<std::string>() : std::string();
}

void push_blob(RegistryStore& upstream, const WriteBackRequest& request, const StoredObject& blob, WriteBackResult& result) {
  const auto& digest = blob.descriptor.digest;
  if (upstream.has_blob(digest)) {
    ++result.blobs_present;
    return;
  }
  if (request.mount_sources) {
    for (const auto& repository : request.mount_sources(digest)) {
      if (upstream.mount_blob(digest, repository)) {
        ++result.blobs_mounted;
        return;
      }
    }
  }
  upstream.put_blob(blob.descriptor, blob.path);
  ++result.blobs_uploaded;
}

// Pushes a manifest by digest and links it to its subject where the registry did not.
void push_manifest(RegistryStore& upstream, const WriteBackRequest& request, const convert::ManifestBytes& manifest,
                   WriteBackResult& result) {
  auto put = upstream.put_manifest_at(manifest, manifest.digest);
  if (put.status != 201)
    throw convert::ConvertError("pushing manifest " + manifest.digest + ": HTTP " + std::to_string(put.status));
  ++result.manifests_pushed;
  if (!put.subject_indexed && !subject_of(manifest).empty() && link_in_fallback_tag(upstream, manifest, request.lock_fallback_tag))
    ++result.fallback_links;
}

// Takes the suffix tag back from `variant`: DELETE of the tag, else delete the variant by digest
// (dropping every tag on it) and push it again by digest so its link to the source stays.
bool untag(RegistryStore& upstream, const std::string& tag, const convert::ManifestBytes& variant) {
  const int status = upstream.delete_manifest(tag);
  if (status == 202 || status == 200 || status == 204) return true;
  if (upstream.resolve(tag) != variant.digest) return true;  // someone else moved it: not ours any more
  const int by_digest = upstream.delete_manifest(variant.digest);
  if (by_digest != 202 && by_digest != 200 && by_digest != 204) {
    spdlog::error("write-back: cannot take tag {} back from {}: DELETE of the tag gave HTTP {}, of the digest HTTP {}", tag,
                  variant.digest, status, by_digest);
    return false;
  }
  upstream.put_manifest_at(variant, variant.digest);
  return true;
}

}  // namespace

bool link_in_fallback_tag(RegistryStore& upstream, const convert::ManifestBytes& manifest, const TagLock& lock) {
  const std::string subject = subject_of(manifest);
  const std::string tag = referrers_fallback_tag(subject);
  const auto held = lock ? lock(tag) : nullptr;
  auto descriptor = referrer_descriptor(manifest.bytes, manifest.media_type, manifest.digest);
  if (!descriptor) throw convert::ConvertError("manifest " + manifest.digest + " is not a JSON object");
  bool added = false;
  for (int attempt = 0; attempt < kLinkAttempts; ++attempt) {
    auto current = upstream.find_manifest(tag);
    auto updated = append_referrer(current ? current->bytes : std::string(), *descriptor);
    if (!updated) return added;  // listed (by us, or by a concurrent writer that raced us)
    convert::ManifestBytes index{std::string(kOciIndexMediaType), *updated, convert::Sha256::of(*updated)};
    auto put = upstream.put_manifest_at(index, tag, current ? current->digest : std::string(), !current);
    if (put.status == 201) added = true;
    // Registries that ignore preconditions store the last write: read back, and append again if
    // a concurrent writer's index replaced ours.
  }
  auto last = upstream.find_manifest(tag);
  if (last && !append_referrer(last->bytes, *descriptor)) return added;
  throw convert::ConvertError("could not list " + manifest.digest + " in referrers tag " + tag + " (concurrent writers)");
}

TagOutcome tag_variant(RegistryStore& upstream, const WriteBackRequest& request, std::optional<std::string>& source_now) {
  if (request.source_tag.empty() || request.suffix_tag.empty()) return TagOutcome::not_asked;
  for (int attempt = 0; attempt < kTagAttempts; ++attempt) {
    source_now = upstream.resolve(request.source_tag);
    if (source_now != request.source_digest) return TagOutcome::source_moved;
    const auto current = upstream.resolve(request.suffix_tag);
    if (current != request.top.digest) {
      auto put = upstream.put_manifest_at(request.top, request.suffix_tag, current.value_or(""), !current);
      if (put.status == 412) continue;  // another writer changed the suffix tag: look again
    }
    source_now = upstream.resolve(request.source_tag);
    if (source_now == request.source_digest) return TagOutcome::tagged;
    // The source tag moved while we wrote: the suffix tag must not stay on this variant.
    return untag(upstream, request.suffix_tag, request.top) ? TagOutcome::repaired : TagOutcome::unrepaired;
  }
  throw convert::ConvertError("tag " + request.suffix_tag + " kept changing under concurrent writers");
}

WriteBackResult write_back(RegistryStore& upstream, const WriteBackRequest& request) {
  WriteBackResult result;
  for (const auto& blob : request.blobs) push_blob(upstream, request, blob, result);
  // Image manifests before indexes, the variant itself last: nothing names what is not there.
  for (bool index_pass : {false, true})
    for (const auto& manifest : request.manifests)
      if (convert::is_index(manifest.media_type) == index_pass) push_manifest(upstream, request, manifest, result);
  push_manifest(upstream, request, request.top, result);
  result.tag = tag_variant(upstream, request, result.source_now);
  return result;
}

}  // namespace accel
