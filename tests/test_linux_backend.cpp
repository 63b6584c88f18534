// SPDX-License-Identifier: MIT
// Linux only: choosing between io_uring and epoll, and the automatic fallback when io_uring is refused.
#if defined(__linux__)
#include <coport/coport.hpp>

#include "support.hpp"

#include <cstdlib>
#include <string>

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
#endif
