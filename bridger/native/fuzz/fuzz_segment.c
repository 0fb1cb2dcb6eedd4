/* fuzz_segment.c - libFuzzer target for bn_segment.c's single-frame functions.
 *
 * Input: [10 virtio-net header][u16le max_frame + 64][u16le room][u8 mode]
 *        [u16le csum_start][u16le csum_offset][frame ...]
 * mode: bit 0 partial (clamp_mss); bits 1-3 headroom, bits 4-5 tailroom,
 * bits 6-7 the size of the output buffer and of offs/lens for segment_tcp.
 * Every buffer is malloc'd to its exact size so that ASan sees any overrun;
 * invariants that hold whatever the input are checked with __builtin_trap().
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"

#define FILL 0xA5

static uint32_t naive_sum(const uint8_t *p, size_t n) {
    uint64_t s = 0;
    for (size_t i = 0; i < n; i += 2)
        s += (uint32_t)p[i] << 8 | (i + 1 < n ? p[i + 1] : 0);
    while (s > 0xFFFF)
        s = (s & 0xFFFF) + (s >> 16);
    return (uint32_t)s;
}

static uint8_t *dup_bytes(const uint8_t *p, size_t n) {
    uint8_t *q = malloc(n ? n : 1);
    CHECK(q != NULL);
    if (n)
        memcpy(q, p, n);
    return q;
}

static void check_segments(const uint8_t *frame, size_t len, const bn_vnet *h, int max_frame,
                           unsigned mode) {
    static const size_t headrooms[8] = {0, 2, 8, 10, 16, 32, 64, 128};
    static const size_t tailrooms[4] = {0, 4, 16, 64};
    size_t headroom = headrooms[(mode >> 1) & 7], tailroom = tailrooms[(mode >> 4) & 3];
    size_t cap;
    int max_segs;
    switch (mode >> 6) {
    case 0: cap = 16 * len + 8192; max_segs = 8192; break;
    case 1: cap = 2 * len + 4096; max_segs = BN_MAX_SEGMENTS; break;
    case 2: cap = len + 200; max_segs = 8; break;
    default: cap = 100; max_segs = 1; break;
    }
    uint8_t *out = malloc(cap);
    size_t *offs = malloc((size_t)max_segs * sizeof *offs);
    uint16_t *lens = malloc((size_t)max_segs * sizeof *lens);
    CHECK(out && offs && lens);
    memset(out, FILL, cap);
    int csum_start = -12345;
    int n = bn_segment_tcp(frame, len, h, max_frame, out, cap, headroom, tailroom, offs, lens,
                           max_segs, &csum_start);
    CHECK(n == -1 || n == -2 || (n >= 1 && n <= max_segs));
    if (n >= 1) {
        size_t l4 = (size_t)csum_start;
        CHECK(csum_start >= 0 && l4 + 20 <= len);
        size_t hdrlen = l4 + (size_t)(frame[l4 + 12] >> 4) * 4;
        CHECK(hdrlen <= len);
        size_t payload = 0, end = 0;
        for (int i = 0; i < n; i++) {
            size_t want = i == 0 ? headroom : offs[i - 1] + lens[i - 1] + tailroom + headroom;
            CHECK(offs[i] == want);
            CHECK(offs[i] <= cap && lens[i] <= cap - offs[i] && tailroom <= cap - offs[i] - lens[i]);
            CHECK(lens[i] >= hdrlen && (long)lens[i] <= (long)max_frame);
            CHECK(i + 1 == n || lens[i] > hdrlen);
            /* The payload is the frame's, in order; the rooms are untouched. */
            CHECK(memcmp(out + offs[i] + hdrlen, frame + hdrlen + payload, lens[i] - hdrlen) == 0);
            for (size_t j = end; j < offs[i]; j++)
                CHECK(out[j] == FILL);
            payload += lens[i] - hdrlen;
            end = offs[i] + lens[i];
        }
        CHECK(payload == len - hdrlen);
        /* What a receiver does with each segment: complete the checksum. */
        for (int i = 0; i < n; i++)
            CHECK(bn_complete_checksum(out + offs[i], lens[i], l4, BN_TCP_CSUM_OFFSET) == 0);
    }
    free(out);
    free(offs);
    free(lens);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    bn_vnet h;
    if (bn_vnet_decode(data, size, &h) < 0) {
        CHECK(size < BN_VNET_HDR_LEN);
        return 0;
    }
    uint8_t enc[BN_VNET_HDR_LEN];
    bn_vnet_encode(&h, enc);
    CHECK(memcmp(enc, data, BN_VNET_HDR_LEN) == 0);
    if (size < 19)
        return 0;
    int max_frame = (int)(data[10] | data[11] << 8) - 64;
    int room = (int)(data[12] | data[13] << 8);
    unsigned mode = data[14];
    size_t cstart = (size_t)(data[15] | data[16] << 8), coff = (size_t)(data[17] | data[18] << 8);
    const uint8_t *frame_in = data + 19;
    size_t len = size - 19;
    uint8_t *frame = dup_bytes(frame_in, len);

    CHECK(bn_ones_sum(frame, len) == naive_sum(frame, len));

    uint8_t *c = dup_bytes(frame, len);
    int changed = bn_clamp_mss(c, len, room, mode & 1);
    CHECK(changed == 0 || changed == 1);
    if (!changed)
        CHECK(len == 0 || memcmp(c, frame, len) == 0);
    free(c);

    check_segments(frame, len, &h, max_frame, mode);

    c = dup_bytes(frame, len);
    int r = bn_complete_checksum(c, len, cstart, coff);
    if (r == 0) {
        CHECK(cstart + coff + 2 <= len);
        CHECK(memcmp(c, frame, cstart + coff) == 0);
        CHECK(memcmp(c + cstart + coff + 2, frame + cstart + coff + 2, len - cstart - coff - 2) == 0);
    } else {
        CHECK(r == -1 && cstart + coff + 2 > len);
        CHECK(len == 0 || memcmp(c, frame, len) == 0);
    }
    free(c);
    free(frame);
    return 0;
}
