/// Memory that member I/O reads into and writes from, aligned for O_DIRECT, shared by reference:
/// the core hands a stripe's block or a client's buffer to its shell as an `IOBuffer` and the
/// shell gives the kernel that very memory (no copy into a fresh array per I/O).
///
/// Ownership rule (checked by the core's stripe state machine, not by this type): while a member
/// I/O on a buffer is in flight, only that I/O touches the bytes; the core neither reads nor
/// writes a stripe block with I/O pending on it.
public final class IOBufferStorage: @unchecked Sendable {
    public let base: UnsafeMutableRawPointer
    public let capacity: Int

    /// Alignment of every buffer: the page size, enough for O_DIRECT on any Linux device.
    public static let alignment = 4096

    public init(capacity: Int) {
        precondition(capacity >= 0, "negative buffer size")
        self.capacity = capacity
        base = .allocate(byteCount: max(capacity, 1), alignment: IOBufferStorage.alignment)
    }

    deinit { base.deallocate() }
}

/// A contiguous run of bytes inside an `IOBufferStorage`.
public struct IOBuffer: @unchecked Sendable, CustomStringConvertible {
    public let storage: IOBufferStorage
    public let offset: Int
    public let count: Int

    /// A view of `count` bytes at `offset` of `storage`.
    public init(storage: IOBufferStorage, offset: Int, count: Int) {
        precondition(offset >= 0 && count >= 0 && offset + count <= storage.capacity, "buffer view out of range")
        self.storage = storage
        self.offset = offset
        self.count = count
    }

    /// New memory, not initialised: for reads that will fill all of it.
    public init(uninitializedCount count: Int) {
        self.init(storage: IOBufferStorage(capacity: count), offset: 0, count: count)
    }

    public init(zeroedCount count: Int) {
        self.init(uninitializedCount: count)
        baseAddress.initializeMemory(as: UInt8.self, repeating: 0, count: count)
    }

    public init(_ bytes: [UInt8]) {
        self.init(uninitializedCount: bytes.count)
        bytes.withUnsafeBytes { if let b = $0.baseAddress { baseAddress.copyMemory(from: b, byteCount: bytes.count) } }
    }

    public init(copying source: UnsafeRawBufferPointer) {
        self.init(uninitializedCount: source.count)
        if let b = source.baseAddress { baseAddress.copyMemory(from: b, byteCount: source.count) }
    }

    public var baseAddress: UnsafeMutableRawPointer { storage.base + offset }

    /// The bytes `range` of this view, sharing the memory.
    public func slice(_ range: Range<Int>) -> IOBuffer {
        precondition(range.lowerBound >= 0 && range.upperBound <= count, "slice out of range")
        return IOBuffer(storage: storage, offset: offset + range.lowerBound, count: range.count)
    }

    /// A copy of the bytes (for tests and small metadata).
    public var bytes: [UInt8] { Array(UnsafeRawBufferPointer(start: baseAddress, count: count)) }

    public func withUnsafeBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try body(UnsafeRawBufferPointer(start: baseAddress, count: count))
    }

    public func withUnsafeMutableBytes<R>(_ body: (UnsafeMutableRawBufferPointer) throws -> R) rethrows -> R {
        try body(UnsafeMutableRawBufferPointer(start: baseAddress, count: count))
    }

    /// Whether `other` starts exactly where this view ends, in the same memory (two such views
    /// can go to the kernel as one iovec).
    public func isFollowed(by other: IOBuffer) -> Bool {
        storage === other.storage && offset + count == other.offset
    }

    public var description: String { "\(count) bytes" }
}

extension IOBuffer: Equatable {
    /// Equal contents (not identity): what tests and checkers compare.
    public static func == (a: IOBuffer, b: IOBuffer) -> Bool {
        a.count == b.count && (a.count == 0 || memcmpEqual(a.baseAddress, b.baseAddress, a.count))
    }
}
