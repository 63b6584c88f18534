// SPDX-License-Identifier: MIT
// UDP and local (Unix-domain) stream sockets over the real backend, loopback only.
#include <coport/coport.hpp>

#include "support.hpp"

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <random>
#include <set>
#include <string>
#include <vector>

using namespace std::chrono_literals;
using coport::endpoint;
using coport::io_context;
using coport::ip_address;
using coport::result;
using coport::task;
using coport::udp_socket;

namespace {

coport::udp_socket bound_udp(io_context& ctx, ip_address a = ip_address::loopback_v4()) {
    auto s = udp_socket::bind(ctx, endpoint(a, 0));
    REQUIRE(s);
    return std::move(*s);
}

// Datagram i: 4-byte sequence number, then bytes derived from it.
std::uint8_t fill_byte(std::uint32_t seq, std::size_t k) { return static_cast<std::uint8_t>((seq * 31 + k * 7) & 0xff); }

std::string temp_socket_path(const char* tag) {
    auto dir = std::filesystem::temp_directory_path();
    std::random_device rd;
    return (dir / ("coport-" + std::string(tag) + "-" + std::to_string(rd() % 1000000) + ".sock")).string();
}

} // namespace

TEST_CASE("10,000 datagrams of random sizes: each received intact or counted lost", "[udp]") {
    io_context ctx;
    auto rx = bound_udp(ctx);
    auto tx = bound_udp(ctx);
    (void)rx.set_receive_buffer_size(4 << 20);
    const auto to = *rx.local_endpoint();
    constexpr std::uint32_t count = 10000;
    std::vector<std::uint8_t> seen(count, 0);
    int corrupt = 0, duplicates = 0, from_wrong_peer = 0;
    std::uint32_t received = 0;
    std::atomic<bool> sender_done{false};
    auto receiver = [&]() -> task<void> {
        std::vector<std::uint8_t> buf(64 * 1024);
        const auto tx_ep = *tx.local_endpoint();
        for (;;) {
            auto r = co_await coport::with_timeout(ctx, 2s, [&](std::stop_token st) {
                return rx.recv_from(coport::buffer(buf), st);
            });
            if (!r) break; // two quiet seconds: the rest is lost
            if (!(r->from == tx_ep)) ++from_wrong_peer;
            if (r->bytes < 4 || r->truncated) {
                ++corrupt;
                continue;
            }
            std::uint32_t seq;
            std::memcpy(&seq, buf.data(), 4);
            if (seq >= count) {
                ++corrupt;
                continue;
            }
            bool ok = true;
            for (std::size_t k = 4; k < r->bytes; ++k)
                if (buf[k] != fill_byte(seq, k)) ok = false;
            if (!ok) ++corrupt;
            if (seen[seq]++) ++duplicates;
            else ++received;
            if (received == count) break;
        }
    };
    auto sender = [&]() -> task<void> {
        std::mt19937 rng(99);
        std::vector<std::uint8_t> d(60 * 1024);
        for (std::uint32_t seq = 0; seq < count; ++seq) {
            std::size_t n = 4 + rng() % (d.size() - 4);
            if (seq % 10 == 0) n = 1 + rng() % 3 + 4; // some tiny ones too
            std::memcpy(d.data(), &seq, 4);
            for (std::size_t k = 4; k < n; ++k) d[k] = fill_byte(seq, k);
            auto r = co_await tx.send_to(coport::buffer(d.data(), n), to);
            if (!r || *r != n) ++corrupt;
            if (seq % 8 == 0) co_await ctx.schedule(); // let the receiver drain: loopback drops on overflow
        }
        sender_done = true;
    };
    auto r = receiver();
    auto s = sender();
    ctx.block_on(coport::when_all(std::move(r), std::move(s)));
    const std::uint32_t lost = count - received;
    INFO("received " << received << ", lost " << lost);
    CHECK(sender_done.load());
    CHECK(corrupt == 0);
    CHECK(duplicates == 0);
    CHECK(from_wrong_peer == 0);
    CHECK(received + lost == count);
    CHECK(received >= count / 2); // loopback with pacing loses little; a broken path loses all
}

TEST_CASE("a datagram larger than the buffer reports truncation and the bytes stored", "[udp]") {
    io_context ctx;
    auto rx = bound_udp(ctx);
    auto tx = bound_udp(ctx);
    std::vector<char> big(1000, 'x');
    char small[100];
    auto run = [&]() -> task<result<coport::datagram_info>> {
        co_await tx.send_to(coport::buffer(big), *rx.local_endpoint());
        auto r = co_await rx.recv_from(coport::buffer(small, sizeof small));
        co_return r;
    };
    auto r = ctx.block_on(run());
    REQUIRE(r);
    CHECK(r->truncated);
    CHECK(r->bytes == 100);
    CHECK(small[99] == 'x');
}

TEST_CASE("IPv6 UDP loopback; send_to an unbound port does not break the socket; connected mode", "[udp]") {
    io_context ctx;
    auto a6 = udp_socket::bind(ctx, endpoint(ip_address::loopback_v6(), 0));
    if (!a6) COPORT_SKIP("no IPv6 loopback here: " << a6.error().message());
    auto b6 = bound_udp(ctx, ip_address::loopback_v6());
    std::uint16_t dead_port;
    {
        auto dead = bound_udp(ctx);
        dead_port = dead.local_endpoint()->port();
    }
    result<coport::datagram_info> got = coport::unexpected(std::error_code(coport::error::eof));
    result<coport::datagram_info> after_dead = got, connected_got = got;
    std::string text, text2;
    auto run = [&]() -> task<void> {
        char buf[64] = {};
        co_await b6.send_to(coport::buffer("hello6", 6), *a6->local_endpoint());
        got = co_await a6->recv_from(coport::buffer(buf, sizeof buf));
        text.assign(buf, got ? got->bytes : 0);
        // to a closed port: ICMP port unreachable comes back; the socket must keep working
        auto v4 = bound_udp(ctx);
        auto v4b = bound_udp(ctx);
        co_await v4.send_to(coport::buffer("void", 4), endpoint(ip_address::loopback_v4(), dead_port));
        co_await ctx.sleep_for(20ms);
        co_await v4b.send_to(coport::buffer("still", 5), *v4.local_endpoint());
        after_dead = co_await coport::with_timeout(ctx, 2s, [&](std::stop_token st) {
            return v4.recv_from(coport::buffer(buf, sizeof buf), st);
        });
        // connected mode
        auto c1 = bound_udp(ctx);
        auto c2 = bound_udp(ctx);
        auto r1 = c1.connect(*c2.local_endpoint());
        auto r2 = c2.connect(*c1.local_endpoint());
        if (r1 && r2) {
            co_await c1.send(coport::buffer("conn", 4));
            connected_got = co_await c2.recv(coport::buffer(buf, sizeof buf));
            text2.assign(buf, connected_got ? connected_got->bytes : 0);
        }
    };
    ctx.block_on(run());
    REQUIRE(got);
    CHECK(text == "hello6");
    CHECK(got->from == *b6.local_endpoint());
    REQUIRE(after_dead);
    CHECK(after_dead->bytes == 5);
    REQUIRE(connected_got);
    CHECK(text2 == "conn");
}

TEST_CASE("cancel a pending recv_from: operation_aborted, and the socket is usable afterwards", "[udp][cancel]") {
    io_context ctx;
    auto rx = bound_udp(ctx);
    auto tx = bound_udp(ctx);
    result<coport::datagram_info> cancelled = coport::datagram_info{}, later = coport::datagram_info{};
    auto run = [&]() -> task<void> {
        char buf[16];
        std::stop_source stop;
        auto stopper = [](io_context& c, std::stop_source& s) -> task<void> {
            co_await c.sleep_for(30ms);
            s.request_stop();
        };
        auto rcv = [](udp_socket& s, char* b, std::stop_token st) -> task<result<coport::datagram_info>> {
            auto r = co_await s.recv_from(coport::buffer(b, 16), st);
            co_return r;
        };
        auto rv = rcv(rx, buf, stop.get_token());
        auto sp = stopper(ctx, stop);
        auto [r, x] = co_await coport::when_all(std::move(rv), std::move(sp));
        (void)x;
        cancelled = r;
        co_await tx.send_to(coport::buffer("again", 5), *rx.local_endpoint());
        later = co_await rx.recv_from(coport::buffer(buf, sizeof buf));
    };
    ctx.block_on(run());
    REQUIRE(!cancelled);
    CHECK(cancelled.error() == coport::errc::operation_aborted);
    REQUIRE(later);
    CHECK(later->bytes == 5);
}

TEST_CASE("multicast group membership: a clear answer", "[udp]") {
    io_context ctx;
    auto s = bound_udp(ctx, ip_address::any_v4());
    auto bad = s.join_group(ip_address::loopback_v4());
    REQUIRE(!bad);
    CHECK(bad.error() == coport::errc::invalid_argument);
    auto g = ip_address::parse("239.255.0.77");
    REQUIRE(g);
    auto j = s.join_group(*g);
    if (!j) {
        INFO(j.error().message());
        CHECK((j.error() == coport::errc::not_supported || j.error() == coport::errc::address_not_available ||
               j.error() == coport::errc::network_unreachable || j.error() == std::errc::no_such_device));
    } else {
        CHECK(s.leave_group(*g));
    }
}

namespace {
task<void> local_echo_session(coport::local::stream_socket s) {
    std::vector<char> buf(16 * 1024);
    for (;;) {
        auto n = co_await s.recv(coport::buffer(buf));
        if (!n || *n == 0) co_return;
        auto w = co_await s.send_all(coport::buffer(buf.data(), *n));
        if (!w) co_return;
    }
}
} // namespace

TEST_CASE("local stream sockets: echo 16 clients x 256 KiB; a missing path is a clear error", "[local]") {
    io_context ctx;
    const std::string path = temp_socket_path("echo");
    auto l = coport::local::listener::bind(ctx, path);
    if (!l && (l.error() == coport::errc::not_supported || l.error() == std::errc::address_family_not_supported))
        COPORT_SKIP("no AF_UNIX here: " << l.error().message());
    REQUIRE(l);
    constexpr int clients = 16;
    constexpr std::size_t bytes = 256 * 1024;
    int ok = 0;
    result<void> missing = {};
    auto server = [&]() -> task<void> {
        coport::async_scope scope;
        for (int i = 0; i < clients; ++i) {
            auto s = co_await l->accept();
            if (!s) break;
            scope.spawn(local_echo_session(std::move(*s)));
        }
        co_await scope.join();
    };
    auto client = [&](int id) -> task<void> {
        coport::local::stream_socket s(ctx);
        auto c = co_await s.connect(path);
        if (!c) co_return;
        std::vector<char> out(bytes), in(bytes);
        for (std::size_t k = 0; k < bytes; ++k) out[k] = static_cast<char>((k * 13 + static_cast<std::size_t>(id)) & 0xff);
        auto snd = s.send_all(coport::buffer(out));
        auto rcv = s.recv_exact(coport::buffer(in));
        auto [a, b] = co_await coport::when_all(std::move(snd), std::move(rcv));
        if (a && b && in == out) ++ok;
        s.close();
    };
    auto all = [&]() -> task<void> {
        coport::async_scope scope;
        scope.spawn(server());
        for (int i = 0; i < clients; ++i) scope.spawn(client(i));
        co_await scope.join();
        coport::local::stream_socket m(ctx);
        missing = co_await m.connect(path + ".missing");
    };
    ctx.block_on(all());
    l->close();
    std::filesystem::remove(path);
    CHECK(ok == clients);
    REQUIRE(!missing);
    INFO(missing.error().message());
    CHECK((missing.error() == std::errc::no_such_file_or_directory || missing.error() == coport::errc::connection_refused));
}

TEST_CASE("local sockets: a stale socket file is reported, and removed on request", "[local]") {
    io_context ctx;
    const std::string path = temp_socket_path("stale");
    {
        auto first = coport::local::listener::bind(ctx, path);
        if (!first) COPORT_SKIP("no AF_UNIX here: " << first.error().message());
    } // closed; the socket file stays behind, like after a crash
    auto again = coport::local::listener::bind(ctx, path);
    REQUIRE(!again);
    CHECK(again.error() == coport::errc::address_in_use);
    coport::local::listen_options o;
    o.unlink_existing = true;
    auto fresh = coport::local::listener::bind(ctx, path, o);
    CHECK(fresh.has_value());
    std::filesystem::remove(path);
}

#if defined(__linux__)
TEST_CASE("local sockets: Linux abstract names leave no file", "[local][uring][epoll]") {
    io_context ctx;
    const std::string name = "@coport-abstract-" + std::to_string(std::random_device{}());
    auto l = coport::local::listener::bind(ctx, name);
    REQUIRE(l);
    std::string got;
    auto run = [&]() -> task<void> {
        coport::local::stream_socket c(ctx);
        auto r = co_await c.connect(name);
        auto s = co_await l->accept();
        if (!r || !s) co_return;
        co_await c.send_all(coport::buffer("abs", 3));
        char b[3];
        auto n = co_await s->recv_exact(coport::buffer(b, 3));
        if (n) got.assign(b, 3);
    };
    ctx.block_on(run());
    CHECK(got == "abs");
    CHECK_FALSE(std::filesystem::exists(name.substr(1)));
}
#endif
