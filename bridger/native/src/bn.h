/* bn.h - bridger's native per-packet code: the declarations shared by its parts.
 *
 * Pure functions over caller-owned buffers (no I/O, no Python), each the C twin
 * of a Python reference named in its comment; differential tests in
 * tests/native hold every twin to its reference, and the fuzz targets in
 * bridger/native/fuzz run them under ASan+UBSan.  bn_lane*.c build the data
 * plane loop from them; the bn_py_*.c files are the CPython bindings.
 */
#ifndef BN_H
#define BN_H

#include <stddef.h>
#include <stdint.h>

/* ---- checksum, virtio-net header, TCP segmentation (bn_segment.c) -------- */

#define BN_VNET_HDR_LEN 10
#define BN_ETH_HLEN 14
#define BN_TCP_CSUM_OFFSET 16
/* segment.MAX_SEGMENTS / MAX_SUPERFRAME (coalesce limits). */
#define BN_MAX_SEGMENTS 64
#define BN_MAX_SUPERFRAME 65000
/* Longest header a joined run may have (longer: not joined). */
#define BN_MAX_JOIN_HEAD 256

typedef struct {
    uint8_t flags, gso_type;
    uint16_t hdr_len, gso_size, csum_start, csum_offset;
} bn_vnet;

/* checksum.ones_sum: ones' complement sum (odd length zero-padded), folded to
 * 16 bits; 0xFFFF for nonzero data that sums to 0 mod 0xFFFF, 0 for all-zero. */
uint32_t bn_ones_sum(const uint8_t *p, size_t n);
/* checksum.complete_checksum, in place.  -1 (frame untouched) unless
 * csum_start + csum_offset + 2 <= len. */
int bn_complete_checksum(uint8_t *frame, size_t len, size_t csum_start, size_t csum_offset);
/* vnet.decode_vnet_hdr_untrusted: 0, or -1 when n < BN_VNET_HDR_LEN. */
int bn_vnet_decode(const uint8_t *p, size_t n, bn_vnet *out);
void bn_vnet_encode(const bn_vnet *h, uint8_t out[BN_VNET_HDR_LEN]);
/* segment.clamp_mss, in place: 1 when the frame was changed, 0 when Python's
 * returns None. */
int bn_clamp_mss(uint8_t *frame, size_t len, int room, int partial);
/* segment.segment_tcp: cut a TSO superframe (`frame`: after the vnet header)
 * into segments of at most max_frame bytes.  Segment i is written at
 * out + offs[i], with `headroom` bytes free before it and `tailroom` after:
 * offs[0] = headroom, offs[i+1] = offs[i] + lens[i] + tailroom + headroom.
 * Returns the count (>= 1); -1 where Python raises SegmentError; -2 when
 * out_cap or max_segs is too small (the caller then leaves it to Python).
 * *csum_start = the TCP header offset (segments' checksums are partial there
 * + 16). */
int bn_segment_tcp(const uint8_t *frame, size_t len, const bn_vnet *hdr, int max_frame,
                   uint8_t *out, size_t out_cap, size_t headroom, size_t tailroom,
                   size_t *offs, uint16_t *lens, int max_segs, int *csum_start);

/* One frame of segment.coalesce's input: csum_start < 0 = complete checksum
 * (not in the csum dict). */
typedef struct {
    const uint8_t *data;
    uint32_t len;
    int32_t csum_start;
    uint16_t csum_offset;
} bn_frame_in;

/* One tap write planned by bn_coalesce: the vnet header, then either
 * frames[first] whole (head_len == 0, count == 1), or `head` (the rewritten
 * headers of a joined run) followed by frames[i][head_len:] for each i in
 * [first, first + count). nbytes = total length of those input frames. */
typedef struct {
    uint8_t vnet[BN_VNET_HDR_LEN];
    uint16_t head_len;
    uint32_t first, count, nbytes;
    uint8_t head[BN_MAX_JOIN_HEAD];
} bn_out_frame;

/* segment.coalesce: plans the writes for frames[0..n); returns how many were
 * written to out (<= n); the same headers, frames, counts and nbytes as
 * Python's generator, in order. */
int bn_coalesce(const bn_frame_in *frames, int n, bn_out_frame *out);
/* segment.coalesce(frames, csum, udp): with udp, runs of UDP datagrams of one
 * flow are joined too (UDP_L4 superframes). */
int bn_coalesce2(const bn_frame_in *frames, int n, bn_out_frame *out, int udp);

/* ---- the guards' hot path and the frame-kind counters (bn_guard.c) -------- */

/* bridger.guard.loop's probe body (PROBE_BODY: magic, version, flags, VLAN id,
 * site id, nonce), constants.PROBE_MAGIC / PROBE_VERSION and FLAG_RELAY. */
#define BN_PROBE_BODY_LEN 24
#define BN_PROBE_MAGIC "BRGD"
#define BN_PROBE_VERSION 1
#define BN_PROBE_FLAG_RELAY 0x01
#define BN_SITE_ID_LEN 8

typedef struct {
    int on;            /* a Guard exists for the port */
    int plain;         /* Guard._plain */
    int dhcp, ra;      /* dhcp / ra = "local" */
    int storm;         /* flood_rate > 0 */
    int have_allowed;  /* a VLAN allow-list (vlans) exists */
    uint8_t allowed[4096 / 8]; /* bit v: VLAN id v allowed (bit 0: untagged ok) */
    /* Guard.free_probes: another site's loop probe from the tunnel needs no look
     * (the bridge never hands probes between peers): probe_free and our site
     * id (a hub's probe, FLAG_RELAY, still goes to Python's detector). */
    int probe_free;
    uint8_t site_id[BN_SITE_ID_LEN];
} bn_guard_cfg;

/* 1 when Python's Guard.outbound(frame) (peer not loop-blocked; the frame's
 * destination MAC in `known` iff dst_known) returns None on its hot path
 * without a full look (_look), so that nothing but the MAC-flap note happens;
 * else 0 (the lane hands the frame to Python).  cfg->on == 0: always 1. */
int bn_guard_fast_out(const bn_guard_cfg *g, const uint8_t *f, size_t n, int dst_known);
/* The same for Guard.inbound / inbound_batch. */
int bn_guard_fast_in(const bn_guard_cfg *g, const uint8_t *f, size_t n);
/* For a frame bn_guard_fast_out refused only because it is flooded (storm
 * control on; group destination or unknown unicast): which of Guard._look's
 * storm buckets it would take a token from, BN_FLOOD_ND (ARP, ICMPv6 RS, RA,
 * NS, NA, redirect: the ND share first) or BN_FLOOD_OTHER (the general
 * budget); 0 when Python must look (any other refusal, a control frame or loop
 * probe, IPv6 behind extension headers or cut short, three tags). */
enum { BN_FLOOD_NONE, BN_FLOOD_ND, BN_FLOOD_OTHER };
int bn_guard_flood_class(const bn_guard_cfg *g, const uint8_t *f, size_t n, int dst_known);

enum {
    BN_K_UNICAST, BN_K_BROADCAST, BN_K_MULTICAST, BN_K_ARP, BN_K_IPV4, BN_K_IPV6,
    BN_K_VLAN, BN_K_OTHER, BN_K_RUNT, BN_NKINDS
};
/* accounting.Direction: frames, bytes and accounting.KINDS in that order. */
typedef struct {
    uint64_t frames, bytes, kinds[BN_NKINDS];
} bn_dir;
/* counters._account's counting (not its MAC table): `count` frames, `nbytes`
 * in all, headed like f. */
void bn_account(bn_dir *d, const uint8_t *f, size_t n, uint64_t count, uint64_t nbytes);

/* ---- transport sessions: replay window and AEAD (bn_session.c) ------------ */

#define BN_REPLAY_BLOCKS 128
#define BN_TRANSPORT_HEADER 16
#define BN_TAG_LEN 16
#define BN_TRANSPORT_OVERHEAD 32
/* constants.REJECT_AFTER_MESSAGES */
#define BN_REJECT_AFTER_MESSAGES (UINT64_MAX - (UINT64_C(1) << 13))

typedef struct {
    uint64_t blocks[BN_REPLAY_BLOCKS];
    uint64_t last;
} bn_replay;

enum { BN_REPLAY_OK = 0, BN_REPLAY_REPLAY = 1, BN_REPLAY_TOO_OLD = 2 };
void bn_replay_init(bn_replay *w);
/* replay.ReplayWindow.check: accept-and-record, or REPLAY / TOO_OLD. */
int bn_replay_check(bn_replay *w, uint64_t counter);

typedef struct {
    uint32_t local_index, remote_index;
    uint8_t send_key[32], recv_key[32];
    uint64_t send_counter;
    bn_replay replay;
    double created; /* Keypair.created, the core's clock */
    int wiped;      /* keys zeroed (Session.wipe): nothing is sealed or opened with it */
} bn_session;

/* The AEAD step of bn_seal / bn_open (which pass the counter nonce and no
 * associated data), with any nonce and associated data so that RFC 8439's
 * vectors run through it (tests/native/test_aead_rfc8439.py).  bn_aead_seal
 * writes n ciphertext bytes then the 16-byte tag to out (may be plaintext);
 * bn_aead_open reads m ciphertext bytes then the tag from sealed, writes the
 * plaintext to out (may be sealed) and returns 0, or -1 when authentication
 * fails. */
void bn_aead_seal(const uint8_t key[32], const uint8_t nonce[12], const uint8_t *aad,
                  size_t aad_len, const uint8_t *plaintext, size_t n, uint8_t *out);
int bn_aead_open(const uint8_t key[32], const uint8_t nonce[12], const uint8_t *aad,
                 size_t aad_len, const uint8_t *sealed, size_t m, uint8_t *out);

/* aead.seal_transport: header (type 4, remote_index, counter) at out[0..16),
 * then plaintext sealed under send_key with the counter nonce, then the tag.
 * plaintext may be out + 16 (in place).  Returns 16 + n + 16. */
size_t bn_seal(const bn_session *s, uint64_t counter, const uint8_t *plaintext, size_t n,
               uint8_t *out);
/* aead.open_transport for datagram d of length n (>= 32; counter = its header's):
 * the plaintext (length n - 32) is written to out (may be d + 16: in place).
 * Returns that length, or -1 when authentication fails.  The replay window is
 * not touched. */
long bn_open(const bn_session *s, uint64_t counter, const uint8_t *d, size_t n, uint8_t *out);

/* Little-endian loads/stores (the wire is little endian). */
static inline uint32_t bn_le32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static inline uint64_t bn_le64(const uint8_t *p) {
    return (uint64_t)bn_le32(p) | (uint64_t)bn_le32(p + 4) << 32;
}
static inline void bn_put_le32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); p[2] = (uint8_t)(v >> 16); p[3] = (uint8_t)(v >> 24);
}
static inline void bn_put_le64(uint8_t *p, uint64_t v) {
    bn_put_le32(p, (uint32_t)v); bn_put_le32(p + 4, (uint32_t)(v >> 32));
}
static inline uint16_t bn_be16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static inline uint32_t bn_be32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static inline void bn_put_be16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
static inline void bn_put_be32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24); p[1] = (uint8_t)(v >> 16); p[2] = (uint8_t)(v >> 8); p[3] = (uint8_t)v;
}

#endif
