#include "convert/oci_layout.hpp"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <sys/stat.h>
#include <unistd.h>

#include "convert/sha256.hpp"
#include "convert/streams.hpp"

namespace accel::convert {

namespace {

constexpr const char* kRefName = "org.opencontainers.image.ref.name";

void make_dirs(const std::string& path) {
  std::string partial;
  for (size_t i = 0; i <= path.size(); ++i) {
    if (i == path.size() || path[i] == '/') {
      if (!partial.empty() && ::mkdir(partial.c_str(), 0755) != 0 && errno != EEXIST)
        throw ConvertError("cannot create " + partial + ": " + std::strerror(errno));
    }
    if (i < path.size()) partial += path[i];
  }
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw ConvertError("cannot read " + path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void write_file_atomically(const std::string& path, const std::string& bytes) {
  FileSink sink(path);
  sink.write(bytes.data(), bytes.size());
  sink.commit();
}

bool valid_sha256(const std::string& digest) {
  if (digest.size() != 71 || digest.rfind("sha256:", 0) != 0) return false;
  for (size_t i = 7; i < digest.size(); ++i)
    if (!std::isxdigit(static_cast<unsigned char>(digest[i])) || std::isupper(static_cast<unsigned char>(digest[i]))) return false;
  return true;
}

}  // namespace

OciLayout::OciLayout(std::string dir, bool create) : dir_(std::move(dir)) {
  struct stat st {};
  if (::stat((dir_ + "/oci-layout").c_str(), &st) == 0) return;
  if (!create) throw ConvertError(dir_ + " is not an OCI image layout (no oci-layout file)");
  make_dirs(dir_ + "/blobs/sha256");
  write_file_atomically(dir_ + "/oci-layout", "{\"imageLayoutVersion\":\"1.0.0\"}");
  write_file_atomically(dir_ + "/index.json", nlohmann::json{{"schemaVersion", 2}, {"mediaType", media_type::oci_index},
                                                             {"manifests", nlohmann::json::array()}}.dump());
}

std::string OciLayout::blob_path(const std::string& digest) const {
  if (!valid_sha256(digest)) throw ConvertError("invalid digest " + digest.substr(0, 80));
  return dir_ + "/blobs/sha256/" + digest.substr(7);
}

nlohmann::json OciLayout::read_index() const {
  auto doc = nlohmann::json::parse(read_file(dir_ + "/index.json"), nullptr, false);
  if (doc.is_discarded() || !doc.is_object()) throw ConvertError(dir_ + "/index.json is not valid JSON");
  if (!doc.contains("manifests") || !doc["manifests"].is_array()) doc["manifests"] = nlohmann::json::array();
  return doc;
}

void OciLayout::write_index(const nlohmann::json& index) { write_file_atomically(dir_ + "/index.json", index.dump()); }

ManifestBytes OciLayout::get_manifest(const std::string& reference) {
  std::string digest, media_type;
  if (reference.find(':') != std::string::npos) {
    digest = reference;
  }
  const auto index = read_index();  // a named copy: a temporary would die before the loop runs
  for (const auto& d : index["manifests"]) {
    bool match = digest.empty() ? d.value("annotations", nlohmann::json::object()).value(kRefName, "") == reference
                                : d.value("digest", "") == digest;
    if (match) {
      digest = d.value("digest", "");
      media_type = d.value("mediaType", "");
      break;
    }
  }
  if (digest.empty()) throw ConvertError("no image tagged '" + reference + "' in " + dir_);
  ManifestBytes m;
  m.bytes = read_file(blob_path(digest));
  m.digest = digest;
  if (media_type.empty()) {  // a child of an index: read its own mediaType
    auto doc = nlohmann::json::parse(m.bytes, nullptr, false);
    if (doc.is_object() && doc.contains("mediaType") && doc["mediaType"].is_string()) media_type = doc["mediaType"];
    else if (doc.is_object() && doc.contains("manifests")) media_type = media_type::oci_index;
    else media_type = media_type::oci_manifest;
  }
  m.media_type = media_type;
  return m;
}

std::unique_ptr<ByteSource> OciLayout::open_blob(const Descriptor& blob) {
  return std::make_unique<FileSource>(blob_path(blob.digest));
}

std::unique_ptr<ByteSource> OciLayout::open_blob_at(const Descriptor& blob, uint64_t offset) {
  return std::make_unique<FileSource>(blob_path(blob.digest), offset);
}

bool OciLayout::has_blob(const std::string& digest) {
  struct stat st {};
  return ::stat(blob_path(digest).c_str(), &st) == 0;
}

void OciLayout::put_blob(const Descriptor& blob, const std::string& path) {
  std::string dest = blob_path(blob.digest);
  if (::rename(path.c_str(), dest.c_str()) == 0) return;  // same filesystem: the file just moves
  // Copy through a FileSink (temporary file, fsync, rename): never a partial blob under its name.
  FileSource in(path);
  FileSink out(dest);
  std::vector<char> buf(1 << 20);
  while (size_t n = in.read(buf.data(), buf.size())) out.write(buf.data(), n);
  out.commit();
}

void OciLayout::put_manifest(const ManifestBytes& manifest, const std::string& tag) {
  if (!has_blob(manifest.digest)) write_file_atomically(blob_path(manifest.digest), manifest.bytes);
  if (tag.empty()) return;
  auto index = read_index();
  auto& list = index["manifests"];
  nlohmann::json kept = nlohmann::json::array();
  for (auto& d : list)
    if (d.value("annotations", nlohmann::json::object()).value(kRefName, "") != tag) kept.push_back(d);
  kept.push_back({{"mediaType", manifest.media_type},
                  {"digest", manifest.digest},
                  {"size", manifest.bytes.size()},
                  {"annotations", {{kRefName, tag}}}});
  index["manifests"] = kept;
  write_index(index);
}

}  // namespace accel::convert
