// Streaming SHA-256 (OpenSSL), the digest of everything OCI: blobs, diffIDs, TOCs, chunks.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace accel::convert {

class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;
  Sha256(Sha256&& other) noexcept;
  Sha256& operator=(Sha256&& other) noexcept;

  void update(const void* data, size_t size);
  void update(std::string_view data) { update(data.data(), data.size()); }
  // "sha256:<64 hex>"; the object is reset afterwards.
  std::string digest();

  static std::string of(std::string_view data);

 private:
  void* ctx_;  // EVP_MD_CTX
};

}  // namespace accel::convert
