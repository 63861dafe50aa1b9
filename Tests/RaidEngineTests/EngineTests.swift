import DiskIO
import MDFormat
import MDOffline
import RaidCore
import RaidEngine
import TestSupport
import Testing

/// The live array on real files: random requests against a shadow copy, healthy, degraded and
/// rebuilding; then the members are checked offline, as the kernel would find them.
@Suite struct EngineWorkloadTests {
    static let shapes: [(RaidLevel, Int)] = [(.raid5, 4), (.raid6, 5)]

    @Test(arguments: shapes)
    func healthy(level: RaidLevel, disks: Int) async throws {
        let dir = TemporaryDirectory()
        let paths = try makeArray(in: dir, level: level, disks: disks)
        let engine = try RaidEngine.assemble(paths: paths, options: testOptions(), logger: quietLogger)
        let shadow = Shadow(sizeBytes: Int(engine.sizeBytes))
        try await runWorkload(engine, shadow: shadow, seed: UInt64(level.rawValue), requests: 600)
        try await verifyWholeArray(engine, shadow)
        #expect(try await engine.attribute("degraded") == "0")
        await engine.stop()
        // Stopped cleanly: every superblock says clean, parity is right, the data is there.
        for path in paths {
            let sb = try SuperblockProbe.probe(try MemberFile(path: path, mode: .readOnly)).superblock
            #expect(sb.isClean, "\(path) not clean after stop")
        }
        try verifyOffline(paths, shadow)
    }

    @Test(arguments: shapes)
    func degraded(level: RaidLevel, disks: Int) async throws {
        let dir = TemporaryDirectory()
        let paths = try makeArray(in: dir, level: level, disks: disks)
        // RAID5 runs without member 1, RAID6 without members 1 and 3.
        let missing = level == .raid6 ? [1, 3] : [1]
        let present = paths.enumerated().filter { !missing.contains($0.offset) }.map(\.element)
        let engine = try RaidEngine.assemble(paths: present, options: testOptions(), logger: quietLogger)
        #expect(try await engine.attribute("degraded") == String(missing.count))
        let shadow = Shadow(sizeBytes: Int(engine.sizeBytes))
        try await runWorkload(engine, shadow: shadow, seed: 77, requests: 400)
        try await verifyWholeArray(engine, shadow)
        await engine.stop()
        // The members left carry the data (read offline, rebuilding the missing ones).
        let array = try OfflineArray(paths: present)
        #expect(array.plan.missingRoles == missing)
        var offset = 0
        try array.stream(sink: { chunk in
            if let bad = shadow.firstMismatch(offset, chunk) { Issue.record("offline degraded read wrong at sector \(bad)") }
            offset += chunk.count
        })
    }

    @Test(arguments: shapes)
    func rebuilding(level: RaidLevel, disks: Int) async throws {
        let dir = TemporaryDirectory()
        let paths = try makeArray(in: dir, level: level, disks: disks)
        let engine = try RaidEngine.assemble(paths: paths, options: testOptions(), logger: quietLogger)
        let shadow = Shadow(sizeBytes: Int(engine.sizeBytes))
        try await runWorkload(engine, shadow: shadow, seed: 5, requests: 200)
        // A spare joins; then a member fails and recovery onto the spare starts.
        let sparePath = dir.file("spare.img")
        _ = try MemberFile(creating: sparePath, sizeBytes: try MemberFile(path: paths[0], mode: .readOnly).size())
        try await engine.add(path: sparePath)
        #expect(try await engine.attribute("dev-\(disks)/state") == "spare")
        try await engine.set("sync_speed_max", "1000")
        try await engine.fail(member: paths[2])
        #expect(try await engine.attribute("sync_action") == "recover")
        // Paused part way (md's frozen): the spare holds its slot but is not rebuilt yet, so
        // the load meets the rebuilding member whatever the machine's speed: writes go to it,
        // reads of what it does not hold yet are rebuilt from the others.
        try await engine.set("sync_action", "frozen")
        let paused = await engine.snapshot()
        #expect(paused.members[disks].role == .active(slot: Role(2)))
        #expect(paused.members[disks].recoveryOffsetSectors != nil)
        try await runWorkload(engine, shadow: shadow, seed: 6, requests: 300)
        let during = await engine.snapshot()
        #expect(during.members[disks].recoveryOffsetSectors != nil, "the spare was rebuilt while frozen")
        // Recovery resumes where it stopped, at full speed, under more load.
        try await engine.set("sync_speed_max", "system")
        try await engine.set("sync_action", "idle")
        try await runWorkload(engine, shadow: shadow, seed: 7, requests: 100)
        await engine.waitForSync()
        let after = await engine.snapshot()
        #expect(after.degraded == 0)
        #expect(after.members[disks].role == .active(slot: Role(2)))
        #expect(after.members[disks].recoveryOffsetSectors == nil)
        #expect(after.members[2].role == .faulty)
        try await verifyWholeArray(engine, shadow)
        await engine.stop()
        var rebuilt = paths
        rebuilt[2] = sparePath
        try verifyOffline(rebuilt, shadow)
        // The failed member's superblock is behind: assembly leaves it out as md does.
        let all = try OfflineArray(paths: paths + [sparePath])
        #expect(all.plan.missingRoles.isEmpty)
        #expect(all.plan.excluded.contains { all.members[$0.index].name == paths[2] })
    }
}

@Suite struct EngineLifecycleTests {
    @Test func stopFinishesTheRequestsInFlightThenRefusesNewOnes() async throws {
        let dir = TemporaryDirectory()
        let paths = try makeArray(in: dir, level: .raid5, disks: 3)
        let (engine, faulty) = try faultyEngine(paths)
        // Member 2's data writes are held at a gate: the write is in flight when the stop comes.
        let gate = FaultGate()
        faulty[2].add(FaultyMember.Rule([.write], purposes: [.data, .parity], stall: gate, failsAfterStall: false))
        let data = IOBuffer(pseudoRandomData(1 << 20, seed: 1))
        async let write: ClientResult = engine.perform(.write(offsetBytes: 0, data: data, fua: false))
        await waitUntilHeld(gate, 1)
        async let stopped: Void = engine.stop()
        // Requests after the stop began are refused at once (a read far from the held write,
        // which it would otherwise queue behind); the held write still runs.
        // Each read is a round trip through the loop, which the stop reaches in its turn.
        let far = engine.sizeBytes - 512
        while await engine.perform(.read(offsetBytes: far, length: 512)) != .failed(.shutdown) { await Task.yield() }
        faulty[2].removeAllRules()
        gate.open()
        let (w, _) = await (write, stopped)
        #expect(w == .done)
        #expect(await engine.perform(.read(offsetBytes: 0, length: 512)) == .failed(.shutdown))
        let array = try OfflineArray(paths: paths)
        #expect(array.plan.superblock.isClean)
        #expect(try array.check().mismatchSectors == 0)
        #expect(try array.read(offsetBytes: 0, byteCount: 1 << 20) == data.bytes)
    }

    /// A re-add the core refuses (the removed member's device number went to a spare added
    /// since) leaves the member waiting to be closed, as if it had not been asked: it closes once
    /// its last I/O ends. Before, the refusal took it off that list and it stayed open, its
    /// descriptors and lock held until the array stopped.
    @Test func aRefusedReaddStillClosesTheRemovedMemberOnceItsIOEnds() async throws {
        let dir = TemporaryDirectory()
        let paths = try makeArray(in: dir, level: .raid5, disks: 3)
        let spare = dir.file("spare.img")
        _ = try MemberFile(creating: spare, sizeBytes: try MemberFile(path: paths[0], mode: .readOnly).size())
        let files = try paths.map { try MemberFile(path: $0, options: MemberOpenOptions(mode: .readWrite, exclusive: true)) }
        let faulty = files.map { FaultyMember($0) }
        let engine = try RaidEngine(devices: faulty, options: testOptions(), logger: quietLogger)
        // Member 2's writes are held: one is in flight when the member fails and is removed.
        let gate = FaultGate()
        faulty[2].add(FaultyMember.Rule([.write], purposes: [.data, .parity], stall: gate, failsAfterStall: false))
        async let write: ClientResult = engine.perform(.write(offsetBytes: 0, data: IOBuffer(pseudoRandomData(1 << 20, seed: 3)), fua: false))
        await waitUntilHeld(gate, 1)
        try await engine.fail(member: paths[2])
        try await engine.remove(member: paths[2])
        try await engine.add(path: spare)
        var refusal: ControlError?
        do throws(ControlError) { try await engine.readd(member: paths[2]) } catch { refusal = error }
        #expect(refusal != nil, "the re-add was not refused: the test proves nothing")
        faulty[2].removeAllRules()
        gate.open()
        _ = await write
        _ = await engine.snapshot()  // a turn of the loop after the write's member I/O ended
        #expect(files[2].isClosed, "the removed member was left open")
        await engine.stop()
    }

    /// A member behind a fault injector (`swraid run --fault-injection`), removed (its file
    /// closed) and re-added, is opened again behind the same injector: before, the re-add kept
    /// the wrapper over the closed file, every I/O failed with EBADF and the member failed again.
    @Test func aMemberBehindTheFaultInjectorComesBackFromARemoveAndReadd() async throws {
        let dir = TemporaryDirectory()
        let paths = try makeArray(in: dir, level: .raid5, disks: 4)
        let (engine, faulty) = try faultyEngine(paths)
        let data = IOBuffer(pseudoRandomData(2 << 20, seed: 23))
        try await engine.write(offsetBytes: 0, data: data)
        try await engine.fail(member: paths[1])
        try await engine.remove(member: paths[1])
        try await engine.readd(member: paths[1])
        await engine.waitForSync()
        #expect(await engine.snapshot().degraded == 0, "the re-added member failed again")
        #expect(await engine.snapshot().members[1].role == .active(slot: Role(1)))
        // The faults set on the wrapper the test holds still reach the member.
        faulty[1].vanish()
        #expect(try await engine.read(offsetBytes: 0, length: 2 << 20) == data)
        try await engine.write(offsetBytes: 0, data: data)
        #expect(await engine.snapshot().degraded == 1, "a fault set on the old wrapper did not reach the reopened member")
        await engine.stop()
    }

    @Test func manyConcurrentStopsStopOnce() async throws {
        let dir = TemporaryDirectory()
        let paths = try makeArray(in: dir, level: .raid6, disks: 4)
        let engine = try RaidEngine.assemble(paths: paths, options: testOptions(), logger: quietLogger)
        try await engine.write(offsetBytes: 0, data: IOBuffer(pseudoRandomData(65536, seed: 2)))
        await withTaskGroup(of: Void.self) { group in
            for _ in 0..<8 { group.addTask { await engine.stop() } }
            group.addTask { _ = await engine.control(.stop) }
        }
        #expect(await engine.snapshot().isStopped)
        #expect(try OfflineArray(paths: paths).plan.superblock.isClean)
        // Calls after the stop return (setObserver hopped to the loop, which was gone).
        await engine.setObserver(nil)
        // Members are free again.
        await (try RaidEngine.assemble(paths: paths, options: testOptions(), logger: quietLogger)).stop()
    }

    @Test func anAddRacingAStopEitherJoinsOrIsRefused() async throws {
        let dir = TemporaryDirectory()
        let paths = try makeArray(in: dir, level: .raid5, disks: 3)
        let spare = dir.file("spare.img")
        _ = try MemberFile(creating: spare, sizeBytes: try MemberFile(path: paths[0], mode: .readOnly).size())
        let engine = try RaidEngine.assemble(paths: paths, options: testOptions(), logger: quietLogger)
        async let added: Result<Void, EngineError> = { () async -> Result<Void, EngineError> in
            do throws(EngineError) { try await engine.add(path: spare); return .success(()) } catch { return .failure(error) }
        }()
        async let stopped: Void = engine.stop()
        let (outcome, _) = await (added, stopped)
        // Whichever came first, the engine stopped cleanly and the spare is not left locked.
        #expect(await engine.snapshot().isStopped)
        let relock = try MemberFile(path: spare, options: MemberOpenOptions(mode: .readWrite, exclusive: true))
        relock.close()
        if case .success = outcome { #expect(await engine.snapshot().members.count == 4) }
    }

    @Test func aReadOnlyEngineNeverWritesWhateverItIsAsked() async throws {
        let dir = TemporaryDirectory()
        let paths = try makeArray(in: dir, level: .raid5, disks: 4, bitmap: true)
        let before = paths.map { fileBytes($0) }
        let engine = try RaidEngine.assemble(paths: paths, options: testOptions(readOnly: true), logger: quietLogger)
        #expect(try await engine.attribute("array_state") == "readonly")
        #expect(await engine.perform(.write(offsetBytes: 0, data: IOBuffer(zeroedCount: 4096), fua: false)) == .failed(.readOnly))
        // md's answers on a read-only array; none of these may write anything.
        await #expect(throws: ControlError.readOnly) { try await engine.set("array_state", "active") }
        await #expect(throws: ControlError.readOnly) { try await engine.set("array_state", "clean") }
        await #expect(throws: ControlError.readOnly) { try await engine.set("array_state", "read-auto") }
        await #expect(throws: ControlError.self) { try await engine.set("sync_action", "check") }
        try await engine.set("sync_action", "idle")
        try await engine.set("sync_action", "frozen")
        try await engine.fail(member: paths[1])
        #expect(try await engine.attribute("degraded") == "1")
        try await engine.remove(member: paths[1])
        let data = try await engine.read(offsetBytes: 0, length: 1 << 20)
        #expect(data.count == 1 << 20)
        await engine.stop()
        #expect(paths.map { fileBytes($0) } == before, "a read-only engine wrote to a member")
    }

    @Test func reAddBringsBackARemovedMemberAndOneLeftOutAtAssembly() async throws {
        let dir = TemporaryDirectory()
        let paths = try makeArray(in: dir, level: .raid5, disks: 4)
        let data = IOBuffer(pseudoRandomData(2 << 20, seed: 21))
        do {
            let engine = try RaidEngine.assemble(paths: paths, options: testOptions(), logger: quietLogger)
            try await engine.write(offsetBytes: 0, data: data)
            try await engine.fail(member: paths[1])
            try await engine.remove(member: paths[1])
            // Removed and closed: the file is no longer locked by the array.
            let probe = try MemberFile(path: paths[1], options: MemberOpenOptions(mode: .readOnly, exclusive: true))
            probe.close()
            try await engine.readd(member: paths[1])
            await engine.waitForSync()
            #expect(await engine.snapshot().degraded == 0)
            #expect(await engine.snapshot().members[1].role == .active(slot: Role(1)))
            // Member 2 fails and the array goes on without it; it is stale from then on.
            try await engine.fail(member: paths[2])
            try await engine.write(offsetBytes: 2 << 20, data: data)
            await engine.stop()
        }
        // At the next assembly the stale member is left out (its device closed), then re-added.
        let engine = try RaidEngine.assemble(paths: paths, options: testOptions(), logger: quietLogger)
        #expect(engine.leftOut.map(\.name) == [paths[2]])
        #expect(try await engine.attribute("degraded") == "1")
        try await engine.readd(member: paths[2])
        await engine.waitForSync()
        #expect(try await engine.attribute("degraded") == "0")
        #expect(try await engine.read(offsetBytes: 0, length: 2 << 20) == data)
        #expect(try await engine.read(offsetBytes: 2 << 20, length: 2 << 20) == data)
        await engine.stop()
        #expect(try OfflineArray(paths: paths).check().mismatchSectors == 0)
    }

    @Test func anUncleanArrayResyncsAtAssemblyAsMdWould() async throws {
        let dir = TemporaryDirectory()
        let paths = try makeArray(in: dir, level: .raid6, disks: 5, bitmap: false)
        // As after a crash: every superblock says writes may have been in flight, and one row's
        // parity does not match its data.
        for path in paths {
            let file = try MemberFile(path: path, mode: .readWrite)
            var sb = try SuperblockProbe.probe(file).superblock
            sb.resyncOffsetSectors = 0
            try file.write(at: sb.superOffsetSectors * 512, bytes: sb.withValidChecksum().encode())
        }
        let data = try MemberFile(path: paths[0], mode: .readWrite)
        let offset = try SuperblockProbe.probe(data).superblock.dataOffsetSectors * 512
        try data.write(at: offset, bytes: [UInt8](repeating: 0xAB, count: 4096))
        let engine = try RaidEngine.assemble(paths: paths, options: testOptions(), logger: quietLogger)
        // md starts the resync at once (read-write assembly), and only then is the array clean.
        await engine.waitForSync()
        #expect(try await engine.attribute("last_sync_action") == "resync")
        #expect(try await engine.attribute("resync_start") == "none")
        try await engine.set("sync_action", "check")
        await engine.waitForSync()
        #expect(try await engine.attribute("mismatch_cnt") == "0")
        await engine.stop()
        #expect(try OfflineArray(paths: paths).check().mismatchSectors == 0)
    }

    @Test func bitmapLimitsTheResyncAfterAnUncleanShutdown() async throws {
        let dir = TemporaryDirectory()
        let paths = try makeArray(in: dir, level: .raid5, disks: 4, memberMiB: 16, bitmap: true)
        // Mark the array dirty with one bitmap region (1 MiB chunks) dirty on every member.
        for path in paths {
            let file = try MemberFile(path: path, mode: .readWrite)
            let probed = try SuperblockProbe.probe(file)
            var sb = probed.superblock
            sb.resyncOffsetSectors = 0
            try file.write(at: sb.superOffsetSectors * 512, bytes: sb.withValidChecksum().encode())
            let bitsAt = (Int64(sb.superOffsetSectors) + Int64(sb.bitmapOffsetSectors)) * 512 + Int64(MDBitmapSuperblock.headerBytes)
            try file.write(at: UInt64(bitsAt), bytes: [0b0000_0100])
        }
        let engine = try RaidEngine.assemble(paths: paths, options: testOptions(), logger: quietLogger)
        await engine.waitForSync()
        let snap = await engine.snapshot()
        #expect(snap.lastSyncAction == .resync)
        // Only the dirty region was visited: 1 MiB of each member (256 stripe units), not 16.
        #expect(snap.counters.syncUnitsDone == 256)
        #expect(try await engine.attribute("resync_start") == "none")
        await engine.stop()
    }

    @Test func membersAreLockedWhileTheArrayRuns() async throws {
        let dir = TemporaryDirectory()
        let paths = try makeArray(in: dir, level: .raid5, disks: 3)
        let engine = try RaidEngine.assemble(paths: paths, options: testOptions(), logger: quietLogger)
        #expect(throws: EngineError.open(.inUse(path: paths[0]))) {
            try RaidEngine.assemble(paths: paths, options: testOptions(), logger: quietLogger)
        }
        var request = CreateRequest(level: .raid5, raidDisks: 3, memberSizesSectors: [], arrayUUID: [UInt8](repeating: 9, count: 16), deviceUUIDs: [[UInt8]](repeating: [UInt8](repeating: 1, count: 16), count: 3), timeSeconds: 0)
        request.chunkKiB = 64
        var options = CreateOptions()
        options.force = true
        #expect(throws: CreatorError.self) { try ArrayCreator(paths: paths, request: request, options: options).run() }
        await engine.stop()
        // Once stopped, the members are free again.
        let again = try RaidEngine.assemble(paths: paths, options: testOptions(), logger: quietLogger)
        await again.stop()
    }

    @Test func addRefusesAMemberAndADeviceTooSmall() async throws {
        let dir = TemporaryDirectory()
        let paths = try makeArray(in: dir, level: .raid5, disks: 3)
        let engine = try RaidEngine.assemble(paths: paths, options: testOptions(), logger: quietLogger)
        await #expect(throws: EngineError.self) { try await engine.add(path: paths[1]) }
        let small = dir.file("small.img")
        _ = try MemberFile(creating: small, sizeBytes: 1 << 20)
        await #expect(throws: EngineError.self) { try await engine.add(path: small) }
        #expect(await engine.snapshot().members.count == 3)
        // Unknown members, attributes and values: md's errors, nothing changes.
        await #expect(throws: ControlError.invalid("nothing.img is not a member of this array")) { try await engine.fail(member: "nothing.img") }
        await #expect(throws: ControlError.self) { try await engine.set("sync_action", "reshape") }
        await #expect(throws: ControlError.unknownAttribute("bogus")) { try await engine.attribute("bogus") }
        #expect(try await engine.attribute("degraded") == "0")
        await engine.stop()
    }
}
