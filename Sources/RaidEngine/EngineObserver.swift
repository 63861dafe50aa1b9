import MDFormat
import RaidCore

/// A client request's kind, as metrics label it.
public enum ClientRequestKind: String, Sendable, CaseIterable {
    case read, write, flush, trim
    case writeZeroes = "write_zeroes"

    public init(_ request: ClientRequest) {
        switch request {
        case .read: self = .read
        case .write: self = .write
        case .flush: self = .flush
        case .trim: self = .trim
        case .writeZeroes: self = .writeZeroes
        }
    }
}

/// A member I/O's operation, as metrics label it.
public enum MemberIOOperation: String, Sendable, CaseIterable {
    case read, write, flush

    public init(_ kind: MemberIOKind) {
        switch kind {
        case .read: self = .read
        case .write: self = .write
        case .flush: self = .flush
        }
    }
}

extension ClientRequest {
    /// Bytes the request names (0 for a flush).
    public var byteCount: Int {
        switch self {
        case .read(_, let length, _), .trim(_, let length), .writeZeroes(_, let length, _): return length
        case .write(_, let data, _): return data.count
        case .flush: return 0
        }
    }
}

/// Told, on the engine's loop, of every client request and member I/O as it completes: the
/// hook metrics hang on. It must not block (it runs between the core's steps).
public protocol EngineObserver: AnyObject, Sendable {
    func clientRequestCompleted(kind: ClientRequestKind, bytes: Int, latencyNanoseconds: UInt64, failed: Bool)
    func memberIOCompleted(member: MemberIndex, operation: MemberIOOperation, purpose: MemberIOPurpose, bytes: Int, failed: Bool)
}
