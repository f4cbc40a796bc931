// The variant cache: converted blobs as files in a content-addressed store, and an LMDB index of
// what they are and what they were made from. It knows nothing of HTTP or of any format: keys
// are digests and opaque strings ("estargz" + options) chosen by the caller.
//
// Layout under the cache directory:
//   blobs/sha256/<hex>     blob files, each written to blobs/tmp/ first, fsynced, renamed
//   blobs/tmp/             partial writes; emptied at every open
//   index/                 the LMDB environment
//
// Crash safety: a blob file is renamed into place before the index entry naming it is
// committed, and an entry is removed before its file is deleted; open() removes entries whose
// file is missing and files no entry names. So after kill -9 at any moment, every entry points
// to a complete blob.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace accel::cache {

struct CacheError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct BlobInfo {
  std::string digest;
  uint64_t size = 0;
  std::string media_type;
  int64_t last_access = 0;  // unix seconds
};

// What a source manifest (or layer) became in a format: the converted descriptor and facts.
struct VariantRecord {
  std::string digest;       // converted manifest / index / layer digest
  std::string media_type;
  uint64_t size = 0;
  std::string diff_id;      // layers: the converted layer's diff_id
  std::map<std::string, std::string> annotations;  // layers: the format's annotations
  std::vector<std::string> blobs;  // every cached blob this variant needs (for GC)
  int64_t created = 0;
};

struct FailureRecord {
  std::string reason;
  int attempts = 0;
  int64_t retry_after = 0;  // unix time, in the caller's unit (the proxy uses milliseconds)
};

struct CacheLimits {
  uint64_t max_bytes = uint64_t{50} << 30;
  uint64_t map_size = uint64_t{1} << 30;  // LMDB map size; doubled when a write finds it full
  // collect_garbage() leaves unreferenced blobs younger than this (last access): a conversion
  // in progress commits its blobs before the mapping that needs them.
  std::chrono::seconds gc_grace{600};
};

// The time source, for tag expiry, LRU order and the GC grace period. Tests inject one.
using Clock = std::function<std::chrono::system_clock::time_point()>;

// Writes one blob; commit() checks the digest, makes the file durable and indexes it. A writer
// destroyed without commit() leaves nothing behind.
class BlobWriter {
 public:
  virtual ~BlobWriter() = default;
  virtual void write(const void* data, size_t size) = 0;
  virtual std::string path() const = 0;  // the temporary file (e.g. to hand to another writer)
  // Returns the digest; throws CacheError if `expected_digest` is set and differs.
  virtual std::string commit(const std::string& media_type, const std::string& expected_digest = "") = 0;
};

class Cache {
 public:
  // Opens (creating) the cache in `dir` and reconciles files and index (see above). One process
  // per directory: a second open of the same directory throws CacheError.
  explicit Cache(const std::string& dir, CacheLimits limits = {}, Clock clock = {});
  ~Cache();
  Cache(const Cache&) = delete;
  Cache& operator=(const Cache&) = delete;

  // --- blobs
  // The writer must not outlive the Cache.
  std::unique_ptr<BlobWriter> begin_blob();
  // Moves a finished file (same filesystem) into the store under `digest` (verified by the
  // caller) and indexes it.
  void adopt_blob(const std::string& path, const std::string& digest, uint64_t size, const std::string& media_type);
  std::optional<BlobInfo> blob(const std::string& digest);
  // The file of an indexed blob (always complete); throws CacheError if the digest is not indexed.
  std::string blob_path(const std::string& digest) const;
  // Marks a blob used now (for LRU). Cheap; batched.
  void touch(const std::string& digest);

  // A pin keeps a blob from eviction while it is being served: pin first, then look the blob
  // up (blob() / blob_path()); if it is there, it stays until the pin is released. Pinning a
  // digest that eviction is removing at that moment waits for it to finish. Pins must not
  // outlive the Cache.
  class Pin {
   public:
    Pin() = default;
    Pin(Cache* cache, std::string digest);
    Pin(Pin&&) noexcept;
    Pin& operator=(Pin&&) noexcept;
    ~Pin();

   private:
    Cache* cache_ = nullptr;
    std::string digest_;
  };
  Pin pin(const std::string& digest);

  // --- mappings: key = the caller's name for the source (a digest, or a digest qualified by
  // where it came from) + "|" + format + "|" + options; the caller builds it.
  // put_* throws CacheError if a blob in `record.blobs` is not cached (e.g. evicted meanwhile):
  // a mapping never names a missing blob. Keys are at most 500 bytes.
  void put_manifest_variant(const std::string& key, const VariantRecord& record);
  std::optional<VariantRecord> manifest_variant(const std::string& key);
  void put_layer_variant(const std::string& key, const VariantRecord& record);
  std::optional<VariantRecord> layer_variant(const std::string& key);
  // Every manifest variant whose key starts with `source_key` + "|" (for referrers).
  std::vector<std::pair<std::string, VariantRecord>> variants_of(const std::string& source_key);

  // --- membership: which repository scope may be shown a cached object, and the source object
  // ("manifest:<digest>" or "blob:<digest>") a client must be able to read upstream to see it.
  void put_member(const std::string& scope, const std::string& digest, const std::string& proof);
  std::optional<std::string> member(const std::string& scope, const std::string& digest);
  // Every scope the digest is a member of (write-back mounts a blob from one of them).
  std::vector<std::string> scopes_of(const std::string& digest);

  // A directory on the cache's filesystem for files that will be adopted (emptied at open).
  std::string temp_dir() const;

  // --- tag resolution, with expiry
  void put_tag(const std::string& key, const std::string& digest, std::chrono::seconds ttl);
  std::optional<std::string> tag(const std::string& key);
  // Forgets the resolution under `key` (a push replaced or deleted that tag).
  void drop_tag(const std::string& key);
  // Forgets every resolution under a key starting with `prefix` that names `digest` (a manifest
  // deleted by digest takes the tags naming it with it).
  void drop_tags_naming(const std::string& prefix, const std::string& digest);

  // --- notes: small values a caller keeps across restarts (learned prefetch lists). They name
  // no blob and are never evicted with one: the caller bounds how many it keeps.
  void put_note(const std::string& key, const std::string& value);
  std::optional<std::string> note(const std::string& key);
  // Every note whose key starts with `prefix`, in key order.
  std::vector<std::pair<std::string, std::string>> notes(const std::string& prefix);
  void drop_note(const std::string& key);

  // --- failures, for backoff
  void put_failure(const std::string& key, const FailureRecord& record);
  std::optional<FailureRecord> failure(const std::string& key);
  void clear_failure(const std::string& key);

  // --- space
  uint64_t total_bytes();
  // Evicts least recently used blobs until under the limit; never removes pinned blobs, and
  // removes the mappings that need an evicted blob first. Returns the blobs evicted.
  size_t evict();
  // Removes blobs no mapping needs, unpinned and not accessed within CacheLimits::gc_grace;
  // also drops expired tags. Returns how many blobs.
  size_t collect_garbage();
  // Walks the index and the files: returns problems found (empty when consistent).
  std::vector<std::string> check();

  std::function<void(const std::string&)> on_evict;  // metrics hook

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace accel::cache
