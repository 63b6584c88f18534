// SPDX-License-Identifier: MIT
#pragma once
// epoll engine of the Linux context, for where io_uring is refused (seccomp profiles, io_uring_disabled,
// old kernels). The same operations and the same worker loop: an operation first tries its syscall at
// once (recv/send with MSG_DONTWAIT, accept4, connect on a non-blocking socket); only on EAGAIN is it
// parked in its descriptor's queue, and the descriptor is in the worker's epoll set, edge-triggered for
// both directions. A readiness event runs the parked operations of that direction in order until one
// would block again. Cancellation takes the operation out of its queue (nothing is in the kernel).
#if !defined(__linux__)
#error "coport/detail/epoll is part of the Linux backend"
#endif

#include <coport/detail/uring/context.hpp>

#include <sys/epoll.h>

#include <algorithm>

#if COPORT_DEFINE_ENGINE // see coport/detail/config.hpp
namespace coport::detail::uring {

COPORT_DECL void worker::epoll_init() {
    m_epfd = ::epoll_create1(EPOLL_CLOEXEC);
    if (m_epfd < 0) throw std::system_error(last_error(), "epoll_create1");
    epoll_event ev{};
    ev.events = EPOLLIN; // level-triggered: stays ready until the worker reads the counter
    ev.data.fd = m_wake_fd;
    if (::epoll_ctl(m_epfd, EPOLL_CTL_ADD, m_wake_fd, &ev) != 0) {
        auto ec = last_error();
        ::close(m_epfd);
        m_epfd = -1;
        throw std::system_error(ec, "epoll_ctl(eventfd)");
    }
}

COPORT_DECL void worker::epoll_start(operation* op) noexcept {
    int r = op->m_vt->perform(op);
    if (r != -EAGAIN) { // done at once (or failed): resumed from the loop, never inside await_suspend
        complete_later(op, r);
        return;
    }
    const int fd = op->m_vt->fd(op);
    if (fd < 0) {
        complete_later(op, -EBADF);
        return;
    }
    if (static_cast<std::size_t>(fd) >= m_entries.size()) m_entries.resize(static_cast<std::size_t>(fd) + 1);
    epoll_entry& e = m_entries[static_cast<std::size_t>(fd)];
    if (e.readers.empty() && e.writers.empty()) {
        // Registered for good once; a closed descriptor leaves the set by itself and its number may come
        // back as another socket, so (re)add whenever nothing waits here. EEXIST: still registered.
        epoll_event ev{};
        ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
        ev.data.fd = fd;
        if (::epoll_ctl(m_epfd, EPOLL_CTL_ADD, fd, &ev) != 0 && errno != EEXIST) {
            complete_later(op, -errno);
            return;
        }
    }
    op->m_parked_fd = fd;
    (op->m_vt->events & EPOLLOUT ? e.writers : e.readers).push_back(op);
    ++m_inflight;
}

COPORT_DECL bool worker::epoll_cancel(operation* op) noexcept {
    const int fd = op->m_parked_fd;
    if (fd < 0 || static_cast<std::size_t>(fd) >= m_entries.size()) return false;
    epoll_entry& e = m_entries[static_cast<std::size_t>(fd)];
    for (auto* q : {&e.readers, &e.writers}) {
        auto it = std::find(q->begin(), q->end(), op);
        if (it != q->end()) {
            q->erase(it);
            --m_inflight;
            op->m_parked_fd = -1;
            op->m_res = -ECANCELED;
            complete(op);
            return true;
        }
    }
    return false; // already completed: its result is on its way
}

COPORT_DECL std::size_t worker::epoll_run_queue(int fd, bool writers, std::size_t budget) {
    std::size_t n = 0;
    while (n < budget) {
        // Re-index every time: a completion may park operations on other descriptors and grow m_entries.
        epoll_entry& e = m_entries[static_cast<std::size_t>(fd)];
        std::vector<operation*>& q = writers ? e.writers : e.readers;
        if (q.empty()) break;
        operation* op = q.front();
        int r = op->m_vt->perform(op);
        if (r == -EAGAIN) break; // edge-triggered: the next edge brings us back
        q.erase(q.begin());
        --m_inflight;
        op->m_parked_fd = -1;
        op->m_res = r;
        complete(op); // may park new operations here too: they go to the end of the queue
        ++n;
    }
    return n;
}

COPORT_DECL void worker::epoll_wait_events(int timeout_ms) {
    if (m_next_event < m_nevents) return; // events of the last wait are still being handled
    int n = ::epoll_wait(m_epfd, m_events.data(), static_cast<int>(m_events.size()), timeout_ms);
    m_nevents = n > 0 ? n : 0;
    m_next_event = 0;
}

COPORT_DECL std::size_t worker::epoll_reap(std::size_t budget) {
    std::size_t handled = 0;
    while (m_next_event < m_nevents && handled < budget) {
        const epoll_event ev = m_events[static_cast<std::size_t>(m_next_event++)];
        const int fd = ev.data.fd;
        if (fd == m_wake_fd) {
            std::uint64_t v;
            [[maybe_unused]] ssize_t r = ::read(m_wake_fd, &v, sizeof v);
            continue;
        }
        if (static_cast<std::size_t>(fd) >= m_entries.size()) continue;
        if (ev.events & (EPOLLIN | EPOLLERR | EPOLLHUP | EPOLLRDHUP)) handled += epoll_run_queue(fd, false, budget - handled);
        if (ev.events & (EPOLLOUT | EPOLLERR | EPOLLHUP) && handled < budget)
            handled += epoll_run_queue(fd, true, budget - handled);
    }
    return handled;
}

COPORT_DECL void worker::epoll_abort_all() noexcept {
    for (std::size_t fd = 0; fd < m_entries.size(); ++fd)
        for (bool writers : {false, true})
            for (;;) { // index anew each time: completions may grow m_entries
                std::vector<operation*>& q = writers ? m_entries[fd].writers : m_entries[fd].readers;
                if (q.empty()) break;
                operation* op = q.front();
                q.erase(q.begin());
                --m_inflight;
                op->m_parked_fd = -1;
                op->m_res = -ECANCELED;
                complete(op);
            }
}

} // namespace coport::detail::uring
#endif // COPORT_DEFINE_ENGINE
