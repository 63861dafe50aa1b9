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
/// event loop, and hand each result to `deliver` on the thread that ran it. The queue holds at
/// most `maxQueuedJobs`: the core's own bounds (stripe cache, in-flight requests) keep it far
/// below, and going over is a bug, not back-pressure.
final class MemberIOPool: @unchecked Sendable {
    private let lock = ConditionLock()
    private var jobs = Deque<IOJob>()
    private var stopping = false
    private var threads: [OSThread] = []
    private let deliver: @Sendable ([(MemberIOID, MemberIOResult)]) -> Void
    let maxQueuedJobs: Int
    /// Jobs queued or running (for stop: the pool is idle when this is 0).
    private(set) var busyJobs = 0

    init(threads count: Int, maxQueuedJobs: Int = 1 << 20, deliver: @escaping @Sendable ([(MemberIOID, MemberIOResult)]) -> Void) {
        precondition(count >= 1)
        self.deliver = deliver
        self.maxQueuedJobs = maxQueuedJobs
        for _ in 0..<count {
            threads.append(OSThread { [self] in self.run() })
        }
    }

    func submit(_ job: IOJob) {
        lock.withLock {
            precondition(!stopping, "I/O submitted to a stopped pool")
            precondition(jobs.count < maxQueuedJobs, "member I/O queue over its bound")
            jobs.append(job)
            busyJobs += 1
            lock.signal()
        }
    }

    /// Stops the threads once the queue is empty and waits for them (call with no I/O pending).
    func shutdown() {
        lock.withLock {
            stopping = true
            lock.broadcast()
        }
        for t in threads { t.join() }
        threads.removeAll()
    }

    private func run() {
        while true {
            lock.lock()
            while jobs.isEmpty && !stopping { lock.wait() }
            guard let job = jobs.popFirst() else {
                lock.unlock()
                return
            }
            lock.unlock()
            let results = Self.perform(job)
            lock.withLock { busyJobs -= 1 }
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
