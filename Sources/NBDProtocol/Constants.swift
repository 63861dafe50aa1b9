// The NBD protocol's numbers (NetworkBlockDevice/nbd doc/proto.md), fixed newstyle only.
// Pure: this module parses and encodes bytes; it does no I/O.

public enum NBDMagic {
    /// "NBDMAGIC": the first 8 bytes a server sends.
    public static let initPassword: UInt64 = 0x4e42_444d_4147_4943
    /// "IHAVEOPT": the newstyle greeting, and the header of every option the client sends.
    public static let option: UInt64 = 0x4948_4156_454F_5054
    /// The header of every option reply.
    public static let optionReply: UInt64 = 0x0003_e889_0455_65a9
    public static let request: UInt32 = 0x2560_9513
    public static let simpleReply: UInt32 = 0x6744_6698
    public static let structuredReply: UInt32 = 0x668e_33ef
}

/// Handshake flags (server, 16 bits) and client flags (32 bits).
public enum NBDHandshakeFlag {
    public static let fixedNewstyle: UInt16 = 1 << 0
    public static let noZeroes: UInt16 = 1 << 1
    public static let clientFixedNewstyle: UInt32 = 1 << 0
    public static let clientNoZeroes: UInt32 = 1 << 1
}

/// Transmission flags (16 bits), sent with the export's size.
public struct NBDTransmissionFlags: OptionSet, Sendable, Hashable {
    public let rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }
    public static let hasFlags = NBDTransmissionFlags(rawValue: 1 << 0)
    public static let readOnly = NBDTransmissionFlags(rawValue: 1 << 1)
    public static let sendFlush = NBDTransmissionFlags(rawValue: 1 << 2)
    public static let sendFUA = NBDTransmissionFlags(rawValue: 1 << 3)
    public static let rotational = NBDTransmissionFlags(rawValue: 1 << 4)
    public static let sendTrim = NBDTransmissionFlags(rawValue: 1 << 5)
    public static let sendWriteZeroes = NBDTransmissionFlags(rawValue: 1 << 6)
    public static let sendDF = NBDTransmissionFlags(rawValue: 1 << 7)
    public static let canMultiConn = NBDTransmissionFlags(rawValue: 1 << 8)
    public static let sendResize = NBDTransmissionFlags(rawValue: 1 << 9)
    public static let sendCache = NBDTransmissionFlags(rawValue: 1 << 10)
    public static let sendFastZero = NBDTransmissionFlags(rawValue: 1 << 11)
}

/// Options a client sends during the handshake.
public enum NBDOption: UInt32, Sendable, CaseIterable, CustomStringConvertible {
    case exportName = 1
    case abort = 2
    case list = 3
    case peekExport = 4
    case startTLS = 5
    case info = 6
    case go = 7
    case structuredReply = 8
    case listMetaContext = 9
    case setMetaContext = 10
    case extendedHeaders = 11

    public var description: String {
        switch self {
        case .exportName: return "NBD_OPT_EXPORT_NAME"
        case .abort: return "NBD_OPT_ABORT"
        case .list: return "NBD_OPT_LIST"
        case .peekExport: return "NBD_OPT_PEEK_EXPORT"
        case .startTLS: return "NBD_OPT_STARTTLS"
        case .info: return "NBD_OPT_INFO"
        case .go: return "NBD_OPT_GO"
        case .structuredReply: return "NBD_OPT_STRUCTURED_REPLY"
        case .listMetaContext: return "NBD_OPT_LIST_META_CONTEXT"
        case .setMetaContext: return "NBD_OPT_SET_META_CONTEXT"
        case .extendedHeaders: return "NBD_OPT_EXTENDED_HEADERS"
        }
    }
}

/// Option reply types; errors have bit 31 set.
public enum NBDOptionReply: UInt32, Sendable {
    case ack = 1
    case server = 2
    case info = 3
    case metaContext = 4
    case errUnsupported = 0x8000_0001
    case errPolicy = 0x8000_0002
    case errInvalid = 0x8000_0003
    case errPlatform = 0x8000_0004
    case errTLSRequired = 0x8000_0005
    case errUnknown = 0x8000_0006
    case errShutdown = 0x8000_0007
    case errBlockSizeRequired = 0x8000_0008
    case errTooBig = 0x8000_0009
}

/// Information types of NBD_OPT_INFO and NBD_OPT_GO.
public enum NBDInfo: UInt16, Sendable {
    case export = 0
    case name = 1
    case description = 2
    case blockSize = 3
}

/// Commands of the transmission phase.
public enum NBDCommand: UInt16, Sendable, CustomStringConvertible {
    case read = 0
    case write = 1
    case disconnect = 2
    case flush = 3
    case trim = 4
    case cache = 5
    case writeZeroes = 6
    case blockStatus = 7
    case resize = 8

    public var description: String {
        switch self {
        case .read: return "NBD_CMD_READ"
        case .write: return "NBD_CMD_WRITE"
        case .disconnect: return "NBD_CMD_DISC"
        case .flush: return "NBD_CMD_FLUSH"
        case .trim: return "NBD_CMD_TRIM"
        case .cache: return "NBD_CMD_CACHE"
        case .writeZeroes: return "NBD_CMD_WRITE_ZEROES"
        case .blockStatus: return "NBD_CMD_BLOCK_STATUS"
        case .resize: return "NBD_CMD_RESIZE"
        }
    }
}

/// Command flags (16 bits).
public struct NBDCommandFlags: OptionSet, Sendable, Hashable {
    public let rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }
    public static let fua = NBDCommandFlags(rawValue: 1 << 0)
    public static let noHole = NBDCommandFlags(rawValue: 1 << 1)
    public static let dontFragment = NBDCommandFlags(rawValue: 1 << 2)
    public static let requestOne = NBDCommandFlags(rawValue: 1 << 3)
    public static let fastZero = NBDCommandFlags(rawValue: 1 << 4)
    public static let payloadLength = NBDCommandFlags(rawValue: 1 << 5)
}

/// Structured reply chunk types and flags.
public enum NBDReplyType: UInt16, Sendable {
    case none = 0
    case offsetData = 1
    case offsetHole = 2
    case blockStatus = 5
    case error = 0x8001
    case errorOffset = 0x8002
}

public enum NBDReplyFlag {
    public static let done: UInt16 = 1 << 0
}

/// The error values of replies (errno-like, fixed by the protocol).
public enum NBDError: UInt32, Sendable, Error, CustomStringConvertible {
    case permission = 1
    case io = 5
    case noMemory = 12
    case invalid = 22
    case noSpace = 28
    case overflow = 75
    case notSupported = 95
    case shutdown = 108

    public var description: String {
        switch self {
        case .permission: return "EPERM"
        case .io: return "EIO"
        case .noMemory: return "ENOMEM"
        case .invalid: return "EINVAL"
        case .noSpace: return "ENOSPC"
        case .overflow: return "EOVERFLOW"
        case .notSupported: return "ENOTSUP"
        case .shutdown: return "ESHUTDOWN"
        }
    }
}
