// SPDX-License-Identifier: MIT
// The one file of coport_consumer_separate that compiles coport's engine.
#include <coport/impl/src.hpp>
