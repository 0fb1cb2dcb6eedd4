/* bn_lane.h - the native lane: one thread that moves the ordinary frames.
 *
 * The lane owns nothing of the protocol: Python's core decides everything
 * (sessions, endpoints, sizes, guards) and writes its decisions into the
 * lane's tables under the lane's mutex; the lane only applies them to the
 * frames and datagrams that need no decision:
 *
 *  - tap -> WAN: a frame (or TCP superframe, cut into segments) that the guard
 *    passes on its hot path, fits one datagram and has a sendable session is
 *    sealed and sent (UDP GSO when granted);
 *  - WAN -> tap: a transport datagram from the peer's endpoint to a known
 *    receiver index is opened, replay-checked and, if it holds a frame the
 *    guard passes, written to the peer's tap (segments re-joined).
 *
 * What no one may answer is dropped and counted here, never handed over:
 * datagrams too short or of no message type, transport datagrams to an index
 * neither the lane nor Python holds, failing authentication, replayed or on a
 * stale session (from any source), handshake messages of the wrong length or
 * with a wrong mac1.  Handshake messages that pass those checks go to Python
 * through a bounded queue (BN_HS_QUEUE; from sources that are no peer's
 * endpoint, at most BN_HS_RATE a second): the lane never waits on Python and
 * keeps the socket; what does not fit is dropped and counted (hs_shed).
 *
 * Anything else is *handed over* ("punted") to Python with the fd it came
 * from: the lane stops polling that fd until Python, having run its own batch
 * on it (the reference path, the same code as without the lane), gives it
 * back.  So order is kept per fd and there is one authority per decision.
 * On the UDP socket that is only ever an authenticated datagram (a payload
 * other than a frame, a frame the inbound guard must see, a peer roaming) or
 * one to an index only Python holds (a session the responder has not yet
 * confirmed).  Errors queued on the socket (IP_RECVERR) the lane reads
 * itself: what is path-MTU news about a peer's endpoint goes to Python as a
 * report (at most every BN_MTU_INTERVAL, the smallest MTU per peer and kind
 * meanwhile), the rest is counted and dropped, so that a flood of forged ICMP
 * errors costs one recvmsg each and never a hand-over.
 * Counters and timer facts (first data sent since the last receive, ...) are
 * accumulated here and taken by Python in a periodic sync.
 */
#ifndef BN_LANE_H
#define BN_LANE_H

#include <netinet/in.h>
#include <netinet/udp.h>
#include <pthread.h>
#include <sys/socket.h>
#include "bn.h"

/* UDP GSO/GRO socket options for C libraries whose headers predate them (the
 * kernel's values; fastpath/udp.py falls back to the same numbers).  The one
 * copy: the lane and benchmarks/bench_native.c include this header. */
#ifndef SOL_UDP
#define SOL_UDP 17
#endif
#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif
#ifndef UDP_GRO
#define UDP_GRO 104
#endif

#define BN_MAX_PORTS 256
#define BN_MAX_RX (3 * BN_MAX_PORTS)
/* Reads per fd per wake-up (forward.BATCH's role). */
#define BN_BATCH 64
#define BN_READ_SIZE (65536 + 1024)
#define BN_MACSET_SLOTS 2048
#define BN_MACLOG 2048
/* constants.REJECT_AFTER_TIME */
#define BN_REJECT_AFTER_TIME 180.0
/* Handshake messages waiting for Python at most; admitted per second (and
 * burst) from sources that are no peer's endpoint, all of them together and
 * per source address (an IPv4 address, an IPv6 /64; WireGuard's ratelimiter
 * has the same per-source figures), remembered in BN_HS_SOURCES slots.  What
 * Python does with a stranger's message is mostly a cookie reply, about 100 us
 * each (500/s cost it 5-8% of a core under a spoofed flood): the common rate
 * is what a hub's spokes, all strangers after its restart, need. */
#define BN_HS_QUEUE 256
#define BN_HS_RATE 100.0
#define BN_HS_BURST 64.0
#define BN_HS_SOURCE_RATE 20.0
#define BN_HS_SOURCE_BURST 5.0
#define BN_HS_SOURCES 1024
/* Transport indexes only Python holds (sessions not yet confirmed), at most. */
#define BN_MAX_PY_INDEXES 256
/* Path-MTU reports go to Python at most this often (seconds); errors read off
 * the socket's error queue per wake-up, at most. */
#define BN_MTU_INTERVAL 0.05
#define BN_ERRQ_BATCH 64

/* Wire facts (messages.py, constants.py). */
#define BN_MSG_INITIATION 1
#define BN_MSG_RESPONSE 2
#define BN_MSG_COOKIE_REPLY 3
#define BN_MSG_TRANSPORT 4
#define BN_INITIATION_LEN 148
#define BN_RESPONSE_LEN 92
#define BN_COOKIE_REPLY_LEN 64
#define BN_MAC_LEN 16
/* HASH(LABEL_MAC1 || our static public key): BLAKE2b-512, the mac1 key. */
#define BN_MAC1_KEY_LEN 64

/* What the lane hands over (bridger/native/contract.py's Punt mirrors it). */
enum {
    BN_PUNT_TAP = 1,   /* a tap read; the tap is held */
    BN_PUNT_RAW,       /* datagrams as received; the UDP socket is held */
    BN_PUNT_PAYLOAD,   /* an opened inner message other than a frame; socket held */
    BN_PUNT_FRAME,     /* an opened frame the inbound guard must see; socket held */
    BN_PUNT_HANDSHAKE, /* a handshake message past the cheap checks; nothing held */
    BN_PUNT_MTU,       /* a path-MTU report from the error queue; nothing held */
};

typedef struct {
    uint64_t keys[BN_MACSET_SLOTS];
    uint32_t next_victim;
} bn_macset;

/* One source's handshake bucket (bn_lane_rx.c's hs_admit). */
typedef struct {
    uint8_t addr[16]; /* IPv4-mapped, or the /64 of an IPv6 address */
    int used;
    double tokens, stamp;
} bn_hs_source;

typedef struct {
    uint64_t tx_frames, tx_datagrams, tx_bytes;
    uint64_t rx_datagrams, rx_bytes, rx_frames;
    uint64_t drop_auth, drop_replay, drop_too_old, drop_too_big, drop_malformed, drop_stale;
    uint64_t tap_write_failed;
    bn_dir lan_to_wan, wan_to_lan;
    /* Core-clock times; 0: none since the last take. */
    double tx_first_data; /* first data sent since the last authenticated receive */
    double tx_last;       /* last authenticated send */
    double rx_last;       /* last authenticated receive */
    double rx_first_data; /* first frame received since the last authenticated send */
} bn_port_stats;

typedef struct {
    int used, fd, vnet, held;
    int udp_join; /* the tap takes UDP_L4 superframes: join UDP runs too */
    /* Python's decisions (set_port). */
    bn_session *send; /* NULL: nothing is sent natively */
    void *send_ref;   /* the Python object owning *send */
    struct sockaddr_storage ep;
    socklen_t ep_len;
    int fits_plain, fits_csum, room, max_frame, blocked;
    bn_guard_cfg guard;
    /* Tokens of the guard's storm buckets lent by Python (Lane.lend): flooded
     * frames the lane passes itself, one token each (bn_guard_flood_class says
     * which bucket); at 0 the next flooded frame goes to Python, which lends
     * again when its buckets allow.  [0]: ARP/ND share, [1]: the rest. */
    uint32_t credit[2];
    bn_macset known;
    bn_port_stats st;
    /* WAN -> tap frames waiting for this wake-up's writes. */
    int npending;
    /* Path-MTU reports about the endpoint waiting for Python (0: none): the
     * smallest since the last went, from ICMP / from the local interface. */
    uint32_t mtu_icmp, mtu_local;
} bn_port;

typedef struct {
    uint32_t index;
    int port;
    bn_session *s;
    void *ref;
} bn_rx;

typedef struct bn_punt {
    int kind, port;
    uint32_t local_index;
    int32_t csum_start;
    uint16_t csum_offset;
    uint32_t size; /* PAYLOAD: the datagram's size; MTU: the MTU reported */
    int local;     /* MTU: the local interface refused (EMSGSIZE), not ICMP */
    uint8_t *data;
    size_t len;
    /* RAW: the datagram lengths within data */
    uint32_t *lens;
    int count;
    struct sockaddr_storage from;
    socklen_t from_len;
    struct bn_punt *next;
} bn_punt;

typedef struct {
    int port, dir;
    uint8_t mac[6];
    uint64_t frames, bytes;
} bn_maclog_entry;

typedef struct {
    uint64_t rx_datagrams, rx_bytes;
    uint64_t udp_send_blocked, udp_send_failed, udp_send_too_big;
    uint64_t wakeups, maclog_lost, gso_refused;
    /* Receives cut short (MSG_TRUNC: the datagram; MSG_CTRUNC: its control
     * messages, so a GRO segment size may be lost): dropped, counted. */
    uint64_t udp_truncated;
    /* Dropped here, the device's counters (DropReason MALFORMED, UNKNOWN_INDEX,
     * HANDSHAKE_MAC1), and handshake messages queued for Python / shed. */
    uint64_t drop_malformed, drop_unknown_index, drop_mac1, hs_queued, hs_shed;
    /* Errors the lane read off the socket's error queue (or cleared), and the
     * path-MTU reports among them it handed to Python. */
    uint64_t udp_errors, mtu_reports;
} bn_lane_stats;

typedef struct bn_lane {
    pthread_mutex_t mu;
    /* Every send on the UDP socket (bn_lane_sendmsg: sendmsg on udp_fd,
     * MSG_DONTWAIT); fuzz_lane_send puts a fake socket here. */
    ssize_t (*send)(struct bn_lane *l, const struct msghdr *msg);
    int epfd, udp_fd, stop_fd, punt_fd;
    int dual, gso, gro, udp_held, running, stopping;
    double clock_offset;
    bn_port ports[BN_MAX_PORTS];
    bn_rx rx[BN_MAX_RX];
    int nrx;
    bn_punt *punts, **punt_tail;
    int nhs; /* handshake punts queued */
    double hs_tokens, hs_stamp;
    /* Strangers' buckets by source; a slot passes to another source once its
     * bucket has refilled, until then colliding sources share it. */
    bn_hs_source hs_sources[BN_HS_SOURCES];
    uint8_t mac1_key[BN_MAC1_KEY_LEN];
    int has_mac1_key;
    uint32_t py_index[BN_MAX_PY_INDEXES];
    int npy_index;
    /* Path-MTU reports wait in the ports (mtu_icmp, mtu_local); they go to
     * Python no earlier than mtu_next (core clock). */
    int mtu_waiting;
    double mtu_next;
    /* Python threads waiting for the mutex: the loop lets them have it first. */
    int waiters;
    /* Reads (tap frames, UDP receives) and their bytes since start, never
     * zeroed: how much one wake-up of the loop moved (is it busy?). */
    uint64_t reads, read_bytes;
    bn_lane_stats st;
    bn_maclog_entry maclog[BN_MACLOG];
    int nmaclog;
    /* A fatal error of the loop: errno and the port (-1: the UDP socket). */
    int err, err_port;
    /* Buffers (allocated once). */
    uint8_t *rbuf;   /* tap reads / UDP receives */
    size_t rbuf_cap;
    uint8_t *sbuf;   /* a datagram opened to look, not to use (another source) */
    uint8_t *tbuf;   /* outgoing datagrams of one port */
    size_t tbuf_cap, tbuf_used;
    uint32_t *tlens;
    size_t *toffs;
    int ntx;
    /* WAN -> tap: frames of this wake-up (into rbuf), per port lists */
    bn_frame_in *pend;
    int *pend_port;
    int npend;
    size_t rbuf_used;
} bn_lane;

int bn_lane_init(bn_lane *l, int udp_fd, int dual, int gso, int gro, double clock_offset);
void bn_lane_free(bn_lane *l);
/* The loop; returns 0 after bn_lane_stop, else -1 with l->err set. */
int bn_lane_run(bn_lane *l);
void bn_lane_stop(bn_lane *l);
double bn_lane_now(const bn_lane *l);
int bn_lane_add_port(bn_lane *l, int fd, int vnet, const bn_guard_cfg *g);

/* Hand a port's fd (release: port -1, the UDP socket) back to / take it out of
 * the loop's epoll.  0, or -1 when epoll_ctl failed: that is the lane's fatal
 * error (bn_lane_fail), and run() returns -1. */
int bn_lane_release(bn_lane *l, int port);
int bn_lane_hold_port(bn_lane *l, int port);
/* Record a fatal error (the first one sticks) and stop the loop. */
void bn_lane_fail(bn_lane *l, int err, int port);
/* A port's slot is freed (under the mutex): its queued hand-overs must never
 * reach the port that reuses the slot.  Tap reads and path-MTU reports are
 * dropped; opened frames and payloads stay (they carry the UDP socket's
 * hand-over, which Python must still give back) but no longer name the port. */
void bn_lane_forget_punts(bn_lane *l, int port);
void bn_macset_add(bn_macset *m, const uint8_t *mac);
int bn_macset_has(const bn_macset *m, const uint8_t *mac);
void bn_macset_del(bn_macset *m, const uint8_t *mac);

/* For tests and fuzzing without fds: run one tap read / one UDP receive
 * through the same per-frame code the loop uses.  Outputs (datagrams, tap
 * writes, punts) go where the loop's would (fds may be socketpairs). */
int bn_lane_tap_read(bn_lane *l, int port, uint8_t *data, size_t n);
void bn_lane_udp_receive(bn_lane *l, uint8_t *data, size_t n, int gso_size,
                         const struct sockaddr_storage *from, socklen_t from_len);
void bn_lane_flush(bn_lane *l);
/* Send (or, without a socket, discard) what tap reads of `port` sealed. */
void bn_lane_tx_flush_port(bn_lane *l, int port);

/* The UDP socket's send: sendmsg(udp_fd, msg, MSG_DONTWAIT) (the default l->send). */
ssize_t bn_lane_sendmsg(bn_lane *l, const struct msghdr *msg);
/* The run of datagrams from lens[i] (of lens[0..n)) that leaves in one
 * UDP_SEGMENT send: the end j > i.  With gso, consecutive datagrams of
 * lens[i]'s size, the last of them possibly shorter, at most 64 and 65000
 * bytes (fastpath.udp.gso_batches' grouping); without, lens[i] alone. */
int bn_gso_run(const uint32_t *lens, int n, int i, int gso);

/* The UDP socket's receive side without a socket (bn_lane_recv.c), for
 * fuzzing: what one recvmmsg returned (msgs[0..got), their buffers, flags,
 * names and control messages, all untrusted), and one message read off the
 * error queue (recvmsg MSG_ERRQUEUE) at core time `now`. */
struct mmsghdr;
void bn_lane_recv_batch(bn_lane *l, struct mmsghdr *msgs, int got);
void bn_lane_errq_message(bn_lane *l, const struct msghdr *m, double now);
/* The GRO segment size among m's control messages (0: none). */
int bn_recv_gro_size(const struct msghdr *m);
/* 1 with *mtu and *local when m (from the error queue) is a path-MTU report:
 * EMSGSIZE from ICMP, ICMPv6 or the local interface, 0 < MTU <= 65535, with
 * an address (UdpEndpoint.kernel_mtu_reports' rule); else 0. */
int bn_recv_mtu_report(const struct msghdr *m, uint32_t *mtu, int *local);
/* Hand the waiting path-MTU reports to Python when BN_MTU_INTERVAL has passed
 * since the last went; the milliseconds until they may go (-1: none wait). */
int bn_lane_mtu_due(bn_lane *l, double now);

#endif
