/* fuzz_coalesce.c - libFuzzer target for bn_coalesce.
 *
 * Input: records [u16le len][u8 meta][u16le csum_start][u16le csum_offset]
 * [len bytes] (the last one truncated to what is left), at most 96 frames;
 * meta bit 0: the frame has a csum entry (csum_start, csum_offset), bit 1:
 * the offset is forced to 16 (TCP).  Each frame is malloc'd to its exact size.
 * Then the plan's invariants are checked with __builtin_trap().
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"

#define MAX_FRAMES 96

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static bn_frame_in in[MAX_FRAMES];
    static bn_out_frame out[MAX_FRAMES];
    uint8_t *bufs[MAX_FRAMES];
    int n = 0;
    size_t at = 0;
    while (n < MAX_FRAMES && size - at >= 7) {
        size_t len = (size_t)(data[at] | data[at + 1] << 8);
        uint8_t meta = data[at + 2];
        uint16_t start = (uint16_t)(data[at + 3] | data[at + 4] << 8);
        uint16_t offset = (uint16_t)(data[at + 5] | data[at + 6] << 8);
        at += 7;
        if (len > size - at)
            len = size - at;
        bufs[n] = malloc(len ? len : 1);
        CHECK(bufs[n] != NULL);
        if (len)
            memcpy(bufs[n], data + at, len);
        at += len;
        in[n].data = bufs[n];
        in[n].len = (uint32_t)len;
        in[n].csum_start = meta & 1 ? (int32_t)start : -1;
        in[n].csum_offset = meta & 2 ? BN_TCP_CSUM_OFFSET : meta & 4 ? 6 : offset;
        n++;
    }
    for (int udp = 0; udp < 2; udp++) {
    int k = bn_coalesce2(in, n, out, udp);
    CHECK(k >= 0 && k <= n);
    uint32_t next = 0;
    for (int j = 0; j < k; j++) {
        const bn_out_frame *o = &out[j];
        CHECK(o->first == next && o->count >= 1 && o->count <= (uint32_t)(n - (int)next));
        next += o->count;
        uint64_t nbytes = 0;
        for (uint32_t i = o->first; i < o->first + o->count; i++)
            nbytes += in[i].len;
        CHECK(o->nbytes == nbytes);
        bn_vnet v;
        CHECK(bn_vnet_decode(o->vnet, BN_VNET_HDR_LEN, &v) == 0);
        const bn_frame_in *f = &in[o->first];
        if (o->head_len == 0) {
            CHECK(o->count == 1);
            if (f->csum_start < 0) {
                CHECK(v.flags == 0 && v.gso_type == 0 && v.csum_start == 0 && v.csum_offset == 0);
            } else {
                CHECK(v.flags == 1 && v.gso_type == 0 && v.hdr_len == 0 && v.gso_size == 0);
                CHECK(v.csum_start == f->csum_start && v.csum_offset == f->csum_offset);
            }
            continue;
        }
        CHECK(o->count >= 2 && o->count <= BN_MAX_SEGMENTS);
        CHECK(o->head_len <= BN_MAX_JOIN_HEAD);
        for (uint32_t i = o->first; i < o->first + o->count; i++) {
            CHECK(o->head_len < in[i].len);
            CHECK(in[i].csum_start == f->csum_start && in[i].csum_offset == f->csum_offset);
            /* later segments carry no more payload than the first (gso_size) */
            CHECK(in[i].len - o->head_len <= v.gso_size);
        }
        if (f->csum_offset == 6) { /* a UDP run (udp only) */
            CHECK(udp && v.flags == 1 && v.gso_type == 5);
            CHECK(v.hdr_len == o->head_len && v.csum_start == f->csum_start && v.csum_offset == 6);
        } else {
            CHECK(v.flags == 1 && ((v.gso_type & 0x7F) == 1 || (v.gso_type & 0x7F) == 4));
            CHECK(v.hdr_len == o->head_len && v.csum_start == f->csum_start
                  && v.csum_offset == 16);
        }
        CHECK(v.gso_size == f->len - o->head_len);
        CHECK(nbytes - (uint64_t)(o->count - 1) * o->head_len <= BN_MAX_SUPERFRAME);
        /* The rewritten headers differ from the first frame's only in lengths,
         * checksums and flags: the MAC header is the same. */
        CHECK(memcmp(o->head, f->data, 12) == 0);
    }
    CHECK(next == (uint32_t)n);
    }
    for (int i = 0; i < n; i++)
        free(bufs[i]);
    return 0;
}
