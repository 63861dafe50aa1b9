import MDFormat

#if canImport(Glibc)
import Glibc
#endif

/// A member device that misbehaves on purpose, for tests: I/O errors on chosen reads, writes or
/// flushes (by offset range, by purpose, on every N-th call, a set number of times), stalls
/// that hold I/O until the test releases them, and a device that vanishes. Wraps any device;
/// what is not faulted passes through unchanged.
///
/// Thread safe: the rules are read and changed under a lock, since I/O runs on pool threads
/// while the test changes them.
public final class FaultyMember: MemberDevice, @unchecked Sendable {
    public enum Operation: Sendable, Equatable { case read, write, flush }

    /// Which I/Os a rule matches and what it does to them.
    public struct Rule: Sendable {
        public var operations: [Operation]
        /// Matches I/O touching any byte of this range (flushes match any range).
        public var byteRange: Range<UInt64>?
        /// Matches only I/O for these purposes (nil: any).
        public var purposes: [MemberIOPurpose]?
        /// Fails every N-th matching call (1: every one).
        public var everyNth: Int
        /// How many more times the rule fires (nil: forever).
        public var remaining: Int?
        public var errno: Int32
        /// When set, matching I/O is held until the gate opens, then proceeds (or fails, when
        /// `failsAfterStall`).
        public var stall: FaultGate?
        public var failsAfterStall: Bool

        public init(
            _ operations: [Operation], byteRange: Range<UInt64>? = nil, purposes: [MemberIOPurpose]? = nil, everyNth: Int = 1,
            times: Int? = nil, errno: Int32 = EIO, stall: FaultGate? = nil, failsAfterStall: Bool = true
        ) {
            self.operations = operations
            self.byteRange = byteRange
            self.purposes = purposes
            self.everyNth = max(1, everyNth)
            self.remaining = times
            self.errno = errno
            self.stall = stall
            self.failsAfterStall = stall == nil ? true : failsAfterStall
        }
    }

    public let inner: MemberDevice
    public var name: String { inner.name }

    /// The rules and what they did, shared by the wrappers of one member: a member removed,
    /// closed and opened again for a re-add is a new wrapper over a new file, and the faults
    /// set on the old one (by a test, or `swraid inject`) still apply (see `reopened`).
    final class Faults: @unchecked Sendable {
        let lock = ConditionLock()
        var rules: [(rule: Rule, seen: Int)] = []
        var vanished = false
        var badRanges: [Range<UInt64>] = []
        var injected: [Operation: Int] = [:]
        var calls: [String: Int] = [:]
    }
    private let faults: Faults

    /// Faults injected so far (by operation), for tests to check a rule fired.
    public var injected: [Operation: Int] { locked { faults.injected } }

    /// How many calls of `op` for `purpose` reached the device.
    public func callCount(_ op: Operation, _ purpose: MemberIOPurpose) -> Int { locked { faults.calls["\(op) \(purpose)", default: 0] } }

    public init(_ inner: MemberDevice) {
        self.inner = inner
        faults = Faults()
    }

    private init(_ inner: MemberDevice, sharing faults: Faults) {
        self.inner = inner
        self.faults = faults
    }

    /// The same member over `inner` (its file opened again), with this wrapper's faults: what
    /// is set on either applies to both.
    public func reopened(over inner: MemberDevice) -> FaultyMember { FaultyMember(inner, sharing: faults) }

    private func locked<T>(_ body: () -> T) -> T { faults.lock.withLock(body) }

    public func add(_ rule: Rule) { locked { faults.rules.append((rule, 0)) } }

    /// A latent bad sector range, as on a real disk: every read touching it fails with EIO
    /// until a write covers the whole range (the disk remaps it), and then it reads normally.
    public func addBadRange(_ range: Range<UInt64>) { locked { faults.badRanges.append(range) } }

    /// Bad ranges not rewritten yet.
    public var remainingBadRanges: [Range<UInt64>] { locked { faults.badRanges } }

    public func removeAllRules() { locked { faults.rules.removeAll() } }

    /// From now on every I/O fails with ENXIO, as when a disk drops off the bus.
    public func vanish() { locked { faults.vanished = true } }

    public var injectedCount: Int { locked { faults.injected.values.reduce(0, +) } }

    /// The fault (if any) for this call: an error to throw, and a gate to wait on first.
    private func decide(_ op: Operation, _ range: Range<UInt64>?, _ purpose: MemberIOPurpose) -> (MemberIOError?, FaultGate?) {
        locked {
            let f = faults
            f.calls["\(op) \(purpose)", default: 0] += 1
            if f.vanished {
                f.injected[op, default: 0] += 1
                return (MemberIOError(errno: ENXIO, message: "device vanished"), nil)
            }
            if let range {
                if op == .read, f.badRanges.contains(where: { $0.overlaps(range) }) {
                    f.injected[op, default: 0] += 1
                    return (MemberIOError(errno: EIO, message: "injected fault: unreadable sector"), nil)
                }
            }
            for i in f.rules.indices {
                let rule = f.rules[i].rule
                guard rule.operations.contains(op), rule.remaining.map({ $0 > 0 }) ?? true else { continue }
                if let purposes = rule.purposes, !purposes.contains(purpose) { continue }
                if let wanted = rule.byteRange, let range, !(wanted.overlaps(range)) { continue }
                f.rules[i].seen += 1
                guard f.rules[i].seen % rule.everyNth == 0 else { continue }
                if let left = rule.remaining { f.rules[i].rule.remaining = left - 1 }
                let error = rule.failsAfterStall ? MemberIOError(errno: rule.errno, message: "injected fault: \(String(cString: strerror(rule.errno)))") : nil
                if error != nil { f.injected[op, default: 0] += 1 }
                return (error, rule.stall)
            }
            return (nil, nil)
        }
    }

    private func apply(_ op: Operation, _ range: Range<UInt64>?, _ purpose: MemberIOPurpose) throws(MemberIOError) {
        let (error, gate) = decide(op, range, purpose)
        gate?.wait()
        if let error { throw error }
    }

    public func sizeBytes() throws(MemberIOError) -> UInt64 { try inner.sizeBytes() }

    public func read(at offsetBytes: UInt64, into buffers: [UnsafeMutableRawBufferPointer], purpose: MemberIOPurpose) throws(MemberIOError) {
        let count = UInt64(buffers.reduce(0) { $0 + $1.count })
        try apply(.read, offsetBytes..<(offsetBytes + count), purpose)
        try inner.read(at: offsetBytes, into: buffers, purpose: purpose)
    }

    public func write(at offsetBytes: UInt64, from buffers: [UnsafeRawBufferPointer], fua: Bool, purpose: MemberIOPurpose) throws(MemberIOError) {
        let count = UInt64(buffers.reduce(0) { $0 + $1.count })
        let range = offsetBytes..<(offsetBytes + count)
        try apply(.write, range, purpose)
        try inner.write(at: offsetBytes, from: buffers, fua: fua, purpose: purpose)
        // A completed write over a whole bad range remaps it.
        locked { faults.badRanges.removeAll { range.lowerBound <= $0.lowerBound && $0.upperBound <= range.upperBound } }
    }

    public func flush(purpose: MemberIOPurpose) throws(MemberIOError) {
        try apply(.flush, nil, purpose)
        try inner.flush(purpose: purpose)
    }

    public func close() { inner.close() }
}

/// A gate stalled I/O waits at until the test opens it (no sleeping, no timing).
public final class FaultGate: @unchecked Sendable {
    private let lock = ConditionLock()
    private var isOpen = false
    private var waiting = 0

    public init() {}

    func wait() {
        lock.lock()
        waiting += 1
        lock.broadcast()
        while !isOpen { lock.wait() }
        waiting -= 1
        lock.unlock()
    }

    /// Blocks until `count` I/Os are held at the gate (or it is open): how a test knows the
    /// stall has begun, without sleeping.
    public func waitForWaiters(_ count: Int) {
        lock.lock()
        while waiting < count && !isOpen { lock.wait() }
        lock.unlock()
    }

    /// I/Os held at the gate right now.
    public var waiters: Int { lock.withLock { waiting } }

    public func open() {
        lock.withLock {
            isOpen = true
            lock.broadcast()
        }
    }
}
