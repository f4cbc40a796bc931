// Learned prefetch without sockets: start-ups grouped from a client's reads (index read first,
// the window, background scans left out, files in first-read order) and the learner's
// agreement rule, states and stored form.
#include <catch2/catch.hpp>

#include <map>
#include <memory>

#include "variants/prefetch_learner.hpp"
#include "variants/startup_recorder.hpp"

using namespace accel;

namespace {

constexpr const char* kImage = "reg/app@sha256:src|estargz";
constexpr const char* kScope = "reg/app";
constexpr const char* kBlob = "sha256:layer";
constexpr int64_t kWindow = 1000;

// One layer: files /a../f of 100 bytes each from 0, /big after them, the index from 900.
std::shared_ptr<convert::FileIndex> test_index(uint64_t window = 0) {
  auto index = std::make_shared<convert::FileIndex>();
  index->blob_size = 1000;
  index->index_offset = 900;
  index->window = window;
  index->paths = {"/a", "/b", "/c", "/d", "/e", "/f", "/big"};
  for (uint32_t i = 0; i < 6; ++i) index->spans.push_back({100 * i, 100 * (i + 1), i});
  index->spans.push_back({600, 900, 6});
  return index;
}

struct FakeCatalog : LayerCatalog {
  std::shared_ptr<convert::FileIndex> index = test_index();
  bool manifest_seen = false;
  void manifest_served(const std::string& scope, const std::string& digest) override {
    manifest_seen |= scope == kScope && digest == "sha256:manifest";
  }
  std::optional<LayerRef> layer(const std::string& scope, const std::string& digest) override {
    if (!manifest_seen || scope != kScope || digest != kBlob) return std::nullopt;
    return LayerRef{kImage, index};
  }
};

ReadEvent manifest(int64_t at) { return {at, true, kScope, "sha256:manifest", {}}; }
ReadEvent blob(int64_t at, std::vector<std::pair<uint64_t, uint64_t>> ranges) {
  return {at, false, kScope, kBlob, std::move(ranges)};
}
ReadEvent footer(int64_t at) { return blob(at, {{949, 1000}}); }

Startup startup(const std::string& client, std::vector<std::string> files, int64_t at = 0) {
  Startup s;
  s.image = kImage;
  s.client = client;
  s.started_ms = at;
  s.files = std::move(files);
  return s;
}

}  // namespace

TEST_CASE("a start-up: from the first index read, for the window, files in first-read order", "[learn]") {
  StartupRecorder recorder(kWindow);
  FakeCatalog catalog;
  recorder.record("k1", manifest(0));
  recorder.record("k1", blob(5, {{300, 400}}));  // before the index: not part of it
  recorder.record("k1", footer(10));
  recorder.record("k1", blob(20, {{200, 300}}));
  recorder.record("k1", blob(30, {{0, 100}, {250, 350}}));  // multi-range: a, then c again and d
  recorder.record("k1", blob(40, {{0, 2}}));                // a probe
  recorder.record("k1", blob(kWindow + 10 + 1, {{400, 500}}));  // after the window
  SECTION("nothing while the window (and its grace) lasts") {
    CHECK(recorder.collect(10 + kWindow + StartupRecorder::kGraceMs - 1, catalog).empty());
    CHECK(recorder.pending_events() > 0);
  }
  SECTION("then one start-up") {
    auto got = recorder.collect(10 + kWindow + StartupRecorder::kGraceMs, catalog);
    REQUIRE(got.size() == 1);
    CHECK(got[0].image == kImage);
    CHECK(got[0].client == "k1");
    CHECK(got[0].started_ms == 10);
    CHECK(got[0].files == std::vector<std::string>{"/c", "/a", "/d"});
    CHECK(got[0].reads == 2);
    CHECK(got[0].background_reads == 0);
    // Consumed: a second collect finds nothing more; the read after the window waits for an
    // index read that starts another start-up, and is dropped once too old for one.
    CHECK(recorder.collect(10 + kWindow + StartupRecorder::kGraceMs, catalog).empty());
    CHECK(recorder.pending_events() == 1);
    CHECK(recorder.collect(100'000, catalog).empty());
    CHECK(recorder.pending_events() == 0);
  }
}

TEST_CASE("a background scan interleaved with a start-up changes nothing", "[learn]") {
  StartupRecorder recorder(kWindow);
  FakeCatalog catalog;
  catalog.index = std::make_shared<convert::FileIndex>(*test_index());
  // Files of 50 bytes from 0 to 900 here: /a../f, then /big.
  catalog.index->spans.clear();
  catalog.index->paths = {"/a", "/b", "/c", "/d", "/e", "/f", "/g", "/h", "/i", "/j", "/k", "/l", "/big"};
  for (uint32_t i = 0; i < 12; ++i) catalog.index->spans.push_back({50 * i, 50 * (i + 1), i});
  catalog.index->spans.push_back({600, 900, 12});
  recorder.record("k1", manifest(0));
  recorder.record("k1", footer(1));
  recorder.record("k1", blob(2, {{0, 50}}));      // scan
  recorder.record("k1", blob(3, {{200, 250}}));   // e, on demand
  recorder.record("k1", blob(4, {{50, 100}}));    // scan
  recorder.record("k1", blob(5, {{100, 150}}));   // scan
  recorder.record("k1", blob(6, {{150, 200}}));   // scan (e is cached: skipped next)
  recorder.record("k1", blob(7, {{700, 800}}));   // big, on demand
  recorder.record("k1", blob(8, {{250, 300}}));   // scan
  recorder.record("k1", blob(9, {{300, 350}}));   // scan
  recorder.record("k1", blob(10, {{350, 400}}));  // scan
  auto got = recorder.collect(10'000, catalog);
  REQUIRE(got.size() == 1);
  CHECK(got[0].files == std::vector<std::string>{"/e", "/big"});
  CHECK(got[0].background_reads == 7);
  CHECK(got[0].reads == 2);
}

TEST_CASE("a start-up reading the first files of a layer in order is not a scan", "[learn]") {
  StartupRecorder recorder(kWindow);
  FakeCatalog catalog;
  recorder.record("k1", manifest(0));
  recorder.record("k1", footer(1));
  for (int i = 0; i < 5; ++i) recorder.record("k1", blob(2 + i, {{100 * i, 100 * (i + 1)}}));
  auto got = recorder.collect(10'000, catalog);
  REQUIRE(got.size() == 1);
  CHECK(got[0].files == std::vector<std::string>{"/a", "/b", "/c", "/d", "/e"});
  CHECK(got[0].background_reads == 0);
}

TEST_CASE("windowed reads count the file that needed them, not its neighbours", "[learn]") {
  StartupRecorder recorder(kWindow);
  FakeCatalog catalog;
  catalog.index = test_index(150);
  recorder.record("k1", manifest(0));
  recorder.record("k1", footer(1));
  recorder.record("k1", blob(2, {{600, 900}}));  // windows 4 and 5: e's tail... big reaches into both
  auto got = recorder.collect(10'000, catalog);
  REQUIRE(got.size() == 1);
  CHECK(got[0].files == std::vector<std::string>{"/big"});
}

TEST_CASE("no start-up without an index read, for unknown blobs, or for a plain pull", "[learn]") {
  StartupRecorder recorder(kWindow);
  FakeCatalog catalog;
  SECTION("data reads alone") {
    recorder.record("k1", manifest(0));
    recorder.record("k1", blob(1, {{0, 100}}));
    CHECK(recorder.collect(10'000, catalog).empty());
  }
  SECTION("no manifest was served: the blob is no known layer") {
    recorder.record("k1", footer(1));
    recorder.record("k1", blob(2, {{0, 100}}));
    CHECK(recorder.collect(10'000, catalog).empty());
    CHECK_FALSE(catalog.manifest_seen);
  }
  SECTION("whole-blob GETs") {
    recorder.record("k1", manifest(0));
    recorder.record("k1", blob(1, {}));
    recorder.record("k1", blob(2, {{0, 1000}}));
    CHECK(recorder.collect(10'000, catalog).empty());
  }
  SECTION("clients are apart: one's index read starts nothing for another") {
    recorder.record("k1", manifest(0));
    recorder.record("k1", footer(1));
    recorder.record("k2", manifest(0));
    recorder.record("k2", blob(2, {{0, 100}}));
    CHECK(recorder.collect(10'000, catalog).empty());
  }
}

TEST_CASE("images the caller does not want are dropped unmapped", "[learn]") {
  StartupRecorder recorder(kWindow);
  FakeCatalog catalog;
  recorder.record("k1", manifest(0));
  recorder.record("k1", footer(1));
  recorder.record("k1", blob(2, {{0, 100}}));
  CHECK(recorder.collect(2, catalog, [](const std::string&) { return false; }).empty());
  CHECK(recorder.pending_events() == 0);
}

TEST_CASE("the recorder's memory is bounded", "[learn]") {
  RecorderLimits limits;
  limits.events_per_client = 4;
  limits.clients = 2;
  StartupRecorder recorder(kWindow, limits);
  for (int i = 0; i < 10; ++i) recorder.record("k1", blob(i, {{0, 100}}));
  CHECK(recorder.pending_events() == 4);
  recorder.record("k2", blob(20, {{0, 100}}));
  recorder.record("k3", blob(30, {{0, 100}}));  // k1 has been idle longest
  CHECK(recorder.pending_events() == 2);
}

TEST_CASE("agreement: files read by enough start-ups, in their first-read order", "[learn]") {
  size_t agreeing = 0;
  auto s1 = startup("k1", {"/c", "/a", "/x"});
  auto s2 = startup("k2", {"/c", "/y", "/a"});
  auto s3 = startup("k3", {"/z"});
  CHECK(PrefetchLearner::agreed({&s1, &s2, &s3}, 2, agreeing) == std::vector<std::string>{"/c", "/a"});
  CHECK(agreeing == 2);
  CHECK(PrefetchLearner::agreed({&s1, &s3}, 2, agreeing).empty());
  CHECK(PrefetchLearner::agreed({&s1}, 1, agreeing) == std::vector<std::string>{"/c", "/a", "/x"});
  // Disagreeing orders: the mean rank decides, then the path.
  auto s4 = startup("k4", {"/a", "/c"});
  CHECK(PrefetchLearner::agreed({&s1, &s2, &s4}, 3, agreeing) == std::vector<std::string>{"/c", "/a"});
  CHECK(PrefetchLearner::agreed({&s1, &s4}, 2, agreeing) == std::vector<std::string>{"/a", "/c"});
}

TEST_CASE("the learner: one vote per client, learned once, then settled", "[learn]") {
  LearnerLimits limits;
  limits.startups = 2;
  PrefetchLearner learner(limits);
  CHECK_FALSE(learner.add(startup("k1", {"/c", "/a"}), 1));
  CHECK_FALSE(learner.add(startup("k1", {"/c", "/a"}), 2));  // the same client again
  REQUIRE(learner.find(kImage));
  CHECK(learner.find(kImage)->state == LearnedImage::State::learning);
  CHECK(learner.find(kImage)->startups.size() == 1);
  CHECK(learner.add(startup("k2", {"/c", "/b", "/a"}), 3));
  const auto* image = learner.find(kImage);
  CHECK(image->state == LearnedImage::State::learned);
  CHECK(image->files == std::vector<std::string>{"/c", "/a"});
  CHECK(image->agreeing == 2);
  CHECK_FALSE(learner.add(startup("k3", {"/zzz"}), 4));
  CHECK(learner.find(kImage)->files == std::vector<std::string>{"/c", "/a"});
}

TEST_CASE("the learner's stored form and bounds", "[learn]") {
  LearnedImage record;
  record.state = LearnedImage::State::optimized;
  record.files = {"/usr/bin/python3", "/usr/lib/libpython.so"};
  record.agreeing = 3;
  record.variant = "sha256:abc";
  record.updated_ms = 42;
  auto back = PrefetchLearner::decode(PrefetchLearner::encode(record));
  REQUIRE(back);
  CHECK(back->state == LearnedImage::State::optimized);
  CHECK(back->files == record.files);
  CHECK(back->agreeing == 3);
  CHECK(back->variant == "sha256:abc");
  record.state = LearnedImage::State::optimizing;  // a conversion does not survive a restart
  CHECK(PrefetchLearner::decode(PrefetchLearner::encode(record))->state == LearnedImage::State::learned);
  CHECK_FALSE(PrefetchLearner::decode("{not json"));
  CHECK_FALSE(PrefetchLearner::decode(R"({"state":"learning","files":["/a"]})"));

  LearnerLimits limits;
  limits.images = 2;
  PrefetchLearner learner(limits);
  learner.put("optimized", *PrefetchLearner::decode(R"({"state":"optimized","files":["/a"],"updated_ms":0})"));
  for (int i = 0; i < 3; ++i) {
    auto s = startup("k1", {"/a"});
    s.image = "img" + std::to_string(i);
    learner.add(s, i + 1);
  }
  // Learning images go first, however recent the optimized one is.
  CHECK(learner.images().size() == 2);
  CHECK(learner.find("optimized"));
  CHECK(learner.find("img2"));
  CHECK(learner.take_dropped() == std::vector<std::string>{"img0", "img1"});

  // And the file names kept in votes are bounded too.
  LearnerLimits few;
  few.files = 5;
  PrefetchLearner small(few);
  auto a = startup("k1", {"/1", "/2", "/3"});
  a.image = "a";
  auto b = startup("k1", {"/4", "/5", "/6"});
  b.image = "b";
  small.add(a, 1);
  small.add(b, 2);
  CHECK_FALSE(small.find("a"));
  CHECK(small.find("b"));
}
