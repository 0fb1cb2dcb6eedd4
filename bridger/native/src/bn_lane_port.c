/* bn_lane_port.c - the lane's ports: their fds in and out of the loop's epoll
 * (a port is held while Python has its fd), the MACs seen behind each peer,
 * and which port an address is the endpoint of. */
#define _GNU_SOURCE
#include "bn_lane_int.h"

#include <errno.h>
#include <string.h>
#include <sys/epoll.h>

int bn_lane_ep_add(bn_lane *l, int fd, uint64_t tag) {
    struct epoll_event ev;
    memset(&ev, 0, sizeof ev);
    ev.events = EPOLLIN;
    ev.data.u64 = tag;
    return epoll_ctl(l->epfd, EPOLL_CTL_ADD, fd, &ev);
}

int bn_lane_add_port(bn_lane *l, int fd, int vnet, const bn_guard_cfg *g) {
    for (int i = 0; i < BN_MAX_PORTS; i++) {
        bn_port *p = &l->ports[i];
        if (p->used)
            continue;
        memset(p, 0, sizeof *p);
        p->used = 1;
        p->fd = fd;
        p->vnet = vnet;
        if (g)
            p->guard = *g;
        if (fd >= 0 && bn_lane_ep_add(l, fd, (uint64_t)i) < 0) {
            int err = errno;
            memset(p, 0, sizeof *p); /* the slot stays free */
            errno = err;
            return -1;
        }
        return i;
    }
    errno = ENOSPC;
    return -1;
}

int bn_lane_hold_port(bn_lane *l, int port) {
    bn_port *p = &l->ports[port];
    if (!p->held) {
        p->held = 1;
        if (p->fd >= 0 && epoll_ctl(l->epfd, EPOLL_CTL_DEL, p->fd, NULL) < 0) {
            bn_lane_fail(l, errno, port);
            return -1;
        }
    }
    return 0;
}

void bn_lane_hold_udp(bn_lane *l) {
    if (!l->udp_held) {
        l->udp_held = 1;
        if (l->udp_fd >= 0 && epoll_ctl(l->epfd, EPOLL_CTL_DEL, l->udp_fd, NULL) < 0)
            bn_lane_fail(l, errno, -1);
    }
}

int bn_lane_release(bn_lane *l, int port) {
    if (port < 0) {
        if (l->udp_held) {
            l->udp_held = 0;
            if (l->udp_fd >= 0 && bn_lane_ep_add(l, l->udp_fd, BN_EV_UDP) < 0) {
                bn_lane_fail(l, errno, -1);
                return -1;
            }
        }
        return 0;
    }
    bn_port *p = &l->ports[port];
    if (p->used && p->held) {
        p->held = 0;
        if (p->fd >= 0 && bn_lane_ep_add(l, p->fd, (uint64_t)port) < 0) {
            bn_lane_fail(l, errno, port);
            return -1;
        }
    }
    return 0;
}

/* ---- MAC set: the MACs seen behind a peer (bounded, approximate LRU) ------ */

static uint64_t mac_key(const uint8_t *mac) {
    uint64_t k = 0;
    for (int i = 0; i < 6; i++)
        k = k << 8 | mac[i];
    return k + 1; /* 0 marks an empty slot */
}

static uint32_t mac_slot(uint64_t k) {
    return (uint32_t)((k * UINT64_C(0x9E3779B97F4A7C15)) >> 53) & (BN_MACSET_SLOTS - 1);
}

int bn_macset_has(const bn_macset *m, const uint8_t *mac) {
    uint64_t k = mac_key(mac);
    uint32_t s = mac_slot(k);
    for (int i = 0; i < 4; i++)
        if (m->keys[(s + (uint32_t)i) & (BN_MACSET_SLOTS - 1)] == k)
            return 1;
    return 0;
}

void bn_macset_add(bn_macset *m, const uint8_t *mac) {
    uint64_t k = mac_key(mac);
    uint32_t s = mac_slot(k);
    for (int i = 0; i < 4; i++) {
        uint64_t *slot = &m->keys[(s + (uint32_t)i) & (BN_MACSET_SLOTS - 1)];
        if (*slot == k)
            return;
        if (*slot == 0) {
            *slot = k;
            return;
        }
    }
    m->keys[(s + (m->next_victim++ & 3)) & (BN_MACSET_SLOTS - 1)] = k;
}

void bn_macset_del(bn_macset *m, const uint8_t *mac) {
    uint64_t k = mac_key(mac);
    uint32_t s = mac_slot(k);
    for (int i = 0; i < 4; i++) {
        uint64_t *slot = &m->keys[(s + (uint32_t)i) & (BN_MACSET_SLOTS - 1)];
        if (*slot == k)
            *slot = 0; /* lookups probe all four slots: a hole breaks no chain */
    }
}

/* ---- endpoints -------------------------------------------------------------- */

/* Same address and port; with ``any_port``, same address whatever the ports. */
static int same_addr(const struct sockaddr_storage *a, socklen_t alen,
                     const struct sockaddr_storage *b, socklen_t blen, int any_port) {
    if (a->ss_family != b->ss_family)
        return 0;
    if (a->ss_family == AF_INET6) {
        const struct sockaddr_in6 *x = (const void *)a, *y = (const void *)b;
        return (any_port || x->sin6_port == y->sin6_port)
               && x->sin6_scope_id == y->sin6_scope_id
               && memcmp(&x->sin6_addr, &y->sin6_addr, 16) == 0;
    }
    if (a->ss_family == AF_INET) {
        const struct sockaddr_in *x = (const void *)a, *y = (const void *)b;
        return (any_port || x->sin_port == y->sin_port)
               && x->sin_addr.s_addr == y->sin_addr.s_addr;
    }
    return alen == blen && memcmp(a, b, alen) == 0;
}

int bn_same_addr(const struct sockaddr_storage *a, socklen_t alen,
                 const struct sockaddr_storage *b, socklen_t blen) {
    return same_addr(a, alen, b, blen, 0);
}

int bn_same_host(const struct sockaddr_storage *a, socklen_t alen,
                 const struct sockaddr_storage *b, socklen_t blen) {
    return same_addr(a, alen, b, blen, 1);
}

int bn_lane_port_of(const bn_lane *l, const struct sockaddr_storage *from, socklen_t from_len) {
    for (int i = 0; i < BN_MAX_PORTS; i++) {
        const bn_port *p = &l->ports[i];
        if (p->used && p->ep_len && bn_same_addr(from, from_len, &p->ep, p->ep_len))
            return i;
    }
    return -1;
}
