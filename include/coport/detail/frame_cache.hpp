// SPDX-License-Identifier: MIT
#pragma once
/// \file detail/frame_cache.hpp
/// A per-thread recycling cache of coroutine frame blocks, used by `frame_allocation` (task.hpp), in the
/// spirit of Asio's `thread_info_base` recycling allocator: awaiting a task that completes at once then
/// costs no malloc/free. The contract is documented at `frame_allocation`.
///
/// Each thread holds at most `frame_cache::slots` freed blocks of at most `frame_cache::max_size` bytes.
/// A frame is freed into the cache of the thread that destroys it, whichever thread allocated it; a
/// thread starts caching at its first frame allocation (a thread that only destroys frames never holds
/// blocks). At thread exit the cache frees its blocks, and frames freed on that thread afterwards (by
/// later thread-exit or static destructors) go straight to the global operator delete.
///
/// Off (every frame from the global operator new/delete) with COPORT_NO_FRAME_CACHE defined (identically
/// in every translation unit), and under AddressSanitizer, ThreadSanitizer, MemorySanitizer and
/// HWAddressSanitizer, so that they see every frame freed.

#include <atomic>
#include <cstddef>
#include <new>
#include <type_traits>

#if defined(COPORT_NO_FRAME_CACHE)
#define COPORT_DETAIL_FRAME_CACHE 0
#elif defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__) || defined(__SANITIZE_HWADDRESS__)
#define COPORT_DETAIL_FRAME_CACHE 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer) ||                                   \
    __has_feature(memory_sanitizer) || __has_feature(hwaddress_sanitizer)
#define COPORT_DETAIL_FRAME_CACHE 0
#endif
#endif
#if !defined(COPORT_DETAIL_FRAME_CACHE)
#define COPORT_DETAIL_FRAME_CACHE 1
#endif

// The one platform difference outside the backend folders (task.hpp must not pull in a backend): where
// the per-thread cache lives. mingw-w64's thread_local (emutls) frees a thread's storage before running
// its thread_local destructors (mingw-w64 bug 527, GCC PR 80816), so a thread_local cannot free its own
// contents at thread exit there; and under Wine an emutls access costs ~20 ns. Windows keeps the cache's
// address in a fiber-local storage (FLS) slot instead, whose callback frees it at thread exit.
#if COPORT_DETAIL_FRAME_CACHE && defined(_WIN32)
#include <coport/detail/iocp/os.hpp>
#endif

namespace coport::detail {

/// True if coroutine frames are recycled through the per-thread cache (false under the sanitizers above
/// and with COPORT_NO_FRAME_CACHE).
inline constexpr bool frame_cache_enabled = COPORT_DETAIL_FRAME_CACHE != 0;

/// The freed blocks one thread keeps, one per slot, by size class (the size rounded up to `granule`).
/// Every block of class c was allocated with at least c bytes, whichever thread allocated it, so any frame
/// of class c fits any cached block of class c.
struct frame_cache {
    static constexpr std::size_t slots = 4;
    static constexpr std::size_t granule = 16;
    static constexpr std::size_t max_size = 1024; // larger frames are never cached
    static constexpr std::size_t size_class(std::size_t n) noexcept {
        return (n + granule - 1) & ~(granule - 1);
    }

    void* m_block[slots] = {};
    std::size_t m_class[slots] = {}; // 0: the slot is empty
    unsigned m_victim = 0;

    /// A cached block of class c, or null. On a miss with every slot taken, frees one block (in turn) so
    /// that the block the caller is about to allocate finds a slot when freed (Asio does the same).
    void* take(std::size_t c) noexcept {
        bool full = true;
        for (std::size_t i = 0; i < slots; ++i) {
            if (m_class[i] == c) {
                m_class[i] = 0;
                return m_block[i];
            }
            full = full && m_class[i] != 0;
        }
        if (full) {
            const unsigned v = m_victim;
            m_victim = (v + 1) % slots;
            m_class[v] = 0;
            ::operator delete(m_block[v]);
        }
        return nullptr;
    }
    /// Keeps p (a block of class c) if a slot is free.
    bool put(void* p, std::size_t c) noexcept {
        for (std::size_t i = 0; i < slots; ++i) {
            if (m_class[i] == 0) {
                m_block[i] = p;
                m_class[i] = c;
                return true;
            }
        }
        return false;
    }
    std::size_t count() const noexcept {
        std::size_t n = 0;
        for (std::size_t c : m_class) n += c != 0;
        return n;
    }
    /// Frees every cached block; returns how many there were.
    std::size_t release_all() noexcept {
        std::size_t n = 0;
        for (std::size_t i = 0; i < slots; ++i) {
            if (m_class[i] != 0) {
                m_class[i] = 0;
                ::operator delete(m_block[i]);
                ++n;
            }
        }
        return n;
    }
};

/// How many cached blocks exiting threads have freed, in total (for tests; one atomic add per thread exit).
inline std::atomic<std::size_t>& frame_cache_exit_releases() noexcept {
    static std::atomic<std::size_t> n{0};
    return n;
}

#if COPORT_DETAIL_FRAME_CACHE && !defined(_WIN32)

/// The calling thread's cache: a trivially destructible thread_local (its storage outlives every
/// thread_local destructor of the thread), emptied at thread exit by frame_cache_reaper.
enum class frame_cache_state : unsigned char { unused, live, dead };
struct frame_cache_local {
    frame_cache cache;
    frame_cache_state state = frame_cache_state::unused;
};
static_assert(std::is_trivially_destructible_v<frame_cache_local>);

/// Only ever called from the noinline functions below: clang 14 may keep a thread-local's address across
/// a coroutine's suspension and resumption on another thread (LLVM #47177), and frames are freed inside
/// coroutines (flowing off a final_suspend of suspend_never) and allocated in their ramps.
inline frame_cache_local& frame_cache_here() noexcept {
    static thread_local frame_cache_local t; // constant-initialised: no guard, no destructor
    return t;
}

/// Registered (as a thread_local with a destructor) when a thread starts caching. thread_local destructors
/// run in reverse order of construction, so frames freed by thread_locals constructed earlier find the
/// cache dead and go to operator delete; the state stays dead until the thread's storage is gone.
/// (A thread whose first frame is allocated after its thread_local destructors ran, e.g. the main thread
/// by a static destructor, registers a reaper that never runs: up to `slots` blocks stay until the
/// process ends.)
struct frame_cache_reaper {
    frame_cache_reaper() noexcept {} // user-provided: a real construction, hence a registered destructor
    ~frame_cache_reaper() {
        frame_cache_local& t = frame_cache_here();
        t.state = frame_cache_state::dead;
        if (std::size_t n = t.cache.release_all())
            frame_cache_exit_releases().fetch_add(n, std::memory_order_relaxed);
    }
};

[[gnu::noinline]] inline void* frame_cache_allocate(std::size_t n) {
    asm volatile("" ::: "memory");
    const std::size_t c = frame_cache::size_class(n);
    if (c > frame_cache::max_size) return ::operator new(n);
    frame_cache_local& t = frame_cache_here();
    if (t.state == frame_cache_state::live) {
        if (void* p = t.cache.take(c)) return p;
    } else if (t.state == frame_cache_state::unused) {
        static thread_local frame_cache_reaper reaper; // registers its destructor for this thread's exit
        (void)reaper;
        t.state = frame_cache_state::live;
    }
    return ::operator new(c);
}

[[gnu::noinline]] inline void frame_cache_deallocate(void* p, std::size_t n) noexcept {
    asm volatile("" ::: "memory");
    const std::size_t c = frame_cache::size_class(n);
    if (c <= frame_cache::max_size) {
        frame_cache_local& t = frame_cache_here();
        if (t.state == frame_cache_state::live && t.cache.put(p, c)) return;
    }
    ::operator delete(p); // unsized: clang without -fsized-deallocation has no sized form
}

/// The number of blocks the calling thread's cache holds (for tests).
[[gnu::noinline]] inline std::size_t frame_cache_blocks() noexcept {
    asm volatile("" ::: "memory");
    return frame_cache_here().cache.count();
}

#elif COPORT_DETAIL_FRAME_CACHE && defined(_WIN32)

/// The FLS callback: runs on the exiting thread (or for a deleted fiber) with the cache it owned. Windows
/// clears the slot, so frames freed on that thread afterwards (by DLL_THREAD_DETACH handlers) find no
/// cache and go to operator delete. The callback lives in the module that uses coport: a DLL using
/// coport must not be unloaded while threads that ran its coroutines are alive (or build it with
/// COPORT_NO_FRAME_CACHE).
inline void WINAPI frame_cache_release(void* p) noexcept {
    if (!p) return;
    auto* c = static_cast<frame_cache*>(p);
    if (std::size_t n = c->release_all())
        frame_cache_exit_releases().fetch_add(n, std::memory_order_relaxed);
    delete c;
}

inline DWORD frame_cache_index() noexcept {
    static const DWORD index = ::FlsAlloc(&frame_cache_release);
    return index;
}

/// The calling thread's cache, created if `create`; null if none (or no FLS slot was free). Preserves
/// the thread's last-error value, which FlsGetValue may reset: frames are allocated between a failing
/// Win32 call and the GetLastError() after it.
inline frame_cache* frame_cache_here(bool create) noexcept {
    const DWORD index = frame_cache_index();
    if (index == FLS_OUT_OF_INDEXES) return nullptr;
    const DWORD error = ::GetLastError();
    auto* c = static_cast<frame_cache*>(::FlsGetValue(index));
    if (!c && create) {
        c = new (std::nothrow) frame_cache{};
        if (c && !::FlsSetValue(index, c)) {
            delete c;
            c = nullptr;
        }
    }
    ::SetLastError(error);
    return c;
}

[[gnu::noinline]] inline void* frame_cache_allocate(std::size_t n) {
    const std::size_t c = frame_cache::size_class(n);
    if (c > frame_cache::max_size) return ::operator new(n);
    if (frame_cache* cache = frame_cache_here(true))
        if (void* p = cache->take(c)) return p;
    return ::operator new(c);
}

[[gnu::noinline]] inline void frame_cache_deallocate(void* p, std::size_t n) noexcept {
    const std::size_t c = frame_cache::size_class(n);
    if (c <= frame_cache::max_size)
        if (frame_cache* cache = frame_cache_here(false); cache && cache->put(p, c)) return;
    ::operator delete(p);
}

[[gnu::noinline]] inline std::size_t frame_cache_blocks() noexcept {
    frame_cache* c = frame_cache_here(false);
    return c ? c->count() : 0;
}

#else // no cache

// Sizes are still rounded up to their class: should one translation unit be built with the cache and
// another without (an ODR violation, but an easy one to commit), their blocks stay interchangeable.
inline void* frame_cache_allocate(std::size_t n) {
    const std::size_t c = frame_cache::size_class(n);
    return ::operator new(c > frame_cache::max_size ? n : c);
}
inline void frame_cache_deallocate(void* p, std::size_t) noexcept { ::operator delete(p); }
inline std::size_t frame_cache_blocks() noexcept { return 0; }

#endif

} // namespace coport::detail
