// The file index of a Nydus layer (convert/file_index.hpp). A data blob carries its own layer
// bootstrap (found through the blob's TOC), whose chunk table gives every chunk's compressed
// extent in the blob; the chunk data comes first and everything from the chunk-info array on is
// index. The bootstrap layer is all index: nydusd reads it (and the blob meta in it) first.
#include <algorithm>
#include <set>

#include "convert/nydus.hpp"
#include "convert/nydus_blob.hpp"

namespace accel::convert {

namespace {

// Every regular file's chunks under its first path (names in order, depth first); a chunk shared
// by several files (dedup) counts for the first.
void collect(const rafs::Tree& tree, uint32_t node, const std::string& path, FileIndex& index,
             std::set<uint32_t>& visited, std::set<uint64_t>& offsets, size_t depth) {
  if (depth > 4096 || !visited.insert(node).second) return;
  const rafs::Inode& inode = tree.inodes.at(node);
  if (!inode.chunks.empty()) {
    const uint32_t file = static_cast<uint32_t>(index.paths.size());
    index.paths.push_back(path.empty() ? "/" : path);
    for (const auto& c : inode.chunks)
      if (c.compressed_size > 0 && offsets.insert(c.compressed_offset).second)
        index.spans.push_back({c.compressed_offset, c.compressed_offset + c.compressed_size, file});
  }
  for (const auto& [name, child] : inode.children) collect(tree, child, path + "/" + name, index, visited, offsets, depth + 1);
}

}  // namespace

std::optional<FileIndex> NydusFormat::file_index(const nlohmann::json& layer_descriptor, uint64_t blob_size,
                                                 const ReadBlobAt& read) const {
  const auto annotations = layer_descriptor.value("annotations", nlohmann::json::object());
  FileIndex index;
  index.blob_size = blob_size;
  if (annotations.is_object() && annotations.value(std::string(kNydusBootstrapAnnotation), "") == "true")
    return index;  // the bootstrap layer: index only
  if (layer_descriptor.value("mediaType", "") != kNydusBlobMediaType) return std::nullopt;

  const uint64_t tail_size = nydus::toc_tail_size(blob_size);
  const auto toc = nydus::parse_toc(read(blob_size - tail_size, tail_size), blob_size);
  const auto* boot = nydus::find_toc_entry(toc, "image.boot");
  if (!boot) throw ConvertError("Nydus blob has no image.boot in its TOC");
  const auto bootstrap =
      rafs::read_bootstrap(nydus::extract_toc_entry(*boot, read(boot->compressed_offset, boot->compressed_size)));
  if (bootstrap.blobs.empty()) return index;  // no file data: all of it is index
  index.index_offset = bootstrap.blobs[0].ci_offset;
  std::set<uint32_t> visited;
  std::set<uint64_t> offsets;
  if (!bootstrap.tree.inodes.empty()) collect(bootstrap.tree, 0, "", index, visited, offsets, 0);
  std::sort(index.spans.begin(), index.spans.end(), [](const auto& a, const auto& b) { return a.begin < b.begin; });
  for (size_t i = 1; i < index.spans.size(); ++i)
    if (index.spans[i].begin < index.spans[i - 1].end) throw ConvertError("Nydus blob: chunks overlap");
  if (!index.spans.empty() && index.spans.back().end > index.index_offset)
    throw ConvertError("Nydus blob: chunk data past the chunk-info array");
  return index;
}

}  // namespace accel::convert
