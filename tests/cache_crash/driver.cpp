// cache-crash-driver: drives the variant cache for the crash-consistency test
// (test_cache_crash.py kills it with SIGKILL at random moments and checks what it left).
//
//   cache-crash-driver work DIR SEED   writes, maps, touches, serves and evicts blobs forever
//   cache-crash-driver check DIR       opens the cache (reconciling) and prints its problems;
//                                      exits 1 if there are any
//   cache-crash-driver dump DIR        prints the raw LMDB index as JSON, read with the plain
//                                      LMDB API (not through Cache), for an independent check
//
// `work` prints one line per event ("commit <digest>", "evict <n>", ...) so the test can see
// that it made progress, and exits 3 if it ever reads a blob that is not complete.
#include <fcntl.h>
#include <lmdb.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <filesystem>
#include <iostream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "cache/blob_store.hpp"
#include "cache/cache.hpp"

using namespace accel::cache;

namespace {

constexpr uint64_t kMaxCacheBytes = 24ull << 20;  // small: eviction runs all the time
constexpr size_t kMinBlob = 1024;
constexpr size_t kMaxBlob = 4u << 20;
constexpr size_t kRecentBlobs = 16;

// Thread-safe line output: one write(2) per line, so lines survive SIGKILL whole.
void say(const std::string& line) {
  std::string text = line + "\n";
  [[maybe_unused]] ssize_t ignored = ::write(STDOUT_FILENO, text.data(), text.size());
}

[[noreturn]] void die(const std::string& why) {
  std::string text = "FATAL: " + why + "\n";
  [[maybe_unused]] ssize_t ignored = ::write(STDERR_FILENO, text.data(), text.size());
  std::_Exit(3);
}

// Fast pseudo-random bytes (xorshift64*): blob contents only need to differ, not be secure.
class ByteGenerator {
 public:
  explicit ByteGenerator(uint64_t seed) : state_(seed | 1) {}
  void fill(std::vector<char>& buffer) {
    for (size_t i = 0; i + 8 <= buffer.size(); i += 8) {
      state_ ^= state_ >> 12;
      state_ ^= state_ << 25;
      state_ ^= state_ >> 27;
      uint64_t word = state_ * 0x2545F4914F6CDD1Dull;
      std::memcpy(buffer.data() + i, &word, 8);
    }
  }

 private:
  uint64_t state_;
};

// The digests committed lately, shared by the writer and the server thread.
class RecentBlobs {
 public:
  void add(const std::string& digest) {
    std::lock_guard lock(mutex_);
    digests_.push_back(digest);
    if (digests_.size() > kRecentBlobs) digests_.pop_front();
  }
  std::vector<std::string> pick(std::mt19937_64& random, size_t count) {
    std::lock_guard lock(mutex_);
    std::vector<std::string> picked;
    for (size_t i = 0; i < count && !digests_.empty(); ++i)
      picked.push_back(digests_[random() % digests_.size()]);
    return picked;
  }

 private:
  std::mutex mutex_;
  std::deque<std::string> digests_;
};

std::string random_digest(std::mt19937_64& random) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string digest = "sha256:";
  for (int i = 0; i < 64; ++i) digest += kHex[random() % 16];
  return digest;
}

// Writes one blob of `size` random bytes through a BlobWriter. Some writers are abandoned
// halfway or given a wrong expected digest: both must leave nothing behind.
std::optional<std::string> write_blob(Cache& cache, std::mt19937_64& random, ByteGenerator& bytes, size_t size) {
  auto writer = cache.begin_blob();
  std::vector<char> chunk(64 * 1024);
  int fate = static_cast<int>(random() % 20);
  for (size_t written = 0; written < size;) {
    bytes.fill(chunk);
    size_t n = std::min(chunk.size(), size - written);
    writer->write(chunk.data(), n);
    written += n;
    if (fate == 0 && written > size / 2) return std::nullopt;  // abandoned
  }
  if (fate == 1) {
    try {
      writer->commit("application/test", random_digest(random));
      die("a wrong expected digest was accepted");
    } catch (const CacheError&) {
      return std::nullopt;
    }
  }
  return writer->commit("application/test");
}

// Writes a file in the cache's temporary directory and adopts it (the other way blobs enter
// the cache); a file left there by a kill is removed when the cache is opened.
std::string adopt_blob(Cache& cache, ByteGenerator& bytes, size_t size) {
  std::string path = cache.temp_dir() + "/adopt";
  {
    UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
    if (fd.get() < 0) die("cannot create " + path);
    std::vector<char> data(size);
    bytes.fill(data);
    write_all(fd.get(), data.data(), data.size(), path);
  }
  HashedFile file = hash_file(path);
  cache.adopt_blob(path, file.digest, file.size, "application/test");
  return file.digest;
}

VariantRecord variant(const std::vector<std::string>& blobs) {
  VariantRecord record;
  record.digest = blobs.front();
  record.media_type = "application/vnd.oci.image.manifest.v1+json";
  record.size = 1;
  record.blobs = blobs;
  record.created = 1;
  return record;
}

// Puts a mapping; losing the race against eviction (a blob gone meanwhile) is expected.
template <class Put>
void try_put(const char* what, Put&& put) {
  try {
    put();
    say(std::string("map ") + what);
  } catch (const CacheError&) {
    say(std::string("map-refused ") + what);
  }
}

void write_forever(Cache& cache, uint64_t seed, RecentBlobs& recent) {
  std::mt19937_64 random(seed);
  ByteGenerator bytes(seed * 7919);
  std::uniform_int_distribution<size_t> blob_size(kMinBlob, kMaxBlob);
  for (uint64_t round = 0;; ++round) {
    size_t size = blob_size(random);
    std::optional<std::string> digest =
        round % 7 == 3 ? adopt_blob(cache, bytes, size) : write_blob(cache, random, bytes, size);
    if (!digest) continue;
    say("commit " + *digest);
    recent.add(*digest);
    try_put("layer", [&] { cache.put_layer_variant(*digest + "|estargz|", variant({*digest})); });
    std::vector<std::string> needs{*digest};
    for (auto& other : recent.pick(random, 2)) needs.push_back(other);
    std::string source = random_digest(random);
    try_put("manifest", [&] { cache.put_manifest_variant(source + "|estargz|", variant(needs)); });
    if (round % 5 == 0) cache.put_tag("repo:" + std::to_string(round % 50), *digest, std::chrono::seconds(1));
    if (round % 9 == 0) cache.put_failure("source:" + std::to_string(round % 50), FailureRecord{"test", 1, 0});
  }
}

// Reads a blob the way the proxy serves one: pinned, through blob_path, and checks it whole.
void serve(Cache& cache, const std::string& digest) {
  auto pin = cache.pin(digest);
  auto info = cache.blob(digest);
  if (!info) return;  // evicted before the pin
  cache.touch(digest);
  HashedFile file = hash_file(cache.blob_path(digest));
  if (file.digest != digest || file.size != info->size)
    die("served " + digest + " but read " + std::to_string(file.size) + " bytes hashing to " + file.digest);
}

void serve_and_evict_forever(Cache& cache, uint64_t seed, RecentBlobs& recent) {
  std::mt19937_64 random(seed + 1);
  for (uint64_t round = 0;; ++round) {
    for (const auto& digest : recent.pick(random, 2)) serve(cache, digest);
    if (size_t evicted = cache.evict()) say("evict " + std::to_string(evicted));
    if (round % 20 == 0) say("gc " + std::to_string(cache.collect_garbage()));
    if (cache.total_bytes() > kMaxCacheBytes + kMaxBlob * 4) die("the cache outgrew its limit");
    std::this_thread::sleep_for(std::chrono::milliseconds(1 + random() % 5));
  }
}

int work(const std::string& dir, uint64_t seed) {
  CacheLimits limits;
  limits.max_bytes = kMaxCacheBytes;
  limits.map_size = 64 * 1024;  // small, so that kills also land while the map grows
  limits.gc_grace = std::chrono::seconds(1);
  Cache cache(dir, limits);
  say("open " + std::to_string(cache.total_bytes()));
  RecentBlobs recent;
  auto run = [](auto&& body) {
    return [body] {
      try {
        body();
      } catch (const std::exception& e) {
        die(e.what());
      }
    };
  };
  std::thread server(run([&] { serve_and_evict_forever(cache, seed, recent); }));
  run([&] { write_forever(cache, seed, recent); })();
  server.join();
  return 0;
}

int check(const std::string& dir) {
  Cache cache(dir);
  auto problems = cache.check();
  for (const auto& problem : problems) std::cout << problem << "\n";
  if (problems.empty()) std::cout << "consistent: " << cache.total_bytes() << " bytes\n";
  return problems.empty() ? 0 : 1;
}

// --- dump: the index through the plain LMDB API -----------------------------------------------

void require(int rc, const char* what) {
  if (rc != MDB_SUCCESS) throw std::runtime_error(std::string(what) + ": " + mdb_strerror(rc));
}

nlohmann::json dump_database(MDB_txn* txn, const char* name, bool values_are_json) {
  nlohmann::json out = values_are_json ? nlohmann::json::object() : nlohmann::json::array();
  MDB_dbi db;
  int rc = mdb_dbi_open(txn, name, 0, &db);
  if (rc == MDB_NOTFOUND) return out;
  require(rc, name);
  MDB_cursor* cursor;
  require(mdb_cursor_open(txn, db, &cursor), "cursor");
  MDB_val key, value;
  for (rc = mdb_cursor_get(cursor, &key, &value, MDB_FIRST); rc == MDB_SUCCESS;
       rc = mdb_cursor_get(cursor, &key, &value, MDB_NEXT)) {
    std::string k(static_cast<char*>(key.mv_data), key.mv_size);
    std::string v(static_cast<char*>(value.mv_data), value.mv_size);
    if (values_are_json)
      out[k] = nlohmann::json::parse(v);
    else
      out.push_back({k, v});
  }
  mdb_cursor_close(cursor);
  return out;
}

int dump(const std::string& dir) {
  MDB_env* env;
  require(mdb_env_create(&env), "create");
  require(mdb_env_set_maxdbs(env, 16), "maxdbs");
  require(mdb_env_open(env, (dir + "/index").c_str(), MDB_RDONLY, 0644), "open");
  MDB_txn* txn;
  require(mdb_txn_begin(env, nullptr, MDB_RDONLY, &txn), "begin");
  nlohmann::json out;
  for (const char* name : {"blobs", "manifest_variants", "layer_variants", "tags", "failures"})
    out[name] = dump_database(txn, name, true);
  out["blob_refs"] = dump_database(txn, "blob_refs", false);
  mdb_txn_abort(txn);
  mdb_env_close(env);
  std::cout << out.dump() << "\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  try {
    if (args.size() == 3 && args[0] == "work") return work(args[1], std::stoull(args[2]));
    if (args.size() == 2 && args[0] == "check") return check(args[1]);
    if (args.size() == 2 && args[0] == "dump") return dump(args[1]);
  } catch (const std::exception& e) {
    std::cerr << "cache-crash-driver: " << e.what() << "\n";
    return 2;
  }
  std::cerr << "usage: cache-crash-driver work DIR SEED | check DIR | dump DIR\n";
  return 2;
}
