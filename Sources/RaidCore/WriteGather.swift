import MDFormat

/// The whole stripe units that writes of a sequential stream put in one chunk row, held for a
/// moment so that the writes which follow can complete the row: a completed row is written as
/// one full-stripe batch, with no read and no stripe, instead of a read-modify-write per 4 KiB
/// stripe.
///
/// md gets its full-stripe writes from the writer's plug (a page-cache flush hands it a whole
/// row of bios before any stripe is handled) and from its delayed list. An NBD client's stream
/// comes as separate requests, often smaller than a row (nbdcopy sends 256 KiB or 1 MiB against
/// a 1.5 MiB row of RAID5 of 4 with 512K chunks) and over several connections, so each request
/// alone leaves every stripe it touches partial; the delayed list then holds stripes only
/// while another stripe pre-reads, far shorter than the gap between requests.
///
/// Only the units of a write's last row are held, when the write ends inside it (a forward
/// stream fills the rest next), and only for writes that look like a stream: not FUA, at least
/// `gatherMinimumBytes`, near a recent large write, and while holding pays (at queue depth 1
/// the next write waits for this one, so a hold only adds latency: rows that waited in vain
/// use up the credit, and then only an occasional probe is held). A gathered row goes to the
/// stripes, as any write would, when `writeGatherDelayNanos` passes, when a later write
/// overlaps it, when the row cannot be batched, or when the array stops. Reads never wait for it: a write held
/// here has not completed, so a read that overlaps it may see the old data, as NBD allows for
/// a read concurrent with a write.
final class RowGather {
    let chunkRow: UInt64
    /// When the row goes to the stripes if it is still incomplete.
    let deadline: Nanoseconds
    /// The pieces held, in arrival order (each one whole stripe unit of one data member).
    @exclusivity(unchecked) var pieces: [Piece] = []
    /// Which units are held: `dataIndex * unitsPerChunk + unit-in-chunk`.
    @exclusivity(unchecked) var covered: [Bool]
    @exclusivity(unchecked) var coveredCount = 0

    init(chunkRow: UInt64, deadline: Nanoseconds, slots: Int) {
        self.chunkRow = chunkRow
        self.deadline = deadline
        covered = [Bool](repeating: false, count: slots)
    }
}

extension RaidCore {
    /// Rows gathered at once; further stream writes go to the stripes directly.
    static let maxGatheredRows = 32
    /// Recent large writes remembered to recognise a stream.
    static let recentLargeWriteCount = 8
    /// Gathering goes on while it pays: a completed row adds one to the credit, a row that
    /// waited in vain takes two away; at zero, one stream write in `gatherProbeInterval` is
    /// held to find out whether it pays again.
    static let maxGatherCredit = 8
    static let gatherProbeInterval = 256
    /// A stream slower than `writeGatherDelayNanos` (a busy array whose in-flight bound holds
    /// back the request that would complete the row) gets a longer wait, doubled each time it
    /// continues a row released at its deadline, up to this many times the configured delay;
    /// `rowsToHalveGatherDelay` rows completed in time halve it again.
    static let maxGatherDelayFactor: UInt64 = 8
    static let rowsToHalveGatherDelay = 8
    static let rowsReleasedAtDeadlineKept = 8
    /// Large writes in a row arriving with nothing else in flight that mark a writer at queue
    /// depth 1, whose writes are not held.
    static let aloneWritesForQueueDepthOne = 2

    /// Bytes of data in one chunk row (a stripe row of whole chunks).
    var rowDataBytes: UInt64 { geometry.rowDataSectors * 512 }

    /// The smallest write that may be held: smaller ones are not worth a wait.
    var gatherMinimumBytes: Int { min(64 << 10, geometry.chunkBytes) }

    /// Remembers a large write's range and says whether this write looks like part of a stream
    /// whose other writes are in flight (call before `beginWrite` counts it).
    /// The row in which `op` may start a gather: its last, when it ends inside it.
    func gatherStartRow(_ op: ClientOp) -> UInt64? {
        guard case .write(let start, let data, _) = op.request, data.count > 0 else { return nil }
        let end = start + UInt64(data.count)
        return end % rowDataBytes == 0 ? nil : end / rowDataBytes
    }

    func writeLooksSequential(_ op: ClientOp) -> Bool {
        guard case .write(let start, let data, let fua) = op.request, data.count >= gatherMinimumBytes else { return false }
        let end = start + UInt64(data.count)
        largeWritesArrivingAlone = requestsInFlight == 0 ? min(largeWritesArrivingAlone + 1, Self.aloneWritesForQueueDepthOne) : 0
        // Several connections deliver a stream a few requests out of order: near a recent write
        // counts, not only right after it.
        let window = 4 * rowDataBytes
        let near = recentLargeWrites.contains { r in
            (start >= r.upperBound ? start - r.upperBound : r.upperBound - start) <= window
                || (end >= r.lowerBound ? end - r.lowerBound : r.lowerBound - end) <= window
        }
        if recentLargeWrites.count < Self.recentLargeWriteCount {
            recentLargeWrites.append(start..<end)
        } else {
            recentLargeWrites[nextRecentLargeWrite] = start..<end
        }
        nextRecentLargeWrite = (nextRecentLargeWrite + 1) % Self.recentLargeWriteCount
        guard near, !fua, config.writeGatherDelayNanos > 0 else { return false }
        // Large writes arriving one after another with nothing else in flight: a client at
        // queue depth 1, who sends the rest of the row only when this write is answered.
        // Holding could only make it wait (and coming back for a row released at its deadline
        // doubled the wait: 80 ms per write, 0.8 MB/s for `nbdcopy` from a pipe, which writes
        // 64 KiB at a time, one at a time). One such write alone is a deeper stream's hiccup
        // (its client busy reading its source): holding still pays there.
        guard largeWritesArrivingAlone < Self.aloneWritesForQueueDepthOne else { return false }
        if start % rowDataBytes != 0, let k = rowsReleasedAtDeadline.firstIndex(of: start / rowDataBytes) {
            // The stream came back for a row it was not given time to complete: holding would
            // have paid with a longer wait. Without this, a stream slowed down once (a slow
            // disk at its start) lost its credit for good: its rows went to the stripes, each a
            // read per 4 KiB, which kept the array too busy for any probe to complete in time
            // (nbdcopy writes at 300-400 MB/s against 800 with gathering, measured).
            rowsReleasedAtDeadline.remove(at: k)
            gatherCredit = min(Self.maxGatherCredit, gatherCredit + 2)
            gatherDelayFactor = min(Self.maxGatherDelayFactor, gatherDelayFactor * 2)
            rowsCompletedAtDelayFactor = 0
            counters.gathersLate += 1
            return true
        }
        if gatherCredit > 0 { return true }
        // Holding has not paid lately (a writer at queue depth 1 sends the rest of a row only
        // after this write completes): try again now and then.
        gatherProbeCountdown -= 1
        guard gatherProbeCountdown <= 0 else { return false }
        gatherProbeCountdown = Self.gatherProbeInterval
        return true
    }

    /// A write-kind request's pieces (in array order): whole units of a stream write join their
    /// row's gather, or start one in `startRow` (the write's last row, when the write ends inside
    /// it: the rest of a forward stream comes after); everything else goes to its stripe, after
    /// any gather it overlaps.
    func routeWrites(_ pieces: [Piece], gather: Bool, startRow: UInt64?) {
        var i = 0
        while i < pieces.count {
            // The pieces of one chunk row follow each other.
            let chunkRow = pieces[i].unit / unitsPerChunk
            var end = i + 1
            while end < pieces.count && pieces[end].unit / unitsPerChunk == chunkRow { end += 1 }
            defer { i = end }
            if let held = gathersByChunkRow[chunkRow], pieces[i..<end].contains(where: { held.covered[gatherSlot($0)] }) {
                // A later write of the same units: the held ones go first, through the stripes.
                releaseGather(held)
            }
            guard gather else {
                for piece in pieces[i..<end] { route(piece) }
                continue
            }
            var row = gathersByChunkRow[chunkRow]
            // A row that went to the stripes finishes there: a new gather of its other units
            // could never complete.
            let rowUnits = chunkRow * unitsPerChunk..<(chunkRow + 1) * unitsPerChunk
            // (Looked up only for the row a gather may start in: every other row without one
            // goes to the stripes anyway.)
            let rowHasStripes = row == nil && chunkRow == startRow && !stripeByUnit.isEmpty && rowUnits.contains { stripeByUnit[$0] != nil }
            for piece in pieces[i..<end] {
                guard !rowHasStripes, piece.offsetInBlock == 0 && piece.length == unitBytes && stripeByUnit[piece.unit] == nil else {
                    route(piece)
                    continue
                }
                if row == nil {
                    guard chunkRow == startRow else {
                        route(piece)
                        continue
                    }
                    // DDF layouts feed zero blocks at some syndrome slots, sized for one unit only.
                    let stripeRow = geometry.stripeRow(chunkRow)
                    guard gathers.count < Self.maxGatheredRows, stripeRow.qDisk == nil || stripeRow.syndromeSlotCount == dataDisks else {
                        route(piece)
                        continue
                    }
                    row = startGather(chunkRow: chunkRow)
                }
                let held = row!
                let slot = gatherSlot(piece)
                precondition(!held.covered[slot], "a gathered unit held twice")
                held.covered[slot] = true
                held.coveredCount += 1
                held.pieces.append(piece)
                heldGatherPieces += 1
            }
            if let held = row, held.coveredCount == held.covered.count { completeGather(held) }
        }
    }

    func gatherSlot(_ piece: Piece) -> Int { piece.dataIndex * Int(unitsPerChunk) + Int(piece.unit % unitsPerChunk) }

    func startGather(chunkRow: UInt64) -> RowGather {
        let held = RowGather(chunkRow: chunkRow, deadline: now + config.writeGatherDelayNanos * gatherDelayFactor, slots: dataDisks * Int(unitsPerChunk))
        gathersByChunkRow[chunkRow] = held
        gathers.append(held)
        // Deadlines follow creation order: one timer, for the oldest.
        armGatherTimer()
        return held
    }

    func forgetGather(_ held: RowGather) {
        precondition(gathersByChunkRow[held.chunkRow] === held, "a gather that is not held")
        gathersByChunkRow[held.chunkRow] = nil
        gathers.removeAll { $0 === held }
        precondition(heldGatherPieces >= held.pieces.count, "held gather pieces would go below zero")
        heldGatherPieces -= held.pieces.count
        if gathers.isEmpty { idleGatherReleaseDue = nil }
    }

    /// md releases its delayed stripes when the submitter unplugs; here the sign is that every
    /// piece in flight waits in a gather. Nothing else can then complete, so a client that waits
    /// for these writes before it sends the rest of their rows (a few held writes filling a
    /// small queue; a writer at queue depth 1 is not held at all, see `writeLooksSequential`)
    /// would wait out the deadline for every row, 80 ms once it had doubled. The rows go to the
    /// stripes once that has lasted `writeGatherIdleNanos` with no write joining them, not at
    /// once: the shell may hold requests already sent that complete them (a connection paused
    /// at its byte bound reads them only on its loop's next turn; released at once, a quarter
    /// of a 4-connection `nbdcopy`'s rows went to the stripes).
    func armIdleGatherRelease() {
        guard !gathers.isEmpty, piecesInFlight == heldGatherPieces else { return }
        idleGatherReleaseDue = now + config.writeGatherIdleNanos
        armGatherTimer()
    }

    /// The gather timer at the earlier of the oldest row's deadline and the idle release.
    func armGatherTimer() {
        guard let oldest = gathers.first else { return }
        var due = oldest.deadline
        if let idle = idleGatherReleaseDue, idle < due { due = idle }
        guard gatherTimerDeadline != due else { return }
        gatherTimerDeadline = due
        armTimer(.writeGather, at: due)
    }

    /// Every unit of the row is held: one full-stripe batch for the row when nothing else is
    /// on its units, else the stripes.
    func completeGather(_ held: RowGather) {
        forgetGather(held)
        let firstUnit = held.chunkRow * unitsPerChunk
        let endUnit = firstUnit + unitsPerChunk
        // An older write parked for a stripe of the row must land first: the stripes keep order.
        let free = batchesByChunkRow[held.chunkRow] == nil
            && (stripeByUnit.isEmpty || !(firstUnit..<endUnit).contains { stripeByUnit[$0] != nil })
            && !stripeWaiters.contains { (firstUnit..<endUnit).contains($0.unit) }
        guard free else {
            for piece in held.pieces { route(piece) }
            return
        }
        // Segments: by data index then unit, runs of one request's consecutive units.
        let sorted = held.pieces.sorted { ($0.dataIndex, $0.unit) < ($1.dataIndex, $1.unit) }
        var segments: [BatchSegment] = []
        segments.reserveCapacity(dataDisks * 2)
        var runStart = 0
        for k in 1...sorted.count {
            if k < sorted.count {
                let a = sorted[k - 1], b = sorted[k]
                if a.op === b.op && a.dataIndex == b.dataIndex && a.unit + 1 == b.unit && a.offsetInRequest + unitBytes == b.offsetInRequest {
                    continue
                }
            }
            let first = sorted[runStart], last = sorted[k - 1]
            segments.append(BatchSegment(op: first.op, dataIndex: first.dataIndex, firstUnit: first.unit, endUnit: last.unit + 1, requestOffset: first.offsetInRequest))
            runStart = k
        }
        let batch = FullStripeBatch(
            row: geometry.stripeRow(held.chunkRow), chunkRow: held.chunkRow, firstUnit: firstUnit, endUnit: endUnit,
            segments: segments, dataDisks: dataDisks)
        counters.gatheredRows += 1
        gatherCredit = min(Self.maxGatherCredit, gatherCredit + 1)
        if gatherDelayFactor > 1 {
            rowsCompletedAtDelayFactor += 1
            if rowsCompletedAtDelayFactor >= Self.rowsToHalveGatherDelay {
                gatherDelayFactor /= 2
                rowsCompletedAtDelayFactor = 0
            }
        }
        claimFullStripeBatch(batch)
        startFullStripeBatch(batch)
    }

    /// The held pieces go to their stripes, in arrival order.
    func releaseGather(_ held: RowGather) {
        forgetGather(held)
        counters.gathersReleased += 1
        for piece in held.pieces { route(piece) }
    }

    /// The gather timer: rows held past their deadline go to the stripes, and all of them when
    /// nothing else has been in flight for `writeGatherIdleNanos` (see `armIdleGatherRelease`).
    func writeGatherTimerFired() {
        gatherTimerDeadline = nil
        precondition(heldGatherPieces <= piecesInFlight, "more pieces held than in flight")
        if let idle = idleGatherReleaseDue, idle <= now {
            idleGatherReleaseDue = nil
            if !gathers.isEmpty && piecesInFlight == heldGatherPieces {
                // Holding them longer cannot pay; neither the credit nor the wait changes.
                counters.gathersReleasedIdle += gathers.count
                releaseAllGathers()
                return
            }
        }
        while let oldest = gathers.first, oldest.deadline <= now {
            gatherCredit = max(0, gatherCredit - 2)
            if rowsReleasedAtDeadline.count == Self.rowsReleasedAtDeadlineKept { rowsReleasedAtDeadline.removeFirst() }
            rowsReleasedAtDeadline.append(oldest.chunkRow)
            releaseGather(oldest)
        }
        armGatherTimer()
    }

    /// Everything held goes to the stripes now (the array is stopping).
    func releaseAllGathers() {
        while let oldest = gathers.first { releaseGather(oldest) }
    }
}
