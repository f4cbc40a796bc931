// The listener's TLS context, built from the configured certificate and key. Built whole and
// checked before use, so a bad pair found at a reload (SIGHUP) never replaces a good one.
#pragma once

#include <boost/asio/ssl/context.hpp>
#include <memory>
#include <string>

#include "proxy/config.hpp"

namespace accel {

// Reads tls.cert_file (certificate, then intermediates) and tls.key_file and builds a server
// context (TLS 1.2 and 1.3). Throws ConfigError naming the file and the fault: unreadable, no
// PEM certificate or key in it, or a key that does not match the certificate.
std::shared_ptr<boost::asio::ssl::context> load_listener_tls(const ListenTls& tls);

// "serial=<hex> not_after=<date> subject=<name>" of the context's certificate, for the log.
std::string describe_certificate(boost::asio::ssl::context& context);

}  // namespace accel
