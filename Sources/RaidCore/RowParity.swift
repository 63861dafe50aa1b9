import MDFormat
import RaidMath

/// The parity arithmetic of one stripe row, over blocks the caller holds: the one place that maps
/// a row's roles to XOR sources, RAID6 syndrome slots (md's rotation or DDF's, with zero blocks
/// at DDF's P/Q slots) and lost-block names. The live core and the offline tools both use it.
public struct RowParity {
    public let row: StripeRow
    public let level: RaidLevel
    public let byteCount: Int
    /// A block of `byteCount` zeros (DDF layouts feed it at the P and Q syndrome slots).
    public let zero: UnsafeRawPointer

    public init(row: StripeRow, level: RaidLevel, byteCount: Int, zero: UnsafeRawPointer) {
        self.row = row
        self.level = level
        self.byteCount = byteCount
        self.zero = zero
    }

    /// The data blocks in syndrome-slot order (slot 0 first), zero blocks where no data sits.
    public func syndromeSlots<Pointer>(_ block: (Int) -> Pointer, zero: Pointer) -> [Pointer] {
        var slots = [Pointer](repeating: zero, count: row.syndromeSlotCount)
        for (dd, disk) in row.dataDisk.enumerated() { slots[row.syndromeSlot[dd]] = block(disk) }
        return slots
    }

    /// P (and Q) from the row's data blocks. `block(role)` gives each role's block.
    /// The pointers go in a temporary allocation (on the stack for any real row), not an array:
    /// two arrays made and freed per stripe were most of what a RAID6 4 KiB write allocated.
    public func computeParity(_ block: (Int) -> UnsafeMutableRawPointer, nonTemporal: Bool = false) {
        if let qDisk = row.qDisk {
            withUnsafeTemporaryAllocation(of: UnsafeRawPointer.self, capacity: row.syndromeSlotCount) { slots in
                slots.initialize(repeating: zero)
                for (dd, disk) in row.dataDisk.enumerated() { slots[row.syndromeSlot[dd]] = UnsafeRawPointer(block(disk)) }
                pqKernel(UnsafeBufferPointer(slots), p: block(row.pDisk), q: block(qDisk), byteCount: byteCount, nonTemporal: nonTemporal)
            }
        } else {
            withUnsafeTemporaryAllocation(of: UnsafeRawPointer.self, capacity: row.dataDisk.count) { sources in
                for (dd, disk) in row.dataDisk.enumerated() { sources[dd] = UnsafeRawPointer(block(disk)) }
                xorKernel(UnsafeBufferPointer(sources), into: block(row.pDisk), byteCount: byteCount, nonTemporal: nonTemporal)
            }
        }
    }

    /// Read-modify-write: the data block at data index `dd` changed by `delta` (old XOR new):
    /// P ^= delta and, for RAID6, Q ^= g^slot · delta.
    public func applyDataDelta(dataIndex dd: Int, delta: UnsafeRawPointer, _ block: (Int) -> UnsafeMutableRawPointer) {
        Parity.xor([UnsafeRawPointer(block(row.pDisk)), delta], into: block(row.pDisk), byteCount: byteCount)
        if let qDisk = row.qDisk {
            gfMulAddKernel(1, block(qDisk), GF256.pow2(row.syndromeSlot[dd]), delta, into: block(qDisk), byteCount: byteCount)
        }
    }

    /// Rebuilds the blocks of `missing` roles (at most the level's redundancy) from the others,
    /// which must all hold current content.
    public func rebuild(missing: [Int], _ block: (Int) -> UnsafeMutableRawPointer, scratch: ParityScratch) throws {
        try rebuild(missing: missing, block, scratch: scratch, slotShift: 0)
    }

    /// `slotShift` misnames lost data slots: only the deliberately broken core uses it.
    package func rebuild(missing: [Int], _ block: (Int) -> UnsafeMutableRawPointer, scratch: ParityScratch, slotShift: Int) throws {
        guard !missing.isEmpty else { return }
        guard missing.count <= level.maxDegraded else {
            throw ParityError.tooManyLost(count: missing.count, tolerated: level.maxDegraded)
        }
        switch level {
        case .raid4, .raid5:
            let lost = missing[0]
            let sources = (0..<(row.dataDisk.count + 1)).filter { $0 != lost }.map { UnsafeRawPointer(block($0)) }
            Parity.xor(sources, into: block(lost), byteCount: byteCount)
        case .raid6:
            let slots = syndromeSlots(block, zero: UnsafeMutableRawPointer(mutating: zero))
            let lost = missing.map { role -> RAID6Block in
                switch row.content(ofDisk: role) {
                case .p: return .p
                case .q: return .q
                case .data(let dd):
                    let slot = row.syndromeSlot[dd]
                    return .data(slot: slotShift == 0 ? slot : (slot + slotShift) % max(1, row.syndromeSlotCount))
                }
            }
            try Parity.reconstructRAID6(
                slots: slots, p: block(row.pDisk), q: block(row.qDisk!), lost: lost, byteCount: byteCount, scratch: scratch)
        }
    }

    /// What a check of `length` bytes at `offset` inside each block found.
    public enum CheckResult: Equatable, Sendable {
        case consistent
        /// Parity disagrees with the data; for RAID6, the role the syndromes blame when exactly
        /// one block explains it.
        case mismatch(blamedRole: Int?)
    }

    /// md's per-block check: recompute parity over `length` bytes at `offset` of every block and
    /// compare (a RAID6 mismatch is located when one block explains it).
    public func check(_ block: (Int) -> UnsafeRawPointer, offset: Int, length: Int, scratch: ParityScratch) -> CheckResult {
        if let qDisk = row.qDisk {
            let slots = syndromeSlots({ block($0) + offset }, zero: zero)
            let result = ParityCheck.raid6(
                slots: slots, p: block(row.pDisk) + offset, q: block(qDisk) + offset, byteCount: length, scratch: scratch,
                validSlots: row.syndromeSlotCount == row.dataDisk.count ? nil : Set(row.syndromeSlot))
            switch result {
            case .consistent: return .consistent
            case .corrupt(.p): return .mismatch(blamedRole: row.pDisk)
            case .corrupt(.q): return .mismatch(blamedRole: qDisk)
            case .corrupt(.data(let slot)):
                return .mismatch(blamedRole: row.syndromeSlot.firstIndex(of: slot).map { row.dataDisk[$0] })
            case .unlocatable: return .mismatch(blamedRole: nil)
            }
        }
        let data = row.dataDisk.map { block($0) + offset }
        return ParityCheck.raid5Consistent(data: data, p: block(row.pDisk) + offset, byteCount: length, scratch: scratch)
            ? .consistent : .mismatch(blamedRole: nil)
    }
}
