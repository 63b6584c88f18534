// SPDX-License-Identifier: MIT
// coport used separately compiled: this file sees only declarations of the engine (separate_engine.cpp
// defines it). A loopback round trip through the real backend; exit status 0 only if the bytes came back.
#include <coport/coport.hpp>

#include <cstdio>
#include <string_view>

static_assert(COPORT_DEFINE_ENGINE == 0, "the engine must not be compiled in this file");

namespace {
coport::task<int> round_trip(coport::io_context& ctx) {
    auto listener = coport::tcp_listener::bind(ctx, coport::endpoint(coport::ip_address::loopback_v4(), 0));
    if (!listener) co_return 10;
    coport::tcp_socket client(ctx);
    auto [accepted, connected] = co_await coport::when_all(listener->accept(), client.connect(*listener->local_endpoint()));
    if (!accepted || !connected) co_return 12;
    const std::string_view msg = "separately compiled";
    if (!co_await client.send_all(coport::buffer(msg.data(), msg.size()))) co_return 13;
    char buf[64] = {};
    auto n = co_await accepted->recv_exact(coport::buffer(buf, msg.size()));
    if (!n || std::string_view(buf, msg.size()) != msg) co_return 14;
    co_return 0;
}
} // namespace

int main() {
    coport::io_context ctx;
    int rc = ctx.block_on(round_trip(ctx));
    std::printf("separately compiled coport on %s: %s\n", ctx.backend_name(), rc == 0 ? "ok" : "FAILED");
    return rc;
}
