// Cache: orders file and index changes so that every index entry names a complete blob file,
// whatever moment a crash happens at (see cache.hpp), and keeps mappings, pins and LRU order.
//
// Index databases:
//   blobs              digest -> BlobEntry
//   manifest_variants  key -> VariantRecord (keys start with the caller's name for the
//                      source and a '|', so variants_of() is a prefix scan)
//   layer_variants     key -> VariantRecord
//   blob_refs          digest -> kind + mapping key, one duplicate per mapping that needs the
//                      blob (MDB_DUPSORT; kind 'm' or 'l'): eviction and GC find a blob's
//                      mappings without scanning them all. Derived: rebuilt at every open.
//   tags               key -> TagEntry
//   failures           key -> FailureRecord
//   notes              key -> the caller's value (opaque)
//   members            digest + NUL + scope -> proof (removed with the blob; see put_member)
#include "cache/cache.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <set>
#include <tuple>

#include "cache/access_tracking.hpp"
#include "cache/blob_store.hpp"
#include "cache/blob_writer.hpp"
#include "cache/lmdb_index.hpp"
#include "cache/records.hpp"

namespace accel::cache {

namespace {

// Touches are written to the index in batches of this many digests...
constexpr size_t kTouchBatch = 1024;
// ...or when the oldest pending one is this old.
constexpr int64_t kTouchMaxAgeMs = 30'000;
// LMDB keys are at most 511 bytes, and a blob_refs value is one byte more than a mapping key.
constexpr size_t kMaxKeyBytes = 500;
constexpr unsigned kDatabaseCount = 8;

int64_t unix_ms(std::chrono::system_clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(t.time_since_epoch()).count();
}

void check_key(const std::string& key, const char* what) {
  if (key.empty() || key.size() > kMaxKeyBytes)
    throw CacheError(std::string(what) + " key must be 1 to " + std::to_string(kMaxKeyBytes) + " bytes");
}

void check_digest(const std::string& digest) {
  if (!is_sha256_digest(digest)) throw CacheError("invalid digest " + digest.substr(0, 80));
}

const std::string& created(const std::string& dir) {
  make_dirs(dir);
  return dir;
}

// An exclusive flock on <dir>/lock for the Cache's lifetime: opening reconciles the store by
// deleting files the index does not name, which would destroy another user's fresh blobs.
class DirectoryLock {
 public:
  explicit DirectoryLock(const std::string& dir) {
    std::string path = dir + "/lock";
    fd_ = UniqueFd(::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644));
    if (fd_.get() < 0) throw CacheError("cannot open " + path + ": " + std::strerror(errno));
    if (::flock(fd_.get(), LOCK_EX | LOCK_NB) != 0) throw CacheError("the cache in " + dir + " is already open");
  }

 private:
  UniqueFd fd_;
};

// A mapping database and the kind byte its references carry in blob_refs.
struct MappingTable {
  MDB_dbi db = 0;
  char kind = 0;
  const char* name = "";
};

std::string reference(const MappingTable& table, std::string_view key) { return table.kind + std::string(key); }

// Member keys start with the digest, so that removing a blob finds its rows by prefix.
std::string member_key(const std::string& digest, const std::string& scope) { return digest + '\0' + scope; }
std::string_view digest_of_member_key(std::string_view key) { return key.substr(0, key.find('\0')); }

// Copies of every (key, value) of a database: lets the caller then modify it in the same txn.
std::vector<std::pair<std::string, std::string>> all_entries(lmdb::Txn& txn, MDB_dbi db) {
  std::vector<std::pair<std::string, std::string>> entries;
  txn.scan(db, "", [&](std::string_view key, std::string_view value) {
    entries.emplace_back(key, value);
    return true;
  });
  return entries;
}

}  // namespace

struct Cache::Impl {
  Impl(const std::string& dir, CacheLimits limits, Clock clock);

  int64_t now_ms() const { return unix_ms(clock()); }

  // --- blobs
  void index_new_blob(const std::string& path, const std::string& digest, uint64_t size,
                      const std::string& media_type);
  std::optional<BlobEntry> blob_entry(const std::string& digest);
  void flush_touches();

  // --- mappings
  void put_mapping(const MappingTable& table, const std::string& key, const VariantRecord& record);
  std::optional<VariantRecord> mapping(const MappingTable& table, const std::string& key);
  void delete_mapping(lmdb::Txn& txn, const MappingTable& table, const std::string& key);
  void delete_mappings_needing(lmdb::Txn& txn, const std::string& digest);
  void delete_members_of(lmdb::Txn& txn, const std::string& digest);

  // --- space
  std::vector<std::string> evict();
  size_t collect_garbage();
  // Removes the claimed blobs: their mappings and entries in one transaction, then the files.
  // With `only_unreferenced`, blobs a mapping needs by then are kept.
  std::vector<std::string> remove_blobs(const RemovalClaims& claims, bool only_unreferenced);
  void drop_expired_tags();

  // --- consistency
  void reconcile();
  std::vector<std::string> check();
  void check_mappings(lmdb::Txn& txn, std::vector<std::string>& problems);

  CacheLimits limits;
  Clock clock;
  DirectoryLock lock;
  BlobStore store;
  lmdb::Index index;
  MDB_dbi blobs, blob_refs, tags, failures, members, notes;
  MappingTable manifests, layers;
  std::atomic<uint64_t> total_bytes{0};
  // Held while a blob's file and entry change together (install, removal) and by check(), so
  // nobody sees a file between its rename and its entry.
  std::mutex store_mutex;
  PinTable pins;
  PendingTouches touches;
};

Cache::Impl::Impl(const std::string& dir, CacheLimits limits_, Clock clock_)
    : limits(limits_),
      clock(clock_ ? std::move(clock_) : Clock([] { return std::chrono::system_clock::now(); })),
      lock(created(dir)),
      store(dir),
      index(dir + "/index", limits.map_size, kDatabaseCount),
      blobs(index.open_db("blobs")),
      blob_refs(index.open_db("blob_refs", MDB_DUPSORT)),
      tags(index.open_db("tags")),
      failures(index.open_db("failures")),
      members(index.open_db("members")),
      notes(index.open_db("notes")),
      manifests{index.open_db("manifest_variants"), 'm', "manifest variant"},
      layers{index.open_db("layer_variants"), 'l', "layer variant"},
      touches(kTouchBatch, kTouchMaxAgeMs, now_ms()) {
  reconcile();
}

// --- blobs ------------------------------------------------------------------------------------

void Cache::Impl::index_new_blob(const std::string& path, const std::string& digest, uint64_t size,
                                 const std::string& media_type) {
  std::lock_guard files(store_mutex);
  bool already_indexed = index.read([&](lmdb::Txn& txn) { return txn.get(blobs, digest).has_value(); });
  if (already_indexed) {  // same digest, same bytes: keep the file in place (it may be served)
    ::unlink(path.c_str());
    touches.add(digest, now_ms());
    return;
  }
  store.install(path, digest);
  try {
    std::string entry = encode(BlobEntry{size, media_type, now_ms()});
    index.write([&](lmdb::Txn& txn) { txn.put(blobs, digest, entry); });
  } catch (...) {
    ::unlink(store.path_of(digest).c_str());  // or open() would find an orphan
    throw;
  }
  total_bytes += size;
}

std::optional<BlobEntry> Cache::Impl::blob_entry(const std::string& digest) {
  return index.read([&](lmdb::Txn& txn) -> std::optional<BlobEntry> {
    auto value = txn.get(blobs, digest);
    if (!value) return std::nullopt;
    return decode_blob_entry(*value);
  });
}

void Cache::Impl::flush_touches() {
  auto batch = touches.take(now_ms());
  if (batch.empty()) return;
  index.write([&](lmdb::Txn& txn) {
    for (const auto& [digest, access_ms] : batch) {
      auto value = txn.get(blobs, digest);
      if (!value) continue;  // removed meanwhile
      BlobEntry entry = decode_blob_entry(*value);
      if (access_ms <= entry.access_ms) continue;
      entry.access_ms = access_ms;
      txn.put(blobs, digest, encode(entry));
    }
  });
}

// --- mappings ---------------------------------------------------------------------------------

void Cache::Impl::put_mapping(const MappingTable& table, const std::string& key, const VariantRecord& record) {
  check_key(key, table.name);
  for (const auto& digest : record.blobs) check_digest(digest);
  std::string value = encode(record);
  index.write([&](lmdb::Txn& txn) {
    for (const auto& digest : record.blobs)
      if (!txn.get(blobs, digest))
        throw CacheError(std::string(table.name) + " " + key + " needs blob " + digest + ", which is not cached");
    delete_mapping(txn, table, key);  // and the references of what it was
    txn.put(table.db, key, value);
    for (const auto& digest : record.blobs) txn.put(blob_refs, digest, reference(table, key));
  });
}

std::optional<VariantRecord> Cache::Impl::mapping(const MappingTable& table, const std::string& key) {
  if (key.empty() || key.size() > kMaxKeyBytes) return std::nullopt;
  return index.read([&](lmdb::Txn& txn) -> std::optional<VariantRecord> {
    auto value = txn.get(table.db, key);
    if (!value) return std::nullopt;
    return decode_variant(*value);
  });
}

void Cache::Impl::delete_mapping(lmdb::Txn& txn, const MappingTable& table, const std::string& key) {
  auto value = txn.get(table.db, key);
  if (!value) return;
  VariantRecord record = decode_variant(*value);
  for (const auto& digest : record.blobs) txn.del(blob_refs, digest, reference(table, key));
  txn.del(table.db, key);
}

void Cache::Impl::delete_mappings_needing(lmdb::Txn& txn, const std::string& digest) {
  std::vector<std::string> references;
  txn.scan_duplicates(blob_refs, digest, [&](std::string_view, std::string_view ref) {
    references.emplace_back(ref);
    return true;
  });
  for (const auto& ref : references) {
    const MappingTable& table = ref[0] == manifests.kind ? manifests : layers;
    delete_mapping(txn, table, ref.substr(1));
    txn.del(blob_refs, digest, ref);  // in case the record no longer listed it
  }
}

void Cache::Impl::delete_members_of(lmdb::Txn& txn, const std::string& digest) {
  std::vector<std::string> keys;
  txn.scan(members, member_key(digest, ""), [&](std::string_view key, std::string_view) {
    keys.emplace_back(key);
    return true;
  });
  for (const auto& key : keys) txn.del(members, key);
}

// --- space ------------------------------------------------------------------------------------

std::vector<std::string> Cache::Impl::evict() {
  flush_touches();  // LRU order needs the latest accesses
  if (total_bytes <= limits.max_bytes) return {};
  struct Candidate {
    int64_t access_ms;
    std::string digest;
    uint64_t size;
  };
  std::vector<Candidate> candidates;
  index.read([&](lmdb::Txn& txn) {
    txn.scan(blobs, "", [&](std::string_view digest, std::string_view value) {
      BlobEntry entry = decode_blob_entry(value);
      candidates.push_back({entry.access_ms, std::string(digest), entry.size});
      return true;
    });
  });
  std::sort(candidates.begin(), candidates.end(), [](const Candidate& a, const Candidate& b) {
    return std::tie(a.access_ms, a.digest) < std::tie(b.access_ms, b.digest);
  });
  RemovalClaims claims(pins);
  uint64_t remaining = total_bytes;
  for (const auto& candidate : candidates) {
    if (remaining <= limits.max_bytes) break;
    if (claims.claim(candidate.digest)) remaining -= std::min(remaining, candidate.size);
  }
  return remove_blobs(claims, false);
}

size_t Cache::Impl::collect_garbage() {
  flush_touches();
  int64_t cutoff_ms = now_ms() - std::chrono::duration_cast<std::chrono::milliseconds>(limits.gc_grace).count();
  std::vector<std::string> unreferenced;
  index.read([&](lmdb::Txn& txn) {
    txn.scan(blobs, "", [&](std::string_view digest, std::string_view value) {
      if (decode_blob_entry(value).access_ms <= cutoff_ms && !txn.get(blob_refs, digest))
        unreferenced.emplace_back(digest);
      return true;
    });
  });
  RemovalClaims claims(pins);
  for (const auto& digest : unreferenced) claims.claim(digest);
  size_t removed = remove_blobs(claims, true).size();
  drop_expired_tags();
  return removed;
}

std::vector<std::string> Cache::Impl::remove_blobs(const RemovalClaims& claims, bool only_unreferenced) {
  std::lock_guard files(store_mutex);
  std::vector<std::string> removed;
  uint64_t freed = 0;
  index.write([&](lmdb::Txn& txn) {
    removed.clear();
    freed = 0;
    for (const auto& digest : claims.digests()) {
      auto value = txn.get(blobs, digest);
      if (!value) continue;  // removed meanwhile
      if (only_unreferenced && txn.get(blob_refs, digest)) continue;  // a mapping arrived meanwhile
      freed += decode_blob_entry(*value).size;
      delete_mappings_needing(txn, digest);
      delete_members_of(txn, digest);
      txn.del(blobs, digest);
      removed.push_back(digest);
    }
  });
  total_bytes -= std::min<uint64_t>(total_bytes, freed);
  // Entries first, files second: a crash in between leaves orphan files, which open() deletes.
  for (const auto& digest : removed) {
    touches.forget(digest);
    store.remove(digest);
  }
  return removed;
}

void Cache::Impl::drop_expired_tags() {
  int64_t now = now_ms();
  index.write([&](lmdb::Txn& txn) {
    std::vector<std::string> expired;
    txn.scan(tags, "", [&](std::string_view key, std::string_view value) {
      if (decode_tag(value).expires_ms <= now) expired.emplace_back(key);
      return true;
    });
    for (const auto& key : expired) txn.del(tags, key);
  });
}

// --- consistency ------------------------------------------------------------------------------

// At open, before any other use: partial writes go, entries without a complete file go, then
// mappings needing a blob that has no entry, then files no entry names. blob_refs is rebuilt
// from the surviving mappings.
void Cache::Impl::reconcile() {
  store.empty_temp();
  StoreListing files = store.list();
  for (const auto& stray : files.strays) ::unlink(stray.c_str());
  std::set<std::string, std::less<>> indexed;  // by digest; looked up by string_view too
  uint64_t indexed_bytes = 0;
  index.write([&](lmdb::Txn& txn) {
    indexed.clear();
    indexed_bytes = 0;
    for (const auto& [digest, value] : all_entries(txn, blobs)) {
      auto file = files.blobs.find(digest);
      std::optional<BlobEntry> entry;
      try {
        entry = decode_blob_entry(value);
      } catch (const CacheError&) {  // a damaged entry is dropped like a missing file
      }
      if (entry && file != files.blobs.end() && file->second == entry->size) {
        indexed.insert(digest);
        indexed_bytes += entry->size;
      } else {
        txn.del(blobs, digest);
      }
    }
    // Members of blobs that are gone (and rows of an older key layout, scope first) go too.
    for (const auto& [key, value] : all_entries(txn, members))
      if (!indexed.contains(digest_of_member_key(key))) txn.del(members, key);
    txn.clear(blob_refs);
    for (const MappingTable* table : {&manifests, &layers}) {
      for (const auto& [key, value] : all_entries(txn, table->db)) {
        std::optional<VariantRecord> record;
        try {
          record = decode_variant(value);
        } catch (const CacheError&) {
        }
        bool complete = record && std::all_of(record->blobs.begin(), record->blobs.end(),
                                              [&](const std::string& digest) { return indexed.contains(digest); });
        if (!complete) {
          txn.del(table->db, key);
          continue;
        }
        for (const auto& digest : record->blobs) txn.put(blob_refs, digest, reference(*table, key));
      }
    }
  });
  for (const auto& [digest, size] : files.blobs)
    if (!indexed.contains(digest)) store.remove(digest);
  total_bytes = indexed_bytes;
}

std::vector<std::string> Cache::Impl::check() {
  std::lock_guard files(store_mutex);
  std::vector<std::string> problems;
  index.read([&](lmdb::Txn& txn) {
    StoreListing listing = store.list();
    std::set<std::string, std::less<>> indexed;  // by digest; looked up by string_view too
    txn.scan(blobs, "", [&](std::string_view digest_view, std::string_view value) {
      std::string digest(digest_view);
      indexed.insert(digest);
      auto file = listing.blobs.find(digest);
      try {
        BlobEntry entry = decode_blob_entry(value);
        if (file == listing.blobs.end())
          problems.push_back("index entry without file: " + digest);
        else if (file->second != entry.size)
          problems.push_back("size mismatch: " + digest + " indexed as " + std::to_string(entry.size) +
                             " bytes, file has " + std::to_string(file->second));
      } catch (const CacheError& e) {
        problems.push_back(digest + ": " + e.what());
      }
      return true;
    });
    for (const auto& [digest, size] : listing.blobs)
      if (!indexed.contains(digest)) problems.push_back("file without index entry: " + store.path_of(digest));
    for (const auto& stray : listing.strays) problems.push_back("stray file: " + stray);
    check_mappings(txn, problems);
    txn.scan(members, "", [&](std::string_view key, std::string_view) {
      const std::string_view digest = digest_of_member_key(key);
      if (!indexed.contains(digest)) problems.push_back("member row without blob: " + std::string(digest));
      return true;
    });
  });
  return problems;
}

// Every blob a mapping needs has an entry, and blob_refs holds exactly the mappings' needs.
void Cache::Impl::check_mappings(lmdb::Txn& txn, std::vector<std::string>& problems) {
  std::set<std::pair<std::string, std::string>> expected_refs, actual_refs;
  for (const MappingTable* table : {&manifests, &layers}) {
    txn.scan(table->db, "", [&](std::string_view key, std::string_view value) {
      try {
        for (const auto& digest : decode_variant(value).blobs) {
          if (!txn.get(blobs, digest))
            problems.push_back(std::string(table->name) + " " + std::string(key) + " needs missing blob " + digest);
          expected_refs.emplace(digest, reference(*table, key));
        }
      } catch (const CacheError& e) {
        problems.push_back(std::string(table->name) + " " + std::string(key) + ": " + e.what());
      }
      return true;
    });
  }
  txn.scan(blob_refs, "", [&](std::string_view digest, std::string_view ref) {
    actual_refs.emplace(digest, ref);
    return true;
  });
  for (const auto& [digest, ref] : expected_refs)
    if (!actual_refs.contains({digest, ref})) problems.push_back("missing reference " + digest + " <- " + ref);
  for (const auto& [digest, ref] : actual_refs)
    if (!expected_refs.contains({digest, ref})) problems.push_back("dangling reference " + digest + " <- " + ref);
}

// --- Cache ------------------------------------------------------------------------------------

Cache::Cache(const std::string& dir, CacheLimits limits, Clock clock)
    : impl_(std::make_unique<Impl>(dir, limits, std::move(clock))) {}

Cache::~Cache() {
  try {
    impl_->flush_touches();
  } catch (const std::exception&) {  // last accesses are hints; losing them is harmless
  }
}

std::unique_ptr<BlobWriter> Cache::begin_blob() {
  return std::make_unique<StoreBlobWriter>(
      impl_->store, [impl = impl_.get()](const std::string& path, const std::string& digest, uint64_t size,
                                         const std::string& media_type) {
        impl->index_new_blob(path, digest, size, media_type);
      });
}

void Cache::adopt_blob(const std::string& path, const std::string& digest, uint64_t size,
                       const std::string& media_type) {
  check_digest(digest);
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode))
    throw CacheError("cannot adopt " + path + ": not a regular file");
  if (static_cast<uint64_t>(st.st_size) != size)
    throw CacheError("cannot adopt " + path + ": " + std::to_string(st.st_size) + " bytes, expected " +
                     std::to_string(size));
  impl_->index_new_blob(path, digest, size, media_type);
}

std::optional<BlobInfo> Cache::blob(const std::string& digest) {
  if (!is_sha256_digest(digest)) return std::nullopt;
  auto entry = impl_->blob_entry(digest);
  if (!entry) return std::nullopt;
  int64_t access_ms = std::max(entry->access_ms, impl_->touches.latest(digest).value_or(0));
  return BlobInfo{digest, entry->size, entry->media_type, access_ms / 1000};
}

std::string Cache::blob_path(const std::string& digest) const {
  check_digest(digest);
  if (!impl_->blob_entry(digest)) throw CacheError("blob " + digest + " is not cached");
  return impl_->store.path_of(digest);
}

void Cache::touch(const std::string& digest) {
  if (impl_->touches.add(digest, impl_->now_ms())) impl_->flush_touches();
}

Cache::Pin::Pin(Cache* cache, std::string digest) : cache_(cache), digest_(std::move(digest)) {
  if (cache_) cache_->impl_->pins.acquire(digest_);
}

Cache::Pin::Pin(Pin&& other) noexcept
    : cache_(std::exchange(other.cache_, nullptr)), digest_(std::move(other.digest_)) {}

Cache::Pin& Cache::Pin::operator=(Pin&& other) noexcept {
  if (this != &other) {
    if (cache_) cache_->impl_->pins.release(digest_);
    cache_ = std::exchange(other.cache_, nullptr);
    digest_ = std::move(other.digest_);
  }
  return *this;
}

Cache::Pin::~Pin() {
  if (cache_) cache_->impl_->pins.release(digest_);
}

Cache::Pin Cache::pin(const std::string& digest) { return Pin(this, digest); }

void Cache::put_manifest_variant(const std::string& key, const VariantRecord& record) {
  impl_->put_mapping(impl_->manifests, key, record);
}

std::optional<VariantRecord> Cache::manifest_variant(const std::string& key) {
  return impl_->mapping(impl_->manifests, key);
}

void Cache::put_layer_variant(const std::string& key, const VariantRecord& record) {
  impl_->put_mapping(impl_->layers, key, record);
}

std::optional<VariantRecord> Cache::layer_variant(const std::string& key) { return impl_->mapping(impl_->layers, key); }

std::vector<std::pair<std::string, VariantRecord>> Cache::variants_of(const std::string& source_key) {
  std::vector<std::pair<std::string, VariantRecord>> variants;
  impl_->index.read([&](lmdb::Txn& txn) {
    txn.scan(impl_->manifests.db, source_key + "|", [&](std::string_view key, std::string_view value) {
      variants.emplace_back(std::string(key), decode_variant(value));
      return true;
    });
  });
  return variants;
}

void Cache::put_tag(const std::string& key, const std::string& digest, std::chrono::seconds ttl) {
  check_key(key, "tag");
  std::string value = encode(TagEntry{digest, impl_->now_ms() + ttl.count() * 1000});
  impl_->index.write([&](lmdb::Txn& txn) { txn.put(impl_->tags, key, value); });
}

void Cache::drop_tag(const std::string& key) {
  if (key.empty() || key.size() > kMaxKeyBytes) return;
  impl_->index.write([&](lmdb::Txn& txn) { txn.del(impl_->tags, key); });
}

void Cache::drop_tags_naming(const std::string& prefix, const std::string& digest) {
  impl_->index.write([&](lmdb::Txn& txn) {
    std::vector<std::string> keys;
    txn.scan(impl_->tags, prefix, [&](std::string_view key, std::string_view value) {
      if (decode_tag(value).digest == digest) keys.emplace_back(key);
      return true;
    });
    for (const auto& key : keys) txn.del(impl_->tags, key);
  });
}

std::optional<std::string> Cache::tag(const std::string& key) {
  if (key.empty() || key.size() > kMaxKeyBytes) return std::nullopt;
  auto is_live = [&](const TagEntry& entry) { return entry.expires_ms > impl_->now_ms(); };
  auto entry = impl_->index.read([&](lmdb::Txn& txn) -> std::optional<TagEntry> {
    auto value = txn.get(impl_->tags, key);
    if (!value) return std::nullopt;
    return decode_tag(*value);
  });
  if (!entry) return std::nullopt;
  if (is_live(*entry)) return entry->digest;
  impl_->index.write([&](lmdb::Txn& txn) {  // expired: remove, unless replaced meanwhile
    auto value = txn.get(impl_->tags, key);
    if (value && !is_live(decode_tag(*value))) txn.del(impl_->tags, key);
  });
  return std::nullopt;
}

void Cache::put_member(const std::string& scope, const std::string& digest, const std::string& proof) {
  std::string key = member_key(digest, scope);
  check_key(key, "member");
  impl_->index.write([&](lmdb::Txn& txn) { txn.put(impl_->members, key, proof); });
}

std::optional<std::string> Cache::member(const std::string& scope, const std::string& digest) {
  std::string key = member_key(digest, scope);
  if (key.size() > kMaxKeyBytes) return std::nullopt;
  return impl_->index.read([&](lmdb::Txn& txn) -> std::optional<std::string> {
    auto value = txn.get(impl_->members, key);
    if (!value) return std::nullopt;
    return std::string(*value);
  });
}

std::vector<std::string> Cache::scopes_of(const std::string& digest) {
  return impl_->index.read([&](lmdb::Txn& txn) {
    std::vector<std::string> scopes;
    const std::string prefix = member_key(digest, "");
    txn.scan(impl_->members, prefix, [&](std::string_view key, std::string_view) {
      scopes.emplace_back(key.substr(prefix.size()));
      return true;
    });
    return scopes;
  });
}

std::string Cache::temp_dir() const { return impl_->store.temp_dir(); }

void Cache::put_failure(const std::string& key, const FailureRecord& record) {
  check_key(key, "failure");
  std::string value = encode(record);
  impl_->index.write([&](lmdb::Txn& txn) { txn.put(impl_->failures, key, value); });
}

std::optional<FailureRecord> Cache::failure(const std::string& key) {
  if (key.empty() || key.size() > kMaxKeyBytes) return std::nullopt;
  return impl_->index.read([&](lmdb::Txn& txn) -> std::optional<FailureRecord> {
    auto value = txn.get(impl_->failures, key);
    if (!value) return std::nullopt;
    return decode_failure(*value);
  });
}

void Cache::clear_failure(const std::string& key) {
  if (key.empty() || key.size() > kMaxKeyBytes) return;
  impl_->index.write([&](lmdb::Txn& txn) { txn.del(impl_->failures, key); });
}

void Cache::put_note(const std::string& key, const std::string& value) {
  check_key(key, "note");
  impl_->index.write([&](lmdb::Txn& txn) { txn.put(impl_->notes, key, value); });
}

std::optional<std::string> Cache::note(const std::string& key) {
  if (key.empty() || key.size() > kMaxKeyBytes) return std::nullopt;
  return impl_->index.read([&](lmdb::Txn& txn) -> std::optional<std::string> {
    auto value = txn.get(impl_->notes, key);
    if (!value) return std::nullopt;
    return std::string(*value);
  });
}

std::vector<std::pair<std::string, std::string>> Cache::notes(const std::string& prefix) {
  return impl_->index.read([&](lmdb::Txn& txn) {
    std::vector<std::pair<std::string, std::string>> out;
    txn.scan(impl_->notes, prefix, [&](std::string_view key, std::string_view value) {
      out.emplace_back(key, value);
      return true;
    });
    return out;
  });
}

void Cache::drop_note(const std::string& key) {
  if (key.empty() || key.size() > kMaxKeyBytes) return;
  impl_->index.write([&](lmdb::Txn& txn) { txn.del(impl_->notes, key); });
}

uint64_t Cache::total_bytes() { return impl_->total_bytes; }

size_t Cache::evict() {
  std::vector<std::string> evicted = impl_->evict();
  if (on_evict)
    for (const auto& digest : evicted) on_evict(digest);
  return evicted.size();
}

size_t Cache::collect_garbage() { return impl_->collect_garbage(); }

std::vector<std::string> Cache::check() { return impl_->check(); }

}  // namespace accel::cache
