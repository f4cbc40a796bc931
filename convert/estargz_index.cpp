// The file index of an eStargz layer (convert/file_index.hpp): the footer names the TOC, the
// TOC names each payload's gzip member by its offset, and a member runs to the next payload's
// offset (or to the TOC). Only our own cached blobs are read here; `accel-proxy check` is what
// holds a blob to everything stargz-snapshotter demands.
#include <algorithm>
#include <map>

#include "convert/estargz.hpp"
#include "convert/streams.hpp"
#include "convert/tar.hpp"

namespace accel::convert {

namespace {

// stargz-snapshotter widens every blob read to multiples of this (fs/remote/blob.go,
// defaultChunkSize).
constexpr uint64_t kStargzFetchWindow = 50000;
constexpr uint64_t kMaxTocBytes = uint64_t{256} << 20;  // uncompressed JSON; a layer of millions of files

uint64_t parse_toc_offset(std::string_view footer) {
  if (footer.size() != kEstargzFooterSize || footer.substr(32, 6) != "STARGZ")
    throw ConvertError("eStargz footer not found");
  uint64_t v = 0;
  for (char c : footer.substr(16, 16)) {
    int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
    if (d < 0) throw ConvertError("eStargz footer: TOC offset is not hex");
    v = v << 4 | static_cast<uint64_t>(d);
  }
  return v;
}

// "./usr/bin/" -> "/usr/bin"
std::string absolute(std::string_view name) { return "/" + normalized_toc_name(name); }

}  // namespace

std::optional<FileIndex> EstargzFormat::file_index(const nlohmann::json& layer_descriptor, uint64_t blob_size,
                                                   const ReadBlobAt& read) const {
  const auto annotations = layer_descriptor.value("annotations", nlohmann::json::object());
  if (!annotations.is_object() || !annotations.contains(std::string(kEstargzTocDigestAnnotation))) return std::nullopt;
  if (blob_size < kEstargzFooterSize) throw ConvertError("eStargz blob shorter than its footer");
  const uint64_t toc_offset = parse_toc_offset(read(blob_size - kEstargzFooterSize, kEstargzFooterSize));
  if (toc_offset >= blob_size - kEstargzFooterSize) throw ConvertError("eStargz footer: TOC offset past the blob");
  const std::string member = read(toc_offset, blob_size - kEstargzFooterSize - toc_offset);
  MemorySource compressed(member);
  auto tar = open_decompressed(compressed);
  TarReader reader(*tar);
  TarEntry entry;
  if (!reader.next(entry) || entry.name != kEstargzTocName) throw ConvertError("eStargz TOC member has no stargz.index.json");
  if (entry.size > kMaxTocBytes) throw ConvertError("eStargz TOC too large");
  std::string json(entry.size, '\0');
  size_t got = 0;
  while (got < json.size()) {
    size_t n = reader.read(json.data() + got, json.size() - got);
    if (n == 0) throw ConvertError("eStargz TOC truncated");
    got += n;
  }
  const auto toc = nlohmann::json::parse(json);

  FileIndex index;
  index.blob_size = blob_size;
  index.index_offset = toc_offset;
  index.window = kStargzFetchWindow;
  // Each payload's member starts at its offset and ends where the next payload's starts.
  std::map<uint64_t, int64_t> starts;  // offset -> path index, -1 for a landmark
  std::map<std::string, uint32_t> path_index;
  std::string current;  // "chunk" entries belong to the regular file before them
  for (const auto& e : toc.at("entries")) {
    const std::string type = e.value("type", "");
    if (type == "reg") current = absolute(e.value("name", ""));
    else if (type != "chunk") continue;
    if (!e.contains("offset") || (type == "reg" && e.value("size", uint64_t{0}) == 0)) continue;
    const uint64_t offset = e.at("offset").get<uint64_t>();
    if (offset >= toc_offset) throw ConvertError("eStargz TOC: payload offset past the TOC");
    int64_t file = -1;
    if (current != "/.prefetch.landmark" && current != "/.no.prefetch.landmark") {
      auto [it, fresh] = path_index.try_emplace(current, static_cast<uint32_t>(index.paths.size()));
      if (fresh) index.paths.push_back(current);
      file = it->second;
    }
    starts.emplace(offset, file);
  }
  for (auto it = starts.begin(); it != starts.end(); ++it) {
    auto next = std::next(it);
    const uint64_t end = next == starts.end() ? toc_offset : next->first;
    if (it->second >= 0) index.spans.push_back({it->first, end, static_cast<uint32_t>(it->second)});
  }
  return index;
}

}  // namespace accel::convert
