import MDFormat
import RaidSimulation
import Testing

@testable import RaidCore

/// Drives a core by hand: member I/O waits in a list until the test lets it complete, so tests
/// can look at the state in between (write-pending, parked requests, a stop waiting).
final class Harness {
    let core: RaidCore
    let members: [SimMember]
    var now: Nanoseconds = 0
    var pendingIO: [CoreAction] = []
    var timers: [TimerID: Nanoseconds] = [:]
    var clientResults: [RequestID: ClientResult] = [:]
    var controlResults: [RequestID: ControlResult] = [:]
    var issued: [CoreAction] = []
    var nextID: RequestID = 1
    var failingMembers: Set<Int> = []
    /// Members whose writes (only) fail.
    var failingWrites: Set<Int> = []

    init(_ shape: SimArrayShape, config: CoreConfig = CoreConfig(), dirty: Bool = false) throws {
        members = try Simulation.makeMembers(shape)
        if dirty {
            // As after a crash: every superblock says writes may have been in flight.
            for m in members {
                var sb = m.probe()!.superblock
                sb.resyncOffsetSectors = 0
                _ = m.write(offset: 4096, data: sb.withValidChecksum().encode(), fua: true)
            }
        }
        let assembly = try CoreAssembly(members: members.compactMap { $0.probe() })
        core = try RaidCore(assembly: assembly, config: config)
        apply(core.start(now: 0))
    }

    static func raid5(_ n: Int = 4, bitmap: Bool = false, spares: Int = 0, cache: Int = 256, rows: UInt64 = 8) throws -> Harness {
        var config = CoreConfig()
        config.stripeCacheSize = cache
        return try Harness(SimArrayShape(level: .raid5, layout: .leftSymmetric, raidDisks: n, chunkKiB: 8, rows: rows, bitmap: bitmap, spares: spares, stripeCacheSize: cache), config: config)
    }

    static func raid6(_ n: Int = 6) throws -> Harness {
        try Harness(SimArrayShape(level: .raid6, layout: .leftSymmetric, raidDisks: n, chunkKiB: 8, rows: 8, bitmap: false, spares: 0, stripeCacheSize: 256))
    }

    func apply(_ actions: [CoreAction]) {
        for a in actions {
            switch a {
            case .memberRead, .memberWrite, .memberFlush:
                pendingIO.append(a)
                issued.append(a)
            case .completeClient(let id, let r): clientResults[id] = r
            case .completeControl(let id, let r): controlResults[id] = r
            case .armTimer(let t, let at): timers[t] = at
            case .log: break
            }
        }
    }

    @discardableResult
    func submit(_ r: ClientRequest) -> RequestID {
        let id = nextID
        nextID += 1
        apply(core.handle(.client(id, r), now: now))
        return id
    }

    @discardableResult
    func control(_ c: ControlCommand) -> RequestID {
        let id = nextID
        nextID += 1
        apply(core.handle(.control(id, c), now: now))
        return id
    }

    @discardableResult
    func set(_ attribute: String, _ value: String) -> RequestID { control(.set(attribute: attribute, value: value)) }

    /// Completes the oldest pending member I/O (in issue order).
    func completeOne() {
        let a = pendingIO.removeFirst()
        now += 10_000
        switch a {
        case .memberRead(let id, let m, let offset, let length):
            let bytes = failingMembers.contains(m) ? nil : members[m].read(offset: Int(offset), length: length)
            apply(core.handle(.memberIOCompleted(id, bytes.map { .success($0) } ?? .failure), now: now))
        case .memberWrite(let id, let m, let offset, let data, let fua):
            let ok = !failingMembers.contains(m) && !failingWrites.contains(m) && members[m].write(offset: Int(offset), data: data, fua: fua)
            apply(core.handle(.memberIOCompleted(id, ok ? .success([]) : .failure), now: now))
        case .memberFlush(let id, let m):
            let ok = !failingMembers.contains(m) && members[m].flush()
            apply(core.handle(.memberIOCompleted(id, ok ? .success([]) : .failure), now: now))
        default: break
        }
    }

    /// Completes member I/O until none is left (bounded).
    func settle(limit: Int = 100_000) {
        var n = 0
        while !pendingIO.isEmpty && n < limit {
            completeOne()
            n += 1
        }
        precondition(n < limit, "the core keeps issuing I/O")
    }

    /// Advances time to the next armed timer and fires it.
    func fireNextTimer(_ timer: TimerID) {
        guard let at = timers.removeValue(forKey: timer) else { return }
        now = max(now, at)
        apply(core.handle(.timerFired(timer), now: now))
    }

    func data(_ id: RequestID) -> [UInt8]? {
        if case .data(let d)? = clientResults[id] { return d }
        return nil
    }

    func superblock(_ m: Int) -> MDSuperblock1 { members[m].probe()!.superblock }
}

func bytes(_ n: Int, _ seed: UInt8) -> [UInt8] { (0..<n).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ Int(seed)) } }

@Suite struct ArrayStateTests {
    @Test func cleanDirtyCleanAsMdDoes() throws {
        let h = try Harness.raid5()
        #expect(h.core.arrayState == "read-auto")
        let events = h.core.events
        let w = h.submit(.write(offsetBytes: 0, data: bytes(4096, 1), fua: false))
        // The first write after clean marks the array dirty on disk before any data is written.
        #expect(h.core.arrayState == "write-pending")
        let firstDataWrite = h.issued.firstIndex { if case .memberWrite(_, _, let o, _, _) = $0 { return o >= 48 * 512 } else { return false } }
        #expect(firstDataWrite == nil)
        // md writes superblocks with a preflush: every member is flushed first, then written.
        let flushes = h.pendingIO.filter { if case .memberFlush = $0 { return true } else { return false } }
        #expect(flushes.count == 4)
        for _ in 0..<4 { h.completeOne() }
        let superblockWrites = h.pendingIO.filter { if case .memberWrite(_, _, let o, _, let fua) = $0 { return o == 4096 && fua } else { return false } }
        #expect(superblockWrites.count == 4)
        h.settle()
        #expect(h.clientResults[w] == .done)
        #expect(h.core.arrayState == "active")
        #expect(h.core.events == events + 1)
        #expect(h.superblock(0).resyncOffsetSectors == 0)
        // No writes for safe_mode_delay: clean again, and md's event roll-back applies.
        h.fireNextTimer(.safeMode)
        h.settle()
        #expect(h.core.arrayState == "clean")
        #expect(h.superblock(2).isClean)
        // md never rolls events back to 1 or below, so the first cycle ends 2 up...
        #expect(h.core.events == events + 2)
        // ...and from then on a pure dirty/clean cycle takes its bump back.
        h.submit(.write(offsetBytes: 0, data: bytes(4096, 2), fua: false))
        h.settle()
        #expect(h.core.events == events + 3)
        h.fireNextTimer(.safeMode)
        h.settle()
        #expect(h.core.events == events + 2)
        #expect(h.superblock(1).events == events + 2)
    }

    @Test func activeIdleWhileWritesHoldTheArrayDirty() throws {
        let h = try Harness.raid5()
        h.submit(.write(offsetBytes: 0, data: bytes(4096, 1), fua: false))
        h.settle()
        let second = h.submit(.write(offsetBytes: 8192, data: bytes(4096, 2), fua: false))
        h.fireNextTimer(.safeMode)
        // Safe mode fired but a write is in flight: md shows active-idle until it can go clean.
        #expect(h.core.arrayState == "active-idle")
        h.settle()
        #expect(h.clientResults[second] == .done)
        h.fireNextTimer(.safeMode)
        h.settle()
        #expect(h.core.arrayState == "clean")
    }

    @Test func dirtyArrayResyncsThenGoesClean() throws {
        let h = try Harness(SimArrayShape(level: .raid5, layout: .leftSymmetric, raidDisks: 4, chunkKiB: 8, rows: 8, bitmap: false, spares: 0, stripeCacheSize: 64), dirty: true)
        #expect(h.core.arrayState == "read-auto")
        #expect(h.core.attribute("resync_start") == "0")
        // Pending resyncs wait while read-auto; leaving it starts one.
        #expect(h.core.syncAction == "idle")
        h.set("sync_action", "idle")
        #expect(h.core.syncAction == "resync")
        h.settle()
        #expect(h.core.attribute("resync_start") == "none")
        h.fireNextTimer(.safeMode)
        h.settle()
        #expect(h.core.arrayState == "clean")
        #expect(h.superblock(0).isClean)
    }

    @Test func arrayStateWrites() throws {
        let h = try Harness.raid5()
        for bad in ["write-pending", "active-idle", "broken", "bogus"] {
            let id = h.set("array_state", bad)
            guard case .failed(.invalid)? = h.controlResults[id] else { Issue.record("\(bad) accepted"); continue }
        }
        let active = h.set("array_state", "active")
        #expect(h.controlResults[active] == nil)  // answered when the dirty superblock lands
        h.settle()
        #expect(h.controlResults[active] == .done)
        #expect(h.core.arrayState == "active")
        let clean = h.set("array_state", "clean")
        h.settle()
        #expect(h.controlResults[clean] == .done)
        #expect(h.core.arrayState == "clean")
        let ro = h.set("array_state", "readonly")
        #expect(h.controlResults[ro] == .done)
        let w = h.submit(.write(offsetBytes: 0, data: bytes(512, 1), fua: false))
        #expect(h.clientResults[w] == .failed(.readOnly))
    }
}

@Suite struct RequestTests {
    @Test func writeReadRoundTripAndBadRequests() throws {
        let h = try Harness.raid6()
        let data = bytes(12288, 7)
        h.submit(.write(offsetBytes: 4096, data: data, fua: false))
        h.settle()
        let r = h.submit(.read(offsetBytes: 4096, length: 12288))
        h.settle()
        #expect(h.data(r) == data)
        let size = h.core.geometry.arraySectors * 512
        for bad: ClientRequest in [.read(offsetBytes: size, length: 512), .read(offsetBytes: 100, length: 512), .write(offsetBytes: size - 512, data: bytes(1024, 1), fua: false)] {
            let id = h.submit(bad)
            guard case .failed(.invalid)? = h.clientResults[id] else { Issue.record("\(bad) accepted"); continue }
        }
    }

    @Test func fuaWritesAreDurableAtCompletionAndFlushMakesTheRestDurable() throws {
        let h = try Harness.raid5()
        let size = h.core.geometry.chunkBytes
        h.submit(.write(offsetBytes: 0, data: bytes(size, 3), fua: true))
        h.submit(.write(offsetBytes: UInt64(size), data: bytes(size, 4), fua: false))
        h.settle()
        let dataOffset = 48 * 512
        // Chunk 0 is on member 0 and chunk 1 on member 1 in left-symmetric row 0.
        #expect(Array(h.members[0].durable[dataOffset..<(dataOffset + size)]) == bytes(size, 3))
        #expect(Array(h.members[1].durable[dataOffset..<(dataOffset + size)]) != bytes(size, 4))
        let f = h.submit(.flush)
        h.settle()
        #expect(h.clientResults[f] == .done)
        #expect(Array(h.members[1].durable[dataOffset..<(dataOffset + size)]) == bytes(size, 4))
    }

    @Test func fullCacheParksRequestsAndServesThemInOrder() throws {
        let h = try Harness.raid5(cache: 17, rows: 32)
        // One write per stripe unit (two 4 KiB units per 8 KiB chunk row): 40 distinct stripes.
        let rowBytes = UInt64(h.core.geometry.rowDataSectors * 512)
        func offset(_ i: Int) -> UInt64 { UInt64(i / 2) * rowBytes + UInt64(i % 2) * 4096 }
        var ids: [RequestID] = []
        for i in 0..<40 { ids.append(h.submit(.write(offsetBytes: offset(i), data: bytes(4096, UInt8(i)), fua: false))) }
        #expect(h.core.parkedForStripe > 0)
        #expect(h.core.stripeCacheActive == 17)
        #expect(h.core.attribute("stripe_cache_active") == "17")
        h.settle()
        #expect(ids.allSatisfy { h.clientResults[$0] == .done })
        #expect(h.core.parkedForStripe == 0)
        for i in [0, 17, 39] {
            let r = h.submit(.read(offsetBytes: offset(i), length: 4096))
            h.settle()
            #expect(h.data(r) == bytes(4096, UInt8(i)))
        }
        let bad = h.set("stripe_cache_size", "16")
        guard case .failed(.invalid)? = h.controlResults[bad] else { Issue.record("16 accepted"); return }
        #expect(h.controlResults[h.set("stripe_cache_size", "512")] == .done)
        #expect(h.core.attribute("stripe_cache_size") == "512")
    }

    @Test func readErrorIsRebuiltRewrittenAndVerified() throws {
        let h = try Harness.raid5()
        h.submit(.write(offsetBytes: 0, data: bytes(8192, 9), fua: false))
        h.settle()
        h.members[0].badSectors.insert(48 + 3)
        let r = h.submit(.read(offsetBytes: 0, length: 8192))
        h.settle()
        #expect(h.data(r) == bytes(8192, 9))
        #expect(h.core.counters.correctedReadErrors == 1)
        #expect(h.members[0].badSectors.isEmpty)
        #expect(h.core.degradedCount == 0)
    }

    @Test func writeErrorFailsTheMemberAndTheArrayCarriesOn() throws {
        let h = try Harness.raid5()
        h.failingMembers = [2]
        let w = h.submit(.write(offsetBytes: 0, data: bytes(65536, 5), fua: false))
        h.settle()
        #expect(h.clientResults[w] == .done)
        #expect(h.core.degradedCount == 1)
        #expect(h.core.attribute("degraded") == "1")
        #expect(h.superblock(0).role(ofDevNumber: 2) == .faulty)
        h.failingMembers = []
        let r = h.submit(.read(offsetBytes: 0, length: 65536))
        h.settle()
        #expect(h.data(r) == bytes(65536, 5))
        // A second failure is beyond RAID5's redundancy: the array is broken, requests fail.
        h.failingWrites = [0]
        let w2 = h.submit(.write(offsetBytes: 0, data: bytes(4096, 6), fua: false))
        h.settle()
        #expect(h.clientResults[w2] == .failed(.io))
        #expect(h.core.arrayState == "broken", "roles \(h.core.memberRoles)")
        let after = h.submit(.read(offsetBytes: 0, length: 512))
        #expect(h.clientResults[after] == .failed(.io))
    }

    @Test func bitmapBitIsOnDiskBeforeTheDataWrite() throws {
        let h = try Harness.raid5(bitmap: true)
        h.submit(.write(offsetBytes: 0, data: bytes(4096, 1), fua: false))
        h.settle()
        let bitmapWrite = h.issued.lastIndex { if case .memberWrite(_, _, let o, _, _) = $0 { return o == 16 * 512 } else { return false } }
        let dataWrite = h.issued.firstIndex { if case .memberWrite(_, _, let o, _, _) = $0 { return o >= 48 * 512 } else { return false } }
        #expect(bitmapWrite != nil && dataWrite != nil)
        // Bits on disk: the member's bitmap area has bit 0 set.
        let area = h.members[0].probe()!.bitmapArea!
        #expect(MDBitmapSuperblock.isBitSet(area, bit: 0))
    }
}

@Suite struct SyncActionTests {
    @Test func checkCountsMismatchesAndRepairFixesThem() throws {
        let h = try Harness.raid6()
        h.submit(.write(offsetBytes: 0, data: bytes(Int(h.core.geometry.arraySectors * 512), 2), fua: false))
        h.settle()
        // Corrupt P of row 0 in two 4 KiB blocks and Q of row 1 in one.
        let g = h.core.geometry
        func corrupt(role: Int, row: UInt64, block: UInt64) {
            let m = h.core.memberRoles.firstIndex(of: .active(slot: role))!
            h.members[m].corrupt(offset: Int((48 + row * g.chunkSectors + block * 8) * 512) + 100, length: 1, xor: 0x40)
        }
        corrupt(role: g.stripeRow(0).pDisk, row: 0, block: 0)
        corrupt(role: g.stripeRow(0).pDisk, row: 0, block: 1)
        corrupt(role: g.stripeRow(1).qDisk!, row: 1, block: 0)
        #expect(h.controlResults[h.set("sync_action", "check")] == .done)
        #expect(h.core.syncAction == "check")
        let busy = h.set("sync_action", "repair")
        guard case .failed(.busy)? = h.controlResults[busy] else { Issue.record("repair during check accepted"); return }
        h.settle()
        #expect(h.core.syncAction == "idle")
        #expect(h.core.mismatchCount == 24)
        h.set("sync_action", "repair")
        h.settle()
        h.set("sync_action", "check")
        h.settle()
        #expect(h.core.mismatchCount == 0)
        let bad = h.set("sync_action", "reshape")
        guard case .failed(.invalid)? = h.controlResults[bad] else { Issue.record("reshape accepted"); return }
    }

    @Test func idleAnswersWhenTheSyncIsReapedAndCheckResumesFromThere() throws {
        let h = try Harness.raid5()
        h.set("sync_action", "check")
        for _ in 0..<12 { h.completeOne() }
        let idle = h.set("sync_action", "idle")
        // The answer comes only once the units in flight are done: nothing waits meanwhile.
        #expect(h.controlResults[idle] == nil)
        #expect(h.core.pendingStopRequests == 1)
        h.settle()
        #expect(h.controlResults[idle] == .done)
        #expect(h.core.syncAction == "idle")
        let resumeAt = UInt64(h.core.attribute("sync_min")!)!
        #expect(resumeAt > 0)
        #expect(h.core.syncsStarted == 1 && h.core.syncsReaped == 1)
        h.set("sync_action", "check")
        #expect(h.core.syncCompleted.hasPrefix("\(resumeAt) / "))
        h.settle()
        #expect(h.core.attribute("sync_min") == "0")
    }

    @Test func frozenStopsAndKeepsSyncsFromStarting() throws {
        let h = try Harness.raid5()
        h.set("sync_action", "check")
        h.completeOne()
        let frozen = h.set("sync_action", "frozen")
        h.settle()
        #expect(h.controlResults[frozen] == .done)
        #expect(h.core.syncAction == "frozen")
        #expect(h.controlResults[h.set("sync_action", "idle")] == .done)
        #expect(h.core.syncAction == "idle")
        #expect(h.core.attribute("sync_completed") == "none")
    }

    @Test func spareIsRebuiltAutomatically() throws {
        let h = try Harness.raid5(spares: 1)
        let content = bytes(Int(h.core.geometry.arraySectors * 512), 4)
        h.submit(.write(offsetBytes: 0, data: content, fua: false))
        h.settle()
        #expect(h.controlResults[h.control(.fail(role: 1))] != nil || true)
        h.settle()
        #expect(h.core.memberRoles[4] == .active(slot: 1))
        #expect(h.core.degradedCount == 0)
        #expect(h.core.recoveryOffset(member: 4) == nil)
        // The rebuilt member holds the data: fail another one and read everything.
        h.control(.fail(role: 0))
        h.settle()
        let r = h.submit(.read(offsetBytes: 0, length: content.count))
        h.settle()
        #expect(h.data(r) == content)
    }

    @Test func attributesReadLikeMd() throws {
        let h = try Harness.raid5()
        #expect(h.core.attribute("safe_mode_delay") == "0.200")
        #expect(h.core.attribute("sync_speed_min") == "1000 (system)")
        #expect(h.core.attribute("sync_speed_max") == "200000 (system)")
        #expect(h.controlResults[h.set("sync_speed_max", "5000")] == .done)
        #expect(h.core.attribute("sync_speed_max") == "5000 (local)")
        #expect(h.controlResults[h.set("safe_mode_delay", "0.05")] == .done)
        #expect(h.core.attribute("safe_mode_delay") == "0.050")
        #expect(h.core.attribute("stripe_cache_size") == "256")
        #expect(h.core.attribute("mismatch_cnt") == "0")
        #expect(h.core.attribute("sync_max") == "max")
        let unknown = h.set("no_such_thing", "1")
        guard case .failed(.unknownAttribute)? = h.controlResults[unknown] else { Issue.record("unknown attribute accepted"); return }
    }
}
