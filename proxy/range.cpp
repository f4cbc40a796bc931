#include "proxy/range.hpp"

#include "proxy/http_headers.hpp"

#include <cctype>
#include <charconv>
#include <random>

namespace accel {
namespace {

std::optional<uint64_t> parse_u64(std::string_view s) {
  if (s.empty() || s.size() > 19) return std::nullopt;  // 19 digits always fit in 64 bits
  uint64_t value = 0;
  auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), value);
  if (ec != std::errc() || ptr != s.data() + s.size()) return std::nullopt;
  return value;
}

bool starts_with_icase(std::string_view s, std::string_view prefix) {
  if (s.size() < prefix.size()) return false;
  for (size_t i = 0; i < prefix.size(); ++i)
    if (std::tolower(static_cast<unsigned char>(s[i])) != prefix[i]) return false;
  return true;
}

}  // namespace

RangeHeader parse_range_header(std::string_view value) {
  RangeHeader out;
  value = trim_ows(value);
  if (value.empty()) return out;
  size_t eq = value.find('=');
  if (eq == std::string_view::npos) {
    out.kind = RangeHeader::Kind::invalid;
    return out;
  }
  std::string_view unit = trim_ows(value.substr(0, eq));
  if (unit.size() != 5 || !starts_with_icase(unit, "bytes")) return out;  // other units: ignore

  std::string_view list = value.substr(eq + 1);
  out.kind = RangeHeader::Kind::invalid;
  while (true) {
    size_t comma = list.find(',');
    std::string_view spec = trim_ows(list.substr(0, comma));
    if (!spec.empty()) {  // RFC 9110 allows empty list elements
      size_t dash = spec.find('-');
      if (dash == std::string_view::npos) return {RangeHeader::Kind::invalid, {}};
      std::string_view a = trim_ows(spec.substr(0, dash)), b = trim_ows(spec.substr(dash + 1));
      RangeSpec rs;
      if (a.empty()) {
        auto suffix = parse_u64(b);
        if (!suffix) return {RangeHeader::Kind::invalid, {}};
        rs.last = *suffix;
      } else {
        rs.first = parse_u64(a);
        if (!rs.first) return {RangeHeader::Kind::invalid, {}};
        if (!b.empty()) {
          rs.last = parse_u64(b);
          if (!rs.last || *rs.last < *rs.first) return {RangeHeader::Kind::invalid, {}};
        }
      }
      if (out.specs.size() == kMaxRangeSpecs) return {RangeHeader::Kind::invalid, {}};
      out.specs.push_back(rs);
    }
    if (comma == std::string_view::npos) break;
    list.remove_prefix(comma + 1);
  }
  if (!out.specs.empty()) out.kind = RangeHeader::Kind::ranges;
  return out;
}

std::vector<ByteRange> resolve_ranges(const std::vector<RangeSpec>& specs, uint64_t size) {
  std::vector<ByteRange> out;
  for (const auto& s : specs) {
    if (!s.first) {  // suffix: the last N bytes
      uint64_t n = s.last.value_or(0);
      if (n == 0 || size == 0) continue;
      out.push_back({n >= size ? 0 : size - n, size - 1});
    } else {
      if (*s.first >= size) continue;
      uint64_t last = s.last ? std::min(*s.last, size - 1) : size - 1;
      out.push_back({*s.first, last});
    }
  }
  return out;
}

std::string content_range(const ByteRange& range, uint64_t size) {
  return "bytes " + std::to_string(range.first) + "-" + std::to_string(range.last) + "/" +
         std::to_string(size);
}

MultipartFraming frame_multipart(const std::vector<ByteRange>& ranges, uint64_t size,
                                 std::string_view part_content_type, std::string_view boundary) {
  MultipartFraming f;
  f.content_type = "multipart/byteranges; boundary=" + std::string(boundary);
  for (size_t i = 0; i < ranges.size(); ++i) {
    std::string h = i == 0 ? "" : "\r\n";
    h += "--";
    h += boundary;
    h += "\r\nContent-Type: ";
    h += part_content_type;
    h += "\r\nContent-Range: ";
    h += content_range(ranges[i], size);
    h += "\r\n\r\n";
    f.content_length += h.size() + ranges[i].length();
    f.part_headers.push_back(std::move(h));
  }
  f.closing = "\r\n--" + std::string(boundary) + "--\r\n";
  f.content_length += f.closing.size();
  return f;
}

std::string make_boundary() {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  static constexpr char hex[] = "0123456789abcdef";
  std::string b;
  for (int i = 0; i < 2; ++i) {
    uint64_t v = rng();
    for (int j = 0; j < 16; ++j, v >>= 4) b += hex[v & 15];
  }
  return b;
}

}  // namespace accel
