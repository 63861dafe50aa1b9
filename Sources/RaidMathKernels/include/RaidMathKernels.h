// The hot loops of RaidMath and MDOffline, in C: parity (a baseline build, an AVX2 one and an
// AVX-512 one),
// GF(2^8) multiply-add, buffer compares, SHA-256 blocks.
//
// Why C: a package that depends on swraid by version may use no unsafe build flags, so these
// modules cannot be compiled with `-O` in debug builds or for another CPU target. C functions
// carry their CPU target in a `target` attribute, as ISA-L writes its own, and unoptimised C is
// about ten times faster than unoptimised Swift SIMD code (`swift run swraid demo` is a debug
// build). Results are identical across builds: RaidMath's tests compare the tiers byte for byte.
#ifndef SWRAID_RAIDMATH_KERNELS_H
#define SWRAID_RAIDMATH_KERNELS_H
#include <stdint.h>

// dst = XOR of the `count` sources (count >= 1), `byteCount` bytes each. dst may alias a source.
// `nonTemporal` stores dst around the cache where it is 16-byte aligned.
void swraid_xor_baseline(const void *const *sources, long count, void *dst, long byteCount, int nonTemporal);

// P = XOR of the sources, Q = sum of g^i * sources[i] over GF(2^8) with md's polynomial 0x11D,
// by Horner's rule from the highest slot down (md's gen_syndrome). p and q must not alias a
// source. `nonTemporal` stores P and Q around the cache where both are aligned.
void swraid_pq_baseline(const void *const *sources, long count, void *p, void *q, long byteCount, int nonTemporal);

// dst = a*x ^ b*y over GF(2^8) (y may be NULL: b = 0). dst may alias x or y.
void swraid_gf_mul_add(uint8_t a, const void *x, uint8_t b, const void *y, void *dst, long byteCount);

// outputs[r] = sum over s of coefficients[r * count + s] * sources[s] over GF(2^8), for r below
// `rows` (1 or 2): RAID6's recovery of two lost blocks in one pass over the survivors (what
// ISA-L's ec_encode_data does). Outputs must not alias a source.
void swraid_gf_combine_baseline(const void *const *sources, long count, const uint8_t *coefficients, long rows,
                                void *const *outputs, long byteCount);

// 1 when the buffers hold the same bytes; 1 when every byte is zero.
int swraid_buffers_equal(const void *a, const void *b, long byteCount);
int swraid_buffer_is_zero(const void *a, long byteCount);

// SHA-256's compression function over `blocks` 64-byte blocks (FIPS 180-4), updating `state`.
void swraid_sha256_blocks(uint32_t state[8], const void *data, long blocks);

#if defined(__x86_64__)
// The AVX2 builds of the parity kernels, for CPUs without AVX-512; call only after
// `swraid_cpu_has_avx2_kernels` (CX86Intrinsics) says the CPU and OS support them.
void swraid_xor_avx2(const void *const *sources, long count, void *dst, long byteCount, int nonTemporal);
void swraid_pq_avx2(const void *const *sources, long count, void *p, void *q, long byteCount, int nonTemporal);
void swraid_gf_combine_avx2(const void *const *sources, long count, const uint8_t *coefficients, long rows,
                            void *const *outputs, long byteCount);

// The AVX-512 builds (F and BW) of the parity kernels; call only after
// `swraid_cpu_has_avx512_kernels` (CX86Intrinsics) says the CPU and OS support them.
void swraid_xor_avx512(const void *const *sources, long count, void *dst, long byteCount);
void swraid_pq_avx512(const void *const *sources, long count, void *p, void *q, long byteCount, int nonTemporal);
void swraid_gf_combine_avx512(const void *const *sources, long count, const uint8_t *coefficients, long rows,
                              void *const *outputs, long byteCount);
#endif

#endif
