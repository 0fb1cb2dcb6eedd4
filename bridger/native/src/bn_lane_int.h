/* bn_lane_int.h - what the pieces of the native lane share, and nothing else
 * includes (the public interface is bn_lane.h).
 *
 *   bn_lane.c        setup, teardown and the loop (epoll, giving way to Python)
 *   bn_lane_port.c   ports: their fds in and out of the loop's epoll, the MAC
 *                    sets, endpoints
 *   bn_lane_punt.c   what goes to Python: hand-overs and the source-MAC log
 *   bn_lane_tx.c     tap -> WAN: one tap read checked, cut and sealed
 *   bn_lane_send.c   the sealed datagrams onto the UDP socket (GSO runs)
 *   bn_lane_recv.c   the UDP socket's receive side: recvmmsg batches, their
 *                    control messages and flags, the error queue
 *   bn_lane_rx.c     WAN -> tap: one datagram checked, opened and delivered
 *
 * The fuzz targets follow the same cut: fuzz_lane_tx, fuzz_lane_send,
 * fuzz_lane_recv, fuzz_lane_rx.
 */
#ifndef BN_LANE_INT_H
#define BN_LANE_INT_H

#include "bn_lane.h"

/* Buffers allocated once by bn_lane_init. */
#define BN_TBUF_CAP (320u << 10)
/* rbuf: 16 GRO receives of BN_READ_SIZE (bn_lane_recv.c's RX_VLEN_GRO), rounded up. */
#define BN_RBUF_CAP (1088u << 10)
#define BN_MAX_TX 4096
#define BN_MAX_PEND 2048

/* Inner message types (messages.py) and the FRAME_CSUM header length. */
#define BN_INNER_FRAME 1
#define BN_INNER_FRAME_CSUM 5
#define BN_FRAME_CSUM_HLEN 5
#define BN_MIN_CSUM_START 14

/* Tag of the stop event / the UDP socket in epoll data; ports are 0..63. */
#define BN_EV_STOP 1000
#define BN_EV_UDP 1001

/* ---- bn_lane_port.c ---- */
/* Register fd in the loop's epoll under tag (EPOLLIN). */
int bn_lane_ep_add(bn_lane *l, int fd, uint64_t tag);
/* Take the UDP socket out of the loop (Python has it now); a failing
 * epoll_ctl is the loop's fatal error. */
void bn_lane_hold_udp(bn_lane *l);
/* The same address (family, address, port; IPv6 also the scope). */
int bn_same_addr(const struct sockaddr_storage *a, socklen_t alen,
                 const struct sockaddr_storage *b, socklen_t blen);
/* The same address, whatever the ports (a local EMSGSIZE names no port). */
int bn_same_host(const struct sockaddr_storage *a, socklen_t alen,
                 const struct sockaddr_storage *b, socklen_t blen);
/* The port whose endpoint `from` is, or -1. */
int bn_lane_port_of(const bn_lane *l, const struct sockaddr_storage *from, socklen_t from_len);

/* ---- bn_lane_punt.c ---- */
/* Queue a hand-over (data copied) and signal Python; NULL: no memory. */
bn_punt *bn_lane_punt(bn_lane *l, int kind, int port, const uint8_t *data, size_t len);
void bn_punt_free(bn_punt *p);
/* Hand over datagrams as received: data[0..n), each `size` long (the last
 * may be shorter; size 0: one datagram), from `from`. */
void bn_lane_punt_raw(bn_lane *l, const uint8_t *data, size_t n, size_t size,
                      const struct sockaddr_storage *from, socklen_t from_len);
/* Note `count` frames (`nbytes`) from frame f's source MAC on port/dir. */
void bn_lane_maclog(bn_lane *l, int port, int dir, const uint8_t *f, size_t n, uint64_t count,
                    uint64_t nbytes);

/* ---- bn_lane_tx.c ---- */
/* Drain one tap (up to BN_BATCH reads); -1 on a fatal read error. */
int bn_lane_pump_tap(bn_lane *l, int port);

/* ---- bn_lane_send.c ---- */
/* Send what was sealed for port p (l->tbuf, l->toffs, l->tlens) and empty it. */
void bn_lane_tx_flush(bn_lane *l, bn_port *p);

/* ---- bn_lane_recv.c ---- */
/* Drain the UDP socket (up to BN_BATCH receives). */
int bn_lane_pump_udp(bn_lane *l);
/* The socket has an error queued (EPOLLERR, or recvmmsg failed). */
void bn_lane_udp_error(bn_lane *l);

/* ---- bn_lane_rx.c ---- */
/* A datagram the lane finishes itself: the device's receive counters. */
static inline void bn_lane_rx_counted(bn_lane *l, size_t n) {
    l->st.rx_datagrams++;
    l->st.rx_bytes += n;
}

#endif
