#include "proxy/deadline.hpp"

#include <boost/asio/steady_timer.hpp>

namespace accel {

using Clock = std::chrono::steady_clock;

struct Deadline::State : std::enable_shared_from_this<State> {
  explicit State(net::ip::tcp::socket& s) : socket(&s), timer(s.get_executor()) {}

  net::ip::tcp::socket* socket;  // null once the Deadline is gone
  net::steady_timer timer;
  Clock::time_point due = Clock::time_point::max();       // the deadline in force
  Clock::time_point waiting_for = Clock::time_point::max();  // when the timer fires; max: idle
  bool expired = false;

  void wait_until(Clock::time_point when) {
    waiting_for = when;
    timer.expires_at(when);  // a wait already pending completes with operation_aborted
    timer.async_wait([self = shared_from_this()](const boost::system::error_code& ec) { self->fired(ec); });
  }

  void fired(const boost::system::error_code& ec) {
    if (ec) return;  // replaced by a newer wait, or the connection is gone
    waiting_for = Clock::time_point::max();
    if (!socket || due == Clock::time_point::max()) return;
    if (due > Clock::now()) {
      wait_until(due);  // the deadline moved on since this wait began
      return;
    }
    expired = true;
    boost::system::error_code ignored;
    socket->cancel(ignored);
  }
};

Deadline::Deadline(net::ip::tcp::socket& socket) : state_(std::make_shared<State>(socket)) {}

Deadline::~Deadline() {
  state_->socket = nullptr;
  state_->timer.cancel();
}

void Deadline::expires_after(Duration timeout) {
  State& s = *state_;
  s.expired = false;
  s.due = Clock::now() + timeout;
  // A later deadline is found by the wait already pending; only an earlier one needs a new wait.
  if (s.due < s.waiting_for) s.wait_until(s.due);
}

void Deadline::expires_never() {
  state_->expired = false;
  state_->due = Clock::time_point::max();  // a pending wait finds nothing to do when it fires
}

bool Deadline::expired() const { return state_->expired; }

}  // namespace accel
