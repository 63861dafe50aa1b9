/// One block of a RAID6 stripe row, named by its role in the syndrome: a data block by its
/// syndrome slot (md-format.md §3.4, not its disk number), or the P or Q block.
public enum RAID6Block: Hashable, Sendable, Comparable, CustomStringConvertible {
    case data(slot: Int)
    case p
    case q

    public var description: String {
        switch self {
        case .data(let slot): return "data slot \(slot)"
        case .p: return "P"
        case .q: return "Q"
        }
    }
}

public enum ParityError: Error, Equatable, CustomStringConvertible {
    case tooManyLost(count: Int, tolerated: Int)
    case invalidSlot(Int)

    public var description: String {
        switch self {
        case .tooManyLost(let count, let tolerated):
            return "\(count) blocks lost in one stripe; only \(tolerated) can be rebuilt"
        case .invalidSlot(let slot): return "syndrome slot \(slot) is out of range"
        }
    }
}

/// Scratch space for operations that need temporary P'/Q' buffers. Reuse one per thread to
/// avoid allocating on every stripe.
public final class ParityScratch {
    public private(set) var byteCount: Int
    public private(set) var first: UnsafeMutableRawPointer
    public private(set) var second: UnsafeMutableRawPointer

    public init(byteCount: Int = 0) {
        self.byteCount = max(byteCount, 64)
        first = .allocate(byteCount: self.byteCount, alignment: 64)
        second = .allocate(byteCount: self.byteCount, alignment: 64)
    }

    deinit {
        first.deallocate()
        second.deallocate()
    }

    /// Grows the buffers if needed; contents are not preserved.
    public func reserve(_ bytes: Int) {
        guard bytes > byteCount else { return }
        first.deallocate()
        second.deallocate()
        byteCount = bytes
        first = .allocate(byteCount: bytes, alignment: 64)
        second = .allocate(byteCount: bytes, alignment: 64)
    }
}

/// Parity generation and reconstruction over whole blocks (SIMD kernels underneath).
public enum Parity {
    /// RAID5 parity (and RAID5 reconstruction of one lost block): `dst = XOR of blocks`.
    /// `nonTemporal`: the result goes to a member write, not back to the CPU soon.
    public static func xor(_ blocks: [UnsafeRawPointer], into dst: UnsafeMutableRawPointer, byteCount: Int, nonTemporal: Bool = false) {
        blocks.withUnsafeBufferPointer { xorKernel($0, into: dst, byteCount: byteCount, nonTemporal: nonTemporal) }
    }

    /// RAID6 P and Q over data blocks given in syndrome-slot order (slot 0 first).
    public static func pq(
        slots: [UnsafeRawPointer], p: UnsafeMutableRawPointer, q: UnsafeMutableRawPointer, byteCount: Int,
        nonTemporal: Bool = false
    ) {
        slots.withUnsafeBufferPointer { pqKernel($0, p: p, q: q, byteCount: byteCount, nonTemporal: nonTemporal) }
    }

    /// Rebuilds up to two lost blocks of a RAID6 row in place. `slots` are the data blocks in
    /// syndrome-slot order; the buffers named in `lost` hold garbage on entry and the rebuilt
    /// bytes on return. Unlost buffers are not modified.
    public static func reconstructRAID6(
        slots: [UnsafeMutableRawPointer], p: UnsafeMutableRawPointer, q: UnsafeMutableRawPointer,
        lost: [RAID6Block], byteCount: Int, scratch: ParityScratch, tier: ParityKernelTier = .best
    ) throws {
        // Sorted and without repeats (at most three values: no Set to allocate per row).
        var lostSet: [RAID6Block] = []
        for block in lost.sorted() where lostSet.last != block { lostSet.append(block) }
        guard lostSet.count <= 2 else { throw ParityError.tooManyLost(count: lostSet.count, tolerated: 2) }
        for case .data(let slot) in lostSet where !(0..<slots.count).contains(slot) {
            throw ParityError.invalidSlot(slot)
        }
        scratch.reserve(byteCount)
        // Built only for the cases that use it (not the two-data recovery), and once.
        lazy var readOnlySlots = slots.map { UnsafeRawPointer($0) }

        switch (lostSet.first, lostSet.dropFirst().first) {
        case (nil, _):
            return
        case (.p?, nil):
            xor(readOnlySlots, into: p, byteCount: byteCount)
        case (.q?, nil):
            pq(slots: readOnlySlots, p: scratch.first, q: q, byteCount: byteCount)
        case (.p?, .q?):
            pq(slots: readOnlySlots, p: p, q: q, byteCount: byteCount)
        case (.data(let a)?, nil), (.data(let a)?, .q?):
            // Plain RAID5 rebuild from P, then Q again if it was lost too.
            var sources = readOnlySlots
            sources[a] = UnsafeRawPointer(p)
            xor(sources, into: slots[a], byteCount: byteCount)
            if lostSet.contains(.q) {
                pq(slots: readOnlySlots, p: scratch.first, q: q, byteCount: byteCount)
            }
        case (.data(let a)?, .p?):
            // Q' with D_a = 0; D_a = g^-a * (Q ^ Q'); then P from all the data.
            slots[a].initializeMemory(as: UInt8.self, repeating: 0, count: byteCount)
            pq(slots: readOnlySlots, p: scratch.first, q: scratch.second, byteCount: byteCount)
            xor([UnsafeRawPointer(q), UnsafeRawPointer(scratch.second)], into: scratch.second, byteCount: byteCount)
            gfMulAddKernel(GF256.inv(GF256.pow2(a)), scratch.second, 0, nil, into: slots[a], byteCount: byteCount)
            xor(readOnlySlots, into: p, byteCount: byteCount)
        case (.data(let a)?, .data(let b)?):
            // md's raid6_2data_recov: with Pxy = P ^ P' and Qxy = Q ^ Q' (P', Q' over the
            // survivors), D_b = pb·Pxy ^ qb·Qxy and D_a = D_b ^ Pxy, where
            // pb = inv(g^(b-a) ^ 1) and qb = inv(g^a ^ g^b). Both are linear in the survivors:
            // D_b = pb·P ^ qb·Q ^ sum over surviving i of (pb ^ qb·g^i)·D_i, and D_a the same
            // with pb ^ 1 for pb. One pass over the survivors computes both.
            let pb = GF256.inv(GF256.pow2(b - a) ^ 1)
            let qb = GF256.inv(GF256.pow2(a) ^ GF256.pow2(b))
            // Sources and both coefficient rows on the stack: a recovery of one 4 KiB stripe (a
            // degraded RAID6 read) is a few hundred nanoseconds of arithmetic, and the arrays
            // built here per call cost about a microsecond.
            let n = slots.count
            withUnsafeTemporaryAllocation(of: UnsafeRawPointer.self, capacity: n) { sources in
                withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 2 * n) { rows in
                    var used = 0
                    for i in 0..<n where i != a && i != b {
                        sources[used] = UnsafeRawPointer(slots[i])
                        let q = GF256.mul(qb, GF256.pow2(i))
                        rows[used] = pb ^ 1 ^ q  // row A
                        rows[n + used] = pb ^ q  // row B
                        used += 1
                    }
                    sources[used] = UnsafeRawPointer(p)
                    rows[used] = pb ^ 1
                    rows[n + used] = pb
                    sources[used + 1] = UnsafeRawPointer(q)
                    rows[used + 1] = qb
                    rows[n + used + 1] = qb
                    precondition(used + 2 == n, "two lost data slots among \(n)")
                    gfCombineTwoRows(
                        UnsafeBufferPointer(sources), rows: UnsafeBufferPointer(rows), outputA: slots[a], outputB: slots[b], byteCount: byteCount, tier: tier)
                }
            }
        default:
            preconditionFailure("unreachable: lost blocks are sorted data < P < Q")
        }
    }
}

/// What a parity check of one RAID6 row found.
public enum RAID6CheckResult: Equatable, Sendable {
    case consistent
    /// Exactly one block disagrees with the others, and the syndromes say which.
    case corrupt(RAID6Block)
    /// P and Q both disagree in a way no single corrupt block explains.
    case unlocatable
}

public enum ParityCheck {
    /// RAID5: true when P equals the XOR of the data blocks.
    public static func raid5Consistent(
        data: [UnsafeRawPointer], p: UnsafeRawPointer, byteCount: Int, scratch: ParityScratch
    ) -> Bool {
        scratch.reserve(byteCount)
        Parity.xor(data, into: scratch.first, byteCount: byteCount)
        return buffersEqual(scratch.first, p, byteCount: byteCount)
    }

    /// RAID6 syndrome check of one row that also locates a single corrupt member: with one data
    /// block in error by e, P differs by e and Q by g^slot·e, so log(ΔQ) - log(ΔP) names the slot.
    /// `validSlots` excludes placeholder slots (DDF layouts feed zero blocks at P/Q positions).
    public static func raid6(
        slots: [UnsafeRawPointer], p: UnsafeRawPointer, q: UnsafeRawPointer, byteCount: Int,
        scratch: ParityScratch, validSlots: Set<Int>? = nil
    ) -> RAID6CheckResult {
        scratch.reserve(byteCount)
        Parity.pq(slots: slots, p: scratch.first, q: scratch.second, byteCount: byteCount)
        let pOK = buffersEqual(scratch.first, p, byteCount: byteCount)
        let qOK = buffersEqual(scratch.second, q, byteCount: byteCount)
        switch (pOK, qOK) {
        case (true, true): return .consistent
        case (true, false): return .corrupt(.q)
        case (false, true): return .corrupt(.p)
        case (false, false): break
        }
        // Error path only: per-byte logs to find the slot.
        var slot: Int? = nil
        for i in 0..<byteCount {
            let dp = scratch.first.load(fromByteOffset: i, as: UInt8.self) ^ p.load(fromByteOffset: i, as: UInt8.self)
            let dq = scratch.second.load(fromByteOffset: i, as: UInt8.self) ^ q.load(fromByteOffset: i, as: UInt8.self)
            if dp == 0 && dq == 0 { continue }
            if dp == 0 || dq == 0 { return .unlocatable }
            let z = (Int(GF256.log[Int(dq)]) - Int(GF256.log[Int(dp)]) + 255) % 255
            if let s = slot, s != z { return .unlocatable }
            slot = z
        }
        guard let z = slot, z < slots.count, validSlots?.contains(z) ?? true else { return .unlocatable }
        return .corrupt(.data(slot: z))
    }
}
