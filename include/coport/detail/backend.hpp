// SPDX-License-Identifier: MIT
#pragma once
// The only platform #if chain in coport: it picks the backend folder. Each backend folder has the same
// file names (error.hpp, context.hpp, ...) and defines namespace coport::detail::<name>; the chosen one is
// aliased as coport::detail::backend and checked against the backend_context concept (io_context.hpp).
// Linux has one context with two engines chosen at run time: io_uring (detail/uring) and, where io_uring
// is refused, epoll (detail/epoll); the operations are the same objects for both.

#if defined(_WIN32)
#include <coport/detail/iocp/error.hpp>
#include <coport/detail/iocp/context.hpp>
#include <coport/detail/iocp/timer.hpp>
#include <coport/detail/iocp/socket.hpp>
namespace coport::detail {
namespace backend = iocp;
}
#elif defined(__linux__)
#include <coport/detail/uring/error.hpp>
#include <coport/detail/uring/context.hpp>
#include <coport/detail/epoll/context.hpp>
#include <coport/detail/uring/timer.hpp>
#include <coport/detail/uring/socket.hpp>
namespace coport::detail {
namespace backend = uring;
}
#else
#error "coport supports Windows (IOCP) and Linux (io_uring); this platform has neither"
#endif
