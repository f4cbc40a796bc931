#include "proxy/convert_command.hpp"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <thread>
#include <unistd.h>

#include "convert/estargz.hpp"
#include "convert/formats.hpp"
#include "convert/image_check.hpp"
#include "convert/nydus.hpp"
#include "convert/oci_layout.hpp"
#include "convert/streams.hpp"
#include "variants/registry_store.hpp"

namespace accel {

using convert::ConvertError;

namespace {

constexpr const char* kConvertUsage = R"(Usage: accel-proxy convert --format FORMAT SRC DST [options]

Converts an image (every platform of an index, or those given with --platform) into an
accelerated format and writes it to DST. SRC and DST are either
  docker://HOST/REPOSITORY[:TAG|@DIGEST]   a registry (https unless --*-tls-verify=false)
  oci:DIR[:TAG]                            an OCI image layout directory (created if missing)
DST's tag defaults to SRC's. Source blobs are checked against their digests; on any error
nothing is tagged at DST.

Options:
  --format NAME              estargz or nydus
  --platform OS/ARCH[/VAR]   convert only this platform (repeatable); others are copied as they are
  --src-creds USER:PASS      credentials for SRC (default: from --authfile)
  --dest-creds USER:PASS     credentials for DST (default: from --authfile)
  --authfile FILE            docker config.json (default $DOCKER_CONFIG/config.json, ~/.docker/config.json)
  --src-tls-verify=false     talk plain http to SRC's registry
  --dest-tls-verify=false    talk plain http to DST's registry
  --threads N                compression threads (default: one per core; output does not depend on it)
  --chunk-size BYTES         eStargz: bytes per chunk of a large file (default 4194304);
                             Nydus: chunk size, a power of two from 4096 to 16 MiB (default 1048576)
  --compression-level N      eStargz: gzip level 1-12 (default 6); Nydus: zstd level 1-19 (default 3)
  --compressor NAME          Nydus: zstd (default), lz4_block or none
  --work-dir DIR             temporary files (default $TMPDIR or /tmp)
  --max-layer-bytes N        refuse layers whose tar content expands past N bytes (default 64 GiB)
  --max-image-bytes N        refuse images whose layers to convert add up to more than N
                             compressed bytes, before reading any (default 64 GiB)
  --prioritize FILE          paths (one per line) loaded first, in that order: eStargz places them
                             before a .prefetch.landmark, Nydus first in each blob and in the
                             bootstrap's prefetch table
  --prefetch FILE            the same as --prioritize
  --json                     print a one-line JSON summary instead of text
)";

constexpr const char* kConvertLayerUsage = R"(Usage: accel-proxy convert-layer --format FORMAT IN OUT [options]

Converts one layer file (tar, tar+gzip or tar+zstd) into a blob file of FORMAT and prints its
descriptor facts as JSON (digest, size, diff_id, uncompressed_size, media_type, annotations).
Options: --threads N, --chunk-size BYTES, --compression-level N, --compressor NAME (Nydus),
         --max-layer-bytes N, --prioritize FILE (paths to place first, in that order, one per line)
)";

constexpr const char* kCheckUsage = R"(Usage: accel-proxy check IMAGE [options]

Checks a Nydus (RAFS v6) or eStargz image the way its consumer does when it loads it, and
says exactly what is wrong. IMAGE is docker://HOST/REPOSITORY[:TAG|@DIGEST] or oci:DIR[:TAG];
for an index, every platform (or those given with --platform) is checked.
  Nydus: the bootstrap's superblock and flags, the blob table against each blob's meta header,
         the chunk-info array's size and offsets, every inode and every chunk address against
         the chunk table, and every chunk's digest after decompression; each blob's bytes
         against its id.
  eStargz: the footer, the TOC against its digest annotation, every chunk's digest read from
         its own offset, each layer's bytes against its digest.
Exit status 0 when every check passes, 1 when any fails (each fault on its own line).

Options:
  --platform OS/ARCH[/VAR]   check only this platform of an index (repeatable)
  --creds USER:PASS          registry credentials (default: from --authfile)
  --authfile FILE            docker config.json
  --tls-verify=false         talk plain http to the registry
  --write-devices DIR        Nydus: write the merged bootstrap (DIR/image.boot) and each blob's
                             uncompressed device image (DIR/<blob id>), so the image can be
                             mounted with the kernel's EROFS driver:
                               mount -t erofs -o ro,device=DIR/<id>,... DIR/image.boot MNT
                             (one image manifest only)
)";

struct Location {
  bool oci = false;
  std::string dir;             // oci
  DockerReference docker;      // docker
  std::string tag_or_digest;   // what to read / the tag to write
};

Location parse_location(std::string_view text) {
  Location l;
  if (text.starts_with("oci:")) {
    l.oci = true;
    std::string_view rest = text.substr(4);
    size_t colon = rest.rfind(':');
    if (colon != std::string_view::npos && rest.find('/', colon) == std::string_view::npos && colon > 0) {
      l.dir = std::string(rest.substr(0, colon));
      l.tag_or_digest = std::string(rest.substr(colon + 1));
    } else {
      l.dir = std::string(rest);
    }
    if (l.dir.empty()) throw ConvertError("oci: needs a directory");
    return l;
  }
  if (text.starts_with("docker://")) {
    l.docker = parse_docker_reference(text.substr(9));
    l.tag_or_digest = l.docker.reference;
    return l;
  }
  throw ConvertError("'" + std::string(text) + "' is neither docker://HOST/REPO[:TAG] nor oci:DIR[:TAG]");
}

bool explicit_docker_tag(std::string_view text) {
  if (!text.starts_with("docker://")) return false;
  auto rest = text.substr(9);
  auto last_slash = rest.rfind('/');
  return rest.find('@') != std::string_view::npos || rest.find(':', last_slash == std::string_view::npos ? 0 : last_slash) != std::string_view::npos;
}

std::string read_text_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) return "";
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

Credentials credentials_for(const std::string& flag, const std::string& authfile, const std::string& host) {
  if (!flag.empty()) return parse_credentials(flag);
  std::string path = authfile;
  if (path.empty()) {
    if (const char* d = std::getenv("DOCKER_CONFIG")) path = std::string(d) + "/config.json";
    else if (const char* h = std::getenv("HOME")) path = std::string(h) + "/.docker/config.json";
  }
  if (path.empty()) return {};
  auto found = credentials_from_docker_config(read_text_file(path), host);
  return found.value_or(Credentials{});
}

uint64_t parse_number(std::string_view flag, std::string_view value) {
  try {
    size_t used = 0;
    uint64_t v = std::stoull(std::string(value), &used);
    if (used != value.size()) throw std::invalid_argument("trailing");
    return v;
  } catch (const std::exception&) {
    throw ConvertError(std::string(flag) + " needs a number, got '" + std::string(value) + "'");
  }
}

// Walks command-line arguments: "--name value", "--name=value" and positional ones.
class ArgWalker {
 public:
  explicit ArgWalker(const std::vector<std::string_view>& args) : args_(args) {}
  // Advances to the next argument; false at the end. flag() is "--name" (or the positional).
  bool next() {
    if (++i_ >= args_.size()) return false;
    flag_ = std::string(args_[i_]);
    has_value_ = flag_.starts_with("--") && flag_.find('=') != std::string::npos;
    if (has_value_) {
      value_ = flag_.substr(flag_.find('=') + 1);
      flag_.resize(flag_.find('='));
    }
    return true;
  }
  const std::string& flag() const { return flag_; }
  // The current flag's value: after '=', or the next argument.
  std::string value() {
    if (has_value_) return value_;
    if (i_ + 1 >= args_.size()) throw ConvertError(flag_ + " needs a value");
    return std::string(args_[++i_]);
  }

 private:
  const std::vector<std::string_view>& args_;
  size_t i_ = static_cast<size_t>(-1);
  std::string flag_, value_;
  bool has_value_ = false;
};

std::string known_formats() {
  std::string names;
  for (const auto* f : convert::all_formats()) names += (names.empty() ? "" : ", ") + std::string(f->name());
  return names;
}

struct CommonOptions {
  const convert::LayerFormat* format = nullptr;
  convert::LayerOptions layer;
  bool json = false;
};

// Parses flags shared by both commands; returns the positional arguments.
std::vector<std::string> parse_args(const std::vector<std::string_view>& args, CommonOptions& common,
                                    std::map<std::string, std::string>& extra, const std::vector<std::string>& extra_names) {
  std::vector<std::string> positional;
  common.layer.threads = std::max(1u, std::thread::hardware_concurrency());
  common.layer.compression_level = 6;  // chosen by bench/convert: see docs/DECISIONS.md
  std::optional<uint64_t> chunk_size, level;  // their meaning depends on the format
  ArgWalker walk(args);
  while (walk.next()) {
    const std::string& a = walk.flag();
    auto take = [&] { return walk.value(); };
    if (a == "--format") {
      std::string name = take();
      common.format = convert::find_format(name);
      if (!common.format) throw ConvertError("unknown format '" + name + "' (known: " + known_formats() + ")");
    } else if (a == "--threads") {
      common.layer.threads = static_cast<unsigned>(std::max<uint64_t>(1, parse_number(a, take())));
    } else if (a == "--chunk-size") {
      chunk_size = parse_number(a, take());
      if (*chunk_size == 0) throw ConvertError("--chunk-size must be positive");
    } else if (a == "--compression-level") {
      level = parse_number(a, take());
    } else if (a == "--compressor") {
      common.layer.nydus.compressor = take();
    } else if (a == "--prioritize" || a == "--prefetch") {
      std::string path = take();
      std::ifstream list(path);
      if (!list) throw ConvertError("cannot read " + path);
      for (std::string line; std::getline(list, line);)
        if (!line.empty()) common.layer.prioritized_files.push_back(line);
    } else if (a == "--max-layer-bytes") {
      common.layer.max_uncompressed_bytes = parse_number(a, take());
    } else if (a == "--json") {
      common.json = true;
    } else if (std::find(extra_names.begin(), extra_names.end(), a) != extra_names.end()) {
      std::string v = take();
      if (a == "--platform") extra[a] += (extra[a].empty() ? "" : ",") + v;
      else extra[a] = v;
    } else if (a.starts_with("--")) {
      throw ConvertError("unknown option " + a);
    } else {
      positional.push_back(a);
    }
  }
  if (!common.format) throw ConvertError("--format is required (" + known_formats() + ")");
  const bool nydus = common.format->name() == "nydus";
  if (chunk_size) {
    if (nydus && *chunk_size > UINT32_MAX) throw ConvertError("--chunk-size is too large for Nydus");
    if (nydus) common.layer.nydus.chunk_size = static_cast<uint32_t>(*chunk_size);
    else common.layer.chunk_size = *chunk_size;
  }
  if (level) {
    if (nydus && (*level < 1 || *level > 19)) throw ConvertError("--compression-level must be 1 to 19 (zstd)");
    if (!nydus && (*level < 1 || *level > 12)) throw ConvertError("--compression-level must be 1 to 12");
    (nydus ? common.layer.nydus.level : common.layer.compression_level) = static_cast<int>(*level);
  }
  return positional;
}

class ProgressDisplay {
 public:
  explicit ProgressDisplay(bool enabled) : enabled_(enabled), started_(std::chrono::steady_clock::now()) {}
  void operator()(const convert::ImageProgress& p) {
    if (!enabled_) return;
    if (p.event == "layer-start") layer_started_ = std::chrono::steady_clock::now();
    if (p.event == "layer-progress" || p.event == "layer-done") {
      double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - layer_started_).count();
      double rate = secs > 0 ? p.bytes_in / 1e6 / secs : 0;
      std::fprintf(stderr, "\rlayer %zu/%zu %s  %.1f/%.1f MB  %.1f MB/s%s", p.layer + 1, p.layers,
                   p.digest.substr(7, 12).c_str(), p.bytes_in / 1e6, p.total_in / 1e6, rate,
                   p.event == "layer-done" ? "  done\n" : "   ");
      std::fflush(stderr);
    }
  }

 private:
  bool enabled_;
  std::chrono::steady_clock::time_point started_, layer_started_;
};

std::unique_ptr<convert::OciLayout> open_layout(const Location& l, bool create) {
  return std::make_unique<convert::OciLayout>(l.dir, create);
}

}  // namespace

int run_convert_command(const std::vector<std::string_view>& args) {
  for (auto a : args)
    if (a == "-h" || a == "--help") {
      std::fputs(kConvertUsage, stdout);
      return 0;
    }
  try {
    CommonOptions common;
    std::map<std::string, std::string> extra;
    auto positional = parse_args(args, common, extra,
                                 {"--platform", "--src-creds", "--dest-creds", "--authfile", "--src-tls-verify",
                                  "--dest-tls-verify", "--work-dir", "--max-image-bytes"});
    if (positional.size() != 2) throw ConvertError("expected SRC and DST (see accel-proxy convert --help)");
    Location src = parse_location(positional[0]), dst = parse_location(positional[1]);
    if (src.tag_or_digest.empty()) src.tag_or_digest = "latest";
    std::string dst_tag = dst.tag_or_digest;
    if (dst_tag.empty() || (!dst.oci && !explicit_docker_tag(positional[1]))) dst_tag = src.tag_or_digest;
    if (dst_tag.find(':') != std::string::npos) dst_tag.clear();  // a digest source: store by digest only

    convert::ImageConvertOptions options;
    options.layer = common.layer;
    if (!extra["--max-image-bytes"].empty()) options.max_image_bytes = parse_number("--max-image-bytes", extra["--max-image-bytes"]);
    if (!extra["--platform"].empty()) {
      std::stringstream ss(extra["--platform"]);
      for (std::string p; std::getline(ss, p, ',');)
        if (!p.empty()) options.platforms.push_back(p);
    }
    const char* tmp = std::getenv("TMPDIR");
    options.work_dir = !extra["--work-dir"].empty() ? extra["--work-dir"] : tmp ? tmp : "/tmp";
    options.layer.work_dir = options.work_dir;
    ProgressDisplay display(!common.json && ::isatty(2));
    options.progress = [&](const convert::ImageProgress& p) { display(p); };

    std::unique_ptr<convert::ImageSource> source_owner;
    std::unique_ptr<convert::ImageTarget> target_owner;
    std::unique_ptr<convert::OciLayout> src_layout, dst_layout;
    convert::ImageSource* source = nullptr;
    convert::ImageTarget* target = nullptr;
    if (src.oci) {
      src_layout = open_layout(src, false);
      source = src_layout.get();
    } else {
      auto store = std::make_unique<RegistryStore>(src.docker, credentials_for(extra["--src-creds"], extra["--authfile"], src.docker.host),
                                                   extra["--src-tls-verify"] != "false", false);
      source = store.get();
      source_owner = std::move(store);
    }
    if (dst.oci) {
      dst_layout = (src.oci && src.dir == dst.dir) ? nullptr : open_layout(dst, true);
      target = dst_layout ? dst_layout.get() : src_layout.get();
    } else {
      auto store = std::make_unique<RegistryStore>(dst.docker, credentials_for(extra["--dest-creds"], extra["--authfile"], dst.docker.host),
                                                   extra["--dest-tls-verify"] != "false", true);
      target = store.get();
      target_owner = std::move(store);
    }

    auto started = std::chrono::steady_clock::now();
    convert::ImageConverter converter(*common.format, options);
    auto result = converter.convert(*source, src.tag_or_digest, *target, dst_tag);
    double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();

    if (common.json) {
      nlohmann::json summary = {{"source", positional[0]},
                                {"destination", positional[1]},
                                {"format", std::string(common.format->name())},
                                {"manifest_digest", result.manifest.digest},
                                {"media_type", result.manifest.media_type},
                                {"already_converted", result.already_converted},
                                {"layers_converted", result.layers_converted},
                                {"layers_kept", result.layers_kept},
                                {"bytes_in", result.bytes_in},
                                {"bytes_out", result.bytes_out},
                                {"seconds", seconds}};
      std::puts(summary.dump().c_str());
    } else if (result.already_converted) {
      std::printf("%s is already %s: nothing to convert (%s)\n", positional[0].c_str(), std::string(common.format->name()).c_str(),
                  result.manifest.digest.c_str());
    } else {
      std::printf("converted %s -> %s (%s): %zu layers converted, %zu kept, %.1f MB -> %.1f MB in %.1fs\n",
                  positional[0].c_str(), positional[1].c_str(), result.manifest.digest.c_str(), result.layers_converted,
                  result.layers_kept, result.bytes_in / 1e6, result.bytes_out / 1e6, seconds);
    }
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "\naccel-proxy convert: error: %s\n", e.what());
    return 1;
  }
}

int run_convert_layer_command(const std::vector<std::string_view>& args) {
  for (auto a : args)
    if (a == "-h" || a == "--help") {
      std::fputs(kConvertLayerUsage, stdout);
      return 0;
    }
  try {
    CommonOptions common;
    std::map<std::string, std::string> extra;
    auto positional = parse_args(args, common, extra, {});
    if (positional.size() != 2) throw ConvertError("expected IN and OUT (see accel-proxy convert-layer --help)");
    auto started = std::chrono::steady_clock::now();
    convert::FileSource file(positional[0]);
    convert::HashingSource compressed(file);
    auto decompressed = convert::open_decompressed(compressed);
    convert::HashingSource tar(*decompressed);
    convert::FileSink out(positional[1]);
    auto layer = common.format->convert_layer(tar, out, common.layer);
    convert::drain(tar);
    out.commit();
    double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    nlohmann::json j = {{"digest", layer.digest},
                        {"size", layer.size},
                        {"diff_id", layer.diff_id},
                        {"uncompressed_size", layer.uncompressed_size},
                        {"media_type", layer.media_type},
                        {"annotations", layer.annotations},
                        {"source_digest", compressed.digest()},
                        {"source_diff_id", tar.digest()},
                        {"source_uncompressed_size", tar.bytes()},
                        {"seconds", seconds}};
    std::puts(j.dump().c_str());
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "accel-proxy convert-layer: error: %s\n", e.what());
    return 1;
  }
}

}  // namespace accel

namespace accel {

namespace {

enum class ImageKind { nydus, estargz, other };

ImageKind kind_of(const std::string& manifest_bytes) {
  auto doc = nlohmann::json::parse(manifest_bytes, nullptr, false);
  if (!doc.is_object() || !doc.contains("layers") || !doc["layers"].is_array() || doc["layers"].empty())
    return ImageKind::other;
  const auto& layers = doc["layers"];
  auto last = layers.back().value("annotations", nlohmann::json::object());
  if (last.is_object() && last.contains(std::string(convert::kNydusBootstrapAnnotation))) return ImageKind::nydus;
  for (const auto& l : layers) {
    auto a = l.value("annotations", nlohmann::json::object());
    if (a.is_object() && a.contains(std::string(convert::kEstargzTocDigestAnnotation))) return ImageKind::estargz;
  }
  return ImageKind::other;
}

}  // namespace

int run_check_command(const std::vector<std::string_view>& args) {
  for (auto a : args)
    if (a == "-h" || a == "--help") {
      std::fputs(kCheckUsage, stdout);
      return 0;
    }
  try {
    std::vector<std::string> positional, platforms;
    std::string creds, authfile, devices;
    bool tls_verify = true;
    ArgWalker walk(args);
    while (walk.next()) {
      const std::string& a = walk.flag();
      auto take = [&] { return walk.value(); };
      if (a == "--platform") platforms.push_back(take());
      else if (a == "--creds") creds = take();
      else if (a == "--authfile") authfile = take();
      else if (a == "--write-devices") devices = take();
      else if (a == "--tls-verify") tls_verify = take() != "false";
      else if (a.starts_with("--")) throw ConvertError("unknown option " + a);
      else positional.push_back(a);
    }
    if (positional.size() != 1) throw ConvertError("expected one IMAGE (see accel-proxy check --help)");
    Location where = parse_location(positional[0]);
    if (where.tag_or_digest.empty() && where.oci) {
      // A layout holding one untagged image (skopeo copy ... oci:DIR) is checked as it is.
      auto index = nlohmann::json::parse(read_text_file(where.dir + "/index.json"), nullptr, false);
      if (index.is_object() && index.contains("manifests") && index["manifests"].is_array() &&
          index["manifests"].size() == 1)
        where.tag_or_digest = index["manifests"][0].value("digest", "");
    }
    if (where.tag_or_digest.empty()) where.tag_or_digest = "latest";
    std::unique_ptr<convert::ImageSource> source;
    if (where.oci) source = std::make_unique<convert::OciLayout>(where.dir, false);
    else
      source = std::make_unique<RegistryStore>(where.docker, credentials_for(creds, authfile, where.docker.host), tls_verify, false);

    // The image manifests to check: the top one, or the selected children of an index.
    auto top = source->get_manifest(where.tag_or_digest);
    std::vector<std::pair<std::string, convert::ManifestBytes>> manifests;  // (platform, manifest)
    if (convert::is_index(top.media_type)) {
      auto index = convert::parse_manifest(top.bytes);
      for (const auto& child : index.value("manifests", nlohmann::json::array())) {
        auto p = child.value("platform", nlohmann::json::object());
        std::string platform = p.is_object() ? p.value("os", "") + "/" + p.value("architecture", "") : "";
        if (p.is_object() && !p.value("variant", "").empty()) platform += "/" + p.value("variant", "");
        if (!platforms.empty() && std::find(platforms.begin(), platforms.end(), platform) == platforms.end()) continue;
        if (child.value("annotations", nlohmann::json::object()).value("vnd.docker.reference.type", "") == "attestation-manifest")
          continue;
        manifests.emplace_back(platform, source->get_manifest(child.value("digest", "")));
      }
    } else {
      manifests.emplace_back("", top);
    }
    if (manifests.empty()) throw ConvertError("no image manifest to check");
    if (!devices.empty() && manifests.size() != 1)
      throw ConvertError("--write-devices needs one image manifest (choose one with --platform)");

    convert::CheckReport report;
    convert::CheckOptions options;
    options.write_devices_dir = devices;
    for (const auto& [platform, manifest] : manifests) {
      std::string label = platform.empty() ? "" : platform + " ";
      switch (kind_of(manifest.bytes)) {
        case ImageKind::nydus: convert::check_nydus_manifest(*source, manifest, options, report); break;
        case ImageKind::estargz: convert::check_estargz_manifest(*source, manifest, options, report); break;
        case ImageKind::other:
          report.faults.push_back(label + "manifest " + manifest.digest.substr(0, 19) +
                                  ": neither Nydus (no bootstrap layer) nor eStargz (no TOC digest annotation)");
      }
    }
    for (const auto& line : report.passed) std::printf("ok     %s\n", line.c_str());
    for (const auto& line : report.faults) std::printf("FAULT  %s\n", line.c_str());
    std::printf("%s: %zu checks passed, %zu faults\n", positional[0].c_str(), report.passed.size(), report.faults.size());
    return report.ok() ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "accel-proxy check: error: %s\n", e.what());
    return 2;
  }
}

}  // namespace accel
