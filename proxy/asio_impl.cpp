// The one translation unit that compiles Boost.Asio, Asio's SSL support and Boost.Beast
// (BOOST_*_SEPARATE_COMPILATION is set for every target that links accel_asio).
#include <boost/asio/impl/src.hpp>
#include <boost/asio/ssl/impl/src.hpp>
#include <boost/beast/src.hpp>
