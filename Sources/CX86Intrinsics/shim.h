// Clang intrinsics and builtins for what Swift cannot express: non-temporal (streaming) stores of
// parity, which skip the read-for-ownership of destination lines (as ISA-L does), a prefetch, and
// the CPUID/XGETBV probe that decides whether the AVX-512 kernels may run.
// Header only; nothing is linked. Empty on other architectures.
#if defined(__x86_64__)
#include <emmintrin.h>
#include <cpuid.h>

static inline void swraid_store_fence(void) { _mm_sfence(); }
static inline void swraid_prefetch(const void *p) { __builtin_prefetch(p, 0, 0); }
static inline void swraid_prefetch_t0(const void *p) { __builtin_prefetch(p, 0, 3); }

// 64 bytes from `src` stored to `dst` (64-byte aligned) around the cache. Compiled inside the
// AVX-512 module this is one vmovntdq of a zmm register.
typedef long long swraid_v8i64 __attribute__((vector_size(64)));
static inline void swraid_stream_store_64(void *dst, const void *src) {
    swraid_v8i64 v;
    __builtin_memcpy(&v, src, 64);
    __builtin_nontemporal_store(v, (swraid_v8i64 *)dst);
}

// 1 when the CPU and the OS support everything the RaidMathAVX512 module is compiled for
// (clang's skylake-avx512: AVX-512 F/CD/BW/DQ/VL, AVX2, FMA, BMI1/2, LZCNT, MOVBE, POPCNT, F16C)
// and the OS saves the opmask and ZMM registers. Call it only from baseline-compiled code.
static inline int swraid_cpu_has_avx512_kernels(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
    const unsigned leaf1 = (1u << 12) | (1u << 22) | (1u << 23) | (1u << 27) | (1u << 28) | (1u << 29);
    if ((c & leaf1) != leaf1) return 0;
    unsigned xcr0_lo, xcr0_hi;
    __asm__ volatile("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));
    if ((xcr0_lo & 0xE6u) != 0xE6u) return 0;  // SSE, AVX, opmask, ZMM_Hi256, Hi16_ZMM state
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
    const unsigned leaf7 = (1u << 3) | (1u << 5) | (1u << 8) | (1u << 16) | (1u << 17) | (1u << 28) | (1u << 30) | (1u << 31);
    if ((b & leaf7) != leaf7) return 0;
    if (!__get_cpuid(0x80000001u, &a, &b, &c, &d)) return 0;
    return (c & (1u << 5)) != 0;  // LZCNT
}
#endif
