import DequeModule
import DiskIO
import Glibc
import MDFormat
import RaidCore

/// A job for the pool: one merged member I/O on one device, and where its results go.
struct IOJob {
    let device: MemberDevice
    let io: MergedIO
}

/// A bounded pool of threads that run member I/O system calls (which block) off the engine's
/// event loop, and hand each result to `deliver` on the thread that ran it.
///
/// One member may hold at most `perMemberLimit` threads at once; its further jobs wait in its
/// own queue while other members' jobs run. A member that stalls (a dying disk, a hung network
/// file) therefore holds at most that many threads, and with `threads >= members *
/// perMemberLimit` every other member always finds its share free, however many stall: the
/// stall holds up only the I/O that needs that member, as md's per-device queues do. It also
/// keeps a member file from having more writers than it can use (two writers of one file spin
/// on its inode lock). Threads take members round robin, each member's jobs in order.
///
/// The queues hold at most `maxQueuedJobs` in all: the core's own bounds (stripe cache,
/// in-flight requests) keep them far below, and going over is a bug, not back-pressure.
final class MemberIOPool: @unchecked Sendable {
    private let lock = ConditionLock()
    /// Jobs waiting, per member index (grown when a member is added).
    private var queued: [Deque<IOJob>] = []
    /// Threads running a job, per member index; never above `perMemberLimit`.
    private var running: [Int] = []
    private var queuedJobs = 0
    /// Where the next scan for a job starts, so that no member is always served first.
    private var nextMember = 0
    private var stopping = false
    private var threads: [OSThread] = []
    private let deliver: @Sendable ([(MemberIOID, MemberIOResult)]) -> Void
    let maxQueuedJobs: Int
    let perMemberLimit: Int
    /// Member indices above this are refused (md's v1.2 superblock has room for 384 roles).
    static let maxMembers = 4096
    /// Jobs queued or running (for stop: the pool is idle when this is 0).
    private(set) var busyJobs = 0

    init(threads count: Int, perMemberLimit: Int, maxQueuedJobs: Int = 1 << 20, deliver: @escaping @Sendable ([(MemberIOID, MemberIOResult)]) -> Void) {
        precondition(count >= 1 && perMemberLimit >= 1)
        self.deliver = deliver
        self.maxQueuedJobs = maxQueuedJobs
        self.perMemberLimit = perMemberLimit
        for _ in 0..<count {
            threads.append(OSThread { [self] in self.run() })
        }
    }

    /// The per-member limit for `threads` shared by `members`: an even share, at least one.
    static func perMemberLimit(threads: Int, members: Int) -> Int {
        max(1, threads / max(1, members))
    }

    func submit(_ job: IOJob) { submit(CollectionOfOne(job)) }

    /// Queues an unplug's jobs under one hold of the lock, and wakes one thread if any can start
    /// now: a thread that takes a job wakes another for any job it leaves startable (see `run`).
    func submit(_ jobs: some Collection<IOJob>) {
        guard !jobs.isEmpty else { return }
        lock.withLock {
            precondition(!stopping, "I/O submitted to a stopped pool")
            precondition(queuedJobs + jobs.count <= maxQueuedJobs, "member I/O queue over its bound")
            for job in jobs {
                let member = job.io.member.rawValue
                precondition(member >= 0 && member < Self.maxMembers, "member index \(member) out of range")
                while queued.count <= member {
                    queued.append(Deque())
                    running.append(0)
                }
                queued[member].append(job)
                queuedJobs += 1
                busyJobs += 1
            }
            // A job that cannot start now waits for its member's next completion.
            if hasStartableJob() { wakeOne() }
        }
    }

    /// Stops the threads once the queues are empty and waits for them (call with no I/O pending).
    func shutdown() {
        lock.withLock {
            stopping = true
            while wakeOne() {}
        }
        for t in threads { t.join() }
        threads.removeAll()
    }

    /// The next job a thread may start, round robin over members under their limit (lock held).
    private func takeJob() -> IOJob? {
        let count = queued.count
        var scanned = 0
        while scanned < count {
            let member = (nextMember + scanned) % count
            scanned += 1
            if running[member] < perMemberLimit, let job = queued[member].popFirst() {
                running[member] += 1
                queuedJobs -= 1
                nextMember = (member + 1) % count
                return job
            }
        }
        return nil
    }

    /// Returns once every thread is asleep for want of a job (tests start from there, so that
    /// a job is taken only by a thread something woke).
    func waitUntilEveryThreadWaits() {
        lock.lock()
        while waitingThreads < threads.count {
            lock.unlock()
            sched_yield()
            lock.lock()
        }
        lock.unlock()
    }

    /// Whether a queued job could start now (lock held).
    private func hasStartableJob() -> Bool {
        queued.indices.contains { !queued[$0].isEmpty && running[$0] < perMemberLimit }
    }

    /// A thread's own condition, and whether a waker picked it.
    private final class Sleeper {
        let condition = ConditionLock.Condition()
        var woken = false
    }

    /// Threads asleep for want of a job, the one that went to sleep last on top.
    private var sleepers: [Sleeper] = []
    private var waitingThreads: Int { sleepers.count }

    /// Sleeps until a waker picks this thread (lock held).
    private func sleep(_ me: Sleeper) {
        me.woken = false
        sleepers.append(me)
        while !me.woken { lock.wait(on: me.condition) }
    }

    /// Wakes the thread that went to sleep last (lock held): its stack and caches are the
    /// warmest, and under a steady load the same few threads do the work while the rest sleep,
    /// rather than every wake-up going to the thread that slept longest (a shared condition
    /// variable wakes in turn: five threads each switched 8,000 times in 5 s of random writes).
    /// False when every thread is awake.
    @discardableResult
    private func wakeOne() -> Bool {
        guard let next = sleepers.popLast() else { return false }
        next.woken = true
        next.condition.signal()
        return true
    }

    /// Each thread takes a job, runs it, and takes its next job in the same hold of the lock in
    /// which it gives the finished one back, waking another thread only for a job it leaves
    /// startable. Waking one for the member's next job while going back for one itself (as it
    /// did) made two threads race for it on every completion: RAID6 of 5, 4 KiB random writes
    /// at QD32, 27 % of the server's samples were thread switches and waits on this lock.
    private func run() {
        let slot = Sleeper()
        // Results of the job just run: delivered once the lock is let go, after the job is
        // given back (so `busyJobs` never counts a job whose results are out).
        var finished: [(MemberIOID, MemberIOResult)]?
        lock.lock()
        while true {
            var job = takeJob()
            if job == nil, let results = finished {
                lock.unlock()
                deliver(results)
                finished = nil
                lock.lock()
                job = takeJob()
            }
            while job == nil && !(stopping && queuedJobs == 0) {
                sleep(slot)
                job = takeJob()
            }
            guard let job else {
                lock.unlock()
                return
            }
            // A job left startable behind this one (a burst that one signal woke only this
            // thread for) gets a thread of its own.
            if hasStartableJob() { wakeOne() }
            lock.unlock()
            if let results = finished {
                deliver(results)
                finished = nil
            }
            finished = Self.perform(job)
            let member = job.io.member.rawValue
            lock.lock()
            assert(running[member] > 0, "a member's running count went below zero")
            running[member] -= 1
            busyJobs -= 1
        }
    }

    /// Runs the merged call; when it fails, each of the core's I/Os is tried alone so that only
    /// the ones that really fail are reported as failed (the block layer reports partial
    /// completion the same way).
    static func perform(_ job: IOJob) -> [(MemberIOID, MemberIOResult)] {
        let io = job.io
        let result = attempt(job.device, io.kind, io.offsetBytes, io.buffers, io.purpose)
        if result == .success || io.requests.count == 1 || io.kind == .flush {
            return io.requests.map { ($0.id, result) }
        }
        return io.requests.map { single in
            let one = MergedIO(member: io.member, kind: io.kind, offsetBytes: single.offsetBytes, requests: [single])
            return (single.id, attempt(job.device, one.kind, one.offsetBytes, one.buffers, single.purpose))
        }
    }

    static func attempt(_ device: MemberDevice, _ kind: MergedIO.Kind, _ offset: UInt64, _ buffers: [IOBuffer], _ purpose: MemberIOPurpose) -> MemberIOResult {
        do throws(MemberIOError) {
            switch kind {
            case .read:
                try device.read(at: offset, into: buffers.readTargets, purpose: purpose)
            case .write(let fua):
                try device.write(at: offset, from: buffers.map { UnsafeRawBufferPointer(start: $0.baseAddress, count: $0.count) }, fua: fua, purpose: purpose)
            case .flush:
                try device.flush(purpose: purpose)
            }
            return .success
        } catch {
            return .failure(error)
        }
    }
}
