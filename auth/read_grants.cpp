#include "auth/read_grants.hpp"

#include <openssl/evp.h>

namespace accel {

std::string ReadGrants::key(std::string_view authorization, std::string_view upstream, std::string_view repository) {
  unsigned char md[32];
  unsigned int len = 0;
  EVP_Digest(authorization.data(), authorization.size(), md, &len, EVP_sha256(), nullptr);
  std::string k(reinterpret_cast<const char*>(md), len);
  k += '\0';
  k += upstream;
  k += '\0';
  k += repository;
  return k;
}

bool ReadGrants::allowed(std::string_view authorization, std::string_view upstream, std::string_view repository) {
  auto k = key(authorization, upstream, repository);
  std::lock_guard lock(mutex_);
  auto it = expiry_.find(k);
  if (it == expiry_.end()) return false;
  if (it->second < Clock::now()) {
    expiry_.erase(it);
    return false;
  }
  return true;
}

void ReadGrants::grant(std::string_view authorization, std::string_view upstream, std::string_view repository) {
  auto k = key(authorization, upstream, repository);
  std::lock_guard lock(mutex_);
  if (expiry_.size() > 100000) {  // bounded: drop expired ones, or everything if none expired
    auto now = Clock::now();
    std::erase_if(expiry_, [&](const auto& kv) { return kv.second < now; });
    if (expiry_.size() > 100000) expiry_.clear();
  }
  expiry_[k] = Clock::now() + ttl_;
}

}  // namespace accel
