import MDFormat
import RaidSimulation
import Testing

@testable import RaidCore

/// What the core needs to run live: bounds, no recursion, stop, new members, md's attribute
/// text parsed in one place, configuration errors as errors.
@Suite struct BoundsTests {
    /// A request that waited in the parking queue and has completed holds no memory, even
    /// while the queue never runs empty. (Taken items stayed in the queue's array until it ran
    /// empty; under a steady stream of parked writes it never did, and the pieces kept their
    /// requests' data alive: 150 MiB of client buffers on the server's 12 MiB bound.)
    @Test func aParkedRequestThatCompletedHoldsNoMemoryWhileOthersStillWait() throws {
        let h = try Harness.raid5(cache: 17, rows: 64)
        let rowBytes = UInt64(h.core.geometry.chunkBytes * h.core.geometry.dataDisks)
        final class Tracker { weak var storage: IOBufferStorage? }
        /// One 4 KiB write at the start of `row` (one stripe per row), its data tracked weakly.
        func write(row: Int) -> (RequestID, Tracker) {
            let data = buf(4096, UInt8(truncatingIfNeeded: row))
            let tracker = Tracker()
            tracker.storage = data.storage
            return (h.submit(.write(offsetBytes: UInt64(row % 64) * rowBytes, data: data, fua: false)), tracker)
        }
        // 17 writes take the stripes, the rest park; the one tracked parks behind them.
        for row in 0..<20 { _ = write(row: row) }
        let (tracked, tracker) = write(row: 20)
        #expect(h.core.parkedForStripe >= 4, "the tracked write did not park")
        var next = 21
        var steps = 0
        while h.clientResults[tracked] == nil && steps < 100_000 {
            // More writes keep the queue from running empty.
            if h.core.parkedForStripe < 8 {
                _ = write(row: next)
                next += 1
            }
            h.completeOne()
            steps += 1
        }
        #expect(h.clientResults[tracked] == .done)
        #expect(h.core.parkedForStripe > 0, "the queue ran empty: the test proves nothing")
        #expect(tracker.storage == nil, "the completed request's data is still alive")
        h.settle()
    }

    /// The parking queue at its bound, then the array breaks: tens of thousands of parked
    /// requests all fail with EIO in one event, handled by the ready-queue loop (a recursion
    /// per parked request would overflow the stack here).
    @Test func parkTheMaximumThenBreakTheArray() throws {
        var config = CoreConfig()
        config.stripeCacheSize = 17
        config.maxParkedItems = 1 << 16
        config.maxRequestsInFlight = 1 << 17
        let h = try Harness(SimArrayShape(level: .raid5, layout: .leftSymmetric, raidDisks: 4, chunkKiB: 8, rows: 64, bitmap: false, spares: 0, stripeCacheSize: 17), config: config)
        let units = Int(h.core.geometry.arraySectors / 8)
        let data = buf(4096, 1)
        var ids: [RequestID] = []
        // No member I/O completes: the first writes hold the 17 stripes (waiting for the dirty
        // superblock), everything after them parks.
        for i in 0..<config.maxParkedItems {
            ids.append(h.submit(.write(offsetBytes: UInt64(i % units) * 4096, data: data, fua: false)))
        }
        // Writes to the 17 stripes already in the cache queue on them; all others park.
        #expect(h.core.parkedForStripe > config.maxParkedItems / 2)
        #expect(ids.allSatisfy { h.clientResults[$0] == nil })
        let refused = h.submit(.write(offsetBytes: 0, data: data, fua: false))
        #expect(h.clientResults[refused] == .failed(.busy))
        // Two members fail: RAID5 is broken, every parked request gets EIO.
        h.control(.fail(MemberIndex(0)))
        h.control(.fail(MemberIndex(1)))
        h.settle()
        #expect(h.core.arrayState == .broken)
        #expect(ids.allSatisfy { h.clientResults[$0] == .failed(.io) })
        #expect(h.core.parkedForStripe == 0)
        #expect(h.core.requestsOutstanding == 0)
    }

    @Test func bytesInFlightAreBounded() throws {
        var config = CoreConfig()
        config.maxBytesInFlight = 64 << 10
        config.maxRequestBytes = 32 << 10
        let h = try Harness(SimArrayShape(level: .raid5, layout: .leftSymmetric, raidDisks: 4, chunkKiB: 8, rows: 8, bitmap: false, spares: 0, stripeCacheSize: 256), config: config)
        let a = h.submit(.write(offsetBytes: 0, data: buf(32 << 10, 1), fua: false))
        let b = h.submit(.read(offsetBytes: 64 << 10, length: 32 << 10))
        let c = h.submit(.write(offsetBytes: 128 << 10, data: buf(512, 3), fua: false))
        #expect(h.clientResults[c] == .failed(.busy))
        h.settle()
        #expect(h.clientResults[a] == .done)
        #expect(h.data(b) != nil)
        let d = h.submit(.write(offsetBytes: 128 << 10, data: buf(512, 3), fua: false))
        h.settle()
        #expect(h.clientResults[d] == .done)
    }

    @Test func controlWaitersAreBounded() throws {
        var config = CoreConfig()
        config.maxControlWaiters = 2
        let h = try Harness(SimArrayShape(level: .raid5, layout: .leftSymmetric, raidDisks: 4, chunkKiB: 8, rows: 8, bitmap: false, spares: 0, stripeCacheSize: 256), config: config)
        // `active` waits for the dirty superblock; two may wait, the third is refused.
        let first = h.set("array_state", "active")
        let second = h.set("array_state", "active")
        let third = h.set("array_state", "active")
        #expect(h.controlResults[first] == nil && h.controlResults[second] == nil)
        guard case .failed(.busy)? = h.controlResults[third] else { Issue.record("third waiter accepted"); return }
        h.settle()
        #expect(h.controlResults[first] == .done && h.controlResults[second] == .done)
    }

    @Test func anInvalidConfigurationIsAnErrorWithAMessage() throws {
        let members = try Simulation.makeMembers(SimArrayShape(level: .raid5, layout: .leftSymmetric, raidDisks: 4, chunkKiB: 8, rows: 8, bitmap: false, spares: 0, stripeCacheSize: 256))
        let assembly = try CoreAssembly(members: members.compactMap { $0.probe() })
        for (change, words) in [
            ({ (c: inout CoreConfig) in c.stripeCacheSize = 16 }, "stripe_cache_size 16"),
            ({ c in c.stripeSizeBytes = 6000 }, "stripe_size"),
            ({ c in c.maxParkedItems = 10 }, "parking bound"),
            ({ c in c.maxRequestBytes = 2 << 30 }, "in-flight byte bound"),
        ] as [((inout CoreConfig) -> Void, String)] {
            var config = CoreConfig()
            change(&config)
            #expect {
                _ = try RaidCore(assembly: assembly, config: config)
            } throws: { error in
                (error as? CoreConfigError)?.message.contains(words) == true
            }
        }
    }
}

@Suite struct StopTests {
    @Test func stopWaitsForWritesThenMarksTheArrayCleanAndRefusesAfterwards() throws {
        let h = try Harness.raid5(bitmap: true)
        let w = h.submit(.write(offsetBytes: 0, data: buf(65536, 1), fua: false))
        let stop = h.control(.stop)
        // The write in flight finishes first; new requests are refused at once.
        let late = h.submit(.read(offsetBytes: 0, length: 512))
        #expect(h.clientResults[late] == .failed(.shutdown))
        #expect(h.controlResults[stop] == nil)
        h.settle()
        #expect(h.clientResults[w] == .done)
        #expect(h.controlResults[stop] == .done)
        #expect(h.core.arrayState == .inactive)
        #expect(h.core.memberIOOutstanding == 0)
        for m in 0..<4 {
            let sb = h.superblock(m)
            #expect(sb.isClean)
            // The bitmap was flushed with its idle bits cleared: nothing to resync next time.
            let area = h.members[m].probe()!.bitmapArea!
            #expect((try? MDBitmapSuperblock(decoding: area))?.dirtyBitCount(area: area) == 0)
        }
        guard case .failed(.stopped)? = h.controlResult(h.set("sync_action", "check")) else { Issue.record("control after stop accepted"); return }
        #expect(h.controlResult(h.control(.stop)) == .done)
    }

    @Test func stopInterruptsACheckAndRecordsWhereItGot() throws {
        let h = try Harness.raid5()
        h.set("sync_action", "check")
        for _ in 0..<12 { h.completeOne() }
        let stop = h.control(.stop)
        h.settle()
        #expect(h.controlResults[stop] == .done)
        #expect(h.core.syncKind == nil)
        #expect(UInt64(h.core.attribute("sync_min")!)! > 0)
    }

    @Test func aReadOnlyArrayStopsWithoutWriting() throws {
        var config = CoreConfig()
        config.startMode = .readOnly
        let h = try Harness(SimArrayShape(level: .raid6, layout: .leftSymmetric, raidDisks: 5, chunkKiB: 8, rows: 8, bitmap: true, spares: 0, stripeCacheSize: 256), config: config)
        let before = h.members.map(\.durable)
        let r = h.submit(.read(offsetBytes: 0, length: 8192))
        h.settle()
        #expect(h.data(r) != nil)
        #expect(h.controlResult(h.control(.stop)) == .done)
        #expect(h.issued.allSatisfy { !$0.isWrite })
        #expect(h.members.map(\.durable) == before)
    }
}

@Suite struct AddMemberTests {
    @Test func aNewDeviceJoinsAsASpareAndIsRebuiltIntoAnEmptySlot() throws {
        let h = try Harness.raid5()
        let content = bytes(Int(h.core.geometry.arraySectors * 512), 9)
        h.submit(.write(offsetBytes: 0, data: IOBuffer(content), fua: false))
        h.settle()
        h.control(.fail(MemberIndex(2)))
        h.settle()
        #expect(h.core.degradedCount == 1)
        // The shell writes a spare superblock on the new device, then tells the core.
        let template = h.core.superblockTemplate(member: MemberIndex(0))
        let size = UInt64(h.members[0].sizeInBytes / 512)
        let sb = try MDSuperblock1.spare(from: template, devNumber: 4, deviceUUID: [UInt8](repeating: 0xEE, count: 16), deviceSizeSectors: size, events: h.core.events, timeSeconds: 1_764_000_000)
        let device = SimMember(name: "new", image: [UInt8](repeating: 0, count: Int(size) * 512))
        device.write(offset: Int(sb.superOffsetSectors * 512), data: sb.encode(), fua: true)
        h.attach(device)
        let add = h.control(.addNew(MemberMetadata(name: "new", superblock: sb, deviceSizeSectors: size)))
        h.settle()
        #expect(h.controlResults[add] == .done)
        #expect(h.core.memberRoles[4] == .active(slot: Role(2)))
        #expect(h.core.degradedCount == 0)
        #expect(h.superblock(4).role == .active(slot: 2))
        // The rebuilt member carries the data: lose another and read everything.
        h.control(.fail(MemberIndex(0)))
        h.settle()
        let r = h.submit(.read(offsetBytes: 0, length: content.count))
        h.settle()
        #expect(h.data(r) == content)
    }

    @Test func aDeviceOfAnotherArrayOrTooSmallIsRefused() throws {
        let h = try Harness.raid5()
        var other = h.core.superblockTemplate(member: MemberIndex(0))
        other.setUUID = [UInt8](repeating: 1, count: 16)
        other.devNumber = 4
        let size = UInt64(h.members[0].sizeInBytes / 512)
        guard case .failed(.invalid(let why))? = h.controlResult(h.control(.addNew(MemberMetadata(name: "x", superblock: other, deviceSizeSectors: size)))) else {
            Issue.record("a member of another array was added")
            return
        }
        #expect(why.contains("another array"))
        var small = h.core.superblockTemplate(member: MemberIndex(0))
        small.devNumber = 4
        small.deviceUUID = [UInt8](repeating: 2, count: 16)
        guard case .failed(.invalid(let tooSmall))? = h.controlResult(h.control(.addNew(MemberMetadata(name: "y", superblock: small, deviceSizeSectors: 100)))) else {
            Issue.record("a device too small was added")
            return
        }
        #expect(tooSmall.contains("too small"))
        #expect(h.core.memberRoles.count == 4)
    }
}

/// md's attribute text, parsed in one place (the core, the control plane and the CLI share it).
@Suite struct AttributeParsingTests {
    @Test(arguments: [
        ("sync_action", "check\n", true), ("sync_action", "reshape", false), ("sync_action", "", false),
        ("array_state", "active", true), ("array_state", "sleepy", false),
        ("stripe_cache_size", "17", true), ("stripe_cache_size", "16", false), ("stripe_cache_size", "32769", false),
        ("safe_mode_delay", "0.2", true), ("safe_mode_delay", "0.2001", false), ("safe_mode_delay", "-1", false),
        // A digit with a combining accent is one Character that sorted between "0" and "9".
        ("safe_mode_delay", "0.1\u{301}", false), ("safe_mode_delay", "1\u{301}", false),
        ("sync_speed_min", "system", true), ("sync_speed_min", "0", false), ("sync_speed_max", "fast", false),
        ("sync_speed_max", "4294967295", true), ("sync_speed_max", "4294967296", false), ("sync_speed_min", "20000000000000", false),
        ("sync_min", "1024", true), ("sync_min", "x", false), ("sync_max", "max", true), ("sync_max", "-3", false),
        ("max_read_errors", "20", true), ("max_read_errors", "-1", false),
        ("dev-2/state", "faulty", true), ("dev-2/state", "remove", true), ("dev-2/state", "spare", false),
        ("dev-2/errors", "0", true),
    ])
    func values(attribute: String, value: String, valid: Bool) {
        do {
            _ = try ControlCommand.parse(attribute: attribute, value: value)
            #expect(valid, "\(attribute) accepted '\(value)'")
        } catch {
            #expect(!valid, "\(attribute) refused '\(value)': \(error)")
            #expect(error.errno == 22 || error.errno == 16)
        }
    }

    @Test func namesAndErrnos() throws {
        #expect(throws: ControlError.unknownAttribute("nope")) { try ControlCommand.parse(attribute: "nope", value: "1") }
        #expect(throws: ControlError.readOnlyAttribute("mismatch_cnt")) { try ControlCommand.parse(attribute: "mismatch_cnt", value: "0") }
        #expect(throws: ControlError.unknownAttribute("dev-x/state")) { try ControlCommand.parse(attribute: "dev-x/state", value: "faulty") }
        #expect(ControlError.busy("x").errno == 16 && ControlError.invalid("x").errno == 22 && ControlError.readOnlyAttribute("x").errno == 13)
        #expect(ControlCommand.parseSeconds("0.05") == 50 * nanosPerMilli)
        #expect(formatSeconds(200 * nanosPerMilli) == "0.200")
        for a in MDAttribute.allCases { #expect(try AttributeName(parsing: a.rawValue) == .array(a)) }
        #expect(try AttributeName(parsing: "dev-12/slot") == .member(MemberIndex(12), .slot))
    }

    @Test func everyAttributeReadsOnALiveArray() throws {
        let h = try Harness.raid6()
        for a in MDAttribute.allCases { #expect(!h.core.attribute(a).isEmpty, "\(a)") }
        #expect(h.core.attribute("dev-0/state") == "in_sync")
        #expect(h.core.attribute("dev-0/slot") == "0")
        #expect(h.core.attribute("dev-9/slot") == nil)
        #expect(h.core.attribute("uuid")!.split(separator: "-").map(\.count) == [8, 4, 4, 4, 12])
        #expect(h.core.attribute("metadata_version") == "1.2")
    }
}

/// md's answers on read-only and auto-read-only arrays (array_state_store, md_set_readonly).
@Suite struct ReadOnlyTests {
    @Test func readonlyMarksADirtyArrayCleanFirstThenWritesNothing() throws {
        let h = try Harness.raid5(bitmap: true)
        h.submit(.write(offsetBytes: 0, data: buf(8192, 1), fua: false))
        h.settle()
        #expect(h.core.arrayState == .active)
        let ro = h.set("array_state", "readonly")
        h.settle()
        #expect(h.controlResults[ro] == .done)
        #expect(h.core.arrayState == .readonly)
        #expect((0..<4).allSatisfy { h.superblock($0).isClean })
        // From now on nothing is written, whatever happens to the members.
        let issuedBefore = h.issued.count
        h.control(.fail(MemberIndex(1)))
        h.settle()
        #expect(h.core.degradedCount == 1)
        #expect(h.issued[issuedBefore...].allSatisfy { !$0.isWrite })
        #expect(h.superblock(0).role(ofDevNumber: 1) == .active(slot: 1), "a superblock was written while read-only")
        // idle and frozen are accepted on a read-only array, check is not.
        #expect(h.controlResult(h.set("sync_action", "idle")) == .done)
        #expect(h.controlResult(h.set("sync_action", "frozen")) == .done)
        guard case .failed(.busy)? = h.controlResult(h.set("sync_action", "check")) else { Issue.record("check accepted on a read-only array"); return }
        // Back to read-write: the failure held back reaches the superblocks now.
        let active = h.set("array_state", "active")
        h.settle()
        #expect(h.controlResults[active] == .done)
        #expect(h.superblock(0).role(ofDevNumber: 1) == .faulty)
    }

    @Test func readAutoOnlyFromReadOnly() throws {
        let h = try Harness.raid5()
        h.submit(.write(offsetBytes: 0, data: buf(4096, 1), fua: false))
        h.settle()
        guard case .failed(.busy)? = h.controlResult(h.set("array_state", "read-auto")) else { Issue.record("read-auto accepted on a read-write array"); return }
        h.fireTimer(.safeMode)
        h.settle()
        #expect(h.controlResult(h.set("array_state", "readonly")) == .done)
        #expect(h.controlResult(h.set("array_state", "read-auto")) == .done)
        #expect(h.core.arrayState == .readAuto)
    }

    @Test func membersOpenedReadOnlyCannotBecomeWritable() throws {
        var config = CoreConfig()
        config.startMode = .readOnly
        config.membersAreReadOnly = true
        let h = try Harness(SimArrayShape(level: .raid5, layout: .leftSymmetric, raidDisks: 4, chunkKiB: 8, rows: 8, bitmap: false, spares: 0, stripeCacheSize: 256), config: config)
        for state in ["active", "clean", "read-auto"] {
            #expect(h.controlResult(h.set("array_state", state)) == .failed(.readOnly), "\(state)")
        }
        #expect(h.issued.allSatisfy { !$0.isWrite })
    }

    @Test func reAddRefusesADeviceNumberAnotherMemberTookMeanwhile() throws {
        let h = try Harness.raid5()
        h.control(.fail(MemberIndex(3)))
        h.control(.remove(MemberIndex(3)))
        h.settle()
        // A new device takes device number 3 while member 3 is out.
        let template = h.core.superblockTemplate(member: MemberIndex(0))
        let size = UInt64(h.members[0].sizeInBytes / 512)
        let sb = try MDSuperblock1.spare(from: template, devNumber: 3, deviceUUID: [UInt8](repeating: 7, count: 16), deviceSizeSectors: size, events: h.core.events, timeSeconds: 0)
        h.attach(SimMember(name: "new", image: [UInt8](repeating: 0, count: Int(size) * 512)))
        #expect(h.controlResult(h.control(.addNew(MemberMetadata(name: "new", superblock: sb, deviceSizeSectors: size)))) != nil)
        h.settle()
        guard case .failed(.busy(let why))? = h.controlResult(h.control(.readd(MemberIndex(3)))) else { Issue.record("re-add with a taken device number accepted"); return }
        #expect(why.contains("device number 3"))
        #expect(h.core.attribute("array_size") == "default")
    }
}
