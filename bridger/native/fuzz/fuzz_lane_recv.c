/* fuzz_lane_recv.c - libFuzzer target for the UDP socket's receive side
 * (bn_lane_recv.c) without a socket: what recvmmsg returns (flags, names,
 * control messages, lengths) through bn_lane_recv_batch, and what the error
 * queue returns through bn_lane_errq_message and bn_lane_mtu_due.
 *
 * One lane (fuzz_common.h), reset per input: port 0 has the endpoint
 * 192.0.2.1:51820, port 1 [2001:db8::1]:51820, port 2 is unused; transport
 * index 0x77 is Python's (a datagram to it is handed over with the socket,
 * so the rest of a batch goes to Python as received).
 *
 * Input: [u8 cfg] then operations until the input ends, each [u8 op]:
 *   op % 3 == 0: a recvmmsg result: [u8 got] (% 17) messages, each
 *       [u8 flags] bit 0 MSG_TRUNC, bit 1 MSG_CTRUNC, bit 2 msg_len past the
 *                  buffer, bit 3 no iovec
 *       [u8 name]  % 6: the port 0 / port 1 endpoint, a stranger, length 0,
 *                  a length past sockaddr_storage, [u8 len] random bytes
 *       [u8 ctl]   % 4: none; a UDP_GRO message [u16le gso]; [u8 n] raw
 *                  control bytes (any lengths); a GRO message then [u8 n] raw
 *       [u16le len][datagram bytes] (kind byte 0x77 as the first byte of a
 *                  transport header makes it Python's index)
 *   op % 3 == 1: an error-queue message: [u8 name] as above, [u8 ctl] % 3:
 *       a sock_extended_err [u8 errno sel][u8 origin][u16le info][u8 level],
 *       [u8 n] raw control bytes, none; [u8 ms] of time passing first
 *   op % 3 == 2: [u8 ms] of time passing, then bn_lane_mtu_due.
 * cfg: bit 0 flush after each batch; bit 1 start with the socket held.
 *
 * Every buffer (datagrams, control messages, names) is malloc'd to exactly
 * its size, so that ASan sees any read past what the kernel returned.
 * Invariants (__builtin_trap): udp_truncated grows by exactly the cut
 * receives; rx_datagrams by at most the datagrams received; every hand-over
 * is of a receive kind with sane lengths and a name no longer than
 * sockaddr_storage; udp_errors grows by one per error message; path-MTU
 * reports name a used port and its endpoint, an MTU in 1..65535, at most one
 * per port and kind per delivery, deliveries at least BN_MTU_INTERVAL apart;
 * nothing waits once bn_lane_mtu_due returns -1.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <time.h>
#include <linux/errqueue.h>
#include <sanitizer/asan_interface.h>

#include "fuzz_common.h"

#define MAX_MSGS 16
#define SLOT 2048

static bn_lane lane;
static int ready;
static bn_session sess[2];
static struct sockaddr_storage eps[2];
static socklen_t ep_lens[2];
static double now, last_delivery;

static void setup(void) {
    fuzz_lane_init(&lane, 0);
    fuzz_v4(&eps[0], &ep_lens[0], "192.0.2.1", 51820);
    fuzz_v6(&eps[1], &ep_lens[1], "2001:db8::1", 51820, 0);
    for (int i = 0; i < 2; i++) {
        CHECK(bn_lane_add_port(&lane, -1, 0, NULL) == i);
        fuzz_session(&sess[i], 0x101 + (uint32_t)i, 0x201 + (uint32_t)i, i);
    }
    ready = 1;
}

static void reset(uint8_t cfg) {
    bn_lane *l = &lane;
    for (int i = 0; i < 2; i++) {
        bn_port *p = &l->ports[i];
        p->ep = eps[i];
        p->ep_len = ep_lens[i];
        p->mtu_icmp = p->mtu_local = 0;
        p->npending = 0;
        memset(&p->st, 0, sizeof p->st);
        l->rx[i].index = sess[i].local_index;
        l->rx[i].port = i;
        l->rx[i].s = &sess[i];
        bn_replay_init(&sess[i].replay);
        sess[i].created = bn_lane_now(l);
    }
    l->nrx = 2;
    l->py_index[0] = 0x77;
    l->npy_index = 1;
    memset(&l->st, 0, sizeof l->st);
    l->has_mac1_key = 0;
    l->hs_tokens = BN_HS_BURST;
    l->hs_stamp = bn_lane_now(l);
    memset(l->hs_sources, 0, sizeof l->hs_sources); /* and every source's */
    l->mtu_waiting = 0;
    l->mtu_next = 0;
    l->npend = 0;
    l->rbuf_used = 0;
    l->nmaclog = 0;
    l->udp_held = cfg & 2 ? 1 : 0;
    now = 1000.0;
    last_delivery = -1.0;
}

/* A name as the kernel might return it: *len may exceed the buffer. */
static void read_name(rd *r, struct sockaddr_storage *ss, socklen_t *len) {
    int sel = rd_u8(r);
    memset(ss, 0, sizeof *ss);
    switch (sel < 0 ? 0 : sel % 6) {
    case 0: *ss = eps[0]; *len = ep_lens[0]; break;
    case 1: *ss = eps[1]; *len = ep_lens[1]; break;
    case 2: fuzz_v4(ss, len, "203.0.113.9", 51820); break;
    case 3: *len = 0; break;
    case 4: *ss = eps[0]; *len = sizeof *ss + 1 + (socklen_t)(sel >> 3); break;
    default: {
        int n = rd_u8(r);
        *len = (socklen_t)rd_bytes(r, (uint8_t *)ss, n < 0 ? 0 : (size_t)n % (sizeof *ss + 1));
        break;
    }
    }
}

/* Control bytes of exactly their length (NULL, 0: none). */
static uint8_t *read_gro_ctl(rd *r, int sel, size_t *len) {
    uint8_t tmp[512];
    size_t n = 0;
    if (sel == 1 || sel == 3) {
        long gso = rd_u16(r);
        struct cmsghdr cm;
        memset(tmp, 0, CMSG_SPACE(sizeof(int)));
        cm.cmsg_len = CMSG_LEN(sizeof(int));
        cm.cmsg_level = SOL_UDP;
        cm.cmsg_type = UDP_GRO;
        memcpy(tmp, &cm, sizeof cm);
        int v = (int)(gso < 0 ? 0 : gso);
        memcpy(tmp + CMSG_LEN(0), &v, sizeof v);
        n = CMSG_SPACE(sizeof(int));
    }
    if (sel == 2 || sel == 3) {
        int k = rd_u8(r);
        n += rd_bytes(r, tmp + n, k < 0 ? 0 : (size_t)k);
    }
    *len = n;
    if (n == 0)
        return NULL;
    uint8_t *out = malloc(n);
    CHECK(out != NULL);
    memcpy(out, tmp, n);
    return out;
}

static void check_punts(void) {
    int handshakes = 0;
    for (bn_punt *p = lane.punts; p; p = p->next) {
        CHECK(p->from_len <= sizeof p->from);
        CHECK((p->data != NULL) == (p->len > 0));
        switch (p->kind) {
        case BN_PUNT_RAW: {
            CHECK(p->port == -1 && p->count >= 1 && p->lens != NULL);
            size_t sum = 0;
            for (int i = 0; i < p->count; i++)
                sum += p->lens[i];
            CHECK(sum == p->len);
            break;
        }
        case BN_PUNT_HANDSHAKE:
            CHECK(p->len == BN_INITIATION_LEN || p->len == BN_RESPONSE_LEN
                  || p->len == BN_COOKIE_REPLY_LEN);
            handshakes++;
            break;
        case BN_PUNT_MTU:
            CHECK(p->port >= 0 && p->port < 2 && lane.ports[p->port].used);
            CHECK(p->size >= 1 && p->size <= 65535 && (p->local == 0 || p->local == 1));
            CHECK(bn_same_addr(&p->from, p->from_len, &eps[p->port], ep_lens[p->port]));
            break;
        default:
            /* PAYLOAD / FRAME need an authentic datagram: none is sealed here */
            CHECK(0);
        }
    }
    CHECK(handshakes == lane.nhs);
}

static void release(void) {
    bn_lane_flush(&lane);
    fuzz_free_punts(&lane);
    lane.udp_held = 0;
}

static void one_batch(rd *r, uint8_t cfg) {
    bn_lane *l = &lane;
    int got = rd_u8(r);
    if (got < 0)
        return;
    got %= MAX_MSGS + 1;
    struct mmsghdr msgs[MAX_MSGS];
    struct iovec iov[MAX_MSGS];
    struct sockaddr_storage *names[MAX_MSGS];
    uint8_t *ctls[MAX_MSGS];
    memset(msgs, 0, sizeof msgs);
    uint64_t cut = 0, datagrams = 0;
    if (l->rbuf_used + (size_t)MAX_MSGS * SLOT > l->rbuf_cap)
        bn_lane_flush(l);
    uint8_t *base = l->rbuf + l->rbuf_used;
    for (int k = 0; k < got; k++) {
        int flags = rd_u8(r);
        names[k] = malloc(sizeof(struct sockaddr_storage));
        CHECK(names[k] != NULL);
        socklen_t nl = 0;
        read_name(r, names[k], &nl);
        int csel = rd_u8(r);
        size_t cl = 0;
        ctls[k] = read_gro_ctl(r, csel < 0 ? 0 : csel % 4, &cl);
        long want = rd_u16(r);
        uint8_t *d = base + (size_t)k * SLOT;
        size_t n = want < 0 ? 0 : (size_t)want % (SLOT + 1);
        n = n < r->n ? n : r->n;
        ASAN_UNPOISON_MEMORY_REGION(d, n); /* the rest of the slot stays poisoned */
        rd_bytes(r, d, n);
        iov[k].iov_base = d;
        iov[k].iov_len = SLOT;
        struct msghdr *m = &msgs[k].msg_hdr;
        m->msg_name = names[k];
        m->msg_namelen = nl;
        m->msg_iov = flags >= 0 && (flags & 8) ? NULL : &iov[k];
        m->msg_iovlen = m->msg_iov ? 1 : 0;
        m->msg_control = ctls[k];
        m->msg_controllen = cl;
        m->msg_flags = (flags >= 0 && (flags & 1) ? MSG_TRUNC : 0)
                       | (flags >= 0 && (flags & 2) ? MSG_CTRUNC : 0);
        msgs[k].msg_len = (unsigned)(flags >= 0 && (flags & 4) ? SLOT + 1 + n : n);
        if (flags >= 0 && (flags & 15))
            cut++;
        else
            datagrams += n ? n : 1; /* at most one datagram a byte */
    }
    l->rbuf_used += (size_t)MAX_MSGS * SLOT;
    uint64_t trunc0 = l->st.udp_truncated, rx0 = l->st.rx_datagrams;
    bn_lane_recv_batch(l, msgs, got);
    CHECK(l->st.udp_truncated - trunc0 == cut);
    CHECK(l->st.rx_datagrams - rx0 <= datagrams);
    check_punts();
    for (int k = 0; k < got; k++) {
        free(names[k]);
        free(ctls[k]);
    }
    if (l->udp_held || (cfg & 1)) {
        bn_lane_flush(l); /* what the binding does before Python takes the punts */
        ASAN_POISON_MEMORY_REGION(l->rbuf, l->rbuf_cap);
    }
    if (l->udp_held)
        release();
}

static void deliveries(int before_count) {
    /* the MTU punts queued since before_count: at most one per port and kind */
    int seen[2][2] = {{0, 0}, {0, 0}}, i = 0, any = 0;
    for (bn_punt *p = lane.punts; p; p = p->next, i++) {
        if (i < before_count || p->kind != BN_PUNT_MTU)
            continue;
        CHECK(!seen[p->port][p->local]);
        seen[p->port][p->local] = 1;
        any = 1;
    }
    if (any) {
        CHECK(last_delivery < 0 || now - last_delivery >= BN_MTU_INTERVAL - 1e-9);
        last_delivery = now;
    }
}

static int count_punts(void) {
    int n = 0;
    for (bn_punt *p = lane.punts; p; p = p->next)
        n++;
    return n;
}

static void one_error(rd *r) {
    bn_lane *l = &lane;
    int ms = rd_u8(r);
    now += (ms < 0 ? 0 : ms) / 1000.0;
    struct sockaddr_storage *name = malloc(sizeof *name);
    CHECK(name != NULL);
    socklen_t nl = 0;
    read_name(r, name, &nl);
    int sel = rd_u8(r);
    uint8_t tmp[512];
    size_t cl = 0;
    switch (sel < 0 ? 2 : sel % 3) {
    case 0: {
        int e = rd_u8(r), origin = rd_u8(r), level = rd_u8(r);
        long info = rd_u16(r);
        static const int errs[4] = {EMSGSIZE, ECONNREFUSED, EHOSTUNREACH, 0};
        struct sock_extended_err ee;
        memset(&ee, 0, sizeof ee);
        ee.ee_errno = (uint32_t)(e < 0 ? EMSGSIZE : errs[e & 3]);
        ee.ee_origin = (uint8_t)(origin < 0 ? SO_EE_ORIGIN_ICMP : origin % 6);
        ee.ee_info = (uint32_t)(info < 0 ? 1280 : (e >= 0 && (e & 4)) ? (uint32_t)info << 8 : info);
        struct cmsghdr cm;
        cm.cmsg_len = CMSG_LEN(sizeof ee);
        cm.cmsg_level = level >= 0 && (level & 1) ? IPPROTO_IPV6 : IPPROTO_IP;
        cm.cmsg_type = level >= 0 && (level & 1) ? 25 /* IPV6_RECVERR */ : 11 /* IP_RECVERR */;
        memset(tmp, 0, CMSG_SPACE(sizeof ee));
        memcpy(tmp, &cm, sizeof cm);
        memcpy(tmp + CMSG_LEN(0), &ee, sizeof ee);
        cl = level >= 0 && (level & 2) ? CMSG_LEN(sizeof ee) - 1 : CMSG_SPACE(sizeof ee);
        break;
    }
    case 1: {
        int k = rd_u8(r);
        cl = rd_bytes(r, tmp, k < 0 ? 0 : (size_t)k);
        break;
    }
    default:
        break;
    }
    uint8_t *ctl = cl ? malloc(cl) : NULL;
    if (cl) {
        CHECK(ctl != NULL);
        memcpy(ctl, tmp, cl);
    }
    struct msghdr m;
    memset(&m, 0, sizeof m);
    m.msg_name = name;
    m.msg_namelen = nl;
    m.msg_control = ctl;
    m.msg_controllen = cl;
    uint64_t e0 = l->st.udp_errors;
    int before = count_punts();
    bn_lane_errq_message(l, &m, now);
    CHECK(l->st.udp_errors == e0 + 1);
    deliveries(before);
    check_punts();
    free(name);
    free(ctl);
}

static void one_due(rd *r) {
    int ms = rd_u8(r);
    now += (ms < 0 ? 0 : ms) / 1000.0;
    int before = count_punts();
    int wait = bn_lane_mtu_due(&lane, now);
    CHECK(wait == -1 || (wait >= 1 && wait <= 1000));
    if (wait == -1) {
        CHECK(!lane.mtu_waiting);
        for (int i = 0; i < 2; i++)
            CHECK(lane.ports[i].mtu_icmp == 0 && lane.ports[i].mtu_local == 0);
    }
    deliveries(before);
    check_punts();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!ready)
        setup();
    if (size < 1)
        return 0;
    reset(data[0]);
    ASAN_POISON_MEMORY_REGION(lane.rbuf, lane.rbuf_cap);
    rd r = {data + 1, size - 1};
    for (int rounds = 0; r.n > 0 && rounds < 64; rounds++) {
        int op = rd_u8(&r);
        switch (op % 3) {
        case 0: one_batch(&r, data[0]); break;
        case 1: one_error(&r); break;
        default: one_due(&r); break;
        }
    }
    bn_lane_flush(&lane);
    fuzz_free_punts(&lane);
    lane.udp_held = 0;
    ASAN_UNPOISON_MEMORY_REGION(lane.rbuf, lane.rbuf_cap);
    return 0;
}
