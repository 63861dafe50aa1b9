import MDFormat
import RaidMath

/// A client request as the core tracks it until its one completion.
final class ClientOp {
    let id: RequestID
    let request: ClientRequest
    /// Pieces (stripe-unit parts, or member flushes) not finished yet.
    @exclusivity(unchecked) var remaining = 0
    @exclusivity(unchecked) var failed: ClientError?
    /// Read result, filled piece by piece (member reads land in it directly).
    let buffer: IOBuffer?
    let isWrite: Bool
    let fua: Bool
    /// For writes: the bytes to write (zeroes for trim/write-zeroes are produced on demand).
    let data: IOBuffer?
    /// Bytes counted against `maxBytesInFlight` while the request is admitted.
    let byteCount: Int

    init(id: RequestID, request: ClientRequest) {
        self.id = id
        self.request = request
        byteCount = request.byteCount
        isWrite = request.isWrite
        switch request {
        case .read(_, let length, let into):
            fua = false
            data = nil
            // `validate` refused a destination of any other size.
            precondition(into == nil || into!.count == length, "a read's destination is not its length")
            buffer = into ?? IOBuffer(uninitializedCount: length)
        case .write(_, let bytes, let f):
            fua = f
            data = bytes
            buffer = nil
        case .writeZeroes(_, _, let f):
            fua = f
            data = nil
            buffer = nil
        case .trim, .flush:
            fua = false
            data = nil
            buffer = nil
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

/// Pieces of a read that follow each other on one member, read by one member I/O straight into
/// the client's buffer: kept as the bytes of the request they cover, not as the pieces (only a
/// failed read, retried through the stripes, needs them, and `split` makes them again).
struct DirectReadRun {
    let op: ClientOp
    /// Bytes of the request the run reads.
    let requestRange: Range<Int>
    /// Stripe-unit pieces in it: what it finishes of its request.
    let pieceCount: Int

    /// A run while `routeReads` grows it.
    struct Builder {
        let disk: Int
        let firstUnit: UInt64
        let firstOffsetInBlock: Int
        let startInRequest: Int
        var endInRequest: Int
        var lastUnit: UInt64
        /// The last piece reaches the end of its block (a piece of the next unit may follow).
        var lastEndsAtUnitEnd: Bool
        var pieceCount: Int
    }
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
/// in one allocation (plus two scratch blocks) for the stripe's whole life in the cache; member
/// reads land in them and member writes leave from them, with no copy in between.
final class Stripe {
    let slot: Int
    let unitBytes: Int
    let raidDisks: Int
    @exclusivity(unchecked) var unit: UInt64 = 0
    @exclusivity(unchecked) var row: StripeRow!
    /// The row's placement, copied out of `row` at `reset` into storage the stripe keeps: the hot
    /// paths read these instead of copying `row`, whose two arrays cost a retain and a release
    /// each time it is copied (several times per 4 KiB write).
    /// `dataDisk[dd]` = role of the dd-th data block; `qDisk` is -1 without Q.
    @exclusivity(unchecked) private(set) var dataDisk: [Int]
    @exclusivity(unchecked) private(set) var pDisk = 0
    @exclusivity(unchecked) private(set) var qDisk = -1
    /// raidDisks blocks, then two scratch blocks.
    let storage: IOBufferStorage
    /// Per role: the block holds the member's current content.
    @exclusivity(unchecked) var valid: [Bool]
    /// Per role: a member read is in flight.
    @exclusivity(unchecked) var reading: [Bool]
    /// Per role: the block could not be read from its member in this stripe's life.
    @exclusivity(unchecked) var readFailed: [Bool]
    /// Per role: after a failed read, the rebuilt block must be written back and re-read.
    @exclusivity(unchecked) var needsRewrite: [Bool]
    /// Member I/Os in flight on this stripe's blocks. While it is above zero nothing in the core
    /// reads or writes the blocks (the member I/O owns them; see `IOBuffer`).
    @exclusivity(unchecked) private(set) var pendingIO = 0
    @exclusivity(unchecked) var queue: [StripeItem] = []
    @exclusivity(unchecked) var queueHead = 0
    @exclusivity(unchecked) var phase: StripePhase = .idle
    @exclusivity(unchecked) var readBatch: [Piece] = []
    @exclusivity(unchecked) var writeBatch: [Piece] = []
    @exclusivity(unchecked) var writeMode: WriteMode = .reconstructWrite
    /// The write batch's coverage (`computeWriteCoverage`), valid while `coverageKnown`: data indices
    /// written, and per data index whether it is overwritten whole. Kept for the stripe's life
    /// (at most `raidDisks` entries each) and refilled in place, so that planning a write
    /// allocates nothing: five small arrays made and freed per 4 KiB write were a third of the
    /// core's allocations.
    @exclusivity(unchecked) var coverageWritten: [Int]
    @exclusivity(unchecked) var coverageFull: [Bool]
    @exclusivity(unchecked) var coverageKnown = false
    /// The roles the head batch needs: the planned write's (`writeNeeds`, valid while
    /// `writeNeedsKnown`; cleared with the coverage and by planning again) or a read batch's.
    @exclusivity(unchecked) var neededRoles: [Int]
    @exclusivity(unchecked) var writeNeedsKnown = false
    /// Scratch for the planning functions: per data index a sector mask, per role a flag.
    @exclusivity(unchecked) var sectorMasks: [UInt64]
    @exclusivity(unchecked) var roleFlags: [Bool]

    /// The batch changed: its coverage and what it needs are computed again when next asked.
    func forgetCoverage() {
        coverageKnown = false
        writeNeedsKnown = false
    }
    @exclusivity(unchecked) var syncUnit: SyncUnit?
    @exclusivity(unchecked) var waitingForMetadata = false
    /// On the delayed list: its write batch needs reads while other stripes' are in flight.
    @exclusivity(unchecked) var delayed = false
    /// Taken off the delayed list: it reads now even if other stripes started reading since.
    @exclusivity(unchecked) var delayActivated = false
    /// Its write batch's reads are in flight or about to be (counted in preReadActiveStripes).
    @exclusivity(unchecked) var preReadActive = false
    /// On the core's ready queue (md's handle_list): each stripe is there at most once.
    @exclusivity(unchecked) var isQueuedForHandling = false

    init(slot: Int, raidDisks: Int, unitBytes: Int) {
        self.slot = slot
        self.unitBytes = unitBytes
        self.raidDisks = raidDisks
        storage = IOBufferStorage(capacity: (raidDisks + 2) * unitBytes, pooled: false)
        valid = [Bool](repeating: false, count: raidDisks)
        reading = [Bool](repeating: false, count: raidDisks)
        readFailed = [Bool](repeating: false, count: raidDisks)
        needsRewrite = [Bool](repeating: false, count: raidDisks)
        dataDisk = [Int](repeating: 0, count: raidDisks)
        coverageWritten = []
        coverageWritten.reserveCapacity(raidDisks)
        coverageFull = [Bool](repeating: false, count: raidDisks)
        neededRoles = []
        neededRoles.reserveCapacity(raidDisks)
        sectorMasks = [UInt64](repeating: 0, count: raidDisks)
        roleFlags = [Bool](repeating: false, count: raidDisks)
    }

    func block(_ role: Int) -> UnsafeMutableRawPointer { storage.base + role * unitBytes }
    var scratchA: UnsafeMutableRawPointer { storage.base + raidDisks * unitBytes }
    var scratchB: UnsafeMutableRawPointer { storage.base + (raidDisks + 1) * unitBytes }

    /// The block of `role` as a buffer a member I/O reads into or writes from.
    func buffer(_ role: Int) -> IOBuffer { IOBuffer(storage: storage, offset: role * unitBytes, count: unitBytes) }

    func zero(_ role: Int) {
        block(role).initializeMemory(as: UInt8.self, repeating: 0, count: unitBytes)
    }

    func equals(_ role: Int, _ other: IOBuffer) -> Bool {
        other.count == unitBytes && memcmpEqual(other.baseAddress, UnsafeRawPointer(block(role)), unitBytes)
    }

    /// A member I/O on this stripe's blocks was issued.
    func ioIssued() { pendingIO += 1 }

    /// A member I/O on this stripe's blocks completed (checked before the count goes down).
    func ioCompleted() {
        precondition(pendingIO > 0, "stripe \(slot): completion with no I/O in flight")
        pendingIO -= 1
    }

    var isIdle: Bool { phase == .idle && pendingIO == 0 && queueHead >= queue.count }

    func enqueue(_ item: StripeItem) { queue.append(item) }

    var head: StripeItem? { queueHead < queue.count ? queue[queueHead] : nil }

    /// The head item's piece, moved out of the queue, when the head is a write (`write`) or a
    /// read (not `write`); nil, with the queue as it was, otherwise. Moved rather than copied
    /// into the batch: a copy retains the piece's request, and the queue's own copy is released
    /// later when the queue empties.
    func takeHeadPiece(write: Bool) -> Piece? {
        guard queueHead < queue.count else { return nil }
        // A trivial placeholder holds the slot while the item is out.
        var item = StripeItem.sync(SyncUnit(generation: 0, unit: 0))
        swap(&item, &queue[queueHead])
        switch consume item {
        case .write(let p) where write, .read(let p) where !write:
            popHead()
            return p
        case let other:
            queue[queueHead] = other
            return nil
        }
    }

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
        precondition(row.dataDisk.count <= raidDisks, "a row with more data blocks than roles")
        for dd in 0..<row.dataDisk.count { dataDisk[dd] = row.dataDisk[dd] }
        pDisk = row.pDisk
        qDisk = row.qDisk ?? -1
        for i in 0..<raidDisks {
            valid[i] = false
            reading[i] = false
            readFailed[i] = false
            needsRewrite[i] = false
        }
        // Capacity kept: a batch holds at most the pieces one unit of each member takes.
        readBatch.removeAll(keepingCapacity: true)
        writeBatch.removeAll(keepingCapacity: true)
        forgetCoverage()
        syncUnit = nil
        waitingForMetadata = false
        precondition(!delayed && !preReadActive, "an idle stripe still delayed or pre-reading")
        delayActivated = false
    }
}

func memcmpEqual(_ a: UnsafeRawPointer, _ b: UnsafeRawPointer, _ count: Int) -> Bool {
    buffersEqual(a, b, byteCount: count)
}
