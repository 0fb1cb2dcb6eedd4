/* bn_lane_tx.c - tap -> WAN: the tap reads the lane forwards itself.
 *
 * 1. bn_lane_pump_tap reads up to BN_BATCH frames from a tap;
 * 2. bn_lane_tap_read takes one: a plain frame, or a TCP superframe cut into
 *    segments (bn_segment_tcp), that the guards pass on their hot path, that
 *    fits one datagram and has a sendable session; it is sealed into l->tbuf;
 * 3. the first read the lane does not take is handed to Python with the tap
 *    (what came before it leaves first), and the tap is held;
 * 4. what was sealed leaves through bn_lane_tx_flush (bn_lane_send.c).
 */
#define _GNU_SOURCE
#include "bn_lane_int.h"

#include <errno.h>
#include <string.h>
#include <unistd.h>

#define MAX_SEGS 256
#define VNET_NEEDS_CSUM 1
#define GSO_TCPV4 1
#define GSO_TCPV6 4
#define MAX_SYN_FRAME (14 + 8 + 40 + 60)

/* Room for one more datagram of up to `need` bytes; flushes when short. */
static uint8_t *tx_reserve(bn_lane *l, bn_port *p, size_t need) {
    if (l->ntx >= BN_MAX_TX || l->tbuf_used + need > l->tbuf_cap)
        bn_lane_tx_flush(l, p);
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

/* A flooded frame the guard's storm buckets pay for with a token Python lent
 * (bn_port.credit): 1 when one was spent.  An ND frame takes the general
 * budget's when the ND share's are gone, as Guard._look does. */
static int spend_credit(bn_port *p, const uint8_t *frame, size_t flen, int known) {
    int c = bn_guard_flood_class(&p->guard, frame, flen, known);
    if (c == BN_FLOOD_NONE)
        return 0;
    if (c == BN_FLOOD_ND && p->credit[0] > 0) {
        p->credit[0]--;
        return 1;
    }
    if (p->credit[1] > 0) {
        p->credit[1]--;
        return 1;
    }
    return 0;
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
        const size_t head = BN_TRANSPORT_HEADER + BN_FRAME_CSUM_HLEN;
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
        bn_lane_maclog(l, port, 0, l->tbuf + offs[0], lens[0], (uint64_t)count, nbytes);
        for (int i = 0; i < count; i++) {
            uint8_t *pt = l->tbuf + offs[i] - BN_FRAME_CSUM_HLEN;
            pt[0] = BN_INNER_FRAME_CSUM;
            pt[1] = (uint8_t)csum_start;
            pt[2] = (uint8_t)(csum_start >> 8);
            pt[3] = BN_TCP_CSUM_OFFSET;
            pt[4] = 0;
            size_t len = bn_seal(s, s->send_counter++, pt, BN_FRAME_CSUM_HLEN + lens[i],
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
    if (partial && (h.csum_start < BN_MIN_CSUM_START
                    || (size_t)h.csum_start + h.csum_offset + 2 > flen))
        return 0;
    if (!bn_guard_fast_out(&p->guard, frame, flen, known) && !spend_credit(p, frame, flen, known))
        return 0;
    if (p->vnet && flen <= MAX_SYN_FRAME)
        bn_clamp_mss(frame, flen, p->room, partial);
    size_t hl = partial ? BN_FRAME_CSUM_HLEN : 1;
    uint8_t *out = tx_reserve(l, p, BN_TRANSPORT_OVERHEAD + hl + flen + 16);
    uint8_t *pt = out + BN_TRANSPORT_HEADER;
    if (partial) {
        pt[0] = BN_INNER_FRAME_CSUM;
        pt[1] = (uint8_t)h.csum_start;
        pt[2] = (uint8_t)(h.csum_start >> 8);
        pt[3] = (uint8_t)h.csum_offset;
        pt[4] = (uint8_t)(h.csum_offset >> 8);
    } else {
        pt[0] = BN_INNER_FRAME;
    }
    memcpy(pt + hl, frame, flen);
    size_t len = bn_seal(s, s->send_counter++, pt, hl + flen, out);
    tx_commit(l, len);
    bn_account(&p->st.lan_to_wan, frame, flen, 1, flen);
    bn_lane_maclog(l, port, 0, frame, flen, 1, flen);
    sent_data(p, 1, 1, len, now);
    return 1;
}

/* Drain one tap; the first frame the lane cannot take is handed to Python
 * with the fd.  Returns -1 on a fatal read error. */
int bn_lane_pump_tap(bn_lane *l, int port) {
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
        l->reads++;
        l->read_bytes += (uint64_t)n;
        if (!bn_lane_tap_read(l, port, buf, (size_t)n)) {
            bn_lane_tx_flush(l, p); /* what came before leaves first */
            if (!bn_lane_punt(l, BN_PUNT_TAP, port, buf, (size_t)n)) {
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
    bn_lane_tx_flush(l, p);
    return rc;
}
