import MDFormat

/// The internal write-intent bitmap at run time (md-format.md §2.4): a region's bit is set and on
/// disk before its first write, and cleared lazily after two idle daemon sweeps. After an unclean
/// stop only regions whose bits are set need a resync.
final class WriteIntentBitmap {
    var header: MDBitmapSuperblock
    let chunkSectors: UInt64
    let bitCount: Int
    /// Bits as they should be on disk (what the next image write carries).
    var bits: [Bool]
    /// Bits known to be on disk.
    var persisted: [Bool]
    /// Writes in flight per region.
    var counters: [Int]
    /// Region swept idle once (cleared on the next sweep).
    var idleOnce: [Bool]
    /// Region must be resynced (set at an unclean assembly; cleared as the resync passes).
    var resyncPending: [Bool]
    /// Region written while degraded: keep its bit until recovery.
    var needed: [Bool]
    var arrayDegraded = false
    var events: UInt64 {
        get { header.events }
        set { header.events = newValue }
    }
    var eventsCleared: UInt64 {
        get { header.eventsCleared }
        set { header.eventsCleared = newValue }
    }
    var daemonSleepSeconds: UInt32 { max(1, header.daemonSleepSeconds) }
    /// An image write is in flight to this many members, carrying `inFlightBits`.
    var writeOutstanding = 0
    /// The image write is still in its flush phase.
    var flushing = false
    var inFlightBits: [Bool] = []
    var inFlightImage: [UInt8] = []
    var writeWanted = false

    init(header: MDBitmapSuperblock, area: [UInt8], memberDataSectors: UInt64, arrayEvents: UInt64) {
        self.header = header
        chunkSectors = max(1, header.chunkSectors)
        bitCount = Int((memberDataSectors + chunkSectors - 1) / chunkSectors)
        var onDisk = (0..<bitCount).map { MDBitmapSuperblock.isBitSet(area, bit: $0) }
        // A bitmap older than the superblocks, or flagged stale, cannot be trusted: all dirty.
        if header.events < arrayEvents || header.state & MDBitmapSuperblock.stateStale != 0 {
            onDisk = [Bool](repeating: true, count: bitCount)
        }
        bits = onDisk
        persisted = onDisk
        counters = [Int](repeating: 0, count: bitCount)
        idleOnce = [Bool](repeating: false, count: bitCount)
        resyncPending = [Bool](repeating: false, count: bitCount)
        needed = [Bool](repeating: false, count: bitCount)
    }

    func chunk(ofSector sector: UInt64) -> Int { Int(sector / chunkSectors) }

    /// After an unclean stop: the regions whose bits are set need their parity resynced.
    func markDirtyRegionsForResync() {
        for i in 0..<bitCount where bits[i] { resyncPending[i] = true }
    }

    func needsResync(memberSector: UInt64) -> Bool { resyncPending[chunk(ofSector: memberSector)] }

    /// Whether any region these sectors touch needs a resync: a stripe unit (4 KiB) spans
    /// several regions when the bitmap's chunk is smaller (md allows 512 bytes).
    func needsResync(memberSectors: Range<UInt64>) -> Bool {
        guard !memberSectors.isEmpty else { return false }
        let last = min(chunk(ofSector: memberSectors.upperBound - 1), bitCount - 1)
        var c = chunk(ofSector: memberSectors.lowerBound)
        while c <= last {
            if resyncPending[c] { return true }
            c += 1
        }
        return false
    }

    var anyResyncPending: Bool { resyncPending.contains(true) }

    /// The first region after `c` that needs a resync.
    func nextResyncChunk(after c: Int) -> Int? {
        var i = c + 1
        while i < bitCount {
            if resyncPending[i] { return i }
            i += 1
        }
        return nil
    }

    /// The regions (bitmap chunks) holding member sectors `sectors`.
    func regions(_ sectors: Range<UInt64>) -> ClosedRange<Int> {
        precondition(!sectors.isEmpty, "an empty range of member sectors")
        return chunk(ofSector: sectors.lowerBound)...chunk(ofSector: sectors.upperBound - 1)
    }

    /// True when the bits of every region holding `sectors` are on disk; otherwise sets the
    /// missing ones for the next image write.
    func readyToWrite(memberSectors sectors: Range<UInt64>) -> Bool {
        var ready = true
        for c in regions(sectors) {
            idleOnce[c] = false
            // A bit being cleared in memory may still be set on disk: wait for it to be set again.
            if persisted[c] && bits[c] { continue }
            ready = false
            if !bits[c] {
                bits[c] = true
                writeWanted = true
            }
        }
        return ready
    }

    /// md's bitmap_startwrite: a write of `sectors` is in flight (paired with `endWrite`).
    func startWrite(memberSectors sectors: Range<UInt64>) {
        for c in regions(sectors) { counters[c] += 1 }
    }

    func endWrite(memberSectors sectors: Range<UInt64>, degraded: Bool) {
        for c in regions(sectors) {
            precondition(counters[c] > 0, "bitmap region \(c): write end with none started")
            counters[c] -= 1
            if degraded { needed[c] = true }
        }
    }

    /// The daemon sweep: regions idle for two sweeps lose their bits.
    func sweep() {
        for c in 0..<bitCount where bits[c] && counters[c] == 0 && !needed[c] && !resyncPending[c] && !arrayDegraded {
            if idleOnce[c] {
                bits[c] = false
                idleOnce[c] = false
                writeWanted = true
            } else {
                idleOnce[c] = true
            }
        }
    }

    /// At a clean stop (md's bitmap flush): every region with no write in flight and nothing that
    /// keeps its bit loses it at once. Returns whether any bit changed.
    func clearIdleBits() -> Bool {
        var changed = false
        for c in 0..<bitCount where bits[c] && counters[c] == 0 && !needed[c] && !resyncPending[c] && !arrayDegraded {
            bits[c] = false
            idleOnce[c] = false
            changed = true
        }
        if changed { writeWanted = true }
        return changed
    }

    /// The on-disk image: header then bits, padded to whole sectors.
    func image() -> [UInt8] {
        var area = header.encode()
        let byteCount = (bitCount + 7) / 8
        var packed = [UInt8](repeating: 0, count: byteCount)
        for i in 0..<bitCount where bits[i] { packed[i / 8] |= 1 << UInt8(i % 8) }
        area += packed
        let padded = (area.count + 511) / 512 * 512
        area += [UInt8](repeating: 0, count: padded - area.count)
        return area
    }
}

extension RaidCore {
    /// Writes the bitmap image to every member if bits changed (or `force`: the events did),
    /// one write at a time so that no older image can land after a newer one.
    func scheduleBitmapWrite(force: Bool = false) {
        guard let bitmap else { return }
        if force { bitmap.writeWanted = true }
        guard bitmap.writeWanted, bitmap.writeOutstanding == 0, metadataWritable else { return }
        let targets = members.filter(\.receivesSuperblocks)
        bitmap.writeWanted = false
        // The image is taken now: a bit cleared in it belongs to a region whose writes have all
        // completed, and the flushes below make them durable before the bit disappears on disk.
        bitmap.inFlightBits = bitmap.bits
        bitmap.inFlightImage = bitmap.image()
        bitmap.flushing = true
        bitmap.writeOutstanding = targets.count
        counters.bitmapWrites += 1
        for m in targets { issue(.bitmapFlush(member: m), member: m, offsetBytes: 0, kind: .flush, purpose: .metadataBarrier) }
        if targets.isEmpty { writeBitmapImage() }
    }

    func bitmapFlushCompleted(member m: MemberIndex, failure: MemberIOError?) {
        if let failure { failMember(m, reason: "flush before the bitmap write failed: \(failure)") }
        guard let bitmap else { return }
        precondition(bitmap.flushing && bitmap.writeOutstanding > 0, "bitmap flush completion with none outstanding")
        bitmap.writeOutstanding -= 1
        if bitmap.writeOutstanding == 0 { writeBitmapImage() }
    }

    func writeBitmapImage() {
        guard let bitmap else { return }
        // Each member takes the bitmap where its own superblock puts it, but only the freshest
        // member's bitmap was read and checked at assembly: a member whose bitmap would start
        // before the device or overlap its data (a crafted `bitmap_offset`) fails, as a member
        // whose bitmap write fails would, instead of trapping the core or overwriting data.
        let imageSectors = UInt64((bitmap.inFlightImage.count + 511) / 512)
        for m in members.filter(\.receivesSuperblocks) where bitmapStartSectors(m, imageSectors: imageSectors) == nil {
            failMember(m, reason: "its superblock puts the bitmap outside the room before or after its data")
        }
        let targets = members.filter(\.receivesSuperblocks)
        bitmap.flushing = false
        bitmap.writeOutstanding = targets.count
        let image = IOBuffer(bitmap.inFlightImage)
        for m in targets {
            guard let start = bitmapStartSectors(m, imageSectors: imageSectors) else { preconditionFailure("member \(m) kept a misplaced bitmap") }
            issue(.bitmapWrite(member: m), member: m, offsetBytes: start * 512, kind: .write(from: image, fua: true), purpose: .bitmap)
        }
        if targets.isEmpty { bitmapImageLanded() }
    }

    /// Where member `m`'s superblock puts the bitmap (super_offset + bitmap_offset, signed), or
    /// nil if there it would start before the device or overlap the member's data.
    func bitmapStartSectors(_ m: MemberIndex, imageSectors: UInt64) -> UInt64? {
        let sb = members[m].template
        let start = Int64(clamping: sb.superOffsetSectors) + Int64(sb.bitmapOffsetSectors)
        guard start >= 0 else { return nil }
        let first = UInt64(start)
        let (end, overflow) = first.addingReportingOverflow(imageSectors)
        let (dataEnd, dataOverflow) = sb.dataOffsetSectors.addingReportingOverflow(sb.dataSizeSectors)
        guard !overflow, !dataOverflow, end <= sb.dataOffsetSectors || first >= dataEnd else { return nil }
        return first
    }

    func bitmapWriteCompleted(member m: MemberIndex, failure: MemberIOError?) {
        if let failure { failMember(m, reason: "bitmap write failed: \(failure)") }
        guard let bitmap else { return }
        precondition(!bitmap.flushing && bitmap.writeOutstanding > 0, "bitmap write completion with none outstanding")
        bitmap.writeOutstanding -= 1
        if bitmap.writeOutstanding == 0 { bitmapImageLanded() }
    }

    func bitmapImageLanded() {
        guard let bitmap else { return }
        // Set bits are now safe to rely on; cleared bits are simply gone.
        bitmap.persisted = bitmap.inFlightBits
        wakeMetadataWaiters()
        scheduleBitmapWrite()
    }

    func bitmapDaemonFired() {
        guard let bitmap else { return }
        bitmap.sweep()
        scheduleBitmapWrite()
        armTimer(.bitmapDaemon, at: now + UInt64(bitmap.daemonSleepSeconds) * nanosPerSecond)
    }
}
