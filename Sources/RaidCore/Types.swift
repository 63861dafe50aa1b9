import MDFormat

/// Identifies a client or control request; chosen by the shell, echoed in the completion.
public typealias RequestID = UInt64

/// Identifies a member I/O the core asked for; chosen by the core.
public typealias MemberIOID = UInt64

/// Monotonic time in nanoseconds, as the shell (or the simulator) measures it.
public typealias Nanoseconds = UInt64

public let nanosPerMilli: Nanoseconds = 1_000_000
public let nanosPerSecond: Nanoseconds = 1_000_000_000

/// The core's timers; arming one again replaces its previous deadline.
public enum TimerID: Hashable, Sendable, CustomStringConvertible {
    /// md's safe-mode timer: no writes for `safe_mode_delay` marks the array clean.
    case safeMode
    /// Resumes a sync held back by `sync_speed_max`.
    case syncThrottle
    /// The bitmap daemon: clears bits of regions idle since the last sweep.
    case bitmapDaemon

    public var description: String {
        switch self {
        case .safeMode: return "safe-mode"
        case .syncThrottle: return "sync-throttle"
        case .bitmapDaemon: return "bitmap-daemon"
        }
    }
}

/// What a client (an NBD connection, a test) asks of the array. Offsets and lengths in bytes,
/// multiples of 512.
public enum ClientRequest: Sendable, CustomStringConvertible {
    case read(offsetBytes: UInt64, length: Int)
    case write(offsetBytes: UInt64, data: [UInt8], fua: Bool)
    case flush
    /// The range may be discarded: the core zeroes whole stripe units inside it and leaves
    /// partial ones alone (either is a valid result of TRIM); parity stays consistent.
    case trim(offsetBytes: UInt64, length: Int)
    case writeZeroes(offsetBytes: UInt64, length: Int, fua: Bool)

    public var description: String {
        switch self {
        case .read(let o, let l): return "read \(o)+\(l)"
        case .write(let o, let d, let fua): return "write \(o)+\(d.count)\(fua ? " fua" : "")"
        case .flush: return "flush"
        case .trim(let o, let l): return "trim \(o)+\(l)"
        case .writeZeroes(let o, let l, let fua): return "write-zeroes \(o)+\(l)\(fua ? " fua" : "")"
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
    /// EAGAIN: more requests in flight than the core accepts.
    case busy

    public var description: String {
        switch self {
        case .io: return "I/O error"
        case .invalid(let why): return "invalid request: \(why)"
        case .readOnly: return "array is read-only"
        case .busy: return "too many requests in flight"
        }
    }
}

public enum ClientResult: Sendable, Equatable {
    case data([UInt8])
    case done
    case failed(ClientError)
}

/// A control command, in md's vocabulary: attribute writes as `echo VALUE > md/NAME`.
public enum ControlCommand: Sendable, Equatable, CustomStringConvertible {
    case set(attribute: String, value: String)
    /// `mdadm --fail`: mark the member in `role`'s slot faulty.
    case fail(role: Int)
    /// `mdadm --remove`: drop a faulty or spare member (by member index).
    case remove(member: Int)
    /// `mdadm --add`: make a member known to the core (already given in the assembly as a
    /// spare-capable device) available as a spare.
    case add(member: Int)

    public var description: String {
        switch self {
        case .set(let a, let v): return "\(v) > \(a)"
        case .fail(let role): return "fail role \(role)"
        case .remove(let m): return "remove member \(m)"
        case .add(let m): return "add member \(m)"
        }
    }
}

/// md's answers to attribute writes.
public enum ControlError: Error, Equatable, Sendable, CustomStringConvertible {
    /// EBUSY: e.g. a sync action while another runs.
    case busy(String)
    /// EINVAL: unknown attribute value.
    case invalid(String)
    /// The attribute does not exist or cannot be written.
    case unknownAttribute(String)

    public var description: String {
        switch self {
        case .busy(let why): return "busy: \(why)"
        case .invalid(let why): return "invalid: \(why)"
        case .unknownAttribute(let name): return "no writable attribute '\(name)'"
        }
    }
}

public enum ControlResult: Sendable, Equatable {
    case done
    case failed(ControlError)
}

public enum MemberIOResult: Sendable, Equatable {
    /// For reads, the bytes read; for writes and flushes, empty.
    case success([UInt8])
    case failure
}

/// Everything that can happen to the core.
public enum CoreEvent: Sendable {
    case client(RequestID, ClientRequest)
    case control(RequestID, ControlCommand)
    case memberIOCompleted(MemberIOID, MemberIOResult)
    case timerFired(TimerID)
}

/// Everything the core asks its shell to do. Member offsets are absolute bytes on the member.
public enum CoreAction: Sendable, Equatable {
    case memberRead(MemberIOID, member: Int, offsetBytes: UInt64, length: Int)
    /// `fua`: durable before completion (superblocks, bitmap, FUA client writes).
    case memberWrite(MemberIOID, member: Int, offsetBytes: UInt64, data: [UInt8], fua: Bool)
    case memberFlush(MemberIOID, member: Int)
    case completeClient(RequestID, ClientResult)
    case completeControl(RequestID, ControlResult)
    case armTimer(TimerID, atNanos: Nanoseconds)
    case log(String)
}

/// Tunables, with md's names, defaults and ranges.
public struct CoreConfig: Sendable, Equatable {
    /// `stripe_cache_size`: stripes in the cache (md: default 256, 17..32768).
    public var stripeCacheSize = 256
    /// `stripe_size`: bytes per member in one stripe (md: 4096).
    public var stripeSizeBytes = 4096
    /// `safe_mode_delay`: idle time before the array is marked clean (md: 200 ms; 0 disables).
    public var safeModeDelayNanos: Nanoseconds = 200 * nanosPerMilli
    /// `sync_speed_min` / `sync_speed_max` in KiB/s of the core's time.
    public var syncSpeedMinKiBps: UInt64 = 1000
    public var syncSpeedMaxKiBps: UInt64 = 200_000
    /// `max_read_errors`: corrected read errors tolerated per member before it is failed.
    public var maxReadErrors = 20
    /// Client requests in flight (admitted or parked) before new ones get `busy`.
    public var maxRequestsInFlight = 4096
    /// Largest client request (NBD's usual maximum block size, 32 MiB).
    public var maxRequestBytes = 32 << 20
    /// Stripe items parked for a free stripe before new requests get `busy` (keeps the parking
    /// queue bounded whatever the request sizes).
    public var maxParkedItems = 1 << 16
    /// Stripes a sync may hold at once (md: limited by the stripe cache; here explicit).
    public var syncWindowStripes = 8
    /// Seconds since the epoch at core time 0, for superblock update times.
    public var wallClockAtZeroSeconds: UInt64 = 0
    /// How often a running sync records its position in the superblocks (fraction of total).
    public var syncCheckpointsPerPass: UInt64 = 16

    public init() {}

    public static let stripeCacheSizeRange = 17...32768
}

/// A deliberately broken core, for proving that the simulator's checkers catch bugs. Never set
/// outside tests.
public struct FaultyCoreVariant: Sendable, Equatable, OptionSet {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    /// md 5.4's protocol inside our core: superblock updates are held back while a sync stop is
    /// pending (md's lock), no stripe is handled while a superblock change is pending (raid5d
    /// requeued them), and a stop waits for sync steps parked for a stripe.
    public static let deferSuperblockWhileStopPending = FaultyCoreVariant(rawValue: 1 << 0)
    /// Data writes are issued before the superblock is marked dirty on disk.
    public static let writeBeforeDirtySuperblock = FaultyCoreVariant(rawValue: 1 << 1)
    /// FLUSH completes without flushing members.
    public static let flushWithoutMemberFlush = FaultyCoreVariant(rawValue: 1 << 3)
    /// Check miscounts: one sector per mismatching block instead of eight.
    public static let mismatchCountInSectorsOfOne = FaultyCoreVariant(rawValue: 1 << 4)
    /// Partial writes update data but leave parity as it was.
    public static let skipParityOnPartialWrite = FaultyCoreVariant(rawValue: 1 << 5)
    /// Reconstruction of a lost member's block uses the wrong syndrome slot.
    public static let wrongReconstruction = FaultyCoreVariant(rawValue: 1 << 6)
}
