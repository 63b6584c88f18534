// echo_server_per_core: the high-throughput server shape: one io_context per core, each on its own thread
// with its own SO_REUSEPORT listener on the same port; the kernel spreads connections over them (Linux;
// where the OS has no SO_REUSEPORT, e.g. Windows, it says so and serves with one context).
// Run: echo_server_per_core [port=7777] [contexts=cores] [seconds=0 (forever)]
// CTest: 0 2 1
#include <coport/coport.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <thread>
#include <vector>

coport::task<void> session(coport::tcp_socket s) {
    constexpr std::size_t size = 16 * 1024;
    auto buf = std::make_unique_for_overwrite<char[]>(size); // recv fills it: no need to zero it first
    for (;;) {
        auto n = co_await s.recv(coport::buffer(buf.get(), size));
        if (!n || *n == 0) co_return;
        auto sent = co_await s.send_all(coport::buffer(buf.get(), *n));
        if (!sent) co_return;
    }
}

coport::task<void> serve(coport::io_context& ctx, coport::tcp_listener& listener, std::stop_token stop) {
    coport::async_scope scope;
    for (;;) {
        auto s = co_await listener.accept(stop);
        if (!s && coport::tcp_listener::is_transient_accept_error(s.error())) {
            co_await ctx.sleep_for(std::chrono::milliseconds(100), stop); // clients leave meanwhile
            continue;
        }
        if (!s) break; // stopped (operation_aborted) or failed
        scope.spawn(session(std::move(*s)));
    }
    co_await scope.join();
}

int main(int argc, char** argv) {
    const int port = argc > 1 ? std::atoi(argv[1]) : 7777;
    const unsigned cores = std::thread::hardware_concurrency() ? std::thread::hardware_concurrency() : 1;
    unsigned n = argc > 2 ? static_cast<unsigned>(std::atoi(argv[2])) : cores;
    const int seconds = argc > 3 ? std::atoi(argv[3]) : 0;

    coport::listen_options opts;
    opts.reuse_port = true;
    {
        coport::io_context ctx;
        auto l = coport::tcp_listener::bind(ctx, coport::endpoint(coport::ip_address::loopback_v4(), 0), opts);
        if (!l && l.error() == coport::errc::not_supported) {
            std::printf("no SO_REUSEPORT here: one context\n");
            opts.reuse_port = false;
            n = 1;
        }
    }
    std::vector<std::unique_ptr<coport::io_context>> contexts;
    std::vector<coport::tcp_listener> listeners;
    coport::endpoint ep(coport::ip_address::loopback_v4(), static_cast<std::uint16_t>(port));
    for (unsigned i = 0; i < n; ++i) {
        contexts.push_back(std::make_unique<coport::io_context>());
        auto l = coport::tcp_listener::bind(*contexts.back(), ep, opts);
        if (!l) {
            std::fprintf(stderr, "listener %u on %s: %s\n", i, ep.to_string().c_str(), l.error().message().c_str());
            return 1;
        }
        ep = l->local_endpoint().value(); // port 0: the others share the port the first one got
        listeners.push_back(std::move(*l));
    }
    std::printf("echo_server_per_core: %u contexts listening on %s\n", n, ep.to_string().c_str());
    std::fflush(stdout);

    std::stop_source stop;
    std::vector<std::thread> threads;
    for (unsigned i = 0; i < n; ++i)
        threads.emplace_back([&, i] { contexts[i]->block_on(serve(*contexts[i], listeners[i], stop.get_token())); });
    if (seconds > 0) {
        std::this_thread::sleep_for(std::chrono::seconds(seconds));
        stop.request_stop(); // each accept resumes with operation_aborted; sessions end when clients close
    }
    for (auto& t : threads) t.join();
    return 0;
}
