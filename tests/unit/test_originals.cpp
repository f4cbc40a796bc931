// Originals kept locally (cache_originals): a capture is committed only when all of it came and
// its bytes match the digest; a partial, failed, abandoned or wrong body leaves nothing indexed
// and no file behind; one capture per digest at a time; a digest already cached only gains the
// new repository's membership; manifests held in memory are checked the same way.
#include <poll.h>
#include <unistd.h>

#include <atomic>

#include <catch2/catch.hpp>
#include <filesystem>
#include <memory>
#include <string>

#include "cache/cache.hpp"
#include "convert/sha256.hpp"
#include "proxy/metrics.hpp"
#include "test_files.hpp"
#include "variants/originals.hpp"

using namespace accel;

namespace {

struct Fixture {
  TempDir dir{"accel-originals"};
  Metrics metrics;
  cache::Cache cache{dir.path()};
  Originals originals{cache, metrics, 1 << 20};

  size_t temp_files() { return files_in(cache.temp_dir()); }
  bool has_line(const std::string& line) { return metrics.render().find(line + "\n") != std::string::npos; }
};

OriginalObject blob_of(const std::string& bytes, const std::string& scope = "up/team/app") {
  OriginalObject o;
  o.scope = scope;
  o.kind = "blob";
  o.digest = convert::Sha256::of(bytes);
  o.media_type = "application/octet-stream";
  o.size = bytes.size();
  return o;
}

const std::string kBody = std::string(300'000, 'x') + "the end";

}  // namespace

TEST_CASE("a complete capture whose bytes match its digest is committed as a member of its repository", "[originals]") {
  Fixture f;
  auto object = blob_of(kBody);
  auto capture = f.originals.capture(object);
  REQUIRE(capture);
  capture->write(kBody.data(), 1000);
  capture->write(kBody.data() + 1000, kBody.size() - 1000);
  capture->finish();
  capture.reset();
  f.originals.drain();
  auto info = f.cache.blob(object.digest);
  REQUIRE(info);
  CHECK(info->size == kBody.size());
  CHECK(info->media_type == "application/octet-stream");
  CHECK(read_file(f.cache.blob_path(object.digest)) == kBody);
  CHECK(f.cache.member("up/team/app", object.digest) == "blob:" + object.digest);
  CHECK_FALSE(f.cache.member("up/other/app", object.digest));
  CHECK(f.temp_files() == 0);
  CHECK(f.has_line("accel_proxy_originals_stored_total{kind=\"blob\",result=\"committed\"} 1"));
  CHECK(f.cache.check().empty());
}

TEST_CASE("bytes written to the capture's file directly (the tee path) count too", "[originals]") {
  Fixture f;
  auto object = blob_of(kBody);
  auto capture = f.originals.capture(object);
  REQUIRE(capture);
  REQUIRE(::write(capture->fd(), kBody.data(), kBody.size()) == static_cast<ssize_t>(kBody.size()));
  capture->wrote(kBody.size());
  capture->finish();
  f.originals.drain();
  CHECK(f.cache.blob(object.digest));
}

TEST_CASE("a body that does not match its digest is never committed", "[originals]") {
  Fixture f;
  auto object = blob_of(kBody);
  std::string wrong = kBody;
  wrong[12345] ^= 1;  // same length, one bit off
  auto capture = f.originals.capture(object);
  REQUIRE(capture);
  capture->write(wrong.data(), wrong.size());
  capture->finish();
  f.originals.drain();
  CHECK_FALSE(f.cache.blob(object.digest));
  CHECK_FALSE(f.cache.member("up/team/app", object.digest));
  CHECK(f.temp_files() == 0);
  CHECK(f.has_line("accel_proxy_originals_digest_mismatches_total{kind=\"blob\"} 1"));
  CHECK(f.metrics.render().find("result=\"committed\"") == std::string::npos);
  // The digest is free again: a right body is kept next time.
  auto again = f.originals.capture(object);
  REQUIRE(again);
  again->write(kBody.data(), kBody.size());
  again->finish();
  f.originals.drain();
  CHECK(f.cache.blob(object.digest));
}

TEST_CASE("a short, failed or abandoned capture leaves nothing behind", "[originals]") {
  Fixture f;
  auto object = blob_of(kBody);
  SECTION("short") {
    auto capture = f.originals.capture(object);
    capture->write(kBody.data(), kBody.size() - 1);
    capture->finish();
    CHECK(f.has_line("accel_proxy_originals_stored_total{kind=\"blob\",result=\"incomplete\"} 1"));
  }
  SECTION("longer than announced") {
    auto capture = f.originals.capture(object);
    capture->write(kBody.data(), kBody.size());
    capture->write("!", 1);
    capture->finish();
    CHECK(f.has_line("accel_proxy_originals_stored_total{kind=\"blob\",result=\"incomplete\"} 1"));
  }
  SECTION("failed (a write to the file failed)") {
    auto capture = f.originals.capture(object);
    capture->write(kBody.data(), kBody.size());
    capture->fail();
    capture->finish();
    CHECK(f.has_line("accel_proxy_originals_stored_total{kind=\"blob\",result=\"failed\"} 1"));
  }
  SECTION("abandoned mid-body (the client or the upstream went away)") {
    auto capture = f.originals.capture(object);
    capture->write(kBody.data(), 1000);
    CHECK(f.temp_files() == 1);
    capture.reset();
    CHECK(f.has_line("accel_proxy_originals_stored_total{kind=\"blob\",result=\"aborted\"} 1"));
  }
  f.originals.drain();
  CHECK_FALSE(f.cache.blob(object.digest));
  CHECK(f.temp_files() == 0);
  CHECK(f.cache.check().empty());
  CHECK(f.originals.capture(object));  // released: the next request may keep it
}

TEST_CASE("one capture per digest at a time; too large is not kept", "[originals]") {
  Fixture f;
  auto object = blob_of(kBody);
  auto first = f.originals.capture(object);
  REQUIRE(first);
  CHECK_FALSE(f.originals.capture(blob_of(kBody, "up/other/app")));
  CHECK(f.has_line("accel_proxy_originals_stored_total{kind=\"blob\",result=\"skipped\"} 1"));
  auto big = blob_of(std::string((1 << 20) + 1, 'b'));
  CHECK_FALSE(f.originals.capture(big));
  first->write(kBody.data(), kBody.size());
  first->finish();
  f.originals.drain();
  CHECK(f.cache.blob(object.digest));
}

TEST_CASE("a digest already cached gains the new repository's membership, no second copy", "[originals]") {
  Fixture f;
  auto object = blob_of(kBody);
  auto capture = f.originals.capture(object);
  capture->write(kBody.data(), kBody.size());
  capture->finish();
  f.originals.drain();
  CHECK_FALSE(f.originals.capture(blob_of(kBody, "up/other/app")));
  f.originals.drain();
  CHECK(f.cache.member("up/other/app", object.digest) == "blob:" + object.digest);
  CHECK(f.temp_files() == 0);
  CHECK(f.has_line("accel_proxy_originals_stored_total{kind=\"blob\",result=\"committed\"} 1"));
}

TEST_CASE("manifests read whole are checked against their digest before they are kept", "[originals]") {
  Fixture f;
  const std::string manifest = R"({"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"})";
  OriginalObject o;
  o.scope = "up/team/app";
  o.kind = "manifest";
  o.digest = convert::Sha256::of(manifest);
  o.media_type = "application/vnd.oci.image.manifest.v1+json";
  f.originals.store(o, manifest + " ");  // not the bytes the digest names
  f.originals.drain();
  CHECK_FALSE(f.cache.blob(o.digest));
  CHECK(f.has_line("accel_proxy_originals_digest_mismatches_total{kind=\"manifest\"} 1"));
  f.originals.store(o, manifest);
  f.originals.drain();
  auto info = f.cache.blob(o.digest);
  REQUIRE(info);
  CHECK(info->media_type == "application/vnd.oci.image.manifest.v1+json");
  CHECK(info->size == manifest.size());
  CHECK(f.cache.member("up/team/app", o.digest) == "manifest:" + o.digest);
  CHECK(f.has_line("accel_proxy_originals_stored_bytes_total{kind=\"manifest\"} " + std::to_string(manifest.size())));
}

TEST_CASE("originals are bounded by the cache's LRU eviction like everything else", "[originals]") {
  TempDir dir{"accel-originals-lru"};
  Metrics metrics;
  cache::CacheLimits limits;
  limits.max_bytes = 700'000;  // two of the three bodies below
  auto now = std::make_shared<std::atomic<int64_t>>(1'700'000'000'000);  // moved by hand: a clear LRU order
  cache::Cache cache{dir.path(), limits,
                     [now] { return std::chrono::system_clock::time_point(std::chrono::milliseconds(now->load())); }};
  Originals originals{cache, metrics, limits.max_bytes};
  std::vector<std::string> digests;
  for (char c : {'a', 'b', 'c'}) {
    std::string body(300'000, c);
    auto capture = originals.capture(blob_of(body));
    REQUIRE(capture);
    capture->write(body.data(), body.size());
    capture->finish();
    originals.drain();
    digests.push_back(convert::Sha256::of(body));
    *now += 1000;
  }
  CHECK(cache.total_bytes() <= limits.max_bytes);
  CHECK_FALSE(cache.blob(digests[0]));  // the least recently used went
  CHECK(cache.blob(digests[1]));
  CHECK(cache.blob(digests[2]));
  CHECK(cache.check().empty());
}

namespace {

// Writes all of `data` into a non-blocking pipe, waiting while it is full.
void write_to_pipe(int fd, const std::string& data) {
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = ::write(fd, data.data() + done, data.size() - done);
    if (n > 0) {
      done += static_cast<size_t>(n);
    } else {
      pollfd p{fd, POLLOUT, 0};
      ::poll(&p, 1, 1000);
    }
  }
}

}  // namespace

TEST_CASE("a capture fed through its pipe: the pipe's thread writes the file, the last one done settles", "[originals]") {
  Fixture f;
  auto object = blob_of(kBody);
  auto capture = f.originals.capture(object);
  REQUIRE(capture);
  capture->write(kBody.data(), 100);  // the bytes that came with the header, before the pipe
  int pipe = capture->sink_pipe();
  REQUIRE(pipe >= 0);
  CHECK(capture->sink_pipe() == -1);  // once
  write_to_pipe(pipe, kBody.substr(100));
  capture->finish();
  capture.reset();
  f.originals.drain();
  REQUIRE(f.cache.blob(object.digest));
  CHECK(read_file(f.cache.blob_path(object.digest)) == kBody);
  CHECK(f.temp_files() == 0);
}

TEST_CASE("a capture abandoned while its pipe's thread writes leaves nothing behind", "[originals]") {
  Fixture f;
  auto object = blob_of(kBody);
  {
    auto capture = f.originals.capture(object);
    int pipe = capture->sink_pipe();
    REQUIRE(pipe >= 0);
    write_to_pipe(pipe, kBody.substr(0, 200'000));
  }  // destroyed without finish()
  f.originals.drain();
  CHECK(f.has_line("accel_proxy_originals_stored_total{kind=\"blob\",result=\"aborted\"} 1"));
  f.originals.drain();
  CHECK_FALSE(f.cache.blob(object.digest));
  CHECK(f.temp_files() == 0);
  auto again = f.originals.capture(object);  // the digest was released
  CHECK(again);
}

TEST_CASE("a pipe-fed capture whose body is short is not committed", "[originals]") {
  Fixture f;
  auto object = blob_of(kBody);
  auto capture = f.originals.capture(object);
  int pipe = capture->sink_pipe();
  REQUIRE(pipe >= 0);
  write_to_pipe(pipe, kBody.substr(0, kBody.size() - 3));
  capture->finish();
  f.originals.drain();
  CHECK(f.has_line("accel_proxy_originals_stored_total{kind=\"blob\",result=\"incomplete\"} 1"));
  CHECK(f.temp_files() == 0);
}
