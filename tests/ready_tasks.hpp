// SPDX-License-Identifier: MIT
// Test support: tasks that finish without suspending (frame allocation tests of both test binaries).
#pragma once

#include <coport/task.hpp>

namespace coport_test {

inline coport::task<int> add_one(int x) { co_return x + 1; }

/// n co_awaits of add_one, each finishing at once.
inline coport::task<long> ready_sum(int n) {
    long sum = 0;
    for (int i = 0; i < n; ++i) {
        int v = co_await add_one(i);
        sum += v;
    }
    co_return sum;
}

} // namespace coport_test
