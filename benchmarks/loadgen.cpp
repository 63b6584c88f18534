// SPDX-License-Identifier: MIT
// loadgen: the load generator of the echo benchmarks. One thread, raw epoll and non-blocking syscalls, no
// coport: as cheap per operation as it can be, so that the server is what is measured. Every echoed byte
// is checked; a mismatch, an early close or an error ends the run with "loadgen: FAIL ..." and exit 1.
// Run: loadgen -p PORT -w pingpong|stream|storm|idle [-c CONNS] [-s BYTES] [-d SECONDS=3] [--warmup S=0.5]
//              [--pid SERVER_PID] [--inflight N=16 (storm)] [--cpu N]
//   pingpong  -c 1 or 64, -s 64: one message in flight per connection; round trips/s, p50/p99 latency
//   stream    -c 4, -s 16384: writes of -s bytes as fast as the server echoes; MB/s echoed
//   storm     --inflight connections at a time, each connect, echo -s 64 bytes, close; connections/s
//   idle      -c 10000 connections, one 64-byte echo each, then idle: the server's resident bytes per
//             connection (from /proc/PID/statm)
// Output: one line "result key=value ...". With --pid, the server's CPU time (utime+stime from
// /proc/PID/stat) is sampled at both ends of the measured window: server_cpu_us_per_op.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

[[noreturn]] void fail(const char* fmt, ...) {
    std::va_list ap;
    va_start(ap, fmt);
    std::fprintf(stderr, "loadgen: FAIL ");
    std::vfprintf(stderr, fmt, ap);
    std::fprintf(stderr, "\n");
    va_end(ap);
    std::exit(1);
}

std::uint64_t now_ns() {
    timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return static_cast<std::uint64_t>(ts.tv_sec) * 1000000000u + static_cast<std::uint64_t>(ts.tv_nsec);
}

double self_cpu_s() {
    rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
           static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

// utime+stime of every thread of the process, in clock ticks (fields 14 and 15 of /proc/PID/stat).
long long server_ticks(int pid) {
    if (pid <= 0) return 0;
    char path[64], buf[1024];
    std::snprintf(path, sizeof path, "/proc/%d/stat", pid);
    int fd = ::open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) fail("open %s: %s", path, std::strerror(errno));
    ssize_t n = ::read(fd, buf, sizeof buf - 1);
    ::close(fd);
    if (n <= 0) fail("read %s", path);
    buf[n] = 0;
    const char* p = std::strrchr(buf, ')'); // the command name may contain spaces
    if (!p) fail("parse %s", path);
    long long utime = 0, stime = 0;
    // after ")": state(3) ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime(14) stime(15)
    if (std::sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lld %lld", &utime, &stime) != 2)
        fail("parse %s", path);
    return utime + stime;
}

// Busy and total ticks of the whole machine (first line of /proc/stat): how much else ran meanwhile.
struct machine_ticks {
    long long busy = 0, total = 0;
};
machine_ticks read_machine_ticks() {
    machine_ticks m;
    FILE* f = std::fopen("/proc/stat", "r");
    if (!f) return m;
    long long v[10] = {};
    if (std::fscanf(f, "cpu %lld %lld %lld %lld %lld %lld %lld %lld %lld %lld", &v[0], &v[1], &v[2], &v[3], &v[4],
                    &v[5], &v[6], &v[7], &v[8], &v[9]) >= 8) {
        for (int i = 0; i < 8; ++i) m.total += v[i]; // guest time is already inside user
        m.busy = m.total - v[3] - v[4];              // minus idle and iowait
    }
    std::fclose(f);
    return m;
}

long long server_rss_bytes(int pid) {
    char path[64];
    std::snprintf(path, sizeof path, "/proc/%d/statm", pid);
    FILE* f = std::fopen(path, "r");
    if (!f) fail("open %s: %s", path, std::strerror(errno));
    long long size = 0, resident = 0;
    if (std::fscanf(f, "%lld %lld", &size, &resident) != 2) fail("parse %s", path);
    std::fclose(f);
    return resident * sysconf(_SC_PAGESIZE);
}

struct options {
    int port = 0;
    std::string workload;
    int conns = -1;
    int size = -1;
    double seconds = 3.0;
    double warmup = 0.5;
    int pid = 0;
    int inflight = 16;
    int cpu = -1;
};

sockaddr_in server_addr(int port) {
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<std::uint16_t>(port));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return a;
}

void set_nodelay(int fd) {
    int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

int connect_blocking(int port) {
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) fail("socket: %s", std::strerror(errno));
    sockaddr_in a = server_addr(port);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) fail("connect: %s", std::strerror(errno));
    set_nodelay(fd);
    ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK);
    return fd;
}

// Sends all of [p, p+n) on a non-blocking socket. Used for one small message on a socket with nothing else
// in flight, so EAGAIN does not happen in practice; if it does, yield and retry.
void send_all(int fd, const unsigned char* p, std::size_t n) {
    while (n > 0) {
        ssize_t r = ::send(fd, p, n, MSG_NOSIGNAL);
        if (r < 0) {
            if (errno == EAGAIN || errno == EINTR) {
                sched_yield();
                continue;
            }
            fail("send: %s", std::strerror(errno));
        }
        p += r;
        n -= static_cast<std::size_t>(r);
    }
}

// The bytes of message `seq` on connection `id`: every message differs, so a stale or misplaced echo
// cannot pass the check.
void fill_message(unsigned char* p, std::size_t n, std::uint64_t id, std::uint64_t seq) {
    std::uint64_t x = (id << 40) ^ seq ^ 0x9E3779B97F4A7C15ull;
    for (std::size_t i = 0; i < n; i += 8) {
        x ^= x >> 31;
        x *= 0xBF58476D1CE4E5B9ull;
        x ^= x >> 27;
        std::memcpy(p + i, &x, std::min<std::size_t>(8, n - i));
    }
}

std::size_t first_difference(const unsigned char* a, const unsigned char* b, std::size_t n) {
    for (std::size_t i = 0; i < n; ++i)
        if (a[i] != b[i]) return i;
    return n;
}

// The measured window: [warmup, warmup + seconds) after the workload started.
struct window {
    std::uint64_t begin_at, end_at;
    bool measuring = false;
    std::uint64_t t0 = 0, t1 = 0;
    long long ticks0 = 0, ticks1 = 0;
    double cpu0 = 0, cpu1 = 0;
    machine_ticks m0, m1;
    int pid;
    window(const options& o, std::uint64_t start) : pid(o.pid) {
        begin_at = start + static_cast<std::uint64_t>(o.warmup * 1e9);
        end_at = begin_at + static_cast<std::uint64_t>(o.seconds * 1e9);
    }
    // Returns false once the window is over.
    bool tick(std::uint64_t now) {
        if (!measuring && now >= begin_at && t1 == 0) {
            measuring = true;
            t0 = now_ns();
            ticks0 = server_ticks(pid);
            cpu0 = self_cpu_s();
            m0 = read_machine_ticks();
        }
        if (now >= end_at) {
            if (measuring) {
                t1 = now_ns();
                ticks1 = server_ticks(pid);
                cpu1 = self_cpu_s();
                m1 = read_machine_ticks();
                measuring = false;
            }
            return false;
        }
        return true;
    }
    double secs() const { return static_cast<double>(t1 - t0) / 1e9; }
    double server_cpu_s() const { return static_cast<double>(ticks1 - ticks0) / static_cast<double>(sysconf(_SC_CLK_TCK)); }
    void print_common(const options& o, double ops) const {
        std::printf(" secs=%.3f ops=%.0f rate=%.1f", secs(), ops, ops / secs());
        const double loadgen_pct = 100.0 * (cpu1 - cpu0) / secs();
        std::printf(" loadgen_cpu_pct=%.1f", loadgen_pct);
        double server_pct = 0;
        if (o.pid > 0) {
            server_pct = 100.0 * server_cpu_s() / secs();
            std::printf(" server_cpu_pct=%.1f server_cpu_us_per_op=%.4f", server_pct,
                        ops > 0 ? server_cpu_s() * 1e6 / ops : 0.0);
        }
        // Everything else that ran on the machine meanwhile (other users' compiles...), in % of one CPU.
        if (m1.total > m0.total) {
            const double busy_pct = 100.0 * static_cast<double>(sysconf(_SC_NPROCESSORS_ONLN)) *
                                    static_cast<double>(m1.busy - m0.busy) / static_cast<double>(m1.total - m0.total);
            std::printf(" other_cpu_pct=%.1f", std::max(0.0, busy_pct - loadgen_pct - server_pct));
        }
    }
};

// ---------------------------------------------------------------------------------------------------------

int run_pingpong(const options& o) {
    const int nconn = o.conns < 0 ? 1 : o.conns;
    const std::size_t size = o.size < 0 ? 64 : static_cast<std::size_t>(o.size);
    struct conn {
        int fd;
        std::uint64_t seq = 0;
        std::size_t rx_off = 0;
        std::uint64_t sent_at = 0;
        std::vector<unsigned char> tx, rx;
    };
    std::vector<conn> cs(static_cast<std::size_t>(nconn));
    int ep = ::epoll_create1(EPOLL_CLOEXEC);
    for (int i = 0; i < nconn; ++i) {
        conn& c = cs[static_cast<std::size_t>(i)];
        c.fd = connect_blocking(o.port);
        c.tx.resize(size);
        c.rx.resize(size);
        epoll_event ev{};
        ev.events = EPOLLIN;
        ev.data.u32 = static_cast<std::uint32_t>(i);
        if (::epoll_ctl(ep, EPOLL_CTL_ADD, c.fd, &ev) != 0) fail("epoll_ctl: %s", std::strerror(errno));
    }
    std::vector<std::uint32_t> lat; // ns, capped at ~4 s
    lat.reserve(1 << 20);
    std::uint64_t count = 0;
    const std::uint64_t start = now_ns();
    window w(o, start);
    for (std::size_t i = 0; i < cs.size(); ++i) {
        fill_message(cs[i].tx.data(), size, i, 0);
        cs[i].sent_at = now_ns();
        send_all(cs[i].fd, cs[i].tx.data(), size);
    }
    std::vector<epoll_event> evs(256);
    while (w.tick(now_ns())) {
        int n = ::epoll_wait(ep, evs.data(), static_cast<int>(evs.size()), 50);
        if (n < 0 && errno != EINTR) fail("epoll_wait: %s", std::strerror(errno));
        for (int k = 0; k < n; ++k) {
            const std::uint32_t idx = evs[static_cast<std::size_t>(k)].data.u32;
            conn& c = cs[idx];
            ssize_t r = ::recv(c.fd, c.rx.data() + c.rx_off, size - c.rx_off, 0);
            if (r == 0) fail("pingpong: the server closed connection %u", idx);
            if (r < 0) {
                if (errno == EAGAIN || errno == EINTR) continue;
                fail("pingpong: recv: %s", std::strerror(errno));
            }
            c.rx_off += static_cast<std::size_t>(r);
            if (c.rx_off < size) continue;
            if (std::memcmp(c.rx.data(), c.tx.data(), size) != 0)
                fail("pingpong: echo mismatch on connection %u, message %" PRIu64 ", byte %zu", idx, c.seq,
                     first_difference(c.rx.data(), c.tx.data(), size));
            const std::uint64_t t = now_ns();
            if (w.measuring) {
                std::uint64_t d = t - c.sent_at;
                lat.push_back(static_cast<std::uint32_t>(std::min<std::uint64_t>(d, 0xFFFFFFFFu)));
                ++count;
            }
            c.rx_off = 0;
            fill_message(c.tx.data(), size, idx, ++c.seq);
            c.sent_at = now_ns();
            send_all(c.fd, c.tx.data(), size);
        }
    }
    if (count == 0) fail("pingpong: no round trip completed in the measured window");
    auto pct = [&](double q) {
        std::size_t k = static_cast<std::size_t>(q * static_cast<double>(lat.size() - 1));
        std::nth_element(lat.begin(), lat.begin() + static_cast<std::ptrdiff_t>(k), lat.end());
        return static_cast<double>(lat[k]) / 1000.0;
    };
    const double p50 = pct(0.50), p99 = pct(0.99);
    std::printf("result workload=pingpong conns=%d size=%zu", nconn, size);
    w.print_common(o, static_cast<double>(count));
    std::printf(" p50_us=%.2f p99_us=%.2f\n", p50, p99);
    for (auto& c : cs) ::close(c.fd);
    ::close(ep);
    return 0;
}

// ---------------------------------------------------------------------------------------------------------

int run_stream(const options& o) {
    const int nconn = o.conns < 0 ? 4 : o.conns;
    const std::size_t size = o.size < 0 ? 16384 : static_cast<std::size_t>(o.size);
    constexpr std::size_t period = 65521;   // prime: never lines up with write or read sizes
    constexpr std::size_t max_read = 65536; // one recv at most
    if (size > max_read) fail("stream: -s at most %zu", max_read);
    // Byte x of connection k's stream is pattern[(x + shift_k) % period]; pattern is padded so that any
    // window of max_read bytes is contiguous: sending and checking are one send / one memcmp.
    std::vector<unsigned char> pattern(period + max_read);
    std::uint64_t x = 88172645463325252ull;
    for (std::size_t i = 0; i < period; ++i) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        pattern[i] = static_cast<unsigned char>(x >> 32);
    }
    for (std::size_t i = period; i < pattern.size(); ++i) pattern[i] = pattern[i - period];
    struct conn {
        int fd;
        std::uint64_t tx = 0, rx = 0;
        std::size_t shift;
    };
    std::vector<conn> cs(static_cast<std::size_t>(nconn));
    int ep = ::epoll_create1(EPOLL_CLOEXEC);
    for (int i = 0; i < nconn; ++i) {
        conn& c = cs[static_cast<std::size_t>(i)];
        c.fd = connect_blocking(o.port);
        c.shift = (static_cast<std::size_t>(i) * 7919) % period;
        epoll_event ev{};
        ev.events = EPOLLIN | EPOLLOUT;
        ev.data.u32 = static_cast<std::uint32_t>(i);
        if (::epoll_ctl(ep, EPOLL_CTL_ADD, c.fd, &ev) != 0) fail("epoll_ctl: %s", std::strerror(errno));
    }
    std::vector<unsigned char> rxbuf(max_read);
    std::uint64_t bytes = 0;
    window w(o, now_ns());
    std::vector<epoll_event> evs(64);
    while (w.tick(now_ns())) {
        int n = ::epoll_wait(ep, evs.data(), static_cast<int>(evs.size()), 50);
        if (n < 0 && errno != EINTR) fail("epoll_wait: %s", std::strerror(errno));
        for (int k = 0; k < n; ++k) {
            const epoll_event& ev = evs[static_cast<std::size_t>(k)];
            conn& c = cs[ev.data.u32];
            if (ev.events & EPOLLIN) {
                ssize_t r = ::recv(c.fd, rxbuf.data(), max_read, 0);
                if (r == 0) fail("stream: the server closed connection %u", ev.data.u32);
                if (r < 0 && errno != EAGAIN && errno != EINTR) fail("stream: recv: %s", std::strerror(errno));
                if (r > 0) {
                    const unsigned char* want = pattern.data() + (c.rx + c.shift) % period;
                    if (std::memcmp(rxbuf.data(), want, static_cast<std::size_t>(r)) != 0)
                        fail("stream: echo mismatch on connection %u at stream byte %" PRIu64, ev.data.u32,
                             c.rx + first_difference(rxbuf.data(), want, static_cast<std::size_t>(r)));
                    c.rx += static_cast<std::uint64_t>(r);
                    if (c.rx > c.tx) fail("stream: connection %u echoed more than was sent", ev.data.u32);
                    if (w.measuring) bytes += static_cast<std::uint64_t>(r);
                }
            }
            if (ev.events & EPOLLOUT) {
                ssize_t r = ::send(c.fd, pattern.data() + (c.tx + c.shift) % period, size, MSG_NOSIGNAL);
                if (r < 0 && errno != EAGAIN && errno != EINTR) fail("stream: send: %s", std::strerror(errno));
                if (r > 0) c.tx += static_cast<std::uint64_t>(r);
            }
            if (ev.events & (EPOLLERR | EPOLLHUP)) fail("stream: connection %u: error or hang-up", ev.data.u32);
        }
    }
    if (bytes == 0) fail("stream: nothing echoed in the measured window");
    std::printf("result workload=stream conns=%d size=%zu", nconn, size);
    // ops: 16 KiB writes' worth of echoed bytes; MB/s = 1e6 bytes per second echoed (and checked).
    w.print_common(o, static_cast<double>(bytes) / static_cast<double>(size));
    std::printf(" mbps=%.1f server_cpu_us_per_mb=%.3f\n", static_cast<double>(bytes) / w.secs() / 1e6,
                o.pid > 0 ? w.server_cpu_s() * 1e6 / (static_cast<double>(bytes) / 1e6) : 0.0);
    for (auto& c : cs) ::close(c.fd);
    ::close(ep);
    return 0;
}

// ---------------------------------------------------------------------------------------------------------

// Client sockets of the storm come from rotating loopback source addresses, each with its own ephemeral
// port range: a client that closes first leaves TIME_WAIT, and one source address would run out of ports.
int open_storm_socket(std::uint32_t counter) {
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) fail("socket: %s", std::strerror(errno));
    int one = 1;
    ::setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
    sockaddr_in src{};
    src.sin_family = AF_INET;
    src.sin_addr.s_addr = htonl(0x7F000000u | (2 + counter % 64)); // 127.0.0.2 .. 127.0.0.65
    if (::bind(fd, reinterpret_cast<sockaddr*>(&src), sizeof src) != 0) fail("bind: %s", std::strerror(errno));
    return fd;
}

int run_storm(const options& o) {
    const std::size_t size = o.size < 0 ? 64 : static_cast<std::size_t>(o.size);
    const int inflight = o.inflight;
    enum class state { connecting, echoing };
    struct slot {
        int fd = -1;
        state st = state::connecting;
        std::uint64_t id = 0;
        std::size_t rx_off = 0;
        std::vector<unsigned char> tx, rx;
    };
    std::vector<slot> slots(static_cast<std::size_t>(inflight));
    int ep = ::epoll_create1(EPOLL_CLOEXEC);
    const sockaddr_in addr = server_addr(o.port);
    std::uint64_t next_id = 0, count = 0;
    std::uint32_t counter = 0;
    // Sends the message; registers the socket for the echo (or, not connected yet, for writability).
    auto send_message = [&](slot& s, std::uint32_t idx, bool registered) -> bool {
        ssize_t r = ::send(s.fd, s.tx.data(), size, MSG_NOSIGNAL);
        const bool sent = !(r < 0 && errno == EAGAIN); // EAGAIN: the handshake has not finished
        if (sent && r != static_cast<ssize_t>(size))
            fail("storm: send on connection %" PRIu64 ": %s", s.id, r < 0 ? std::strerror(errno) : "partial");
        if (sent) s.st = state::echoing;
        if (!sent && registered) return false;
        epoll_event ev{};
        ev.events = sent ? EPOLLIN : EPOLLOUT;
        ev.data.u32 = idx;
        if (::epoll_ctl(ep, registered ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, s.fd, &ev) != 0)
            fail("epoll_ctl: %s", std::strerror(errno));
        return sent;
    };
    auto start_one = [&](std::uint32_t idx) {
        slot& s = slots[idx];
        s.fd = open_storm_socket(counter++);
        s.id = next_id++;
        s.rx_off = 0;
        s.st = state::connecting;
        fill_message(s.tx.data(), size, s.id, 0);
        if (::connect(s.fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0 && errno != EINPROGRESS)
            fail("storm: connect: %s", std::strerror(errno));
        // Over loopback the handshake has usually finished when connect() returns: try at once.
        send_message(s, idx, false);
    };
    for (auto& s : slots) {
        s.tx.resize(size);
        s.rx.resize(size);
    }
    window w(o, now_ns());
    for (std::uint32_t i = 0; i < slots.size(); ++i) start_one(i);
    std::vector<epoll_event> evs(256);
    while (w.tick(now_ns())) {
        int n = ::epoll_wait(ep, evs.data(), static_cast<int>(evs.size()), 50);
        if (n < 0 && errno != EINTR) fail("epoll_wait: %s", std::strerror(errno));
        for (int k = 0; k < n; ++k) {
            const epoll_event& ev = evs[static_cast<std::size_t>(k)];
            const std::uint32_t idx = ev.data.u32;
            slot& s = slots[idx];
            if (s.st == state::connecting) {
                if (ev.events & (EPOLLERR | EPOLLHUP)) {
                    int err = 0;
                    socklen_t len = sizeof err;
                    ::getsockopt(s.fd, SOL_SOCKET, SO_ERROR, &err, &len);
                    fail("storm: connect: %s", std::strerror(err));
                }
                if (!send_message(s, idx, true)) fail("storm: writable but not connected");
                continue;
            }
            ssize_t r = ::recv(s.fd, s.rx.data() + s.rx_off, size - s.rx_off, 0);
            if (r == 0) fail("storm: the server closed connection %" PRIu64 " before echoing", s.id);
            if (r < 0) {
                if (errno == EAGAIN || errno == EINTR) continue;
                fail("storm: recv: %s", std::strerror(errno));
            }
            s.rx_off += static_cast<std::size_t>(r);
            if (s.rx_off < size) continue;
            if (std::memcmp(s.rx.data(), s.tx.data(), size) != 0)
                fail("storm: echo mismatch on connection %" PRIu64 ", byte %zu", s.id,
                     first_difference(s.rx.data(), s.tx.data(), size));
            ::close(s.fd); // also leaves the epoll set
            if (w.measuring) ++count;
            start_one(idx);
        }
    }
    if (count == 0) fail("storm: no connection completed in the measured window");
    std::printf("result workload=storm inflight=%d size=%zu", inflight, size);
    w.print_common(o, static_cast<double>(count));
    std::printf("\n");
    for (auto& s : slots) ::close(s.fd);
    ::close(ep);
    return 0;
}

// ---------------------------------------------------------------------------------------------------------

int run_idle(const options& o) {
    const int nconn = o.conns < 0 ? 10000 : o.conns;
    const std::size_t size = 64;
    if (o.pid <= 0) fail("idle: needs --pid SERVER_PID");
    const long long rss0 = server_rss_bytes(o.pid);
    struct conn {
        int fd = -1;
        bool echoing = false, done = false;
        std::size_t rx_off = 0;
        unsigned char tx[64], rx[64];
    };
    std::vector<conn> cs(static_cast<std::size_t>(nconn));
    int ep = ::epoll_create1(EPOLL_CLOEXEC);
    const sockaddr_in addr = server_addr(o.port);
    int started = 0, finished = 0, pending = 0;
    constexpr int max_pending = 256; // well under the listen backlog
    const std::uint64_t deadline = now_ns() + static_cast<std::uint64_t>((30.0 + o.seconds) * 1e9);
    std::vector<epoll_event> evs(256);
    while (finished < nconn) {
        while (started < nconn && pending < max_pending) {
            conn& c = cs[static_cast<std::size_t>(started)];
            c.fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
            if (c.fd < 0) fail("idle: socket: %s (RLIMIT_NOFILE?)", std::strerror(errno));
            set_nodelay(c.fd);
            fill_message(c.tx, size, static_cast<std::uint64_t>(started), 0);
            if (::connect(c.fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0 && errno != EINPROGRESS)
                fail("idle: connect: %s", std::strerror(errno));
            epoll_event ev{};
            ev.events = EPOLLOUT;
            ev.data.u32 = static_cast<std::uint32_t>(started);
            if (::epoll_ctl(ep, EPOLL_CTL_ADD, c.fd, &ev) != 0) fail("epoll_ctl: %s", std::strerror(errno));
            ++started;
            ++pending;
        }
        if (now_ns() > deadline) fail("idle: only %d of %d connections echoed in time", finished, nconn);
        int n = ::epoll_wait(ep, evs.data(), static_cast<int>(evs.size()), 100);
        if (n < 0 && errno != EINTR) fail("epoll_wait: %s", std::strerror(errno));
        for (int k = 0; k < n; ++k) {
            const epoll_event& ev = evs[static_cast<std::size_t>(k)];
            conn& c = cs[ev.data.u32];
            if (!c.echoing) {
                if (ev.events & (EPOLLERR | EPOLLHUP)) fail("idle: connect failed");
                ssize_t r = ::send(c.fd, c.tx, size, MSG_NOSIGNAL);
                if (r != static_cast<ssize_t>(size)) fail("idle: send: %s", r < 0 ? std::strerror(errno) : "partial");
                c.echoing = true;
                epoll_event mod{};
                mod.events = EPOLLIN;
                mod.data.u32 = ev.data.u32;
                ::epoll_ctl(ep, EPOLL_CTL_MOD, c.fd, &mod);
                continue;
            }
            ssize_t r = ::recv(c.fd, c.rx + c.rx_off, size - c.rx_off, 0);
            if (r == 0) fail("idle: the server closed connection %u", ev.data.u32);
            if (r < 0) {
                if (errno == EAGAIN || errno == EINTR) continue;
                fail("idle: recv: %s", std::strerror(errno));
            }
            c.rx_off += static_cast<std::size_t>(r);
            if (c.rx_off < size) continue;
            if (std::memcmp(c.rx, c.tx, size) != 0) fail("idle: echo mismatch on connection %u", ev.data.u32);
            ::epoll_ctl(ep, EPOLL_CTL_DEL, c.fd, nullptr); // idle from now on
            c.done = true;
            ++finished;
            --pending;
        }
    }
    ::usleep(300 * 1000); // let the server settle (nothing is in flight any more)
    const long long rss1 = server_rss_bytes(o.pid);
    std::printf("result workload=idle conns=%d rss_before=%lld rss_after=%lld bytes_per_conn=%.0f\n", nconn, rss0,
                rss1, static_cast<double>(rss1 - rss0) / nconn);
    for (auto& c : cs) ::close(c.fd);
    ::close(ep);
    return 0;
}

} // namespace

int main(int argc, char** argv) {
    options o;
    for (int i = 1; i < argc; ++i) {
        auto is = [&](const char* f) { return std::strcmp(argv[i], f) == 0 && i + 1 < argc; };
        if (is("-p")) o.port = std::atoi(argv[++i]);
        else if (is("-w")) o.workload = argv[++i];
        else if (is("-c")) o.conns = std::atoi(argv[++i]);
        else if (is("-s")) o.size = std::atoi(argv[++i]);
        else if (is("-d")) o.seconds = std::atof(argv[++i]);
        else if (is("--warmup")) o.warmup = std::atof(argv[++i]);
        else if (is("--pid")) o.pid = std::atoi(argv[++i]);
        else if (is("--inflight")) o.inflight = std::atoi(argv[++i]);
        else if (is("--cpu")) o.cpu = std::atoi(argv[++i]);
        else {
            std::fprintf(stderr, "loadgen: unknown argument '%s'\n", argv[i]);
            return 2;
        }
    }
    if (o.port <= 0 || o.port > 65535 || o.seconds <= 0 || o.seconds > 600 || o.warmup < 0 || o.inflight < 1 ||
        o.size == 0 || o.conns == 0) {
        std::fprintf(stderr, "usage: loadgen -p PORT -w pingpong|stream|storm|idle [-c N] [-s BYTES] [-d SECONDS]"
                             " [--warmup S] [--pid SERVER_PID] [--inflight N] [--cpu N]\n");
        return 2;
    }
    if (o.cpu >= 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(o.cpu, &set);
        if (sched_setaffinity(0, sizeof set, &set) != 0) fail("sched_setaffinity: %s", std::strerror(errno));
    }
    if (o.workload == "pingpong") return run_pingpong(o);
    if (o.workload == "stream") return run_stream(o);
    if (o.workload == "storm") return run_storm(o);
    if (o.workload == "idle") return run_idle(o);
    std::fprintf(stderr, "loadgen: unknown workload '%s'\n", o.workload.c_str());
    return 2;
}
