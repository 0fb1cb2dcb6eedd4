/* bn_lane_send.c - the datagrams sealed for one port onto the UDP socket.
 *
 * 1. Consecutive datagrams of one size (the last of a run may be shorter), up
 *    to GSO_MAX_SEGMENTS and GSO_MAX_BYTES, leave in one UDP_SEGMENT sendmsg
 *    (fastpath.udp.gso_batches' grouping), when the socket has GSO;
 * 2. a run the egress device cannot segment (EIO, EINVAL, ENOPROTOOPT,
 *    EOPNOTSUPP) turns GSO off for good (gso_refused) and leaves one datagram
 *    per send; one too big for a segmented send (EMSGSIZE) too;
 * 3. a send aborted by an ICMP error queued for an earlier datagram is tried
 *    once more; a full buffer is a counted drop (udp_send_blocked).
 */
#define _GNU_SOURCE
#include "bn_lane_int.h"

#include <errno.h>
#include <string.h>
#include <sys/uio.h>

#define GSO_MAX_SEGMENTS 64
#define GSO_MAX_BYTES 65000

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

ssize_t bn_lane_sendmsg(bn_lane *l, const struct msghdr *msg) {
    return sendmsg(l->udp_fd, msg, MSG_DONTWAIT);
}

static void send_single(bn_lane *l, bn_port *p, uint8_t *d, size_t n) {
    struct iovec iov = {d, n};
    struct msghdr msg;
    memset(&msg, 0, sizeof msg);
    msg.msg_name = &p->ep;
    msg.msg_namelen = p->ep_len;
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    int tries = 0;
    for (;;) {
        if (l->send(l, &msg) >= 0)
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

int bn_gso_run(const uint32_t *lens, int n, int i, int gso) {
    int j = i + 1;
    size_t size = lens[i], total = size;
    if (gso) {
        while (j < n && j - i < GSO_MAX_SEGMENTS && lens[j - 1] == size && lens[j] <= size
               && total + lens[j] <= GSO_MAX_BYTES) {
            total += lens[j];
            j++;
        }
    }
    return j;
}

/* Send the datagrams sealed for port p: each run (bn_gso_run) in one
 * UDP_SEGMENT sendmsg, a run of one alone. */
void bn_lane_tx_flush(bn_lane *l, bn_port *p) {
    int i = 0;
    while (i < l->ntx) {
        int j = bn_gso_run(l->tlens, l->ntx, i, l->gso);
        size_t size = l->tlens[i];
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
            r = l->send(l, &msg);
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

void bn_lane_tx_flush_port(bn_lane *l, int port) { bn_lane_tx_flush(l, &l->ports[port]); }
