// libFuzzer target: the input read as a RAFS v6 bootstrap. A malformed bootstrap must end in a
// ConvertError, never a crash, hang or unbounded allocation. One that reads cleanly is written
// again and read back: the writer must accept what the reader produced, and the second reading
// must give the same tree (the model round-trips).
#include <cstdint>
#include <string>
#include <string_view>

#include "convert/byte_source.hpp"
#include "convert/rafs_v6.hpp"

using namespace accel::convert;

namespace {

bool same_tree(const rafs::Tree& a, const rafs::Tree& b) {
  if (a.inodes.size() != b.inodes.size()) return false;
  for (size_t i = 0; i < a.inodes.size(); ++i) {
    const auto& x = a.inodes[i];
    const auto& y = b.inodes[i];
    if (x.mode != y.mode || x.uid != y.uid || x.gid != y.gid || x.size != y.size || x.children != y.children ||
        x.symlink_target != y.symlink_target || x.xattrs != y.xattrs || x.chunks.size() != y.chunks.size())
      return false;
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
  if (!same_tree(first.tree, second.tree)) __builtin_trap();
  return 0;
}
