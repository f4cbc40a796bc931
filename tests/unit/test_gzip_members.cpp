// Parallel gzip members: the incompressible-data test, round trips through zlib, and output
// that is the same byte for byte whatever the thread count.
#include <zlib.h>

#include <catch2/catch.hpp>

#include "tests/unit/test_files.hpp"
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "convert/gzip_members.hpp"
#include "convert/sha256.hpp"
#include "convert/streams.hpp"

using namespace accel::convert;

namespace {


std::string text_bytes(size_t n, uint32_t seed) {
  static const char* words[] = {"layer ", "image ", "manifest ", "digest ", "blob ", "tag ", "index ", "\n"};
  std::mt19937 rng(seed);
  std::string s;
  while (s.size() < n) s += words[rng() % 8];
  s.resize(n);
  return s;
}

// Decompresses concatenated gzip members with zlib.
std::string gunzip(const std::string& gz) {
  z_stream z{};
  REQUIRE(inflateInit2(&z, 16 + MAX_WBITS) == Z_OK);
  std::string out;
  z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(gz.data()));
  z.avail_in = static_cast<uInt>(gz.size());
  char buf[65536];
  while (true) {
    z.next_out = reinterpret_cast<Bytef*>(buf);
    z.avail_out = sizeof buf;
    int rc = inflate(&z, Z_NO_FLUSH);
    out.append(buf, sizeof buf - z.avail_out);
    if (rc == Z_STREAM_END) {
      if (z.avail_in == 0) break;
      REQUIRE(inflateReset(&z) == Z_OK);  // next member
      continue;
    }
    REQUIRE(rc == Z_OK);
  }
  inflateEnd(&z);
  return out;
}

}  // namespace

TEST_CASE("looks_incompressible tells random data from compressible data") {
  const std::string random = random_bytes(1 << 20, 1);
  CHECK(looks_incompressible(random.data(), random.size()));

  const std::string text = text_bytes(1 << 20, 2);
  CHECK_FALSE(looks_incompressible(text.data(), text.size()));

  // Too small to be worth testing: always deflated.
  CHECK_FALSE(looks_incompressible(random.data(), 4095));

  // One text block among random ones, where no sample falls: the byte statistics see it.
  std::string one_text_block = random;
  const std::string block = text_bytes(4096, 3);
  one_text_block.replace(300 * 1024, block.size(), block);
  CHECK_FALSE(looks_incompressible(one_text_block.data(), one_text_block.size()));

  // Random bytes repeated at a period deflate's window covers: every block looks random, yet LZ
  // matching removes the repeats; the level-1 samples see that.
  for (size_t period : {4096, 16 * 1024, 30 * 1024}) {
    std::string repeated;
    const std::string unit = random_bytes(period, 4);
    while (repeated.size() < (1 << 20)) repeated += unit;
    CHECK_FALSE(looks_incompressible(repeated.data(), repeated.size()));
    CHECK(gzip_member(repeated.data(), repeated.size(), 6).size() < repeated.size() / 2);
  }

  // A text tail after the last whole block counts too.
  std::string text_tail = random.substr(0, 256 * 1024);
  text_tail += text_bytes(2000, 10);
  CHECK_FALSE(looks_incompressible(text_tail.data(), text_tail.size()));

  // Zeros and a narrow alphabet are compressible by Huffman coding alone.
  const std::string zeros(1 << 20, '\0');
  CHECK_FALSE(looks_incompressible(zeros.data(), zeros.size()));
  std::string hex = random_bytes(1 << 20, 5);
  for (auto& c : hex) c = "0123456789abcdef"[static_cast<unsigned char>(c) & 15];
  CHECK_FALSE(looks_incompressible(hex.data(), hex.size()));
}

TEST_CASE("looks_incompressible on members under 256 KiB: searched whole for repeats") {
  for (size_t size : {4096u, 5000u, 20000u, 100000u, 256u * 1024 - 1}) {
    INFO("size " << size);
    const std::string random = random_bytes(size, 11);
    CHECK(looks_incompressible(random.data(), random.size()));
    const std::string text = text_bytes(size, 12);
    CHECK_FALSE(looks_incompressible(text.data(), text.size()));
    // Repeats within the window make deflate worthwhile: not stored, whatever the period.
    for (size_t period : {1000u, 4096u, 12345u, 30000u}) {
      if (period * 2 > size) continue;
      INFO("period " << period);
      const std::string unit = random_bytes(period, 13);
      std::string repeated;
      while (repeated.size() < size) repeated += unit;
      repeated.resize(size);
      CHECK_FALSE(looks_incompressible(repeated.data(), repeated.size()));
    }
  }
  // A repeat of under 1% of the data does not pay for deflating the rest.
  std::string almost = random_bytes(100000, 14);
  almost.replace(60000, 500, almost.substr(50000, 500));
  CHECK(looks_incompressible(almost.data(), almost.size()));
  // One text block among random ones.
  std::string one_text_block = random_bytes(100000, 15);
  one_text_block.replace(40960, 4096, text_bytes(4096, 16));
  CHECK_FALSE(looks_incompressible(one_text_block.data(), one_text_block.size()));
  // A repeat farther back than deflate's 32 KiB window is of no use to it.
  std::string far = random_bytes(40000, 17);
  far += far.substr(0, 3000);
  CHECK(looks_incompressible(far.data(), far.size()));
}

TEST_CASE("gzip_member round-trips compressible and stored data") {
  for (const std::string& input : {random_bytes(1 << 20, 6), text_bytes(1 << 20, 7), std::string(),
                                   std::string("x"), random_bytes(100000, 8)}) {
    const std::string gz = gzip_member(input.data(), input.size(), 6);
    CHECK(gunzip(gz) == input);
    if (input.size() == (1 << 20) && looks_incompressible(input.data(), input.size()))
      CHECK(gz.size() < input.size() + input.size() / 1000 + 64);  // stored: tiny overhead
  }
  const std::string text = text_bytes(1 << 20, 9);
  CHECK(gzip_member(text.data(), text.size(), 6).size() < text.size() / 3);

  // Random file content followed by tar framing (zero padding, a header's text): the content is
  // stored, across several stored blocks when over 64 KiB, and the framing deflated after it.
  for (size_t content_size : {5000u, 70000u, 200000u}) {
    INFO("content " << content_size);
    const std::string content = random_bytes(content_size, 20);
    const std::string member = content + std::string(3000, '\0') + text_bytes(2048, 21);
    const std::string gz = gzip_member(member.data(), member.size(), 6, content.size());
    CHECK(gunzip(gz) == member);
    CHECK(gz.size() < content.size() + 5 * (content.size() / 65535 + 1) + 1000);
    // All of it is stored when it is all content; nothing is when the content is text.
    const std::string all_content = gzip_member(content.data(), content.size(), 6, content.size());
    CHECK(gunzip(all_content) == content);
    CHECK(all_content.size() == 10 + content.size() + 5 * (content.size() / 65535 + 1) + 8);
    const std::string text_content = text_bytes(content_size, 22) + std::string(1000, '\0');
    CHECK(gzip_member(text_content.data(), text_content.size(), 6, content_size).size() < content_size / 2);
  }
}

TEST_CASE("ParallelGzipWriter output and digests do not depend on the thread count") {
  // Members of mixed content and size, some with a digested prefix.
  std::vector<std::string> members;
  std::vector<size_t> prefixes;
  std::mt19937 rng(10);
  for (int i = 0; i < 60; ++i) {
    const size_t n = (rng() % 4 == 0) ? 300000 + rng() % 900000 : rng() % 5000;
    members.push_back(rng() % 2 ? random_bytes(n, i) : text_bytes(n, i));
    prefixes.push_back(rng() % 3 == 0 ? 0 : rng() % (n + 1));
  }

  auto write_all = [&](unsigned threads, size_t max_bytes) {
    StringSink sink;
    ParallelGzipWriter gz(sink, 6, threads, max_bytes);
    for (size_t i = 0; i < members.size(); ++i) CHECK(gz.submit(members[i], prefixes[i]) == i);
    gz.write_raw("TAIL", 4);
    std::vector<std::string> digests;
    std::vector<uint64_t> offsets;
    for (size_t i = 0; i < members.size(); ++i) {
      digests.push_back(gz.digest_of(i));
      offsets.push_back(gz.offset_of(i));
    }
    CHECK(gz.bytes_written() == sink.data.size());
    return std::make_tuple(sink.data, digests, offsets);
  };

  const auto [one, one_digests, one_offsets] = write_all(1, 0);
  for (auto [threads, max_bytes] : {std::pair{2u, size_t{0}}, std::pair{4u, size_t{1}}, std::pair{3u, size_t{1} << 20}}) {
    const auto [many, digests, offsets] = write_all(threads, max_bytes);
    CHECK(many == one);
    CHECK(digests == one_digests);
    CHECK(offsets == one_offsets);
  }

  REQUIRE(one.size() > 4);
  CHECK(one.substr(one.size() - 4) == "TAIL");
  std::string all;
  for (const auto& m : members) all += m;
  CHECK(gunzip(one.substr(0, one.size() - 4)) == all);
  for (size_t i = 0; i < members.size(); ++i) {
    if (prefixes[i] == 0) {
      CHECK(one_digests[i].empty());
    } else {
      CHECK(one_digests[i] == Sha256::of(std::string_view(members[i]).substr(0, prefixes[i])));
    }
    // Every member, even an empty one, takes bytes.
    if (i + 1 < members.size()) CHECK(one_offsets[i] < one_offsets[i + 1]);
  }
}

// --- gzip input (open_decompressed) ---------------------------------------------------------

namespace {

// Decompresses with open_decompressed, reading `piece` bytes at a time.
std::string decompress(const std::string& gz, size_t piece) {
  MemorySource source(gz);
  Compression kind;
  auto plain = open_decompressed(source, &kind);
  CHECK(kind == Compression::gzip);
  std::string out, buf(piece, '\0');
  while (size_t n = plain->read(buf.data(), buf.size())) out.append(buf.data(), n);
  return out;
}

// A member written by zlib with a file name, a comment and an extra field in its header.
std::string zlib_gzip_with_header_fields(const std::string& input) {
  z_stream z{};
  REQUIRE(deflateInit2(&z, 6, Z_DEFLATED, 16 + MAX_WBITS, 8, Z_DEFAULT_STRATEGY) == Z_OK);
  gz_header h{};
  char name[] = "layer.tar", comment[] = "made by the unit test";
  unsigned char extra[] = {'A', 'P', 4, 0, 1, 2, 3, 4};
  h.name = reinterpret_cast<Bytef*>(name);
  h.comment = reinterpret_cast<Bytef*>(comment);
  h.extra = extra;
  h.extra_len = sizeof extra;
  h.hcrc = 1;
  REQUIRE(deflateSetHeader(&z, &h) == Z_OK);
  std::string out(deflateBound(&z, input.size()) + 256, '\0');
  z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(input.data()));
  z.avail_in = static_cast<uInt>(input.size());
  z.next_out = reinterpret_cast<Bytef*>(out.data());
  z.avail_out = static_cast<uInt>(out.size());
  REQUIRE(deflate(&z, Z_FINISH) == Z_STREAM_END);
  out.resize(z.total_out);
  deflateEnd(&z);
  return out;
}

std::string decompress_error(const std::string& gz) {
  try {
    decompress(gz, 65536);
  } catch (const ConvertError& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("gzip input: members in sequence, header fields, any read size") {
  const std::string a = text_bytes(300000, 11), b = random_bytes(700000, 12), c;  // c: empty member
  const std::string d = text_bytes(5000, 13);
  const std::string gz = gzip_member(a.data(), a.size(), 6) + gzip_member(b.data(), b.size(), 6) +
                         gzip_member(c.data(), c.size(), 6) + zlib_gzip_with_header_fields(d) +
                         gzip_member(d.data(), d.size(), 1);
  for (size_t piece : {size_t{1}, size_t{7}, size_t{4096}, size_t{1} << 20})
    CHECK(decompress(gz, piece) == a + b + c + d + d);
}

TEST_CASE("gzip input: corruption is an error, never short data") {
  const std::string text = text_bytes(200000, 14);
  const std::string good = gzip_member(text.data(), text.size(), 6) + gzip_member(text.data(), text.size(), 6);
  REQUIRE(decompress(good, 65536) == text + text);

  std::string bad_crc = good;
  bad_crc[bad_crc.size() - 8] ^= 1;  // the last member's CRC-32
  CHECK_THAT(decompress_error(bad_crc), Catch::Contains("trailer"));

  std::string bad_size = good;
  bad_size[bad_size.size() - 1] ^= 1;  // the last member's ISIZE
  CHECK_THAT(decompress_error(bad_size), Catch::Contains("trailer"));

  CHECK_THAT(decompress_error(good.substr(0, good.size() - 3)), Catch::Contains("truncated"));
  CHECK_THAT(decompress_error(good.substr(0, good.size() / 3)), Catch::Contains("truncated"));
  CHECK_THAT(decompress_error(good + "garbage"), Catch::Contains("trailing garbage"));

  std::string bad_block = good;
  bad_block[12] = static_cast<char>(0xff);  // inside the first member's first deflate block header
  CHECK_FALSE(decompress_error(bad_block).empty());

  std::string bad_method = good;
  bad_method[2] = 7;  // compression method other than deflate
  CHECK_THAT(decompress_error(bad_method), Catch::Contains("corrupt"));
}
