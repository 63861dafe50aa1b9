import DiskIO
import MDFormat
import MDOffline
import RaidCore
import RaidEngine
import TestSupport
import Testing

/// An engine over the array's files, each behind a fault injector the test controls.
func faultyEngine(_ paths: [String]) throws -> (RaidEngine, [FaultyMember]) {
    let faulty = try paths.map { FaultyMember(try MemberFile(path: $0, options: MemberOpenOptions(mode: .readWrite, exclusive: true))) }
    return (try RaidEngine(devices: faulty, options: testOptions(), logger: quietLogger), faulty)
}

/// The byte range of member `m`'s data for array rows `rows`.
func dataRange(_ path: String, rowBytes: UInt64, rows: Range<UInt64>) throws -> Range<UInt64> {
    let offset = try SuperblockProbe.probe(try MemberFile(path: path, mode: .readOnly)).superblock.dataOffsetSectors * 512
    return (offset + rows.lowerBound * rowBytes)..<(offset + rows.upperBound * rowBytes)
}

/// Member faults while the array runs (md-semantics.md §3, "Errors"), through the
/// fault-injecting member device.
@Suite struct EngineFaultTests {
    @Test func aReadErrorIsRebuiltRewrittenAndReadBack() async throws {
        let dir = TemporaryDirectory()
        let paths = try makeArray(in: dir, level: .raid5, disks: 4, bitmap: false)
        let (engine, faulty) = try faultyEngine(paths)
        let data = IOBuffer(pseudoRandomData(1 << 20, seed: 11))
        try await engine.write(offsetBytes: 0, data: data)
        try await engine.flush()
        // One 4 KiB block of member 1, inside the data just written, becomes unreadable.
        let chunk = UInt64(engine.geometry.chunkBytes)
        let bad = try dataRange(paths[1], rowBytes: chunk, rows: 1..<2)
        faulty[1].addBadRange(bad.lowerBound..<(bad.lowerBound + 4096))
        let file = try #require(faulty[1].inner as? MemberFile)
        let directBefore = file.directSyncReads
        let read = try await engine.read(offsetBytes: 0, length: 1 << 20)
        #expect(read == data, "the read returns the rebuilt data")
        #expect(faulty[1].injected[.read, default: 0] >= 1)
        // md's R5_ReWrite: the rebuilt block was written back and read again, from the disk
        // (md re-reads from the device to know the sector took the write; the rewrite went
        // through the page cache, so the read goes past it, through the member's O_DIRECT
        // descriptor as sync reads do: from the cache it would find the page the rewrite left).
        #expect(faulty[1].callCount(.write, .rewrite) == 1)
        #expect(faulty[1].callCount(.read, .rewrite) == 1)
        #expect(file.directSyncReads == directBefore + 1, "the verifying read did not go to the device")
        #expect(faulty[1].remainingBadRanges.isEmpty, "the rewrite remapped the sector")
        let snap = await engine.snapshot()
        #expect(snap.counters.correctedReadErrors == 1)
        #expect(snap.degraded == 0)
        #expect(try await engine.attribute("dev-1/errors") == "1")
        #expect(try await engine.read(offsetBytes: 0, length: 1 << 20) == data)
        await engine.stop()
        #expect(try OfflineArray(paths: paths).check().mismatchSectors == 0)
    }

    @Test func aWriteErrorFailsTheMemberAndTheArrayGoesOnDegraded() async throws {
        let dir = TemporaryDirectory()
        let paths = try makeArray(in: dir, level: .raid5, disks: 4, bitmap: true)
        let (engine, faulty) = try faultyEngine(paths)
        faulty[2].add(FaultyMember.Rule([.write], purposes: [.data, .parity]))
        let data = IOBuffer(pseudoRandomData(3 << 20, seed: 12))
        // The client's write succeeds: the other members hold data and parity.
        try await engine.write(offsetBytes: 0, data: data)
        let snap = await engine.snapshot()
        #expect(snap.members[2].role == .faulty)
        #expect(snap.degraded == 1)
        #expect(snap.arrayState == .active || snap.arrayState == .activeIdle || snap.arrayState == .clean)
        #expect(try await engine.attribute("dev-2/state") == "faulty")
        #expect(try await engine.read(offsetBytes: 0, length: 3 << 20) == data)
        try await engine.write(offsetBytes: 3 << 20, data: data)
        #expect(try await engine.read(offsetBytes: 3 << 20, length: 3 << 20) == data)
        await engine.stop()
        // The superblocks of the others record the failure; assembly leaves member 2 out.
        let array = try OfflineArray(paths: paths)
        #expect(array.plan.superblock.role(ofDevNumber: 2) == .faulty)
        #expect(array.plan.missingRoles == [2])
        #expect(try array.read(offsetBytes: 0, byteCount: 3 << 20) == data.bytes)
    }

    @Test(arguments: [(RaidLevel.raid5, 4), (.raid6, 5)])
    func oneFailureTooManyBreaksTheArrayAndRequestsGetEIO(level: RaidLevel, disks: Int) async throws {
        let dir = TemporaryDirectory()
        let paths = try makeArray(in: dir, level: level, disks: disks, bitmap: false)
        let (engine, faulty) = try faultyEngine(paths)
        let data = IOBuffer(pseudoRandomData(1 << 20, seed: 13))
        try await engine.write(offsetBytes: 0, data: data)
        // Members vanish one after another; the array carries on until one too many is gone.
        for m in 0..<level.maxDegraded {
            faulty[m].vanish()
            #expect(try await engine.read(offsetBytes: 0, length: 1 << 20) == data)
            try await engine.write(offsetBytes: 1 << 20, data: data)
            #expect(await engine.snapshot().members[m].role == .faulty)
        }
        faulty[level.maxDegraded].vanish()
        let write = await engine.perform(.write(offsetBytes: 2 << 20, data: data, fua: false))
        let read = await engine.perform(.read(offsetBytes: 0, length: 1 << 20))
        // Never wrong data: an error, once the failure is known (the first request may be the
        // one that discovers it).
        #expect(write == .failed(.io) || write == .done)
        #expect(read == .failed(.io) || read == .data(data))
        #expect(try await engine.attribute("array_state") == "broken")
        #expect(await engine.perform(.read(offsetBytes: 0, length: 4096)) == .failed(.io))
        #expect(await engine.perform(.write(offsetBytes: 0, data: IOBuffer(zeroedCount: 4096), fua: false)) == .failed(.io))
        await engine.stop()
    }
}
