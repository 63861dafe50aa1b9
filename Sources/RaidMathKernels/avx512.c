// The AVX-512 parity kernels (see include/RaidMathKernels.h). The same loops as RaidMath's
// baseline kernels, with 64-byte zmm lanes; results are identical (RaidMath's tests compare the
// tiers byte for byte).
#if defined(__x86_64__)
#include "RaidMathKernels.h"
#include "bytes.h"
#include <immintrin.h>
#include <stdint.h>

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
#endif
