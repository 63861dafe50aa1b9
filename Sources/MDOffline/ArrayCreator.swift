import DiskIO
import MDFormat
import RaidCore
import RaidMath

public enum CreatorError: Error, CustomStringConvertible {
    case alreadyMember(path: String, detail: String)
    case duplicateMember(String)
    case plan(CreateError)
    case io(DiskIOError)
    case probe(ProbeError)

    public var description: String {
        switch self {
        case .alreadyMember(let path, let detail):
            return "\(path) already holds an md superblock (\(detail)); use --force to overwrite it"
        case .duplicateMember(let path): return "\(path) is named twice"
        case .plan(let e): return e.description
        case .io(let e): return e.description
        case .probe(let e): return e.description
        }
    }
}

/// What `create` should do, beyond the geometry in `CreateRequest`.
public struct CreateOptions: Sendable {
    public var assumeClean = false
    public var force = false
    public init() {}
}

/// Writes a new md array onto member files or devices: superblocks, bitmap, bad-block log, and
/// (unless assume-clean) parity consistent with whatever data the members hold.
public final class ArrayCreator {
    public let paths: [String]
    public let plan: CreatePlan
    public let options: CreateOptions
    /// Members that did not exist and will be created (sparse, so they read as zeros).
    public let newMembers: [Bool]

    /// Validates everything and decides the layout; writes nothing.
    public init(paths: [String], request: CreateRequest, options: CreateOptions) throws {
        self.paths = paths
        self.options = options
        var request = request
        var sizes: [UInt64?] = []
        var isNew: [Bool] = []
        for (i, path) in paths.enumerated() {
            if paths[..<i].contains(path) { throw CreatorError.duplicateMember(path) }
            if MemberFile.exists(path) {
                let file: MemberFile
                do { file = try MemberFile(path: path, mode: .readOnly) } catch { throw CreatorError.io(error) }
                defer { file.close() }
                let size: UInt64
                do { size = try file.size() } catch { throw CreatorError.io(error) }
                if !options.force, let existing = SuperblockProbe.existingMetadata(file) {
                    throw CreatorError.alreadyMember(path: path, detail: existing)
                }
                sizes.append(size / 512)
                isNew.append(false)
            } else {
                sizes.append(nil)
                isNew.append(true)
            }
        }
        request.memberSizesSectors = sizes
        do {
            plan = try CreatePlan(request, clean: options.assumeClean)
        } catch let e as CreateError {
            throw CreatorError.plan(e)
        }
        newMembers = isNew
    }

    /// Creates the array. `progress` gets (member sectors synced, total) during the initial parity
    /// sync, as md counts a resync.
    public func run(progress: ((UInt64, UInt64) -> Void)? = nil) throws {
        var created: [String] = []
        do {
            try createArray(progress: progress, created: &created)
        } catch {
            // Leave nothing half-made behind: member files this create made go again.
            for path in created { MemberFile.remove(path) }
            throw error
        }
    }

    private func createArray(progress: ((UInt64, UInt64) -> Void)?, created: inout [String]) throws {
        var files: [MemberFile] = []
        do {
            for (i, path) in paths.enumerated() {
                if newMembers[i] {
                    files.append(try MemberFile(creating: path, sizeBytes: plan.memberSizesSectors[i] * 512, exclusive: true))
                    created.append(path)
                } else {
                    // Locked as a running array locks them: no array may run on them meanwhile.
                    files.append(try MemberFile(path: path, options: MemberOpenOptions(mode: .readWrite, exclusive: true)))
                }
            }
            defer { files.forEach { $0.close() } }
            for (i, file) in files.enumerated() {
                try MemberMetadataWriter.write(file, superblock: plan.superblocks[i], bitmapArea: plan.bitmapAreaBytes)
                try file.sync()
            }
            if !options.assumeClean {
                // Members created here are sparse: all zeros, whose parity is zeros already.
                if !newMembers.allSatisfy({ $0 }) {
                    try syncParity(files, progress: progress)
                } else {
                    progress?(plan.geometry.memberDataSectors, plan.geometry.memberDataSectors)
                }
                for file in files { try file.sync() }
                // Parity is consistent: mark the array clean, every bitmap region in sync.
                let cleanBitmap = plan.bitmapAreaBytes.map { area in
                    area[..<MDBitmapSuperblock.headerBytes] + [UInt8](repeating: 0, count: area.count - MDBitmapSuperblock.headerBytes)
                }
                for (i, file) in files.enumerated() {
                    var sb = plan.superblocks[i]
                    sb.resyncOffsetSectors = maxSector
                    try MemberMetadataWriter.write(file, superblock: sb.withValidChecksum(), bitmapArea: cleanBitmap.map(Array.init), withBadBlockLog: false)
                    try file.sync()
                }
            }
        } catch let e as DiskIOError {
            throw CreatorError.io(e)
        }
    }

    /// Makes every row's parity match its data, writing only the parity chunks that differ (so
    /// sparse members stay sparse where they are already consistent).
    private func syncParity(_ files: [MemberFile], progress: ((UInt64, UInt64) -> Void)?) throws {
        let g = plan.geometry
        let chunkBytes = g.chunkBytes
        let chunks = UnsafeMutableRawPointer.allocate(byteCount: chunkBytes * (g.raidDisks + 2), alignment: 64)
        defer { chunks.deallocate() }
        func chunk(_ i: Int) -> UnsafeMutableRawPointer { chunks + i * chunkBytes }
        let newP = chunk(g.raidDisks), newQ = chunk(g.raidDisks + 1)
        let zero = UnsafeMutableRawPointer.allocate(byteCount: chunkBytes, alignment: 64)
        zero.initializeMemory(as: UInt8.self, repeating: 0, count: chunkBytes)
        defer { zero.deallocate() }
        let dataOffsetBytes = plan.dataOffsetSectors * 512
        for row in 0..<g.rowCount {
            let stripe = g.stripeRow(row)
            let offset = dataOffsetBytes + row * UInt64(chunkBytes)
            for disk in 0..<g.raidDisks {
                try files[disk].read(at: offset, into: UnsafeMutableRawBufferPointer(start: chunk(disk), count: chunkBytes))
            }
            // Fresh parity into two spare chunks, compared with what the members hold.
            RowParity(row: stripe, level: g.level, byteCount: chunkBytes, zero: zero).computeParity { role in
                role == stripe.pDisk ? newP : role == stripe.qDisk ? newQ : chunk(role)
            }
            var writes: [(Int, UnsafeMutableRawPointer)] = []
            if let qDisk = stripe.qDisk, !buffersEqual(newQ, chunk(qDisk), byteCount: chunkBytes) { writes.append((qDisk, newQ)) }
            if !buffersEqual(newP, chunk(stripe.pDisk), byteCount: chunkBytes) { writes.append((stripe.pDisk, newP)) }
            for (disk, buffer) in writes {
                try files[disk].write(at: offset, from: UnsafeRawBufferPointer(start: buffer, count: chunkBytes))
            }
            // As /proc/mdstat counts a resync: per member, not per array.
            progress?((row + 1) * g.chunkSectors, g.memberDataSectors)
        }
    }
}

/// Writes a member's md metadata: the superblock (clearing superblocks of other v1.x versions so
/// no older array shadows it), the bitmap area, an empty bad-block log. Used by `create` and
/// by `add` (a new spare's superblock).
public enum MemberMetadataWriter {
    public static func write(
        _ device: MemberDevice, superblock sb: MDSuperblock1, bitmapArea: [UInt8]?, withBadBlockLog: Bool = true
    ) throws(DiskIOError) {
        let path = device.name
        func run(_ body: () throws(MemberIOError) -> Void) throws(DiskIOError) {
            do { try body() } catch { throw DiskIOError.io(path: path, error) }
        }
        var sizeSectors: UInt64 = 0
        try run { () throws(MemberIOError) in sizeSectors = try device.sizeBytes() / 512 }
        for version in [MDMetadataVersion.v1_0, .v1_1, .v1_2] {
            guard let at = version.superblockOffsetSectors(deviceSizeSectors: sizeSectors), at != sb.superOffsetSectors,
                at * 512 + 4096 <= sizeSectors * 512
            else { continue }
            var magic: [UInt8] = []
            try run { () throws(MemberIOError) in magic = try device.read(at: at * 512, count: 4, purpose: .superblock) }
            if magic == [0xfc, 0x4e, 0x2b, 0xa9] {
                try run { () throws(MemberIOError) in try device.write(at: at * 512, bytes: [UInt8](repeating: 0, count: 4096), purpose: .superblock) }
            }
        }
        try run { () throws(MemberIOError) in try device.write(at: sb.superOffsetSectors * 512, bytes: sb.encode(), purpose: .superblock) }
        if let area = bitmapArea {
            let start = UInt64(Int64(sb.superOffsetSectors) + Int64(sb.bitmapOffsetSectors))
            try run { () throws(MemberIOError) in try device.write(at: start * 512, bytes: area, purpose: .bitmap) }
        }
        if withBadBlockLog && sb.bblogSizeSectors > 0 {
            let start = UInt64(Int64(sb.superOffsetSectors) + Int64(sb.bblogOffsetSectors))
            try run { () throws(MemberIOError) in try device.write(at: start * 512, bytes: [UInt8](repeating: 0xFF, count: Int(sb.bblogSizeSectors) * 512), purpose: .superblock) }
        }
    }
}
