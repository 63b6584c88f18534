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
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

namespace coport::detail::uring {
/// local::listen_options::unlink_existing: removes `path` if it names a socket file (nothing else).
inline void remove_socket_file(const char* path) noexcept {
    struct stat st;
    if (::lstat(path, &st) == 0 && S_ISSOCK(st.st_mode)) ::unlink(path);
}
} // namespace coport::detail::uring
