/* bench_native.c - the native lane's per-core cost model: CPU and syscall
 * costs of one lane's per-packet work, and a 1-vs-N lane scaling check.
 *
 * Built and run by benchmarks/bench_native.py (which makes the network
 * namespace the syscall modes need); by hand:
 *
 *   gcc -O2 -std=gnu11 -Wall -Wextra -I bridger/native/src benchmarks/bench_native.c \
 *       bridger/native/src/bn_lane.c bridger/native/src/bn_session.c \
 *       bridger/native/src/bn_segment.c bridger/native/src/bn_guard.c \
 *       -lsodium -lpthread -o /tmp/bench_native
 *   /tmp/bench_native cpu SCALE            # pure per-packet functions (no I/O)
 *   /tmp/bench_native sys SCALE            # syscalls (root, in a throwaway netns with
 *                                          # lo up and a dummy d0 10.99.0.1/24, mtu 9000)
 *   /tmp/bench_native scale N tx|rx udp64|full|tcp PACKETS   # N lanes (same netns)
 *
 * Every line of output is "name value unit"; nothing is asserted.  Costs are
 * the thread's CPU time (CLOCK_THREAD_CPUTIME_ID: user + system, so a busy
 * machine's preemptions do not count); wake-ups and the scale mode's
 * throughput are wall time.
 */
#define _GNU_SOURCE
#include "bn.h"
#include "bn_lane.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_packet.h>
#include <linux/if_tun.h>
#include <net/ethernet.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <pthread.h>
#include <sched.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define WAN_PORT 51820
#define SINK_ADDR "10.99.0.2" /* routed into the dummy d0: freed on transmit */
#define MSS 1448              /* TCP payload per segment (timestamps on) */
#define NSEG 45               /* segments per superframe: 45 x 1448 = 65160 */
#define FRAME_FULL 1514
#define FRAME_UDP64 106 /* a 64-byte UDP payload: 14 + 20 + 8 + 64 */

static volatile uint64_t sink; /* defeats dead-code elimination */

static double now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static double thread_cpu_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static void die(const char *what) {
    fprintf(stderr, "bench_native: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void out(const char *name, double v, const char *unit) {
    printf("%s %.2f %s\n", name, v, unit);
    fflush(stdout);
}

/* ---- frames --------------------------------------------------------------- */

static const uint8_t MAC_DST[6] = {0x02, 0xbb, 0, 0, 0, 2};
static const uint8_t MAC_SRC[6] = {0x02, 0xaa, 0, 0, 0, 1};

static void ip_csum(uint8_t *ip) {
    ip[10] = ip[11] = 0;
    uint32_t s = bn_ones_sum(ip, 20);
    bn_put_be16(ip + 10, (uint16_t)~s);
}

/* An Ethernet/IPv4/UDP frame of exactly `len` bytes (len >= 42). */
static void udp_frame(uint8_t *f, size_t len) {
    memset(f, 0x5a, len);
    memcpy(f, MAC_DST, 6);
    memcpy(f + 6, MAC_SRC, 6);
    f[12] = 0x08;
    f[13] = 0x00;
    uint8_t *ip = f + 14;
    ip[0] = 0x45;
    ip[1] = 0;
    bn_put_be16(ip + 2, (uint16_t)(len - 14));
    bn_put_be16(ip + 4, 1);
    bn_put_be16(ip + 6, 0x4000);
    ip[8] = 64;
    ip[9] = 17;
    memcpy(ip + 12, "\x0a\x00\x00\x01\x0a\x00\x00\x02", 8);
    ip_csum(ip);
    uint8_t *udp = ip + 20;
    bn_put_be16(udp, 40000);
    bn_put_be16(udp + 2, 5201);
    bn_put_be16(udp + 4, (uint16_t)(len - 34));
    bn_put_be16(udp + 6, 0);
}

/* A TSO superframe (vnet header first) of NSEG x MSS payload: returns its
 * length including the vnet header. */
static size_t tcp_superframe(uint8_t *buf) {
    const size_t hdrlen = 14 + 20 + 32, payload = (size_t)NSEG * MSS;
    bn_vnet h = {.flags = 1, .gso_type = 1, .hdr_len = (uint16_t)hdrlen, .gso_size = MSS,
                 .csum_start = 34, .csum_offset = 16};
    bn_vnet_encode(&h, buf);
    uint8_t *f = buf + BN_VNET_HDR_LEN;
    memset(f, 0x33, hdrlen + payload);
    memcpy(f, MAC_DST, 6);
    memcpy(f + 6, MAC_SRC, 6);
    f[12] = 0x08;
    f[13] = 0x00;
    uint8_t *ip = f + 14;
    ip[0] = 0x45;
    ip[1] = 0;
    bn_put_be16(ip + 2, (uint16_t)(20 + 32 + payload));
    bn_put_be16(ip + 4, 7);
    bn_put_be16(ip + 6, 0x4000);
    ip[8] = 64;
    ip[9] = 6;
    memcpy(ip + 12, "\x0a\x00\x00\x01\x0a\x00\x00\x02", 8);
    ip_csum(ip);
    uint8_t *tcp = ip + 20;
    bn_put_be16(tcp, 40000);
    bn_put_be16(tcp + 2, 5201);
    bn_put_be32(tcp + 4, 1000);
    bn_put_be32(tcp + 8, 2000);
    tcp[12] = 8 << 4;
    tcp[13] = 0x18; /* ACK|PSH */
    bn_put_be16(tcp + 14, 512);
    bn_put_be16(tcp + 16, 0);
    bn_put_be16(tcp + 18, 0);
    memcpy(tcp + 20, "\x01\x01\x08\x0a\x00\x00\x00\x01\x00\x00\x00\x02", 12);
    return BN_VNET_HDR_LEN + hdrlen + payload;
}

static void session_init(bn_session *s, uint32_t index) {
    memset(s, 0, sizeof *s);
    s->local_index = s->remote_index = index;
    randombytes_buf(s->send_key, 32);
    memcpy(s->recv_key, s->send_key, 32); /* opens its own seals */
    bn_replay_init(&s->replay);
}

static void guard_on(bn_guard_cfg *g) {
    memset(g, 0, sizeof *g);
    g->on = 1;
    g->plain = 1; /* GuardConfig's defaults: no DHCP/RA guard, no VLAN list */
    g->storm = 1; /* storm control on: unicast to a known MAC passes */
}

/* ---- (a) the pure per-packet functions -------------------------------- */

static uint8_t *big1, *big2;

static double time_seal(size_t n, long iters) {
    bn_session s;
    session_init(&s, 7);
    uint8_t pt[2048];
    memset(pt, 0x11, sizeof pt);
    double t0 = thread_cpu_ns();
    for (long i = 0; i < iters; i++)
        sink += bn_seal(&s, (uint64_t)i, pt, n, big1);
    return (thread_cpu_ns() - t0) / (double)iters;
}

static double time_open(size_t n, long iters) {
    enum { K = 256 };
    bn_session s;
    session_init(&s, 7);
    uint8_t pt[2048];
    memset(pt, 0x11, sizeof pt);
    size_t dl = n + BN_TRANSPORT_OVERHEAD;
    for (int k = 0; k < K; k++)
        bn_seal(&s, (uint64_t)k, pt, n, big2 + (size_t)k * dl);
    long rounds = iters / K + 1;
    double t0 = thread_cpu_ns();
    for (long r = 0; r < rounds; r++) {
        bn_replay_init(&s.replay);
        for (int k = 0; k < K; k++) {
            const uint8_t *d = big2 + (size_t)k * dl;
            uint64_t ctr = bn_le64(d + 8);
            long pl = bn_open(&s, ctr, d, dl, big1);
            sink += (uint64_t)pl + (uint64_t)bn_replay_check(&s.replay, ctr);
        }
    }
    return (thread_cpu_ns() - t0) / (double)(rounds * K);
}

static int segment_once(const uint8_t *sf, size_t sflen, uint8_t *dst, size_t *offs,
                        uint16_t *lens, int *cs) {
    bn_vnet h;
    bn_vnet_decode(sf, sflen, &h);
    return bn_segment_tcp(sf + BN_VNET_HDR_LEN, sflen - BN_VNET_HDR_LEN, &h, FRAME_FULL, dst,
                          1 << 20, 21, 16, offs, lens, 256, cs);
}

static void mode_cpu(double scale) {
    long it = (long)(200000 * scale) + 1000;
    out("seal_64", time_seal(64, it), "ns");
    out("seal_1400", time_seal(1400, it / 2), "ns");
    out("open_64", time_open(64, it), "ns");
    out("open_1400", time_open(1400, it / 2), "ns");

    /* segment_tcp of a 64 KB superframe, per segment */
    uint8_t *sf = malloc(70000);
    size_t sflen = tcp_superframe(sf);
    size_t offs[256];
    uint16_t lens[256];
    int cs = 0;
    int nseg = segment_once(sf, sflen, big1, offs, lens, &cs);
    if (nseg != NSEG) {
        fprintf(stderr, "bench_native: segment_tcp gave %d segments\n", nseg);
        exit(1);
    }
    long sit = (long)(4000 * scale) + 50;
    double t0 = thread_cpu_ns();
    for (long i = 0; i < sit; i++)
        sink += (uint64_t)segment_once(sf, sflen, big1, offs, lens, &cs);
    out("segment_tcp_per_seg", (thread_cpu_ns() - t0) / (double)(sit * nseg), "ns");
    out("segments_per_superframe", nseg, "n");

    /* coalesce of those 45 segments, per segment */
    bn_frame_in fr[NSEG];
    for (int i = 0; i < nseg; i++) {
        fr[i].data = big1 + offs[i];
        fr[i].len = lens[i];
        fr[i].csum_start = cs;
        fr[i].csum_offset = 16;
    }
    static bn_out_frame outs[BN_MAX_SEGMENTS];
    int nout = bn_coalesce(fr, nseg, outs);
    t0 = thread_cpu_ns();
    for (long i = 0; i < sit * 4; i++)
        sink += (uint64_t)bn_coalesce(fr, nseg, outs);
    out("coalesce_per_seg", (thread_cpu_ns() - t0) / (double)(sit * 4 * nseg), "ns");
    out("coalesce_writes", nout, "n");

    /* guard fast checks and the counters on a 106-byte frame */
    bn_guard_cfg g;
    guard_on(&g);
    uint8_t f[FRAME_FULL];
    udp_frame(f, FRAME_UDP64);
    long git = it * 10;
    t0 = thread_cpu_ns();
    for (long i = 0; i < git; i++)
        sink += (uint64_t)bn_guard_fast_out(&g, f, FRAME_UDP64, 1);
    out("guard_fast_out", (thread_cpu_ns() - t0) / (double)git, "ns");
    t0 = thread_cpu_ns();
    for (long i = 0; i < git; i++)
        sink += (uint64_t)bn_guard_fast_in(&g, f, FRAME_UDP64);
    out("guard_fast_in", (thread_cpu_ns() - t0) / (double)git, "ns");
    bn_dir d;
    memset(&d, 0, sizeof d);
    t0 = thread_cpu_ns();
    for (long i = 0; i < git; i++)
        bn_account(&d, f, FRAME_UDP64, 1, FRAME_UDP64);
    sink += d.frames;
    out("account", (thread_cpu_ns() - t0) / (double)git, "ns");
    bn_macset ms;
    memset(&ms, 0, sizeof ms);
    t0 = thread_cpu_ns();
    for (long i = 0; i < git; i++) {
        bn_macset_add(&ms, f + 6);
        sink += (uint64_t)bn_macset_has(&ms, f);
    }
    out("macset_add_has", (thread_cpu_ns() - t0) / (double)git, "ns");
    t0 = thread_cpu_ns();
    for (long i = 0; i < git; i++) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        sink += (uint64_t)ts.tv_nsec;
    }
    out("clock_gettime", (thread_cpu_ns() - t0) / (double)git, "ns");

    /* The lane's whole tap -> WAN step (bn_lane_tap_read: vnet decode, guard,
     * MAC set, seal, counters, MAC log) without the syscalls: no socket, so
     * the flush discards. */
    bn_lane *l = malloc(sizeof *l);
    if (!l || bn_lane_init(l, -1, 0, 1, 1, 0.0) < 0)
        die("bn_lane_init");
    int port = bn_lane_add_port(l, -1, 1, &g);
    bn_session s;
    session_init(&s, 7);
    s.created = bn_lane_now(l);
    bn_port *p = &l->ports[port];
    p->send = &s;
    struct sockaddr_in *ep = (struct sockaddr_in *)&p->ep;
    ep->sin_family = AF_INET;
    ep->sin_port = htons(WAN_PORT);
    inet_pton(AF_INET, SINK_ADDR, &ep->sin_addr);
    p->ep_len = sizeof *ep;
    p->fits_plain = p->fits_csum = p->room = p->max_frame = FRAME_FULL;
    bn_macset_add(&p->known, MAC_DST);
    const size_t sizes[2] = {FRAME_UDP64, FRAME_FULL};
    const char *names[2] = {"lane_tx_udp64", "lane_tx_full"};
    for (int k = 0; k < 2; k++) {
        uint8_t fb[BN_VNET_HDR_LEN + FRAME_FULL];
        memset(fb, 0, BN_VNET_HDR_LEN);
        udp_frame(fb + BN_VNET_HDR_LEN, sizes[k]);
        long lit = it / (k ? 2 : 1);
        t0 = thread_cpu_ns();
        for (long i = 0; i < lit; i++) {
            sink += (uint64_t)bn_lane_tap_read(l, port, fb, BN_VNET_HDR_LEN + sizes[k]);
            if ((i & 63) == 63) {
                bn_lane_tx_flush_port(l, port);
                l->nmaclog = 0; /* Python's sync takes it */
            }
        }
        bn_lane_tx_flush_port(l, port);
        out(names[k], (thread_cpu_ns() - t0) / (double)lit, "ns");
    }
    uint64_t before = p->st.tx_datagrams;
    t0 = thread_cpu_ns();
    for (long i = 0; i < sit; i++) {
        sink += (uint64_t)bn_lane_tap_read(l, port, sf, sflen);
        bn_lane_tx_flush_port(l, port);
        l->nmaclog = 0;
    }
    double segs = (double)(p->st.tx_datagrams - before);
    out("lane_tx_tcp_per_seg", (thread_cpu_ns() - t0) / (segs > 0 ? segs : 1), "ns");
    bn_lane_free(l);
    free(l);
    free(sf);
}

/* ---- (b) syscalls --------------------------------------------------------- */

static int ifsock = -1;

static void if_set(const char *name, unsigned long req, struct ifreq *ifr) {
    strncpy(ifr->ifr_name, name, IFNAMSIZ - 1);
    if (ioctl(ifsock, req, ifr) < 0)
        die("interface ioctl");
}

static void link_up(const char *name, int mtu, int qlen) {
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    ifr.ifr_mtu = mtu;
    if_set(name, SIOCSIFMTU, &ifr);
    memset(&ifr, 0, sizeof ifr);
    ifr.ifr_qlen = qlen;
    if_set(name, SIOCSIFTXQLEN, &ifr);
    memset(&ifr, 0, sizeof ifr);
    if_set(name, SIOCGIFFLAGS, &ifr);
    ifr.ifr_flags |= IFF_UP;
    if_set(name, SIOCSIFFLAGS, &ifr);
}

/* One queue of tap `name` (IFF_VNET_HDR, offloads on, nonblocking). */
static int tap_queue(const char *name, int multi) {
    int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0)
        die("/dev/net/tun");
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    strncpy(ifr.ifr_name, name, IFNAMSIZ - 1);
    ifr.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | (multi ? IFF_MULTI_QUEUE : 0);
    if (ioctl(fd, TUNSETIFF, &ifr) < 0)
        die("TUNSETIFF");
    if (ioctl(fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6) < 0)
        die("TUNSETOFFLOAD");
    return fd;
}

static int udp_socket(int reuseport, int port) {
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        die("socket");
    int one = 1, big = 64 << 20;
    if (reuseport)
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &big, sizeof big);
    setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &big, sizeof big);
    if (port >= 0) {
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
        if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0)
            die("bind");
    }
    return fd;
}

static struct sockaddr_in sin_of(const char *addr, int port) {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, addr, &a.sin_addr);
    return a;
}

/* One sendmsg of `n` datagrams of `size` bytes, with UDP_SEGMENT if gso. */
static ssize_t send_gso(int fd, const struct sockaddr_in *to, uint8_t *buf, size_t size, int n) {
    struct iovec iov = {buf, size * (size_t)n};
    union {
        char b[CMSG_SPACE(sizeof(uint16_t))];
        struct cmsghdr align;
    } ctl;
    memset(&ctl, 0, sizeof ctl);
    struct msghdr msg = {.msg_name = (void *)to, .msg_namelen = sizeof *to, .msg_iov = &iov,
                         .msg_iovlen = 1, .msg_control = ctl.b, .msg_controllen = sizeof ctl.b};
    struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
    cm->cmsg_level = SOL_UDP;
    cm->cmsg_type = UDP_SEGMENT;
    cm->cmsg_len = CMSG_LEN(sizeof(uint16_t));
    uint16_t seg = (uint16_t)size;
    memcpy(CMSG_DATA(cm), &seg, sizeof seg);
    return sendmsg(fd, &msg, 0);
}

static void bench_tap(double scale) {
    const char *name = "bnr0";
    int fd = tap_queue(name, 0);
    link_up(name, 65000, 4096);
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    if_set(name, SIOCGIFINDEX, &ifr);
    int ifindex = ifr.ifr_ifindex;
    int ps = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, 0);
    if (ps < 0)
        die("AF_PACKET");
    struct sockaddr_ll ll = {.sll_family = AF_PACKET, .sll_ifindex = ifindex, .sll_halen = 6};
    memcpy(ll.sll_addr, MAC_DST, 6);
    const size_t sizes[3] = {FRAME_UDP64, FRAME_FULL, 65000};
    const char *rnames[3] = {"tap_read_udp64", "tap_read_full", "tap_read_64k"};
    int rounds = (int)(40 * scale) + 3;
    for (int k = 0; k < 3; k++) {
        udp_frame(big1, sizes[k]);
        int batch = k == 2 ? 128 : 512;
        double t = 0;
        long got = 0;
        for (int r = 0; r < rounds; r++) {
            for (int i = 0; i < batch; i++)
                if (sendto(ps, big1, sizes[k], 0, (struct sockaddr *)&ll, sizeof ll) < 0)
                    die("packet sendto");
            double t0 = thread_cpu_ns();
            for (;;) {
                ssize_t n = read(fd, big2, BN_READ_SIZE);
                if (n < 0)
                    break;
                got++;
            }
            t += thread_cpu_ns() - t0;
        }
        /* the last read of each round is the EAGAIN one: counted as overhead */
        out(rnames[k], got ? t / (double)got : 0, "ns");
        out(k == 0 ? "tap_read_udp64_n" : k == 1 ? "tap_read_full_n" : "tap_read_64k_n",
            (double)got, "n");
    }
    /* tap write: into the kernel's receive path (no bridge here: the stack
     * drops the frame, not ours); 64 KB = a coalesced TSO frame via writev */
    const char *wnames[3] = {"tap_write_udp64", "tap_write_full", "tap_writev_64k_gso"};
    for (int k = 0; k < 3; k++) {
        long n = (long)((k == 2 ? 20000 : 200000) * scale) + 200;
        uint8_t vh[BN_VNET_HDR_LEN];
        memset(vh, 0, sizeof vh);
        size_t flen = sizes[k];
        if (k == 2) {
            flen = tcp_superframe(big2) - BN_VNET_HDR_LEN;
            memcpy(vh, big2, BN_VNET_HDR_LEN);
            memcpy(big1, big2 + BN_VNET_HDR_LEN, flen);
        } else {
            udp_frame(big1, flen);
        }
        /* as write_port: the header, the joined run's head, then each segment's payload */
        struct iovec iov[NSEG + 2];
        int niov = 0;
        iov[niov].iov_base = vh;
        iov[niov++].iov_len = BN_VNET_HDR_LEN;
        if (k == 2) {
            iov[niov].iov_base = big1;
            iov[niov++].iov_len = 66;
            for (int i = 0; i < NSEG; i++) {
                iov[niov].iov_base = big1 + 66 + (size_t)i * MSS;
                iov[niov++].iov_len = MSS;
            }
        } else {
            iov[niov].iov_base = big1;
            iov[niov++].iov_len = flen;
        }
        long fail = 0;
        double t0 = thread_cpu_ns();
        for (long i = 0; i < n; i++)
            if (writev(fd, iov, niov) < 0)
                fail++;
        out(wnames[k], (thread_cpu_ns() - t0) / (double)n, "ns");
        if (fail)
            out("tap_write_failed", (double)fail, "n");
    }
    close(ps);
    close(fd);
}

static void bench_udp(double scale) {
    /* sender -> SINK_ADDR via the dummy d0 (transmit = free: a NIC with UDP
     * segmentation offload, no wire) */
    int tx = udp_socket(0, -1);
    struct sockaddr_in sinkaddr = sin_of(SINK_ADDR, WAN_PORT);
    const size_t sizes[2] = {139, 1400}; /* 139: a tunnelled 64-byte UDP packet */
    const char *sn[2] = {"udp_sendto_139", "udp_sendto_1400"};
    const char *gn[2] = {"udp_gso_send_139", "udp_gso_send_1400"};
    memset(big1, 0x42, 1 << 20);
    long rounds = (long)(3000 * scale) + 50;
    for (int k = 0; k < 2; k++) {
        size_t size = sizes[k];
        double t0 = thread_cpu_ns();
        for (long r = 0; r < rounds; r++)
            for (int i = 0; i < 64; i++)
                if (sendto(tx, big1, size, 0, (struct sockaddr *)&sinkaddr, sizeof sinkaddr) < 0)
                    die("sendto");
        out(sn[k], (thread_cpu_ns() - t0) / (double)(rounds * 64), "ns");
        /* 64 datagrams in as few UDP_SEGMENT sends as 65000 bytes allow (lane's rule) */
        int per = (int)(65000 / size);
        if (per > 64)
            per = 64;
        t0 = thread_cpu_ns();
        for (long r = 0; r < rounds; r++)
            for (int left = 64; left > 0; left -= per)
                if (send_gso(tx, &sinkaddr, big1, size, left < per ? left : per) < 0)
                    die("sendmsg UDP_SEGMENT");
        out(gn[k], (thread_cpu_ns() - t0) / (double)(rounds * 64), "ns");
    }
    /* receive over loopback: GSO-sent batches to a socket with UDP_GRO (one
     * recvmsg per batch) and to one without (one recvmsg per datagram) */
    for (int gro = 0; gro < 2; gro++) {
        for (int k = 0; k < 2; k++) {
            int rx = udp_socket(0, 40000 + gro * 2 + k);
            int on = 1;
            if (gro && setsockopt(rx, SOL_UDP, UDP_GRO, &on, sizeof on) < 0)
                die("UDP_GRO");
            struct sockaddr_in to = sin_of("127.0.0.1", 40000 + gro * 2 + k);
            size_t size = sizes[k];
            int per = (int)(65000 / size);
            if (per > 64)
                per = 64;
            long rr = (long)(100 * scale) + 5, got = 0, calls = 0;
            double t = 0;
            for (long r = 0; r < rr; r++) {
                for (int b = 0; b < 16; b++)
                    if (send_gso(tx, &to, big1, size, per) < 0)
                        die("sendmsg lo");
                double t0 = thread_cpu_ns();
                for (;;) {
                    union {
                        char b[CMSG_SPACE(sizeof(int))];
                        struct cmsghdr align;
                    } ctl;
                    struct iovec iov = {big2, BN_READ_SIZE};
                    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1,
                                         .msg_control = ctl.b, .msg_controllen = sizeof ctl.b};
                    struct sockaddr_storage from;
                    msg.msg_name = &from;
                    msg.msg_namelen = sizeof from;
                    ssize_t n = recvmsg(rx, &msg, MSG_DONTWAIT);
                    if (n < 0)
                        break;
                    calls++;
                    got += (long)(((size_t)n + size - 1) / size);
                }
                t += thread_cpu_ns() - t0;
            }
            char name[64];
            snprintf(name, sizeof name, "udp_recvmsg%s_%zu", gro ? "_gro" : "", size);
            out(name, got ? t / (double)got : 0, "ns/datagram");
            snprintf(name, sizeof name, "udp_recvmsg%s_%zu_per_call", gro ? "_gro" : "", size);
            out(name, calls ? (double)got / (double)calls : 0, "datagrams");
            close(rx);
        }
    }
    close(tx);
}

/* epoll_wait wake-up: ping-pong over two eventfds, each side blocked in
 * epoll_wait; half a round trip = one wake-up (write + wake + epoll_wait
 * return + read). */
typedef struct {
    int ep, in, outfd, cpu;
    long n;
} pp_arg;

static void pin(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    pthread_setaffinity_np(pthread_self(), sizeof set, &set);
}

static void pp_side(pp_arg *a, int first) {
    uint64_t v = 1;
    struct epoll_event ev;
    for (long i = 0; i < a->n; i++) {
        if (first && write(a->outfd, &v, sizeof v) < 0)
            die("eventfd write");
        while (epoll_wait(a->ep, &ev, 1, -1) < 1) {
        }
        if (read(a->in, &v, sizeof v) < 0)
            die("eventfd read");
        if (!first && write(a->outfd, &v, sizeof v) < 0)
            die("eventfd write");
    }
}

static void *pp_thread(void *arg) {
    pp_arg *a = arg;
    pin(a->cpu);
    pp_side(a, 0);
    return NULL;
}

static int ep_for(int fd) {
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN};
    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
    return ep;
}

static void bench_wakeup(double scale) {
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    for (int same = 0; same < 2; same++) {
        if (!same && ncpu < 2)
            continue;
        int e1 = eventfd(0, EFD_CLOEXEC), e2 = eventfd(0, EFD_CLOEXEC);
        long n = (long)(20000 * scale) + 500;
        pp_arg a = {ep_for(e1), e1, e2, 0, n}, b = {ep_for(e2), e2, e1, same ? 0 : 1, n};
        pthread_t th;
        pthread_create(&th, NULL, pp_thread, &a);
        pin(b.cpu);
        double t0 = now_ns();
        pp_side(&b, 1);
        double t = now_ns() - t0;
        pthread_join(th, NULL);
        out(same ? "epoll_wakeup_same_cpu" : "epoll_wakeup_cross_cpu", t / (double)n / 2, "ns");
        close(a.ep);
        close(b.ep);
        close(e1);
        close(e2);
    }
    cpu_set_t all;
    CPU_ZERO(&all);
    for (int i = 0; i < ncpu && i < CPU_SETSIZE; i++)
        CPU_SET(i, &all);
    pthread_setaffinity_np(pthread_self(), sizeof all, &all);
    /* epoll_wait that finds an fd ready: the per-batch cost under load */
    int e = eventfd(1, EFD_CLOEXEC);
    int ep = ep_for(e);
    struct epoll_event ev;
    long n = (long)(200000 * scale) + 1000;
    double t0 = thread_cpu_ns();
    for (long i = 0; i < n; i++)
        sink += (uint64_t)epoll_wait(ep, &ev, 1, 0);
    out("epoll_wait_ready", (thread_cpu_ns() - t0) / (double)n, "ns");
    close(ep);
    close(e);
}

static void mode_sys(double scale) {
    ifsock = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    bench_tap(scale);
    bench_udp(scale);
    bench_wakeup(scale);
}

/* ---- (d) N lanes ------------------------------------------------------------- */

typedef struct {
    int id, tx, kind;
    long packets;
    int udp_fd, tap_fd;
    double cpu_ns, wall_ns;
    uint64_t done, failed;
    pthread_barrier_t *bar;
} lane_arg;

enum { K_UDP64, K_FULL, K_TCP };

/* One lane, as bn_lane_run would drive it, but fed from memory: tx = frames
 * as a tap read returns them -> bn_lane_tap_read -> the lane's UDP_SEGMENT
 * sends on its own SO_REUSEPORT socket; rx = sealed datagrams as a UDP
 * receive returns them -> bn_lane_udp_receive -> coalesce -> writes to its
 * own queue of the multi-queue tap.  Its own session (own counter). */
static void *lane_thread(void *arg) {
    lane_arg *a = arg;
    pin(a->id % (int)sysconf(_SC_NPROCESSORS_ONLN));
    bn_lane *l = malloc(sizeof *l);
    if (!l || bn_lane_init(l, a->tx ? a->udp_fd : -1, 0, 1, 1, 0.0) < 0)
        die("bn_lane_init");
    bn_guard_cfg g;
    guard_on(&g);
    int port = bn_lane_add_port(l, a->tx ? -1 : a->tap_fd, 1, &g);
    if (port < 0)
        die("add_port");
    bn_session *s = malloc(sizeof *s);
    session_init(s, 100 + (uint32_t)a->id);
    s->created = bn_lane_now(l);
    bn_port *p = &l->ports[port];
    p->send = s;
    struct sockaddr_in ep = sin_of(SINK_ADDR, WAN_PORT);
    memcpy(&p->ep, &ep, sizeof ep);
    p->ep_len = sizeof ep;
    p->fits_plain = p->fits_csum = p->room = p->max_frame = FRAME_FULL;
    bn_macset_add(&p->known, MAC_DST);
    l->rx[0].index = s->local_index;
    l->rx[0].port = port;
    l->rx[0].s = s;
    l->nrx = 1;

    size_t flen = a->kind == K_UDP64 ? FRAME_UDP64 : FRAME_FULL;
    uint8_t *in = malloc(1 << 20), *work = malloc(1 << 20);
    size_t inlen = 0, dlens[64];
    int per_round; /* packets per round */
    if (a->tx) {
        if (a->kind == K_TCP) {
            inlen = tcp_superframe(in);
            per_round = NSEG;
        } else {
            memset(in, 0, BN_VNET_HDR_LEN);
            udp_frame(in + BN_VNET_HDR_LEN, flen);
            inlen = BN_VNET_HDR_LEN + flen;
            per_round = 64;
        }
    } else {
        /* the datagrams a peer's lane would send: 64 frames, or the 45
         * segments of one superframe (FRAME_CSUM), counters 0.. */
        size_t at = 0;
        uint8_t pt[2048];
        if (a->kind == K_TCP) {
            uint8_t *sf = malloc(70000);
            size_t sflen = tcp_superframe(sf);
            size_t offs[256];
            uint16_t lens[256];
            int cs = 0;
            per_round = segment_once(sf, sflen, work, offs, lens, &cs);
            for (int i = 0; i < per_round; i++) {
                pt[0] = 5;
                pt[1] = (uint8_t)cs;
                pt[2] = (uint8_t)(cs >> 8);
                pt[3] = 16;
                pt[4] = 0;
                memcpy(pt + 5, work + offs[i], lens[i]);
                dlens[i] = bn_seal(s, (uint64_t)i, pt, 5 + (size_t)lens[i], in + at);
                at += dlens[i];
            }
            free(sf);
        } else {
            per_round = 64;
            pt[0] = 1;
            udp_frame(pt + 1, flen);
            for (int i = 0; i < 64; i++) {
                dlens[i] = bn_seal(s, (uint64_t)i, pt, 1 + flen, in + at);
                at += dlens[i];
            }
        }
        inlen = at;
    }
    long rounds = a->packets / per_round + 1;
    struct sockaddr_storage from;
    memcpy(&from, &ep, sizeof ep);
    pthread_barrier_wait(a->bar);
    double c0 = thread_cpu_ns(), t0 = now_ns();
    for (long r = 0; r < rounds; r++) {
        if (a->tx) {
            if (a->kind == K_TCP) {
                bn_lane_tap_read(l, port, in, inlen);
            } else {
                for (int i = 0; i < 64; i++)
                    bn_lane_tap_read(l, port, in, inlen);
            }
            bn_lane_tx_flush_port(l, port);
        } else {
            memcpy(work, in, inlen); /* the receive's copy out of the socket */
            bn_replay_init(&s->replay);
            size_t at = 0;
            for (int i = 0; i < per_round; i++) {
                bn_lane_udp_receive(l, work + at, dlens[i], 0, &from, sizeof ep);
                at += dlens[i];
            }
            bn_lane_flush(l);
        }
        l->nmaclog = 0; /* Python's sync takes it */
    }
    a->cpu_ns = thread_cpu_ns() - c0;
    a->wall_ns = now_ns() - t0;
    a->done = a->tx ? p->st.tx_datagrams : p->st.rx_frames;
    a->failed = p->st.tap_write_failed + l->st.udp_send_blocked + l->st.udp_send_failed
                + l->st.udp_send_too_big + p->st.drop_auth + p->st.drop_replay
                + (l->punts != NULL);
    bn_lane_free(l);
    free(l);
    free(s);
    free(in);
    free(work);
    return NULL;
}

static void mode_scale(int n, int tx, int kind, long packets) {
    ifsock = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    const char *name = "bnm0";
    int taps[16];
    for (int i = 0; i < n; i++)
        taps[i] = tap_queue(name, 1);
    link_up(name, 1500, 1000);
    pthread_barrier_t bar;
    pthread_barrier_init(&bar, NULL, (unsigned)n);
    lane_arg args[16];
    pthread_t th[16];
    for (int i = 0; i < n; i++) {
        args[i] = (lane_arg){.id = i, .tx = tx, .kind = kind, .packets = packets / n,
                             .udp_fd = udp_socket(1, WAN_PORT), .tap_fd = taps[i], .bar = &bar};
    }
    for (int i = 0; i < n; i++)
        pthread_create(&th[i], NULL, lane_thread, &args[i]);
    double wall = 0, cpu = 0;
    uint64_t done = 0, failed = 0;
    for (int i = 0; i < n; i++) {
        pthread_join(th[i], NULL);
        if (args[i].wall_ns > wall)
            wall = args[i].wall_ns;
        cpu += args[i].cpu_ns;
        done += args[i].done;
        failed += args[i].failed;
        out("lane_cpu_ns_per_packet", args[i].cpu_ns / (double)(args[i].done ? args[i].done : 1),
            "ns");
    }
    out("packets", (double)done, "n");
    out("failed", (double)failed, "n");
    out("wall", wall / 1e9, "s");
    out("pps", (double)done / (wall / 1e9), "packets/s");
    out("cpu_ns_per_packet", cpu / (double)(done ? done : 1), "ns");
}

int main(int argc, char **argv) {
    if (sodium_init() < 0)
        return 1;
    big1 = malloc(1 << 21);
    big2 = malloc(1 << 21);
    if (!big1 || !big2)
        return 1;
    if (argc >= 3 && strcmp(argv[1], "cpu") == 0) {
        mode_cpu(atof(argv[2]));
    } else if (argc >= 3 && strcmp(argv[1], "sys") == 0) {
        mode_sys(atof(argv[2]));
    } else if (argc >= 6 && strcmp(argv[1], "scale") == 0) {
        int n = atoi(argv[2]);
        int kind = strcmp(argv[4], "udp64") == 0 ? K_UDP64
                   : strcmp(argv[4], "full") == 0 ? K_FULL : K_TCP;
        if (n < 1 || n > 16)
            return 2;
        mode_scale(n, strcmp(argv[3], "tx") == 0, kind, atol(argv[5]));
    } else {
        fprintf(stderr, "usage: %s cpu SCALE | sys SCALE | scale N tx|rx udp64|full|tcp PACKETS\n",
                argv[0]);
        return 2;
    }
    return 0;
}
