#include "convert/estargz.hpp"

#include <cstdio>
#include <cstring>
#include <ctime>
#include <openssl/evp.h>
#include <functional>
#include <map>
#include <set>
#include <unistd.h>

#include "convert/gzip_members.hpp"
#include "convert/sha256.hpp"
#include "convert/streams.hpp"
#include "convert/tar.hpp"

namespace accel::convert {

namespace {

constexpr std::string_view kNoPrefetchLandmark = ".no.prefetch.landmark";
constexpr std::string_view kPrefetchLandmark = ".prefetch.landmark";
constexpr char kLandmarkContents = 0x0f;
// A run of header-only entries (directories, links, empty files) is cut into members of about
// this size, so memory stays bounded; readers treat extra members as any other.
constexpr size_t kMaxHeaderMember = 4 << 20;
constexpr size_t kNoMember = static_cast<size_t>(-1);
// Padding and the next entry's header (and a long name's) fit in this much after a payload.
constexpr size_t kFramingReserve = 4096;

// Base name without "./" or "/" prefixes, for recognising entries the writer owns.
std::string_view clean_name(std::string_view name) {
  while (name.starts_with("./")) name.remove_prefix(2);
  while (name.starts_with("/")) name.remove_prefix(1);
  return name;
}

// The TOC's modtime: UTC, to the nearest second (halves round up, as Go's Time.Round does),
// left out for Unix second 0 like the reference (which checks before rounding).
std::string rfc3339(const TarTime& time) {
  if (time.seconds == 0) return "";
  int64_t seconds = time.seconds + (time.nanoseconds >= 500'000'000 ? 1 : 0);
  std::time_t t = static_cast<std::time_t>(seconds);
  std::tm tm{};
  if (!gmtime_r(&t, &tm)) return "";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02dZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
                tm.tm_hour, tm.tm_min, tm.tm_sec);
  return buf;
}

std::string base64(std::string_view raw) {
  std::string out(4 * ((raw.size() + 2) / 3) + 1, '\0');
  int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                          reinterpret_cast<const unsigned char*>(raw.data()), static_cast<int>(raw.size()));
  out.resize(static_cast<size_t>(n));
  return out;
}

std::string json_string(std::string_view s) {
  return nlohmann::json(std::string(s)).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

const char* toc_type(EntryType t) {
  switch (t) {
    case EntryType::regular: return "reg";
    case EntryType::hardlink: return "hardlink";
    case EntryType::symlink: return "symlink";
    case EntryType::char_device: return "char";
    case EntryType::block_device: return "block";
    case EntryType::directory: return "dir";
    case EntryType::fifo: return "fifo";
  }
  return "reg";
}

// One TOC entry; `member` is resolved to a compressed offset once all members are written.
struct TocRecord {
  std::string name;
  const char* type = "reg";
  uint64_t size = 0;
  std::string modtime;
  std::string link_name;
  uint32_t mode = 0;
  uint64_t uid = 0, gid = 0;
  std::string uname, gname;
  size_t member = kNoMember;
  uint32_t dev_major = 0, dev_minor = 0;
  std::map<std::string, std::string> xattrs;
  std::string digest;
  uint64_t chunk_offset = 0;
  uint64_t chunk_size = 0;
  bool digest_is_chunk_digest = false;  // an unchunked file: its digest is its one chunk's
};

// Field order and omit-empty rules follow the reference's TOCEntry.
void append_json(std::string& out, const TocRecord& r, const ParallelGzipWriter& gz) {
  out += "{\"name\":" + json_string(r.name) + ",\"type\":\"" + r.type + "\"";
  if (r.size) out += ",\"size\":" + std::to_string(r.size);
  if (!r.modtime.empty()) out += ",\"modtime\":\"" + r.modtime + "\"";
  if (!r.link_name.empty()) out += ",\"linkName\":" + json_string(r.link_name);
  if (r.mode) out += ",\"mode\":" + std::to_string(r.mode);
  if (r.uid) out += ",\"uid\":" + std::to_string(r.uid);
  if (r.gid) out += ",\"gid\":" + std::to_string(r.gid);
  if (!r.uname.empty()) out += ",\"userName\":" + json_string(r.uname);
  if (!r.gname.empty()) out += ",\"groupName\":" + json_string(r.gname);
  if (r.member != kNoMember) out += ",\"offset\":" + std::to_string(gz.offset_of(r.member));
  if (r.dev_major) out += ",\"devMajor\":" + std::to_string(r.dev_major);
  if (r.dev_minor) out += ",\"devMinor\":" + std::to_string(r.dev_minor);
  if (!r.xattrs.empty()) {
    out += ",\"xattrs\":{";
    bool first = true;
    for (const auto& [k, v] : r.xattrs) {
      if (!first) out += ',';
      first = false;
      out += json_string(k) + ":\"" + base64(v) + "\"";
    }
    out += '}';
  }
  // Chunk digests are computed on the compression workers: the payload starts its member.
  static const std::string kNone;
  const std::string& chunk_digest = r.member != kNoMember ? gz.digest_of(r.member) : kNone;
  const std::string& digest = r.digest_is_chunk_digest ? chunk_digest : r.digest;
  if (!digest.empty()) out += ",\"digest\":\"" + digest + "\"";
  if (r.chunk_offset) out += ",\"chunkOffset\":" + std::to_string(r.chunk_offset);
  if (r.chunk_size) out += ",\"chunkSize\":" + std::to_string(r.chunk_size);
  if (!chunk_digest.empty()) out += ",\"chunkDigest\":\"" + chunk_digest + "\"";
  out += '}';
}

class EstargzWriter {
 public:
  EstargzWriter(ByteSink& out, const LayerOptions& options)
      : options_(options), blob_(&out), gz_(blob_, options.compression_level, options.threads) {}

  void add_landmark(std::string_view name) {
    TarEntry e;
    e.name = std::string(name);
    e.size = 1;
    char content = kLandmarkContents;
    MemorySource source(std::string_view(&content, 1));
    add_entry(e, source);
  }

  // Appends one entry; for regular files its content is read from `content`.
  void add_entry(const TarEntry& source_entry, ByteSource& content) {
    TarEntry entry = source_entry;
    std::erase_if(entry.other_pax, [](const auto& kv) { return kv.first.starts_with("GNU.sparse."); });
    if (entry.type != EntryType::regular) entry.size = 0;
    if (member_.size() > kMaxHeaderMember) close_member();
    append(TarWriter::encode_header(entry));

    TocRecord r;
    r.name = entry.name;
    r.type = toc_type(entry.type);
    r.size = entry.size;
    r.modtime = rfc3339(entry.mtime);
    if (entry.type == EntryType::symlink || entry.type == EntryType::hardlink) r.link_name = entry.link_name;
    r.mode = entry.mode;
    r.uid = entry.uid;
    r.gid = entry.gid;
    r.uname = entry.uname;
    r.gname = entry.gname;
    if (entry.type == EntryType::char_device || entry.type == EntryType::block_device) {
      r.dev_major = entry.dev_major;
      r.dev_minor = entry.dev_minor;
    }
    r.xattrs = entry.xattrs;
    if (entry.type != EntryType::regular || entry.size == 0) {
      toc_.push_back(std::move(r));
      return;
    }
    write_payload(std::move(r), content);
  }

  struct Result {
    std::string toc_digest;
  };

  // Writes the TOC member and the footer.
  Result finish() {
    close_member();
    gz_.flush();  // every member's offset is known from here on
    std::string toc = "{\"version\":1,\"entries\":[";
    for (size_t i = 0; i < toc_.size(); ++i) {
      if (i) toc += ',';
      append_json(toc, toc_[i], gz_);
    }
    toc += "]}";

    TarEntry toc_entry;
    toc_entry.name = std::string(kEstargzTocName);
    toc_entry.size = toc.size();
    append(TarWriter::encode_header(toc_entry));
    append(toc);
    append(std::string(padding(toc.size()), '\0'));
    append(std::string(1024, '\0'));  // end of archive
    const uint64_t toc_offset = gz_.bytes_written();
    close_member();
    gz_.flush();
    std::string footer = estargz_footer(toc_offset);
    gz_.write_raw(footer.data(), footer.size());
    return {Sha256::of(toc)};
  }

  HashingSink& blob() { return blob_; }
  HashingSink& uncompressed() { return diff_; }

 private:
  static size_t padding(uint64_t size) { return static_cast<size_t>((512 - size % 512) % 512); }

  void append(std::string_view bytes) {
    member_.append(bytes);
    diff_.write(bytes.data(), bytes.size());
  }

  void close_member() {
    if (member_.empty()) return;
    gz_.submit(std::move(member_), member_digest_prefix_);
    member_ = std::string();
    member_digest_prefix_ = 0;
    ++submitted_;
  }

  // The payload starts a new member; each further chunk does too. The member holding the last
  // chunk stays open for the padding and the headers that follow.
  void write_payload(TocRecord first, ByteSource& content) {
    close_member();
    const uint64_t size = first.size;
    const bool chunked = size > options_.chunk_size;
    Sha256 file_hash;
    const size_t first_index = toc_.size();
    uint64_t offset = 0;
    while (offset < size) {
      const size_t n = static_cast<size_t>(std::min<uint64_t>(options_.chunk_size, size - offset));
      const size_t member = submitted_;
      // Room for the padding and a few headers after the content: appending them must not
      // reallocate (and copy) a member the size of a chunk.
      member_.reserve(n + kFramingReserve);
      member_.resize(n);
      size_t got = 0;
      while (got < n) {
        size_t r = content.read(member_.data() + got, n - got);
        if (r == 0) throw ConvertError("tar entry " + first.name + " ends before its declared size");
        got += r;
      }
      diff_.write(member_.data(), n);
      member_digest_prefix_ = n;  // the chunk digest, computed with the compression
      if (chunked) file_hash.update(member_);
      TocRecord r;
      if (offset == 0) {
        r = std::move(first);
      } else {
        r.name = toc_[first_index].name;
        r.type = "chunk";
        r.chunk_offset = offset;
      }
      r.member = member;
      offset += n;
      if (chunked && offset < size) r.chunk_size = n;  // the last chunk runs to the end of the file
      r.digest_is_chunk_digest = !chunked;
      toc_.push_back(std::move(r));
      if (offset < size) close_member();
    }
    if (chunked) {
      toc_[first_index].digest = file_hash.digest();
      toc_[first_index].chunk_size = options_.chunk_size;
    }
    append(std::string(padding(size), '\0'));
  }

  const LayerOptions& options_;
  HashingSink blob_;
  HashingSink diff_{nullptr};
  ParallelGzipWriter gz_;
  std::string member_;
  size_t member_digest_prefix_ = 0;  // bytes of member_ its chunk digest covers
  size_t submitted_ = 0;
  std::vector<TocRecord> toc_;
};


}  // namespace

std::string estargz_footer(uint64_t toc_offset) {
  std::string f("\x1f\x8b\x08\x04\x00\x00\x00\x00\x00\xff", 10);
  f += std::string("\x1a\x00", 2);  // XLEN = 26
  f += "SG";
  f += std::string("\x16\x00", 2);  // LEN = 22
  char offset[17];
  std::snprintf(offset, sizeof offset, "%016llx", static_cast<unsigned long long>(toc_offset));
  f += offset;
  f += "STARGZ";
  f += std::string("\x01\x00\x00\xff\xff", 5);  // an empty stored deflate block
  f += std::string(8, '\0');                    // CRC32 and ISIZE of nothing
  return f;
}

bool EstargzFormat::is_converted(const nlohmann::json& layer) const {
  auto a = layer.find("annotations");
  return a != layer.end() && a->is_object() && a->contains(std::string(kEstargzTocDigestAnnotation));
}

namespace {

// The prioritized paths and every directory above them (so parents come before children).
std::set<std::string, std::less<>> prioritized_set(const std::vector<std::string>& files) {
  std::set<std::string, std::less<>> out;
  for (const auto& f : files) {
    std::string name(clean_name(f));
    while (!name.empty() && name.back() == '/') name.pop_back();
    if (name.empty()) continue;
    out.insert(name);
    for (size_t slash = name.find('/'); slash != std::string::npos; slash = name.find('/', slash + 1))
      out.insert(name.substr(0, slash));
  }
  return out;
}

bool is_prioritized(const std::set<std::string, std::less<>>& set, std::string_view name) {
  name = clean_name(name);
  while (!name.empty() && name.back() == '/') name.remove_suffix(1);
  return set.count(name) > 0;
}

// Copies the current entry of `reader` into a spool tar.
void spool_entry(TarWriter& spool, const TarEntry& entry, TarReader& reader) {
  spool.write_header(entry);
  if (entry.type == EntryType::regular) {
    std::vector<char> buf(1 << 20);
    while (size_t n = reader.read(buf.data(), buf.size())) spool.write_content(buf.data(), n);
  }
  spool.pad();
}

std::string without_slashes(std::string_view name) {
  name = clean_name(name);
  while (!name.empty() && name.back() == '/') name.remove_suffix(1);
  return std::string(name);
}

// A scratch file in `dir`, removed with this object.
struct SpoolFile {
  explicit SpoolFile(const std::string& dir) : path(dir + "/accel-spool-XXXXXX") {
    int fd = ::mkstemp(path.data());
    if (fd < 0) throw ConvertError("cannot create a spool file in " + dir);
    ::close(fd);
  }
  ~SpoolFile() { ::unlink(path.c_str()); }
  std::string path;
};

// The prioritized layout, as the reference builder's sortEntries does it: each listed path in
// list order (the order a start-up first read them), its parent directories and a hardlink's
// target before it, then the prefetch landmark, then everything else in stream order. The
// prioritized entries wait in a small spool of their own (read back by offset, in list order),
// the rest in an uncompressed spool file (never in memory).
template <class Writer, class OwnedByWriter>
void write_prioritized(Writer& writer, TarReader& reader, const LayerOptions& options, OwnedByWriter owned_by_writer) {
  const auto wanted = prioritized_set(options.prioritized_files);
  SpoolFile head_file(options.work_dir), rest_file(options.work_dir);
  std::map<std::string, uint64_t> head;  // name -> its entry's offset in the head spool (a later duplicate wins)
  std::map<std::string, std::string> links;  // prioritized hardlink -> target
  {
    FileSink head_sink(head_file.path, FileSink::Durability::scratch), rest_sink(rest_file.path, FileSink::Durability::scratch);
    TarWriter head_spool(head_sink), rest_spool(rest_sink);
    TarEntry entry;
    while (reader.next(entry)) {
      if (owned_by_writer(entry.name)) continue;
      if (!is_prioritized(wanted, entry.name)) {
        spool_entry(rest_spool, entry, reader);
        continue;
      }
      const std::string name = without_slashes(entry.name);
      head[name] = head_spool.bytes_written();
      if (entry.type == EntryType::hardlink) links[name] = without_slashes(entry.link_name);
      spool_entry(head_spool, entry, reader);
    }
    head_spool.finish();
    rest_spool.finish();
    head_sink.commit();
    rest_sink.commit();
  }
  // A prioritized hardlink's target (and its parents) that is not prioritized itself is moved
  // up too, into a spool of its own: a hardlink must follow its target for the tar to extract.
  std::set<std::string, std::less<>> moved_up;
  for (const auto& [link, target] : links)
    if (!head.count(target))
      for (const auto& name : prioritized_set({target}))
        if (!head.count(name)) moved_up.insert(name);
  SpoolFile moved_file(options.work_dir);
  std::map<std::string, uint64_t> moved;  // name -> offset in the moved spool
  if (!moved_up.empty()) {
    FileSink moved_sink(moved_file.path, FileSink::Durability::scratch);
    TarWriter moved_spool(moved_sink);
    FileSource spooled(rest_file.path);
    TarReader rest(spooled);
    TarEntry entry;
    while (rest.next(entry)) {
      const std::string name = without_slashes(entry.name);
      if (!moved_up.count(name)) continue;
      moved[name] = moved_spool.bytes_written();
      spool_entry(moved_spool, entry, rest);
    }
    moved_spool.finish();
    moved_sink.commit();
  }
  std::set<std::string> written;
  std::function<void(const std::string&)> put = [&](const std::string& name) {
    const bool in_head = head.count(name) > 0;
    if ((!in_head && !moved.count(name)) || !written.insert(name).second) return;
    for (size_t slash = name.find('/'); slash != std::string::npos; slash = name.find('/', slash + 1))
      put(name.substr(0, slash));
    if (auto link = links.find(name); link != links.end()) put(link->second);
    FileSource spooled(in_head ? head_file.path : moved_file.path, in_head ? head[name] : moved[name]);
    TarReader one(spooled);
    TarEntryContent content(one);
    TarEntry entry;
    if (!one.next(entry)) throw ConvertError("prioritized spool entry lost: " + name);
    writer.add_entry(entry, content);
  };
  for (const auto& f : options.prioritized_files) put(without_slashes(f));
  writer.add_landmark(kPrefetchLandmark);
  FileSource spooled(rest_file.path);
  TarReader rest(spooled);
  TarEntryContent rest_content(rest);
  TarEntry entry;
  while (rest.next(entry))
    if (!moved_up.count(without_slashes(entry.name))) writer.add_entry(entry, rest_content);
}

}  // namespace

ConvertedLayer EstargzFormat::convert_layer(ByteSource& tar, ByteSink& out, const LayerOptions& options) const {
  if (options.chunk_size == 0) throw ConvertError("estargz: chunk size must be positive");
  EstargzWriter writer(out, options);
  TarLimits limits;
  limits.max_total_bytes = options.max_uncompressed_bytes;
  limits.max_entry_bytes = options.max_uncompressed_bytes;
  TarReader reader(tar, limits);
  TarEntryContent content(reader);
  auto owned_by_writer = [](std::string_view name) {
    name = clean_name(name);
    return name == kEstargzTocName || name == kNoPrefetchLandmark || name == kPrefetchLandmark;
  };
  TarEntry entry;
  if (options.prioritized_files.empty()) {
    // Without a prioritized list the reference puts the no-prefetch landmark first.
    writer.add_landmark(kNoPrefetchLandmark);
    while (reader.next(entry))
      if (!owned_by_writer(entry.name)) writer.add_entry(entry, content);
  } else {
    write_prioritized(writer, reader, options, owned_by_writer);
  }
  auto result = writer.finish();

  ConvertedLayer layer;
  layer.digest = writer.blob().digest();
  layer.size = writer.blob().bytes();
  layer.diff_id = writer.uncompressed().digest();
  layer.uncompressed_size = writer.uncompressed().bytes();
  layer.media_type = "application/vnd.oci.image.layer.v1.tar+gzip";
  layer.annotations[std::string(kEstargzTocDigestAnnotation)] = result.toc_digest;
  layer.annotations[std::string(kEstargzUncompressedSizeAnnotation)] = std::to_string(layer.uncompressed_size);
  return layer;
}

}  // namespace accel::convert
