// echo_client: connects (trying every resolved address), sends a message, prints the echo.
// Run: echo_client [host=127.0.0.1] [port=7777] [message="hello, coport"]
//      (start echo_server first)
#include <coport/coport.hpp>

#include <cstdio>
#include <cstdlib>
#include <string>

coport::task<int> run(coport::io_context& ctx, std::string host, std::uint16_t port, std::string message) {
    auto s = co_await coport::tcp_socket::connect(ctx, host, port);
    if (!s) {
        std::fprintf(stderr, "connect %s:%u: %s\n", host.c_str(), port, s.error().message().c_str());
        co_return 1;
    }
    auto sent = co_await s->send_all(coport::buffer(message));
    if (!sent) {
        std::fprintf(stderr, "send: %s\n", sent.error().message().c_str());
        co_return 1;
    }
    std::string echo(message.size(), '\0');
    auto got = co_await s->recv_exact(coport::buffer(echo));
    if (!got) {
        std::fprintf(stderr, "recv: %s\n", got.error().message().c_str());
        co_return 1;
    }
    std::printf("%s\n", echo.c_str());
    co_return echo == message ? 0 : 1;
}

int main(int argc, char** argv) {
    const std::string host = argc > 1 ? argv[1] : "127.0.0.1";
    const int port = argc > 2 ? std::atoi(argv[2]) : 7777;
    const std::string message = argc > 3 ? argv[3] : "hello, coport";
    coport::io_context ctx;
    return ctx.block_on(run(ctx, host, static_cast<std::uint16_t>(port), message));
}
