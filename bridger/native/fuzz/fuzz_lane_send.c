/* fuzz_lane_send.c - libFuzzer target for the lane's send path
 * (bn_lane_send.c): how the datagrams sealed for a port are grouped into
 * UDP_SEGMENT sends (bn_gso_run), and what happens when a send fails: the
 * retry of a send an earlier ICMP error aborted, a full buffer, a device
 * that cannot segment (GSO off for good, one datagram per send), a run too
 * big (EMSGSIZE: one datagram per send).
 *
 * The socket is a fake (l->send): it checks each send and answers from a
 * script the input gives.  Port 0 has an AF_INET endpoint, port 1 an
 * AF_INET6 one.
 *
 * Input: [u8 cfg] then operations until the input ends, each [u8 op]:
 *   op % 4 != 3: one sealed datagram of [u16le len] % 9000 + 4 bytes (its
 *                first 4 bytes its sequence number, the rest op); op & 0x80:
 *                [u8 k] more datagrams of that length
 *   op % 4 == 3: a flush, with [u8 n] (% 9) answers for the next sends, each
 *                [u8] % 9: ok, EAGAIN, ENOBUFS, EINTR, ECONNREFUSED (a stale
 *                ICMP error), EIO, EINVAL, EMSGSIZE, EOPNOTSUPP; once the
 *                script ends every send succeeds.
 * cfg: bit 0 GSO; bit 1 port 1.
 *
 * Invariants (__builtin_trap): every send names the port's endpoint; a send
 * of several datagrams carries one UDP_SEGMENT message of the first one's
 * size, every datagram but the last of that size and the last not longer,
 * at most 64 and 65000 bytes, and only while GSO is on; datagrams leave in
 * the order sealed, none twice; a datagram that did not leave was counted
 * (blocked, failed, too big); a refusal of segmentation turns GSO off and
 * counts gso_refused; after a flush nothing waits (ntx, tbuf_used 0).
 */
#define _GNU_SOURCE
#include <errno.h>

#include "fuzz_common.h"

#define FAKE_FD (1 << 24) /* never an fd: only the fake send sees it */

static bn_lane lane;
static int ready;
static struct sockaddr_storage eps[2];
static socklen_t ep_lens[2];
static int port;

/* The fake socket's script and what it saw. */
static int script[8], nscript, at;
static uint32_t next_seq, delivered_upto;
static uint64_t lost;

static const int ERRNOS[9] = {0, EAGAIN, ENOBUFS, EINTR, ECONNREFUSED, EIO, EINVAL, EMSGSIZE,
                              EOPNOTSUPP};

static uint32_t seq_of(const struct iovec *v) {
    CHECK(v->iov_len >= 4);
    return bn_le32(v->iov_base);
}

static ssize_t fake_send(bn_lane *l, const struct msghdr *m) {
    CHECK(l == &lane);
    CHECK(m->msg_namelen == ep_lens[port]
          && memcmp(m->msg_name, &eps[port], ep_lens[port]) == 0);
    CHECK(m->msg_iovlen >= 1 && m->msg_iovlen <= 64);
    size_t total = 0;
    for (size_t k = 0; k < m->msg_iovlen; k++)
        total += m->msg_iov[k].iov_len;
    if (m->msg_iovlen > 1) {
        CHECK(l->gso);
        CHECK(total <= 65000);
        const struct cmsghdr *cm = CMSG_FIRSTHDR(m);
        CHECK(cm && cm->cmsg_level == SOL_UDP && cm->cmsg_type == UDP_SEGMENT
              && cm->cmsg_len == CMSG_LEN(sizeof(uint16_t)));
        uint16_t seg;
        memcpy(&seg, CMSG_DATA(cm), sizeof seg);
        CHECK(seg == m->msg_iov[0].iov_len);
        for (size_t k = 0; k + 1 < m->msg_iovlen; k++)
            CHECK(m->msg_iov[k].iov_len == seg);
        CHECK(m->msg_iov[m->msg_iovlen - 1].iov_len <= seg);
    } else {
        CHECK(m->msg_controllen == 0);
    }
    int e = at < nscript ? ERRNOS[script[at++]] : 0;
    if (e) {
        errno = e;
        return -1;
    }
    /* In order, none twice (a run that failed may have left gaps). */
    for (size_t k = 0; k < m->msg_iovlen; k++) {
        uint32_t s = seq_of(&m->msg_iov[k]);
        CHECK(s >= delivered_upto);
        lost += s - delivered_upto;
        delivered_upto = s + 1;
    }
    return (ssize_t)total;
}

static void setup(void) {
    fuzz_lane_init(&lane, 0);
    fuzz_v4(&eps[0], &ep_lens[0], "192.0.2.1", 51820);
    fuzz_v6(&eps[1], &ep_lens[1], "2001:db8::1", 51820, 0);
    for (int i = 0; i < 2; i++)
        CHECK(bn_lane_add_port(&lane, -1, 0, NULL) == i);
    lane.udp_fd = FAKE_FD;
    lane.send = fake_send;
    ready = 1;
}

static uint64_t counted(void) {
    return lane.st.udp_send_blocked + lane.st.udp_send_failed + lane.st.udp_send_too_big;
}

static void flush(rd *r) {
    bn_lane *l = &lane;
    int n = rd_u8(r);
    nscript = n < 0 ? 0 : n % 9;
    for (int i = 0; i < nscript; i++) {
        int e = rd_u8(r);
        script[i] = e < 0 ? 0 : e % 9;
    }
    at = 0;
    int gso0 = l->gso;
    uint64_t refused0 = l->st.gso_refused, counted0 = counted(), lost0 = lost;
    uint32_t last = next_seq;
    bn_lane_tx_flush_port(l, port);
    CHECK(l->ntx == 0 && l->tbuf_used == 0);
    /* what did not leave at the end is lost too */
    if (delivered_upto < last) {
        lost += last - delivered_upto;
        delivered_upto = last;
    }
    if (lost > lost0)
        CHECK(counted() > counted0);
    CHECK(l->st.gso_refused - refused0 == (uint64_t)(gso0 && !l->gso));
}

static void add(rd *r, int op) {
    bn_lane *l = &lane;
    long len = rd_u16(r);
    if (len < 0)
        return;
    size_t n = (size_t)len % 9000 + 4;
    int more = op & 0x80 ? rd_u8(r) : 0;
    for (int k = 0; k <= (more < 0 ? 0 : more); k++) {
        if (l->ntx >= BN_MAX_TX || l->tbuf_used + n + 16 > l->tbuf_cap) {
            rd none = {NULL, 0};
            flush(&none);
        }
        uint8_t *d = l->tbuf + l->tbuf_used;
        bn_put_le32(d, next_seq++);
        memset(d + 4, op, n - 4);
        l->toffs[l->ntx] = l->tbuf_used;
        l->tlens[l->ntx] = (uint32_t)n;
        l->ntx++;
        l->tbuf_used += (n + 15) & ~(size_t)15;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!ready)
        setup();
    if (size < 1)
        return 0;
    bn_lane *l = &lane;
    l->gso = data[0] & 1;
    port = (data[0] >> 1) & 1;
    for (int i = 0; i < 2; i++) {
        l->ports[i].ep = eps[i];
        l->ports[i].ep_len = ep_lens[i];
    }
    memset(&l->st, 0, sizeof l->st);
    l->ntx = 0;
    l->tbuf_used = 0;
    next_seq = delivered_upto = 0;
    lost = 0;
    rd r = {data + 1, size - 1};
    for (int rounds = 0; r.n > 0 && rounds < 256; rounds++) {
        int op = rd_u8(&r);
        if (op % 4 == 3)
            flush(&r);
        else
            add(&r, op);
    }
    rd none = {NULL, 0};
    flush(&none);
    return 0;
}
