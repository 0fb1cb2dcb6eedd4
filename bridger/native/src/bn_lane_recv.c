/* bn_lane_recv.c - the UDP socket's receive side.
 *
 * 1. bn_lane_pump_udp receives up to BN_BATCH datagrams (recvmmsg, several
 *    receives per call; with UDP_GRO each receive may be a run of datagrams
 *    of one size) into l->rbuf;
 * 2. bn_lane_recv_batch reads each receive's flags and control messages: one
 *    cut short (MSG_TRUNC, MSG_CTRUNC) is dropped and counted, a GRO segment
 *    size splits it; then it goes to bn_lane_udp_receive (bn_lane_rx.c), or,
 *    once the socket is handed to Python, to Python as received;
 * 3. an error on the socket (EPOLLERR, a failing recvmmsg) is read off its
 *    error queue here (bn_lane_udp_error): a path-MTU report about a peer's
 *    endpoint waits in its port and goes to Python at most every
 *    BN_MTU_INTERVAL (bn_lane_mtu_due), anything else is counted and dropped
 *    (Python would drop it too: UdpEndpoint.kernel_mtu_reports).  A flood of
 *    forged ICMP errors so costs a recvmsg each, never a hand-over.
 *
 * The kernel writes the flags, names and control messages parsed here, but
 * they are read as untrusted all the same (fuzz_lane_recv feeds them).
 */
#define _GNU_SOURCE
#include "bn_lane_int.h"

#include <arpa/inet.h>
#include <errno.h>
#include <time.h> /* before linux/errqueue.h, which needs struct timespec */
#include <linux/errqueue.h>
#include <string.h>
#include <sys/socket.h>

/* Receives per recvmmsg and the room for each: with UDP_GRO a receive may be
 * a whole GRO batch (up to 64 KB); without, one datagram, and none of
 * bridger's is over 16 KB (a longer one is cut and then fails to open).
 * With GRO too, 16 receives a call: under a flood of small datagrams from
 * many sources (which GRO cannot join) each is one receive, and 4 a call
 * cost a syscall per 4 (l->rbuf holds 16 slots: BN_RBUF_CAP). */
#define RX_VLEN_GRO 16
#define RX_VLEN 16
#define RX_SLOT 16384
_Static_assert(RX_VLEN_GRO <= RX_VLEN, "pump_udp's arrays hold RX_VLEN receives");

#ifndef IP_RECVERR
#define IP_RECVERR 11
#endif
#ifndef IPV6_RECVERR
#define IPV6_RECVERR 25
#endif

/* ---- control messages ------------------------------------------------------ */

/* The control message of m at offset *at, if its header and its length lie
 * within msg_control[0..msg_controllen); *at moves past it.  Walks by
 * offsets: a length the kernel would never write (zero, cut, huge) ends the
 * walk instead of stepping outside the buffer (glibc's CMSG_NXTHDR trusts
 * the first header's length). */
static const struct cmsghdr *cmsg_at(const struct msghdr *m, size_t *at) {
    size_t len = m->msg_control ? m->msg_controllen : 0, off = *at;
    if (off > len || len - off < sizeof(struct cmsghdr))
        return NULL;
    const struct cmsghdr *cm = (const void *)((const char *)m->msg_control + off);
    if (cm->cmsg_len < CMSG_LEN(0) || cm->cmsg_len > len - off)
        return NULL;
    *at = off + CMSG_ALIGN(cm->cmsg_len);
    return cm;
}

int bn_recv_gro_size(const struct msghdr *m) {
    int gso_size = 0;
    size_t at = 0;
    for (const struct cmsghdr *cm; (cm = cmsg_at(m, &at));)
        if (cm->cmsg_level == SOL_UDP && cm->cmsg_type == UDP_GRO
            && cm->cmsg_len >= CMSG_LEN(sizeof(int)))
            memcpy(&gso_size, CMSG_DATA(cm), sizeof gso_size);
    return gso_size > 0 ? gso_size : 0;
}

int bn_recv_mtu_report(const struct msghdr *m, uint32_t *mtu, int *local) {
    if (m->msg_namelen == 0)
        return 0;
    size_t at = 0;
    for (const struct cmsghdr *cm; (cm = cmsg_at(m, &at));) {
        if (!((cm->cmsg_level == IPPROTO_IP && cm->cmsg_type == IP_RECVERR)
              || (cm->cmsg_level == IPPROTO_IPV6 && cm->cmsg_type == IPV6_RECVERR)))
            continue;
        if (cm->cmsg_len < CMSG_LEN(sizeof(struct sock_extended_err)))
            continue;
        struct sock_extended_err ee;
        memcpy(&ee, CMSG_DATA(cm), sizeof ee);
        if (ee.ee_errno != EMSGSIZE || ee.ee_info == 0 || ee.ee_info > 65535)
            continue;
        if (ee.ee_origin != SO_EE_ORIGIN_ICMP && ee.ee_origin != SO_EE_ORIGIN_ICMP6
            && ee.ee_origin != SO_EE_ORIGIN_LOCAL)
            continue;
        *mtu = ee.ee_info;
        *local = ee.ee_origin == SO_EE_ORIGIN_LOCAL;
        return 1;
    }
    return 0;
}

/* ---- receives ----------------------------------------------------------------- */

void bn_lane_recv_batch(bn_lane *l, struct mmsghdr *msgs, int got) {
    for (int k = 0; k < got; k++) {
        struct msghdr *m = &msgs[k].msg_hdr;
        size_t n = msgs[k].msg_len;
        if ((m->msg_flags & (MSG_TRUNC | MSG_CTRUNC)) || m->msg_iovlen < 1
            || n > m->msg_iov[0].iov_len) {
            l->st.udp_truncated++; /* cut short: not the datagram(s) sent */
            continue;
        }
        int gso_size = bn_recv_gro_size(m);
        uint8_t *data = m->msg_iov[0].iov_base;
        const struct sockaddr_storage *from = m->msg_name;
        socklen_t from_len = m->msg_namelen < sizeof *from ? m->msg_namelen : sizeof *from;
        if (l->udp_held) /* received with the one handed over: Python's too, in order */
            bn_lane_punt_raw(l, data, n,
                             gso_size > 0 && (size_t)gso_size < n ? (size_t)gso_size : n, from,
                             from_len);
        else
            bn_lane_udp_receive(l, data, n, gso_size, from, from_len);
    }
}

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
            bn_lane_udp_error(l); /* an ICMP or local error: read the error queue */
            continue;
        }
        l->rbuf_used += (size_t)got * slot;
        l->reads += (uint64_t)got;
        for (int k = 0; k < got; k++)
            l->read_bytes += msgs[k].msg_len;
        bn_lane_recv_batch(l, msgs, got);
        if (got < vlen)
            break; /* drained */
    }
    bn_lane_flush(l);
    return 0;
}

/* ---- the error queue ---------------------------------------------------------- */

int bn_lane_mtu_due(bn_lane *l, double now) {
    if (!l->mtu_waiting)
        return -1;
    if (now < l->mtu_next) {
        double ms = (l->mtu_next - now) * 1000.0 + 1.0;
        return ms < 1.0 ? 1 : ms > 1000.0 ? 1000 : (int)ms;
    }
    int left = 0;
    for (int i = 0; i < BN_MAX_PORTS; i++) {
        bn_port *p = &l->ports[i];
        if (!p->used || (p->mtu_icmp == 0 && p->mtu_local == 0))
            continue;
        for (int local = 0; local < 2; local++) {
            uint32_t *mtu = local ? &p->mtu_local : &p->mtu_icmp;
            if (*mtu == 0)
                continue;
            bn_punt *q = bn_lane_punt(l, BN_PUNT_MTU, i, NULL, 0);
            if (!q) {
                left = 1; /* no memory: the next wake-up tries again */
                continue;
            }
            q->size = *mtu;
            q->local = local;
            q->from = p->ep;
            q->from_len = p->ep_len;
            *mtu = 0;
            l->st.mtu_reports++;
        }
    }
    l->mtu_waiting = left;
    l->mtu_next = now + BN_MTU_INTERVAL;
    return left ? 1 : -1;
}

static void keep_smaller(uint32_t *slot, uint32_t mtu) {
    if (*slot == 0 || mtu < *slot)
        *slot = mtu;
}

/* The port of an AF_INET or AF_INET6 address, host order (0: none named). */
static unsigned sockaddr_port(const struct sockaddr_storage *a) {
    if (a->ss_family == AF_INET6)
        return ntohs(((const struct sockaddr_in6 *)(const void *)a)->sin6_port);
    if (a->ss_family == AF_INET)
        return ntohs(((const struct sockaddr_in *)(const void *)a)->sin_port);
    return 0;
}

void bn_lane_errq_message(bn_lane *l, const struct msghdr *m, double now) {
    l->st.udp_errors++;
    uint32_t mtu;
    int local;
    if (!bn_recv_mtu_report(m, &mtu, &local) || !m->msg_name)
        return;
    socklen_t to_len = m->msg_namelen < sizeof(struct sockaddr_storage)
                           ? m->msg_namelen : sizeof(struct sockaddr_storage);
    const struct sockaddr_storage *to = m->msg_name;
    if (local && sockaddr_port(to) == 0) {
        /* The local interface refused a datagram of an unconnected socket:
         * the kernel names the address, not the port (ip_local_error).  The
         * route's MTU is that of every peer at that address. */
        int found = 0;
        for (int i = 0; i < BN_MAX_PORTS; i++) {
            bn_port *p = &l->ports[i];
            if (p->used && p->ep_len && bn_same_host(to, to_len, &p->ep, p->ep_len)) {
                keep_smaller(&p->mtu_local, mtu);
                found = 1;
            }
        }
        if (!found)
            return;
    } else {
        int port = bn_lane_port_of(l, to, to_len);
        if (port < 0)
            return; /* news of no peer's path: the core has no use for it */
        bn_port *p = &l->ports[port];
        keep_smaller(local ? &p->mtu_local : &p->mtu_icmp, mtu);
    }
    l->mtu_waiting = 1;
    bn_lane_mtu_due(l, now);
}

/* The UDP socket has errors queued (IP_RECVERR: an ICMP "fragmentation needed"
 * / "packet too big" / "port unreachable", or a local EMSGSIZE), seen as
 * EPOLLERR or as a failing recvmmsg: read up to BN_ERRQ_BATCH of them (more
 * keep EPOLLERR up for the next wake-up). */
void bn_lane_udp_error(bn_lane *l) {
    if (l->udp_fd < 0 || l->udp_held)
        return;
    double now = bn_lane_now(l);
    for (int i = 0; i < BN_ERRQ_BATCH; i++) {
        struct sockaddr_storage to;
        union {
            char buf[512];
            struct cmsghdr align;
        } ctl;
        struct msghdr m;
        memset(&m, 0, sizeof m);
        memset(&to, 0, sizeof to);
        m.msg_name = &to;
        m.msg_namelen = sizeof to;
        m.msg_control = ctl.buf;
        m.msg_controllen = sizeof ctl.buf;
        if (recvmsg(l->udp_fd, &m, MSG_ERRQUEUE | MSG_DONTWAIT) < 0) {
            if (errno == EINTR)
                continue;
            /* The queue is empty.  The socket's pending error (SO_ERROR) is
             * still set (EPOLLERR would stay up): clear it.  It is no count of
             * its own: the kernel sets it for every error, queued or not (the
             * queue full), and may set it just after the error it names was
             * read; an error queued since the empty read is read now. */
            int err = 0;
            socklen_t len = sizeof err;
            if (getsockopt(l->udp_fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 || !err)
                return;
            m.msg_namelen = sizeof to;
            m.msg_controllen = sizeof ctl.buf;
            if (recvmsg(l->udp_fd, &m, MSG_ERRQUEUE | MSG_DONTWAIT) < 0)
                return;
        }
        bn_lane_errq_message(l, &m, now);
    }
}
