// The eStargz half of `accel-proxy check`: what stargz-snapshotter checks when it mounts a layer
// lazily (the footer, the TOC and its digest against the layer annotation, every chunk's digest
// as it is read from the chunk's own offset), plus what a plain pull checks (the blob's digest,
// the diff_id of its decompressed bytes). Layout: docs/formats/estargz.md and
// stargz-snapshotter/docs/estargz.md.
#include <algorithm>
#include <cstring>
#include <map>
#include <optional>
#include <set>
#include <utility>

#include "convert/estargz.hpp"
#include "convert/image_check.hpp"
#include "convert/sha256.hpp"
#include "convert/streams.hpp"
#include "convert/tar.hpp"

namespace accel::convert {

namespace {

constexpr size_t kLegacyFooterSize = 47;            // Google CRFS's stargz, still read by stargz-snapshotter
constexpr uint64_t kMaxTocBytes = uint64_t{64} << 20;
constexpr uint64_t kMaxConfigBytes = uint64_t{16} << 20;
constexpr size_t kMaxChunkFaults = 100;              // per layer; the rest are counted, not listed
constexpr uint64_t kMaxForwardSkip = uint64_t{1} << 20;  // read through smaller gaps rather than reopen
constexpr size_t kBuffer = 256 * 1024;

std::string short_digest(const std::string& digest) { return digest.substr(0, 19); }

std::string hex_bytes(std::string_view bytes) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  for (unsigned char c : bytes) {
    out += digits[c >> 4];
    out += digits[c & 15];
  }
  return out;
}

// Reads until `size` bytes or the end of the source; returns how many were read.
size_t read_full(ByteSource& source, void* out, size_t size) {
  size_t got = 0;
  while (got < size) {
    size_t n = source.read(static_cast<char*>(out) + got, size - got);
    if (n == 0) break;
    got += n;
  }
  return got;
}

// Reads and drops up to `count` bytes, feeding them to `hash` when given; returns how many.
uint64_t consume(ByteSource& source, uint64_t count, Sha256* hash = nullptr, Sha256* hash2 = nullptr) {
  std::vector<char> buf(static_cast<size_t>(std::min<uint64_t>(count, kBuffer)));
  uint64_t done = 0;
  while (done < count) {
    size_t n = source.read(buf.data(), static_cast<size_t>(std::min<uint64_t>(buf.size(), count - done)));
    if (n == 0) break;
    if (hash) hash->update(buf.data(), n);
    if (hash2) hash2->update(buf.data(), n);
    done += n;
  }
  return done;
}

bool is_sha256(const std::string& digest) {
  if (digest.size() != 71 || !digest.starts_with("sha256:")) return false;
  return std::all_of(digest.begin() + 7, digest.end(),
                     [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

// --- reading the blob ---------------------------------------------------------------------------

// Reads a blob's raw bytes from increasing offsets. One stream is kept while the next offset is
// a little ahead of it (payloads are visited in blob order, so a registry blob is read in about
// one pass), and reopened at the offset otherwise, as a lazy reader's range request would.
class BlobCursor {
 public:
  BlobCursor(ImageSource& source, const Descriptor& blob) : source_(source), blob_(blob) {}

  // The `length` raw bytes at `offset` (fewer when the blob ends first).
  class Region : public ByteSource {
   public:
    Region(BlobCursor& cursor, uint64_t length) : cursor_(cursor), left_(length) {}
    size_t read(void* out, size_t size) override {
      if (left_ == 0 || size == 0) return 0;
      size_t n = cursor_.stream_->read(out, static_cast<size_t>(std::min<uint64_t>(size, left_)));
      cursor_.position_ += n;
      left_ -= n;
      return n;
    }

   private:
    BlobCursor& cursor_;
    uint64_t left_;
  };

  Region region(uint64_t offset, uint64_t length) {
    if (!stream_ || offset < position_ || offset - position_ > kMaxForwardSkip) {
      stream_.reset();  // a failed open must not leave a stream at the wrong position
      stream_ = source_.open_blob_at(blob_, offset);
      position_ = offset;
    } else {
      position_ += consume(*stream_, offset - position_);
      if (position_ != offset) throw ConvertError("the blob ends at " + std::to_string(position_));
    }
    return Region(*this, length);
  }

  // After an error the stream's position is unknown: the next region reopens.
  void reset() { stream_.reset(); }

 private:
  ImageSource& source_;
  Descriptor blob_;
  std::unique_ptr<ByteSource> stream_;
  uint64_t position_ = 0;
};

// --- footer ---------------------------------------------------------------------------------

struct Footer {
  uint64_t toc_offset = 0;
  size_t size = 0;
  bool legacy = false;
};

std::optional<uint64_t> parse_hex16(std::string_view s) {
  if (s.size() != 16) return std::nullopt;
  uint64_t v = 0;
  for (char c : s) {
    int d = -1;
    if (c >= '0' && c <= '9') d = c - '0';
    else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
    else if (c >= 'A' && c <= 'F') d = c - 'A' + 10;  // Go's ParseInt takes either case
    if (d < 0) return std::nullopt;
    v = v << 4 | static_cast<uint64_t>(d);
  }
  return v;
}

uint16_t le16(std::string_view s, size_t at) {
  return static_cast<uint16_t>(static_cast<unsigned char>(s[at]) | static_cast<unsigned char>(s[at + 1]) << 8);
}

// Whether `bytes` is exactly one gzip member that decompresses to nothing.
bool is_empty_gzip_member(std::string_view bytes) {
  try {
    MemorySource in(bytes);
    Compression c;
    auto out = open_decompressed(in, &c);
    char byte;
    return c == Compression::gzip && out->read(&byte, 1) == 0;
  } catch (const ConvertError&) {
    return false;
  }
}

// The eStargz footer: a gzip header with FEXTRA holding subfield "SG" of 22 bytes,
// "%016x" of the TOC offset then "STARGZ", and an empty body. Sets `why` when it is not one.
std::optional<Footer> parse_estargz_footer(std::string_view f, std::string& why) {
  auto refuse = [&](const char* reason) -> std::optional<Footer> {
    why = reason;
    return std::nullopt;
  };
  if (f.size() != kEstargzFooterSize) return refuse("the blob is shorter than a footer");
  if (f.substr(0, 3) != std::string_view("\x1f\x8b\x08", 3)) return refuse("it has no gzip header");
  if (!(f[3] & 0x04) || le16(f, 10) != 26) return refuse("its gzip header has no 26-byte extra field");
  if (f.substr(12, 2) != "SG" || le16(f, 14) != 22) return refuse("its extra field has no 22-byte SG subfield");
  if (f.substr(32, 6) != "STARGZ") return refuse("its SG subfield does not end in STARGZ");
  auto offset = parse_hex16(f.substr(16, 16));
  if (!offset) return refuse("the TOC offset in its SG subfield is not 16 hex digits");
  if (!is_empty_gzip_member(f)) return refuse("it is not a valid empty gzip member");
  return Footer{*offset, kEstargzFooterSize, false};
}

// The legacy stargz footer: the extra field is "%016xSTARGZ" itself, without a subfield header.
std::optional<Footer> parse_legacy_footer(std::string_view f) {
  if (f.size() != kLegacyFooterSize || f.substr(0, 3) != std::string_view("\x1f\x8b\x08", 3) || !(f[3] & 0x04) ||
      le16(f, 10) != 22 || f.substr(28, 6) != "STARGZ")
    return std::nullopt;
  auto offset = parse_hex16(f.substr(12, 16));
  if (!offset || !is_empty_gzip_member(f)) return std::nullopt;
  return Footer{*offset, kLegacyFooterSize, true};
}

// --- TOC ------------------------------------------------------------------------------------

// One reg or chunk entry's payload: `length` bytes of the file from `file_offset` on, found by
// decompressing the gzip member at `offset` and skipping `inner_offset` bytes.
struct Piece {
  uint64_t offset = 0;
  uint64_t inner_offset = 0;
  uint64_t file_offset = 0;
  uint64_t chunk_size = 0;  // as the TOC says (0: unset)
  uint64_t length = 0;      // as a reader takes it
  std::string digest;       // chunkDigest (or the file digest, see expected_digests)
  size_t entry = 0;         // index in the TOC
};

struct RegularFile {
  std::string name;
  uint64_t size = 0;
  std::string digest;  // of the whole content; may be empty
  std::vector<Piece> pieces;
};

struct Toc {
  size_t entries = 0;
  std::vector<RegularFile> files;  // non-empty regular files, in TOC order
  bool has_chunk_entries = false;
  std::vector<std::string> dangling_links;  // "name -> target" of hardlinks whose target is missing
};

// A TOC field that must be a non-negative integer when present (Go's decoder refuses others).
uint64_t u64_field(const nlohmann::json& entry, const char* key, size_t index) {
  auto it = entry.find(key);
  if (it == entry.end() || it->is_null()) return 0;
  if (it->is_number_unsigned()) return it->get<uint64_t>();
  if (it->is_number_integer() && it->get<int64_t>() >= 0) return static_cast<uint64_t>(it->get<int64_t>());
  throw ConvertError("TOC entry " + std::to_string(index) + ": \"" + key + "\" is not a non-negative integer");
}

std::string string_field(const nlohmann::json& entry, const char* key, size_t index) {
  auto it = entry.find(key);
  if (it == entry.end() || it->is_null()) return "";
  if (!it->is_string()) throw ConvertError("TOC entry " + std::to_string(index) + ": \"" + key + "\" is not a string");
  return it->get<std::string>();
}

// Groups the payload entries by file: a "chunk" entry belongs to the regular file before it.
Toc parse_toc(const std::string& json) {
  auto doc = nlohmann::json::parse(json, nullptr, false);
  if (doc.is_discarded() || !doc.is_object()) throw ConvertError("TOC is not a JSON object");
  if (!doc.contains("entries") || !doc["entries"].is_array()) throw ConvertError("TOC has no \"entries\" array");
  Toc toc;
  const auto& entries = doc["entries"];
  toc.entries = entries.size();
  bool last_was_file = false;  // the latest non-chunk entry is a regular file with content
  std::set<std::string> names;
  std::vector<std::pair<std::string, std::string>> hardlinks;
  for (size_t i = 0; i < entries.size(); ++i) {
    const auto& e = entries[i];
    if (!e.is_object()) throw ConvertError("TOC entry " + std::to_string(i) + " is not an object");
    const std::string type = string_field(e, "type", i);
    if (type != "chunk") names.insert(normalized_toc_name(string_field(e, "name", i)));
    if (type == "hardlink") hardlinks.emplace_back(string_field(e, "name", i), string_field(e, "linkName", i));
    if (type != "chunk") {
      last_was_file = type == "reg" && u64_field(e, "size", i) > 0;
      if (!last_was_file) continue;
      RegularFile file;
      file.name = string_field(e, "name", i);
      file.size = u64_field(e, "size", i);
      file.digest = string_field(e, "digest", i);
      toc.files.push_back(std::move(file));
    } else {
      toc.has_chunk_entries = true;
      if (!last_was_file)
        throw ConvertError("TOC entry " + std::to_string(i) + " is a chunk that follows no regular file with content");
    }
    Piece p;
    p.entry = i;
    p.offset = u64_field(e, "offset", i);
    p.inner_offset = u64_field(e, "innerOffset", i);
    p.file_offset = u64_field(e, "chunkOffset", i);
    p.chunk_size = u64_field(e, "chunkSize", i);
    p.digest = string_field(e, "chunkDigest", i);
    toc.files.back().pieces.push_back(std::move(p));
  }
  // A reader resolves every hardlink when it mounts the layer, and refuses it if one dangles.
  for (const auto& [name, target] : hardlinks)
    if (!names.count(normalized_toc_name(target))) toc.dangling_links.push_back(name + " -> " + target);
  // A piece without chunkSize runs to the next piece of its file, or to the file's end.
  for (auto& file : toc.files) {
    for (size_t k = 0; k < file.pieces.size(); ++k) {
      Piece& p = file.pieces[k];
      const uint64_t end = k + 1 < file.pieces.size() ? file.pieces[k + 1].file_offset : file.size;
      p.length = p.chunk_size ? p.chunk_size : (end > p.file_offset ? end - p.file_offset : 0);
    }
  }
  return toc;
}

// --- one layer ------------------------------------------------------------------------------

class LayerCheck {
 public:
  LayerCheck(ImageSource& source, const Descriptor& layer, const nlohmann::json& annotations, std::string diff_id,
             CheckReport& report)
      : source_(source),
        layer_(layer),
        annotations_(annotations),
        diff_id_(std::move(diff_id)),
        report_(report),
        where_("layer " + short_digest(layer.digest) + ": "),
        cursor_(source, layer) {}

  void run() {
    const size_t faults_before = report_.faults.size();
    try {
      check_blob();
      auto footer = read_footer();
      if (!footer) return;
      auto toc_json = read_toc(*footer);
      if (!toc_json) return;
      Toc toc = parse_toc(*toc_json);
      toc_json.reset();
      check_toc_structure(toc, footer->toc_offset);
      verify_files(toc, footer->toc_offset);
      if (report_.faults.size() == faults_before)
        report_.passed.push_back(where_ + (footer->legacy ? "legacy stargz footer, TOC (" : "footer, TOC (") +
                                 std::to_string(toc.entries) + " entries) and " + std::to_string(chunks_) +
                                 " chunks verified; blob digest, " + (diff_id_.empty() ? "" : "diff_id, ") +
                                 std::to_string(file_digests_) + " file digests match");
    } catch (const ConvertError& e) {
      fault(e.what());
    }
  }

 private:
  void fault(const std::string& what) { report_.faults.push_back(where_ + what); }

  // What any pull checks: the blob's bytes against the digest and size, and its decompressed
  // bytes against the config's diff_id. Also learns the blob's real size (the footer is at its
  // end, wherever the descriptor says the end is).
  void check_blob() {
    auto raw = source_.open_blob(layer_);
    HashingSource compressed(*raw);
    try {
      auto tar = open_decompressed(compressed);
      HashingSource uncompressed(*tar);
      drain(uncompressed);
      const std::string diff_id = uncompressed.digest();  // digest() resets the hash: once only
      if (!diff_id_.empty() && diff_id != diff_id_)
        fault("decompressed bytes " + diff_id + " do not match the config's diff_id " + diff_id_);
      auto size = annotations_.find(std::string(kEstargzUncompressedSizeAnnotation));
      if (size != annotations_.end() && size->is_string() && *size != std::to_string(uncompressed.bytes()))
        fault(std::string(kEstargzUncompressedSizeAnnotation) + " is " + size->get<std::string>() +
              " but the layer decompresses to " + std::to_string(uncompressed.bytes()) + " bytes");
    } catch (const ConvertError& e) {
      fault(std::string("the layer does not decompress: ") + e.what());
      drain(compressed);
    }
    blob_size_ = compressed.bytes();
    const std::string digest = compressed.digest();
    if (digest != layer_.digest) fault("layer bytes do not match digest (they hash to " + digest + ")");
    if (blob_size_ != layer_.size)
      fault("the blob has " + std::to_string(blob_size_) + " bytes, the descriptor says " +
            std::to_string(layer_.size));
  }

  // The last 51 bytes (or the legacy 47) name the TOC's offset.
  std::optional<Footer> read_footer() {
    const size_t n = static_cast<size_t>(std::min<uint64_t>(blob_size_, kEstargzFooterSize));
    std::string tail(n, '\0');
    auto in = source_.open_blob_at(layer_, blob_size_ - n);
    tail.resize(read_full(*in, tail.data(), n));
    std::string why;
    auto footer = parse_estargz_footer(tail, why);
    if (!footer && tail.size() >= kLegacyFooterSize)
      footer = parse_legacy_footer(std::string_view(tail).substr(tail.size() - kLegacyFooterSize));
    if (!footer) {
      fault("footer is not an eStargz footer: " + why + " (it starts " +
            hex_bytes(std::string_view(tail).substr(0, 16)) + "…)");
      return std::nullopt;
    }
    if (footer->toc_offset >= blob_size_ - footer->size) {
      fault("the footer's TOC offset " + std::to_string(footer->toc_offset) + " is not before the footer at " +
            std::to_string(blob_size_ - footer->size));
      return std::nullopt;
    }
    return footer;
  }

  // The TOC member: a tar whose first entry is stargz.index.json, from the TOC offset to the
  // footer; its sha256 must equal the layer's toc.digest annotation.
  std::optional<std::string> read_toc(const Footer& footer) {
    const std::string at = "TOC at offset " + std::to_string(footer.toc_offset) + ": ";
    std::string json;
    try {
      auto region = cursor_.region(footer.toc_offset, blob_size_ - footer.size - footer.toc_offset);
      Compression c;
      auto gz = open_decompressed(region, &c);
      if (c != Compression::gzip) throw ConvertError("no gzip member starts there");
      TarLimits limits;
      limits.max_entry_bytes = limits.max_total_bytes = kMaxTocBytes;
      TarReader tar(*gz, limits);
      TarEntry entry;
      if (!tar.next(entry)) throw ConvertError("the tar holds no entry");
      if (entry.name != kEstargzTocName)
        throw ConvertError("the first tar entry is " + entry.name + ", not " + std::string(kEstargzTocName));
      if (entry.type != EntryType::regular) throw ConvertError(std::string(kEstargzTocName) + " is not a regular file");
      json.resize(static_cast<size_t>(entry.size));
      size_t got = 0;
      while (got < json.size())
        if (size_t n = tar.read(json.data() + got, json.size() - got)) got += n;
        else throw ConvertError("the TOC JSON is truncated");
      drain(*gz);  // the rest of the member (end of archive, gzip trailer) must be sound too
    } catch (const ConvertError& e) {
      cursor_.reset();
      fault(at + e.what());
      return std::nullopt;
    }
    const std::string digest = Sha256::of(json);
    auto annotation = annotations_.find(std::string(kEstargzTocDigestAnnotation));
    if (annotation == annotations_.end() || !annotation->is_string())
      fault("no " + std::string(kEstargzTocDigestAnnotation) + " annotation (the TOC's digest is " + digest + ")");
    else if (*annotation != digest)
      fault("TOC digest " + digest + " does not match annotation " + annotation->get<std::string>());
    return json;
  }

  std::string describe(const RegularFile& file, const Piece& p) const {
    std::string s = "chunk of " + file.name + " at offset " + std::to_string(p.offset);
    if (p.inner_offset) s += " (inner offset " + std::to_string(p.inner_offset) + ",";
    else s += " (";
    return s + "file offset " + std::to_string(p.file_offset) + ", " + std::to_string(p.length) + " bytes)";
  }

  // What stargz-snapshotter demands before any chunk is read: hardlink targets that exist, a
  // digest for every payload, each (offset, inner offset) used once, payloads before the TOC;
  // and pieces that cover each file exactly, or a read would return the wrong bytes.
  void check_toc_structure(Toc& toc, uint64_t toc_offset) {
    for (const auto& link : toc.dangling_links) fault("hardlink " + link + ": the target is not in the TOC");
    std::set<std::pair<uint64_t, uint64_t>> seen;
    for (auto& file : toc.files) {
      uint64_t covered = 0;
      for (auto& p : file.pieces) {
        if (p.digest.empty() && !toc.has_chunk_entries && file.pieces.size() == 1) p.digest = file.digest;
        if (p.digest.empty()) fault(describe(file, p) + ": the TOC gives no chunkDigest");
        else if (!is_sha256(p.digest))
          fault(describe(file, p) + ": chunkDigest " + p.digest + " is not a sha256 digest");
        if (p.offset == 0 || p.offset >= toc_offset)
          fault(describe(file, p) + ": the offset is not inside the blob's payload (the TOC is at " +
                std::to_string(toc_offset) + ")");
        if (!seen.insert({p.offset, p.inner_offset}).second) fault(describe(file, p) + ": the offset is used twice");
        if (p.file_offset != covered)
          fault(describe(file, p) + ": it should start at file offset " + std::to_string(covered));
        if (p.length == 0) fault(describe(file, p) + ": the chunk is empty");
        covered = p.file_offset + p.length;
      }
      if (covered != file.size)
        fault("chunks of " + file.name + " end at file offset " + std::to_string(covered) + ", its size is " +
              std::to_string(file.size));
      if (!file.digest.empty() && !is_sha256(file.digest))
        fault("file " + file.name + ": digest " + file.digest + " is not a sha256 digest");
    }
  }

  // A gzip member's compressed extent ends where the next payload's member starts, or at the TOC.
  static std::vector<uint64_t> payload_offsets(const Toc& toc, uint64_t toc_offset) {
    std::vector<uint64_t> offsets{toc_offset};
    for (const auto& file : toc.files)
      for (const auto& p : file.pieces) offsets.push_back(p.offset);
    std::sort(offsets.begin(), offsets.end());
    offsets.erase(std::unique(offsets.begin(), offsets.end()), offsets.end());
    return offsets;
  }

  // Reads every file's pieces as a lazy reader would, each from its own offset, checking every
  // chunk's digest and the whole file's digest.
  void verify_files(const Toc& toc, uint64_t toc_offset) {
    const auto offsets = payload_offsets(toc, toc_offset);
    for (const auto& file : toc.files) {
      Sha256 file_hash;
      bool whole = true;  // every piece was read in full, in file order
      uint64_t expected_next = 0;
      for (const auto& p : file.pieces) {
        if (p.offset == 0 || p.offset >= toc_offset || p.length == 0) {
          whole = false;  // already reported
          continue;
        }
        auto next = std::upper_bound(offsets.begin(), offsets.end(), p.offset);
        const uint64_t extent = (next == offsets.end() ? toc_offset : *next) - p.offset;
        const bool in_order = whole && p.file_offset == expected_next;
        whole = verify_piece(file, p, extent, in_order ? &file_hash : nullptr) && in_order;
        expected_next = p.file_offset + p.length;
      }
      if (file.digest.empty() || !is_sha256(file.digest)) continue;
      if (!whole || expected_next != file.size) continue;  // the faults above say why
      const std::string got = file_hash.digest();
      if (got != file.digest) chunk_fault("file " + file.name + ": digest " + got + " expected " + file.digest);
      else ++file_digests_;
    }
    if (chunk_faults_ > kMaxChunkFaults)
      fault(std::to_string(chunk_faults_ - kMaxChunkFaults) + " more chunk faults not listed");
  }

  // Decompresses one piece from the member at its offset; false when it could not be read.
  bool verify_piece(const RegularFile& file, const Piece& p, uint64_t extent, Sha256* file_hash) {
    Sha256 chunk_hash;
    try {
      auto region = cursor_.region(p.offset, extent);
      Compression c;
      auto gz = open_decompressed(region, &c);
      if (c != Compression::gzip) throw ConvertError("no gzip member starts at the offset");
      if (consume(*gz, p.inner_offset) != p.inner_offset)
        throw ConvertError("the member ends before the inner offset");
      const uint64_t got = consume(*gz, p.length, &chunk_hash, file_hash);
      if (got != p.length)
        throw ConvertError("the compressed data (" + std::to_string(extent) +
                           " bytes up to the next member) ends after " + std::to_string(got) + " bytes");
    } catch (const ConvertError& e) {
      cursor_.reset();
      chunk_fault(describe(file, p) + ": " + e.what());
      return false;
    }
    const std::string digest = chunk_hash.digest();
    if (p.digest.empty() || !is_sha256(p.digest)) return true;  // reported by check_toc_structure
    if (digest != p.digest) chunk_fault(describe(file, p) + ": digest " + digest + " expected " + p.digest);
    else ++chunks_;
    return true;
  }

  void chunk_fault(const std::string& what) {
    if (++chunk_faults_ <= kMaxChunkFaults) fault(what);
  }

  ImageSource& source_;
  Descriptor layer_;
  const nlohmann::json& annotations_;
  std::string diff_id_;
  CheckReport& report_;
  std::string where_;
  BlobCursor cursor_;
  uint64_t blob_size_ = 0;
  size_t chunks_ = 0, file_digests_ = 0, chunk_faults_ = 0;
};

Descriptor descriptor_of(const nlohmann::json& d, const std::string& what) {
  if (!d.is_object() || !d.contains("digest") || !d["digest"].is_string() || !d.contains("size") ||
      !d["size"].is_number_unsigned())
    throw ConvertError("malformed " + what + " descriptor " + d.dump().substr(0, 200));
  Descriptor out;
  out.digest = d["digest"].get<std::string>();
  out.size = d["size"].get<uint64_t>();
  out.media_type = d.value("mediaType", "");
  if (!is_sha256(out.digest))
    throw ConvertError(what + " digest " + out.digest.substr(0, 80) + " is not a sha256 digest");
  return out;
}

// The config's rootfs.diff_ids (empty when it cannot be read: that is reported once).
std::vector<std::string> read_diff_ids(ImageSource& source, const nlohmann::json& manifest, const std::string& where,
                                       CheckReport& report) {
  try {
    if (!manifest.contains("config")) throw ConvertError("the manifest has no config");
    Descriptor config = descriptor_of(manifest["config"], "config");
    if (config.size > kMaxConfigBytes) throw ConvertError("the config is larger than 16 MiB");
    auto raw = source.open_blob(config);
    std::string bytes(static_cast<size_t>(config.size), '\0');
    bytes.resize(read_full(*raw, bytes.data(), bytes.size()));
    if (Sha256::of(bytes) != config.digest) throw ConvertError("the config's bytes do not match its digest");
    auto doc = nlohmann::json::parse(bytes, nullptr, false);
    if (doc.is_discarded() || !doc.is_object()) throw ConvertError("the config is not a JSON object");
    std::vector<std::string> out;
    for (const auto& id : doc.value("rootfs", nlohmann::json::object()).value("diff_ids", nlohmann::json::array()))
      out.push_back(id.is_string() ? id.get<std::string>() : "");
    return out;
  } catch (const ConvertError& e) {
    report.faults.push_back(where + "config: " + e.what());
    return {};
  }
}

bool is_foreign(const std::string& media_type) {
  return media_type.find("foreign") != std::string::npos || media_type.find("nondistributable") != std::string::npos;
}

}  // namespace

void check_estargz_manifest(ImageSource& source, const ManifestBytes& manifest, const CheckOptions&,
                            CheckReport& report) {
  const std::string where = "manifest " + short_digest(manifest.digest) + ": ";
  nlohmann::json doc;
  try {
    doc = parse_manifest(manifest.bytes);
    if (!doc.contains("layers") || !doc["layers"].is_array() || doc["layers"].empty()) throw ConvertError("no layers");
  } catch (const ConvertError& e) {
    report.faults.push_back(where + e.what());
    return;
  }
  const auto diff_ids = read_diff_ids(source, doc, where, report);
  const auto& layers = doc["layers"];
  if (!diff_ids.empty() && diff_ids.size() != layers.size())
    report.faults.push_back(where + "the config lists " + std::to_string(diff_ids.size()) + " diff_ids for " +
                            std::to_string(layers.size()) + " layers");
  for (size_t i = 0; i < layers.size(); ++i) {
    try {
      Descriptor layer = descriptor_of(layers[i], "layer " + std::to_string(i));
      if (is_foreign(layer.media_type)) {
        report.passed.push_back("layer " + short_digest(layer.digest) + ": foreign layer, not checked");
        continue;
      }
      if (layer.media_type.find("zstd") != std::string::npos)
        report.faults.push_back("layer " + short_digest(layer.digest) + ": media type " + layer.media_type +
                                " is not a gzip layer; eStargz layers are gzip");
      static const nlohmann::json kNoAnnotations = nlohmann::json::object();
      const auto& annotations = layers[i].contains("annotations") && layers[i]["annotations"].is_object()
                                    ? layers[i]["annotations"]
                                    : kNoAnnotations;
      LayerCheck(source, layer, annotations, i < diff_ids.size() ? diff_ids[i] : "", report).run();
    } catch (const ConvertError& e) {
      report.faults.push_back(where + "layer " + std::to_string(i) + ": " + e.what());
    }
  }
}

std::string normalized_toc_name(std::string_view name) {
  std::string out;
  size_t i = 0;
  while (i <= name.size()) {
    size_t slash = std::min(name.find('/', i), name.size());
    std::string_view part = name.substr(i, slash - i);
    if (!part.empty() && part != ".") {
      if (!out.empty()) out += '/';
      out += part;
    }
    i = slash + 1;
  }
  return out;
}

}  // namespace accel::convert
