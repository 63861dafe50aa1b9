import MDFormat
import RaidMath

enum FetchResult {
    /// Member reads were issued; come back when they complete.
    case waiting
    /// Every needed block is up to date (read or rebuilt).
    case ready
    /// Too many blocks of the stripe are unreadable to rebuild what is needed.
    case lost
}

extension RaidCore {
    /// md's handle_stripe: move the stripe's head item(s) on as far as they can go now. Called
    /// only from the ready-queue loop (`runReadyStripes`); anything that makes another stripe
    /// ready queues it there instead of handling it here.
    func runStripe(_ s: Stripe) {
        // The broken md-5.4-like variant: no stripe is handled while a superblock change is
        // pending (md requeued them and spun), which is what closed md's cycle.
        if variant.contains(.deferSuperblockWhileStopPending) && superblocks.changePending {
            if !frozenStripes.contains(where: { $0 === s }) { frozenStripes.append(s) }
            return
        }
        while true {
            if s.pendingIO > 0 { return }
            switch s.phase {
            case .idle:
                guard let head = s.head else {
                    if stripeByUnit[s.unit] === s { releaseStripe(s) }
                    return
                }
                switch head {
                case .read:
                    while let p = s.takeHeadPiece(write: false) { s.readBatch.append(p) }
                    s.phase = .reading
                case .write:
                    while let p = s.takeHeadPiece(write: true) { s.writeBatch.append(p) }
                    s.forgetCoverage()
                    s.phase = .preparingWrite
                    planWrite(s)
                case .sync(let unit):
                    s.popHead()
                    s.syncUnit = unit
                    s.phase = .syncing
                }
            case .reading:
                if isBroken {
                    failBatch(&s.readBatch, error: .io)
                    s.phase = .idle
                    continue
                }
                switch fetch(s, needed: readNeeds(s)) {
                case .waiting: return
                case .lost:
                    failBatch(&s.readBatch, error: .io)
                case .ready:
                    if startRepairs(s) { return }
                    for p in s.readBatch {
                        let source = UnsafeRawPointer(s.block(p.disk) + p.offsetInBlock)
                        (p.op.buffer!.baseAddress + p.offsetInRequest).copyMemory(from: source, byteCount: p.length)
                        finishPieces(p.op, count: 1)
                    }
                    s.readBatch.removeAll(keepingCapacity: true)
                }
                s.phase = .idle
            case .preparingWrite:
                if isBroken {
                    s.delayed = false
                    endPreRead(s)
                    failBatch(&s.writeBatch, error: .io)
                    s.phase = .idle
                    continue
                }
                if delayIfPreReadsAreActive(s) { return }
                switch fetch(s, needed: writeNeeds(s)) {
                case .waiting: return
                case .lost:
                    endPreRead(s)
                    failBatch(&s.writeBatch, error: .io)
                    s.phase = .idle
                case .ready:
                    if startRepairs(s) { return }
                    endPreRead(s)
                    s.phase = .waitingForMetadata
                }
            case .waitingForMetadata:
                if !metadataReady(for: s) {
                    if !s.waitingForMetadata {
                        s.waitingForMetadata = true
                        metadataWaiters.append(s)
                    }
                    return
                }
                s.waitingForMetadata = false
                issueWrites(s)
                s.phase = .writing
            case .writing:
                let failed = isBroken
                for p in s.writeBatch { finishPieces(p.op, count: 1, error: failed ? .io : nil) }
                bitmap?.endWrite(memberSectors: memberSectors(units: s.unit..<s.unit + 1), degraded: degradedCount > 0)
                s.writeBatch.removeAll(keepingCapacity: true)
                s.phase = .idle
            case .syncing:
                guard let unit = s.syncUnit else {
                    s.phase = .idle
                    continue
                }
                if !syncStep(s, unit) { return }
            case .syncWriting:
                finishSyncStep(s)
            case .repairing:
                // The rewrite (and its verifying re-read) finished; carry on with the head work.
                s.phase = s.readBatch.isEmpty ? (s.writeBatch.isEmpty ? (s.syncUnit == nil ? .idle : .syncing) : .preparingWrite) : .reading
            }
        }
    }

    // MARK: - delayed writes (md's STRIPE_DELAYED and STRIPE_PREREAD_ACTIVE)

    /// md's rule for writes that must read first: while other stripes' pre-reads are in flight, a
    /// stripe whose write batch needs reads waits on the delayed list instead of reading, and
    /// the writes that arrive meanwhile join its batch (a sequential stream fills the rest of the
    /// row and the reads are not needed at all). When the last pre-read ends, every delayed
    /// stripe goes at once (`raid5_activate_delayed`, IO_THRESHOLD of 1). Returns true when `s`
    /// now waits on the delayed list.
    func delayIfPreReadsAreActive(_ s: Stripe) -> Bool {
        if s.preReadActive { return false }
        if s.delayed {
            // Activated: take the writes queued meanwhile and plan again.
            s.delayed = false
            var joined = false
            while let p = s.takeHeadPiece(write: true) {
                s.writeBatch.append(p)
                joined = true
            }
            if joined {
                s.forgetCoverage()
                planWrite(s)
            }
        }
        // The roles are read in place from the stripe's `neededRoles` (which `writeNeeds` fills):
        // taking the returned array and asking `contains(where:)` retained and released it.
        _ = writeNeeds(s)
        var needsReads = false
        for i in 0..<s.neededRoles.count where !s.valid[s.neededRoles[i]] {
            needsReads = true
            break
        }
        guard needsReads else { return false }
        if preReadActiveStripes > 0 && !s.delayActivated {
            s.delayed = true
            delayedStripes.append(s)
            return true
        }
        s.delayActivated = false
        s.preReadActive = true
        preReadActiveStripes += 1
        return false
    }

    /// The stripe's pre-reads are over (its blocks are ready, or the batch failed): when it was the
    /// last stripe reading, the delayed ones go.
    func endPreRead(_ s: Stripe) {
        s.delayActivated = false
        guard s.preReadActive else { return }
        s.preReadActive = false
        precondition(preReadActiveStripes > 0, "pre-read-active stripes would go below zero")
        preReadActiveStripes -= 1
        guard preReadActiveStripes == 0 else { return }
        let delayed = delayedStripes
        delayedStripes.removeAll(keepingCapacity: true)
        for d in delayed where d.delayed {
            d.delayActivated = true
            handleStripe(d)
        }
    }

    func failBatch(_ batch: inout [Piece], error: ClientError) {
        for p in batch { finishPieces(p.op, count: 1, error: error) }
        batch.removeAll()
    }

    /// Makes the blocks of `needed` roles up to date: read them from their members, or, when a
    /// member cannot serve its block, read all the others and rebuild it from parity.
    /// `needed`: roles in increasing order, each once.
    func fetch(_ s: Stripe, needed: [Int]) -> FetchResult {
        var unreadable = false
        var issued = false
        for role in needed where !s.valid[role] {
            if s.reading[role] {
                issued = true
            } else if roleReadable(role, unit: s.unit) && !s.readFailed[role] {
                issueStripeRead(s, role: role)
                issued = true
            } else {
                unreadable = true
            }
        }
        if issued { return .waiting }
        if !unreadable { return .ready }
        // Rebuild: every other block must be read first.
        var missing: [Int] = []
        for role in 0..<geometry.raidDisks where !s.valid[role] {
            if roleReadable(role, unit: s.unit) && !s.readFailed[role] {
                if !s.reading[role] { issueStripeRead(s, role: role) }
                issued = true
            } else {
                missing.append(role)
            }
        }
        if issued { return .waiting }
        guard missing.count <= geometry.maxDegraded else { return .lost }
        rebuild(s, missing: missing)
        return .ready
    }

    func issueStripeRead(_ s: Stripe, role: Int) {
        let m = roleMember[role]!
        s.reading[role] = true
        s.ioIssued()
        let purpose: MemberIOPurpose = s.phase == .syncing ? .syncRead : writePurpose(s, role: role)
        issue(.stripeRead(s, role: role, member: m), member: m, offsetBytes: memberOffset(m, unit: s.unit), kind: .read(into: s.buffer(role)), purpose: purpose)
    }

    /// Computes the blocks of `missing` roles from the others (all up to date).
    func rebuild(_ s: Stripe, missing: [Int]) {
        for role in missing { s.zero(role) }
        let parity = RowParity(row: s.row, level: geometry.level, byteCount: unitBytes, zero: zeroPointer)
        // `fetch` never asks for more than the level tolerates, so this cannot throw.
        try! parity.rebuild(missing: missing, { s.block($0) }, scratch: scratch, slotShift: variant.contains(.wrongReconstruction) ? 1 : 0)
        for role in missing { s.valid[role] = true }
        counters.rebuiltBlocks += missing.count
    }

    /// After a failed read was rebuilt, md writes the good data back and reads it again.
    /// Returns true when such repairs were started (the stripe waits for them).
    func startRepairs(_ s: Stripe) -> Bool {
        var started = false
        for role in 0..<geometry.raidDisks where s.needsRewrite[role] {
            s.needsRewrite[role] = false
            guard let m = roleMember[role], members[m].isActive, s.valid[role], !readOnly else { continue }
            s.ioIssued()
            issue(
                .stripeRewrite(s, role: role, member: m), member: m, offsetBytes: memberOffset(m, unit: s.unit),
                kind: .write(from: s.buffer(role), fua: false), purpose: .rewrite)
            started = true
        }
        if started { s.phase = .repairing }
        return started
    }

    // MARK: - writes

    /// Data indices the batch writes (`Stripe.coverageWritten`), and per data index whether it is
    /// overwritten completely (`coverageFull`; entries past the data indices mean nothing):
    /// computed once per batch from sector masks per data index, into the stripe's own arrays.
    /// Nothing is returned and the pieces are read in place by index: handing the arrays out, or
    /// copying each piece (and so retaining its request) in a `for p in` loop, was an eighth of
    /// the reference counting of a 4 KiB write.
    func computeWriteCoverage(_ s: Stripe) {
        if s.coverageKnown { return }
        for dd in 0..<dataDisks { s.sectorMasks[dd] = 0 }
        for i in 0..<s.writeBatch.count {
            let first = s.writeBatch[i].offsetInBlock / 512
            let count = s.writeBatch[i].length / 512
            s.sectorMasks[s.writeBatch[i].dataIndex] |= (count == 64 ? ~0 : ((UInt64(1) << UInt64(count)) - 1)) << UInt64(first)
        }
        let sectorsPerUnit = unitBytes / 512
        let fullMask: UInt64 = sectorsPerUnit == 64 ? ~0 : (UInt64(1) << UInt64(sectorsPerUnit)) - 1
        s.coverageWritten.removeAll(keepingCapacity: true)
        for dd in 0..<dataDisks {
            if s.sectorMasks[dd] != 0 { s.coverageWritten.append(dd) }
            s.coverageFull[dd] = s.sectorMasks[dd] == fullMask
        }
        s.coverageKnown = true
        s.writeNeedsKnown = false
    }

    /// md's handle_stripe_dirtying: read-modify-write or reconstruct-write, whichever reads less
    /// (reconstruct-write forced where parity may be stale), or a full rebuild when degraded.
    func planWrite(_ s: Stripe) {
        computeWriteCoverage(s)
        s.writeNeedsKnown = false
        // Over a range, not an array: `allSatisfy` copies nothing here.
        let everyRoleReadable = (0..<geometry.raidDisks).allSatisfy { roleReadable($0, unit: s.unit) && !s.readFailed[$0] }
        if !everyRoleReadable {
            s.writeMode = .degraded
            return
        }
        // Blocks each way would read: reconstruct-write reads the data blocks not overwritten,
        // read-modify-write the written ones and parity.
        var rcwReads = 0
        for dd in 0..<dataDisks where !s.coverageFull[dd] && !s.valid[s.dataDisk[dd]] { rcwReads += 1 }
        var rmwReads = s.valid[s.pDisk] ? 0 : 1
        if s.qDisk >= 0 && !s.valid[s.qDisk] { rmwReads += 1 }
        for i in 0..<s.coverageWritten.count where !s.valid[s.dataDisk[s.coverageWritten[i]]] { rmwReads += 1 }
        s.writeMode = !parityKnownGood(unit: s.unit) || rcwReads <= rmwReads ? .reconstructWrite : .readModifyWrite
    }

    /// The roles whose blocks the planned write needs up to date, in increasing order (computed
    /// once per plan).
    func writeNeeds(_ s: Stripe) -> [Int] {
        computeWriteCoverage(s)
        if s.writeNeedsKnown { return s.neededRoles }
        let degraded = s.writeMode == .degraded
        for role in 0..<geometry.raidDisks { s.roleFlags[role] = degraded }
        switch s.writeMode {
        case .degraded:
            break
        case .reconstructWrite:
            for dd in 0..<dataDisks where !s.coverageFull[dd] { s.roleFlags[s.dataDisk[dd]] = true }
        case .readModifyWrite:
            for i in 0..<s.coverageWritten.count { s.roleFlags[s.dataDisk[s.coverageWritten[i]]] = true }
            s.roleFlags[s.pDisk] = true
            if s.qDisk >= 0 { s.roleFlags[s.qDisk] = true }
        }
        collectFlaggedRoles(s)
        s.writeNeedsKnown = true
        return s.neededRoles
    }

    /// The roles flagged in `roleFlags`, in increasing order, into the stripe's `neededRoles`.
    func collectFlaggedRoles(_ s: Stripe) {
        s.neededRoles.removeAll(keepingCapacity: true)
        for role in 0..<geometry.raidDisks where s.roleFlags[role] { s.neededRoles.append(role) }
    }

    /// The roles a read batch needs, in increasing order (in the stripe's `neededRoles`: a
    /// stripe has a read batch or a write batch at its head, never both at once).
    func readNeeds(_ s: Stripe) -> [Int] {
        for role in 0..<geometry.raidDisks { s.roleFlags[role] = false }
        for p in s.readBatch { s.roleFlags[p.disk] = true }
        s.writeNeedsKnown = false
        collectFlaggedRoles(s)
        return s.neededRoles
    }

    /// Where parity may be stale (a resync has not passed it, or its bitmap region is dirty
    /// from an unclean stop), writes must recompute it from the data.
    func parityKnownGood(unit: UInt64) -> Bool {
        let sector = unit * unitSectors
        if sector >= sync.recoveryCheckpointSectors { return false }
        if let bitmap, bitmap.needsResync(memberSectors: sector..<(sector + unitSectors)) { return false }
        return true
    }

    /// The superblock says "dirty" on disk and the bitmap bits for this stripe are set.
    func metadataReady(for s: Stripe) -> Bool {
        metadataReady(memberSectors: memberSectors(units: s.unit..<s.unit + 1))
    }

    /// The superblock says "dirty" on disk and the bitmap bits of these member sectors are set.
    func metadataReady(memberSectors: Range<UInt64>) -> Bool {
        if !variant.contains(.writeBeforeDirtySuperblock) && superblocks.changePending { return false }
        if let bitmap, !bitmap.readyToWrite(memberSectors: memberSectors) {
            scheduleBitmapWrite()
            return false
        }
        return true
    }

    /// Called when the superblock or bitmap writes a parked stripe waited for are done.
    func wakeMetadataWaiters() {
        let waiting = metadataWaiters
        metadataWaiters.removeAll()
        for s in waiting where s.waitingForMetadata {
            // It parks itself again if what it waits for is still not on disk.
            s.waitingForMetadata = false
            handleStripe(s)
        }
        wakeMetadataBatchWaiters()
    }

    /// Copies the batch's bytes for data index `dd` into `block` (which holds the old content).
    func applyPieces(_ s: Stripe, dataIndex dd: Int, into block: UnsafeMutableRawPointer) {
        for i in 0..<s.writeBatch.count where s.writeBatch[i].dataIndex == dd {
            let offsetInBlock = s.writeBatch[i].offsetInBlock
            let length = s.writeBatch[i].length
            if let data = s.writeBatch[i].op.data {
                (block + offsetInBlock).copyMemory(from: data.baseAddress + s.writeBatch[i].offsetInRequest, byteCount: length)
            } else {
                (block + offsetInBlock).initializeMemory(as: UInt8.self, repeating: 0, count: length)
            }
        }
    }

    /// Applies the batch to the blocks, recomputes parity, and writes what changed.
    func issueWrites(_ s: Stripe) {
        computeWriteCoverage(s)
        var partial = false
        for i in 0..<s.coverageWritten.count where !s.coverageFull[s.coverageWritten[i]] {
            partial = true
            break
        }
        let skipParity = variant.contains(.skipParityOnPartialWrite) && partial
        switch s.writeMode {
        case .degraded: counters.degradedWrites += 1
        case .reconstructWrite: counters.reconstructWrites += 1
        case .readModifyWrite: counters.readModifyWrites += 1
        }
        if s.writeMode == .readModifyWrite {
            // Per written block: new = old + pieces (in scratch A), delta = old ^ new (scratch B);
            // P ^= delta, Q ^= g^slot · delta, then the block takes its new content.
            let parity = RowParity(row: s.row, level: geometry.level, byteCount: unitBytes, zero: zeroPointer)
            for i in 0..<s.coverageWritten.count {
                let dd = s.coverageWritten[i]
                let disk = s.dataDisk[dd]
                s.scratchA.copyMemory(from: s.block(disk), byteCount: unitBytes)
                applyPieces(s, dataIndex: dd, into: s.scratchA)
                Parity.xor([UnsafeRawPointer(s.block(disk)), UnsafeRawPointer(s.scratchA)], into: s.scratchB, byteCount: unitBytes)
                if !skipParity {
                    parity.applyDataDelta(dataIndex: dd, delta: s.scratchB) { s.block($0) }
                }
                s.block(disk).copyMemory(from: s.scratchA, byteCount: unitBytes)
            }
        } else {
            for i in 0..<s.coverageWritten.count {
                let dd = s.coverageWritten[i]
                let disk = s.dataDisk[dd]
                // Not valid means fully overwritten (the plan read every block written in part):
                // the pieces cover the whole block, so it needs no zeroes first.
                precondition(s.valid[disk] || s.coverageFull[dd], "stripe \(s.slot): partly written block \(disk) was never read")
                applyPieces(s, dataIndex: dd, into: s.block(disk))
                s.valid[disk] = true
            }
            if !skipParity { computeParity(s) }
        }
        if skipParity {
            // The broken variant: parity on disk and in the cache no longer matches the data.
            s.valid[s.pDisk] = false
            if s.qDisk >= 0 { s.valid[s.qDisk] = false }
        }
        // The roles written, in increasing order (flags, not a sorted array: nothing allocated).
        for role in 0..<geometry.raidDisks { s.roleFlags[role] = false }
        for i in 0..<s.coverageWritten.count { s.roleFlags[s.dataDisk[s.coverageWritten[i]]] = true }
        if !skipParity {
            s.roleFlags[s.pDisk] = true
            if s.qDisk >= 0 { s.roleFlags[s.qDisk] = true }
        }
        var fua = false
        for i in 0..<s.writeBatch.count where s.writeBatch[i].op.fua {
            fua = true
            break
        }
        bitmap?.startWrite(memberSectors: memberSectors(units: s.unit..<s.unit + 1))
        for role in 0..<geometry.raidDisks where s.roleFlags[role] && roleWritable(role, unit: s.unit) {
            let m = roleMember[role]!
            s.ioIssued()
            issue(
                .stripeWrite(s, role: role, member: m), member: m, offsetBytes: memberOffset(m, unit: s.unit),
                kind: .write(from: s.buffer(role), fua: fua), purpose: writePurpose(s, role: role))
        }
    }

    /// P (and Q) from the stripe's data blocks, all of which must be up to date.
    func computeParity(_ s: Stripe) {
        RowParity(row: s.row, level: geometry.level, byteCount: unitBytes, zero: zeroPointer).computeParity { s.block($0) }
        s.valid[s.pDisk] = true
        if s.qDisk >= 0 { s.valid[s.qDisk] = true }
    }

    // MARK: - write accounting (md_write_start / md_write_end)

    func beginWrite(_ op: ClientOp) {
        writesPending += 1
        if readAuto {
            readAuto = false
            log(.info, "first write: the array switches from read-auto to read-write")
            metadataBecameWritable()
            checkRecovery()
        }
        markDirtyIfClean()
    }

    func endWrite() {
        precondition(writesPending > 0, "writes_pending would go below zero")
        writesPending -= 1
        armSafeMode()
    }
}
