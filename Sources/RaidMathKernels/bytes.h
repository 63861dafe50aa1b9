// The byte-at-a-time ends of the parity loops, shared by the baseline and AVX-512 builds (what is
// left after the last whole vector). Private to RaidMathKernels.
#ifndef SWRAID_KERNEL_BYTES_H
#define SWRAID_KERNEL_BYTES_H
#include <stdint.h>
#include <stdlib.h>

// GF(2^8) multiply-by-2 with md's polynomial 0x11D.
static inline uint8_t swraid_mul2_byte(uint8_t b) { return (uint8_t)((b << 1) ^ ((b & 0x80) ? 0x1D : 0)); }

// The GF(2^8) product a*b with md's polynomial (shift and add: for tables and byte tails).
static inline uint8_t swraid_gf_mul_byte(uint8_t a, uint8_t b) {
    uint8_t product = 0;
    for (int bit = 0; bit < 8; bit++) {
        if ((b >> bit) & 1) product ^= a;
        a = swraid_mul2_byte(a);
    }
    return product;
}

// The two 16-entry tables of a nibble-split multiply by c: t[i] = c*i and t[16 + i] = c*(i << 4)
// for i in 0..<16. Multiplication by c is linear over XOR, so each entry is an earlier entry
// XOR c times its lowest set bit: seven doublings and 30 XORs per coefficient, instead of 32
// shift-and-add products of eight steps each (tables are built on every recovery call).
static inline void swraid_gf_nibble_tables(uint8_t c, uint8_t *t) {
    uint8_t bit[8];
    bit[0] = c;
    for (int k = 1; k < 8; k++) bit[k] = swraid_mul2_byte(bit[k - 1]);
    t[0] = 0;
    t[16] = 0;
    for (int i = 1; i < 16; i++) {
        int lowest = __builtin_ctz((unsigned)i);
        t[i] = (uint8_t)(t[i & (i - 1)] ^ bit[lowest]);
        t[16 + i] = (uint8_t)(t[16 + (i & (i - 1))] ^ bit[4 + lowest]);
    }
}

// dst = XOR of the sources, bytes [from, to).
static inline void swraid_xor_bytes(const void *const *sources, long count, void *dst, long from, long to) {
    for (long off = from; off < to; off++) {
        uint8_t x = ((const uint8_t *)sources[0])[off];
        for (long j = 1; j < count; j++) x ^= ((const uint8_t *)sources[j])[off];
        ((uint8_t *)dst)[off] = x;
    }
}

// P and Q of bytes [from, to), by Horner's rule from the highest slot down.
static inline void swraid_pq_bytes(const void *const *sources, long count, void *p, void *q, long from, long to) {
    for (long off = from; off < to; off++) {
        uint8_t pb = ((const uint8_t *)sources[count - 1])[off];
        uint8_t qb = pb;
        for (long z = count - 2; z >= 0; z--) {
            uint8_t d = ((const uint8_t *)sources[z])[off];
            pb ^= d;
            qb = (uint8_t)(swraid_mul2_byte(qb) ^ d);
        }
        ((uint8_t *)p)[off] = pb;
        ((uint8_t *)q)[off] = qb;
    }
}

// The nibble tables of a combine's coefficients (see swraid_gf_nibble_tables): per (row, source)
// the low-nibble table, then the high-nibble one, 16 bytes each. In `local` (room for 2 rows of
// 16 sources) when they fit, else on the heap: free the result when it is not `local`.
static inline uint8_t *swraid_gf_combine_tables(const uint8_t *coefficients, long count, long rows, uint8_t *local) {
    uint8_t *tables = count <= 16 ? local : malloc((size_t)(rows * count * 32));
    if (tables == NULL) abort();
    for (long r = 0; r < rows; r++) {
        for (long s = 0; s < count; s++) {
            swraid_gf_nibble_tables(coefficients[r * count + s], tables + (r * count + s) * 32);
        }
    }
    return tables;
}

// A combine's bytes [from, to), one at a time through its nibble tables.
static inline void swraid_gf_combine_bytes(const void *const *sources, long count, const uint8_t *tables, long rows,
                                           void *const *outputs, long from, long to) {
    for (long off = from; off < to; off++) {
        for (long r = 0; r < rows; r++) {
            uint8_t v = 0;
            for (long s = 0; s < count; s++) {
                uint8_t x = ((const uint8_t *)sources[s])[off];
                const uint8_t *t = tables + (r * count + s) * 32;
                v ^= (uint8_t)(t[x & 0x0F] ^ t[16 + (x >> 4)]);
            }
            ((uint8_t *)outputs[r])[off] = v;
        }
    }
}
#endif
