/* bn_lane_punt.c - what the lane gives Python: the queue of hand-overs
 * ("punts", taken by Lane.take_punts) and the log of source MACs it moved
 * frames for (taken by Lane.take_stats). */
#define _GNU_SOURCE
#include "bn_lane_int.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void bn_punt_free(bn_punt *p) {
    free(p->data);
    free(p->lens);
    free(p);
}

bn_punt *bn_lane_punt(bn_lane *l, int kind, int port, const uint8_t *data, size_t len) {
    bn_punt *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->kind = kind;
    p->port = port;
    p->csum_start = -1;
    if (len) {
        p->data = malloc(len);
        if (!p->data) {
            free(p);
            return NULL;
        }
        memcpy(p->data, data, len);
    }
    p->len = len;
    *l->punt_tail = p;
    l->punt_tail = &p->next;
    uint64_t one = 1;
    if (write(l->punt_fd, &one, sizeof one) < 0) {
        /* already signalled */
    }
    return p;
}

void bn_lane_forget_punts(bn_lane *l, int port) {
    bn_punt **link = &l->punts;
    l->punt_tail = &l->punts;
    while (*link) {
        bn_punt *p = *link;
        if (p->port == port && (p->kind == BN_PUNT_TAP || p->kind == BN_PUNT_MTU)) {
            *link = p->next;
            bn_punt_free(p);
            continue;
        }
        if (p->port == port)
            p->port = -1;
        link = &p->next;
        l->punt_tail = link;
    }
}

void bn_lane_punt_raw(bn_lane *l, const uint8_t *data, size_t n, size_t size,
                     const struct sockaddr_storage *from, socklen_t from_len) {
    /* the datagrams data[0..n), each `size` long (the last may be shorter) */
    bn_punt *p = bn_lane_punt(l, BN_PUNT_RAW, -1, data, n);
    if (!p)
        return;
    int count = size ? (int)((n + size - 1) / size) : 1;
    p->lens = calloc((size_t)count, sizeof *p->lens);
    if (!p->lens) {
        p->count = 0;
        return;
    }
    for (int i = 0; i < count; i++) {
        size_t rest = n - (size_t)i * size;
        p->lens[i] = (uint32_t)(size && rest > size ? size : rest);
    }
    p->count = count;
    p->from = *from;
    p->from_len = from_len;
}

/* ---- the source-MAC log -------------------------------------------------------- */

void bn_lane_maclog(bn_lane *l, int port, int dir, const uint8_t *f, size_t n, uint64_t count,
                   uint64_t nbytes) {
    if (n < BN_ETH_HLEN)
        return;
    const uint8_t *src = f + 6;
    if (l->nmaclog > 0) {
        bn_maclog_entry *last = &l->maclog[l->nmaclog - 1];
        if (last->port == port && last->dir == dir && memcmp(last->mac, src, 6) == 0) {
            last->frames += count;
            last->bytes += nbytes;
            return;
        }
    }
    if (l->nmaclog >= BN_MACLOG) {
        l->st.maclog_lost++;
        return;
    }
    bn_maclog_entry *e = &l->maclog[l->nmaclog++];
    e->port = port;
    e->dir = dir;
    memcpy(e->mac, src, 6);
    e->frames = count;
    e->bytes = nbytes;
}
