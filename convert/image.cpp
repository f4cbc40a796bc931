#include "convert/image.hpp"

#include <atomic>
#include <cstdio>
#include <unistd.h>

#include "convert/sha256.hpp"
#include "convert/streams.hpp"

namespace accel::convert {

namespace {

constexpr size_t kMaxManifestBytes = 4 << 20;
constexpr uint64_t kProgressStep = 8 << 20;


std::string oci_layer_media_type(const std::string& t) {
  if (t == "application/vnd.docker.image.rootfs.diff.tar.gzip") return "application/vnd.oci.image.layer.v1.tar+gzip";
  if (t == "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip")
    return "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip";
  return t;
}

bool is_foreign(const std::string& t) {
  return t.find("foreign") != std::string::npos || t.find("nondistributable") != std::string::npos;
}

// Reports progress while a layer's compressed bytes are read.
class ProgressSource : public ByteSource {
 public:
  ProgressSource(ByteSource& inner, std::function<void(uint64_t)> report) : inner_(inner), report_(std::move(report)) {}
  size_t read(void* out, size_t size) override {
    size_t n = inner_.read(out, size);
    bytes_ += n;
    if (report_ && bytes_ >= next_report_) {
      report_(bytes_);
      next_report_ = bytes_ + kProgressStep;
    }
    return n;
  }

 private:
  ByteSource& inner_;
  std::function<void(uint64_t)> report_;
  uint64_t bytes_ = 0, next_report_ = kProgressStep;
};

// A blob file in the work directory, removed when it goes out of scope.
class TempBlob {
 public:
  explicit TempBlob(const std::string& dir) {
    static std::atomic<uint64_t> counter{0};
    path_ = dir + "/accel-blob-" + std::to_string(::getpid()) + "-" + std::to_string(counter++);
  }
  ~TempBlob() { ::unlink(path_.c_str()); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

ManifestBytes manifest_bytes(const nlohmann::json& doc, const char* media_type) {
  ManifestBytes m;
  m.media_type = media_type;
  m.bytes = doc.dump();
  m.digest = Sha256::of(m.bytes);
  return m;
}

// The image-level step reads the blobs it needs back from the target.
class TargetBlobReader : public BlobReader {
 public:
  explicit TargetBlobReader(ImageTarget& target) : target_(target) {}
  std::unique_ptr<ByteSource> open(const ConvertedLayer& blob, uint64_t offset) override {
    return target_.read_blob({blob.media_type, blob.digest, blob.size}, offset);
  }

 private:
  ImageTarget& target_;
};

// Reads and drops `count` bytes.
void skip(ByteSource& source, uint64_t count) {
  std::vector<char> buf(std::min<uint64_t>(count, 1 << 20));
  while (count > 0) {
    size_t n = source.read(buf.data(), std::min<uint64_t>(count, buf.size()));
    if (n == 0) return;
    count -= n;
  }
}

}  // namespace

std::unique_ptr<ByteSource> ImageSource::open_blob_at(const Descriptor& blob, uint64_t offset) {
  auto source = open_blob(blob);
  skip(*source, offset);
  return source;
}

std::unique_ptr<ByteSource> ImageTarget::read_blob(const Descriptor& blob, uint64_t offset) {
  throw ConvertError("this destination cannot read back blob " + blob.digest);
}

Descriptor descriptor_of(const nlohmann::json& d) {
  Descriptor out;
  if (!d.is_object() || !d.contains("digest") || !d["digest"].is_string() || !d.contains("size") ||
      !d["size"].is_number_unsigned())
    throw ConvertError("malformed descriptor in manifest: " + d.dump().substr(0, 200));
  out.digest = d["digest"].get<std::string>();
  out.size = d["size"].get<uint64_t>();
  if (d.contains("mediaType") && d["mediaType"].is_string()) out.media_type = d["mediaType"].get<std::string>();
  if (out.digest.rfind("sha256:", 0) != 0 || out.digest.size() != 71)
    throw ConvertError("unsupported digest " + out.digest.substr(0, 80));
  return out;
}

bool is_index(const std::string& media_type) {
  return media_type == media_type::oci_index || media_type == media_type::docker_list;
}

nlohmann::json parse_manifest(const std::string& bytes) {
  if (bytes.size() > kMaxManifestBytes) throw ConvertError("manifest larger than 4 MiB");
  auto doc = nlohmann::json::parse(bytes, nullptr, false);
  if (doc.is_discarded() || !doc.is_object()) throw ConvertError("manifest is not a JSON object");
  return doc;
}

struct ImageConverter::ManifestResult {
  nlohmann::json descriptor;  // for the index: mediaType, digest, size
  bool already_converted = false;
  ManifestBytes manifest;     // what was stored
};

ImageConverter::ImageConverter(const LayerFormat& format, ImageConvertOptions options)
    : format_(format), options_(std::move(options)) {}

bool ImageConverter::platform_selected(const nlohmann::json& p) const {
  if (options_.platforms.empty()) return true;
  if (!p.is_object()) return false;
  std::string os = p.value("os", ""), arch = p.value("architecture", ""), variant = p.value("variant", "");
  for (const auto& want : options_.platforms) {
    std::string w_os, w_arch, w_variant;
    size_t a = want.find('/');
    w_os = want.substr(0, a);
    if (a != std::string::npos) {
      size_t b = want.find('/', a + 1);
      w_arch = want.substr(a + 1, b == std::string::npos ? std::string::npos : b - a - 1);
      if (b != std::string::npos) w_variant = want.substr(b + 1);
    }
    if (w_os == os && (w_arch.empty() || w_arch == arch) && (w_variant.empty() || w_variant == variant)) return true;
  }
  return false;
}

void ImageConverter::copy_blob(ImageSource& source, const Descriptor& blob, ImageTarget& target) {
  if (target.has_blob(blob.digest)) {
    target.reuse_blob(blob);
    return;
  }
  TempBlob temp(options_.work_dir);
  auto raw = source.open_blob(blob);
  HashingSource hashed(*raw);
  {
    FileSink sink(temp.path());
    std::vector<char> buf(1 << 20);
    while (size_t n = hashed.read(buf.data(), buf.size())) sink.write(buf.data(), n);
    if (hashed.digest() != blob.digest || hashed.bytes() != blob.size)
      throw ConvertError("blob " + blob.digest + " does not match its digest or size");
    sink.commit();
  }
  target.put_blob(blob, temp.path());
}

void ImageConverter::copy_manifest_tree(ImageSource& source, const ManifestBytes& manifest, ImageTarget& target) {
  auto doc = parse_manifest(manifest.bytes);
  if (is_index(manifest.media_type)) {
    for (const auto& child : doc.value("manifests", nlohmann::json::array())) {
      auto d = descriptor_of(child);
      auto bytes = source.get_manifest(d.digest);
      copy_manifest_tree(source, bytes, target);
    }
  } else {
    if (doc.contains("config")) copy_blob(source, descriptor_of(doc["config"]), target);
    for (const auto& layer : doc.value("layers", nlohmann::json::array()))
      if (!is_foreign(layer.value("mediaType", ""))) copy_blob(source, descriptor_of(layer), target);
  }
  target.put_manifest(manifest, "");
}

Descriptor ImageConverter::convert_layer(ImageSource& source, const nlohmann::json& layer,
                                         const std::string& source_diff_id, ImageTarget& target,
                                         std::string& new_diff_id, nlohmann::json& annotations,
                                         ImageConvertResult& totals, size_t index, size_t count) {
  const Descriptor in = descriptor_of(layer);
  auto report = [&](const char* event, uint64_t bytes) {
    if (options_.progress) options_.progress({event, in.digest, bytes, in.size, index, count});
  };
  std::unique_lock<std::mutex> memo_lock;
  if (options_.layer_memo) {
    memo_lock = options_.layer_memo->lock(in.digest);
    if (auto known = options_.layer_memo->find(in.digest); known && target.has_blob(known->digest)) {
      target.reuse_blob({known->media_type, known->digest, known->size});
      new_diff_id = known->diff_id;
      for (const auto& [k, v] : known->annotations) annotations[k] = v;
      ++totals.layers_reused;
      report("layer-reused", in.size);
      return {known->media_type, known->digest, known->size};
    }
  }
  report("layer-start", 0);
  TempBlob temp(options_.work_dir);
  auto raw = source.open_blob(in);
  HashingSource compressed(*raw);
  ProgressSource progress(compressed, [&](uint64_t n) { report("layer-progress", n); });
  auto decompressed = open_decompressed(progress);
  HashingSource tar(*decompressed);
  ConvertedLayer out;
  {
    FileSink sink(temp.path());
    out = format_.convert_layer(tar, sink, options_.layer);
    // Read what the format did not need (end-of-archive padding, gzip trailers), then check
    // the source against its digests before trusting anything made from it.
    drain(tar);
    drain(progress);
    if (compressed.digest() != in.digest || compressed.bytes() != in.size)
      throw ConvertError("layer " + in.digest + " does not match its digest or size (got " + compressed.digest() + ", " +
                         std::to_string(compressed.bytes()) + " bytes)");
    if (!source_diff_id.empty() && tar.digest() != source_diff_id)
      throw ConvertError("layer " + in.digest + " does not match its diff_id " + source_diff_id);
    sink.commit();
  }
  Descriptor result{out.media_type, out.digest, out.size};
  if (!target.has_blob(out.digest)) target.put_blob(result, temp.path());
  else target.reuse_blob(result);
  if (options_.layer_memo) options_.layer_memo->remember(in.digest, out);
  new_diff_id = out.diff_id;
  for (const auto& [k, v] : out.annotations) annotations[k] = v;
  totals.bytes_in += in.size;
  totals.bytes_out += out.size;
  ++totals.layers_converted;
  report("layer-done", in.size);
  return result;
}

ImageConverter::ManifestResult ImageConverter::convert_manifest(ImageSource& source, const Descriptor& desc,
                                                                const ManifestBytes* fetched, ImageTarget& target,
                                                                ImageConvertResult& totals) {
  ManifestBytes original = fetched ? *fetched : source.get_manifest(desc.digest);
  auto doc = parse_manifest(original.bytes);
  if (!doc.contains("config") || !doc.contains("layers") || !doc["layers"].is_array())
    throw ConvertError("manifest " + original.digest + " has no config or layers");
  const auto& layers = doc["layers"];

  // An artifact (SBOM, signature...) is not an image: it is kept as it is.
  const std::string config_type = doc["config"].value("mediaType", "");
  if (config_type != media_type::oci_config && config_type != media_type::docker_config) {
    copy_manifest_tree(source, original, target);
    totals.layers_kept += layers.size();
    return {{{"mediaType", original.media_type}, {"digest", original.digest}, {"size", original.bytes.size()}}, true, original};
  }

  bool all_converted = true;
  for (const auto& l : layers)
    if (!format_.is_converted(l) && !is_foreign(l.value("mediaType", ""))) all_converted = false;
  if (all_converted) {
    copy_manifest_tree(source, original, target);
    totals.layers_kept += layers.size();
    return {{{"mediaType", original.media_type}, {"digest", original.digest}, {"size", original.bytes.size()}}, true, original};
  }

  const Descriptor config_desc = descriptor_of(doc["config"]);
  auto config_source = source.open_blob(config_desc);
  HashingSource config_hashed(*config_source);
  std::string config_bytes;
  {
    char buf[65536];
    while (size_t n = config_hashed.read(buf, sizeof buf)) {
      config_bytes.append(buf, n);
      if (config_bytes.size() > kMaxManifestBytes) throw ConvertError("image config larger than 4 MiB");
    }
  }
  if (config_hashed.digest() != config_desc.digest) throw ConvertError("config " + config_desc.digest + " does not match its digest");
  auto config = parse_manifest(config_bytes);
  auto diff_ids = config.contains("rootfs") ? config["rootfs"].value("diff_ids", nlohmann::json::array()) : nlohmann::json::array();
  if (!diff_ids.is_array() || diff_ids.size() != layers.size())
    throw ConvertError("config rootfs.diff_ids does not list one diff_id per layer");

  // Limits first, so an image that cannot be converted costs no work.
  if (layers.size() > format_.max_layers())
    throw ConvertError("manifest " + original.digest + " has " + std::to_string(layers.size()) + " layers; " +
                       std::string(format_.name()) + " images can have at most " + std::to_string(format_.max_layers()));
  uint64_t to_convert = 0;
  for (const auto& l : layers)
    if (!format_.is_converted(l) && !is_foreign(l.value("mediaType", ""))) to_convert += descriptor_of(l).size;
  if (to_convert > options_.max_image_bytes)
    throw ConvertError("manifest " + original.digest + " has " + std::to_string(to_convert) +
                       " bytes of layers to convert, over the limit of " + std::to_string(options_.max_image_bytes));

  nlohmann::json new_layers = nlohmann::json::array();
  std::vector<ConvertedLayer> results;  // every layer as it now is, for the image-level step
  for (size_t i = 0; i < layers.size(); ++i) {
    const auto& layer = layers[i];
    const std::string media = layer.value("mediaType", "");
    nlohmann::json annotations = layer.value("annotations", nlohmann::json::object());
    nlohmann::json out_layer;
    if (format_.is_converted(layer) || is_foreign(media)) {
      if (!is_foreign(media)) copy_blob(source, descriptor_of(layer), target);
      out_layer = layer;
      out_layer["mediaType"] = oci_layer_media_type(media);
      ++totals.layers_kept;
      Descriptor kept = descriptor_of(layer);
      ConvertedLayer r{kept.digest, kept.size, diff_ids[i].get<std::string>(), 0, out_layer["mediaType"], {}};
      for (const auto& [k, v] : annotations.items())
        if (v.is_string()) r.annotations[k] = v.get<std::string>();
      results.push_back(std::move(r));
    } else {
      std::string new_diff_id;
      Descriptor d = convert_layer(source, layer, diff_ids[i].get<std::string>(), target, new_diff_id, annotations,
                                   totals, i, layers.size());
      diff_ids[i] = new_diff_id;
      out_layer = {{"mediaType", d.media_type}, {"digest", d.digest}, {"size", d.size}};
      if (!annotations.empty()) out_layer["annotations"] = annotations;
      ConvertedLayer r{d.digest, d.size, new_diff_id, 0, d.media_type, {}};
      for (const auto& [k, v] : annotations.items())
        if (v.is_string()) r.annotations[k] = v.get<std::string>();
      results.push_back(std::move(r));
    }
    new_layers.push_back(std::move(out_layer));
  }

  // The format's image-level step may add a layer of its own (Nydus: the merged bootstrap).
  TargetBlobReader blob_reader(target);
  if (auto added = format_.finish_image(results, blob_reader, options_.layer)) {
    const ConvertedLayer& a = added->layer;
    Descriptor d{a.media_type, a.digest, a.size};
    if (!target.has_blob(d.digest)) target.put_blob(d, added->path);
    else target.reuse_blob(d);
    ::unlink(added->path.c_str());  // when the target copied it
    nlohmann::json out_layer = {{"mediaType", d.media_type}, {"digest", d.digest}, {"size", d.size}};
    if (!a.annotations.empty()) out_layer["annotations"] = a.annotations;
    new_layers.push_back(std::move(out_layer));
    diff_ids.push_back(a.diff_id);
    if (!added->history.is_null()) {
      if (!config.contains("history") || !config["history"].is_array()) config["history"] = nlohmann::json::array();
      config["history"].push_back(added->history);
    }
    totals.bytes_out += a.size;
  }
  config["rootfs"]["diff_ids"] = diff_ids;

  // The new config and manifest: OCI media types, so layer annotations survive (containerd
  // drops them from Docker schema2 manifests).
  std::string new_config = config.dump();
  Descriptor new_config_desc{media_type::oci_config, Sha256::of(new_config), new_config.size()};
  if (target.has_blob(new_config_desc.digest)) {
    target.reuse_blob(new_config_desc);
  } else {
    TempBlob temp(options_.work_dir);
    FileSink sink(temp.path());
    sink.write(new_config.data(), new_config.size());
    sink.commit();
    target.put_blob(new_config_desc, temp.path());
  }
  nlohmann::json manifest = {
      {"schemaVersion", 2},
      {"mediaType", media_type::oci_manifest},
      {"config", {{"mediaType", new_config_desc.media_type}, {"digest", new_config_desc.digest}, {"size", new_config_desc.size}}},
      {"layers", new_layers},
  };
  if (doc.contains("annotations") && doc["annotations"].is_object()) manifest["annotations"] = doc["annotations"];
  manifest["annotations"][kVariantFormatAnnotation] = std::string(format_.name());
  manifest["annotations"][kVariantSourceAnnotation] = original.digest;
  if (options_.subject)
    manifest["subject"] = {{"mediaType", original.media_type}, {"digest", original.digest}, {"size", original.bytes.size()}};
  auto bytes = manifest_bytes(manifest, media_type::oci_manifest);
  target.put_manifest(bytes, "");
  totals.manifests.push_back({original.digest, {bytes.media_type, bytes.digest, bytes.bytes.size()}});
  if (options_.progress) options_.progress({"manifest-done", bytes.digest, 0, 0, 0, 0});
  return {{{"mediaType", bytes.media_type}, {"digest", bytes.digest}, {"size", bytes.bytes.size()}}, false, bytes};
}

ImageConvertResult ImageConverter::convert(ImageSource& source, const std::string& reference, ImageTarget& target,
                                           const std::string& target_tag) {
  ImageConvertResult result;
  ManifestBytes top = source.get_manifest(reference);
  if (Sha256::of(top.bytes) != top.digest) throw ConvertError("manifest " + reference + " does not match its digest");
  if (!is_index(top.media_type)) {
    auto r = convert_manifest(source, {top.media_type, top.digest, top.bytes.size()}, &top, target, result);
    result.already_converted = r.already_converted;
    result.manifest = r.manifest;
  }
  if (is_index(top.media_type)) {
    auto index = parse_manifest(top.bytes);
    nlohmann::json children = nlohmann::json::array();
    bool all_converted = true;
    for (const auto& child : index.value("manifests", nlohmann::json::array())) {
      Descriptor d = descriptor_of(child);
      nlohmann::json out = child;
      const bool attestation = child.value("annotations", nlohmann::json::object()).value("vnd.docker.reference.type", "") ==
                               "attestation-manifest";
      if (is_index(d.media_type) || attestation || !platform_selected(child.value("platform", nlohmann::json()))) {
        copy_manifest_tree(source, source.get_manifest(d.digest), target);
      } else {
        auto r = convert_manifest(source, d, nullptr, target, result);
        all_converted = all_converted && r.already_converted;
        out["mediaType"] = r.descriptor["mediaType"];
        out["digest"] = r.descriptor["digest"];
        out["size"] = r.descriptor["size"];
      }
      children.push_back(std::move(out));
    }
    result.already_converted = all_converted;
    if (all_converted) {
      result.manifest = top;
    } else {
      nlohmann::json new_index = {{"schemaVersion", 2}, {"mediaType", media_type::oci_index}, {"manifests", children}};
      if (index.contains("annotations") && index["annotations"].is_object()) new_index["annotations"] = index["annotations"];
      new_index["annotations"][kVariantFormatAnnotation] = std::string(format_.name());
      new_index["annotations"][kVariantSourceAnnotation] = top.digest;
      if (options_.subject)
        new_index["subject"] = {{"mediaType", top.media_type}, {"digest", top.digest}, {"size", top.bytes.size()}};
      result.manifest = manifest_bytes(new_index, media_type::oci_index);
    }
  }
  target.put_manifest(result.manifest, target_tag);
  return result;
}

}  // namespace accel::convert
