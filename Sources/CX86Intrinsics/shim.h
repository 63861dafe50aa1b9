// Clang's SSE2 intrinsics, for the one thing Swift cannot express: non-temporal (streaming)
// stores of parity, which skip the read-for-ownership of destination lines (as ISA-L does).
// Header only; nothing is linked. Empty on other architectures.
#if defined(__x86_64__)
#include <emmintrin.h>
static inline void swraid_store_fence(void) { _mm_sfence(); }
#endif
#if defined(__x86_64__)
static inline void swraid_prefetch(const void *p) { __builtin_prefetch(p, 0, 0); }
#endif
