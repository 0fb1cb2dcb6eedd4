/* bn_lane_recv.c - the UDP socket's receive side.
 *
 * 1. bn_lane_pump_udp receives up to BN_BATCH datagrams (recvmmsg, several
 *    receives per call; with UDP_GRO each receive may be a run of datagrams
 *    of one size) into l->rbuf;
 * 2. each receive's flags and control messages are read: one cut short
 *    (MSG_TRUNC, MSG_CTRUNC) is dropped and counted, a GRO segment size
 *    splits it; then it goes to bn_lane_udp_receive (bn_lane_rx.c), or, once
 *    the socket is handed to Python, to Python as received;
 * 3. an error queued on the socket (EPOLLERR, a failing recvmmsg) goes to
 *    Python with the socket.
 */
#define _GNU_SOURCE
#include "bn_lane_int.h"

#include <errno.h>
#include <string.h>
#include <sys/socket.h>

/* The UDP socket has an error queued (with IP_RECVERR: an ICMP "fragmentation
 * needed" / "packet too big" / "port unreachable", or a local EMSGSIZE): the
 * error queue is Python's to read (path-MTU reports go to the core), so the
 * socket is handed over as for a datagram the lane does not take, with an
 * empty receive.  Held until Python gives it back: epoll stops reporting the
 * error meanwhile, so the loop does not spin on it. */
void bn_lane_udp_error(bn_lane *l) {
    if (l->udp_held)
        return;
    bn_punt *p = bn_lane_punt(l, BN_PUNT_RAW, -1, NULL, 0);
    if (!p)
        return; /* no memory: the next wake-up tries again */
    memset(&p->from, 0, sizeof p->from);
    p->from.ss_family = l->dual ? AF_INET6 : AF_INET;
    p->from_len = l->dual ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
    p->count = 0;
    bn_lane_hold_udp(l);
}

/* Receives per recvmmsg and the room for each: with UDP_GRO a receive may be
 * a whole GRO batch (up to 64 KB); without, one datagram, and none of
 * bridger's is over 16 KB (a longer one is cut and then fails to open). */
#define RX_VLEN_GRO 4
#define RX_VLEN 16
#define RX_SLOT 16384

/* Drain the UDP socket into rbuf, several receives per recvmmsg. */
int bn_lane_pump_udp(bn_lane *l) {
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
            bn_lane_udp_error(l); /* an ICMP or local error: Python reads the error queue */
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
                bn_lane_punt_raw(l, data, n, gso_size > 0 && (size_t)gso_size < n ? (size_t)gso_size : n,
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
