// SPDX-License-Identifier: MIT
#pragma once
/// \file coport.hpp
/// coport: C++20 coroutine networking over the completion-port model (IOCP on Windows, io_uring on Linux).
/// This is the one header users include.

#include <coport/buffer.hpp>
#include <coport/cancel.hpp>
#include <coport/error.hpp>
#include <coport/io_context.hpp>
#include <coport/net/address.hpp>
#include <coport/net/resolver.hpp>
#include <coport/net/local.hpp>
#include <coport/net/stream.hpp>
#include <coport/net/tcp.hpp>
#include <coport/net/udp.hpp>
#include <coport/result.hpp>
#include <coport/scope.hpp>
#include <coport/sync.hpp>
#include <coport/sync_wait.hpp>
#include <coport/task.hpp>
#include <coport/timer.hpp>
#include <coport/when_all.hpp>
