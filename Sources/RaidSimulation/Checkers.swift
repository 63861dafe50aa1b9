import MDFormat
import RaidCore
import RaidMath

#if canImport(Glibc)
import Glibc
#endif

/// What the liveness checker needs to see of a run: the simulated array core, or a model of
/// md's protocol (so the same checker judges both).
public protocol LivenessSubject: AnyObject {
    var now: Nanoseconds { get }
    /// md's MD_SB_CHANGE_PENDING: `array_state` reads `write-pending`.
    var writePendingNow: Bool { get }
    /// Requests not answered yet: a description and when each was made.
    var unansweredRequests: [(String, Nanoseconds)] { get }
    /// When the oldest of them was made (without describing them all).
    var oldestUnansweredSince: Nanoseconds? { get }
    func fail(_ kind: SimFailure.Kind, _ message: String)
}

extension LivenessSubject {
    public var oldestUnansweredSince: Nanoseconds? { unansweredRequests.map(\.1).min() }
}

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

    public func afterEvent(_ sim: Simulation) { check(sim) }

    /// Judges the subject now; call after every event.
    public func check(_ subject: LivenessSubject) {
        let now = subject.now
        if subject.writePendingNow {
            let since = writePendingSince ?? now
            writePendingSince = since
            longestWritePending = max(longestWritePending, now - since)
            if now - since > writePendingBound {
                subject.fail(.liveness, "array_state has read write-pending for \(formatTime(now - since)) (bound \(formatTime(writePendingBound)))")
                return
            }
        } else {
            writePendingSince = nil
        }
        // Scan the (bounded) pending tables every simulated 10 ms.
        guard now >= checkedAt + 10 * nanosPerMilli else { return }
        checkedAt = now
        guard let oldest = subject.oldestUnansweredSince, now - oldest > requestBound else { return }
        for (what, since) in subject.unansweredRequests where now - since > requestBound {
            subject.fail(.liveness, "\(what) unanswered for \(formatTime(now - since))")
            return
        }
    }

    public func crashed(_ sim: Simulation) { writePendingSince = nil }
}

/// What a sector of the model holds: zeros, nothing known, or sector `index` of write `key`.
struct SectorValue: Equatable {
    let key: Int
    let index: Int
    static let zero = SectorValue(key: -1, index: 0)
    static let unknown = SectorValue(key: -2, index: 0)
    static func write(_ key: Int, _ index: Int) -> SectorValue { SectorValue(key: key, index: index) }
}

/// Data (design.md §5): a shadow copy of the array; every read returns the last acknowledged
/// write, or the data of a write to the same sector that overlapped the read in time.
/// Durability: after a crash and restart, every write acknowledged with FUA or followed by an
/// acknowledged FLUSH reads back intact (later writes may or may not have landed).
public final class DataChecker: SimChecker {
    let sectorCount: Int
    /// Per sector: the acknowledged content.
    var committed: [SectorValue]
    /// Every write by key (keys are 0, 1, 2, ... in submission order, so arrays, not hashes: the
    /// checker looks one up per sector read). `writeData` nil: zeroes; trims are `unknown`.
    var writeData: [IOBuffer?] = []
    var writeIsTrim: [Bool] = []
    var writeStart: [Int] = []
    var writeCount: [Int] = []
    var nextWriteKey: Int { writeData.count }
    var writesInFlight: [RequestID: InFlightWrite] = [:]
    var readsInFlight: [RequestID: InFlightRead] = [:]
    /// Durability, per sector: the value known durable and the writes since.
    var durableValue: [SectorValue]
    var sinceDurable: [[Int]]
    /// Writes acknowledged and not yet covered by a flush (keys, in order).
    var ackedNotDurable: [Int] = []
    var flushesInFlight: [RequestID: [Int]] = [:]
    public private(set) var readsChecked = 0
    public private(set) var sectorsVerified = 0

    struct InFlightWrite {
        let key: Int
        let start: Int
        let count: Int
    }

    struct InFlightRead {
        let start: Int
        let count: Int
        /// The model when the read was issued.
        var snapshot: [SectorValue]
        /// Writes that overlapped the read in time (any of their sectors may show).
        var overlapping: [InFlightWrite]

        func allowed(_ i: Int, _ checker: DataChecker) -> [SectorValue] {
            var options = [snapshot[i]]
            let sector = start + i
            for w in overlapping where w.start <= sector && sector < w.start + w.count {
                options.append(checker.value(ofWrite: w.key, sector: sector - w.start))
            }
            return options
        }
    }

    public init(arrayBytes: UInt64) {
        sectorCount = Int(arrayBytes / 512)
        committed = [SectorValue](repeating: .zero, count: sectorCount)
        durableValue = committed
        sinceDurable = [[Int]](repeating: [], count: sectorCount)
    }

    /// The value sector `i` of write `key` stands for.
    func value(ofWrite key: Int, sector i: Int) -> SectorValue {
        if writeIsTrim[key] { return .unknown }
        return writeData[key] == nil ? .zero : .write(key, i)
    }

    /// Whether `bytes[at..<at+512]` is what `v` says (unknown matches anything).
    func matches(_ v: SectorValue, _ bytes: UnsafeRawBufferPointer, at: Int) -> Bool {
        switch v.key {
        case -2: return true
        case -1:
            return bufferIsZero(bytes.baseAddress! + at, byteCount: 512)
        default:
            return memcmp(bytes.baseAddress! + at, writeData[v.key]!.baseAddress + v.index * 512, 512) == 0
        }
    }

    public func clientSubmitted(_ sim: Simulation, id: RequestID, request: ClientRequest) {
        switch request {
        case .read(let offset, let length, _):
            let start = Int(offset / 512)
            let count = length / 512
            let overlapping = writesInFlight.values.filter { $0.start < start + count && start < $0.start + $0.count }
            readsInFlight[id] = InFlightRead(start: start, count: count, snapshot: Array(committed[start..<(start + count)]), overlapping: overlapping)
        case .write(let offset, let data, _):
            beginWrite(id, start: Int(offset / 512), count: data.count / 512, data: data, isTrim: false)
        case .writeZeroes(let offset, let length, _):
            beginWrite(id, start: Int(offset / 512), count: length / 512, data: nil, isTrim: false)
        case .trim(let offset, let length):
            beginWrite(id, start: Int(offset / 512), count: length / 512, data: nil, isTrim: true)
        case .flush:
            flushesInFlight[id] = ackedNotDurable
        }
    }

    /// Records a write and returns its key.
    @discardableResult
    func addWrite(data: IOBuffer?, isTrim: Bool, start: Int, count: Int) -> Int {
        writeData.append(data)
        writeIsTrim.append(isTrim)
        writeStart.append(start)
        writeCount.append(count)
        return writeData.count - 1
    }

    func beginWrite(_ id: RequestID, start: Int, count: Int, data: IOBuffer?, isTrim: Bool) {
        let key = addWrite(data: data, isTrim: isTrim, start: start, count: count)
        let w = InFlightWrite(key: key, start: start, count: count)
        writesInFlight[id] = w
        for i in 0..<count { sinceDurable[start + i].append(key) }
        // Reads already in flight may see this write too.
        for rid in readsInFlight.keys {
            let r = readsInFlight[rid]!
            guard w.start < r.start + r.count && r.start < w.start + w.count else { continue }
            readsInFlight[rid]!.overlapping.append(w)
        }
    }

    public func clientCompleted(_ sim: Simulation, id: RequestID, request: ClientRequest, result: ClientResult) {
        switch request {
        case .read:
            guard let r = readsInFlight.removeValue(forKey: id) else { return }
            guard case .data(let bytes) = result else { return }
            // A whole-array read is judged as a whole by its caller (redundancy, durability).
            if sim.wholeArrayReadInProgress { return }
            readsChecked += 1
            bytes.withUnsafeBytes { raw in
                for i in 0..<r.count where !matches(r.snapshot[i], raw, at: i * 512) {
                    let options = r.allowed(i, self)
                    if options.contains(where: { matches($0, raw, at: i * 512) }) { continue }
                    let got = Array(raw[(i * 512)..<((i + 1) * 512)])
                    sim.fail(.data, "read \(id) returned wrong data at array sector \(r.start + i) (\(describe(got)); expected \(options.map(describe).joined(separator: " or ")))")
                    return
                }
            }
        case .write, .writeZeroes, .trim:
            guard let w = writesInFlight.removeValue(forKey: id) else { return }
            var ok = true
            if case .failed = result { ok = false }
            for i in 0..<w.count {
                // A failed write may have landed in part: the sector is unknown from here on.
                committed[w.start + i] = ok ? value(ofWrite: w.key, sector: i) : .unknown
            }
            if ok {
                var fua = false
                if case .write(_, _, let f) = request { fua = f }
                if case .writeZeroes(_, _, let f) = request { fua = f }
                if fua { makeDurable([w.key]) } else { ackedNotDurable.append(w.key) }
            }
        case .flush:
            guard let covered = flushesInFlight.removeValue(forKey: id) else { return }
            if case .done = result { makeDurable(covered) }
        }
    }

    /// These acknowledged writes are durable: each of their sectors now holds at least them.
    func makeDurable(_ keys: [Int]) {
        let set = Set(keys)
        for key in keys {
            let start = writeStart[key]
            let count = writeCount[key]
            for i in 0..<count {
                let s = start + i
                guard let index = sinceDurable[s].firstIndex(of: key) else { continue }
                durableValue[s] = value(ofWrite: key, sector: i)
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
        // Until the restart is verified (durability), nothing is known for certain.
        for s in 0..<sectorCount { committed[s] = .unknown }
    }

    /// After restart: every sector must hold its durable value or a later write's; the model then
    /// takes what is actually there.
    public func verifyAfterRestart(_ sim: Simulation, content: [UInt8]) {
        let key = addWrite(data: IOBuffer(content), isTrim: false, start: 0, count: sectorCount)
        content.withUnsafeBytes { raw in
            for s in 0..<sectorCount {
                var options = [durableValue[s]]
                for k in sinceDurable[s] { options.append(value(ofWrite: k, sector: s - writeStart[k])) }
                if !options.contains(where: { matches($0, raw, at: s * 512) }) {
                    let got = Array(content[(s * 512)..<((s + 1) * 512)])
                    sim.fail(.durability, "after the crash, array sector \(s) holds \(describe(got)); durable value was \(describe(durableValue[s])) with \(sinceDurable[s].count) later writes")
                    return
                }
                committed[s] = .write(key, s)
                durableValue[s] = .write(key, s)
                sinceDurable[s].removeAll()
            }
        }
        ackedNotDurable.removeAll()
        sectorsVerified += sectorCount
    }

    /// Redundancy (design.md §5): the whole array, read end to end, equals the model.
    public func verifyContent(_ sim: Simulation, content: [UInt8], checker: SimFailure.Kind = .redundancy) {
        content.withUnsafeBytes { raw in
            for s in 0..<sectorCount where !matches(committed[s], raw, at: s * 512) {
                let got = Array(content[(s * 512)..<((s + 1) * 512)])
                sim.fail(checker, "array sector \(s) reads \(describe(got)), expected \(describe(committed[s])) (failed members: \(sim.core.memberRoles.filter { $0 == .faulty }.count))")
                return
            }
        }
        sectorsVerified += sectorCount
    }

    func describe(_ v: SectorValue) -> String {
        switch v.key {
        case -1: return "zeros"
        case -2: return "anything"
        default: return describe(Array(writeData[v.key]!.bytes[(v.index * 512)..<((v.index + 1) * 512)]))
        }
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
    sim.wholeArrayReadInProgress = true
    defer {
        sim.checkers.removeAll { $0 === collector }
        sim.wholeArrayReadInProgress = false
    }
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
        content.replaceSubrange(at..<(at + bytes.count), with: bytes.bytes)
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
        let id = sim.control(set: "sync_action", action)
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

    /// The full parity protocol. Skipped on a degraded array (md's check does nothing there), and
    /// cut short when faults still being injected fail a member part way through: md interrupts
    /// the check then, and `mismatch_cnt` counts only what the check reached.
    public static func verify(_ sim: Simulation, corruptBlocks: Int = 3) {
        func arrayIsWhole() -> Bool { sim.core.degradedCount == 0 && !sim.core.isBroken }
        func syncRanOnWholeArray(_ action: String) -> Bool {
            guard runSync(sim, action) else { return false }
            if arrayIsWhole() { return true }
            sim.count("parity verifications cut short by a member failure")
            return false
        }
        guard arrayIsWhole() else { return }
        guard syncRanOnWholeArray("check") else { return }
        let found = sim.core.mismatchCount
        if found != 0 {
            sim.fail(.parity, "check after the workload found mismatch_cnt \(found), expected 0")
            return
        }
        let corrupted = corruptParity(sim, blocks: corruptBlocks)
        guard syncRanOnWholeArray("check") else { return }
        if sim.core.mismatchCount != UInt64(corrupted * 8) {
            sim.fail(.parity, "check counted mismatch_cnt \(sim.core.mismatchCount) after \(corrupted) parity blocks were corrupted, expected \(corrupted * 8)")
            return
        }
        guard syncRanOnWholeArray("repair") else { return }
        guard syncRanOnWholeArray("check") else { return }
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
            guard let m = sim.core.member(inSlot: Role(role)), let sb = sim.members[m.rawValue].probe()?.superblock else { continue }
            let offset = Int((sb.dataOffsetSectors + row * g.chunkSectors + block * 8) * 512) + sim.random.below(4096)
            sim.members[m.rawValue].corrupt(offset: offset, length: 1, xor: UInt8(1 + sim.random.below(255)))
            chosen.insert(key)
        }
        return chosen.count
    }
}

/// Metadata truth (the clean/dirty protocol after a crash): right after the restart, every stripe
/// the metadata vouches for (no resync owed would touch it: the array assembled clean, or its
/// bitmap bit is clear) has consistent parity in the members' bytes. A data or parity write that
/// landed before the superblock said "dirty", or before its bitmap bit was on disk, leaves
/// exactly this behind: a stripe the array trusts whose parity is stale, which a later degraded
/// read would turn into wrong data.
public enum MetadataTruthChecker {
    public static func verify(_ sim: Simulation) {
        let core = sim.core
        let g = core.geometry
        // With a member out, parity cannot be recomputed to compare; the crash scenario keeps
        // every member in service.
        guard core.degradedCount == 0 else { return }
        let chunkBytes = g.chunkBytes
        let rowBuffer = IOBuffer(zeroedCount: chunkBytes * g.raidDisks)
        let zero = IOBuffer(zeroedCount: 4096)
        let scratch = ParityScratch(byteCount: 4096)
        var vouched = 0
        for row in 0..<g.rowCount {
            let stripe = g.stripeRow(row)
            for role in 0..<g.raidDisks {
                guard let m = core.member(inSlot: Role(role)) else { return }
                let start = Int((core.superblockTemplate(member: m).dataOffsetSectors + row * g.chunkSectors) * 512)
                sim.members[m.rawValue].current.withUnsafeBytes { bytes in
                    (rowBuffer.baseAddress + role * chunkBytes).copyMemory(from: bytes.baseAddress! + start, byteCount: chunkBytes)
                }
            }
            let parity = RowParity(row: stripe, level: g.level, byteCount: 4096, zero: UnsafeRawPointer(zero.baseAddress))
            for block in 0..<(chunkBytes / 4096) {
                let memberSector = row * g.chunkSectors + UInt64(block * 8)
                guard core.metadataVouchesForParity(memberSector: memberSector) else { continue }
                vouched += 1
                let result = parity.check({ UnsafeRawPointer(rowBuffer.baseAddress + $0 * chunkBytes) }, offset: block * 4096, length: 4096, scratch: scratch)
                if result != .consistent {
                    sim.fail(
                        .parity,
                        "after the crash the array's metadata vouches for member sector \(memberSector) (row \(row)) but its parity is stale: "
                            + "a write landed before the superblock said dirty (array_state \(core.arrayState), resync_start \(core.attribute(.resyncStart)))")
                    return
                }
            }
        }
        sim.count("blocks vouched for after a crash", vouched)
    }
}
