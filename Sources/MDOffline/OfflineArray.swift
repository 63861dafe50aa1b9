import DiskIO
import MDFormat
import RaidCore
import RaidMath

public enum OfflineError: Error, CustomStringConvertible {
    case probe(ProbeError)
    case assembly(AssemblyError)
    case io(DiskIOError)
    case duplicateMember(String)
    case parity(String)

    public var description: String {
        switch self {
        case .probe(let e): return e.description
        case .assembly(let e): return e.description
        case .io(let e): return e.description
        case .duplicateMember(let path): return "\(path) is named twice"
        case .parity(let what): return what
        }
    }
}

/// The keyword that stands for an absent member on the command line, as in mdadm.
public let missingMemberKeyword = "missing"

/// An md array assembled read-only from member images, without the kernel: roles come from the
/// superblocks, absent or stale members are rebuilt from parity.
public final class OfflineArray {
    public let plan: AssemblyPlan
    public let members: [MemberMetadata]
    private let files: [MemberFile]
    public var geometry: RaidGeometry { plan.geometry }

    /// Assembles from `paths` (any order; `missing` entries are placeholders and carry no role).
    public init(paths: [String], force: Bool = false) throws {
        var files: [MemberFile] = []
        var probed: [MemberMetadata] = []
        var seen: [String] = []
        for path in paths where path != missingMemberKeyword {
            if seen.contains(path) { throw OfflineError.duplicateMember(path) }
            seen.append(path)
            do {
                let file = try MemberFile(path: path, mode: .readOnly)
                files.append(file)
                probed.append(try SuperblockProbe.probe(file))
            } catch let e as DiskIOError {
                throw OfflineError.io(e)
            } catch let e as ProbeError {
                throw OfflineError.probe(e)
            }
        }
        let candidates = probed.map {
            AssemblyCandidate(name: $0.name, superblock: $0.superblock, deviceSizeSectors: $0.deviceSizeSectors)
        }
        do {
            plan = try AssemblyPlan(candidates: candidates, force: force)
        } catch let e as AssemblyError {
            throw OfflineError.assembly(e)
        }
        self.files = files
        self.members = probed
    }

    public var arraySizeBytes: UInt64 { plan.arraySectors * 512 }

    /// Human-readable notes on members left out and roles rebuilt.
    public var notes: [String] {
        var out = plan.excluded.map { "\(members[$0.index].name): left out: \($0.reason)" }
        for role in plan.missingRoles { out.append("role \(role): absent, rebuilt from parity") }
        return out
    }

    /// Streams the whole array in order, `rowsPerBatch` stripe rows at a time, to `sink`.
    /// `progress` receives (array sectors done, total) after each batch.
    public func stream(
        rowsPerBatch: Int = 0, sink: (UnsafeRawBufferPointer) throws -> Void,
        progress: ((UInt64, UInt64) -> Void)? = nil
    ) throws {
        let g = geometry
        let reader = RowReader(array: self)
        let rowBytes = g.chunkBytes * g.dataDisks
        let batchRows = rowsPerBatch > 0 ? rowsPerBatch : max(1, (8 << 20) / rowBytes)
        let out = UnsafeMutableRawBufferPointer.allocate(byteCount: rowBytes * batchRows, alignment: 64)
        defer { out.deallocate() }
        var row: UInt64 = 0
        while row < g.rowCount {
            let count = Int(min(UInt64(batchRows), g.rowCount - row))
            for i in 0..<count {
                try reader.readRowData(row + UInt64(i), into: out.baseAddress! + i * rowBytes)
            }
            try sink(UnsafeRawBufferPointer(rebasing: out[0..<(count * rowBytes)]))
            row += UInt64(count)
            progress?(row * g.rowDataSectors, g.arraySectors)
        }
    }

    /// Reads `byteCount` bytes at array byte `offset` (both sector-aligned).
    public func read(offsetBytes: UInt64, byteCount: Int) throws -> [UInt8] {
        precondition(offsetBytes % 512 == 0 && byteCount % 512 == 0)
        precondition(offsetBytes + UInt64(byteCount) <= arraySizeBytes, "read beyond the end of the array")
        let g = geometry
        let rowBytes = UInt64(g.chunkBytes * g.dataDisks)
        let reader = RowReader(array: self)
        var result = [UInt8](repeating: 0, count: byteCount)
        let rowBuffer = UnsafeMutableRawPointer.allocate(byteCount: Int(rowBytes), alignment: 64)
        defer { rowBuffer.deallocate() }
        var pos = offsetBytes
        let end = offsetBytes + UInt64(byteCount)
        while pos < end {
            let row = pos / rowBytes
            try reader.readRowData(row, into: rowBuffer)
            let inRow = Int(pos % rowBytes)
            let n = Int(min(rowBytes - UInt64(inRow), end - pos))
            result.withUnsafeMutableBytes { dst in
                (dst.baseAddress! + Int(pos - offsetBytes)).copyMemory(from: rowBuffer + inRow, byteCount: n)
            }
            pos += UInt64(n)
        }
        return result
    }

    fileprivate func file(forRole role: Int) -> (MemberFile, MemberMetadata)? {
        guard let index = plan.memberForRole[role] else { return nil }
        return (files[index], members[index])
    }
}

/// Reads stripe rows of an `OfflineArray`, rebuilding the chunks of absent members.
final class RowReader {
    let array: OfflineArray
    let geometry: RaidGeometry
    let chunkBytes: Int
    /// One chunk buffer per role, plus a zero chunk for DDF placeholder slots.
    let chunks: UnsafeMutableRawPointer
    let zero: UnsafeMutableRawPointer
    let scratch: ParityScratch

    init(array: OfflineArray) {
        self.array = array
        geometry = array.geometry
        chunkBytes = geometry.chunkBytes
        chunks = .allocate(byteCount: chunkBytes * geometry.raidDisks, alignment: 64)
        zero = .allocate(byteCount: chunkBytes, alignment: 64)
        zero.initializeMemory(as: UInt8.self, repeating: 0, count: chunkBytes)
        scratch = ParityScratch(byteCount: chunkBytes)
    }

    deinit {
        chunks.deallocate()
        zero.deallocate()
    }

    func chunk(_ disk: Int) -> UnsafeMutableRawPointer { chunks + disk * chunkBytes }

    func readChunk(disk: Int, row: UInt64) throws {
        guard let (file, member) = array.file(forRole: disk) else { preconditionFailure("no member for role \(disk)") }
        let offset = (member.superblock.dataOffsetSectors + row * geometry.chunkSectors) * 512
        do {
            try file.read(at: offset, into: UnsafeMutableRawBufferPointer(start: chunk(disk), count: chunkBytes))
        } catch {
            throw OfflineError.io(error)
        }
    }

    /// Writes the row's data chunks, in array order, to `out` (dataDisks × chunk bytes).
    func readRowData(_ row: UInt64, into out: UnsafeMutableRawPointer) throws {
        let stripe = geometry.stripeRow(row)
        let missing = array.plan.missingRoles
        let lostData = stripe.dataDisk.enumerated().filter { missing.contains($0.element) }.map(\.offset)
        if lostData.isEmpty {
            for (dd, disk) in stripe.dataDisk.enumerated() {
                try readChunk(disk: disk, row: row)
                (out + dd * chunkBytes).copyMemory(from: chunk(disk), byteCount: chunkBytes)
            }
            return
        }
        for disk in 0..<geometry.raidDisks where !missing.contains(disk) {
            try readChunk(disk: disk, row: row)
        }
        do {
            try RowParity(row: stripe, level: geometry.level, byteCount: chunkBytes, zero: zero).rebuild(
                missing: missing.filter { $0 < geometry.raidDisks }, { chunk($0) }, scratch: scratch)
        } catch {
            throw OfflineError.parity("row \(row): \(error)")
        }
        for (dd, disk) in stripe.dataDisk.enumerated() {
            (out + dd * chunkBytes).copyMemory(from: chunk(disk), byteCount: chunkBytes)
        }
    }
}

/// Result of an offline parity check, counted as md counts `mismatch_cnt`.
public struct CheckReport: Sendable {
    /// Sectors in mismatching 4 KiB blocks (8 per block), like md's `mismatch_cnt`.
    public var mismatchSectors: UInt64 = 0
    /// For RAID6, mismatches the syndromes pin on one member: (array role, member sector).
    public var located: [(role: Int, memberSectorRelative: UInt64)] = []
}

extension OfflineArray {
    /// md's `check`: recompute parity for every 4 KiB block of every row and compare.
    public func check(progress: ((UInt64, UInt64) -> Void)? = nil) throws -> CheckReport {
        let g = geometry
        guard plan.missingRoles.isEmpty else {
            throw OfflineError.parity("check needs every member; roles \(plan.missingRoles) are absent")
        }
        let reader = RowReader(array: self)
        let block = 4096
        var report = CheckReport()
        for row in 0..<g.rowCount {
            let stripe = g.stripeRow(row)
            for disk in 0..<g.raidDisks { try reader.readChunk(disk: disk, row: row) }
            let parity = RowParity(row: stripe, level: g.level, byteCount: reader.chunkBytes, zero: reader.zero)
            var offset = 0
            while offset < reader.chunkBytes {
                if case .mismatch(let blamed) = parity.check({ UnsafeRawPointer(reader.chunk($0)) }, offset: offset, length: block, scratch: reader.scratch) {
                    report.mismatchSectors += 8
                    if let role = blamed { report.located.append((role, row * g.chunkSectors + UInt64(offset / 512))) }
                }
                offset += block
            }
            progress?((row + 1) * g.chunkSectors, g.memberDataSectors)
        }
        return report
    }
}
