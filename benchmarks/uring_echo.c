/* SPDX-License-Identifier: MIT */
/* uring_echo: a bare liburing TCP echo server in C, no abstraction: the reference for the kernel's limit.
 * One ring per thread (SINGLE_ISSUER|DEFER_TASKRUN where the kernel takes it), multishot accept, then
 * recv -> send (looping over partial sends) -> recv per connection into a 16 KiB buffer.
 * Run: uring_echo PORT [-t THREADS]   (PORT 0 picks a free port; prints "listening on PORT")
 *      -t N: N threads, each with its own ring and its own SO_REUSEPORT listener on the same port. */
#define _GNU_SOURCE
#include <liburing.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define BUF_SIZE (16 * 1024)
#define SQ_ENTRIES 4096
#define CQ_ENTRIES 32768

enum { OP_ACCEPT = 0, OP_RECV = 1, OP_SEND = 2, OP_MASK = 3 };

struct conn {
    int fd;
    unsigned len;  /* bytes received, being echoed */
    unsigned sent; /* of those, bytes sent */
    char buf[BUF_SIZE];
};

struct server {
    struct io_uring ring;
    int listen_fd;
    pthread_t thread;
};

static void die(const char *what, int err) {
    fprintf(stderr, "uring_echo: %s: %s\n", what, strerror(err));
    exit(1);
}

static struct io_uring_sqe *get_sqe(struct io_uring *ring) {
    struct io_uring_sqe *sqe;
    while (!(sqe = io_uring_get_sqe(ring))) io_uring_submit(ring);
    return sqe;
}

static void arm_accept(struct server *s) {
    struct io_uring_sqe *sqe = get_sqe(&s->ring);
    io_uring_prep_multishot_accept(sqe, s->listen_fd, NULL, NULL, SOCK_CLOEXEC);
    io_uring_sqe_set_data64(sqe, OP_ACCEPT);
}

static void arm_recv(struct server *s, struct conn *c) {
    struct io_uring_sqe *sqe = get_sqe(&s->ring);
    io_uring_prep_recv(sqe, c->fd, c->buf, BUF_SIZE, 0);
    io_uring_sqe_set_data64(sqe, (uint64_t)(uintptr_t)c | OP_RECV);
}

static void arm_send(struct server *s, struct conn *c) {
    struct io_uring_sqe *sqe = get_sqe(&s->ring);
    io_uring_prep_send(sqe, c->fd, c->buf + c->sent, c->len - c->sent, MSG_NOSIGNAL);
    io_uring_sqe_set_data64(sqe, (uint64_t)(uintptr_t)c | OP_SEND);
}

static void drop(struct conn *c) {
    close(c->fd);
    free(c);
}

static void handle(struct server *s, uint64_t data, int res, unsigned flags) {
    struct conn *c = (struct conn *)(uintptr_t)(data & ~(uint64_t)OP_MASK);
    switch (data & OP_MASK) {
    case OP_ACCEPT:
        if (!(flags & IORING_CQE_F_MORE)) arm_accept(s); /* the multishot ended (e.g. after an error) */
        if (res < 0) return;
        c = malloc(sizeof *c);
        if (!c) {
            close(res);
            return;
        }
        c->fd = res;
        c->len = c->sent = 0;
        {
            int one = 1;
            setsockopt(res, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        }
        arm_recv(s, c);
        return;
    case OP_RECV:
        if (res <= 0) { /* EOF or error */
            drop(c);
            return;
        }
        c->len = (unsigned)res;
        c->sent = 0;
        arm_send(s, c);
        return;
    case OP_SEND:
        if (res < 0) {
            drop(c);
            return;
        }
        c->sent += (unsigned)res;
        if (c->sent < c->len) arm_send(s, c);
        else arm_recv(s, c);
        return;
    }
}

static void setup_ring(struct io_uring *ring) {
    /* Cheapest first; older kernels refuse the newer flags with EINVAL. */
    const unsigned candidates[] = {
        IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_SUBMIT_ALL | IORING_SETUP_CQSIZE,
        IORING_SETUP_COOP_TASKRUN | IORING_SETUP_SUBMIT_ALL | IORING_SETUP_CQSIZE,
        IORING_SETUP_CQSIZE,
    };
    int r = -EINVAL;
    for (unsigned i = 0; i < sizeof candidates / sizeof candidates[0]; ++i) {
        struct io_uring_params p;
        memset(&p, 0, sizeof p);
        p.flags = candidates[i];
        p.cq_entries = CQ_ENTRIES;
        r = io_uring_queue_init_params(SQ_ENTRIES, ring, &p);
        if (r == 0) {
            if (i > 0) fprintf(stderr, "uring_echo: setup flags refused, using 0x%x\n", candidates[i]);
            return;
        }
        if (r != -EINVAL) break;
    }
    die("io_uring_queue_init_params", -r);
}

static void *loop(void *arg) {
    struct server *s = arg;
    /* The ring is created on the thread that uses it: SINGLE_ISSUER ties a ring to its creator. */
    setup_ring(&s->ring);
    arm_accept(s);
    for (;;) {
        int r = io_uring_submit_and_wait(&s->ring, 1);
        if (r < 0 && r != -EINTR && r != -EAGAIN && r != -EBUSY) die("io_uring_submit_and_wait", -r);
        struct io_uring_cqe *cqe;
        unsigned head, n = 0;
        io_uring_for_each_cqe(&s->ring, head, cqe) {
            handle(s, cqe->user_data, cqe->res, cqe->flags);
            ++n;
        }
        io_uring_cq_advance(&s->ring, n);
    }
    return NULL;
}

static int open_listener(int port) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) die("socket", errno);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0) die("SO_REUSEPORT", errno);
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&a, sizeof a) != 0) die("bind", errno);
    if (listen(fd, 1024) != 0) die("listen", errno);
    return fd;
}

int main(int argc, char **argv) {
    int port = -1, threads = 1;
    for (int i = 1; i < argc; ++i) {
        if (strcmp(argv[i], "-t") == 0 && i + 1 < argc) threads = atoi(argv[++i]);
        else if (port < 0) port = atoi(argv[i]);
        else port = -2;
    }
    if (port < 0 || port > 65535 || threads < 1) {
        fprintf(stderr, "usage: uring_echo PORT [-t THREADS]\n");
        return 2;
    }
    struct server *servers = calloc((size_t)threads, sizeof *servers);
    for (int i = 0; i < threads; ++i) {
        /* Every listener is bound before any thread starts, the first one learning the port (port 0). */
        servers[i].listen_fd = open_listener(port);
        if (port == 0) {
            struct sockaddr_in a;
            socklen_t n = sizeof a;
            getsockname(servers[i].listen_fd, (struct sockaddr *)&a, &n);
            port = ntohs(a.sin_port);
        }
    }
    printf("listening on %d\n", port);
    fflush(stdout);
    for (int i = 1; i < threads; ++i)
        if (pthread_create(&servers[i].thread, NULL, loop, &servers[i]) != 0) die("pthread_create", errno);
    loop(&servers[0]);
    return 0;
}
