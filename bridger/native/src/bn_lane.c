/* bn_lane.c - the native lane's setup and its loop (bn_lane.h; the pieces
 * are listed in bn_lane_int.h).
 *
 * 1. bn_lane_init allocates the buffers once and registers the stop eventfd
 *    and the UDP socket in an epoll; ports add their taps (bn_lane_port.c).
 * 2. bn_lane_run waits on that epoll; each wake-up takes the mutex and drains
 *    every ready fd: a tap (bn_lane_tx.c, sealed datagrams leave through
 *    bn_lane_send.c), the UDP socket (bn_lane_recv.c, each datagram through
 *    bn_lane_rx.c).  Between two fds it lets a waiting Python thread in.
 * 3. bn_lane_stop (any thread) signals the stop eventfd; the loop returns.
 */
#define _GNU_SOURCE
#include "bn_lane_int.h"

#include <errno.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

/* After a wake-up that found real work, the loop polls this many more times,
 * yielding the CPU between polls, before it sleeps: under load the next packets
 * are taken without a sleep and a wake-up (a wake-up across CPUs costs tens
 * of microseconds on a VM), while an idle lane still sleeps at once.  Real
 * work: at least BUSY_READS reads or BUSY_BYTES bytes in the wake-up.  A
 * lone small datagram (a keepalive, a loop probe: a hub gets hundreds a
 * second from its spokes) is not: polling after each of them cost an idle
 * hub 2,000 epoll_wait and sched_yield calls a second (issue 26). */
#define POLL_YIELDS 16
#define BUSY_READS 2u
#define BUSY_BYTES 4096u

double bn_lane_now(const bn_lane *l) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9 + l->clock_offset;
}

/* ---- setup ---------------------------------------------------------------- */

int bn_lane_init(bn_lane *l, int udp_fd, int dual, int gso, int gro, double clock_offset) {
    memset(l, 0, sizeof *l);
    pthread_mutexattr_t attr;
    pthread_mutexattr_init(&attr);
    pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_RECURSIVE);
    pthread_mutex_init(&l->mu, &attr);
    pthread_mutexattr_destroy(&attr);
    l->udp_fd = udp_fd;
    l->send = bn_lane_sendmsg;
    l->dual = dual;
    l->gso = gso;
    l->gro = gro;
    l->clock_offset = clock_offset;
    l->punt_tail = &l->punts;
    l->epfd = l->stop_fd = l->punt_fd = -1;
    l->hs_tokens = BN_HS_BURST;
    l->rbuf = malloc(BN_RBUF_CAP);
    l->sbuf = malloc(BN_READ_SIZE);
    l->tbuf = malloc(BN_TBUF_CAP);
    l->tlens = calloc(BN_MAX_TX, sizeof *l->tlens);
    l->toffs = calloc(BN_MAX_TX, sizeof *l->toffs);
    l->pend = calloc(BN_MAX_PEND, sizeof *l->pend);
    l->pend_port = calloc(BN_MAX_PEND, sizeof *l->pend_port);
    l->rbuf_cap = BN_RBUF_CAP;
    l->tbuf_cap = BN_TBUF_CAP;
    if (!l->rbuf || !l->sbuf || !l->tbuf || !l->tlens || !l->toffs || !l->pend || !l->pend_port) {
        errno = ENOMEM;
        return -1;
    }
    l->epfd = epoll_create1(EPOLL_CLOEXEC);
    l->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    l->punt_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (l->epfd < 0 || l->stop_fd < 0 || l->punt_fd < 0)
        return -1;
    if (bn_lane_ep_add(l, l->stop_fd, BN_EV_STOP) < 0)
        return -1;
    if (udp_fd >= 0 && bn_lane_ep_add(l, udp_fd, BN_EV_UDP) < 0)
        return -1;
    return 0;
}

void bn_lane_free(bn_lane *l) {
    bn_punt *p = l->punts;
    while (p) {
        bn_punt *next = p->next;
        bn_punt_free(p);
        p = next;
    }
    l->punts = NULL;
    l->punt_tail = &l->punts;
    if (l->epfd >= 0)
        close(l->epfd);
    if (l->stop_fd >= 0)
        close(l->stop_fd);
    if (l->punt_fd >= 0)
        close(l->punt_fd);
    l->epfd = l->stop_fd = l->punt_fd = -1;
    free(l->rbuf);
    free(l->sbuf);
    free(l->tbuf);
    free(l->tlens);
    free(l->toffs);
    free(l->pend);
    free(l->pend_port);
    l->rbuf = l->sbuf = l->tbuf = NULL;
    l->tlens = NULL;
    l->toffs = NULL;
    l->pend = NULL;
    l->pend_port = NULL;
    pthread_mutex_destroy(&l->mu);
}

void bn_lane_fail(bn_lane *l, int err, int port) {
    if (l->err == 0) {
        l->err = err;
        l->err_port = port;
    }
    bn_lane_stop(l);
}

void bn_lane_stop(bn_lane *l) {
    uint64_t one = 1;
    l->stopping = 1;
    if (write(l->stop_fd, &one, sizeof one) < 0) {
        /* the counter is already nonzero: the loop wakes anyway */
    }
}

/* ---- the loop ----------------------------------------------------------- */

/* While Python waits for the mutex (Lane.lock), the loop does not take it
 * back at once: a woken waiter needs tens of microseconds to run, and the
 * loop would win every race.  It waits up to GIVE_WAY_NS for the waiter. */
#define GIVE_WAY_NS 2000000L
#define GIVE_WAY_STEP_NS 20000L

static void give_way(bn_lane *l) {
    for (long waited = 0;
         waited < GIVE_WAY_NS && __atomic_load_n(&l->waiters, __ATOMIC_ACQUIRE);
         waited += GIVE_WAY_STEP_NS) {
        struct timespec ts = {0, GIVE_WAY_STEP_NS};
        nanosleep(&ts, NULL);
    }
}

int bn_lane_run(bn_lane *l) {
    struct epoll_event evs[BN_MAX_PORTS + 2];
    if (l->err)
        return -1; /* a fatal error while it was not running (a failed release) */
    l->running = 1;
    int rc = 0;
    int busy = 0;
    int timeout = 1000; /* ms; shorter while path-MTU reports wait */
    while (!l->stopping) {
        int n = 0;
        for (int y = 0; busy && y < POLL_YIELDS; y++) {
            n = epoll_wait(l->epfd, evs, BN_MAX_PORTS + 2, 0);
            if (n != 0)
                break;
            sched_yield();
        }
        if (n == 0)
            n = epoll_wait(l->epfd, evs, BN_MAX_PORTS + 2, timeout);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            l->err = errno;
            l->err_port = -2;
            rc = -1;
            break;
        }
        give_way(l);
        pthread_mutex_lock(&l->mu);
        l->st.wakeups++;
        uint64_t reads = l->reads, bytes = l->read_bytes;
        for (int i = 0; i < n && rc == 0; i++) {
            uint64_t tag = evs[i].data.u64;
            if (i > 0 && __atomic_load_n(&l->waiters, __ATOMIC_ACQUIRE)) {
                /* Python waits: let it in between two fds' batches */
                pthread_mutex_unlock(&l->mu);
                give_way(l);
                pthread_mutex_lock(&l->mu);
            }
            if (tag == BN_EV_STOP) {
                l->stopping = 1;
            } else if (tag == BN_EV_UDP) {
                if (evs[i].events & EPOLLERR)
                    bn_lane_udp_error(l); /* read here: never a hand-over */
                if ((evs[i].events & EPOLLIN) && !l->udp_held)
                    rc = bn_lane_pump_udp(l);
            } else if (tag < BN_MAX_PORTS) {
                bn_port *p = &l->ports[tag];
                if (p->used && !p->held)
                    rc = bn_lane_pump_tap(l, (int)tag);
            }
        }
        timeout = 1000;
        if (l->mtu_waiting) {
            int due = bn_lane_mtu_due(l, bn_lane_now(l));
            if (due >= 0)
                timeout = due;
        }
        if (l->err)
            rc = -1; /* an epoll_ctl failed (bn_lane_fail) */
        busy = l->reads - reads >= BUSY_READS || l->read_bytes - bytes >= BUSY_BYTES;
        pthread_mutex_unlock(&l->mu);
        if (rc < 0)
            break;
    }
    l->running = 0;
    return l->err ? -1 : rc;
}
