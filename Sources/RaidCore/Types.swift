import MDFormat

/// Identifies a client request or control command; chosen by the driver, echoed in the
/// completion.
public struct RequestID: Hashable, Comparable, Sendable, CustomStringConvertible {
    public let rawValue: UInt64
    public init(_ rawValue: UInt64) { self.rawValue = rawValue }
    public static func < (a: RequestID, b: RequestID) -> Bool { a.rawValue < b.rawValue }
    public var description: String { String(rawValue) }
}

/// Identifies a member I/O the core asked for; chosen by the core.
public struct MemberIOID: Hashable, Comparable, Sendable, CustomStringConvertible {
    public let rawValue: UInt64
    public init(_ rawValue: UInt64) { self.rawValue = rawValue }
    public static func < (a: MemberIOID, b: MemberIOID) -> Bool { a.rawValue < b.rawValue }
    public var description: String { String(rawValue) }
}

/// A member device's place in the array's member table (the order the shell gave them in at
/// assembly, new members appended). Not a slot: see `Role`.
public struct MemberIndex: Hashable, Comparable, Sendable, CustomStringConvertible {
    public let rawValue: Int
    public init(_ rawValue: Int) { self.rawValue = rawValue }
    public static func < (a: MemberIndex, b: MemberIndex) -> Bool { a.rawValue < b.rawValue }
    public var description: String { String(rawValue) }
}

/// A slot of the array (md's `raid_disk`, mdadm's "RaidDevice"): 0..<raid_disks. Which member
/// holds it changes when a member fails and a spare takes over.
public struct Role: Hashable, Comparable, Sendable, CustomStringConvertible {
    public let rawValue: Int
    public init(_ rawValue: Int) { self.rawValue = rawValue }
    public static func < (a: Role, b: Role) -> Bool { a.rawValue < b.rawValue }
    public var description: String { String(rawValue) }
}

/// Monotonic time in nanoseconds, as the shell (or the simulator) measures it.
public typealias Nanoseconds = UInt64

public let nanosPerMilli: Nanoseconds = 1_000_000
public let nanosPerSecond: Nanoseconds = 1_000_000_000

/// The core's timers; arming one again replaces its previous deadline.
public enum TimerID: Hashable, Sendable, CaseIterable, CustomStringConvertible {
    /// md's safe-mode timer: no writes for `safe_mode_delay` marks the array clean.
    case safeMode
    /// Resumes a sync held back by `sync_speed_max`.
    case syncThrottle
    /// The bitmap daemon: clears bits of regions idle since the last sweep.
    case bitmapDaemon
    /// Rows of a write stream held past `writeGatherDelayNanos` go to the stripes.
    case writeGather

    public var description: String {
        switch self {
        case .safeMode: return "safe-mode"
        case .syncThrottle: return "sync-throttle"
        case .bitmapDaemon: return "bitmap-daemon"
        case .writeGather: return "write-gather"
        }
    }
}

/// What a client (an NBD connection, a test) asks of the array. Offsets and lengths in bytes,
/// multiples of 512.
public enum ClientRequest: Sendable, CustomStringConvertible {
    /// `into`, when given, is where the data lands (exactly `length` bytes): a server reads
    /// straight into the memory its reply goes out from, instead of copying the result there.
    /// Nothing else may touch those bytes until the request completes.
    case read(offsetBytes: UInt64, length: Int, into: IOBuffer? = nil)
    /// The core copies what it needs out of `data` before it completes the request; the caller
    /// must not change the bytes until then.
    case write(offsetBytes: UInt64, data: IOBuffer, fua: Bool)
    case flush
    /// The range may be discarded: the core zeroes whole stripe units inside it and leaves
    /// partial ones alone (either is a valid result of TRIM); parity stays consistent.
    case trim(offsetBytes: UInt64, length: Int)
    case writeZeroes(offsetBytes: UInt64, length: Int, fua: Bool)

    public var description: String {
        switch self {
        case .read(let o, let l, _): return "read \(o)+\(l)"
        case .write(let o, let d, let fua): return "write \(o)+\(d.count)\(fua ? " fua" : "")"
        case .flush: return "flush"
        case .trim(let o, let l): return "trim \(o)+\(l)"
        case .writeZeroes(let o, let l, let fua): return "write-zeroes \(o)+\(l)\(fua ? " fua" : "")"
        }
    }

    /// Bytes the request moves (what the in-flight byte bound counts).
    public var byteCount: Int {
        switch self {
        case .read(_, let l, _), .trim(_, let l), .writeZeroes(_, let l, _): return l
        case .write(_, let d, _): return d.count
        case .flush: return 0
        }
    }

    public var isWrite: Bool {
        switch self {
        case .write, .trim, .writeZeroes: return true
        case .read, .flush: return false
        }
    }
}

/// Why a client request failed, in errno terms an NBD server can pass on.
public enum ClientError: Error, Equatable, Sendable, CustomStringConvertible {
    /// EIO: the data cannot be read or written correctly (too many failed members).
    case io
    /// EINVAL: outside the array or not sector-aligned.
    case invalid(String)
    /// EROFS/EPERM: the array is read-only.
    case readOnly
    /// EAGAIN: more requests (or bytes) in flight than the core accepts.
    case busy
    /// ESHUTDOWN: the array is stopping or stopped.
    case shutdown

    public var description: String {
        switch self {
        case .io: return "I/O error"
        case .invalid(let why): return "invalid request: \(why)"
        case .readOnly: return "array is read-only"
        case .busy: return "too many requests in flight"
        case .shutdown: return "array is stopped"
        }
    }

    /// The Linux errno for the error.
    public var errno: Int32 {
        switch self {
        case .io: return 5
        case .invalid: return 22
        case .readOnly: return 30
        case .busy: return 11
        case .shutdown: return 108
        }
    }
}

public enum ClientResult: Sendable, Equatable {
    case data(IOBuffer)
    case done
    case failed(ClientError)
}

/// What a member I/O does.
public enum MemberIOKind: Sendable {
    /// Fill `into` (its whole length) from the member.
    case read(into: IOBuffer)
    /// Write `from` (its whole length). `fua`: durable before completion (superblocks, bitmap,
    /// FUA client writes).
    case write(from: IOBuffer, fua: Bool)
    /// Make every write completed so far durable.
    case flush
}

/// One member I/O the core asks its shell to perform. Offsets are absolute bytes on the member.
public struct MemberIORequest: Sendable, CustomStringConvertible {
    public let id: MemberIOID
    public let member: MemberIndex
    public let offsetBytes: UInt64
    public let kind: MemberIOKind
    public let purpose: MemberIOPurpose

    public init(id: MemberIOID, member: MemberIndex, offsetBytes: UInt64, kind: MemberIOKind, purpose: MemberIOPurpose) {
        self.id = id
        self.member = member
        self.offsetBytes = offsetBytes
        self.kind = kind
        self.purpose = purpose
    }

    /// Bytes moved (0 for a flush).
    public var byteCount: Int {
        switch kind {
        case .read(let b), .write(let b, _): return b.count
        case .flush: return 0
        }
    }

    public var isWrite: Bool { if case .write = kind { return true } else { return false } }

    public var description: String {
        switch kind {
        case .read(let b): return "read member \(member) at \(offsetBytes)+\(b.count) (\(purpose))"
        case .write(let b, let fua): return "write member \(member) at \(offsetBytes)+\(b.count)\(fua ? " fua" : "") (\(purpose))"
        case .flush: return "flush member \(member) (\(purpose))"
        }
    }
}

public enum MemberIOResult: Sendable, Equatable {
    /// Reads have filled their buffer.
    case success
    case failure(MemberIOError)

    public var succeeded: Bool { self == .success }
}

/// Everything that can happen to the core.
public enum CoreEvent: Sendable {
    case client(RequestID, ClientRequest)
    case control(RequestID, ControlCommand)
    case memberIOCompleted(MemberIOID, MemberIOResult)
    case timerFired(TimerID)
}

/// How loud a log line is (the shells map these onto their loggers).
public enum CoreLogLevel: Int, Sendable, Comparable {
    case debug, info, notice, warning, error
    public static func < (a: CoreLogLevel, b: CoreLogLevel) -> Bool { a.rawValue < b.rawValue }
}

/// Everything the core asks its shell to do.
public enum CoreAction: Sendable {
    case memberIO(MemberIORequest)
    case completeClient(RequestID, ClientResult)
    case completeControl(RequestID, ControlResult)
    case armTimer(TimerID, atNanos: Nanoseconds)
    /// An array event in md's words (a member failed, a recovery finished, a check's result).
    case log(CoreLogLevel, String)
}

/// How the array starts once assembled.
public enum CoreStartMode: Sendable, Equatable {
    /// md's default for an assembled array: read-write, a needed resync or recovery starts at once.
    case readWrite
    /// md's `read-auto`: nothing is written (and no resync runs) until the first write.
    case readAuto
    /// `readonly`: writes are refused.
    case readOnly
}

public struct CoreConfigError: Error, Equatable, Sendable, CustomStringConvertible {
    public let message: String
    public init(message: String) { self.message = message }
    public var description: String { message }
}

/// Tunables, with md's names, defaults and ranges.
public struct CoreConfig: Sendable, Equatable {
    /// `stripe_cache_size`: stripes in the cache (md: default 256, 17..32768).
    public var stripeCacheSize = 256
    /// `stripe_size`: bytes per member in one stripe (md: 4096).
    public var stripeSizeBytes = 4096
    /// How long the whole units a sequential write stream leaves in a chunk row wait for the
    /// rest of the row before they go to the stripes (see `RowGather`; no md counterpart;
    /// 0 disables).
    public var writeGatherDelayNanos: Nanoseconds = 10 * nanosPerMilli
    /// How long held rows wait when nothing else is in flight and no write has joined them
    /// (see `armIdleGatherRelease`): long enough for the shell to read requests already sent,
    /// short beside `writeGatherDelayNanos` for a writer at queue depth 1, who waits for it.
    public var writeGatherIdleNanos: Nanoseconds = 2 * nanosPerMilli
    /// `safe_mode_delay`: idle time before the array is marked clean (md: 200 ms; 0 disables).
    public var safeModeDelayNanos: Nanoseconds = 200 * nanosPerMilli
    /// `sync_speed_min` / `sync_speed_max` in KiB/s of the core's time.
    public var syncSpeedMinKiBps: UInt64 = CoreConfig.systemSyncSpeedMinKiBps
    public var syncSpeedMaxKiBps: UInt64 = CoreConfig.systemSyncSpeedMaxKiBps
    /// The largest speed limit accepted: md's attributes take an unsigned int.
    public static let maxSyncSpeedKiBps = UInt64(UInt32.max)
    /// `max_read_errors`: corrected read errors tolerated per member before it is failed.
    public var maxReadErrors = 20
    /// Client requests in flight (admitted or parked) before new ones get `busy`.
    public var maxRequestsInFlight = 4096
    /// Bytes of client requests in flight before new ones get `busy` (a read allocates its
    /// result, a write pins its data until it completes).
    public var maxBytesInFlight = 1 << 30
    /// Largest client request (NBD's usual maximum block size, 32 MiB).
    public var maxRequestBytes = 32 << 20
    /// Stripe items parked for a free stripe before new requests get `busy` (keeps the parking
    /// queue bounded whatever the request sizes; counted after a request is cut into pieces).
    public var maxParkedItems = 1 << 16
    /// Control commands waiting for a superblock update or a sync stop before new ones get
    /// EBUSY.
    public var maxControlWaiters = 1024
    /// Stripes a sync may hold at once (md: limited by the stripe cache; here explicit).
    public var syncWindowStripes = 8
    /// Seconds since the epoch at core time 0, for superblock update times.
    public var wallClockAtZeroSeconds: UInt64 = 0
    /// How often a running sync records its position in the superblocks (fraction of total).
    public var syncCheckpointsPerPass: UInt64 = 16
    public var startMode: CoreStartMode = .readAuto
    /// The shell opened the members read-only: nothing may ever be written to them, and no
    /// attribute write can make the array writable (EROFS).
    public var membersAreReadOnly = false

    public init() {}

    public static let stripeCacheSizeRange = 17...32768
    /// md's global defaults (`/proc/sys/dev/raid/speed_limit_min` and `_max`).
    public static let systemSyncSpeedMinKiBps: UInt64 = 1000
    public static let systemSyncSpeedMaxKiBps: UInt64 = 200_000

    /// Every value in its range, or an error naming the first that is not.
    public func validate() throws(CoreConfigError) {
        func fail(_ message: String) throws(CoreConfigError) { throw CoreConfigError(message: message) }
        if !Self.stripeCacheSizeRange.contains(stripeCacheSize) { try fail("stripe_cache_size \(stripeCacheSize) is outside 17..32768") }
        if stripeSizeBytes < 4096 || stripeSizeBytes > 32768 || stripeSizeBytes.nonzeroBitCount != 1 {
            try fail("stripe_size \(stripeSizeBytes) must be a power of two from 4096 to 32768")
        }
        if syncSpeedMinKiBps == 0 || syncSpeedMaxKiBps == 0 { try fail("sync_speed_min and sync_speed_max must be positive") }
        if syncSpeedMinKiBps > CoreConfig.maxSyncSpeedKiBps || syncSpeedMaxKiBps > CoreConfig.maxSyncSpeedKiBps {
            try fail("sync_speed_min and sync_speed_max must be at most \(CoreConfig.maxSyncSpeedKiBps) KiB/s")
        }
        if maxReadErrors < 0 { try fail("max_read_errors must not be negative") }
        if maxRequestsInFlight < 1 || maxBytesInFlight < 1 { try fail("the in-flight bounds must be positive") }
        if maxRequestBytes < 512 || maxRequestBytes % 512 != 0 { try fail("the largest request must be a positive multiple of 512 bytes") }
        if maxRequestBytes > maxBytesInFlight { try fail("the largest request (\(maxRequestBytes) bytes) exceeds the in-flight byte bound") }
        if maxParkedItems < maxRequestBytes / 4096 + 2 {
            try fail("the parking bound (\(maxParkedItems)) must hold one largest request cut into pieces")
        }
        if maxControlWaiters < 1 { try fail("the control waiter bound must be positive") }
        if syncWindowStripes < 1 { try fail("the sync window must hold at least one stripe") }
        if syncCheckpointsPerPass < 1 { try fail("a sync records its position at least once per pass") }
        if membersAreReadOnly && startMode != .readOnly { try fail("members opened read-only need a read-only start") }
    }
}

/// A deliberately broken core, for proving that the simulator's checkers catch bugs. Package
/// access only: tests and the simulator use it; programs using the library cannot.
package struct FaultyCoreVariant: Sendable, Equatable, OptionSet {
    package let rawValue: UInt32
    package init(rawValue: UInt32) { self.rawValue = rawValue }

    /// md 5.4's protocol inside our core: superblock updates are held back while a sync stop is
    /// pending (md's lock), no stripe is handled while a superblock change is pending (raid5d
    /// requeued them), and a stop waits for sync steps parked for a stripe.
    package static let deferSuperblockWhileStopPending = FaultyCoreVariant(rawValue: 1 << 0)
    /// Data writes are issued before the superblock is marked dirty on disk.
    package static let writeBeforeDirtySuperblock = FaultyCoreVariant(rawValue: 1 << 1)
    /// FLUSH completes without flushing members.
    package static let flushWithoutMemberFlush = FaultyCoreVariant(rawValue: 1 << 3)
    /// Check miscounts: one sector per mismatching block instead of eight.
    package static let mismatchCountInSectorsOfOne = FaultyCoreVariant(rawValue: 1 << 4)
    /// Partial writes update data but leave parity as it was.
    package static let skipParityOnPartialWrite = FaultyCoreVariant(rawValue: 1 << 5)
    /// Reconstruction of a lost member's block uses the wrong syndrome slot.
    package static let wrongReconstruction = FaultyCoreVariant(rawValue: 1 << 6)
}
