// chat_server: line-based broadcast chat; every line a client sends goes to every other client as "[id] line".
// One thread runs everything (no locks); each client has an outgoing queue drained by one writer coroutine.
// Run: chat_server [host=127.0.0.1] [port=0]   then, in two terminals: nc 127.0.0.1 PORT
#include <coport/coport.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <map>
#include <memory>
#include <string>
#include <string_view>

using namespace std::chrono_literals;

namespace {

constexpr std::size_t max_line = 4096;           // longer lines end the sender's connection
constexpr std::size_t max_queued = 1024 * 1024;  // a client that reads slower than this is dropped

struct client {
    client(int id, coport::tcp_socket s) : id(id), sock(std::move(s)) {}
    const int id;
    coport::tcp_socket sock;
    std::deque<std::string> outbox; // push_back keeps references to the front valid while it is sent
    std::size_t queued = 0;         // bytes in outbox
    bool writing = false;           // a writer coroutine is draining outbox
    bool gone = false;
};

// The connected clients. Only touched from the one thread running the io_context, so it needs no lock.
class room {
public:
    explicit room(coport::async_scope& scope) : m_scope(scope) {}

    void join(const std::shared_ptr<client>& c) {
        deliver(c, "* welcome, you are [" + std::to_string(c->id) + "]; " + std::to_string(m_clients.size()) +
                       " others here\n");
        broadcast(*c, "* [" + std::to_string(c->id) + "] joined\n");
        m_clients.emplace(c->id, c);
    }
    void leave(client& c) {
        if (m_clients.erase(c.id) == 0) return;
        drop(c);
        broadcast(c, "* [" + std::to_string(c.id) + "] left\n");
    }
    /// Sends `text` to every client but `from`.
    void broadcast(const client& from, const std::string& text) {
        for (auto& [id, to] : m_clients)
            if (id != from.id) deliver(to, text);
    }

private:
    void deliver(const std::shared_ptr<client>& to, const std::string& text) {
        if (to->gone) return;
        if (to->queued + text.size() > max_queued) {
            std::fprintf(stderr, "client %d reads too slowly: dropped\n", to->id);
            drop(*to); // its reader resumes with operation_aborted and leaves the room
            return;
        }
        to->outbox.push_back(text);
        to->queued += text.size();
        if (!to->writing) {
            to->writing = true;
            m_scope.spawn(writer(to));
        }
    }
    static void drop(client& c) {
        c.gone = true;
        c.sock.close(); // cancels its pending recv and send
    }
    // The only coroutine that sends on c->sock: at most one send is pending per socket.
    static coport::task<void> writer(std::shared_ptr<client> c) {
        while (!c->outbox.empty() && !c->gone) {
            const std::string& msg = c->outbox.front();
            auto sent = co_await c->sock.send_all(coport::buffer(msg));
            if (!sent) {
                drop(*c);
                break;
            }
            c->queued -= msg.size();
            c->outbox.pop_front();
        }
        c->writing = false;
        if (c->gone) {
            c->outbox.clear();
            c->queued = 0;
        }
    }

    coport::async_scope& m_scope;
    std::map<int, std::shared_ptr<client>> m_clients;
};

// Reads lines from one client and broadcasts them until it disconnects.
coport::task<void> session(room& r, std::shared_ptr<client> c) {
    r.join(c);
    std::string pending;
    char buf[4096];
    for (;;) {
        auto n = co_await c->sock.recv(coport::buffer(buf));
        if (!n || *n == 0) break; // closed, reset, or dropped by the room
        pending.append(buf, *n);
        std::size_t start = 0;
        for (std::size_t nl; (nl = pending.find('\n', start)) != std::string::npos; start = nl + 1) {
            std::string_view line(pending.data() + start, nl - start);
            if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
            r.broadcast(*c, "[" + std::to_string(c->id) + "] " + std::string(line) + "\n");
        }
        pending.erase(0, start);
        if (pending.size() > max_line) break;
    }
    r.leave(*c);
}

coport::task<void> serve(coport::io_context& ctx, coport::tcp_listener& listener) {
    coport::async_scope scope;
    room r(scope);
    for (int next_id = 1;; ++next_id) {
        auto s = co_await listener.accept();
        if (!s) {
            std::fprintf(stderr, "accept: %s\n", s.error().message().c_str());
            if (s.error() != coport::errc::too_many_files) break;
            auto pause = co_await ctx.sleep_for(100ms); // out of descriptors: give clients time to leave
            (void)pause;
            continue;
        }
        scope.spawn(session(r, std::make_shared<client>(next_id, std::move(*s))));
    }
    co_await scope.join();
}

} // namespace

int main(int argc, char** argv) {
    const std::string host = argc > 1 ? argv[1] : "127.0.0.1";
    const int port = argc > 2 ? std::atoi(argv[2]) : 0;
    auto addr = coport::ip_address::parse(host);
    if (!addr || port < 0 || port > 65535) {
        std::fprintf(stderr, "usage: chat_server [host=127.0.0.1] [port=0]\n");
        return 2;
    }
    coport::io_context ctx;
    auto listener = coport::tcp_listener::bind(ctx, coport::endpoint(*addr, static_cast<std::uint16_t>(port)));
    if (!listener) {
        std::fprintf(stderr, "bind %s:%d: %s\n", host.c_str(), port, listener.error().message().c_str());
        return 1;
    }
    std::printf("listening on %s\n", listener->local_endpoint().value().to_string().c_str());
    std::fflush(stdout);
    ctx.block_on(serve(ctx, *listener)); // this thread only: the room is never touched concurrently
    return 0;
}
