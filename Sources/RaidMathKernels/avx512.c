// The AVX-512 parity kernels (see include/RaidMathKernels.h). The same loops as RaidMath's
// baseline kernels, with 64-byte zmm lanes; results are identical (RaidMath's tests compare the
// tiers byte for byte).
#if defined(__x86_64__)
#include "RaidMathKernels.h"
#include "bytes.h"
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>

#define SWRAID_AVX512 __attribute__((target("avx512f,avx512bw")))

static inline SWRAID_AVX512 __m512i load(const void *base, long offset) {
    return _mm512_loadu_si512((const void *)((const char *)base + offset));
}

static inline SWRAID_AVX512 void put(__m512i value, void *base, long offset, int streaming) {
    void *at = (char *)base + offset;
    if (streaming) {
        _mm512_stream_si512((__m512i *)at, value);
    } else {
        _mm512_storeu_si512(at, value);
    }
}

// GF(2^8) multiply-by-2 of 64 bytes: double every byte, and where its top bit fell out add md's
// polynomial's low byte (0x1D).
static inline SWRAID_AVX512 __m512i mul2(__m512i q) {
    __mmask64 high = _mm512_movepi8_mask(q);
    __m512i doubled = _mm512_add_epi8(q, q);
    return _mm512_xor_si512(doubled, _mm512_maskz_mov_epi8(high, _mm512_set1_epi8(0x1D)));
}

// Four lanes (256 bytes) per pass over the sources, from the last source down (measured faster in
// cache than first to last), then single lanes, then bytes. Ordinary stores: measured beside
// ISA-L (whose AVX-512 XOR makes the same choice), as fast once memory-bound and faster in cache.
SWRAID_AVX512 void swraid_xor_avx512(const void *const *sources, long count, void *dst, long byteCount) {
    const void *last = sources[count - 1];
    long off = 0;
    for (; off + 256 <= byteCount; off += 256) {
        __m512i a = load(last, off), b = load(last, off + 64), c = load(last, off + 128), d = load(last, off + 192);
        for (long j = count - 2; j >= 0; j--) {
            const void *s = sources[j];
            a = _mm512_xor_si512(a, load(s, off));
            b = _mm512_xor_si512(b, load(s, off + 64));
            c = _mm512_xor_si512(c, load(s, off + 128));
            d = _mm512_xor_si512(d, load(s, off + 192));
        }
        put(a, dst, off, 0);
        put(b, dst, off + 64, 0);
        put(c, dst, off + 128, 0);
        put(d, dst, off + 192, 0);
    }
    for (; off + 64 <= byteCount; off += 64) {
        __m512i a = load(sources[0], off);
        for (long j = 1; j < count; j++) a = _mm512_xor_si512(a, load(sources[j], off));
        put(a, dst, off, 0);
    }
    swraid_xor_bytes(sources, count, dst, off, byteCount);
}

// Two lanes (128 bytes) per pass over the sources, then single lanes, then bytes.
SWRAID_AVX512 void swraid_pq_avx512(const void *const *sources, long count, void *p, void *q, long byteCount, int nonTemporal) {
    int streaming = nonTemporal && ((uintptr_t)p & 63) == 0 && ((uintptr_t)q & 63) == 0;
    const void *last = sources[count - 1];
    long off = 0;
    for (; off + 128 <= byteCount; off += 128) {
        __m512i p0 = load(last, off), p1 = load(last, off + 64);
        __m512i q0 = p0, q1 = p1;
        for (long z = count - 2; z >= 0; z--) {
            __m512i d0 = load(sources[z], off), d1 = load(sources[z], off + 64);
            p0 = _mm512_xor_si512(p0, d0);
            p1 = _mm512_xor_si512(p1, d1);
            q0 = _mm512_xor_si512(mul2(q0), d0);
            q1 = _mm512_xor_si512(mul2(q1), d1);
        }
        put(p0, p, off, streaming);
        put(p1, p, off + 64, streaming);
        put(q0, q, off, streaming);
        put(q1, q, off + 64, streaming);
    }
    for (; off + 64 <= byteCount; off += 64) {
        __m512i p0 = load(last, off);
        __m512i q0 = p0;
        for (long z = count - 2; z >= 0; z--) {
            __m512i d0 = load(sources[z], off);
            p0 = _mm512_xor_si512(p0, d0);
            q0 = _mm512_xor_si512(mul2(q0), d0);
        }
        put(p0, p, off, streaming);
        put(q0, q, off, streaming);
    }
    if (streaming) _mm_sfence();
    swraid_pq_bytes(sources, count, p, q, off, byteCount);
}

// Multiplication by a constant c is linear, so c*x = c*(x & 0x0F) ^ c*(x & 0xF0): two 16-entry
// tables per coefficient, looked up 64 bytes at a time with vpshufb (ISA-L's method). Each
// source is loaded once per 64 bytes and feeds both outputs.
SWRAID_AVX512 void swraid_gf_combine_avx512(const void *const *sources, long count, const uint8_t *coefficients, long rows,
                                            void *const *outputs, long byteCount) {
    uint8_t local[2 * 16 * 2 * 16];
    uint8_t *tables = swraid_gf_combine_tables(coefficients, count, rows, local);
    const __m512i low = _mm512_set1_epi8(0x0F);
    long off = 0;
    // Two lanes (128 bytes) per pass, so that each table broadcast serves two lookups.
    for (; off + 128 <= byteCount; off += 128) {
        __m512i a0 = _mm512_setzero_si512(), a1 = _mm512_setzero_si512();
        __m512i b0 = _mm512_setzero_si512(), b1 = _mm512_setzero_si512();
        for (long s = 0; s < count; s++) {
            __m512i x0 = load(sources[s], off), x1 = load(sources[s], off + 64);
            __m512i lo0 = _mm512_and_si512(x0, low), hi0 = _mm512_and_si512(_mm512_srli_epi16(x0, 4), low);
            __m512i lo1 = _mm512_and_si512(x1, low), hi1 = _mm512_and_si512(_mm512_srli_epi16(x1, 4), low);
            const uint8_t *t = tables + s * 32;
            __m512i tl = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)t));
            __m512i th = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(t + 16)));
            a0 = _mm512_ternarylogic_epi64(a0, _mm512_shuffle_epi8(tl, lo0), _mm512_shuffle_epi8(th, hi0), 0x96);
            a1 = _mm512_ternarylogic_epi64(a1, _mm512_shuffle_epi8(tl, lo1), _mm512_shuffle_epi8(th, hi1), 0x96);
            if (rows > 1) {
                t = tables + (count + s) * 32;
                tl = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)t));
                th = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(t + 16)));
                b0 = _mm512_ternarylogic_epi64(b0, _mm512_shuffle_epi8(tl, lo0), _mm512_shuffle_epi8(th, hi0), 0x96);
                b1 = _mm512_ternarylogic_epi64(b1, _mm512_shuffle_epi8(tl, lo1), _mm512_shuffle_epi8(th, hi1), 0x96);
            }
        }
        put(a0, outputs[0], off, 0);
        put(a1, outputs[0], off + 64, 0);
        if (rows > 1) {
            put(b0, outputs[1], off, 0);
            put(b1, outputs[1], off + 64, 0);
        }
    }
    for (; off + 64 <= byteCount; off += 64) {
        __m512i acc0 = _mm512_setzero_si512(), acc1 = _mm512_setzero_si512();
        for (long s = 0; s < count; s++) {
            __m512i x = load(sources[s], off);
            __m512i lo = _mm512_and_si512(x, low);
            __m512i hi = _mm512_and_si512(_mm512_srli_epi16(x, 4), low);
            const uint8_t *t0 = tables + s * 32;
            acc0 = _mm512_xor_si512(acc0, _mm512_shuffle_epi8(_mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)t0)), lo));
            acc0 = _mm512_xor_si512(acc0, _mm512_shuffle_epi8(_mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(t0 + 16))), hi));
            if (rows > 1) {
                const uint8_t *t1 = tables + (count + s) * 32;
                acc1 = _mm512_xor_si512(acc1, _mm512_shuffle_epi8(_mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)t1)), lo));
                acc1 = _mm512_xor_si512(acc1, _mm512_shuffle_epi8(_mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(t1 + 16))), hi));
            }
        }
        put(acc0, outputs[0], off, 0);
        if (rows > 1) put(acc1, outputs[1], off, 0);
    }
    swraid_gf_combine_bytes(sources, count, tables, rows, outputs, off, byteCount);
    if (tables != local) free(tables);
}
#endif
