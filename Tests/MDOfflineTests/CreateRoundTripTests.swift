import DiskIO
import Foundation
import MDFormat
import TestSupport
import Testing

@testable import MDOffline

func request(level: RaidLevel, layout: RaidLayout, n: Int, chunkKiB: UInt64 = 8, sizeKiB: UInt64 = 64, bitmap: BitmapChoice = .none) -> CreateRequest {
    var r = CreateRequest(
        level: level, raidDisks: n, memberSizesSectors: [], arrayUUID: (0..<16).map { UInt8($0 * 7 + n) },
        deviceUUIDs: (0..<n).map { i in (0..<16).map { UInt8($0 + i) } }, timeSeconds: 1_764_000_000)
    r.chunkKiB = chunkKiB
    r.layout = layout
    r.sizeSectors = sizeKiB * 2
    r.bitmap = bitmap
    r.bitmapChunkBytes = bitmap == .internal_ ? 4096 : nil
    r.homehost = "test"
    return r
}

/// Fills existing member files with pseudo-random bytes (their "data" before create).
func fillRandom(_ paths: [String], bytes: Int, seed: UInt64) throws {
    for (i, path) in paths.enumerated() {
        FileManager.default.createFile(atPath: path, contents: Data(pseudoRandomData(bytes, seed: seed &+ UInt64(i) &* 0x9E37_79B9)))
    }
}

/// The array's data read straight from the member files with the geometry (no parity involved).
func dataChunksDirectly(_ paths: [String], plan: CreatePlan) throws -> [UInt8] {
    let g = plan.geometry
    let files = try paths.map { try MemberFile(path: $0, mode: .readOnly) }
    var out: [UInt8] = []
    for row in 0..<g.rowCount {
        let stripe = g.stripeRow(row)
        for disk in stripe.dataDisk {
            out += try files[disk].read(at: (plan.dataOffsetSectors + row * g.chunkSectors) * 512, count: g.chunkBytes)
        }
    }
    return out
}

func streamAll(_ array: OfflineArray) throws -> [UInt8] {
    var out: [UInt8] = []
    try array.stream(rowsPerBatch: 3, sink: { out += $0 })
    return out
}

@Suite struct CreateRoundTripTests {
    static let layouts: [(RaidLevel, RaidLayout)] =
        RaidLayout.valid(for: .raid5).map { (.raid5, $0) } + RaidLayout.valid(for: .raid6).map { (.raid6, $0) }
            + [(.raid4, .parityLast)]

    /// create over members full of data leaves parity consistent (check finds 0), keeps the data
    /// chunks, and the array reads back identically with any tolerated set of members gone.
    @Test(arguments: layouts)
    func createCheckAndDegradedReads(level: RaidLevel, layout: RaidLayout) throws {
        let dir = TemporaryDirectory()
        let n = level == .raid6 ? 6 : 5
        let paths = (0..<n).map { dir.file("m\($0).img") }
        let memberBytes = 2048 * 512 + 64 * 1024 + 512 * 3  // data offset, data, a ragged tail
        try fillRandom(paths, bytes: memberBytes, seed: UInt64(layout.rawValue) + UInt64(level.rawValue) * 100)
        var options = CreateOptions()
        options.force = true
        let creator = try ArrayCreator(paths: paths, request: request(level: level, layout: layout, n: n, bitmap: .internal_), options: options)
        var lastProgress: (UInt64, UInt64) = (0, 0)
        try creator.run { lastProgress = ($0, $1) }
        // Progress counts per-member sectors, as /proc/mdstat counts a resync.
        #expect(lastProgress.0 == lastProgress.1 && lastProgress.1 == creator.plan.geometry.memberDataSectors)

        let expected = try dataChunksDirectly(paths, plan: creator.plan)
        let array = try OfflineArray(paths: paths)
        #expect(array.plan.superblock.isClean)
        #expect(try array.check().mismatchSectors == 0)
        #expect(try streamAll(array) == expected)
        for removed in subsets(Array(0..<n), maxCount: level.maxDegraded).filter({ !$0.isEmpty }) {
            let degraded = try OfflineArray(paths: paths.enumerated().map { removed.contains($0.offset) ? "missing" : $0.element })
            #expect(try streamAll(degraded) == expected, "\(level) \(layout) without \(removed)")
        }
    }

    @Test func checkCountsAndLocatesCorruptionLikeMd() throws {
        let dir = TemporaryDirectory()
        let paths = (0..<5).map { dir.file("m\($0).img") }
        try fillRandom(paths, bytes: 2048 * 512 + 64 * 1024, seed: 42)
        var options = CreateOptions()
        options.force = true
        let creator = try ArrayCreator(paths: paths, request: request(level: .raid6, layout: .leftSymmetric, n: 5), options: options)
        try creator.run()
        // Corrupt two bytes in one 4 KiB block and one byte in another block of member 3.
        let file = try MemberFile(path: paths[3], mode: .readWrite)
        for offset: UInt64 in [100, 200, 3 * 4096 + 5] {
            let at = creator.plan.dataOffsetSectors * 512 + 8192 * 2 + offset
            var byte = try file.read(at: at, count: 1)
            byte[0] ^= 0xFF
            try file.write(at: at, bytes: byte)
        }
        file.close()
        let report = try OfflineArray(paths: paths).check()
        #expect(report.mismatchSectors == 16)  // two 4 KiB blocks, 8 sectors each
        #expect(report.located.map(\.role) == [3, 3])
    }

    @Test func newSparseMembersNeedNoParityWork() throws {
        let dir = TemporaryDirectory()
        let paths = (0..<4).map { dir.file("new\($0).img") }
        let creator = try ArrayCreator(paths: paths, request: request(level: .raid5, layout: .leftSymmetric, n: 4, chunkKiB: 64, sizeKiB: 1024), options: CreateOptions())
        #expect(creator.newMembers == [true, true, true, true])
        try creator.run()
        for path in paths { #expect(try MemberFile(path: path, mode: .readOnly).sizeBytes() == (2048 + 2048) * 512) }
        let array = try OfflineArray(paths: paths)
        #expect(try array.check().mismatchSectors == 0)
        #expect(try streamAll(array).allSatisfy { $0 == 0 })
    }
}

@Suite struct BadInputTests {
    /// A small clean RAID5 to damage.
    func makeArray(_ dir: TemporaryDirectory, prefix: String = "m", uuidSeed: Int = 3) throws -> [String] {
        let paths = (0..<3).map { dir.file("\(prefix)\($0).img") }
        var r = request(level: .raid5, layout: .leftSymmetric, n: 3)
        r.arrayUUID = (0..<16).map { UInt8($0 + uuidSeed) }
        try ArrayCreator(paths: paths, request: r, options: CreateOptions()).run()
        return paths
    }

    func expectRefusal(_ paths: [String], containing text: String) {
        do {
            _ = try OfflineArray(paths: paths)
            Issue.record("assembly of \(paths) should fail with '\(text)'")
        } catch {
            #expect("\(error)".contains(text), "\(error)")
            #expect(!"\(error)".contains("\n"))
        }
    }

    @Test func truncatedImage() throws {
        let dir = TemporaryDirectory()
        let paths = try makeArray(dir)
        try FileManager.default.createFile(atPath: paths[1], contents: fileBytes(paths[1])!.prefix(600 * 1024))
        expectRefusal(paths, containing: "truncated")
        try FileManager.default.createFile(atPath: paths[1], contents: fileBytes(paths[1])!.prefix(3000))
        expectRefusal(paths, containing: "truncated")
    }

    @Test func flippedChecksumByte() throws {
        let dir = TemporaryDirectory()
        let paths = try makeArray(dir)
        var bytes = fileBytes(paths[2])!
        bytes[4096 + 217] ^= 0x01
        FileManager.default.createFile(atPath: paths[2], contents: bytes)
        expectRefusal(paths, containing: "checksum mismatch")
    }

    @Test func wrongMagic() throws {
        let dir = TemporaryDirectory()
        let paths = try makeArray(dir)
        var bytes = fileBytes(paths[0])!
        bytes[4096] = 0
        FileManager.default.createFile(atPath: paths[0], contents: bytes)
        expectRefusal(paths, containing: "no md superblock")
    }

    @Test func membersOfTwoArrays() throws {
        let dir = TemporaryDirectory()
        let a = try makeArray(dir, prefix: "a", uuidSeed: 1)
        let b = try makeArray(dir, prefix: "b", uuidSeed: 2)
        expectRefusal([a[0], a[1], b[2]], containing: "different arrays")
    }

    @Test func sameMemberTwice() throws {
        let dir = TemporaryDirectory()
        let paths = try makeArray(dir)
        expectRefusal([paths[0], paths[0], paths[1]], containing: "named twice")
    }

    @Test func createRefusesToOverwriteAMemberAndWritesNothing() throws {
        let dir = TemporaryDirectory()
        let paths = try makeArray(dir)
        let before = paths.map { fileBytes($0) }
        let other = dir.file("fresh.img")
        do {
            _ = try ArrayCreator(paths: [other] + Array(paths[1...]), request: request(level: .raid5, layout: .leftSymmetric, n: 3), options: CreateOptions())
            Issue.record("create over an existing member must be refused")
        } catch {
            #expect("\(error)".contains("already holds an md superblock"))
        }
        #expect(paths.map { fileBytes($0) } == before)
        #expect(!FileManager.default.fileExists(atPath: other))
        var options = CreateOptions()
        options.force = true
        try ArrayCreator(paths: paths, request: request(level: .raid5, layout: .leftSymmetric, n: 3), options: options).run()
    }
}
