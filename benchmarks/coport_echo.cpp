// SPDX-License-Identifier: MIT
// coport_echo: the echo server of examples/echo_server.cpp (one coroutine per connection: recv into a
// 16 KiB buffer, send_all, repeat), for the benchmarks: loopback, TCP_NODELAY, runs until killed.
// Run: coport_echo PORT [-t THREADS] [--reuseport]   (PORT 0 picks a free port; prints "listening on PORT")
//      -t N: one io_context run by N threads; with --reuseport: N io_contexts, one thread and one
//      SO_REUSEPORT listener each. One thread (the default): the context is single_thread (io_uring:
//      a SINGLE_ISSUER|DEFER_TASKRUN ring where the kernel takes it) unless --shared is given.
#include <coport/coport.hpp>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

namespace {

coport::task<void> session(coport::tcp_socket s) {
    constexpr std::size_t size = 16 * 1024;
    auto buf = std::make_unique_for_overwrite<char[]>(size); // not zeroed: like the bare loop's malloc
    for (;;) {
        auto n = co_await s.recv(coport::buffer(buf.get(), size));
        if (!n || *n == 0) co_return; // error or the client closed
        auto sent = co_await s.send_all(coport::buffer(buf.get(), *n));
        if (!sent) co_return;
    }
}

void accepted(coport::async_scope& scope, coport::tcp_socket s) {
    (void)s.set_no_delay(true);
    scope.spawn(session(std::move(s)));
}

coport::task<void> serve(coport::tcp_listener& listener) {
    coport::async_scope scope;
    for (;;) {
        auto s = co_await listener.accept();
        if (!s) {
            if (s.error() == coport::errc::operation_aborted) break;
            std::fprintf(stderr, "accept: %s\n", s.error().message().c_str());
            continue;
        }
        accepted(scope, std::move(*s));
    }
    co_await scope.join();
}

} // namespace

int main(int argc, char** argv) {
    int port = -1, threads = 1;
    bool reuseport = false, shared = false;
    for (int i = 1; i < argc; ++i) {
        if (std::strcmp(argv[i], "-t") == 0 && i + 1 < argc) threads = std::atoi(argv[++i]);
        else if (std::strcmp(argv[i], "--reuseport") == 0) reuseport = true;
        else if (std::strcmp(argv[i], "--shared") == 0) shared = true;
        else if (port < 0) port = std::atoi(argv[i]);
        else port = -2;
    }
    if (port < 0 || port > 65535 || threads < 1) {
        std::fprintf(stderr, "usage: coport_echo PORT [-t THREADS] [--reuseport] [--shared]\n");
        return 2;
    }

    // -t N without --reuseport: one io_context run by N threads. With --reuseport: N io_contexts, each with
    // its own SO_REUSEPORT listener on the same port and one thread.
    const int contexts = reuseport ? threads : 1;
    std::vector<std::unique_ptr<coport::io_context>> ctxs;
    std::vector<coport::tcp_listener> listeners;
    coport::listen_options opts;
    opts.reuse_port = reuseport;
    coport::io_context_options ctx_opts;
    ctx_opts.single_thread = threads == 1 && !shared; // run and destroyed on this thread
    for (int i = 0; i < contexts; ++i) {
        ctxs.push_back(std::make_unique<coport::io_context>(ctx_opts));
        auto l = coport::tcp_listener::bind(
            *ctxs.back(), coport::endpoint(coport::ip_address::loopback_v4(), static_cast<std::uint16_t>(port)), opts);
        if (!l) {
            std::fprintf(stderr, "bind: %s\n", l.error().message().c_str());
            return 1;
        }
        port = l->local_endpoint().value().port(); // port 0: the other listeners join the first one's port
        listeners.push_back(std::move(*l));
    }
    std::printf("listening on %d (%s: %s)\n", port, ctxs[0]->backend_name(), ctxs[0]->backend_features().c_str());
    std::fflush(stdout);
    if (!reuseport) {
        coport::io_context& ctx = *ctxs[0];
        coport::thread_pool_runner helpers(ctx, static_cast<unsigned>(threads - 1));
        auto guard = ctx.make_work_guard();
        ctx.block_on(serve(listeners[0]));
        guard.reset();
        helpers.join();
        return 0;
    }
    std::vector<std::thread> helpers;
    for (std::size_t i = 1; i < ctxs.size(); ++i)
        helpers.emplace_back([&ctx = *ctxs[i], &l = listeners[i]] { ctx.block_on(serve(l)); });
    ctxs[0]->block_on(serve(listeners[0]));
    for (auto& t : helpers) t.join();
    return 0;
}
