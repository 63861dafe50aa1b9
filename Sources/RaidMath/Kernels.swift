// The kernels over raw buffers: whole chunks go through them. The loops themselves are C
// functions in RaidMathKernels (see its header for why); this file chooses the build and checks
// the arguments.

import RaidMathKernels

#if arch(x86_64)
import CX86Intrinsics
#endif

/// Which build of the parity kernels runs: the baseline one (the default build target: SSE2 on
/// x86-64), or the same loops for AVX2 or AVX-512 in their own C files (functions with a
/// `target` attribute, as ISA-L writes its own), chosen at run time as ISA-L chooses its code
/// paths. Results are identical; only speed differs.
public enum ParityKernelTier: String, Sendable, CaseIterable, CustomStringConvertible {
    case baseline
    case avx2
    case avx512

    /// The fastest tier this CPU and OS support (probed once, with CPUID and XGETBV).
    public static let best: ParityKernelTier = {
        #if arch(x86_64)
        if swraid_cpu_has_avx512_kernels() != 0 { return .avx512 }
        if swraid_cpu_has_avx2_kernels() != 0 { return .avx2 }
        #endif
        return .baseline
    }()

    /// Whether this CPU can run the tier: every CPU that has AVX-512 F and BW has AVX2.
    public var isSupported: Bool {
        switch self {
        case .baseline: return true
        case .avx2: return Self.best != .baseline
        case .avx512: return Self.best == .avx512
        }
    }

    public var description: String {
        switch self {
        case .baseline:
            #if arch(x86_64)
            return "baseline (SSE2)"
            #else
            return "baseline"
            #endif
        case .avx2: return "AVX2"
        case .avx512: return "AVX-512"
        }
    }
}

/// `dst = XOR of sources`. `dst` may alias one of the sources. `nonTemporal` says the parity
/// heads for a member write rather than being read back soon; a kernel then writes it around
/// the cache where that measured faster (the baseline kernels do, and the AVX2 ones as they,
/// not measured apart; the AVX-512 XOR does not).
public func xorKernel(
    _ sources: UnsafeBufferPointer<UnsafeRawPointer>, into dst: UnsafeMutableRawPointer, byteCount: Int,
    nonTemporal: Bool = false, tier: ParityKernelTier = .best
) {
    precondition(!sources.isEmpty && byteCount >= 0)
    precondition(tier.isSupported, "the \(tier) parity kernels need a CPU that has them")
    #if arch(x86_64)
    switch tier {
    case .avx512: swraid_xor_avx512(cSources(sources), sources.count, dst, byteCount); return
    case .avx2: swraid_xor_avx2(cSources(sources), sources.count, dst, byteCount, nonTemporal ? 1 : 0); return
    case .baseline: break
    }
    #endif
    swraid_xor_baseline(cSources(sources), sources.count, dst, byteCount, nonTemporal ? 1 : 0)
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
    switch tier {
    case .avx512: swraid_pq_avx512(cSources(sources), sources.count, p, q, byteCount, nonTemporal ? 1 : 0); return
    case .avx2: swraid_pq_avx2(cSources(sources), sources.count, p, q, byteCount, nonTemporal ? 1 : 0); return
    case .baseline: break
    }
    #endif
    swraid_pq_baseline(cSources(sources), sources.count, p, q, byteCount, nonTemporal ? 1 : 0)
}

/// The sources as C sees them (`const void *const *`): the same pointers, retyped.
@inline(__always)
func cSources(_ sources: UnsafeBufferPointer<UnsafeRawPointer>) -> UnsafePointer<UnsafeRawPointer?> {
    UnsafeRawPointer(sources.baseAddress!).assumingMemoryBound(to: UnsafeRawPointer?.self)
}

/// Bytes the kernels handle per pass of their main loops (the rest goes byte by byte).
public let kernelBlockBytes = 64

/// `dst = a * x ^ b * y` over GF(2^8), byte-wise (`y` may be nil, meaning b = 0).
/// `dst` may alias `x` or `y`.
public func gfMulAddKernel(
    _ a: UInt8, _ x: UnsafeRawPointer, _ b: UInt8, _ y: UnsafeRawPointer?, into dst: UnsafeMutableRawPointer,
    byteCount: Int
) {
    precondition(byteCount >= 0)
    swraid_gf_mul_add(a, x, b, y, dst, byteCount)
}

/// `outputs[r] = sum over s of coefficients[r][s] · sources[s]` over GF(2^8), one or two outputs,
/// in one pass over the sources (RAID6's recovery of two lost blocks; ISA-L's `ec_encode_data`).
/// Outputs must not alias a source.
public func gfCombineKernel(
    _ sources: UnsafeBufferPointer<UnsafeRawPointer>, coefficients: [[UInt8]], outputs: [UnsafeMutableRawPointer],
    byteCount: Int, tier: ParityKernelTier = .best
) {
    precondition(!sources.isEmpty && byteCount >= 0)
    precondition((1...2).contains(outputs.count) && coefficients.count == outputs.count, "one or two outputs, a coefficient row each")
    precondition(coefficients.allSatisfy { $0.count == sources.count }, "a coefficient per source")
    precondition(tier.isSupported, "the \(tier) parity kernels need a CPU that has them")
    let flat = coefficients.flatMap { $0 }
    flat.withUnsafeBufferPointer { c in
        outputs.map { Optional($0) }.withUnsafeBufferPointer { o in
            gfCombine(sources, rows: c.baseAddress!, rowCount: outputs.count, outputs: o.baseAddress!, byteCount: byteCount, tier: tier)
        }
    }
}

/// The kernel call both entry points make: `rows` holds `rowCount` rows of a coefficient per
/// source, `outputs` one pointer per row.
private func gfCombine(
    _ sources: UnsafeBufferPointer<UnsafeRawPointer>, rows: UnsafePointer<UInt8>, rowCount: Int,
    outputs: UnsafePointer<UnsafeMutableRawPointer?>, byteCount: Int, tier: ParityKernelTier
) {
    #if arch(x86_64)
    switch tier {
    case .avx512: swraid_gf_combine_avx512(cSources(sources), sources.count, rows, rowCount, outputs, byteCount); return
    case .avx2: swraid_gf_combine_avx2(cSources(sources), sources.count, rows, rowCount, outputs, byteCount); return
    case .baseline: break
    }
    #endif
    swraid_gf_combine_baseline(cSources(sources), sources.count, rows, rowCount, outputs, byteCount)
}

/// The same with two outputs and nothing allocated: `rows` holds row A's coefficients (one per
/// source), then row B's; `outputA = sum of rowA[s] · sources[s]`, `outputB` likewise.
public func gfCombineTwoRows(
    _ sources: UnsafeBufferPointer<UnsafeRawPointer>, rows: UnsafeBufferPointer<UInt8>,
    outputA: UnsafeMutableRawPointer, outputB: UnsafeMutableRawPointer, byteCount: Int, tier: ParityKernelTier = .best
) {
    precondition(!sources.isEmpty && byteCount >= 0)
    precondition(rows.count == 2 * sources.count, "a coefficient per source in each of the two rows")
    precondition(tier.isSupported, "the \(tier) parity kernels need a CPU that has them")
    withUnsafeTemporaryAllocation(of: UnsafeMutableRawPointer?.self, capacity: 2) { outputs in
        outputs[0] = outputA
        outputs[1] = outputB
        gfCombine(sources, rows: rows.baseAddress!, rowCount: 2, outputs: UnsafePointer(outputs.baseAddress!), byteCount: byteCount, tier: tier)
    }
}

/// True when the two buffers hold the same bytes.
public func buffersEqual(_ a: UnsafeRawPointer, _ b: UnsafeRawPointer, byteCount: Int) -> Bool {
    precondition(byteCount >= 0)
    return swraid_buffers_equal(a, b, byteCount) != 0
}

/// True when every byte is zero.
public func bufferIsZero(_ a: UnsafeRawPointer, byteCount: Int) -> Bool {
    precondition(byteCount >= 0)
    return swraid_buffer_is_zero(a, byteCount) != 0
}
