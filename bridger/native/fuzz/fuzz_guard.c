/* fuzz_guard.c - libFuzzer target for bn_guard.c (bn_guard_fast_out/in, bn_account).
 *
 * Input: byte 0 = flags (bit 0 on, 1 dhcp, 2 ra, 3 storm, 4 a VLAN allow-list,
 * 5 untagged allowed, 6 dst_known, 7 other sites' probes free, our site id
 * eight zero bytes); with an allow-list, byte 1 = how many VLAN
 * ids follow (low 4 bits), each 2 bytes big endian (any 12-bit value, so the
 * bitmap is the input's); then one byte for the account count; the rest is the
 * frame, copied to a buffer of exactly its length (ASan sees any over-read).
 *
 * Invariants checked (CHECK: a trap on failure):
 * - the kinds partitions: destination kinds and EtherType kinds each sum to
 *   the frames of a non-runt; a runt counts only as a runt; vlan is 0 or all;
 * - cfg.on == 0 passes everything;
 * - fast_out == fast_in and (no storm, or an empty read, or a known unicast
 *   destination): Guard.outbound is Guard._inbound plus the storm check
 *   (fast_in without free probes: they are free inbound only);
 * - free probes only ever pass more, and only loop probes (EtherType 0x88B5,
 *   untagged or under one tag);
 * - more guards never pass more: the same config with DHCP and RA on passes
 *   only frames it passed before;
 * - a flood class (a lent token may pay for it) only for a flooded frame the
 *   fast path refused, with storm control on.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"

static void check_account(const uint8_t *f, size_t n, uint64_t count) {
    bn_dir d;
    memset(&d, 0, sizeof d);
    bn_account(&d, f, n, count, (uint64_t)n * count);
    CHECK(d.frames == count && d.bytes == (uint64_t)n * count);
    const uint64_t *k = d.kinds;
    if (n < BN_ETH_HLEN) {
        CHECK(k[BN_K_RUNT] == count);
        for (int i = 0; i < BN_NKINDS; i++)
            CHECK(i == BN_K_RUNT || k[i] == 0);
        return;
    }
    CHECK(k[BN_K_RUNT] == 0);
    CHECK(k[BN_K_UNICAST] + k[BN_K_BROADCAST] + k[BN_K_MULTICAST] == count);
    CHECK(k[BN_K_ARP] + k[BN_K_IPV4] + k[BN_K_IPV6] + k[BN_K_OTHER] == count);
    CHECK(k[BN_K_VLAN] == 0 || k[BN_K_VLAN] == count);
    CHECK((k[BN_K_UNICAST] != 0) == !(f[0] & 1));
    /* Twice the same frame: the counts add. */
    bn_account(&d, f, n, count, 0);
    CHECK(d.frames == 2 * count && k[BN_K_UNICAST] + k[BN_K_BROADCAST] + k[BN_K_MULTICAST] == 2 * count);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 2)
        return 0;
    uint8_t flags = data[0];
    size_t at = 1;
    bn_guard_cfg g;
    memset(&g, 0, sizeof g);
    g.on = flags & 1;
    g.dhcp = (flags >> 1) & 1;
    g.ra = (flags >> 2) & 1;
    g.storm = (flags >> 3) & 1;
    g.have_allowed = (flags >> 4) & 1;
    int dst_known = (flags >> 6) & 1;
    if (g.have_allowed) {
        size_t k = data[at++] & 0x0F;
        for (size_t i = 0; i < k && at + 2 <= size; i++, at += 2) {
            unsigned v = bn_be16(data + at) & 0x0FFFu;
            g.allowed[v >> 3] |= (uint8_t)(1u << (v & 7u));
        }
        if (flags & 0x20)
            g.allowed[0] |= 1u;
    }
    g.plain = !g.have_allowed && !g.dhcp && !g.ra;
    if (at >= size)
        return 0;
    g.probe_free = (flags >> 7) & 1;
    uint64_t count = 1 + (uint64_t)data[at++];
    size_t n = size - at;
    uint8_t *f = malloc(n ? n : 1);
    if (f == NULL)
        return 0;
    memcpy(f, data + at, n);

    check_account(f, n, count);

    int out = bn_guard_fast_out(&g, f, n, dst_known);
    int in = bn_guard_fast_in(&g, f, n);
    CHECK(out == 0 || out == 1);
    CHECK(in == 0 || in == 1);
    bn_guard_cfg strict = g;
    strict.probe_free = 0;
    int in_strict = bn_guard_fast_in(&strict, f, n);
    CHECK(in >= in_strict);
    if (in != in_strict) {
        CHECK(n >= 18);
        CHECK(bn_be16(f + 12) == 0x88B5u || bn_be16(f + 16) == 0x88B5u);
    }
    if (!g.on) {
        CHECK(out == 1 && in == 1);
    } else {
        int storm_ok = !g.storm || n == 0 || (!(f[0] & 1) && dst_known);
        CHECK(out == (in_strict && storm_ok));
        bn_guard_cfg more = g;
        more.dhcp = more.ra = 1;
        more.plain = 0;
        CHECK(bn_guard_fast_in(&more, f, n) <= in);
        CHECK(bn_guard_fast_out(&more, f, n, dst_known) <= out);
    }
    /* a flood class only for a frame the fast path refused as flooded */
    int fc = bn_guard_flood_class(&g, f, n, dst_known);
    CHECK(fc == BN_FLOOD_NONE || fc == BN_FLOOD_ND || fc == BN_FLOOD_OTHER);
    if (fc != BN_FLOOD_NONE)
        CHECK(g.on && g.storm && out == 0 && n >= BN_ETH_HLEN && ((f[0] & 1) || !dst_known));
    bn_guard_cfg off = g;
    off.on = 0;
    CHECK(bn_guard_fast_out(&off, f, n, 0) == 1 && bn_guard_fast_in(&off, f, n) == 1);
    free(f);
    return 0;
}
