import DiskIO
import Foundation
import MDFormat
import TestSupport
import Testing

@testable import MDOffline

/// md reads v1.0 (superblock at the end, data from sector 0) and v1.1 (superblock at sector 0)
/// members as well as 1.2; these tests move a 1.2 array's superblocks and data into those layouts
/// and expect the same array content back.
@Suite struct MetadataVersionTests {
    /// Creates a RAID6 over random data and returns its members, plan and content.
    func makeArray(_ dir: TemporaryDirectory) throws -> ([String], CreatePlan, [UInt8]) {
        let paths = (0..<5).map { dir.file("v12-\($0).img") }
        try fillRandom(paths, bytes: 2048 * 512 + 64 * 1024, seed: 7)
        var options = CreateOptions()
        options.force = true
        let creator = try ArrayCreator(paths: paths, request: request(level: .raid6, layout: .leftSymmetric, n: 5), options: options)
        try creator.run()
        return (paths, creator.plan, try streamAll(OfflineArray(paths: paths)))
    }

    @Test func readsVersion11Members() throws {
        let dir = TemporaryDirectory()
        let (paths, plan, content) = try makeArray(dir)
        var moved: [String] = []
        for (i, path) in paths.enumerated() {
            var bytes = fileBytes(path)!
            var sb = plan.superblocks[i]
            sb.superOffsetSectors = 0
            sb.bblogOffsetSectors = 16
            sb.resyncOffsetSectors = maxSector
            let encoded = sb.withValidChecksum().encode()
            bytes.replaceSubrange(4096..<(4096 + encoded.count), with: [UInt8](repeating: 0, count: encoded.count))
            bytes.replaceSubrange(0..<encoded.count, with: encoded)
            let out = dir.file("v11-\(i).img")
            FileManager.default.createFile(atPath: out, contents: bytes)
            moved.append(out)
        }
        let array = try OfflineArray(paths: moved)
        #expect(array.members.allSatisfy { $0.superblock.metadataVersion == .v1_1 })
        #expect(try streamAll(array) == content)
        let report = ExamineReport(superblock: array.members[0].superblock, deviceSizeSectors: array.members[0].deviceSizeSectors)
        #expect(report.lines().contains("        Version : 1.1"))
    }

    @Test func readsVersion10Members() throws {
        let dir = TemporaryDirectory()
        let (paths, plan, content) = try makeArray(dir)
        let g = plan.geometry
        var moved: [String] = []
        for (i, path) in paths.enumerated() {
            let old = fileBytes(path)!
            let dataStart = Int(plan.dataOffsetSectors) * 512
            let data = old[dataStart..<(dataStart + Int(g.memberDataSectors) * 512)]
            // Data from sector 0; the superblock 8-12 KiB before the end, 4 KiB aligned.
            let deviceSectors = g.memberDataSectors + 32
            let superOffset = (deviceSectors - 16) & ~UInt64(7)
            var sb = plan.superblocks[i]
            sb.dataOffsetSectors = 0
            sb.dataSizeSectors = g.memberDataSectors
            sb.superOffsetSectors = superOffset
            sb.bblogOffsetSectors = -8
            sb.resyncOffsetSectors = maxSector
            let encoded = sb.withValidChecksum().encode()
            var bytes = [UInt8](data) + [UInt8](repeating: 0, count: Int(deviceSectors - g.memberDataSectors) * 512)
            bytes.replaceSubrange(Int(superOffset) * 512..<(Int(superOffset) * 512 + encoded.count), with: encoded)
            let out = dir.file("v10-\(i).img")
            FileManager.default.createFile(atPath: out, contents: Data(bytes))
            moved.append(out)
        }
        let array = try OfflineArray(paths: moved.reversed())
        #expect(array.members.allSatisfy { $0.superblock.metadataVersion == .v1_0 })
        #expect(try streamAll(array) == content)
        #expect(try array.check().mismatchSectors == 0)
        let member = array.members[0]
        let lines = ExamineReport(superblock: member.superblock, deviceSizeSectors: member.deviceSizeSectors).lines()
        #expect(lines.contains("        Version : 1.0"))
        #expect(!lines.contains { $0.hasPrefix("    Data Offset") })
        // A degraded read works the same way.
        #expect(try streamAll(OfflineArray(paths: [moved[0], moved[2], moved[4]])) == content)
    }
}
