// SPDX-License-Identifier: MIT
#pragma once
// A few threads for calls that can only block (getaddrinfo), so that they never hold up the threads that
// run the completion port. Started on first use; joined when the io_context is destroyed. Part of the
// engine (coport/detail/config.hpp): the header declares it, so that files including coport do not parse
// <condition_variable>, <thread> and <functional> for it or compile its code.

#include <coport/detail/config.hpp>

#include <cstddef>
#include <memory>

namespace coport::detail {

/// A job for the pool: run(true) on a pool thread, or run(false) when the pool is destroyed before the
/// job ran (to complete its waiter with an error). The pool deletes it afterwards.
class blocking_job {
public:
    virtual ~blocking_job() = default;
    virtual void run(bool ran) = 0;

private:
    friend class blocking_pool;
    blocking_job* m_next = nullptr;
};

class blocking_pool {
public:
    static constexpr std::size_t max_threads = 4;
    COPORT_DECL blocking_pool();
    COPORT_DECL ~blocking_pool();
    blocking_pool(const blocking_pool&) = delete;
    blocking_pool& operator=(const blocking_pool&) = delete;
    /// Queues `job` to run on a pool thread (a thread is started if none is idle and fewer than max_threads run).
    COPORT_DECL void submit(std::unique_ptr<blocking_job> job);

private:
    struct state;
    std::unique_ptr<state> m_state;
};

} // namespace coport::detail

#if COPORT_DEFINE_ENGINE // see coport/detail/config.hpp
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

namespace coport::detail {

struct blocking_pool::state {
    std::mutex mutex;
    std::condition_variable cv;
    blocking_job* head = nullptr; // queued jobs, oldest first
    blocking_job* tail = nullptr;
    std::vector<std::thread> threads;
    std::size_t idle = 0;
    bool stopping = false;

    blocking_job* pop() noexcept {
        blocking_job* j = head;
        head = j->m_next;
        if (!head) tail = nullptr;
        return j;
    }
    void loop() {
        std::unique_lock lock(mutex);
        for (;;) {
            ++idle;
            cv.wait(lock, [this] { return stopping || head; });
            --idle;
            if (stopping) return;
            std::unique_ptr<blocking_job> job(pop());
            lock.unlock();
            job->run(true);
            job.reset();
            lock.lock();
        }
    }
};

COPORT_DECL blocking_pool::blocking_pool() : m_state(std::make_unique<state>()) {}

COPORT_DECL blocking_pool::~blocking_pool() {
    state& s = *m_state;
    blocking_job* left;
    {
        std::lock_guard lock(s.mutex);
        s.stopping = true;
        left = s.head;
        s.head = s.tail = nullptr;
    }
    s.cv.notify_all();
    for (auto& t : s.threads) t.join();
    while (left) { // never ran: told so, to complete their waiters with an error
        std::unique_ptr<blocking_job> job(left);
        left = left->m_next;
        job->run(false);
    }
}

COPORT_DECL void blocking_pool::submit(std::unique_ptr<blocking_job> job) {
    state& s = *m_state;
    std::lock_guard lock(s.mutex);
    blocking_job* j = job.release();
    j->m_next = nullptr;
    if (s.tail) s.tail->m_next = j;
    else s.head = j;
    s.tail = j;
    if (s.idle == 0 && s.threads.size() < max_threads) s.threads.emplace_back([&s] { s.loop(); });
    else s.cv.notify_one();
}

} // namespace coport::detail
#endif // COPORT_DEFINE_ENGINE
