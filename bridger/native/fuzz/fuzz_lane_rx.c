/* fuzz_lane_rx.c - libFuzzer target for the lane's WAN -> tap path (bn_lane_rx.c):
 * bn_lane_udp_receive (GRO split, receiver-index lookup, address check, open,
 * replay window, FRAME / FRAME_CSUM parsing, guard, pending writes) and
 * bn_lane_flush (tap writes, segments re-joined by bn_coalesce).
 *
 * One lane, set up once (bn_lane_init allocates MBs) and reset per input:
 *   port 0: AF_INET endpoint 192.0.2.1:51820, tap = a SEQPACKET socketpair;
 *   port 1: AF_INET6 endpoint [2001:db8::1]:51820 (scope 0), a socketpair;
 *   port 2: AF_INET endpoint 198.51.100.7:4000, tap fd -1 (frames are handed
 *           to Python) or a read-only fd (every tap write fails).
 * Receiver indexes 0x101..0x103 are ports 0..2's sessions, 0x104 is a second
 * session of port 0 older than REJECT_AFTER_TIME.  The "peer" sessions seal
 * with send_key == the lane session's recv_key, so that sealed records get
 * past the AEAD to the parsing behind it.
 *
 * Input: [u8 cfg][u8 cfg2] then receives until the input ends:
 *   [u8 src][u8 nseg][u16le gso] then nseg (1..16) segments, each
 *   [u8 kind]  kind & 3 == 0: raw   [u16le len][bytes]
 *              else: sealed         [u8 peer][u8 ctrmode][u16le ctr][u8 inner]
 *                                   (inner 5: [u16le csum_start][u16le csum_offset])
 *                                   [u16le len][frame bytes]
 *              kind & 4: flip one byte of the sealed datagram (auth failure)
 *              kind & 3 == 2: then [u8 reps]: 8 * reps more copies of it, each
 *              gso bytes, under the next counters (a GRO train)
 * A segment that is not the receive's last is cut or zero-padded to exactly
 * gso bytes (sealed: its plaintext to gso - 32), as GRO would deliver it.
 * cfg: bits 0-2 vnet on ports 0-2; bits 3-4 guard set; bit 5 port 1 blocked;
 * bit 6 port 0 max_frame 200; bit 7 port 2's tap fd read-only instead of -1.
 * cfg2: bit 0 flush after every receive (else when rbuf is full and at the
 * end); bit 1 src & 0x80 passes gso even for one segment.
 *
 * The datagrams are in l->rbuf as pump_udp puts them; rbuf beyond the bytes
 * received is ASan-poisoned, so a read past a datagram is seen.  Invariants
 * (__builtin_trap): counters never decrease within an input; rx_datagrams
 * grows by at most the datagrams received; every punt is of an RX kind with
 * sane port, data and lengths (RAW: lens sum to len; FRAME: checksum fields in
 * the frame, not longer than max_frame; PAYLOAD: not a frame type, size =
 * len + 32); udp_held implies a punt; npend == 0, every npending == 0 and
 * rbuf_used == 0 after a flush; a receive never lands on frames still pending.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sanitizer/asan_interface.h>
#include <signal.h>

#include "fuzz_common.h"

#define NPORTS 3
#define NRX 4
#define NPEERS 6
#define MAX_FRAME 1522

static bn_lane lane;
static int ready;
static int peer_fd[NPORTS] = {-1, -1, -1}; /* the other ends of the tap socketpairs */
static int ro_fd = -1;
static bn_session rx_sess[NRX], peers[NPEERS];
static struct sockaddr_storage eps[NPORTS];
static socklen_t ep_lens[NPORTS];
static bn_guard_cfg guards[FUZZ_GUARDS];
static uint8_t scratch[BN_READ_SIZE];
static uint8_t drain_buf[1 << 17];

/* ---- setup ---- */
static void setup(void) {
    signal(SIGPIPE, SIG_IGN);
    fuzz_lane_init(&lane, 1);
    fuzz_guard_sets(guards);
    for (int i = 0; i < NPORTS; i++) {
        int fd = -1;
        if (i < 2) {
            int sv[2];
            CHECK(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) == 0);
            fd = sv[0];
            peer_fd[i] = sv[1];
        }
        CHECK(bn_lane_add_port(&lane, fd, 0, NULL) == i);
    }
    lane.ports[0].udp_join = 1; /* UDP runs are joined on port 0 (when its vnet is on) */
    ro_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    CHECK(ro_fd >= 0);
    fuzz_v4(&eps[0], &ep_lens[0], "192.0.2.1", 51820);
    fuzz_v6(&eps[1], &ep_lens[1], "2001:db8::1", 51820, 0);
    fuzz_v4(&eps[2], &ep_lens[2], "198.51.100.7", 4000);
    static const int rx_port[NRX] = {0, 1, 2, 0};
    for (int i = 0; i < NRX; i++) {
        bn_session *s = &rx_sess[i];
        fuzz_session(s, 0x101 + (uint32_t)i, 0x201 + (uint32_t)i, i);
        lane.rx[i].index = s->local_index;
        lane.rx[i].port = rx_port[i];
        lane.rx[i].s = s;
        lane.rx[i].ref = NULL;
        /* the peer's session: seals what rx_sess[i] opens */
        bn_session *q = &peers[i];
        memset(q, 0, sizeof *q);
        q->remote_index = s->local_index;
        memcpy(q->send_key, s->recv_key, 32);
    }
    lane.nrx = NRX;
    /* an unknown receiver index; a known one under the wrong key */
    memset(&peers[4], 0, sizeof peers[4]);
    peers[4].remote_index = 0xdeadbeef;
    memset(peers[4].send_key, 0x80, 32);
    peers[5] = peers[0];
    memcpy(peers[5].send_key, rx_sess[1].recv_key, 32);
    ready = 1;
}

static void reset(uint8_t cfg) {
    bn_lane *l = &lane;
    double now = bn_lane_now(l);
    static const int gsel[4][NPORTS] = {{0, 1, 2}, {0, 0, 0}, {3, 3, 3}, {4, 2, 1}};
    for (int i = 0; i < NPORTS; i++) {
        bn_port *p = &l->ports[i];
        p->vnet = (cfg >> i) & 1;
        p->guard = guards[gsel[(cfg >> 3) & 3][i]];
        p->blocked = i == 1 && (cfg & 0x20);
        p->max_frame = i == 0 && (cfg & 0x40) ? 200 : MAX_FRAME;
        p->fits_plain = 1442;
        p->fits_csum = p->room = 1438;
        p->ep = eps[i];
        p->ep_len = ep_lens[i];
        p->send = NULL;
        p->held = 0;
        p->npending = 0;
        memset(&p->known, 0, sizeof p->known);
        memset(&p->st, 0, sizeof p->st);
    }
    l->ports[2].fd = cfg & 0x80 ? ro_fd : -1;
    for (int i = 0; i < NRX; i++) {
        bn_replay_init(&rx_sess[i].replay);
        rx_sess[i].created = i == 3 ? now - BN_REJECT_AFTER_TIME - 20 : now;
    }
    memset(&l->st, 0, sizeof l->st);
    l->hs_tokens = BN_HS_BURST; /* the strangers' handshake bucket starts full */
    l->hs_stamp = now;
    memset(l->hs_sources, 0, sizeof l->hs_sources); /* and every source's */
    /* a mac1 key: initiations and responses mostly fail mac1 (counted);
     * cookie replies reach the handshake queue */
    memset(l->mac1_key, 0x5a, sizeof l->mac1_key);
    l->has_mac1_key = 1;
    l->nmaclog = 0;
    l->udp_held = 0;
    l->npend = 0;
    l->rbuf_used = 0;
    l->err = 0;
    uint64_t junk;
    if (read(l->punt_fd, &junk, sizeof junk) < 0) {
        /* not signalled */
    }
}

/* ---- invariants ---- */
#define NCOUNT (offsetof(bn_port_stats, tx_first_data) / sizeof(uint64_t))
_Static_assert(offsetof(bn_port_stats, tx_first_data) % sizeof(uint64_t) == 0, "layout");

typedef struct {
    uint64_t port[NPORTS][NCOUNT];
    bn_lane_stats lane;
} snap;

static void take(snap *s) {
    for (int i = 0; i < NPORTS; i++)
        memcpy(s->port[i], &lane.ports[i].st, sizeof s->port[i]);
    s->lane = lane.st;
}

static void check_monotone(const snap *a, const snap *b) {
    for (int i = 0; i < NPORTS; i++)
        for (size_t k = 0; k < NCOUNT; k++)
            CHECK(b->port[i][k] >= a->port[i][k]);
    const uint64_t *x = (const uint64_t *)&a->lane, *y = (const uint64_t *)&b->lane;
    for (size_t k = 0; k < sizeof a->lane / sizeof(uint64_t); k++)
        CHECK(y[k] >= x[k]);
}

static void check_punts(void) {
    int count = 0, handshakes = 0;
    for (bn_punt *p = lane.punts; p; p = p->next) {
        count++;
        CHECK(p->kind == BN_PUNT_RAW || p->kind == BN_PUNT_PAYLOAD || p->kind == BN_PUNT_FRAME
              || p->kind == BN_PUNT_HANDSHAKE);
        CHECK((p->data != NULL) == (p->len > 0));
        CHECK(p->len <= BN_READ_SIZE);
        if (p->kind == BN_PUNT_HANDSHAKE) {
            /* a whole message of its type's length, nothing held for it */
            CHECK(p->port == -1 && p->lens == NULL && p->len >= 4);
            uint32_t type = bn_le32(p->data);
            CHECK((type == BN_MSG_INITIATION && p->len == BN_INITIATION_LEN)
                  || (type == BN_MSG_RESPONSE && p->len == BN_RESPONSE_LEN)
                  || (type == BN_MSG_COOKIE_REPLY && p->len == BN_COOKIE_REPLY_LEN));
            CHECK(p->from_len > 0 && p->from_len <= sizeof p->from);
            handshakes++;
        } else if (p->kind == BN_PUNT_RAW) {
            CHECK(p->port == -1 && p->len > 0 && p->count >= 1 && p->lens != NULL);
            size_t sum = 0;
            for (int i = 0; i < p->count; i++) {
                CHECK(p->lens[i] > 0 && p->lens[i] <= p->len);
                sum += p->lens[i];
            }
            CHECK(sum == p->len);
            CHECK(p->from_len > 0 && p->from_len <= sizeof p->from);
        } else {
            CHECK(p->port >= 0 && p->port < NPORTS && p->lens == NULL);
            const bn_port *port = &lane.ports[p->port];
            if (p->kind == BN_PUNT_PAYLOAD) {
                CHECK(p->len > 0 && p->data[0] != 1 && p->data[0] != 5);
                CHECK(p->size == p->len + BN_TRANSPORT_OVERHEAD);
                CHECK(p->local_index >= 0x101 && p->local_index < 0x101 + NRX);
            } else {
                CHECK(p->len <= (size_t)port->max_frame);
                CHECK(p->csum_start == -1 || (p->csum_start >= 14
                      && (size_t)p->csum_start + p->csum_offset + 2 <= p->len));
            }
        }
    }
    CHECK(count < 100000);
    CHECK(handshakes == lane.nhs && lane.nhs <= BN_HS_QUEUE);
}

static void drain(void) {
    for (int i = 0; i < 2; i++) {
        for (;;) {
            ssize_t r = recv(peer_fd[i], drain_buf, sizeof drain_buf, MSG_DONTWAIT);
            if (r < 0)
                break;
            /* a vnet tap write is at least the header */
            if (lane.ports[i].vnet)
                CHECK(r >= BN_VNET_HDR_LEN);
        }
    }
}

static void poison_rbuf(void) {
    ASAN_POISON_MEMORY_REGION(lane.rbuf, lane.rbuf_cap);
}

static void flush(void) {
    snap a, b;
    take(&a);
    bn_lane_flush(&lane);
    take(&b);
    check_monotone(&a, &b);
    CHECK(lane.npend == 0 && lane.rbuf_used == 0);
    for (int i = 0; i < NPORTS; i++)
        CHECK(lane.ports[i].npending == 0);
    poison_rbuf();
    drain();
}

/* The peer seals: inner type + frame (or any plaintext) under peers[k]. */
static size_t build_sealed(rd *r, uint8_t *out, size_t cap, long force_pt) {
    int k = rd_u8(r), mode = rd_u8(r);
    long ctr = rd_u16(r);
    int inner = rd_u8(r);
    if (k < 0 || mode < 0 || ctr < 0 || inner < 0)
        return 0;
    bn_session *q = &peers[k % NPEERS];
    uint64_t c;
    switch (mode & 7) {
    case 1: c = (uint64_t)ctr << 7; break;              /* jumps across blocks */
    case 2: c = BN_REJECT_AFTER_MESSAGES - 1 - (uint64_t)ctr; break;
    case 3: c = BN_REJECT_AFTER_MESSAGES + (uint64_t)ctr; break; /* never opened */
    case 4: c = (uint64_t)ctr << 24; break;
    default: c = (uint64_t)ctr; break;
    }
    static uint8_t pt[BN_READ_SIZE];
    size_t n = 0;
    pt[n++] = (uint8_t)inner;
    if (inner == 5) {
        long cs = rd_u16(r), co = rd_u16(r);
        if (cs < 0 || co < 0)
            return 0;
        bn_put_le32(pt + n, (uint32_t)(cs | co << 16));
        n += 4;
    }
    long len = rd_u16(r);
    if (len < 0)
        return 0;
    n += rd_bytes(r, pt + n, (size_t)len); /* all of it: the records stay in step */
    if (mode & 8)
        n = 0; /* empty plaintext: a keepalive */
    if (cap < BN_TRANSPORT_OVERHEAD)
        return 0;
    if (n > cap - BN_TRANSPORT_OVERHEAD)
        n = cap - BN_TRANSPORT_OVERHEAD;
    if (force_pt >= 0) {
        if ((size_t)force_pt > n)
            memset(pt + n, 0, (size_t)force_pt - n);
        n = (size_t)force_pt;
    }
    if (n + BN_TRANSPORT_OVERHEAD > cap)
        return 0;
    return bn_seal(q, c, pt, n, out);
}

static int one_receive(rd *r, uint8_t cfg2) {
    int src = rd_u8(r), nseg = rd_u8(r);
    long gso = rd_u16(r);
    if (src < 0 || nseg < 0 || gso < 0)
        return 0;
    nseg = nseg % 16 + 1;
    if (nseg > 1 && gso < 1)
        gso = 1;
    size_t n = 0;
    int segs = 0;
    for (int i = 0; i < nseg && r->n > 0; i++) {
        int last = i == nseg - 1;
        size_t cap = BN_READ_SIZE - n;
        if (!last) {
            if ((size_t)gso > cap)
                break;
            cap = (size_t)gso;
        }
        int kind = rd_u8(r);
        if (kind < 0)
            break;
        uint8_t *d = scratch + n;
        size_t len;
        if ((kind & 3) == 0) {
            long want = rd_u16(r);
            if (want < 0)
                break;
            len = rd_bytes(r, d, (size_t)want < cap ? (size_t)want : cap);
            if (!last) {
                memset(d + len, 0, cap - len);
                len = cap;
            }
        } else {
            long force = last ? -1 : (long)cap - BN_TRANSPORT_OVERHEAD;
            if (!last && force < 0)
                force = 0;
            const uint8_t *at = r->p;
            len = build_sealed(r, d, cap, force);
            if (!last && len != cap) {
                memset(d + len, 0, cap - len);
                len = cap;
            }
            if ((kind & 4) && len > 0)
                d[(size_t)(kind >> 3) % len] ^= 0x5a;
            if ((kind & 3) == 2 && len >= BN_TRANSPORT_OVERHEAD && gso > 0) {
                /* repeated: [u8 reps] more copies under the next counters, each
                 * of the receive's segment size (a GRO train of small frames) */
                int reps = rd_u8(r);
                rd again = {at, (size_t)(r->p - at)};
                for (int k = 0; reps > 0 && k < reps * 8 && len > 0; k++) {
                    if (n + len + (size_t)gso > BN_READ_SIZE)
                        break;
                    n += len;
                    segs++;
                    d = scratch + n;
                    /* the same record, the counter field + k + 1 */
                    static uint8_t rec[64 + BN_READ_SIZE];
                    size_t rl = again.n < sizeof rec ? again.n : sizeof rec;
                    memcpy(rec, again.p, rl);
                    if (rl >= 4) {
                        unsigned c = (unsigned)(rec[2] | rec[3] << 8) + (unsigned)k + 1;
                        rec[2] = (uint8_t)c;
                        rec[3] = (uint8_t)(c >> 8);
                    }
                    rd one = {rec, rl};
                    len = build_sealed(&one, d, (size_t)gso, (long)gso - BN_TRANSPORT_OVERHEAD);
                    if (len != (size_t)gso)
                        len = 0;
                }
            }
        }
        n += len;
        segs++;
    }
    if (n == 0)
        return 1;
    struct sockaddr_storage from;
    socklen_t from_len;
    switch (src & 7) {
    case 0: case 1: case 2: from = eps[src & 7]; from_len = ep_lens[src & 7]; break;
    case 3: fuzz_v4(&from, &from_len, "203.0.113.9", 51820); break;
    case 4: fuzz_v6(&from, &from_len, "2001:db8::2", 51820, 0); break;
    case 5: fuzz_v4(&from, &from_len, "192.0.2.1", 51821); break;
    case 6:
        memset(&from, (uint8_t)src, sizeof from);
        from.ss_family = AF_UNIX;
        from_len = (socklen_t)(2 + (src >> 3) % 100);
        break;
    default: fuzz_v6(&from, &from_len, "2001:db8::1", 51820, 1); break;
    }
    int gso_size = segs > 1 || ((cfg2 & 2) && (src & 0x80)) ? (int)gso : 0;

    bn_lane *l = &lane;
    if (l->rbuf_used + BN_READ_SIZE > l->rbuf_cap)
        flush();
    uint8_t *buf = l->rbuf + l->rbuf_used;
    /* The frames still pending (they point into rbuf) must not be where this
     * receive is about to land. */
    for (int i = 0; i < l->npend; i++)
        CHECK(l->pend[i].data + l->pend[i].len <= buf || l->pend[i].data >= buf + BN_READ_SIZE);
    ASAN_UNPOISON_MEMORY_REGION(buf, n);
    memcpy(buf, scratch, n);
    l->rbuf_used += (n + 15) & ~(size_t)15;
    snap a, b;
    take(&a);
    int had_punts = l->punts != NULL;
    bn_lane_udp_receive(l, buf, n, gso_size, &from, from_len);
    take(&b);
    check_monotone(&a, &b);
    size_t dgrams = gso_size > 0 && (size_t)gso_size < n ? (n + (size_t)gso_size - 1) / (size_t)gso_size : 1;
    CHECK(b.lane.rx_datagrams - a.lane.rx_datagrams <= dgrams);
    CHECK(l->npend >= 0 && l->npend <= 2048);
    int sum = 0;
    for (int i = 0; i < NPORTS; i++)
        sum += l->ports[i].npending;
    CHECK(sum == l->npend);
    check_punts();
    if (l->udp_held) {
        CHECK(l->punts != NULL);
        (void)had_punts;
        /* What the binding and Python do: flush, take the punts, give back. */
        flush();
        fuzz_free_punts(l);
        bn_lane_release(l, -1);
        CHECK(!l->udp_held);
    }
    if (cfg2 & 1)
        flush();
    return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!ready)
        setup();
    if (size < 2)
        return 0;
    rd r = {data + 2, size - 2};
    reset(data[0]);
    poison_rbuf();
    int rounds = 0;
    while (r.n > 0 && rounds++ < 64)
        if (!one_receive(&r, data[1]))
            break;
    flush();
    check_punts();
    CHECK(lane.udp_held == 0 || lane.punts != NULL);
    fuzz_free_punts(&lane);
    bn_lane_release(&lane, -1);
    ASAN_UNPOISON_MEMORY_REGION(lane.rbuf, lane.rbuf_cap);
    return 0;
}
