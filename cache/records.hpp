// How the index stores its values: compact JSON objects with short field names (readable with
// mdb_dump when debugging). Decoding a damaged value throws CacheError.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "cache/cache.hpp"

namespace accel::cache {

// The index entry of one blob file.
struct BlobEntry {
  uint64_t size = 0;
  std::string media_type;
  int64_t access_ms = 0;  // last access, unix milliseconds (finer than BlobInfo for LRU order)
};

struct TagEntry {
  std::string digest;
  int64_t expires_ms = 0;  // unix milliseconds
};

std::string encode(const BlobEntry& entry);
std::string encode(const VariantRecord& record);
std::string encode(const TagEntry& entry);
std::string encode(const FailureRecord& record);

BlobEntry decode_blob_entry(std::string_view bytes);
VariantRecord decode_variant(std::string_view bytes);
TagEntry decode_tag(std::string_view bytes);
FailureRecord decode_failure(std::string_view bytes);

}  // namespace accel::cache
