// SPDX-License-Identifier: MIT
#pragma once
// A few threads for calls that can only block (getaddrinfo), so that they never hold up the threads that
// run the completion port. Started on first use. Destroying the pool (with its io_context) does not wait for
// a blocking call in progress: its job is abandoned and its thread detached, to finish in the background on
// state the pool shares with its threads. Part of the engine (coport/detail/config.hpp): the header declares
// it, so that files including coport do not parse <condition_variable>, <thread> and <functional> for it or
// compile its code.

#include <coport/detail/config.hpp>

#include <cstddef>
#include <memory>

namespace coport::detail {

/// A job for the pool. `run()` runs on a pool thread; the pool deletes the job once it has returned.
/// If the pool is destroyed before `run()` has returned, `abandon()` is called on the destroying thread,
/// exactly once, while the io_context still exists: it completes the job's waiter at once (with an error).
/// - The job never started: run() is not called; the job is deleted after abandon().
/// - run() is in progress (blocked in a call that cannot be interrupted): when abandon() returns, run()
///   must no longer touch the io_context or the waiter — it drops its answer; its thread has been detached
///   and the io_context may be gone. abandon() therefore waits for a completion that run() has already
///   begun, so that the waiter is completed exactly once, by one of them.
class blocking_job {
public:
    virtual ~blocking_job() = default;
    virtual void run() = 0;
    virtual void abandon() noexcept = 0;

private:
    friend class blocking_pool;
    blocking_job* m_next = nullptr;
};

class blocking_pool {
public:
    static constexpr std::size_t max_threads = 4;
    COPORT_DECL blocking_pool();
    /// Abandons every job not finished (see blocking_job), joins the idle threads and detaches the busy
    /// ones. Never waits for a blocking call.
    COPORT_DECL ~blocking_pool();
    blocking_pool(const blocking_pool&) = delete;
    blocking_pool& operator=(const blocking_pool&) = delete;
    /// Queues `job` to run on a pool thread (a thread is started if none is idle and fewer than max_threads run).
    COPORT_DECL void submit(std::unique_ptr<blocking_job> job);

private:
    struct state;
    std::shared_ptr<state> m_state; // shared with the threads: a detached one may outlive the pool
};

} // namespace coport::detail

#if COPORT_DEFINE_ENGINE // see coport/detail/config.hpp
#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

namespace coport::detail {

struct blocking_pool::state {
    struct worker {
        std::thread thread;
        blocking_job* running = nullptr; // the job in run(), under `mutex`
    };
    std::mutex mutex;
    std::condition_variable cv;
    blocking_job* head = nullptr; // queued jobs, oldest first
    blocking_job* tail = nullptr;
    std::vector<std::unique_ptr<worker>> workers;
    std::size_t idle = 0;
    bool stopping = false;

    blocking_job* pop() noexcept {
        blocking_job* j = head;
        head = j->m_next;
        if (!head) tail = nullptr;
        return j;
    }
    // `self` keeps the state alive for a thread the destructor detached.
    static void loop(std::shared_ptr<state> self, worker& w) {
        state& s = *self;
        std::unique_lock lock(s.mutex);
        for (;;) {
            ++s.idle;
            s.cv.wait(lock, [&s] { return s.stopping || s.head; });
            --s.idle;
            if (s.stopping) return;
            blocking_job* job = s.pop();
            w.running = job;
            lock.unlock();
            job->run();
            lock.lock();
            // Cleared under the lock: the destructor calls abandon() only on a job still listed here, so the
            // job is not deleted while abandon() runs.
            w.running = nullptr;
            lock.unlock();
            delete job;
            lock.lock();
        }
    }
};

COPORT_DECL blocking_pool::blocking_pool() : m_state(std::make_shared<state>()) {}

COPORT_DECL blocking_pool::~blocking_pool() {
    state& s = *m_state;
    blocking_job* queued;
    std::vector<std::thread> idle, busy;
    {
        std::lock_guard lock(s.mutex);
        s.stopping = true;
        queued = s.head;
        s.head = s.tail = nullptr;
        for (auto& w : s.workers) {
            if (w->running) {
                // A blocking call that may take seconds more: complete its waiter now, leave the call behind.
                w->running->abandon();
                busy.push_back(std::move(w->thread));
            } else {
                idle.push_back(std::move(w->thread));
            }
        }
    }
    s.cv.notify_all();
    for (auto& t : idle) t.join();
    for (auto& t : busy) t.detach();
    while (queued) { // never ran
        std::unique_ptr<blocking_job> job(queued);
        queued = queued->m_next;
        job->abandon();
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
    if (s.idle == 0 && s.workers.size() < max_threads) {
        auto w = std::make_unique<state::worker>();
        state::worker& wr = *w;
        s.workers.push_back(std::move(w));
        try {
            wr.thread = std::thread(&state::loop, m_state, std::ref(wr));
        } catch (...) {
            s.workers.pop_back(); // the job stays queued for the next thread, or for abandon()
            throw;
        }
    } else {
        s.cv.notify_one();
    }
}

} // namespace coport::detail
#endif // COPORT_DEFINE_ENGINE
