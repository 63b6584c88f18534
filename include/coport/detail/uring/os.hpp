// SPDX-License-Identifier: MIT
#pragma once
// Linux system headers used by the io_uring backend and by the address types.
#if !defined(__linux__)
#error "coport/detail/uring is the Linux backend"
#endif

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>
