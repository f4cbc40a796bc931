#include <catch2/catch.hpp>

#include "proxy/range.hpp"

using namespace accel;
using Kind = RangeHeader::Kind;

TEST_CASE("Range header forms") {
  auto h = parse_range_header("bytes=0-99");
  REQUIRE(h.kind == Kind::ranges);
  REQUIRE(h.specs.size() == 1);
  CHECK(h.specs[0].first == 0u);
  CHECK(h.specs[0].last == 99u);

  h = parse_range_header("bytes=100-");
  REQUIRE(h.kind == Kind::ranges);
  CHECK(h.specs[0].first == 100u);
  CHECK_FALSE(h.specs[0].last);

  h = parse_range_header("bytes=-500");
  REQUIRE(h.kind == Kind::ranges);
  CHECK_FALSE(h.specs[0].first);
  CHECK(h.specs[0].last == 500u);

  h = parse_range_header(" Bytes = 0-9 , 20-29,,-5 ");
  REQUIRE(h.kind == Kind::ranges);
  CHECK(h.specs.size() == 3);

  CHECK(parse_range_header("").kind == Kind::absent);
  CHECK(parse_range_header("items=0-1").kind == Kind::absent);
  for (auto bad : {"bytes=abc", "bytes=5-2", "bytes=", "bytes=-", "bytes=1-2-3", "bytes=99999999999999999999-",
                   "bytes=0-1,x", "garbage"}) {
    INFO(bad);
    CHECK(parse_range_header(bad).kind == Kind::invalid);
  }
}

TEST_CASE("too many ranges are refused") {
  std::string many = "bytes=0-0";
  for (size_t i = 1; i <= kMaxRangeSpecs; ++i) many += "," + std::to_string(i) + "-" + std::to_string(i);
  CHECK(parse_range_header(many).kind == Kind::invalid);
}

TEST_CASE("ranges resolve against the size, in request order, clipped") {
  auto specs = parse_range_header("bytes=50-59,0-9,-5,90-200,1000-").specs;
  auto r = resolve_ranges(specs, 100);
  REQUIRE(r.size() == 4);
  CHECK(r[0] == ByteRange{50, 59});
  CHECK(r[1] == ByteRange{0, 9});
  CHECK(r[2] == ByteRange{95, 99});
  CHECK(r[3] == ByteRange{90, 99});
  CHECK(resolve_ranges(parse_range_header("bytes=-500").specs, 100)[0] == ByteRange{0, 99});
  CHECK(resolve_ranges(parse_range_header("bytes=100-").specs, 100).empty());
  CHECK(resolve_ranges(parse_range_header("bytes=-0").specs, 100).empty());
  CHECK(resolve_ranges(parse_range_header("bytes=0-").specs, 0).empty());
  CHECK(content_range({5, 9}, 100) == "bytes 5-9/100");
}

TEST_CASE("multipart framing length matches the bytes it describes") {
  std::vector<ByteRange> ranges{{0, 9}, {20, 29}};
  auto f = frame_multipart(ranges, 100, "application/octet-stream", "BOUNDARY");
  CHECK(f.content_type == "multipart/byteranges; boundary=BOUNDARY");
  REQUIRE(f.part_headers.size() == 2);
  CHECK(f.part_headers[0] == "--BOUNDARY\r\nContent-Type: application/octet-stream\r\nContent-Range: bytes 0-9/100\r\n\r\n");
  CHECK(f.part_headers[1].rfind("\r\n--BOUNDARY\r\n", 0) == 0);
  CHECK(f.closing == "\r\n--BOUNDARY--\r\n");
  uint64_t total = f.closing.size() + 20;
  for (auto& h : f.part_headers) total += h.size();
  CHECK(f.content_length == total);
  CHECK(make_boundary() != make_boundary());
}
