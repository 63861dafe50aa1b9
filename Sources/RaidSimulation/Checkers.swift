import MDFormat
import RaidCore

/// Liveness (design.md §5): every client request and control command is answered within a
/// bound, and `array_state` never stays `write-pending` longer than a bound while members answer.
public final class LivenessChecker: SimChecker {
    public let requestBound: Nanoseconds
    public let writePendingBound: Nanoseconds
    var writePendingSince: Nanoseconds?
    var checkedAt: Nanoseconds = 0
    public private(set) var longestWritePending: Nanoseconds = 0

    public init(requestBound: Nanoseconds = 30 * nanosPerSecond, writePendingBound: Nanoseconds = 3 * nanosPerSecond) {
        self.requestBound = requestBound
        self.writePendingBound = writePendingBound
    }

    public func afterEvent(_ sim: Simulation) {
        if sim.core.writePending {
            let since = writePendingSince ?? sim.now
            writePendingSince = since
            longestWritePending = max(longestWritePending, sim.now - since)
            if sim.now - since > writePendingBound {
                sim.fail(.liveness, "array_state has read write-pending for \(formatTime(sim.now - since)) (bound \(formatTime(writePendingBound)))")
            }
        } else {
            writePendingSince = nil
        }
        // Scan the (bounded) pending tables every simulated 10 ms.
        guard sim.now >= checkedAt + 10 * nanosPerMilli else { return }
        checkedAt = sim.now
        for (id, entry) in sim.pendingClients.sorted(by: { $0.key < $1.key }) where sim.now - entry.since > requestBound {
            sim.fail(.liveness, "client request \(id) (\(entry.request)) unanswered for \(formatTime(sim.now - entry.since))")
            return
        }
        for (id, entry) in sim.pendingControls.sorted(by: { $0.key < $1.key }) where sim.now - entry.since > requestBound {
            sim.fail(.liveness, "control command \(id) ('\(entry.command)') unanswered for \(formatTime(sim.now - entry.since))")
            return
        }
    }

    public func crashed(_ sim: Simulation) { writePendingSince = nil }
}

/// Data (design.md §5): a shadow copy of the array; every read returns the last acknowledged
/// write, or the data of a write to the same sector that overlapped the read in time.
/// Durability: after a crash and restart, every write acknowledged with FUA or followed by an
/// acknowledged FLUSH reads back intact (later writes may or may not have landed).
public final class DataChecker: SimChecker {
    let sectorCount: Int
    /// Per sector: the acknowledged content (nil = unknown: trimmed or failed write).
    var committed: [[UInt8]?]
    /// Writes in flight: id → (first sector, bytes per sector or nil for zeroes, unknown after).
    var writesInFlight: [RequestID: InFlightWrite] = [:]
    /// Reads in flight: id → values each sector may legitimately take.
    var readsInFlight: [RequestID: InFlightRead] = [:]
    /// Durability bookkeeping, per sector: writes since the last point known durable.
    var durableValue: [[UInt8]?]
    var sinceDurable: [[Int]]
    var writeData: [Int: (start: Int, sectors: [[UInt8]?])] = [:]
    var nextWriteKey = 0
    /// Writes acknowledged and not yet covered by a flush: key → (start, count).
    var ackedNotDurable: [Int] = []
    var flushesInFlight: [RequestID: [Int]] = [:]
    public private(set) var readsChecked = 0
    public private(set) var sectorsVerified = 0
    let zeroSector = [UInt8](repeating: 0, count: 512)

    struct InFlightWrite {
        let key: Int
        let start: Int
        let count: Int
        let isTrim: Bool
    }

    struct InFlightRead {
        let start: Int
        let count: Int
        var allowed: [[[UInt8]?]]
    }

    public init(arrayBytes: UInt64) {
        sectorCount = Int(arrayBytes / 512)
        committed = [[UInt8]?](repeating: [UInt8](repeating: 0, count: 512), count: sectorCount)
        durableValue = committed
        sinceDurable = [[Int]](repeating: [], count: sectorCount)
    }

    func sectorsOf(_ data: [UInt8]) -> [[UInt8]?] {
        (0..<(data.count / 512)).map { Array(data[($0 * 512)..<(($0 + 1) * 512)]) }
    }

    public func clientSubmitted(_ sim: Simulation, id: RequestID, request: ClientRequest) {
        switch request {
        case .read(let offset, let length):
            let start = Int(offset / 512)
            let count = length / 512
            var allowed: [[[UInt8]?]] = (0..<count).map { [committed[start + $0]] }
            for w in writesInFlight.values where w.start < start + count && start < w.start + w.count {
                addWriteValues(w, to: &allowed, readStart: start, readCount: count)
            }
            readsInFlight[id] = InFlightRead(start: start, count: count, allowed: allowed)
        case .write(let offset, let data, _):
            beginWrite(id, start: Int(offset / 512), sectors: sectorsOf(data), isTrim: false)
        case .writeZeroes(let offset, let length, _):
            beginWrite(id, start: Int(offset / 512), sectors: [[UInt8]?](repeating: zeroSector, count: length / 512), isTrim: false)
        case .trim(let offset, let length):
            beginWrite(id, start: Int(offset / 512), sectors: [[UInt8]?](repeating: nil, count: length / 512), isTrim: true)
        case .flush:
            flushesInFlight[id] = ackedNotDurable
        }
    }

    func beginWrite(_ id: RequestID, start: Int, sectors: [[UInt8]?], isTrim: Bool) {
        let key = nextWriteKey
        nextWriteKey += 1
        writeData[key] = (start, sectors)
        let w = InFlightWrite(key: key, start: start, count: sectors.count, isTrim: isTrim)
        writesInFlight[id] = w
        for i in 0..<sectors.count { sinceDurable[start + i].append(key) }
        // Reads already in flight may see this write too.
        for (rid, var r) in readsInFlight where w.start < r.start + r.count && r.start < w.start + w.count {
            addWriteValues(w, to: &r.allowed, readStart: r.start, readCount: r.count)
            readsInFlight[rid] = r
        }
    }

    func addWriteValues(_ w: InFlightWrite, to allowed: inout [[[UInt8]?]], readStart: Int, readCount: Int) {
        let data = writeData[w.key]!.sectors
        for s in max(w.start, readStart)..<min(w.start + w.count, readStart + readCount) {
            allowed[s - readStart].append(data[s - w.start])
        }
    }

    public func clientCompleted(_ sim: Simulation, id: RequestID, request: ClientRequest, result: ClientResult) {
        switch request {
        case .read:
            guard let r = readsInFlight.removeValue(forKey: id) else { return }
            guard case .data(let bytes) = result else { return }
            readsChecked += 1
            for i in 0..<r.count {
                let got = Array(bytes[(i * 512)..<((i + 1) * 512)])
                let options = r.allowed[i]
                if options.contains(where: { $0 == nil }) || options.contains(where: { $0 == got }) { continue }
                sim.fail(.data, "read \(id) returned wrong data at array sector \(r.start + i) (\(describe(got)); expected \(options.compactMap { $0 }.map(describe).joined(separator: " or ")))")
                return
            }
        case .write, .writeZeroes, .trim:
            guard let w = writesInFlight.removeValue(forKey: id) else { return }
            let data = writeData[w.key]!.sectors
            var ok = true
            if case .failed = result { ok = false }
            for i in 0..<w.count {
                // A failed write may have landed in part: the sector is unknown from here on.
                committed[w.start + i] = ok && !w.isTrim ? data[i] : nil
            }
            if ok {
                var fua = false
                if case .write(_, _, let f) = request { fua = f }
                if case .writeZeroes(_, _, let f) = request { fua = fua || f }
                if fua { makeDurable([w.key]) } else { ackedNotDurable.append(w.key) }
            }
        case .flush:
            guard let covered = flushesInFlight.removeValue(forKey: id) else { return }
            if case .done = result { makeDurable(covered) }
        }
    }

    /// These acknowledged writes are durable: for each sector, the newest of them becomes the
    /// sector's floor value, and older history goes.
    func makeDurable(_ keys: [Int]) {
        let set = Set(keys)
        for key in keys {
            guard let (start, sectors) = writeData[key] else { continue }
            for i in 0..<sectors.count {
                let s = start + i
                guard let index = sinceDurable[s].firstIndex(of: key) else { continue }
                // Only move forward: a later key already durable wins.
                durableValue[s] = sectors[i]
                sinceDurable[s].removeFirst(index + 1)
            }
        }
        ackedNotDurable.removeAll { set.contains($0) }
    }

    public func crashed(_ sim: Simulation) {
        // Requests in flight die with the core: their writes may or may not have landed (they
        // stay in each sector's since-durable history). Until the restart is verified, only
        // sectors with nothing written since their durable point have a known value.
        writesInFlight.removeAll()
        readsInFlight.removeAll()
        flushesInFlight.removeAll()
        for s in 0..<sectorCount { committed[s] = sinceDurable[s].isEmpty ? durableValue[s] : nil }
    }

    /// After restart: every sector must hold its durable value or a later write's; the model then
    /// takes what is actually there.
    public func verifyAfterRestart(_ sim: Simulation, content: [UInt8]) {
        for s in 0..<sectorCount {
            let got = Array(content[(s * 512)..<((s + 1) * 512)])
            var options: [[UInt8]?] = [durableValue[s]]
            for key in sinceDurable[s] {
                let (start, sectors) = writeData[key]!
                options.append(sectors[s - start])
            }
            if !options.contains(where: { $0 == nil || $0! == got }) {
                sim.fail(.durability, "after the crash, array sector \(s) holds \(describe(got)); durable value was \(durableValue[s].map(describe) ?? "unknown") with \(sinceDurable[s].count) later writes")
                return
            }
            committed[s] = got
            durableValue[s] = got
            sinceDurable[s].removeAll()
        }
        ackedNotDurable.removeAll()
        sectorsVerified += sectorCount
    }

    /// Redundancy (design.md §5): the whole array, read end to end, equals the model.
    public func verifyContent(_ sim: Simulation, content: [UInt8], checker: SimFailure.Kind = .redundancy) {
        for s in 0..<sectorCount {
            guard let expected = committed[s] else { continue }
            let got = Array(content[(s * 512)..<((s + 1) * 512)])
            if got != expected {
                sim.fail(checker, "array sector \(s) reads \(describe(got)), expected \(describe(expected)) (failed members: \(sim.core.memberRoles.filter { $0 == .faulty }.count))")
                return
            }
        }
        sectorsVerified += sectorCount
    }

    func describe(_ sector: [UInt8]) -> String {
        if sector.allSatisfy({ $0 == 0 }) { return "zeros" }
        let tag = sector.prefix(8).reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        return "data tagged \(String(tag, radix: 16))"
    }
}

/// Reads the whole array through the core (the run keeps going while it does).
public func readWholeArray(_ sim: Simulation) -> [UInt8]? {
    let size = Int(sim.core.geometry.arraySectors * 512)
    var content = [UInt8](repeating: 0, count: size)
    var ok = true
    let chunk = 64 * 1024
    var ids: [RequestID: Int] = [:]
    final class Collector: SimChecker {
        var results: [RequestID: ClientResult] = [:]
        func clientCompleted(_ sim: Simulation, id: RequestID, request: ClientRequest, result: ClientResult) { results[id] = result }
    }
    let collector = Collector()
    sim.checkers.append(collector)
    defer { sim.checkers.removeAll { $0 === collector } }
    var offset = 0
    while offset < size {
        let n = min(chunk, size - offset)
        ids[sim.submit(.read(offsetBytes: UInt64(offset), length: n))] = offset
        offset += n
    }
    sim.runUntil { ids.keys.allSatisfy { collector.results[$0] != nil } }
    for (id, at) in ids {
        guard case .data(let bytes)? = collector.results[id] else {
            ok = false
            continue
        }
        content.replaceSubrange(at..<(at + bytes.count), with: bytes)
    }
    return ok && sim.failure == nil ? content : nil
}

/// Parity (design.md §5): after everything settled, `check` finds nothing; parity corrupted on
/// purpose is counted exactly (8 sectors per 4 KiB block) and `repair` puts it right.
public enum ParityChecker {
    /// Runs a sync action to completion; returns false on failure (recorded in `sim`).
    @discardableResult
    public static func runSync(_ sim: Simulation, _ action: String) -> Bool {
        guard waitForIdleSync(sim) else { return false }
        final class Waiter: SimChecker {
            var results: [RequestID: ControlResult] = [:]
            func controlCompleted(_ sim: Simulation, id: RequestID, command: ControlCommand, result: ControlResult) {
                results[id] = result
            }
        }
        let waiter = Waiter()
        sim.checkers.append(waiter)
        defer { sim.checkers.removeAll { $0 === waiter } }
        // The answer may come at once (inside `control`) or later.
        let id = sim.control(.set(attribute: "sync_action", value: action))
        sim.runUntil { waiter.results[id] != nil }
        let answered = waiter.results[id] != nil
        let answer = waiter.results[id] ?? .done
        guard answered, answer == .done else {
            if sim.failure == nil { sim.fail(.parity, "'\(action) > sync_action' was refused: \(answer)") }
            return false
        }
        return waitForIdleSync(sim)
    }

    static func waitForIdleSync(_ sim: Simulation, bound: Nanoseconds = 120 * nanosPerSecond) -> Bool {
        let deadline = sim.now + bound
        sim.runUntil { sim.core.syncKind == nil || sim.now > deadline }
        if sim.core.syncKind != nil && sim.failure == nil {
            sim.fail(.liveness, "sync \(sim.attribute("sync_action")) still running \(formatTime(bound)) later (\(sim.attribute("sync_completed")))")
        }
        return sim.failure == nil
    }

    /// The full parity protocol. Skipped on a degraded array (md's check does nothing there).
    public static func verify(_ sim: Simulation, corruptBlocks: Int = 3) {
        guard sim.core.degradedCount == 0, !sim.core.isBroken else { return }
        guard runSync(sim, "check") else { return }
        let found = sim.core.mismatchCount
        if found != 0 {
            sim.fail(.parity, "check after the workload found mismatch_cnt \(found), expected 0")
            return
        }
        let corrupted = corruptParity(sim, blocks: corruptBlocks)
        guard runSync(sim, "check") else { return }
        if sim.core.mismatchCount != UInt64(corrupted * 8) {
            sim.fail(.parity, "check counted mismatch_cnt \(sim.core.mismatchCount) after \(corrupted) parity blocks were corrupted, expected \(corrupted * 8)")
            return
        }
        guard runSync(sim, "repair") else { return }
        guard runSync(sim, "check") else { return }
        if sim.core.mismatchCount != 0 {
            sim.fail(.parity, "check after repair found mismatch_cnt \(sim.core.mismatchCount), expected 0")
        }
        sim.count("parity verifications")
    }

    /// Flips bytes in `blocks` distinct 4 KiB parity blocks on the members, behind the core's back.
    static func corruptParity(_ sim: Simulation, blocks: Int) -> Int {
        let g = sim.core.geometry
        let blocksPerChunk = Int(g.chunkSectors / 8)
        var chosen: Set<UInt64> = []
        var attempts = 0
        while chosen.count < blocks && attempts < 100 {
            attempts += 1
            let row = UInt64(sim.random.below(Int(g.rowCount)))
            let block = UInt64(sim.random.below(blocksPerChunk))
            let key = row * UInt64(blocksPerChunk) + block
            if chosen.contains(key) { continue }
            let stripe = g.stripeRow(row)
            let role = stripe.qDisk != nil && sim.random.chance(0.5) ? stripe.qDisk! : stripe.pDisk
            guard let m = sim.core.memberRoles.firstIndex(of: .active(slot: role)), let sb = sim.members[m].probe()?.superblock else { continue }
            let offset = Int((sb.dataOffsetSectors + row * g.chunkSectors + block * 8) * 512) + sim.random.below(4096)
            sim.members[m].corrupt(offset: offset, length: 1, xor: UInt8(1 + sim.random.below(255)))
            chosen.insert(key)
        }
        return chosen.count
    }
}
