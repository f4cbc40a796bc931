// libFuzzer target: Range header parsing, resolution and multipart framing.
#include <cstdint>
#include <string_view>

#include "proxy/range.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view input(reinterpret_cast<const char*>(data), size);
  auto header = accel::parse_range_header(input);
  if (header.kind != accel::RangeHeader::Kind::ranges) return 0;
  for (uint64_t blob_size : {uint64_t{0}, uint64_t{1}, uint64_t{100}, uint64_t{1} << 40}) {
    auto ranges = accel::resolve_ranges(header.specs, blob_size);
    uint64_t expected = 0;
    for (const auto& r : ranges) {
      if (r.first > r.last || r.last >= blob_size) __builtin_trap();  // must be clipped and ordered
      expected += r.length();
    }
    if (ranges.size() > 1) {
      auto framing = accel::frame_multipart(ranges, blob_size, "application/octet-stream", "b");
      uint64_t total = framing.closing.size();
      for (const auto& h : framing.part_headers) total += h.size();
      if (framing.content_length != total + expected) __builtin_trap();
    }
  }
  return 0;
}
