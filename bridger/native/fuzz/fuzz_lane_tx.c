/* fuzz_lane_tx.c - libFuzzer target for the lane's tap -> WAN path (bn_lane_tx.c, bn_lane_send.c):
 * bn_lane_tap_read (virtio-net header, TCP superframe segmentation, MSS clamp,
 * guard hot path, sealing) and bn_lane_tx_flush_port (udp_fd -1: the sealed
 * datagrams are discarded).
 *
 * One lane, set up once and reset per input; port 0 has an AF_INET endpoint,
 * port 1 an AF_INET6 one; each a send session (fixed keys, created = now).
 *
 * Input: [u8 cfg][u8 cfg2] then tap reads until the input ends, each
 *   [u8 type]  type % 3 == 0: raw read      [u16le len][bytes] (with vnet on,
 *                                           the bytes start with the header)
 *              type % 3 == 1: header+frame  [u8 flags][u8 gso_type][u16le hdr_len]
 *                                           [u16le gso_size][u16le csum_start]
 *                                           [u16le csum_offset][u16le len][frame]
 *              type % 3 == 2: a well-formed TCP superframe built from
 *                             [u8 opts][u8 ip option words][u8 tcp option words]
 *                             [u16le payload][u16le gso_size][u8 tcp flags]
 *                             (opts bit 6: [u16le csum_start][u16le csum_offset])
 *                             [u8 n][n pattern bytes for the payload]
 *   opts: bit 0 IPv6; bits 1-2 VLAN tags (3: two, QinQ outer); bit 3 ECN gso
 *   bit; bit 4 gso_type of the other family; bit 5 no NEEDS_CSUM flag; bit 6
 *   csum fields from the input; bit 7 gso_type 0 (one partial frame).
 * cfg: bit 0 vnet; bits 1-3 guard set (% 5); bit 4 blocked; bit 5 port 1; bit 6
 * batch (no flush between reads); bit 7 a special session state chosen by
 * cfg2 bits 2-3 (expired, counter near REJECT_AFTER_MESSAGES, no endpoint, no
 * session).  cfg2 bits 0-1: fits/room/max_frame set; bit 4: the built frames'
 * destination MAC is known.
 *
 * The read is in l->rbuf as pump_tap puts it, the rest of rbuf ASan-poisoned.
 * Invariants (__builtin_trap): a read not handled (0) changes no counter and
 * no send_counter; a handled one advanced send_counter by the datagrams it
 * sealed (= tx_datagrams = tx_frames growth, = l->ntx when flushed per read);
 * each of them opens under the peer's key with the next counter and holds a
 * FRAME or a FRAME_CSUM whose checksum fields lie in the frame, no longer
 * than the port allows; after a flush l->ntx == 0 and tbuf_used == 0.
 */
#define _GNU_SOURCE
#include <sanitizer/asan_interface.h>

#include "fuzz_common.h"

static bn_lane lane;
static int ready;
static bn_session send_s[2], check_s[2];
static struct sockaddr_storage eps[2];
static socklen_t ep_lens[2];
static bn_guard_cfg guards[FUZZ_GUARDS];
static uint8_t scratch[BN_READ_SIZE];
static uint8_t opened[BN_READ_SIZE];
static const uint8_t DST[6] = {0x02, 0, 0, 0, 0, 0x01}, SRC[6] = {0x02, 0, 0, 0, 0, 0x02};

static void setup(void) {
    fuzz_lane_init(&lane, 0);
    fuzz_guard_sets(guards);
    for (int i = 0; i < 2; i++)
        CHECK(bn_lane_add_port(&lane, -1, 0, NULL) == i);
    fuzz_v4(&eps[0], &ep_lens[0], "192.0.2.1", 51820);
    fuzz_v6(&eps[1], &ep_lens[1], "2001:db8::1", 51820, 0);
    for (int i = 0; i < 2; i++) {
        fuzz_session(&send_s[i], 0x101 + (uint32_t)i, 0x201 + (uint32_t)i, i);
        memset(&check_s[i], 0, sizeof check_s[i]);
        memcpy(check_s[i].recv_key, send_s[i].send_key, 32);
    }
    ready = 1;
}

static void reset(uint8_t cfg, uint8_t cfg2) {
    bn_lane *l = &lane;
    double now = bn_lane_now(l);
    static const int fits[4][4] = {
        {1442, 1438, 1438, 1522}, {200, 196, 196, 1522}, {9000, 8996, 8996, 9018}, {60, 40, 40, 60}};
    const int *f = fits[cfg2 & 3];
    for (int i = 0; i < 2; i++) {
        bn_port *p = &l->ports[i];
        p->vnet = cfg & 1;
        p->guard = guards[((cfg >> 1) & 7) % FUZZ_GUARDS];
        p->blocked = (cfg >> 4) & 1;
        p->fits_plain = f[0];
        p->fits_csum = f[1];
        p->room = f[2];
        p->max_frame = f[3];
        p->send = &send_s[i];
        p->ep = eps[i];
        p->ep_len = ep_lens[i];
        p->held = 0;
        memset(&p->known, 0, sizeof p->known);
        memset(&p->st, 0, sizeof p->st);
        if (cfg2 & 0x10)
            bn_macset_add(&p->known, DST);
        /* storm-bucket tokens Python lent (Lane.lend): 0-1 ARP/ND, 0-3 the rest */
        p->credit[0] = (cfg2 >> 5) & 1;
        p->credit[1] = (cfg2 >> 6) & 3;
        send_s[i].created = now;
        send_s[i].send_counter = 0;
        if (cfg & 0x80) {
            switch ((cfg2 >> 2) & 3) {
            case 0: send_s[i].created = now - BN_REJECT_AFTER_TIME - 1; break;
            case 1: send_s[i].send_counter = BN_REJECT_AFTER_MESSAGES - 1 - (cfg2 >> 5); break;
            case 2: p->ep_len = 0; break;
            default: p->send = NULL; break;
            }
        }
    }
    memset(&l->st, 0, sizeof l->st);
    l->nmaclog = 0;
    l->ntx = 0;
    l->tbuf_used = 0;
}

#define NCOUNT (offsetof(bn_port_stats, tx_first_data) / sizeof(uint64_t))
_Static_assert(offsetof(bn_port_stats, tx_first_data) % sizeof(uint64_t) == 0, "layout");

/* A TCP superframe (or partial frame) from the input's parameters. */
static size_t build_tcp(rd *r, uint8_t *out, size_t cap) {
    int opts = rd_u8(r), ipw = rd_u8(r), tcpw = rd_u8(r);
    long payload = rd_u16(r), gso_size = rd_u16(r);
    int tflags = rd_u8(r);
    if (opts < 0 || ipw < 0 || tcpw < 0 || payload < 0 || gso_size < 0 || tflags < 0)
        return 0;
    long cs = -1, co = -1;
    if (opts & 0x40) {
        cs = rd_u16(r);
        co = rd_u16(r);
        if (cs < 0 || co < 0)
            return 0;
    }
    uint8_t pat[256];
    int np = rd_u8(r);
    size_t npat = np > 0 ? rd_bytes(r, pat, (size_t)np) : 0;
    int v6 = opts & 1, ntags = (opts >> 1) & 3;
    ipw = v6 ? 0 : ipw % 11;
    tcpw %= 11;
    uint8_t *f = out + BN_VNET_HDR_LEN;
    size_t o = 0;
    memcpy(f, DST, 6);
    memcpy(f + 6, SRC, 6);
    o = 12;
    for (int t = 0; t < (ntags == 3 ? 2 : ntags); t++) {
        bn_put_be16(f + o, ntags == 3 && t == 0 ? 0x88A8 : 0x8100);
        bn_put_be16(f + o + 2, (uint16_t)(1 + t));
        o += 4;
    }
    bn_put_be16(f + o, v6 ? 0x86DD : 0x0800);
    o += 2;
    size_t l3 = o, iphl = v6 ? 40 : 20 + 4 * (size_t)ipw, l4 = l3 + iphl;
    size_t thl = 20 + 4 * (size_t)tcpw, hdr = l4 + thl;
    size_t maxpay = cap - BN_VNET_HDR_LEN - hdr;
    if (maxpay > 65000)
        maxpay = 65000;
    size_t pay = (size_t)payload % (maxpay + 1);
    memset(f + l3, 0, hdr - l3);
    if (v6) {
        f[l3] = 0x60;
        bn_put_be16(f + l3 + 4, (uint16_t)(thl + pay > 0xFFFF ? 0xFFFF : thl + pay));
        f[l3 + 6] = 6;
        f[l3 + 7] = 64;
        f[l3 + 8] = 0x20;
        f[l3 + 9] = 0x01;
        f[l3 + 23] = 1;
        f[l3 + 24] = 0x20;
        f[l3 + 25] = 0x01;
        f[l3 + 39] = 2;
    } else {
        f[l3] = (uint8_t)(0x40 | (iphl / 4));
        size_t tot = iphl + thl + pay;
        bn_put_be16(f + l3 + 2, (uint16_t)(tot > 0xFFFF ? 0xFFFF : tot));
        bn_put_be16(f + l3 + 4, 0x1234);
        f[l3 + 6] = 0x40; /* DF */
        f[l3 + 8] = 64;
        f[l3 + 9] = 6;
        bn_put_be32(f + l3 + 12, 0xC0000201);
        bn_put_be32(f + l3 + 16, 0xC0000202);
        for (size_t k = 20; k < iphl; k++)
            f[l3 + k] = 1; /* NOP options */
    }
    bn_put_be16(f + l4, 40000);
    bn_put_be16(f + l4 + 2, 5201);
    bn_put_be32(f + l4 + 4, 0x01020304u + (uint32_t)tflags);
    bn_put_be32(f + l4 + 8, 0x0a0b0c0du);
    f[l4 + 12] = (uint8_t)((thl / 4) << 4);
    f[l4 + 13] = (uint8_t)tflags;
    bn_put_be16(f + l4 + 14, 65535);
    for (size_t k = 20; k < thl; k++)
        f[l4 + k] = 1;
    if (tcpw >= 1) { /* an MSS option first */
        f[l4 + 20] = 2;
        f[l4 + 21] = 4;
        bn_put_be16(f + l4 + 22, 1460);
    }
    for (size_t k = 0; k < pay; k++)
        f[hdr + k] = npat ? pat[k % npat] : (uint8_t)k;
    bn_vnet h;
    memset(&h, 0, sizeof h);
    h.flags = opts & 0x20 ? 0 : 1;
    int gt = (v6 ^ ((opts >> 4) & 1)) ? 4 : 1;
    h.gso_type = (uint8_t)(opts & 0x80 ? 0 : gt | (opts & 8 ? 0x80 : 0));
    h.hdr_len = (uint16_t)hdr;
    h.gso_size = (uint16_t)(gso_size ? gso_size : 1448);
    h.csum_start = (uint16_t)(cs >= 0 ? cs : (long)l4);
    h.csum_offset = (uint16_t)(co >= 0 ? co : 16);
    bn_vnet_encode(&h, out);
    return BN_VNET_HDR_LEN + hdr + pay;
}

static void check_sealed(int port, uint64_t c0, int first, int count, int super) {
    bn_lane *l = &lane;
    const bn_port *p = &l->ports[port];
    CHECK(l->tbuf_used <= l->tbuf_cap);
    for (int j = 0; j < count; j++) {
        int k = first + j;
        size_t off = l->toffs[k], len = l->tlens[k];
        CHECK(len >= BN_TRANSPORT_OVERHEAD + 1 && off + len <= l->tbuf_used);
        const uint8_t *d = l->tbuf + off;
        CHECK(bn_le32(d) == 4 && bn_le32(d + 4) == send_s[port].remote_index);
        uint64_t c = bn_le64(d + 8);
        CHECK(c == c0 + (uint64_t)j);
        long m = bn_open(&check_s[port], c, d, len, opened);
        CHECK(m >= 1 && (size_t)m == len - BN_TRANSPORT_OVERHEAD);
        if (opened[0] == 1) {
            size_t flen = (size_t)m - 1;
            CHECK(count == 1 && flen >= BN_ETH_HLEN);
            CHECK(flen <= (size_t)p->max_frame && flen <= (size_t)p->fits_plain);
        } else {
            CHECK(opened[0] == 5 && m > 5);
            size_t flen = (size_t)m - 5;
            size_t cs = opened[1] | opened[2] << 8, co = opened[3] | opened[4] << 8;
            CHECK(flen >= BN_ETH_HLEN && cs + co + 2 <= flen);
            /* A superframe's checksum is at its TCP header, which for IPv6 is
             * the tap's csum_start as it came (segment_tcp trusts it): it may
             * be in front of MIN_CSUM_START, as in Python. */
            CHECK(super ? co == BN_TCP_CSUM_OFFSET : cs >= 14);
            CHECK(flen <= (size_t)p->fits_csum);
            if (count == 1)
                CHECK(flen <= (size_t)p->max_frame);
        }
    }
}

static void flush_port(int port) {
    bn_lane_tx_flush_port(&lane, port);
    CHECK(lane.ntx == 0 && lane.tbuf_used == 0);
}

static int one_read(rd *r, int port, int batch) {
    int type = rd_u8(r);
    if (type < 0)
        return 0;
    bn_lane *l = &lane;
    bn_port *p = &l->ports[port];
    size_t n;
    switch (type % 3) {
    case 0: {
        long want = rd_u16(r);
        if (want < 0)
            return 0;
        n = rd_bytes(r, scratch, (size_t)want);
        break;
    }
    case 1: {
        int flags = rd_u8(r), gt = rd_u8(r);
        long hl = rd_u16(r), gs = rd_u16(r), cs = rd_u16(r), co = rd_u16(r), want = rd_u16(r);
        if (flags < 0 || gt < 0 || hl < 0 || gs < 0 || cs < 0 || co < 0 || want < 0)
            return 0;
        bn_vnet h = {(uint8_t)flags, (uint8_t)gt, (uint16_t)hl, (uint16_t)gs, (uint16_t)cs,
                     (uint16_t)co};
        bn_vnet_encode(&h, scratch);
        n = BN_VNET_HDR_LEN + rd_bytes(r, scratch + BN_VNET_HDR_LEN, (size_t)want);
        break;
    }
    default:
        n = build_tcp(r, scratch, sizeof scratch);
        if (n == 0)
            return 0;
        break;
    }
    uint8_t *buf = l->rbuf;
    const uint8_t *src = scratch;
    if (!p->vnet && type % 3 != 0) { /* no vnet header on this tap */
        src += BN_VNET_HDR_LEN;
        n -= BN_VNET_HDR_LEN;
    }
    ASAN_POISON_MEMORY_REGION(l->rbuf, l->rbuf_cap);
    ASAN_UNPOISON_MEMORY_REGION(buf, n);
    memcpy(buf, src, n);

    bn_port_stats st0 = p->st;
    uint64_t before[NCOUNT], after[NCOUNT];
    memcpy(before, &p->st, sizeof before);
    bn_session *s = p->send;
    uint64_t c0 = s ? s->send_counter : 0;
    int ntx0 = l->ntx;
    int super = p->vnet && n >= BN_VNET_HDR_LEN && buf[1] != 0; /* gso_type */
    uint32_t lent0 = p->credit[0] + p->credit[1];
    int done = bn_lane_tap_read(l, port, buf, n);
    uint32_t lent1 = p->credit[0] + p->credit[1];
    memcpy(after, &p->st, sizeof after);
    /* A lent token pays for one frame the lane sends: never more than one a
     * read, never one for a frame it leaves to Python, never one made up. */
    CHECK(lent1 <= lent0 && lent0 - lent1 <= 1);
    CHECK(done || lent1 == lent0);
    uint64_t c1 = s ? s->send_counter : 0;
    CHECK(done == 0 || done == 1);
    CHECK(l->ntx >= 0 && l->tbuf_used <= l->tbuf_cap);
    if (!done) {
        CHECK(c1 == c0 && memcmp(before, after, sizeof before) == 0);
        CHECK(l->ntx == ntx0 || l->ntx == 0); /* a superframe's reserve may flush */
    } else {
        CHECK(s != NULL && c1 > c0);
        uint64_t d = c1 - c0;
        const bn_port_stats *a = &st0;
        CHECK(p->st.tx_datagrams - a->tx_datagrams == d && p->st.tx_frames - a->tx_frames == d);
        CHECK(p->st.lan_to_wan.frames - a->lan_to_wan.frames == d);
        CHECK(d <= (uint64_t)l->ntx);
        if (!batch)
            CHECK((uint64_t)l->ntx == d);
        check_sealed(port, c0, l->ntx - (int)d, (int)d, super);
    }
    for (size_t k = 0; k < NCOUNT; k++)
        CHECK(after[k] >= before[k]);
    ASAN_UNPOISON_MEMORY_REGION(l->rbuf, l->rbuf_cap);
    if (!batch)
        flush_port(port);
    return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!ready)
        setup();
    if (size < 2)
        return 0;
    uint8_t cfg = data[0], cfg2 = data[1];
    reset(cfg, cfg2);
    rd r = {data + 2, size - 2};
    int port = (cfg >> 5) & 1, batch = (cfg >> 6) & 1;
    int rounds = 0;
    while (r.n > 0 && rounds++ < 64)
        if (!one_read(&r, port, batch))
            break;
    flush_port(port);
    return 0;
}
