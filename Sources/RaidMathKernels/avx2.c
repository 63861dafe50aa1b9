// The AVX2 parity kernels (see include/RaidMathKernels.h), for x86-64 CPUs without AVX-512 (AMD
// before Zen 4, Intel client cores): the AVX-512 build's loops with 32-byte ymm lanes, and the
// same results (RaidMath's tests compare the tiers byte for byte). Without them such a CPU ran the
// SSE2 baseline, whose two-block recovery has no byte shuffle and went a byte at a time: 1.6 GB/s
// against ISA-L's 16.5 on an AVX2-only EPYC (`swraid bench parity`, 2026-12-06).
#if defined(__x86_64__)
#include "RaidMathKernels.h"
#include "bytes.h"
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>

#define SWRAID_AVX2 __attribute__((target("avx2")))

static inline SWRAID_AVX2 __m256i load(const void *base, long offset) {
    return _mm256_loadu_si256((const __m256i *)((const char *)base + offset));
}

static inline SWRAID_AVX2 void put(__m256i value, void *base, long offset, int streaming) {
    void *at = (char *)base + offset;
    if (streaming) {
        _mm256_stream_si256((__m256i *)at, value);
    } else {
        _mm256_storeu_si256((__m256i *)at, value);
    }
}

// GF(2^8) multiply-by-2 of 32 bytes: double every byte, and where its top bit fell out (a byte
// below zero as a signed number) add md's polynomial's low byte (0x1D).
static inline SWRAID_AVX2 __m256i mul2(__m256i q) {
    __m256i high = _mm256_cmpgt_epi8(_mm256_setzero_si256(), q);
    __m256i doubled = _mm256_add_epi8(q, q);
    return _mm256_xor_si256(doubled, _mm256_and_si256(high, _mm256_set1_epi8(0x1D)));
}

// Four lanes (128 bytes) per pass over the sources, from the last source down, then single lanes,
// then bytes. Ordinary stores, as the AVX-512 build (`nonTemporal` streams where dst is aligned,
// as the baseline does).
SWRAID_AVX2 void swraid_xor_avx2(const void *const *sources, long count, void *dst, long byteCount, int nonTemporal) {
    int streaming = nonTemporal && ((uintptr_t)dst & 31) == 0;
    const void *last = sources[count - 1];
    long off = 0;
    for (; off + 128 <= byteCount; off += 128) {
        __m256i a = load(last, off), b = load(last, off + 32), c = load(last, off + 64), d = load(last, off + 96);
        for (long j = count - 2; j >= 0; j--) {
            const void *s = sources[j];
            a = _mm256_xor_si256(a, load(s, off));
            b = _mm256_xor_si256(b, load(s, off + 32));
            c = _mm256_xor_si256(c, load(s, off + 64));
            d = _mm256_xor_si256(d, load(s, off + 96));
        }
        put(a, dst, off, streaming);
        put(b, dst, off + 32, streaming);
        put(c, dst, off + 64, streaming);
        put(d, dst, off + 96, streaming);
    }
    for (; off + 32 <= byteCount; off += 32) {
        __m256i a = load(sources[0], off);
        for (long j = 1; j < count; j++) a = _mm256_xor_si256(a, load(sources[j], off));
        put(a, dst, off, streaming);
    }
    if (streaming) _mm_sfence();
    swraid_xor_bytes(sources, count, dst, off, byteCount);
}

// Four lanes (128 bytes) per pass over the sources (P and Q: eight accumulators of the sixteen
// ymm registers), then single lanes, then bytes.
SWRAID_AVX2 void swraid_pq_avx2(const void *const *sources, long count, void *p, void *q, long byteCount, int nonTemporal) {
    int streaming = nonTemporal && ((uintptr_t)p & 31) == 0 && ((uintptr_t)q & 31) == 0;
    const void *last = sources[count - 1];
    long off = 0;
    for (; off + 128 <= byteCount; off += 128) {
        __m256i p0 = load(last, off), p1 = load(last, off + 32), p2 = load(last, off + 64), p3 = load(last, off + 96);
        __m256i q0 = p0, q1 = p1, q2 = p2, q3 = p3;
        for (long z = count - 2; z >= 0; z--) {
            const void *s = sources[z];
            __m256i d0 = load(s, off), d1 = load(s, off + 32), d2 = load(s, off + 64), d3 = load(s, off + 96);
            p0 = _mm256_xor_si256(p0, d0);
            p1 = _mm256_xor_si256(p1, d1);
            p2 = _mm256_xor_si256(p2, d2);
            p3 = _mm256_xor_si256(p3, d3);
            q0 = _mm256_xor_si256(mul2(q0), d0);
            q1 = _mm256_xor_si256(mul2(q1), d1);
            q2 = _mm256_xor_si256(mul2(q2), d2);
            q3 = _mm256_xor_si256(mul2(q3), d3);
        }
        put(p0, p, off, streaming);
        put(p1, p, off + 32, streaming);
        put(p2, p, off + 64, streaming);
        put(p3, p, off + 96, streaming);
        put(q0, q, off, streaming);
        put(q1, q, off + 32, streaming);
        put(q2, q, off + 64, streaming);
        put(q3, q, off + 96, streaming);
    }
    for (; off + 32 <= byteCount; off += 32) {
        __m256i p0 = load(last, off);
        __m256i q0 = p0;
        for (long z = count - 2; z >= 0; z--) {
            __m256i d0 = load(sources[z], off);
            p0 = _mm256_xor_si256(p0, d0);
            q0 = _mm256_xor_si256(mul2(q0), d0);
        }
        put(p0, p, off, streaming);
        put(q0, q, off, streaming);
    }
    if (streaming) _mm_sfence();
    swraid_pq_bytes(sources, count, p, q, off, byteCount);
}

// c*x = c*(x & 0x0F) ^ c*(x & 0xF0): two 16-entry tables per coefficient, looked up 32 bytes at a
// time with vpshufb, which looks up within each 16-byte half, so each table fills both halves.
// Each source is loaded once per 64 bytes and feeds both outputs.
SWRAID_AVX2 void swraid_gf_combine_avx2(const void *const *sources, long count, const uint8_t *coefficients, long rows,
                                        void *const *outputs, long byteCount) {
    uint8_t local[2 * 16 * 2 * 16];
    uint8_t *tables = swraid_gf_combine_tables(coefficients, count, rows, local);
    const __m256i low = _mm256_set1_epi8(0x0F);
    long off = 0;
    // Two lanes (64 bytes) per pass, so that each table broadcast serves two lookups.
    for (; off + 64 <= byteCount; off += 64) {
        __m256i a0 = _mm256_setzero_si256(), a1 = _mm256_setzero_si256();
        __m256i b0 = _mm256_setzero_si256(), b1 = _mm256_setzero_si256();
        for (long s = 0; s < count; s++) {
            __m256i x0 = load(sources[s], off), x1 = load(sources[s], off + 32);
            __m256i lo0 = _mm256_and_si256(x0, low), hi0 = _mm256_and_si256(_mm256_srli_epi16(x0, 4), low);
            __m256i lo1 = _mm256_and_si256(x1, low), hi1 = _mm256_and_si256(_mm256_srli_epi16(x1, 4), low);
            const uint8_t *t = tables + s * 32;
            __m256i tl = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)t));
            __m256i th = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(t + 16)));
            a0 = _mm256_xor_si256(a0, _mm256_xor_si256(_mm256_shuffle_epi8(tl, lo0), _mm256_shuffle_epi8(th, hi0)));
            a1 = _mm256_xor_si256(a1, _mm256_xor_si256(_mm256_shuffle_epi8(tl, lo1), _mm256_shuffle_epi8(th, hi1)));
            if (rows > 1) {
                t = tables + (count + s) * 32;
                tl = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)t));
                th = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(t + 16)));
                b0 = _mm256_xor_si256(b0, _mm256_xor_si256(_mm256_shuffle_epi8(tl, lo0), _mm256_shuffle_epi8(th, hi0)));
                b1 = _mm256_xor_si256(b1, _mm256_xor_si256(_mm256_shuffle_epi8(tl, lo1), _mm256_shuffle_epi8(th, hi1)));
            }
        }
        put(a0, outputs[0], off, 0);
        put(a1, outputs[0], off + 32, 0);
        if (rows > 1) {
            put(b0, outputs[1], off, 0);
            put(b1, outputs[1], off + 32, 0);
        }
    }
    for (; off + 32 <= byteCount; off += 32) {
        __m256i acc0 = _mm256_setzero_si256(), acc1 = _mm256_setzero_si256();
        for (long s = 0; s < count; s++) {
            __m256i x = load(sources[s], off);
            __m256i lo = _mm256_and_si256(x, low);
            __m256i hi = _mm256_and_si256(_mm256_srli_epi16(x, 4), low);
            const uint8_t *t0 = tables + s * 32;
            acc0 = _mm256_xor_si256(acc0, _mm256_shuffle_epi8(_mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)t0)), lo));
            acc0 = _mm256_xor_si256(acc0, _mm256_shuffle_epi8(_mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(t0 + 16))), hi));
            if (rows > 1) {
                const uint8_t *t1 = tables + (count + s) * 32;
                acc1 = _mm256_xor_si256(acc1, _mm256_shuffle_epi8(_mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)t1)), lo));
                acc1 = _mm256_xor_si256(acc1, _mm256_shuffle_epi8(_mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(t1 + 16))), hi));
            }
        }
        put(acc0, outputs[0], off, 0);
        if (rows > 1) put(acc1, outputs[1], off, 0);
    }
    swraid_gf_combine_bytes(sources, count, tables, rows, outputs, off, byteCount);
    if (tables != local) free(tables);
}
#endif
