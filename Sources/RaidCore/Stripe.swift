import MDFormat
import RaidMath

/// A client request as the core tracks it until its one completion.
final class ClientOp {
    let id: RequestID
    let request: ClientRequest
    /// Pieces (stripe-unit parts, or member flushes) not finished yet.
    var remaining = 0
    var failed: ClientError?
    /// Read result, filled piece by piece.
    var buffer: [UInt8] = []
    let isWrite: Bool
    let fua: Bool
    /// For writes: the bytes to write (zeroes for trim/write-zeroes are produced on demand).
    let data: [UInt8]?
    let offsetBytes: UInt64

    init(id: RequestID, request: ClientRequest) {
        self.id = id
        self.request = request
        switch request {
        case .read(let offset, let length):
            isWrite = false
            fua = false
            data = nil
            offsetBytes = offset
            buffer = [UInt8](repeating: 0, count: length)
        case .write(let offset, let bytes, let f):
            isWrite = true
            fua = f
            data = bytes
            offsetBytes = offset
        case .writeZeroes(let offset, _, let f):
            isWrite = true
            fua = f
            data = nil
            offsetBytes = offset
        case .trim(let offset, _):
            isWrite = true
            fua = false
            data = nil
            offsetBytes = offset
        case .flush:
            isWrite = false
            fua = false
            data = nil
            offsetBytes = 0
        }
    }
}

/// The part of a client request that falls in one data block of one stripe unit.
struct Piece {
    let op: ClientOp
    let unit: UInt64
    /// Data index within the stripe row, and the role (disk) holding it.
    let dataIndex: Int
    let disk: Int
    /// Byte range inside the block.
    let offsetInBlock: Int
    let length: Int
    /// Where the piece's bytes sit in the request (read buffer or write data).
    let offsetInRequest: Int
    let isWrite: Bool
}

/// One sync step: the stripe unit the sync engine asks a stripe to handle.
struct SyncUnit {
    let generation: UInt64
    let unit: UInt64
}

enum StripeItem {
    case read(Piece)
    case write(Piece)
    case sync(SyncUnit)

    var unit: UInt64 {
        switch self {
        case .read(let p), .write(let p): return p.unit
        case .sync(let s): return s.unit
        }
    }
}

/// Where a stripe is in handling its head item(s).
enum StripePhase: Equatable {
    case idle
    /// Fetching blocks for a batch of reads.
    case reading
    /// Fetching blocks for a batch of writes (RMW, RCW or reconstruct).
    case preparingWrite
    /// Blocks ready; waiting for the superblock to be marked dirty on disk and bitmap bits set.
    case waitingForMetadata
    /// Member writes in flight.
    case writing
    /// Fetching every block for a sync step.
    case syncing
    /// Sync step's writes in flight.
    case syncWriting
    /// Rewriting a block that failed to read, then reading it back.
    case repairing
}

enum WriteMode: Equatable {
    case readModifyWrite
    case reconstructWrite
    /// Degraded stripe: read every surviving block, rebuild the rest, recompute parity.
    case degraded
}

/// A stripe head: one `stripe_size` block on every member at one member offset. Its blocks live
/// in one allocation (plus two scratch blocks) for the stripe's whole life in the cache.
final class Stripe {
    let slot: Int
    let unitBytes: Int
    let raidDisks: Int
    var unit: UInt64 = 0
    var row: StripeRow!
    /// raidDisks blocks, then two scratch blocks.
    let storage: UnsafeMutableRawPointer
    /// Per role: the block holds the member's current content.
    var valid: [Bool]
    /// Per role: a member read is in flight.
    var reading: [Bool]
    /// Per role: the block could not be read from its member in this stripe's life.
    var readFailed: [Bool]
    /// Per role: after a failed read, the rebuilt block must be written back and re-read.
    var needsRewrite: [Bool]
    var pendingIO = 0
    var queue: [StripeItem] = []
    var queueHead = 0
    var phase: StripePhase = .idle
    var readBatch: [Piece] = []
    var writeBatch: [Piece] = []
    var writeMode: WriteMode = .reconstructWrite
    /// The write batch's coverage, once computed.
    var coverage: (written: [Int], full: [Bool])?
    var syncUnit: SyncUnit?
    var waitingForMetadata = false

    init(slot: Int, raidDisks: Int, unitBytes: Int) {
        self.slot = slot
        self.unitBytes = unitBytes
        self.raidDisks = raidDisks
        storage = .allocate(byteCount: (raidDisks + 2) * unitBytes, alignment: 64)
        valid = [Bool](repeating: false, count: raidDisks)
        reading = [Bool](repeating: false, count: raidDisks)
        readFailed = [Bool](repeating: false, count: raidDisks)
        needsRewrite = [Bool](repeating: false, count: raidDisks)
    }

    deinit { storage.deallocate() }

    func block(_ role: Int) -> UnsafeMutableRawPointer { storage + role * unitBytes }
    var scratchA: UnsafeMutableRawPointer { storage + raidDisks * unitBytes }
    var scratchB: UnsafeMutableRawPointer { storage + (raidDisks + 1) * unitBytes }

    /// A copy of the block, for a member write.
    func bytes(_ role: Int) -> [UInt8] { Array(UnsafeRawBufferPointer(start: block(role), count: unitBytes)) }

    func load(_ role: Int, from bytes: [UInt8]) {
        precondition(bytes.count == unitBytes)
        bytes.withUnsafeBytes { block(role).copyMemory(from: $0.baseAddress!, byteCount: unitBytes) }
        valid[role] = true
    }

    func zero(_ role: Int) {
        block(role).initializeMemory(as: UInt8.self, repeating: 0, count: unitBytes)
    }

    func equals(_ role: Int, _ bytes: [UInt8]) -> Bool {
        bytes.count == unitBytes && bytes.withUnsafeBytes { memcmpEqual($0.baseAddress!, UnsafeRawPointer(block(role)), unitBytes) }
    }

    var isIdle: Bool { phase == .idle && pendingIO == 0 && queueHead >= queue.count }

    func enqueue(_ item: StripeItem) { queue.append(item) }

    var head: StripeItem? { queueHead < queue.count ? queue[queueHead] : nil }

    func popHead() {
        queueHead += 1
        if queueHead == queue.count {
            queue.removeAll(keepingCapacity: true)
            queueHead = 0
        }
    }

    func reset(unit: UInt64, row: StripeRow) {
        precondition(isIdle, "reusing a busy stripe")
        self.unit = unit
        self.row = row
        for i in 0..<raidDisks {
            valid[i] = false
            reading[i] = false
            readFailed[i] = false
            needsRewrite[i] = false
        }
        readBatch.removeAll()
        writeBatch.removeAll()
        syncUnit = nil
        waitingForMetadata = false
    }
}

func memcmpEqual(_ a: UnsafeRawPointer, _ b: UnsafeRawPointer, _ count: Int) -> Bool {
    buffersEqual(a, b, byteCount: count)
}
