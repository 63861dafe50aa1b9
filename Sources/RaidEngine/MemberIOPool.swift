import DequeModule
import DiskIO
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

    func submit(_ job: IOJob) {
        let member = job.io.member.rawValue
        precondition(member >= 0 && member < Self.maxMembers, "member index \(member) out of range")
        lock.withLock {
            precondition(!stopping, "I/O submitted to a stopped pool")
            precondition(queuedJobs < maxQueuedJobs, "member I/O queue over its bound")
            while queued.count <= member {
                queued.append(Deque())
                running.append(0)
            }
            queued[member].append(job)
            queuedJobs += 1
            busyJobs += 1
            // A thread is woken only when the job can start now; otherwise the member's next
            // completion wakes one (see `run`).
            if running[member] < perMemberLimit { lock.signal() }
        }
    }

    /// Stops the threads once the queues are empty and waits for them (call with no I/O pending).
    func shutdown() {
        lock.withLock {
            stopping = true
            lock.broadcast()
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

    private func run() {
        while true {
            lock.lock()
            var job = takeJob()
            while job == nil && !(stopping && queuedJobs == 0) {
                lock.wait()
                job = takeJob()
            }
            guard let job else {
                lock.unlock()
                return
            }
            lock.unlock()
            let results = Self.perform(job)
            let member = job.io.member.rawValue
            lock.withLock {
                assert(running[member] > 0, "a member's running count went below zero")
                running[member] -= 1
                busyJobs -= 1
                // This member's next job could not start while it was at its limit.
                if !queued[member].isEmpty { lock.signal() }
            }
            deliver(results)
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
