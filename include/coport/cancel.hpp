// SPDX-License-Identifier: MIT
#pragma once
/// \file cancel.hpp
/// Composing cancellation: `with_timeout` and `when_any`. Both take *operation factories*: callables that
/// receive a `std::stop_token` and return an awaitable using it, e.g.
///
///     auto r = co_await coport::with_timeout(ctx, 1s, [&](std::stop_token st) { return sock.recv(buf, st); });
///     if (r.error() == coport::errc::timed_out) ...
///
/// Guarantee: neither returns before every operation it started has finished (cancelled operations
/// included): when they resume, no kernel operation they started is still in flight, so buffers may be
/// reused at once.

#include <coport/detail/stop_registration.hpp>
#include <coport/error.hpp>
#include <coport/io_context.hpp>
#include <coport/result.hpp>
#include <coport/task.hpp>
#include <coport/when_all.hpp>

#include <atomic>
#include <chrono>
#include <concepts>
#include <optional>
#include <stop_token>
#include <tuple>
#include <type_traits>
#include <utility>
#include <variant>

namespace coport {

/// A callable that makes an awaitable from a stop token.
template <class F>
concept operation_factory = std::invocable<F&, std::stop_token> && awaitable<std::invoke_result_t<F&, std::stop_token>>;

template <operation_factory F>
using factory_result_t = await_result_t<std::invoke_result_t<F&, std::stop_token>>;

namespace detail {
template <class T>
struct is_result : std::false_type {};
template <class T>
struct is_result<result<T>> : std::true_type {};

// Links an outer stop token to an inner stop source for as long as it lives.
struct stop_forwarder {
    std::stop_source* target;
    void operator()() const noexcept { target->request_stop(); }
};

template <class F, class R>
task<R> timed_operation(F& make, std::stop_source& op_stop, std::stop_source& timer_stop) {
    R r = co_await make(op_stop.get_token()); // not `auto aw = make(..)`: awaiters are not movable

    timer_stop.request_stop();
    co_return r;
}

inline task<bool> timeout_timer(io_context& ctx, io_context::clock::time_point deadline, std::stop_source& op_stop,
                                std::stop_source& timer_stop) {
    auto r = co_await ctx.sleep_until(deadline, timer_stop.get_token());
    if (!r) co_return false; // the operation finished first
    op_stop.request_stop();
    co_return true;
}
} // namespace detail

/// Runs `make(st)` with a deadline. Returns the operation's result; if the deadline passed first, the
/// operation is cancelled, its completion awaited, and the result is `coport::error::timed_out` (unless the
/// operation had completed successfully anyway: then its result). A stop request on `outer` cancels the
/// operation too (result: its own `operation_aborted`). The operation's result type must be a `result<T>`.
template <operation_factory F>
    requires detail::is_result<factory_result_t<F>>::value
task<factory_result_t<F>> with_deadline(io_context& ctx, io_context::clock::time_point deadline, F make,
                                        std::stop_token outer = {}) {
    using R = factory_result_t<F>;
    std::stop_source op_stop, timer_stop;
    detail::stop_registration<detail::stop_forwarder> link;
    if (outer.stop_possible()) link.emplace(outer, detail::stop_forwarder{&op_stop});
    auto op = detail::timed_operation<F, R>(make, op_stop, timer_stop);
    auto timer = detail::timeout_timer(ctx, deadline, op_stop, timer_stop);
    auto both = co_await when_all(std::move(op), std::move(timer));
    R& r = std::get<0>(both);
    const bool timed_out = std::get<1>(both);
    if (timed_out && !r && r.error() == errc::operation_aborted) co_return unexpected(make_error_code(error::timed_out));
    co_return std::move(r);
}

/// with_deadline(ctx, now + timeout, make, outer).
template <operation_factory F>
    requires detail::is_result<factory_result_t<F>>::value
task<factory_result_t<F>> with_timeout(io_context& ctx, io_context::clock::duration timeout, F make,
                                       std::stop_token outer = {}) {
    return with_deadline(ctx, io_context::clock::now() + timeout, std::move(make), std::move(outer));
}

/// The outcome of when_any: which factory finished first, and its result.
template <class... Rs>
struct when_any_result {
    std::size_t index;
    std::variant<detail::non_void_t<Rs>...> value;
};

namespace detail {
template <std::size_t I, class F, class Out>
task<void> when_any_child(F& make, std::stop_source& stop, std::atomic<bool>& decided, std::optional<Out>& out) {
    using R = factory_result_t<F>;
    if constexpr (std::is_void_v<R>) {
        co_await make(stop.get_token());
        if (!decided.exchange(true, std::memory_order_acq_rel)) {
            out.emplace(Out{I, decltype(Out::value)(std::in_place_index<I>, void_value{})});
            stop.request_stop();
        }
    } else {
        R r = co_await make(stop.get_token());
        if (!decided.exchange(true, std::memory_order_acq_rel)) {
            out.emplace(Out{I, decltype(Out::value)(std::in_place_index<I>, std::move(r))});
            stop.request_stop();
        }
    }
}

template <class Out, class... Fs, std::size_t... I>
task<Out> when_any_impl(std::index_sequence<I...>, std::stop_token outer, Fs... makes) {
    std::stop_source stop;
    std::atomic<bool> decided{false};
    std::optional<Out> out;
    stop_registration<stop_forwarder> link;
    if (outer.stop_possible()) link.emplace(outer, stop_forwarder{&stop});
    co_await when_all(when_any_child<I, Fs, Out>(makes, stop, decided, out)...);
    co_return std::move(*out);
}
} // namespace detail

/// Starts every factory's operation concurrently; the first to finish wins. The others are cancelled
/// through their stop token, and when_any resumes only after all of them have finished. Losers' results
/// are discarded, so prefer operations whose cancellation loses nothing (a recv cancelled before data
/// arrived consumed nothing; one that completed in the race did — its bytes are dropped).
/// The first factory to *finish* wins, whether it succeeded or failed.
template <operation_factory... Fs>
    requires(sizeof...(Fs) > 0)
task<when_any_result<factory_result_t<Fs>...>> when_any(Fs... makes) {
    using Out = when_any_result<factory_result_t<Fs>...>;
    return detail::when_any_impl<Out>(std::index_sequence_for<Fs...>{}, std::stop_token{}, std::move(makes)...);
}

/// when_any with an outer stop token: stopping it cancels every operation.
template <operation_factory... Fs>
    requires(sizeof...(Fs) > 0)
task<when_any_result<factory_result_t<Fs>...>> when_any_until(std::stop_token outer, Fs... makes) {
    using Out = when_any_result<factory_result_t<Fs>...>;
    return detail::when_any_impl<Out>(std::index_sequence_for<Fs...>{}, std::move(outer), std::move(makes)...);
}

namespace detail {
template <class F, class V>
task<void> fail_fast_child(F& make, std::stop_source& stop, std::atomic<bool>& failed, std::error_code& first,
                           std::optional<V>& out) {
    using R = factory_result_t<F>;
    try {
        R r = co_await make(stop.get_token());
        if (r) {
            if constexpr (std::is_void_v<typename R::value_type>) out.emplace();
            else out.emplace(std::move(*r));
        } else if (!failed.exchange(true, std::memory_order_acq_rel)) {
            first = r.error(); // the children run on one thread (the resumption rule): read after when_all
            stop.request_stop();
        }
    } catch (...) {
        stop.request_stop(); // the siblings end too; when_all rethrows the first exception
        throw;
    }
}

template <class Out, class... Fs, std::size_t... I>
task<Out> when_all_fail_fast_impl(std::index_sequence<I...>, std::stop_token outer, Fs... makes) {
    std::stop_source stop;
    std::atomic<bool> failed{false};
    std::error_code first;
    std::tuple<std::optional<non_void_t<typename factory_result_t<Fs>::value_type>>...> outs;
    stop_registration<stop_forwarder> link;
    if (outer.stop_possible()) link.emplace(outer, stop_forwarder{&stop});
    co_await when_all(fail_fast_child(makes, stop, failed, first, std::get<I>(outs))...);
    if (failed.load(std::memory_order_acquire)) co_return unexpected(first);
    co_return typename Out::value_type(std::move(*std::get<I>(outs))...);
}
} // namespace detail

/// Like when_all, for operations that fail: starts every factory's operation concurrently and, as soon as
/// one fails (its `result` holds an error) or throws, cancels the others through their stop token (Asio's
/// `wait_for_one_error`). Resumes only after all of them have finished. Result: the tuple of their values
/// (`void` becomes `void_value`), or the first failure's error (the cancelled siblings' `operation_aborted`
/// never replaces it); an exception is rethrown after all have finished. A stop request on `outer` cancels
/// them all (the result is then the first of their errors, normally `operation_aborted`). Every factory's
/// operation must give a `result<T>`. The children run on the awaiting thread (the resumption rule).
template <operation_factory... Fs>
    requires(sizeof...(Fs) > 0 && (detail::is_result<factory_result_t<Fs>>::value && ...))
task<result<std::tuple<detail::non_void_t<typename factory_result_t<Fs>::value_type>...>>>
when_all_fail_fast(std::stop_token outer, Fs... makes) {
    using Out = result<std::tuple<detail::non_void_t<typename factory_result_t<Fs>::value_type>...>>;
    return detail::when_all_fail_fast_impl<Out>(std::index_sequence_for<Fs...>{}, std::move(outer), std::move(makes)...);
}

/// when_all_fail_fast without an outer stop token.
template <operation_factory... Fs>
    requires(sizeof...(Fs) > 0 && (detail::is_result<factory_result_t<Fs>>::value && ...))
task<result<std::tuple<detail::non_void_t<typename factory_result_t<Fs>::value_type>...>>>
when_all_fail_fast(Fs... makes) {
    return when_all_fail_fast(std::stop_token{}, std::move(makes)...);
}

} // namespace coport
