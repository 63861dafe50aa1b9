import MDFormat
import RaidCore

/// Issues random client requests: reads, writes (some FUA), flushes, trims, write-zeroes. Two
/// writes to the same sectors are never in flight together (their order would be undefined, as
/// it is for a real disk), so every read has a well-defined set of right answers.
final class RandomClient {
    var issued = 0
    let total: Int
    let queueDepth: Int
    var inFlight: [RequestID: (start: UInt64, end: UInt64, isWrite: Bool)] = [:]
    var writeSeq: UInt64 = 0
    /// Bias towards a few hot stripe rows so that requests meet in the stripe cache.
    let hotRegionSectors: UInt64

    init(total: Int, queueDepth: Int, hotRegionSectors: UInt64) {
        self.total = total
        self.queueDepth = queueDepth
        self.hotRegionSectors = hotRegionSectors
    }

    var finished: Bool { issued >= total && inFlight.isEmpty }
    var progress: String { "issued \(issued) of \(total), \(inFlight.count) in flight \(inFlight.keys.sorted().prefix(5))" }

    func fill(_ sim: Simulation) {
        while issued < total && inFlight.count < queueDepth {
            guard issueOne(sim) else { return }
        }
    }

    func completed(_ id: RequestID) { inFlight[id] = nil }

    /// Data that names where and when it was written (so a misplaced read is obvious): each
    /// sector starts with its array sector number and the write's sequence number.
    func pattern(sectorStart: UInt64, sectors: Int) -> IOBuffer {
        writeSeq += 1
        let data = IOBuffer(uninitializedCount: sectors * 512)
        data.withUnsafeMutableBytes { raw in
            for s in 0..<sectors {
                let sector = sectorStart + UInt64(s)
                raw.storeBytes(of: ((sector << 32) | (writeSeq & 0xffff_ffff)).bigEndian, toByteOffset: s * 512, as: UInt64.self)
                for i in stride(from: 8, to: 512, by: 8) {
                    raw.storeBytes(of: (writeSeq &* 0x9e37_79b9_7f4a_7c15) ^ UInt64(i) ^ sector, toByteOffset: s * 512 + i, as: UInt64.self)
                }
            }
        }
        return data
    }

    func overlapsWrite(_ start: UInt64, _ end: UInt64) -> Bool {
        inFlight.values.contains { $0.isWrite && $0.start < end && start < $0.end }
    }

    func overlapsAnything(_ start: UInt64, _ end: UInt64) -> Bool {
        inFlight.values.contains { $0.start < end && start < $0.end }
    }

    @discardableResult
    func issueOne(_ sim: Simulation) -> Bool {
        let sectors = sim.core.geometry.arraySectors
        let r = sim.random.below(100)
        // Offset: mostly in the hot region, sometimes anywhere; lengths up to 64 sectors.
        let region = sim.random.chance(0.7) ? min(hotRegionSectors, sectors) : sectors
        var length = UInt64(1 + sim.random.below(sim.random.chance(0.2) ? 64 : 16))
        if sim.random.chance(0.1) { length = UInt64(sim.core.geometry.rowDataSectors) }
        length = min(length, region)
        let start = UInt64(sim.random.below(Int(region - length + 1)))
        let end = start + length
        let request: ClientRequest
        var isWrite = true
        switch r {
        case 0..<40:
            request = .read(offsetBytes: start * 512, length: Int(length) * 512)
            isWrite = false
            if overlapsWrite(start, end) && sim.random.chance(0.5) { return issueFlushOrNothing(sim) }
        case 40..<78:
            guard !overlapsAnything(start, end) else { return issueFlushOrNothing(sim) }
            request = .write(offsetBytes: start * 512, data: pattern(sectorStart: start, sectors: Int(length)), fua: r >= 70)
        case 78..<86:
            request = .flush
            isWrite = false
        case 86..<93:
            guard !overlapsAnything(start, end) else { return issueFlushOrNothing(sim) }
            request = .writeZeroes(offsetBytes: start * 512, length: Int(length) * 512, fua: sim.random.chance(0.3))
        default:
            let bigStart = start / sim.core.geometry.rowDataSectors * sim.core.geometry.rowDataSectors
            let bigLength = min(sectors - bigStart, sim.core.geometry.rowDataSectors * UInt64(1 + sim.random.below(2)))
            guard !overlapsAnything(bigStart, bigStart + bigLength) else { return issueFlushOrNothing(sim) }
            request = .trim(offsetBytes: bigStart * 512, length: Int(bigLength) * 512)
            issued += 1
            let id = sim.submit(request)
            if sim.pendingClients[id] != nil { inFlight[id] = (bigStart, bigStart + bigLength, true) }
            return true
        }
        issued += 1
        let id = sim.submit(request)
        if sim.pendingClients[id] != nil {
            if case .flush = request { inFlight[id] = (0, 0, false) } else { inFlight[id] = (start, end, isWrite) }
        }
        return true
    }

    func issueFlushOrNothing(_ sim: Simulation) -> Bool {
        guard inFlight.count < queueDepth else { return false }
        issued += 1
        let id = sim.submit(.flush)
        if sim.pendingClients[id] != nil { inFlight[id] = (0, 0, false) }
        return true
    }
}

/// The checkers every scenario runs: liveness and the data model (returned for the end checks).
func installCheckers(_ sim: Simulation) -> DataChecker {
    let data = DataChecker(arrayBytes: sim.core.geometry.arraySectors * 512)
    sim.checkers += [LivenessChecker(), data]
    return data
}

/// End-of-run verification shared by the scenarios: the whole array equals the model, then the
/// parity protocol (check 0, exact count of corruption, repair).
func verifyAtEnd(_ sim: Simulation, data: DataChecker, parity: Bool = true) {
    guard sim.failure == nil else { return }
    guard ParityChecker.waitForIdleSync(sim) else { return }
    if let content = readWholeArray(sim) {
        data.verifyContent(sim, content: content)
    } else if sim.failure == nil && !sim.core.isBroken {
        sim.fail(.redundancy, "reading the whole array failed with \(sim.core.degradedCount) of \(sim.core.geometry.maxDegraded) tolerated members out")
    }
    if parity && sim.failure == nil { ParityChecker.verify(sim) }
}

/// Random reads, writes, flushes, trims and write-zeroes, with check/repair/idle/frozen thrown
/// in; member faults per the profile.
public final class RandomScenario: SimScenario {
    public let name = "random"
    var client: RandomClient!
    var data: DataChecker!
    var controlInFlight = false

    public init() {}

    public func shape(_ random: inout SimRandom) -> SimArrayShape { .random(&random) }

    public func configure(_ config: inout CoreConfig, _ random: inout SimRandom) {
        config.safeModeDelayNanos = UInt64(1 + random.below(30)) * nanosPerMilli
    }

    public func begin(_ sim: Simulation) {
        data = installCheckers(sim)
        client = RandomClient(total: 150 + sim.random.below(200), queueDepth: 1 + sim.random.below(8), hotRegionSectors: sim.core.geometry.rowDataSectors * 3)
        client.fill(sim)
        sim.wake(after: UInt64(sim.random.below(20)) * nanosPerMilli, tag: 1)
    }

    public func wake(_ sim: Simulation, tag: Int) {
        guard !client.finished else { return }
        if !controlInFlight {
            let actions = ["check", "repair", "idle", "frozen", "idle", "check"]
            controlInFlight = true
            sim.control(set: "sync_action", actions[sim.random.below(actions.count)])
        }
        sim.wake(after: UInt64(1 + sim.random.below(40)) * nanosPerMilli, tag: 1)
    }

    public func clientCompleted(_ sim: Simulation, id: RequestID, request: ClientRequest, result: ClientResult) {
        client.completed(id)
        client.fill(sim)
    }

    public func controlCompleted(_ sim: Simulation, id: RequestID, command: ControlCommand, result: ControlResult) {
        controlInFlight = false
    }

    public var workloadDone: Bool { client.finished && !controlInFlight }
    public var progress: String { client.progress + ", control in flight: \(controlInFlight)" }

    public func finish(_ sim: Simulation) {
        if sim.attribute("sync_action") == "frozen" { ParityChecker.runSync(sim, "idle") }
        verifyAtEnd(sim, data: data)
    }
}

/// The field report's shape (seed-scenario.md): long sequential writes with flushes and pauses,
/// `check` then `idle` cycling, and a monitor of array_state, on a RAID6 with a small stripe cache.
public final class SeedScenario: SimScenario {
    public let name = "seed"
    var data: DataChecker!
    var writeCursor: UInt64 = 0
    var writesInFlight = 0
    var writesDone = 0
    var pausedUntil: Nanoseconds = 0
    var controlInFlight = false
    var nextControl = "check"
    var endTime: Nanoseconds = 0
    var client = RandomClient(total: 0, queueDepth: 1, hotRegionSectors: 0)
    public private(set) var monitorLines: [String] = []
    /// Monitor samples: elapsed, sync_action, sync_completed, array_state, stripe_cache_active.
    public var keepMonitor = false

    public init() {}

    public func shape(_ random: inout SimRandom) -> SimArrayShape {
        var s = SimArrayShape.random(&random)
        s.level = .raid6
        s.layout = .leftSymmetric
        s.raidDisks = 6
        s.rows = UInt64(16 + random.below(16))
        s.stripeCacheSize = 17 + random.below(8)
        return s
    }

    public func configure(_ config: inout CoreConfig, _ random: inout SimRandom) {
        config.safeModeDelayNanos = UInt64(1 + random.below(5)) * nanosPerMilli
        config.syncWindowStripes = 8
    }

    public func begin(_ sim: Simulation) {
        data = installCheckers(sim)
        endTime = sim.now + UInt64(100 + sim.random.below(150)) * nanosPerMilli
        fillWrites(sim)
        sim.wake(after: nanosPerMilli, tag: 1)  // control loop
        sim.wake(after: nanosPerMilli, tag: 2)  // monitor
        sim.wake(after: endTime - sim.now, tag: 4)  // end of the workload
    }

    func fillWrites(_ sim: Simulation) {
        let sectors = sim.core.geometry.arraySectors
        while writesInFlight < 4 && sim.now < endTime && sim.now >= pausedUntil {
            let length = min(UInt64(32), sectors)
            if writeCursor + length > sectors { writeCursor = 0 }
            sim.submit(.write(offsetBytes: writeCursor * 512, data: client.pattern(sectorStart: writeCursor, sectors: Int(length)), fua: false))
            writeCursor += length
            writesInFlight += 1
            writesDone += 1
            if writesDone % 8 == 0 {
                sim.submit(.flush)
                writesInFlight += 1
            }
            if writesDone % 48 == 0 {
                // "sync it, delete it, pause": long enough for safe mode to mark the array clean.
                pausedUntil = sim.now + UInt64(5 + sim.random.below(10)) * nanosPerMilli
                sim.wake(after: pausedUntil - sim.now, tag: 3)
            }
        }
    }

    public func wake(_ sim: Simulation, tag: Int) {
        switch tag {
        case 1:
            guard sim.now < endTime, !controlInFlight else { return }
            controlInFlight = true
            sim.control(set: "sync_action", nextControl)
        case 2:
            if keepMonitor {
                monitorLines.append("\(formatTime(sim.now)) sync_action \(sim.attribute("sync_action")) sync_completed \(sim.attribute("sync_completed")) array_state \(sim.attribute("array_state")) stripe_cache_active \(sim.attribute("stripe_cache_active"))")
            }
            if sim.now < endTime { sim.wake(after: nanosPerMilli, tag: 2) }
        case 4:
            ended = true
        default:
            fillWrites(sim)
        }
    }

    public func clientCompleted(_ sim: Simulation, id: RequestID, request: ClientRequest, result: ClientResult) {
        writesInFlight -= 1
        fillWrites(sim)
    }

    public func controlCompleted(_ sim: Simulation, id: RequestID, command: ControlCommand, result: ControlResult) {
        controlInFlight = false
        // check runs for a while, then idle stops it; then a short pause before the next check.
        if nextControl == "check" {
            nextControl = "idle"
            sim.wake(after: UInt64(2 + sim.random.below(15)) * nanosPerMilli, tag: 1)
        } else {
            nextControl = "check"
            sim.wake(after: UInt64(1 + sim.random.below(3)) * nanosPerMilli, tag: 1)
        }
    }

    public var workloadDone: Bool { ended && writesInFlight == 0 && !controlInFlight }
    var ended = false

    public func finish(_ sim: Simulation) {
        verifyAtEnd(sim, data: data)
    }
}

/// A member fails (by request or by dying) while the array is in use; a spare takes its role and
/// recovery rebuilds it; RAID6 may lose a second member meanwhile.
public final class RebuildScenario: SimScenario {
    public let name = "rebuild"
    var client: RandomClient!
    var data: DataChecker!
    var failAt = 0
    var secondFailAt = Int.max
    var failures = 0

    public init() {}

    public func shape(_ random: inout SimRandom) -> SimArrayShape { .random(&random, spares: 1) }

    public func configure(_ config: inout CoreConfig, _ random: inout SimRandom) {
        config.safeModeDelayNanos = UInt64(1 + random.below(20)) * nanosPerMilli
    }

    public func begin(_ sim: Simulation) {
        data = installCheckers(sim)
        client = RandomClient(total: 200 + sim.random.below(150), queueDepth: 1 + sim.random.below(6), hotRegionSectors: sim.core.geometry.rowDataSectors * 4)
        failAt = 20 + sim.random.below(60)
        if sim.shape.level == .raid6 && sim.random.chance(0.5) { secondFailAt = failAt + 30 + sim.random.below(80) }
        client.fill(sim)
    }

    public func wake(_ sim: Simulation, tag: Int) {}

    func maybeFail(_ sim: Simulation) {
        let due = failures == 0 ? failAt : secondFailAt
        guard client.issued >= due, failures < 2, sim.canTakeAnotherMemberOut else { return }
        failures += 1
        let active = sim.core.memberRoles.enumerated().compactMap { i, r -> Int? in
            if case .active = r, sim.core.recoveryOffset(member: MemberIndex(i)) == nil, !sim.members[i].dead { return i }
            return nil
        }
        guard !active.isEmpty else { return }
        let victim = active[sim.random.below(active.count)]
        if sim.random.chance(0.5) {
            sim.killMember(victim)
        } else {
            sim.control(.fail(MemberIndex(victim)))
        }
    }

    public func clientCompleted(_ sim: Simulation, id: RequestID, request: ClientRequest, result: ClientResult) {
        client.completed(id)
        maybeFail(sim)
        client.fill(sim)
    }

    public var workloadDone: Bool { client.finished }

    public func finish(_ sim: Simulation) {
        guard ParityChecker.waitForIdleSync(sim) else { return }
        let faulty = sim.core.memberRoles.filter { $0 == .faulty }.count
        if faulty <= sim.shape.spares && sim.core.degradedCount != 0 {
            sim.fail(.redundancy, "after one failure and a spare, the array is still degraded (\(sim.core.memberRoles))")
            return
        }
        verifyAtEnd(sim, data: data)
    }
}

/// Power fails in the middle of a workload; the array is assembled again from the members'
/// bytes, resyncs, and every durable write must be there. Where the power fails is chosen to
/// hit the clean/dirty protocol's windows, not only at random: right after a superblock or
/// bitmap write lands on one member (the others still old), or right after a data or parity
/// write lands while the array still reads write-pending (which a correct core never allows).
public final class CrashScenario: SimScenario {
    public let name = "crash"
    var client: RandomClient!
    var data: DataChecker!
    var crashAt = 0
    var crashed = false
    var afterCrash: RandomClient?
    /// Where the power fails.
    enum Trigger { case afterRequests, afterMetadataWrite(count: Int), afterEarlyDataWrite }
    var trigger = Trigger.afterRequests
    var metadataWritesSeen = 0

    public init() {}

    public func shape(_ random: inout SimRandom) -> SimArrayShape { .random(&random) }

    public func configure(_ config: inout CoreConfig, _ random: inout SimRandom) {
        config.safeModeDelayNanos = UInt64(1 + random.below(20)) * nanosPerMilli
    }

    public func begin(_ sim: Simulation) {
        data = installCheckers(sim)
        client = RandomClient(total: 300, queueDepth: 1 + sim.random.below(8), hotRegionSectors: sim.core.geometry.rowDataSectors * 3)
        crashAt = 30 + sim.random.below(200)
        switch sim.random.below(4) {
        case 0: trigger = .afterMetadataWrite(count: 1 + sim.random.below(12))
        case 1: trigger = .afterEarlyDataWrite
        default: trigger = .afterRequests
        }
        if case .afterRequests = trigger {} else {
            sim.memberIOObserver = { [unowned self] sim, io, result in self.observe(sim, io, result) }
        }
        // No member may be out of service when the power fails (see spoilingAllowed).
        sim.spoilingAllowed = false
        client.fill(sim)
    }

    public var progress: String { "trigger \(trigger), crashed \(crashed), " + client.progress }

    /// Fails the power right after chosen member I/O completions (and never after the workload:
    /// the request-count trigger covers a crash that does not come).
    func observe(_ sim: Simulation, _ io: MemberIORequest, _ result: MemberIOResult) {
        guard !crashed, result == .success, io.isWrite else { return }
        switch trigger {
        case .afterMetadataWrite(let count):
            guard io.purpose == .superblock || io.purpose == .bitmap else { return }
            metadataWritesSeen += 1
            if metadataWritesSeen == count { crashAndVerify(sim) }
        case .afterEarlyDataWrite:
            // A data or parity write on disk while the superblocks may still say clean.
            if (io.purpose == .data || io.purpose == .parity) && sim.core.writePending { crashAndVerify(sim) }
        case .afterRequests:
            break
        }
    }

    public func wake(_ sim: Simulation, tag: Int) {}

    public func clientCompleted(_ sim: Simulation, id: RequestID, request: ClientRequest, result: ClientResult) {
        if let after = afterCrash {
            after.completed(id)
            after.fill(sim)
            return
        }
        // While the restarted array is read back, nothing else is issued.
        if crashed { return }
        client.completed(id)
        if client.issued >= crashAt {
            crashAndVerify(sim)
            return
        }
        client.fill(sim)
    }

    func crashAndVerify(_ sim: Simulation) {
        crashed = true
        sim.memberIOObserver = nil
        sim.crash()
        do {
            try sim.restart()
        } catch {
            sim.fail(.durability, "the array does not assemble after the crash: \(error)")
            return
        }
        MetadataTruthChecker.verify(sim)
        guard sim.failure == nil else { return }
        guard let content = readWholeArray(sim) else {
            if sim.failure == nil { sim.fail(.durability, "reading the array after the crash failed") }
            return
        }
        data.verifyAfterRestart(sim, content: content)
        let next = RandomClient(total: 100, queueDepth: 4, hotRegionSectors: sim.core.geometry.rowDataSectors * 3)
        afterCrash = next
        next.fill(sim)
    }

    public var workloadDone: Bool { crashed ? (afterCrash?.finished ?? true) : client.finished }

    public func finish(_ sim: Simulation) { verifyAtEnd(sim, data: data) }
}

/// `frozen` and `idle` racing a sync that is just ending (md: "close race when setting action to
/// idle"): two syncs must never run, and every command is answered.
public final class RaceScenario: SimScenario {
    public let name = "race"
    var client: RandomClient!
    var data: DataChecker!
    var rounds = 0
    var totalRounds = 0
    var waitingFor: RequestID?
    /// 0: starting a sync; 1: watching it; 2: stopping it; 3: unfreezing.
    var phase = 0

    public init() {}

    public func shape(_ random: inout SimRandom) -> SimArrayShape {
        var s = SimArrayShape.random(&random)
        s.rows = UInt64(2 + random.below(4))
        return s
    }

    public func begin(_ sim: Simulation) {
        data = installCheckers(sim)
        sim.checkers.append(SyncInvariantChecker())
        client = RandomClient(total: 60, queueDepth: 2, hotRegionSectors: sim.core.geometry.rowDataSectors * 2)
        totalRounds = 10 + sim.random.below(20)
        client.fill(sim)
        startRound(sim)
    }

    public var progress: String { "round \(rounds) of \(totalRounds), phase \(phase), waiting for \(waitingFor.map(String.init) ?? "nothing"); " + client.progress }

    /// Sends a command; its answer (which may come before `control` returns) moves the round on.
    func send(_ sim: Simulation, _ action: String) {
        let id = sim.control(set: "sync_action", action)
        if sim.pendingControls[id] == nil {
            advance(sim)
        } else {
            waitingFor = id
        }
    }

    func startRound(_ sim: Simulation) {
        guard rounds < totalRounds else { return }
        rounds += 1
        phase = 0
        send(sim, ["check", "repair", "resync"][sim.random.below(3)])
    }

    func advance(_ sim: Simulation) {
        waitingFor = nil
        switch phase {
        case 0:
            phase = 1
            sim.wake(after: UInt64(sim.random.below(300)) * 1000, tag: 1)
        case 2:
            if sim.attribute("sync_action") == "frozen" {
                phase = 3
                send(sim, "idle")
            } else {
                startRound(sim)
            }
        default:
            startRound(sim)
        }
    }

    public func wake(_ sim: Simulation, tag: Int) {
        guard phase == 1 else { return }
        // Poll: when the sync is close to its end (or already done), race a stop against it.
        if sim.core.syncKind == nil || sim.random.chance(0.2) || isNearlyDone(sim) {
            phase = 2
            let action = sim.random.chance(0.5) ? "idle" : "frozen"
            if sim.random.chance(0.5) { sim.control(set: "sync_action", "idle") }
            send(sim, action)
        } else {
            sim.wake(after: UInt64(20 + sim.random.below(200)) * 1000, tag: 1)
        }
    }

    func isNearlyDone(_ sim: Simulation) -> Bool {
        let parts = sim.attribute("sync_completed").split(separator: "/").map { $0.trimmingCharacters() }
        guard parts.count == 2, let done = UInt64(parts[0]), let total = UInt64(parts[1]), total > 0 else { return true }
        return done * 10 >= total * 8
    }

    public func clientCompleted(_ sim: Simulation, id: RequestID, request: ClientRequest, result: ClientResult) {
        client.completed(id)
        client.fill(sim)
    }

    public func controlCompleted(_ sim: Simulation, id: RequestID, command: ControlCommand, result: ControlResult) {
        if id == waitingFor { advance(sim) }
    }

    public var workloadDone: Bool { rounds >= totalRounds && waitingFor == nil && phase != 1 && client.finished }

    public func finish(_ sim: Simulation) { verifyAtEnd(sim, data: data) }
}

extension Substring {
    func trimmingCharacters() -> String { String(self).filter { $0 != " " } }
}

/// Two sync workers never run at once; syncs started minus reaped is 0 or 1 at every step.
public final class SyncInvariantChecker: SimChecker {
    public init() {}
    public func afterEvent(_ sim: Simulation) {
        let running = sim.core.syncsStarted - sim.core.syncsReaped
        if running < 0 || running > 1 || (running == 1) != (sim.core.syncKind != nil) {
            sim.fail(.invariant, "syncs started \(sim.core.syncsStarted), reaped \(sim.core.syncsReaped), running now: \(sim.core.syncKind?.rawValue ?? "none")")
        }
    }
}

/// All scenarios by name.
public enum Scenarios {
    public static let names = ["random", "seed", "rebuild", "crash", "race"]

    public static func make(_ name: String) -> SimScenario? {
        switch name {
        case "random": return RandomScenario()
        case "seed": return SeedScenario()
        case "rebuild": return RebuildScenario()
        case "crash": return CrashScenario()
        case "race": return RaceScenario()
        default: return nil
        }
    }
}
