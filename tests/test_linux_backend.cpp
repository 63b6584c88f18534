// SPDX-License-Identifier: MIT
// Linux only: choosing between io_uring and epoll, and the automatic fallback when io_uring is refused.
#if defined(__linux__)
#include <coport/coport.hpp>

#include "support.hpp"

#include <liburing.h>
#include <dirent.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

using namespace std::chrono_literals;

namespace {
std::string g_logged;
int g_log_calls = 0;

coport::task<bool> echo_once(coport::io_context& ctx) {
    auto l = coport::tcp_listener::bind(ctx, coport::endpoint(coport::ip_address::loopback_v4(), 0));
    if (!l) co_return false;
    auto c = co_await coport::tcp_socket::connect(ctx, "127.0.0.1", l->local_endpoint()->port());
    auto s = co_await l->accept();
    if (!c || !s) co_return false;
    co_await c->send_all(coport::buffer("ping", 4));
    char b[4];
    auto r = co_await s->recv_exact(coport::buffer(b, 4));
    co_return r && std::string(b, 4) == "ping";
}
} // namespace

TEST_CASE("io_uring refused: construction falls back to epoll, says so once, and works", "[uring][epoll]") {
    ::setenv("COPORT_DISABLE_IO_URING", "1", 1);
    ::unsetenv("COPORT_BACKEND");
    auto prev = coport::set_fallback_logger([](const char* m) {
        g_logged = m;
        ++g_log_calls;
    });
    {
        coport::io_context ctx;
        CHECK(std::string(ctx.backend_name()) == "epoll");
        CHECK(ctx.block_on(echo_once(ctx)));
    }
    { coport::io_context again; } // logged once per process, not per context
    // Asking for io_uring explicitly does not fall back: it fails, naming the reason.
    coport::io_context_options o;
    o.backend = coport::backend_kind::io_uring;
    try {
        coport::io_context ctx(o);
        FAIL("io_context constructed although io_uring was disabled");
    } catch (const std::system_error& e) {
        CHECK(std::string(e.what()).find("COPORT_DISABLE_IO_URING") != std::string::npos);
        CHECK(e.code() == coport::errc::not_supported);
    }
    ::unsetenv("COPORT_DISABLE_IO_URING");
    coport::set_fallback_logger(prev);
    if (g_log_calls == 0) COPORT_SKIP("the fallback was already logged earlier in this process");
    CHECK(g_log_calls == 1);
    CHECK(g_logged.find("epoll") != std::string::npos);
}

TEST_CASE("the backend can be chosen by option and by COPORT_BACKEND", "[uring][epoll]") {
    coport::io_context_options o;
    o.backend = coport::backend_kind::epoll;
    coport::io_context e(o);
    CHECK(std::string(e.backend_name()) == "epoll");
    CHECK(e.block_on(echo_once(e)));
    o.backend = coport::backend_kind::io_uring;
    try {
        coport::io_context u(o);
        CHECK(std::string(u.backend_name()) == "io_uring");
        CHECK(u.block_on(echo_once(u)));
    } catch (const std::system_error& err) {
        COPORT_SKIP("io_uring unavailable here: " << err.what());
    }
}

namespace {
/// Whether this kernel takes a ring with the single-issuer flags (independently of coport).
bool kernel_takes_single_issuer() {
    io_uring ring;
    io_uring_params p{};
    p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_TASKRUN_FLAG;
    if (io_uring_queue_init_params(8, &ring, &p) < 0) return false;
    io_uring_queue_exit(&ring);
    return true;
}
} // namespace

TEST_CASE("single_thread io_context: one issuer, deferred completions, other threads still post and cancel",
          "[uring][epoll]") {
    coport::io_context_options o;
    o.single_thread = true;
    coport::io_context ctx(o);
    const std::string features = ctx.backend_features();
    INFO("backend " << ctx.backend_name() << ": " << features);
    if (std::string(ctx.backend_name()) == "io_uring") {
        if (kernel_takes_single_issuer()) {
            CHECK(features.find("SINGLE_ISSUER") != std::string::npos);
            CHECK(features.find("DEFER_TASKRUN") != std::string::npos);
        } else {
            WARN("this kernel refuses SINGLE_ISSUER|DEFER_TASKRUN; the ring runs without them");
        }
    }

    // run() from any other thread is refused, before it touches the ring.
    bool refused = false;
    std::thread([&] {
        try {
            ctx.run();
        } catch (const std::logic_error&) {
            refused = true;
        }
    }).join();
    CHECK(refused);

    // 1 MiB each way while 2,000 posts arrive from another thread and a recv times out: every completion
    // is deferred until the loop asks for it, including while it is busy with local work.
    std::atomic<int> posted{0};
    std::vector<char> out(1 << 20), in(1 << 20);
    for (std::size_t i = 0; i < out.size(); ++i) out[i] = static_cast<char>(i * 31 + 7);
    coport::result<std::size_t> timed = 0;
    auto run = [&]() -> coport::task<bool> {
        auto l = coport::tcp_listener::bind(ctx, coport::endpoint(coport::ip_address::loopback_v4(), 0));
        if (!l) co_return false;
        auto c = co_await coport::tcp_socket::connect(ctx, "127.0.0.1", l->local_endpoint()->port());
        auto s = co_await l->accept();
        if (!c || !s) co_return false;
        std::thread poster([&] {
            for (int i = 0; i < 2000; ++i) ctx.post([&] { posted.fetch_add(1, std::memory_order_relaxed); });
        });
        auto [sent, got] = co_await coport::when_all(c->send_all(coport::buffer(out.data(), out.size())),
                                                     s->recv_exact(coport::buffer(in.data(), in.size())));
        poster.join();
        char b[4];
        timed = co_await coport::with_timeout(ctx, 50ms, [&](std::stop_token st) {
            return s->recv(coport::buffer(b, sizeof b), st);
        });
        co_return sent && got && *got == in.size();
    };
    CHECK(ctx.block_on(run()));
    CHECK(in == out);
    CHECK(!timed);
    if (!timed) CHECK(timed.error() == coport::errc::timed_out);
    while (posted.load() < 2000) ctx.run_one();
    CHECK(posted.load() == 2000);
}

TEST_CASE("single_thread io_context: destruction cancels what is in flight and resumes it", "[uring][epoll]") {
    coport::result<std::size_t> received = 0;
    bool connected = false, resumed = false;
    {
        coport::io_context_options o;
        o.single_thread = true;
        coport::io_context ctx(o);
        auto session = [](coport::io_context& ctx, coport::result<std::size_t>& received, bool& connected,
                          bool& resumed) -> coport::task<void> {
            auto l = coport::tcp_listener::bind(ctx, coport::endpoint(coport::ip_address::loopback_v4(), 0));
            if (!l) co_return;
            auto c = co_await coport::tcp_socket::connect(ctx, "127.0.0.1", l->local_endpoint()->port());
            auto s = co_await l->accept();
            if (!c || !s) co_return;
            connected = true;
            char b[4];
            received = co_await c->recv(coport::buffer(b, sizeof b)); // nobody sends: in the kernel until the end
            resumed = true;
        };
        coport::spawn(ctx, session(ctx, received, connected, resumed));
        for (int i = 0; i < 1000 && !connected; ++i) ctx.run_one();
        REQUIRE(connected);
        ctx.poll();
        CHECK(!resumed);
    }
    CHECK(resumed);
    REQUIRE(!received);
    CHECK(received.error() == coport::errc::operation_aborted);
}
namespace {
int open_fds() {
    int n = 0;
    if (DIR* d = ::opendir("/proc/self/fd")) {
        while (::readdir(d)) ++n;
        ::closedir(d);
    }
    return n;
}

/// Connects a blocking client socket to 127.0.0.1:port (the kernel completes the handshake into the
/// listener's backlog whether or not anyone accepts): `fd`, or -1 (closed).
int raw_connect_fd(int fd, std::uint16_t port) {
    if (fd < 0) return -1;
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0) {
        ::close(fd);
        return -1;
    }
    return fd;
}
int raw_connect(std::uint16_t port) { return raw_connect_fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), port); }

/// Whether the server side of `fd` is gone: a read sees EOF or a reset within 2 s.
bool peer_gone(int fd) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 2000) != 1) return false;
    char c;
    ssize_t r = ::recv(fd, &c, 1, MSG_DONTWAIT);
    return r == 0 || (r < 0 && errno == ECONNRESET);
}

std::vector<coport::backend_kind> linux_engines() {
    std::vector<coport::backend_kind> v{coport::backend_kind::epoll};
    coport::io_context_options o;
    o.backend = coport::backend_kind::io_uring;
    try {
        coport::io_context probe(o);
        v.push_back(coport::backend_kind::io_uring);
    } catch (const std::system_error&) {
    }
    return v;
}
} // namespace

TEST_CASE("connections that arrive while nobody accepts are handed out in order; close and destruction of the "
          "listener close them (no descriptor leak)",
          "[uring][epoll][accept]") {
    for (auto engine : linux_engines()) {
        coport::io_context_options o;
        o.backend = engine;
        const int fds_before = open_fds();
        std::vector<int> clients;
        std::vector<int> first_bytes;
        bool first_ok = false, cancelled_ok = false;
        {
            coport::io_context ctx(o);
            INFO("engine " << ctx.backend_name());
            for (int round = 0; round < 2; ++round) { // round 0: close(); round 1: the listener is destroyed
                auto l = coport::tcp_listener::bind(ctx, coport::endpoint(coport::ip_address::loopback_v4(), 0));
                REQUIRE(l);
                const std::uint16_t port = l->local_endpoint()->port();
                auto run = [&]() -> coport::task<void> {
                    // One accept first (io_uring: it arms the listener's multishot accept), and one that is
                    // cancelled while waiting.
                    int c0 = raw_connect(port);
                    clients.push_back(c0);
                    auto s0 = co_await l->accept();
                    first_ok = s0.has_value();
                    std::stop_source stop;
                    auto acc = [](coport::tcp_listener& lst, std::stop_token st) -> coport::task<coport::result<coport::tcp_socket>> {
                        auto r = co_await lst.accept(st);
                        co_return r;
                    };
                    auto stopper = [](coport::io_context& cx, std::stop_source& ss) -> coport::task<void> {
                        co_await cx.sleep_for(20ms);
                        ss.request_stop();
                    };
                    auto a = acc(*l, stop.get_token());
                    auto sp = stopper(ctx, stop);
                    auto [r, x] = co_await coport::when_all(std::move(a), std::move(sp));
                    (void)x;
                    cancelled_ok = !r && r.error() == coport::errc::operation_aborted;
                    // 40 connections while nobody accepts, each sending its number: more than the io_uring
                    // engine takes ahead, so some stay in the kernel's backlog.
                    for (int i = 0; i < 40; ++i) {
                        int fd = raw_connect(port);
                        if (fd >= 0) {
                            unsigned char b = static_cast<unsigned char>(i);
                            [[maybe_unused]] auto w = ::send(fd, &b, 1, MSG_NOSIGNAL);
                        }
                        clients.push_back(fd);
                    }
                    co_await ctx.sleep_for(50ms); // the loop runs meanwhile: io_uring accepts ahead
                    // The first 10 are accepted, in the order they connected.
                    for (int i = 0; i < 10; ++i) {
                        auto s = co_await l->accept();
                        if (!s) {
                            first_bytes.push_back(-1);
                            continue;
                        }
                        unsigned char b = 0;
                        auto n = co_await s->recv(coport::buffer(&b, 1));
                        first_bytes.push_back(n && *n == 1 ? b : -1);
                    }
                    if (round == 0) l->close();
                };
                ctx.block_on(run());
                CHECK(first_ok);
                CHECK(cancelled_ok);
                REQUIRE(first_bytes.size() == 10);
                for (int i = 0; i < 10; ++i) CHECK(first_bytes[i] == i);
                first_bytes.clear();
            } // round 1: the listener is destroyed here, with connections accepted for nobody
            (void)ctx.block_on(ctx.sleep_for(50ms));
            // The 30 never accepted in each round are closed (reset) on the server side.
            int gone = 0, expected = 0;
            for (std::size_t i = 0; i < clients.size(); ++i) {
                std::size_t k = i % 42; // per round: c0, then 40; the first 10 of those were accepted and closed
                if (k >= 12) {
                    ++expected;
                    gone += peer_gone(clients[i]);
                }
            }
            CHECK(gone == expected);
        }
        for (int fd : clients)
            if (fd >= 0) ::close(fd);
        CHECK(open_fds() == fds_before);
    }
}

TEST_CASE("an io_context destroyed before its listener: the listener's queued connections are closed with it",
          "[uring][epoll][accept]") {
    for (auto engine : linux_engines()) {
        coport::io_context_options o;
        o.backend = engine;
        const int fds_before = open_fds();
        std::vector<int> clients;
        {
            coport::tcp_listener l;
            {
                coport::io_context ctx(o);
                INFO("engine " << ctx.backend_name());
                auto b = coport::tcp_listener::bind(ctx, coport::endpoint(coport::ip_address::loopback_v4(), 0));
                REQUIRE(b);
                l = std::move(*b);
                const std::uint16_t port = l.local_endpoint()->port();
                auto run = [&]() -> coport::task<void> {
                    clients.push_back(raw_connect(port));
                    auto s0 = co_await l.accept();
                    (void)s0;
                    for (int i = 0; i < 5; ++i) clients.push_back(raw_connect(port));
                    co_await ctx.sleep_for(30ms);
                };
                ctx.block_on(run());
            } // the context goes first, its listener's multishot accept (io_uring) still armed
            l = coport::tcp_listener();
        }
        for (std::size_t i = 1; i < clients.size(); ++i) CHECK(peer_gone(clients[i]));
        for (int fd : clients)
            if (fd >= 0) ::close(fd);
        CHECK(open_fds() == fds_before);
    }
}

TEST_CASE("accept reports too_many_files while the process is out of descriptors, and accepts once it is not",
          "[uring][epoll][accept]") {
    for (auto engine : linux_engines()) {
        coport::io_context_options o;
        o.backend = engine;
        coport::io_context ctx(o);
        INFO("engine " << ctx.backend_name());
        auto l = coport::tcp_listener::bind(ctx, coport::endpoint(coport::ip_address::loopback_v4(), 0));
        REQUIRE(l);
        const std::uint16_t port = l->local_endpoint()->port();
        rlimit saved{};
        REQUIRE(::getrlimit(RLIMIT_NOFILE, &saved) == 0);
        std::vector<int> fillers;
        coport::result<coport::tcp_socket> starved = coport::tcp_socket(), later = coport::tcp_socket();
        int c0 = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        auto run = [&]() -> coport::task<void> {
            // Out of descriptors: a low limit, and every number below it taken. (io_uring reads the limit
            // when an accept is prepared, so this comes before the first accept.)
            rlimit low = saved;
            low.rlim_cur = static_cast<rlim_t>(open_fds() + 16);
            ::setrlimit(RLIMIT_NOFILE, &low);
            for (;;) {
                int fd = ::dup(0);
                if (fd < 0) break;
                fillers.push_back(fd);
            }
            c0 = raw_connect_fd(c0, port);
            starved = co_await l->accept();
            ::close(fillers.back()); // one free again
            fillers.pop_back();
            later = co_await l->accept(); // the connection waited in the backlog
        };
        ctx.block_on(run());
        ::setrlimit(RLIMIT_NOFILE, &saved);
        for (int fd : fillers) ::close(fd);
        if (c0 >= 0) ::close(c0);
        REQUIRE(!starved);
        CHECK(starved.error() == coport::errc::too_many_files);
        CHECK(later.has_value());
    }
}
#endif
