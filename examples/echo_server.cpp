// echo_server: a coroutine TCP echo server; one coroutine per connection, N threads on one io_context.
// Run: echo_server [host=127.0.0.1] [port=7777] [threads=2] [max_connections=0 (unlimited)]
//      then: echo_client 127.0.0.1 7777 "hello"
#include <coport/coport.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>

coport::task<void> session(coport::tcp_socket s) {
    constexpr std::size_t size = 16 * 1024;
    auto buf = std::make_unique_for_overwrite<char[]>(size); // recv fills it: no need to zero 16 KiB first
    for (;;) {
        auto n = co_await s.recv(coport::buffer(buf.get(), size));
        if (!n || *n == 0) co_return; // error or the client closed
        auto sent = co_await s.send_all(coport::buffer(buf.get(), *n));
        if (!sent) co_return;
    }
}

coport::task<void> serve(coport::io_context& ctx, coport::tcp_listener& listener, long max_connections) {
    coport::async_scope scope;
    for (long i = 0; max_connections == 0 || i < max_connections;) {
        auto s = co_await listener.accept();
        if (!s && coport::tcp_listener::is_transient_accept_error(s.error())) {
            std::fprintf(stderr, "accept: %s; again in 100 ms\n", s.error().message().c_str());
            co_await ctx.sleep_for(std::chrono::milliseconds(100)); // e.g. out of descriptors: clients leave
            continue;
        }
        if (!s) {
            std::fprintf(stderr, "accept: %s\n", s.error().message().c_str());
            break;
        }
        scope.spawn(ctx, session(std::move(*s))); // sessions spread over the threads running ctx
        ++i;
    }
    co_await scope.join();
}

int main(int argc, char** argv) {
    const std::string host = argc > 1 ? argv[1] : "127.0.0.1";
    const int port = argc > 2 ? std::atoi(argv[2]) : 7777;
    const int threads = argc > 3 ? std::atoi(argv[3]) : 2;
    const long max_connections = argc > 4 ? std::atol(argv[4]) : 0;

    coport::io_context ctx;
    auto addr = coport::ip_address::parse(host);
    if (!addr) {
        std::fprintf(stderr, "%s: %s\n", host.c_str(), addr.error().message().c_str());
        return 2;
    }
    auto listener = coport::tcp_listener::bind(ctx, coport::endpoint(*addr, static_cast<std::uint16_t>(port)));
    if (!listener) {
        std::fprintf(stderr, "bind %s:%d: %s\n", host.c_str(), port, listener.error().message().c_str());
        return 1;
    }
    std::printf("echo_server listening on %s\n", listener->local_endpoint().value().to_string().c_str());
    std::fflush(stdout);
    coport::thread_pool_runner helpers(ctx, static_cast<unsigned>(threads > 1 ? threads - 1 : 0));
    auto guard = ctx.make_work_guard();
    ctx.block_on(serve(ctx, *listener, max_connections));
    guard.reset();
    helpers.join();
    return 0;
}
