// SPDX-License-Identifier: MIT
#pragma once
/// \file task.hpp
/// `task<T>`: a lazy coroutine. It starts when awaited and resumes its awaiter when it finishes.
///
/// Contracts:
/// - A task runs on the thread that awaits it until its first real suspension; after that it continues
///   on whichever thread resumes it (for I/O: a thread running the io_context).
/// - A task is awaited at most once. Destroying a task that was never awaited destroys its frame.
/// - An exception thrown in a task is rethrown from the `co_await` that awaits it.
/// - Awaiting a task never grows the stack with the number of synchronous completions: a loop of
///   1,000,000 `co_await`s of tasks that finish at once runs in constant stack at any optimisation level
///   (no reliance on tail calls; see await_suspend below).
/// - Frames are recycled per thread: a destroyed frame's memory is kept by the destroying thread (at most
///   4 blocks of up to 1 KiB per thread, freed when the thread exits) for its next frames. Define
///   COPORT_NO_FRAME_CACHE to allocate every frame with the global operator new; the sanitizers turn the
///   cache off by themselves. Details at detail::frame_allocation below.

#include <coport/detail/frame_cache.hpp>

#include <atomic>
#include <cassert>
#include <coroutine>
#include <exception>
#include <memory>
#include <stdexcept>
#include <type_traits>
#include <utility>

namespace coport {

template <class T = void>
class task;

namespace detail {

/// A test hook: where coroutine frames of coport's task and helper coroutines come from instead of the
/// frame cache below (a guard-page allocator that makes freed frames inaccessible, to catch code that
/// touches a frame after handing it to another thread). Null: the frame cache. Swap it only while no
/// frame of coport's exists.
struct frame_allocator {
    void* (*allocate)(std::size_t);
    void (*deallocate)(void*, std::size_t) noexcept;
};
inline std::atomic<const frame_allocator*>& frame_allocator_slot() noexcept {
    static std::atomic<const frame_allocator*> slot{nullptr};
    return slot;
}
/// Base of the promise types of coport's coroutines (task, the when_all/sync_wait children, spawn and
/// async_scope helpers): their frames come from frame_allocator_slot() if a hook is installed, else from
/// a per-thread recycling cache (detail/frame_cache.hpp):
/// - a destroyed frame's block is kept by the thread that destroys it (whichever thread created the
///   frame), at most frame_cache::slots (4) blocks of at most frame_cache::max_size (1024) bytes per
///   thread, sizes rounded up to 16; a thread starts caching at its first frame allocation;
/// - the next frame of the same size class created on that thread reuses a block (no malloc/free);
/// - a thread's blocks are freed when it exits; frames destroyed on it after that (by later
///   thread_local or static destructors) go to the global operator delete;
/// - off under AddressSanitizer, ThreadSanitizer, MemorySanitizer and HWAddressSanitizer (they then see
///   every frame freed) and when COPORT_NO_FRAME_CACHE is defined (define it in every translation unit,
///   e.g. for Valgrind or a heap profiler); detail::frame_cache_enabled says which.
struct frame_allocation {
    static void* operator new(std::size_t n) {
        if (const frame_allocator* a = frame_allocator_slot().load(std::memory_order_relaxed)) [[unlikely]]
            return a->allocate(n);
        return frame_cache_allocate(n);
    }
    static void operator delete(void* p, std::size_t n) noexcept {
        if (const frame_allocator* a = frame_allocator_slot().load(std::memory_order_relaxed)) [[unlikely]]
            a->deallocate(p, n);
        else
            frame_cache_deallocate(p, n);
    }
};

/// The continuation handshake shared by task and the composition helpers.
/// The awaiter resumes the child inline; whichever of {awaiter after resume(), child at final_suspend}
/// arrives second at `m_ready` resumes the parent. If the child finished synchronously the awaiter
/// arrives second and simply does not suspend, so a loop of synchronous completions never nests.
/// (Symmetric transfer would be shorter, but GCC 12 only makes it a tail call with
/// -foptimize-sibling-calls, which Debug, -O1 and ASan builds lack: GCC PR 100897.)
struct continuation_handshake {
    std::coroutine_handle<> m_continuation;
    std::atomic<bool> m_ready{false};

    /// Called from the child's final_suspend. Returns the handle to resume, or null.
    std::coroutine_handle<> arrive_final() noexcept {
        std::coroutine_handle<> cont = m_continuation; // read before the exchange: afterwards the frame may be gone
        if (m_ready.exchange(true, std::memory_order_acq_rel)) return cont;
        return nullptr;
    }
    /// Called by the awaiter after child.resume() returned. True: the parent must suspend.
    bool arrive_awaiter() noexcept { return !m_ready.exchange(true, std::memory_order_acq_rel); }
};

struct task_final_awaiter {
    bool await_ready() const noexcept { return false; }
    // noinline: clang 14 may touch the frame after an inlined await_suspend (LLVM #56301); here the
    // frame may be destroyed by the resumed parent before this returns.
    template <class Promise>
    [[gnu::noinline]] void await_suspend(std::coroutine_handle<Promise> h) noexcept {
        if (std::coroutine_handle<> cont = h.promise().m_handshake.arrive_final()) cont.resume();
    }
    void await_resume() const noexcept {}
};

class task_promise_base : public frame_allocation {
public:
    std::suspend_always initial_suspend() const noexcept { return {}; }
    task_final_awaiter final_suspend() const noexcept { return {}; }
    void unhandled_exception() noexcept { m_exception = std::current_exception(); }

    continuation_handshake m_handshake;

protected:
    void rethrow_if_exception() {
        if (m_exception) std::rethrow_exception(m_exception);
    }
    std::exception_ptr m_exception;
};

template <class T>
class task_promise final : public task_promise_base {
public:
    task_promise() noexcept {}
    ~task_promise() {
        if (m_has_value) reinterpret_cast<T*>(&m_storage)->~T();
    }
    task<T> get_return_object() noexcept;
    template <class U = T>
        requires std::is_convertible_v<U&&, T>
    void return_value(U&& v) noexcept(std::is_nothrow_constructible_v<T, U&&>) {
        ::new (static_cast<void*>(&m_storage)) T(std::forward<U>(v));
        m_has_value = true;
    }
    T take() {
        rethrow_if_exception();
        assert(m_has_value);
        return std::move(*reinterpret_cast<T*>(&m_storage));
    }

private:
    alignas(T) unsigned char m_storage[sizeof(T)];
    bool m_has_value = false;
};

template <class T>
class task_promise<T&> final : public task_promise_base {
public:
    task<T&> get_return_object() noexcept;
    void return_value(T& v) noexcept { m_value = std::addressof(v); }
    T& take() {
        rethrow_if_exception();
        return *m_value;
    }

private:
    T* m_value = nullptr;
};

template <>
class task_promise<void> final : public task_promise_base {
public:
    task<void> get_return_object() noexcept;
    void return_void() noexcept {}
    void take() { rethrow_if_exception(); }
};

} // namespace detail

/// A lazy coroutine returning T (a value, a reference, or void). Move-only.
template <class T>
class [[nodiscard]] task {
public:
    using promise_type = detail::task_promise<T>;
    using value_type = T;

    task() noexcept = default;
    explicit task(std::coroutine_handle<promise_type> h) noexcept : m_handle(h) {}
    task(task&& o) noexcept : m_handle(std::exchange(o.m_handle, nullptr)) {}
    task& operator=(task&& o) noexcept {
        if (this != &o) {
            destroy();
            m_handle = std::exchange(o.m_handle, nullptr);
        }
        return *this;
    }
    task(const task&) = delete;
    task& operator=(const task&) = delete;
    // noinline: keeps clang 14 -O3 from eliding frames of tasks that escape (LLVM #59723).
    [[gnu::noinline]] ~task() { destroy(); }

    /// True if this task holds a coroutine.
    [[nodiscard]] bool valid() const noexcept { return static_cast<bool>(m_handle); }

    class awaiter {
    public:
        explicit awaiter(std::coroutine_handle<promise_type> h) noexcept : m_child(h) {}
        bool await_ready() const noexcept { return !m_child; }
        [[gnu::noinline]] bool await_suspend(std::coroutine_handle<> parent) noexcept {
            std::coroutine_handle<promise_type> child = m_child;
            child.promise().m_handshake.m_continuation = parent;
            child.resume();
            // The child frame lives until the parent destroys the task, i.e. after both arrivals.
            return child.promise().m_handshake.arrive_awaiter();
        }
        T await_resume() {
            if (!m_child) throw std::logic_error("coport::task: awaiting an empty task");
            return m_child.promise().take();
        }

    private:
        std::coroutine_handle<promise_type> m_child;
    };

    awaiter operator co_await() && noexcept { return awaiter{m_handle}; }
    awaiter operator co_await() & noexcept { return awaiter{m_handle}; }

    /// For library internals: give up ownership of the frame.
    std::coroutine_handle<promise_type> release() noexcept { return std::exchange(m_handle, nullptr); }

private:
    void destroy() noexcept {
        if (m_handle) m_handle.destroy();
        m_handle = nullptr;
    }
    std::coroutine_handle<promise_type> m_handle;
};

namespace detail {
template <class T>
task<T> task_promise<T>::get_return_object() noexcept {
    return task<T>{std::coroutine_handle<task_promise>::from_promise(*this)};
}
template <class T>
task<T&> task_promise<T&>::get_return_object() noexcept {
    return task<T&>{std::coroutine_handle<task_promise>::from_promise(*this)};
}
inline task<void> task_promise<void>::get_return_object() noexcept {
    return task<void>{std::coroutine_handle<task_promise>::from_promise(*this)};
}
} // namespace detail

} // namespace coport
