// Nydus images end to end in process: an OCI layout of two layers (a whiteout, an opaque
// directory, a hardlink) converted by the image walk with NydusFormat, then checked by
// check_nydus_manifest; the same with deliberate faults, each of which must be named.
#include <catch2/catch.hpp>

#include <filesystem>
#include <map>
#include <fstream>
#include <sys/stat.h>

#include "convert/gzip_members.hpp"
#include "convert/image.hpp"
#include "convert/image_check.hpp"
#include "convert/nydus.hpp"
#include "convert/nydus_blob.hpp"
#include "convert/oci_layout.hpp"
#include "convert/sha256.hpp"
#include "convert/streams.hpp"
#include "convert/tar.hpp"
#include "tests/unit/test_files.hpp"
#include "tests/unit/test_tar_files.hpp"

using namespace accel::convert;
using nlohmann::json;

namespace {

// Text that compresses, varying with the seed.
std::string text(const std::string& seed, size_t size) {
  std::string out;
  for (size_t i = 0; out.size() < size; ++i) out += seed + " line " + std::to_string(i * 7919 % 1000) + "\n";
  out.resize(size);
  return out;
}

void write_blob(const std::string& dir, const std::string& bytes) {
  std::ofstream(dir + "/blobs/sha256/" + Sha256::of(bytes).substr(7), std::ios::binary) << bytes;
}

// A source image of two layers in an OCI layout at `dir`, tagged "v1".
void make_source(const std::string& dir) {
  OciLayout layout(dir, true);
  std::string big = text("big", 300'000);
  std::string lower = tar_of({{"etc/", EntryType::directory},
                              {"etc/os-release", EntryType::regular, "ID=test\n"},
                              {"etc/gone", EntryType::regular, "deleted above\n"},
                              {"opt/", EntryType::directory},
                              {"opt/old", EntryType::regular, "hidden by the opaque dir\n"},
                              {"usr/bin/tool", EntryType::regular, big},
                              {"usr/bin/tool-link", EntryType::hardlink, "", "usr/bin/tool"},
                              {"usr/bin/sh", EntryType::symlink, "", "tool"}});
  std::string upper = tar_of({{"etc/.wh.gone", EntryType::regular, ""},
                              {"opt/.wh..wh..opq", EntryType::regular, ""},
                              {"opt/new", EntryType::regular, text("new", 9000)},
                              {"usr/bin/copy", EntryType::regular, big}});  // same content: same chunks
  json layers = json::array(), diff_ids = json::array();
  for (const auto* t : {&lower, &upper}) {
    std::string gz = gzip_member(t->data(), t->size(), 6);
    write_blob(dir, gz);
    layers.push_back({{"mediaType", "application/vnd.oci.image.layer.v1.tar+gzip"},
                      {"digest", Sha256::of(gz)},
                      {"size", gz.size()}});
    diff_ids.push_back(Sha256::of(*t));
  }
  std::string config = json{{"architecture", "amd64"}, {"os", "linux"}, {"rootfs", {{"type", "layers"}, {"diff_ids", diff_ids}}}}.dump();
  write_blob(dir, config);
  json manifest = {{"schemaVersion", 2},
                   {"mediaType", media_type::oci_manifest},
                   {"config", {{"mediaType", media_type::oci_config}, {"digest", Sha256::of(config)}, {"size", config.size()}}},
                   {"layers", layers}};
  ManifestBytes m{media_type::oci_manifest, manifest.dump(), ""};
  m.digest = Sha256::of(m.bytes);
  layout.put_manifest(m, "v1");
}

ImageConvertResult convert(const std::string& src, const std::string& dst, unsigned threads,
                           const std::string& compressor = "zstd", std::vector<std::string> prefetch = {}) {
  NydusFormat format;
  ImageConvertOptions options;
  options.layer.prioritized_files = std::move(prefetch);
  options.layer.threads = threads;
  options.layer.nydus.chunk_size = 4096;
  options.layer.nydus.compressor = compressor;
  options.work_dir = dst;
  options.layer.work_dir = dst;
  OciLayout source(src, false), target(dst, true);
  ImageConverter converter(format, options);
  return converter.convert(source, "v1", target, "v1");
}

CheckReport check(const std::string& dir, const std::string& tag = "v1") {
  OciLayout layout(dir, false);
  CheckReport report;
  check_nydus_manifest(layout, layout.get_manifest(tag), {}, report);
  return report;
}

bool has_fault(const CheckReport& r, const std::string& words) {
  for (const auto& f : r.faults)
    if (f.find(words) != std::string::npos) return true;
  return false;
}

std::string faults(const CheckReport& r) {
  std::string out;
  for (const auto& f : r.faults) out += f + "\n";
  return out;
}

// The image's manifest, and the bootstrap it carries.
struct Image {
  json manifest;
  json config;
  rafs::Bootstrap bootstrap;
  std::map<std::string, std::string> blob_metas;  // blob id -> image/<id>.blob.meta
};

Image load(const std::string& dir) {
  OciLayout layout(dir, false);
  Image image;
  image.manifest = json::parse(layout.get_manifest("v1").bytes);
  image.config = json::parse(read_file(layout.blob_path(image.manifest["config"]["digest"])));
  std::string gz = read_file(layout.blob_path(image.manifest["layers"].back()["digest"]));
  MemorySource raw(gz);
  auto tar_stream = open_decompressed(raw);
  TarReader tar(*tar_stream);
  TarEntry e;
  while (tar.next(e)) {
    std::string content(e.size, '\0');
    size_t got = 0;
    while (got < content.size()) got += tar.read(content.data() + got, content.size() - got);
    if (e.name == kNydusBootstrapPath) image.bootstrap = rafs::read_bootstrap(content);
    else if (e.name.ends_with(".blob.meta")) image.blob_metas[e.name.substr(6, 64)] = content;
  }
  return image;
}

// Writes `tar` as the image's bootstrap layer (new config and manifest, tag "v1").
void replace_bootstrap_layer(const std::string& dir, Image image, const std::string& tar) {
  std::string gz = gzip_member(tar.data(), tar.size(), 6);
  write_blob(dir, gz);
  image.manifest["layers"].back()["digest"] = Sha256::of(gz);
  image.manifest["layers"].back()["size"] = gz.size();
  image.config["rootfs"]["diff_ids"].back() = Sha256::of(tar);
  std::string config = image.config.dump();
  write_blob(dir, config);
  image.manifest["config"]["digest"] = Sha256::of(config);
  image.manifest["config"]["size"] = config.size();
  ManifestBytes m{media_type::oci_manifest, image.manifest.dump(), ""};
  m.digest = Sha256::of(m.bytes);
  OciLayout(dir, false).put_manifest(m, "v1");
}

void replace_bootstrap(const std::string& dir, const Image& image, const std::string& bootstrap) {
  replace_bootstrap_layer(dir, image, bootstrap_layer_tar(bootstrap));
}

std::string path_of_layer(const std::string& dir, const Image& image, size_t i) {
  return OciLayout(dir, false).blob_path(image.manifest["layers"][i]["digest"]);
}

}  // namespace

TEST_CASE("a converted Nydus image passes check; its bootstrap is the merged tree", "[nydus_check]") {
  TempDir tmp;
  make_source(tmp.path() + "/src");
  auto result = convert(tmp.path() + "/src", tmp.path() + "/dst", 2);
  CHECK(result.layers_converted == 2);
  auto report = check(tmp.path() + "/dst");
  INFO(faults(report));
  CHECK(report.ok());
  CHECK(report.passed.size() == 3);  // the bootstrap and two blobs

  Image image = load(tmp.path() + "/dst");
  REQUIRE(image.manifest["layers"].size() == 3);
  CHECK(image.manifest["layers"][0]["mediaType"] == std::string(kNydusBlobMediaType));
  CHECK(image.manifest["layers"][2]["annotations"][std::string(kNydusBootstrapAnnotation)] == "true");
  CHECK(image.config["rootfs"]["diff_ids"][0] == image.manifest["layers"][0]["digest"]);
  CHECK(image.config["history"].back()["comment"] == "Nydus Bootstrap Layer");
  CHECK(image.blob_metas.size() == image.bootstrap.blobs.size());
  for (size_t b = 0; b < image.bootstrap.blobs.size(); ++b) {
    const auto& blob = image.bootstrap.blobs[b];
    std::string bytes = read_file(OciLayout(tmp.path() + "/dst", false).blob_path("sha256:" + blob.blob_id));
    std::string region = bytes.substr(blob.ci_offset, blob.ci_compressed_size + nydus::kBlobMetaHeaderSize);
    CHECK(image.blob_metas.at(blob.blob_id) == nydus::blob_meta_cache_file(region, blob));
    // nydusd's cache file: the chunk-info array padded to 4 KiB, then the 4096-byte header.
    CHECK(image.blob_metas.at(blob.blob_id).size() % 4096 == 0);
  }
  OciLayout src(tmp.path() + "/src", false);
  CHECK(image.manifest["subject"]["digest"] == src.get_manifest("v1").digest);

  // The merged tree: the whiteout and the opaque directory applied and gone.
  const auto& inodes = image.bootstrap.tree.inodes;
  auto child = [&](uint32_t dir, const std::string& name) -> std::optional<uint32_t> {
    for (const auto& [n, i] : inodes[dir].children)
      if (n == name) return i;
    return std::nullopt;
  };
  auto etc = child(0, "etc"), opt = child(0, "opt"), usr = child(0, "usr");
  REQUIRE(etc);
  REQUIRE(opt);
  REQUIRE(usr);
  CHECK(child(*etc, "os-release"));
  CHECK_FALSE(child(*etc, "gone"));
  CHECK_FALSE(child(*etc, ".wh.gone"));
  CHECK_FALSE(child(*opt, "old"));
  CHECK(child(*opt, "new"));
  CHECK(inodes[*opt].children.size() == 1);
  auto bin = child(*usr, "bin");
  REQUIRE(bin);
  auto tool = child(*bin, "tool"), link = child(*bin, "tool-link"), copy = child(*bin, "copy");
  REQUIRE(tool);
  REQUIRE(link);
  REQUIRE(copy);
  CHECK(*tool == *link);  // one inode: a hardlink
  // The copy in the upper layer is its own blob's chunks (dedup is per layer).
  REQUIRE(!inodes[*copy].chunks.empty());
  CHECK(inodes[*copy].chunks[0].blob_index == 1);
  CHECK(inodes[*tool].chunks[0].blob_index == 0);
  CHECK(inodes[*copy].chunks[0].digest == inodes[*tool].chunks[0].digest);
}

TEST_CASE("Nydus conversion is deterministic across thread counts, per compressor", "[nydus_check]") {
  TempDir tmp;
  make_source(tmp.path() + "/src");
  for (std::string compressor : {"zstd", "lz4_block", "none"}) {
    auto one = convert(tmp.path() + "/src", tmp.path() + "/one-" + compressor, 1, compressor);
    auto two = convert(tmp.path() + "/src", tmp.path() + "/two-" + compressor, 2, compressor);
    INFO(compressor);
    CHECK(one.manifest.digest == two.manifest.digest);
    CHECK(check(tmp.path() + "/two-" + compressor).ok());
  }
  // Different compressors give different images.
  CHECK(load(tmp.path() + "/one-zstd").manifest["layers"][0]["digest"] !=
        load(tmp.path() + "/one-none").manifest["layers"][0]["digest"]);
}

TEST_CASE("check names each deliberate fault", "[nydus_check]") {
  TempDir tmp;
  make_source(tmp.path() + "/src");
  const std::string dst = tmp.path() + "/dst";
  convert(tmp.path() + "/src", dst, 1);
  REQUIRE(check(dst).ok());
  Image image = load(dst);
  const std::string blob0 = path_of_layer(dst, image, 0);
  const std::string blob0_copy = read_file(blob0);

  SECTION("a flipped byte in a chunk") {
    std::string bytes = blob0_copy;
    bytes[2] ^= 0x5a;  // inside chunk 0, etc/os-release's 8 bytes, stored raw
    std::ofstream(blob0, std::ios::binary | std::ios::trunc) << bytes;
    auto report = check(dst);
    INFO(faults(report));
    CHECK_FALSE(report.ok());
    CHECK(has_fault(report, "chunk 0 at offset 0"));
    CHECK(has_fault(report, "not to its digest"));
  }

  SECTION("a wrong blob id") {
    rafs::Bootstrap b = image.bootstrap;
    b.blobs[0].blob_id = std::string(64, 'a');
    replace_bootstrap(dst, image, rafs::write_bootstrap(b));
    auto report = check(dst);
    INFO(faults(report));
    CHECK(has_fault(report, "the blob id is not the digest of any blob layer"));
  }

  SECTION("a truncated blob meta") {
    const auto& blob = image.bootstrap.blobs[0];
    std::filesystem::resize_file(blob0, blob.ci_offset + 10);
    auto report = check(dst);
    INFO(faults(report));
    CHECK(has_fault(report, "truncated blob meta"));
  }

  SECTION("a chunk address past its blob") {
    // The writer refuses such a bootstrap, so the bytes are patched: one chunk address and its
    // chunk table entry (blob 0, its last chunk) are moved past the blob's chunk count.
    std::string boot = rafs::write_bootstrap(image.bootstrap);
    const auto& blob = image.bootstrap.blobs[0];
    const uint32_t ci = blob.chunk_count - 1, moved = blob.chunk_count + 7;
    uint64_t block = 0;
    for (const auto& inode : image.bootstrap.tree.inodes)
      for (const auto& c : inode.chunks)
        if (c.blob_index == 0 && c.ci_index == ci) block = c.uncompressed_offset / 4096;
    auto le = [](uint64_t v, size_t n) {
      std::string out(n, '\0');
      for (size_t i = 0; i < n; ++i) out[i] = static_cast<char>(v >> (8 * i));
      return out;
    };
    const std::string address = le(ci & 0xffff, 2) + le(1, 2) + le(block, 4);
    size_t at = boot.find(address);
    REQUIRE(at != std::string::npos);
    REQUIRE(boot.find(address, at + 1) == std::string::npos);
    boot.replace(at, 2, le(moved, 2));
    uint64_t table = 0, table_size = 0;
    for (size_t i = 0; i < 8; ++i) table |= uint64_t(uint8_t(boot[1176 + i])) << (8 * i);
    for (size_t i = 0; i < 8; ++i) table_size |= uint64_t(uint8_t(boot[1184 + i])) << (8 * i);
    bool patched = false;
    for (uint64_t e = table; e < table + table_size; e += 80)
      if (boot.substr(e + 32, 4) == le(0, 4) && boot.substr(e + 72, 4) == le(ci, 4)) {
        boot.replace(e + 72, 4, le(moved, 4));
        patched = true;
      }
    REQUIRE(patched);
    replace_bootstrap(dst, image, boot);
    auto report = check(dst);
    INFO(faults(report));
    CHECK(has_fault(report, "chunk index " + std::to_string(moved)));
    CHECK(has_fault(report, "beyond its blob's chunk count"));
  }

  SECTION("a blob-meta cache file in the bootstrap layer that differs from the blob's") {
    const auto& blob = image.bootstrap.blobs[0];
    std::string region = read_file(blob0).substr(blob.ci_offset, blob.ci_compressed_size + nydus::kBlobMetaHeaderSize);
    std::string meta = nydus::blob_meta_cache_file(region, blob);
    meta[0] ^= 1;
    replace_bootstrap_layer(dst, image, bootstrap_layer_tar(rafs::write_bootstrap(image.bootstrap), {{blob.blob_id, meta}}));
    auto report = check(dst);
    INFO(faults(report));
    CHECK(has_fault(report, ".blob.meta in the bootstrap layer differs from the blob's meta"));
  }

  SECTION("a blob meta header that disagrees with the blob table") {
    rafs::Bootstrap b = image.bootstrap;
    b.blobs[0].chunk_count += 1;
    b.blobs[0].ci_uncompressed_size += 16;
    replace_bootstrap(dst, image, rafs::write_bootstrap(b));
    auto report = check(dst);
    INFO(faults(report));
    CHECK_FALSE(report.ok());
    CHECK(has_fault(report, "blob 0"));
  }
}

TEST_CASE("a prefetch list becomes the bootstrap's prefetch table, in its order", "[nydus_check]") {
  TempDir tmp;
  make_source(tmp.path() + "/src");
  convert(tmp.path() + "/src", tmp.path() + "/dst", 1, "zstd", {"/usr/bin/tool", "opt/new", "/no/such/file", "/etc"});
  Image image = load(tmp.path() + "/dst");
  // Paths missing from the merged tree are left out; a relative path is taken from the root.
  CHECK(image.bootstrap.prefetch == std::vector<std::string>{"/usr/bin/tool", "/opt/new", "/etc"});
  CHECK(check(tmp.path() + "/dst").ok());
  // Without a list there is no table.
  convert(tmp.path() + "/src", tmp.path() + "/none", 1);
  CHECK(load(tmp.path() + "/none").bootstrap.prefetch.empty());
}
