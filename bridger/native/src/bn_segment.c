/* bn_segment.c - the Internet checksum, the virtio-net header and TCP
 * segmentation / coalescing: the C twins of bridger/protocol/checksum.py,
 * bridger/fastpath/vnet.py and bridger/fastpath/segment.py, byte for byte.
 *
 * Every function reads only inside [p, p + n) of its inputs and writes only
 * inside the caller's output; nothing allocates.  Where the Python reference
 * would raise struct.error (a header field that does not fit 16 bits, which
 * only odd csum_start values inside an IPv6 header or huge max_frame values
 * lead to), the C returns the SegmentError code.
 */
#include "bn.h"

#include <string.h>

#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define VLAN_HLEN 4
#define MAX_VLAN_TAGS 2
#define IPPROTO_TCP_ 6
#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_PSH 0x08
#define TCP_ACK 0x10
#define TCP_CWR 0x80
#define JOINABLE (TCP_ACK | TCP_PSH | TCP_FIN)
#define MAX_SYN_FRAME (BN_ETH_HLEN + 2 * VLAN_HLEN + 40 + 60)
#define TCPOPT_EOL 0
#define TCPOPT_NOP 1
#define TCPOPT_MSS 2
#define GSO_TCPV4 1
#define GSO_TCPV6 4
#define GSO_ECN 0x80
#define VNET_NEEDS_CSUM 1

/* ---- checksum ------------------------------------------------------------ */

/* Sum of little-endian 32-bit words in four 64-bit accumulators, folded at
 * the end: 2^32 == 1 mod 0xFFFF, so the sum is congruent to the whole buffer
 * read as a little-endian number, whose fold is the byte swap of the
 * big-endian one (RFC 1071 1.2.B). */
uint32_t bn_ones_sum(const uint8_t *p, size_t n) {
    uint64_t a = 0, b = 0, c = 0, d = 0;
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        a += bn_le32(p + i);
        b += bn_le32(p + i + 4);
        c += bn_le32(p + i + 8);
        d += bn_le32(p + i + 12);
    }
    for (; i + 4 <= n; i += 4)
        a += bn_le32(p + i);
    /* i is a multiple of 4 here: even offsets weigh 1, odd ones 256. */
    for (; i < n; i++)
        b += (i & 1) ? (uint64_t)p[i] << 8 : p[i];
    /* Each accumulator < 2^62 for any n < 2^60: no overflow in the sum. */
    uint64_t s = (a & 0xFFFFFFFF) + (a >> 32) + (b & 0xFFFFFFFF) + (b >> 32)
                 + (c & 0xFFFFFFFF) + (c >> 32) + (d & 0xFFFFFFFF) + (d >> 32);
    while (s > 0xFFFF)
        s = (s & 0xFFFF) + (s >> 16);
    return (uint32_t)(((s & 0xFF) << 8) | (s >> 8));
}

int bn_complete_checksum(uint8_t *frame, size_t len, size_t csum_start, size_t csum_offset) {
    if (csum_start > len || csum_offset > len - csum_start || len - csum_start - csum_offset < 2)
        return -1;
    uint32_t total = bn_ones_sum(frame + csum_start, len - csum_start);
    uint16_t check = (uint16_t)(~total & 0xFFFF);
    if (check == 0)
        check = 0xFFFF;
    bn_put_be16(frame + csum_start + csum_offset, check);
    return 0;
}

/* ---- virtio-net header ---------------------------------------------------- */

static uint16_t le16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static void put_le16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }

int bn_vnet_decode(const uint8_t *p, size_t n, bn_vnet *out) {
    if (n < BN_VNET_HDR_LEN)
        return -1;
    out->flags = p[0];
    out->gso_type = p[1];
    out->hdr_len = le16(p + 2);
    out->gso_size = le16(p + 4);
    out->csum_start = le16(p + 6);
    out->csum_offset = le16(p + 8);
    return 0;
}

void bn_vnet_encode(const bn_vnet *h, uint8_t out[BN_VNET_HDR_LEN]) {
    out[0] = h->flags;
    out[1] = h->gso_type;
    put_le16(out + 2, h->hdr_len);
    put_le16(out + 4, h->gso_size);
    put_le16(out + 6, h->csum_start);
    put_le16(out + 8, h->csum_offset);
}

/* vnet.csum_hdr */
static void csum_hdr(uint8_t out[BN_VNET_HDR_LEN], uint16_t csum_start, uint16_t csum_offset) {
    bn_vnet h = {VNET_NEEDS_CSUM, 0, 0, 0, csum_start, csum_offset};
    bn_vnet_encode(&h, out);
}

/* ---- frame layout ----------------------------------------------------------- */

typedef struct {
    size_t l3, l4, hdrlen;
    int v4;
} layout;

static uint32_t fold(uint64_t total) {
    while (total > 0xFFFF)
        total = (total & 0xFFFF) + (total >> 16);
    return (uint32_t)total;
}

/* segment.l3_offset_untrusted: the network header's offset (and *ethertype)
 * behind up to two VLAN tags, or -1 (SegmentError). */
static long l3_offset(const uint8_t *f, size_t len, uint16_t *ethertype) {
    size_t off = BN_ETH_HLEN - 2;
    for (int i = 0; i < MAX_VLAN_TAGS + 1; i++) {
        if (len < off + 2)
            return -1;
        uint16_t et = bn_be16(f + off);
        if (et != 0x8100 && et != 0x88A8 && et != 0x9100) {
            *ethertype = et;
            return (long)(off + 2);
        }
        off += VLAN_HLEN;
    }
    return -1;
}

/* segment._tcp_layout (with l3_offset_untrusted); csum_start < 0 is None.
 * 0, or -1 where Python raises SegmentError. */
static int tcp_layout(const uint8_t *f, size_t len, long csum_start, layout *out) {
    uint16_t ethertype;
    long at = l3_offset(f, len, &ethertype);
    if (at < 0)
        return -1;
    size_t l3 = (size_t)at, l4;
    int v4;
    if (ethertype == ETH_P_IP) {
        if (len < l3 + 20 || f[l3] >> 4 != 4 || f[l3 + 9] != IPPROTO_TCP_)
            return -1;
        l4 = l3 + (size_t)(f[l3] & 0x0F) * 4;
        v4 = 1;
        if (csum_start >= 0 && (size_t)csum_start != l4)
            return -1;
    } else if (ethertype == ETH_P_IPV6) {
        if (len < l3 + 40 || f[l3] >> 4 != 6)
            return -1;
        if (csum_start < 0) {
            if (f[l3 + 6] != IPPROTO_TCP_)
                return -1;
            csum_start = (long)(l3 + 40);
        }
        l4 = (size_t)csum_start;
        v4 = 0;
    } else {
        return -1;
    }
    if (len < l4 + 20)
        return -1;
    size_t hdrlen = l4 + (size_t)(f[l4 + 12] >> 4) * 4;
    if (hdrlen < l4 + 20 || hdrlen > len)
        return -1;
    out->l3 = l3;
    out->l4 = l4;
    out->hdrlen = hdrlen;
    out->v4 = v4;
    return 0;
}

/* segment._addr_sum (len >= l3 + 20 / l3 + 40 by tcp_layout). */
static uint32_t addr_sum(const uint8_t *f, const layout *L) {
    return L->v4 ? bn_ones_sum(f + L->l3 + 12, 8) + IPPROTO_TCP_
                 : bn_ones_sum(f + L->l3 + 8, 32) + IPPROTO_TCP_;
}

/* ---- segmentation ------------------------------------------------------------ */

int bn_segment_tcp(const uint8_t *frame, size_t len, const bn_vnet *hdr, int max_frame,
                   uint8_t *out, size_t out_cap, size_t headroom, size_t tailroom,
                   size_t *offs, uint16_t *lens, int max_segs, int *csum_start) {
    layout L;
    long start = (hdr->flags & VNET_NEEDS_CSUM) ? (long)hdr->csum_start : -1;
    if (tcp_layout(frame, len, start, &L) < 0)
        return -1;
    const size_t l3 = L.l3, l4 = L.l4, hdrlen = L.hdrlen;
    /* mss = min(gso_size or max_frame, max_frame - hdrlen), as 64-bit signed. */
    int64_t mss = hdr->gso_size ? (int64_t)hdr->gso_size : (int64_t)max_frame;
    int64_t room = (int64_t)max_frame - (int64_t)hdrlen;
    if (room < mss)
        mss = room;
    if (mss <= 0)
        return -1;
    size_t payload_len = len - hdrlen;
    size_t umss = (size_t)mss;
    size_t nsegs = payload_len == 0 ? 1 : payload_len / umss + (payload_len % umss != 0);
    size_t n_first = payload_len < umss ? payload_len : umss;
    size_t n_last = payload_len - (nsegs - 1) * umss;
    /* The IP length field of every segment must fit 16 bits (else Python's
     * struct.pack raises): ip_fixed + n for the largest and smallest n. */
    int64_t ip_fixed = L.v4 ? (int64_t)(hdrlen - l3) : (int64_t)hdrlen - (int64_t)l3 - 40;
    if (ip_fixed + (int64_t)n_first > 0xFFFF || ip_fixed + (int64_t)n_last < 0)
        return -1;
    /* An IPv6 csum_start so far in front that the headers end before the
     * payload length field (Python: pack_into outside its header copy). */
    if (!L.v4 && hdrlen < l3 + 6)
        return -1;
    /* Room in the caller's buffers (else the caller leaves it to Python). */
    if (hdrlen + n_first > 0xFFFF || nsegs > (size_t)(max_segs < 0 ? 0 : max_segs))
        return -2;
    size_t at = 0;
    for (size_t i = 0; i < nsegs; i++) {
        size_t seg = hdrlen + (i + 1 == nsegs ? n_last : n_first);
        if (out_cap - at < headroom)
            return -2;
        at += headroom;
        if (out_cap - at < seg || out_cap - at - seg < tailroom)
            return -2;
        at += seg + tailroom;
    }

    uint8_t *h0 = out + headroom;
    memcpy(h0, frame, hdrlen);
    uint32_t ip_base = 0;
    if (L.v4) {
        memset(h0 + l3 + 2, 0, 4);
        memset(h0 + l3 + 10, 0, 2);
        ip_base = bn_ones_sum(h0 + l3, l4 - l3);
    }
    uint64_t base = (uint64_t)addr_sum(frame, &L) + (hdrlen - l4);
    uint16_t ip_id = bn_be16(frame + l3 + 4);
    uint32_t seq = bn_be32(frame + l4 + 4);
    uint8_t flags = frame[l4 + 13];
    uint8_t first_flags = flags & (uint8_t)~(TCP_FIN | TCP_PSH);
    uint8_t middle_flags = first_flags & (uint8_t)~TCP_CWR;
    size_t pos = headroom, offset = 0;
    for (size_t i = 0; i < nsegs; i++) {
        int last = i + 1 == nsegs;
        size_t n = last ? n_last : n_first;
        uint8_t *h = out + pos;
        if (i > 0)
            memcpy(h, h0, hdrlen);
        if (L.v4) {
            uint16_t ident = (uint16_t)(ip_id + i);
            bn_put_be16(h + l3 + 2, (uint16_t)(ip_fixed + (int64_t)n));
            bn_put_be16(h + l3 + 4, ident);
            bn_put_be16(h + l3 + 10,
                         (uint16_t)~fold((uint64_t)ip_base + (uint64_t)ip_fixed + n + ident));
        } else {
            bn_put_be16(h + l3 + 4, (uint16_t)(ip_fixed + (int64_t)n));
        }
        bn_put_be32(h + l4 + 4, (uint32_t)(seq + offset));
        uint8_t f = last ? flags : first_flags;
        h[l4 + 13] = i == 0 ? f : last ? (uint8_t)(f & ~TCP_CWR) : middle_flags;
        bn_put_be16(h + l4 + BN_TCP_CSUM_OFFSET, (uint16_t)fold(base + n));
        memcpy(h + hdrlen, frame + hdrlen + offset, n);
        offs[i] = pos;
        lens[i] = (uint16_t)(hdrlen + n);
        pos += hdrlen + n + tailroom + headroom;
        offset += n;
    }
    *csum_start = (int)l4;
    return (int)nsegs;
}

/* ---- MSS clamping ------------------------------------------------------------- */

/* segment._may_be_tcp */
static int may_be_tcp(const uint8_t *f, size_t len) {
    if (len < 14)
        return 0;
    uint16_t t = bn_be16(f + 12);
    if (t == ETH_P_IP)
        return len > 23 && f[23] == IPPROTO_TCP_;
    if (t == ETH_P_IPV6)
        return len > 20 && f[20] != 17 && f[20] != 58;
    return t == 0x8100 || t == 0x88A8 || t == 0x9100;
}

/* segment._set_tcp_csum */
static void set_tcp_csum(uint8_t *f, size_t len, const layout *L) {
    size_t l3 = L->l3, l4 = L->l4;
    size_t ip_len = L->v4 ? bn_be16(f + l3 + 2) : 40 + (size_t)bn_be16(f + l3 + 4);
    size_t end = l3 + ip_len < len ? l3 + ip_len : len;
    memset(f + l4 + BN_TCP_CSUM_OFFSET, 0, 2);
    /* end - l4 may be negative (an IPv4 length shorter than its header). */
    int64_t total = (int64_t)addr_sum(f, L) + ((int64_t)end - (int64_t)l4)
                    + (end > l4 ? (int64_t)bn_ones_sum(f + l4, end - l4) : 0);
    while (total > 0xFFFF)
        total = (total & 0xFFFF) + (total >> 16);
    uint16_t check = (uint16_t)(~(uint64_t)total & 0xFFFF);
    bn_put_be16(f + l4 + BN_TCP_CSUM_OFFSET, check ? check : 0xFFFF);
}

int bn_clamp_mss(uint8_t *frame, size_t len, int room, int partial) {
    if (len > MAX_SYN_FRAME || !may_be_tcp(frame, len))
        return 0;
    layout L;
    if (tcp_layout(frame, len, -1, &L) < 0)
        return 0;
    size_t l4 = L.l4, hdrlen = L.hdrlen;
    if (!(frame[l4 + 13] & TCP_SYN))
        return 0;
    long limit = (long)room - (long)l4 - 20;
    size_t i = l4 + 20;
    while (i < hdrlen) {
        uint8_t kind = frame[i];
        if (kind == TCPOPT_EOL)
            return 0;
        if (kind == TCPOPT_NOP) {
            i++;
            continue;
        }
        if (i + 1 >= hdrlen || frame[i + 1] < 2)
            return 0;
        if (kind == TCPOPT_MSS && frame[i + 1] == 4 && i + 4 <= hdrlen) {
            uint16_t mss = bn_be16(frame + i + 2);
            /* limit > 0xFFFF: Python's struct.pack raises (room > 65535). */
            if (mss <= limit || limit <= 0 || limit > 0xFFFF)
                return 0;
            bn_put_be16(frame + i + 2, (uint16_t)limit);
            if (!partial)
                set_tcp_csum(frame, len, &L);
            return 1;
        }
        i += frame[i + 1];
    }
    return 0;
}

/* ---- coalescing ---------------------------------------------------------------- */

/* segment._Run */
typedef struct {
    uint32_t first, count;
    layout L;
    size_t size, total;
    uint32_t next_seq;
    int open;
    uint8_t last_flags;
} run_t;

static int mem_eq(const uint8_t *a, const uint8_t *b, size_t from, size_t to) {
    return to <= from || memcmp(a + from, b + from, to - from) == 0;
}

/* _flow_key(a) == _flow_key(b) for two frames longer than L->hdrlen; each
 * slice of the key has a length fixed by the layout, so slice by slice. */
static int same_flow(const uint8_t *a, const uint8_t *b, const layout *L) {
    size_t l3 = L->l3, l4 = L->l4;
    int ip = L->v4 ? mem_eq(a, b, 0, l3 + 2) && mem_eq(a, b, l3 + 6, l3 + 10)
                         && mem_eq(a, b, l3 + 12, l4)
                   : mem_eq(a, b, 0, l3 + 4) && mem_eq(a, b, l3 + 6, l4);
    return ip && mem_eq(a, b, l4, l4 + 4) && mem_eq(a, b, l4 + 8, l4 + 13)
           && mem_eq(a, b, l4 + 14, l4 + 16) && mem_eq(a, b, l4 + 18, L->hdrlen);
}

static void emit_single(bn_out_frame *o, const bn_frame_in *f, uint32_t index) {
    if (f->csum_start < 0)
        memset(o->vnet, 0, BN_VNET_HDR_LEN);
    else
        csum_hdr(o->vnet, (uint16_t)f->csum_start, f->csum_offset);
    o->head_len = 0;
    o->first = index;
    o->count = 1;
    o->nbytes = f->len;
}

/* _Run.build; returns how many entries of o it wrote (1, or count: see below). */
static int build(bn_out_frame *o, const bn_frame_in *frames, const run_t *r) {
    const bn_frame_in *fi = &frames[r->first];
    const uint8_t *frame = fi->data;
    size_t l3 = r->L.l3, l4 = r->L.l4, hdrlen = r->L.hdrlen;
    /* Python's build would raise struct.error for an IPv6 csum_start so far in
     * front that the payload length field is outside the headers or negative;
     * such a layout puts the sequence number inside the flow key, so no two
     * frames join (count == 1), but should they, the C writes them one by one. */
    if (r->count == 1
        || (!r->L.v4 && (hdrlen < l3 + 6 || hdrlen + r->total < l3 + 40))) {
        for (uint32_t i = 0; i < r->count; i++) {
            csum_hdr(o[i].vnet, (uint16_t)l4, BN_TCP_CSUM_OFFSET);
            o[i].head_len = 0;
            o[i].first = r->first + i;
            o[i].count = 1;
            o[i].nbytes = frames[r->first + i].len;
        }
        return (int)r->count;
    }
    uint8_t *h = o->head; /* hdrlen <= BN_MAX_JOIN_HEAD: runs start only then */
    memcpy(h, frame, hdrlen);
    size_t total = r->total;
    if (r->L.v4) {
        bn_put_be16(h + l3 + 2, (uint16_t)(hdrlen - l3 + total));
        h[l3 + 10] = h[l3 + 11] = 0;
        bn_put_be16(h + l3 + 10, (uint16_t)~bn_ones_sum(h + l3, l4 - l3));
    } else {
        bn_put_be16(h + l3 + 4, (uint16_t)(hdrlen - l3 - 40 + total));
    }
    h[l4 + 13] = frame[l4 + 13] | (r->last_flags & (TCP_FIN | TCP_PSH));
    uint64_t pseudo = (uint64_t)addr_sum(frame, &r->L) + (hdrlen - l4) + total;
    bn_put_be16(h + l4 + BN_TCP_CSUM_OFFSET, (uint16_t)fold(pseudo));
    uint8_t gso = r->L.v4 ? GSO_TCPV4 : GSO_TCPV6;
    if (frame[l4 + 13] & TCP_CWR)
        gso |= GSO_ECN;
    bn_vnet vh = {VNET_NEEDS_CSUM, gso, (uint16_t)hdrlen, (uint16_t)r->size, (uint16_t)l4,
                  BN_TCP_CSUM_OFFSET};
    bn_vnet_encode(&vh, o->vnet);
    o->head_len = (uint16_t)hdrlen;
    o->first = r->first;
    o->count = r->count;
    o->nbytes = (uint32_t)(r->count * hdrlen + total);
    return 1;
}

/* ---- UDP runs (segment._UdpRun) ------------------------------------------------ */

#define UDP_CSUM_OFFSET 6
#define IPPROTO_UDP_ 17
#define GSO_UDP_L4 5

typedef struct {
    uint32_t first, count;
    layout L;
    size_t size, total;
    uint16_t next_id;
    int open;
} urun_t;

/* segment._udp_layout: 0, or -1 where Python returns None. */
static int udp_layout(const uint8_t *f, size_t len, long csum_start, layout *out) {
    uint16_t ethertype;
    long at = l3_offset(f, len, &ethertype);
    if (at < 0)
        return -1;
    size_t l3 = (size_t)at, l4;
    int v4;
    if (ethertype == ETH_P_IP) {
        if (len < l3 + 20 || f[l3] >> 4 != 4 || (f[l3] & 0x0F) < 5 || f[l3 + 9] != IPPROTO_UDP_
            || (bn_be16(f + l3 + 6) & 0x3FFF))
            return -1;
        l4 = l3 + (size_t)(f[l3] & 0x0F) * 4;
        v4 = 1;
    } else if (ethertype == ETH_P_IPV6) {
        if (len < l3 + 40 || f[l3] >> 4 != 6 || f[l3 + 6] != IPPROTO_UDP_)
            return -1;
        l4 = l3 + 40;
        v4 = 0;
    } else {
        return -1;
    }
    if (csum_start < 0 || (size_t)csum_start != l4 || len < l4 + 8)
        return -1;
    if (bn_be16(f + l4 + 4) != len - l4)
        return -1;
    out->l3 = l3;
    out->l4 = l4;
    out->hdrlen = l4 + 8;
    out->v4 = v4;
    return 0;
}

static int udp_take(urun_t *r, const bn_frame_in *frames, const bn_frame_in *fi) {
    size_t l3 = r->L.l3, l4 = r->L.l4, hdrlen = r->L.hdrlen;
    const uint8_t *f = fi->data, *a = frames[r->first].data;
    size_t len = fi->len;
    if (!r->open || fi->csum_start < 0 || (size_t)fi->csum_start != l4 || len <= hdrlen)
        return 0;
    size_t size = len - hdrlen;
    if (size > r->size || r->count >= BN_MAX_SEGMENTS
        || r->total + size + hdrlen > BN_MAX_SUPERFRAME)
        return 0;
    int same = r->L.v4 ? mem_eq(f, a, 0, l3 + 2) && mem_eq(f, a, l3 + 6, l3 + 10)
                             && mem_eq(f, a, l3 + 12, l4 + 4) && bn_be16(f + l3 + 4) == r->next_id
                       : mem_eq(f, a, 0, l3 + 4) && mem_eq(f, a, l3 + 6, l4 + 4);
    if (!same || bn_be16(f + l4 + 4) != len - l4)
        return 0;
    r->total += size;
    r->count++;
    r->next_id = (uint16_t)(r->next_id + 1);
    r->open = size == r->size;
    return 1;
}

static int udp_build(bn_out_frame *o, const bn_frame_in *frames, const urun_t *r) {
    const uint8_t *frame = frames[r->first].data;
    size_t l3 = r->L.l3, l4 = r->L.l4, hdrlen = r->L.hdrlen, total = r->total;
    if (r->count == 1) {
        csum_hdr(o->vnet, (uint16_t)l4, UDP_CSUM_OFFSET);
        o->head_len = 0;
        o->first = r->first;
        o->count = 1;
        o->nbytes = frames[r->first].len;
        return 1;
    }
    uint8_t *h = o->head; /* hdrlen <= BN_MAX_JOIN_HEAD: runs start only then */
    memcpy(h, frame, hdrlen);
    uint32_t addrs;
    if (r->L.v4) {
        bn_put_be16(h + l3 + 2, (uint16_t)(hdrlen - l3 + total));
        h[l3 + 10] = h[l3 + 11] = 0;
        bn_put_be16(h + l3 + 10, (uint16_t)~bn_ones_sum(h + l3, l4 - l3));
        addrs = bn_ones_sum(frame + l3 + 12, 8);
    } else {
        bn_put_be16(h + l3 + 4, (uint16_t)(8 + total));
        addrs = bn_ones_sum(frame + l3 + 8, 32);
    }
    bn_put_be16(h + l4 + 4, (uint16_t)(8 + total));
    bn_put_be16(h + l4 + UDP_CSUM_OFFSET,
                (uint16_t)fold((uint64_t)addrs + IPPROTO_UDP_ + 8 + total));
    bn_vnet vh = {VNET_NEEDS_CSUM, GSO_UDP_L4, (uint16_t)hdrlen, (uint16_t)r->size,
                  (uint16_t)l4, UDP_CSUM_OFFSET};
    bn_vnet_encode(&vh, o->vnet);
    o->head_len = (uint16_t)hdrlen;
    o->first = r->first;
    o->count = r->count;
    o->nbytes = (uint32_t)(r->count * hdrlen + total);
    return 1;
}

int bn_coalesce(const bn_frame_in *frames, int n, bn_out_frame *out) {
    return bn_coalesce2(frames, n, out, 0);
}

int bn_coalesce2(const bn_frame_in *frames, int n, bn_out_frame *out, int udp) {
    int k = 0;
    run_t run;
    int have = 0;
    urun_t urun;
    int uhave = 0;
    for (int index = 0; index < n; index++) {
        const bn_frame_in *fi = &frames[index];
        const uint8_t *frame = fi->data;
        size_t len = fi->len;
        if (udp && fi->csum_start >= 0 && fi->csum_offset == UDP_CSUM_OFFSET) {
            if (have) {
                k += build(&out[k], frames, &run);
                have = 0;
            }
            if (uhave && udp_take(&urun, frames, fi))
                continue;
            if (uhave) {
                k += udp_build(&out[k], frames, &urun);
                uhave = 0;
            }
            layout L;
            if (udp_layout(frame, len, fi->csum_start, &L) < 0 || len <= L.hdrlen
                || L.hdrlen > BN_MAX_JOIN_HEAD) {
                emit_single(&out[k++], fi, (uint32_t)index);
                continue;
            }
            urun.first = (uint32_t)index;
            urun.count = 1;
            urun.L = L;
            urun.size = len - L.hdrlen;
            urun.total = urun.size;
            urun.next_id = L.v4 ? (uint16_t)(bn_be16(frame + L.l3 + 4) + 1) : 0;
            urun.open = 1;
            uhave = 1;
            continue;
        }
        if (uhave) {
            k += udp_build(&out[k], frames, &urun);
            uhave = 0;
        }
        if (fi->csum_start < 0 || fi->csum_offset != BN_TCP_CSUM_OFFSET) {
            if (have) {
                k += build(&out[k], frames, &run);
                have = 0;
            }
            emit_single(&out[k++], fi, (uint32_t)index);
            continue;
        }
        if (have && (size_t)fi->csum_start == run.L.l4 && len > run.L.hdrlen) {
            size_t l4 = run.L.l4, hdrlen = run.L.hdrlen;
            uint8_t flags = frame[l4 + 13];
            size_t size = len - hdrlen;
            if (run.open && size <= run.size && !(flags & ~JOINABLE)
                && run.total + size + hdrlen <= BN_MAX_SUPERFRAME
                && run.count < BN_MAX_SEGMENTS && bn_be32(frame + l4 + 4) == run.next_seq
                && same_flow(frame, frames[run.first].data, &run.L)) {
                run.count++;
                run.total += size;
                run.next_seq = (uint32_t)(run.next_seq + size);
                run.last_flags = flags;
                run.open = !(flags & (TCP_FIN | TCP_PSH)) && size == run.size;
                continue;
            }
        }
        layout L;
        int bad = tcp_layout(frame, len, fi->csum_start, &L) < 0;
        if (have) {
            k += build(&out[k], frames, &run);
            have = 0;
        }
        if (bad) {
            emit_single(&out[k++], fi, (uint32_t)index);
            continue;
        }
        uint8_t flags = frame[L.l4 + 13];
        size_t size = len - L.hdrlen;
        /* A header longer than BN_MAX_JOIN_HEAD starts no run (Python's would). */
        if (size && !(flags & ~(JOINABLE | TCP_CWR)) && L.hdrlen <= BN_MAX_JOIN_HEAD) {
            run.first = (uint32_t)index;
            run.count = 1;
            run.L = L;
            run.size = size;
            run.total = size;
            run.next_seq = (uint32_t)(bn_be32(frame + L.l4 + 4) + size);
            run.open = !(flags & (TCP_FIN | TCP_PSH));
            run.last_flags = flags;
            have = 1;
        } else {
            emit_single(&out[k++], fi, (uint32_t)index);
        }
    }
    if (have)
        k += build(&out[k], frames, &run);
    if (uhave)
        k += udp_build(&out[k], frames, &urun);
    return k;
}
