#include "cache/records.hpp"

#include <nlohmann/json.hpp>

namespace accel::cache {

namespace {

using nlohmann::json;

// Parses and reads a value; any defect (not JSON, missing field, wrong type) is a CacheError.
template <class Record, class Read>
Record decode(std::string_view bytes, const char* what, Read&& read) {
  try {
    json doc = json::parse(bytes);
    return read(doc);
  } catch (const json::exception& e) {
    throw CacheError(std::string("damaged ") + what + " record in the cache index: " + e.what());
  }
}

// Strings come from callers; invalid UTF-8 is refused rather than stored mangled.
std::string dump(const json& doc) {
  try {
    return doc.dump();
  } catch (const json::exception& e) {
    throw CacheError(std::string("cannot store a record in the cache index: ") + e.what());
  }
}

}  // namespace

std::string encode(const BlobEntry& entry) {
  return dump(json{{"s", entry.size}, {"m", entry.media_type}, {"a", entry.access_ms}});
}

std::string encode(const VariantRecord& record) {
  json doc{{"d", record.digest}, {"m", record.media_type}, {"s", record.size},
           {"b", record.blobs},  {"c", record.created}};
  if (!record.diff_id.empty()) doc["i"] = record.diff_id;
  if (!record.annotations.empty()) doc["n"] = record.annotations;
  return dump(doc);
}

std::string encode(const TagEntry& entry) { return dump(json{{"d", entry.digest}, {"e", entry.expires_ms}}); }

std::string encode(const FailureRecord& record) {
  return dump(json{{"r", record.reason}, {"n", record.attempts}, {"t", record.retry_after}});
}

BlobEntry decode_blob_entry(std::string_view bytes) {
  return decode<BlobEntry>(bytes, "blob", [](const json& doc) {
    return BlobEntry{doc.at("s").get<uint64_t>(), doc.at("m").get<std::string>(), doc.at("a").get<int64_t>()};
  });
}

VariantRecord decode_variant(std::string_view bytes) {
  return decode<VariantRecord>(bytes, "variant", [](const json& doc) {
    VariantRecord record;
    record.digest = doc.at("d").get<std::string>();
    record.media_type = doc.at("m").get<std::string>();
    record.size = doc.at("s").get<uint64_t>();
    record.diff_id = doc.value("i", std::string());
    if (doc.contains("n")) record.annotations = doc["n"].get<std::map<std::string, std::string>>();
    record.blobs = doc.at("b").get<std::vector<std::string>>();
    record.created = doc.at("c").get<int64_t>();
    return record;
  });
}

TagEntry decode_tag(std::string_view bytes) {
  return decode<TagEntry>(bytes, "tag", [](const json& doc) {
    return TagEntry{doc.at("d").get<std::string>(), doc.at("e").get<int64_t>()};
  });
}

FailureRecord decode_failure(std::string_view bytes) {
  return decode<FailureRecord>(bytes, "failure", [](const json& doc) {
    return FailureRecord{doc.at("r").get<std::string>(), doc.at("n").get<int>(), doc.at("t").get<int64_t>()};
  });
}

}  // namespace accel::cache
