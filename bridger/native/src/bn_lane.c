/* bn_lane.c - the native lane's loop and per-frame steps (see bn_lane.h). */
#define _GNU_SOURCE
#include "bn_lane.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/uio.h>
#include <time.h>
#include <sched.h>
#include <sodium.h>
#include <unistd.h>

#define TBUF_CAP (320u << 10)
#define RBUF_CAP (320u << 10)
#define MAX_TX 4096
#define MAX_PEND 2048
#define MAX_SEGS 256
#define GSO_MAX_SEGMENTS 64
#define GSO_MAX_BYTES 65000
/* FRAME / FRAME_CSUM inner types and the FRAME_CSUM header length. */
#define INNER_FRAME 1
#define INNER_FRAME_CSUM 5
#define FRAME_CSUM_HLEN 5
#define MIN_CSUM_START 14
#define VNET_NEEDS_CSUM 1
#define GSO_TCPV4 1
#define GSO_TCPV6 4
#define MAX_SYN_FRAME (14 + 8 + 40 + 60)
#define IPV4_UDP_HEADERS 28

/* After a wake-up that found work, the loop polls this many more times,
 * yielding the CPU between polls, before it sleeps: under load the next packets
 * are taken without a sleep and a wake-up (a wake-up across CPUs costs tens
 * of microseconds on a VM), while an idle lane still sleeps at once. */
#define POLL_YIELDS 16

/* Tag of the stop event / the UDP socket in epoll data; ports are 0..63. */
#define EV_STOP 1000
#define EV_UDP 1001

double bn_lane_now(const bn_lane *l) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9 + l->clock_offset;
}

/* ---- MAC set: the MACs seen behind a peer (bounded, approximate LRU) ------ */

static uint64_t mac_key(const uint8_t *mac) {
    uint64_t k = 0;
    for (int i = 0; i < 6; i++)
        k = k << 8 | mac[i];
    return k + 1; /* 0 marks an empty slot */
}

static uint32_t mac_slot(uint64_t k) {
    return (uint32_t)((k * UINT64_C(0x9E3779B97F4A7C15)) >> 53) & (BN_MACSET_SLOTS - 1);
}

int bn_macset_has(const bn_macset *m, const uint8_t *mac) {
    uint64_t k = mac_key(mac);
    uint32_t s = mac_slot(k);
    for (int i = 0; i < 4; i++)
        if (m->keys[(s + (uint32_t)i) & (BN_MACSET_SLOTS - 1)] == k)
            return 1;
    return 0;
}

void bn_macset_add(bn_macset *m, const uint8_t *mac) {
    uint64_t k = mac_key(mac);
    uint32_t s = mac_slot(k);
    for (int i = 0; i < 4; i++) {
        uint64_t *slot = &m->keys[(s + (uint32_t)i) & (BN_MACSET_SLOTS - 1)];
        if (*slot == k)
            return;
        if (*slot == 0) {
            *slot = k;
            return;
        }
    }
    m->keys[(s + (m->next_victim++ & 3)) & (BN_MACSET_SLOTS - 1)] = k;
}

void bn_macset_del(bn_macset *m, const uint8_t *mac) {
    uint64_t k = mac_key(mac);
    uint32_t s = mac_slot(k);
    for (int i = 0; i < 4; i++) {
        uint64_t *slot = &m->keys[(s + (uint32_t)i) & (BN_MACSET_SLOTS - 1)];
        if (*slot == k)
            *slot = 0; /* lookups probe all four slots: a hole breaks no chain */
    }
}

/* ---- setup ---------------------------------------------------------------- */

static int ep_add(bn_lane *l, int fd, uint64_t tag) {
    struct epoll_event ev;
    memset(&ev, 0, sizeof ev);
    ev.events = EPOLLIN;
    ev.data.u64 = tag;
    return epoll_ctl(l->epfd, EPOLL_CTL_ADD, fd, &ev);
}

int bn_lane_init(bn_lane *l, int udp_fd, int dual, int gso, int gro, double clock_offset) {
    memset(l, 0, sizeof *l);
    pthread_mutexattr_t attr;
    pthread_mutexattr_init(&attr);
    pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_RECURSIVE);
    pthread_mutex_init(&l->mu, &attr);
    pthread_mutexattr_destroy(&attr);
    l->udp_fd = udp_fd;
    l->dual = dual;
    l->gso = gso;
    l->gro = gro;
    l->clock_offset = clock_offset;
    l->punt_tail = &l->punts;
    l->epfd = l->stop_fd = l->punt_fd = -1;
    l->hs_tokens = BN_HS_BURST;
    l->rbuf = malloc(RBUF_CAP);
    l->sbuf = malloc(BN_READ_SIZE);
    l->tbuf = malloc(TBUF_CAP);
    l->tlens = calloc(MAX_TX, sizeof *l->tlens);
    l->toffs = calloc(MAX_TX, sizeof *l->toffs);
    l->pend = calloc(MAX_PEND, sizeof *l->pend);
    l->pend_port = calloc(MAX_PEND, sizeof *l->pend_port);
    l->rbuf_cap = RBUF_CAP;
    l->tbuf_cap = TBUF_CAP;
    if (!l->rbuf || !l->sbuf || !l->tbuf || !l->tlens || !l->toffs || !l->pend || !l->pend_port) {
        errno = ENOMEM;
        return -1;
    }
    l->epfd = epoll_create1(EPOLL_CLOEXEC);
    l->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    l->punt_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (l->epfd < 0 || l->stop_fd < 0 || l->punt_fd < 0)
        return -1;
    if (ep_add(l, l->stop_fd, EV_STOP) < 0)
        return -1;
    if (udp_fd >= 0 && ep_add(l, udp_fd, EV_UDP) < 0)
        return -1;
    return 0;
}

static void free_punt(bn_punt *p) {
    free(p->data);
    free(p->lens);
    free(p);
}

void bn_lane_free(bn_lane *l) {
    bn_punt *p = l->punts;
    while (p) {
        bn_punt *next = p->next;
        free_punt(p);
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

int bn_lane_add_port(bn_lane *l, int fd, int vnet, const bn_guard_cfg *g) {
    for (int i = 0; i < BN_MAX_PORTS; i++) {
        bn_port *p = &l->ports[i];
        if (p->used)
            continue;
        memset(p, 0, sizeof *p);
        p->used = 1;
        p->fd = fd;
        p->vnet = vnet;
        if (g)
            p->guard = *g;
        if (fd >= 0 && ep_add(l, fd, (uint64_t)i) < 0) {
            int err = errno;
            memset(p, 0, sizeof *p); /* the slot stays free */
            errno = err;
            return -1;
        }
        return i;
    }
    errno = ENOSPC;
    return -1;
}

void bn_lane_fail(bn_lane *l, int err, int port) {
    if (l->err == 0) {
        l->err = err;
        l->err_port = port;
    }
    bn_lane_stop(l);
}

int bn_lane_hold_port(bn_lane *l, int port) {
    bn_port *p = &l->ports[port];
    if (!p->held) {
        p->held = 1;
        if (p->fd >= 0 && epoll_ctl(l->epfd, EPOLL_CTL_DEL, p->fd, NULL) < 0) {
            bn_lane_fail(l, errno, port);
            return -1;
        }
    }
    return 0;
}

static void hold_udp(bn_lane *l) {
    if (!l->udp_held) {
        l->udp_held = 1;
        if (l->udp_fd >= 0 && epoll_ctl(l->epfd, EPOLL_CTL_DEL, l->udp_fd, NULL) < 0)
            bn_lane_fail(l, errno, -1);
    }
}

int bn_lane_release(bn_lane *l, int port) {
    if (port < 0) {
        if (l->udp_held) {
            l->udp_held = 0;
            if (l->udp_fd >= 0 && ep_add(l, l->udp_fd, EV_UDP) < 0) {
                bn_lane_fail(l, errno, -1);
                return -1;
            }
        }
        return 0;
    }
    bn_port *p = &l->ports[port];
    if (p->used && p->held) {
        p->held = 0;
        if (p->fd >= 0 && ep_add(l, p->fd, (uint64_t)port) < 0) {
            bn_lane_fail(l, errno, port);
            return -1;
        }
    }
    return 0;
}

void bn_lane_stop(bn_lane *l) {
    uint64_t one = 1;
    l->stopping = 1;
    if (write(l->stop_fd, &one, sizeof one) < 0) {
        /* the counter is already nonzero: the loop wakes anyway */
    }
}

/* ---- punts ---------------------------------------------------------------- */

static bn_punt *punt_new(bn_lane *l, int kind, int port, const uint8_t *data, size_t len) {
    bn_punt *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->kind = kind;
    p->port = port;
    p->csum_start = -1;
    if (len) {
        p->data = malloc(len);
        if (!p->data) {
            free(p);
            return NULL;
        }
        memcpy(p->data, data, len);
    }
    p->len = len;
    *l->punt_tail = p;
    l->punt_tail = &p->next;
    uint64_t one = 1;
    if (write(l->punt_fd, &one, sizeof one) < 0) {
        /* already signalled */
    }
    return p;
}

void bn_lane_forget_punts(bn_lane *l, int port) {
    bn_punt **link = &l->punts;
    l->punt_tail = &l->punts;
    while (*link) {
        bn_punt *p = *link;
        if (p->port == port && p->kind == BN_PUNT_TAP) {
            *link = p->next;
            free_punt(p);
            continue;
        }
        if (p->port == port)
            p->port = -1;
        link = &p->next;
        l->punt_tail = link;
    }
}

/* ---- counters ------------------------------------------------------------- */

static void maclog(bn_lane *l, int port, int dir, const uint8_t *f, size_t n, uint64_t count,
                   uint64_t nbytes) {
    if (n < BN_ETH_HLEN)
        return;
    const uint8_t *src = f + 6;
    if (l->nmaclog > 0) {
        bn_maclog_entry *last = &l->maclog[l->nmaclog - 1];
        if (last->port == port && last->dir == dir && memcmp(last->mac, src, 6) == 0) {
            last->frames += count;
            last->bytes += nbytes;
            return;
        }
    }
    if (l->nmaclog >= BN_MACLOG) {
        l->st.maclog_lost++;
        return;
    }
    bn_maclog_entry *e = &l->maclog[l->nmaclog++];
    e->port = port;
    e->dir = dir;
    memcpy(e->mac, src, 6);
    e->frames = count;
    e->bytes = nbytes;
}

/* ---- tap -> WAN ------------------------------------------------------------- */

/* With IP_RECVERR an ICMP error that arrived for an earlier datagram (say a
 * "fragmentation needed" for a path-MTU probe) is also returned by the next
 * send on the socket, which it aborts: a send that fails with anything but a
 * full buffer is tried once more, and only the second answer counts. */
static int send_failed_for_real(int *tries) {
    if (errno == EINTR)
        return 0;
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS)
        return 1;
    return ++*tries > 1;
}

static void send_single(bn_lane *l, bn_port *p, const uint8_t *d, size_t n) {
    int tries = 0;
    for (;;) {
        ssize_t r = sendto(l->udp_fd, d, n, MSG_DONTWAIT, (const struct sockaddr *)&p->ep,
                           p->ep_len);
        if (r >= 0)
            return;
        if (!send_failed_for_real(&tries))
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS)
            l->st.udp_send_blocked++;
        else if (errno == EMSGSIZE)
            l->st.udp_send_too_big++;
        else
            l->st.udp_send_failed++;
        return;
    }
}

/* Send the datagrams sealed for port p: consecutive ones of one size (the last
 * may be shorter) in one UDP_SEGMENT sendmsg, as fastpath.udp.gso_batches. */
static void tx_flush(bn_lane *l, bn_port *p) {
    int i = 0;
    while (i < l->ntx) {
        int j = i + 1;
        size_t size = l->tlens[i], total = size;
        if (l->gso) {
            while (j < l->ntx && j - i < GSO_MAX_SEGMENTS && l->tlens[j - 1] == size
                   && l->tlens[j] <= size && total + l->tlens[j] <= GSO_MAX_BYTES) {
                total += l->tlens[j];
                j++;
            }
        }
        if (j - i == 1 || l->udp_fd < 0) {
            if (l->udp_fd >= 0)
                send_single(l, p, l->tbuf + l->toffs[i], l->tlens[i]);
            i = j;
            continue;
        }
        struct iovec iov[GSO_MAX_SEGMENTS];
        for (int k = i; k < j; k++) {
            iov[k - i].iov_base = l->tbuf + l->toffs[k];
            iov[k - i].iov_len = l->tlens[k];
        }
        union {
            char buf[CMSG_SPACE(sizeof(uint16_t))];
            struct cmsghdr align;
        } ctl;
        memset(&ctl, 0, sizeof ctl);
        struct msghdr msg;
        memset(&msg, 0, sizeof msg);
        msg.msg_name = &p->ep;
        msg.msg_namelen = p->ep_len;
        msg.msg_iov = iov;
        msg.msg_iovlen = (size_t)(j - i);
        msg.msg_control = ctl.buf;
        msg.msg_controllen = sizeof ctl.buf;
        struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
        cm->cmsg_level = SOL_UDP;
        cm->cmsg_type = UDP_SEGMENT;
        cm->cmsg_len = CMSG_LEN(sizeof(uint16_t));
        uint16_t seg = (uint16_t)size;
        memcpy(CMSG_DATA(cm), &seg, sizeof seg);
        ssize_t r;
        int tries = 0;
        do
            r = sendmsg(l->udp_fd, &msg, MSG_DONTWAIT);
        while (r < 0 && !send_failed_for_real(&tries));
        if (r < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS) {
                l->st.udp_send_blocked++;
            } else if (errno == EIO || errno == EINVAL || errno == ENOPROTOOPT
                       || errno == EOPNOTSUPP || errno == EMSGSIZE) {
                if (errno != EMSGSIZE) {
                    l->gso = 0; /* the egress device cannot segment */
                    l->st.gso_refused++;
                }
                for (int k = i; k < j; k++)
                    send_single(l, p, l->tbuf + l->toffs[k], l->tlens[k]);
            } else {
                l->st.udp_send_failed++;
            }
        }
        i = j;
    }
    l->ntx = 0;
    l->tbuf_used = 0;
}

void bn_lane_tx_flush_port(bn_lane *l, int port) { tx_flush(l, &l->ports[port]); }

/* Room for one more datagram of up to `need` bytes; flushes when short. */
static uint8_t *tx_reserve(bn_lane *l, bn_port *p, size_t need) {
    if (l->ntx >= MAX_TX || l->tbuf_used + need > l->tbuf_cap)
        tx_flush(l, p);
    return l->tbuf + l->tbuf_used;
}

static void tx_commit(bn_lane *l, size_t len) {
    l->toffs[l->ntx] = l->tbuf_used;
    l->tlens[l->ntx] = (uint32_t)len;
    l->ntx++;
    l->tbuf_used += (len + 15) & ~(size_t)15;
}

static void sent_data(bn_port *p, uint64_t frames, uint64_t datagrams, uint64_t bytes,
                      double now) {
    p->st.tx_frames += frames;
    p->st.tx_datagrams += datagrams;
    p->st.tx_bytes += bytes;
    if (p->st.tx_first_data == 0)
        p->st.tx_first_data = now;
    p->st.tx_last = now;
    p->st.rx_first_data = 0; /* an authenticated send answers what came before */
}

/* One tap read: 1 = sent or counted here; 0 = Python must handle it (nothing
 * was changed for it). */
int bn_lane_tap_read(bn_lane *l, int port, uint8_t *data, size_t n) {
    bn_port *p = &l->ports[port];
    bn_session *s = p->send;
    if (s == NULL || p->blocked || p->ep_len == 0)
        return 0;
    double now = bn_lane_now(l);
    if (now - s->created >= BN_REJECT_AFTER_TIME)
        return 0;
    uint8_t *frame = data;
    size_t flen = n;
    bn_vnet h;
    int partial = 0;
    memset(&h, 0, sizeof h);
    if (p->vnet) {
        if (bn_vnet_decode(data, n, &h) < 0)
            return 0;
        frame = data + BN_VNET_HDR_LEN;
        flen = n - BN_VNET_HDR_LEN;
        partial = h.flags & VNET_NEEDS_CSUM;
    }
    if (flen < BN_ETH_HLEN)
        return 0;
    int known = bn_macset_has(&p->known, frame);
    if (p->vnet && h.gso_type != 0) {
        int gso = h.gso_type & 0x7F;
        if (gso != GSO_TCPV4 && gso != GSO_TCPV6)
            return 0;
        if (!bn_guard_fast_out(&p->guard, frame, flen, known))
            return 0;
        size_t offs[MAX_SEGS];
        uint16_t lens[MAX_SEGS];
        int csum_start = 0;
        const size_t head = BN_TRANSPORT_HEADER + FRAME_CSUM_HLEN;
        tx_reserve(l, p, l->tbuf_cap); /* a superframe starts with an empty buffer */
        int count = bn_segment_tcp(frame, flen, &h, p->room, l->tbuf, l->tbuf_cap, head,
                                   BN_TAG_LEN, offs, lens, MAX_SEGS, &csum_start);
        if (count < 1)
            return 0;
        if (s->send_counter + (uint64_t)count >= BN_REJECT_AFTER_MESSAGES)
            return 0;
        for (int i = 0; i < count; i++)
            if (lens[i] > p->fits_csum)
                return 0;
        uint64_t bytes = 0, nbytes = 0;
        for (int i = 0; i < count; i++)
            nbytes += lens[i];
        /* counted on the first segment's headers before sealing encrypts them */
        bn_account(&p->st.lan_to_wan, l->tbuf + offs[0], lens[0], (uint64_t)count, nbytes);
        maclog(l, port, 0, l->tbuf + offs[0], lens[0], (uint64_t)count, nbytes);
        for (int i = 0; i < count; i++) {
            uint8_t *pt = l->tbuf + offs[i] - FRAME_CSUM_HLEN;
            pt[0] = INNER_FRAME_CSUM;
            pt[1] = (uint8_t)csum_start;
            pt[2] = (uint8_t)(csum_start >> 8);
            pt[3] = BN_TCP_CSUM_OFFSET;
            pt[4] = 0;
            size_t len = bn_seal(s, s->send_counter++, pt, FRAME_CSUM_HLEN + lens[i],
                                 pt - BN_TRANSPORT_HEADER);
            l->toffs[l->ntx] = offs[i] - head;
            l->tlens[l->ntx] = (uint32_t)len;
            l->ntx++;
            bytes += len;
        }
        l->tbuf_used = offs[count - 1] + lens[count - 1] + BN_TAG_LEN;
        l->tbuf_used = (l->tbuf_used + 15) & ~(size_t)15;
        sent_data(p, (uint64_t)count, (uint64_t)count, bytes, now);
        return 1;
    }
    int fits = partial ? p->fits_csum : p->fits_plain;
    if ((int)flen > p->max_frame || (int)flen > fits)
        return 0;
    if (s->send_counter + 1 >= BN_REJECT_AFTER_MESSAGES)
        return 0;
    if (!bn_guard_fast_out(&p->guard, frame, flen, known))
        return 0;
    if (partial && (h.csum_start < MIN_CSUM_START
                    || (size_t)h.csum_start + h.csum_offset + 2 > flen))
        return 0;
    if (p->vnet && flen <= MAX_SYN_FRAME)
        bn_clamp_mss(frame, flen, p->room, partial);
    size_t hl = partial ? FRAME_CSUM_HLEN : 1;
    uint8_t *out = tx_reserve(l, p, BN_TRANSPORT_OVERHEAD + hl + flen + 16);
    uint8_t *pt = out + BN_TRANSPORT_HEADER;
    if (partial) {
        pt[0] = INNER_FRAME_CSUM;
        pt[1] = (uint8_t)h.csum_start;
        pt[2] = (uint8_t)(h.csum_start >> 8);
        pt[3] = (uint8_t)h.csum_offset;
        pt[4] = (uint8_t)(h.csum_offset >> 8);
    } else {
        pt[0] = INNER_FRAME;
    }
    memcpy(pt + hl, frame, flen);
    size_t len = bn_seal(s, s->send_counter++, pt, hl + flen, out);
    tx_commit(l, len);
    bn_account(&p->st.lan_to_wan, frame, flen, 1, flen);
    maclog(l, port, 0, frame, flen, 1, flen);
    sent_data(p, 1, 1, len, now);
    return 1;
}

/* Drain one tap; the first frame the lane cannot take is handed to Python
 * with the fd.  Returns -1 on a fatal read error. */
static int pump_tap(bn_lane *l, int port) {
    bn_port *p = &l->ports[port];
    uint8_t *buf = l->rbuf; /* the UDP side does not use rbuf while we run */
    int rc = 0;
    for (int i = 0; i < BN_BATCH; i++) {
        ssize_t n = read(p->fd, buf, BN_READ_SIZE);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                break;
            l->err = errno;
            l->err_port = port;
            rc = -1;
            break;
        }
        if (!bn_lane_tap_read(l, port, buf, (size_t)n)) {
            tx_flush(l, p); /* what came before leaves first */
            if (!punt_new(l, BN_PUNT_TAP, port, buf, (size_t)n)) {
                l->err = ENOMEM;
                l->err_port = port;
                rc = -1;
                break;
            }
            if (bn_lane_hold_port(l, port) < 0)
                rc = -1;
            break;
        }
    }
    tx_flush(l, p);
    return rc;
}

/* ---- WAN -> tap ------------------------------------------------------------- */

static void write_plain(bn_lane *l, int port, bn_port *p, const bn_frame_in *f) {
    uint8_t *data = (uint8_t *)f->data;
    if (f->csum_start >= 0)
        bn_complete_checksum(data, f->len, (size_t)f->csum_start, f->csum_offset);
    if (write(p->fd, data, f->len) < 0) {
        p->st.tap_write_failed++;
        return;
    }
    bn_account(&p->st.wan_to_lan, data, f->len, 1, f->len);
    maclog(l, port, 1, data, f->len, 1, f->len);
}

static void write_port(bn_lane *l, int port, bn_frame_in *frames, int n) {
    bn_port *p = &l->ports[port];
    if (!p->vnet) {
        for (int i = 0; i < n; i++)
            write_plain(l, port, p, &frames[i]);
        return;
    }
    static __thread bn_out_frame outs[BN_MAX_SEGMENTS];
    int i = 0;
    while (i < n) {
        int chunk = n - i < BN_MAX_SEGMENTS ? n - i : BN_MAX_SEGMENTS;
        int nout = bn_coalesce2(frames + i, chunk, outs, p->udp_join);
        for (int k = 0; k < nout; k++) {
            bn_out_frame *o = &outs[k];
            struct iovec iov[BN_MAX_SEGMENTS + 2];
            int niov = 0;
            iov[niov].iov_base = o->vnet;
            iov[niov++].iov_len = BN_VNET_HDR_LEN;
            const bn_frame_in *first = &frames[i + (int)o->first];
            if (o->head_len == 0) {
                iov[niov].iov_base = (void *)first->data;
                iov[niov++].iov_len = first->len;
            } else {
                iov[niov].iov_base = o->head;
                iov[niov++].iov_len = o->head_len;
                for (uint32_t j = 0; j < o->count; j++) {
                    const bn_frame_in *f = &frames[i + (int)(o->first + j)];
                    iov[niov].iov_base = (void *)(f->data + o->head_len);
                    iov[niov++].iov_len = f->len - o->head_len;
                }
            }
            if (writev(p->fd, iov, niov) < 0) {
                p->st.tap_write_failed++;
                continue;
            }
            const uint8_t *hdr = o->head_len ? o->head : first->data;
            size_t hlen = o->head_len ? o->head_len : first->len;
            bn_account(&p->st.wan_to_lan, hdr, hlen, o->count, o->nbytes);
            maclog(l, port, 1, hdr, hlen, o->count, o->nbytes);
        }
        i += chunk;
    }
}

/* Write every pending WAN -> tap frame, per port in arrival order; rbuf stays
 * as it is (a receive may still be in progress in it). */
static void write_pending(bn_lane *l) {
    if (l->npend == 0)
        return;
    static __thread bn_frame_in sel[MAX_PEND];
    for (int port = 0; port < BN_MAX_PORTS; port++) {
        bn_port *p = &l->ports[port];
        if (!p->used || p->npending == 0)
            continue;
        int n = 0;
        for (int i = 0; i < l->npend; i++)
            if (l->pend_port[i] == port)
                sel[n++] = l->pend[i];
        p->npending = 0;
        if (p->fd >= 0)
            write_port(l, port, sel, n);
    }
    l->npend = 0;
}

/* Write every pending frame, then reuse rbuf from its start: only between
 * receives. */
void bn_lane_flush(bn_lane *l) {
    write_pending(l);
    l->rbuf_used = 0;
}

static int same_addr(const struct sockaddr_storage *a, socklen_t alen,
                     const struct sockaddr_storage *b, socklen_t blen) {
    if (a->ss_family != b->ss_family)
        return 0;
    if (a->ss_family == AF_INET6) {
        const struct sockaddr_in6 *x = (const void *)a, *y = (const void *)b;
        return x->sin6_port == y->sin6_port && x->sin6_scope_id == y->sin6_scope_id
               && memcmp(&x->sin6_addr, &y->sin6_addr, 16) == 0;
    }
    if (a->ss_family == AF_INET) {
        const struct sockaddr_in *x = (const void *)a, *y = (const void *)b;
        return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
    }
    return alen == blen && memcmp(a, b, alen) == 0;
}

enum { RX_DONE, RX_RAW, RX_PAYLOAD, RX_FRAME };

static const bn_rx *rx_find(const bn_lane *l, uint32_t index) {
    for (int i = 0; i < l->nrx; i++)
        if (l->rx[i].index == index)
            return &l->rx[i];
    return NULL;
}

static int py_index_has(const bn_lane *l, uint32_t index) {
    for (int i = 0; i < l->npy_index; i++)
        if (l->py_index[i] == index)
            return 1;
    return 0;
}

/* A datagram the lane finishes itself: the device's receive counters. */
static void rx_counted(bn_lane *l, size_t n) {
    l->st.rx_datagrams++;
    l->st.rx_bytes += n;
}

static int from_a_peer(const bn_lane *l, const struct sockaddr_storage *from, socklen_t from_len) {
    for (int i = 0; i < BN_MAX_PORTS; i++) {
        const bn_port *p = &l->ports[i];
        if (p->used && p->ep_len && same_addr(from, from_len, &p->ep, p->ep_len))
            return 1;
    }
    return 0;
}

/* Admission of one handshake message from a source that is no peer's endpoint
 * (a token bucket of BN_HS_RATE a second, BN_HS_BURST deep). */
static int hs_admit(bn_lane *l) {
    double now = bn_lane_now(l);
    if (now > l->hs_stamp) {
        l->hs_tokens += (now - l->hs_stamp) * BN_HS_RATE;
        if (l->hs_tokens > BN_HS_BURST)
            l->hs_tokens = BN_HS_BURST;
        l->hs_stamp = now;
    }
    if (l->hs_tokens < 1.0)
        return 0;
    l->hs_tokens -= 1.0;
    return 1;
}

/* A datagram whose first word is not the transport type: dropped and counted
 * as Device._receive_handshake would (malformed, handshake_mac1), or queued
 * for Python without waiting for it (or shed when the queue is full or the
 * rate of strangers' handshakes is spent). */
static void rx_handshake(bn_lane *l, const uint8_t *d, size_t n,
                         const struct sockaddr_storage *from, socklen_t from_len) {
    uint32_t type = bn_le32(d);
    size_t want = type == BN_MSG_INITIATION   ? BN_INITIATION_LEN
                  : type == BN_MSG_RESPONSE   ? BN_RESPONSE_LEN
                  : type == BN_MSG_COOKIE_REPLY ? BN_COOKIE_REPLY_LEN
                                              : 0;
    if (want == 0 || n != want) {
        rx_counted(l, n);
        l->st.drop_malformed++;
        return;
    }
    if (type != BN_MSG_COOKIE_REPLY && l->has_mac1_key) {
        size_t off = n - 2 * BN_MAC_LEN;
        uint8_t mac1[BN_MAC_LEN];
        crypto_generichash(mac1, sizeof mac1, d, off, l->mac1_key, BN_MAC1_KEY_LEN);
        if (sodium_memcmp(mac1, d + off, BN_MAC_LEN) != 0) {
            rx_counted(l, n);
            l->st.drop_mac1++;
            return;
        }
    }
    if (l->nhs >= BN_HS_QUEUE || (!from_a_peer(l, from, from_len) && !hs_admit(l))) {
        rx_counted(l, n);
        l->st.hs_shed++;
        return;
    }
    bn_punt *p = punt_new(l, BN_PUNT_HANDSHAKE, -1, d, n);
    if (!p) {
        rx_counted(l, n);
        l->st.hs_shed++;
        return;
    }
    p->from = *from;
    p->from_len = from_len;
    l->nhs++;
    l->st.hs_queued++;
}

/* One datagram (decrypted in place).  RX_DONE: forwarded, counted or queued
 * here; RX_RAW: untouched, Python must process it with the socket;
 * RX_PAYLOAD / RX_FRAME: authenticated and counted, Python must finish it
 * (*out_* say what).  The checks run in Device.receive_datagrams' order, so
 * each drop lands on the counter Python would have used. */
static int rx_datagram(bn_lane *l, uint8_t *d, size_t n, const struct sockaddr_storage *from,
                       socklen_t from_len, int *out_port, const uint8_t **pt, size_t *ptlen,
                       uint32_t *out_index, int32_t *cs, uint16_t *co) {
    if (n < 4) {
        rx_counted(l, n);
        l->st.drop_malformed++;
        return RX_DONE;
    }
    if (bn_le32(d) != BN_MSG_TRANSPORT) {
        rx_handshake(l, d, n, from, from_len);
        return RX_DONE;
    }
    if (n < BN_TRANSPORT_OVERHEAD) {
        rx_counted(l, n);
        l->st.drop_malformed++;
        return RX_DONE;
    }
    uint32_t index = bn_le32(d + 4);
    uint64_t counter = bn_le64(d + 8);
    const bn_rx *e = rx_find(l, index);
    if (e == NULL) {
        if (py_index_has(l, index))
            return RX_RAW;
        rx_counted(l, n);
        l->st.drop_unknown_index++;
        return RX_DONE;
    }
    bn_port *p = &l->ports[e->port];
    bn_session *s = e->s;
    double now = bn_lane_now(l);
    int stale = now - s->created >= BN_REJECT_AFTER_TIME || counter >= BN_REJECT_AFTER_MESSAGES;
    if (!stale && !same_addr(from, from_len, &p->ep, p->ep_len)) {
        /* Another source: a peer roaming, or someone replaying or forging.
         * Authenticate a copy and look at the window without moving it; only
         * an authentic fresh datagram goes to Python, which opens it again. */
        long plen = bn_open(s, counter, d, n, l->sbuf);
        int verdict = BN_REPLAY_OK;
        if (plen >= 0) {
            bn_replay peek = s->replay;
            verdict = bn_replay_check(&peek, counter);
            if (verdict == BN_REPLAY_OK)
                return RX_RAW;
        }
        rx_counted(l, n);
        p->st.rx_datagrams++;
        p->st.rx_bytes += n;
        if (plen < 0)
            p->st.drop_auth++;
        else if (verdict == BN_REPLAY_REPLAY)
            p->st.drop_replay++;
        else
            p->st.drop_too_old++;
        return RX_DONE;
    }
    rx_counted(l, n);
    p->st.rx_datagrams++;
    p->st.rx_bytes += n;
    if (stale) {
        p->st.drop_stale++;
        return RX_DONE;
    }
    long plen = bn_open(s, counter, d, n, d + BN_TRANSPORT_HEADER);
    if (plen < 0) {
        p->st.drop_auth++;
        return RX_DONE;
    }
    int verdict = bn_replay_check(&s->replay, counter);
    if (verdict != BN_REPLAY_OK) {
        if (verdict == BN_REPLAY_REPLAY)
            p->st.drop_replay++;
        else
            p->st.drop_too_old++;
        return RX_DONE;
    }
    p->st.rx_last = now;
    p->st.tx_first_data = 0;
    if (plen == 0)
        return RX_DONE; /* keepalive */
    uint8_t *plain = d + BN_TRANSPORT_HEADER;
    *out_port = e->port;
    *out_index = index;
    uint8_t *frame;
    size_t flen;
    int32_t start = -1;
    uint16_t offset = 0;
    if (plain[0] == INNER_FRAME) {
        if ((size_t)plen > (size_t)p->max_frame + 1) {
            p->st.drop_too_big++;
            return RX_DONE;
        }
        frame = plain + 1;
        flen = (size_t)plen - 1;
    } else if (plain[0] == INNER_FRAME_CSUM) {
        if ((size_t)plen <= FRAME_CSUM_HLEN) {
            p->st.drop_malformed++;
            return RX_DONE;
        }
        start = plain[1] | plain[2] << 8;
        offset = (uint16_t)(plain[3] | plain[4] << 8);
        frame = plain + FRAME_CSUM_HLEN;
        flen = (size_t)plen - FRAME_CSUM_HLEN;
        if (start < MIN_CSUM_START || (size_t)start + offset + 2 > flen) {
            p->st.drop_malformed++;
            return RX_DONE;
        }
        if (flen > (size_t)p->max_frame) {
            p->st.drop_too_big++;
            return RX_DONE;
        }
    } else {
        *pt = plain;
        *ptlen = (size_t)plen;
        return RX_PAYLOAD;
    }
    p->st.rx_frames++;
    if (p->st.rx_first_data == 0)
        p->st.rx_first_data = now;
    *pt = frame;
    *ptlen = flen;
    *cs = start;
    *co = offset;
    if (p->blocked || flen < BN_ETH_HLEN || !bn_guard_fast_in(&p->guard, frame, flen)
        || p->fd < 0)
        return RX_FRAME;
    bn_macset_add(&p->known, frame + 6);
    if (l->npend >= MAX_PEND)
        write_pending(l); /* many small frames in GRO receives: write what waits */
    bn_frame_in *f = &l->pend[l->npend];
    f->data = frame;
    f->len = (uint32_t)flen;
    f->csum_start = start;
    f->csum_offset = offset;
    l->pend_port[l->npend++] = e->port;
    p->npending++;
    return RX_DONE;
}

static void punt_raw(bn_lane *l, uint8_t *data, size_t n, size_t size,
                     const struct sockaddr_storage *from, socklen_t from_len) {
    /* the datagrams data[0..n), each `size` long (the last may be shorter) */
    bn_punt *p = punt_new(l, BN_PUNT_RAW, -1, data, n);
    if (!p)
        return;
    int count = size ? (int)((n + size - 1) / size) : 1;
    p->lens = calloc((size_t)count, sizeof *p->lens);
    if (!p->lens) {
        p->count = 0;
        return;
    }
    for (int i = 0; i < count; i++) {
        size_t rest = n - (size_t)i * size;
        p->lens[i] = (uint32_t)(size && rest > size ? size : rest);
    }
    p->count = count;
    p->from = *from;
    p->from_len = from_len;
}

/* The UDP socket has an error queued (with IP_RECVERR: an ICMP "fragmentation
 * needed" / "packet too big" / "port unreachable", or a local EMSGSIZE): the
 * error queue is Python's to read (path-MTU reports go to the core), so the
 * socket is handed over as for a datagram the lane does not take, with an
 * empty receive.  Held until Python gives it back: epoll stops reporting the
 * error meanwhile, so the loop does not spin on it. */
static void punt_udp_error(bn_lane *l) {
    if (l->udp_held)
        return;
    bn_punt *p = punt_new(l, BN_PUNT_RAW, -1, NULL, 0);
    if (!p)
        return; /* no memory: the next wake-up tries again */
    memset(&p->from, 0, sizeof p->from);
    p->from.ss_family = l->dual ? AF_INET6 : AF_INET;
    p->from_len = l->dual ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
    p->count = 0;
    hold_udp(l);
}

/* One UDP receive of n bytes at data (several datagrams of gso_size with GRO). */
void bn_lane_udp_receive(bn_lane *l, uint8_t *data, size_t n, int gso_size,
                         const struct sockaddr_storage *from, socklen_t from_len) {
    size_t size = gso_size > 0 && (size_t)gso_size < n ? (size_t)gso_size : n;
    size_t off = 0;
    if (n == 0) { /* an empty datagram */
        rx_counted(l, 0);
        l->st.drop_malformed++;
        return;
    }
    while (off < n) {
        size_t len = n - off < size ? n - off : size;
        int port = -1;
        const uint8_t *pt = NULL;
        size_t ptlen = 0;
        uint32_t index = 0;
        int32_t cs = -1;
        uint16_t co = 0;
        int r = rx_datagram(l, data + off, len, from, from_len, &port, &pt, &ptlen, &index, &cs,
                            &co);
        if (r == RX_DONE) {
            off += len;
            continue;
        }
        /* Python gets this datagram's remains and the rest of the receive, with
         * the socket; the frames before it are written first (the caller
         * flushes before it lets go of the mutex). */
        size_t rest = r == RX_RAW ? off : off + len;
        if (r == RX_PAYLOAD) {
            bn_punt *first = punt_new(l, BN_PUNT_PAYLOAD, port, pt, ptlen);
            if (first) {
                first->local_index = index;
                first->size = (uint32_t)len;
                first->from = *from;
                first->from_len = from_len;
            }
        } else if (r == RX_FRAME) {
            bn_punt *first = punt_new(l, BN_PUNT_FRAME, port, pt, ptlen);
            if (first) {
                first->csum_start = cs;
                first->csum_offset = co;
            }
        }
        if (rest < n)
            punt_raw(l, data + rest, n - rest, size, from, from_len);
        hold_udp(l);
        return;
    }
}

/* Receives per recvmmsg and the room for each: with UDP_GRO a receive may be
 * a whole GRO batch (up to 64 KB); without, one datagram, and none of
 * bridger's is over 16 KB (a longer one is cut and then fails to open). */
#define RX_VLEN_GRO 4
#define RX_VLEN 16
#define RX_SLOT 16384

/* Drain the UDP socket into rbuf, several receives per recvmmsg. */
static int pump_udp(bn_lane *l) {
    struct mmsghdr msgs[RX_VLEN];
    struct iovec iov[RX_VLEN];
    struct sockaddr_storage from[RX_VLEN];
    union {
        char buf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } ctl[RX_VLEN];
    int vlen = l->gro ? RX_VLEN_GRO : RX_VLEN;
    size_t slot = l->gro ? (BN_READ_SIZE + 15) & ~(size_t)15 : RX_SLOT;
    for (int reads = 0; reads < BN_BATCH && !l->udp_held; reads += vlen) {
        if (l->rbuf_used + (size_t)vlen * slot > l->rbuf_cap)
            bn_lane_flush(l);
        uint8_t *base = l->rbuf + l->rbuf_used;
        memset(msgs, 0, sizeof msgs[0] * (size_t)vlen);
        for (int k = 0; k < vlen; k++) {
            iov[k].iov_base = base + (size_t)k * slot;
            iov[k].iov_len = slot;
            msgs[k].msg_hdr.msg_name = &from[k];
            msgs[k].msg_hdr.msg_namelen = sizeof from[k];
            msgs[k].msg_hdr.msg_iov = &iov[k];
            msgs[k].msg_hdr.msg_iovlen = 1;
            msgs[k].msg_hdr.msg_control = ctl[k].buf;
            msgs[k].msg_hdr.msg_controllen = sizeof ctl[k].buf;
        }
        int got = recvmmsg(l->udp_fd, msgs, (unsigned)vlen, MSG_DONTWAIT, NULL);
        if (got < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                break;
            punt_udp_error(l); /* an ICMP or local error: Python reads the error queue */
            break;
        }
        l->rbuf_used += (size_t)got * slot;
        for (int k = 0; k < got; k++) {
            struct msghdr *m = &msgs[k].msg_hdr;
            if (m->msg_flags & (MSG_TRUNC | MSG_CTRUNC)) {
                l->st.udp_truncated++; /* cut short: not the datagram(s) sent */
                continue;
            }
            int gso_size = 0;
            for (struct cmsghdr *cm = CMSG_FIRSTHDR(m); cm; cm = CMSG_NXTHDR(m, cm))
                if (cm->cmsg_level == SOL_UDP && cm->cmsg_type == UDP_GRO
                    && cm->cmsg_len >= CMSG_LEN(sizeof(int)))
                    memcpy(&gso_size, CMSG_DATA(cm), sizeof gso_size);
            uint8_t *data = iov[k].iov_base;
            size_t n = msgs[k].msg_len;
            if (l->udp_held) /* received with the one handed over: Python's too, in order */
                punt_raw(l, data, n, gso_size > 0 && (size_t)gso_size < n ? (size_t)gso_size : n,
                         &from[k], m->msg_namelen);
            else
                bn_lane_udp_receive(l, data, n, gso_size, &from[k], m->msg_namelen);
        }
        if (got < vlen)
            break; /* drained */
    }
    bn_lane_flush(l);
    return 0;
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
    while (!l->stopping) {
        int n = 0;
        for (int y = 0; busy && y < POLL_YIELDS; y++) {
            n = epoll_wait(l->epfd, evs, BN_MAX_PORTS + 2, 0);
            if (n != 0)
                break;
            sched_yield();
        }
        if (n == 0)
            n = epoll_wait(l->epfd, evs, BN_MAX_PORTS + 2, 1000);
        busy = n > 0;
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
        for (int i = 0; i < n && rc == 0; i++) {
            uint64_t tag = evs[i].data.u64;
            if (i > 0 && __atomic_load_n(&l->waiters, __ATOMIC_ACQUIRE)) {
                /* Python waits: let it in between two fds' batches */
                pthread_mutex_unlock(&l->mu);
                give_way(l);
                pthread_mutex_lock(&l->mu);
            }
            if (tag == EV_STOP) {
                l->stopping = 1;
            } else if (tag == EV_UDP) {
                if (evs[i].events & EPOLLERR)
                    punt_udp_error(l);
                else if (!l->udp_held)
                    rc = pump_udp(l);
            } else if (tag < BN_MAX_PORTS) {
                bn_port *p = &l->ports[tag];
                if (p->used && !p->held)
                    rc = pump_tap(l, (int)tag);
            }
        }
        if (l->err)
            rc = -1; /* an epoll_ctl failed (bn_lane_fail) */
        pthread_mutex_unlock(&l->mu);
        if (rc < 0)
            break;
    }
    l->running = 0;
    return l->err ? -1 : rc;
}
