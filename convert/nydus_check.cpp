// The Nydus half of `accel-proxy check`: what nydusd checks when it loads a bootstrap and first
// touches each blob, plus what it checks only with digest validation on (every chunk's digest).
#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <map>
#include <optional>
#include <sys/stat.h>
#include <unistd.h>

#include "convert/image_check.hpp"
#include "convert/nydus.hpp"
#include "convert/nydus_blob.hpp"
#include "convert/sha256.hpp"
#include "convert/streams.hpp"
#include "convert/tar.hpp"

namespace accel::convert {

namespace {

constexpr uint64_t kMaxBootstrapBytes = uint64_t{1} << 30;

std::string short_digest(const std::string& digest) { return digest.substr(0, 19); }

std::string hex(const rafs::Digest& d) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  for (uint8_t b : d) {
    out += digits[b >> 4];
    out += digits[b & 15];
  }
  return out;
}

// The merged bootstrap from the bootstrap layer (a tar.gz with image/image.boot, or image.boot
// at the root as older converters wrote it), checked against the layer's digest; the
// blob-meta cache files it carries (image/<blob id>.blob.meta) go to `metas`.
std::string read_bootstrap_layer(ImageSource& source, const Descriptor& layer, std::map<std::string, std::string>& metas) {
  auto raw = source.open_blob(layer);
  HashingSource compressed(*raw);
  auto decompressed = open_decompressed(compressed);
  TarReader tar(*decompressed);
  TarEntry entry;
  std::string bootstrap;
  bool found = false;
  while (tar.next(entry)) {
    std::string name = entry.name;
    while (name.starts_with("./")) name.erase(0, 2);
    if (entry.type == EntryType::regular && name.starts_with("image/") && name.ends_with(".blob.meta")) {
      if (entry.size > (uint64_t{300} << 20)) throw ConvertError(name + " is larger than a blob meta can be");
      std::string meta(entry.size, '\0');
      size_t got = 0;
      while (got < entry.size) {
        size_t n = tar.read(meta.data() + got, entry.size - got);
        if (n == 0) throw ConvertError(name + " is truncated");
        got += n;
      }
      metas[name.substr(6, name.size() - 6 - 10)] = std::move(meta);
      continue;
    }
    if (entry.type != EntryType::regular || (name != kNydusBootstrapPath && name != "image.boot")) continue;
    if (entry.size > kMaxBootstrapBytes) throw ConvertError("image.boot is larger than 1 GiB");
    bootstrap.resize(entry.size);
    size_t got = 0;
    while (got < entry.size) {
      size_t n = tar.read(bootstrap.data() + got, entry.size - got);
      if (n == 0) throw ConvertError("image.boot is truncated");
      got += n;
    }
    found = true;
  }
  drain(*decompressed);
  drain(compressed);
  if (compressed.digest() != layer.digest)
    throw ConvertError("bootstrap layer bytes do not match its digest " + layer.digest);
  if (!found) throw ConvertError("bootstrap layer holds no image/image.boot");
  return bootstrap;
}

// A file the blob's device image is written to, chunk by chunk.
class DeviceFile {
 public:
  DeviceFile(const std::string& path, uint64_t size) : path_(path) {
    fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd_ < 0) throw ConvertError("cannot create " + path + ": " + std::strerror(errno));
    if (::ftruncate(fd_, static_cast<off_t>(size)) != 0) throw ConvertError("cannot size " + path);
  }
  ~DeviceFile() { ::close(fd_); }
  void write_at(uint64_t offset, std::string_view data) {
    size_t done = 0;
    while (done < data.size()) {
      ssize_t n = ::pwrite(fd_, data.data() + done, data.size() - done, static_cast<off_t>(offset + done));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) throw ConvertError("cannot write " + path_ + ": " + std::strerror(errno));
      done += static_cast<size_t>(n);
    }
  }

 private:
  std::string path_;
  int fd_ = -1;
};

// Streams the blob once: its digest against the blob id, and every chunk decompressed and
// hashed against the digest the bootstrap's chunk table gives it.
void verify_chunks(ImageSource& source, const Descriptor& layer, const rafs::BlobInfo& blob,
                   const std::vector<nydus::ChunkInfo>& chunks, const std::map<uint32_t, rafs::Digest>& digests,
                   const std::string& device_path, CheckReport& report) {
  std::optional<DeviceFile> device;
  if (!device_path.empty()) device.emplace(device_path, blob.uncompressed_size);
  // Chunks in the order they lie in the blob (equal offsets: a chunk stored once).
  std::vector<uint32_t> order(chunks.size());
  for (uint32_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(),
                   [&](uint32_t a, uint32_t b) { return chunks[a].compressed_offset < chunks[b].compressed_offset; });

  auto raw = source.open_blob(layer);
  HashingSource hashed(*raw);
  uint64_t position = 0;
  std::string stored, pending;  // `pending`: bytes read past the current chunk (overlaps)
  auto read_to = [&](uint64_t offset, uint64_t length) -> std::string {
    // Bytes [offset, offset + length), reading forward only.
    if (offset < position) throw ConvertError("chunks overlap at offset " + std::to_string(offset));
    std::vector<char> skip(64 * 1024);
    while (position < offset) {
      size_t n = hashed.read(skip.data(), std::min<uint64_t>(skip.size(), offset - position));
      if (n == 0) throw ConvertError("blob ends at byte " + std::to_string(position) + ", before its chunk data");
      position += n;
    }
    std::string out(length, '\0');
    size_t got = 0;
    while (got < length) {
      size_t n = hashed.read(out.data() + got, length - got);
      if (n == 0) throw ConvertError("blob ends at byte " + std::to_string(position + got) + ", inside a chunk");
      got += n;
    }
    position += length;
    return out;
  };

  size_t verified = 0, bad = 0;
  uint64_t last_offset = UINT64_MAX;
  std::string last_content;
  for (uint32_t index : order) {
    const auto& c = chunks[index];
    std::string content;
    if (c.compressed_offset == last_offset) {
      content = last_content;  // the same stored bytes as the previous chunk
    } else {
      std::string bytes = read_to(c.compressed_offset, c.compressed_size);
      try {
        content = c.compressed() ? nydus::decompress_chunk(blob.compressor, bytes, c.uncompressed_size)
                                 : std::move(bytes);
      } catch (const ConvertError& e) {
        report.faults.push_back("blob " + short_digest(layer.digest) + ": chunk " + std::to_string(index) + " at offset " +
                                std::to_string(c.compressed_offset) + ": " + e.what());
        ++bad;
        last_offset = UINT64_MAX;
        continue;
      }
      last_offset = c.compressed_offset;
      last_content = content;
    }
    if (auto d = digests.find(index); d != digests.end()) {
      std::string got = Sha256::of(content).substr(7);
      if (got != hex(d->second)) {
        report.faults.push_back("blob " + short_digest(layer.digest) + ": chunk " + std::to_string(index) + " at offset " +
                                std::to_string(c.compressed_offset) + " decompresses to sha256:" + got +
                                ", the chunk table says sha256:" + hex(d->second));
        ++bad;
        continue;
      }
    }
    if (device) device->write_at(c.uncompressed_offset, content);
    ++verified;
  }
  drain(hashed);
  if (std::string digest = hashed.digest(); digest != layer.digest) {
    report.faults.push_back("blob " + short_digest(layer.digest) + ": its bytes hash to " + digest +
                            ", not to its digest (the blob id)");
    return;
  }
  if (bad == 0)
    report.passed.push_back("blob " + short_digest(layer.digest) + ": blob meta header, " + std::to_string(chunks.size()) +
                            " chunk infos and " + std::to_string(verified) + " chunk digests verified");
}

}  // namespace

void check_nydus_manifest(ImageSource& source, const ManifestBytes& manifest, const CheckOptions& options,
                          CheckReport& report) {
  const std::string where = "manifest " + short_digest(manifest.digest) + ": ";
  std::vector<Descriptor> layers;
  std::map<std::string, Descriptor> blob_layers;  // by blob id (hex digest)
  try {
    auto doc = parse_manifest(manifest.bytes);
    if (!doc.contains("layers") || !doc["layers"].is_array() || doc["layers"].empty())
      throw ConvertError("no layers");
    const auto& list = doc["layers"];
    for (size_t i = 0; i < list.size(); ++i) {
      layers.push_back(descriptor_of(list[i]));
      if (i + 1 < list.size()) {
        if (layers.back().media_type != kNydusBlobMediaType)
          report.faults.push_back(where + "layer " + std::to_string(i) + " is " + layers.back().media_type +
                                  ", not a Nydus blob");
        blob_layers[layers.back().digest.substr(7)] = layers.back();
      }
    }
    auto annotations = list.back().value("annotations", nlohmann::json::object());
    if (!annotations.is_object() || annotations.value(std::string(kNydusBootstrapAnnotation), "") != "true")
      throw ConvertError("the last layer has no " + std::string(kNydusBootstrapAnnotation) + ": \"true\" annotation");
    if (annotations.value(std::string(kNydusFsVersionAnnotation), "") != "6")
      report.faults.push_back(where + "the bootstrap layer's " + std::string(kNydusFsVersionAnnotation) + " is not \"6\"");
  } catch (const ConvertError& e) {
    report.faults.push_back(where + e.what());
    return;
  }

  std::string bootstrap_bytes;
  rafs::Bootstrap bootstrap;
  std::map<std::string, std::string> metas;  // blob id -> blob-meta cache file in the bootstrap layer
  try {
    bootstrap_bytes = read_bootstrap_layer(source, layers.back(), metas);
    bootstrap = rafs::read_bootstrap(bootstrap_bytes);
  } catch (const ConvertError& e) {
    report.faults.push_back(where + "bootstrap: " + e.what());
    return;
  }
  size_t files = 0, chunk_refs = 0;
  for (const auto& inode : bootstrap.tree.inodes) {
    if ((inode.mode & S_IFMT) == S_IFREG) ++files;
    chunk_refs += inode.chunks.size();
  }
  report.passed.push_back(where + "bootstrap: superblock, flags, blob table, " + std::to_string(bootstrap.tree.inodes.size()) +
                          " inodes and " + std::to_string(chunk_refs) + " chunk addresses of " + std::to_string(files) +
                          " files verified");

  if (!options.write_devices_dir.empty()) {
    ::mkdir(options.write_devices_dir.c_str(), 0755);
    FileSink out(options.write_devices_dir + "/image.boot", FileSink::Durability::scratch);
    out.write(bootstrap_bytes.data(), bootstrap_bytes.size());
    out.commit();
  }

  // Chunk digests and table entries per blob and ci index, from every inode's chunks.
  std::vector<std::map<uint32_t, rafs::ChunkRef>> refs(bootstrap.blobs.size());
  for (const auto& inode : bootstrap.tree.inodes)
    for (const auto& c : inode.chunks) refs.at(c.blob_index).emplace(c.ci_index, c);

  for (const auto& [id, meta] : metas) {
    bool named = false;
    for (const auto& blob : bootstrap.blobs) named = named || blob.blob_id == id;
    if (!named) report.faults.push_back(where + "bootstrap layer: image/" + id + ".blob.meta names no blob of the bootstrap");
  }

  for (size_t b = 0; b < bootstrap.blobs.size(); ++b) {
    const rafs::BlobInfo& blob = bootstrap.blobs[b];
    const std::string bwhere = "blob " + std::to_string(b) + " (" + blob.blob_id.substr(0, 12) + "): ";
    auto layer = blob_layers.find(blob.blob_id);
    if (layer == blob_layers.end()) {
      report.faults.push_back(bwhere + "the blob id is not the digest of any blob layer of the manifest");
      continue;
    }
    const Descriptor& desc = layer->second;
    try {
      if (blob.compressed_size > desc.size)
        throw ConvertError("the blob table's compressed size " + std::to_string(blob.compressed_size) +
                           " is past the blob's end (" + std::to_string(desc.size) + " bytes)");
      // nydusd takes at most 256 MiB of chunk infos; a larger claim is refused before any
      // memory is set aside for it.
      if (blob.ci_compressed_size > (uint64_t{256} << 20))
        throw ConvertError("the blob table's chunk-info size " + std::to_string(blob.ci_compressed_size) +
                           " is over the 256 MiB nydusd accepts");
      uint64_t region = blob.ci_compressed_size + nydus::kBlobMetaHeaderSize;
      if (blob.ci_offset > desc.size || region > desc.size - blob.ci_offset)
        throw ConvertError("blob meta [" + std::to_string(blob.ci_offset) + ", +" + std::to_string(region) +
                           ") is past the blob's end (" + std::to_string(desc.size) + " bytes): truncated blob meta");
      OpenBlobAt open = [&](uint64_t offset) { return source.open_blob_at(desc, offset); };
      std::string meta;
      try {
        meta = read_blob_range(open, blob.ci_offset, region);
      } catch (const ConvertError& e) {
        throw ConvertError(std::string("truncated blob meta: ") + e.what());
      }
      auto chunks = nydus::parse_blob_meta(meta, blob);
      // A blob-meta cache file the bootstrap layer carries must be exactly what nydusd would
      // make from the blob: nydus-snapshotter puts it in nydusd's cache as it is.
      if (auto cached = metas.find(blob.blob_id); cached != metas.end()) {
        if (cached->second != nydus::blob_meta_cache_file(meta, blob))
          throw ConvertError("image/" + blob.blob_id + ".blob.meta in the bootstrap layer differs from the blob's meta");
      }
      // Every chunk address must agree with the blob's own chunk info.
      std::map<uint32_t, rafs::Digest> digests;
      for (const auto& [ci, ref] : refs[b]) {
        if (ci >= chunks.size())
          throw ConvertError("a file's chunk address names chunk " + std::to_string(ci) + ", past the blob's " +
                             std::to_string(chunks.size()) + " chunks");
        const auto& info = chunks[ci];
        if (info.uncompressed_offset != ref.uncompressed_offset || info.uncompressed_size != ref.uncompressed_size ||
            info.compressed_offset != ref.compressed_offset || info.compressed_size != ref.compressed_size)
          throw ConvertError("chunk " + std::to_string(ci) + ": the chunk table and the blob's chunk info disagree");
        digests[ci] = ref.digest;
      }
      std::string device;
      if (!options.write_devices_dir.empty()) device = options.write_devices_dir + "/" + blob.blob_id;
      verify_chunks(source, desc, blob, chunks, digests, device, report);
    } catch (const ConvertError& e) {
      report.faults.push_back(bwhere + e.what());
    }
  }
}

}  // namespace accel::convert
