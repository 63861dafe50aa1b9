// SIMD kernels over raw buffers. These are the hot loops: whole chunks go through them.
//
// Lane types matter in Swift 6.3 (see perf-ceilings.md): XOR uses `SIMD8<UInt64>` lanes; the
// GF(2^8) multiply-by-2 needs per-byte shifts and compares, which `SIMD16<UInt8>` lowers to
// single SSE2 instructions (wider UInt8 vectors fall back to byte loops).

#if arch(x86_64)
import CX86Intrinsics
import RaidMathAVX512
#endif

/// Which build of the parity kernels runs: the baseline one (the default build target: SSE2 on
/// x86-64), or the same loops compiled for AVX-512 in their own module, chosen at run time as
/// ISA-L chooses its code paths. Results are identical; only speed differs.
public enum ParityKernelTier: String, Sendable, CaseIterable, CustomStringConvertible {
    case baseline
    case avx512

    /// The fastest tier this CPU and OS support (probed once, with CPUID and XGETBV).
    public static let best: ParityKernelTier = {
        #if arch(x86_64)
        return swraid_cpu_has_avx512_kernels() != 0 ? .avx512 : .baseline
        #else
        return .baseline
        #endif
    }()

    public var isSupported: Bool { self == .baseline || Self.best == .avx512 }

    public var description: String {
        switch self {
        case .baseline:
            #if arch(x86_64)
            return "baseline (SSE2)"
            #else
            return "baseline"
            #endif
        case .avx512: return "AVX-512"
        }
    }
}

/// `dst = XOR of sources`. `dst` may alias one of the sources. `nonTemporal` says the parity
/// heads for a member write rather than being read back soon; a kernel then writes it around
/// the cache where that measured faster (the baseline kernels do, the AVX-512 XOR does not).
public func xorKernel(
    _ sources: UnsafeBufferPointer<UnsafeRawPointer>, into dst: UnsafeMutableRawPointer, byteCount: Int,
    nonTemporal: Bool = false, tier: ParityKernelTier = .best
) {
    precondition(!sources.isEmpty && byteCount >= 0)
    precondition(tier.isSupported, "the \(tier) parity kernels need a CPU that has them")
    #if arch(x86_64)
    if tier == .avx512 {
        xorKernelAVX512(sources, into: dst, byteCount: byteCount, nonTemporal: nonTemporal)
        return
    }
    #endif
    xorKernelBaseline(sources, into: dst, byteCount: byteCount, nonTemporal: nonTemporal)
}

/// P = XOR of `sources`, Q = sum of g^i * sources[i] (i = syndrome slot), by Horner's rule from
/// the highest slot down, as md's `gen_syndrome` does. `p`/`q` must not alias a source.
/// `nonTemporal` as for `xorKernel`.
public func pqKernel(
    _ sources: UnsafeBufferPointer<UnsafeRawPointer>, p: UnsafeMutableRawPointer, q: UnsafeMutableRawPointer,
    byteCount: Int, nonTemporal: Bool = false, tier: ParityKernelTier = .best
) {
    precondition(!sources.isEmpty && byteCount >= 0)
    precondition(tier.isSupported, "the \(tier) parity kernels need a CPU that has them")
    #if arch(x86_64)
    if tier == .avx512 {
        pqKernelAVX512(sources, p: p, q: q, byteCount: byteCount, nonTemporal: nonTemporal)
        return
    }
    #endif
    pqKernelBaseline(sources, p: p, q: q, byteCount: byteCount, nonTemporal: nonTemporal)
}

@usableFromInline typealias XorLane = SIMD8<UInt64>
@usableFromInline typealias ByteLane = SIMD16<UInt8>

/// Bytes processed per iteration of the main loops; buffers are handled in these blocks with a
/// scalar tail for whatever remains.
public let kernelBlockBytes = 64

/// Stores 16 bytes at `dst + offset`, bypassing the cache when `streaming` (then `dst + offset`
/// must be 16-byte aligned and `finishStreaming()` must follow the last such store).
@inline(__always)
func store(_ value: SIMD16<UInt8>, _ dst: UnsafeMutableRawPointer, _ offset: Int, streaming: Bool) {
    #if arch(x86_64)
    if streaming {
        _mm_stream_si128((dst + offset).assumingMemoryBound(to: SIMD2<Int64>.self), unsafeBitCast(value, to: SIMD2<Int64>.self))
        return
    }
    #endif
    dst.storeBytes(of: value, toByteOffset: offset, as: SIMD16<UInt8>.self)
}

@inline(__always)
func store(_ value: XorLane, _ dst: UnsafeMutableRawPointer, _ offset: Int, streaming: Bool) {
    #if arch(x86_64)
    if streaming {
        let parts = unsafeBitCast(value, to: (SIMD16<UInt8>, SIMD16<UInt8>, SIMD16<UInt8>, SIMD16<UInt8>).self)
        store(parts.0, dst, offset, streaming: true)
        store(parts.1, dst, offset &+ 16, streaming: true)
        store(parts.2, dst, offset &+ 32, streaming: true)
        store(parts.3, dst, offset &+ 48, streaming: true)
        return
    }
    #endif
    dst.storeBytes(of: value, toByteOffset: offset, as: XorLane.self)
}

/// Orders streaming stores before anything that follows (another thread may read the parity).
@inline(__always)
func finishStreaming(_ streaming: Bool) {
    #if arch(x86_64)
    if streaming { swraid_store_fence() }
    #endif
}

/// Streaming stores need 16-byte alignment; they are only worth it for whole blocks.
@inline(__always)
func canStream(_ pointers: UnsafeMutableRawPointer...) -> Bool {
    #if arch(x86_64)
    return pointers.allSatisfy { UInt(bitPattern: $0) & 15 == 0 }
    #else
    return false
    #endif
}

@inline(__always)
func mul2(_ q: ByteLane) -> ByteLane {
    // Bytes with the top bit set are negative as Int8: the compare yields an all-ones mask.
    let negative = unsafeBitCast(q, to: SIMD16<Int8>.self) .< SIMD16<Int8>(repeating: 0)
    let mask = unsafeBitCast(SIMD16<Int8>(repeating: 0).replacing(with: -1, where: negative), to: ByteLane.self)
    return (q &+ q) ^ (mask & ByteLane(repeating: GF256.polynomialLowByte))
}

/// The baseline build of `xorKernel`.
@inline(never)
func xorKernelBaseline(
    _ sources: UnsafeBufferPointer<UnsafeRawPointer>, into dst: UnsafeMutableRawPointer, byteCount: Int, nonTemporal: Bool
) {
    let streaming = nonTemporal && canStream(dst)
    defer { finishStreaming(streaming) }
    let n = sources.count
    var off = 0
    // Two lanes (128 bytes) per pass over the sources, then at most one single lane.
    let pairs = byteCount / (2 * kernelBlockBytes) * (2 * kernelBlockBytes)
    while off < pairs {
        var a = sources[0].loadUnaligned(fromByteOffset: off, as: XorLane.self)
        var b = sources[0].loadUnaligned(fromByteOffset: off &+ 64, as: XorLane.self)
        var j = 1
        while j < n {
            let s = sources[j]
            a ^= s.loadUnaligned(fromByteOffset: off, as: XorLane.self)
            b ^= s.loadUnaligned(fromByteOffset: off &+ 64, as: XorLane.self)
            j &+= 1
        }
        store(a, dst, off, streaming: streaming)
        store(b, dst, off &+ 64, streaming: streaming)
        off &+= 2 * kernelBlockBytes
    }
    let blocks = byteCount / kernelBlockBytes * kernelBlockBytes
    while off < blocks {
        var acc = sources[0].loadUnaligned(fromByteOffset: off, as: XorLane.self)
        var j = 1
        while j < n {
            acc ^= sources[j].loadUnaligned(fromByteOffset: off, as: XorLane.self)
            j &+= 1
        }
        store(acc, dst, off, streaming: streaming)
        off &+= kernelBlockBytes
    }
    while off < byteCount {
        var b = sources[0].load(fromByteOffset: off, as: UInt8.self)
        for j in 1..<n { b ^= sources[j].load(fromByteOffset: off, as: UInt8.self) }
        dst.storeBytes(of: b, toByteOffset: off, as: UInt8.self)
        off &+= 1
    }
}

/// The baseline build of `pqKernel`.
@inline(never)
func pqKernelBaseline(
    _ sources: UnsafeBufferPointer<UnsafeRawPointer>, p: UnsafeMutableRawPointer, q: UnsafeMutableRawPointer,
    byteCount: Int, nonTemporal: Bool
) {
    let streaming = nonTemporal && canStream(p, q)
    defer { finishStreaming(streaming) }
    let n = sources.count
    let last = sources[n - 1]
    let blocks = byteCount / kernelBlockBytes * kernelBlockBytes
    var off = 0
    while off < blocks {
        var p0 = last.loadUnaligned(fromByteOffset: off, as: ByteLane.self)
        var p1 = last.loadUnaligned(fromByteOffset: off &+ 16, as: ByteLane.self)
        var p2 = last.loadUnaligned(fromByteOffset: off &+ 32, as: ByteLane.self)
        var p3 = last.loadUnaligned(fromByteOffset: off &+ 48, as: ByteLane.self)
        var q0 = p0, q1 = p1, q2 = p2, q3 = p3
        var z = n &- 2
        while z >= 0 {
            let s = sources[z]
            #if arch(x86_64)
            swraid_prefetch(s + (off &+ 1024))
            #endif
            let d0 = s.loadUnaligned(fromByteOffset: off, as: ByteLane.self)
            let d1 = s.loadUnaligned(fromByteOffset: off &+ 16, as: ByteLane.self)
            let d2 = s.loadUnaligned(fromByteOffset: off &+ 32, as: ByteLane.self)
            let d3 = s.loadUnaligned(fromByteOffset: off &+ 48, as: ByteLane.self)
            p0 ^= d0; p1 ^= d1; p2 ^= d2; p3 ^= d3
            q0 = mul2(q0) ^ d0; q1 = mul2(q1) ^ d1; q2 = mul2(q2) ^ d2; q3 = mul2(q3) ^ d3
            z &-= 1
        }
        store(p0, p, off, streaming: streaming)
        store(p1, p, off &+ 16, streaming: streaming)
        store(p2, p, off &+ 32, streaming: streaming)
        store(p3, p, off &+ 48, streaming: streaming)
        store(q0, q, off, streaming: streaming)
        store(q1, q, off &+ 16, streaming: streaming)
        store(q2, q, off &+ 32, streaming: streaming)
        store(q3, q, off &+ 48, streaming: streaming)
        off &+= kernelBlockBytes
    }
    while off < byteCount {
        var pb = last.load(fromByteOffset: off, as: UInt8.self)
        var qb = pb
        var z = n - 2
        while z >= 0 {
            let d = sources[z].load(fromByteOffset: off, as: UInt8.self)
            pb ^= d
            qb = GF256.mul2(qb) ^ d
            z -= 1
        }
        p.storeBytes(of: pb, toByteOffset: off, as: UInt8.self)
        q.storeBytes(of: qb, toByteOffset: off, as: UInt8.self)
        off &+= 1
    }
}

/// `dst = a * x ^ b * y` over GF(2^8), byte-wise (`y` may be nil, meaning b = 0).
/// Multiplication by a constant is done by doubling through its bits, with per-bit masks instead
/// of branches so the loop stays SIMD. `dst` may alias `x` or `y`.
@inline(never)
public func gfMulAddKernel(
    _ a: UInt8, _ x: UnsafeRawPointer, _ b: UInt8, _ y: UnsafeRawPointer?, into dst: UnsafeMutableRawPointer,
    byteCount: Int
) {
    precondition(byteCount >= 0)
    // masks[i] selects the doubled value g^i * x when bit i of the constant is set.
    var maskA = [ByteLane](repeating: ByteLane(repeating: 0), count: 8)
    var maskB = [ByteLane](repeating: ByteLane(repeating: 0), count: 8)
    for bit in 0..<8 {
        if a & (1 << bit) != 0 { maskA[bit] = ByteLane(repeating: 0xFF) }
        if b & (1 << bit) != 0 { maskB[bit] = ByteLane(repeating: 0xFF) }
    }
    let topA = a == 0 ? 0 : 8 - a.leadingZeroBitCount
    let topB = (b == 0 || y == nil) ? 0 : 8 - b.leadingZeroBitCount
    let lanes = byteCount / 16 * 16
    var off = 0
    maskA.withUnsafeBufferPointer { ma in
        maskB.withUnsafeBufferPointer { mb in
            while off < lanes {
                var acc = ByteLane(repeating: 0)
                var t = x.loadUnaligned(fromByteOffset: off, as: ByteLane.self)
                var bit = 0
                while bit < topA {
                    acc ^= t & ma[bit]
                    t = mul2(t)
                    bit &+= 1
                }
                if let y {
                    t = y.loadUnaligned(fromByteOffset: off, as: ByteLane.self)
                    bit = 0
                    while bit < topB {
                        acc ^= t & mb[bit]
                        t = mul2(t)
                        bit &+= 1
                    }
                }
                dst.storeBytes(of: acc, toByteOffset: off, as: ByteLane.self)
                off &+= 16
            }
        }
    }
    while off < byteCount {
        var v = GF256.mul(a, x.load(fromByteOffset: off, as: UInt8.self))
        if let y { v ^= GF256.mul(b, y.load(fromByteOffset: off, as: UInt8.self)) }
        dst.storeBytes(of: v, toByteOffset: off, as: UInt8.self)
        off &+= 1
    }
}

/// True when the two buffers hold the same bytes (SIMD compare, early exit).
public func buffersEqual(_ a: UnsafeRawPointer, _ b: UnsafeRawPointer, byteCount: Int) -> Bool {
    let blocks = byteCount / kernelBlockBytes * kernelBlockBytes
    var off = 0
    while off < blocks {
        let x = a.loadUnaligned(fromByteOffset: off, as: XorLane.self) ^ b.loadUnaligned(fromByteOffset: off, as: XorLane.self)
        if x != XorLane(repeating: 0) { return false }
        off &+= kernelBlockBytes
    }
    while off < byteCount {
        if a.load(fromByteOffset: off, as: UInt8.self) != b.load(fromByteOffset: off, as: UInt8.self) { return false }
        off &+= 1
    }
    return true
}

/// True when every byte is zero.
public func bufferIsZero(_ a: UnsafeRawPointer, byteCount: Int) -> Bool {
    let blocks = byteCount / kernelBlockBytes * kernelBlockBytes
    var off = 0
    var acc = XorLane(repeating: 0)
    while off < blocks {
        acc |= a.loadUnaligned(fromByteOffset: off, as: XorLane.self)
        if off & 4095 == 4032 && acc != XorLane(repeating: 0) { return false }
        off &+= kernelBlockBytes
    }
    if acc != XorLane(repeating: 0) { return false }
    while off < byteCount {
        if a.load(fromByteOffset: off, as: UInt8.self) != 0 { return false }
        off &+= 1
    }
    return true
}
