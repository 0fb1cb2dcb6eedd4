/* bn_guard.c - the guards' hot path and the frame-kind counters.
 *
 * C twins of three pieces of Python, each read byte for byte:
 *
 * 1. ordinary() = bridger.guard.classify.ordinary_untrusted with the tables of
 *    interest_tables(dhcp, ra) (a switch here instead of two 256-byte tables).
 * 2. bn_guard_fast_out / bn_guard_fast_in = the parts of Guard.outbound and
 *    Guard._inbound (bridger.guard.policy) that run for a peer that is not
 *    loop-blocked, up to the first call of Guard._look: 1 exactly when Python
 *    would return None from there, 0 when it returns a reason or takes the full
 *    look (the lane hands those frames to Python, which runs the whole Guard).
 * 3. bn_account = bridger.dataplane.accounting.account without its MAC table.
 *
 * Every read is behind a length check; a frame may be any length, 0 included.
 */
#include "bn.h"

#include <string.h>

#define ET_IPV4 0x0800u
#define ET_ARP 0x0806u
#define ET_IPV6 0x86DDu
#define ET_VLAN 0x8100u
#define ET_QINQ 0x88A8u
#define ET_QINQ_OLD 0x9100u
#define ET_PROBE 0x88B5u

#define PROTO_HOPOPT 0u
#define PROTO_UDP 17u
#define PROTO_ROUTING 43u
#define PROTO_FRAGMENT 44u
#define PROTO_AH 51u
#define PROTO_ICMPV6 58u
#define PROTO_DSTOPTS 60u

/* constants.VLAN_TPIDS */
static int is_tpid(unsigned et) {
    return et == ET_VLAN || et == ET_QINQ || et == ET_QINQ_OLD;
}

/* interest_tables(dhcp, ra)[0][proto] */
static int v4_interest(const bn_guard_cfg *g, unsigned proto) {
    return g->dhcp && proto == PROTO_UDP;
}

/* interest_tables(dhcp, ra)[1][nh] */
static int v6_interest(const bn_guard_cfg *g, unsigned nh) {
    switch (nh) {
    case PROTO_UDP:
        return g->dhcp != 0;
    case PROTO_ICMPV6:
        return g->ra != 0;
    case PROTO_HOPOPT:
    case PROTO_ROUTING:
    case PROTO_DSTOPTS:
    case PROTO_FRAGMENT:
    case PROTO_AH:
        return g->dhcp || g->ra;
    default:
        return 0;
    }
}

/* ordinary_untrusted: the outer VLAN id (0 untagged / priority-tagged) of a
 * frame none of the enabled guards acts on, or -1 ("look closer").  Python's
 * IndexError (a byte past the end) and short slices both end in -1 here. */
static int ordinary(const bn_guard_cfg *g, const uint8_t *f, size_t n) {
    if (n < BN_ETH_HLEN)
        return -1; /* frame[12:14] shorter than 2: -1 */
    unsigned et = bn_be16(f + 12);
    if (et == ET_IPV4)
        return n > 23 ? (v4_interest(g, f[23]) ? -1 : 0) : -1;
    if (et == ET_IPV6)
        return n > 20 ? (v6_interest(g, f[20]) ? -1 : 0) : -1;
    int vid = 0;
    if (is_tpid(et)) {
        if (n < 16)
            return -1;
        vid = (f[14] & 0x0F) << 8 | f[15];
        if (n < 18)
            return -1; /* frame[16:18] short: -1 below in Python */
        et = bn_be16(f + 16);
        size_t l3 = 18;
        if (is_tpid(et)) {
            if (n < 22)
                return -1;
            et = bn_be16(f + 20);
            l3 = 22;
            if (is_tpid(et))
                return -1;
        }
        if (et == ET_IPV4)
            return n > l3 + 9 ? (v4_interest(g, f[l3 + 9]) ? -1 : vid) : -1;
        if (et == ET_IPV6)
            return n > l3 + 6 ? (v6_interest(g, f[l3 + 6]) ? -1 : vid) : -1;
    }
    if (et == ET_PROBE)
        return -1;
    return vid;
}

/* `vid in Guard._allowed` (None: everything). */
static int vlan_allowed(const bn_guard_cfg *g, int vid) {
    if (!g->have_allowed)
        return 1;
    unsigned v = (unsigned)vid & 0x0FFFu;
    return (g->allowed[v >> 3] >> (v & 7u)) & 1u;
}

/* frame[12:14] == probe EtherType or in VLAN_TPIDS (a short slice is neither). */
static int special_ethertype(const uint8_t *f, size_t n) {
    if (n < BN_ETH_HLEN)
        return 0;
    unsigned et = bn_be16(f + 12);
    return et == ET_PROBE || is_tpid(et);
}

/* Guard.outbound up to its storm check: 1 when nothing but that check is left. */
static int passes_but_storm(const bn_guard_cfg *g, const uint8_t *f, size_t n) {
    if (!g->plain || special_ethertype(f, n)) {
        int vid = ordinary(g, f, n);
        if (vid < 0)
            return 0; /* _look */
        if (!vlan_allowed(g, vid))
            return 0; /* Reason.VLAN */
    }
    return 1;
}

/* Guard.outbound, peer not blocked.  dst_known: `known is None or frame[:6] in
 * known` (the caller passes 1 when the Guard has no `known`). */
int bn_guard_fast_out(const bn_guard_cfg *g, const uint8_t *f, size_t n, int dst_known) {
    if (!g->on)
        return 1;
    if (!passes_but_storm(g, f, n))
        return 0;
    if (g->storm) {
        if (n == 0)
            return 1; /* frame[0] raises IndexError: None */
        if ((f[0] & 1) || !dst_known)
            return 0; /* flooded: _look */
    }
    return 1;
}

/* bridger.guard.loop.foreign_probe_vid: the outer VLAN id of another site's
 * loop probe (untagged or one tag; magic and version right; not our site id;
 * not a hub's, FLAG_RELAY), else -1. */
static int foreign_probe(const bn_guard_cfg *g, const uint8_t *f, size_t n) {
    if (n < BN_ETH_HLEN)
        return -1;
    unsigned et = bn_be16(f + 12);
    size_t l3 = BN_ETH_HLEN;
    int vid = 0;
    if (is_tpid(et)) {
        if (n < 18)
            return -1;
        vid = (f[14] & 0x0F) << 8 | f[15];
        et = bn_be16(f + 16);
        l3 = 18;
    }
    if (et != ET_PROBE || n < l3 + BN_PROBE_BODY_LEN)
        return -1;
    const uint8_t *b = f + l3; /* magic, version, flags, VLAN id, site id, nonce */
    if (memcmp(b, BN_PROBE_MAGIC, 4) != 0 || b[4] != BN_PROBE_VERSION)
        return -1;
    if (memcmp(b + 8, g->site_id, sizeof g->site_id) == 0)
        return -1; /* ours: the detector acts on it */
    if (b[5] & BN_PROBE_FLAG_RELAY)
        return -1; /* a hub's: the detector notes it (and a hub relays it) */
    return vid;
}

#define ICMP6_RS 133u
#define ICMP6_REDIRECT 137u

/* classify.look_untrusted's kind, as far as Guard._look's storm step cares:
 * NEIGHBOUR_KINDS -> ND, CONTROL_KINDS -> none (Python), the rest -> other. */
int bn_guard_flood_class(const bn_guard_cfg *g, const uint8_t *f, size_t n, int dst_known) {
    if (!g->on || !g->storm || n < BN_ETH_HLEN)
        return BN_FLOOD_NONE;
    if (!(f[0] & 1) && dst_known)
        return BN_FLOOD_NONE; /* not flooded: bn_guard_fast_out decides */
    if (!passes_but_storm(g, f, n))
        return BN_FLOOD_NONE;
    if (f[0] == 0x01 && f[1] == 0x80 && f[2] == 0xC2 && f[3] == 0 && f[4] == 0 && f[5] < 0x10)
        return BN_FLOOD_NONE; /* IEEE link-local (BPDUs...): the control bucket */
    unsigned et = bn_be16(f + 12);
    size_t l3 = BN_ETH_HLEN;
    for (int tags = 0; is_tpid(et); tags++) {
        if (tags == 2 || n < l3 + 4)
            return BN_FLOOD_NONE;
        et = bn_be16(f + l3 + 2);
        l3 += 4;
    }
    if (et == ET_ARP)
        return BN_FLOOD_ND;
    if (et == ET_PROBE)
        return BN_FLOOD_NONE; /* (passes_but_storm never lets one through) */
    if (et != ET_IPV6)
        return BN_FLOOD_OTHER;
    if (n < l3 + 41)
        return BN_FLOOD_NONE;
    if (f[l3] >> 4 != 6)
        return BN_FLOOD_OTHER;
    switch (f[l3 + 6]) {
    case PROTO_HOPOPT:
    case PROTO_ROUTING:
    case PROTO_DSTOPTS:
    case PROTO_FRAGMENT:
    case PROTO_AH:
        return BN_FLOOD_NONE; /* the classifier walks the chain: Python */
    case PROTO_ICMPV6: {
        unsigned type = f[l3 + 40];
        return type >= ICMP6_RS && type <= ICMP6_REDIRECT ? BN_FLOOD_ND : BN_FLOOD_OTHER;
    }
    default:
        return BN_FLOOD_OTHER;
    }
}

/* Guard._inbound (and inbound_batch's shortcut), peer not blocked. */
int bn_guard_fast_in(const bn_guard_cfg *g, const uint8_t *f, size_t n) {
    if (!g->on)
        return 1;
    if (g->plain && !special_ethertype(f, n))
        return 1;
    int vid = ordinary(g, f, n);
    if (vid < 0 && g->probe_free)
        vid = foreign_probe(g, f, n);
    if (vid < 0)
        return 0; /* _look */
    return vlan_allowed(g, vid); /* 0: Reason.VLAN */
}

/* counters._account's ETHERTYPE_VLAN / ETHERTYPE_QINQ (0x9100 is not one). */
static int account_tag(unsigned et) {
    return et == ET_VLAN || et == ET_QINQ;
}

void bn_account(bn_dir *d, const uint8_t *f, size_t n, uint64_t count, uint64_t nbytes) {
    d->frames += count;
    d->bytes += nbytes;
    if (n < BN_ETH_HLEN) {
        d->kinds[BN_K_RUNT] += count;
        return;
    }
    if (f[0] & 1) {
        int broadcast = 1;
        for (int i = 0; i < 6; i++)
            broadcast &= f[i] == 0xFF;
        d->kinds[broadcast ? BN_K_BROADCAST : BN_K_MULTICAST] += count;
    } else {
        d->kinds[BN_K_UNICAST] += count;
    }
    long et = bn_be16(f + 12);
    if (account_tag((unsigned)et)) {
        d->kinds[BN_K_VLAN] += count;
        et = n >= 18 ? (long)bn_be16(f + 16) : -1;
        if (et >= 0 && account_tag((unsigned)et))
            et = n >= 22 ? (long)bn_be16(f + 20) : -1;
    }
    int kind;
    if (et == (long)ET_IPV4)
        kind = BN_K_IPV4;
    else if (et == (long)ET_IPV6)
        kind = BN_K_IPV6;
    else if (et == (long)ET_ARP)
        kind = BN_K_ARP;
    else
        kind = BN_K_OTHER;
    d->kinds[kind] += count;
}
