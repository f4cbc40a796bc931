#include "coordination/redis_connection.hpp"

#include <algorithm>
#include <arpa/inet.h>
#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

namespace accel {
namespace {

using Clock = RedisConnection::Clock;

std::string openssl_errors() {
  std::string out;
  while (unsigned long e = ERR_get_error()) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof buf);
    if (!out.empty()) out += "; ";
    out += buf;
  }
  return out.empty() ? "unknown TLS error" : out;
}

// Waits until `fd` is ready for `events`; false when `deadline` passes first.
bool wait_for(int fd, short events, Clock::time_point deadline) {
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left < 0) return false;
    pollfd p{fd, events, 0};
    int n = ::poll(&p, 1, static_cast<int>(std::min<long long>(left + 1, 1 << 30)));
    if (n > 0) return true;
    if (n < 0 && errno != EINTR) throw RedisError(std::string("poll: ") + std::strerror(errno));
  }
}

RedisReply convert(const redisReply* r) {
  RedisReply out;
  switch (r->type) {
    case REDIS_REPLY_STRING: out.type = RedisReply::Type::string; out.text.assign(r->str, r->len); break;
    case REDIS_REPLY_STATUS: out.type = RedisReply::Type::status; out.text.assign(r->str, r->len); break;
    case REDIS_REPLY_ERROR: out.type = RedisReply::Type::error; out.text.assign(r->str, r->len); break;
    case REDIS_REPLY_INTEGER: out.type = RedisReply::Type::integer; out.integer = r->integer; break;
    case REDIS_REPLY_ARRAY:
      out.type = RedisReply::Type::array;
      for (size_t i = 0; i < r->elements; ++i) out.elements.push_back(convert(r->element[i]));
      break;
    default: out.type = RedisReply::Type::nil; break;
  }
  return out;
}

}  // namespace

struct RedisConnection::Impl {
  std::string where;  // endpoint.display(), for messages
  std::chrono::milliseconds timeout;
  int fd = -1;
  // TLS runs on memory BIOs and we move their bytes over the socket ourselves: every socket
  // read and write then has a poll deadline, and sends use MSG_NOSIGNAL (no SIGPIPE from a library).
  SSL_CTX* ctx = nullptr;
  SSL* ssl = nullptr;
  BIO* tls_in = nullptr;   // owned by ssl
  BIO* tls_out = nullptr;  // owned by ssl
  redisReader* reader = nullptr;

  ~Impl() {
    if (reader) redisReaderFree(reader);
    if (ssl) SSL_free(ssl);
    if (ctx) SSL_CTX_free(ctx);
    if (fd >= 0) ::close(fd);
  }

  [[noreturn]] void fail(const std::string& what) const { throw RedisError(where + ": " + what); }

  void connect_tcp(const std::string& host, uint16_t port, Clock::time_point deadline) {
    addrinfo hints{};
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    addrinfo* found = nullptr;
    if (int rc = ::getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &found); rc != 0)
      fail(std::string("cannot resolve host: ") + gai_strerror(rc));
    std::unique_ptr<addrinfo, decltype(&freeaddrinfo)> guard(found, freeaddrinfo);
    std::string last_error = "no address";
    for (addrinfo* a = found; a; a = a->ai_next) {
      int s = ::socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol);
      if (s < 0) { last_error = std::strerror(errno); continue; }
      int rc = ::connect(s, a->ai_addr, a->ai_addrlen);
      if (rc < 0 && errno == EINPROGRESS) {
        if (!wait_for(s, POLLOUT, deadline)) { ::close(s); fail("connect timed out"); }
        int err = 0;
        socklen_t len = sizeof err;
        ::getsockopt(s, SOL_SOCKET, SO_ERROR, &err, &len);
        rc = err == 0 ? 0 : -1;
        errno = err;
      }
      if (rc == 0) {
        int one = 1;
        ::setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        fd = s;
        return;
      }
      last_error = std::strerror(errno);
      ::close(s);
    }
    fail("cannot connect: " + last_error);
  }

  void send_raw(const char* data, size_t size, Clock::time_point deadline) {
    while (size > 0) {
      ssize_t n = ::send(fd, data, size, MSG_NOSIGNAL);
      if (n > 0) { data += n; size -= static_cast<size_t>(n); continue; }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        if (!wait_for(fd, POLLOUT, deadline)) fail("write timed out");
        continue;
      }
      fail(std::string("write failed: ") + std::strerror(errno));
    }
  }

  // Some bytes from the socket; nothing when the deadline passes first. The peer closing is an error.
  std::optional<std::string> recv_raw(Clock::time_point deadline) {
    char buf[16384];
    for (;;) {
      ssize_t n = ::recv(fd, buf, sizeof buf, 0);
      if (n > 0) return std::string(buf, static_cast<size_t>(n));
      if (n == 0) fail("the server closed the connection");
      if (errno == EINTR) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) fail(std::string("read failed: ") + std::strerror(errno));
      if (!wait_for(fd, POLLIN, deadline)) return std::nullopt;
    }
  }

  void flush_tls(Clock::time_point deadline) {
    char buf[16384];
    while (BIO_ctrl_pending(tls_out) > 0) {
      int n = BIO_read(tls_out, buf, sizeof buf);
      if (n <= 0) break;
      send_raw(buf, static_cast<size_t>(n), deadline);
    }
  }

  bool fill_tls(Clock::time_point deadline) {
    auto bytes = recv_raw(deadline);
    if (!bytes) return false;
    BIO_write(tls_in, bytes->data(), static_cast<int>(bytes->size()));
    return true;
  }

  void start_tls(const std::string& host, const std::string& ca_file, Clock::time_point deadline) {
    ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx) fail("TLS: " + openssl_errors());
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nullptr);
    if (ca_file.empty() ? SSL_CTX_set_default_verify_paths(ctx) != 1
                        : SSL_CTX_load_verify_locations(ctx, ca_file.c_str(), nullptr) != 1)
      fail("TLS: cannot load CA certificates" + (ca_file.empty() ? std::string() : " from " + ca_file) + ": " +
           openssl_errors());
    ssl = SSL_new(ctx);
    tls_in = BIO_new(BIO_s_mem());
    tls_out = BIO_new(BIO_s_mem());
    SSL_set_bio(ssl, tls_in, tls_out);
    // The certificate must name the host we asked for: an address as an IP SAN, a name as a DNS SAN.
    in6_addr probe;
    bool is_address = inet_pton(AF_INET, host.c_str(), &probe) == 1 || inet_pton(AF_INET6, host.c_str(), &probe) == 1;
    if (is_address) {
      X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), host.c_str());
    } else {
      SSL_set_tlsext_host_name(ssl, host.c_str());
      SSL_set1_host(ssl, host.c_str());
    }
    for (;;) {
      int rc = SSL_connect(ssl);
      flush_tls(deadline);
      if (rc == 1) return;
      int err = SSL_get_error(ssl, rc);
      if (err == SSL_ERROR_WANT_READ) {
        if (!fill_tls(deadline)) fail("TLS handshake timed out");
        continue;
      }
      long verify = SSL_get_verify_result(ssl);
      if (verify != X509_V_OK)
        fail(std::string("TLS: the server's certificate is not trusted: ") + X509_verify_cert_error_string(verify));
      fail("TLS handshake failed: " + openssl_errors());
    }
  }

  void write(const std::string& bytes, Clock::time_point deadline) {
    if (!ssl) return send_raw(bytes.data(), bytes.size(), deadline);
    if (SSL_write(ssl, bytes.data(), static_cast<int>(bytes.size())) <= 0) fail("TLS write failed: " + openssl_errors());
    flush_tls(deadline);
  }

  std::optional<std::string> read(Clock::time_point deadline) {
    if (!ssl) return recv_raw(deadline);
    char buf[16384];
    for (;;) {
      int n = SSL_read(ssl, buf, sizeof buf);
      if (n > 0) return std::string(buf, static_cast<size_t>(n));
      int err = SSL_get_error(ssl, n);
      if (err == SSL_ERROR_ZERO_RETURN) fail("the server closed the connection");
      if (err != SSL_ERROR_WANT_READ) fail("TLS read failed: " + openssl_errors());
      flush_tls(deadline);
      if (!fill_tls(deadline)) return std::nullopt;
    }
  }

  std::optional<RedisReply> next_reply(Clock::time_point deadline) {
    for (;;) {
      void* raw = nullptr;
      if (redisReaderGetReply(reader, &raw) != REDIS_OK) fail(std::string("protocol error: ") + reader->errstr);
      if (raw) {
        RedisReply reply = convert(static_cast<redisReply*>(raw));
        freeReplyObject(raw);
        return reply;
      }
      auto bytes = read(deadline);
      if (!bytes) return std::nullopt;
      if (redisReaderFeed(reader, bytes->data(), bytes->size()) != REDIS_OK)
        fail(std::string("protocol error: ") + reader->errstr);
    }
  }

  void send_command(const std::vector<std::string>& args, Clock::time_point deadline) {
    std::vector<const char*> argv;
    std::vector<size_t> lengths;
    for (const auto& a : args) {
      argv.push_back(a.data());
      lengths.push_back(a.size());
    }
    char* formatted = nullptr;
    int size = redisFormatCommandArgv(&formatted, static_cast<int>(args.size()), argv.data(), lengths.data());
    if (size < 0) fail("cannot format a command");
    std::string bytes(formatted, static_cast<size_t>(size));
    redisFreeCommand(formatted);
    write(bytes, deadline);
  }

  RedisReply command(const std::vector<std::string>& args) {
    auto deadline = Clock::now() + timeout;
    send_command(args, deadline);
    auto reply = next_reply(deadline);
    if (!reply) fail("no reply to " + args.front() + " within " + std::to_string(timeout.count()) + " ms");
    if (reply->type == RedisReply::Type::error) fail(args.front() + ": " + reply->text);
    return std::move(*reply);
  }
};

RedisConnection::RedisConnection(const RedisEndpoint& endpoint, const std::string& ca_file,
                                 std::chrono::milliseconds timeout)
    : impl_(std::make_unique<Impl>()) {
  impl_->where = endpoint.display();
  impl_->timeout = timeout;
  impl_->reader = redisReaderCreate();
  if (!impl_->reader) impl_->fail("out of memory");
  auto deadline = Clock::now() + timeout;
  impl_->connect_tcp(endpoint.host, endpoint.port, deadline);
  if (endpoint.tls) impl_->start_tls(endpoint.host, ca_file, deadline);
  if (!endpoint.password.empty()) {
    if (endpoint.username.empty()) impl_->command({"AUTH", endpoint.password});
    else impl_->command({"AUTH", endpoint.username, endpoint.password});
  }
  if (endpoint.database != 0) impl_->command({"SELECT", std::to_string(endpoint.database)});
  // A server that wants a password we did not give says so here, not at the first real command.
  impl_->command({"PING"});
}

RedisConnection::~RedisConnection() = default;

RedisReply RedisConnection::command(const std::vector<std::string>& args) { return impl_->command(args); }

void RedisConnection::send(const std::vector<std::string>& args) {
  impl_->send_command(args, Clock::now() + impl_->timeout);
}

std::optional<RedisReply> RedisConnection::read_next(Clock::time_point deadline) {
  auto reply = impl_->next_reply(deadline);
  if (reply && reply->type == RedisReply::Type::error) impl_->fail(reply->text);
  return reply;
}

}  // namespace accel
