#include "proxy/convert_command.hpp"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>
#include <unistd.h>

#include "convert/formats.hpp"
#include "convert/oci_layout.hpp"
#include "convert/streams.hpp"
#include "proxy/registry_store.hpp"

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
  --format NAME              estargz
  --platform OS/ARCH[/VAR]   convert only this platform (repeatable); others are copied as they are
  --src-creds USER:PASS      credentials for SRC (default: from --authfile)
  --dest-creds USER:PASS     credentials for DST (default: from --authfile)
  --authfile FILE            docker config.json (default $DOCKER_CONFIG/config.json, ~/.docker/config.json)
  --src-tls-verify=false     talk plain http to SRC's registry
  --dest-tls-verify=false    talk plain http to DST's registry
  --threads N                compression threads (default: one per core; output does not depend on it)
  --chunk-size BYTES         eStargz chunk size (default 4194304)
  --compression-level N      gzip level 1-12 (default 6)
  --work-dir DIR             temporary files (default $TMPDIR or /tmp)
  --max-layer-bytes N        refuse layers whose tar content expands past N bytes (default 64 GiB)
  --prioritize FILE          eStargz: paths (one per line) to place first, before a .prefetch.landmark
  --json                     print a one-line JSON summary instead of text
)";

constexpr const char* kConvertLayerUsage = R"(Usage: accel-proxy convert-layer --format FORMAT IN OUT [options]

Converts one layer file (tar, tar+gzip or tar+zstd) into a blob file of FORMAT and prints its
descriptor facts as JSON (digest, size, diff_id, uncompressed_size, media_type, annotations).
Options: --threads N, --chunk-size BYTES, --compression-level N, --max-layer-bytes N,
         --prioritize FILE (eStargz: paths to place first, one per line)
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
  for (size_t i = 0; i < args.size(); ++i) {
    std::string a(args[i]), value;
    bool has_value = false;
    if (a.starts_with("--") && a.find('=') != std::string::npos) {
      value = a.substr(a.find('=') + 1);
      a = a.substr(0, a.find('='));
      has_value = true;
    }
    auto take = [&]() -> std::string {
      if (has_value) return value;
      if (i + 1 >= args.size()) throw ConvertError(a + " needs a value");
      return std::string(args[++i]);
    };
    if (a == "--format") {
      std::string name = take();
      common.format = convert::find_format(name);
      if (!common.format) throw ConvertError("unknown format '" + name + "' (known: estargz)");
    } else if (a == "--threads") {
      common.layer.threads = static_cast<unsigned>(std::max<uint64_t>(1, parse_number(a, take())));
    } else if (a == "--chunk-size") {
      common.layer.chunk_size = parse_number(a, take());
      if (common.layer.chunk_size == 0) throw ConvertError("--chunk-size must be positive");
    } else if (a == "--compression-level") {
      common.layer.compression_level = static_cast<int>(parse_number(a, take()));
      if (common.layer.compression_level < 1 || common.layer.compression_level > 12)
        throw ConvertError("--compression-level must be 1 to 12");
    } else if (a == "--prioritize") {
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
  if (!common.format) throw ConvertError("--format is required (estargz)");
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
                                  "--dest-tls-verify", "--work-dir"});
    if (positional.size() != 2) throw ConvertError("expected SRC and DST (see accel-proxy convert --help)");
    Location src = parse_location(positional[0]), dst = parse_location(positional[1]);
    if (src.tag_or_digest.empty()) src.tag_or_digest = "latest";
    std::string dst_tag = dst.tag_or_digest;
    if (dst_tag.empty() || (!dst.oci && !explicit_docker_tag(positional[1]))) dst_tag = src.tag_or_digest;
    if (dst_tag.find(':') != std::string::npos) dst_tag.clear();  // a digest source: store by digest only

    convert::ImageConvertOptions options;
    options.layer = common.layer;
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
