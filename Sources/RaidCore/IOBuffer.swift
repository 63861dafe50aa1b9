import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Page-aligned memory for I/O buffers. From `mmap` at 128 KiB and above, given back with
/// `munmap`: aligned blocks of a few hundred KiB carved from glibc's heaps, freed and asked for
/// again, fragment them until the daemon's RSS is several times what it holds (measured: 195 to
/// 299 MiB over four 1 GiB reads by four connections, against 70 MiB with these outside the
/// heap). Smaller ones come from the allocator.
enum IOMemory {
    static let mapThresholdBytes = 128 << 10

    static func allocate(_ byteCount: Int) -> UnsafeMutableRawPointer {
        precondition(byteCount > 0, "an empty I/O buffer")
        if byteCount >= mapThresholdBytes {
            let p = mmap(nil, byteCount, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
            guard let p, p != MAP_FAILED else { fatalError("out of memory: mmap of \(byteCount) bytes failed (errno \(errno))") }
            return p
        }
        return .allocate(byteCount: byteCount, alignment: IOBufferStorage.alignment)
    }

    static func deallocate(_ pointer: UnsafeMutableRawPointer, _ byteCount: Int) {
        if byteCount >= mapThresholdBytes {
            precondition(munmap(pointer, byteCount) == 0, "munmap of an I/O buffer failed")
        } else {
            pointer.deallocate()
        }
    }
}

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
    /// The pool size class the memory came from, or nil when it was allocated outside the pool.
    let sizeClass: IOBufferPool.SizeClass?
    /// Whose memory this is when it is not this storage's own (see `init(borrowing:)`).
    public let owner: (any AnyObject & Sendable)?

    /// Alignment of every buffer this type allocates: the page size, enough for O_DIRECT on any
    /// Linux device (memory borrowed with `init(borrowing:)` has its owner's alignment).
    public static let alignment = 4096

    /// Bytes of I/O buffers alive now, process-wide (what the memory bounds are meant to hold;
    /// the metrics show it beside the pool's idle bytes), and the most ever alive at once.
    public static var liveBytes: Int { live.load(ordering: .relaxed) }
    public static var peakLiveBytes: Int { peak.load(ordering: .relaxed) }
    private static let live = Atomic<Int>(0)
    private static let peak = Atomic<Int>(0)

    private static func count(_ bytes: Int) {
        let now = live.add(bytes, ordering: .relaxed).newValue
        if bytes > 0 { _ = peak.max(now, ordering: .relaxed) }
    }

    /// Memory for `capacity` bytes, not initialised: it may have held another buffer before.
    /// `pooled: false` for memory kept a long time (a stripe's blocks), which gains nothing from
    /// the pool and would waste its rounding up.
    public init(capacity: Int, pooled: Bool = true) {
        precondition(capacity >= 0, "negative buffer size")
        self.capacity = capacity
        owner = nil
        if pooled, let sizeClass = IOBufferPool.SizeClass(fitting: capacity) {
            self.sizeClass = sizeClass
            base = IOBufferPool.shared.take(sizeClass)
        } else {
            self.sizeClass = nil
            base = IOMemory.allocate(max(capacity, 1))
        }
        Self.count(capacity)
    }

    /// `capacity` bytes at `base` that belong to `owner`, which this storage keeps alive and
    /// never frees: a server's reply buffer, so that a read lands where its reply goes out
    /// from. The memory need not be page-aligned (an O_DIRECT member reads through a bounce
    /// buffer then).
    public init(borrowing base: UnsafeMutableRawPointer, capacity: Int, owner: any AnyObject & Sendable) {
        precondition(capacity >= 0, "negative buffer size")
        self.base = base
        self.capacity = capacity
        self.owner = owner
        sizeClass = nil
        Self.count(capacity)
    }

    deinit {
        Self.count(-capacity)
        if owner != nil { return }
        if let sizeClass {
            IOBufferPool.shared.give(base, sizeClass)
        } else {
            IOMemory.deallocate(base, max(capacity, 1))
        }
    }
}

/// Buffers released and kept for the next request of their size: a client's 1 MiB read needs
/// 1 MiB of memory for every request, and memory fresh from the system costs a page fault and a
/// page of zeroes per 4 KiB, several times the cost of the read itself. Sizes are rounded up to
/// a power of two (4 KiB to 32 MiB); what the pool keeps idle is bounded in bytes, and anything
/// beyond goes back to the system. Shared by every thread (the core allocates a read's buffer on
/// its loop; the buffer dies wherever its last holder lets go), behind one mutex.
public final class IOBufferPool: Sendable {
    /// A power of two from 4 KiB (class 0) to 32 MiB.
    struct SizeClass: Equatable {
        let index: Int

        static let smallestShift = 12
        static let largestShift = 25

        /// The smallest class that holds `byteCount` bytes, nil for sizes beyond the largest.
        init?(fitting byteCount: Int) {
            guard byteCount <= 1 << SizeClass.largestShift else { return nil }
            let shift = byteCount <= 1 << SizeClass.smallestShift ? SizeClass.smallestShift : Int.bitWidth - (byteCount - 1).leadingZeroBitCount
            index = shift - SizeClass.smallestShift
        }

        var byteCount: Int { 1 << (index + SizeClass.smallestShift) }
        static let count = largestShift - smallestShift + 1
    }

    struct Idle {
        /// Addresses (as integers: pointers are not Sendable) of idle buffers, per size class.
        var free: [[UInt]] = Array(repeating: [], count: SizeClass.count)
        var bytes = 0
    }

    /// Bytes the pool may keep idle (every size class together).
    public let maxIdleBytes: Int
    private let idle: Mutex<Idle>

    public static let shared = IOBufferPool(maxIdleBytes: 8 << 20)

    init(maxIdleBytes: Int) {
        self.maxIdleBytes = maxIdleBytes
        idle = Mutex(Idle())
    }

    /// Bytes idle in the pool now.
    public var idleBytes: Int { idle.withLock { $0.bytes } }

    func take(_ sizeClass: SizeClass) -> UnsafeMutableRawPointer {
        let reused: UInt? = idle.withLock { idle in
            guard let address = idle.free[sizeClass.index].popLast() else { return nil }
            idle.bytes -= sizeClass.byteCount
            precondition(idle.bytes >= 0, "buffer pool accounting went below zero")
            return address
        }
        if let reused, let pointer = UnsafeMutableRawPointer(bitPattern: reused) { return pointer }
        return IOMemory.allocate(sizeClass.byteCount)
    }

    /// Keeps a released buffer for the next request of its class. When the idle bound is
    /// reached, idle buffers of other classes go first (the largest classes first): the buffer
    /// just released is the one most likely asked for again, and a pool full of another phase's
    /// sizes would otherwise send every new request to the system (with `mmap`, a page fault
    /// and a page of zeroes per 4 KiB).
    func give(_ pointer: UnsafeMutableRawPointer, _ sizeClass: SizeClass) {
        let address = UInt(bitPattern: pointer)
        var evicted: [(UInt, Int)] = []
        let kept = idle.withLock { idle in
            guard sizeClass.byteCount <= maxIdleBytes else { return false }
            var index = SizeClass.count - 1
            while idle.bytes + sizeClass.byteCount > maxIdleBytes && index >= 0 {
                if index != sizeClass.index, let other = idle.free[index].popLast() {
                    let bytes = 1 << (index + SizeClass.smallestShift)
                    idle.bytes -= bytes
                    evicted.append((other, bytes))
                } else {
                    index -= 1
                }
            }
            guard idle.bytes + sizeClass.byteCount <= maxIdleBytes else { return false }
            idle.free[sizeClass.index].append(address)
            idle.bytes += sizeClass.byteCount
            return true
        }
        for (other, bytes) in evicted {
            if let p = UnsafeMutableRawPointer(bitPattern: other) { IOMemory.deallocate(p, bytes) }
        }
        if !kept { IOMemory.deallocate(pointer, sizeClass.byteCount) }
    }
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
