/// Words for I/O on an array's members, shared by the core (which says what each I/O is for),
/// the device layer (which injects faults by purpose) and the shells (logs and metrics).
/// Pure: no I/O happens here.

/// What a member I/O is for. md has no such tag on its bios; here it costs nothing and lets a
/// log line, a metric or a fault injector say "the parity write" instead of guessing from offsets.
public enum MemberIOPurpose: String, Sendable, CaseIterable, CustomStringConvertible {
    /// A client's data block (read or written).
    case data
    /// A P or Q block written (or read for a read-modify-write) by the write path.
    case parity
    /// The v1.x superblock.
    case superblock
    /// The write-intent bitmap (header and bits).
    case bitmap
    /// A block read by resync, recovery, check or repair.
    case syncRead = "sync-read"
    /// A block written by resync, recovery or repair (parity fixed, or a member rebuilt).
    case syncWrite = "sync-write"
    /// A block rewritten after a read error, from data rebuilt out of the others (md's
    /// R5_ReWrite), and the read that verifies it.
    case rewrite
    /// A flush a client asked for.
    case clientFlush = "client-flush"
    /// The flush of every member before superblocks or bitmap are written (md's REQ_PREFLUSH).
    case metadataBarrier = "metadata-barrier"

    public var description: String { rawValue }

    /// Purposes whose failure the core may treat as "the member holds metadata it cannot
    /// update": superblock and bitmap I/O and the barrier flushes before them.
    public var isMetadata: Bool { self == .superblock || self == .bitmap || self == .metadataBarrier }

    /// Reads that must come from the device itself, not from a copy the system keeps (a file's
    /// page cache): a check or repair compares what is on the medium, and the read after a
    /// rewrite verifies that the sector took the write (md re-reads from the disk).
    public var readsFromTheDevice: Bool { self == .syncRead || self == .rewrite }
}

/// A member I/O that failed, with the errno the system (or a fault injector) gave.
public struct MemberIOError: Error, Equatable, Hashable, Sendable, CustomStringConvertible {
    public let errno: Int32
    /// The system's text for `errno` where the shell knows it (strerror), else a short name.
    public let message: String

    public init(errno: Int32, message: String? = nil) {
        self.errno = errno
        self.message = message ?? MemberIOError.name(of: errno)
    }

    /// EIO: the device could not do it (the usual answer of a failing disk).
    public static let io = MemberIOError(errno: 5)
    /// ENXIO: the device is gone.
    public static let noDevice = MemberIOError(errno: 6)
    /// ENOSPC: a write past what the device holds.
    public static let noSpace = MemberIOError(errno: 28)

    public var description: String { "\(message) (errno \(errno))" }

    /// Names for the errnos a member I/O commonly ends with (Linux numbering); the shells pass
    /// strerror's text instead where they have it.
    static func name(of errno: Int32) -> String {
        switch errno {
        case 5: return "Input/output error"
        case 6: return "No such device or address"
        case 19: return "No such device"
        case 22: return "Invalid argument"
        case 28: return "No space left on device"
        case 61: return "No data available"
        case 110: return "Connection timed out"
        case 121: return "Remote I/O error"
        default: return "error \(errno)"
        }
    }
}

/// What a superblock probe found on one member device: its superblock, where it was, how large
/// the device is and (when the array has one) its write-intent bitmap area. The same value comes
/// from a real file, a block device or a simulated member.
public struct MemberMetadata: Sendable {
    /// How the device was named (a path, or a simulated member's name).
    public var name: String
    public var superblock: MDSuperblock1
    public var deviceSizeSectors: UInt64
    /// The bitmap header, when feature bit 0 says there is one and it decodes.
    public var bitmap: MDBitmapSuperblock?
    /// The bitmap area (header and bits) as read from this member.
    public var bitmapArea: [UInt8]?

    public init(name: String, superblock: MDSuperblock1, deviceSizeSectors: UInt64, bitmap: MDBitmapSuperblock? = nil, bitmapArea: [UInt8]? = nil) {
        self.name = name
        self.superblock = superblock
        self.deviceSizeSectors = deviceSizeSectors
        self.bitmap = bitmap
        self.bitmapArea = bitmapArea
    }
}
