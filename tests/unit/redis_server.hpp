// A real redis-server for tests: on 127.0.0.1 and a free port, no persistence, stopped (and
// killed if it will not stop) when the object goes; it also dies with the test process.
// Optionally with a password, an ACL user, or TLS only. Also: a throwaway CA and server
// certificate made with the openssl tool.
#pragma once

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "test_files.hpp"

struct RedisServerOptions {
  std::string password;  // requirepass
  std::string acl_user;  // "NAME PASSWORD": an ACL user allowed everything
  // TLS only (no plain port): the server's certificate and key, PEM files.
  std::string tls_cert, tls_key;
};

class RedisServer {
 public:
  explicit RedisServer(RedisServerOptions options = {}) : options_(std::move(options)), dir_("accel-redis") {
    if (::access(kBinary, X_OK) != 0)
      throw std::runtime_error(std::string(kBinary) + " not found: install Debian's redis-server (.ci/install-deps)");
    port_ = free_port();
    start();
  }
  ~RedisServer() { stop(); }
  RedisServer(const RedisServer&) = delete;
  RedisServer& operator=(const RedisServer&) = delete;

  uint16_t port() const { return port_; }
  // redis://127.0.0.1:PORT (or rediss://), with `userinfo` ("[USER]:PASSWORD@") if given.
  std::string url(const std::string& userinfo = "", const std::string& path = "") const {
    return std::string(options_.tls_cert.empty() ? "redis://" : "rediss://") + userinfo + "127.0.0.1:" +
           std::to_string(port_) + path;
  }

  // Starts it again on the same port (with empty data, as after a crash without persistence).
  void start() {
    std::vector<std::string> args{kBinary, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                                  "--dir", dir_.path(), "--logfile", dir_.path() + "/redis.log"};
    if (options_.tls_cert.empty()) {
      args.insert(args.end(), {"--port", std::to_string(port_)});
    } else {
      args.insert(args.end(), {"--port", "0", "--tls-port", std::to_string(port_), "--tls-cert-file", options_.tls_cert,
                               "--tls-key-file", options_.tls_key, "--tls-auth-clients", "no"});
    }
    if (!options_.password.empty()) args.insert(args.end(), {"--requirepass", options_.password});
    if (!options_.acl_user.empty()) {
      auto space = options_.acl_user.find(' ');
      args.insert(args.end(), {"--user", options_.acl_user.substr(0, space), "on", ">" + options_.acl_user.substr(space + 1),
                               "~*", "&*", "+@all"});
    }
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    pid_ = ::fork();
    if (pid_ < 0) throw std::runtime_error("fork failed");
    if (pid_ == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      ::execv(kBinary, argv.data());
      ::_exit(127);
    }
    // Ready when it accepts connections; bounded.
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (!accepts()) {
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        throw std::runtime_error("redis-server exited at start: " + read_file(dir_.path() + "/redis.log"));
      }
      if (std::chrono::steady_clock::now() > deadline) throw std::runtime_error("redis-server did not start in 10 s");
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }

  // Freezes it (SIGSTOP): connections stay open and nothing is answered. resume() thaws it.
  void freeze() { ::kill(pid_, SIGSTOP); }
  void resume() { ::kill(pid_, SIGCONT); }

  // SIGTERM, then SIGKILL after 5 s; returns when the process is gone.
  void stop() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGCONT);  // a frozen server would not see SIGTERM
    ::kill(pid_, SIGTERM);
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    int status = 0;
    while (::waitpid(pid_, &status, WNOHANG) == 0) {
      if (std::chrono::steady_clock::now() > deadline) {
        ::kill(pid_, SIGKILL);
        ::waitpid(pid_, &status, 0);
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    pid_ = -1;
  }

 private:
  static constexpr const char* kBinary = "/usr/bin/redis-server";

  static uint16_t free_port() {
    int s = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    if (::bind(s, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
        ::getsockname(s, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
      ::close(s);
      throw std::runtime_error("no free port");
    }
    ::close(s);
    return ntohs(a.sin_port);
  }

  bool accepts() const {
    int s = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port_);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bool ok = ::connect(s, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
    ::close(s);
    return ok;
  }

  RedisServerOptions options_;
  TempDir dir_;
  uint16_t port_ = 0;
  pid_t pid_ = -1;
};

// A CA and a server certificate it signed for 127.0.0.1 and localhost, in `dir`: ca.pem,
// server.pem, server.key; and another CA that signed nothing, other-ca.pem.
inline void make_test_certificates(const std::string& dir) {
  std::string script =
      "set -e; cd '" + dir + "'\n"
      "key='-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes'\n"
      "openssl req -x509 $key -keyout ca.key -out ca.pem -days 1 -subj /CN=accel-test-ca 2>/dev/null\n"
      "openssl req -x509 $key -keyout other-ca.key -out other-ca.pem -days 1 -subj /CN=accel-other-ca 2>/dev/null\n"
      "openssl req $key -keyout server.key -out server.csr -subj /CN=127.0.0.1 2>/dev/null\n"
      "printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\\n' > san.ext\n"
      "openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 1 "
      "-extfile san.ext 2>/dev/null\n";
  if (std::system(script.c_str()) != 0) throw std::runtime_error("making test certificates with openssl failed");
}
