import DiskIO
import Foundation
import MDFormat
import TestSupport
import Testing

@testable import MDOffline

func sha256(of array: OfflineArray) throws -> String {
    var hash = SHA256()
    try array.stream(sink: { hash.update($0) })
    return SHA256.hex(hash.finalize())
}

@Suite struct SHA256Tests {
    @Test func knownVectors() {
        var empty = SHA256()
        #expect(SHA256.hex(empty.finalize()) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        var abc = SHA256()
        abc.update(Array("abc".utf8))
        #expect(SHA256.hex(abc.finalize()) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        // A million 'a's fed in uneven pieces crosses the block boundary every way.
        var million = SHA256()
        var fed = 0
        var piece = 1
        while fed < 1_000_000 {
            let n = min(piece, 1_000_000 - fed)
            million.update([UInt8](repeating: 0x61, count: n))
            fed += n
            piece = piece % 997 + 13
        }
        #expect(SHA256.hex(million.finalize()) == "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0")
    }
}

/// Arrays made by the real kernel md (shared/fixtures): read back bit-exact, whole and with every
/// combination of members that md would still run without.
@Suite(.enabled(if: FixturePaths.fixturesRoot != nil, Comment(rawValue: FixturePaths.skipMessage)))
struct KernelFixtureTests {
    static let arrays = FixtureArray.all()

    @Test func fixturesArePresent() {
        #expect(Self.arrays.count == 8)
    }

    @Test(arguments: arrays)
    func readsCompleteArray(fixture: FixtureArray) throws {
        let paths = fixture.memberFiles.map(fixture.path)
        let array = try OfflineArray(paths: paths.reversed())  // any order: roles come from superblocks
        #expect(array.arraySizeBytes == fixture.arrayBytes)
        #expect(try sha256(of: array) == fixture.sha256)
        #expect(array.plan.missingRoles.sorted() == (fixture.missingRoles + fixture.staleRoles).sorted())
        // Spot reads land where md's layout puts the pattern (w[0] names the array sector).
        for sector in [UInt64(0), 1, 127, 128, fixture.arrayBytes / 512 / 2 + 3, fixture.arrayBytes / 512 - 1] {
            let bytes = try array.read(offsetBytes: sector * 512, byteCount: 512)
            #expect(bytes == MDPattern.sector(sector, seed: fixture.seed), "\(fixture.name) sector \(sector)")
        }
    }

    @Test(arguments: arrays)
    func readsWithEveryAllowedSetOfMembersRemoved(fixture: FixtureArray) throws {
        let alreadyGone = fixture.missingRoles.count + fixture.staleRoles.count
        let removable = zip(fixture.memberFiles, fixture.memberRoles).filter { !fixture.staleRoles.contains($0.1) }.map(\.0)
        let combinations = subsets(removable, maxCount: fixture.maxDegraded - alreadyGone).filter { !$0.isEmpty }
        if fixture.maxDegraded > alreadyGone { #expect(!combinations.isEmpty) }
        for (n, removed) in combinations.enumerated() {
            // Removed members are named `missing` in every other combination, left out otherwise.
            let paths = fixture.memberFiles.map { removed.contains($0) ? (n % 2 == 0 ? "missing" : nil) : fixture.path($0) }.compactMap { $0 }
            let array = try OfflineArray(paths: paths)
            #expect(try sha256(of: array) == fixture.sha256, "\(fixture.name) without \(removed)")
        }
    }

    @Test(arguments: arrays)
    func refusesOneMemberTooFew(fixture: FixtureArray) throws {
        // Keep one member fewer than the level needs (stale members never count).
        let keep = fixture.raidDisks - fixture.maxDegraded - 1
        let present = zip(fixture.memberFiles, fixture.memberRoles).filter { !fixture.staleRoles.contains($0.1) }.map(\.0)
        let paths = present.prefix(keep).map(fixture.path) + fixture.staleRoles.map { fixture.path("member\($0).img") }
        #expect(throws: OfflineError.self) { try OfflineArray(paths: paths) }
    }

    @Test(arguments: arrays)
    func offlineCheckFindsNoMismatch(fixture: FixtureArray) throws {
        guard fixture.missingRoles.isEmpty && fixture.staleRoles.isEmpty else { return }
        let array = try OfflineArray(paths: fixture.memberFiles.map(fixture.path))
        #expect(try array.check().mismatchSectors == 0)
    }

    @Test func bitmapFixtureIsUnderstood() throws {
        guard let fixture = Self.arrays.first(where: { $0.name == "r6-ls-64k-6-bitmap" }) else { return }
        let array = try OfflineArray(paths: fixture.memberFiles.map(fixture.path))
        let member = array.members[0]
        #expect(member.bitmap?.chunkSizeBytes == 32 << 10)
        #expect(member.bitmap?.bitCount == 12)
        #expect(member.bitmap?.events == 17)
        #expect(member.bitmap?.eventsCleared == 1)
        #expect(member.bitmap.map { $0.dirtyBitCount(area: member.bitmapArea ?? []) } == 0)
    }

    /// `create` lays members out as mdadm 4.2 did for these very arrays: same member sizes, same
    /// geometry and bitmap options give the same data offset, data size, superblock, bitmap and
    /// bad-block log positions, and the same bitmap chunk.
    @Test(arguments: arrays)
    func createPlansWhatMdadmMadeOfTheSameMembers(fixture: FixtureArray) throws {
        let probed = try fixture.memberFiles.map { try SuperblockProbe.probe(try MemberFile(path: fixture.path($0), mode: .readOnly)) }
        let real = probed[0].superblock
        var request = CreateRequest(
            level: fixture.level == 6 ? .raid6 : .raid5, raidDisks: fixture.raidDisks,
            memberSizesSectors: [UInt64?](repeating: probed[0].deviceSizeSectors, count: fixture.raidDisks),
            arrayUUID: real.setUUID, deviceUUIDs: (0..<fixture.raidDisks).map { _ in real.deviceUUID }, timeSeconds: real.ctimeSeconds)
        request.chunkKiB = UInt64(fixture.chunkKiB)
        request.layout = RaidLayout(rawValue: fixture.layoutNumber)
        if let bitmap = probed[0].bitmap {
            request.bitmap = .internal_
            request.bitmapChunkBytes = UInt64(bitmap.chunkSizeBytes)
        } else {
            request.bitmap = .auto  // mdadm 4.2 adds none on members this small
        }
        let plan = try CreatePlan(request, clean: true)
        for (member, role) in zip(probed, fixture.memberRoles) {
            let ours = plan.superblocks[role]
            let theirs = member.superblock
            #expect(ours.dataOffsetSectors == theirs.dataOffsetSectors, "\(fixture.name)")
            #expect(ours.dataSizeSectors == theirs.dataSizeSectors, "\(fixture.name)")
            #expect(ours.sizeSectors == theirs.sizeSectors, "\(fixture.name)")
            #expect(ours.superOffsetSectors == theirs.superOffsetSectors, "\(fixture.name)")
            #expect(ours.bitmapOffsetRaw == theirs.bitmapOffsetRaw, "\(fixture.name)")
            #expect(ours.bblogOffsetSectors == theirs.bblogOffsetSectors, "\(fixture.name)")
            #expect(ours.bblogSizeSectors == theirs.bblogSizeSectors, "\(fixture.name)")
            #expect(ours.maxDev == theirs.maxDev, "\(fixture.name)")
            #expect(ours.featureMap == theirs.featureMap.subtracting([.recoveryOffset]), "\(fixture.name)")
        }
        #expect(plan.bitmap?.chunkSizeBytes == probed[0].bitmap?.chunkSizeBytes)
    }

    /// The CLI's examine prints what mdadm printed for the same images (device line aside).
    @Test(arguments: arrays)
    func examineMatchesMdadmOutput(fixture: FixtureArray) throws {
        for (file, role) in zip(fixture.memberFiles, fixture.memberRoles) {
            let probed = try SuperblockProbe.probe(try MemberFile(path: fixture.path(file), mode: .readOnly))
            let report = ExamineReport(superblock: probed.superblock, deviceSizeSectors: probed.deviceSizeSectors, bitmap: probed.bitmap, homehost: "oracle")
            let expected = try String(contentsOfFile: fixture.path("examine-\(role).txt"), encoding: .utf8)
                .split(separator: "\n", omittingEmptySubsequences: false).dropFirst().dropLast().map(String.init)
            #expect(report.lines() == expected, "\(fixture.name) \(file)")
        }
    }
}
