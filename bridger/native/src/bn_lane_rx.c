/* bn_lane_rx.c - WAN -> tap: the datagrams of one UDP receive.
 *
 * 1. bn_lane_udp_receive cuts a receive into its datagrams (GRO: each
 *    gso_size long, the last may be shorter);
 * 2. rx_datagram checks each in Device.receive_datagrams' order: short or of
 *    no type (dropped, counted), a handshake message (length and mac1
 *    checked, then queued for Python through a bounded queue, or shed), a
 *    transport datagram to a receiver index in the lane's table (opened,
 *    replay-checked; from another source only peeked at), a FRAME or
 *    FRAME_CSUM the inbound guard passes: pending for the tap;
 * 3. the first datagram the lane does not finish goes to Python with the rest
 *    of the receive, and the socket is held;
 * 4. bn_lane_flush writes the pending frames per port, TCP segments and UDP
 *    runs of one flow re-joined (bn_coalesce2).
 */
#define _GNU_SOURCE
#include "bn_lane_int.h"

#include <sodium.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

static void write_plain(bn_lane *l, int port, bn_port *p, const bn_frame_in *f) {
    uint8_t *data = (uint8_t *)f->data;
    if (f->csum_start >= 0)
        bn_complete_checksum(data, f->len, (size_t)f->csum_start, f->csum_offset);
    if (write(p->fd, data, f->len) < 0) {
        p->st.tap_write_failed++;
        return;
    }
    bn_account(&p->st.wan_to_lan, data, f->len, 1, f->len);
    bn_lane_maclog(l, port, 1, data, f->len, 1, f->len);
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
            bn_lane_maclog(l, port, 1, hdr, hlen, o->count, o->nbytes);
        }
        i += chunk;
    }
}

/* Write every pending WAN -> tap frame, per port in arrival order; rbuf stays
 * as it is (a receive may still be in progress in it). */
static void write_pending(bn_lane *l) {
    if (l->npend == 0)
        return;
    static __thread bn_frame_in sel[BN_MAX_PEND];
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

/* A token bucket of `rate` a second, `burst` deep, at `now`: 1 when a token
 * was there (and is taken). */
static int take_token(double *tokens, double *stamp, double now, double rate, double burst) {
    if (now > *stamp) {
        *tokens += (now - *stamp) * rate;
        if (*tokens > burst)
            *tokens = burst;
        *stamp = now;
    }
    if (*tokens < 1.0)
        return 0;
    *tokens -= 1.0;
    return 1;
}

/* The source key of `from`: an IPv4 address (as IPv4-mapped IPv6), or the /64
 * of an IPv6 address (one host may hold a whole /64); 0 for another family. */
static int source_key(const struct sockaddr_storage *from, socklen_t from_len, uint8_t key[16]) {
    memset(key, 0, 16);
    if (from->ss_family == AF_INET && from_len >= (socklen_t)sizeof(struct sockaddr_in)) {
        const struct sockaddr_in *a = (const void *)from;
        key[10] = key[11] = 0xFF;
        memcpy(key + 12, &a->sin_addr, 4);
        return 1;
    }
    if (from->ss_family == AF_INET6 && from_len >= (socklen_t)sizeof(struct sockaddr_in6)) {
        const struct sockaddr_in6 *a = (const void *)from;
        memcpy(key, &a->sin6_addr, IN6_IS_ADDR_V4MAPPED(&a->sin6_addr) ? 16 : 8);
        return 1;
    }
    return 0;
}

/* Admission of one handshake message from a source that is no peer's endpoint:
 * the source's bucket (BN_HS_SOURCE_RATE, BN_HS_SOURCE_BURST), then the
 * strangers' common one (BN_HS_RATE, BN_HS_BURST).  One address flooding
 * valid-mac1 messages gets its share and no more; many (spoofed) addresses
 * together get the common rate. */
static int hs_admit(bn_lane *l, const struct sockaddr_storage *from, socklen_t from_len) {
    double now = bn_lane_now(l);
    uint8_t key[16];
    if (source_key(from, from_len, key)) {
        uint32_t h = 2166136261u; /* FNV-1a (unkeyed: a collision shares, below) */
        for (int i = 0; i < 16; i++)
            h = (h ^ key[i]) * 16777619u;
        bn_hs_source *src = &l->hs_sources[h % BN_HS_SOURCES];
        if (!src->used || memcmp(src->addr, key, 16) != 0) {
            /* Another source's slot: it becomes this one's only when its bucket
             * has refilled (its owner is quiet); else the two share it.  A
             * collision so never gives anyone more: a flood from many
             * addresses cannot keep refilling one address's bucket. */
            double full = src->tokens + (now - src->stamp) * BN_HS_SOURCE_RATE;
            if (!src->used || full >= BN_HS_SOURCE_BURST) {
                memcpy(src->addr, key, 16);
                src->used = 1;
                src->tokens = BN_HS_SOURCE_BURST;
                src->stamp = now;
            }
        }
        if (!take_token(&src->tokens, &src->stamp, now, BN_HS_SOURCE_RATE, BN_HS_SOURCE_BURST))
            return 0;
    }
    return take_token(&l->hs_tokens, &l->hs_stamp, now, BN_HS_RATE, BN_HS_BURST);
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
        bn_lane_rx_counted(l, n);
        l->st.drop_malformed++;
        return;
    }
    if (type != BN_MSG_COOKIE_REPLY && l->has_mac1_key) {
        size_t off = n - 2 * BN_MAC_LEN;
        uint8_t mac1[BN_MAC_LEN];
        crypto_generichash(mac1, sizeof mac1, d, off, l->mac1_key, BN_MAC1_KEY_LEN);
        if (sodium_memcmp(mac1, d + off, BN_MAC_LEN) != 0) {
            bn_lane_rx_counted(l, n);
            l->st.drop_mac1++;
            return;
        }
    }
    if (l->nhs >= BN_HS_QUEUE
        || (bn_lane_port_of(l, from, from_len) < 0 && !hs_admit(l, from, from_len))) {
        bn_lane_rx_counted(l, n);
        l->st.hs_shed++;
        return;
    }
    bn_punt *p = bn_lane_punt(l, BN_PUNT_HANDSHAKE, -1, d, n);
    if (!p) {
        bn_lane_rx_counted(l, n);
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
        bn_lane_rx_counted(l, n);
        l->st.drop_malformed++;
        return RX_DONE;
    }
    if (bn_le32(d) != BN_MSG_TRANSPORT) {
        rx_handshake(l, d, n, from, from_len);
        return RX_DONE;
    }
    if (n < BN_TRANSPORT_OVERHEAD) {
        bn_lane_rx_counted(l, n);
        l->st.drop_malformed++;
        return RX_DONE;
    }
    uint32_t index = bn_le32(d + 4);
    uint64_t counter = bn_le64(d + 8);
    const bn_rx *e = rx_find(l, index);
    if (e == NULL) {
        if (py_index_has(l, index))
            return RX_RAW;
        bn_lane_rx_counted(l, n);
        l->st.drop_unknown_index++;
        return RX_DONE;
    }
    bn_port *p = &l->ports[e->port];
    bn_session *s = e->s;
    double now = bn_lane_now(l);
    int stale = now - s->created >= BN_REJECT_AFTER_TIME || counter >= BN_REJECT_AFTER_MESSAGES;
    if (!stale && !bn_same_addr(from, from_len, &p->ep, p->ep_len)) {
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
        bn_lane_rx_counted(l, n);
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
    bn_lane_rx_counted(l, n);
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
    if (plain[0] == BN_INNER_FRAME) {
        if ((size_t)plen > (size_t)p->max_frame + 1) {
            p->st.drop_too_big++;
            return RX_DONE;
        }
        frame = plain + 1;
        flen = (size_t)plen - 1;
    } else if (plain[0] == BN_INNER_FRAME_CSUM) {
        if ((size_t)plen <= BN_FRAME_CSUM_HLEN) {
            p->st.drop_malformed++;
            return RX_DONE;
        }
        start = plain[1] | plain[2] << 8;
        offset = (uint16_t)(plain[3] | plain[4] << 8);
        frame = plain + BN_FRAME_CSUM_HLEN;
        flen = (size_t)plen - BN_FRAME_CSUM_HLEN;
        if (start < BN_MIN_CSUM_START || (size_t)start + offset + 2 > flen) {
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
    if (l->npend >= BN_MAX_PEND)
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

/* One UDP receive of n bytes at data (several datagrams of gso_size with GRO). */
void bn_lane_udp_receive(bn_lane *l, uint8_t *data, size_t n, int gso_size,
                         const struct sockaddr_storage *from, socklen_t from_len) {
    size_t size = gso_size > 0 && (size_t)gso_size < n ? (size_t)gso_size : n;
    size_t off = 0;
    if (n == 0) { /* an empty datagram */
        bn_lane_rx_counted(l, 0);
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
            bn_punt *first = bn_lane_punt(l, BN_PUNT_PAYLOAD, port, pt, ptlen);
            if (first) {
                first->local_index = index;
                first->size = (uint32_t)len;
                first->from = *from;
                first->from_len = from_len;
            }
        } else if (r == RX_FRAME) {
            bn_punt *first = bn_lane_punt(l, BN_PUNT_FRAME, port, pt, ptlen);
            if (first) {
                first->csum_start = cs;
                first->csum_offset = co;
            }
        }
        if (rest < n)
            bn_lane_punt_raw(l, data + rest, n - rest, size, from, from_len);
        bn_lane_hold_udp(l);
        return;
    }
}
