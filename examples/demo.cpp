// demo: a coroutine echo server and N coroutine clients in one process, over loopback; every echoed byte
// is checked, then a summary is printed (connections, bytes, round trips per second, backend).
// Run: demo [-c connections=64] [-s message_bytes=1024] [-d seconds=2] [-t threads=2]
// CTest: -d 1
#include <coport/coport.hpp>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

using namespace std::chrono_literals;

namespace {

struct stats {
    std::atomic<std::uint64_t> round_trips{0};
    std::atomic<std::uint64_t> bytes{0};
    std::atomic<int> failures{0};
};

// Server side: echo whatever arrives until the client closes.
coport::task<void> session(coport::tcp_socket s) {
    std::vector<char> buf(64 * 1024);
    for (;;) {
        auto n = co_await s.recv(coport::buffer(buf));
        if (!n || *n == 0) co_return; // error or EOF
        auto sent = co_await s.send_all(coport::buffer(buf.data(), *n));
        if (!sent) co_return;
    }
}

coport::task<void> server(coport::io_context& ctx, coport::tcp_listener& listener, int connections) {
    coport::async_scope scope;
    for (int i = 0; i < connections; ++i) {
        auto s = co_await listener.accept();
        if (!s) break;
        (void)s->set_no_delay(true);
        scope.spawn(ctx, session(std::move(*s))); // the sessions spread over the threads running ctx
    }
    co_await scope.join();
}

// Client side: send a message, read the echo back, compare, repeat until the deadline.
coport::task<void> client(coport::io_context& ctx, std::uint16_t port, std::size_t size,
                          std::chrono::steady_clock::time_point deadline, int id, stats& st) {
    auto s = co_await coport::tcp_socket::connect(ctx, "127.0.0.1", port);
    if (!s) {
        std::fprintf(stderr, "client %d: connect: %s\n", id, s.error().message().c_str());
        st.failures.fetch_add(1);
        co_return;
    }
    (void)s->set_no_delay(true);
    std::vector<char> out(size), in(size);
    unsigned char seed = static_cast<unsigned char>(id);
    while (std::chrono::steady_clock::now() < deadline) {
        for (auto& c : out) c = static_cast<char>(seed++);
        auto w = co_await s->send_all(coport::buffer(out));
        auto r = co_await s->recv_exact(coport::buffer(in));
        if (!w || !r || in != out) {
            std::fprintf(stderr, "client %d: %s\n", id,
                         !w ? w.error().message().c_str() : !r ? r.error().message().c_str() : "echo mismatch");
            st.failures.fetch_add(1);
            co_return;
        }
        st.round_trips.fetch_add(1, std::memory_order_relaxed);
        st.bytes.fetch_add(2 * size, std::memory_order_relaxed);
    }
    s->close();
}

int arg(int argc, char** argv, const char* flag, int def) {
    for (int i = 1; i + 1 < argc; ++i)
        if (std::strcmp(argv[i], flag) == 0) return std::atoi(argv[i + 1]);
    return def;
}

} // namespace

int main(int argc, char** argv) {
    const int connections = arg(argc, argv, "-c", 64);
    const auto size = static_cast<std::size_t>(arg(argc, argv, "-s", 1024));
    const int seconds = arg(argc, argv, "-d", 2);
    const int threads = arg(argc, argv, "-t", 2);
    if (connections < 1 || size < 1 || seconds < 0 || threads < 1) {
        std::fprintf(stderr, "usage: demo [-c connections] [-s message_bytes] [-d seconds] [-t threads]\n");
        return 2;
    }

    coport::io_context ctx;
    auto listener = coport::tcp_listener::bind(ctx, coport::endpoint(coport::ip_address::loopback_v4(), 0));
    if (!listener) {
        std::fprintf(stderr, "bind: %s\n", listener.error().message().c_str());
        return 1;
    }
    const std::uint16_t port = listener->local_endpoint().value().port();

    stats st;
    const auto start = std::chrono::steady_clock::now();
    const auto deadline = start + std::chrono::seconds(seconds);
    auto everything = [&]() -> coport::task<void> {
        coport::async_scope scope;
        scope.spawn(server(ctx, *listener, connections));
        for (int i = 0; i < connections; ++i) scope.spawn(ctx, client(ctx, port, size, deadline, i, st));
        co_await scope.join();
    };
    {
        coport::thread_pool_runner helpers(ctx, static_cast<unsigned>(threads - 1));
        auto guard = ctx.make_work_guard(); // keeps the helpers running until the main task is done
        ctx.block_on(everything());
        guard.reset();
        helpers.join();
    }
    const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

    std::printf("coport demo: backend %s (%s), %d threads, server on 127.0.0.1:%u\n", ctx.backend_name(),
                ctx.backend_features().c_str(), threads, port);
    std::printf("  connections   %d\n", connections);
    std::printf("  message size  %zu bytes\n", size);
    std::printf("  round trips   %llu (%.0f per second)\n", static_cast<unsigned long long>(st.round_trips.load()),
                st.round_trips.load() / elapsed);
    std::printf("  bytes echoed  %llu (%.1f MB/s), every byte checked\n",
                static_cast<unsigned long long>(st.bytes.load() / 2), st.bytes.load() / 2 / elapsed / 1e6);
    std::printf("  failures      %d\n", st.failures.load());
    if (st.failures.load() != 0 || st.round_trips.load() == 0) {
        std::printf("demo FAILED\n");
        return 1;
    }
    std::printf("demo OK\n");
    return 0;
}
