// HTTP Range requests (RFC 9110 §14): parsing the header, resolving it against a blob size, and
// framing a multipart/byteranges answer. The proxy needs this itself whenever an upstream (or the
// storage it redirects to) ignores Range, and later for blobs served from the cache.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace accel {

// One range-spec as written: "first-last", "first-" (last unset) or "-suffix" (first unset).
struct RangeSpec {
  std::optional<uint64_t> first;
  std::optional<uint64_t> last;  // or the suffix length when `first` is unset
};

struct RangeHeader {
  enum class Kind {
    absent,   // no header, or a unit other than bytes: serve the whole representation
    invalid,  // "bytes=" with a syntax error: answer 416 RANGE_INVALID
    ranges,   // `specs` holds at least one spec
  };
  Kind kind = Kind::absent;
  std::vector<RangeSpec> specs;
};

// A satisfiable range resolved against a size: both ends inclusive, last < size.
struct ByteRange {
  uint64_t first = 0;
  uint64_t last = 0;
  uint64_t length() const { return last - first + 1; }
  bool operator==(const ByteRange&) const = default;
};

// More specs than this are refused as invalid: a long list of tiny ranges is a cheap way to
// make a server do a lot of work.
inline constexpr size_t kMaxRangeSpecs = 128;

RangeHeader parse_range_header(std::string_view value);

// The satisfiable ranges in request order, clipped to the size. Empty means 416.
std::vector<ByteRange> resolve_ranges(const std::vector<RangeSpec>& specs, uint64_t size);

// "bytes 0-99/1234"
std::string content_range(const ByteRange& range, uint64_t size);

// The framing of a multipart/byteranges body. The body is, for each range i,
// part_headers[i] followed by the range's bytes, and then `closing`.
struct MultipartFraming {
  std::string content_type;  // "multipart/byteranges; boundary=..."
  std::vector<std::string> part_headers;
  std::string closing;
  uint64_t content_length = 0;  // of the whole body, known before the first byte is sent
};

MultipartFraming frame_multipart(const std::vector<ByteRange>& ranges, uint64_t size,
                                 std::string_view part_content_type, std::string_view boundary);

// A boundary that cannot occur in the part headers; random per call.
std::string make_boundary();

}  // namespace accel
