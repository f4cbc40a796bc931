// libFuzzer target: the input read as a layer's tar and converted to eStargz (the TOC writer's
// inputs are the tar entries: names, link names, xattrs, sizes, times). Malformed input must end
// in a ConvertError. A conversion that succeeds is checked against the input:
//   - the blob's digest and size, and the diff_id of its decompressed stream, are the ones reported;
//   - read back as a tar, the blob holds the landmark, then every input entry in order with the
//     same type, size, link name and content, then stargz.index.json;
//   - the footer points at the TOC, whose digest is the annotation's, which parses as JSON, and
//     every chunk it lists starts a gzip member at its offset whose data has its chunkDigest.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "convert/estargz.hpp"
#include "convert/formats.hpp"
#include "convert/sha256.hpp"
#include "convert/streams.hpp"
#include "convert/tar.hpp"

using namespace accel::convert;

namespace {

constexpr uint64_t kMaxBytes = 1 << 20;  // keeps every run fast (sparse files expand)

TarLimits fuzz_limits() {
  TarLimits limits;
  limits.max_total_bytes = kMaxBytes;
  limits.max_entry_bytes = kMaxBytes;
  return limits;
}

struct Expected {
  std::string name, link_name, content;
  EntryType type;
  uint64_t size;
};

bool owned_by_writer(std::string_view name) {
  while (name.starts_with("./")) name.remove_prefix(2);
  while (name.starts_with("/")) name.remove_prefix(1);
  return name == kEstargzTocName || name == ".no.prefetch.landmark" || name == ".prefetch.landmark";
}

template <class Source>  // a ByteSource, or a TarReader's current entry
std::string read_all(Source& source) {
  std::string out;
  char buf[16384];
  while (size_t n = source.read(buf, sizeof buf)) out.append(buf, n);
  return out;
}

// The first `n` decompressed bytes of the gzip members starting at `offset` in `blob`.
std::string inflate_at(const std::string& blob, uint64_t offset, uint64_t n) {
  if (offset >= blob.size()) __builtin_trap();
  MemorySource source(std::string_view(blob).substr(offset));
  auto plain = open_decompressed(source);
  std::string out(n, '\0');
  size_t got = 0;
  while (got < n) {
    size_t r = plain->read(out.data() + got, n - got);
    if (r == 0) __builtin_trap();
    got += r;
  }
  return out;
}

void check_blob(const std::string& blob, const ConvertedLayer& layer, const std::vector<Expected>& expected) {
  if (Sha256::of(blob) != layer.digest || blob.size() != layer.size) __builtin_trap();

  // The whole blob is one tar.gz.
  MemorySource compressed(blob);
  std::string tar = read_all(*open_decompressed(compressed));
  if (Sha256::of(tar) != layer.diff_id || tar.size() != layer.uncompressed_size) __builtin_trap();
  MemorySource tar_source(tar);
  TarLimits limits = fuzz_limits();
  limits.max_total_bytes = limits.max_entry_bytes = 64 << 20;  // the TOC is content too
  TarReader reader(tar_source, limits);
  TarEntry entry;
  if (!reader.next(entry) || entry.name != ".no.prefetch.landmark" || entry.size != 1) __builtin_trap();
  std::vector<std::string> contents;  // by position in `expected`
  for (const auto& e : expected) {
    if (!reader.next(entry) || entry.name != e.name || entry.type != e.type || entry.link_name != e.link_name)
      __builtin_trap();
    const uint64_t size = e.type == EntryType::regular ? e.size : 0;
    if (entry.size != size) __builtin_trap();
    std::string content = read_all(reader);
    if (e.type == EntryType::regular && content != e.content) __builtin_trap();
    contents.push_back(std::move(content));
  }
  if (!reader.next(entry) || entry.name != kEstargzTocName) __builtin_trap();
  const std::string toc = read_all(reader);
  if (reader.next(entry)) __builtin_trap();

  // The footer names the TOC's member; the TOC is what the annotation's digest says.
  if (blob.size() < 51) __builtin_trap();
  const std::string footer = blob.substr(blob.size() - 51);
  if (footer.compare(32, 6, "STARGZ") != 0) __builtin_trap();
  const uint64_t toc_offset = std::stoull(footer.substr(16, 16), nullptr, 16);
  MemorySource toc_member(std::string_view(blob).substr(toc_offset, blob.size() - 51 - toc_offset));
  std::string toc_tar = read_all(*open_decompressed(toc_member));
  if (toc_tar.find(toc) == std::string::npos) __builtin_trap();
  if (Sha256::of(toc) != layer.annotations.at(std::string(kEstargzTocDigestAnnotation))) __builtin_trap();

  // One record per entry, in order (the landmark first), each file's chunks after it. Every
  // chunk: a member starts at its offset and holds its bytes first.
  auto json = nlohmann::json::parse(toc);  // throws (and so crashes the target) if malformed
  size_t next = 0;      // the next entry of `expected` to meet
  std::string current;  // the content of the file whose chunks follow
  bool first = true;
  for (const auto& record : json.at("entries")) {
    const std::string type = record.at("type");
    const std::string name = record.at("name");
    if (type != "chunk") {
      if (first) {
        if (name != ".no.prefetch.landmark") __builtin_trap();
        current = std::string(1, '\x0f');
      } else {
        if (next >= expected.size() || expected[next].name != name) __builtin_trap();
        current = contents[next++];
      }
      first = false;
      if (type == "reg" && current.size() != record.value("size", uint64_t{0})) __builtin_trap();
    }
    if ((type == "reg" || type == "chunk") && record.contains("offset")) {
      const uint64_t from = record.value("chunkOffset", uint64_t{0});
      const uint64_t listed = record.value("chunkSize", uint64_t{0});
      if (from > current.size()) __builtin_trap();
      const uint64_t size = listed ? listed : current.size() - from;
      if (from + size > current.size()) __builtin_trap();
      const std::string chunk = inflate_at(blob, record.at("offset"), size);
      if (chunk != current.substr(from, size)) __builtin_trap();
      if (Sha256::of(chunk) != record.at("chunkDigest").get<std::string>()) __builtin_trap();
    }
  }
  if (next != expected.size()) __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const char* bytes = reinterpret_cast<const char*>(data);

  // What the input holds, read on its own.
  std::vector<Expected> expected;
  bool readable = true;
  try {
    MemorySource source(std::string_view(bytes, size));
    TarReader reader(source, fuzz_limits());
    TarEntry entry;
    while (reader.next(entry)) {
      std::string content = read_all(reader);
      if (owned_by_writer(entry.name)) continue;
      expected.push_back({entry.name, entry.link_name, std::move(content), entry.type, entry.size});
    }
  } catch (const ConvertError&) {
    readable = false;
  }

  LayerOptions options;
  options.threads = 1;
  options.compression_level = 1 + size % 3;
  options.chunk_size = 64 + size % 1000;  // small: large files split into many chunks
  options.max_uncompressed_bytes = kMaxBytes;
  MemorySource source(std::string_view(bytes, size));
  StringSink sink;
  ConvertedLayer layer;
  try {
    layer = find_format("estargz")->convert_layer(source, sink, options);
  } catch (const ConvertError&) {
    return 0;  // refused: also when the input read cleanly (e.g. a name tar cannot re-encode)
  }
  if (!readable) __builtin_trap();  // converted something the tar reader refuses
  check_blob(sink.data, layer, expected);
  return 0;
}
