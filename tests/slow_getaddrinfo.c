/* SPDX-License-Identifier: MIT */
/* An LD_PRELOAD library for the tests (Linux): getaddrinfo() of the host "slow.coport.invalid" sleeps
 * COPORT_SLOW_GETADDRINFO_MS milliseconds (default 3000), as a slow DNS server would, and then answers
 * 127.0.0.1 (a numeric lookup: no DNS traffic). Every other name goes to the next getaddrinfo (libc's, or a
 * sanitizer's interceptor). The tests find the counters below with dlsym(): their presence says the library
 * is loaded, and they tell when a slow lookup has begun and ended. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <netdb.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Read with __atomic_load_n. */
int coport_slow_getaddrinfo_started;
int coport_slow_getaddrinfo_finished;

int coport_slow_getaddrinfo_delay_ms(void) {
    const char* s = getenv("COPORT_SLOW_GETADDRINFO_MS");
    return s && *s ? atoi(s) : 3000;
}

typedef int (*getaddrinfo_fn)(const char*, const char*, const struct addrinfo*, struct addrinfo**);

int getaddrinfo(const char* node, const char* service, const struct addrinfo* hints, struct addrinfo** res) {
    getaddrinfo_fn next = (getaddrinfo_fn)dlsym(RTLD_NEXT, "getaddrinfo");
    if (!next) return EAI_SYSTEM;
    if (!node || strcmp(node, "slow.coport.invalid") != 0) return next(node, service, hints, res);

    __atomic_add_fetch(&coport_slow_getaddrinfo_started, 1, __ATOMIC_SEQ_CST);
    int ms = coport_slow_getaddrinfo_delay_ms();
    struct timespec left = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&left, &left) != 0 && errno == EINTR) {
    }
    int rc = next("127.0.0.1", service, hints, res);
    __atomic_add_fetch(&coport_slow_getaddrinfo_finished, 1, __ATOMIC_SEQ_CST);
    return rc;
}
