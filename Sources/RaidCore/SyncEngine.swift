import DequeModule
import MDFormat
import RaidMath

/// The sync engine's state: what runs, how far it got, what waits for it to stop.
struct SyncEngine {
    let totalSectors: UInt64
    /// md `recovery_cp` (resync_offset): member sectors below it are known in sync.
    var recoveryCheckpointSectors: UInt64 = maxSector
    var running: Running?
    var frozen = false
    /// A check or repair asked for and not started yet.
    var requested: SyncKind?
    /// `sync_min` / `sync_max` in member sectors (nil max = "max").
    var syncMinSectors: UInt64 = 0
    var syncMaxSectors: UInt64?
    var mismatchSectors: UInt64 = 0
    var lastAction: SyncKind?
    var generation: UInt64 = 0
    var throttledUntil: Nanoseconds?
    /// Control requests (`idle`, `frozen`) waiting for the running sync to be reaped.
    var stopWaiters: [RequestID] = []
    /// For `sync_speed`: sectors done since `rateWindowStart`.
    var rateWindowStart: Nanoseconds = 0
    var rateWindowSectors: UInt64 = 0
    var lastClientActivity: Nanoseconds?
    /// Syncs started, and reaped, over the core's life (two may never run at once).
    var started = 0
    var reaped = 0

    struct Running {
        let kind: SyncKind
        let generation: UInt64
        let endUnit: UInt64
        var nextUnit: UInt64
        /// Units handed to stripes (or parked for one) and not finished.
        var inFlight: Set<UInt64> = []
        /// Finished units above the contiguous watermark.
        var finishedAhead: Set<UInt64> = []
        /// Every unit below this is finished.
        var watermarkUnit: UInt64
        var interrupted = false
        /// For recover: the member being rebuilt and its slot.
        var target: (member: MemberIndex, role: Int)?
        var lastCheckpointUnit: UInt64
        /// Waiting at `sync_max` for it to move.
        var pausedAtMax = false
        /// Resync driven by bitmap bits (only dirty regions).
        var bitmapGuided = false
    }

    init(totalSectors: UInt64) { self.totalSectors = totalSectors }

    var isRunning: Bool { running != nil }
    var stopPending: Bool { running?.interrupted ?? false }

    /// md_error interrupts the running sync (it restarts as recovery if a spare is there).
    mutating func memberFailed() {
        if running != nil { running!.interrupted = true }
    }
}

extension RaidCore {

    /// md_check_recovery: start what is needed (recovery onto a spare, resync after an unclean
    /// stop, a requested check/repair), unless frozen, read-only, read-auto or broken.
    func checkRecovery() {
        if sync.running != nil {
            pumpSync()
            return
        }
        guard case .running = stopState, !sync.frozen, !readAuto, !readOnly, !isBroken else { return }
        // Recovery: a slot without an in-sync member and a spare (or a partly rebuilt member).
        if let (member, role) = recoveryTarget() {
            startSync(.recover, target: (member, role))
            return
        }
        if degradedCount == 0 {
            if sync.recoveryCheckpointSectors != maxSector || (bitmap?.anyResyncPending ?? false) {
                startSync(.resync, target: nil)
                return
            }
            if let kind = sync.requested {
                sync.requested = nil
                startSync(kind, target: nil)
                return
            }
        }
        sync.requested = nil
    }

    /// The member to rebuild and its slot: one already rebuilding, or a spare for an empty slot.
    func recoveryTarget() -> (MemberIndex, Int)? {
        for role in 0..<geometry.raidDisks {
            if let m = roleMember[role], members[m].isActive, members[m].recoveryOffsetSectors != nil { return (m, role) }
        }
        guard let emptyRole = (0..<geometry.raidDisks).first(where: { roleMember[$0] == nil }),
            let spare = members.first(where: { $0.role == .spare })
        else { return nil }
        members[spare].role = .active(slot: Role(emptyRole))
        members[spare].recoveryOffsetSectors = 0
        roleMember[emptyRole] = spare
        superblocks.devicesChanged = true
        requestSuperblockUpdate()
        log(.notice, "spare member \(spare) (\(members[spare].name)) takes role \(emptyRole): recovery starts")
        return (spare, emptyRole)
    }

    func startSync(_ kind: SyncKind, target: (member: MemberIndex, role: Int)?) {
        precondition(sync.running == nil, "two syncs must never run at once")
        sync.generation += 1
        sync.started += 1
        var startSector: UInt64 = 0
        var bitmapGuided = false
        switch kind {
        case .resync:
            if resyncIsBitmapGuided {
                bitmapGuided = true
            } else {
                startSector = sync.recoveryCheckpointSectors == maxSector ? 0 : sync.recoveryCheckpointSectors
            }
        case .recover:
            startSector = members[target!.member].recoveryOffsetSectors ?? 0
        case .check, .repair:
            startSector = sync.syncMinSectors
            sync.mismatchSectors = 0
        }
        let startUnit = min(startSector / unitSectors, unitCount)
        sync.running = SyncEngine.Running(
            kind: kind, generation: sync.generation, endUnit: unitCount, nextUnit: startUnit, watermarkUnit: startUnit,
            target: target, lastCheckpointUnit: startUnit, bitmapGuided: bitmapGuided)
        if kind == .resync { sync.mismatchSectors = 0 }
        sync.lastAction = kind
        sync.rateWindowStart = now
        sync.rateWindowSectors = 0
        log(.info, "\(kind.rawValue) started at sector \(startUnit * unitSectors) of \(sync.totalSectors)")
        pumpSync()
    }

    /// A resync owed now would visit only the regions whose bitmap bits are set (the array has a
    /// bitmap, some bits say "resync", and no plain resync position overrides them).
    var resyncIsBitmapGuided: Bool {
        guard let bitmap, bitmap.anyResyncPending else { return false }
        return sync.recoveryCheckpointSectors == maxSector || sync.recoveryCheckpointSectors == 0
    }

    /// Whether the metadata vouches for the parity of the stripe at member sector `sector`: no
    /// resync owed now would touch it, so it must already be consistent. What a checker holds
    /// the members' bytes to after a crash.
    public func metadataVouchesForParity(memberSector sector: UInt64) -> Bool {
        if resyncIsBitmapGuided { return !bitmap!.needsResync(memberSector: sector) }
        return sector < sync.recoveryCheckpointSectors
    }

    /// Hands sync units to stripes, within the window and the speed limits. Re-entrant calls
    /// (a unit finishing synchronously) are folded into the outer call's loop.
    func pumpSync() {
        if pumpingSync {
            pumpAgain = true
            return
        }
        pumpingSync = true
        defer { pumpingSync = false }
        repeat {
            pumpAgain = false
            pumpSyncOnce()
        } while pumpAgain
    }

    /// Reads the running sync's fields one by one rather than binding a copy of it: a copy
    /// alive while `inFlight` or `finishedAhead` changes makes Swift copy the whole set (with the
    /// engine's window, 256 entries per unit issued).
    func pumpSyncOnce() {
        guard let interrupted = sync.running?.interrupted else { return }
        if interrupted {
            if sync.running!.inFlight.isEmpty { reapSync() }
            return
        }
        if let until = sync.throttledUntil, now < until { return }
        let window = syncWindow()
        // This run's constants; the loop stops if it ends (a unit may finish it at once) and
        // another begins.
        let generation = sync.running!.generation
        let kind = sync.running!.kind
        let endUnit = sync.running!.endUnit
        let bitmapGuided = sync.running!.bitmapGuided
        while sync.running?.generation == generation, !sync.running!.interrupted, sync.running!.inFlight.count < window,
            sync.running!.nextUnit < endUnit
        {
            let unit = sync.running!.nextUnit
            if let max = sync.syncMaxSectors, kind == .check || kind == .repair, unit * unitSectors >= max {
                sync.running!.pausedAtMax = true
                break
            }
            sync.running!.pausedAtMax = false
            let unitSectorRange = (unit * unitSectors)..<((unit + 1) * unitSectors)
            if bitmapGuided, let bitmap, !bitmap.needsResync(memberSectors: unitSectorRange) {
                // A clean region: skipped whole once everything before it is done, the watermark
                // jumping to the next dirty region (one scan of the bitmap, nothing per unit, so
                // a large clean array costs no more than a small one).
                advanceWatermark(&sync.running!)
                guard sync.running!.inFlight.isEmpty, sync.running!.finishedAhead.isEmpty, sync.running!.watermarkUnit == unit else { break }
                // After the unit's last region: none of its regions is dirty, so the next dirty
                // one lies in a later unit (with regions smaller than a unit, the first region's
                // successor could be in this very unit).
                let target = bitmap.nextResyncChunk(after: bitmap.chunk(ofSector: unitSectorRange.upperBound - 1))
                    .map { min(endUnit, UInt64($0) * bitmap.chunkSectors / unitSectors) } ?? endUnit
                precondition(target > unit, "a bitmap-guided resync must move forward")
                sync.running!.nextUnit = target
                sync.running!.watermarkUnit = target
                continue
            }
            if rateExceeded() {
                let until = now + 10 * nanosPerMilli
                sync.throttledUntil = until
                armTimer(.syncThrottle, at: until)
                break
            }
            sync.running!.nextUnit += 1
            sync.running!.inFlight.insert(unit)
            enqueueForStripe(.sync(SyncUnit(generation: generation, unit: unit)))
        }
        guard sync.running?.generation == generation else { return }
        advanceWatermark(&sync.running!)
        if !sync.running!.interrupted && sync.running!.nextUnit >= endUnit && sync.running!.inFlight.isEmpty && sync.running!.finishedAhead.isEmpty {
            finishSync()
        }
    }

    /// md throttles the sync to `sync_speed_min` while clients use the array, and never lets it
    /// pass `sync_speed_max`. Never more units than the cache has stripes: beyond that they
    /// would park, and a client write arriving then would queue behind them instead of taking
    /// the next stripe a unit gives back.
    func syncWindow() -> Int {
        let busy = sync.lastClientActivity.map { now - $0 < 100 * nanosPerMilli } ?? false
        if busy && currentSyncRateKiBps() >= config.syncSpeedMinKiBps { return 1 }
        return max(1, min(config.syncWindowStripes, stripes.count))
    }

    func currentSyncRateKiBps() -> UInt64 {
        let elapsed = now - sync.rateWindowStart
        guard elapsed > 0 else { return 0 }
        return saturatingMultiply(sync.rateWindowSectors / 2, nanosPerSecond) / elapsed
    }

    /// Would one more unit pass `sync_speed_max` over the rate window? Units in flight count as
    /// done, and the slack is a tenth of a second's worth (at least one unit, at most one window).
    /// Both bounds are by time, not by the window: the rate window restarts every 3 s, and a
    /// whole window (1 MiB in the engine) issued after each restart let a check limited to
    /// 256 KiB/s run at about 600.
    func rateExceeded() -> Bool {
        guard let inFlightUnits = sync.running?.inFlight.count else { return false }
        // Saturating: the rate window is restarted only as units finish, so after a long pause
        // (at `sync_max`, or frozen) the elapsed time times the limit passes 64 bits (at
        // 200,000 KiB/s after about a day; at md's largest limit after 4 s). Past that the
        // allowance is simply unlimited.
        let elapsed = now - sync.rateWindowStart
        let allowedKiB = saturatingMultiply(config.syncSpeedMaxKiBps, max(elapsed, nanosPerMilli)) / nanosPerSecond
        let unitKiB = UInt64(unitBytes / 1024)
        let slackKiB = min(max(unitKiB, config.syncSpeedMaxKiBps / 10), unitKiB * UInt64(max(1, config.syncWindowStripes)))
        let committedKiB = sync.rateWindowSectors / 2 + UInt64(inFlightUnits) * unitKiB
        let (budgetKiB, overflow) = allowedKiB.addingReportingOverflow(slackKiB)
        return !overflow && committedKiB + unitKiB > budgetKiB
    }

    func saturatingMultiply(_ a: UInt64, _ b: UInt64) -> UInt64 {
        let (product, overflow) = a.multipliedReportingOverflow(by: b)
        return overflow ? .max : product
    }

    func advanceWatermark(_ run: inout SyncEngine.Running) {
        while run.finishedAhead.remove(run.watermarkUnit) != nil { run.watermarkUnit += 1 }
    }

    /// A stripe runs one sync unit: read everything, then compare, rewrite parity or rebuild.
    /// Returns true when the stripe can move on at once, false when it waits for I/O.
    func syncStep(_ s: Stripe, _ unit: SyncUnit) -> Bool {
        // Fields, not a copy of the running sync (see `pumpSyncOnce`): `syncUnitDone` below
        // changes its sets.
        guard sync.running?.generation == unit.generation, sync.running?.interrupted == false, let kind = sync.running?.kind else {
            s.syncUnit = nil
            s.phase = .idle
            syncUnitDone(unit, abandoned: true)
            return true
        }
        switch fetch(s, needed: allRoles) {
        case .waiting: return false
        case .lost:
            s.syncUnit = nil
            s.phase = .idle
            syncUnitDone(unit, abandoned: true)
            return true
        case .ready:
            if startRepairs(s) { return false }
        }
        let row = s.row!
        var writes: [Int] = []
        switch kind {
        case .check, .repair, .resync:
            let mismatchBlocks = countMismatches(s)
            if kind != .resync {
                sync.mismatchSectors += UInt64(mismatchBlocks) * (variant.contains(.mismatchCountInSectorsOfOne) ? 1 : 8)
            }
            if kind != .check && mismatchBlocks > 0 {
                // Keep the old parity to write only what changed.
                s.scratchA.copyMemory(from: s.block(row.pDisk), byteCount: unitBytes)
                if let q = row.qDisk { s.scratchB.copyMemory(from: s.block(q), byteCount: unitBytes) }
                computeParity(s)
                if !buffersEqual(s.scratchA, s.block(row.pDisk), byteCount: unitBytes) { writes.append(row.pDisk) }
                if let q = row.qDisk, !buffersEqual(s.scratchB, s.block(q), byteCount: unitBytes) { writes.append(q) }
            }
        case .recover:
            if let target = sync.running?.target { writes.append(target.role) }
        }
        if writes.isEmpty {
            s.syncUnit = nil
            s.phase = .idle
            syncUnitDone(unit, abandoned: false)
            return true
        }
        for role in writes {
            guard let m = roleMember[role], members[m].isActive else { continue }
            s.ioIssued()
            issue(
                .stripeWrite(s, role: role, member: m), member: m, offsetBytes: memberOffset(m, unit: s.unit),
                kind: .write(from: s.buffer(role), fua: false), purpose: .syncWrite)
        }
        s.phase = .syncWriting
        return false
    }

    /// 4 KiB blocks of the stripe whose parity disagrees with the data (md counts 8 sectors each).
    func countMismatches(_ s: Stripe) -> Int {
        let parity = RowParity(row: s.row, level: geometry.level, byteCount: unitBytes, zero: zeroPointer)
        var count = 0
        let block = 4096
        var offset = 0
        while offset < unitBytes {
            if parity.check({ UnsafeRawPointer(s.block($0)) }, offset: offset, length: block, scratch: scratch) != .consistent { count += 1 }
            offset += block
        }
        return count
    }

    func finishSyncStep(_ s: Stripe) {
        guard let unit = s.syncUnit else { s.phase = .idle; return }
        s.syncUnit = nil
        s.phase = .idle
        syncUnitDone(unit, abandoned: false)
    }

    func syncUnitDone(_ unit: SyncUnit, abandoned: Bool) {
        guard sync.running?.generation == unit.generation else { return }
        precondition(sync.running!.inFlight.remove(unit.unit) != nil, "sync unit \(unit.unit) finished but was not in flight")
        if !abandoned {
            sync.running!.finishedAhead.insert(unit.unit)
            sync.rateWindowSectors += unitSectors
            counters.syncUnitsDone += 1
        }
        advanceWatermark(&sync.running!)
        if now - sync.rateWindowStart > 3 * nanosPerSecond {
            sync.rateWindowStart = now
            sync.rateWindowSectors = 0
        }
        checkpointSync()
        pumpSync()
    }

    /// Records progress in the superblocks every 1/16 of the way (md's curr_resync_completed).
    func checkpointSync() {
        guard let run = sync.running, run.kind == .resync || run.kind == .recover else { return }
        let step = max(4, run.endUnit / max(1, config.syncCheckpointsPerPass))
        guard run.watermarkUnit >= run.lastCheckpointUnit + step, run.watermarkUnit < run.endUnit else { return }
        sync.running!.lastCheckpointUnit = run.watermarkUnit
        recordSyncPosition(run, watermarkSectors: run.watermarkUnit * unitSectors)
        requestSuperblockUpdate()
    }

    func recordSyncPosition(_ run: SyncEngine.Running, watermarkSectors: UInt64) {
        switch run.kind {
        case .resync:
            if !run.bitmapGuided { sync.recoveryCheckpointSectors = watermarkSectors }
        case .recover:
            if let target = run.target, members[target.member].isActive { members[target.member].recoveryOffsetSectors = watermarkSectors }
        case .check, .repair:
            break
        }
    }

    func finishSync() {
        guard let run = sync.running else { return }
        switch run.kind {
        case .resync:
            sync.recoveryCheckpointSectors = maxSector
            if let bitmap { for i in 0..<bitmap.bitCount { bitmap.resyncPending[i] = false } }
            requestSuperblockUpdate()
            // Nothing written meanwhile: safe mode can now mark the array clean.
            armSafeMode()
        case .recover:
            if let target = run.target, members[target.member].isActive {
                members[target.member].recoveryOffsetSectors = nil
                superblocks.devicesChanged = true
                bitmap?.arrayDegraded = degradedCount > 0
                if degradedCount == 0, let bitmap { for i in 0..<bitmap.bitCount { bitmap.needed[i] = false } }
                log(.notice, "recovery of role \(target.role) onto member \(target.member) (\(members[target.member].name)) done")
            }
            requestSuperblockUpdate()
        case .check, .repair:
            sync.syncMinSectors = 0
        }
        log(.notice, "\(run.kind.rawValue) done\(run.kind == .check || run.kind == .repair ? ", mismatch_cnt \(sync.mismatchSectors)" : "")")
        sync.running = nil
        sync.reaped += 1
        completeStopWaiters()
        checkRecovery()
    }

    /// The interrupted sync has no unit left in flight: record where it got to, answer the
    /// stop requests, and start whatever is needed next (unless frozen).
    func reapSync() {
        guard let run = sync.running else { return }
        let watermark = run.watermarkUnit * unitSectors
        recordSyncPosition(run, watermarkSectors: watermark)
        if run.kind == .check || run.kind == .repair {
            // md: an interrupted check resumes from here (mdcheck --continue uses sync_min).
            sync.syncMinSectors = watermark
        }
        if run.kind != .check { requestSuperblockUpdate() }
        log(.notice, "\(run.kind.rawValue) interrupted at sector \(watermark)")
        sync.running = nil
        sync.reaped += 1
        completeStopWaiters()
        // Updates held back while the stop was pending (only the broken md-5.4-like variant
        // ever holds any back) go out now.
        if superblocks.updateRequested && superblocks.update == nil && metadataWritable {
            superblocks.updateRequested = false
            startSuperblockUpdate()
        }
        checkRecovery()
    }

    func completeStopWaiters() {
        let waiters = sync.stopWaiters
        sync.stopWaiters.removeAll()
        for w in waiters { out.append(.completeControl(w, .done)) }
    }

    /// `idle` / `frozen` while a sync runs: interrupt it; the answer comes when it is reaped.
    /// Nothing waits on anything here: parked sync units are dropped at once.
    func interruptSync(waiter: RequestID?) {
        guard let run = sync.running else {
            if let waiter { out.append(.completeControl(waiter, .done)) }
            return
        }
        if let waiter { sync.stopWaiters.append(waiter) }
        sync.running!.interrupted = true
        // Sync units parked for a stripe will never be needed. (md 5.4's sync thread could not be
        // pulled out of its wait for a stripe; the broken variant keeps that too.)
        if hasStripeWaiters && !variant.contains(.deferSuperblockWhileStopPending) {
            var kept = Deque<StripeItem>()
            for item in stripeWaiters {
                if case .sync(let u) = item, u.generation == run.generation {
                    precondition(sync.running!.inFlight.remove(u.unit) != nil, "parked sync unit \(u.unit) was not in flight")
                } else {
                    kept.append(item)
                }
            }
            stripeWaiters = kept
        }
        pumpSync()
    }
}
