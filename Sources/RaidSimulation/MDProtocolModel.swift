import RaidCore

/// Which md the model follows.
public enum MDModelVersion: String, Sendable, CaseIterable {
    /// Linux 5.4 to 5.10: `idle` reaps the sync thread holding reconfig_mutex; raid5d spins over
    /// stripes it refuses while MD_SB_CHANGE_PENDING; the superblock is written only under trylock.
    case md54 = "md-5.4"
    /// Linux 6.5 to 6.9: stop drops the lock before waiting, only the daemon reaps the sync thread,
    /// raid5d yields while a superblock change is pending.
    case md69 = "md-6.9"
}

/// A model of md's raid456 protocol at the level of seed-scenario.md: the configuration lock
/// (lock and trylock), the superblock flags (CHANGE_CLEAN, CHANGE_PENDING) and ALLOW_SB_UPDATE,
/// the write path that waits for the superblock, the daemon loop, a sync thread that needs free
/// stripes from a bounded cache, the `idle` path, and `echo active > array_state` as the escape.
/// Threads are parties whose steps the seeded scheduler runs; waiting is a recorded reason.
public final class MDProtocolModel: LivenessSubject {
    public enum Party: String, CaseIterable, Sendable {
        case writer = "writer (file system writeback)"
        case daemon = "md daemon (md1_raid6: raid5d + md_check_recovery)"
        case syncThread = "check thread (md1_resync)"
        case control = "sync_action writer (echo idle/check)"
    }

    /// What a party is blocked on.
    enum Wait: Equatable {
        case superblockWritten
        case freeStripe
        case mutex
        case syncThreadExit
        case syncReaped(UInt64)
        case writesCompleted
        /// The sync thread waits for its stripes in flight (md_do_sync's wait on recovery_active).
        case syncStripesDrain
    }

    enum StripeKind { case write, sync }

    struct Stripe {
        let kind: StripeKind
        var issued = false
        /// Its member I/O finished; the daemon must handle it once more to complete it.
        var ioDone = false
    }

    enum Event {
        case step(Party)
        case stripeIODone(Int)
        case superblockWritten
        case safeModeTimer
        case monitor
        case controlLoop
        case writerResume
    }

    public let seed: UInt64
    public let version: MDModelVersion
    public let escapeEnabled: Bool
    var random: SimRandom
    public private(set) var now: Nanoseconds = 0
    var queue = EventQueue()
    var seq: UInt64 = 0
    var events: [UInt64: Event] = [:]
    var nextEvent: UInt64 = 0
    public private(set) var eventCount = 0

    // md state.
    var mutexOwner: Party?
    var changePending = false
    var changeClean = false
    /// md's MD_ALLOW_SB_UPDATE: lets md_check_recovery write the superblock without the lock
    /// (only suspend set it in 5.4; Donald Buczek's proposed workaround set it around the reap).
    var allowSBUpdate = false
    var inSync = true
    var safeMode = false
    var writesPending = 0
    var safeModeDeadline: Nanoseconds = 0
    var safeModeTimerArmed = false
    var superblockWriteInFlight = false
    var superblockEvents: UInt64 = 10
    let stripeCacheSize: Int
    var stripes: [Int: Stripe] = [:]
    /// md's R5_INACTIVE_BLOCKED: someone found the cache full and waits for it to drain.
    var inactiveBlocked = false
    var nextStripe = 0
    /// raid5d's handle_list, oldest first.
    var handleList: [Int] = []
    var waits: [Party: Wait] = [:]
    var daemonScheduled = false

    // Sync thread.
    var syncRunning = false
    var syncInterrupted = false
    var syncDone = false
    var syncSeq: UInt64 = 0
    var syncPosition: UInt64 = 0
    let syncTotal: UInt64 = 7_813_894_144
    var syncStripesInFlight = 0
    var syncBlockedOnStripe = false
    var syncCompleted: UInt64 = 0
    /// md throttles the sync by speed, not by count: it takes stripes until the cache is full.
    let syncWindow = 1 << 20
    var lastAction = "idle"

    // Writer.
    var writesInFlight = 0
    var writesIssued = 0
    var writerQueueDepth = 64
    var writesPerBurst = 0
    var burstSize = 200
    var writerPaused = false
    var writeRequests: [Int: Nanoseconds] = [:]
    var nextRequest = 0

    // Control loop.
    var controlCommand: (String, Nanoseconds)?
    var controlPhase = 0
    var controlStage = 0
    var nextControlIsCheck = true

    // Monitor and checking.
    public private(set) var monitorLines: [String] = []
    var writePendingSamples = 0
    public private(set) var escapes = 0
    let liveness: LivenessChecker
    public private(set) var failure: SimFailure?
    public private(set) var cycle: [String] = []
    public private(set) var stats: [String: Int] = [:]
    let duration: Nanoseconds

    public init(seed: UInt64, version: MDModelVersion, escape: Bool = false, duration: Nanoseconds = 8 * nanosPerSecond) {
        self.seed = seed
        self.version = version
        self.escapeEnabled = escape
        self.duration = duration
        random = SimRandom(seed: seed ^ 0x6d64_6d6f_6465_6c00)
        stripeCacheSize = 256
        liveness = LivenessChecker(requestBound: 30 * nanosPerSecond, writePendingBound: 4 * nanosPerSecond)
    }

    // MARK: - LivenessSubject

    public var writePendingNow: Bool { changePending }

    public var unansweredRequests: [(String, Nanoseconds)] {
        var out = writeRequests.sorted { $0.key < $1.key }.prefix(1).map { ("write \($0.key)", $0.value) }
        if let (command, since) = controlCommand { out.append(("'\(command) > sync_action'", since)) }
        return out
    }

    public func fail(_ kind: SimFailure.Kind, _ message: String) {
        guard failure == nil else { return }
        failure = SimFailure(kind: kind, message: message)
        cycle = waitForCycle()
    }

    // MARK: - scheduling

    func schedule(_ e: Event, after delay: Nanoseconds) {
        nextEvent += 1
        events[nextEvent] = e
        seq += 1
        queue.push(ScheduledEvent(time: now + delay, seq: seq, kind: .wake(tag: Int(nextEvent))))
    }

    func jitter(_ base: Nanoseconds) -> Nanoseconds { base + UInt64(random.below(Int(max(1, base)))) }

    func wake(_ party: Party) {
        if party == .daemon {
            guard !daemonScheduled else { return }
            daemonScheduled = true
        }
        schedule(.step(party), after: jitter(20_000))
    }

    /// Whether what a party waits for has happened.
    func isOver(_ w: Wait) -> Bool {
        switch w {
        case .superblockWritten: return !changePending
        case .freeStripe: return stripeWaitOver
        case .mutex: return mutexOwner == nil
        case .syncThreadExit: return !syncRunning
        case .syncReaped(let seqAtStop): return syncSeq != seqAtStop
        case .writesCompleted: return writesInFlight == 0
        case .syncStripesDrain: return syncStripesInFlight == 0
        }
    }

    /// The party leaves its wait (raid5_get_active_stripe's waiter clears R5_INACTIVE_BLOCKED as
    /// it leaves).
    func endWait(_ party: Party) {
        if waits[party] == .freeStripe { inactiveBlocked = false }
        waits[party] = nil
    }

    /// Wakes every party whose wait is over.
    func wakeWaiters() {
        for party in Party.allCases {
            guard let w = waits[party], isOver(w) else { continue }
            endWait(party)
            wake(party)
        }
    }

    // MARK: - running

    /// Runs the model for its duration (or until the checker fails it).
    public func run() -> SimFailure? {
        schedule(.step(.writer), after: 1000)
        schedule(.controlLoop, after: 50 * nanosPerMilli)
        schedule(.monitor, after: nanosPerSecond)
        while failure == nil, now < duration, let e = queue.pop() {
            now = e.time
            eventCount += 1
            guard case .wake(let tag) = e.kind, let event = events.removeValue(forKey: UInt64(tag)) else { continue }
            dispatch(event)
            liveness.check(self)
        }
        return failure
    }

    func dispatch(_ event: Event) {
        switch event {
        case .step(let party):
            switch party {
            case .writer: writerStep()
            case .daemon:
                daemonScheduled = false
                daemonStep()
            case .syncThread: syncStep()
            case .control: controlStep()
            }
        case .stripeIODone(let id): stripeDone(id)
        case .superblockWritten: superblockLanded()
        case .safeModeTimer:
            safeModeTimerArmed = false
            if now < safeModeDeadline {
                safeModeTimerArmed = true
                schedule(.safeModeTimer, after: safeModeDeadline - now)
            } else if writesPending == 0 && !inSync {
                safeMode = true
                wake(.daemon)
            }
        case .monitor: monitorSample()
        case .controlLoop: controlLoop()
        case .writerResume:
            writerPaused = false
            wake(.writer)
        }
    }

    // MARK: - the write path (md_write_start, raid5_make_request)

    func writerStep() {
        guard waits[.writer] == nil, !writerPaused else { return }
        while writesInFlight < writerQueueDepth && writesPerBurst < burstSize {
            // md_write_start: the first write after clean marks the superblock dirty and waits.
            if inSync {
                inSync = false
                safeMode = false
                changeClean = true
                changePending = true
                stats["dirty transitions", default: 0] += 1
                if mutexOwner == .control { stats["dirty while idle holds the lock", default: 0] += 1 }
                wake(.daemon)
            }
            if changePending {
                waits[.writer] = .superblockWritten
                return
            }
            // raid5_get_active_stripe: wait for a free stripe.
            if !canTakeStripe {
                blockOnStripe(.writer)
                return
            }
            let id = nextStripe
            nextStripe += 1
            stripes[id] = Stripe(kind: .write)
            handleList.append(id)
            writesPending += 1
            writesInFlight += 1
            writesPerBurst += 1
            writeRequests[id] = now
            wake(.daemon)
        }
        if writesPerBurst >= burstSize {
            // "sync it, delete it, pause": wait for the burst to land, then rest.
            if writesInFlight > 0 {
                waits[.writer] = .writesCompleted
                return
            }
            writesPerBurst = 0
            writerPaused = true
            // Long enough for safe mode (200 ms) to mark the array clean, most of the time.
            schedule(.writerResume, after: UInt64(150 + random.below(150)) * nanosPerMilli)
        }
    }

    // MARK: - the daemon (raid5d with md_check_recovery at the top of its loop)

    func daemonStep() {
        checkRecovery()
        // Handle stripes.
        var requeued = 0
        var handled = 0
        let batch = handleList
        handleList.removeAll()
        for id in batch {
            guard var stripe = stripes[id] else { continue }
            if changePending {
                // handle_stripe refuses to work while a superblock change is pending.
                handleList.append(id)
                requeued += 1
                continue
            }
            if !stripe.issued {
                stripe.issued = true
                stripes[id] = stripe
                // A sync stripe reads every member of a busy array; a write stripe is quicker.
                schedule(.stripeIODone(id), after: stripe.kind == .sync ? jitter(20 * nanosPerMilli) : jitter(300_000))
                handled += 1
            } else if stripe.ioDone {
                finishStripe(id)
                handled += 1
            }
        }
        if requeued > 0 {
            switch version {
            case .md54:
                // The loop goes round again at once: 100 % CPU, nothing moves.
                schedule(.step(.daemon), after: nanosPerMilli)
                daemonScheduled = true
            case .md69:
                // b32aa95843ca: raid5d breaks out while the change is pending and sleeps until the
                // superblock code wakes it.
                break
            }
        } else if handled > 0 {
            // A pass over many stripes takes time; md_check_recovery runs again only after it.
            schedule(.step(.daemon), after: UInt64(handled) * 5_000)
            daemonScheduled = true
        }
    }

    /// md_check_recovery: under trylock (or ALLOW_SB_UPDATE), write the superblock if a change
    /// is pending, mark the array clean in safe mode, and (6.x) reap a finished sync thread.
    func checkRecovery() {
        let needsSB = changePending || changeClean || (safeMode && writesPending == 0 && !inSync)
        let needsReap = version == .md69 && syncRunning && syncDone
        guard needsSB || needsReap else { return }
        guard mutexOwner == nil || allowSBUpdate else { return }
        let tookLock = mutexOwner == nil
        if tookLock { mutexOwner = .daemon }
        if safeMode && writesPending == 0 && !inSync {
            inSync = true
            changeClean = true
        }
        if (changePending || changeClean) && !superblockWriteInFlight {
            superblockWriteInFlight = true
            schedule(.superblockWritten, after: jitter(2 * nanosPerMilli))
        }
        if needsReap { reapSync() }
        if tookLock && !superblockWriteInFlight {
            mutexOwner = nil
            wakeWaiters()
        }
    }

    func superblockLanded() {
        superblockWriteInFlight = false
        superblockEvents += 1
        changePending = false
        changeClean = false
        if mutexOwner == .daemon {
            mutexOwner = nil
        }
        wakeWaiters()
        wake(.daemon)
    }

    /// Member I/O of a stripe completed: md puts it back on the handle list for the daemon.
    func stripeDone(_ id: Int) {
        guard stripes[id] != nil else { return }
        stripes[id]!.ioDone = true
        handleList.append(id)
        wake(.daemon)
    }

    /// The daemon's second look at a stripe: parity checked or written, the bio completed, the
    /// stripe released.
    func finishStripe(_ id: Int) {
        guard let stripe = stripes.removeValue(forKey: id) else { return }
        switch stripe.kind {
        case .write:
            writesPending -= 1
            writesInFlight -= 1
            writeRequests[id] = nil
            // md_write_end re-arms the safe-mode timer (200 ms).
            safeModeDeadline = now + 200 * nanosPerMilli
            if !safeModeTimerArmed {
                safeModeTimerArmed = true
                schedule(.safeModeTimer, after: 200 * nanosPerMilli)
            }
            wake(.writer)
        case .sync:
            syncStripesInFlight -= 1
            syncCompleted = min(syncTotal, syncCompleted + 8)
            wake(.syncThread)
        }
        wakeWaiters()
    }

    // MARK: - the sync thread (md_do_sync → raid5_sync_request)

    func startSync() {
        syncBlockedOnStripe = false
        syncRunning = true
        syncInterrupted = false
        syncDone = false
        syncStripesInFlight = 0
        lastAction = "check"
        wake(.syncThread)
    }

    func syncStep() {
        guard syncRunning, !syncDone else { return }
        // Its waits are uninterruptible: kthread_stop or MD_RECOVERY_INTR wakes the thread, but
        // wait_event looks at its condition again and goes back to sleep. In the field the check
        // thread sat in raid5_get_active_stripe with the cache full (stripe_cache_active at the
        // limit) for as long as the hang lasted.
        if let w = waits[.syncThread] {
            guard isOver(w) else { return }
            endWait(.syncThread)
        }
        // Woken in raid5_get_active_stripe: it takes the stripe and issues the request before
        // md_do_sync looks at MD_RECOVERY_INTR again.
        if syncBlockedOnStripe {
            if !canTakeStripe {
                blockOnStripe(.syncThread)
                return
            }
            syncBlockedOnStripe = false
            if syncInterrupted { takeSyncStripe() }
        }
        while true {
            if syncInterrupted || syncCompleted >= syncTotal {
                // md_do_sync returns: DONE is set and the thread ends (5.4: kthread_stop's wait
                // ends; 6.x: the daemon reaps it).
                if syncStripesInFlight > 0 {
                    waits[.syncThread] = .syncStripesDrain
                    return
                }
                syncDone = true
                if version == .md54 {
                    syncRunning = false
                    syncSeq += 1
                } else {
                    wake(.daemon)
                }
                wakeWaiters()
                return
            }
            if syncStripesInFlight >= syncWindow { return }
            // raid5_get_active_stripe for the sync request: an uninterruptible wait for a stripe.
            if !canTakeStripe {
                blockOnStripe(.syncThread)
                syncBlockedOnStripe = true
                return
            }
            takeSyncStripe()
        }
    }

    /// raid5_get_active_stripe takes a free stripe only while R5_INACTIVE_BLOCKED is clear.
    var canTakeStripe: Bool { !inactiveBlocked && stripes.count < stripeCacheSize }

    /// Its wait ends once a stripe is free and, if the cache was found full, only when fewer
    /// than 3/4 of it are active: a thread blocked on a full cache stays blocked while the cache
    /// drains by a quarter (why `idle` could not stop the check thread in the field).
    var stripeWaitOver: Bool {
        stripes.count < stripeCacheSize && (stripes.count < stripeCacheSize * 3 / 4 || !inactiveBlocked)
    }

    func blockOnStripe(_ party: Party) {
        inactiveBlocked = true
        waits[party] = .freeStripe
    }

    func takeSyncStripe() {
        let id = nextStripe
        nextStripe += 1
        stripes[id] = Stripe(kind: .sync)
        handleList.append(id)
        syncStripesInFlight += 1
        syncPosition += 8
        wake(.daemon)
    }

    func reapSync() {
        syncRunning = false
        syncSeq += 1
        wakeWaiters()
    }

    // MARK: - sync_action writes (action_store)

    /// The field's control loop: check, a while, idle, a pause, again.
    func controlLoop() {
        guard controlCommand == nil else { return }
        controlCommand = (nextControlIsCheck ? "check" : "idle", now)
        controlStage = 0
        wake(.control)
    }

    func controlStep() {
        guard let (command, _) = controlCommand, waits[.control] == nil else { return }
        switch controlStage {
        case 0:
            // mddev_lock: a blocking lock.
            if mutexOwner != nil && mutexOwner != .control {
                waits[.control] = .mutex
                return
            }
            mutexOwner = .control
            if command == "check" {
                if !syncRunning { startSync() }
                unlockControl()
                finishControl()
                return
            }
            // idle
            guard syncRunning else {
                unlockControl()
                finishControl()
                return
            }
            syncInterrupted = true
            stats["idle with sync running", default: 0] += 1
            if inSync { stats["idle while clean", default: 0] += 1 }
            wake(.syncThread)
            switch version {
            case .md54:
                // md_reap_sync_thread → kthread_stop: wait for the thread, holding the lock.
                controlStage = 1
                waits[.control] = .syncThreadExit
            case .md69:
                // stop_sync_thread: drop the lock, then wait for the daemon to reap.
                mutexOwner = nil
                wakeWaiters()
                wake(.daemon)
                controlStage = 2
                waits[.control] = .syncReaped(syncSeq)
            }
        case 1:
            if syncRunning {
                waits[.control] = .syncThreadExit
                return
            }
            mutexOwner = nil
            wakeWaiters()
            wake(.daemon)
            finishControl()
        default:
            finishControl()
        }
    }

    /// mddev_unlock: release and wake the md thread.
    func unlockControl() {
        mutexOwner = nil
        wakeWaiters()
        wake(.daemon)
    }

    func finishControl() {
        controlCommand = nil
        nextControlIsCheck.toggle()
        let pause = nextControlIsCheck ? UInt64(5 + random.below(20)) : UInt64(5 + random.below(30))
        schedule(.controlLoop, after: pause * nanosPerMilli)
    }

    // MARK: - the monitor

    func monitorSample() {
        let state = arrayState
        monitorLines.append(
            "\(formatElapsed(now)) sync_action \(syncRunning ? lastAction : "idle") sync_completed \(syncRunning ? "\(syncCompleted) / \(syncTotal)" : "none") array_state \(state) stripe_cache_active \(stripes.count)")
        if monitorLines.count > 40 { monitorLines.removeFirst() }
        writePendingSamples = state == "write-pending" ? writePendingSamples + 1 : 0
        if escapeEnabled && writePendingSamples >= 3 {
            // echo active > array_state: clears CHANGE_PENDING without the lock.
            escapes += 1
            monitorLines.append("\(formatElapsed(now)) echo active > array_state")
            changePending = false
            writePendingSamples = 0
            wakeWaiters()
            wake(.daemon)
        }
        schedule(.monitor, after: nanosPerSecond)
    }

    var arrayState: String {
        if changePending { return "write-pending" }
        if inSync { return "clean" }
        return safeMode ? "active-idle" : "active"
    }

    func formatElapsed(_ t: Nanoseconds) -> String {
        let s = t / nanosPerSecond
        func two(_ v: UInt64) -> String { v < 10 ? "0\(v)" : "\(v)" }
        return "\(two(s / 3600)):\(two(s / 60 % 60)):\(two(s % 60))"
    }

    // MARK: - explaining a hang

    /// Who waits for whom: each party, what it holds and what it waits for, until the chain comes
    /// back to where it started.
    func plural(_ n: Int, _ word: String) -> String { "\(n) \(word)\(n == 1 ? "" : "s")" }

    func waitForCycle() -> [String] {
        func holds(_ p: Party) -> String {
            var held: [String] = []
            if mutexOwner == p { held.append("reconfig_mutex") }
            switch p {
            case .writer: if writesInFlight > 0 { held.append(plural(writesInFlight, "stripe") + " with writes") }
            case .syncThread: if syncStripesInFlight > 0 { held.append(plural(syncStripesInFlight, "sync stripe")) }
            default: break
            }
            return held.isEmpty ? "nothing" : held.joined(separator: ", ")
        }
        func waitsFor(_ p: Party) -> (String, Party?) {
            if p == .daemon {
                if changePending && mutexOwner != nil && mutexOwner != .daemon {
                    return ("reconfig_mutex (trylock fails) to write the superblock; until then it refuses every stripe (MD_SB_CHANGE_PENDING)", mutexOwner)
                }
                return ("work", nil)
            }
            switch waits[p] {
            case .superblockWritten?: return ("the superblock to be written (MD_SB_CHANGE_PENDING)", .daemon)
            case .freeStripe?:
                return ("a free stripe in raid5_get_active_stripe (stripe_cache_active \(stripes.count)/\(stripeCacheSize), R5_INACTIVE_BLOCKED: until fewer than \(stripeCacheSize * 3 / 4) are active); stripes drain only when the daemon handles them", .daemon)
            case .mutex?: return ("reconfig_mutex", mutexOwner)
            case .syncThreadExit?: return ("the check thread to exit (md_reap_sync_thread → kthread_stop)", .syncThread)
            case .syncReaped?: return ("the daemon to reap the check thread", .daemon)
            case .writesCompleted?: return ("its writes to complete", .daemon)
            case .syncStripesDrain?:
                return ("its \(plural(syncStripesInFlight, "sync stripe")) in flight to be finished by the daemon (md_do_sync's wait on recovery_active)", .daemon)
            case nil: return ("nothing", nil)
            }
        }
        var lines: [String] = []
        var seen: [Party] = []
        var p: Party? = controlCommand != nil ? .control : (waits[.writer] != nil ? .writer : nil)
        while let party = p, !seen.contains(party) {
            seen.append(party)
            let (what, next) = waitsFor(party)
            lines.append("\(party.rawValue): holds \(holds(party)); waits for \(what)")
            p = next
        }
        if let back = p, seen.contains(back) {
            lines.append("→ which waits on \(back.rawValue) again: a cycle")
        } else {
            lines.append("(no cycle: the chain ends)")
        }
        return lines
    }
}

/// Runs the md protocol models over seeds, for `swraid sim --model`.
public enum MDModelRunner {
    public struct Outcome: Sendable {
        public let seed: UInt64
        public let failure: SimFailure?
        public let cycle: [String]
        public let monitor: [String]
        public let events: Int
        public let simulatedNanos: Nanoseconds
        public let escapes: Int
        public let stats: [String: Int]
    }

    public static func run(seed: UInt64, version: MDModelVersion, escape: Bool = false) -> Outcome {
        let model = MDProtocolModel(seed: seed, version: version, escape: escape)
        let failure = model.run()
        return Outcome(
            seed: seed, failure: failure, cycle: model.cycle, monitor: Array(model.monitorLines.suffix(6)),
            events: model.eventCount, simulatedNanos: model.now, escapes: model.escapes, stats: model.stats)
    }
}
