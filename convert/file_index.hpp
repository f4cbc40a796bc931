// Which files a byte range of a converted layer's blob holds, read from the format's own index
// (eStargz: the TOC; Nydus: the layer bootstrap inside the blob and its chunk table). Learned
// prefetch (variants/startup_recorder.*) maps what lazy pullers fetch to files with it, so the
// proxy's HTTP side never parses a format. Built by LayerFormat::file_index().
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace accel::convert {

// Reads `length` bytes of a blob from `offset` (fewer only where the blob ends).
using ReadBlobAt = std::function<std::string(uint64_t offset, uint64_t length)>;

struct FileIndex {
  struct Span {
    uint64_t begin = 0, end = 0;  // a piece of file data in the blob (compressed bytes)
    uint32_t file = 0;            // index into `paths`
  };

  uint64_t blob_size = 0;
  // [index_offset, blob_size) is the format's own index (eStargz: TOC and footer; Nydus: blob
  // meta, chunk digests, layer bootstrap, TOC). A lazy puller reads it before any file: such a
  // read starts a start-up. A blob that is all index (Nydus's bootstrap layer) has 0 and no spans.
  uint64_t index_offset = 0;
  // The lazy pullers of this format widen each read to multiples of this many bytes
  // (stargz-snapshotter: 50,000); 0 when they read exactly the pieces they need.
  uint64_t window = 0;
  std::vector<std::string> paths;  // absolute ("/usr/bin/python3")
  std::vector<Span> spans;         // sorted by begin, not overlapping

  bool index_only() const { return spans.empty() && index_offset == 0; }
  // Whether a read of [begin, end) touches the index.
  bool reads_index(uint64_t begin, uint64_t end) const { return end > index_offset && begin < blob_size; }
  // The files a read of [begin, end) was made for, in blob order. With a window, the padding a
  // puller added around what it needed is taken off: a file counts when it reaches into two of
  // the range's windows, or is the only file in one of them; files sharing a window with
  // neither (a small file read alone) all count, since nothing tells which one was wanted.
  std::vector<uint32_t> files_read(uint64_t begin, uint64_t end) const;
};

}  // namespace accel::convert
