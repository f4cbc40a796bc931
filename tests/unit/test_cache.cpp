// The variant cache: blobs (write, verify, adopt), persistence across reopen, mappings and
// their blob references, tags with expiry, failures, LRU eviction with pins, garbage
// collection, reconciliation after damage on disk, map growth, and concurrent use.
#include <unistd.h>

#include <algorithm>

#include <atomic>
#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "cache/cache.hpp"
#include "test_files.hpp"

using namespace accel::cache;
namespace fs = std::filesystem;
using std::chrono::seconds;

namespace {

// A clock the test moves by hand, starting at a fixed date.
class ManualClock {
 public:
  Clock clock() {
    return [now = now_] { return std::chrono::system_clock::time_point(std::chrono::milliseconds(now->load())); };
  }
  void advance(std::chrono::milliseconds by) { *now_ += by.count(); }

 private:
  std::shared_ptr<std::atomic<int64_t>> now_ = std::make_shared<std::atomic<int64_t>>(1'700'000'000'000);
};

std::string write_blob(Cache& cache, const std::string& bytes, const std::string& media_type = "application/test") {
  auto writer = cache.begin_blob();
  writer->write(bytes.data(), bytes.size());
  return writer->commit(media_type);
}

VariantRecord variant_needing(std::vector<std::string> blobs) {
  VariantRecord record;
  record.digest = blobs.empty() ? "sha256:" + std::string(64, '0') : blobs.front();
  record.media_type = "application/vnd.oci.image.manifest.v1+json";
  record.size = 123;
  record.blobs = std::move(blobs);
  record.created = 1'700'000'000;
  return record;
}

const std::string kHelloDigest = "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
const std::string kSource = "sha256:" + std::string(64, 'a');

}  // namespace

TEST_CASE("a committed blob is indexed under its digest and served from its file", "[cache]") {
  TempDir dir;
  Cache cache(dir.path());
  std::string digest = write_blob(cache, "hello", "application/octet-stream");
  CHECK(digest == kHelloDigest);
  auto info = cache.blob(digest);
  REQUIRE(info);
  CHECK(info->size == 5);
  CHECK(info->media_type == "application/octet-stream");
  CHECK(info->last_access > 0);
  CHECK(read_file(cache.blob_path(digest)) == "hello");
  CHECK(cache.blob_path(digest) == dir.path() + "/blobs/sha256/" + digest.substr(7));
  CHECK(cache.total_bytes() == 5);
  CHECK(files_in(dir.path() + "/blobs/tmp") == 0);
  CHECK(cache.check().empty());
}

TEST_CASE("a blob whose digest is not the expected one leaves nothing behind", "[cache]") {
  TempDir dir;
  Cache cache(dir.path());
  auto writer = cache.begin_blob();
  writer->write("hello", 5);
  CHECK_THROWS_AS(writer->commit("application/test", "sha256:" + std::string(64, 'b')), CacheError);
  CHECK_THROWS_AS(writer->write("x", 1), CacheError);
  writer.reset();
  CHECK_FALSE(cache.blob(kHelloDigest));
  CHECK_THROWS_AS(cache.blob_path(kHelloDigest), CacheError);
  CHECK(files_in(dir.path() + "/blobs/sha256") == 0);
  CHECK(files_in(dir.path() + "/blobs/tmp") == 0);
  CHECK(cache.total_bytes() == 0);

  SECTION("the expected digest is accepted") {
    auto good = cache.begin_blob();
    good->write("hello", 5);
    CHECK(good->commit("application/test", kHelloDigest) == kHelloDigest);
  }
  SECTION("an abandoned writer removes its temporary file") {
    auto abandoned = cache.begin_blob();
    abandoned->write("partial", 7);
    CHECK(files_in(dir.path() + "/blobs/tmp") == 1);
    abandoned.reset();
    CHECK(files_in(dir.path() + "/blobs/tmp") == 0);
  }
}

TEST_CASE("a blob written through the writer's path is hashed from the file", "[cache]") {
  TempDir dir;
  Cache cache(dir.path());
  auto writer = cache.begin_blob();
  std::string temp = writer->path();
  {  // another writer replaces the temporary file (write elsewhere, rename over it)
    std::ofstream(temp + ".other", std::ios::binary) << "hello";
    fs::rename(temp + ".other", temp);
  }
  CHECK(writer->commit("application/test", kHelloDigest) == kHelloDigest);
  CHECK(cache.blob(kHelloDigest)->size == 5);
}

TEST_CASE("adopting a file moves it into the store", "[cache]") {
  TempDir dir;
  Cache cache(dir.path());
  std::string file = dir.path() + "/finished";
  std::ofstream(file, std::ios::binary) << "hello";
  CHECK_THROWS_AS(cache.adopt_blob(file, kHelloDigest, 4, "application/test"), CacheError);
  cache.adopt_blob(file, kHelloDigest, 5, "application/test");
  CHECK_FALSE(fs::exists(file));
  CHECK(read_file(cache.blob_path(kHelloDigest)) == "hello");
  CHECK(cache.total_bytes() == 5);

  SECTION("adopting a blob already cached keeps one copy") {
    std::ofstream(file, std::ios::binary) << "hello";
    cache.adopt_blob(file, kHelloDigest, 5, "application/test");
    CHECK_FALSE(fs::exists(file));
    CHECK(cache.total_bytes() == 5);
    CHECK(cache.check().empty());
  }
}

TEST_CASE("blobs, mappings, tags and failures survive a reopen", "[cache]") {
  TempDir dir;
  std::string digest;
  {
    Cache cache(dir.path());
    digest = write_blob(cache, "hello");
    cache.put_manifest_variant(kSource + "|estargz|", variant_needing({digest}));
    cache.put_layer_variant(kSource + "|estargz|layer", variant_needing({digest}));
    cache.put_tag("docker.io/library/alpine:latest", digest, seconds(3600));
    cache.put_failure(kSource + "|estargz|", FailureRecord{"upstream 500", 2, 1'800'000'000});
    cache.touch(digest);
  }
  Cache cache(dir.path());
  CHECK(cache.blob(digest)->size == 5);
  CHECK(cache.total_bytes() == 5);
  CHECK(cache.manifest_variant(kSource + "|estargz|"));
  CHECK(cache.layer_variant(kSource + "|estargz|layer"));
  CHECK(cache.tag("docker.io/library/alpine:latest") == digest);
  CHECK(cache.failure(kSource + "|estargz|")->attempts == 2);
  CHECK(cache.check().empty());
}

TEST_CASE("a cache directory is opened by one Cache at a time", "[cache]") {
  TempDir dir;
  Cache cache(dir.path());
  CHECK_THROWS_AS(Cache(dir.path()), CacheError);
}

TEST_CASE("mappings round trip and name only cached blobs", "[cache]") {
  TempDir dir;
  Cache cache(dir.path());
  std::string layer = write_blob(cache, "layer");
  std::string manifest = write_blob(cache, "manifest");

  VariantRecord record = variant_needing({manifest, layer});
  record.diff_id = "sha256:" + std::string(64, 'd');
  record.annotations = {{"containerd.io/snapshot/stargz/toc.digest", "sha256:" + std::string(64, 'e')}};
  cache.put_layer_variant(kSource + "|estargz|", record);
  auto read = cache.layer_variant(kSource + "|estargz|");
  REQUIRE(read);
  CHECK(read->digest == record.digest);
  CHECK(read->media_type == record.media_type);
  CHECK(read->size == record.size);
  CHECK(read->diff_id == record.diff_id);
  CHECK(read->annotations == record.annotations);
  CHECK(read->blobs == record.blobs);
  CHECK(read->created == record.created);
  CHECK_FALSE(cache.manifest_variant(kSource + "|estargz|"));  // separate tables
  CHECK_FALSE(cache.layer_variant("unknown"));

  std::string missing = "sha256:" + std::string(64, 'f');
  CHECK_THROWS_AS(cache.put_manifest_variant(kSource + "|estargz|", variant_needing({manifest, missing})), CacheError);
  CHECK_FALSE(cache.manifest_variant(kSource + "|estargz|"));
  CHECK_THROWS_AS(cache.put_manifest_variant(std::string(501, 'k'), variant_needing({manifest})), CacheError);
  CHECK_THROWS_AS(cache.put_manifest_variant(kSource + "|x|", variant_needing({"sha256:short"})), CacheError);
  CHECK(cache.check().empty());
}

TEST_CASE("variants_of lists the manifest variants of one source", "[cache]") {
  TempDir dir;
  Cache cache(dir.path());
  std::string blob = write_blob(cache, "manifest");
  std::string other_source = "sha256:" + std::string(63, 'a') + "b";
  cache.put_manifest_variant(kSource + "|estargz|", variant_needing({blob}));
  cache.put_manifest_variant(kSource + "|zstdchunked|level=3", variant_needing({blob}));
  cache.put_manifest_variant(other_source + "|estargz|", variant_needing({blob}));
  cache.put_layer_variant(kSource + "|soci|", variant_needing({blob}));

  auto variants = cache.variants_of(kSource);
  REQUIRE(variants.size() == 2);
  CHECK(variants[0].first == kSource + "|estargz|");
  CHECK(variants[1].first == kSource + "|zstdchunked|level=3");
  CHECK(variants[1].second.blobs == std::vector<std::string>{blob});
  CHECK(cache.variants_of("sha256:" + std::string(64, 'c')).empty());
}

TEST_CASE("tags expire after their ttl", "[cache]") {
  TempDir dir;
  ManualClock clock;
  Cache cache(dir.path(), {}, clock.clock());
  std::string digest = "sha256:" + std::string(64, '1');
  cache.put_tag("registry/repo:tag", digest, seconds(60));
  CHECK(cache.tag("registry/repo:tag") == digest);
  clock.advance(seconds(59));
  CHECK(cache.tag("registry/repo:tag") == digest);
  clock.advance(seconds(1));
  CHECK_FALSE(cache.tag("registry/repo:tag"));
  CHECK_FALSE(cache.tag("registry/repo:other"));

  cache.put_tag("registry/repo:tag", digest, seconds(60));  // refreshed
  CHECK(cache.tag("registry/repo:tag") == digest);
  cache.put_tag("registry/repo:short", digest, seconds(0));
  CHECK_FALSE(cache.tag("registry/repo:short"));
}

TEST_CASE("notes are stored, listed by prefix, dropped, and survive a reopen", "[cache]") {
  TempDir dir;
  {
    Cache cache(dir.path());
    CHECK_FALSE(cache.note("prefetch|a"));
    cache.put_note("prefetch|a", "1");
    cache.put_note("prefetch|b", "2");
    cache.put_note("other|c", "3");
    cache.put_note("prefetch|a", "4");
    CHECK(cache.note("prefetch|a") == "4");
    auto listed = cache.notes("prefetch|");
    REQUIRE(listed.size() == 2);
    CHECK(listed[0] == std::pair<std::string, std::string>{"prefetch|a", "4"});
    CHECK(listed[1].first == "prefetch|b");
    CHECK_THROWS_AS(cache.put_note(std::string(501, 'k'), "x"), CacheError);
  }
  Cache cache(dir.path());
  CHECK(cache.note("prefetch|b") == "2");
  CHECK(cache.check().empty());
  cache.drop_note("prefetch|b");
  cache.drop_note("prefetch|b");
  CHECK_FALSE(cache.note("prefetch|b"));
  CHECK(cache.notes("").size() == 2);
}

TEST_CASE("failures are stored, read and cleared", "[cache]") {
  TempDir dir;
  Cache cache(dir.path());
  CHECK_FALSE(cache.failure("k"));
  cache.put_failure("k", FailureRecord{"layer too large", 1, 100});
  cache.put_failure("k", FailureRecord{"layer too large", 2, 200});
  auto failure = cache.failure("k");
  REQUIRE(failure);
  CHECK(failure->reason == "layer too large");
  CHECK(failure->attempts == 2);
  CHECK(failure->retry_after == 200);
  cache.clear_failure("k");
  CHECK_FALSE(cache.failure("k"));
  cache.clear_failure("k");  // clearing twice is fine
}

TEST_CASE("eviction removes the least recently used unpinned blobs", "[cache]") {
  TempDir dir;
  ManualClock clock;
  CacheLimits limits;
  limits.max_bytes = 250;
  Cache cache(dir.path(), limits, clock.clock());
  std::vector<std::string> evicted;
  cache.on_evict = [&](const std::string& digest) { evicted.push_back(digest); };

  std::string a = write_blob(cache, std::string(100, 'a'));
  clock.advance(seconds(1));
  std::string b = write_blob(cache, std::string(100, 'b'));
  clock.advance(seconds(1));
  std::string c = write_blob(cache, std::string(100, 'c'));
  clock.advance(seconds(1));
  CHECK(cache.total_bytes() == 300);

  SECTION("oldest first") {
    CHECK(cache.evict() == 1);
    CHECK(evicted == std::vector<std::string>{a});
  }
  SECTION("a touch makes a blob recent") {
    cache.touch(a);
    CHECK(cache.evict() == 1);
    CHECK(evicted == std::vector<std::string>{b});
    CHECK(cache.blob(a));
  }
  SECTION("pinned blobs stay") {
    {
      auto pin = cache.pin(a);
      CHECK(cache.evict() == 1);
      CHECK(evicted == std::vector<std::string>{b});
      CHECK(cache.blob(a));
      Cache::Pin moved = std::move(pin);  // still pinned
      clock.advance(seconds(1));
      write_blob(cache, std::string(100, 'd'));
      CHECK(cache.evict() == 1);
      CHECK(evicted.back() == c);
    }
    clock.advance(seconds(1));
    write_blob(cache, std::string(100, 'e'));
    CHECK(cache.evict() == 1);  // unpinned now
    CHECK(evicted.back() == a);
  }
  CHECK(cache.total_bytes() <= 250);
  for (const auto& digest : evicted) {
    CHECK_FALSE(cache.blob(digest));
    CHECK_FALSE(fs::exists(dir.path() + "/blobs/sha256/" + digest.substr(7)));
  }
  CHECK(cache.check().empty());
}

TEST_CASE("eviction under the limit does nothing", "[cache]") {
  TempDir dir;
  Cache cache(dir.path());
  write_blob(cache, "small");
  CHECK(cache.evict() == 0);
}

TEST_CASE("evicting a blob removes the mappings that need it", "[cache]") {
  TempDir dir;
  ManualClock clock;
  CacheLimits limits;
  limits.max_bytes = 150;
  Cache cache(dir.path(), limits, clock.clock());
  std::string old_layer = write_blob(cache, std::string(100, 'o'));
  clock.advance(seconds(1));
  std::string new_layer = write_blob(cache, std::string(100, 'n'));
  cache.put_layer_variant("old|estargz|", variant_needing({old_layer}));
  cache.put_layer_variant("new|estargz|", variant_needing({new_layer}));
  cache.put_manifest_variant(kSource + "|estargz|", variant_needing({new_layer, old_layer}));

  CHECK(cache.evict() == 1);
  CHECK_FALSE(cache.blob(old_layer));
  CHECK_FALSE(cache.layer_variant("old|estargz|"));
  CHECK_FALSE(cache.manifest_variant(kSource + "|estargz|"));
  CHECK(cache.layer_variant("new|estargz|"));
  CHECK(cache.check().empty());
}

TEST_CASE("removing a blob removes its membership rows; a reopen drops rows without a blob", "[cache]") {
  TempDir dir;
  ManualClock clock;
  CacheLimits limits;
  limits.max_bytes = 150;
  std::string old_blob, new_blob;
  {
    Cache cache(dir.path(), limits, clock.clock());
    old_blob = write_blob(cache, std::string(100, 'o'));
    clock.advance(seconds(1));
    new_blob = write_blob(cache, std::string(100, 'n'));
    for (const char* scope : {"up/app", "up/other", "up/app/sub"}) {
      cache.put_member(scope, old_blob, "manifest:" + kSource);
      cache.put_member(scope, new_blob, "manifest:" + kSource);
    }
    REQUIRE(cache.member("up/app", old_blob) == "manifest:" + kSource);
    auto scopes = cache.scopes_of(new_blob);
    std::sort(scopes.begin(), scopes.end());
    CHECK(scopes == std::vector<std::string>{"up/app", "up/app/sub", "up/other"});

    CHECK(cache.evict() == 1);
    CHECK(cache.scopes_of(old_blob).empty());
    for (const char* scope : {"up/app", "up/other", "up/app/sub"}) {
      CHECK_FALSE(cache.member(scope, old_blob));
      CHECK(cache.member(scope, new_blob) == "manifest:" + kSource);
    }
    CHECK(cache.check().empty());

    // A row for a blob the cache does not hold is a problem the checker reports...
    cache.put_member("up/app", std::string("sha256:") + std::string(64, 'e'), "manifest:" + kSource);
    CHECK(cache.check().size() == 1);
  }
  // ...and a reopen removes.
  Cache cache(dir.path(), limits, clock.clock());
  CHECK(cache.check().empty());
  CHECK_FALSE(cache.member("up/app", std::string("sha256:") + std::string(64, 'e')));
  CHECK(cache.member("up/other", new_blob) == "manifest:" + kSource);
}

TEST_CASE("garbage collection removes old blobs no mapping needs", "[cache]") {
  TempDir dir;
  ManualClock clock;
  CacheLimits limits;
  limits.gc_grace = seconds(600);
  Cache cache(dir.path(), limits, clock.clock());
  std::string referenced = write_blob(cache, "referenced");
  std::string orphan = write_blob(cache, "orphan");
  std::string pinned = write_blob(cache, "pinned");
  std::string replaced = write_blob(cache, "replaced");
  cache.put_layer_variant("k|estargz|", variant_needing({replaced}));
  cache.put_layer_variant("k|estargz|", variant_needing({referenced}));  // replaced no longer needed
  auto pin = cache.pin(pinned);

  CHECK(cache.collect_garbage() == 0);  // all younger than the grace period
  clock.advance(seconds(601));
  std::string young = write_blob(cache, "young");
  CHECK(cache.collect_garbage() == 2);
  CHECK_FALSE(cache.blob(orphan));
  CHECK_FALSE(cache.blob(replaced));
  CHECK(cache.blob(referenced));
  CHECK(cache.blob(pinned));
  CHECK(cache.blob(young));
  CHECK(cache.layer_variant("k|estargz|"));
  CHECK(cache.total_bytes() == std::string("referenced").size() + std::string("pinned").size() + 5);
  CHECK(cache.check().empty());
}

TEST_CASE("opening reconciles the index with damaged files", "[cache]") {
  TempDir dir;
  std::string deleted, truncated, kept;
  std::string blobs = dir.path() + "/blobs/sha256/";
  {
    Cache cache(dir.path());
    deleted = write_blob(cache, "deleted");
    truncated = write_blob(cache, "truncated");
    kept = write_blob(cache, "kept");
    cache.put_manifest_variant(kSource + "|a|", variant_needing({kept, deleted}));
    cache.put_manifest_variant(kSource + "|b|", variant_needing({truncated}));
    cache.put_manifest_variant(kSource + "|c|", variant_needing({kept}));

    fs::remove(blobs + deleted.substr(7));
    fs::resize_file(blobs + truncated.substr(7), 3);
    std::ofstream(blobs + std::string(64, '9')) << "no entry names me";
    std::ofstream(blobs + "not-a-digest") << "stray";
    std::ofstream(dir.path() + "/blobs/tmp/partial") << "half a blob";

    // An entry without file, a size mismatch, a file without entry, a stray (tmp is not checked).
    CHECK(cache.check().size() == 4);
  }
  Cache cache(dir.path());
  CHECK(cache.check().empty());
  CHECK_FALSE(cache.blob(deleted));
  CHECK_FALSE(cache.blob(truncated));
  CHECK(cache.blob(kept));
  CHECK_FALSE(cache.manifest_variant(kSource + "|a|"));
  CHECK_FALSE(cache.manifest_variant(kSource + "|b|"));
  CHECK(cache.manifest_variant(kSource + "|c|"));
  CHECK(cache.total_bytes() == 4);
  CHECK(files_in(dir.path() + "/blobs/tmp") == 0);
  CHECK(files_in(blobs) == 1);
}

TEST_CASE("check reports each kind of inconsistency", "[cache]") {
  TempDir dir;
  Cache cache(dir.path());
  std::string digest = write_blob(cache, "hello");
  cache.put_layer_variant("k", variant_needing({digest}));
  fs::remove(cache.blob_path(digest));
  std::ofstream(dir.path() + "/blobs/sha256/" + std::string(64, '7')) << "x";
  auto problems = cache.check();
  REQUIRE(problems.size() == 2);
  CHECK(problems[0].find("index entry without file") != std::string::npos);
  CHECK(problems[1].find("file without index entry") != std::string::npos);
}

TEST_CASE("a full LMDB map grows", "[cache]") {
  TempDir dir;
  CacheLimits limits;
  limits.map_size = 64 * 1024;
  {
    Cache cache(dir.path(), limits);
    for (int i = 0; i < 800; ++i)
      cache.put_tag("registry/repository:" + std::to_string(i) + std::string(150, 't'),
                    "sha256:" + std::string(64, '0'), seconds(3600));
  }
  Cache cache(dir.path(), limits);
  CHECK(cache.tag("registry/repository:799" + std::string(150, 't')));
  CHECK(cache.tag("registry/repository:0" + std::string(150, 't')));
}

TEST_CASE("the cache is safe to use from several threads", "[cache]") {
  TempDir dir;
  CacheLimits limits;
  limits.max_bytes = 64 * 1024;
  limits.gc_grace = seconds(0);
  Cache cache(dir.path(), limits);
  std::mutex errors_mutex;
  std::vector<std::string> errors;  // Catch2 assertions are not thread-safe: collect, check after
  auto fail = [&](const std::string& error) {
    std::lock_guard lock(errors_mutex);
    errors.push_back(error);
  };
  auto worker = [&](int id) {
    try {
      for (int i = 0; i < 60; ++i) {
        std::string blob = write_blob(cache, std::string(1000 + id * 100 + i, static_cast<char>('a' + id)));
        try {
          cache.put_layer_variant(std::to_string(id) + "|" + std::to_string(i), variant_needing({blob}));
        } catch (const CacheError&) {  // evicted by another thread meanwhile
        }
        auto pin = cache.pin(blob);
        if (auto info = cache.blob(blob)) {
          cache.touch(blob);
          if (read_file(cache.blob_path(blob)).size() != info->size) fail("short read of " + blob);
        }
        if (i % 10 == 0) cache.evict();
        if (i % 25 == 0) cache.collect_garbage();
      }
    } catch (const std::exception& e) {
      fail(e.what());
    }
  };
  std::vector<std::thread> threads;
  for (int id = 0; id < 4; ++id) threads.emplace_back(worker, id);
  for (auto& thread : threads) thread.join();
  CHECK(errors == std::vector<std::string>{});
  cache.evict();
  CHECK(cache.total_bytes() <= limits.max_bytes);
  CHECK(cache.check().empty());
}
