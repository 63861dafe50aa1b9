import DequeModule
import MDFormat
import RaidMath

/// What a member I/O was for, so its completion can be routed.
enum IOContext {
    // Stripe I/O names the member too: by the time it completes, the role may belong to another.
    case stripeRead(Stripe, role: Int, member: MemberIndex)
    case stripeWrite(Stripe, role: Int, member: MemberIndex)
    case stripeRewrite(Stripe, role: Int, member: MemberIndex)
    /// The read-back of a rewritten block, into its own buffer (compared with the stripe's).
    case stripeVerify(Stripe, role: Int, member: MemberIndex, readBack: IOBuffer)
    /// A healthy read straight into the client's buffer: one or more pieces that follow each
    /// other on one member (md's chunk-aligned read, `raid5_read_one_chunk`).
    case directRead(DirectReadRun, member: MemberIndex)
    /// One member's write of a full-stripe batch.
    case fullStripeWrite(FullStripeBatch, member: MemberIndex)
    case flush(ClientOp, member: MemberIndex)
    case superblockWrite(member: MemberIndex)
    /// The bitmap image (header and bits), one write per member for each batch of changes.
    case bitmapWrite(member: MemberIndex)
    /// Flushes that must all land before superblocks or bitmap are written (see
    /// `startSuperblockUpdate`).
    case superblockFlush(member: MemberIndex)
    case bitmapFlush(member: MemberIndex)
}

/// Where the array is in md's stop (`do_md_stop`).
enum StopState {
    case running
    /// No new requests; waiting for those in flight, the sync to be reaped and the final
    /// superblock writes. The commands are answered once the array is clean on disk.
    case stopping(waiters: [RequestID], finalUpdateStarted: Bool)
    case stopped
}

/// The array's state machine (design.md §3): it owns every piece of array state, never blocks
/// and does no I/O. Events go in; actions (member I/O, completions, timers) come out. Waiting is
/// data: a parked request, a stripe waiting for the superblock, a control command waiting for a
/// sync to stop. One owner calls `handle`; nothing here is shared across threads.
///
/// The mutable state of the core, its stripes, requests and driver is `@exclusivity(unchecked)`:
/// one owner, no closure that captures it across a call, no `inout` of one property passed while
/// another access to it is open. The dynamic checks cost about 9 % of the core's time
/// (`swraid bench core` under perf: `AccessSet::insert`, begin/endAccess, `__tls_get_addr`), and
/// the static checks still apply.
public final class RaidCore {
    public let geometry: RaidGeometry
    @exclusivity(unchecked) public internal(set) var config: CoreConfig
    let variant: FaultyCoreVariant
    let unitBytes: Int
    let unitSectors: UInt64
    /// Stripe units per member.
    let unitCount: UInt64
    /// Every role, in order (a sync unit needs them all; made once, not per unit).
    let allRoles: [Int]

    @exclusivity(unchecked) var members: MemberTable
    /// `roleMember[slot]` = member holding the slot (in sync or rebuilding), nil if empty.
    @exclusivity(unchecked) var roleMember: [MemberIndex?]
    @exclusivity(unchecked) var now: Nanoseconds = 0
    /// Actions of the event being handled. A deque, so that the driver can take them whole
    /// (`handle(_:now:appendingTo:)` swaps it with the driver's empty queue): copying them over
    /// and emptying this one retained and released every action once more.
    @exclusivity(unchecked) var out = Deque<CoreAction>()

    // Stripe cache.
    @exclusivity(unchecked) var stripes: [Stripe] = []
    @exclusivity(unchecked) var freeStripes: [Stripe] = []
    @exclusivity(unchecked) var stripeByUnit = IDTable<UInt64, Stripe>()
    /// Items waiting for a free stripe, oldest first (a state, never a blocking wait). A deque:
    /// an item taken from it drops its reference at once. (An array read from a head index kept
    /// every item taken until the queue ran empty, and under a steady stream of parked writes it
    /// never did: the pieces kept their requests' data alive, 150 MiB of it on a 12 MiB bound.)
    @exclusivity(unchecked) var stripeWaiters = Deque<StripeItem>()
    /// Stripes with something to do (md's handle_list), drained by one loop at the end of each
    /// event: handling one stripe never calls into handling another, so no path a client can
    /// drive recurses, however many requests are parked.
    @exclusivity(unchecked) var readyStripes = Deque<Stripe>()
    /// Full-stripe batches in flight, by chunk row (at most one per row; see `FullStripeBatch`).
    @exclusivity(unchecked) var batchesByChunkRow: [UInt64: FullStripeBatch] = [:]
    /// Rows of a write stream held for the rest of the row (see `RowGather`): by chunk row, and
    /// oldest first (deadlines follow that order); at most `maxGatheredRows`.
    @exclusivity(unchecked) var gathersByChunkRow: [UInt64: RowGather] = [:]
    @exclusivity(unchecked) var gathers: [RowGather] = []
    /// When the gather timer is due, if armed.
    @exclusivity(unchecked) var gatherTimerDeadline: Nanoseconds?
    /// Pieces held in `gathers`, all rows together (counted in `piecesInFlight` too): when the
    /// two are equal, nothing in flight can complete but a held row (see `armIdleGatherRelease`).
    @exclusivity(unchecked) var heldGatherPieces = 0
    /// When held rows go to the stripes if nothing but they stays in flight and no write joins
    /// them (`writeGatherIdleNanos` after the last sign of idleness).
    @exclusivity(unchecked) var idleGatherReleaseDue: Nanoseconds?
    /// Large writes in a row that arrived with no other request in flight (saturates: it only
    /// ever meets `aloneWritesForQueueDepthOne`).
    @exclusivity(unchecked) var largeWritesArrivingAlone = 0
    /// The last large writes' ranges (a ring), to recognise a stream.
    @exclusivity(unchecked) var recentLargeWrites: [Range<UInt64>] = []
    @exclusivity(unchecked) var nextRecentLargeWrite = 0
    @exclusivity(unchecked) var gatherCredit = RaidCore.maxGatherCredit / 2
    @exclusivity(unchecked) var gatherProbeCountdown = RaidCore.gatherProbeInterval
    /// Rows released at their deadline lately, oldest first, to see a slow stream continue them.
    @exclusivity(unchecked) var rowsReleasedAtDeadline: [UInt64] = []
    /// How many times `writeGatherDelayNanos` a gathered row waits now (1 to
    /// `maxGatherDelayFactor`), and the rows completed at that wait.
    @exclusivity(unchecked) var gatherDelayFactor: UInt64 = 1
    @exclusivity(unchecked) var rowsCompletedAtDelayFactor = 0

    // Requests.
    @exclusivity(unchecked) var nextIOID: UInt64 = 1
    @exclusivity(unchecked) var ioContexts = IDTable<MemberIOID, IOContext>()
    @exclusivity(unchecked) var requestsInFlight = 0
    /// Bytes of the requests in flight (read results held, write data pinned).
    @exclusivity(unchecked) var bytesInFlight = 0
    /// Stripe-unit pieces of admitted requests not finished yet: every parked client item is one
    /// of them, so the parking queue can never outgrow the bound admission checks against.
    @exclusivity(unchecked) var piecesInFlight = 0
    /// Write requests admitted and not completed (md's writes_pending).
    @exclusivity(unchecked) var writesPending = 0

    // Array state.
    @exclusivity(unchecked) var readAuto = true
    @exclusivity(unchecked) var readOnly = false
    /// A `readonly` write to array_state waiting for the superblock work in flight to land
    /// (see `setArrayState`); at most one.
    @exclusivity(unchecked) var readOnlyWaiter: RequestID?
    @exclusivity(unchecked) var stopState = StopState.running
    @exclusivity(unchecked) var superblocks: SuperblockProtocol
    @exclusivity(unchecked) var sync: SyncEngine
    @exclusivity(unchecked) var bitmap: WriteIntentBitmap?
    /// Stripes parked until the superblock is dirty on disk or bitmap bits are written.
    @exclusivity(unchecked) var metadataWaiters: [Stripe] = []
    @exclusivity(unchecked) var metadataBatchWaiters: [FullStripeBatch] = []
    /// Stripes whose write batch's reads are in flight (md's preread_active_stripes), and those
    /// waiting for them to end (md's delayed_list; each stripe at most once, so bounded by the
    /// cache). See `delayIfPreReadsAreActive`.
    @exclusivity(unchecked) var preReadActiveStripes = 0
    @exclusivity(unchecked) var delayedStripes: [Stripe] = []
    /// Stripes the broken variant left unhandled while a superblock change was pending.
    @exclusivity(unchecked) var frozenStripes: [Stripe] = []
    /// When the safe-mode timer is due (a later arm replaces an earlier one).
    @exclusivity(unchecked) var safeModeDeadline: Nanoseconds?
    @exclusivity(unchecked) var scratch = ParityScratch(byteCount: 4096)
    /// pumpSync is running (a nested call asks it to go round once more instead of recursing).
    @exclusivity(unchecked) var pumpingSync = false
    @exclusivity(unchecked) var pumpAgain = false
    /// A block of zeros (DDF layouts feed zero blocks at the P/Q syndrome slots).
    let zeroPointer: UnsafeMutableRawPointer

    // Counters.
    @exclusivity(unchecked) public internal(set) var counters = CoreCounters()

    deinit { zeroPointer.deallocate() }

    public convenience init(assembly: CoreAssembly, config: CoreConfig = CoreConfig(), now: Nanoseconds = 0) throws {
        try self.init(assembly: assembly, config: config, variant: [], now: now)
    }

    /// With a deliberately broken variant (tests and the simulator only).
    package init(assembly: CoreAssembly, config: CoreConfig, variant: FaultyCoreVariant, now: Nanoseconds) throws {
        try config.validate()
        geometry = assembly.geometry
        self.config = config
        self.variant = variant
        unitBytes = min(config.stripeSizeBytes, geometry.chunkBytes)
        unitSectors = UInt64(unitBytes / 512)
        unitCount = geometry.memberDataSectors / unitSectors
        allRoles = Array(0..<geometry.raidDisks)
        self.now = now
        zeroPointer = .allocate(byteCount: unitBytes, alignment: 64)
        zeroPointer.initializeMemory(as: UInt8.self, repeating: 0, count: unitBytes)

        var table = MemberTable()
        for (i, input) in assembly.members.enumerated() {
            let index = MemberIndex(i)
            let role: MemberRole
            if let slot = assembly.roles.firstIndex(where: { $0 == index }) {
                role = .active(slot: Role(slot))
            } else if assembly.spares.contains(index) {
                role = .spare
            } else {
                role = .removed
            }
            var member = Member(name: input.name, template: input.superblock, deviceSizeSectors: input.deviceSizeSectors, role: role)
            if let resume = assembly.recovering.first(where: { $0.member == index }) {
                member.recoveryOffsetSectors = resume.rebuiltSectors / unitSectors * unitSectors
            }
            _ = table.append(member)
        }
        members = table
        roleMember = assembly.roles
        superblocks = SuperblockProtocol(freshest: assembly.freshest)
        sync = SyncEngine(totalSectors: geometry.memberDataSectors)
        if let header = assembly.bitmap, let area = assembly.bitmapArea {
            bitmap = WriteIntentBitmap(
                header: header, area: area, memberDataSectors: geometry.memberDataSectors,
                arrayEvents: assembly.freshest.events)
        }
        // A dirty array needs a resync from where the last one stopped (md's recovery_cp); with
        // a bitmap, only the regions whose bits are set.
        sync.recoveryCheckpointSectors = assembly.freshest.resyncOffsetSectors
        superblocks.inSync = assembly.freshest.isClean
        if !assembly.freshest.isClean, let bitmap { bitmap.markDirtyRegionsForResync() }
        for _ in 0..<config.stripeCacheSize {
            freeStripes.append(Stripe(slot: freeStripes.count, raidDisks: geometry.raidDisks, unitBytes: unitBytes))
        }
        stripes = freeStripes
        freeStripes.reverse()
    }

    // MARK: - driving

    /// Actions due at start: a needed resync or recovery begins once the array is writable.
    public func start(now: Nanoseconds) -> [CoreAction] {
        precondition(now >= self.now, "time went backwards")
        self.now = now
        switch config.startMode {
        case .readWrite: readAuto = false
        case .readAuto: readAuto = true
        case .readOnly: readAuto = false; readOnly = true
        }
        let active = members.filter(\.isActive).count
        log(.info, "assembled \(geometry.level) with \(active) of \(geometry.raidDisks) members, \(superblocks.inSync ? "clean" : "dirty")\(readOnly ? ", read-only" : readAuto ? ", auto-read-only" : "")")
        if let bitmap { armTimer(.bitmapDaemon, at: now + UInt64(bitmap.daemonSleepSeconds) * nanosPerSecond) }
        checkRecovery()
        runReadyStripes()
        return takeActions()
    }

    public func handle(_ event: CoreEvent, now: Nanoseconds) -> [CoreAction] {
        process(event, now: now)
        return takeActions()
    }

    /// As `handle`, appending the actions to the driver's queue: the core's action buffer stays
    /// its own, so an event costs no array of its own.
    @usableFromInline
    func handle(_ event: CoreEvent, now: Nanoseconds, appendingTo actions: inout Deque<CoreAction>) {
        process(event, now: now)
        if actions.isEmpty {
            swap(&actions, &out)
        } else {
            while let action = out.popFirst() { actions.append(action) }
        }
    }

    func process(_ event: CoreEvent, now: Nanoseconds) {
        precondition(now >= self.now, "time went backwards")
        self.now = now
        switch event {
        case .client(let id, let request): admit(id: id, request: request)
        case .control(let id, let command): handleControl(id: id, command: command)
        case .memberIOCompleted(let id, let result): memberIOCompleted(id: id, result: result)
        case .timerFired(let timer): timerFired(timer)
        }
        runReadyStripes()
        progressStop()
    }

    func takeActions() -> [CoreAction] {
        let actions = Array(out)
        out.removeAll(keepingCapacity: true)
        return actions
    }

    func log(_ level: CoreLogLevel, _ text: String) { out.append(.log(level, text)) }

    func armTimer(_ timer: TimerID, at deadline: Nanoseconds) { out.append(.armTimer(timer, atNanos: deadline)) }

    /// Issues a member I/O and remembers what it was for.
    func issue(_ context: IOContext, member: MemberIndex, offsetBytes: UInt64, kind: MemberIOKind, purpose: MemberIOPurpose) {
        let id = MemberIOID(nextIOID)
        nextIOID += 1
        // IDs are never reused, so a context already there would be a bookkeeping bug.
        let replaced = ioContexts.updateValue(context, forKey: id)
        precondition(replaced == nil, "member I/O \(id) issued twice")
        out.append(.memberIO(MemberIORequest(id: id, member: member, offsetBytes: offsetBytes, kind: kind, purpose: purpose)))
    }

    // MARK: - the ready queue (md's handle_list)

    /// Asks for `s` to be handled before this event's actions go out.
    func handleStripe(_ s: Stripe) {
        guard !s.isQueuedForHandling else { return }
        s.isQueuedForHandling = true
        readyStripes.append(s)
    }

    /// One of the stripe's member reads or writes completed: the stripe is handled once the last
    /// of them is in. Before that `runStripe` returns at once (a stripe never moves on with I/O
    /// of its own in flight), and queueing it for nothing cost a trip through the ready queue
    /// per member I/O. The broken md-5.4-like variant is queued on every completion as before:
    /// `runStripe` freezes a stripe there before it looks at the I/O in flight.
    func handleStripeAfterIO(_ s: Stripe) {
        if s.pendingIO > 0 && !variant.contains(.deferSuperblockWhileStopPending) { return }
        handleStripe(s)
    }

    /// Handles ready stripes until none is left. Each turn moves one stripe on as far as it can
    /// go; a stripe that becomes ready again goes to the back. The bound is far above any real
    /// run (every turn finishes a batch, a sync unit or a parked item, or waits) and is there to
    /// turn a livelock bug into a crash with a message rather than a hang.
    func runReadyStripes() {
        let bound = 64 * (stripes.count + config.maxParkedItems + config.maxRequestsInFlight + config.syncWindowStripes)
        var turns = 0
        while let s = readyStripes.popFirst() {
            s.isQueuedForHandling = false
            turns += 1
            precondition(turns <= bound, "stripe handling does not settle: \(turns) turns in one event")
            runStripe(s)
        }
        // Paired with `endPreRead`: delayed stripes wait only while some stripe is pre-reading
        // (whose end sets them going), so none can be left waiting on nothing.
        precondition(preReadActiveStripes > 0 || !delayedStripes.contains { $0.delayed }, "delayed stripes with no pre-read to wait for")
    }

    // MARK: - geometry helpers

    var dataDisks: Int { geometry.dataDisks }

    /// The member in slot `role`, if any.
    func memberInRole(_ role: Int) -> MemberIndex? { roleMember[role] }

    /// Byte offset on `member` of stripe unit `unit`.
    func memberOffset(_ member: MemberIndex, unit: UInt64) -> UInt64 {
        (members[member].dataOffsetSectors + unit * unitSectors) * 512
    }

    /// What a write of `role`'s block in this stripe is for.
    func writePurpose(_ s: Stripe, role: Int) -> MemberIOPurpose {
        if case .data = s.row.content(ofDisk: role) { return .data }
        return .parity
    }

    /// Whether `role`'s member holds valid data for `unit` (in sync there and not failed).
    func roleReadable(_ role: Int, unit: UInt64) -> Bool {
        guard let m = roleMember[role], case .active = members[m].role else { return false }
        if let rebuilt = members[m].recoveryOffsetSectors { return (unit + 1) * unitSectors <= rebuilt }
        return true
    }

    /// Whether writes for `unit` go to `role`'s member: any member in the slot, even one still
    /// being rebuilt (as md writes to recovering devices), so that what recovery already wrote
    /// never goes stale; the blocks written are always complete and correct.
    func roleWritable(_ role: Int, unit: UInt64) -> Bool {
        guard let m = roleMember[role] else { return false }
        return members[m].isActive
    }

    /// Members not in sync in their slot (failed, missing or rebuilding): md's `degraded`.
    /// Counted, not filtered into an array: it is asked for on every stripe handled.
    public var degradedCount: Int {
        var count = 0
        for role in 0..<geometry.raidDisks {
            guard let m = roleMember[role], members[m].isActive else { count += 1; continue }
            if members[m].recoveryOffsetSectors != nil { count += 1 }
        }
        return count
    }

    /// More members lost than the level tolerates.
    public var isBroken: Bool {
        var lost = 0
        for role in 0..<geometry.raidDisks where !(roleMember[role].map { members[$0].isActive } ?? false) { lost += 1 }
        return lost > geometry.maxDegraded
    }

    // MARK: - client requests

    func admit(id: RequestID, request: ClientRequest) {
        counters.clientRequests += 1
        sync.lastClientActivity = now
        if case .running = stopState {} else {
            out.append(.completeClient(id, .failed(.shutdown)))
            return
        }
        if let problem = validate(request) {
            out.append(.completeClient(id, .failed(.invalid(problem))))
            return
        }
        if isBroken {
            out.append(.completeClient(id, .failed(.io)))
            return
        }
        if request.isWrite && readOnly {
            out.append(.completeClient(id, .failed(.readOnly)))
            return
        }
        let op = ClientOp(id: id, request: request)
        let batches = fullStripeBatches(op)
        // A read's pieces are counted, not made: most go to their member in runs (see
        // `routeReads`), and a 1 MiB read is 256 of them.
        let pieces: [Piece]
        let pieceCount: Int
        if case .read(let offsetBytes, let length, _) = request {
            pieces = []
            pieceCount = unitPieceCount(offsetBytes: offsetBytes, length: length)
            assert(pieceCount == split(op).count, "request \(id): counted \(pieceCount) pieces where split makes \(split(op).count)")
        } else {
            pieces = split(op, skipping: batches)
            pieceCount = pieces.count
        }
        let batchPieces = batches.reduce(0) { $0 + $1.unitCount * dataDisks }
        guard requestsInFlight < config.maxRequestsInFlight, bytesInFlight + op.byteCount <= config.maxBytesInFlight,
            piecesInFlight + pieceCount + batchPieces <= config.maxParkedItems
        else {
            counters.rejectedBusy += 1
            out.append(.completeClient(id, .failed(.busy)))
            return
        }
        let gather = writeLooksSequential(op)
        requestsInFlight += 1
        bytesInFlight += op.byteCount
        if case .flush = request {
            startFlush(op)
            return
        }
        for batch in batches { claimFullStripeBatch(batch) }
        if op.isWrite { beginWrite(op) }
        if pieceCount == 0 && batches.isEmpty {
            finishPieces(op, count: 0)
            return
        }
        op.remaining = pieceCount + batchPieces
        piecesInFlight += pieceCount + batchPieces
        if op.isWrite {
            for batch in batches { startFullStripeBatch(batch) }
            routeWrites(pieces, gather: gather, startRow: gather ? gatherStartRow(op) : nil)
            armIdleGatherRelease()
        } else {
            routeReads(op)
        }
        // Paired with admission: only admitted pieces (and the sync's window) ever park.
        precondition(parkedForStripe <= config.maxParkedItems + config.syncWindowStripes, "parking queue over its bound")
    }

    func validate(_ request: ClientRequest) -> String? {
        let size = geometry.arraySectors * 512
        func check(_ offset: UInt64, _ length: Int) -> String? {
            if offset % 512 != 0 || length % 512 != 0 { return "offset \(offset) and length \(length) must be multiples of 512" }
            if length > config.maxRequestBytes { return "length \(length) is over the \(config.maxRequestBytes)-byte limit" }
            if length < 0 || offset > size || UInt64(length) > size - offset {
                return "range \(offset)+\(length) is outside the array (\(size) bytes)"
            }
            return nil
        }
        switch request {
        case .read(let o, let l, let into):
            if let into, into.count != l { return "the read's destination holds \(into.count) bytes, not \(l)" }
            return check(o, l)
        case .trim(let o, let l), .writeZeroes(let o, let l, _): return check(o, l)
        case .write(let o, let d, _): return check(o, d.count)
        case .flush: return nil
        }
    }

    /// Cuts a request into pieces that each fall in one data block of one stripe unit, leaving
    /// out the units of `batches` (in array order, as `fullStripeBatches` gives them). With
    /// `within`, only the pieces of those bytes of the request (not a trim: its pieces depend on
    /// the whole request).
    func split(_ op: ClientOp, skipping batches: [FullStripeBatch] = [], within: Range<Int>? = nil) -> [Piece] {
        let start: UInt64
        let length: Int
        var wholeUnitsOnly = false
        switch op.request {
        case .read(let o, let l, _): start = o; length = l
        case .write(let o, let d, _): start = o; length = d.count
        case .writeZeroes(let o, let l, _): start = o; length = l
        case .trim(let o, let l): start = o; length = l; wholeUnitsOnly = true
        case .flush: return []
        }
        precondition(within == nil || (!wholeUnitsOnly && within!.lowerBound >= 0 && within!.upperBound <= length), "split of a range outside the request")
        let from = within.map { start + UInt64($0.lowerBound) } ?? start
        let end = within.map { start + UInt64($0.upperBound) } ?? start + UInt64(length)
        var pieces: [Piece] = []
        pieces.reserveCapacity(Int(end - from) / unitBytes + 2)
        var pos = from
        var nextBatch = 0
        while pos < end {
            let sector = pos / 512
            let at = geometry.locate(arraySector: sector)
            let unit = at.memberSectorRelative / unitSectors
            let inUnitSector = at.memberSectorRelative % unitSectors
            let offsetInBlock = Int(inUnitSector) * 512 + Int(pos % 512)
            // Batches come in array order, each in one chunk row: skip a batch's units in this
            // chunk (they follow each other in the array too).
            while nextBatch < batches.count && batches[nextBatch].chunkRow < unit / unitsPerChunk {
                nextBatch += 1
            }
            if nextBatch < batches.count, batches[nextBatch].contains(unit: unit) {
                let batch = batches[nextBatch]
                precondition(offsetInBlock == 0 && at.memberSectorRelative / geometry.chunkSectors == batch.chunkRow, "a batch unit only partly written")
                pos += UInt64(Int(batch.endUnit - unit) * unitBytes)
                continue
            }
            let n = min(unitBytes - offsetInBlock, Int(end - pos))
            pieces.append(Piece(
                op: op, unit: unit, dataIndex: at.dataIndex, disk: at.disk, offsetInBlock: offsetInBlock, length: n,
                offsetInRequest: Int(pos - start), isWrite: op.isWrite))
            pos += UInt64(n)
        }
        if wholeUnitsOnly {
            // TRIM zeroes only stripe units it covers completely (a full-stripe write, so parity
            // stays right); the rest is left as it is, which TRIM allows.
            var covered: [UInt64: Int] = [:]
            for p in pieces where p.offsetInBlock == 0 && p.length == unitBytes { covered[p.unit, default: 0] += 1 }
            pieces = pieces.filter { covered[$0.unit] == dataDisks }
        }
        return pieces
    }

    /// Sends a piece to its stripe, or to the queue of items waiting for a free stripe.
    func route(_ piece: Piece) {
        if let stripe = stripeByUnit[piece.unit] {
            stripe.enqueue(piece.isWrite ? .write(piece) : .read(piece))
            handleStripe(stripe)
            return
        }
        enqueueForStripe(piece.isWrite ? .write(piece) : .read(piece))
    }

    /// Stripe-unit pieces in `length` bytes from `offsetBytes` (what `split` would make of a read
    /// of them): array space is whole chunks one after the other, each whole stripe units, so
    /// units begin at every multiple of `unitBytes` in the array too.
    func unitPieceCount(offsetBytes: UInt64, length: Int) -> Int {
        guard length > 0 else { return 0 }
        let unit = UInt64(unitBytes)
        return Int((offsetBytes + UInt64(length) - 1) / unit - offsetBytes / unit + 1)
    }

    /// A read's pieces, in request order: healthy ones bypass the stripe cache, as md's
    /// chunk-aligned reads do, straight into the client's buffer, with the pieces that follow
    /// each other on one member read by one member I/O (usually a chunk's; where a layout puts
    /// a row's last data chunk and the next row's first on one member, as right-asymmetric
    /// RAID5 of 3 does, the run goes on into the next row). The rest go through their stripes.
    ///
    /// Walked a chunk at a time: when every unit of the request's part of a chunk may be read
    /// directly (no stripe active on it, none parked, its member readable there), that part joins
    /// the run whole, as its pieces one by one would have; only a part with a unit that needs its
    /// stripe is cut into pieces. A 1 MiB read was 256 pieces made, looked up and copied into
    /// runs, most of the core's time for it; the member I/Os issued, and their order, are the
    /// same.
    func routeReads(_ op: ClientOp) {
        guard case .read(let start, let length, _) = op.request else { preconditionFailure("routeReads of a request that is not a read") }
        var run: DirectReadRun.Builder?
        func flushRun() {
            guard let r = run else { return }
            run = nil
            let member = roleMember[r.disk]!
            counters.directReads += 1
            issue(
                .directRead(DirectReadRun(op: op, requestRange: r.startInRequest..<r.endInRequest, pieceCount: r.pieceCount), member: member),
                member: member, offsetBytes: memberOffset(member, unit: r.firstUnit) + UInt64(r.firstOffsetInBlock),
                kind: .read(into: op.buffer!.slice(r.startInRequest..<r.endInRequest)), purpose: .data)
        }
        /// Adds `units` direct pieces on `disk` from `unit` (the first `offsetInBlock` into its
        /// block), `bytes` in all, at `offsetInRequest`: to the run when the first follows its
        /// last piece on the member and in the request, else as a new run.
        func addDirect(disk: Int, unit: UInt64, offsetInBlock: Int, offsetInRequest: Int, bytes: Int, units: Int) {
            if let r = run,
                !(r.disk == disk && r.lastUnit + 1 == unit && r.lastEndsAtUnitEnd && offsetInBlock == 0 && r.endInRequest == offsetInRequest)
            {
                flushRun()
            }
            let lastUnit = unit + UInt64(units - 1)
            let endsAtUnitEnd = (offsetInBlock + bytes) % unitBytes == 0
            if run == nil {
                run = DirectReadRun.Builder(
                    disk: disk, firstUnit: unit, firstOffsetInBlock: offsetInBlock, startInRequest: offsetInRequest,
                    endInRequest: offsetInRequest + bytes, lastUnit: lastUnit, lastEndsAtUnitEnd: endsAtUnitEnd, pieceCount: units)
            } else {
                run!.endInRequest += bytes
                run!.lastUnit = lastUnit
                run!.lastEndsAtUnitEnd = endsAtUnitEnd
                run!.pieceCount += units
            }
        }
        let chunkBytes = geometry.chunkBytes
        var pos = start
        let end = start + UInt64(length)
        while pos < end {
            let at = geometry.locate(arraySector: pos / 512)
            let unit = at.memberSectorRelative / unitSectors
            let offsetInBlock = Int(at.memberSectorRelative % unitSectors) * 512 + Int(pos % 512)
            let offsetInChunk = Int(at.memberSectorRelative % geometry.chunkSectors) * 512 + Int(pos % 512)
            let partBytes = min(chunkBytes - offsetInChunk, Int(end - pos))
            let units = (offsetInBlock + partBytes + unitBytes - 1) / unitBytes
            let lastUnit = unit + UInt64(units - 1)
            // Readable at the last unit means readable at every one before it: a member being
            // rebuilt is readable below its rebuilt offset only, a test that gets harder as the
            // unit grows.
            var direct = !hasStripeWaiters && roleReadable(at.disk, unit: lastUnit)
            if direct && !stripeByUnit.isEmpty {
                for u in unit...lastUnit where stripeByUnit[u] != nil {
                    direct = false
                    break
                }
            }
            if direct {
                addDirect(disk: at.disk, unit: unit, offsetInBlock: offsetInBlock, offsetInRequest: Int(pos - start), bytes: partBytes, units: units)
            } else {
                for piece in split(op, within: Int(pos - start)..<Int(pos - start) + partBytes) {
                    guard stripeByUnit[piece.unit] == nil && !hasStripeWaiters && roleReadable(piece.disk, unit: piece.unit) else {
                        flushRun()
                        route(piece)
                        continue
                    }
                    addDirect(disk: piece.disk, unit: piece.unit, offsetInBlock: piece.offsetInBlock, offsetInRequest: piece.offsetInRequest, bytes: piece.length, units: 1)
                }
            }
            pos += UInt64(partBytes)
        }
        flushRun()
    }

    var hasStripeWaiters: Bool { !stripeWaiters.isEmpty }

    /// Gives the item a stripe now, or parks it until one frees (strictly in arrival order).
    func enqueueForStripe(_ item: StripeItem) {
        if !hasStripeWaiters, let stripe = stripeFor(unit: item.unit) {
            stripe.enqueue(item)
            handleStripe(stripe)
        } else {
            stripeWaiters.append(item)
            counters.parkedForStripe += 1
        }
    }

    /// The active stripe for `unit`, or a free one set up for it; nil when the cache is full.
    func stripeFor(unit: UInt64) -> Stripe? {
        if let stripe = stripeByUnit[unit] { return stripe }
        // A full-stripe batch in flight owns its units until its writes land.
        if !batchesByChunkRow.isEmpty, let batch = batchesByChunkRow[unit / unitsPerChunk], batch.contains(unit: unit) { return nil }
        guard let stripe = freeStripes.popLast() else { return nil }
        stripe.reset(unit: unit, row: geometry.stripeRow(unit * unitSectors / geometry.chunkSectors))
        stripeByUnit[unit] = stripe
        return stripe
    }

    public var stripeCacheActive: Int { stripeByUnit.count }

    func releaseStripe(_ stripe: Stripe) {
        precondition(stripe.isIdle, "releasing a busy stripe")
        stripeByUnit[stripe.unit] = nil
        if stripes.count > config.stripeCacheSize {
            stripes.removeAll { $0 === stripe }  // the cache was shrunk while this was busy
        } else {
            freeStripes.append(stripe)
        }
        serveStripeWaiters()
    }

    /// Hands freed stripes to parked items, oldest first.
    func serveStripeWaiters() {
        while hasStripeWaiters {
            let item = stripeWaiters[0]
            guard let stripe = stripeFor(unit: item.unit) else { return }
            stripeWaiters.removeFirst()
            stripe.enqueue(item)
            handleStripe(stripe)
        }
    }

    public var parkedForStripe: Int { stripeWaiters.count }

    // MARK: - completion of client work

    func finishPieces(_ op: ClientOp, count: Int, error: ClientError? = nil) {
        if let error, op.failed == nil { op.failed = error }
        precondition(op.remaining >= count, "request \(op.id): more pieces finished than it had")
        op.remaining -= count
        if case .flush = op.request {} else {
            precondition(piecesInFlight >= count, "pieces in flight would go below zero")
            piecesInFlight -= count
            if count > 0 && !gathers.isEmpty { armIdleGatherRelease() }
        }
        guard op.remaining == 0 else { return }
        precondition(requestsInFlight > 0 && bytesInFlight >= op.byteCount, "in-flight request accounting would go below zero")
        requestsInFlight -= 1
        bytesInFlight -= op.byteCount
        if op.isWrite { endWrite() }
        if let error = op.failed {
            out.append(.completeClient(op.id, .failed(error)))
        } else if let buffer = op.buffer {
            out.append(.completeClient(op.id, .data(buffer)))
        } else {
            out.append(.completeClient(op.id, .done))
        }
    }

    // MARK: - flush

    func startFlush(_ op: ClientOp) {
        let targets = members.filter(\.isActive)
        if variant.contains(.flushWithoutMemberFlush) || targets.isEmpty {
            op.remaining = 1
            finishPieces(op, count: 1)
            return
        }
        op.remaining = targets.count
        for m in targets {
            issue(.flush(op, member: m), member: m, offsetBytes: 0, kind: .flush, purpose: .clientFlush)
        }
    }

    // MARK: - member I/O completions

    func memberIOCompleted(id: MemberIOID, result: MemberIOResult) {
        guard let context = ioContexts.removeValue(forKey: id) else {
            preconditionFailure("completion for unknown member I/O \(id)")
        }
        let failure: MemberIOError? = { if case .failure(let e) = result { return e } else { return nil } }()
        switch consume context {
        case .stripeRead(let stripe, let role, let m):
            stripe.ioCompleted()
            stripe.reading[role] = false
            if failure == nil, roleMember[role] == m {
                stripe.valid[role] = true
            } else if roleMember[role] == m {
                readError(stripe: stripe, role: role, error: failure!)
            } else {
                // The member left the role meanwhile: rebuild the block instead.
                stripe.readFailed[role] = true
            }
            handleStripeAfterIO(stripe)
        case .stripeWrite(let stripe, _, let m):
            stripe.ioCompleted()
            if let failure { failMember(m, reason: "write error: \(failure)") }
            handleStripeAfterIO(stripe)
        case .stripeRewrite(let stripe, let role, let m):
            stripe.ioCompleted()
            if let failure {
                failMember(m, reason: "rewrite after a read error failed: \(failure)")
            } else if roleMember[role] == m, members[m].isActive {
                // md re-reads the rewritten block to be sure the sector was remapped.
                stripe.ioIssued()
                let readBack = IOBuffer(uninitializedCount: unitBytes)
                issue(
                    .stripeVerify(stripe, role: role, member: m, readBack: readBack), member: m,
                    offsetBytes: memberOffset(m, unit: stripe.unit), kind: .read(into: readBack), purpose: .rewrite)
                return
            }
            handleStripe(stripe)
        case .stripeVerify(let stripe, let role, let m, let readBack):
            stripe.ioCompleted()
            if failure == nil, stripe.equals(role, readBack) {
                counters.correctedReadErrors += 1
                // md's counter is 32 bits and wraps; the one read from disk may be anything.
                members[m].template.cntCorrectedRead &+= 1
                log(.notice, "read error corrected (\(unitSectors) sectors at \(memberOffset(m, unit: stripe.unit) / 512) on member \(m), \(members[m].name))")
            } else {
                failMember(m, reason: "block still unreadable after rewrite")
            }
            handleStripe(stripe)
        case .directRead(let run, let member):
            if failure == nil {
                finishPieces(run.op, count: run.pieceCount)
            } else {
                // md retries a failed direct read through the stripe cache (raid5_align_endio),
                // which reads it again and, if that fails too, counts the error, rebuilds the
                // block from the other members and rewrites it.
                _ = member
                let pieces = split(run.op, within: run.requestRange)
                // Paired with `routeReads`, which counted them without making them.
                precondition(pieces.count == run.pieceCount, "direct read of request \(run.op.id): \(pieces.count) pieces where \(run.pieceCount) were counted")
                for piece in pieces { enqueueForStripe(.read(piece)) }
            }
        case .fullStripeWrite(let batch, let member):
            fullStripeWriteCompleted(batch, member: member, failure: failure)
        case .flush(let op, let member):
            if let failure { failMember(member, reason: "flush failed: \(failure)") }
            finishPieces(op, count: 1, error: isBroken ? .io : nil)
        case .superblockFlush(let member):
            superblockFlushCompleted(member: member, failure: failure)
        case .bitmapFlush(let member):
            bitmapFlushCompleted(member: member, failure: failure)
        case .superblockWrite(let member):
            superblockWriteCompleted(member: member, failure: failure)
        case .bitmapWrite(let member):
            bitmapWriteCompleted(member: member, failure: failure)
        }
    }

    /// A member read failed for a stripe: rebuild the block from the others and rewrite it.
    func readError(stripe: Stripe, role: Int, error: MemberIOError) {
        counters.readErrors += 1
        stripe.readFailed[role] = true
        guard let m = roleMember[role] else { return }
        if degradedCount >= geometry.maxDegraded {
            // md's raid5_end_read_request: with no redundancy left the block cannot be rebuilt,
            // so the error is unrecoverable and the member is failed (the array is then broken,
            // and every request fails rather than some reading around the hole).
            failMember(m, reason: "unrecoverable read error: no redundancy left to rebuild the block")
            return
        }
        noteReadError(member: m)
        if members[m].isActive { stripe.needsRewrite[role] = true }
    }

    /// md's `max_read_errors`: past it the member is failed instead of repaired.
    func noteReadError(member m: MemberIndex) {
        members[m].readErrors += 1
        if members[m].readErrors > config.maxReadErrors {
            failMember(m, reason: "more than max_read_errors (\(config.maxReadErrors)) read errors")
        }
    }

    /// md_error: the member is faulty, the array degraded, the superblocks say so.
    func failMember(_ m: MemberIndex, reason: String) {
        guard case .active(let slot) = members[m].role else {
            if members[m].role == .spare {
                members[m].role = .faulty
                log(.warning, "spare member \(m) (\(members[m].name)): faulty (\(reason))")
                superblocks.devicesChanged = true
                requestSuperblockUpdate()
            }
            return
        }
        members[m].role = .faulty
        members[m].recoveryOffsetSectors = nil
        roleMember[slot.rawValue] = nil
        counters.memberFailures += 1
        let left = geometry.raidDisks - degradedCount
        log(
            .error,
            "Disk failure on member \(m) (\(members[m].name)), disabling device (\(reason)). "
                + (isBroken ? "Array broken: too many members lost" : "Operation continuing on \(left) devices."))
        superblocks.devicesChanged = true
        requestSuperblockUpdate()
        sync.memberFailed()
        bitmap?.arrayDegraded = true
        checkRecovery()
        if isBroken { failEverythingQueued() }
    }

    /// Beyond redundancy nothing can be read or written correctly: fail what waits.
    func failEverythingQueued() {
        for stripe in stripes where stripeByUnit[stripe.unit] === stripe { handleStripe(stripe) }
        while let item = stripeWaiters.popFirst() {
            switch item {
            case .read(let p), .write(let p): finishPieces(p.op, count: 1, error: .io)
            case .sync(let u): syncUnitDone(u, abandoned: true)
            }
        }
    }

    // MARK: - timers

    func timerFired(_ timer: TimerID) {
        if case .stopped = stopState { return }
        switch timer {
        case .safeMode: safeModeTimerFired()
        case .syncThrottle: sync.throttledUntil = nil; pumpSync()
        case .bitmapDaemon: bitmapDaemonFired()
        case .writeGather: writeGatherTimerFired()
        }
    }
}

/// Running totals, for tests, the simulator and metrics.
public struct CoreCounters: Sendable, Equatable {
    public var clientRequests = 0
    public var directReads = 0
    public var parkedForStripe = 0
    public var rejectedBusy = 0
    public var readErrors = 0
    public var correctedReadErrors = 0
    public var memberFailures = 0
    public var superblockUpdates = 0
    public var readModifyWrites = 0
    public var reconstructWrites = 0
    public var degradedWrites = 0
    /// Runs of full-stripe units written as one batch (no stripe, no read, one write per member).
    public var fullStripeBatches = 0
    /// Chunk rows a write stream completed while gathered (each also one full-stripe batch).
    public var gatheredRows = 0
    /// Gathered rows that went to the stripes instead (deadline, overlap, stop).
    public var gathersReleased = 0
    /// Stream writes that continued a row released at its deadline (the wait was then lengthened).
    public var gathersLate = 0
    /// Of `gathersReleased`: rows released because nothing else was in flight (a writer at low
    /// queue depth waits for them before it sends the rest of the row).
    public var gathersReleasedIdle = 0
    public var bitmapWrites = 0
    public var rebuiltBlocks = 0
    /// Stripe units a resync, recovery, check or repair has finished (a bitmap-guided resync
    /// counts only the dirty regions it visited).
    public var syncUnitsDone = 0
}
