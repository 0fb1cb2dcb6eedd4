/* fuzz_common.h - what every libFuzzer harness here shares: the invariant
 * check, the input reader, and the lane targets' setup (addresses, guard
 * configurations, sessions, a lane without sockets, its hand-over queue).
 * Header-only, so that scripts/fuzz.sh builds each harness as one file
 * linked with the pure C parts. */
#ifndef FUZZ_COMMON_H
#define FUZZ_COMMON_H

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sodium.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "bn_lane_int.h" /* the harnesses look inside the lane */

/* An invariant: its failure is a crash libFuzzer keeps the input of. */
#define CHECK(c) do { if (!(c)) __builtin_trap(); } while (0)

/* ---- the input reader: little-endian fields, -1 once the input ends ------- */

typedef struct {
    const uint8_t *p;
    size_t n;
} rd;

static inline int rd_u8(rd *r) {
    if (r->n == 0)
        return -1;
    r->n--;
    return *r->p++;
}

static inline long rd_u16(rd *r) {
    if (r->n < 2)
        return -1;
    long v = r->p[0] | r->p[1] << 8;
    r->p += 2;
    r->n -= 2;
    return v;
}

/* Up to `want` bytes (fewer at the input's end); how many were copied. */
static inline size_t rd_bytes(rd *r, uint8_t *out, size_t want) {
    size_t k = want < r->n ? want : r->n;
    if (k)
        memcpy(out, r->p, k);
    r->p += k;
    r->n -= k;
    return k;
}

/* ---- setup ------------------------------------------------------------------- */

static inline void fuzz_sodium(void) {
    static int ready;
    if (!ready) {
        CHECK(sodium_init() >= 0);
        ready = 1;
    }
}

static inline void fuzz_v4(struct sockaddr_storage *ss, socklen_t *len, const char *a, int port) {
    struct sockaddr_in *s = (struct sockaddr_in *)ss;
    memset(ss, 0, sizeof *ss);
    s->sin_family = AF_INET;
    s->sin_port = htons((uint16_t)port);
    CHECK(inet_pton(AF_INET, a, &s->sin_addr) == 1);
    *len = sizeof *s;
}

static inline void fuzz_v6(struct sockaddr_storage *ss, socklen_t *len, const char *a, int port,
                           uint32_t scope) {
    struct sockaddr_in6 *s = (struct sockaddr_in6 *)ss;
    memset(ss, 0, sizeof *ss);
    s->sin6_family = AF_INET6;
    s->sin6_port = htons((uint16_t)port);
    s->sin6_scope_id = scope;
    CHECK(inet_pton(AF_INET6, a, &s->sin6_addr) == 1);
    *len = sizeof *s;
}

/* The guard configurations the lane targets choose from: off; on; on plain;
 * DHCP, RA and storm guards with a VLAN list {untagged, 1..9, 100}; storm and
 * that list alone. */
#define FUZZ_GUARDS 5
static inline void fuzz_guard_sets(bn_guard_cfg g[FUZZ_GUARDS]) {
    memset(g, 0, sizeof(bn_guard_cfg) * FUZZ_GUARDS);
    g[1].on = 1;
    g[2].on = 1;
    g[2].plain = 1;
    g[3].on = 1;
    g[3].dhcp = g[3].ra = g[3].storm = 1;
    g[3].have_allowed = 1;
    for (int v = 0; v < 10; v++)
        g[3].allowed[v >> 3] |= (uint8_t)(1u << (v & 7));
    g[3].allowed[100 >> 3] |= (uint8_t)(1u << (100 & 7));
    g[4] = g[3];
    g[4].dhcp = g[4].ra = 0;
}

/* A session with fixed keys: send_key 0x40 + k, recv_key 0x80 + k. */
static inline void fuzz_session(bn_session *s, uint32_t local, uint32_t remote, int k) {
    memset(s, 0, sizeof *s);
    s->local_index = local;
    s->remote_index = remote;
    memset(s->send_key, 0x40 + k, 32);
    memset(s->recv_key, 0x80 + k, 32);
    bn_replay_init(&s->replay);
}

/* A lane without a UDP socket (udp_fd -1: what would be sent is discarded). */
static inline void fuzz_lane_init(bn_lane *l, int gro) {
    fuzz_sodium();
    CHECK(bn_lane_init(l, -1, 0, 0, gro, 0.0) == 0);
}

/* Python's side of a take: the queued hand-overs go; nothing is signalled. */
static inline void fuzz_free_punts(bn_lane *l) {
    bn_punt *p = l->punts;
    while (p) {
        bn_punt *next = p->next;
        free(p->data);
        free(p->lens);
        free(p);
        p = next;
    }
    l->punts = NULL;
    l->punt_tail = &l->punts;
    l->nhs = 0;
    uint64_t junk;
    if (read(l->punt_fd, &junk, sizeof junk) < 0) {
        /* not signalled */
    }
}

#endif
