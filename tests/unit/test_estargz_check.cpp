// `accel-proxy check` for eStargz: an image our converter made passes; copies with a flipped
// byte in a chunk, a wrong or missing toc.digest annotation, a truncated blob, a bad footer
// offset, a wrong diff_id, or a TOC rewritten with one thing wrong (chunk or file digest, a
// missing chunkDigest, a gap, a shared offset, a dangling hardlink) fail with a fault that
// names what is wrong and where. The 47-byte legacy footer is accepted.
#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>
#include <functional>
#include <random>
#include <string>

#include "convert/estargz.hpp"
#include "convert/gzip_members.hpp"
#include "convert/image.hpp"
#include "convert/image_check.hpp"
#include "convert/oci_layout.hpp"
#include "convert/sha256.hpp"
#include "convert/streams.hpp"
#include "convert/tar.hpp"
#include "test_files.hpp"

using namespace accel::convert;
namespace fs = std::filesystem;

namespace {

constexpr uint64_t kChunkSize = 64 * 1024;  // small, so the big file is cut into chunks


void add_file(TarWriter& tar, const std::string& name, const std::string& content) {
  TarEntry e;
  e.name = name;
  e.mode = 0644;
  e.size = content.size();
  e.mtime.seconds = 1700000000;
  tar.write_header(e);
  tar.write_content(content.data(), content.size());
  tar.pad();
}

std::string source_layer_tar() {
  StringSink sink;
  TarWriter tar(sink);
  TarEntry dir;
  dir.name = "etc/";
  dir.type = EntryType::directory;
  dir.mode = 0755;
  tar.write_header(dir);
  std::string hosts;
  for (int i = 0; i < 200; ++i) hosts += "127.0.0." + std::to_string(i) + " host" + std::to_string(i) + "\n";
  add_file(tar, "etc/hosts", hosts);
  add_file(tar, "etc/empty", "");
  add_file(tar, "usr/bin/big", random_bytes(3 * kChunkSize + 1000, 7));
  TarEntry link;
  link.name = "usr/bin/link";
  link.type = EntryType::symlink;
  link.link_name = "big";
  tar.write_header(link);
  tar.finish();
  return sink.data;
}

void put_blob(OciLayout& layout, const std::string& dir, const std::string& bytes, const std::string& media_type,
              Descriptor& out) {
  out.digest = Sha256::of(bytes);
  out.size = bytes.size();
  out.media_type = media_type;
  std::string path = dir + "/upload";
  std::ofstream(path, std::ios::binary) << bytes;
  layout.put_blob(out, path);
}

nlohmann::json descriptor_json(const Descriptor& d) {
  return {{"mediaType", d.media_type}, {"digest", d.digest}, {"size", d.size}};
}

// An OCI layout with one single-layer gzip image tagged "v1".
void make_source_image(const std::string& dir) {
  OciLayout layout(dir, true);
  const std::string tar = source_layer_tar();
  const std::string gz = gzip_member(tar.data(), tar.size(), 6);
  Descriptor layer, config;
  put_blob(layout, dir, gz, "application/vnd.oci.image.layer.v1.tar+gzip", layer);
  nlohmann::json config_json = {{"architecture", "amd64"},
                                {"os", "linux"},
                                {"rootfs", {{"type", "layers"}, {"diff_ids", {Sha256::of(tar)}}}}};
  put_blob(layout, dir, config_json.dump(), media_type::oci_config, config);
  nlohmann::json manifest = {{"schemaVersion", 2},
                             {"mediaType", media_type::oci_manifest},
                             {"config", descriptor_json(config)},
                             {"layers", {descriptor_json(layer)}}};
  ManifestBytes bytes;
  bytes.media_type = media_type::oci_manifest;
  bytes.bytes = manifest.dump();
  bytes.digest = Sha256::of(bytes.bytes);
  layout.put_manifest(bytes, "v1");
}

// Source image converted by our own converter into `dir`/estargz; returns the new manifest.
ManifestBytes make_estargz_image(const std::string& dir) {
  make_source_image(dir + "/source");
  OciLayout source(dir + "/source", false);
  OciLayout target(dir + "/estargz", true);
  EstargzFormat format;
  ImageConvertOptions options;
  options.layer.chunk_size = kChunkSize;
  options.layer.work_dir = dir;
  options.work_dir = dir;
  ImageConverter converter(format, options);
  return converter.convert(source, "v1", target, "v1").manifest;
}

nlohmann::json layer_of(const ManifestBytes& manifest) {
  return nlohmann::json::parse(manifest.bytes)["layers"][0];
}

// The TOC JSON of an eStargz blob, read by decompressing all of it.
nlohmann::json read_toc(const std::string& blob_path) {
  FileSource file(blob_path);
  auto tar_stream = open_decompressed(file);
  TarReader tar(*tar_stream);
  TarEntry entry;
  while (tar.next(entry)) {
    if (entry.name != kEstargzTocName) continue;
    std::string json(entry.size, '\0');
    size_t got = 0;
    while (got < json.size()) got += tar.read(json.data() + got, json.size() - got);
    return nlohmann::json::parse(json);
  }
  FAIL("no TOC in " << blob_path);
  return {};
}

ManifestBytes with_annotation(const ManifestBytes& manifest, const std::string& key, const char* value) {
  auto doc = nlohmann::json::parse(manifest.bytes);
  auto& annotations = doc["layers"][0]["annotations"];
  if (value) annotations[key] = value;
  else annotations.erase(key);
  ManifestBytes out = manifest;
  out.bytes = doc.dump();
  out.digest = Sha256::of(out.bytes);
  return out;
}

CheckReport check(const std::string& layout_dir, const ManifestBytes& manifest) {
  OciLayout layout(layout_dir, false);
  CheckReport report;
  check_estargz_manifest(layout, manifest, CheckOptions{}, report);
  return report;
}

bool has_fault(const CheckReport& report, const std::string& part) {
  for (const auto& f : report.faults)
    if (f.find(part) != std::string::npos) return true;
  return false;
}

std::string all_faults(const CheckReport& report) {
  std::string s;
  for (const auto& f : report.faults) s += f + "\n";
  return s;
}

void flip_byte(const std::string& path, uint64_t offset) {
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(static_cast<std::streamoff>(offset));
  char c = 0;
  f.read(&c, 1);
  c = static_cast<char>(c ^ 0x55);
  f.seekp(static_cast<std::streamoff>(offset));
  f.write(&c, 1);
}


// The same layer with its TOC changed by `edit`: the payload bytes are kept, a new TOC member
// and footer follow them, and a new config and manifest point at the new blob (with its TOC
// digest and diff_id), so only what `edit` broke is wrong.
ManifestBytes rewrite_toc(const std::string& layout_dir, const ManifestBytes& manifest,
                          const std::function<void(nlohmann::json&)>& edit) {
  OciLayout layout(layout_dir, false);
  auto doc = nlohmann::json::parse(manifest.bytes);
  auto& layer = doc["layers"][0];
  const std::string path = layout.blob_path(layer["digest"]);
  const std::string blob = read_file(path);
  const uint64_t toc_offset = std::stoull(blob.substr(blob.size() - kEstargzFooterSize + 16, 16), nullptr, 16);
  auto toc = read_toc(path);
  edit(toc);
  const std::string json = toc.dump();
  StringSink tar;
  TarWriter writer(tar);
  TarEntry entry;
  entry.name = std::string(kEstargzTocName);
  entry.size = json.size();
  writer.write_header(entry);
  writer.write_content(json.data(), json.size());
  writer.pad();
  writer.finish();
  const std::string rewritten =
      blob.substr(0, toc_offset) + gzip_member(tar.data.data(), tar.data.size(), 6) + estargz_footer(toc_offset);

  Descriptor d;
  put_blob(layout, layout_dir, rewritten, layer["mediaType"], d);
  layer["digest"] = d.digest;
  layer["size"] = d.size;
  layer["annotations"][std::string(kEstargzTocDigestAnnotation)] = Sha256::of(json);
  MemorySource in(rewritten);
  auto decompressed = open_decompressed(in);
  HashingSource diff(*decompressed);
  drain(diff);
  layer["annotations"][std::string(kEstargzUncompressedSizeAnnotation)] = std::to_string(diff.bytes());
  auto config = nlohmann::json::parse(read_file(layout.blob_path(doc["config"]["digest"])));
  config["rootfs"]["diff_ids"][0] = diff.digest();
  put_blob(layout, layout_dir, config.dump(), media_type::oci_config, d);
  doc["config"] = descriptor_json(d);

  ManifestBytes out = manifest;
  out.bytes = doc.dump();
  out.digest = Sha256::of(out.bytes);
  return out;
}

nlohmann::json& entry_named(nlohmann::json& toc, const std::string& name, uint64_t chunk_offset = 0) {
  for (auto& e : toc["entries"])
    if (e.value("name", "") == name && e.value("chunkOffset", uint64_t{0}) == chunk_offset) return e;
  throw std::runtime_error("no TOC entry " + name);
}
}  // namespace

TEST_CASE("an image converted to eStargz passes the check", "[estargz_check]") {
  TempDir dir;
  ManifestBytes manifest = make_estargz_image(dir.path());
  CheckReport report = check(dir.path() + "/estargz", manifest);
  INFO(all_faults(report));
  REQUIRE(report.ok());
  REQUIRE(report.passed.size() == 1);
  const std::string layer = layer_of(manifest)["digest"];
  CHECK(report.passed[0].starts_with("layer " + layer.substr(0, 19) + ": footer, TOC ("));
  // etc/hosts, the landmark and four chunks of usr/bin/big.
  CHECK(report.passed[0].find(" and 6 chunks verified") != std::string::npos);
  CHECK(report.passed[0].find("3 file digests match") != std::string::npos);  // the landmark's too
}

TEST_CASE("a flipped byte inside a chunk is reported with its file and offset", "[estargz_check]") {
  TempDir dir;
  ManifestBytes manifest = make_estargz_image(dir.path());
  const std::string layout = dir.path() + "/estargz";
  const std::string layer = layer_of(manifest)["digest"];
  const std::string blob = OciLayout(layout, false).blob_path(layer);
  auto toc = read_toc(blob);
  auto chunk_at = [&](uint64_t file_offset) {
    for (const auto& e : toc["entries"])
      if (e.value("name", "") == "usr/bin/big" && e.value("chunkOffset", uint64_t{0}) == file_offset) return e;
    FAIL("no chunk at file offset " << file_offset);
    return nlohmann::json();
  };
  const std::string where = "layer " + layer.substr(0, 19) + ": chunk of usr/bin/big at offset ";

  SECTION("a middle chunk: its member ends with the chunk, so the gzip trailer's CRC catches it") {
    // Random data is stored, so the flip changes one byte of the content.
    const uint64_t offset = chunk_at(kChunkSize)["offset"];
    flip_byte(blob, offset + 1000);
    CheckReport report = check(layout, manifest);
    INFO(all_faults(report));
    CHECK(has_fault(report, where + std::to_string(offset) + " (file offset 65536, 65536 bytes): gzip: corrupt stream: "
                                                                "CRC or length mismatch in the trailer"));
    CHECK(has_fault(report, "layer bytes do not match digest"));
    CHECK(has_fault(report, "the layer does not decompress"));
    CHECK_FALSE(has_fault(report, "etc/hosts"));
    CHECK(report.passed.empty());
  }
}

TEST_CASE("a flipped byte in a compressed file names the file", "[estargz_check]") {
  TempDir dir;
  ManifestBytes manifest = make_estargz_image(dir.path());
  const std::string layout = dir.path() + "/estargz";
  const std::string blob = OciLayout(layout, false).blob_path(layer_of(manifest)["digest"]);
  auto toc = read_toc(blob);
  uint64_t offset = 0;
  for (const auto& e : toc["entries"])
    if (e.value("name", "") == "etc/hosts") offset = e["offset"];
  REQUIRE(offset > 0);
  flip_byte(blob, offset + 30);  // inside the deflate data

  CheckReport report = check(layout, manifest);
  INFO(all_faults(report));
  // Either the deflate stream breaks or it yields other bytes: both name the chunk.
  CHECK(has_fault(report, "chunk of etc/hosts at offset " + std::to_string(offset) + " (file offset 0, "));
  CHECK_FALSE(has_fault(report, "usr/bin/big"));
}

TEST_CASE("a wrong or missing toc.digest annotation is reported", "[estargz_check]") {
  TempDir dir;
  ManifestBytes manifest = make_estargz_image(dir.path());
  const std::string layout = dir.path() + "/estargz";
  const std::string real = layer_of(manifest)["annotations"][std::string(kEstargzTocDigestAnnotation)];
  const std::string wrong = Sha256::of("not the TOC");

  SECTION("wrong") {
    const std::string key(kEstargzTocDigestAnnotation);
    CheckReport report = check(layout, with_annotation(manifest, key, wrong.c_str()));
    INFO(all_faults(report));
    REQUIRE(report.faults.size() == 1);
    CHECK(has_fault(report, ": TOC digest " + real + " does not match annotation " + wrong));
  }
  SECTION("missing") {
    CheckReport report = check(layout, with_annotation(manifest, std::string(kEstargzTocDigestAnnotation), nullptr));
    INFO(all_faults(report));
    REQUIRE(report.faults.size() == 1);
    CHECK(has_fault(report,
                    "no containerd.io/snapshot/stargz/toc.digest annotation (the TOC's digest is " + real + ")"));
  }
}

TEST_CASE("a truncated blob has no footer", "[estargz_check]") {
  TempDir dir;
  ManifestBytes manifest = make_estargz_image(dir.path());
  const std::string layout = dir.path() + "/estargz";
  const std::string layer = layer_of(manifest)["digest"];
  const uint64_t size = layer_of(manifest)["size"];
  const std::string blob = OciLayout(layout, false).blob_path(layer);
  fs::resize_file(blob, size - 20);

  CheckReport report = check(layout, manifest);
  INFO(all_faults(report));
  CHECK(has_fault(report, "layer " + layer.substr(0, 19) + ": footer is not an eStargz footer"));
  CHECK(has_fault(report, "layer bytes do not match digest"));
  CHECK(has_fault(report, "the blob has " + std::to_string(size - 20) + " bytes, the descriptor says " +
                              std::to_string(size)));
  CHECK(report.passed.empty());
}

TEST_CASE("footer offsets, the legacy footer and diff_ids", "[estargz_check]") {
  TempDir dir;
  ManifestBytes manifest = make_estargz_image(dir.path());
  const std::string layout = dir.path() + "/estargz";
  const std::string blob = OciLayout(layout, false).blob_path(layer_of(manifest)["digest"]);
  const uint64_t size = layer_of(manifest)["size"];

  SECTION("footer offset") {
    // Rewrite the footer with an offset inside the footer itself.
    std::string footer = estargz_footer(size - 10);
    std::fstream f(blob, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(size - kEstargzFooterSize));
    f.write(footer.data(), static_cast<std::streamsize>(footer.size()));
    f.close();
    CheckReport report = check(layout, manifest);
    INFO(all_faults(report));
    CHECK(has_fault(report, "the footer's TOC offset " + std::to_string(size - 10) + " is not before the footer at " +
                                std::to_string(size - kEstargzFooterSize)));
  }
  SECTION("legacy footer is accepted") {
    // The same TOC offset in the 47-byte CRFS form: the blob's digest and size change, nothing
    // else may be reported.
    auto toc_offset_hex = read_file(blob).substr(size - kEstargzFooterSize + 16, 16);
    std::string legacy("\x1f\x8b\x08\x04\x00\x00\x00\x00\x00\xff\x16\x00", 12);
    legacy += toc_offset_hex + "STARGZ";
    legacy += std::string("\x01\x00\x00\xff\xff\x00\x00\x00\x00\x00\x00\x00\x00", 13);
    REQUIRE(legacy.size() == 47);
    std::string bytes = read_file(blob).substr(0, size - kEstargzFooterSize) + legacy;
    std::ofstream(blob, std::ios::binary | std::ios::trunc) << bytes;
    CheckReport report = check(layout, manifest);
    INFO(all_faults(report));
    CHECK_FALSE(has_fault(report, "footer"));
    CHECK_FALSE(has_fault(report, "chunk"));
    CHECK(has_fault(report, "layer bytes do not match digest"));
    CHECK(report.faults.size() == 2);
  }
  SECTION("diff_id") {
    // A config whose diff_id is the source layer's (pre-conversion) one.
    OciLayout target(layout, false);
    auto doc = nlohmann::json::parse(manifest.bytes);
    const std::string config_path = target.blob_path(doc["config"]["digest"]);
    auto config = nlohmann::json::parse(read_file(config_path));
    const std::string wrong = Sha256::of("another tar");
    config["rootfs"]["diff_ids"][0] = wrong;
    Descriptor d;
    put_blob(target, dir.path(), config.dump(), media_type::oci_config, d);
    doc["config"] = descriptor_json(d);
    ManifestBytes changed = manifest;
    changed.bytes = doc.dump();
    changed.digest = Sha256::of(changed.bytes);
    CheckReport report = check(layout, changed);
    INFO(all_faults(report));
    REQUIRE(report.faults.size() == 1);
    CHECK(has_fault(report, "do not match the config's diff_id " + wrong));
  }
}

TEST_CASE("TOC faults: chunk digests, file digests, missing digests, gaps, duplicate offsets", "[estargz_check]") {
  TempDir dir;
  ManifestBytes manifest = make_estargz_image(dir.path());
  const std::string layout = dir.path() + "/estargz";
  const std::string wrong = Sha256::of("something else");

  SECTION("the rewritten TOC itself passes") {
    CheckReport report = check(layout, rewrite_toc(layout, manifest, [](nlohmann::json&) {}));
    INFO(all_faults(report));
    CHECK(report.ok());
  }
  SECTION("a wrong chunkDigest") {
    std::string real;
    uint64_t offset = 0, size = 0;
    auto changed = rewrite_toc(layout, manifest, [&](nlohmann::json& toc) {
      auto& e = entry_named(toc, "etc/hosts");
      real = e["chunkDigest"];
      offset = e["offset"];
      size = e["size"];
      e["chunkDigest"] = wrong;
    });
    CheckReport report = check(layout, changed);
    INFO(all_faults(report));
    REQUIRE(report.faults.size() == 1);
    CHECK(has_fault(report, ": chunk of etc/hosts at offset " + std::to_string(offset) + " (file offset 0, " +
                                std::to_string(size) + " bytes): digest " + real + " expected " + wrong));
  }
  SECTION("a wrong file digest") {
    std::string real;
    auto changed = rewrite_toc(layout, manifest, [&](nlohmann::json& toc) {
      auto& e = entry_named(toc, "usr/bin/big");
      real = e["digest"];
      e["digest"] = wrong;
    });
    CheckReport report = check(layout, changed);
    INFO(all_faults(report));
    REQUIRE(report.faults.size() == 1);
    CHECK(has_fault(report, ": file usr/bin/big: digest " + real + " expected " + wrong));
  }
  SECTION("a chunk without chunkDigest") {
    auto changed = rewrite_toc(layout, manifest, [&](nlohmann::json& toc) {
      entry_named(toc, "usr/bin/big", 2 * kChunkSize).erase("chunkDigest");
    });
    CheckReport report = check(layout, changed);
    INFO(all_faults(report));
    REQUIRE(report.faults.size() == 1);
    CHECK(has_fault(report, "(file offset 131072, 65536 bytes): the TOC gives no chunkDigest"));
  }
  SECTION("a missing chunk leaves a gap") {
    auto changed = rewrite_toc(layout, manifest, [&](nlohmann::json& toc) {
      auto& entries = toc["entries"];
      for (size_t i = 0; i < entries.size(); ++i)
        if (entries[i].value("type", "") == "chunk" && entries[i].value("chunkOffset", uint64_t{0}) == kChunkSize) {
          entries.erase(i);
          break;
        }
    });
    CheckReport report = check(layout, changed);
    INFO(all_faults(report));
    CHECK(has_fault(report, "(file offset 131072, 65536 bytes): it should start at file offset 65536"));
    CHECK_FALSE(has_fault(report, "file usr/bin/big: digest"));  // not computable with a gap
  }
  SECTION("two payloads at one offset") {
    auto changed = rewrite_toc(layout, manifest, [&](nlohmann::json& toc) {
      entry_named(toc, "etc/hosts")["offset"] = entry_named(toc, "usr/bin/big")["offset"];
    });
    CheckReport report = check(layout, changed);
    INFO(all_faults(report));
    CHECK(has_fault(report, "the offset is used twice"));
    CHECK(has_fault(report, "chunk of etc/hosts at offset "));
  }
  SECTION("a hardlink to nothing") {
    auto changed = rewrite_toc(layout, manifest, [&](nlohmann::json& toc) {
      toc["entries"].push_back({{"name", "etc/link"}, {"type", "hardlink"}, {"linkName", "etc/nothing"}});
      toc["entries"].push_back({{"name", "etc/link2"}, {"type", "hardlink"}, {"linkName", "./etc/hosts"}});
    });
    CheckReport report = check(layout, changed);
    INFO(all_faults(report));
    REQUIRE(report.faults.size() == 1);
    CHECK(has_fault(report, ": hardlink etc/link -> etc/nothing: the target is not in the TOC"));
  }
  SECTION("a chunk before any regular file") {
    auto changed = rewrite_toc(layout, manifest, [&](nlohmann::json& toc) {
      toc["entries"].insert(toc["entries"].begin(), nlohmann::json{{"name", "x"}, {"type", "chunk"}, {"offset", 100}});
    });
    CheckReport report = check(layout, changed);
    INFO(all_faults(report));
    REQUIRE(report.faults.size() == 1);
    CHECK(has_fault(report, "TOC entry 0 is a chunk that follows no regular file with content"));
  }
}
