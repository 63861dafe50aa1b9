import MDFormat
import RaidCore

/// How members misbehave in a run.
public struct FaultProfile: Sendable, Equatable {
    public var name: String
    public var latencyMinNanos: Nanoseconds = 20_000
    public var latencyMaxNanos: Nanoseconds = 400_000
    /// Chance per I/O of a long stall (a disk retrying, a saturated queue).
    public var stallChance = 0.0
    public var stallMaxNanos: Nanoseconds = 300 * nanosPerMilli
    public var readErrorChance = 0.0
    public var writeErrorChance = 0.0

    public init(name: String) { self.name = name }

    public static let none = FaultProfile(name: "none")
    public static var latency: FaultProfile {
        var p = FaultProfile(name: "latency")
        p.stallChance = 0.01
        return p
    }
    public static var errors: FaultProfile {
        var p = FaultProfile(name: "errors")
        p.readErrorChance = 0.004
        p.writeErrorChance = 0.0015
        return p
    }
    public static var all: FaultProfile {
        var p = FaultProfile(name: "all")
        p.stallChance = 0.01
        p.readErrorChance = 0.004
        p.writeErrorChance = 0.0015
        return p
    }

    public static func named(_ name: String) -> FaultProfile? {
        switch name {
        case "none": return FaultProfile.none
        case "latency": return .latency
        case "errors": return .errors
        case "all": return .all
        default: return nil
        }
    }
}

/// What went wrong in a run, by the checker that saw it.
public struct SimFailure: Error, Sendable, CustomStringConvertible {
    public enum Kind: String, Sendable { case liveness, data, durability, parity, redundancy, invariant, determinism }
    public let kind: Kind
    public let message: String
    public var description: String { "\(kind.rawValue): \(message)" }
}

public struct SimResult: Sendable {
    public let seed: UInt64
    public let scenario: String
    public let failure: SimFailure?
    public let traceHash: UInt64
    public let events: Int
    /// Member I/Os the simulated members performed (reads, writes, flushes; faults included).
    public let memberIOs: Int
    public let simulatedNanos: Nanoseconds
    /// For a failure: the requests still waiting and the last events before it.
    public let report: [String]
    public let stats: [String: Int]
}

/// The array configuration a run uses (drawn from its seed).
public struct SimArrayShape: Sendable, CustomStringConvertible {
    public var level: RaidLevel
    public var layout: RaidLayout
    public var raidDisks: Int
    public var chunkKiB: UInt64
    public var rows: UInt64
    public var bitmap: Bool
    public var spares: Int
    public var stripeCacheSize: Int

    public init(level: RaidLevel, layout: RaidLayout, raidDisks: Int, chunkKiB: UInt64, rows: UInt64, bitmap: Bool, spares: Int, stripeCacheSize: Int) {
        self.level = level
        self.layout = layout
        self.raidDisks = raidDisks
        self.chunkKiB = chunkKiB
        self.rows = rows
        self.bitmap = bitmap
        self.spares = spares
        self.stripeCacheSize = stripeCacheSize
    }

    public var description: String {
        "\(level) \(layout) n=\(raidDisks) chunk=\(chunkKiB)K rows=\(rows)\(bitmap ? " bitmap" : "")\(spares > 0 ? " spares=\(spares)" : "") stripe_cache_size=\(stripeCacheSize)"
    }

    public static func random(_ r: inout SimRandom, spares: Int = 0) -> SimArrayShape {
        let level: RaidLevel = r.chance(0.5) ? .raid6 : .raid5
        let n = level == .raid6 ? 4 + r.below(4) : 3 + r.below(5)
        let layouts = RaidLayout.valid(for: level)
        return SimArrayShape(
            level: level, layout: layouts[r.below(layouts.count)], raidDisks: n, chunkKiB: [4, 8, 16, 32][r.below(4)],
            rows: UInt64(4 + r.below(12)), bitmap: r.chance(0.5), spares: spares, stripeCacheSize: 17 + r.below(24))
    }
}

/// The events a run's scheduler orders.
enum SimEventKind {
    case ioComplete(MemberIOID, epoch: Int)
    case timer(TimerID, token: Int, epoch: Int)
    case wake(tag: Int)
}

struct ScheduledEvent {
    let time: Nanoseconds
    let seq: UInt64
    let kind: SimEventKind
}

/// A binary heap ordered by (time, seq): same seed, same order.
struct EventQueue {
    var heap: [ScheduledEvent] = []

    var isEmpty: Bool { heap.isEmpty }
    var count: Int { heap.count }

    mutating func push(_ e: ScheduledEvent) {
        heap.append(e)
        var i = heap.count - 1
        while i > 0 {
            let parent = (i - 1) / 2
            if less(heap[i], heap[parent]) { heap.swapAt(i, parent); i = parent } else { break }
        }
    }

    mutating func pop() -> ScheduledEvent? {
        guard !heap.isEmpty else { return nil }
        heap.swapAt(0, heap.count - 1)
        let top = heap.removeLast()
        var i = 0
        while true {
            let l = 2 * i + 1, r = 2 * i + 2
            var m = i
            if l < heap.count && less(heap[l], heap[m]) { m = l }
            if r < heap.count && less(heap[r], heap[m]) { m = r }
            if m == i { break }
            heap.swapAt(i, m)
            i = m
        }
        return top
    }

    func less(_ a: ScheduledEvent, _ b: ScheduledEvent) -> Bool { a.time < b.time || (a.time == b.time && a.seq < b.seq) }
}

/// An FNV-style hash over everything that crosses the core's boundary: two runs of one seed must agree.
struct TraceHasher {
    var value: UInt64 = 0xcbf2_9ce4_8422_2325
    /// A word at a time (FNV's multiply, then a fold of the high bits down so that every input
    /// bit reaches the low bits the next word meets); byte by byte it was 3 % of a run.
    mutating func add(_ v: UInt64) {
        value = (value ^ v) &* 0x100_0000_01b3
        value ^= value >> 29
    }
    /// Data is sampled (a word every 256 bytes, two per sector): enough to see two runs diverge
    /// (the data checker, not this hash, judges the bytes), cheap enough for every block.
    mutating func add(_ bytes: IOBuffer) {
        add(UInt64(bytes.count))
        var h: UInt64 = 0
        bytes.withUnsafeBytes { raw in
            var i = 0
            while i + 8 <= raw.count {
                h = (h ^ raw.loadUnaligned(fromByteOffset: i, as: UInt64.self)) &* 0x100_0000_01b3
                i += 256
            }
        }
        add(h)
    }
}

/// Observers that judge a run from outside the core (design.md §5).
public protocol SimChecker: AnyObject {
    func clientSubmitted(_ sim: Simulation, id: RequestID, request: ClientRequest)
    func clientCompleted(_ sim: Simulation, id: RequestID, request: ClientRequest, result: ClientResult)
    func controlSubmitted(_ sim: Simulation, id: RequestID, command: ControlCommand)
    func controlCompleted(_ sim: Simulation, id: RequestID, command: ControlCommand, result: ControlResult)
    /// Called after every event the core handled.
    func afterEvent(_ sim: Simulation)
    func crashed(_ sim: Simulation)
    func restarted(_ sim: Simulation)
}

extension SimChecker {
    public func clientSubmitted(_ sim: Simulation, id: RequestID, request: ClientRequest) {}
    public func clientCompleted(_ sim: Simulation, id: RequestID, request: ClientRequest, result: ClientResult) {}
    public func controlSubmitted(_ sim: Simulation, id: RequestID, command: ControlCommand) {}
    public func controlCompleted(_ sim: Simulation, id: RequestID, command: ControlCommand, result: ControlResult) {}
    public func afterEvent(_ sim: Simulation) {}
    public func crashed(_ sim: Simulation) {}
    public func restarted(_ sim: Simulation) {}
}

/// A workload: issues requests and control commands, reacts to completions, and does its own
/// end-of-run verification.
public protocol SimScenario: AnyObject {
    var name: String { get }
    /// The array this scenario wants (drawn from the run's random stream).
    func shape(_ random: inout SimRandom) -> SimArrayShape
    func configure(_ config: inout CoreConfig, _ random: inout SimRandom)
    func begin(_ sim: Simulation)
    func wake(_ sim: Simulation, tag: Int)
    func clientCompleted(_ sim: Simulation, id: RequestID, request: ClientRequest, result: ClientResult)
    func controlCompleted(_ sim: Simulation, id: RequestID, command: ControlCommand, result: ControlResult)
    /// No more work will be issued (the run drains, then `finish` verifies).
    var workloadDone: Bool { get }
    func finish(_ sim: Simulation)
    /// A line on how far the workload got, for failure reports.
    var progress: String { get }
}

extension SimScenario {
    public func configure(_ config: inout CoreConfig, _ random: inout SimRandom) {}
    public func clientCompleted(_ sim: Simulation, id: RequestID, request: ClientRequest, result: ClientResult) {}
    public func controlCompleted(_ sim: Simulation, id: RequestID, command: ControlCommand, result: ControlResult) {}
    public func finish(_ sim: Simulation) {}
    public var progress: String { "" }
}

/// One seeded run: simulated members, the real `RaidCore` behind the shared `CoreDriver`, a
/// scheduler that reorders completions and timers, a scenario and the checkers. The simulation
/// is the driver's shell: it performs member I/O on `SimMember`s at seeded times.
public final class Simulation: LivenessSubject, CoreShell {
    public typealias ClientContext = Void
    public typealias ControlContext = Void

    public let seed: UInt64
    public let faults: FaultProfile
    package let variant: FaultyCoreVariant
    public private(set) var shape: SimArrayShape
    public private(set) var coreConfig: CoreConfig
    /// The driver of the core running now (a new one after each restart).
    public private(set) var driver: CoreDriver<Simulation>!
    public var core: RaidCore { driver.core }
    public private(set) var members: [SimMember]
    public var random: SimRandom
    /// The fault stream is separate so that scenario choices do not shift fault timing.
    var faultRandom: SimRandom
    public private(set) var now: Nanoseconds = 0
    var queue = EventQueue()
    var seq: UInt64 = 0
    var epoch = 0
    var trace = TraceHasher()
    public private(set) var eventCount = 0
    /// Member I/Os completed so far, failed ones included (what `SimResult.memberIOs` reports).
    public private(set) var memberIOCount = 0
    /// The last events, for failure reports (bounded; formatted only when reported).
    var recent: [(Nanoseconds, RecentEvent)] = []
    var recentHead = 0
    public var checkers: [SimChecker] = []
    public let scenario: SimScenario
    public private(set) var failure: SimFailure?
    /// Faults heal once the workload is done (the liveness bound applies from then on).
    public var faultsHealed = false
    /// Members the fault injector may still kill (write errors beyond redundancy are not injected).
    public var memberFailuresAllowed: Int
    /// Whether faults may take members out of service (bad sectors, deaths) at all. Off where a
    /// crash meets them: a dirty array that also lost a member cannot be trusted (the RAID5
    /// write hole, which md refuses to assemble and swraid too).
    public var spoilingAllowed = true
    /// `readWholeArray` is reading everything; its caller judges the content.
    public var wholeArrayReadInProgress = false
    public let maxEvents: Int
    public private(set) var stats: [String: Int] = [:]
    public var keepTraceLog = false
    /// Receives every event line as it happens (`swraid sim --trace`).
    public var traceSink: ((String) -> Void)?
    public private(set) var traceLog: [String] = []
    /// Called after every member I/O completion the core has handled, with the I/O (the crash
    /// scenario uses it to fail the power at chosen points around metadata writes).
    public var memberIOObserver: ((Simulation, MemberIORequest, MemberIOResult) -> Void)?

    package init(seed: UInt64, scenario: SimScenario, faults: FaultProfile, variant: FaultyCoreVariant = [], maxEvents: Int = 400_000) throws {
        self.seed = seed
        self.scenario = scenario
        self.faults = faults
        self.variant = variant
        self.maxEvents = maxEvents
        var r = SimRandom(seed: seed)
        faultRandom = r.fork()
        shape = scenario.shape(&r)
        var config = CoreConfig()
        config.stripeCacheSize = shape.stripeCacheSize
        config.wallClockAtZeroSeconds = 1_764_000_000
        config.syncWindowStripes = 4
        config.maxReadErrors = 1000
        scenario.configure(&config, &r)
        coreConfig = config
        random = r
        members = try Simulation.makeMembers(shape)
        memberFailuresAllowed = shape.level.maxDegraded
        let assembly = try CoreAssembly(members: members.compactMap { $0.probe() })
        let core = try RaidCore(assembly: assembly, config: config, variant: variant, now: 0)
        driver = CoreDriver(core: core, shell: self)
    }

    public convenience init(seed: UInt64, scenario: SimScenario, faults: FaultProfile, maxEvents: Int = 400_000) throws {
        try self.init(seed: seed, scenario: scenario, faults: faults, variant: [], maxEvents: maxEvents)
    }

    /// Member images as `swraid create` would lay them out (small data offset for speed), with
    /// any spares after the active members.
    public static func makeMembers(_ shape: SimArrayShape) throws -> [SimMember] {
        let n = shape.raidDisks
        var request = CreateRequest(
            level: shape.level, raidDisks: n, memberSizesSectors: [UInt64?](repeating: nil, count: n),
            arrayUUID: (0..<16).map { UInt8(truncatingIfNeeded: $0 &* 17 &+ 3) }, deviceUUIDs: (0..<n).map { i in (0..<16).map { UInt8($0 + i * 16) } },
            timeSeconds: 1_764_000_000)
        request.chunkKiB = shape.chunkKiB
        request.layout = shape.layout
        request.sizeSectors = shape.rows * shape.chunkKiB * 2
        request.bitmap = shape.bitmap ? .internal_ : .none
        request.bitmapChunkBytes = shape.bitmap ? shape.chunkKiB * 1024 * 2 : nil
        request.dataOffsetSectors = 48
        request.homehost = "sim"
        request.name = "sim"
        let plan = try CreatePlan(request, clean: true)
        var images: [[UInt8]] = []
        for i in 0..<n {
            var image = [UInt8](repeating: 0, count: Int(plan.memberSizesSectors[i]) * 512)
            let sb = plan.superblocks[i]
            let bytes = sb.encode()
            image.replaceSubrange(4096..<(4096 + bytes.count), with: bytes)
            if let area = plan.bitmapAreaBytes {
                let at = Int(Int64(sb.superOffsetSectors) + Int64(sb.bitmapOffsetSectors)) * 512
                image.replaceSubrange(at..<(at + area.count), with: area)
            }
            images.append(image)
        }
        for s in 0..<shape.spares {
            // A spare: same array, a device number past the active ones, role spare everywhere.
            var sb = plan.superblocks[0]
            sb.devNumber = UInt32(n + s)
            sb.deviceUUID = (0..<16).map { UInt8(200 + $0 + s) }
            var image = [UInt8](repeating: 0, count: Int(plan.memberSizesSectors[0]) * 512)
            let bytes = sb.withValidChecksum().encode()
            image.replaceSubrange(4096..<(4096 + bytes.count), with: bytes)
            images.append(image)
        }
        return images.enumerated().map { SimMember(name: "sim\($0.offset)", image: $0.element) }
    }

    // MARK: - running

    /// Runs the scenario to the end: workload, drain (faults healed), verification.
    public func run() -> SimResult {
        driver.start(now: now)
        scenario.begin(self)
        _ = runUntil { [unowned self] in self.scenario.workloadDone }
        if failure == nil {
            faultsHealed = true
            drain()
        }
        if failure == nil { scenario.finish(self) }
        // How often the core's write-stream gathering was exercised (the last core of the run).
        count("gathered rows", driver.core.counters.gatheredRows)
        count("gathered rows released to stripes", driver.core.counters.gathersReleased)
        count("gathered rows continued late", driver.core.counters.gathersLate)
        count("gathered rows released with nothing else in flight", driver.core.counters.gathersReleasedIdle)
        return SimResult(
            seed: seed, scenario: scenario.name, failure: failure, traceHash: trace.value, events: eventCount, memberIOs: memberIOCount, simulatedNanos: now,
            report: failure == nil ? [] : failureReport(), stats: stats)
    }

    /// After the workload: every request and control command must be answered within the bound.
    public func drain(bound: Nanoseconds = 60 * nanosPerSecond) {
        let deadline = now + bound
        let done = runUntil { [unowned self] in self.driver.pendingClients.isEmpty && self.driver.pendingControls.isEmpty || self.now > deadline }
        if done && (!driver.pendingClients.isEmpty || !driver.pendingControls.isEmpty) {
            fail(.liveness, "\(driver.pendingClients.count) client requests and \(driver.pendingControls.count) control commands still unanswered \(bound / nanosPerSecond) s after the workload ended and faults healed")
        }
    }

    /// Processes events until `condition` holds, the queue empties, or a failure. Returns true
    /// when the condition was met.
    @discardableResult
    public func runUntil(_ condition: () -> Bool) -> Bool {
        while failure == nil {
            if condition() { return true }
            guard let event = queue.pop() else {
                if !driver.pendingClients.isEmpty || !driver.pendingControls.isEmpty {
                    fail(.liveness, "stalled: nothing left to happen but \(driver.pendingClients.count) client requests and \(driver.pendingControls.count) control commands wait")
                }
                return condition()
            }
            step(event)
        }
        return false
    }

    /// Runs for `nanos` of simulated time.
    public func run(for nanos: Nanoseconds) {
        let until = now + nanos
        wake(after: nanos, tag: -1)
        runUntil { [unowned self] in self.now >= until }
    }

    func step(_ event: ScheduledEvent) {
        precondition(event.time >= now)
        now = event.time
        eventCount += 1
        if eventCount > maxEvents {
            fail(.liveness, "more than \(maxEvents) events: the run does not settle")
            return
        }
        switch event.kind {
        case .ioComplete(let id, let e):
            guard e == epoch else { return }
            completeIO(id)
        case .timer(let timer, let token, let e):
            guard e == epoch, driver.timers[timer]?.token == UInt64(token) else { return }
            note(.timer(timer))
            trace.add(3); trace.add(now)
            driver.timerFired(timer, token: UInt64(token), now: now)
        case .wake(let tag):
            if tag >= 0 { scenario.wake(self, tag: tag) }
        }
        for c in checkers { c.afterEvent(self) }
    }

    // MARK: - scheduling helpers for scenarios

    public func wake(after delay: Nanoseconds, tag: Int) {
        seq += 1
        queue.push(ScheduledEvent(time: now + delay, seq: seq, kind: .wake(tag: tag)))
    }

    @discardableResult
    public func submit(_ request: ClientRequest) -> RequestID {
        // Checkers see the request before the core does (it may complete at once).
        let id = RequestID(driver.upcomingRequestID)
        note(.client(id, request))
        trace.add(1); trace.add(id.rawValue); trace.add(now)
        for c in checkers { c.clientSubmitted(self, id: id, request: request) }
        let given = driver.submit(request, context: (), now: now)
        precondition(given == id, "the driver numbered the request differently")
        return id
    }

    @discardableResult
    public func control(_ command: ControlCommand) -> RequestID {
        let id = RequestID(driver.upcomingRequestID)
        note(.control(id, command))
        trace.add(2); trace.add(id.rawValue); trace.add(now)
        for c in checkers { c.controlSubmitted(self, id: id, command: command) }
        let given = driver.control(command, context: (), now: now)
        precondition(given == id, "the driver numbered the command differently")
        return id
    }

    /// `echo VALUE > md/NAME`, parsed as the control plane parses it.
    @discardableResult
    public func control(set attribute: String, _ value: String) -> RequestID {
        control(try! ControlCommand.parse(attribute: attribute, value: value))
    }

    public func attribute(_ name: String) -> String { core.attribute(name) ?? "?" }

    public var writePendingNow: Bool { core.writePending }

    public var pendingClients: IDTable<RequestID, CoreDriver<Simulation>.PendingClient> { driver.pendingClients }
    public var pendingControls: IDTable<RequestID, CoreDriver<Simulation>.PendingControl> { driver.pendingControls }

    public var unansweredRequests: [(String, Nanoseconds)] { driver.unanswered }
    public var oldestUnansweredSince: Nanoseconds? { driver.oldestUnansweredSince }

    public func fail(_ kind: SimFailure.Kind, _ message: String) {
        if failure == nil {
            failure = SimFailure(kind: kind, message: message)
            record("FAILURE \(kind.rawValue): \(message)")
        }
    }

    public func count(_ key: String, _ n: Int = 1) { stats[key, default: 0] += n }

    // MARK: - the driver's shell

    public func performMemberIO(_ io: MemberIORequest) {
        if traceSink != nil { record("io \(io.id): \(io)") }
        trace.add(10); trace.add(io.id.rawValue); trace.add(UInt64(io.member.rawValue)); trace.add(io.offsetBytes)
        switch io.kind {
        case .read(let b): trace.add(UInt64(b.count))
        case .write(let b, let fua): trace.add(b); trace.add(fua ? 1 : 0)
        case .flush: trace.add(12)
        }
        schedule(io.id)
    }

    public func armTimer(_ timer: TimerID, at deadline: Nanoseconds, token: UInt64) {
        trace.add(15); trace.add(deadline)
        seq += 1
        queue.push(ScheduledEvent(time: max(deadline, now), seq: seq, kind: .timer(timer, token: Int(token), epoch: epoch)))
    }

    public func clientCompleted(_ id: RequestID, request: ClientRequest, context: Void, result: ClientResult) {
        trace.add(13); trace.add(id.rawValue)
        switch result {
        case .data(let d): trace.add(d)
        case .done: trace.add(0)
        case .failed(let e): trace.add(UInt64(e.description.utf8.count) + 1000)
        }
        note(.clientDone(id, result))
        for c in checkers { c.clientCompleted(self, id: id, request: request, result: result) }
        scenario.clientCompleted(self, id: id, request: request, result: result)
    }

    public func controlCompleted(_ id: RequestID, command: ControlCommand, context: Void, result: ControlResult) {
        trace.add(14); trace.add(id.rawValue)
        note(.controlDone(id, result))
        for c in checkers { c.controlCompleted(self, id: id, command: command, result: result) }
        scenario.controlCompleted(self, id: id, command: command, result: result)
    }

    public func log(_ level: CoreLogLevel, _ text: String) {
        record("core: \(text)")
        if keepTraceLog { traceLog.append(text) }
    }

    func resultText(_ r: ClientResult) -> String {
        switch r {
        case .data(let d): return "\(d.count) bytes"
        case .done: return "ok"
        case .failed(let e): return "failed (\(e))"
        }
    }

    /// Draws the I/O's latency (with the occasional stall) and queues its completion.
    func schedule(_ id: MemberIOID) {
        var latency = faults.latencyMinNanos + UInt64(faultRandom.below(Int(faults.latencyMaxNanos - faults.latencyMinNanos + 1)))
        if !faultsHealed && faults.stallChance > 0 && faultRandom.chance(faults.stallChance) {
            latency += UInt64(faultRandom.below(Int(faults.stallMaxNanos)))
            count("stalls")
        }
        seq += 1
        queue.push(ScheduledEvent(time: now + latency, seq: seq, kind: .ioComplete(id, epoch: epoch)))
    }

    /// Performs the I/O on its member now (with the profile's faults) and tells the driver.
    func completeIO(_ id: MemberIOID) {
        guard let io = driver.memberIOsInFlight[id] else { preconditionFailure("completion scheduled for unknown member I/O \(id)") }
        memberIOCount += 1
        let m = io.member.rawValue
        let member = members[m]
        let mayFault = !faultsHealed && !io.purpose.isMetadata && io.purpose != .clientFlush
        var result: MemberIOResult
        switch io.kind {
        case .read(let buffer) where mayFault && faults.readErrorChance > 0 && canSpoil(m) && faultRandom.chance(faults.readErrorChance):
            // A latent bad sector: reads of it fail until it is rewritten.
            member.badSectors.insert(Int(io.offsetBytes) / 512 + faultRandom.below(max(1, buffer.count / 512)))
            count("injected bad sectors")
            result = .failure(.io)
        case .write where mayFault && faults.writeErrorChance > 0 && memberFailuresAllowed > 0 && !member.dead && canSpoil(m)
            && faultRandom.chance(faults.writeErrorChance):
            // A write error kills the member for good (md fails it).
            count("injected member deaths")
            member.dead = true
            memberFailuresAllowed -= 1
            result = .failure(.io)
        default:
            result = perform(io, on: member)
        }
        if traceSink != nil { record("io \(id) done: \(result == .success ? "ok" : "FAILED")") }
        trace.add(20); trace.add(id.rawValue); trace.add(now)
        if case .read(let buffer) = io.kind, result == .success { trace.add(buffer) } else if result != .success { trace.add(0xdead) }
        driver.memberIOCompleted(id, result: result, now: now)
        memberIOObserver?(self, io, result)
    }

    /// Faults never take more members out of service (failed, missing, rebuilding, dead, or
    /// holding unreadable sectors) than the level tolerates: past that, losing data would be
    /// correct behaviour, not a bug.
    func canSpoil(_ m: Int) -> Bool {
        if !spoilingAllowed || members[m].dead { return false }
        if !members[m].badSectors.isEmpty { return true }
        return canTakeAnotherMemberOut
    }

    /// One more member may leave service without exceeding the level's redundancy.
    public var canTakeAnotherMemberOut: Bool {
        // Asked after every completed I/O: count without building arrays.
        var spoiledActive = 0
        for i in members.indices where members[i].dead || !members[i].badSectors.isEmpty {
            if case .active = core.role(of: MemberIndex(i)) { spoiledActive += 1 }
        }
        return core.degradedCount + spoiledActive < shape.level.maxDegraded
    }

    /// Kills a member (its I/O fails from now on); counts against the redundancy budget.
    public func killMember(_ m: Int) {
        guard !members[m].dead else { return }
        members[m].badSectors.removeAll()
        members[m].dead = true
        memberFailuresAllowed = max(0, memberFailuresAllowed - 1)
        record("member \(m) dies")
    }

    // MARK: - crash and restart

    /// Power loss: in-flight member I/O is lost or torn, pending requests die with the core.
    public func crash() {
        record("CRASH")
        trace.add(30); trace.add(now)
        let inFlight = driver.inFlightMemberIOs
        for (m, member) in members.enumerated() {
            // In I/O order (the driver's table is a dictionary; its order decides nothing).
            let writes = inFlight.compactMap { io -> (offset: Int, data: [UInt8])? in
                guard io.member.rawValue == m, case .write(let buffer, _) = io.kind else { return nil }
                return (Int(io.offsetBytes), buffer.bytes)
            }
            member.crash(inFlightWrites: writes, random: &faultRandom)
        }
        epoch += 1
        driver.abandon()
        for c in checkers { c.crashed(self) }
    }

    /// Assembles a new core from the members' bytes, exactly as from real files.
    public func restart() throws {
        let inputs = members.compactMap { m -> MemberMetadata? in m.dead ? nil : m.probe() }
        let assembly = try CoreAssembly(members: inputs)
        let core = try RaidCore(assembly: assembly, config: coreConfig, variant: variant, now: now)
        driver = CoreDriver(core: core, shell: self, firstRequestID: driver.upcomingRequestID, now: now)
        record("RESTART: assembled from member bytes, \(core.isClean ? "clean" : "dirty")")
        trace.add(31)
        driver.start(now: now)
        for c in checkers { c.restarted(self) }
    }

    // MARK: - reporting

    enum RecentEvent {
        case text(String)
        case client(RequestID, ClientRequest)
        case clientDone(RequestID, ClientResult)
        case control(RequestID, ControlCommand)
        case controlDone(RequestID, ControlResult)
        case timer(TimerID)
    }

    func describe(_ e: RecentEvent) -> String {
        switch e {
        case .text(let t): return t
        case .client(let id, let r): return "client \(id): \(r)"
        case .clientDone(let id, let r): return "client \(id) done: \(resultText(r))"
        case .control(let id, let c): return "control \(id): \(c)"
        case .controlDone(let id, let r): return "control \(id) done: \(r)"
        case .timer(let t): return "timer \(t)"
        }
    }

    func note(_ e: RecentEvent) {
        if let echo = traceSink { echo("\(formatTime(now)) \(describe(e))") }
        if recent.count < 60 {
            recent.append((now, e))
        } else {
            recent[recentHead] = (now, e)
            recentHead = (recentHead + 1) % recent.count
        }
    }

    func record(_ text: String) { note(.text(text)) }

    public var recentEvents: [String] {
        Array(recent[recentHead...] + recent[..<recentHead]).map { "\(formatTime($0.0)) \(describe($0.1))" }
    }

    func failureReport() -> [String] {
        var lines = ["seed \(seed), scenario \(scenario.name), faults \(faults.name), array: \(shape)", "workload: \(scenario.progress)"]
        lines.append("state: array_state \(attribute("array_state")), sync_action \(attribute("sync_action")), sync_completed \(attribute("sync_completed")), stripe_cache_active \(attribute("stripe_cache_active")), parked \(core.parkedForStripe)")
        for (what, since) in driver.unanswered.prefix(20) {
            lines.append("waiting: \(what) since \(formatTime(since))")
        }
        lines.append("last events:")
        lines += recentEvents.suffix(25).map { "  " + $0 }
        return lines
    }
}

public func formatTime(_ nanos: Nanoseconds) -> String {
    let ms = nanos / 1000
    let whole = ms / 1_000_000
    let frac = ms % 1_000_000
    let fracText = String(frac)
    return "\(whole).\(String(repeating: "0", count: 6 - fracText.count))\(fracText)s"
}
