import MDFormat
import RaidMath

/// The stripe units of one chunk row that one client write overwrites on every data member: md's
/// full-stripe write (`STRIPE_FULL_WRITE`), handled as one batch (`stripe_can_batch`) with its
/// `skip_copy`. Nothing needs reading; parity is computed straight from the client's buffer into
/// one parity buffer, and each member gets one write for the whole run, data members from the
/// client's buffer itself. The run is contiguous on every member (units of one chunk follow each
/// other), so a 512K-chunk row of RAID5 of 4 is four member writes instead of 128 stripes of
/// four.
///
/// While the batch is in flight no stripe can be set up for its units (`stripeFor` says no and
/// the item waits, as for a full cache), so a sync step or another write of those units comes
/// strictly before or after it, as through a stripe.
final class FullStripeBatch {
    let row: StripeRow
    let chunkRow: UInt64
    /// Member stripe units `firstUnit ..< endUnit`, all in chunk row `chunkRow`.
    let firstUnit: UInt64
    let endUnit: UInt64
    /// The client data, ordered by data index then unit: each data index's segments cover
    /// `firstUnit ..< endUnit` once, in order. One request gives one segment per data index; a
    /// gathered row (`RowGather`) gives one per request and data index.
    let segments: [BatchSegment]
    /// Some request asked for FUA: every member write carries it.
    let fua: Bool
    /// Member writes in flight.
    @exclusivity(unchecked) var pendingIO = 0
    @exclusivity(unchecked) var issued = false
    @exclusivity(unchecked) var waitingForMetadata = false
    /// P then Q, each `unitCount` units, once the batch is issued.
    @exclusivity(unchecked) var parity: IOBufferStorage?

    init(row: StripeRow, chunkRow: UInt64, firstUnit: UInt64, endUnit: UInt64, segments: [BatchSegment], dataDisks: Int) {
        precondition(endUnit > firstUnit, "an empty full-stripe batch")
        // Paired with `issueFullStripeBatch`, which takes one pointer per data index for every
        // unit of the run from these.
        var next = [UInt64](repeating: firstUnit, count: dataDisks)
        var lastIndex = 0
        for segment in segments {
            precondition(
                segment.dataIndex >= lastIndex && segment.dataIndex < dataDisks && next[segment.dataIndex] == segment.firstUnit
                    && segment.endUnit > segment.firstUnit,
                "full-stripe batch segments out of order or overlapping")
            lastIndex = segment.dataIndex
            next[segment.dataIndex] = segment.endUnit
        }
        precondition(next.allSatisfy { $0 == endUnit }, "full-stripe batch segments leave a unit uncovered")
        self.row = row
        self.chunkRow = chunkRow
        self.firstUnit = firstUnit
        self.endUnit = endUnit
        self.segments = segments
        fua = segments.contains { $0.op.fua }
    }

    var unitCount: Int { Int(endUnit - firstUnit) }

    func contains(unit: UInt64) -> Bool { unit >= firstUnit && unit < endUnit }
}

/// Units `firstUnit ..< endUnit` of data index `dataIndex` in a full-stripe batch, from `op`'s
/// data at `requestOffset` (the units follow each other in the request as on the member).
struct BatchSegment {
    let op: ClientOp
    let dataIndex: Int
    let firstUnit: UInt64
    let endUnit: UInt64
    let requestOffset: Int

    var unitCount: Int { Int(endUnit - firstUnit) }
}

extension RaidCore {
    /// Stripe units per chunk.
    var unitsPerChunk: UInt64 { geometry.chunkSectors / unitSectors }

    /// The member sectors (relative to the data offset) of stripe units `units`.
    func memberSectors(units: Range<UInt64>) -> Range<UInt64> { units.lowerBound * unitSectors..<units.upperBound * unitSectors }

    /// The runs of units a write of `[start, start + length)` array bytes overwrites on every data
    /// member, one per chunk row, that may be written as batches now: no stripe is active on
    /// them, nothing waits for a stripe, and no other batch is in flight in the row.
    func fullStripeBatches(_ op: ClientOp) -> [FullStripeBatch] {
        guard case .write(let start, let data, _) = op.request, !hasStripeWaiters else { return [] }
        let chunkBytes = UInt64(geometry.chunkBytes)
        let rowBytes = chunkBytes * UInt64(dataDisks)
        let end = start + UInt64(data.count)
        // Data index dd's unit k of row r sits at r·rowBytes + dd·chunkBytes + k·unitBytes: a
        // unit is overwritten on every member when the write starts at or before it in the
        // first chunk and ends at or after it in the last.
        let lastChunkStart = chunkBytes * UInt64(dataDisks - 1)
        guard end - start >= UInt64(dataDisks * unitBytes) else { return [] }
        let unit = UInt64(unitBytes)
        var batches: [FullStripeBatch] = []
        var rowNumber = start / rowBytes
        while rowNumber * rowBytes + lastChunkStart + unit <= end {
            let rowStart = rowNumber * rowBytes
            let firstK = start <= rowStart ? 0 : (start - rowStart + unit - 1) / unit
            let endK = min(unitsPerChunk, (end - rowStart - lastChunkStart) / unit)
            defer { rowNumber += 1 }
            // A gathered row comes first: this write's units there join it, or flush it.
            guard endK > firstK, batchesByChunkRow[rowNumber] == nil, gathersByChunkRow[rowNumber] == nil else { continue }
            let row = geometry.stripeRow(rowNumber)
            // DDF layouts feed zero blocks at some syndrome slots, sized for one unit only.
            guard row.qDisk == nil || row.syndromeSlotCount == dataDisks else { continue }
            let firstUnit = rowNumber * unitsPerChunk + firstK
            let endUnit = rowNumber * unitsPerChunk + endK
            if !stripeByUnit.isEmpty, (firstUnit..<endUnit).contains(where: { stripeByUnit[$0] != nil }) { continue }
            let segments = (0..<dataDisks).map { dd in
                BatchSegment(op: op, dataIndex: dd, firstUnit: firstUnit, endUnit: endUnit, requestOffset: Int(rowStart + UInt64(dd) * chunkBytes + firstK * unit - start))
            }
            batches.append(FullStripeBatch(row: row, chunkRow: rowNumber, firstUnit: firstUnit, endUnit: endUnit, segments: segments, dataDisks: dataDisks))
        }
        return batches
    }

    /// Takes the batch's units: from here on no stripe is set up for them until it finishes. Done
    /// at admission before anything else can ask for a stripe (the first write of a read-auto
    /// array starts a resync, whose first steps ask for stripes at once).
    func claimFullStripeBatch(_ batch: FullStripeBatch) {
        precondition(batchesByChunkRow[batch.chunkRow] == nil, "two full-stripe batches in chunk row \(batch.chunkRow)")
        precondition(!(batch.firstUnit..<batch.endUnit).contains { stripeByUnit[$0] != nil }, "a full-stripe batch over an active stripe")
        batchesByChunkRow[batch.chunkRow] = batch
        counters.fullStripeBatches += 1
    }

    /// Writes a claimed batch once the superblock and bitmap allow.
    func startFullStripeBatch(_ batch: FullStripeBatch) {
        precondition(batchesByChunkRow[batch.chunkRow] === batch, "starting a full-stripe batch that was not claimed")
        if !batchMetadataReady(batch) {
            batch.waitingForMetadata = true
            metadataBatchWaiters.append(batch)
            return
        }
        issueFullStripeBatch(batch)
    }

    func batchMetadataReady(_ batch: FullStripeBatch) -> Bool {
        metadataReady(memberSectors: memberSectors(units: batch.firstUnit..<batch.endUnit))
    }

    /// Parity from the client's data, then one write per data segment and one per parity member
    /// for the whole run.
    func issueFullStripeBatch(_ batch: FullStripeBatch) {
        precondition(!batch.issued, "full-stripe batch issued twice")
        batch.issued = true
        let runBytes = batch.unitCount * unitBytes
        let row = batch.row
        let parityRoles = [row.pDisk] + (row.qDisk.map { [$0] } ?? [])
        let parity = IOBufferStorage(capacity: parityRoles.count * runBytes)
        batch.parity = parity
        // Parity over sub-runs in which every data index reads from one segment: the runs between
        // consecutive segment boundaries. One request makes a single sub-run.
        var cuts = batch.segments.map(\.firstUnit) + [batch.endUnit]
        cuts.sort()
        var segmentOf = [Int](repeating: 0, count: dataDisks)  // index into segments, per data index
        for (i, segment) in batch.segments.enumerated().reversed() { segmentOf[segment.dataIndex] = i }
        var blocks = [UnsafeMutableRawPointer?](repeating: nil, count: geometry.raidDisks)
        var subStart = batch.firstUnit
        for cut in cuts where cut > subStart {
            let offsetInRun = Int(subStart - batch.firstUnit) * unitBytes
            for (dd, disk) in row.dataDisk.enumerated() {
                while batch.segments[segmentOf[dd]].endUnit <= subStart { segmentOf[dd] += 1 }
                let segment = batch.segments[segmentOf[dd]]
                precondition(segment.dataIndex == dd && segment.firstUnit <= subStart && segment.endUnit >= cut, "a parity sub-run crosses a segment")
                // The data is only read (the client's buffer is never written through these pointers).
                blocks[disk] = UnsafeMutableRawPointer(mutating: segment.op.data!.baseAddress)
                    + segment.requestOffset + Int(subStart - segment.firstUnit) * unitBytes
            }
            for (i, role) in parityRoles.enumerated() { blocks[role] = parity.base + i * runBytes + offsetInRun }
            RowParity(row: row, level: geometry.level, byteCount: Int(cut - subStart) * unitBytes, zero: zeroPointer).computeParity { blocks[$0]! }
            subStart = cut
        }
        precondition(subStart == batch.endUnit, "parity left part of a full-stripe batch out")
        bitmap?.startWrite(memberSectors: memberSectors(units: batch.firstUnit..<batch.endUnit))
        for segment in batch.segments {
            let role = row.dataDisk[segment.dataIndex]
            guard roleWritable(role, unit: batch.firstUnit) else { continue }
            let m = roleMember[role]!
            let bytes = segment.unitCount * unitBytes
            batch.pendingIO += 1
            issue(
                .fullStripeWrite(batch, member: m), member: m, offsetBytes: memberOffset(m, unit: segment.firstUnit),
                kind: .write(from: segment.op.data!.slice(segment.requestOffset..<segment.requestOffset + bytes), fua: batch.fua),
                purpose: .data)
        }
        for (i, role) in parityRoles.enumerated() where roleWritable(role, unit: batch.firstUnit) {
            let m = roleMember[role]!
            batch.pendingIO += 1
            issue(
                .fullStripeWrite(batch, member: m), member: m, offsetBytes: memberOffset(m, unit: batch.firstUnit),
                kind: .write(from: IOBuffer(storage: parity, offset: i * runBytes, count: runBytes), fua: batch.fua),
                purpose: .parity)
        }
        if batch.pendingIO == 0 { finishFullStripeBatch(batch) }
    }

    func fullStripeWriteCompleted(_ batch: FullStripeBatch, member m: MemberIndex, failure: MemberIOError?) {
        precondition(batch.pendingIO > 0, "full-stripe batch completion with no write in flight")
        batch.pendingIO -= 1
        if let failure { failMember(m, reason: "write error: \(failure)") }
        if batch.pendingIO == 0 { finishFullStripeBatch(batch) }
    }

    /// Every member write landed (or its member was failed): the pieces are done, and items that
    /// waited for these units can have stripes.
    func finishFullStripeBatch(_ batch: FullStripeBatch) {
        precondition(batchesByChunkRow[batch.chunkRow] === batch, "finishing a full-stripe batch that is not in flight")
        batchesByChunkRow[batch.chunkRow] = nil
        batch.parity = nil
        bitmap?.endWrite(memberSectors: memberSectors(units: batch.firstUnit..<batch.endUnit), degraded: degradedCount > 0)
        let error: ClientError? = isBroken ? .io : nil
        for segment in batch.segments { finishPieces(segment.op, count: segment.unitCount, error: error) }
        serveStripeWaiters()
    }

    /// Batches parked for the superblock or bitmap: issue those whose metadata is now on disk.
    func wakeMetadataBatchWaiters() {
        let waiting = metadataBatchWaiters
        metadataBatchWaiters.removeAll()
        for batch in waiting {
            precondition(batch.waitingForMetadata, "a batch parked for metadata was not waiting")
            if !batchMetadataReady(batch) {
                metadataBatchWaiters.append(batch)
                continue
            }
            batch.waitingForMetadata = false
            issueFullStripeBatch(batch)
        }
    }
}
