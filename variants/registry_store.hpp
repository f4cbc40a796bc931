// A registry repository as a conversion source or target (`docker://HOST/REPO:TAG`), for the
// `convert` command: pulls manifests and blobs, pushes blobs (chunked PATCH uploads, never a
// whole blob in memory) and manifests, and answers 401 challenges with Basic credentials or a
// token from the registry's token service. Blocking calls over the proxy's own upstream client,
// which runs on a private io_context thread.
#pragma once

#include <memory>
#include <optional>
#include <string>

#include "auth/credentials.hpp"
#include "proxy/config.hpp"
#include "convert/image.hpp"

namespace accel {

struct DockerReference {
  std::string host;        // "registry.example:5000"
  std::string repository;  // "library/app"
  std::string reference;   // tag or digest ("latest" when none was given)
};

// Parses "HOST/REPO[:TAG|@DIGEST]" (the part after docker://). Throws ConvertError.
DockerReference parse_docker_reference(std::string_view text);

// How to reach one repository: the upstream (URL and TLS settings), and whose identity to use.
struct RegistryAccess {
  UpstreamConfig upstream;
  std::string repository;
  Credentials credentials;    // answers Basic challenges and token requests
  std::string authorization;  // or: a client's own Authorization header, sent as it is
  bool push = false;          // ask for push rights when a token is needed
};

// Access to `repository` with the upstream's robot account (write-back, conversions no client
// asked for); `push` asks for push rights too.
RegistryAccess robot_access(const UpstreamConfig& upstream, const std::string& repository, bool push = false);

class RegistryStore : public convert::ImageSource, public convert::ImageTarget {
 public:
  explicit RegistryStore(RegistryAccess access);
  // `tls_verify` false means plain http (as skopeo's --tls-verify=false does for local
  // registries).
  RegistryStore(DockerReference location, Credentials credentials, bool tls_verify, bool push);
  ~RegistryStore() override;

  convert::ManifestBytes get_manifest(const std::string& reference) override;
  std::unique_ptr<convert::ByteSource> open_blob(const convert::Descriptor& blob) override;
  std::unique_ptr<convert::ByteSource> open_blob_at(const convert::Descriptor& blob, uint64_t offset) override;
  std::unique_ptr<convert::ByteSource> read_blob(const convert::Descriptor& blob, uint64_t offset) override {
    return open_blob_at(blob, offset);
  }
  bool has_blob(const std::string& digest) override;
  void put_blob(const convert::Descriptor& blob, const std::string& path) override;
  void put_manifest(const convert::ManifestBytes& manifest, const std::string& tag) override;

  // --- beyond a conversion's needs: what write-back and the upstream lookup use.
  // The digest a tag (or digest) names now (HEAD), or nullopt when the registry has none.
  std::optional<std::string> resolve(const std::string& reference);
  // The manifest, or nullopt when the registry has none (404).
  std::optional<convert::ManifestBytes> find_manifest(const std::string& reference);
  // The Referrers API's index for `digest`, or nullopt when the registry has no such API (404).
  std::optional<std::string> referrers(const std::string& digest);
  // PUT a manifest under `reference` (a tag or its digest). Preconditions are sent as asked
  // (`If-Match: "<digest>"` for the value the caller saw, or `If-None-Match: *` for none); registries
  // that ignore them (distribution 2.8, Harbor) store anyway. Returns the status (201, or 412
  // when a precondition failed) and whether the answer carried `OCI-Subject` (the registry
  // indexed the subject itself); throws on any other answer.
  struct ManifestPut {
    int status = 0;
    bool subject_indexed = false;
  };
  ManifestPut put_manifest_at(const convert::ManifestBytes& manifest, const std::string& reference,
                              const std::string& if_match = "", bool if_none_match = false);
  // DELETE a manifest reference (a tag, as the spec allows, or a digest); returns the status.
  int delete_manifest(const std::string& reference);
  // Cross-repository mount of a blob from `from_repository` on the same registry; false when the
  // registry did not mount it (the upload it opened instead is cancelled).
  bool mount_blob(const std::string& digest, const std::string& from_repository);

  struct Impl;  // public only so the blob stream in the .cpp can name it

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace accel
