// reconnect_client: the IOCP tutorial's advice for WSAECONNRESET made real: close, back off, reconnect, carry on.
// Sends "line N" every 100 ms and reads the echo; when the connection is lost it retries after 100 ms doubling to 2 s.
// Run: reconnect_client HOST PORT [count=50]   (against echo_server HOST PORT; stop and restart the server meanwhile)
#include <coport/coport.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <system_error>

using namespace std::chrono_literals;

namespace {

// The errors after which reconnecting makes sense: the peer went away or is not there (yet).
bool worth_retrying(std::error_code ec) {
    return ec == coport::errc::connection_reset || ec == coport::errc::connection_refused ||
           ec == coport::errc::connection_aborted || ec == coport::errc::eof || ec == coport::errc::broken_pipe ||
           ec == coport::errc::timed_out; // our own read timeout: the server stopped answering
}

void event(const std::string& what) {
    std::printf("%s\n", what.c_str());
    std::fflush(stdout);
}

// Sends numbered lines on `s` and checks their echoes, from `next` up to `count`. Returns why it stopped
// (nothing: all done); `next` is the first number whose echo has not arrived.
coport::task<std::error_code> exchange(coport::io_context& ctx, coport::tcp_socket& s, int& next, int count) {
    std::string received;
    char buf[512];
    auto read_some = [&s, &buf](std::stop_token st) { return s.recv(coport::buffer(buf), st); };
    while (next <= count) {
        const std::string line = "line " + std::to_string(next) + "\n";
        auto sent = co_await s.send_all(coport::buffer(line));
        if (!sent) co_return sent.error();
        while (received.find('\n') == std::string::npos) {
            auto n = co_await coport::with_timeout(ctx, 2s, read_some);
            if (!n) co_return n.error();
            if (*n == 0) co_return make_error_code(coport::error::eof);
            received.append(buf, *n);
        }
        const std::size_t nl = received.find('\n');
        if (received.compare(0, nl + 1, line) != 0) {
            std::fprintf(stderr, "wrong echo: expected \"line %d\", got \"%s\"\n", next, received.substr(0, nl).c_str());
            co_return std::make_error_code(std::errc::protocol_error);
        }
        received.erase(0, nl + 1);
        ++next;
        if (next <= count) {
            auto slept = co_await ctx.sleep_for(100ms);
            (void)slept;
        }
    }
    co_return std::error_code{};
}

coport::task<int> run(coport::io_context& ctx, std::string host, std::uint16_t port, int count) {
    std::mt19937 rng(std::random_device{}());
    auto backoff = 100ms;
    int next = 1;
    for (;;) {
        std::error_code lost;
        auto s = co_await coport::tcp_socket::connect(ctx, host, port);
        if (s) {
            event("connected");
            const int before = next;
            lost = co_await exchange(ctx, *s, next, count);
            s->close();
            if (next > before) backoff = 100ms; // it worked for a while: start the backoff over
            if (!lost) break;
        } else {
            lost = s.error();
        }
        if (!worth_retrying(lost)) {
            std::fprintf(stderr, "giving up: %s\n", lost.message().c_str());
            co_return 1;
        }
        event("lost: " + lost.message());
        // Jitter (up to a quarter of the delay) keeps many clients that lost one server from returning in step.
        std::uniform_int_distribution<long long> jitter(0, backoff.count() / 4);
        const std::chrono::milliseconds delay = backoff + std::chrono::milliseconds(jitter(rng));
        event("retry in " + std::to_string(delay.count()) + " ms");
        auto slept = co_await ctx.sleep_for(delay);
        (void)slept;
        backoff = std::min<std::chrono::milliseconds>(backoff * 2, 2s);
    }
    event("done: " + std::to_string(count) + " echoes");
    co_return 0;
}

} // namespace

int main(int argc, char** argv) {
    if (argc < 3) {
        std::fprintf(stderr, "usage: reconnect_client HOST PORT [count=50]\n");
        return 2;
    }
    const int port = std::atoi(argv[2]);
    const int count = argc > 3 ? std::atoi(argv[3]) : 50;
    if (port <= 0 || port > 65535 || count < 1) {
        std::fprintf(stderr, "usage: reconnect_client HOST PORT [count=50]\n");
        return 2;
    }
    coport::io_context ctx;
    return ctx.block_on(run(ctx, argv[1], static_cast<std::uint16_t>(port), count));
}
