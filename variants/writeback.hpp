// Write-back: a converted variant pushed to the upstream it was made from, so the registry (and
// Harbor's UI, replication, GC, other replicas of the proxy) sees it as what it is: an accessory
// of its source.
//
// Order: blobs (skipped when present, mounted from another repository when the cache saw them
// there), then manifests by digest, children before the index. Each manifest with a `subject`
// is linked to it: by the registry itself when it answers with `OCI-Subject` (Referrers API),
// otherwise in the spec's fallback tag `<alg>-<hex>` (read, appended, written, re-read until
// listed). Optionally the variant is tagged `<source tag><suffix>`, but only while the source
// tag names the variant's source (see tag_variant).
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "convert/image.hpp"
#include "variants/registry_store.hpp"

namespace accel {

// Exclusive use of one tag of the upstream repository among every writer that may update it
// (this process's threads; other replicas through Redis): the guard holds it until destroyed.
// A registry that ignores preconditions keeps only the last write of a tag, so two writers that
// both read the fallback referrers index before either wrote it would lose one entry, and no
// read-back can tell the later writer that its write erased the other's. Empty: no lock.
using TagLock = std::function<std::shared_ptr<void>(const std::string& tag)>;

// One object of the variant as the cache holds it.
struct StoredObject {
  convert::Descriptor descriptor;
  std::string path;  // the complete file
};

struct WriteBackRequest {
  std::string source_digest;
  std::string source_tag;  // the tag the source was asked by; empty: no tag is written
  std::string suffix_tag;  // source_tag + the format's suffix; empty: no tag is written
  convert::ManifestBytes top;                    // the variant: a manifest or an index
  std::vector<convert::ManifestBytes> manifests;  // its other manifests (an index's children)
  std::vector<StoredObject> blobs;                // configs and layers
  // Repositories of the same registry that may hold a blob already (cross-repository mount).
  std::function<std::vector<std::string>(const std::string& digest)> mount_sources;
  // Held around each read-append-write of a fallback referrers tag (see TagLock).
  TagLock lock_fallback_tag;
};

enum class TagOutcome {
  not_asked,     // no tag requested
  tagged,        // the suffix tag names the variant, and the source tag still names its source
  source_moved,  // the source tag named another image before the push: no tag was written
  repaired,      // the source moved during the push: the suffix tag was taken back
  unrepaired,    // the source moved during the push and the registry refused both ways to untag
};

struct WriteBackResult {
  int blobs_uploaded = 0;
  int blobs_mounted = 0;
  int blobs_present = 0;
  int manifests_pushed = 0;
  int fallback_links = 0;  // referrers fallback indexes updated
  TagOutcome tag = TagOutcome::not_asked;
  std::optional<std::string> source_now;  // what the source tag names after a move (nullopt: nothing)
};

// Pushes the variant. Throws ConvertError when the registry refuses a blob or manifest.
WriteBackResult write_back(RegistryStore& upstream, const WriteBackRequest& request);

// The tag step alone (write_back calls it last): the source tag is re-resolved before the
// suffix tag is written and again after; a source that moved in between has its suffix tag taken
// back at once, so the suffix tag never stays on a variant of an image the source tag no longer
// names. Preconditions (`If-Match` / `If-None-Match`) guard the suffix tag against a concurrent
// writer on registries that honour them; distribution and Harbor do not, which is why the
// re-resolution is what makes this safe. Untagging uses DELETE of the tag (OCI 1.1); a registry
// that refuses it (distribution 2.x, Harbor's /v2) has the variant deleted by digest, which drops
// its tags, and pushed again by digest.
TagOutcome tag_variant(RegistryStore& upstream, const WriteBackRequest& request, std::optional<std::string>& source_now);

// Links `manifest` (which has a `subject`) in its subject's referrers fallback tag; false when
// it was listed already. Holds `lock` (if any) on the tag while it reads, appends and writes;
// still re-reads and retries a few times for writers that do not share the lock (another
// tool writing the same index).
bool link_in_fallback_tag(RegistryStore& upstream, const convert::ManifestBytes& manifest, const TagLock& lock = {});

}  // namespace accel
