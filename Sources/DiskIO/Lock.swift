#if canImport(Glibc)
import Glibc
#endif

/// A mutex with a condition variable, on the heap (a pthread mutex must not move). For the
/// little shared state the I/O side has: fault rules, gates, the thread pool's queue. Never
/// held around array state (design.md §1).
public final class ConditionLock: @unchecked Sendable {
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private let condition: UnsafeMutablePointer<pthread_cond_t>

    public init() {
        mutex = .allocate(capacity: 1)
        mutex.initialize(to: pthread_mutex_t())
        pthread_mutex_init(mutex, nil)
        condition = .allocate(capacity: 1)
        condition.initialize(to: pthread_cond_t())
        pthread_cond_init(condition, nil)
    }

    deinit {
        pthread_cond_destroy(condition)
        pthread_mutex_destroy(mutex)
        condition.deallocate()
        mutex.deallocate()
    }

    public func lock() { pthread_mutex_lock(mutex) }
    public func unlock() { pthread_mutex_unlock(mutex) }

    /// Waits for a signal; call with the lock held (it is held again on return).
    public func wait() { pthread_cond_wait(condition, mutex) }
    public func signal() { pthread_cond_signal(condition) }
    public func broadcast() { pthread_cond_broadcast(condition) }

    /// Waits on `condition` (another condition variable used with this mutex); call with the
    /// lock held (it is held again on return).
    public func wait(on condition: Condition) { pthread_cond_wait(condition.condition, mutex) }

    /// A further condition variable for this lock's mutex: one per waiter, where the waker
    /// picks which waiter wakes.
    public final class Condition: @unchecked Sendable {
        fileprivate let condition: UnsafeMutablePointer<pthread_cond_t>
        public init() {
            condition = .allocate(capacity: 1)
            condition.initialize(to: pthread_cond_t())
            pthread_cond_init(condition, nil)
        }
        deinit {
            pthread_cond_destroy(condition)
            condition.deallocate()
        }
        /// Call with the lock held.
        public func signal() { pthread_cond_signal(condition) }
    }

    public func withLock<T>(_ body: () throws -> T) rethrows -> T {
        lock()
        defer { unlock() }
        return try body()
    }
}

/// Counts public calls in progress. Once closed, no call enters, and `closeAndDrain` returns
/// when the last one has left: after that nothing will hop onto the loop again.
public final class CallGate: @unchecked Sendable {
    public init() {}

    private let lock = ConditionLock()
    private var active = 0
    private var isClosed = false
    private var drained: [CheckedContinuation<Void, Never>] = []

    public func enter() -> Bool {
        lock.withLock {
            guard !isClosed else { return false }
            active += 1
            return true
        }
    }

    public func leave() {
        let ready: [CheckedContinuation<Void, Never>] = lock.withLock {
            precondition(active > 0, "call gate left more often than entered")
            active -= 1
            guard active == 0 else { return [] }
            defer { drained.removeAll() }
            return drained
        }
        for c in ready { c.resume() }
    }

    public var closedForGood: Bool { lock.withLock { isClosed } }

    public func closeAndDrain() async {
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let now: Bool = lock.withLock {
                isClosed = true
                if active == 0 { return true }
                drained.append(c)
                return false
            }
            if now { c.resume() }
        }
    }
}
