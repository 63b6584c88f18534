// http_get: an HTTP/1.1 client: GET one http:// URL and write the body to stdout, byte for byte (Content-Length,
// chunked, or until the server closes). Exit 0 on a 2xx status; otherwise 1 (2: usage) with a message on stderr.
// Run: http_get http://HOST[:PORT]/path > body      (e.g. against http_hello: http_get http://127.0.0.1:8080/)
#include <coport/coport.hpp>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#ifdef _WIN32
#include <fcntl.h> // _O_BINARY
#include <io.h>    // _setmode: stdout must not turn "\n" into "\r\n"
#endif

using namespace std::chrono_literals;

namespace {

struct url {
    std::string host; // without brackets
    std::uint16_t port = 80;
    std::string authority; // as in the URL, for the Host header
    std::string target = "/";
};

std::optional<url> parse_url(std::string_view s) {
    constexpr std::string_view scheme = "http://";
    if (s.size() < scheme.size()) return std::nullopt;
    for (std::size_t i = 0; i < scheme.size(); ++i) // the scheme is case-insensitive
        if (std::tolower(static_cast<unsigned char>(s[i])) != scheme[i]) return std::nullopt;
    s.remove_prefix(scheme.size());
    if (std::size_t hash = s.find('#'); hash != std::string_view::npos) s = s.substr(0, hash);
    const std::size_t slash = s.find_first_of("/?");
    url u;
    u.authority = std::string(s.substr(0, slash));
    if (slash != std::string_view::npos) u.target = (s[slash] == '?' ? "/" : "") + std::string(s.substr(slash));
    std::string_view a = u.authority, port;
    if (a.empty() || a.find('@') != std::string_view::npos) return std::nullopt; // no user:password@
    if (a.front() == '[') {
        const std::size_t close = a.find(']');
        if (close == std::string_view::npos) return std::nullopt;
        u.host = std::string(a.substr(1, close - 1));
        if (close + 1 < a.size()) {
            if (a[close + 1] != ':') return std::nullopt;
            port = a.substr(close + 2);
        }
    } else {
        const std::size_t colon = a.find(':');
        u.host = std::string(a.substr(0, colon));
        if (colon != std::string_view::npos) port = a.substr(colon + 1);
    }
    if (u.host.empty()) return std::nullopt;
    if (!port.empty()) {
        unsigned long p = 0;
        for (char c : port) {
            if (c < '0' || c > '9' || p > 65535) return std::nullopt;
            p = p * 10 + static_cast<unsigned long>(c - '0');
        }
        if (p == 0 || p > 65535) return std::nullopt;
        u.port = static_cast<std::uint16_t>(p);
    }
    return u;
}

bool iequals(std::string_view a, std::string_view b) {
    if (a.size() != b.size()) return false;
    for (std::size_t i = 0; i < a.size(); ++i)
        if (std::tolower(static_cast<unsigned char>(a[i])) != std::tolower(static_cast<unsigned char>(b[i]))) return false;
    return true;
}

std::string_view trim(std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
    return s;
}

// Errors of this program (bad responses), next to the library's network errors.
std::error_code protocol_error() { return std::make_error_code(std::errc::protocol_error); }

// Buffered reading from the connection: lines for the head and the chunk sizes, raw bytes for the body.
// Every recv has a timeout, so a silent server cannot hang the program.
class reader {
public:
    reader(coport::io_context& ctx, coport::tcp_socket& s) : m_ctx(ctx), m_sock(s), m_buf(64 * 1024) {}

    /// Reads more bytes; 0 at end of stream.
    coport::task<coport::result<std::size_t>> fill() {
        if (m_begin == m_end) m_begin = m_end = 0;
        if (m_end == m_buf.size()) { // make room: move what is unread to the front
            std::copy(m_buf.begin() + static_cast<std::ptrdiff_t>(m_begin), m_buf.begin() + static_cast<std::ptrdiff_t>(m_end), m_buf.begin());
            m_end -= m_begin;
            m_begin = 0;
        }
        if (m_end == m_buf.size()) co_return coport::unexpected(protocol_error()); // a line longer than the buffer
        auto read_some = [this](std::stop_token st) {
            return m_sock.recv(coport::buffer(m_buf.data() + m_end, m_buf.size() - m_end), st);
        };
        auto n = co_await coport::with_timeout(m_ctx, 30s, read_some);
        if (n) m_end += *n;
        co_return n;
    }

    /// The next line without its CRLF (or bare LF). End of stream before it: errc::eof.
    coport::task<coport::result<std::string>> line() {
        for (;;) {
            const std::string_view data = buffered();
            if (std::size_t lf = data.find('\n'); lf != std::string_view::npos) {
                std::string l(data.substr(0, lf > 0 && data[lf - 1] == '\r' ? lf - 1 : lf));
                m_begin += lf + 1;
                co_return l;
            }
            auto n = co_await fill();
            if (!n) co_return coport::unexpected(n.error());
            if (*n == 0) co_return coport::unexpected(make_error_code(coport::error::eof));
        }
    }

    std::string_view buffered() const { return {m_buf.data() + m_begin, m_end - m_begin}; }
    void consume(std::size_t n) { m_begin += n; }

private:
    coport::io_context& m_ctx;
    coport::tcp_socket& m_sock;
    std::vector<char> m_buf;
    std::size_t m_begin = 0, m_end = 0;
};

bool write_out(std::string_view bytes) {
    return bytes.empty() || std::fwrite(bytes.data(), 1, bytes.size(), stdout) == bytes.size();
}

// Copies `n` body bytes to stdout (n = -1: until the server closes).
coport::task<std::error_code> copy_body(reader& in, long long n) {
    const bool until_eof = n < 0;
    while (until_eof || n > 0) {
        if (in.buffered().empty()) {
            auto got = co_await in.fill();
            if (!got) co_return got.error();
            if (*got == 0) co_return until_eof ? std::error_code{} : make_error_code(coport::error::eof);
        }
        std::string_view chunk = in.buffered();
        if (!until_eof && static_cast<long long>(chunk.size()) > n) chunk = chunk.substr(0, static_cast<std::size_t>(n));
        if (!write_out(chunk)) co_return std::make_error_code(std::errc::io_error);
        in.consume(chunk.size());
        if (!until_eof) n -= static_cast<long long>(chunk.size());
    }
    co_return std::error_code{};
}

// Transfer-Encoding: chunked — hex size [; extensions] CRLF, data, CRLF; a 0 size, then trailers and an empty line.
coport::task<std::error_code> copy_chunked(reader& in) {
    for (;;) {
        auto size_line = co_await in.line();
        if (!size_line) co_return size_line.error();
        const std::string_view hex = trim(std::string_view(*size_line).substr(0, size_line->find(';')));
        if (hex.empty() || hex.size() > 15) co_return protocol_error();
        long long size = 0;
        for (char c : hex) {
            const int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
            if (d < 0) co_return protocol_error();
            size = size * 16 + d;
        }
        if (size == 0) break;
        auto copied = co_await copy_body(in, size);
        if (copied) co_return copied;
        auto crlf = co_await in.line();
        if (!crlf) co_return crlf.error();
        if (!crlf->empty()) co_return protocol_error();
    }
    for (;;) { // trailer fields, ignored
        auto trailer = co_await in.line();
        if (!trailer) co_return trailer.error();
        if (trailer->empty()) co_return std::error_code{};
    }
}

coport::task<int> get(coport::io_context& ctx, url u) {
    auto connect = [&ctx, &u](std::stop_token st) { return coport::tcp_socket::connect(ctx, u.host, u.port, st); };
    auto s = co_await coport::with_timeout(ctx, 10s, connect);
    if (!s) {
        std::fprintf(stderr, "http_get: connect to %s: %s\n", u.authority.c_str(), s.error().message().c_str());
        co_return 1;
    }
    const std::string request = "GET " + u.target + " HTTP/1.1\r\nHost: " + u.authority +
                                "\r\nUser-Agent: coport-http_get\r\nAccept: */*\r\nConnection: close\r\n\r\n";
    auto sent = co_await s->send_all(coport::buffer(request));
    if (!sent) {
        std::fprintf(stderr, "http_get: send: %s\n", sent.error().message().c_str());
        co_return 1;
    }

    reader in(ctx, *s);
    int status = 0;
    std::string status_line;
    long long content_length = -1;
    bool chunked = false, has_transfer_encoding = false;
    do { // 1xx responses are interim: the real one follows
        content_length = -1;
        chunked = has_transfer_encoding = false;
        auto l = co_await in.line();
        if (!l) {
            std::fprintf(stderr, "http_get: reading the status line: %s\n", l.error().message().c_str());
            co_return 1;
        }
        status_line = std::move(*l);
        // "HTTP/1.1 200 OK"
        if (status_line.size() < 12 || status_line.compare(0, 5, "HTTP/") != 0 || status_line[8] != ' ') {
            std::fprintf(stderr, "http_get: not an HTTP response: %s\n", status_line.c_str());
            co_return 1;
        }
        status = std::atoi(status_line.c_str() + 9);
        for (;;) {
            auto h = co_await in.line();
            if (!h) {
                std::fprintf(stderr, "http_get: reading the headers: %s\n", h.error().message().c_str());
                co_return 1;
            }
            if (h->empty()) break;
            const std::size_t colon = h->find(':');
            if (colon == std::string::npos) continue;
            const std::string_view name = std::string_view(*h).substr(0, colon);
            const std::string_view value = trim(std::string_view(*h).substr(colon + 1));
            if (iequals(name, "content-length")) {
                content_length = 0;
                for (char c : value) {
                    if (c < '0' || c > '9' || content_length > (1LL << 50)) {
                        std::fprintf(stderr, "http_get: bad Content-Length: %s\n", h->c_str());
                        co_return 1;
                    }
                    content_length = content_length * 10 + (c - '0');
                }
            } else if (iequals(name, "transfer-encoding")) {
                // The body is chunked if chunked is the last coding; otherwise it ends when the server closes.
                has_transfer_encoding = true;
                const std::size_t comma = value.rfind(',');
                chunked = iequals(trim(comma == std::string_view::npos ? value : value.substr(comma + 1)), "chunked");
            }
        }
    } while (status >= 100 && status < 200 && status != 101);

    if (status < 200 || status > 299) {
        std::fprintf(stderr, "http_get: %s\n", status_line.c_str());
        co_return 1;
    }
    std::error_code ec;
    if (status == 204 || status == 304) ec = {};
    else if (chunked) ec = co_await copy_chunked(in);
    else if (content_length >= 0 && !has_transfer_encoding) ec = co_await copy_body(in, content_length);
    else ec = co_await copy_body(in, -1);
    if (std::fflush(stdout) != 0 && !ec) ec = std::make_error_code(std::errc::io_error);
    if (ec) {
        std::fprintf(stderr, "http_get: reading the body: %s\n", ec.message().c_str());
        co_return 1;
    }
    co_return 0;
}

} // namespace

int main(int argc, char** argv) {
    auto u = argc == 2 ? parse_url(argv[1]) : std::nullopt;
    if (!u) {
        std::fprintf(stderr, "usage: http_get http://HOST[:PORT]/path   (http:// only)\n");
        return 2;
    }
#ifdef _WIN32
    _setmode(_fileno(stdout), _O_BINARY);
#endif
    coport::io_context ctx;
    return ctx.block_on(get(ctx, std::move(*u)));
}
