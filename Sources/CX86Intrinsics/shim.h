// The CPUID/XGETBV probes that decide whether the AVX2 and AVX-512 parity kernels
// (RaidMathKernels) may run: Swift cannot execute cpuid or xgetbv itself. Header only; nothing
// is linked. Empty on other architectures.
#if defined(__x86_64__)
#include <cpuid.h>

// 1 when the CPU and the OS support the AVX2 parity kernels (RaidMathKernels): AVX2, and the OS
// saving the YMM registers (OSXSAVE, then XCR0's SSE and AVX state). Call it only from
// baseline-compiled code.
static inline int swraid_cpu_has_avx2_kernels(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
    const unsigned leaf1 = (1u << 27) | (1u << 28);  // OSXSAVE, AVX
    if ((c & leaf1) != leaf1) return 0;
    unsigned xcr0_lo, xcr0_hi;
    __asm__ volatile("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));
    if ((xcr0_lo & 0x6u) != 0x6u) return 0;  // SSE and AVX state
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
    return (b & (1u << 5)) != 0;  // AVX2
}

// 1 when the CPU and the OS support the AVX-512 parity kernels (RaidMathKernels). They need
// AVX-512 F and BW; this asks for all of clang's skylake-avx512 (AVX-512 F/CD/BW/DQ/VL, AVX2,
// FMA, BMI1/2, LZCNT, MOVBE, POPCNT, F16C), a stricter test kept from when the kernels were
// compiled for that whole target, and that the OS saves the opmask and ZMM registers. Call it only from baseline-compiled code.
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
