// SPDX-License-Identifier: MIT
// asio_echo: the same echo server as coport_echo, in standalone Asio with C++20 coroutines (awaitable,
// co_spawn, as_tuple(use_awaitable)). Built twice: asio_echo (epoll reactor) and asio_echo_uring
// (-DASIO_HAS_IO_URING -DASIO_DISABLE_EPOLL: every socket operation through io_uring).
// Run: asio_echo PORT [-t THREADS] [--reuseport]   (PORT 0 picks a free port; prints "listening on PORT")
//      -t N: one io_context run by N threads; with --reuseport: N io_contexts, one thread and one
//      SO_REUSEPORT listener each.
#include <asio.hpp>
#include <asio/experimental/as_tuple.hpp> // Asio 1.22: as_tuple is still experimental

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

using asio::ip::tcp;
// Completion as a tuple (error_code, result...) instead of an exception: like coport's result values.
constexpr auto use_nothrow_awaitable = asio::experimental::as_tuple(asio::use_awaitable);
using reuse_port = asio::detail::socket_option::boolean<SOL_SOCKET, SO_REUSEPORT>;

namespace {

asio::awaitable<void> session(tcp::socket s) {
    constexpr std::size_t size = 16 * 1024; // as coport_echo: one 16 KiB buffer per connection, not zeroed
    auto buf = std::make_unique_for_overwrite<char[]>(size);
    for (;;) {
        auto [ec, n] = co_await s.async_read_some(asio::buffer(buf.get(), size), use_nothrow_awaitable);
        if (ec) co_return; // error or EOF
        auto [wec, m] = co_await asio::async_write(s, asio::buffer(buf.get(), n), use_nothrow_awaitable);
        if (wec) co_return;
    }
}

asio::awaitable<void> serve(tcp::acceptor& acceptor) {
    for (;;) {
        auto [ec, s] = co_await acceptor.async_accept(use_nothrow_awaitable);
        if (ec) {
            if (ec == asio::error::operation_aborted) co_return;
            std::fprintf(stderr, "accept: %s\n", ec.message().c_str());
            continue;
        }
        s.set_option(tcp::no_delay(true), ec);
        asio::co_spawn(acceptor.get_executor(), session(std::move(s)), asio::detached);
    }
}

std::unique_ptr<tcp::acceptor> make_acceptor(asio::io_context& io, unsigned short port, bool reuseport) {
    auto a = std::make_unique<tcp::acceptor>(io);
    tcp::endpoint ep(asio::ip::address_v4::loopback(), port);
    a->open(ep.protocol());
    a->set_option(asio::socket_base::reuse_address(true));
    if (reuseport) a->set_option(reuse_port(true));
    a->bind(ep);
    a->listen(1024); // as coport's default backlog
    return a;
}

} // namespace

int main(int argc, char** argv) {
    int port = -1, threads = 1;
    bool reuseport = false;
    for (int i = 1; i < argc; ++i) {
        if (std::strcmp(argv[i], "-t") == 0 && i + 1 < argc) threads = std::atoi(argv[++i]);
        else if (std::strcmp(argv[i], "--reuseport") == 0) reuseport = true;
        else if (port < 0) port = std::atoi(argv[i]);
        else port = -2;
    }
    if (port < 0 || port > 65535 || threads < 1) {
        std::fprintf(stderr, "usage: asio_echo PORT [-t THREADS] [--reuseport]\n");
        return 2;
    }
    try {
        if (!reuseport) {
            // A concurrency hint of 1 is Asio's documented single-threaded setting (its examples use it).
            asio::io_context io(threads == 1 ? 1 : threads);
            auto acceptor = make_acceptor(io, static_cast<unsigned short>(port), false);
            std::printf("listening on %u\n", acceptor->local_endpoint().port());
            std::fflush(stdout);
            asio::co_spawn(io, serve(*acceptor), asio::detached);
            std::vector<std::thread> helpers;
            for (int i = 1; i < threads; ++i) helpers.emplace_back([&io] { io.run(); });
            io.run();
            for (auto& t : helpers) t.join();
            return 0;
        }
        std::vector<std::unique_ptr<asio::io_context>> ios;
        std::vector<std::unique_ptr<tcp::acceptor>> acceptors;
        for (int i = 0; i < threads; ++i) {
            ios.push_back(std::make_unique<asio::io_context>(1));
            acceptors.push_back(make_acceptor(*ios.back(), static_cast<unsigned short>(port), true));
            port = acceptors.back()->local_endpoint().port(); // port 0: the others join the first one's
            asio::co_spawn(*ios.back(), serve(*acceptors.back()), asio::detached);
        }
        std::printf("listening on %d\n", port);
        std::fflush(stdout);
        std::vector<std::thread> helpers;
        for (int i = 1; i < threads; ++i) helpers.emplace_back([&io = *ios[static_cast<std::size_t>(i)]] { io.run(); });
        ios[0]->run();
        for (auto& t : helpers) t.join();
    } catch (const std::exception& e) {
        std::fprintf(stderr, "asio_echo: %s\n", e.what());
        return 1;
    }
    return 0;
}
