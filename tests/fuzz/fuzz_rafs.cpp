// libFuzzer target: the input read as a RAFS v6 bootstrap. A malformed bootstrap must end in a
// ConvertError, never a crash, hang or unbounded allocation. One that reads cleanly is written
// again and read back: the writer must accept what the reader produced, and the second reading
// must give the same tree, compared from the root by names (the model round-trips; inode
// indexes follow each bootstrap's own layout).
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>

#include "convert/byte_source.hpp"
#include "convert/rafs_v6.hpp"

using namespace accel::convert;

namespace {

// A directory's or symlink's size is the writer's to set (its dirent blocks: a bootstrap may
// pad the last name with NULs, which the kernel and the reader trim), so only a regular file's
// size is content.
bool same_inode(const rafs::Inode& x, const rafs::Inode& y) {
  const bool regular = (x.mode & 0170000) == 0100000;
  return x.mode == y.mode && x.uid == y.uid && x.gid == y.gid && (!regular || x.size == y.size) &&
         x.symlink_target == y.symlink_target && x.xattrs == y.xattrs && x.chunks.size() == y.chunks.size() &&
         x.children.size() == y.children.size();
}

// The same tree from the root by names: the writer lays inodes out in its own order, so the
// indexes of a bootstrap read back need not be those of the one it was written from.
bool same_tree(const rafs::Tree& a, uint32_t ia, const rafs::Tree& b, uint32_t ib,
               std::unordered_map<uint32_t, uint32_t>& seen) {
  if (ia >= a.inodes.size() || ib >= b.inodes.size()) return false;
  if (auto it = seen.find(ia); it != seen.end()) return it->second == ib;  // a hardlink: the same inode again
  seen[ia] = ib;
  const auto& x = a.inodes[ia];
  const auto& y = b.inodes[ib];
  if (!same_inode(x, y)) return false;
  for (size_t i = 0; i < x.children.size(); ++i) {
    if (x.children[i].first != y.children[i].first) return false;
    if (!same_tree(a, x.children[i].second, b, y.children[i].second, seen)) return false;
  }
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  rafs::Bootstrap first;
  try {
    first = rafs::read_bootstrap(std::string_view(reinterpret_cast<const char*>(data), size));
  } catch (const ConvertError&) {
    return 0;
  }
  std::string again;
  try {
    again = rafs::write_bootstrap(first);
  } catch (const ConvertError&) {
    return 0;  // a valid bootstrap the writer cannot express (compact-only features): allowed
  }
  rafs::Bootstrap second = rafs::read_bootstrap(again);  // must not throw
  std::unordered_map<uint32_t, uint32_t> seen;
  if (!same_tree(first.tree, 0, second.tree, 0, seen)) __builtin_trap();
  return 0;
}
