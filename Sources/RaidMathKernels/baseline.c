// The baseline builds (see include/RaidMathKernels.h): 16-byte vectors of the compiler's
// generic vector extension, SSE2 on x86-64 and NEON on arm64, for every CPU.
#include "RaidMathKernels.h"
#include "bytes.h"
#include <string.h>

typedef uint8_t lane_t __attribute__((vector_size(16)));
typedef int8_t slane_t __attribute__((vector_size(16)));

static inline lane_t load(const void *base, long offset) {
    lane_t v;
    memcpy(&v, (const char *)base + offset, sizeof v);
    return v;
}

static inline void put(lane_t value, void *base, long offset, int streaming) {
    void *at = (char *)base + offset;
    if (streaming) {
        __builtin_nontemporal_store(value, (lane_t *)at);
    } else {
        memcpy(at, &value, sizeof value);
    }
}

static inline void fence(int streaming) {
#if defined(__x86_64__)
    if (streaming) __builtin_ia32_sfence();
#else
    (void)streaming;
#endif
}

// GF(2^8) multiply-by-2: double every byte, and where the top bit fell out add md's polynomial's
// low byte (0x1D). A byte with its top bit set is negative as int8: the compare gives all ones.
static inline lane_t mul2(lane_t q) {
    const lane_t poly = {0x1D, 0x1D, 0x1D, 0x1D, 0x1D, 0x1D, 0x1D, 0x1D, 0x1D, 0x1D, 0x1D, 0x1D, 0x1D, 0x1D, 0x1D, 0x1D};
    const slane_t zero = {0};
    lane_t negative = (lane_t)((slane_t)q < zero);
    return (q + q) ^ (negative & poly);
}

static inline int aligned16(const void *p) { return ((uintptr_t)p & 15) == 0; }

// Four lanes (64 bytes) per pass over the sources, then bytes.
void swraid_xor_baseline(const void *const *sources, long count, void *dst, long byteCount, int nonTemporal) {
    int streaming = nonTemporal && aligned16(dst);
    long off = 0;
    for (; off + 64 <= byteCount; off += 64) {
        lane_t a = load(sources[0], off), b = load(sources[0], off + 16), c = load(sources[0], off + 32), d = load(sources[0], off + 48);
        for (long j = 1; j < count; j++) {
            const void *s = sources[j];
            a ^= load(s, off);
            b ^= load(s, off + 16);
            c ^= load(s, off + 32);
            d ^= load(s, off + 48);
        }
        put(a, dst, off, streaming);
        put(b, dst, off + 16, streaming);
        put(c, dst, off + 32, streaming);
        put(d, dst, off + 48, streaming);
    }
    fence(streaming);
    swraid_xor_bytes(sources, count, dst, off, byteCount);
}

// Four lanes (64 bytes) per pass over the sources, from the highest slot down, then bytes.
void swraid_pq_baseline(const void *const *sources, long count, void *p, void *q, long byteCount, int nonTemporal) {
    int streaming = nonTemporal && aligned16(p) && aligned16(q);
    const void *last = sources[count - 1];
    long off = 0;
    for (; off + 64 <= byteCount; off += 64) {
        lane_t p0 = load(last, off), p1 = load(last, off + 16), p2 = load(last, off + 32), p3 = load(last, off + 48);
        lane_t q0 = p0, q1 = p1, q2 = p2, q3 = p3;
        for (long z = count - 2; z >= 0; z--) {
            const void *s = sources[z];
            __builtin_prefetch((const char *)s + off + 1024, 0, 0);
            lane_t d0 = load(s, off), d1 = load(s, off + 16), d2 = load(s, off + 32), d3 = load(s, off + 48);
            p0 ^= d0; p1 ^= d1; p2 ^= d2; p3 ^= d3;
            q0 = mul2(q0) ^ d0; q1 = mul2(q1) ^ d1; q2 = mul2(q2) ^ d2; q3 = mul2(q3) ^ d3;
        }
        put(p0, p, off, streaming); put(p1, p, off + 16, streaming); put(p2, p, off + 32, streaming); put(p3, p, off + 48, streaming);
        put(q0, q, off, streaming); put(q1, q, off + 16, streaming); put(q2, q, off + 32, streaming); put(q3, q, off + 48, streaming);
    }
    fence(streaming);
    swraid_pq_bytes(sources, count, p, q, off, byteCount);
}

// Multiplication by a constant by doubling through its bits, with a mask per bit instead of a
// branch so the loop stays vectorised.
void swraid_gf_mul_add(uint8_t a, const void *x, uint8_t b, const void *y, void *dst, long byteCount) {
    lane_t maskA[8], maskB[8];
    int topA = 0, topB = 0;
    for (int bit = 0; bit < 8; bit++) {
        uint8_t ma = (a >> bit) & 1 ? 0xFF : 0, mb = (b >> bit) & 1 ? 0xFF : 0;
        for (int i = 0; i < 16; i++) { maskA[bit][i] = ma; maskB[bit][i] = mb; }
        if ((a >> bit) & 1) topA = bit + 1;
        if ((b >> bit) & 1) topB = bit + 1;
    }
    if (y == NULL) topB = 0;
    long off = 0;
    for (; off + 16 <= byteCount; off += 16) {
        lane_t acc = {0};
        lane_t t = load(x, off);
        for (int bit = 0; bit < topA; bit++) {
            acc ^= t & maskA[bit];
            t = mul2(t);
        }
        if (topB > 0) {
            t = load(y, off);
            for (int bit = 0; bit < topB; bit++) {
                acc ^= t & maskB[bit];
                t = mul2(t);
            }
        }
        put(acc, dst, off, 0);
    }
    for (; off < byteCount; off++) {
        uint8_t v = swraid_gf_mul_byte(a, ((const uint8_t *)x)[off]);
        if (y != NULL) v ^= swraid_gf_mul_byte(b, ((const uint8_t *)y)[off]);
        ((uint8_t *)dst)[off] = v;
    }
}

// One multiply-add pass per source (the AVX-512 build does it in one pass with table lookups).
void swraid_gf_combine_baseline(const void *const *sources, long count, const uint8_t *coefficients, long rows,
                                void *const *outputs, long byteCount) {
    for (long r = 0; r < rows; r++) {
        const uint8_t *c = coefficients + r * count;
        swraid_gf_mul_add(c[0], sources[0], 0, NULL, outputs[r], byteCount);
        for (long s = 1; s < count; s++) swraid_gf_mul_add(1, outputs[r], c[s], sources[s], outputs[r], byteCount);
    }
}

int swraid_buffers_equal(const void *a, const void *b, long byteCount) {
    return byteCount <= 0 || memcmp(a, b, (size_t)byteCount) == 0;
}

// The first byte is zero and every byte equals the one before it.
int swraid_buffer_is_zero(const void *a, long byteCount) {
    if (byteCount <= 0) return 1;
    const uint8_t *bytes = a;
    return bytes[0] == 0 && memcmp(bytes, bytes + 1, (size_t)(byteCount - 1)) == 0;
}

static const uint32_t sha256_k[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

static inline uint32_t rotr(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }

void swraid_sha256_blocks(uint32_t state[8], const void *data, long blocks) {
    const uint8_t *block = data;
    for (long n = 0; n < blocks; n++, block += 64) {
        uint32_t w[64];
        for (int i = 0; i < 16; i++) {
            const uint8_t *b = block + 4 * i;
            w[i] = (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | (uint32_t)b[3];
        }
        for (int i = 16; i < 64; i++) {
            uint32_t s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
            uint32_t s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16] + s0 + w[i - 7] + s1;
        }
        uint32_t a = state[0], b = state[1], c = state[2], d = state[3], e = state[4], f = state[5], g = state[6], h = state[7];
        for (int i = 0; i < 64; i++) {
            uint32_t t1 = h + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + sha256_k[i] + w[i];
            uint32_t t2 = (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
            h = g; g = f; f = e; e = d + t1;
            d = c; c = b; b = a; a = t1 + t2;
        }
        state[0] += a; state[1] += b; state[2] += c; state[3] += d;
        state[4] += e; state[5] += f; state[6] += g; state[7] += h;
    }
}
