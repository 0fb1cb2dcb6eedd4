/* fuzz_session.c - libFuzzer target for bn_session.c.
 *
 * Every input is used three ways:
 *  1. as a program of counters for bn_replay_check, each verdict compared with
 *     a plain model of replay.ReplayWindow's rule (every accepted counter kept
 *     in a list; TOO_OLD at or past REJECT_AFTER_MESSAGES or more than
 *     WINDOW_SIZE below the greatest accepted counter, REPLAY if accepted
 *     before, else OK);
 *  2. as a datagram for bn_open under a fixed key, out of place and in place:
 *     random data must fail (-1); an input that opens must be exactly what
 *     bn_seal makes of its plaintext;
 *  3. as a plaintext sealed in place and out of place (byte-identical), opened
 *     in place back to the input, and rejected once a bit is flipped.
 * A mismatch is __builtin_trap().
 *
 * clang -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
 *   -I bridger/native/src bridger/native/fuzz/fuzz_session.c \
 *   bridger/native/src/bn_session.c -lsodium -o /tmp/fuzz_session
 * /tmp/fuzz_session tests/native/corpus/session -max_total_time=120
 */
#include "fuzz_common.h"

#include <stdlib.h>
#include <string.h>
#include <sodium.h>


#define WINDOW_SIZE ((uint64_t)(BN_REPLAY_BLOCKS - 1) * 64)
#define MAX_STEPS 1024

/* ---- 1. the replay window against a model --------------------------------- */

typedef struct {
    uint64_t greatest;
    size_t n;
    uint64_t accepted[MAX_STEPS];
} model;

static int model_check(model *m, uint64_t c) {
    if (c >= BN_REJECT_AFTER_MESSAGES)
        return BN_REPLAY_TOO_OLD;
    if (c < m->greatest && m->greatest - c > WINDOW_SIZE)
        return BN_REPLAY_TOO_OLD;
    for (size_t i = 0; i < m->n; i++)
        if (m->accepted[i] == c)
            return BN_REPLAY_REPLAY;
    m->accepted[m->n++] = c;
    if (c > m->greatest)
        m->greatest = c;
    return BN_REPLAY_OK;
}

/* Reads up to `width` bytes little endian (fewer at the input's end). */
static uint64_t take(const uint8_t **p, const uint8_t *end, size_t width) {
    uint64_t v = 0;
    for (size_t i = 0; i < width && *p < end; i++, (*p)++)
        v |= (uint64_t)**p << (8 * i);
    return v;
}

static void fuzz_replay(const uint8_t *data, size_t size) {
    static model m;
    static bn_replay w;
    m.greatest = 0;
    m.n = 0;
    bn_replay_init(&w);
    const uint8_t *p = data, *end = data + size;
    while (p < end && m.n < MAX_STEPS) {
        uint8_t op = *p++;
        uint64_t g = m.greatest, c;
        switch (op & 7) {
        case 0: /* just ahead */
            c = g + take(&p, end, 1);
            break;
        case 1: /* just behind (wraps to huge near 0: too old) */
            c = g - take(&p, end, 1);
            break;
        case 2: /* around the window's lower edge */
            c = g - WINDOW_SIZE + (uint64_t)(int64_t)(int8_t)take(&p, end, 1);
            break;
        case 3: /* anywhere, of a width given by the op */
            c = take(&p, end, 1 + (op >> 5));
            break;
        case 4: /* around REJECT_AFTER_MESSAGES */
            c = BN_REJECT_AFTER_MESSAGES + (uint64_t)(int64_t)(int16_t)take(&p, end, 2);
            break;
        case 5: /* a jump of about a whole ring (blocks cleared or not) */
            c = g + 64 * (BN_REPLAY_BLOCKS - 8 + take(&p, end, 1) % 16) + (op >> 3);
            break;
        case 6: /* a counter seen before */
            c = m.n ? m.accepted[take(&p, end, 2) % m.n] : 0;
            break;
        default: /* a big jump ahead */
            c = g + take(&p, end, 4);
            break;
        }
        int want = model_check(&m, c);
        CHECK(bn_replay_check(&w, c) == want);
        CHECK(w.last == m.greatest);
    }
}

/* ---- 2 and 3. the AEAD ------------------------------------------------------ */

static bn_session sess;

static void fuzz_open(const uint8_t *data, size_t size) {
    uint8_t *out = malloc(size > BN_TRANSPORT_OVERHEAD ? size - BN_TRANSPORT_OVERHEAD : 1);
    uint8_t *copy = malloc(size ? size : 1);
    CHECK(out && copy);
    if (size)
        memcpy(copy, data, size);
    uint64_t counter = size >= 16 ? bn_le64(data + 8) : 0;
    long r = bn_open(&sess, counter, data, size, out);
    long r2 = bn_open(&sess, counter, copy, size, copy + (size >= 16 ? 16 : 0));
    CHECK(r == r2);
    if (size < BN_TRANSPORT_OVERHEAD) {
        CHECK(r == -1);
    } else if (r >= 0) {
        /* Only a seed from bn_seal authenticates: it must re-seal to itself
         * (the type and receiver words are not authenticated). */
        CHECK((size_t)r == size - BN_TRANSPORT_OVERHEAD);
        CHECK(memcmp(out, copy + 16, (size_t)r) == 0);
        uint8_t *again = malloc(size);
        CHECK(again);
        CHECK(bn_seal(&sess, counter, out, (size_t)r, again) == size);
        CHECK(memcmp(again + 8, data + 8, size - 8) == 0);
        free(again);
    }
    free(out);
    free(copy);
}

static void fuzz_roundtrip(const uint8_t *data, size_t size) {
    size_t total = size + BN_TRANSPORT_OVERHEAD;
    uint8_t *inplace = malloc(total), *apart = malloc(total), *plain = malloc(size ? size : 1);
    CHECK(inplace && apart && plain);
    uint64_t counter = size >= 8 ? bn_le64(data) : size;
    memcpy(inplace + 16, data, size);
    CHECK(bn_seal(&sess, counter, inplace + 16, size, inplace) == total);
    CHECK(bn_seal(&sess, counter, data, size, apart) == total);
    CHECK(memcmp(inplace, apart, total) == 0);
    CHECK(bn_le32(apart) == 4 && bn_le32(apart + 4) == sess.remote_index);
    CHECK(bn_le64(apart + 8) == counter);
    /* Out of place, then in place. */
    CHECK(bn_open(&sess, counter, apart, total, plain) == (long)size);
    CHECK(memcmp(plain, data, size) == 0);
    CHECK(bn_open(&sess, counter, inplace, total, inplace + 16) == (long)size);
    CHECK(memcmp(inplace + 16, data, size) == 0);
    /* Another counter's nonce fails. */
    CHECK(bn_open(&sess, counter + 1, apart, total, plain) == -1);
    /* Any flipped bit after the (unauthenticated) type and receiver words fails. */
    size_t bit = (size_t)(counter % ((total - 8) * 8)) + 64;
    apart[bit / 8] ^= (uint8_t)(1u << (bit % 8));
    uint64_t c2 = bn_le64(apart + 8);
    CHECK(bn_open(&sess, c2, apart, total, plain) == -1);
    free(inplace);
    free(apart);
    free(plain);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static int ready;
    if (!ready) {
        CHECK(sodium_init() >= 0);
        memset(&sess, 0, sizeof sess);
        sess.local_index = 0x01020304;
        sess.remote_index = 0xa1b2c3d4;
        for (int i = 0; i < 32; i++) {
            /* One key both ways, so that sealed seeds open. */
            sess.send_key[i] = (uint8_t)(0x40 + i);
            sess.recv_key[i] = (uint8_t)(0x40 + i);
        }
        bn_replay_init(&sess.replay);
        ready = 1;
    }
    fuzz_replay(data, size);
    fuzz_open(data, size);
    fuzz_roundtrip(data, size);
    return 0;
}
