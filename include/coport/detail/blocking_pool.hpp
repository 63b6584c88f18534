// SPDX-License-Identifier: MIT
#pragma once
// A few threads for calls that can only block (getaddrinfo), so that they never hold up the threads that
// run the completion port. Started on first use; joined when the io_context is destroyed.

#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace coport::detail {

class blocking_pool {
public:
    static constexpr std::size_t max_threads = 4;
    blocking_pool() = default;
    blocking_pool(const blocking_pool&) = delete;
    blocking_pool& operator=(const blocking_pool&) = delete;
    ~blocking_pool() {
        std::deque<std::function<void(bool)>> left;
        {
            std::lock_guard lock(m_mutex);
            m_stopping = true;
            left.swap(m_jobs);
        }
        m_cv.notify_all();
        for (auto& t : m_threads) t.join();
        for (auto& j : left) j(false); // never ran: told so, to complete their waiters with an error
    }
    /// Queues `job(true)` to run on a pool thread (or `job(false)` at destruction if it never ran).
    void submit(std::function<void(bool)> job) {
        std::lock_guard lock(m_mutex);
        m_jobs.push_back(std::move(job));
        if (m_idle == 0 && m_threads.size() < max_threads) m_threads.emplace_back([this] { loop(); });
        else m_cv.notify_one();
    }

private:
    void loop() {
        std::unique_lock lock(m_mutex);
        for (;;) {
            ++m_idle;
            m_cv.wait(lock, [this] { return m_stopping || !m_jobs.empty(); });
            --m_idle;
            if (m_stopping) return;
            auto job = std::move(m_jobs.front());
            m_jobs.pop_front();
            lock.unlock();
            job(true);
            lock.lock();
        }
    }
    std::mutex m_mutex;
    std::condition_variable m_cv;
    std::deque<std::function<void(bool)>> m_jobs;
    std::vector<std::thread> m_threads;
    std::size_t m_idle = 0;
    bool m_stopping = false;
};

} // namespace coport::detail
