import MDFormat

// md's control vocabulary, parsed and rendered in one place: the core, the control plane and
// the CLI all go through these types, so `echo check > md/sync_action` means the same
// everywhere and an unknown value gets the same EINVAL.

/// `sync_action` values (md-semantics.md §2.1).
public enum SyncAction: String, Sendable, CaseIterable, CustomStringConvertible {
    case idle, frozen, resync, recover, check, repair
    public var description: String { rawValue }
}

/// md's sync kinds: what a running sync does (a `SyncAction` other than idle and frozen).
public enum SyncKind: String, Sendable, CaseIterable {
    case resync, recover, check, repair

    public var action: SyncAction {
        switch self {
        case .resync: return .resync
        case .recover: return .recover
        case .check: return .check
        case .repair: return .repair
        }
    }

    /// The word `/proc/mdstat` prints on the progress line (repair shows as resync, recover as
    /// recovery).
    public var mdstatLabel: String {
        switch self {
        case .resync, .repair: return "resync"
        case .recover: return "recovery"
        case .check: return "check"
        }
    }
}

/// `array_state` values (md-semantics.md §2.2), in md's order.
public enum ArrayState: String, Sendable, CaseIterable, CustomStringConvertible {
    case clear, inactive, suspended, readonly
    case readAuto = "read-auto"
    case clean, active
    case writePending = "write-pending"
    case activeIdle = "active-idle"
    case broken
    public var description: String { rawValue }
}

/// A `sync_speed_min`/`sync_speed_max` setting: md's system-wide default, or this array's own.
public enum SyncSpeedLimit: Sendable, Equatable {
    case system
    case kibps(UInt64)
}

/// A `sync_max` setting.
public enum SyncMax: Sendable, Equatable {
    case max
    case sectors(UInt64)
}

/// md's array attributes (`/sys/block/mdX/md/NAME`) that swraid knows.
public enum MDAttribute: String, Sendable, CaseIterable, CustomStringConvertible {
    case arrayState = "array_state"
    case syncAction = "sync_action"
    case lastSyncAction = "last_sync_action"
    case syncCompleted = "sync_completed"
    case syncSpeed = "sync_speed"
    case syncSpeedMin = "sync_speed_min"
    case syncSpeedMax = "sync_speed_max"
    case syncMin = "sync_min"
    case syncMax = "sync_max"
    case mismatchCount = "mismatch_cnt"
    case degraded
    case stripeCacheSize = "stripe_cache_size"
    case stripeCacheActive = "stripe_cache_active"
    case stripeSize = "stripe_size"
    case safeModeDelay = "safe_mode_delay"
    case maxReadErrors = "max_read_errors"
    case consistencyPolicy = "consistency_policy"
    case resyncStart = "resync_start"
    case raidDisks = "raid_disks"
    case level
    case layout
    case chunkSize = "chunk_size"
    case componentSize = "component_size"
    case arraySize = "array_size"
    case uuid
    case metadataVersion = "metadata_version"

    public var description: String { rawValue }

    /// Attributes a write is accepted for (the rest are read-only here).
    public var isWritable: Bool {
        switch self {
        case .arrayState, .syncAction, .syncSpeedMin, .syncSpeedMax, .syncMin, .syncMax, .stripeCacheSize, .safeModeDelay,
            .maxReadErrors:
            return true
        default:
            return false
        }
    }
}

/// Per-member attributes (`md/dev-N/NAME`; md names the directory after the device, swraid after
/// the member's index).
public enum MemberAttribute: String, Sendable, CaseIterable, CustomStringConvertible {
    case state, errors, slot
    public var description: String { rawValue }
}

/// An attribute's full name: `sync_action`, or `dev-2/state`.
public enum AttributeName: Sendable, Equatable, CustomStringConvertible {
    case array(MDAttribute)
    case member(MemberIndex, MemberAttribute)

    public init(parsing text: String) throws(ControlError) {
        let name = text.trimmingWhitespace()
        if let attribute = MDAttribute(rawValue: name) {
            self = .array(attribute)
            return
        }
        let parts = name.split(separator: "/", omittingEmptySubsequences: false)
        if parts.count == 2, parts[0].hasPrefix("dev-"), let index = Int(parts[0].dropFirst(4)), index >= 0,
            let attribute = MemberAttribute(rawValue: String(parts[1]))
        {
            self = .member(MemberIndex(index), attribute)
            return
        }
        throw .unknownAttribute(name)
    }

    public var description: String {
        switch self {
        case .array(let a): return a.rawValue
        case .member(let m, let a): return "dev-\(m.rawValue)/\(a.rawValue)"
        }
    }
}

/// A control command, in md's vocabulary: each attribute write as `echo VALUE > md/NAME` is
/// one case, and mdadm's manage verbs are the rest.
public enum ControlCommand: Sendable, CustomStringConvertible {
    case setSyncAction(SyncAction)
    case setArrayState(ArrayState)
    case setStripeCacheSize(Int)
    case setSafeModeDelay(Nanoseconds)
    case setSyncSpeedMin(SyncSpeedLimit)
    case setSyncSpeedMax(SyncSpeedLimit)
    case setSyncMin(sectors: UInt64)
    case setSyncMax(SyncMax)
    case setMaxReadErrors(Int)
    /// `dev-N/errors`: the member's count of corrected read errors.
    case setMemberErrors(MemberIndex, Int)
    /// `mdadm --fail` (`echo faulty > dev-N/state`): mark the member faulty.
    case fail(MemberIndex)
    /// `mdadm --remove` (`echo remove > dev-N/state`): drop a faulty or spare member.
    case remove(MemberIndex)
    /// `mdadm --re-add`: a removed member comes back as a spare.
    case readd(MemberIndex)
    /// `mdadm --add`: a new device joins as a spare (its index is the next in the table). The
    /// shell has written a spare superblock on it.
    case addNew(MemberMetadata)
    /// `mdadm --stop`: finish what is in flight, stop any sync, mark the array clean on disk;
    /// afterwards every request gets ESHUTDOWN.
    case stop

    public var description: String {
        switch self {
        case .setSyncAction(let a): return "\(a) > sync_action"
        case .setArrayState(let s): return "\(s) > array_state"
        case .setStripeCacheSize(let n): return "\(n) > stripe_cache_size"
        case .setSafeModeDelay(let n): return "\(formatSeconds(n)) > safe_mode_delay"
        case .setSyncSpeedMin(let l): return "\(l.text) > sync_speed_min"
        case .setSyncSpeedMax(let l): return "\(l.text) > sync_speed_max"
        case .setSyncMin(let s): return "\(s) > sync_min"
        case .setSyncMax(let m): return "\(m.text) > sync_max"
        case .setMaxReadErrors(let n): return "\(n) > max_read_errors"
        case .setMemberErrors(let m, let n): return "\(n) > dev-\(m)/errors"
        case .fail(let m): return "fail member \(m)"
        case .remove(let m): return "remove member \(m)"
        case .readd(let m): return "re-add member \(m)"
        case .addNew(let meta): return "add \(meta.name)"
        case .stop: return "stop"
        }
    }

    /// The command for `echo VALUE > md/NAME`. md ignores one trailing newline (echo adds it);
    /// so does this. Unknown names and values, and writes to read-only attributes, are errors
    /// with md's errno and a message.
    public static func parse(attribute: AttributeName, value text: String) throws(ControlError) -> ControlCommand {
        let value = text.trimmingWhitespace()
        switch attribute {
        case .array(let a):
            return try parseArrayWrite(a, value)
        case .member(let m, let a):
            return try parseMemberWrite(m, a, value)
        }
    }

    public static func parse(attribute name: String, value: String) throws(ControlError) -> ControlCommand {
        try parse(attribute: try AttributeName(parsing: name), value: value)
    }

    static func parseArrayWrite(_ attribute: MDAttribute, _ value: String) throws(ControlError) -> ControlCommand {
        switch attribute {
        case .syncAction:
            guard let action = SyncAction(rawValue: value) else {
                throw .invalid("sync_action takes idle, frozen, resync, recover, check or repair, not '\(value)'")
            }
            return .setSyncAction(action)
        case .arrayState:
            guard let state = ArrayState(rawValue: value) else { throw .invalid("unknown array_state '\(value)'") }
            return .setArrayState(state)
        case .stripeCacheSize:
            guard let n = Int(value), CoreConfig.stripeCacheSizeRange.contains(n) else {
                throw .invalid("stripe_cache_size must be 17..32768, not '\(value)'")
            }
            return .setStripeCacheSize(n)
        case .safeModeDelay:
            guard let nanos = parseSeconds(value) else {
                throw .invalid("safe_mode_delay takes seconds with at most 3 decimals, like 0.200, not '\(value)'")
            }
            return .setSafeModeDelay(nanos)
        case .syncSpeedMin, .syncSpeedMax:
            let limit: SyncSpeedLimit
            if value == "system" {
                limit = .system
            } else if let n = UInt64(value), n > 0, n <= CoreConfig.maxSyncSpeedKiBps {
                limit = .kibps(n)
            } else {
                throw .invalid("\(attribute) takes a speed in KiB/s from 1 to \(CoreConfig.maxSyncSpeedKiBps), or 'system', not '\(value)'")
            }
            return attribute == .syncSpeedMin ? .setSyncSpeedMin(limit) : .setSyncSpeedMax(limit)
        case .syncMin:
            guard let sectors = UInt64(value) else { throw .invalid("sync_min takes a sector number, not '\(value)'") }
            return .setSyncMin(sectors: sectors)
        case .syncMax:
            if value == "max" { return .setSyncMax(.max) }
            guard let sectors = UInt64(value) else { throw .invalid("sync_max takes a sector number or 'max', not '\(value)'") }
            return .setSyncMax(.sectors(sectors))
        case .maxReadErrors:
            guard let n = Int(value), n >= 0, n <= Int(Int32.max) else {
                throw .invalid("max_read_errors takes a count, not '\(value)'")
            }
            return .setMaxReadErrors(n)
        default:
            throw .readOnlyAttribute(attribute.rawValue)
        }
    }

    static func parseMemberWrite(_ m: MemberIndex, _ attribute: MemberAttribute, _ value: String) throws(ControlError) -> ControlCommand {
        switch attribute {
        case .state:
            switch value {
            case "faulty": return .fail(m)
            case "remove": return .remove(m)
            case "re-add": return .readd(m)
            default: throw .invalid("dev-\(m)/state takes faulty, remove or re-add, not '\(value)'")
            }
        case .errors:
            guard let n = Int(value), n >= 0, n <= Int(Int32.max) else { throw .invalid("dev-\(m)/errors takes a count, not '\(value)'") }
            return .setMemberErrors(m, n)
        case .slot:
            throw .busy("dev-\(m)/slot cannot be changed while the array runs")
        }
    }

    /// md's `safe_mode_delay` syntax: seconds with up to three decimals ("0.2", "0.200", "1").
    public static func parseSeconds(_ text: String) -> Nanoseconds? {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count <= 2, !text.isEmpty, parts[0].allSatisfy(\.isASCIIDigit) else { return nil }
        guard parts[0].count <= 9, let whole = UInt64(parts[0].isEmpty ? "0" : String(parts[0])) else { return nil }
        var millis = whole * 1000
        if parts.count == 2 {
            let frac = parts[1]
            guard frac.count <= 3, frac.allSatisfy(\.isASCIIDigit) else { return nil }
            guard let digits = UInt64(frac.isEmpty ? "0" : String(frac)) else { return nil }
            var scale: UInt64 = 1
            for _ in 0..<(3 - frac.count) { scale *= 10 }
            millis += digits * scale
        }
        return millis * nanosPerMilli
    }
}

/// md's answers to attribute writes and manage commands.
public enum ControlError: Error, Equatable, Sendable, CustomStringConvertible {
    /// EBUSY: e.g. a sync action while another runs.
    case busy(String)
    /// EINVAL: unknown attribute value, or one md refuses in the array's state.
    case invalid(String)
    /// ENOENT: the attribute does not exist.
    case unknownAttribute(String)
    /// EACCES: the attribute exists but is read-only.
    case readOnlyAttribute(String)
    /// ENODEV: the array is stopped.
    case stopped
    /// EROFS: the members are open read-only; the array cannot become writable.
    case readOnly

    public var description: String {
        switch self {
        case .busy(let why): return "busy: \(why)"
        case .invalid(let why): return "invalid: \(why)"
        case .unknownAttribute(let name): return "no attribute '\(name)'"
        case .readOnlyAttribute(let name): return "attribute '\(name)' is read-only"
        case .stopped: return "the array is stopped"
        case .readOnly: return "the members are open read-only"
        }
    }

    /// md's errno for the error (what a sysfs write would have failed with).
    public var errno: Int32 {
        switch self {
        case .busy: return 16
        case .invalid: return 22
        case .unknownAttribute: return 2
        case .readOnlyAttribute: return 13
        case .stopped: return 19
        case .readOnly: return 30
        }
    }

    /// The errno's name, for messages and the control protocol.
    public var errnoName: String {
        switch self {
        case .busy: return "EBUSY"
        case .invalid: return "EINVAL"
        case .unknownAttribute: return "ENOENT"
        case .readOnlyAttribute: return "EACCES"
        case .stopped: return "ENODEV"
        case .readOnly: return "EROFS"
        }
    }
}

public enum ControlResult: Sendable, Equatable {
    case done
    case failed(ControlError)
}

extension SyncSpeedLimit {
    var text: String {
        switch self {
        case .system: return "system"
        case .kibps(let n): return String(n)
        }
    }
}

extension SyncMax {
    var text: String {
        switch self {
        case .max: return "max"
        case .sectors(let n): return String(n)
        }
    }
}

/// Seconds with three decimals, as md prints `safe_mode_delay` ("0.200").
public func formatSeconds(_ nanos: Nanoseconds) -> String {
    let ms = nanos / nanosPerMilli
    let frac = String(ms % 1000)
    return "\(ms / 1000).\(String(repeating: "0", count: 3 - frac.count))\(frac)"
}

extension Character {
    /// One byte, 0 to 9. Not `("0"..."9").contains`: Characters compare as strings, so "1"
    /// followed by a combining accent sorts between "0" and "9" too, and then `UInt64` of it
    /// is nil (a `safe_mode_delay` of "0.1\u{301}" trapped on a force-unwrap).
    var isASCIIDigit: Bool {
        guard let ascii = asciiValue else { return false }
        return ascii >= 0x30 && ascii <= 0x39
    }
}

extension StringProtocol {
    /// Without leading and trailing spaces, tabs and newlines (md strips the newline `echo` adds).
    public func trimmingWhitespace() -> String {
        var s = Substring(self)
        while let c = s.first, c == " " || c == "\n" || c == "\t" || c == "\r" { s.removeFirst() }
        while let c = s.last, c == " " || c == "\n" || c == "\t" || c == "\r" { s.removeLast() }
        return String(s)
    }
}
