// A connection's deadline for the operation it is in, moved cheaply: setting it costs a clock
// read, not a timer operation.
//
// beast::tcp_stream arms and cancels a timer for every read and write, which took about a tenth
// of the proxy's instructions per relayed manifest request. Here one timer per connection waits
// for the earliest deadline that can matter; when it fires and the deadline has moved on in the
// meantime, it waits again. When a deadline passes, the socket's operations are cancelled (they
// complete with operation_aborted) and expired() tells a timeout from other cancellations.
#pragma once

#include <boost/asio/ip/tcp.hpp>
#include <memory>

#include "proxy/config.hpp"

namespace accel {

namespace net = boost::asio;

class Deadline {
 public:
  explicit Deadline(net::ip::tcp::socket& socket);
  ~Deadline();
  Deadline(const Deadline&) = delete;
  Deadline& operator=(const Deadline&) = delete;

  // The operations started from now on must be done within `timeout`.
  void expires_after(Duration timeout);
  void expires_never();
  // The last deadline set passed and the socket's operations were cancelled.
  bool expired() const;

 private:
  struct State;  // shared with the timer's pending wait, which may outlive this object
  std::shared_ptr<State> state_;
};

}  // namespace accel
