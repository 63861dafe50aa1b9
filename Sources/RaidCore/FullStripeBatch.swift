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
    let op: ClientOp
    let row: StripeRow
    let chunkRow: UInt64
    /// Member stripe units `firstUnit ..< endUnit`, all in chunk row `chunkRow`.
    let firstUnit: UInt64
    let endUnit: UInt64
    /// Where the bytes of data index `dd` at `firstUnit` sit in the request's data.
    let requestOffsets: [Int]
    /// Member writes in flight.
    @exclusivity(unchecked) var pendingIO = 0
    @exclusivity(unchecked) var issued = false
    @exclusivity(unchecked) var waitingForMetadata = false
    /// P then Q, each `unitCount` units, once the batch is issued.
    @exclusivity(unchecked) var parity: IOBufferStorage?

    init(op: ClientOp, row: StripeRow, chunkRow: UInt64, firstUnit: UInt64, endUnit: UInt64, requestOffsets: [Int]) {
        precondition(endUnit > firstUnit, "an empty full-stripe batch")
        self.op = op
        self.row = row
        self.chunkRow = chunkRow
        self.firstUnit = firstUnit
        self.endUnit = endUnit
        self.requestOffsets = requestOffsets
    }

    var unitCount: Int { Int(endUnit - firstUnit) }

    func contains(unit: UInt64) -> Bool { unit >= firstUnit && unit < endUnit }
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
            guard endK > firstK, batchesByChunkRow[rowNumber] == nil else { continue }
            let row = geometry.stripeRow(rowNumber)
            // DDF layouts feed zero blocks at some syndrome slots, sized for one unit only.
            guard row.qDisk == nil || row.syndromeSlotCount == dataDisks else { continue }
            let firstUnit = rowNumber * unitsPerChunk + firstK
            let endUnit = rowNumber * unitsPerChunk + endK
            if !stripeByUnit.isEmpty, (firstUnit..<endUnit).contains(where: { stripeByUnit[$0] != nil }) { continue }
            let offsets = (0..<dataDisks).map { dd in Int(rowStart + UInt64(dd) * chunkBytes + firstK * unit - start) }
            batches.append(FullStripeBatch(op: op, row: row, chunkRow: rowNumber, firstUnit: firstUnit, endUnit: endUnit, requestOffsets: offsets))
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

    /// Parity from the client's data, then one write per member for the whole run.
    func issueFullStripeBatch(_ batch: FullStripeBatch) {
        precondition(!batch.issued, "full-stripe batch issued twice")
        batch.issued = true
        let runBytes = batch.unitCount * unitBytes
        let row = batch.row
        let data = batch.op.data!
        let parityRoles = [row.pDisk] + (row.qDisk.map { [$0] } ?? [])
        let parity = IOBufferStorage(capacity: parityRoles.count * runBytes)
        batch.parity = parity
        // Data index dd's run is at data + requestOffsets[dd]; P at parity, Q after it.
        var blocks = [UnsafeMutableRawPointer?](repeating: nil, count: geometry.raidDisks)
        for (dd, disk) in row.dataDisk.enumerated() { blocks[disk] = UnsafeMutableRawPointer(mutating: data.baseAddress) + batch.requestOffsets[dd] }
        for (i, role) in parityRoles.enumerated() { blocks[role] = parity.base + i * runBytes }
        // The data is only read (the client's buffer is never written through these pointers).
        RowParity(row: row, level: geometry.level, byteCount: runBytes, zero: zeroPointer).computeParity { blocks[$0]! }
        bitmap?.startWrite(memberSectors: memberSectors(units: batch.firstUnit..<batch.endUnit))
        let fua = batch.op.fua
        for role in 0..<geometry.raidDisks where roleWritable(role, unit: batch.firstUnit) {
            let m = roleMember[role]!
            let buffer: IOBuffer
            let purpose: MemberIOPurpose
            if case .data(let dd) = row.content(ofDisk: role) {
                buffer = data.slice(batch.requestOffsets[dd]..<batch.requestOffsets[dd] + runBytes)
                purpose = .data
            } else {
                buffer = IOBuffer(storage: parity, offset: parityRoles.firstIndex(of: role)! * runBytes, count: runBytes)
                purpose = .parity
            }
            batch.pendingIO += 1
            issue(
                .fullStripeWrite(batch, member: m), member: m, offsetBytes: memberOffset(m, unit: batch.firstUnit),
                kind: .write(from: buffer, fua: fua), purpose: purpose)
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
        finishPieces(batch.op, count: batch.unitCount * dataDisks, error: isBroken ? .io : nil)
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
