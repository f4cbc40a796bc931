#include "convert/nydus.hpp"

#include <algorithm>
#include <atomic>
#include <map>
#include <optional>
#include <sys/stat.h>
#include <unistd.h>
#include <unordered_map>

#include "convert/gzip_members.hpp"
#include "convert/nydus_blob.hpp"
#include "convert/sha256.hpp"
#include "convert/streams.hpp"
#include "convert/tar.hpp"

namespace accel::convert {

namespace {

constexpr std::string_view kWhiteoutPrefix = ".wh.";
// A hardlink whose target is in a lower layer: in the layer's own bootstrap it is an empty file
// carrying the target's path in this xattr, and the merge makes it a name of the lower inode.
// Only our merge reads layer bootstraps, and the merged bootstrap never carries it.
constexpr std::string_view kLowerLinkXattr = "trusted.accel-proxy.lower-hardlink";
constexpr std::string_view kOpaqueWhiteout = ".wh..wh..opq";
constexpr size_t kMaxPathDepth = 4096;

// ---- one layer: tar -> tree + blob ---------------------------------------------------------

// "./usr/bin/" -> "usr/bin"; "" is the root.
std::string clean_path(std::string_view name) {
  std::string out;
  size_t i = 0;
  while (i < name.size()) {
    size_t slash = name.find('/', i);
    if (slash == std::string_view::npos) slash = name.size();
    std::string_view part = name.substr(i, slash - i);
    if (!part.empty() && part != ".") {
      if (part == "..") throw ConvertError("tar entry '" + std::string(name) + "' leaves the layer's root");
      if (part.size() > 255) throw ConvertError("tar entry '" + std::string(name) + "' has a name over 255 bytes");
      if (!out.empty()) out += '/';
      out += part;
    }
    i = slash + 1;
  }
  return out;
}

std::string_view parent_of(std::string_view path) {
  size_t slash = path.rfind('/');
  return slash == std::string_view::npos ? std::string_view() : path.substr(0, slash);
}

std::string_view base_of(std::string_view path) {
  size_t slash = path.rfind('/');
  return slash == std::string_view::npos ? path : path.substr(slash + 1);
}

uint32_t type_bits(EntryType t) {
  switch (t) {
    case EntryType::regular:
    case EntryType::hardlink: return S_IFREG;
    case EntryType::symlink: return S_IFLNK;
    case EntryType::char_device: return S_IFCHR;
    case EntryType::block_device: return S_IFBLK;
    case EntryType::directory: return S_IFDIR;
    case EntryType::fifo: return S_IFIFO;
  }
  return S_IFREG;
}

bool is_dir(const rafs::Inode& inode) { return (inode.mode & S_IFMT) == S_IFDIR; }


// The tree of one layer as its tar describes it. Inodes are never removed while building (a
// replaced entry leaves an unreachable inode); flatten() keeps what the root reaches.
class LayerTree {
 public:
  LayerTree() {
    nodes_.push_back({});
    nodes_[0].inode.mode = S_IFDIR | 0755;
    paths_[""] = 0;
  }

  void add(const TarEntry& entry, const std::string& path, std::optional<uint32_t> blob_file) {
    rafs::Inode inode = metadata(entry, path);
    if (path.empty()) {  // the root's own entry: its metadata only
      if (!is_dir(inode)) throw ConvertError("tar entry for the root is not a directory");
      inode.children.clear();
      nodes_[0].inode = std::move(inode);
      return;
    }
    uint32_t parent = ensure_dir(parent_of(path));
    auto& children = nodes_[parent].children;
    std::string name(base_of(path));
    auto existing = children.find(name);
    if (existing != children.end() && is_dir(nodes_[existing->second].inode) && is_dir(inode)) {
      // A directory listed again (or after its contents): new metadata, same children.
      nodes_[existing->second].inode = std::move(inode);
      return;
    }
    uint32_t index = static_cast<uint32_t>(nodes_.size());
    nodes_.push_back({std::move(inode), {}, blob_file});  // invalidates `children`
    nodes_[parent].children[name] = index;
    paths_[path] = index;
  }

  void add_hardlink(const TarEntry& entry, const std::string& path, const std::string& target) {
    if (path.empty() || target.empty()) throw ConvertError("hardlink '" + entry.name + "' names the root directory");
    auto it = paths_.find(target);
    if (it == paths_.end() || !reachable(target, it->second)) {
      // Not in this layer: a lower layer's file, resolved when the layers are merged.
      TarEntry marker = entry;
      marker.type = EntryType::regular;
      marker.size = 0;
      marker.xattrs.clear();
      add(marker, path, std::nullopt);
      nodes_[paths_[path]].inode.xattrs = {{std::string(kLowerLinkXattr), target}};
      return;
    }
    if (is_dir(nodes_[it->second].inode)) throw ConvertError("hardlink '" + path + "' points at a directory");
    uint32_t parent = ensure_dir(parent_of(path));
    nodes_[parent].children[std::string(base_of(path))] = it->second;
    paths_[path] = it->second;
  }

  // Points every regular file at the blob writer's handle `to[i]` for the file it was added
  // with as `i` (its content was spooled and written later, in another order).
  void remap_files(const std::vector<uint32_t>& to) {
    for (auto& n : nodes_)
      if (n.blob_file) n.blob_file = to.at(*n.blob_file);
  }

  // Chunk references for every regular file, from the blob writer once its data is closed.
  void set_chunks(const nydus::BlobWriter& writer) {
    for (auto& n : nodes_)
      if (n.blob_file) n.inode.chunks = writer.chunks_of(*n.blob_file);
  }

  // The reachable tree, root first, children in name order; hardlinks stay one inode.
  rafs::Tree flatten() const {
    rafs::Tree tree;
    std::unordered_map<uint32_t, uint32_t> index_of;
    flatten_into(0, tree, index_of, 0);
    return tree;
  }

 private:
  struct Node {
    rafs::Inode inode;
    std::map<std::string, uint32_t> children;
    std::optional<uint32_t> blob_file;
  };

  static rafs::Inode metadata(const TarEntry& entry, const std::string& path) {
    rafs::Inode inode;
    inode.mode = (entry.mode & 07777) | type_bits(entry.type);
    if (entry.uid > UINT32_MAX || entry.gid > UINT32_MAX)
      throw ConvertError("tar entry '" + path + "' has a uid or gid past 2^32");
    inode.uid = static_cast<uint32_t>(entry.uid);
    inode.gid = static_cast<uint32_t>(entry.gid);
    inode.mtime = static_cast<uint64_t>(entry.mtime.seconds);  // two's complement before 1970
    inode.mtime_nsec = entry.mtime.nanoseconds;
    if (entry.type == EntryType::regular) inode.size = entry.size;
    if (entry.type == EntryType::symlink) {
      if (entry.link_name.empty()) throw ConvertError("symlink '" + path + "' has an empty target");
      if (entry.link_name.size() > 4095) throw ConvertError("symlink '" + path + "' has a target over 4095 bytes");
      inode.symlink_target = entry.link_name;
    }
    inode.dev_major = entry.dev_major;
    inode.dev_minor = entry.dev_minor;
    for (const auto& [k, v] : entry.xattrs) {  // std::map: sorted
      if (k == kLowerLinkXattr) throw ConvertError("tar entry '" + path + "' carries the reserved xattr " + k);
      inode.xattrs.emplace_back(k, v);
    }
    return inode;
  }

  // The directory at `path`, made (0755, root-owned) with its parents when the tar has not
  // listed it yet, as containerd does when it applies such a layer.
  uint32_t ensure_dir(std::string_view path) {
    if (path.empty()) return 0;
    if (auto it = paths_.find(std::string(path)); it != paths_.end() && is_dir(nodes_[it->second].inode) &&
                                                 reachable(std::string(path), it->second))
      return it->second;
    uint32_t parent = ensure_dir(parent_of(path));
    std::string name(base_of(path));
    const auto& children = nodes_[parent].children;
    if (auto it = children.find(name); it != children.end() && is_dir(nodes_[it->second].inode)) {
      paths_[std::string(path)] = it->second;
      return it->second;
    }
    uint32_t index = static_cast<uint32_t>(nodes_.size());
    Node dir;
    dir.inode.mode = S_IFDIR | 0755;
    nodes_.push_back(std::move(dir));
    nodes_[parent].children[name] = index;
    paths_[std::string(path)] = index;
    return index;
  }

  // Whether `path` still names `index` (a later entry may have replaced it or a parent).
  bool reachable(const std::string& path, uint32_t index) const {
    uint32_t at = 0;
    size_t i = 0;
    while (i < path.size()) {
      size_t slash = path.find('/', i);
      if (slash == std::string::npos) slash = path.size();
      auto it = nodes_[at].children.find(path.substr(i, slash - i));
      if (it == nodes_[at].children.end()) return false;
      at = it->second;
      i = slash + 1;
    }
    return at == index;
  }

  uint32_t flatten_into(uint32_t node, rafs::Tree& tree, std::unordered_map<uint32_t, uint32_t>& index_of,
                        size_t depth) const {
    if (depth > kMaxPathDepth) throw ConvertError("directory tree deeper than 4096 levels");
    if (auto it = index_of.find(node); it != index_of.end()) return it->second;
    uint32_t out = static_cast<uint32_t>(tree.inodes.size());
    index_of[node] = out;
    tree.inodes.push_back(nodes_[node].inode);
    std::vector<std::pair<std::string, uint32_t>> children;
    for (const auto& [name, child] : nodes_[node].children)
      children.emplace_back(name, flatten_into(child, tree, index_of, depth + 1));
    tree.inodes[out].children = std::move(children);
    return out;
  }

  std::vector<Node> nodes_;
  std::unordered_map<std::string, uint32_t> paths_;
};

rafs::Compressor compressor_of(const LayerOptions& options) {
  rafs::Compressor c;
  if (!rafs::parse_compressor(options.nydus.compressor, c) || c == rafs::Compressor::gzip)
    throw ConvertError("unknown Nydus compressor '" + options.nydus.compressor + "' (known: zstd, lz4_block, none)");
  return c;
}

void check_chunk_size(uint32_t size) {
  if (size < rafs::kMinChunkSize || size > rafs::kMaxChunkSize || (size & (size - 1)) != 0)
    throw ConvertError("Nydus chunk size " + std::to_string(size) + " is not a power of two from 4 KiB to 16 MiB");
}

// ---- the image: overlay the layers ---------------------------------------------------------

struct MergedNode {
  rafs::Inode inode;  // children unused: see `children`
  std::map<std::string, std::shared_ptr<MergedNode>> children;
};

class Overlay {
 public:
  Overlay() : root_(std::make_shared<MergedNode>()) { root_->inode.mode = S_IFDIR | 0755; }

  // Applies layer `layer_index` (its chunks name blob `layer_index` until renumbered).
  void apply(const rafs::Tree& tree, uint32_t layer_index) {
    if (tree.inodes.empty() || !is_dir(tree.inodes[0])) throw ConvertError("layer bootstrap has no root directory");
    layer_ = layer_index;
    nodes_.assign(tree.inodes.size(), nullptr);
    // A layer without an entry for "./" has the implied root (0755, root-owned, time 0), which
    // leaves the lower layers' root as it is, as containerd's apply does.
    if (!is_implied_root(tree.inodes[0])) root_->inode = without_children(tree.inodes[0]);
    apply_dir(*root_, tree, 0, "");
  }

  // The merged tree with blob indexes renumbered to the kept blobs; `used` gets, per layer,
  // whether any chunk still names its blob.
  rafs::Tree flatten(size_t layers, std::vector<bool>& used) {
    used.assign(layers, false);
    mark_used(*root_, used, 0);
    std::vector<uint32_t> renumber(layers, 0);
    uint32_t next = 0;
    for (size_t i = 0; i < layers; ++i)
      if (used[i]) renumber[i] = next++;
    rafs::Tree tree;
    std::unordered_map<const MergedNode*, uint32_t> index_of;
    flatten_into(root_, tree, index_of, renumber);
    return tree;
  }

 private:
  static bool is_implied_root(const rafs::Inode& root) {
    return root.mode == (S_IFDIR | 0755) && root.uid == 0 && root.gid == 0 && root.mtime == 0 && root.mtime_nsec == 0 &&
           root.xattrs.empty();
  }

  static rafs::Inode without_children(const rafs::Inode& inode) {
    rafs::Inode copy = inode;
    copy.children.clear();
    return copy;
  }

  void apply_dir(MergedNode& dst, const rafs::Tree& tree, uint32_t dir, const std::string& path) {
    if (path.size() > 4096 * 256) throw ConvertError("directory tree too deep");
    const auto& children = tree.inodes[dir].children;
    // Whiteouts first: they hide what the lower layers have, never what this layer adds.
    for (const auto& [name, index] : children) {
      if (name == kOpaqueWhiteout) dst.children.clear();
    }
    for (const auto& [name, index] : children) {
      if (name != kOpaqueWhiteout && std::string_view(name).starts_with(kWhiteoutPrefix))
        dst.children.erase(name.substr(kWhiteoutPrefix.size()));
    }
    for (const auto& [name, index] : children) {
      if (std::string_view(name).starts_with(kWhiteoutPrefix)) continue;
      if (index >= tree.inodes.size()) throw ConvertError("layer bootstrap names a missing inode");
      const rafs::Inode& src = tree.inodes[index];
      if (is_dir(src)) {
        auto& slot = dst.children[name];
        if (slot && is_dir(slot->inode)) {
          slot->inode = without_children(src);  // a directory over a directory: merged
        } else {
          slot = std::make_shared<MergedNode>();
          slot->inode = without_children(src);
        }
        apply_dir(*slot, tree, index, path + name + "/");
      } else if (auto target = lower_link_target(src)) {
        dst.children[name] = resolve_lower(*target, path + name);
      } else {
        dst.children[name] = node_for(tree, index);
      }
    }
  }

  static std::optional<std::string> lower_link_target(const rafs::Inode& inode) {
    if (inode.xattrs.size() != 1 || inode.xattrs[0].first != kLowerLinkXattr) return std::nullopt;
    return inode.xattrs[0].second;
  }

  // The merged tree's file at `path` (below this layer), which a hardlink of this layer names.
  std::shared_ptr<MergedNode> resolve_lower(const std::string& path, const std::string& link_name) {
    std::shared_ptr<MergedNode> at = root_;
    size_t i = 0;
    while (at && i < path.size()) {
      size_t slash = path.find('/', i);
      if (slash == std::string::npos) slash = path.size();
      auto it = at->children.find(path.substr(i, slash - i));
      at = it == at->children.end() ? nullptr : it->second;
      i = slash + 1;
    }
    if (!at || is_dir(at->inode))
      throw ConvertError("hardlink '" + link_name + "' points at '" + path + "', which no lower layer has as a file");
    return at;
  }

  // One merged node per layer inode, so the names of a hardlink keep sharing it.
  std::shared_ptr<MergedNode> node_for(const rafs::Tree& tree, uint32_t index) {
    if (!nodes_[index]) {
      nodes_[index] = std::make_shared<MergedNode>();
      nodes_[index]->inode = without_children(tree.inodes[index]);
      for (auto& chunk : nodes_[index]->inode.chunks) {
        if (chunk.blob_index != 0) throw ConvertError("layer bootstrap names a blob other than its own");
        chunk.blob_index = layer_;
      }
    }
    return nodes_[index];
  }

  static void mark_used(const MergedNode& node, std::vector<bool>& used, size_t depth) {
    for (const auto& c : node.inode.chunks) used[c.blob_index] = true;
    for (const auto& [name, child] : node.children) mark_used(*child, used, depth + 1);
  }

  static uint32_t flatten_into(const std::shared_ptr<MergedNode>& node, rafs::Tree& tree,
                               std::unordered_map<const MergedNode*, uint32_t>& index_of,
                               const std::vector<uint32_t>& renumber) {
    if (auto it = index_of.find(node.get()); it != index_of.end()) return it->second;
    uint32_t out = static_cast<uint32_t>(tree.inodes.size());
    index_of[node.get()] = out;
    tree.inodes.push_back(node->inode);
    for (auto& c : tree.inodes[out].chunks) c.blob_index = renumber[c.blob_index];
    std::vector<std::pair<std::string, uint32_t>> children;
    for (const auto& [name, child] : node->children)
      children.emplace_back(name, flatten_into(child, tree, index_of, renumber));
    tree.inodes[out].children = std::move(children);
    return out;
  }

  std::shared_ptr<MergedNode> root_;
  std::vector<std::shared_ptr<MergedNode>> nodes_;  // per inode of the layer being applied
  uint32_t layer_ = 0;
};

std::string temp_path(const std::string& dir) {
  static std::atomic<uint64_t> counter{0};
  return dir + "/accel-nydus-boot-" + std::to_string(::getpid()) + "-" + std::to_string(counter++);
}

std::string hex_of(const std::string& digest) {
  return digest.rfind("sha256:", 0) == 0 ? digest.substr(7) : digest;
}

}  // namespace

// ---- the plug-in ---------------------------------------------------------------------------

bool NydusFormat::is_converted(const nlohmann::json& layer) const {
  if (!layer.is_object()) return false;
  if (layer.value("mediaType", "") == kNydusBlobMediaType) return true;
  auto annotations = layer.value("annotations", nlohmann::json::object());
  return annotations.is_object() && annotations.value(std::string(kNydusBootstrapAnnotation), "") == "true";
}

ConvertedLayer NydusFormat::convert_layer(ByteSource& tar, ByteSink& out, const LayerOptions& options) const {
  nydus::BlobOptions blob_options;
  blob_options.chunk_size = options.nydus.chunk_size;
  check_chunk_size(blob_options.chunk_size);
  blob_options.compressor = compressor_of(options);
  blob_options.level = options.nydus.level;
  blob_options.threads = std::max(1u, options.threads);

  // The writer hashes what it writes (it needs a prefix's digest for the TOC anyway), so no
  // HashingSink: one sha256 pass over the blob instead of two.
  nydus::BlobWriter writer(out, blob_options);
  LayerTree tree;
  TarLimits limits;
  limits.max_total_bytes = options.max_uncompressed_bytes;
  limits.max_entry_bytes = options.max_uncompressed_bytes;
  TarReader reader(tar, limits);
  TarEntry entry;
  if (options.prioritized_files.empty()) {
    while (reader.next(entry)) {
      std::string path = clean_path(entry.name);
      if (entry.type == EntryType::hardlink) {
        tree.add_hardlink(entry, path, clean_path(entry.link_name));
        continue;
      }
      std::optional<uint32_t> file;
      if (entry.type == EntryType::regular) {
        TarEntryContent content(reader);
        file = writer.add_file(content, entry.size);
      }
      tree.add(entry, path, file);
    }
  } else {
    // Prioritized files' chunks go first in the blob, in list order, so the prefetch table's
    // files are one contiguous range a puller fetches in one request (as nydus-image lays out
    // a blob with a prefetch list). Contents wait in an uncompressed spool file meanwhile.
    struct Spooled {
      uint64_t offset, size;
    };
    std::vector<Spooled> spooled;
    std::unordered_map<std::string, uint32_t> file_at;  // path -> its content's spool index (last entry wins)
    std::string spool_path = options.work_dir + "/accel-spool-XXXXXX";
    int fd = ::mkstemp(spool_path.data());
    if (fd < 0) throw ConvertError("cannot create a spool file in " + options.work_dir);
    ::close(fd);
    struct Remove {
      std::string path;
      ~Remove() { ::unlink(path.c_str()); }
    } remove{spool_path};
    {
      FileSink spool(spool_path, FileSink::Durability::scratch);
      uint64_t at = 0;
      std::vector<char> buf(1 << 20);
      while (reader.next(entry)) {
        std::string path = clean_path(entry.name);
        if (entry.type == EntryType::hardlink) {
          std::string target = clean_path(entry.link_name);
          tree.add_hardlink(entry, path, target);
          if (auto it = file_at.find(target); it != file_at.end()) file_at[path] = it->second;
          continue;
        }
        std::optional<uint32_t> file;
        if (entry.type == EntryType::regular) {
          file = static_cast<uint32_t>(spooled.size());
          spooled.push_back({at, entry.size});
          uint64_t left = entry.size;
          while (left > 0) {
            size_t n = reader.read(buf.data(), static_cast<size_t>(std::min<uint64_t>(left, buf.size())));
            if (n == 0) throw ConvertError("tar entry '" + entry.name + "' is shorter than its size");
            spool.write(buf.data(), n);
            left -= n;
          }
          at += entry.size;
          file_at[path] = *file;
        } else {
          file_at.erase(path);
        }
        tree.add(entry, path, file);
      }
      spool.commit();
    }
    std::vector<uint32_t> handle(spooled.size());
    std::vector<bool> added(spooled.size(), false);
    auto add = [&](uint32_t i) {
      if (added[i]) return;
      added[i] = true;
      FileSource content(spool_path, spooled[i].offset);
      handle[i] = writer.add_file(content, spooled[i].size);
    };
    for (const auto& f : options.prioritized_files) {
      std::string path;
      try {
        path = clean_path(f);
      } catch (const ConvertError&) {
        continue;  // a path no layer can hold ("..")
      }
      if (auto it = file_at.find(path); it != file_at.end()) add(it->second);
    }
    for (uint32_t i = 0; i < spooled.size(); ++i) add(i);
    tree.remap_files(handle);
  }
  rafs::BlobInfo info = writer.close_data();
  tree.set_chunks(writer);

  rafs::Bootstrap bootstrap;
  bootstrap.chunk_size = blob_options.chunk_size;
  bootstrap.compressor = blob_options.compressor;
  bootstrap.inlined_chunk_digest = info.chunk_count > 0;
  if (info.chunk_count > 0) bootstrap.blobs.push_back(info);
  bootstrap.tree = tree.flatten();
  uint64_t size = writer.finish(rafs::write_bootstrap(bootstrap));

  ConvertedLayer result;
  result.digest = writer.digest();
  result.size = size;
  result.diff_id = result.digest;  // nydus-snapshotter's converter: a blob is its own diff_id
  result.uncompressed_size = reader.bytes_consumed();
  result.media_type = std::string(kNydusBlobMediaType);
  result.annotations[std::string(kNydusBlobAnnotation)] = "true";
  return result;
}

std::string read_blob_range(const OpenBlobAt& open, uint64_t offset, uint64_t length) {
  auto source = open(offset);
  std::string out(length, '\0');
  size_t got = 0;
  while (got < length) {
    size_t n = source->read(out.data() + got, length - got);
    if (n == 0) throw ConvertError("blob ends before byte " + std::to_string(offset + length));
    got += n;
  }
  return out;
}

std::string read_inline_bootstrap(const OpenBlobAt& open, uint64_t blob_size) {
  uint64_t tail_size = nydus::toc_tail_size(blob_size);
  auto toc = nydus::parse_toc(read_blob_range(open, blob_size - tail_size, tail_size), blob_size);
  const nydus::TocEntry* boot = nydus::find_toc_entry(toc, "image.boot");
  if (!boot) throw ConvertError("blob TOC has no image.boot entry (not a blob made with an inline bootstrap)");
  if (boot->uncompressed_size > (uint64_t{1} << 30) || boot->compressed_size > (uint64_t{1} << 30))
    throw ConvertError("blob's image.boot is larger than 1 GiB");
  return nydus::extract_toc_entry(*boot, read_blob_range(open, boot->compressed_offset, boot->compressed_size));
}

rafs::Bootstrap merge_layers(const std::vector<rafs::Bootstrap>& layers, const std::vector<std::string>& blob_ids) {
  if (layers.empty()) throw ConvertError("an image with no layers has no Nydus bootstrap");
  rafs::Bootstrap merged;
  merged.chunk_size = layers[0].chunk_size;
  merged.compressor = layers[0].compressor;
  merged.inlined_chunk_digest = true;
  Overlay overlay;
  for (size_t i = 0; i < layers.size(); ++i) {
    const auto& layer = layers[i];
    if (layer.chunk_size != merged.chunk_size)
      throw ConvertError("layers of one image use different chunk sizes (" + std::to_string(layer.chunk_size) + ", " +
                         std::to_string(merged.chunk_size) + ")");
    if (layer.blobs.size() > 1) throw ConvertError("layer " + std::to_string(i) + "'s bootstrap names several blobs");
    overlay.apply(layer.tree, static_cast<uint32_t>(i));
  }
  std::vector<bool> used;
  merged.tree = overlay.flatten(layers.size(), used);
  for (size_t i = 0; i < layers.size(); ++i) {
    if (!used[i]) continue;
    if (layers[i].blobs.empty()) throw ConvertError("layer " + std::to_string(i) + " has chunks but no blob");
    rafs::BlobInfo blob = layers[i].blobs[0];
    blob.blob_id = blob_ids.at(i);
    blob.features &= ~rafs::blob_feature::inlined_fs_meta;  // nydusd would look for the blob by the bootstrap's name
    if (!(blob.features & rafs::blob_feature::inlined_chunk_digest)) merged.inlined_chunk_digest = false;
    merged.blobs.push_back(std::move(blob));
  }
  // The superblock's compression flag is informational for nydusd (each blob says its own);
  // with one compressor throughout it is that one.
  if (!merged.blobs.empty()) merged.compressor = merged.blobs[0].compressor;
  if (merged.blobs.empty()) merged.inlined_chunk_digest = false;
  return merged;
}

std::string bootstrap_layer_tar(std::string_view bootstrap, const BlobMetaFiles& blob_metas) {
  StringSink sink;
  TarWriter writer(sink);
  TarEntry dir;
  dir.name = "image/";
  dir.type = EntryType::directory;
  dir.mode = 0755;
  writer.write_header(dir);
  TarEntry file;
  file.name = std::string(kNydusBootstrapPath);
  file.type = EntryType::regular;
  file.mode = 0444;
  file.size = bootstrap.size();
  writer.write_header(file);
  writer.write_content(bootstrap.data(), bootstrap.size());
  writer.pad();
  for (const auto& [id, meta] : blob_metas) {
    TarEntry m = file;
    m.name = "image/" + id + ".blob.meta";
    m.size = meta.size();
    writer.write_header(m);
    writer.write_content(meta.data(), meta.size());
    writer.pad();
  }
  writer.finish();
  return std::move(sink.data);
}

std::optional<AddedLayer> NydusFormat::finish_image(const std::vector<ConvertedLayer>& layers, BlobReader& blobs,
                                                    const LayerOptions& options) const {
  std::vector<rafs::Bootstrap> bootstraps;
  std::vector<std::string> blob_ids;
  for (size_t i = 0; i < layers.size(); ++i) {
    const ConvertedLayer& layer = layers[i];
    if (layer.media_type != kNydusBlobMediaType)
      throw ConvertError("layer " + layer.digest + " (" + layer.media_type +
                         ") is not a Nydus blob: a Nydus bootstrap cannot cover it");
    OpenBlobAt open = [&](uint64_t offset) { return blobs.open(layer, offset); };
    try {
      bootstraps.push_back(rafs::read_bootstrap(read_inline_bootstrap(open, layer.size)));
    } catch (const ConvertError& e) {
      throw ConvertError("Nydus blob " + layer.digest + ": " + e.what());
    }
    blob_ids.push_back(hex_of(layer.digest));
  }
  rafs::Bootstrap merged = merge_layers(bootstraps, blob_ids);
  for (const auto& path : options.prioritized_files)
    merged.prefetch.push_back(path.starts_with("/") ? path : "/" + path);
  BlobMetaFiles metas;
  for (const auto& blob : merged.blobs) {
    const ConvertedLayer& layer = layers.at(std::find(blob_ids.begin(), blob_ids.end(), blob.blob_id) - blob_ids.begin());
    OpenBlobAt open = [&](uint64_t offset) { return blobs.open(layer, offset); };
    std::string region = read_blob_range(open, blob.ci_offset, blob.ci_compressed_size + nydus::kBlobMetaHeaderSize);
    metas.emplace_back(blob.blob_id, nydus::blob_meta_cache_file(region, blob));
  }
  std::string tar = bootstrap_layer_tar(rafs::write_bootstrap(merged), metas);
  std::string gz = gzip_member(tar.data(), tar.size(), 9);

  AddedLayer added;
  added.path = temp_path(options.work_dir);
  {
    FileSink sink(added.path);
    sink.write(gz.data(), gz.size());
    sink.commit();
  }
  added.layer.digest = Sha256::of(gz);
  added.layer.size = gz.size();
  added.layer.diff_id = Sha256::of(tar);
  added.layer.uncompressed_size = tar.size();
  added.layer.media_type = "application/vnd.oci.image.layer.v1.tar+gzip";
  added.layer.annotations[std::string(kNydusBootstrapAnnotation)] = "true";
  added.layer.annotations[std::string(kNydusFsVersionAnnotation)] = "6";
  added.history = {{"created_by", "Nydus Converter"}, {"comment", "Nydus Bootstrap Layer"}};
  return added;
}

}  // namespace accel::convert
