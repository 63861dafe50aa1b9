/// RAID levels this package maps (md's numbers).
public enum RaidLevel: Int32, Sendable, CaseIterable, CustomStringConvertible {
    case raid4 = 4
    case raid5 = 5
    case raid6 = 6

    /// Members that may be lost without losing data.
    public var maxDegraded: Int { self == .raid6 ? 2 : 1 }

    /// Fewest members md accepts for the level.
    public var minimumRaidDisks: Int { self == .raid6 ? 4 : 2 }

    public var description: String { "raid\(rawValue)" }

    public init?(name: String) {
        switch name.lowercased() {
        case "4", "raid4": self = .raid4
        case "5", "raid5": self = .raid5
        case "6", "raid6": self = .raid6
        default: return nil
        }
    }
}

/// md's RAID4/5/6 layout ("algorithm") numbers and the names mdadm gives them.
public struct RaidLayout: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    public static let leftAsymmetric = RaidLayout(rawValue: 0)
    public static let rightAsymmetric = RaidLayout(rawValue: 1)
    public static let leftSymmetric = RaidLayout(rawValue: 2)
    public static let rightSymmetric = RaidLayout(rawValue: 3)
    public static let parityFirst = RaidLayout(rawValue: 4)
    public static let parityLast = RaidLayout(rawValue: 5)
    public static let ddfZeroRestart = RaidLayout(rawValue: 8)
    public static let ddfNRestart = RaidLayout(rawValue: 9)
    public static let ddfNContinue = RaidLayout(rawValue: 10)
    public static let leftAsymmetric6 = RaidLayout(rawValue: 16)
    public static let rightAsymmetric6 = RaidLayout(rawValue: 17)
    public static let leftSymmetric6 = RaidLayout(rawValue: 18)
    public static let rightSymmetric6 = RaidLayout(rawValue: 19)
    public static let parityFirst6 = RaidLayout(rawValue: 20)

    static let names: [(UInt32, String)] = [
        (0, "left-asymmetric"), (1, "right-asymmetric"), (2, "left-symmetric"), (3, "right-symmetric"),
        (4, "parity-first"), (5, "parity-last"), (8, "ddf-zero-restart"), (9, "ddf-N-restart"),
        (10, "ddf-N-continue"), (16, "left-asymmetric-6"), (17, "right-asymmetric-6"), (18, "left-symmetric-6"),
        (19, "right-symmetric-6"), (20, "parity-first-6"),
    ]
    static let shortNames: [(String, UInt32)] = [("la", 0), ("ra", 1), ("ls", 2), ("rs", 3), ("default", 2)]

    /// The layouts md accepts for `level`.
    public static func valid(for level: RaidLevel) -> [RaidLayout] {
        switch level {
        case .raid4: return [.parityLast]  // the only placement; stored as 0 by mdadm
        case .raid5: return (0...5).map { RaidLayout(rawValue: $0) }
        case .raid6: return ([0, 1, 2, 3, 4, 5, 8, 9, 10, 16, 17, 18, 19, 20] as [UInt32]).map { RaidLayout(rawValue: $0) }
        }
    }

    /// mdadm's name for the layout, or nil for an unknown number.
    public var name: String? { Self.names.first { $0.0 == rawValue }?.1 }

    public var description: String { name ?? "unknown layout \(rawValue)" }

    /// Parses a layout name (long or short form, `default`) or number, as mdadm's `--layout`.
    public init?(name text: String, level: RaidLevel) {
        let candidates = Self.valid(for: level)
        let found: UInt32?
        if let number = UInt32(text) {
            found = number
        } else if let (_, number) = Self.shortNames.first(where: { $0.0 == text }) {
            found = number
        } else {
            found = Self.names.first { $0.1 == text }?.0
        }
        guard let value = found, candidates.contains(RaidLayout(rawValue: value)) else { return nil }
        self.init(rawValue: value)
    }

    /// Layouts 8..10 order the Q syndrome by physical disk (DDF) rather than md's rotation.
    public var usesDDFSyndromeOrder: Bool { (8...10).contains(rawValue) }
}

/// What one member's chunk holds in one stripe row.
public enum ChunkContent: Equatable, Sendable {
    case data(index: Int)
    case p
    case q
}

/// Placement of data and parity in one stripe row (all members' chunks at one device offset).
public struct StripeRow: Equatable, Sendable {
    public let row: UInt64
    /// `dataDisk[dd]` = role holding the dd-th data chunk of the row.
    public let dataDisk: [Int]
    public let pDisk: Int
    public let qDisk: Int?
    /// `syndromeSlot[dd]` = Q syndrome slot of the dd-th data chunk (RAID6 only).
    public let syndromeSlot: [Int]
    /// Number of syndrome slots (n-2, or n for DDF layouts whose P/Q slots are zero blocks).
    public let syndromeSlotCount: Int

    /// What the chunk on `disk` holds in this row.
    public func content(ofDisk disk: Int) -> ChunkContent {
        if disk == pDisk { return .p }
        if disk == qDisk { return .q }
        guard let dd = dataDisk.firstIndex(of: disk) else { preconditionFailure("disk \(disk) not in the row") }
        return .data(index: dd)
    }
}

public enum GeometryError: Error, Equatable, CustomStringConvertible {
    case invalidLayout(level: RaidLevel, layout: UInt32)
    case tooFewDisks(level: RaidLevel, raidDisks: Int)
    case invalidChunk(sectors: UInt64)
    case sizeNotChunkMultiple(sizeSectors: UInt64, chunkSectors: UInt64)
    /// The array's size in bytes would not fit in a signed 64-bit offset.
    case arrayTooLarge(memberDataSectors: UInt64, dataDisks: Int)

    public var description: String {
        switch self {
        case .invalidLayout(let level, let layout):
            return "layout \(layout) is not a valid \(level) layout"
        case .tooFewDisks(let level, let n):
            return "\(level) needs at least \(level.minimumRaidDisks) raid devices, not \(n)"
        case .invalidChunk(let sectors):
            return "chunk size \(sectors * 512 / 1024)K (\(sectors) sectors) must be a power of two of at least 4K"
        case .sizeNotChunkMultiple(let size, let chunk):
            return "member data size \(size) sectors is not a multiple of the chunk (\(chunk) sectors)"
        case .arrayTooLarge(let size, let dataDisks):
            return "\(dataDisks) data members of \(size) sectors each make an array too large to address (over 2^63 bytes)"
        }
    }
}

/// The exact map from array sectors to members for an md RAID4/5/6 array
/// (`raid5_compute_sector`, md-format.md §3).
public struct RaidGeometry: Equatable, Sendable {
    public let level: RaidLevel
    public let layout: RaidLayout
    public let raidDisks: Int
    public let chunkSectors: UInt64
    /// Sectors of each member used for data (sb.size), a multiple of the chunk.
    public let memberDataSectors: UInt64
    /// Every layout repeats after n·(n-1) rows (its rotations go by the row mod n, or mod n-1):
    /// the placements of one period, computed once, so that looking a row up allocates nothing
    /// (the core asks for one per stripe and per piece of every request). Nil past 1024 rows
    /// of pattern (over 32 disks), where each is computed when asked.
    private var rowPatterns: RowPatterns? = nil

    /// Immutable once built; a class so that copies of the geometry share it.
    private final class RowPatterns: Sendable {
        let rows: [StripeRow]
        init(_ rows: [StripeRow]) { self.rows = rows }
    }

    static let maxPatternRows = 1024

    public static func == (a: RaidGeometry, b: RaidGeometry) -> Bool {
        a.level == b.level && a.layout == b.layout && a.raidDisks == b.raidDisks && a.chunkSectors == b.chunkSectors
            && a.memberDataSectors == b.memberDataSectors
    }

    public init(level: RaidLevel, layout: RaidLayout, raidDisks: Int, chunkSectors: UInt64, memberDataSectors: UInt64) throws {
        guard RaidLayout.valid(for: level).contains(layout) || level == .raid4 else {
            throw GeometryError.invalidLayout(level: level, layout: layout.rawValue)
        }
        guard raidDisks >= level.minimumRaidDisks, raidDisks <= 1920 else {
            throw GeometryError.tooFewDisks(level: level, raidDisks: raidDisks)
        }
        guard chunkSectors >= 8, chunkSectors & (chunkSectors - 1) == 0, chunkSectors <= 1 << 21 else {
            throw GeometryError.invalidChunk(sectors: chunkSectors)
        }
        guard memberDataSectors % chunkSectors == 0 else {
            throw GeometryError.sizeNotChunkMultiple(sizeSectors: memberDataSectors, chunkSectors: chunkSectors)
        }
        // Array bytes must fit an off_t (and NBD's export size, and every byte offset computed
        // from them): a crafted superblock on a huge sparse member could claim more.
        let dataDisks = raidDisks - level.maxDegraded
        let (arraySectors, overflow) = memberDataSectors.multipliedReportingOverflow(by: UInt64(dataDisks))
        guard !overflow, arraySectors <= UInt64(Int64.max) / 512 else {
            throw GeometryError.arrayTooLarge(memberDataSectors: memberDataSectors, dataDisks: dataDisks)
        }
        self.level = level
        // Level 4 ignores the stored layout: parity is always on the last disk.
        self.layout = level == .raid4 ? .parityLast : layout
        self.raidDisks = raidDisks
        self.chunkSectors = chunkSectors
        self.memberDataSectors = memberDataSectors
        let period = raidDisks * (raidDisks - 1)
        if period <= RaidGeometry.maxPatternRows {
            rowPatterns = RowPatterns((0..<UInt64(period)).map { computeStripeRow($0) })
        }
    }

    public var maxDegraded: Int { level.maxDegraded }
    public var dataDisks: Int { raidDisks - maxDegraded }
    public var rowCount: UInt64 { memberDataSectors / chunkSectors }
    public var arraySectors: UInt64 { memberDataSectors * UInt64(dataDisks) }
    public var chunkBytes: Int { Int(chunkSectors) * 512 }
    /// Array sectors of data in one stripe row.
    public var rowDataSectors: UInt64 { chunkSectors * UInt64(dataDisks) }

    /// Placement of the chunks in stripe row `row`.
    public func stripeRow(_ row: UInt64) -> StripeRow {
        guard let rowPatterns else { return computeStripeRow(row) }
        let pattern = rowPatterns.rows[Int(row % UInt64(rowPatterns.rows.count))]
        return StripeRow(
            row: row, dataDisk: pattern.dataDisk, pDisk: pattern.pDisk, qDisk: pattern.qDisk, syndromeSlot: pattern.syndromeSlot,
            syndromeSlotCount: pattern.syndromeSlotCount)
    }

    /// The role holding the `dataIndex`-th data chunk of stripe row `row`.
    func dataDisk(row: UInt64, dataIndex: Int) -> Int {
        guard let rowPatterns else { return computeStripeRow(row).dataDisk[dataIndex] }
        return rowPatterns.rows[Int(row % UInt64(rowPatterns.rows.count))].dataDisk[dataIndex]
    }

    /// `stripeRow` from md's rules (md-format.md §3).
    func computeStripeRow(_ row: UInt64) -> StripeRow {
        let n = raidDisks
        let s = Int(row % UInt64(n))
        var pd: Int
        var qd: Int? = nil
        let data: [Int]
        switch level {
        case .raid4, .raid5:
            let ndata = n - 1
            switch layout.rawValue {
            case 0: pd = ndata - s; data = (0..<ndata).map { $0 < pd ? $0 : $0 + 1 }
            case 1: pd = s; data = (0..<ndata).map { $0 < pd ? $0 : $0 + 1 }
            case 2: pd = ndata - s; data = (0..<ndata).map { (pd + 1 + $0) % n }
            case 3: pd = s; data = (0..<ndata).map { (pd + 1 + $0) % n }
            case 4: pd = 0; data = (0..<ndata).map { $0 + 1 }
            default: pd = ndata; data = Array(0..<ndata)
            }
        case .raid6:
            let ndata = n - 2
            // "Asymmetric" rule shared by layouts 0, 1, 8, 9: Q follows P (wrapping to disk 0),
            // data skips both.
            func asymmetric(_ p: Int) -> (Int, [Int]) {
                if p == n - 1 { return (0, (0..<ndata).map { $0 + 1 }) }
                return (p + 1, (0..<ndata).map { $0 < p ? $0 : $0 + 2 })
            }
            let s1 = Int(row % UInt64(n - 1))
            switch layout.rawValue {
            case 0: pd = n - 1 - s; (qd, data) = asymmetric(pd)
            case 1, 8: pd = s; (qd, data) = asymmetric(pd)
            case 9: pd = n - 1 - Int((row + 1) % UInt64(n)); (qd, data) = asymmetric(pd)
            case 2: pd = n - 1 - s; qd = (pd + 1) % n; data = (0..<ndata).map { (pd + 2 + $0) % n }
            case 3: pd = s; qd = (pd + 1) % n; data = (0..<ndata).map { (pd + 2 + $0) % n }
            case 4: pd = 0; qd = 1; data = (0..<ndata).map { $0 + 2 }
            case 5: pd = n - 2; qd = n - 1; data = Array(0..<ndata)
            case 10: pd = n - 1 - s; qd = (pd + n - 1) % n; data = (0..<ndata).map { (pd + 1 + $0) % n }
            case 16: pd = (n - 2) - s1; qd = n - 1; data = (0..<ndata).map { $0 < pd ? $0 : $0 + 1 }
            case 17: pd = s1; qd = n - 1; data = (0..<ndata).map { $0 < pd ? $0 : $0 + 1 }
            case 18: pd = (n - 2) - s1; qd = n - 1; data = (0..<ndata).map { (pd + 1 + $0) % (n - 1) }
            case 19: pd = s1; qd = n - 1; data = (0..<ndata).map { (pd + 1 + $0) % (n - 1) }
            default: pd = 0; qd = n - 1; data = (0..<ndata).map { $0 + 1 }  // 20 parity-first-6
            }
        }
        var slots = [Int](repeating: 0, count: data.count)
        var slotCount = 0
        if level == .raid6, let q = qd {
            if layout.usesDDFSyndromeOrder {
                // DDF: slot = physical disk; P and Q slots carry zero blocks.
                for (dd, disk) in data.enumerated() { slots[dd] = disk }
                slotCount = n
            } else {
                // md: walk the disks from the one after Q, wrapping, numbering data disks.
                var slot = 0
                for step in 0..<n {
                    let disk = (q + 1 + step) % n
                    if disk == pd || disk == q { continue }
                    slots[data.firstIndex(of: disk)!] = slot
                    slot += 1
                }
                slotCount = n - 2
            }
        }
        return StripeRow(row: row, dataDisk: data, pDisk: pd, qDisk: qd, syndromeSlot: slots, syndromeSlotCount: slotCount)
    }

    /// Where array sector `arraySector` lives.
    public func locate(arraySector: UInt64) -> (row: UInt64, dataIndex: Int, disk: Int, memberSectorRelative: UInt64) {
        precondition(arraySector < arraySectors, "array sector beyond the end of the array")
        let chunk = arraySector / chunkSectors
        let offset = arraySector % chunkSectors
        let row = chunk / UInt64(dataDisks)
        let dd = Int(chunk % UInt64(dataDisks))
        return (row, dd, dataDisk(row: row, dataIndex: dd), row * chunkSectors + offset)
    }

    /// Inverse map: the array sector stored on `disk` at member-relative sector `memberSector`,
    /// or the parity block it holds.
    public func arraySector(disk: Int, memberSectorRelative: UInt64) -> (ChunkContent, UInt64?) {
        let row = memberSectorRelative / chunkSectors
        let offset = memberSectorRelative % chunkSectors
        let content = stripeRow(row).content(ofDisk: disk)
        guard case .data(let dd) = content else { return (content, nil) }
        return (content, (row * UInt64(dataDisks) + UInt64(dd)) * chunkSectors + offset)
    }
}
