import DiskIO
import Logging
import MDFormat
import MDOffline
import NIOCore
import NIOPosix
import RaidCore

/// How an engine assembles and runs its array.
public struct EngineOptions: Sendable {
    /// The core's tunables. The engine starts arrays read-write (`startMode`), as mdadm's
    /// assembly does: a needed resync or recovery begins at once.
    public var config: CoreConfig
    /// Serve read-only: nothing is written to the members, not even superblocks.
    public var readOnly = false
    /// Open members with O_DIRECT (bypass the page cache).
    public var direct = false
    /// Threads running member system calls (default: two per member, 4 to 32; see
    /// `RaidEngine.defaultIOThreads`).
    public var ioThreads: Int?
    /// Assemble even a degraded array that was not shut down cleanly (mdadm's --force).
    public var force = false
    /// Take an exclusive lock on every member (design.md §4.3); a member another process holds
    /// is refused.
    public var lockMembers = true

    public init() {
        config = CoreConfig()
        config.startMode = .readWrite
        // md's sync takes as many stripes as its cache gives it (while clients are idle); 8 (the
        // core's default, which the simulator keeps) made a check read 32 KiB per member at a
        // time, one system call each: RAID6 of 5, check after drop_caches, 432-561 MB/s and
        // 299-369 ticks of CPU with 8, 732-789 and 168-195 with 64. With the whole default
        // cache, 256, and sync reads merged in calls of 256 KiB (`IOPlug.syncReadMaxBytes`), each
        // member has several reads in flight: RAID5 of 4, 0.64-0.84 of a plain read of the
        // members with 64, 1.04-1.15 with 256 (the core caps the window at the cache's size).
        config.syncWindowStripes = 256
    }
}

public enum EngineError: Error, CustomStringConvertible, Equatable {
    case open(DiskIOError)
    case probe(ProbeError)
    case assembly(AssemblyError)
    case config(CoreConfigError)
    case member(String)
    case busy(String)

    public var description: String {
        switch self {
        case .open(let e): return e.description
        case .probe(let e): return e.description
        case .assembly(let e): return e.description
        case .config(let e): return "invalid configuration: \(e)"
        case .member(let why): return why
        case .busy(let why): return why
        }
    }
}

/// The production shell (design.md §4): one serial owner, an event loop, runs the core through
/// the shared `CoreDriver`; member system calls run on a bounded pool of threads and post their
/// results back; timers use the loop's monotonic clock. Nothing here holds a lock around array
/// state, and no call blocks the loop.
///
/// Every public method may be called from any thread or task: work hops onto the loop.
/// Completion callbacks run on the loop.
public final class RaidEngine: CoreShell, @unchecked Sendable {
    public typealias ClientContext = @Sendable (ClientResult) -> Void
    public typealias ControlContext = @Sendable (ControlResult) -> Void

    public let eventLoop: EventLoop
    /// The loop's group when the engine made its own (shut down with the engine).
    let ownedGroup: MultiThreadedEventLoopGroup?
    public let logger: Logger
    public let geometry: RaidGeometry
    /// md's set name (`host:name`) and UUID, from the superblocks.
    public let arrayName: String
    public let arrayUUID: [UInt8]
    public let readOnly: Bool
    /// Members assembly left out (stale, faulty), with the reason: mdadm's "kicking non-fresh".
    public let leftOut: [(name: String, reason: ExclusionReason)]

    var driver: CoreDriver<RaidEngine>!
    /// By member index; a device stays in the table when its member is removed (indices are
    /// stable), and is closed then (and opened again by a re-add).
    var devices: [MemberDevice]
    /// Members whose device is to be closed once no I/O on it is in flight (after a remove).
    var pendingCloses: Set<MemberIndex> = []
    var pool: MemberIOPool!
    let plug = IOPlug()
    var plugged: [MemberIORequest] = []
    /// While completions are being drained, member I/O waits in the plug for the whole batch.
    var holdingPlug = false
    /// Told of every completed client request and member I/O (metrics); set on the loop.
    var observer: EngineObserver?
    var timerTasks: [TimerID: Scheduled<Void>] = [:]
    let startUptimeNanos: UInt64
    let mailbox = Mailbox()
    /// Member reads the loop served from the page cache without the pool (see `unplug`).
    public internal(set) var readsServedFromCache = 0
    /// Member reads left to the server's sendfile (`splice`): not read at all.
    public internal(set) var readsSpliced = 0
    /// An add or re-add is between its steps (they change the member table; one at a time).
    var membershipChangeInProgress = false
    /// Set on the loop once the array has stopped: calls that reach the loop later fail fast.
    var closed = false
    /// `waitForSync` callers, resumed once no sync runs (checked after every batch of actions).
    var syncWaiters: [@Sendable () -> Void] = []
    /// Public calls in progress; `stop` lets them finish before the loop goes away.
    let gate = CallGate()
    /// The one stop, however many callers ask for it.
    let stopOnce = StopOnce()
    /// The array as it was when it stopped (what `snapshot` returns from then on).
    var finalSnapshot: ArraySnapshot?

    final class StopOnce: @unchecked Sendable {
        private let lock = ConditionLock()
        private var task: Task<Void, Never>?
        func run(_ body: @escaping @Sendable () async -> Void) -> Task<Void, Never> {
            lock.withLock {
                if let task { return task }
                let t = Task { await body() }
                task = t
                return t
            }
        }
    }

    /// Completions posted by the I/O threads, drained on the loop in batches.
    final class Mailbox: @unchecked Sendable {
        let lock = ConditionLock()
        var results: [(MemberIOID, MemberIOResult)] = []
    }

    // MARK: - assembly

    /// Opens the member files or block devices at `paths` and assembles the array from them by
    /// md's rules. Opening and probing happen on the calling thread.
    /// `wrappingDevices` may put the opened devices behind others (fault injectors) before
    /// assembly.
    public static func assemble(
        paths: [String], options: EngineOptions = EngineOptions(), eventLoop: EventLoop? = nil, logger: Logger? = nil,
        wrappingDevices wrap: (([MemberDevice]) -> [MemberDevice])? = nil
    ) throws(EngineError) -> RaidEngine {
        var seen: [FileIdentity] = []
        var devices: [MemberDevice] = []
        for path in paths {
            if let identity = MemberFile.identity(path) {
                if seen.contains(identity) { throw EngineError.member("\(path) is named twice") }
                seen.append(identity)
            }
            do {
                let open = MemberOpenOptions(mode: options.readOnly ? .readOnly : .readWrite, direct: options.direct, exclusive: options.lockMembers)
                devices.append(try MemberFile(path: path, options: open))
            } catch {
                devices.forEach { $0.close() }
                throw EngineError.open(error)
            }
        }
        return try RaidEngine(devices: wrap?(devices) ?? devices, options: options, eventLoop: eventLoop, logger: logger)
    }

    /// Assembles the array from devices already open (tests pass fault-injecting ones). The
    /// engine owns them from here on and closes them when it stops.
    public init(devices given: [MemberDevice], options: EngineOptions = EngineOptions(), eventLoop: EventLoop? = nil, logger: Logger? = nil) throws(EngineError) {
        var metadata: [MemberMetadata] = []
        for device in given {
            do { metadata.append(try SuperblockProbe.probe(device)) } catch {
                given.forEach { $0.close() }
                throw EngineError.probe(error)
            }
        }
        let assembly: CoreAssembly
        do { assembly = try CoreAssembly(members: metadata, force: options.force) } catch {
            given.forEach { $0.close() }
            if let e = error as? AssemblyError { throw EngineError.assembly(e) }
            throw EngineError.member("\(error)")
        }
        var config = options.config
        if options.readOnly {
            config.startMode = .readOnly
            config.membersAreReadOnly = true
        }
        config.wallClockAtZeroSeconds = Clock.wallSeconds()
        do { try config.validate() } catch {
            given.forEach { $0.close() }
            throw EngineError.config(error)
        }
        let core: RaidCore
        do { core = try RaidCore(assembly: assembly, config: config) } catch {
            given.forEach { $0.close() }
            throw EngineError.config(error as? CoreConfigError ?? CoreConfigError(message: "\(error)"))
        }
        let group: MultiThreadedEventLoopGroup?
        if let eventLoop {
            self.eventLoop = eventLoop
            group = nil
        } else {
            let g = MultiThreadedEventLoopGroup(numberOfThreads: 1)
            self.eventLoop = g.next()
            group = g
        }
        ownedGroup = group
        geometry = assembly.geometry
        arrayName = assembly.freshest.setName
        arrayUUID = assembly.freshest.setUUID
        readOnly = options.readOnly
        leftOut = assembly.excluded.map { (given[$0.index.rawValue].name, $0.reason) }
        var log = logger ?? Logger(label: "swraid")
        log[metadataKey: "array"] = .string(assembly.freshest.setName)
        self.logger = log
        // Left-out devices are not used; close them now.
        for (index, _) in assembly.excluded { given[index.rawValue].close() }
        devices = given
        startUptimeNanos = NIODeadline.now().uptimeNanoseconds
        let threads = options.ioThreads ?? RaidEngine.defaultIOThreads(members: given.count)
        let box = mailbox
        let loop = self.eventLoop
        let deliver: @Sendable ([(MemberIOID, MemberIOResult)]) -> Void = { [weak self] results in
            box.lock.lock()
            let wasEmpty = box.results.isEmpty
            box.results.append(contentsOf: results)
            box.lock.unlock()
            if wasEmpty, let engine = self { loop.execute { engine.drainMailbox() } }
        }
        pool = MemberIOPool(threads: threads, perMemberLimit: MemberIOPool.perMemberLimit(threads: threads, members: given.count), deliver: deliver)
        driver = CoreDriver(core: core, shell: self)
        for (name, reason) in leftOut { self.logger.warning("\(name) left out: \(reason)") }
        loop.execute { self.driver.start(now: self.now()) }
    }

    /// One share per member, each of `perMemberShare` threads: the pool never lets a member
    /// hold more than its share (`MemberIOPool.perMemberLimit`), so with a share for every
    /// member a stalled one holds up only the I/O that needs it, however many stall.
    static func defaultIOThreads(members: Int, processors: Int = Host.processorCount()) -> Int {
        min(64, max(1, members) * perMemberShare(members: members, processors: processors))
    }

    /// The threads one member may use at once by default: the processors per member, 1 to 4.
    /// More threads than processors mostly switch: on 2 vCPUs, RAID6 of 5 with 10 threads
    /// spent 30 % of the server's time switching between them, and two writers of one member
    /// file spun on its inode lock; 4 KiB random writes at QD32 ran at 0.26-0.34 of nbdkit's
    /// with 10 threads (two per member, the old default) and 0.35-0.58 with 5 (one per member).
    static func perMemberShare(members: Int, processors: Int) -> Int {
        min(4, max(1, processors / max(1, members)))
    }

    deinit {
        precondition(gate.closedForGood || pool == nil, "a RaidEngine must be stopped before it goes away")
    }

    /// Nanoseconds since the engine started (the core's time).
    func now() -> Nanoseconds { NIODeadline.now().uptimeNanoseconds - startUptimeNanos }

    var core: RaidCore { driver.core }

    /// No member I/O is on its way (on the loop only): nothing will complete by itself, so the
    /// loop may spend a few microseconds polling a connection's socket (the NBD server's
    /// `AdaptivePoll`) without holding up a completion.
    public var memberIOIdle: Bool {
        eventLoop.assertInEventLoop()
        return driver.memberIOsInFlight.isEmpty && plugged.isEmpty
    }

    // MARK: - CoreShell (on the loop)

    public func performMemberIO(_ io: MemberIORequest) {
        plugged.append(io)
    }

    public func actionsDispatched() {
        if !holdingPlug { unplug() }
        if !pendingCloses.isEmpty { closeIdleDevices() }
        if !syncWaiters.isEmpty && core.syncKind == nil {
            let waiters = syncWaiters
            syncWaiters.removeAll()
            for w in waiters { w() }
        }
    }

    /// Reads up to this size are tried from the page cache on the loop. Larger ones go to the
    /// pool even when cached: their copy is most of their cost, and the loop, which also copies
    /// every reply into its socket, is what a sequential read waits for (nbdcopy 1 GiB from
    /// RAID5x4: the loop's CPU fell from 1.03 to 0.70 s with them on the pool).
    static let inlineReadMaxBytes = 128 << 10

    /// Merges the I/O collected since the last unplug and hands it to the pool. A small read the
    /// page cache can serve whole is done here on the loop instead (preadv2 with RWF_NOWAIT, which
    /// never waits for the device): two thread hand-offs cost more than the copy, and a cached
    /// 4 KiB read at queue depth 1 is mostly hand-offs. Its result goes to the core at once:
    /// from `actionsDispatched` the driver dispatches what it causes in its next round (no
    /// recursion), and from `drainMailbox`, which is outside any dispatch, each result is a
    /// dispatch of its own. (Through the mailbox, each such read cost a task on the loop, two
    /// locks and a second pass; measured in the README's QD1 notes.)
    func unplug() {
        guard !plugged.isEmpty else { return }
        // One I/O, the common case at low queue depth: nothing to sort or merge, no arrays.
        if plugged.count == 1, case .read(let buffer) = plugged[0].kind, buffer.count < Self.spliceReadMinBytes,
            Self.readsOnLoop(purpose: plugged[0].purpose, byteCount: buffer.count)
        {
            let io = plugged[0]
            plugged.removeAll(keepingCapacity: true)
            let device = devices[io.member.rawValue]
            if device.readIfCached(at: io.offsetBytes, into: UnsafeMutableRawBufferPointer(start: buffer.baseAddress, count: buffer.count)) {
                readsServedFromCache += 1
                memberIOFinished(io.id, result: .success)
            } else {
                pool.submit(IOJob(device: device, io: MergedIO(member: io.member, kind: .read, offsetBytes: io.offsetBytes, requests: [io])))
            }
            return
        }
        let batch = plugged
        plugged.removeAll(keepingCapacity: true)
        var served: [MemberIOID] = []
        var jobs: [IOJob] = []
        for merged in plug.merge(batch) {
            let device = devices[merged.member.rawValue]
            if merged.kind == .read, splice(merged, from: device) {
                readsSpliced += 1
                served += merged.requests.map(\.id)
                continue
            }
            if merged.kind == .read, Self.readsOnLoop(purpose: merged.purpose, byteCount: merged.byteCount),
                device.readIfCached(at: merged.offsetBytes, into: merged.buffers.readTargets)
            {
                readsServedFromCache += 1
                served += merged.requests.map(\.id)
                continue
            }
            jobs.append(IOJob(device: device, io: merged))
        }
        pool.submit(jobs)
        for id in served { memberIOFinished(id, result: .success) }
    }

    /// Whether a member read is tried from the page cache on the loop. Sync reads and the read
    /// that verifies a rewrite go to the pool, which reads them from the device (O_DIRECT, or
    /// RWF_DONTCACHE where refused; see `MemberFile`): from the page cache a check would compare
    /// cached copies, not the medium, and the verifying read would find the page its own rewrite
    /// just left there. Large ones go to the pool too (`inlineReadMaxBytes`).
    static func readsOnLoop(purpose: MemberIOPurpose, byteCount: Int) -> Bool {
        !purpose.readsFromTheDevice && byteCount <= inlineReadMaxBytes
    }

    /// Member reads smaller than this are copied even into a spliceable target: a sendfile costs
    /// two system calls more than the copy (mincore, and a write of its own for the reply's
    /// header), and a cached 4 KiB read at queue depth 1 is all system calls.
    public static let spliceReadMinBytes = 64 << 10

    /// A read into spliceable targets only (a server's replies), of a member range the page cache
    /// holds whole, is not read: each target records the member range its bytes are in, and the
    /// server sends them from there (see `SpliceableReadTarget`). One mincore for the whole merged
    /// read; false (read it as usual) for anything else.
    func splice(_ merged: MergedIO, from device: MemberDevice) -> Bool {
        guard merged.byteCount >= Self.spliceReadMinBytes else { return false }
        var targets: [(SpliceableReadTarget, IOBuffer)] = []
        targets.reserveCapacity(merged.requests.count)
        for io in merged.requests {
            guard case .read(let buffer) = io.kind, let target = buffer.storage.owner as? SpliceableReadTarget else { return false }
            targets.append((target, buffer))
        }
        guard let descriptor = device.cachedDescriptor(at: merged.offsetBytes, count: merged.byteCount) else { return false }
        var at = merged.offsetBytes
        for (target, buffer) in targets where buffer.count > 0 {
            target.record(SpliceableReadTarget.Extent(descriptor: descriptor, fileOffsetBytes: at, offsetInTarget: buffer.offset, count: buffer.count))
            at += UInt64(buffer.count)
        }
        return true
    }

    /// Feeds the results the I/O threads posted to the core, then submits what they caused, merged.
    func drainMailbox() {
        mailbox.lock.lock()
        let results = mailbox.results
        mailbox.results.removeAll(keepingCapacity: true)
        mailbox.lock.unlock()
        guard !closed else { return }
        holdingPlug = true
        for (id, result) in results { memberIOFinished(id, result: result) }
        holdingPlug = false
        unplug()
        if !pendingCloses.isEmpty { closeIdleDevices() }
    }

    /// A member I/O has ended (on a pool thread, or on the loop from the page cache): logged,
    /// told to the observer, fed to the core.
    func memberIOFinished(_ id: MemberIOID, result: MemberIOResult) {
        if let io = driver.memberIOsInFlight[id] {
            if case .failure(let e) = result { logger.warning("I/O error on \(devices[io.member.rawValue].name): \(io) failed: \(e)") }
            if let observer {
                var failed = false
                if case .failure = result { failed = true }
                observer.memberIOCompleted(member: io.member, operation: MemberIOOperation(io.kind), purpose: io.purpose, bytes: io.byteCount, failed: failed)
            }
        }
        driver.memberIOCompleted(id, result: result, now: now())
    }

    /// Closes the removed members' devices that no I/O is using any more.
    func closeIdleDevices() {
        let busy = Set(driver.memberIOsInFlight.values.map(\.member))
        for m in pendingCloses.sorted() where !busy.contains(m) && core.role(of: m) == .removed {
            devices[m.rawValue].close()
            pendingCloses.remove(m)
        }
    }

    public func armTimer(_ timer: TimerID, at deadline: Nanoseconds, token: UInt64) {
        timerTasks[timer]?.cancel()
        timerTasks[timer] = eventLoop.scheduleTask(deadline: .uptimeNanoseconds(startUptimeNanos + deadline)) { [weak self] in
            guard let self, !self.closed else { return }
            self.timerTasks[timer] = nil
            self.driver.timerFired(timer, token: token, now: self.now())
        }
    }

    public func clientCompleted(_ id: RequestID, request: ClientRequest, context: ClientContext, result: ClientResult) {
        context(result)
    }

    public func controlCompleted(_ id: RequestID, command: ControlCommand, context: ControlContext, result: ControlResult) {
        context(result)
    }

    public func log(_ level: CoreLogLevel, _ text: String) {
        switch level {
        case .debug: logger.debug("\(text)")
        case .info: logger.info("\(text)")
        case .notice: logger.notice("\(text)")
        case .warning: logger.warning("\(text)")
        case .error: logger.error("\(text)")
        }
    }

    // MARK: - running on the loop

    /// Runs `body` on the loop now if already there, else as soon as the loop gets to it. Only
    /// called with the gate entered (or from the loop), so the loop is alive.
    func onLoop(_ body: @escaping @Sendable () -> Void) {
        if eventLoop.inEventLoop { body() } else { eventLoop.execute(body) }
    }

    func onLoop<T: Sendable>(_ body: @escaping @Sendable () -> T) async -> T {
        if eventLoop.inEventLoop { return body() }
        return await withCheckedContinuation { continuation in
            eventLoop.execute { continuation.resume(returning: body()) }
        }
    }

    /// Runs `body` as a public call: refused with `stopped` once the engine has stopped, and
    /// counted so that `stop` waits for it before the loop goes away.
    func call<T>(stopped: T, _ body: () async -> T) async -> T {
        guard gate.enter() else { return stopped }
        defer { gate.leave() }
        return await body()
    }

    // MARK: - client requests

    /// Hands a request to the array; `completion` runs on the loop with its one result (or at
    /// once with ESHUTDOWN after a stop). The cheapest entry, for a server already on the loop.
    public func submit(_ request: ClientRequest, completion: @escaping @Sendable (ClientResult) -> Void) {
        // On the loop (a server's connection), the loop is alive while this runs and `closed`
        // says whether the array still takes requests: no gate to pass (two locks) and no
        // closure to hop with.
        if eventLoop.inEventLoop { return submitOnLoop(request, completion: completion) }
        guard gate.enter() else { return completion(.failed(.shutdown)) }
        eventLoop.execute {
            defer { self.gate.leave() }
            self.submitOnLoop(request, completion: completion)
        }
    }

    func submitOnLoop(_ request: ClientRequest, completion: @escaping @Sendable (ClientResult) -> Void) {
        guard !closed else { return completion(.failed(.shutdown)) }
        let started = now()
        guard let observer else {
            _ = driver.submit(request, context: completion, now: started)
            return
        }
        let kind = ClientRequestKind(request)
        let bytes = request.byteCount
        _ = driver.submit(request, context: { result in
            var failed = false
            if case .failed = result { failed = true }
            observer.clientRequestCompleted(kind: kind, bytes: bytes, latencyNanoseconds: self.now() - started, failed: failed)
            completion(result)
        }, now: started)
    }

    /// Member reads the loop did itself from the page cache, and those left to a server's
    /// sendfile (`splice`), since the start.
    public func memberReadShortcuts() async -> (servedFromCache: Int, spliced: Int) {
        await call(stopped: (0, 0)) { await onLoop { (self.readsServedFromCache, self.readsSpliced) } }
    }

    /// Sets who is told of completed requests and member I/O (on the loop, from then on).
    /// The most I/Os of one member the I/O threads run at once (its share of them).
    public var ioThreadsPerMember: Int { pool.perMemberLimit }

    public func setObserver(_ observer: EngineObserver?) async {
        // Through the gate as every call is: after a stop the loop is gone, and a task sent to
        // it would never run (nor this call return).
        await call(stopped: ()) { await onLoop { self.observer = observer } }
    }

    public func perform(_ request: ClientRequest) async -> ClientResult {
        await withCheckedContinuation { continuation in
            submit(request) { continuation.resume(returning: $0) }
        }
    }

    public func read(offsetBytes: UInt64, length: Int) async throws(ClientError) -> IOBuffer {
        switch await perform(.read(offsetBytes: offsetBytes, length: length)) {
        case .data(let buffer): return buffer
        case .failed(let error): throw error
        case .done: preconditionFailure("a read completed without data")
        }
    }

    public func write(offsetBytes: UInt64, data: IOBuffer, fua: Bool = false) async throws(ClientError) {
        try Self.check(await perform(.write(offsetBytes: offsetBytes, data: data, fua: fua)))
    }

    public func flush() async throws(ClientError) { try Self.check(await perform(.flush)) }

    public func trim(offsetBytes: UInt64, length: Int) async throws(ClientError) {
        try Self.check(await perform(.trim(offsetBytes: offsetBytes, length: length)))
    }

    public func writeZeroes(offsetBytes: UInt64, length: Int, fua: Bool = false) async throws(ClientError) {
        try Self.check(await perform(.writeZeroes(offsetBytes: offsetBytes, length: length, fua: fua)))
    }

    static func check(_ result: ClientResult) throws(ClientError) {
        if case .failed(let error) = result { throw error }
    }

    /// The array's size in bytes.
    public var sizeBytes: UInt64 { geometry.arraySectors * 512 }

    // MARK: - control

    /// A control command; `completion` runs with md's answer. `stop` and `readd` take the
    /// engine's own paths (the stop shuts the engine down, a re-add may reopen a device);
    /// after `remove` the member's device is closed once no I/O uses it.
    public func control(_ command: ControlCommand, completion: @escaping @Sendable (ControlResult) -> Void) {
        switch command {
        case .stop:
            Task {
                await self.stop()
                completion(.done)
            }
            return
        case .readd(let m):
            Task { completion(await self.readd(index: m)) }
            return
        case .addNew:
            // Only `add(path:)` writes the spare superblock a new member needs.
            completion(.failed(.invalid("use add(path:) to add a device")))
            return
        default:
            break
        }
        guard gate.enter() else { return completion(.failed(.stopped)) }
        onLoop {
            defer { self.gate.leave() }
            guard !self.closed else { return completion(.failed(.stopped)) }
            self.sendToCore(command, completion: completion)
        }
    }

    /// On the loop: the command goes to the core; a successful remove schedules the close.
    func sendToCore(_ command: ControlCommand, completion: @escaping @Sendable (ControlResult) -> Void) {
        driver.control(command, context: { result in
            if case .remove(let m) = command, result == .done {
                self.pendingCloses.insert(m)
                self.closeIdleDevices()
            }
            completion(result)
        }, now: now())
    }

    public func control(_ command: ControlCommand) async -> ControlResult {
        await withCheckedContinuation { continuation in
            control(command) { continuation.resume(returning: $0) }
        }
    }

    /// `echo VALUE > md/NAME`; returns when md's write would return.
    public func set(_ attribute: String, _ value: String) async throws(ControlError) {
        let command = try ControlCommand.parse(attribute: attribute, value: value)
        if case .failed(let error) = await control(command) { throw error }
    }

    /// `cat md/NAME`.
    public func attribute(_ name: String) async throws(ControlError) -> String {
        let parsed = try AttributeName(parsing: name)
        let value: String?? = await call(stopped: nil) {
            await onLoop { self.closed ? nil : .some(self.core.attribute(parsed)) }
        }
        guard let found = value else { throw ControlError.stopped }
        guard let text = found else { throw ControlError.unknownAttribute(name) }
        return text
    }

    public func snapshot() async -> ArraySnapshot {
        let live: ArraySnapshot? = await call(stopped: nil) {
            await onLoop { self.closed ? nil : self.core.snapshot() }
        }
        if let live { return live }
        return await finalSnapshotAfterStop()
    }

    /// The snapshot taken at stop (waits for a stop in progress to take it).
    func finalSnapshotAfterStop() async -> ArraySnapshot {
        await stopOnce.run { await self.performStop() }.value
        return finalSnapshot!
    }

    /// `mdadm --wait`: returns once no resync, recovery, check or repair runs (at once if none
    /// does, or once the engine stops). A sync that another one follows (a check requested
    /// meanwhile) is waited for too.
    public func waitForSync() async {
        await call(stopped: ()) {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                onLoop {
                    if self.closed || self.core.syncKind == nil { return continuation.resume() }
                    self.syncWaiters.append { continuation.resume() }
                }
            }
        }
    }

    /// The member a user names by path (any spelling of the same file or device), by its name as
    /// given at assembly, or by its index.
    public func member(named name: String) async throws(ControlError) -> MemberIndex {
        let names: [String]? = await call(stopped: nil) { await onLoop { self.closed ? nil : self.devices.map(\.name) } }
        guard let names else { throw ControlError.stopped }
        // Files are compared by identity (stat), off the loop.
        let identity = MemberFile.identity(name)
        for (i, candidate) in names.enumerated() {
            if candidate == name || (identity != nil && MemberFile.identity(candidate) == identity) { return MemberIndex(i) }
        }
        if let n = Int(name), n >= 0, n < names.count { return MemberIndex(n) }
        throw ControlError.invalid("\(name) is not a member of this array")
    }

    /// `mdadm --fail`.
    public func fail(member name: String) async throws(ControlError) {
        let m = try await member(named: name)
        if case .failed(let e) = await control(.fail(m)) { throw e }
    }

    /// `mdadm --remove`: the member leaves the array and its device is closed.
    public func remove(member name: String) async throws(ControlError) {
        let m = try await member(named: name)
        if case .failed(let e) = await control(.remove(m)) { throw e }
    }

    /// `mdadm --re-add` of a member removed earlier (or left out at assembly): its device is
    /// opened again if it was closed, and it comes back as a spare.
    public func readd(member name: String) async throws(ControlError) {
        let m = try await member(named: name)
        if case .failed(let e) = await readd(index: m) { throw e }
    }

    func readd(index m: MemberIndex) async -> ControlResult {
        await call(stopped: .failed(.stopped)) {
            // 1. On the loop: reserve the change; learn whether the device must be reopened.
            // `closeWasDue`: the member was removed and waits to be closed (its I/O still on its
            // way); a refused re-add puts it back on that list rather than leave it open, its
            // descriptors and lock held until the array stops.
            let plan: (path: String, reopenWith: MemberOpenOptions?, closeWasDue: Bool)?? = await onLoop {
                guard !self.closed else { return nil }
                guard !self.membershipChangeInProgress else { return .some(nil) }
                guard m.rawValue >= 0, m.rawValue < self.devices.count else { return .some(nil) }
                self.membershipChangeInProgress = true
                let closeWasDue = self.pendingCloses.remove(m) != nil
                let device = self.devices[m.rawValue]
                // Opened again as it was first opened (direct I/O, lock); a file behind a fault
                // injector too, which then wraps the new file with the same faults.
                let file = (device as? MemberFile) ?? ((device as? FaultyMember)?.inner as? MemberFile)
                return .some((device.name, file?.isClosed == true ? file?.options : nil, closeWasDue))
            }
            guard let reserved = plan else { return .failed(.stopped) }
            guard let plan = reserved else { return .failed(.busy("another add or re-add is in progress, or no member \(m)")) }
            // 2. Off the loop: open the device again (with its lock).
            var opened: MemberFile?
            if let reopenWith = plan.reopenWith {
                do {
                    opened = try MemberFile(path: plan.path, options: reopenWith)
                } catch {
                    await onLoop { self.membershipChangeInProgress = false }
                    return .failed(.invalid("cannot open \(plan.path) again: \(error)"))
                }
            }
            let reopened = opened
            // 3. On the loop: the device is in place before the core sends it any I/O.
            return await withCheckedContinuation { continuation in
                onLoop {
                    guard !self.closed else {
                        reopened?.close()
                        self.membershipChangeInProgress = false
                        return continuation.resume(returning: .failed(.stopped))
                    }
                    if let reopened {
                        let faulty = self.devices[m.rawValue] as? FaultyMember
                        self.devices[m.rawValue] = faulty?.reopened(over: reopened) ?? reopened
                    }
                    self.driver.control(.readd(m), context: { result in
                        self.membershipChangeInProgress = false
                        if case .failed = result, reopened != nil || plan.closeWasDue {
                            self.pendingCloses.insert(m)
                            self.closeIdleDevices()
                        }
                        continuation.resume(returning: result)
                    }, now: self.now())
                }
            }
        }
    }

    /// `mdadm --add`: writes a spare superblock of this array on the device at `path` and adds
    /// it; recovery onto it starts when a slot is empty.
    public func add(path: String, direct: Bool = false) async throws(EngineError) {
        let outcome: Result<Void, EngineError> = await call(stopped: .failure(.busy("the array is stopped"))) {
            await addNewDevice(path: path, direct: direct)
        }
        try outcome.get()
    }

    func addNewDevice(path: String, direct: Bool) async -> Result<Void, EngineError> {
        if readOnly { return .failure(.busy("the array is read-only")) }
        // 1. On the loop: reserve the change, and learn what the new superblock must say.
        typealias Plan = (template: MDSuperblock1, devNumber: UInt32, events: UInt64, names: [String])
        let reserved: Result<Plan, EngineError> = await onLoop {
            guard !self.closed else { return .failure(.busy("the array is stopped")) }
            guard !self.membershipChangeInProgress else { return .failure(.busy("another add or re-add is in progress")) }
            self.membershipChangeInProgress = true
            let snap = self.core.snapshot()
            let used = Set(snap.members.filter { $0.role != .removed }.map(\.devNumber))
            let number = (0..<snap.superblock.maxDev).first { !used.contains($0) } ?? snap.superblock.maxDev
            let source = snap.members.first { if case .active = $0.role { return true } else { return false } }?.index ?? MemberIndex(0)
            return .success((self.core.superblockTemplate(member: source), number, snap.events, self.devices.map(\.name)))
        }
        let plan: Plan
        switch reserved {
        case .failure(let e): return .failure(e)
        case .success(let p): plan = p
        }
        // 2. Off the loop: open, check and write the device (blocking system calls).
        let prepared: Result<(MemberFile, MemberMetadata), EngineError> = {
            if let identity = MemberFile.identity(path), plan.names.contains(where: { MemberFile.identity($0) == identity }) {
                return .failure(.member("\(path) is already a member of this array"))
            }
            let device: MemberFile
            do throws(DiskIOError) {
                device = try MemberFile(path: path, options: MemberOpenOptions(mode: .readWrite, direct: direct, exclusive: true))
            } catch { return .failure(.open(error)) }
            do {
                let size = try device.size()
                var generator = SystemRandomNumberGenerator()
                let uuid = (0..<16).map { _ in UInt8.random(in: 0...255, using: &generator) }
                let sb = try MDSuperblock1.spare(
                    from: plan.template, devNumber: plan.devNumber, deviceUUID: uuid, deviceSizeSectors: size / 512,
                    events: plan.events, timeSeconds: Clock.wallSeconds())
                try MemberMetadataWriter.write(device, superblock: sb, bitmapArea: nil)
                try device.sync()
                return .success((device, MemberMetadata(name: path, superblock: sb, deviceSizeSectors: size / 512)))
            } catch {
                device.close()
                return .failure(.member("\(path): \(error)"))
            }
        }()
        guard case .success(let (device, metadata)) = prepared else {
            await onLoop { self.membershipChangeInProgress = false }
            if case .failure(let e) = prepared { return .failure(e) }
            return .failure(.member(path))
        }
        // 3. On the loop: the device joins the table at the index the core will give it.
        let result: ControlResult = await withCheckedContinuation { continuation in
            onLoop {
                guard !self.closed else {
                    device.close()
                    self.membershipChangeInProgress = false
                    return continuation.resume(returning: .failed(.stopped))
                }
                self.devices.append(device)
                let expected = self.devices.count - 1
                self.driver.control(.addNew(metadata), context: { result in
                    if case .failed = result {
                        // Refused: the table shrinks back (membership changes run one at a time).
                        precondition(self.devices.count - 1 == expected, "the member table changed during an add")
                        self.devices.removeLast()
                        device.close()
                    }
                    self.membershipChangeInProgress = false
                    continuation.resume(returning: result)
                }, now: self.now())
            }
        }
        if case .failed(let e) = result { return .failure(.member("\(path): \(e)")) }
        return .success(())
    }

    // MARK: - stop

    /// md's stop: requests in flight finish, a running sync stops at a recorded position, the
    /// array is written clean, the members are closed and the I/O threads end. Requests after
    /// this get ESHUTDOWN. Any number of callers may ask; the engine stops once, and every
    /// caller returns when it has. Call it before letting the engine go.
    public func stop() async {
        await stopOnce.run { await self.performStop() }.value
    }

    func performStop() async {
        if gate.enter() {
            let result: ControlResult = await withCheckedContinuation { continuation in
                onLoop {
                    guard !self.closed else { return continuation.resume(returning: .done) }
                    self.driver.control(.stop, context: { continuation.resume(returning: $0) }, now: self.now())
                }
            }
            precondition(result == .done, "the core refused to stop: \(result)")
            await onLoop {
                // The final superblock write was the last I/O: nothing may be in flight now.
                precondition(self.driver.memberIOsInFlight.isEmpty, "member I/O in flight after stop")
                self.finalSnapshot = self.core.snapshot()
                self.closed = true
                for task in self.timerTasks.values { task.cancel() }
                self.timerTasks.removeAll()
                let waiters = self.syncWaiters
                self.syncWaiters.removeAll()
                for w in waiters { w() }
            }
            gate.leave()
        }
        // Calls still in progress reach the loop, see it closed and return; then none can come.
        await gate.closeAndDrain()
        pool.shutdown()
        for device in devices { device.close() }
        if let ownedGroup { try? await ownedGroup.shutdownGracefully() }
    }
}
