// The parity kernels again, compiled for AVX-512 (Package.swift builds this module with
// `-target-cpu skylake-avx512`). `RaidMath` calls them only after the CPUID probe says the CPU
// and OS support that target; nothing here may run before that check, so this module holds
// nothing but these kernels. 64-byte `SIMD8<UInt64>` lanes become single zmm operations.

#if arch(x86_64)
import CX86Intrinsics

@usableFromInline typealias Lane = SIMD8<UInt64>

/// GF(2^8) multiply-by-2 of 64 bytes at once, in 64-bit lanes: shift every byte left, and where a
/// byte's top bit fell out, add md's polynomial's low byte (0x1D). `hi - hi >> 7` turns each
/// 0x80 into 0x7F without borrowing across bytes, and 0x7F & 0x1D = 0x1D.
@inline(__always)
func mul2(_ q: Lane) -> Lane {
    let hi = q & Lane(repeating: 0x8080_8080_8080_8080)
    let shifted = (q &<< 1) & Lane(repeating: 0xFEFE_FEFE_FEFE_FEFE)
    return shifted ^ ((hi &- (hi &>> 7)) & Lane(repeating: 0x1D1D_1D1D_1D1D_1D1D))
}

@inline(__always)
func mul2(_ b: UInt8) -> UInt8 { (b &<< 1) ^ (b & 0x80 != 0 ? 0x1D : 0) }

@inline(__always)
func put(_ value: Lane, _ dst: UnsafeMutableRawPointer, _ offset: Int, streaming: Bool) {
    if streaming {
        var v = value
        withUnsafeBytes(of: &v) { swraid_stream_store_64(dst + offset, $0.baseAddress!) }
    } else {
        dst.storeBytes(of: value, toByteOffset: offset, as: Lane.self)
    }
}

/// Streaming stores of whole zmm registers need 64-byte alignment.
@inline(__always)
func isLaneAligned(_ pointer: UnsafeMutableRawPointer) -> Bool { UInt(bitPattern: pointer) & 63 == 0 }

/// `dst = XOR of sources` (see RaidMath's `xorKernel`). `nonTemporal` is only a hint, and this
/// kernel does not take it: measured beside ISA-L (whose AVX-512 XOR makes the same choice),
/// ordinary stores of four lanes per pass are as fast once memory-bound and faster in cache.
@inline(never)
public func xorKernelAVX512(
    _ sources: UnsafeBufferPointer<UnsafeRawPointer>, into dst: UnsafeMutableRawPointer, byteCount: Int, nonTemporal: Bool
) {
    let n = sources.count
    let last = sources[n &- 1]
    var off = 0
    // Four lanes (256 bytes) per pass over the sources, from the last source down (measured
    // faster in cache than first-to-last), then single lanes, then bytes.
    while off &+ 256 <= byteCount {
        var a = last.loadUnaligned(fromByteOffset: off, as: Lane.self)
        var b = last.loadUnaligned(fromByteOffset: off &+ 64, as: Lane.self)
        var c = last.loadUnaligned(fromByteOffset: off &+ 128, as: Lane.self)
        var d = last.loadUnaligned(fromByteOffset: off &+ 192, as: Lane.self)
        var j = n &- 2
        while j >= 0 {
            let s = sources[j]
            a ^= s.loadUnaligned(fromByteOffset: off, as: Lane.self)
            b ^= s.loadUnaligned(fromByteOffset: off &+ 64, as: Lane.self)
            c ^= s.loadUnaligned(fromByteOffset: off &+ 128, as: Lane.self)
            d ^= s.loadUnaligned(fromByteOffset: off &+ 192, as: Lane.self)
            j &-= 1
        }
        dst.storeBytes(of: a, toByteOffset: off, as: Lane.self)
        dst.storeBytes(of: b, toByteOffset: off &+ 64, as: Lane.self)
        dst.storeBytes(of: c, toByteOffset: off &+ 128, as: Lane.self)
        dst.storeBytes(of: d, toByteOffset: off &+ 192, as: Lane.self)
        off &+= 256
    }
    while off &+ 64 <= byteCount {
        var a = sources[0].loadUnaligned(fromByteOffset: off, as: Lane.self)
        var j = 1
        while j < n {
            a ^= sources[j].loadUnaligned(fromByteOffset: off, as: Lane.self)
            j &+= 1
        }
        dst.storeBytes(of: a, toByteOffset: off, as: Lane.self)
        off &+= 64
    }
    while off < byteCount {
        var x = sources[0].load(fromByteOffset: off, as: UInt8.self)
        for j in 1..<n { x ^= sources[j].load(fromByteOffset: off, as: UInt8.self) }
        dst.storeBytes(of: x, toByteOffset: off, as: UInt8.self)
        off &+= 1
    }
}

/// P = XOR of sources, Q = sum of g^i · sources[i] by Horner's rule from the highest slot down
/// (see RaidMath's `pqKernel`). `p` and `q` must not alias a source.
@inline(never)
public func pqKernelAVX512(
    _ sources: UnsafeBufferPointer<UnsafeRawPointer>, p: UnsafeMutableRawPointer, q: UnsafeMutableRawPointer,
    byteCount: Int, nonTemporal: Bool
) {
    let streaming = nonTemporal && isLaneAligned(p) && isLaneAligned(q)
    let n = sources.count
    let last = sources[n &- 1]
    var off = 0
    // Two lanes (128 bytes) per pass over the sources, then single lanes, then bytes.
    while off &+ 128 <= byteCount {
        var p0 = last.loadUnaligned(fromByteOffset: off, as: Lane.self)
        var p1 = last.loadUnaligned(fromByteOffset: off &+ 64, as: Lane.self)
        var q0 = p0, q1 = p1
        var z = n &- 2
        while z >= 0 {
            let s = sources[z]
            let d0 = s.loadUnaligned(fromByteOffset: off, as: Lane.self)
            let d1 = s.loadUnaligned(fromByteOffset: off &+ 64, as: Lane.self)
            p0 ^= d0; p1 ^= d1
            q0 = mul2(q0) ^ d0; q1 = mul2(q1) ^ d1
            z &-= 1
        }
        put(p0, p, off, streaming: streaming)
        put(p1, p, off &+ 64, streaming: streaming)
        put(q0, q, off, streaming: streaming)
        put(q1, q, off &+ 64, streaming: streaming)
        off &+= 128
    }
    while off &+ 64 <= byteCount {
        var p0 = last.loadUnaligned(fromByteOffset: off, as: Lane.self)
        var q0 = p0
        var z = n &- 2
        while z >= 0 {
            let d0 = sources[z].loadUnaligned(fromByteOffset: off, as: Lane.self)
            p0 ^= d0
            q0 = mul2(q0) ^ d0
            z &-= 1
        }
        put(p0, p, off, streaming: streaming)
        put(q0, q, off, streaming: streaming)
        off &+= 64
    }
    if streaming { swraid_store_fence() }
    while off < byteCount {
        var pb = last.load(fromByteOffset: off, as: UInt8.self)
        var qb = pb
        var z = n &- 2
        while z >= 0 {
            let d = sources[z].load(fromByteOffset: off, as: UInt8.self)
            pb ^= d
            qb = mul2(qb) ^ d
            z &-= 1
        }
        p.storeBytes(of: pb, toByteOffset: off, as: UInt8.self)
        q.storeBytes(of: qb, toByteOffset: off, as: UInt8.self)
        off &+= 1
    }
}
#endif
