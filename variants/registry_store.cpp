#include "variants/registry_store.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/use_future.hpp>
#include <boost/beast/http.hpp>
#include <thread>

#include "convert/sha256.hpp"
#include "convert/streams.hpp"
#include "proxy/oci_names.hpp"
#include "proxy/upstream.hpp"

namespace accel {

using convert::ConvertError;
using Request = http::request<http::string_body>;

DockerReference parse_docker_reference(std::string_view text) {
  DockerReference r;
  size_t slash = text.find('/');
  if (slash == std::string_view::npos || slash == 0) throw ConvertError("expected HOST/REPOSITORY[:TAG], got '" + std::string(text) + "'");
  r.host = std::string(text.substr(0, slash));
  std::string_view rest = text.substr(slash + 1);
  if (auto at = rest.find('@'); at != std::string_view::npos) {
    r.repository = std::string(rest.substr(0, at));
    r.reference = std::string(rest.substr(at + 1));
    if (!is_valid_digest(r.reference)) throw ConvertError("invalid digest in '" + std::string(text) + "'");
  } else {
    size_t colon = rest.rfind(':');
    if (colon != std::string_view::npos && rest.find('/', colon) == std::string_view::npos) {
      r.repository = std::string(rest.substr(0, colon));
      r.reference = std::string(rest.substr(colon + 1));
      if (!is_valid_tag(r.reference)) throw ConvertError("invalid tag in '" + std::string(text) + "'");
    } else {
      r.repository = std::string(rest);
      r.reference = "latest";
    }
  }
  if (!is_valid_repository(r.repository)) throw ConvertError("invalid repository name '" + r.repository + "'");
  return r;
}

RegistryAccess robot_access(const UpstreamConfig& upstream, const std::string& repository, bool push) {
  RegistryAccess access;
  access.upstream = upstream;
  access.repository = repository;
  access.credentials = {upstream.robot_username, upstream.robot_password};
  access.push = push;
  return access;
}

namespace {

constexpr size_t kUploadPiece = 16 << 20;
constexpr const char* kManifestAccept =
    "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, "
    "application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

}  // namespace

struct RegistryStore::Impl {
  DockerReference location;
  Credentials credentials;
  bool push;
  Config config;
  net::io_context io{1};
  net::executor_work_guard<net::io_context::executor_type> work = net::make_work_guard(io);
  std::unique_ptr<UpstreamClient> client;
  std::thread thread;
  std::string authorization;  // what answered the last challenge (or the client's header)
  bool fixed_authorization = false;

  explicit Impl(RegistryAccess access)
      : credentials(std::move(access.credentials)), push(access.push), authorization(std::move(access.authorization)) {
    fixed_authorization = !authorization.empty();
    location.host = access.upstream.host_header();
    location.repository = std::move(access.repository);
    if (access.upstream.scheme.empty()) parse_upstream_url(access.upstream);
    config.upstreams.push_back(std::move(access.upstream));
    config.timeouts.upstream_read = std::chrono::minutes(5);
    client = std::make_unique<UpstreamClient>(io.get_executor(), config);
    thread = std::thread([this] { io.run(); });
  }
  // Runs a coroutine on the client's thread and waits for it.
  template <class F>
  auto run(F&& make) {
    return net::co_spawn(io, std::forward<F>(make), net::use_future).get();
  }

  ~Impl() {
    run([this]() -> net::awaitable<void> {
      client->shutdown();
      co_return;
    });
    work.reset();
    thread.join();
  }

  Endpoint endpoint() const { return endpoint_of(config.upstreams.front()); }

  Request request(http::verb method, const std::string& target) const {
    Request r{method, target, 11};
    r.set(http::field::host, endpoint().host_header());
    r.set(http::field::user_agent, "accel-proxy");
    if (!authorization.empty()) r.set(http::field::authorization, authorization);
    return r;
  }

  // Answers a 401 challenge: Basic credentials, or a token for this repository's scope.
  net::awaitable<bool> authorize(const UpstreamResponse& denied) {
    auto challenge = parse_challenge(denied.headers()[http::field::www_authenticate]);
    if (!challenge) co_return false;
    std::string scheme = challenge->scheme;
    for (auto& c : scheme) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    if (scheme == "basic") {
      if (credentials.empty()) co_return false;
      authorization = basic_authorization(credentials);
      co_return true;
    }
    if (scheme != "bearer") co_return false;
    auto url = token_request_url(*challenge, "repository:" + location.repository + (push ? ":pull,push" : ":pull"));
    if (!url) co_return false;
    auto token_target = resolve_url(*url, endpoint());
    if (!token_target) co_return false;
    Request r{http::verb::get, token_target->target, 11};
    r.set(http::field::host, token_target->endpoint.host_header());
    if (!credentials.empty()) r.set(http::field::authorization, basic_authorization(credentials));
    auto answer = co_await client->fetch(token_target->endpoint, std::move(r));
    std::string body = co_await answer.response->read_all(1 << 20);
    if (answer.response->status() != 200) co_return false;
    auto token = parse_token_response(body);
    if (!token) co_return false;
    authorization = "Bearer " + *token;
    co_return true;
  }

  // Sends a request, answering one authentication challenge if the registry asks.
  net::awaitable<UpstreamClient::Fetched> exchange(Request r) {
    auto answer = co_await client->fetch(endpoint(), r);
    // A client's own Authorization is used as it is: a 401 then is the client's answer.
    if (answer.response->status() == 401 && !fixed_authorization && co_await authorize(*answer.response)) {
      answer.response.reset();
      r.set(http::field::authorization, authorization);
      answer = co_await client->fetch(endpoint(), r);
    }
    co_return answer;
  }

  // GET a manifest; a 404 is nullopt when `missing_ok`, every other failure throws.
  net::awaitable<std::optional<convert::ManifestBytes>> manifest(const std::string& reference, bool missing_ok) {
    Request r = request(http::verb::get, "/v2/" + location.repository + "/manifests/" + reference);
    r.set(http::field::accept, kManifestAccept);
    auto answer = co_await exchange(std::move(r));
    std::string body = co_await answer.response->read_all(4 << 20);
    if (missing_ok && answer.response->status() == 404) co_return std::nullopt;
    if (answer.response->status() != 200)
      throw ConvertError("manifest " + location.repository + ":" + reference + ": " + describe(*answer.response, body));
    convert::ManifestBytes out;
    out.bytes = std::move(body);
    out.media_type = std::string(answer.response->headers()[http::field::content_type]);
    if (auto semi = out.media_type.find(';'); semi != std::string::npos) out.media_type.resize(semi);
    std::string header_digest(answer.response->headers()["Docker-Content-Digest"]);
    out.digest = is_valid_digest(reference) ? reference : !header_digest.empty() ? header_digest : convert::Sha256::of(out.bytes);
    co_return out;
  }

  static std::string describe(const UpstreamResponse& response, const std::string& body) {
    return "HTTP " + std::to_string(response.status()) + (body.empty() ? "" : ": " + body.substr(0, 300));
  }
};

// Streams a blob's body from the client thread to the caller.
class BlobStream : public convert::ByteSource {
 public:
  BlobStream(RegistryStore::Impl& impl, std::unique_ptr<UpstreamResponse> response)
      : impl_(impl), response_(std::move(response)) {}
  ~BlobStream() override {
    impl_.run([this]() -> net::awaitable<void> {
      response_.reset();  // its connection belongs to the client thread's pool
      co_return;
    });
  }
  size_t read(void* out, size_t size) override {
    try {
      return impl_.run([&]() -> net::awaitable<size_t> { co_return co_await response_->read_some(net::buffer(out, size)); });
    } catch (const std::exception& e) {
      throw ConvertError(std::string("reading blob: ") + e.what());
    }
  }

 private:
  RegistryStore::Impl& impl_;
  std::unique_ptr<UpstreamResponse> response_;
};

RegistryStore::RegistryStore(RegistryAccess access) : impl_(std::make_unique<Impl>(std::move(access))) {}

RegistryStore::RegistryStore(DockerReference location, Credentials credentials, bool tls_verify, bool push)
    : RegistryStore([&] {
        RegistryAccess a;
        a.upstream.name = "target";
        a.upstream.url = std::string(tls_verify ? "https://" : "http://") + location.host;
        parse_upstream_url(a.upstream);
        a.repository = location.repository;
        a.credentials = std::move(credentials);
        a.push = push;
        return a;
      }()) {}

RegistryStore::~RegistryStore() = default;

convert::ManifestBytes RegistryStore::get_manifest(const std::string& reference) {
  auto& m = *impl_;
  return *m.run([&]() -> net::awaitable<std::optional<convert::ManifestBytes>> { co_return co_await m.manifest(reference, false); });
}

std::unique_ptr<convert::ByteSource> RegistryStore::open_blob(const convert::Descriptor& blob) {
  return open_blob_at(blob, 0);
}

std::unique_ptr<convert::ByteSource> RegistryStore::open_blob_at(const convert::Descriptor& blob, uint64_t offset) {
  auto& m = *impl_;
  if (offset > 0 && offset >= blob.size) return std::make_unique<convert::MemorySource>(std::string_view());
  auto response = m.run([&]() -> net::awaitable<std::unique_ptr<UpstreamResponse>> {
    Request r = m.request(http::verb::get, "/v2/" + m.location.repository + "/blobs/" + blob.digest);
    if (offset > 0) r.set(http::field::range, "bytes=" + std::to_string(offset) + "-");
    auto answer = co_await m.exchange(std::move(r));
    // A registry that ignores Range answers 200 with the whole blob: the caller would read the
    // wrong bytes, so only 206 will do for a range.
    if (answer.response->status() != (offset > 0 ? 206 : 200)) {
      std::string body = co_await answer.response->read_all(64 * 1024);
      throw ConvertError("blob " + blob.digest + ": " + Impl::describe(*answer.response, body));
    }
    co_return std::move(answer.response);
  });
  return std::make_unique<BlobStream>(m, std::move(response));
}

bool RegistryStore::has_blob(const std::string& digest) {
  auto& m = *impl_;
  return m.run([&]() -> net::awaitable<bool> {
    auto answer = co_await m.exchange(m.request(http::verb::head, "/v2/" + m.location.repository + "/blobs/" + digest));
    co_return answer.response->status() == 200;
  });
}

void RegistryStore::put_blob(const convert::Descriptor& blob, const std::string& path) {
  auto& m = *impl_;
  convert::FileSource file(path);
  m.run([&]() -> net::awaitable<void> {
    auto started = co_await m.exchange(m.request(http::verb::post, "/v2/" + m.location.repository + "/blobs/uploads/"));
    std::string body = co_await started.response->read_all(64 * 1024);
    if (started.response->status() != 202)
      throw ConvertError("starting upload of " + blob.digest + ": " + Impl::describe(*started.response, body));
    std::string location(started.response->headers()[http::field::location]);
    started.response.reset();
    // The blob goes up in pieces (PATCH), so memory stays bounded for any blob size.
    uint64_t offset = 0;
    std::string piece;
    while (true) {
      piece.resize(kUploadPiece);
      size_t got = 0;
      while (got < piece.size()) {
        size_t n = file.read(piece.data() + got, piece.size() - got);
        if (n == 0) break;
        got += n;
      }
      piece.resize(got);
      if (got == 0) break;
      auto target = resolve_url(location, m.endpoint());
      if (!target) throw ConvertError("registry gave an unusable upload location");
      Request r = m.request(http::verb::patch, target->target);
      r.set(http::field::content_type, "application/octet-stream");
      r.set(http::field::content_range, std::to_string(offset) + "-" + std::to_string(offset + got - 1));
      r.body() = std::move(piece);
      piece = std::string();
      auto answer = co_await m.client->fetch(target->endpoint, std::move(r));
      std::string reply = co_await answer.response->read_all(64 * 1024);
      if (answer.response->status() != 202)
        throw ConvertError("uploading " + blob.digest + ": " + Impl::describe(*answer.response, reply));
      location = std::string(answer.response->headers()[http::field::location]);
      offset += got;
    }
    auto target = resolve_url(location, m.endpoint());
    if (!target) throw ConvertError("registry gave an unusable upload location");
    std::string put_target = target->target + (target->target.find('?') == std::string::npos ? "?" : "&") + "digest=" + blob.digest;
    Request r = m.request(http::verb::put, put_target);
    r.set(http::field::content_type, "application/octet-stream");
    auto answer = co_await m.client->fetch(target->endpoint, std::move(r));
    std::string reply = co_await answer.response->read_all(64 * 1024);
    if (answer.response->status() != 201)
      throw ConvertError("finishing upload of " + blob.digest + ": " + Impl::describe(*answer.response, reply));
  });
}

void RegistryStore::put_manifest(const convert::ManifestBytes& manifest, const std::string& tag) {
  auto put = put_manifest_at(manifest, tag.empty() ? manifest.digest : tag);
  if (put.status != 201) throw ConvertError("pushing manifest " + manifest.digest + ": HTTP " + std::to_string(put.status));
}

RegistryStore::ManifestPut RegistryStore::put_manifest_at(const convert::ManifestBytes& manifest, const std::string& reference,
                                                          const std::string& if_match, bool if_none_match) {
  auto& m = *impl_;
  return m.run([&]() -> net::awaitable<ManifestPut> {
    Request r = m.request(http::verb::put, "/v2/" + m.location.repository + "/manifests/" + reference);
    r.set(http::field::content_type, manifest.media_type);
    if (!if_match.empty()) r.set(http::field::if_match, "\"" + if_match + "\"");
    if (if_none_match) r.set(http::field::if_none_match, "*");
    r.body() = manifest.bytes;
    auto answer = co_await m.exchange(std::move(r));
    std::string reply = co_await answer.response->read_all(64 * 1024);
    const int status = answer.response->status();
    if (status != 201 && status != 412)
      throw ConvertError("pushing manifest " + manifest.digest + " as " + reference + ": " + Impl::describe(*answer.response, reply));
    co_return ManifestPut{status, !answer.response->headers()["OCI-Subject"].empty()};
  });
}

std::optional<std::string> RegistryStore::resolve(const std::string& reference) {
  auto& m = *impl_;
  return m.run([&]() -> net::awaitable<std::optional<std::string>> {
    Request r = m.request(http::verb::head, "/v2/" + m.location.repository + "/manifests/" + reference);
    r.set(http::field::accept, kManifestAccept);
    auto answer = co_await m.exchange(std::move(r));
    const int status = answer.response->status();
    if (status == 404) co_return std::nullopt;
    std::string digest(answer.response->headers()["Docker-Content-Digest"]);
    if (status != 200 || !is_valid_digest(digest))
      throw ConvertError("resolving " + m.location.repository + ":" + reference + ": HTTP " + std::to_string(status) +
                         (status == 200 ? " without a Docker-Content-Digest" : ""));
    co_return digest;
  });
}

std::optional<convert::ManifestBytes> RegistryStore::find_manifest(const std::string& reference) {
  auto& m = *impl_;
  return m.run([&]() -> net::awaitable<std::optional<convert::ManifestBytes>> { co_return co_await m.manifest(reference, true); });
}

std::optional<std::string> RegistryStore::referrers(const std::string& digest) {
  auto& m = *impl_;
  return m.run([&]() -> net::awaitable<std::optional<std::string>> {
    Request r = m.request(http::verb::get, "/v2/" + m.location.repository + "/referrers/" + digest);
    r.set(http::field::accept, "application/vnd.oci.image.index.v1+json");
    auto answer = co_await m.exchange(std::move(r));
    std::string body = co_await answer.response->read_all(4 << 20);
    const int status = answer.response->status();
    if (status == 404) co_return std::nullopt;
    if (status != 200) throw ConvertError("referrers of " + digest + ": " + Impl::describe(*answer.response, body));
    co_return body;
  });
}

int RegistryStore::delete_manifest(const std::string& reference) {
  auto& m = *impl_;
  return m.run([&]() -> net::awaitable<int> {
    auto answer = co_await m.exchange(m.request(http::verb::delete_, "/v2/" + m.location.repository + "/manifests/" + reference));
    co_await answer.response->read_all(64 * 1024);
    co_return answer.response->status();
  });
}

bool RegistryStore::mount_blob(const std::string& digest, const std::string& from_repository) {
  auto& m = *impl_;
  return m.run([&]() -> net::awaitable<bool> {
    auto answer = co_await m.exchange(m.request(
        http::verb::post, "/v2/" + m.location.repository + "/blobs/uploads/?mount=" + digest + "&from=" + from_repository));
    co_await answer.response->read_all(64 * 1024);
    if (answer.response->status() == 201) co_return true;
    // Not mounted: a 202 opened an ordinary upload session instead, which is not used.
    if (answer.response->status() == 202) {
      if (auto target = resolve_url(std::string(answer.response->headers()[http::field::location]), m.endpoint())) {
        answer.response.reset();
        auto cancel = co_await m.client->fetch(target->endpoint, m.request(http::verb::delete_, target->target));
        co_await cancel.response->read_all(64 * 1024);
      }
    }
    co_return false;
  });
}

}  // namespace accel
