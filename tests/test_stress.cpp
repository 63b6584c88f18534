// SPDX-License-Identifier: MIT
// Cancellation under stress, on every backend: random-moment cancellations of recv/send/accept/connect/timer
// operations on 4 threads, and destroying an io_context with thousands of operations of each kind in flight.
#include <coport/coport.hpp>

#include "support.hpp"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

using namespace std::chrono_literals;
using coport::endpoint;
using coport::io_context;
using coport::ip_address;
using coport::result;
using coport::task;
using coport::tcp_listener;
using coport::tcp_socket;

namespace {

constexpr std::uint8_t pattern_byte(std::uint64_t offset) { return static_cast<std::uint8_t>(offset % 251); }

struct counters {
    std::atomic<long> started{0}, resumed{0}, aborted{0}, succeeded{0}, failed_other{0};
    std::atomic<long> early_timers{0};
    std::atomic<const std::error_category*> other_category{nullptr}; // the first unexpected error, for the report
    std::atomic<int> other_value{0};
    void outcome(const std::error_code& ec) {
        resumed.fetch_add(1, std::memory_order_relaxed);
        if (!ec) succeeded.fetch_add(1, std::memory_order_relaxed);
        else if (ec == coport::errc::operation_aborted) aborted.fetch_add(1, std::memory_order_relaxed);
        else if (failed_other.fetch_add(1) == 0) {
            other_value.store(ec.value());
            other_category.store(&ec.category());
        }
    }
    std::string first_other() const {
        const std::error_category* cat = other_category.load();
        return cat ? std::error_code(other_value.load(), *cat).message() : std::string("none");
    }
};

task<void> stop_after(io_context& ctx, std::stop_source& ss, std::chrono::microseconds d) {
    co_await ctx.sleep_for(d);
    ss.request_stop();
}

// One connection: `rounds` rounds of {recv, send} with stops at random moments. The sender's stream is
// the pattern; only the bytes a send reports as sent advance it, so the receiver (which checks every
// byte) proves that a cancelled send sent nothing it did not report and a cancelled recv consumed nothing.
task<void> stream_rounds(io_context& ctx, tcp_socket& a, tcp_socket& b, int rounds, unsigned seed, counters& c,
                         std::atomic<bool>& corrupt, std::atomic<std::uint64_t>& sent_total,
                         std::atomic<std::uint64_t>& recv_total) {
    std::mt19937 rng(seed);
    std::uint64_t send_off = 0, recv_off = 0;
    std::vector<std::uint8_t> out(8192), in(8192);
    auto do_send = [](tcp_socket& s, const std::uint8_t* p, std::size_t n, std::stop_token st,
                      counters& cc) -> task<std::size_t> {
        cc.started.fetch_add(1, std::memory_order_relaxed);
        auto r = co_await s.send(coport::buffer(p, n), st);
        cc.outcome(r.error());
        co_return r ? *r : 0;
    };
    auto do_recv = [](tcp_socket& s, std::uint8_t* p, std::size_t n, std::stop_token st,
                      counters& cc) -> task<std::size_t> {
        cc.started.fetch_add(1, std::memory_order_relaxed);
        auto r = co_await s.recv(coport::buffer(p, n), st);
        cc.outcome(r.error());
        co_return r ? *r : 0;
    };
    for (int i = 0; i < rounds; ++i) {
        std::size_t n = 1 + rng() % out.size();
        for (std::size_t k = 0; k < n; ++k) out[k] = pattern_byte(send_off + k);
        std::stop_source stop;
        auto delay = std::chrono::microseconds(rng() % 300);
        auto st = do_send(a, out.data(), n, stop.get_token(), c);
        auto rt = do_recv(b, in.data(), in.size(), stop.get_token(), c);
        auto sp = stop_after(ctx, stop, delay);
        auto [sent, got, unused] = co_await coport::when_all(std::move(st), std::move(rt), std::move(sp));
        (void)unused;
        send_off += sent;
        for (std::size_t k = 0; k < got; ++k)
            if (in[k] != pattern_byte(recv_off + k)) corrupt = true;
        recv_off += got;
    }
    // Drain: everything reported sent must arrive, in order, and nothing more.
    (void)a.shutdown(coport::shutdown_type::send);
    for (;;) {
        auto r = co_await b.recv(coport::buffer(in));
        if (!r || *r == 0) break;
        for (std::size_t k = 0; k < *r; ++k)
            if (in[k] != pattern_byte(recv_off + k)) corrupt = true;
        recv_off += *r;
    }
    sent_total += send_off;
    recv_total += recv_off;
}

task<void> timer_rounds(io_context& ctx, int rounds, unsigned seed, counters& c) {
    std::mt19937 rng(seed);
    auto one = [](io_context& cx, std::chrono::microseconds d, std::stop_token st, counters& cc) -> task<void> {
        cc.started.fetch_add(1, std::memory_order_relaxed);
        auto t0 = io_context::clock::now();
        auto r = co_await cx.sleep_for(d, st);
        if (r && io_context::clock::now() - t0 < d) cc.early_timers.fetch_add(1);
        cc.outcome(r.error());
    };
    for (int i = 0; i < rounds; i += 4) {
        std::stop_source stop;
        auto d = [&] { return std::chrono::microseconds(rng() % 400); };
        auto t1 = one(ctx, d(), stop.get_token(), c);
        auto t2 = one(ctx, d(), stop.get_token(), c);
        auto t3 = one(ctx, d(), stop.get_token(), c);
        auto t4 = one(ctx, d(), stop.get_token(), c);
        auto sp = stop_after(ctx, stop, d());
        co_await coport::when_all(std::move(t1), std::move(t2), std::move(t3), std::move(t4), std::move(sp));
    }
}

// Prints the progress counters of a run that takes far longer than it should (to stderr, not through Catch2:
// its assertions are not thread-safe), until destroyed.
class watchdog {
public:
    watchdog(const counters& c, const std::atomic<std::uint64_t>& sent, const std::atomic<std::uint64_t>& recvd,
             const std::atomic<long>& connected, const std::atomic<long>& accepted)
        : m_thread([&, this] {
              auto next = std::chrono::steady_clock::now() + 60s;
              std::unique_lock lock(m_mutex);
              while (!m_cv.wait_until(lock, next, [this] { return m_done; })) {
                  std::fprintf(stderr,
                               "watchdog: still %s: started %ld resumed %ld aborted %ld succeeded %ld other %ld; "
                               "bytes sent %llu received %llu; connected %ld accepted %ld\n",
                               m_phase.load(), c.started.load(), c.resumed.load(), c.aborted.load(), c.succeeded.load(),
                               c.failed_other.load(), static_cast<unsigned long long>(sent.load()),
                               static_cast<unsigned long long>(recvd.load()), connected.load(), accepted.load());
                  next += 30s;
              }
          }) {}
    /// What the test is doing now (a string literal).
    void phase(const char* what) noexcept { m_phase.store(what); }
    ~watchdog() {
        {
            std::lock_guard lock(m_mutex);
            m_done = true;
        }
        m_cv.notify_one();
        m_thread.join();
    }

private:
    std::mutex m_mutex;
    std::condition_variable m_cv;
    bool m_done = false;
    std::atomic<const char*> m_phase{"starting"};
    std::thread m_thread;
};

// Accepts and connects racing with stops: every connect that succeeded is accepted exactly once. The two
// children of each when_all push into one vector without a lock: the resumption rule (io_context.hpp) runs
// them on this coroutine's thread, never at once (on IOCP before the rule, two threads took the accept's and
// the connect's packets and grew the vector at the same time: a page fault in 2 of 86 runs).
task<void> accept_connect_rounds(io_context& ctx, tcp_listener& l, std::uint16_t port, int rounds, unsigned seed,
                                 counters& c, std::atomic<long>& connected, std::atomic<long>& accepted,
                                 std::vector<tcp_socket>& keep) {
    std::mt19937 rng(seed);
    auto acc = [](tcp_listener& lst, std::stop_token st, counters& cc, std::atomic<long>& n,
                  std::vector<tcp_socket>& k) -> task<void> {
        cc.started.fetch_add(1, std::memory_order_relaxed);
        auto r = co_await lst.accept(st);
        cc.outcome(r.error());
        if (r) {
            n.fetch_add(1);
            k.push_back(std::move(*r));
        }
    };
    auto con = [](io_context& cx, std::uint16_t p, std::stop_token st, counters& cc, std::atomic<long>& n,
                  std::vector<tcp_socket>& k) -> task<void> {
        cc.started.fetch_add(1, std::memory_order_relaxed);
        tcp_socket s(cx);
        auto r = co_await s.connect(endpoint(ip_address::loopback_v4(), p), st);
        cc.outcome(r.error());
        if (r) {
            n.fetch_add(1);
            k.push_back(std::move(s));
        }
    };
    std::vector<tcp_socket> mine;
    for (int i = 0; i < rounds; ++i) {
        std::stop_source stop;
        auto a = acc(l, stop.get_token(), c, accepted, mine);
        auto b = con(ctx, port, stop.get_token(), c, connected, mine);
        auto sp = stop_after(ctx, stop, std::chrono::microseconds(rng() % 200));
        co_await coport::when_all(std::move(a), std::move(b), std::move(sp));
        if (mine.size() > 64) mine.clear(); // bound the descriptors in use
    }
    for (auto& s : mine) keep.push_back(std::move(s));
}

} // namespace

TEST_CASE("100,000 random-moment cancellations of recv/send/accept/connect/timer on 4 threads", "[stress][cancel]") {
    counters c;
    std::atomic<bool> corrupt{false};
    std::atomic<std::uint64_t> sent_total{0}, recv_total{0};
    std::atomic<long> connected{0}, accepted{0};
    // A run that hangs leaves evidence: the phase and the progress counters, printed every 30 s after 60 s.
    watchdog dog(c, sent_total, recv_total, connected, accepted);
    dog.phase("constructing the context");
    io_context ctx;
    const bool iocp = std::string(ctx.backend_name()) == "iocp";
    auto lr = tcp_listener::bind(ctx, endpoint(ip_address::loopback_v4(), 0));
    REQUIRE(lr);
    tcp_listener& l = *lr;
    const auto port = l.local_endpoint()->port();
    constexpr int pairs = 8;
    const int stream_rounds_each = 2500;  // 8 x 2,500 x 2 ops = 40,000
    const int timer_rounds_total = 40000; // in groups of 4
    const int accept_rounds = iocp ? 2000 : 10000; // x 2 ops
    std::vector<tcp_socket> kept;

    auto all = [&]() -> task<void> {
        // connection pairs for the stream rounds
        std::vector<tcp_socket> as, bs;
        for (int i = 0; i < pairs; ++i) {
            auto x = co_await tcp_socket::connect(ctx, "127.0.0.1", port);
            auto y = co_await l.accept();
            if (!x || !y) co_return;
            as.push_back(std::move(*x));
            bs.push_back(std::move(*y));
        }
        dog.phase("running the rounds");
        // Spread over the threads running ctx (spawn(ctx, ...)): each group then stays on its thread.
        coport::async_scope scope;
        for (int i = 0; i < pairs; ++i)
            scope.spawn(ctx, stream_rounds(ctx, as[i], bs[i], stream_rounds_each, 100 + i, c, corrupt, sent_total, recv_total));
        for (int i = 0; i < 4; ++i) scope.spawn(ctx, timer_rounds(ctx, timer_rounds_total / 4, 200 + i, c));
        scope.spawn(ctx, accept_connect_rounds(ctx, l, port, accept_rounds, 300, c, connected, accepted, kept));
        co_await scope.join();
        dog.phase("accepting the connects left in the backlog");
        // A connect that won while its accept was cancelled is still in the backlog: accept it now.
        while (accepted.load() < connected.load()) {
            auto r = co_await coport::with_timeout(ctx, 5s, [&](std::stop_token st) { return l.accept(st); });
            if (!r) break;
            accepted.fetch_add(1);
        }
    };
    {
        dog.phase("setting up connections");
        coport::thread_pool_runner pool(ctx, 3);
        auto guard = ctx.make_work_guard();
        ctx.block_on(all());
        dog.phase("joining the threads");
        guard.reset();
        pool.join();
    }
    dog.phase("checking");
    INFO("started " << c.started << ", aborted " << c.aborted << ", succeeded " << c.succeeded);
    // 100,000 natively; under Wine fewer accept/connect rounds (each costs several wineserver calls).
    const long expected = 2L * pairs * stream_rounds_each + timer_rounds_total + 2L * accept_rounds;
    CHECK(c.started.load() == expected);
    CHECK(c.resumed.load() == c.started.load());
    INFO("first error other than operation_aborted: " << c.first_other());
    CHECK(c.failed_other.load() == 0);
    // How many stops won is the machine's business (under strace none may): only the invariants are checked.
    CHECK(c.early_timers.load() == 0);
    CHECK_FALSE(corrupt.load());
    CHECK(sent_total.load() == recv_total.load());
    // Every connect that succeeded was accepted. An accept may also win for a connect that reports
    // operation_aborted: the cancel reached the connect after the loopback handshake had finished on the
    // listener's side (seen under Wine's IOCP, 1 in ~2,000 rounds in some runs); that client socket is closed
    // and the accepted one just sees the end of stream. So the accepts are bounded by the connect attempts.
    CHECK(accepted.load() >= connected.load());
    CHECK(accepted.load() <= accept_rounds);
    dog.phase("destroying the sockets and the context"); // at the closing brace, before the watchdog goes
}

TEST_CASE("destroying an io_context with thousands of operations of each kind in flight", "[stress][shutdown]") {
    const int per_kind = 10000;
    counters c;
    std::atomic<long> connect_pending_started{0};
    // A listener that never accepts and whose backlog is full: connects to it stay pending. It lives on a
    // context of its own that outlives ctx: were it closed with the other sockets before ctx, the pending
    // connects' SYN retransmissions (from one second on) would meet no listener and be refused before ctx
    // cancels them — seen under Wine, where cancelling these thousands of operations takes over a second.
    io_context keeper;
    coport::listen_options tiny;
    tiny.backlog = 1;
    auto full = tcp_listener::bind(keeper, endpoint(ip_address::loopback_v4(), 0), tiny);
    REQUIRE(full);
    const auto full_port = full->local_endpoint()->port();
    {
        io_context ctx;
        const bool iocp = std::string(ctx.backend_name()) == "iocp";
        const int n = iocp ? 2000 : per_kind;
        auto lr = tcp_listener::bind(ctx, endpoint(ip_address::loopback_v4(), 0));
        REQUIRE(lr);
        const auto port = lr->local_endpoint()->port();

        std::vector<std::unique_ptr<tcp_socket>> socks;
        auto setup = [&]() -> task<void> {
            for (int i = 0; i < 50; ++i) {
                auto x = co_await tcp_socket::connect(ctx, "127.0.0.1", port);
                auto y = co_await lr->accept();
                if (!x || !y) co_return;
                socks.push_back(std::make_unique<tcp_socket>(std::move(*x)));
                socks.push_back(std::make_unique<tcp_socket>(std::move(*y)));
            }
            for (int i = 0; i < 4; ++i) { // fill the tiny backlog
                tcp_socket s(ctx);
                auto r = co_await coport::with_timeout(ctx, 200ms, [&](std::stop_token st) {
                    return s.connect(endpoint(ip_address::loopback_v4(), full_port), st);
                });
                if (r) socks.push_back(std::make_unique<tcp_socket>(std::move(s)));
            }
        };
        ctx.block_on(setup());
        REQUIRE(socks.size() >= 100);

        static std::vector<char> sink(1 << 20);
        auto recv_one = [](tcp_socket& s, counters& cc) -> task<void> {
            cc.started.fetch_add(1);
            char b[16];
            auto r = co_await s.recv(coport::buffer(b, sizeof b));
            cc.outcome(r.error());
        };
        auto accept_one = [](tcp_listener& l, counters& cc) -> task<void> {
            cc.started.fetch_add(1);
            auto r = co_await l.accept();
            cc.outcome(r.error());
        };
        auto sleep_one = [](io_context& cx, counters& cc) -> task<void> {
            cc.started.fetch_add(1);
            auto r = co_await cx.sleep_for(1h);
            cc.outcome(r.error());
        };
        auto connect_one = [](io_context& cx, std::uint16_t p, counters& cc, std::atomic<long>& started) -> task<void> {
            cc.started.fetch_add(1);
            started.fetch_add(1);
            tcp_socket s(cx);
            auto r = co_await s.connect(endpoint(ip_address::loopback_v4(), p));
            cc.outcome(r.error());
        };
        auto send_one = [](tcp_socket& s, counters& cc) -> task<void> {
            cc.started.fetch_add(1);
            auto r = co_await s.send(coport::buffer(sink));
            cc.outcome(r.error());
        };
        for (int i = 0; i < n; ++i) {
            coport::spawn(ctx, recv_one(*socks[static_cast<std::size_t>(2 * (i % 50))], c));
            coport::spawn(ctx, accept_one(*lr, c));
            coport::spawn(ctx, sleep_one(ctx, c));
        }
        // Sends: one socket's peer never reads, so after its buffers fill every further send waits.
        for (int i = 0; i < 200; ++i) coport::spawn(ctx, send_one(*socks[1], c));
        // Connects: limited by descriptors (each is a socket).
        for (int i = 0; i < std::min(n, 1000); ++i) coport::spawn(ctx, connect_one(ctx, full_port, c, connect_pending_started));
        // Let everything reach the kernel, then destroy the context with it all in flight.
        std::thread runner([&] { ctx.run_one(); });
        runner.join();
        for (int i = 0; i < 50; ++i) ctx.poll();
        CHECK(c.resumed.load() < c.started.load()); // most are still in flight here
        // The sockets and the listener lr (declared after ctx) are destroyed first, with operations pending
        // on them; then the context cancels and drains the rest.
    }
    CHECK(c.resumed.load() == c.started.load());
    INFO("first error other than operation_aborted: " << c.first_other());
    CHECK(c.failed_other.load() == 0);
}
