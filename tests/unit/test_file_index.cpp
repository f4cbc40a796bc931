// FileIndex: which files a byte range of a converted layer holds (the window rule), built from
// the eStargz TOC and from a Nydus blob's own bootstrap; and the prioritized layouts those
// indexes see: listed files first, in list order.
#include <catch2/catch.hpp>

#include <algorithm>
#include <random>

#include "convert/estargz.hpp"
#include "convert/file_index.hpp"
#include "convert/nydus.hpp"
#include "convert/streams.hpp"
#include "convert/tar.hpp"
#include "tests/unit/test_files.hpp"
#include "tests/unit/test_tar_files.hpp"

using namespace accel::convert;
using nlohmann::json;

namespace {


// A layer whose files are incompressible, so their compressed extents are about their sizes.
std::string layer_tar() {
  return tar_of({{"usr/", EntryType::directory, "", ""},
                 {"usr/bin/", EntryType::directory, "", ""},
                 {"usr/bin/a", EntryType::regular, random_bytes(70'000, 1), ""},
                 {"usr/bin/b", EntryType::regular, random_bytes(120'000, 2), ""},
                 {"usr/bin/small", EntryType::regular, "tiny\n", ""},
                 {"usr/lib/", EntryType::directory, "", ""},
                 {"usr/lib/c", EntryType::regular, random_bytes(90'000, 3), ""},
                 {"usr/lib/c-link", EntryType::hardlink, "", "usr/lib/c"},
                 {"usr/lib/d", EntryType::regular, random_bytes(60'000, 4), ""},
                 {"etc/", EntryType::directory, "", ""},
                 {"etc/e", EntryType::regular, random_bytes(80'000, 5), ""}});
}

ReadBlobAt reader_of(const std::string& blob) {
  return [&blob](uint64_t offset, uint64_t length) { return blob.substr(offset, length); };
}

std::vector<std::string> paths_in_blob_order(const FileIndex& index) {
  std::vector<std::string> out;
  for (const auto& s : index.spans)
    if (out.empty() || out.back() != index.paths[s.file]) out.push_back(index.paths[s.file]);
  return out;
}

std::vector<std::string> names(const FileIndex& index, const std::vector<uint32_t>& files) {
  std::vector<std::string> out;
  for (auto f : files) out.push_back(index.paths[f]);
  return out;
}

const FileIndex::Span& span_of(const FileIndex& index, const std::string& path) {
  for (const auto& s : index.spans)
    if (index.paths[s.file] == path) return s;
  FAIL("no span for " << path);
  throw;
}

struct Converted {
  std::string blob;
  ConvertedLayer layer;
};

Converted convert_with(const LayerFormat& format, const std::vector<std::string>& prioritized, const std::string& work) {
  std::string tar = layer_tar();
  MemorySource in(tar);
  StringSink out;
  LayerOptions options;
  options.prioritized_files = prioritized;
  options.work_dir = work;
  options.nydus.chunk_size = 64 * 1024;
  Converted c;
  c.layer = format.convert_layer(in, out, options);
  c.blob = std::move(out.data);
  return c;
}

json descriptor_of(const ConvertedLayer& layer) {
  json d = {{"mediaType", layer.media_type}, {"digest", layer.digest}, {"size", layer.size}};
  for (const auto& [k, v] : layer.annotations) d["annotations"][k] = v;
  return d;
}

}  // namespace

TEST_CASE("files_read: an exact read names every file it touches", "[file_index]") {
  FileIndex index;
  index.blob_size = 1000;
  index.index_offset = 900;
  index.paths = {"/a", "/b", "/c"};
  index.spans = {{0, 100, 0}, {100, 400, 1}, {400, 900, 2}};
  CHECK(index.files_read(50, 150) == std::vector<uint32_t>{0, 1});
  CHECK(index.files_read(100, 400) == std::vector<uint32_t>{1});
  CHECK(index.files_read(899, 1000) == std::vector<uint32_t>{2});
  CHECK(index.files_read(900, 1000).empty());
  CHECK(index.files_read(5000, 6000).empty());
  CHECK(index.reads_index(899, 901));
  CHECK_FALSE(index.reads_index(0, 900));
}

TEST_CASE("files_read: window padding around a read does not count its neighbours", "[file_index]") {
  FileIndex index;
  index.blob_size = 1'000'000;
  index.index_offset = 900'000;
  index.window = 100;
  // p ends in window 1, x spans windows 1-3, n starts in window 3; s1 and s2 share window 6.
  index.paths = {"/p", "/x", "/n", "/s1", "/s2", "/big"};
  index.spans = {{0, 130, 0}, {130, 350, 1}, {350, 560, 2}, {600, 640, 3}, {640, 700, 4}, {700, 900, 5}};
  SECTION("a read of x widened to whole windows") {
    CHECK(names(index, index.files_read(100, 400)) == std::vector<std::string>{"/x"});
  }
  SECTION("the only file in a window was read") {
    CHECK(names(index, index.files_read(400, 500)) == std::vector<std::string>{"/n"});
  }
  SECTION("files sharing a window with nothing to tell them apart all count") {
    CHECK(names(index, index.files_read(600, 700)) == std::vector<std::string>{"/s1", "/s2"});
  }
  SECTION("reads merged into one range: window 6 was read for s1 or s2") {
    CHECK(names(index, index.files_read(100, 800)) == std::vector<std::string>{"/x", "/n", "/s1", "/s2", "/big"});
  }
  SECTION("a range that is not window-aligned is exact") {
    CHECK(names(index, index.files_read(120, 400)) == std::vector<std::string>{"/p", "/x", "/n"});
  }
}

TEST_CASE("the eStargz index maps TOC payloads to files, in the prioritized order", "[file_index]") {
  TempDir tmp;
  EstargzFormat format;
  SECTION("without a list: stream order, landmark left out, the TOC is the index") {
    auto c = convert_with(format, {}, tmp.path());
    auto index = format.file_index(descriptor_of(c.layer), c.blob.size(), reader_of(c.blob));
    REQUIRE(index);
    CHECK(index->window == 50000);
    CHECK(paths_in_blob_order(*index) ==
          std::vector<std::string>{"/usr/bin/a", "/usr/bin/b", "/usr/bin/small", "/usr/lib/c", "/usr/lib/d", "/etc/e"});
    CHECK(index->index_offset > span_of(*index, "/etc/e").end - 1);
    CHECK(index->index_offset < c.blob.size() - 51);
    // Each payload's extent starts a gzip member.
    for (const auto& s : index->spans) CHECK(c.blob.substr(s.begin, 2) == "\x1f\x8b");
    CHECK(index->reads_index(c.blob.size() - 51, c.blob.size()));
    const auto& b = span_of(*index, "/usr/bin/b");
    CHECK(names(*index, index->files_read(b.begin, b.end)) == std::vector<std::string>{"/usr/bin/b"});
  }
  SECTION("with a list: its files first, in list order, a hardlink's target before it") {
    auto c = convert_with(format, {"/etc/e", "usr/lib/c-link", "/usr/bin/a", "/not/there"}, tmp.path());
    auto index = format.file_index(descriptor_of(c.layer), c.blob.size(), reader_of(c.blob));
    REQUIRE(index);
    CHECK(paths_in_blob_order(*index) ==
          std::vector<std::string>{"/etc/e", "/usr/lib/c", "/usr/bin/a", "/usr/bin/b", "/usr/bin/small", "/usr/lib/d"});
    // The tar stream itself: parents first, the link after its target, then the landmark.
    MemorySource in(c.blob);
    auto tar = open_decompressed(in);
    TarReader reader(*tar);
    TarEntry e;
    std::vector<std::string> order;
    while (reader.next(e)) order.push_back(e.name);
    const auto landmark = std::find(order.begin(), order.end(), ".prefetch.landmark");
    REQUIRE(landmark != order.end());
    CHECK(std::vector<std::string>(order.begin(), landmark) ==
          std::vector<std::string>{"etc/", "etc/e", "usr/", "usr/lib/", "usr/lib/c", "usr/lib/c-link", "usr/bin/", "usr/bin/a"});
  }
  SECTION("another format's layer has no eStargz index") {
    CHECK_FALSE(format.file_index(json{{"mediaType", "application/vnd.oci.image.layer.v1.tar+gzip"}}, 100,
                                  [](uint64_t, uint64_t) { return std::string(); }));
  }
}

TEST_CASE("the Nydus index maps chunks to files; listed files come first in the blob", "[file_index]") {
  TempDir tmp;
  NydusFormat format;
  SECTION("without a list: stream order, chunk-exact, the chunk-info array on is index") {
    auto c = convert_with(format, {}, tmp.path());
    auto index = format.file_index(descriptor_of(c.layer), c.blob.size(), reader_of(c.blob));
    REQUIRE(index);
    CHECK(index->window == 0);
    CHECK(paths_in_blob_order(*index) ==
          std::vector<std::string>{"/usr/bin/a", "/usr/bin/b", "/usr/bin/small", "/usr/lib/c", "/usr/lib/d", "/etc/e"});
    CHECK(index->spans.front().begin == 0);
    CHECK(index->index_offset >= index->spans.back().end);
    CHECK(index->reads_index(c.blob.size() - 512, c.blob.size()));
    CHECK_FALSE(index->index_only());
  }
  SECTION("with a list: the listed files' chunks first, in list order, one contiguous range") {
    auto c = convert_with(format, {"/etc/e", "/usr/lib/c-link", "/usr/bin/small"}, tmp.path());
    auto index = format.file_index(descriptor_of(c.layer), c.blob.size(), reader_of(c.blob));
    REQUIRE(index);
    auto order = paths_in_blob_order(*index);
    CHECK(std::vector<std::string>(order.begin(), order.begin() + 3) ==
          std::vector<std::string>{"/etc/e", "/usr/lib/c", "/usr/bin/small"});
    const uint64_t end = span_of(*index, "/usr/bin/small").end;
    CHECK(names(*index, index->files_read(0, end)) == std::vector<std::string>{"/etc/e", "/usr/lib/c", "/usr/bin/small"});
  }
  SECTION("the bootstrap layer is all index; other layers are not Nydus") {
    auto boot = format.file_index(json{{"mediaType", "application/vnd.oci.image.layer.v1.tar+gzip"},
                                       {"annotations", {{"containerd.io/snapshot/nydus-bootstrap", "true"}}}},
                                  4096, [](uint64_t, uint64_t) { return std::string(); });
    REQUIRE(boot);
    CHECK(boot->index_only());
    CHECK(boot->reads_index(0, 4096));
    CHECK_FALSE(format.file_index(json{{"mediaType", "application/vnd.oci.image.layer.v1.tar+gzip"}}, 100,
                                  [](uint64_t, uint64_t) { return std::string(); }));
  }
}
