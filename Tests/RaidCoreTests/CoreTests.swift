import MDFormat
import RaidSimulation
import Testing

@testable import RaidCore

/// The core stepped by hand (`SteppedArray`, the test double that ships with the simulator),
/// on arrays made the way `swraid create` makes them.
typealias Harness = SteppedArray

extension SteppedArray {
    convenience init(_ shape: SimArrayShape, config: CoreConfig = CoreConfig(), dirty: Bool = false) throws {
        let members = try Simulation.makeMembers(shape)
        if dirty {
            // As after a crash: every superblock says writes may have been in flight.
            for m in members {
                var sb = m.probe()!.superblock
                sb.resyncOffsetSectors = 0
                m.write(offset: 4096, data: sb.withValidChecksum().encode(), fua: true)
            }
        }
        try self.init(members: members, config: config)
    }

    static func raid5(_ n: Int = 4, bitmap: Bool = false, spares: Int = 0, cache: Int = 256, rows: UInt64 = 8) throws -> Harness {
        var config = CoreConfig()
        config.stripeCacheSize = cache
        return try Harness(SimArrayShape(level: .raid5, layout: .leftSymmetric, raidDisks: n, chunkKiB: 8, rows: rows, bitmap: bitmap, spares: spares, stripeCacheSize: cache), config: config)
    }

    static func raid6(_ n: Int = 6) throws -> Harness {
        try Harness(SimArrayShape(level: .raid6, layout: .leftSymmetric, raidDisks: n, chunkKiB: 8, rows: 8, bitmap: false, spares: 0, stripeCacheSize: 256))
    }

    func fireNextTimer(_ timer: TimerID) { fireTimer(timer) }

    /// Reads `expected.count` bytes at `offset` back, then runs a check: the data a test wrote
    /// is there, and parity agrees with it.
    func expectDataAndParity(at offset: UInt64, _ expected: [UInt8], sourceLocation: SourceLocation = #_sourceLocation) {
        let r = submit(.read(offsetBytes: offset, length: expected.count))
        settle()
        #expect(data(r) == expected, "the data read back differs", sourceLocation: sourceLocation)
        set("sync_action", "check")
        settle()
        #expect(core.mismatchCount == 0, "check found parity mismatches", sourceLocation: sourceLocation)
    }
}

func bytes(_ n: Int, _ seed: UInt8) -> [UInt8] { (0..<n).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ Int(seed)) } }
func buf(_ n: Int, _ seed: UInt8) -> IOBuffer { IOBuffer(bytes(n, seed)) }
/// Bytes that do not repeat from one 4 KiB unit to the next (`bytes` repeats every 256), so a
/// block taken from the wrong unit shows.
func noise(_ n: Int, _ seed: UInt8) -> [UInt8] {
    var x = UInt64(seed) &* 0x9E37_79B9_7F4A_7C15 | 1
    return (0..<n).map { _ in
        x ^= x << 13
        x ^= x >> 7
        x ^= x << 17
        return UInt8(truncatingIfNeeded: x)
    }
}

@Suite struct ArrayStateTests {
    @Test func cleanDirtyCleanAsMdDoes() throws {
        let h = try Harness.raid5()
        #expect(h.core.arrayState == .readAuto)
        let events = h.core.events
        let w = h.submit(.write(offsetBytes: 0, data: buf(4096, 1), fua: false))
        // The first write after clean marks the array dirty on disk before any data is written.
        #expect(h.core.arrayState == .writePending)
        let firstDataWrite = h.issued.firstIndex { $0.isWrite && $0.purpose == .data }
        #expect(firstDataWrite == nil)
        // md writes superblocks with a preflush: every member is flushed first, then written.
        let flushes = h.pendingIO.filter { if case .flush = $0.kind { return $0.purpose == .metadataBarrier } else { return false } }
        #expect(flushes.count == 4)
        for _ in 0..<4 { h.completeOne() }
        let superblockWrites = h.pendingIO.filter { if case .write(_, let fua) = $0.kind { return $0.offsetBytes == 4096 && fua && $0.purpose == .superblock } else { return false } }
        #expect(superblockWrites.count == 4)
        h.settle()
        #expect(h.clientResults[w] == .done)
        #expect(h.core.arrayState == .active)
        #expect(h.core.events == events + 1)
        #expect(h.superblock(0).resyncOffsetSectors == 0)
        // No writes for safe_mode_delay: clean again, and md's event roll-back applies.
        h.fireNextTimer(.safeMode)
        h.settle()
        #expect(h.core.arrayState == .clean)
        #expect(h.superblock(2).isClean)
        // md never rolls events back to 1 or below, so the first cycle ends 2 up...
        #expect(h.core.events == events + 2)
        // ...and from then on a pure dirty/clean cycle takes its bump back.
        h.submit(.write(offsetBytes: 0, data: buf(4096, 2), fua: false))
        h.settle()
        #expect(h.core.events == events + 3)
        h.fireNextTimer(.safeMode)
        h.settle()
        #expect(h.core.events == events + 2)
        #expect(h.superblock(1).events == events + 2)
    }

    @Test func activeIdleWhileWritesHoldTheArrayDirty() throws {
        let h = try Harness.raid5()
        h.submit(.write(offsetBytes: 0, data: buf(4096, 1), fua: false))
        h.settle()
        let second = h.submit(.write(offsetBytes: 8192, data: buf(4096, 2), fua: false))
        h.fireNextTimer(.safeMode)
        // Safe mode fired but a write is in flight: md shows active-idle until it can go clean.
        #expect(h.core.arrayState == .activeIdle)
        h.settle()
        #expect(h.clientResults[second] == .done)
        h.fireNextTimer(.safeMode)
        h.settle()
        #expect(h.core.arrayState == .clean)
    }

    @Test func dirtyArrayResyncsThenGoesClean() throws {
        let h = try Harness(SimArrayShape(level: .raid5, layout: .leftSymmetric, raidDisks: 4, chunkKiB: 8, rows: 8, bitmap: false, spares: 0, stripeCacheSize: 64), dirty: true)
        #expect(h.core.arrayState == .readAuto)
        #expect(h.core.attribute("resync_start") == "0")
        // Pending resyncs wait while read-auto; leaving it starts one.
        #expect(h.core.syncAction == .idle)
        h.set("sync_action", "idle")
        #expect(h.core.syncAction == .resync)
        h.settle()
        #expect(h.core.attribute("resync_start") == "none")
        h.fireNextTimer(.safeMode)
        h.settle()
        #expect(h.core.arrayState == .clean)
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
        #expect(h.core.arrayState == .active)
        let clean = h.set("array_state", "clean")
        h.settle()
        #expect(h.controlResults[clean] == .done)
        #expect(h.core.arrayState == .clean)
        let ro = h.set("array_state", "readonly")
        #expect(h.controlResults[ro] == .done)
        let w = h.submit(.write(offsetBytes: 0, data: buf(512, 1), fua: false))
        #expect(h.clientResults[w] == .failed(.readOnly))
    }
}

extension ArrayStateTests {
    /// A `readonly` written while a superblock update is in flight waits for it, as md's
    /// md_set_readonly waits on sb_wait. Made read-only at once, the update queued behind the
    /// one in flight (its own, writing the array clean) was never written and its answer never
    /// came; a stop then waited for it for ever.
    @Test func readonlyWhileASuperblockUpdateIsInFlightWaitsForItAndIsAnswered() throws {
        let h = try Harness.raid5()
        let active = h.set("array_state", "active")
        #expect(h.controlResults[active] == nil, "the dirty superblock is in flight")
        let ro = h.set("array_state", "readonly")
        #expect(h.controlResults[ro] == nil, "readonly waits for the update in flight")
        let second = h.set("array_state", "readonly")
        guard case .failed(.busy)? = h.controlResults[second] else {
            Issue.record("a second readonly while one waits: \(String(describing: h.controlResults[second]))")
            return
        }
        h.settle()
        #expect(h.controlResults[active] == .done)
        #expect(h.controlResults[ro] == .done)
        #expect(h.core.arrayState == .readonly)
        for m in 0..<4 {
            #expect(h.superblock(m).resyncOffsetSectors == UInt64.max, "member \(m) was left dirty on disk")
        }
        let stop = h.control(.stop)
        h.settle()
        #expect(h.controlResults[stop] == .done)
    }

    /// `active` written to a clean array makes it dirty with no write to come: safe mode takes
    /// it back to clean after safe_mode_delay, as after a last write. Before, it stayed dirty
    /// until some write came, and a crash meanwhile cost a resync.
    @Test func activeWrittenToACleanArrayGoesBackToCleanInSafeMode() throws {
        let h = try Harness.raid5()
        let clean = h.set("array_state", "clean")
        h.settle()
        #expect(h.controlResults[clean] == .done && h.core.arrayState == .clean)
        let active = h.set("array_state", "active")
        h.settle()
        #expect(h.controlResults[active] == .done)
        #expect(h.core.arrayState == .active)
        h.fireNextTimer(.safeMode)
        h.settle()
        #expect(h.core.arrayState == .clean, "still \(h.core.arrayState) after safe_mode_delay with no write")
        #expect(h.superblock(0).resyncOffsetSectors == UInt64.max, "clean in memory, dirty on disk")
    }

    /// A `readonly` still waiting when the array stops is answered by the stop.
    @Test func aStopAnswersAReadonlyThatWaits() throws {
        let h = try Harness.raid5()
        let active = h.set("array_state", "active")
        let ro = h.set("array_state", "readonly")
        let stop = h.control(.stop)
        h.settle()
        #expect(h.controlResults[active] == .done)
        #expect(h.controlResults[stop] == .done)
        #expect(h.controlResults[ro] != nil, "the readonly was never answered")
    }
}

@Suite struct RequestTests {
    @Test func writeReadRoundTripAndBadRequests() throws {
        let h = try Harness.raid6()
        let data = bytes(12288, 7)
        h.submit(.write(offsetBytes: 4096, data: IOBuffer(data), fua: false))
        h.settle()
        let r = h.submit(.read(offsetBytes: 4096, length: 12288))
        h.settle()
        #expect(h.data(r) == data)
        let size = h.core.geometry.arraySectors * 512
        for bad: ClientRequest in [.read(offsetBytes: size, length: 512), .read(offsetBytes: 100, length: 512), .write(offsetBytes: size - 512, data: buf(1024, 1), fua: false)] {
            let id = h.submit(bad)
            guard case .failed(.invalid)? = h.clientResults[id] else { Issue.record("\(bad) accepted"); continue }
        }
    }

    @Test func fuaWritesAreDurableAtCompletionAndFlushMakesTheRestDurable() throws {
        let h = try Harness.raid5()
        let size = h.core.geometry.chunkBytes
        h.submit(.write(offsetBytes: 0, data: buf(size, 3), fua: true))
        h.submit(.write(offsetBytes: UInt64(size), data: buf(size, 4), fua: false))
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
        for i in 0..<40 { ids.append(h.submit(.write(offsetBytes: offset(i), data: buf(4096, UInt8(i)), fua: false))) }
        #expect(h.core.parkedForStripe == 40 - 17)
        #expect(h.core.stripeCacheActive == 17)
        #expect(h.core.attribute("stripe_cache_active") == "17")
        // Complete I/O oldest first and record the order in which the requests finish: a parked
        // request gets a stripe only after every request parked before it (md's strict FIFO).
        var finished: [RequestID] = []
        while !h.pendingIO.isEmpty {
            h.completeOne()
            for id in ids where h.clientResults[id] != nil && !finished.contains(id) { finished.append(id) }
        }
        #expect(ids.allSatisfy { h.clientResults[$0] == .done })
        #expect(finished == ids, "requests finished out of arrival order: \(finished)")
        // Each stripe's first data write went out in arrival order too.
        let firstWriteOrder = h.issued.filter { $0.isWrite && $0.purpose == .data }.map(\.offsetBytes)
        var seen: [UInt64] = []
        for o in firstWriteOrder where !seen.contains(o) { seen.append(o) }
        #expect(seen == seen.sorted() && seen.count == 40)
        #expect(h.core.parkedForStripe == 0)
        for i in [0, 17, 39] {
            let r = h.submit(.read(offsetBytes: offset(i), length: 4096))
            h.settle()
            #expect(h.data(r) == bytes(4096, UInt8(i)))
        }
        let bad = h.set("stripe_cache_size", "16")
        guard case .failed(.invalid)? = h.controlResults[bad] else { Issue.record("16 accepted"); return }
        #expect(h.controlResult(h.set("stripe_cache_size", "512")) == .done)
        #expect(h.core.attribute("stripe_cache_size") == "512")
    }

    /// Writes 8 KiB, makes a sector of member 0 under it unreadable, reads it back (the core
    /// rebuilds, rewrites and verifies the block) and checks the data and the correction.
    func readThroughABadSectorOfMemberZero(_ h: Harness, sourceLocation: SourceLocation = #_sourceLocation) {
        h.submit(.write(offsetBytes: 0, data: buf(8192, 9), fua: false))
        h.settle()
        h.members[0].badSectors.insert(48 + 3)
        let r = h.submit(.read(offsetBytes: 0, length: 8192))
        h.settle()
        #expect(h.data(r) == bytes(8192, 9), sourceLocation: sourceLocation)
        #expect(h.core.counters.correctedReadErrors == 1, sourceLocation: sourceLocation)
    }

    @Test func readErrorIsRebuiltRewrittenAndVerified() throws {
        let h = try Harness.raid5()
        readThroughABadSectorOfMemberZero(h)
        #expect(h.members[0].badSectors.isEmpty)
        #expect(h.core.degradedCount == 0)
    }

    /// A member whose superblock says `cnt_corrected_read` 2^32-1 (md's counter wraps; a
    /// crafted or very old member may say anything) has its next corrected read counted, not
    /// a trap. Found by review.
    @Test func aCorrectedReadCounterAtItsLargestValueWraps() throws {
        let members = try Simulation.makeMembers(
            SimArrayShape(level: .raid5, layout: .leftSymmetric, raidDisks: 4, chunkKiB: 8, rows: 8, bitmap: false, spares: 0, stripeCacheSize: 256))
        var sb = members[0].probe()!.superblock
        sb.cntCorrectedRead = UInt32.max
        members[0].write(offset: 4096, data: sb.withValidChecksum().encode(), fua: true)
        let h = try Harness(members: members)
        readThroughABadSectorOfMemberZero(h)
        #expect(h.core.superblockTemplate(member: MemberIndex(0)).cntCorrectedRead == 0)
    }

    /// A crafted events counter near its largest value is refused at assembly with a message,
    /// instead of trapping the core at its first superblock update. Found by review.
    @Test func anEventsCounterNearItsLargestValueIsRefusedAtAssembly() throws {
        let members = try Simulation.makeMembers(
            SimArrayShape(level: .raid5, layout: .leftSymmetric, raidDisks: 4, chunkKiB: 8, rows: 8, bitmap: false, spares: 0, stripeCacheSize: 256))
        for m in members {
            var sb = m.probe()!.superblock
            sb.events = UInt64.max
            m.write(offset: 4096, data: sb.withValidChecksum().encode(), fua: true)
        }
        #expect(throws: AssemblyError.eventsExhausted(UInt64.max)) {
            _ = try CoreAssembly(members: members.compactMap { $0.probe() })
        }
        for m in members {
            var sb = m.probe()!.superblock
            sb.events = UInt64.max - (1 << 32)
            m.write(offset: 4096, data: sb.withValidChecksum().encode(), fua: true)
        }
        let h = try Harness(members: members)
        let w = h.submit(.write(offsetBytes: 0, data: buf(4096, 3), fua: false))
        h.settle()
        #expect(h.clientResults[w] == .done)
    }

    /// md's chunk-aligned reads: a healthy read costs one member I/O per chunk it touches (not
    /// one per stripe unit), straight into the client's buffer, and a run that starts or ends
    /// inside a chunk reads only what it needs.
    @Test func healthyReadsTakeOneMemberIOPerChunk() throws {
        let h = try Harness.raid5()  // 8 KiB chunks: two 4 KiB stripe units per chunk
        let chunk = h.core.geometry.chunkBytes
        let data = bytes(6 * chunk, 5)
        h.submit(.write(offsetBytes: 0, data: IOBuffer(data), fua: false))
        h.settle()
        func reads(_ offset: Int, _ length: Int) -> [Int] {
            let before = h.issued.count
            let r = h.submit(.read(offsetBytes: UInt64(offset), length: length))
            h.settle()
            #expect(h.data(r) == Array(data[offset..<(offset + length)]))
            return h.issued[before...].filter { if case .read = $0.kind { return true } else { return false } }.map(\.byteCount)
        }
        #expect(reads(0, 6 * chunk) == Array(repeating: chunk, count: 6))
        #expect(reads(4096, 2 * chunk) == [4096, chunk, 4096])
        #expect(reads(chunk + 512, 1024) == [1024])
    }

    /// A read over a stripe that is busy (a write to it is reading) reads the rest straight
    /// from the members, each chunk's run cut where the stripe's unit is, and that unit through
    /// the stripe, after the write it queued behind: the client sees the write's data there and
    /// the old data everywhere else.
    @Test func aReadOverABusyStripeReadsAroundItAndTheUnitThroughTheStripe() throws {
        let h = try Harness.raid5()  // 8 KiB chunks: two 4 KiB stripe units per chunk
        let chunk = h.core.geometry.chunkBytes
        let old = noise(4 * chunk, 7)
        h.submit(.write(offsetBytes: 0, data: IOBuffer(old), fua: false))
        h.settle()
        // The second unit of the array's second chunk: its stripe reads for the write.
        let busyAt = chunk + 4096
        let new = noise(4096, 99)
        let w = h.submit(.write(offsetBytes: UInt64(busyAt), data: IOBuffer(new), fua: false))
        #expect(h.core.stripeCacheActive == 1)
        let before = h.issued.count
        let r = h.submit(.read(offsetBytes: 512, length: 3 * chunk - 1024))
        let reads = h.issued[before...].filter { if case .read = $0.kind { return true } else { return false } }.map(\.byteCount)
        // The busy stripe is the row's second unit on every member: each chunk's first unit
        // is read directly (chunk 0's from its second sector), and the three second units wait
        // in the stripe, which the write's reconstruct-write has filled with what they need.
        #expect(reads == [4096 - 512, 4096, 4096], "\(reads)")
        h.settle()
        #expect(h.clientResult(w) == .done)
        var expected = old
        expected.replaceSubrange(busyAt..<(busyAt + 4096), with: new)
        let readBack = h.data(r) == Array(expected[512..<(3 * chunk - 512)])
        #expect(readBack, "the read did not give the write's data in the busy unit and the old data around it")
    }

    /// The engine completes a read the page cache holds while the driver is still dispatching
    /// (from `actionsDispatched`). The driver dispatches what such a completion causes before it
    /// returns, in rounds, never by recursion: here a 4 KiB write's pre-reads complete at once
    /// and its data and parity writes go out within the same `submit`; a chain of parked writes
    /// to one stripe (each waits for the one before) goes round after round.
    @Test func readsCompletedWhileDispatchingAreDispatchedInRoundsNotByRecursion() throws {
        let h = try Harness.raid5(cache: 17)
        h.completeReadsAtOnce = true
        let r = h.submit(.read(offsetBytes: 8192, length: 4096))
        #expect(h.data(r) == [UInt8](repeating: 0, count: 4096), "a read served at once answers within its submit")
        // The first write marks the array dirty (superblock writes first); the ones after it
        // need only their own I/O.
        h.submit(.write(offsetBytes: 65536, data: buf(4096, 9), fua: false))
        h.settle()
        let first = h.submit(.write(offsetBytes: 0, data: buf(4096, 20), fua: false))
        #expect(h.pendingIO.filter(\.isWrite).count == 2, "the pre-reads completed at once, and the data and parity writes they allow did not go out")
        h.settle()
        #expect(h.clientResult(first) == .done)
        let writes = (0..<24).map { i in h.submit(.write(offsetBytes: UInt64(i % 3) * 4096, data: buf(4096, UInt8(i)), fua: false)) }
        h.settle()
        for w in writes { #expect(h.clientResult(w) == .done) }
        #expect(h.deepestActionsDispatchedNesting == 1, "actionsDispatched nested \(h.deepestActionsDispatchedNesting) deep")
        h.expectDataAndParity(at: 0, bytes(4096, 21) + bytes(4096, 22) + bytes(4096, 23))
    }

    /// A read given its destination (an NBD reply's buffer) lands there and answers with it,
    /// healthy (member reads straight into it), degraded (rebuilt through stripes, then copied
    /// into it) and around a read error; the bytes around the window are not touched. A
    /// destination of the wrong size is refused and left alone.
    @Test func aReadLandsInTheBufferItIsGivenAndNowhereElse() throws {
        let h = try Harness.raid5()
        let chunk = h.core.geometry.chunkBytes
        let data = noise(3 * chunk, 3)
        h.submit(.write(offsetBytes: 0, data: IOBuffer(data), fua: false))
        h.settle()
        let length = 2 * chunk + 4096
        let margin = 512
        func readInto(_ what: String, sourceLocation: SourceLocation = #_sourceLocation) {
            let whole = IOBuffer([UInt8](repeating: 0xEE, count: length + 2 * margin))
            let window = whole.slice(margin..<(margin + length))
            let r = h.submit(.read(offsetBytes: 2048, length: length, into: window))
            h.settle()
            guard case .data(let got)? = h.clientResults[r] else {
                Issue.record("\(what): \(String(describing: h.clientResults[r]))", sourceLocation: sourceLocation)
                return
            }
            #expect(got.storage === whole.storage && got.offset == margin && got.count == length, "\(what): answered from other memory", sourceLocation: sourceLocation)
            #expect(window == IOBuffer(Array(data[2048..<(2048 + length)])), "\(what): not the data", sourceLocation: sourceLocation)
            let untouched = IOBuffer([UInt8](repeating: 0xEE, count: margin))
            #expect(whole.slice(0..<margin) == untouched && whole.slice((margin + length)..<whole.count) == untouched, "\(what): wrote outside its window", sourceLocation: sourceLocation)
        }
        readInto("healthy")
        h.members[1].badSectors.insert(48 + 1)
        readInto("with a read error")
        #expect(h.core.counters.correctedReadErrors == 1)
        h.control(.fail(MemberIndex(0)))
        h.settle()
        #expect(h.core.degradedCount == 1)
        readInto("degraded")
        let small = IOBuffer([UInt8](repeating: 0xEE, count: 4096))
        let bad = h.submit(.read(offsetBytes: 0, length: 8192, into: small))
        guard case .failed(.invalid)? = h.clientResults[bad] else { Issue.record("a destination of the wrong size was taken"); return }
        #expect(small == IOBuffer([UInt8](repeating: 0xEE, count: 4096)))
    }

    /// md's raid5_end_read_request: a read error with no redundancy left cannot be repaired, so
    /// the member is failed and the array is broken; nothing is served around the hole.
    @Test func readErrorWithNoRedundancyLeftFailsTheMemberAndBreaksTheArray() throws {
        let h = try Harness.raid5()
        let chunk = h.core.geometry.chunkBytes
        h.submit(.write(offsetBytes: 0, data: buf(3 * chunk, 4), fua: false))
        h.settle()
        h.control(.fail(MemberIndex(3)))
        h.settle()
        #expect(h.core.degradedCount == 1)
        // A write to row 0 in degraded mode reads every surviving block; member 0's fails.
        h.members[0].badSectors.insert(48)
        let w = h.submit(.write(offsetBytes: 512, data: buf(512, 9), fua: false))
        h.settle()
        #expect(h.clientResults[w] == .failed(.io))
        #expect(h.core.isBroken, "member 0 is failed: its block could not be rebuilt")
        #expect(h.superblock(1).role(ofDevNumber: 0) == .faulty)
        // A read of a block on a healthy member is refused too.
        let r = h.submit(.read(offsetBytes: UInt64(chunk), length: 4096))
        h.settle()
        #expect(h.clientResults[r] == .failed(.io))
    }

    @Test func writeErrorFailsTheMemberAndTheArrayCarriesOn() throws {
        let h = try Harness.raid5()
        h.failingMembers = [2]
        let w = h.submit(.write(offsetBytes: 0, data: buf(65536, 5), fua: false))
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
        let w2 = h.submit(.write(offsetBytes: 0, data: buf(4096, 6), fua: false))
        h.settle()
        #expect(h.clientResults[w2] == .failed(.io))
        #expect(h.core.arrayState == .broken, "roles \(h.core.memberRoles)")
        let after = h.submit(.read(offsetBytes: 0, length: 512))
        #expect(h.clientResults[after] == .failed(.io))
    }

    /// md allows bitmap chunks down to 512 bytes, smaller than a 4 KiB stripe unit. After an
    /// unclean stop with only the unit's second region dirty, the bitmap-guided resync looked
    /// at the unit's first region alone, skipped to "the next dirty region", found it in the
    /// same unit and trapped (`a bitmap-guided resync must move forward`). Found by review.
    @Test func aBitmapWithChunksSmallerThanAStripeUnitResyncsTheUnitsTheyTouch() throws {
        let members = try Simulation.makeMembers(
            SimArrayShape(level: .raid5, layout: .leftSymmetric, raidDisks: 4, chunkKiB: 8, rows: 8, bitmap: true, spares: 0, stripeCacheSize: 64))
        let parityMember = try RaidGeometry(level: .raid5, layout: .leftSymmetric, raidDisks: 4, chunkSectors: 16, memberDataSectors: 128).stripeRow(0).pDisk
        for m in members {
            var sb = m.probe()!.superblock
            sb.resyncOffsetSectors = 0
            m.write(offset: 4096, data: sb.withValidChecksum().encode(), fua: true)
            let at = Int(Int64(sb.superOffsetSectors) + Int64(sb.bitmapOffsetSectors)) * 512
            var header = try MDBitmapSuperblock(decoding: Array(m.current[at..<(at + MDBitmapSuperblock.headerBytes)]))
            header.chunkSizeBytes = 512
            var area = header.encode()
            area += [UInt8](repeating: 0, count: 512)
            area[MDBitmapSuperblock.headerBytes] = 0b10  // region 1 only: member sectors 1..<2
            m.write(offset: at, data: area, fua: true)
        }
        // Parity of region 1 stale, as the unclean stop may have left it.
        let sb = members[parityMember].probe()!.superblock
        members[parityMember].corrupt(offset: Int(sb.dataOffsetSectors + 1) * 512 + 7, length: 1, xor: 0x5a)
        let h = try Harness(members: members)
        h.settle()
        #expect(h.core.syncAction == .idle, "\(h.core.syncAction)")
        h.set("sync_action", "check")
        h.settle()
        #expect(h.core.mismatchCount == 0, "the resync left region 1's parity stale")
    }

    /// A spare whose own superblock puts the bitmap before the start of the device (only the
    /// freshest member's bitmap is read at assembly) trapped the core at the first bitmap
    /// write; one putting it over its data would have had its data overwritten. Such a member
    /// fails instead, and the array goes on. Found by review.
    @Test func aMemberWithAMisplacedBitmapFailsInsteadOfTakingIt() throws {
        let members = try Simulation.makeMembers(
            SimArrayShape(level: .raid5, layout: .leftSymmetric, raidDisks: 4, chunkKiB: 8, rows: 8, bitmap: true, spares: 2, stripeCacheSize: 64))
        var before = members[4].probe()!.superblock
        before.bitmapOffsetRaw = UInt32(bitPattern: -16)  // super_offset 8 - 16: sector -8
        members[4].write(offset: 4096, data: before.withValidChecksum().encode(), fua: true)
        var over = members[5].probe()!.superblock
        over.bitmapOffsetRaw = UInt32(over.dataOffsetSectors - over.superOffsetSectors)  // on the data
        members[5].write(offset: 4096, data: over.withValidChecksum().encode(), fua: true)
        let dataBefore = Array(members[5].current[Int(over.dataOffsetSectors * 512)..<Int(over.dataOffsetSectors * 512 + 4096)])
        let h = try Harness(members: members)
        let w = h.submit(.write(offsetBytes: 0, data: buf(4096, 5), fua: false))
        h.settle()
        #expect(h.clientResults[w] == .done)
        #expect(h.core.role(of: MemberIndex(4)) == .faulty && h.core.role(of: MemberIndex(5)) == .faulty)
        #expect(h.core.degradedCount == 0 && !h.core.isBroken)
        #expect(Array(h.members[5].current[Int(over.dataOffsetSectors * 512)..<Int(over.dataOffsetSectors * 512 + 4096)]) == dataBefore)
        h.expectDataAndParity(at: 0, bytes(4096, 5))
    }

    @Test func bitmapBitIsOnDiskBeforeTheDataWrite() throws {
        let h = try Harness.raid5(bitmap: true)
        // At the moment each data or parity write is issued, every member's durable bitmap area
        // (what survives a power loss) must already have the bit of its region set.
        var writesSeen = 0
        var bitDurableAtEachWrite: [Bool] = []
        h.onIssue = { io in
            guard io.isWrite, io.purpose == .data || io.purpose == .parity else { return }
            writesSeen += 1
            let durableEverywhere = h.members.prefix(4).allSatisfy { m in
                let sb = try! MDSuperblock1(decoding: Array(m.durable[4096..<8192]))
                let start = Int(Int64(sb.superOffsetSectors) + Int64(sb.bitmapOffsetSectors)) * 512
                return MDBitmapSuperblock.isBitSet(Array(m.durable[start..<(start + 4096)]), bit: 0)
            }
            bitDurableAtEachWrite.append(durableEverywhere)
        }
        let w = h.submit(.write(offsetBytes: 0, data: buf(4096, 1), fua: false))
        // Nothing of the write goes out before the bitmap: pre-reads may, writes may not.
        #expect(h.pendingIO.allSatisfy { !$0.isWrite || $0.purpose.isMetadata })
        h.settle()
        #expect(h.clientResults[w] == .done)
        #expect(writesSeen >= 2, "a data and a parity write")
        #expect(bitDurableAtEachWrite.allSatisfy { $0 }, "\(bitDurableAtEachWrite)")
        // And in issue order: the bitmap write that set the bit completed before the first data
        // write was issued.
        let bitmapDone = h.history.firstIndex { $0.completed && $0.io.purpose == .bitmap && $0.io.isWrite }
        let firstData = h.history.firstIndex { !$0.completed && $0.io.purpose == .data && $0.io.isWrite }
        #expect(bitmapDone != nil && firstData != nil && bitmapDone! < firstData!)
    }
}

@Suite struct SyncActionTests {
    @Test func checkCountsMismatchesAndRepairFixesThem() throws {
        let h = try Harness.raid6()
        h.submit(.write(offsetBytes: 0, data: buf(Int(h.core.geometry.arraySectors * 512), 2), fua: false))
        h.settle()
        // Corrupt P of row 0 in two 4 KiB blocks and Q of row 1 in one.
        let g = h.core.geometry
        func corrupt(role: Int, row: UInt64, block: UInt64) {
            let m = h.core.member(inSlot: Role(role))!.rawValue
            h.members[m].corrupt(offset: Int((48 + row * g.chunkSectors + block * 8) * 512) + 100, length: 1, xor: 0x40)
        }
        corrupt(role: g.stripeRow(0).pDisk, row: 0, block: 0)
        corrupt(role: g.stripeRow(0).pDisk, row: 0, block: 1)
        corrupt(role: g.stripeRow(1).qDisk!, row: 1, block: 0)
        #expect(h.controlResult(h.set("sync_action", "check")) == .done)
        #expect(h.core.syncAction == .check)
        let busy = h.set("sync_action", "repair")
        guard case .failed(.busy)? = h.controlResults[busy] else { Issue.record("repair during check accepted"); return }
        h.settle()
        #expect(h.core.syncAction == .idle)
        #expect(h.core.mismatchCount == 24)
        h.set("sync_action", "repair")
        h.settle()
        h.set("sync_action", "check")
        h.settle()
        #expect(h.core.mismatchCount == 0)
        let bad = h.set("sync_action", "reshape")
        guard case .failed(.invalid)? = h.controlResults[bad] else { Issue.record("reshape accepted"); return }
    }

    /// A window wider than the stripe cache takes the cache and no more: a client write that
    /// arrives during the check gets the first stripe a unit gives back, rather than queueing
    /// behind the rest of the window.
    @Test func theSyncWindowTakesAtMostTheStripeCache() throws {
        var config = CoreConfig()
        config.stripeCacheSize = 17
        config.syncWindowStripes = 256
        let h = try Harness(SimArrayShape(level: .raid5, layout: .leftSymmetric, raidDisks: 4, chunkKiB: 8, rows: 32, bitmap: false,
                                          spares: 0, stripeCacheSize: 17), config: config)
        h.set("sync_action", "check")
        #expect(h.core.stripeCacheActive == 17)
        #expect(h.core.parkedForStripe == 0, "sync units parked beyond the cache")
        let syncReadsOfTheWindow = h.issued.filter { $0.purpose == .syncRead }.count
        #expect(syncReadsOfTheWindow == 17 * 4)
        // Row 20's first unit: far past the window.
        let w = h.submit(.write(offsetBytes: 20 * UInt64(h.core.geometry.rowDataSectors * 512), data: buf(4096, 7), fua: false))
        #expect(h.core.parkedForStripe == 1)
        while h.issued.allSatisfy({ $0.purpose != .data }) && !h.pendingIO.isEmpty { h.completeOne() }
        #expect(h.issued.prefix { $0.purpose != .data }.filter { $0.purpose == .syncRead }.count == syncReadsOfTheWindow,
                "the client's write waited for sync units that came after it")
        h.settle()
        #expect(h.clientResults[w] == .done)
        #expect(h.core.syncAction == .idle && h.core.mismatchCount == 0)
    }

    /// `sync_speed_max` holds with the engine's window of 256 stripes: over 9 simulated seconds
    /// (three of the core's rate windows) a check limited to 256 KiB/s reads at most a tenth of a
    /// second's worth more than 256 KiB a second per member. Members answer at once, so only the
    /// limit holds it back.
    @Test func syncSpeedMaxHoldsWithAWindowOfTheWholeCache() throws {
        var config = CoreConfig()
        config.syncWindowStripes = 256
        let h = try Harness(SimArrayShape(level: .raid5, layout: .leftSymmetric, raidDisks: 4, chunkKiB: 64, rows: 256, bitmap: false,
                                          spares: 0, stripeCacheSize: 256), config: config)
        #expect(h.controlResult(h.set("sync_speed_max", "256")) == .done)
        h.set("sync_action", "check")
        let limitKiBps: UInt64 = 256
        let elapsedNanos: UInt64 = 9_000_000_000
        for _ in 0..<100_000 where h.now < elapsedNanos && h.core.syncAction == .check {
            h.settle()
            h.fireTimer(.syncThrottle)
        }
        #expect(h.now >= elapsedNanos, "the check stopped moving before 9 s")
        #expect(h.core.syncAction == .check, "the check ran to its end: nothing held it back")
        let checkedKiB = UInt64(h.core.counters.syncUnitsDone) * 4
        #expect(checkedKiB >= limitKiBps * 8, "the check ran well under its limit: \(checkedKiB) KiB in 9 s")
        #expect(checkedKiB <= limitKiBps * 9 + 3 * (limitKiBps / 10) + 4, "\(checkedKiB) KiB in 9 s at 256 KiB/s")
    }

    /// A check paused at `sync_max` for a long while, at md's largest speed limit, goes on when
    /// `sync_max` is raised: the allowance (limit times the time since the rate window began)
    /// passed 64 bits and trapped the core (found by review; a crash on a control write).
    @Test func aCheckPausedForLongAtTheLargestSpeedLimitGoesOn() throws {
        let h = try Harness.raid5()
        #expect(h.controlResult(h.set("sync_speed_max", "4294967295")) == .done)
        #expect(h.controlResult(h.set("sync_max", "16")) == .done)
        h.set("sync_action", "check")
        h.settle()
        #expect(h.core.syncAction == .check && h.core.syncCompleted.hasPrefix("16 / "), "\(h.core.syncCompleted)")
        h.now += 3600 * 1_000_000_000
        #expect(h.controlResult(h.set("sync_max", "max")) == .done)
        h.settle()
        #expect(h.core.syncAction == .idle && h.core.mismatchCount == 0)
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
        #expect(h.core.syncAction == .idle)
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
        #expect(h.core.syncAction == .frozen)
        #expect(h.controlResult(h.set("sync_action", "idle")) == .done)
        #expect(h.core.syncAction == .idle)
        #expect(h.core.attribute("sync_completed") == "none")
    }

    @Test func spareIsRebuiltAutomatically() throws {
        let h = try Harness.raid5(spares: 1)
        let content = bytes(Int(h.core.geometry.arraySectors * 512), 4)
        h.submit(.write(offsetBytes: 0, data: IOBuffer(content), fua: false))
        h.settle()
        let fail = h.control(.fail(MemberIndex(1)))
        // Answered once the superblocks record the failure, not before.
        #expect(h.controlResults[fail] == nil)
        #expect(h.core.memberRoles[1] == .faulty)
        h.settle()
        #expect(h.controlResults[fail] == .done)
        #expect(h.superblock(0).role(ofDevNumber: 1) == .faulty)
        #expect(h.core.memberRoles[4] == .active(slot: Role(1)))
        #expect(h.core.degradedCount == 0)
        #expect(h.core.recoveryOffset(member: MemberIndex(4)) == nil)
        #expect(h.superblock(4).role == .active(slot: 1))
        // The rebuilt member holds the data: fail another one and read everything.
        h.control(.fail(MemberIndex(0)))
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
        #expect(h.controlResult(h.set("sync_speed_max", "5000")) == .done)
        #expect(h.core.attribute("sync_speed_max") == "5000 (local)")
        #expect(h.controlResult(h.set("safe_mode_delay", "0.05")) == .done)
        #expect(h.core.attribute("safe_mode_delay") == "0.050")
        #expect(h.core.attribute("stripe_cache_size") == "256")
        #expect(h.core.attribute("mismatch_cnt") == "0")
        #expect(h.core.attribute("sync_max") == "max")
        let unknown = h.set("no_such_thing", "1")
        guard case .failed(.unknownAttribute)? = h.controlResults[unknown] else { Issue.record("unknown attribute accepted"); return }
    }
}

/// md's full-stripe write, batched (`stripe_can_batch`) and without copying (`skip_copy`).
@Suite struct FullStripeBatchTests {
    /// Member I/O for data and parity issued since `before`.
    func dataAndParityIO(_ h: Harness, since before: Int) -> [MemberIORequest] {
        h.issued[before...].filter { $0.purpose == .data || $0.purpose == .parity }
    }

    @Test func aFullStripeWriteReadsNothingAndWritesEachMemberOnce() throws {
        for h in [try Harness.raid5(), try Harness.raid6()] {
            let g = h.core.geometry
            let row = g.chunkBytes * g.dataDisks
            let before = h.issued.count
            let data = bytes(2 * row, 7)
            let w = h.submit(.write(offsetBytes: UInt64(row), data: IOBuffer(data), fua: false))
            h.settle()
            #expect(h.clientResults[w] == .done)
            let io = dataAndParityIO(h, since: before)
            #expect(io.allSatisfy { $0.isWrite }, "a full-stripe write read \(io.filter { !$0.isWrite }.count) blocks")
            #expect(io.map(\.byteCount) == Array(repeating: g.chunkBytes, count: 2 * g.raidDisks))
            #expect(h.core.counters.fullStripeBatches == 2)
            #expect(h.core.stripeCacheActive == 0)
            h.expectDataAndParity(at: UInt64(row), data)
        }
    }

    /// A write that starts inside a row: the units it covers on every member are batched, the rest
    /// goes through stripes, and together they leave data and parity right.
    @Test func aWriteStartingInsideARowBatchesOnlyTheUnitsItCoversOnEveryMember() throws {
        let h = try Harness.raid5()  // 8 KiB chunks: two 4 KiB units per chunk, rows of 24 KiB
        let row = h.core.geometry.chunkBytes * 3
        let old = bytes(3 * row, 1)
        h.submit(.write(offsetBytes: 0, data: IOBuffer(old), fua: false))
        h.settle()
        #expect(h.core.counters.fullStripeBatches == 3)
        let before = h.issued.count
        let data = bytes(2 * row - 4096, 9)
        h.submit(.write(offsetBytes: 4096, data: IOBuffer(data), fua: false))
        h.settle()
        // Row 0: unit 1 batched (unit 0 of data index 0 is not written); row 1 whole.
        #expect(h.core.counters.fullStripeBatches == 5)
        // Batches: four writes of one unit (row 0) and four of two (row 1). The stripe of row 0's
        // unit 0 reads data index 0's block (reconstruct-write) and writes the other two and P.
        let io = dataAndParityIO(h, since: before)
        #expect(io.filter(\.isWrite).map(\.byteCount).sorted() == Array(repeating: 4096, count: 7) + Array(repeating: 8192, count: 4))
        #expect(io.filter { !$0.isWrite }.map(\.byteCount) == [4096])
        h.expectDataAndParity(at: 0, Array(old[0..<4096]) + data + Array(old[(2 * row)...]))
    }

    /// A batch owns its units until its writes land: a later write to one of them waits for a
    /// stripe (as for a full cache) and lands after it.
    @Test func aStripeForAUnitOfABatchInFlightWaitsForIt() throws {
        let h = try Harness.raid5()
        let row = h.core.geometry.chunkBytes * 3
        h.submit(.write(offsetBytes: UInt64(3 * row), data: buf(512, 1), fua: false))
        h.settle()  // the array is dirty on disk: the next writes go straight to their members
        let first = bytes(row, 2)
        let w1 = h.submit(.write(offsetBytes: 0, data: IOBuffer(first), fua: false))
        #expect(h.core.counters.fullStripeBatches == 1)
        let pendingBefore = h.pendingIO.count
        let w2 = h.submit(.write(offsetBytes: 512, data: buf(512, 3), fua: false))
        #expect(h.core.parkedForStripe == 1, "the write to a unit of the batch in flight did not wait")
        #expect(h.core.stripeCacheActive == 0)
        #expect(h.pendingIO.count == pendingBefore)
        h.settle()
        #expect(h.clientResults[w1] == .done && h.clientResults[w2] == .done)
        let r = h.submit(.read(offsetBytes: 0, length: row))
        h.settle()
        #expect(h.data(r) == Array(first[0..<512]) + bytes(512, 3) + Array(first[1024...]))
    }
}

/// Rows of a sequential write stream gathered across requests (`RowGather`).
@Suite struct WriteGatherTests {
    /// A stream of half-row writes with others in flight: each row, completed by the next
    /// write, is written as one full-stripe batch with no read, from two requests' buffers.
    @Test func aStreamOfHalfRowWritesIsWrittenAsFullRowsWithoutReads() throws {
        for h in [try Harness.raid5(), try Harness.raid6()] {
            let g = h.core.geometry
            let row = g.chunkBytes * g.dataDisks
            h.submit(.write(offsetBytes: UInt64(6 * row), data: buf(512, 1), fua: false))
            h.settle()  // the array is dirty on disk
            let before = h.issued.count
            // Half rows of whole units: 12 KiB of a 24 KiB row (RAID5 of 4), 16 of 32 (RAID6 of 6).
            let half = row / 2
            var written: [UInt8] = []
            var ids: [RequestID] = []
            for i in 0..<8 {
                let data = noise(half, UInt8(10 + i))
                written += data
                ids.append(h.submit(.write(offsetBytes: UInt64(i * half), data: IOBuffer(data), fua: false)))
            }
            h.settle()
            // The first write had nothing else in flight, so its row went to the stripes; the
            // next three rows were gathered.
            #expect(h.core.counters.gatheredRows == 3, "gathered \(h.core.counters.gatheredRows) rows")
            let dataStart = h.superblock(0).dataOffsetSectors * 512  // the same on every member
            let rows1to3 = h.issued[before...].filter { ($0.purpose == .data || $0.purpose == .parity) && $0.offsetBytes >= dataStart + UInt64(g.chunkBytes) }
            #expect(rows1to3.allSatisfy { $0.isWrite }, "gathered rows read \(rows1to3.filter { !$0.isWrite }.count) blocks")
            #expect(ids.allSatisfy { h.clientResults[$0] == .done })
            h.expectDataAndParity(at: 0, written)
        }
    }
}

extension Harness {
    /// A read of row 7 whose member I/O stays pending (see `settle(keeping:)`): other work in
    /// flight, as a busy array has, so that a held row is not released as idle.
    func keepBusy() -> Set<MemberIOID> {
        let before = Set(pendingIO.map(\.id))
        let row = core.geometry.chunkBytes * core.geometry.dataDisks
        submit(.read(offsetBytes: UInt64(7 * row), length: 4096))
        return Set(pendingIO.map(\.id)).subtracting(before)
    }

    /// Completes member I/O, oldest first, until only `kept` is left.
    func settle(keeping kept: Set<MemberIOID>) {
        var n = 0
        while let i = pendingIO.firstIndex(where: { !kept.contains($0.id) }), n < 1_000_000 {
            completeOne(at: i)
            n += 1
        }
    }
}

extension WriteGatherTests {
    /// On RAID5 of 4 with rows of 24 KiB: half a row at row 0 (nothing recent to be near: it
    /// goes to the stripes), then, with a read in flight (`busy`), `data`, the first half of
    /// row 2, near it: held.
    func holdHalfOfRowTwo(_ data: (Int) -> [UInt8]) throws -> (h: Harness, row: Int, held: RequestID, busy: Set<MemberIOID>) {
        let h = try Harness.raid5()
        let row = h.core.geometry.chunkBytes * h.core.geometry.dataDisks
        h.submit(.write(offsetBytes: UInt64(6 * row), data: buf(512, 1), fua: false))
        h.settle()
        h.submit(.write(offsetBytes: 0, data: buf(row / 2, 2), fua: false))
        h.settle()
        let busy = h.keepBusy()
        #expect(!busy.isEmpty, "the read issued no member I/O")
        let held = h.submit(.write(offsetBytes: UInt64(2 * row), data: IOBuffer(data(row)), fua: false))
        h.settle(keeping: busy)
        #expect(h.clientResults[held] == nil, "the write was not held")
        return (h, row, held, busy)
    }

    /// The rest of the row never comes: at the deadline the held units go to the stripes and
    /// the write completes, with data and parity right.
    @Test func aRowLeftIncompleteGoesToTheStripesAtTheDeadline() throws {
        let (h, row, held, busy) = try holdHalfOfRowTwo { noise($0 / 2, 5) }
        #expect(Set(h.pendingIO.map(\.id)) == busy)
        #expect(h.timers[.writeGather]?.at == h.now + CoreConfig().writeGatherDelayNanos, "no deadline armed for the held row")
        h.fireTimer(.writeGather)
        h.settle()
        #expect(h.clientResults[held] == .done)
        #expect(h.core.counters.gathersReleased == 1 && h.core.counters.gatheredRows == 0)
        #expect(h.core.counters.gathersReleasedIdle == 0)
        h.expectDataAndParity(at: UInt64(2 * row), noise(row / 2, 5))
    }

    /// A later write over held units sends them to the stripes first, so they land in order:
    /// the later data wins.
    @Test func aLaterWriteOverHeldUnitsLandsAfterThem() throws {
        let (h, row, held, _) = try holdHalfOfRowTwo { noise($0 / 2, 5) }
        let first = noise(row / 2, 5)
        let second = noise(4096, 9)
        let later = h.submit(.write(offsetBytes: UInt64(2 * row + 4096), data: IOBuffer(second), fua: false))
        #expect(h.core.counters.gathersReleased == 1, "the overlapping write did not release the held row")
        h.settle()
        #expect(h.clientResults[held] == .done && h.clientResults[later] == .done)
        h.expectDataAndParity(at: UInt64(2 * row), Array(first[0..<4096]) + second + Array(first[8192...]))
    }

    /// A stream slower than the deadline: two rows released at their deadlines take the credit
    /// to zero, and then the stream comes back for both. Each return gives the credit back and
    /// doubles the wait, so the next row is held again (for four times the delay) and written
    /// whole. Before, the credit stayed at zero and every row went to the stripes.
    @Test func aStreamSlowerThanTheDeadlineWinsBackItsCreditAndALongerWait() throws {
        let h = try Harness.raid5()
        let row = h.core.geometry.chunkBytes * h.core.geometry.dataDisks
        let half = row / 2
        h.submit(.write(offsetBytes: UInt64(6 * row), data: buf(512, 1), fua: false))
        h.settle()
        h.submit(.write(offsetBytes: 0, data: buf(half, 2), fua: false))  // a recent large write
        h.settle()
        let busy = h.keepBusy()  // the busy array that holds the stream back
        var written = [UInt8](repeating: 0, count: 3 * row)  // rows 1 to 3
        func write(row r: Int, second: Bool) -> RequestID {
            let data = noise(half, UInt8(20 + 2 * r + (second ? 1 : 0)))
            let at = r * row + (second ? half : 0)
            written.replaceSubrange((at - row)..<(at - row + half), with: data)
            return h.submit(.write(offsetBytes: UInt64(at), data: IOBuffer(data), fua: false))
        }
        for r in [1, 2] {
            _ = write(row: r, second: false)
            #expect(Set(h.pendingIO.map(\.id)) == busy && h.timers[.writeGather] != nil, "row \(r) was not held")
            h.fireTimer(.writeGather)
            h.settle(keeping: busy)
        }
        #expect(h.core.counters.gathersReleased == 2)
        _ = write(row: 1, second: true)
        _ = write(row: 2, second: true)
        h.settle(keeping: busy)
        #expect(h.core.counters.gathersLate == 2)
        let held = write(row: 3, second: false)
        #expect(Set(h.pendingIO.map(\.id)) == busy && h.clientResults[held] == nil, "row 3 was not held: the credit did not come back")
        #expect(h.timers[.writeGather]?.at == h.now + 4 * CoreConfig().writeGatherDelayNanos, "the wait was not lengthened")
        _ = write(row: 3, second: true)
        h.settle()
        #expect(h.core.counters.gatheredRows == 1)
        #expect(h.clientResults[held] == .done)
        h.expectDataAndParity(at: UInt64(row), written)
    }

    /// A writer at queue depth 1 (`nbdcopy` from a pipe: 64 KiB writes, each sent when the one
    /// before is answered) is not held: its writes arrive with nothing else in flight, and
    /// each is answered without a timer. Before, each waited out the deadline, and coming back
    /// for the row released at it doubled the wait: 80 ms per write.
    @Test func aWriterAtQueueDepthOneIsNotHeldForTheRestOfItsRow() throws {
        let h = try Harness.raid5()
        let row = h.core.geometry.chunkBytes * h.core.geometry.dataDisks
        let third = row / 3  // one chunk of whole units: at least the gather minimum
        h.submit(.write(offsetBytes: UInt64(6 * row), data: buf(512, 1), fua: false))
        h.settle()
        var written: [UInt8] = []
        for i in 0..<9 {  // rows 0 to 2, a third of a row at a time
            let data = noise(third, UInt8(40 + i))
            written += data
            let id = h.submit(.write(offsetBytes: UInt64(i * third), data: IOBuffer(data), fua: false))
            h.settle()
            #expect(h.clientResults[id] == .done, "write \(i) was held (timer at \(String(describing: h.timers[.writeGather]?.at)), now \(h.now))")
            if h.clientResults[id] == nil {
                h.fireTimer(.writeGather)
                h.settle()
            }
        }
        #expect(h.core.counters.gathersLate == 0 && h.core.counters.gathersReleased == 0)
        h.expectDataAndParity(at: 0, written)
    }

    /// A held row whose other work in flight completes, leaving only held rows: the writer may
    /// be waiting for them (a few writes at a low queue depth), so they go to the stripes after
    /// `writeGatherIdleNanos`, not at the deadline, and the wait is not lengthened.
    @Test func heldRowsWithNothingElseInFlightGoToTheStripesAfterTheIdleWait() throws {
        let (h, row, held, _) = try holdHalfOfRowTwo { noise($0 / 2, 5) }
        let config = CoreConfig()
        #expect(h.timers[.writeGather]?.at == h.now + config.writeGatherDelayNanos)
        h.settle()  // the read that kept the array busy completes
        #expect(h.clientResults[held] == nil)
        #expect(h.timers[.writeGather]?.at == h.now + config.writeGatherIdleNanos, "no idle release armed")
        h.fireTimer(.writeGather)
        h.settle()
        #expect(h.clientResults[held] == .done)
        #expect(h.core.counters.gathersReleasedIdle == 1 && h.core.counters.gathersReleased == 1)
        h.expectDataAndParity(at: UInt64(2 * row), noise(row / 2, 5))
        // The stream comes back for the row, the array busy again: not late, since the row was
        // not released at a deadline.
        let busy = h.keepBusy()
        h.submit(.write(offsetBytes: UInt64(2 * row + row / 2), data: IOBuffer(noise(row / 2, 6)), fua: false))
        h.settle(keeping: busy)
        #expect(h.core.counters.gathersLate == 0)
        h.settle()
    }

    /// Stopping the array does not wait for the deadline: held units go to the stripes at once.
    @Test func stoppingSendsHeldRowsToTheStripesAtOnce() throws {
        let (h, _, held, _) = try holdHalfOfRowTwo { noise($0 / 2, 5) }
        let stop = h.control(.stop)
        h.settle()
        #expect(h.clientResults[held] == .done)
        #expect(h.controlResult(stop) == .done)
    }
}

/// md's delayed stripes (STRIPE_DELAYED, preread_active_stripes, raid5_activate_delayed).
@Suite struct DelayedWriteTests {
    /// Row 0's two units get a write of data indices 0 and 1 (each needs data index 2's block
    /// read); then a write of data index 2 arrives. Unit 0 reads at once; unit 1 waits on the
    /// delayed list, takes the second write into its batch, and needs no read at all.
    @Test func aWriteThatMustReadWaitsWhileAnotherStripeReadsAndJoinsTheWritesThatFollow() throws {
        let h = try Harness.raid5()
        let chunk = h.core.geometry.chunkBytes
        h.submit(.write(offsetBytes: UInt64(6 * chunk), data: buf(512, 1), fua: false))
        h.settle()  // the array is dirty on disk: the next writes go straight to their members
        let before = h.issued.count
        let first = bytes(2 * chunk, 2)
        let second = bytes(chunk, 3)
        let w1 = h.submit(.write(offsetBytes: 0, data: IOBuffer(first), fua: false))
        #expect(h.core.delayedStripes.count == 1, "unit 1 did not wait for unit 0's read")
        let w2 = h.submit(.write(offsetBytes: UInt64(2 * chunk), data: IOBuffer(second), fua: false))
        h.settle()
        #expect(h.clientResults[w1] == .done && h.clientResults[w2] == .done)
        let reads = h.issued[before...].filter { !$0.isWrite && $0.purpose == .data }
        #expect(reads.count == 1, "unit 1 read data index 2's block too")
        #expect(h.core.preReadActiveStripes == 0 && h.core.delayedStripes.isEmpty)
        h.expectDataAndParity(at: 0, first + second)
    }
}
