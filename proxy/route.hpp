// Classifies a request target into the registry API route it names. Targets that would be unsafe
// to forward (traversal, percent-encoding, empty segments, bytes not allowed in a URL) are
// refused here; any other /v2/ target is forwarded as the client wrote it, and `well_formed`
// says whether its repository and reference follow the distribution spec's grammar (only then
// do the proxy's own features act on them). Plain data in, plain data out: easy to test and fuzz.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "proxy/request_target.hpp"

namespace accel {

enum class RouteKind {
  ping,        // GET /v2/
  catalog,     // GET /v2/_catalog
  manifest,    // /v2/<name>/manifests/<reference>
  blob,        // /v2/<name>/blobs/<digest>
  blob_upload, // /v2/<name>/blobs/uploads/[<uuid>]
  tags,        // /v2/<name>/tags/list
  referrers,   // /v2/<name>/referrers/<digest>
  healthz,     // GET /healthz
  readyz,      // GET /readyz
  metrics,     // GET /metrics
  token,       // /auth/token/<upstream name>: forwarded to that upstream's token service
  webhook_harbor,    // POST /hooks/harbor
  webhook_registry,  // POST /hooks/registry (distribution notifications)
  conversions_api,   // GET /api/conversions
  prefetch_api,      // GET /api/prefetch[/<upstream>/<repository>@<digest>]: learned prefetch (reference: the part after /api/prefetch/)
  unrecognized,      // any other /v2/ path: forwarded as written, the upstream answers
  not_found,         // outside /v2/ and not the proxy's own: answered 404 here
  invalid,     // unsafe to forward (traversal, percent-encoding, ...): refused, see error_*
};

// A short label for logs and metrics ("manifest", "blob", ...).
std::string_view route_label(RouteKind kind);

struct Route {
  RouteKind kind = RouteKind::not_found;
  std::string path;         // the target's path as the client wrote it (checked safe to forward)
  std::string repository;   // repository name, for per-repository routes
  std::string reference;    // tag or digest (manifest), digest (blob, referrers)
  // The repository name and the reference follow the spec's grammar. When false the request is
  // still forwarded as written and the upstream's answer relayed (a registry answers such names
  // with its own 404 or 400); the cache, variants and the referrers fallback leave it alone.
  bool well_formed = true;
  std::string upstream;     // token route: the upstream name
  std::vector<QueryParam> query;
  // For kind == invalid: the OCI error code, HTTP status and message to answer with.
  std::string error_code;
  int error_status = 0;
  std::string error_message;

  std::optional<std::string> query_value(std::string_view key) const;
  // The reference is a well-formed digest (not merely something with a ':').
  bool reference_is_digest() const;
};

Route parse_route(std::string_view target);

// The upstream path of a registry route, e.g. "/v2/library/app/manifests/1.0": built from the
// repository and reference (a variant fallback re-points the reference), else the client's path.
std::string upstream_path(const Route& route);

// The query string to send upstream: every parameter but `ns` (containerd's mirror hint, for us
// only), re-encoded. Empty or "?a=b&c=d".
std::string upstream_query(const Route& route);

}  // namespace accel
