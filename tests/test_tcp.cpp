// SPDX-License-Identifier: MIT
// TCP over the real backend (IOCP under Wine, io_uring natively), loopback only, port 0.
// The same cases run on every backend; backend-specific ones carry its tag.
#include <coport/coport.hpp>

#include "support.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <thread>
#include <vector>

#if defined(__linux__)
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>
#endif

using namespace std::chrono_literals;
using coport::endpoint;
using coport::io_context;
using coport::ip_address;
using coport::result;
using coport::task;
using coport::tcp_listener;
using coport::tcp_socket;

namespace {

endpoint loopback4() { return endpoint(ip_address::loopback_v4(), 0); }

tcp_listener listen_on(io_context& ctx, endpoint ep = loopback4(), int backlog = 1024) {
    coport::listen_options o;
    o.backlog = backlog;
    auto l = tcp_listener::bind(ctx, ep, o);
    REQUIRE(l);
    return std::move(*l);
}

std::uint16_t port_of(const tcp_listener& l) {
    auto ep = l.local_endpoint();
    REQUIRE(ep);
    return ep->port();
}

std::vector<std::byte> pattern(std::size_t n, unsigned seed) {
    std::vector<std::byte> v(n);
    std::mt19937 rng(seed);
    for (auto& b : v) b = static_cast<std::byte>(rng() & 0xff);
    return v;
}

// Echoes until EOF or error.
task<void> echo_session(tcp_socket s) {
    std::vector<std::byte> buf(64 * 1024);
    for (;;) {
        auto n = co_await s.recv(coport::buffer(buf));
        if (!n || *n == 0) break;
        auto w = co_await s.send_all(coport::const_buffer(buf.data(), *n));
        if (!w) break;
    }
}

// Accepts `count` connections and echoes each; joins them all.
task<void> echo_server(tcp_listener& l, int count) {
    coport::async_scope scope;
    for (int i = 0; i < count; ++i) {
        auto s = co_await l.accept();
        if (!s) break;
        scope.spawn(echo_session(std::move(*s)));
    }
    co_await scope.join();
}

struct client_result {
    bool ok = false;
    std::string error;
};

task<void> echo_client(io_context& ctx, std::uint16_t port, std::size_t bytes, unsigned seed, client_result& out) {
    auto s = co_await tcp_socket::connect(ctx, "127.0.0.1", port);
    if (!s) {
        out.error = "connect: " + s.error().message();
        co_return;
    }
    auto data = pattern(bytes, seed);
    std::vector<std::byte> back(bytes);
    // Send in chunks while receiving, so that neither side's buffers fill up.
    auto sender = [](tcp_socket& sock, const std::vector<std::byte>& d) -> task<result<std::size_t>> {
        std::size_t off = 0;
        while (off < d.size()) {
            std::size_t n = std::min<std::size_t>(48 * 1024, d.size() - off);
            auto r = co_await sock.send_all(coport::const_buffer(d.data() + off, n));
            if (!r) co_return coport::unexpected(r.error());
            off += n;
        }
        auto sh = sock.shutdown(coport::shutdown_type::send);
        if (!sh) co_return coport::unexpected(sh.error());
        co_return off;
    };
    auto snd = sender(*s, data);
    auto rcv = s->recv_exact(coport::buffer(back));
    auto [sr, rr] = co_await coport::when_all(std::move(snd), std::move(rcv));
    if (!sr) {
        out.error = "send: " + sr.error().message();
        co_return;
    }
    if (!rr) {
        out.error = "recv: " + rr.error().message();
        co_return;
    }
    std::byte extra[1];
    auto eof = co_await s->recv(coport::buffer(extra, 1));
    if (!eof || *eof != 0) {
        out.error = "no EOF after the echo";
        co_return;
    }
    out.ok = back == data;
    if (!out.ok) out.error = "echoed bytes differ";
}

unsigned worker_threads(io_context& ctx) { return std::string(ctx.backend_name()) == "iocp" ? 4 : 2; }

} // namespace

TEST_CASE("echo: 64 concurrent clients x 1 MiB through a coroutine server on several threads", "[tcp][echo]") {
    io_context ctx;
    auto l = listen_on(ctx);
    const auto port = port_of(l);
    constexpr int clients = 64;
    std::vector<client_result> results(clients);
    auto all = [&]() -> task<void> {
        coport::async_scope scope;
        scope.spawn(echo_server(l, clients));
        for (int i = 0; i < clients; ++i) scope.spawn(echo_client(ctx, port, 1 << 20, 1000 + i, results[i]));
        co_await scope.join();
    };
    coport::thread_pool_runner extra(ctx, worker_threads(ctx) - 1);
    auto guard = ctx.make_work_guard();
    ctx.block_on(all());
    guard.reset();
    extra.join();
    int ok = 0;
    for (auto& r : results) {
        if (!r.ok) UNSCOPED_INFO(r.error);
        ok += r.ok;
    }
    CHECK(ok == clients);
}

TEST_CASE("scatter/gather send and recv with buffers of odd sizes", "[tcp]") {
    io_context ctx;
    auto l = listen_on(ctx);
    const auto port = port_of(l);
    std::string a(7, 'a'), b(1031, 'b'), c(3, 'c'), d(65537, 'd');
    std::vector<char> r1(5), r2(1000), r3(65573);
    result<std::size_t> sent = coport::unexpected(std::error_code(coport::error::eof));
    std::size_t got = 0;
    auto run = [&]() -> task<void> {
        auto cl = co_await tcp_socket::connect(ctx, "127.0.0.1", port);
        auto sv = co_await l.accept();
        if (!cl || !sv) co_return;
        const coport::const_buffer out[] = {coport::buffer(a), coport::buffer(b), coport::buffer(c), coport::buffer(d)};
        const coport::mutable_buffer in[] = {coport::buffer(r1), coport::buffer(r2), coport::buffer(r3)};
        auto sender = [](tcp_socket& s, std::span<const coport::const_buffer> bufs) -> task<result<std::size_t>> {
            auto r = co_await s.send(bufs);
            co_return r;
        };
        auto st = sender(*cl, out);
        auto receiver = [](tcp_socket& s, std::span<const coport::mutable_buffer> bufs, std::size_t total,
                           std::size_t& n) -> task<void> {
            // One recvmsg may return less than everything: loop over the remaining span.
            std::vector<coport::mutable_buffer> rest(bufs.begin(), bufs.end());
            while (n < total) {
                auto r = co_await s.recv(std::span<const coport::mutable_buffer>(rest));
                if (!r || *r == 0) co_return;
                n += *r;
                std::size_t k = *r;
                while (k && !rest.empty()) {
                    std::size_t take = std::min(k, rest.front().size);
                    rest.front().data = static_cast<char*>(rest.front().data) + take;
                    rest.front().size -= take;
                    k -= take;
                    if (rest.front().size == 0) rest.erase(rest.begin());
                }
            }
        };
        auto rt = receiver(*sv, in, r1.size() + r2.size() + r3.size(), got);
        auto [s1, s2] = co_await coport::when_all(std::move(st), std::move(rt));
        sent = s1;
        (void)s2;
    };
    ctx.block_on(run());
    REQUIRE(sent);
    const std::size_t total = a.size() + b.size() + c.size() + d.size();
    CHECK(*sent == total);
    REQUIRE(got == total);
    std::string joined = a + b + c + d;
    std::string received = std::string(r1.begin(), r1.end()) + std::string(r2.begin(), r2.end()) +
                           std::string(r3.begin(), r3.end());
    CHECK(received == joined);
}

TEST_CASE("connect to a closed port is refused; an unresolvable name is host_not_found", "[tcp][errors]") {
    io_context ctx;
    std::uint16_t closed_port;
    {
        auto l = listen_on(ctx);
        closed_port = port_of(l);
    } // closed: nothing listens there now
    auto r = ctx.block_on(tcp_socket::connect(ctx, "127.0.0.1", closed_port));
    REQUIRE(!r);
    CHECK(r.error() == coport::errc::connection_refused);
    INFO(r.error().message());
    CHECK(!r.error().message().empty());

    auto n = ctx.block_on(tcp_socket::connect(ctx, "no-such-host.invalid", 80));
    REQUIRE(!n);
    CHECK(n.error() == coport::errc::host_not_found);

    auto bad = coport::endpoint::parse("300.1.2.3:80");
    CHECK(bad.error() == coport::errc::bad_address);
}

TEST_CASE("IPv6 loopback connect, accept and echo", "[tcp][ipv6]") {
    io_context ctx;
    auto lr = tcp_listener::bind(ctx, endpoint(ip_address::loopback_v6(), 0));
    if (!lr) COPORT_SKIP("no IPv6 loopback here: " << lr.error().message());
    auto port = port_of(*lr);
    client_result res;
    std::string peer;
    auto run = [&]() -> task<void> {
        auto srv = echo_server(*lr, 1);
        auto cli = [&]() -> task<void> {
            auto s = co_await tcp_socket::connect(ctx, "::1", port);
            if (!s) {
                res.error = s.error().message();
                co_return;
            }
            auto ep = s->remote_endpoint();
            if (ep) peer = ep->to_string();
            const char msg[] = "hello over v6";
            auto w = co_await s->send_all(coport::buffer(msg, sizeof msg));
            char back[sizeof msg] = {};
            auto r = co_await s->recv_exact(coport::buffer(back, sizeof back));
            res.ok = w && r && std::memcmp(back, msg, sizeof msg) == 0;
            s->close();
        };
        auto c = cli();
        co_await coport::when_all(std::move(srv), std::move(c));
    };
    ctx.block_on(run());
    INFO(res.error);
    CHECK(res.ok);
    CHECK(peer == "[::1]:" + std::to_string(port));
}

TEST_CASE("peer reset during a pending recv is connection_reset; graceful shutdown is EOF", "[tcp][errors]") {
    io_context ctx;
    auto l = listen_on(ctx);
    auto port = port_of(l);
    result<std::size_t> reset_recv = 0, eof_recv = 1;
    result<std::size_t> exact = 0;
    auto run = [&]() -> task<void> {
        // reset
        {
            auto c = co_await tcp_socket::connect(ctx, "127.0.0.1", port);
            auto s = co_await l.accept();
            if (!c || !s) co_return;
            auto killer = [](io_context& cx, tcp_socket& victim) -> task<void> {
                co_await cx.sleep_for(50ms); // the client's recv is pending by then
                (void)victim.set_linger(true, 0s);
                victim.close(); // SO_LINGER {1,0}: RST
            };
            std::byte b[16];
            auto k = killer(ctx, *s);
            auto rcv = [](tcp_socket& sock, std::byte* p) -> task<result<std::size_t>> {
                auto r = co_await sock.recv(coport::buffer(p, 16));
                co_return r;
            };
            auto rv = rcv(*c, b);
            auto [r, kk] = co_await coport::when_all(std::move(rv), std::move(k));
            reset_recv = r;
            (void)kk;
        }
        // graceful
        {
            auto c = co_await tcp_socket::connect(ctx, "127.0.0.1", port);
            auto s = co_await l.accept();
            if (!c || !s) co_return;
            co_await s->send_all(coport::buffer("abc", 3));
            (void)s->shutdown(coport::shutdown_type::send);
            std::byte b[8];
            exact = co_await c->recv_exact(coport::buffer(b, 8)); // only 3 bytes come: EOF
            eof_recv = co_await c->recv(coport::buffer(b, 8));
        }
    };
    ctx.block_on(run());
    REQUIRE(!reset_recv);
    INFO(reset_recv.error().message());
    CHECK(reset_recv.error() == coport::errc::connection_reset);
    REQUIRE(!exact);
    CHECK(exact.error() == coport::errc::eof);
    REQUIRE(eof_recv);
    CHECK(*eof_recv == 0);
}

TEST_CASE("cancel a pending recv, accept and connect: operation_aborted, and the socket stays usable",
          "[tcp][cancel]") {
    io_context ctx;
    auto l = listen_on(ctx);
    auto port = port_of(l);
    result<std::size_t> cancelled_recv = 0, later_recv = 0;
    result<tcp_socket> cancelled_accept = tcp_socket(), later_accept = tcp_socket();
    auto run = [&]() -> task<void> {
        auto c = co_await tcp_socket::connect(ctx, "127.0.0.1", port);
        auto s = co_await l.accept();
        if (!c || !s) co_return;
        // recv
        std::stop_source stop;
        auto stopper = [](io_context& cx, std::stop_source& ss) -> task<void> {
            co_await cx.sleep_for(30ms);
            ss.request_stop();
        };
        std::byte b[4];
        auto rcv = [](tcp_socket& sock, std::byte* p, std::stop_token st) -> task<result<std::size_t>> {
            auto r = co_await sock.recv(coport::buffer(p, 4), st);
            co_return r;
        };
        auto rv = rcv(*c, b, stop.get_token());
        auto sp = stopper(ctx, stop);
        auto [r1, r2] = co_await coport::when_all(std::move(rv), std::move(sp));
        cancelled_recv = r1;
        (void)r2;
        co_await s->send_all(coport::buffer("ping", 4));
        later_recv = co_await c->recv_exact(coport::buffer(b, 4));
        // accept
        std::stop_source stop2;
        auto acc = [](tcp_listener& lst, std::stop_token st) -> task<result<tcp_socket>> {
            auto r = co_await lst.accept(st);
            co_return r;
        };
        auto av = acc(l, stop2.get_token());
        auto sp2 = stopper(ctx, stop2);
        auto [a1, a2] = co_await coport::when_all(std::move(av), std::move(sp2));
        cancelled_accept = std::move(a1);
        (void)a2;
        auto c2 = co_await tcp_socket::connect(ctx, "127.0.0.1", port);
        later_accept = co_await l.accept();
    };
    ctx.block_on(run());
    REQUIRE(!cancelled_recv);
    CHECK(cancelled_recv.error() == coport::errc::operation_aborted);
    REQUIRE(later_recv);
    CHECK(*later_recv == 4);
    REQUIRE(!cancelled_accept);
    CHECK(cancelled_accept.error() == coport::errc::operation_aborted);
    CHECK(later_accept.has_value());
}

TEST_CASE("cancel a pending connect: operation_aborted", "[tcp][cancel]") {
    io_context ctx;
    // A listener that never accepts, with a tiny backlog: once its queue is full the kernel drops further
    // SYNs, so the next connect stays pending (retransmitting) until cancelled.
    auto l = listen_on(ctx, loopback4(), 1);
    auto port = port_of(l);
    std::vector<tcp_socket> fillers;
    result<void> pending = {};
    bool saw_pending = false;
    auto run = [&]() -> task<void> {
        for (int i = 0; i < 8 && !saw_pending; ++i) {
            std::stop_source stop;
            auto stopper = [](io_context& cx, std::stop_source& ss) -> task<void> {
                co_await cx.sleep_for(300ms);
                ss.request_stop();
            };
            tcp_socket s(ctx);
            auto con = [](tcp_socket& sock, endpoint ep, std::stop_token st) -> task<result<void>> {
                auto r = co_await sock.connect(ep, st);
                co_return r;
            };
            auto cv = con(s, endpoint(ip_address::loopback_v4(), port), stop.get_token());
            auto sp = stopper(ctx, stop);
            auto [r, x] = co_await coport::when_all(std::move(cv), std::move(sp));
            (void)x;
            if (!r && r.error() == coport::errc::operation_aborted) {
                saw_pending = true;
                pending = r;
            } else {
                fillers.push_back(std::move(s)); // it got in: the queue fills up
            }
        }
    };
    ctx.block_on(run());
    REQUIRE(saw_pending);
    CHECK(pending.error() == coport::errc::operation_aborted);
}

TEST_CASE("close with a recv pending resumes it with operation_aborted", "[tcp][cancel]") {
    io_context ctx;
    auto l = listen_on(ctx);
    auto port = port_of(l);
    result<std::size_t> r = 0;
    auto run = [&]() -> task<void> {
        auto c = co_await tcp_socket::connect(ctx, "127.0.0.1", port);
        auto s = co_await l.accept();
        if (!c || !s) co_return;
        auto closer = [](io_context& cx, tcp_socket& sock) -> task<void> {
            co_await cx.sleep_for(30ms);
            sock.close();
        };
        std::byte b[4];
        auto rcv = [](tcp_socket& sock, std::byte* p) -> task<result<std::size_t>> {
            auto x = co_await sock.recv(coport::buffer(p, 4));
            co_return x;
        };
        auto rv = rcv(*c, b);
        auto cl = closer(ctx, *c);
        auto [a, bb] = co_await coport::when_all(std::move(rv), std::move(cl));
        r = a;
        (void)bb;
    };
    ctx.block_on(run());
    REQUIRE(!r);
    CHECK(r.error() == coport::errc::operation_aborted);
}

TEST_CASE("1,000 cancel/complete races on one connection: one resumption each, no byte lost or duplicated",
          "[tcp][cancel][stress]") {
    io_context ctx;
    auto l = listen_on(ctx);
    auto port = port_of(l);
    constexpr int rounds = 1000;
    int resumed = 0, aborted = 0, completed = 0;
    bool stream_intact = true;
    std::uint64_t received_bytes = 0, sent_bytes = 0;
    auto run = [&]() -> task<void> {
        auto c = co_await tcp_socket::connect(ctx, "127.0.0.1", port);
        auto s = co_await l.accept();
        if (!c || !s) co_return;
        std::mt19937 rng(7);
        std::uint8_t next_expected = 0, next_to_send = 0;
        for (int i = 0; i < rounds; ++i) {
            std::stop_source stop;
            // A sender writes a few counting bytes after a random short delay; a stopper fires at a random
            // moment. The recv either completes with bytes or is aborted, never both, never twice.
            int delay_us = static_cast<int>(rng() % 400);
            int stop_us = static_cast<int>(rng() % 400);
            std::uint8_t chunk[3];
            for (auto& b : chunk) b = next_to_send++;
            sent_bytes += 3;
            auto sender = [](io_context& cx, tcp_socket& sock, std::uint8_t* p, int us) -> task<void> {
                co_await cx.sleep_for(std::chrono::microseconds(us));
                co_await sock.send_all(coport::buffer(p, 3));
            };
            auto stopper = [](io_context& cx, std::stop_source& ss, int us) -> task<void> {
                co_await cx.sleep_for(std::chrono::microseconds(us));
                ss.request_stop();
            };
            std::uint8_t in[3];
            auto rcv = [](tcp_socket& sock, std::uint8_t* p, std::stop_token st) -> task<result<std::size_t>> {
                auto x = co_await sock.recv(coport::buffer(p, 3), st);
                co_return x;
            };
            auto rv = rcv(*c, in, stop.get_token());
            auto sd = sender(ctx, *s, chunk, delay_us);
            auto sp = stopper(ctx, stop, stop_us);
            auto [r, a, b] = co_await coport::when_all(std::move(rv), std::move(sd), std::move(sp));
            (void)a;
            (void)b;
            ++resumed;
            auto check = [&](const std::uint8_t* p, std::size_t n) {
                for (std::size_t k = 0; k < n; ++k)
                    if (p[k] != next_expected++) stream_intact = false;
                received_bytes += n;
            };
            if (r) {
                ++completed;
                check(in, *r);
            } else if (r.error() == coport::errc::operation_aborted) {
                ++aborted;
            } else {
                stream_intact = false;
            }
        }
        // Whatever the aborted recvs left in the socket is still there, in order.
        (void)s->shutdown(coport::shutdown_type::send);
        std::uint8_t rest[4096];
        for (;;) {
            auto r = co_await c->recv(coport::buffer(rest, sizeof rest));
            if (!r || *r == 0) break;
            for (std::size_t k = 0; k < *r; ++k)
                if (rest[k] != next_expected++) stream_intact = false;
            received_bytes += *r;
        }
    };
    ctx.block_on(run());
    // Which side wins each round is up to the scheduler (under strace none was aborted): only the invariants
    // are checked here; each outcome is forced in the next test case.
    CHECK(resumed == rounds);
    CHECK(aborted + completed == rounds);
    CHECK(stream_intact);
    CHECK(received_bytes == sent_bytes);
}

namespace {
task<result<std::size_t>> recv_some(tcp_socket& sock, std::uint8_t* p, std::size_t n, std::stop_token st) {
    auto r = co_await sock.recv(coport::buffer(p, n), std::move(st));
    co_return r;
}
} // namespace

TEST_CASE("recv: a stop while it is surely pending aborts it and loses no byte; a stop after it completed changes "
          "nothing",
          "[tcp][cancel]") {
    io_context ctx;
    auto l = listen_on(ctx);
    auto port = port_of(l);
    auto connect_both = [](io_context& cx, tcp_listener& lis, std::uint16_t p) -> task<std::vector<tcp_socket>> {
        std::vector<tcp_socket> v;
        auto c = co_await tcp_socket::connect(cx, "127.0.0.1", p);
        auto s = co_await lis.accept();
        if (c && s) {
            v.push_back(std::move(*c));
            v.push_back(std::move(*s));
        }
        co_return v;
    };
    auto socks = ctx.block_on(connect_both(ctx, l, port));
    REQUIRE(socks.size() == 2);
    tcp_socket& c = socks[0];
    tcp_socket& s = socks[1];
    const std::uint8_t data[3] = {1, 2, 3};
    std::uint8_t in[3] = {};

    SECTION("stop first: nothing was sent, so the recv is pending when the stop comes") {
        std::stop_source src;
        // when_all starts its children in order on this thread: the recv is in progress before this runs.
        auto stopper = [](io_context& cx, std::stop_source& ss) -> task<void> {
            co_await cx.schedule();
            ss.request_stop();
        };
        auto both = [](task<result<std::size_t>> rv, task<void> sp) -> task<result<std::size_t>> {
            auto [r, v] = co_await coport::when_all(std::move(rv), std::move(sp));
            (void)v;
            co_return r;
        };
        auto rv = recv_some(c, in, sizeof in, src.get_token());
        auto sp = stopper(ctx, src);
        auto r = ctx.block_on(both(std::move(rv), std::move(sp)));
        REQUIRE(!r);
        CHECK(r.error() == coport::errc::operation_aborted);
        // The aborted recv consumed nothing: bytes sent now all arrive, in order.
        REQUIRE(ctx.block_on(s.send_all(coport::buffer(data, sizeof data))));
        auto n = ctx.block_on(c.recv_exact(coport::buffer(in, sizeof in)));
        REQUIRE(n);
        CHECK(*n == 3);
        CHECK((in[0] == 1 && in[1] == 2 && in[2] == 3));
    }
    SECTION("completion first: the data is sent and no stop comes until the recv has returned") {
        std::stop_source src;
        REQUIRE(ctx.block_on(s.send_all(coport::buffer(data, sizeof data))));
        auto r = ctx.block_on(recv_some(c, in, sizeof in, src.get_token()));
        src.request_stop(); // after the completion: it must not turn it into an error
        REQUIRE(r);
        REQUIRE(*r >= 1);
        std::size_t got = *r;
        if (got < sizeof in) {
            auto n = ctx.block_on(c.recv_exact(coport::buffer(in + got, sizeof in - got)));
            REQUIRE(n);
            CHECK(*n == sizeof in - got);
        }
        CHECK((in[0] == 1 && in[1] == 2 && in[2] == 3));
        // The stream goes on: the next recv (without the stopped token) gets the next bytes.
        const std::uint8_t more[2] = {4, 5};
        REQUIRE(ctx.block_on(s.send_all(coport::buffer(more, sizeof more))));
        auto n = ctx.block_on(c.recv_exact(coport::buffer(in, sizeof more)));
        REQUIRE(n);
        CHECK(*n == 2);
        CHECK((in[0] == 4 && in[1] == 5));
    }
}

namespace {
// The peers of the idle-connection test: on Linux a child process holds the client ends, so that each
// process needs only `n` descriptors (RLIMIT_NOFILE is often 20,000 and not raisable). Plain blocking
// sockets: the library under test is on the accepting side.
struct idle_peers {
#if defined(__linux__)
    pid_t pid = -1;
    int to_child = -1, from_child = -1;
    bool start(std::uint16_t port, int n) {
        int a[2], b[2];
        if (pipe(a) != 0 || pipe(b) != 0) return false;
        pid = fork();
        if (pid < 0) return false;
        if (pid == 0) {
            ::close(a[1]);
            ::close(b[0]);
            std::vector<int> fds;
            sockaddr_in sa{};
            sa.sin_family = AF_INET;
            sa.sin_port = htons(port);
            sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
            char ok = 1;
            for (int i = 0; i < n; ++i) {
                int fd = ::socket(AF_INET, SOCK_STREAM, 0);
                if (fd < 0 || ::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0) {
                    ok = 0;
                    break;
                }
                fds.push_back(fd);
            }
            [[maybe_unused]] auto w = ::write(b[1], &ok, 1);
            char c;
            [[maybe_unused]] auto r = ::read(a[0], &c, 1); // parent: close them now
            for (int fd : fds) ::close(fd);
            _exit(0);
        }
        ::close(a[0]);
        ::close(b[1]);
        to_child = a[1];
        from_child = b[0];
        return true;
    }
    bool connected() {
        char ok = 0;
        return ::read(from_child, &ok, 1) == 1 && ok == 1;
    }
    bool told = false;
    void close_all() {
        if (told) return;
        told = true;
        char c = 1;
        [[maybe_unused]] auto w = ::write(to_child, &c, 1);
    }
    ~idle_peers() {
        if (pid > 0) {
            close_all();
            int st;
            waitpid(pid, &st, 0);
            ::close(to_child);
            ::close(from_child);
        }
    }
#endif
};
} // namespace

TEST_CASE("many concurrent idle connections are accepted and closed cleanly", "[tcp][scale]") {
    io_context ctx;
    const bool iocp = std::string(ctx.backend_name()) == "iocp";
    // 10,000 natively; under Wine every socket is a wineserver handle, so 1,000 in one process there.
    const int want = iocp ? 1000 : 10000;
    auto l = listen_on(ctx, loopback4(), 4096);
    auto port = port_of(l);
#if defined(__linux__)
    rlimit lim{};
    getrlimit(RLIMIT_NOFILE, &lim);
    const rlim_t need = static_cast<rlim_t>(want) + 256;
    if (lim.rlim_cur < need && lim.rlim_max >= need) {
        lim.rlim_cur = need;
        setrlimit(RLIMIT_NOFILE, &lim);
    }
    if (lim.rlim_cur < need) COPORT_SKIP("RLIMIT_NOFILE is " << lim.rlim_cur << ", need " << need);
    idle_peers peers;
    std::thread connector;
    bool peers_ok = false;
    const bool in_process = false;
#else
    const bool in_process = true;
#endif
    std::vector<tcp_socket> clients, servers;
    servers.reserve(want);
    int connect_errors = 0, accept_errors = 0, eofs = 0;
    auto run = [&]() -> task<void> {
        auto acceptor = [](tcp_listener& lst, std::vector<tcp_socket>& out, int n, int& errs) -> task<void> {
            for (int i = 0; i < n; ++i) {
                auto s = co_await lst.accept();
                if (!s) {
                    ++errs;
                    break;
                }
                out.push_back(std::move(*s));
            }
        };
        auto connector_task = [](io_context& cx, std::uint16_t p, std::vector<tcp_socket>& out, int n,
                                 int& errs) -> task<void> {
            for (int i = 0; i < n; ++i) {
                tcp_socket s(cx);
                auto r = co_await s.connect(endpoint(ip_address::loopback_v4(), p));
                if (!r) ++errs;
                else out.push_back(std::move(s));
            }
        };
        auto a = acceptor(l, servers, want, accept_errors);
        auto c = connector_task(ctx, port, clients, in_process ? want : 0, connect_errors);
        co_await coport::when_all(std::move(a), std::move(c));
    };
#if defined(__linux__)
    REQUIRE(peers.start(port, want));
    connector = std::thread([&] { peers_ok = peers.connected(); });
#endif
    ctx.block_on(run());
#if defined(__linux__)
    connector.join();
    CHECK(peers_ok);
    peers.close_all(); // every client closes
#else
    for (auto& s : clients) s.close();
#endif
    auto drain = [&]() -> task<void> {
        for (auto& s : servers) {
            std::byte b[1];
            auto r = co_await s.recv(coport::buffer(b, 1));
            if (r && *r == 0) ++eofs;
            s.close();
        }
    };
    ctx.block_on(drain());
    CHECK(connect_errors == 0);
    CHECK(accept_errors == 0);
    CHECK(static_cast<int>(servers.size()) == want);
    CHECK(eofs == want);
}

TEST_CASE("socket options and endpoints", "[tcp]") {
    io_context ctx;
    auto l = listen_on(ctx);
    auto port = port_of(l);
    auto run = [&]() -> task<result<tcp_socket>> {
        auto c = co_await tcp_socket::connect(ctx, "localhost", port);
        co_return c;
    };
    auto c = ctx.block_on(run());
    REQUIRE(c);
    CHECK(c->set_no_delay(true));
    CHECK(c->no_delay().value());
    CHECK(c->set_keep_alive(true));
    CHECK(c->keep_alive().value());
    CHECK(c->set_receive_buffer_size(1 << 16));
    CHECK(c->receive_buffer_size().value() >= (1 << 16) / 2);
    auto rep = c->remote_endpoint();
    REQUIRE(rep);
    CHECK(rep->port() == port);
    CHECK(rep->address().is_loopback());
    auto ep = coport::endpoint::parse("[::1]:8080");
    REQUIRE(ep);
    CHECK(ep->to_string() == "[::1]:8080");
    CHECK(coport::endpoint::parse("127.0.0.1:65536").error() == coport::errc::bad_address);
    tcp_socket closed;
    CHECK(closed.local_endpoint().error() == coport::errc::not_a_socket);
}

namespace {
// Reads everything until EOF (or an error), in chunks of `chunk` bytes with `pause` between reads.
task<std::vector<std::byte>> read_to_end(io_context& ctx, tcp_socket& s, std::size_t chunk,
                                         std::chrono::microseconds pause) {
    std::vector<std::byte> all, buf(chunk);
    for (;;) {
        auto r = co_await s.recv(coport::buffer(buf));
        if (!r || *r == 0) break;
        all.insert(all.end(), buf.begin(), buf.begin() + static_cast<std::ptrdiff_t>(*r));
        if (pause.count() > 0) co_await ctx.sleep_for(pause);
    }
    co_return all;
}
} // namespace

TEST_CASE("send_all and recv_exact through partial transfers: every byte once, in order", "[tcp][send_all]") {
    io_context ctx;
    auto l = listen_on(ctx);
    auto port = port_of(l);
    const auto data = pattern(512 * 1024, 77);
    bool partial_seen = false, setup_ok = false;
    result<std::size_t> all_sent = 0, exact = 0, one_by_one = 0;
    std::size_t sent_count = 0, received_count = 0;
    std::vector<std::byte> echoed;
    std::byte small[8] = {};
    auto run = [&]() -> task<void> {
        auto c = co_await tcp_socket::connect(ctx, "127.0.0.1", port);
        auto s = co_await l.accept();
        if (!c || !s) co_return;
        setup_ok = true;
        (void)c->set_send_buffer_size(16 * 1024);
        // With that buffer one send takes only part of 512 KiB (on Linux; IOCP completes a send whole),
        // and send_all has to send the rest itself, while a slow reader (4 KiB per 200 us) takes
        // everything until EOF.
        auto writer = [](tcp_socket& sock, const std::vector<std::byte>& d, bool& partial,
                         std::size_t& count) -> task<result<std::size_t>> {
            auto first = co_await sock.send(coport::buffer(d));
            if (!first) co_return coport::unexpected(first.error());
            partial = *first < d.size();
            auto r = co_await sock.send_all(coport::const_buffer(d.data() + *first, d.size() - *first), {}, &count);
            (void)sock.shutdown(coport::shutdown_type::send);
            if (r) *r += *first;
            co_return r;
        };
        auto w = writer(*c, data, partial_seen, sent_count);
        auto rd = read_to_end(ctx, *s, 4096, std::chrono::microseconds(200));
        auto [wr, got] = co_await coport::when_all(std::move(w), std::move(rd));
        all_sent = wr;
        echoed = std::move(got); // the first send's bytes, then send_all's
        // recv_exact over bytes that arrive one at a time.
        auto trickle = [](io_context& cx, tcp_socket& sock) -> task<void> {
            for (int i = 0; i < 8; ++i) {
                std::byte b{static_cast<unsigned char>(i + 1)};
                co_await sock.send_all(coport::buffer(&b, 1));
                co_await cx.sleep_for(2ms);
            }
        };
        auto t = trickle(ctx, *s);
        auto rx = c->recv_exact(coport::buffer(small, sizeof small), {}, &received_count);
        auto [tr, rr] = co_await coport::when_all(std::move(t), std::move(rx));
        (void)tr;
        one_by_one = rr;
        // Converted to a task, as before send_all was an operation of its own.
        task<result<std::size_t>> as_task = s->send_all(coport::buffer("abc", 3));
        exact = co_await std::move(as_task);
    };
    ctx.block_on(run());
    REQUIRE(setup_ok);
    if (!partial_seen) WARN("one send took all 512 KiB here: the partial-send path was not exercised");
    REQUIRE(all_sent);
    CHECK(*all_sent == data.size());
    CHECK(sent_count <= data.size());
    CHECK(echoed == data);
    REQUIRE(one_by_one);
    CHECK(*one_by_one == 8);
    CHECK(received_count == 8);
    for (int i = 0; i < 8; ++i) CHECK(small[i] == std::byte(static_cast<unsigned char>(i + 1)));
    REQUIRE(exact);
    CHECK(*exact == 3);
}

TEST_CASE("send_all cancelled or closed mid-way: operation_aborted, and *sent is what the peer gets",
          "[tcp][send_all][cancel]") {
    io_context ctx;
    auto l = listen_on(ctx);
    auto port = port_of(l);
    const auto data = pattern(8 << 20, 5);
    struct outcome {
        result<std::size_t> r = 0;
        std::size_t sent = 0, received = 0;
        bool intact = false;
    };
    outcome cancelled, closed;
    result<std::size_t> empty = coport::unexpected(std::error_code(coport::error::eof));
    auto one = [&](bool by_close, outcome& out) -> task<void> {
        auto c = co_await tcp_socket::connect(ctx, "127.0.0.1", port);
        auto s = co_await l.accept();
        if (!c || !s) co_return;
        (void)c->set_send_buffer_size(16 * 1024);
        (void)s->set_receive_buffer_size(16 * 1024);
        std::stop_source stop;
        // Nobody reads while send_all runs: it fills the buffers and waits; then it is stopped.
        auto writer = [](tcp_socket& sock, coport::const_buffer b, std::stop_token st, outcome& o) -> task<void> {
            o.r = co_await sock.send_all(b, st, &o.sent);
        };
        auto stopper = [](io_context& cx, std::stop_source& ss, tcp_socket& sock, bool close) -> task<void> {
            co_await cx.sleep_for(50ms);
            if (close) sock.close();
            else ss.request_stop();
        };
        auto w = writer(*c, coport::buffer(data), stop.get_token(), out);
        auto sp = stopper(ctx, stop, *c, by_close);
        co_await coport::when_all(std::move(w), std::move(sp));
        if (c->is_open()) (void)c->shutdown(coport::shutdown_type::send);
        else (void)0; // closed: the reader sees EOF (or a reset) after what was sent
        auto got = co_await read_to_end(ctx, *s, 64 * 1024, std::chrono::microseconds(0));
        out.received = got.size();
        out.intact = std::equal(got.begin(), got.end(), data.begin());
    };
    auto run = [&]() -> task<void> {
        co_await one(false, cancelled);
        co_await one(true, closed);
        tcp_socket never_opened;
        empty = co_await never_opened.send_all(coport::const_buffer(nullptr, 0)); // 0 bytes: touches nothing
    };
    ctx.block_on(run());
    for (auto* o : {&cancelled, &closed}) {
        if (o->r) {
            // The whole buffer went out before the stop (a platform that buffers more than asked).
            CHECK(*o->r == data.size());
            CHECK(o->sent == data.size());
        } else {
            CHECK(o->r.error() == coport::errc::operation_aborted);
            CHECK(o->sent < data.size());
        }
        CHECK(o->intact);
    }
#if defined(__linux__)
    // (IOCP reports no count for a cancelled send: *sent there is what completed before it.)
    CHECK(cancelled.received == cancelled.sent); // what a cancel leaves behind: exactly *sent
    CHECK(closed.received <= closed.sent);       // a close may drop what the kernel still held
    CHECK(!cancelled.r);                         // 8 MiB never fit in 16 KiB buffers
    CHECK(cancelled.sent > 0);
#endif
    REQUIRE(empty);
    CHECK(*empty == 0);
}
