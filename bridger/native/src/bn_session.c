/* bn_session.c - transport sessions: the anti-replay window and the AEAD.
 *
 * The C twins of bridger/protocol/replay.py (ReplayWindow.check) and
 * bridger/protocol/aead.py (seal_transport / open_transport).  The cipher is
 * libsodium's ChaCha20-Poly1305 (IETF), called exactly as aead.py calls it:
 * no associated data, nonce = 4 zero bytes + the little-endian 64-bit counter.
 * No allocation; the caller has run sodium_init().
 */
#include "bn.h"

#include <limits.h>
#include <string.h>
#include <sodium.h>

#define BLOCK_SHIFT 6
#define BLOCK_MASK (BN_REPLAY_BLOCKS - 1)
#define BIT_MASK 63
/* replay.WINDOW_SIZE = (REPLAY_BLOCKS - 1) * 64 */
#define WINDOW_SIZE ((uint64_t)(BN_REPLAY_BLOCKS - 1) * 64)

_Static_assert((BN_REPLAY_BLOCKS & BLOCK_MASK) == 0, "BN_REPLAY_BLOCKS must be a power of two");
_Static_assert(BN_TRANSPORT_OVERHEAD == BN_TRANSPORT_HEADER + BN_TAG_LEN, "overhead");
_Static_assert(BN_TAG_LEN == crypto_aead_chacha20poly1305_ietf_ABYTES, "tag length");

void bn_replay_init(bn_replay *w) {
    memset(w, 0, sizeof *w);
}

int bn_replay_check(bn_replay *w, uint64_t counter) {
    if (counter >= BN_REJECT_AFTER_MESSAGES)
        return BN_REPLAY_TOO_OLD;
    uint64_t last = w->last;
    uint64_t index = counter >> BLOCK_SHIFT;
    if (counter > last) {
        uint64_t current = last >> BLOCK_SHIFT;
        uint64_t diff = index - current;
        if (diff > BN_REPLAY_BLOCKS)
            diff = BN_REPLAY_BLOCKS;
        for (uint64_t i = 1; i <= diff; i++)
            w->blocks[(current + i) & BLOCK_MASK] = 0;
        w->last = counter;
    } else if (last - counter > WINDOW_SIZE) {
        return BN_REPLAY_TOO_OLD;
    }
    uint64_t *slot = &w->blocks[index & BLOCK_MASK];
    uint64_t bit = UINT64_C(1) << (counter & BIT_MASK);
    if (*slot & bit)
        return BN_REPLAY_REPLAY;
    *slot |= bit;
    return BN_REPLAY_OK;
}

static void nonce_of(uint64_t counter, uint8_t nonce[crypto_aead_chacha20poly1305_ietf_NPUBBYTES]) {
    memset(nonce, 0, 4);
    bn_put_le64(nonce + 4, counter);
}

void bn_aead_seal(const uint8_t key[32], const uint8_t nonce[12], const uint8_t *aad,
                  size_t aad_len, const uint8_t *plaintext, size_t n, uint8_t *out) {
    /* libsodium encrypts in place when c == m; the tag goes after it. */
    crypto_aead_chacha20poly1305_ietf_encrypt_detached(out, out + n, NULL, plaintext, n, aad,
                                                       aad_len, NULL, nonce, key);
}

int bn_aead_open(const uint8_t key[32], const uint8_t nonce[12], const uint8_t *aad,
                 size_t aad_len, const uint8_t *sealed, size_t m, uint8_t *out) {
    /* Verifies the tag (at sealed + m) before decrypting; in place is fine. */
    return crypto_aead_chacha20poly1305_ietf_decrypt_detached(out, NULL, sealed, m, sealed + m,
                                                              aad, aad_len, nonce, key);
}

size_t bn_seal(const bn_session *s, uint64_t counter, const uint8_t *plaintext, size_t n,
               uint8_t *out) {
    /* Beyond bn.h's contract: libsodium aborts (sodium_misuse) above its
     * maximum message length (about 256 GiB), so such a length seals nothing
     * and returns 0 (a real result is at least 32). */
    if (n > crypto_aead_chacha20poly1305_ietf_MESSAGEBYTES_MAX)
        return 0;
    uint8_t nonce[crypto_aead_chacha20poly1305_ietf_NPUBBYTES];
    nonce_of(counter, nonce);
    /* The header does not overlap an in-place plaintext (out + 16). */
    bn_put_le32(out, 4); /* MessageType.TRANSPORT */
    bn_put_le32(out + 4, s->remote_index);
    bn_put_le64(out + 8, counter);
    bn_aead_seal(s->send_key, nonce, NULL, 0, plaintext, n, out + BN_TRANSPORT_HEADER);
    return BN_TRANSPORT_OVERHEAD + n;
}

long bn_open(const bn_session *s, uint64_t counter, const uint8_t *d, size_t n, uint8_t *out) {
    if (n < BN_TRANSPORT_OVERHEAD)
        return -1;
    size_t m = n - BN_TRANSPORT_OVERHEAD;
    /* libsodium aborts (sodium_misuse) above its maximum message length. */
    if (m > crypto_aead_chacha20poly1305_ietf_MESSAGEBYTES_MAX || m > (size_t)LONG_MAX)
        return -1;
    uint8_t nonce[crypto_aead_chacha20poly1305_ietf_NPUBBYTES];
    nonce_of(counter, nonce);
    /* out may be d + 16 (in place); the tag at d + n - 16 lies after the plaintext's end. */
    if (bn_aead_open(s->recv_key, nonce, NULL, 0, d + BN_TRANSPORT_HEADER, m, out) != 0)
        return -1;
    return (long)m;
}
