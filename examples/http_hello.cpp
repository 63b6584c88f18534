// http_hello: a small HTTP/1.1 server answering every GET (and HEAD) with "Hello, coport!\n"; keep-alive and
// pipelined requests on one connection, `Connection: close` honoured, no allocation per request.
// Run: http_hello [host=127.0.0.1] [port=8080] [threads=1]   then: curl -v http://127.0.0.1:8080/ http://127.0.0.1:8080/
#include <coport/coport.hpp>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>

namespace {

// Whole responses, built once: answering a request appends one of them to the connection's output.
std::string response(std::string_view status, std::string_view extra_headers, std::string_view body, bool with_body) {
    std::string r = "HTTP/1.1 ";
    r += status;
    r += "\r\nServer: coport\r\nContent-Type: text/plain\r\nContent-Length: ";
    r += std::to_string(body.size());
    r += "\r\n";
    r += extra_headers;
    r += "\r\n";
    if (with_body) r += body;
    return r;
}

// How a response ends the connection question: [0] nothing (HTTP/1.1 default), [1] "Connection: close",
// [2] "Connection: keep-alive" (what an HTTP/1.0 client asking for keep-alive must see).
struct canned_responses {
    static constexpr std::string_view hello = "Hello, coport!\n";
    std::string get[3], head[3], not_allowed[3];
    std::string bad_request, too_large, not_implemented, bad_version;

    canned_responses() {
        const std::string conn[3] = {"", "Connection: close\r\n", "Connection: keep-alive\r\n"};
        for (int c = 0; c < 3; ++c) {
            get[c] = response("200 OK", conn[c], hello, true);
            head[c] = response("200 OK", conn[c], hello, false);
            not_allowed[c] = response("405 Method Not Allowed", "Allow: GET, HEAD\r\n" + conn[c], "GET or HEAD only\n", true);
        }
        bad_request = response("400 Bad Request", conn[1], "bad request\n", true);
        too_large = response("431 Request Header Fields Too Large", conn[1], "header too large\n", true);
        not_implemented = response("501 Not Implemented", conn[1], "request bodies need a Content-Length\n", true);
        bad_version = response("505 HTTP Version Not Supported", conn[1], "HTTP/1.0 or HTTP/1.1 only\n", true);
    }
};
const canned_responses& canned() {
    static const canned_responses r;
    return r;
}

bool iequals(std::string_view a, std::string_view b) {
    if (a.size() != b.size()) return false;
    for (std::size_t i = 0; i < a.size(); ++i) {
        char x = a[i], y = b[i];
        if (x >= 'A' && x <= 'Z') x = static_cast<char>(x - 'A' + 'a');
        if (y >= 'A' && y <= 'Z') y = static_cast<char>(y - 'A' + 'a');
        if (x != y) return false;
    }
    return true;
}

std::string_view trim(std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
    return s;
}

// True if the comma-separated header value `list` contains `token` (case-insensitive).
bool has_token(std::string_view list, std::string_view token) {
    while (!list.empty()) {
        std::size_t comma = list.find(',');
        if (iequals(trim(list.substr(0, comma)), token)) return true;
        if (comma == std::string_view::npos) break;
        list.remove_prefix(comma + 1);
    }
    return false;
}

// One request head (request line + header lines, each ending in CRLF, without the empty line): the
// response to append, whether the connection stays open, and how many body bytes to discard.
struct answer {
    const std::string* response;
    bool keep_alive;
    std::size_t body_bytes;
};

answer answer_head(std::string_view head) {
    const canned_responses& c = canned();
    const answer bad{&c.bad_request, false, 0};

    std::size_t eol = head.find("\r\n");
    std::string_view line = head.substr(0, eol);
    head.remove_prefix(eol + 2);
    std::size_t sp1 = line.find(' ');
    std::size_t sp2 = line.rfind(' ');
    if (sp1 == std::string_view::npos || sp1 == 0 || sp2 == sp1) return bad;
    const std::string_view method = line.substr(0, sp1);
    const std::string_view version = line.substr(sp2 + 1);
    const bool http10 = version == "HTTP/1.0";
    if (version != "HTTP/1.1" && !http10) return version.substr(0, 5) == "HTTP/" ? answer{&c.bad_version, false, 0} : bad;
    bool keep_alive = !http10;

    std::size_t body_bytes = 0;
    bool has_length = false;
    while (!head.empty()) {
        eol = head.find("\r\n");
        line = head.substr(0, eol);
        head.remove_prefix(eol + 2);
        std::size_t colon = line.find(':');
        // No space before the colon, no obsolete line folding (RFC 9112 5.1, 5.2).
        if (colon == std::string_view::npos || colon == 0 || line[colon - 1] == ' ' || line[colon - 1] == '\t' ||
            line[0] == ' ' || line[0] == '\t')
            return bad;
        const std::string_view name = line.substr(0, colon);
        const std::string_view value = trim(line.substr(colon + 1));
        if (iequals(name, "connection")) {
            if (has_token(value, "close")) keep_alive = false;
            else if (has_token(value, "keep-alive")) keep_alive = true;
        } else if (iequals(name, "content-length")) {
            std::size_t n = 0;
            if (value.empty() || value.size() > 15) return bad;
            for (char ch : value) {
                if (ch < '0' || ch > '9') return bad;
                n = n * 10 + static_cast<std::size_t>(ch - '0');
            }
            if (has_length && n != body_bytes) return bad;
            has_length = true;
            body_bytes = n;
        } else if (iequals(name, "transfer-encoding")) {
            return {&c.not_implemented, false, 0}; // a chunked request body could not be skipped safely
        }
    }
    const int conn = !keep_alive ? 1 : http10 ? 2 : 0;
    if (method == "GET") return {&c.get[conn], keep_alive, body_bytes};
    if (method == "HEAD") return {&c.head[conn], keep_alive, body_bytes};
    return {&c.not_allowed[conn], keep_alive, body_bytes};
}

// The protocol state of one connection; all I/O is in session() below. Fixed buffers: nothing is
// allocated per request.
class http_connection {
public:
    static constexpr std::size_t max_head = 8192;
    static constexpr std::size_t max_output = 64 * 1024;

    http_connection() { m_out.reserve(max_output); }

    enum class next { read, write, write_and_close };

    /// Answers every complete request buffered (as many as the output holds) and says what to do next.
    next process() {
        for (;;) {
            if (m_skip > 0) { // the body of the last request: nobody reads it
                const std::size_t k = std::min(m_skip, m_end - m_begin);
                m_begin += k;
                m_skip -= k;
                if (m_skip > 0) return pending();
            }
            // Empty lines before a request line are allowed (RFC 9112 2.2).
            while (m_end - m_begin >= 2 && m_in[m_begin] == '\r' && m_in[m_begin + 1] == '\n') m_begin += 2;
            const std::string_view data(m_in.data() + m_begin, m_end - m_begin);
            const std::size_t from = m_scanned > m_begin ? m_scanned - m_begin : 0;
            const std::size_t end = data.find("\r\n\r\n", from);
            if (end == std::string_view::npos) {
                m_scanned = m_end >= m_begin + 3 ? m_end - 3 : m_begin; // the next search resumes here
                if (m_begin == 0 && m_end == m_in.size()) return fail(canned().too_large);
                return pending();
            }
            if (m_out.size() + max_response() > m_out.capacity()) return next::write; // send, then continue
            const answer a = answer_head(data.substr(0, end + 2));
            m_out += *a.response;
            m_begin += end + 4;
            m_scanned = m_begin;
            m_skip = a.body_bytes;
            if (!a.keep_alive) return next::write_and_close;
        }
    }

    /// Where the next recv writes (moves unread bytes to the front first).
    coport::mutable_buffer free_space() {
        if (m_begin > 0) {
            std::memmove(m_in.data(), m_in.data() + m_begin, m_end - m_begin);
            m_end -= m_begin;
            m_scanned = m_scanned > m_begin ? m_scanned - m_begin : 0;
            m_begin = 0;
        }
        return coport::mutable_buffer(m_in.data() + m_end, m_in.size() - m_end);
    }
    void received(std::size_t n) noexcept { m_end += n; }

    std::string& output() noexcept { return m_out; }

private:
    static std::size_t max_response() { return canned().not_allowed[2].size(); }
    next pending() const { return m_out.empty() ? next::read : next::write; }
    next fail(const std::string& r) {
        m_out += r;
        return next::write_and_close;
    }

    std::array<char, max_head> m_in{};
    std::size_t m_begin = 0, m_end = 0; // unread bytes: m_in[m_begin, m_end)
    std::size_t m_scanned = 0;          // no "\r\n\r\n" starts before this
    std::size_t m_skip = 0;             // request body bytes still to discard
    std::string m_out;                  // responses not sent yet
};

coport::task<void> session(coport::tcp_socket s) {
    (void)s.set_no_delay(true);
    http_connection conn;
    for (;;) {
        const auto what = conn.process();
        if (what == http_connection::next::read) {
            auto n = co_await s.recv(conn.free_space());
            if (!n || *n == 0) co_return; // error, or the client closed: nothing owed
            conn.received(*n);
            continue;
        }
        // A plain send loop over send(), to show what send_all() does (on Linux it is one operation that
        // resends the remainder itself; on Windows a coroutine over send()).
        std::string& out = conn.output();
        std::size_t done = 0;
        while (done < out.size()) {
            auto sent = co_await s.send(coport::buffer(out.data() + done, out.size() - done));
            if (!sent) co_return;
            done += *sent;
        }
        out.clear(); // keeps its capacity
        if (what == http_connection::next::write_and_close) break;
    }
    // Closing with unread request bytes would make the kernel send a reset, which can destroy the last
    // response before the client reads it: shut down our side, then read until the client closes (bounded).
    (void)s.shutdown(coport::shutdown_type::send);
    coport::io_context& ctx = *s.context();
    char sink[1024];
    auto read_sink = [&](std::stop_token st) { return s.recv(coport::buffer(sink), st); };
    const auto deadline = coport::io_context::clock::now() + std::chrono::seconds(2);
    for (;;) {
        auto n = co_await coport::with_deadline(ctx, deadline, read_sink);
        if (!n || *n == 0) break;
    }
}

coport::task<void> serve(coport::io_context& ctx, coport::tcp_listener& listener) {
    coport::async_scope scope;
    for (;;) {
        auto s = co_await listener.accept();
        if (!s) {
            std::fprintf(stderr, "accept: %s\n", s.error().message().c_str());
            if (s.error() != coport::errc::too_many_files) break;
            auto pause = co_await ctx.sleep_for(std::chrono::milliseconds(100)); // let connections end
            (void)pause;
            continue;
        }
        scope.spawn(session(std::move(*s)));
    }
    co_await scope.join();
}

} // namespace

int main(int argc, char** argv) {
    const std::string host = argc > 1 ? argv[1] : "127.0.0.1";
    const int port = argc > 2 ? std::atoi(argv[2]) : 8080;
    const int threads = argc > 3 ? std::atoi(argv[3]) : 1;
    if (port < 0 || port > 65535 || threads < 1) {
        std::fprintf(stderr, "usage: http_hello [host=127.0.0.1] [port=8080] [threads=1]\n");
        return 2;
    }
    auto addr = coport::ip_address::parse(host);
    if (!addr) {
        std::fprintf(stderr, "%s: %s\n", host.c_str(), addr.error().message().c_str());
        return 2;
    }

    coport::io_context ctx;
    auto listener = coport::tcp_listener::bind(ctx, coport::endpoint(*addr, static_cast<std::uint16_t>(port)));
    if (!listener) {
        std::fprintf(stderr, "bind %s:%d: %s\n", host.c_str(), port, listener.error().message().c_str());
        return 1;
    }
    (void)canned(); // built before any thread runs
    std::printf("listening on %s\n", listener->local_endpoint().value().to_string().c_str());
    std::fflush(stdout);

    coport::thread_pool_runner helpers(ctx, static_cast<unsigned>(threads - 1));
    auto guard = ctx.make_work_guard();
    ctx.block_on(serve(ctx, *listener));
    guard.reset();
    helpers.join();
    return 0;
}
