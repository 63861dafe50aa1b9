import MDFormat

/// md's in-memory view of the clean/dirty protocol and superblock updates.
struct SuperblockProtocol {
    /// md `in_sync`: no write may be in flight; on disk this is resync_offset = MaxSector.
    var inSync: Bool = true
    /// md `MD_SB_CHANGE_PENDING`: the array went dirty in memory and that is not on disk yet;
    /// data writes wait for it (`write-pending`).
    var changePending = false
    /// md `safemode == 1`: the safe-mode timer fired and the array is about to be marked clean.
    var safeModeFired = false
    var events: UInt64
    /// The update time the superblocks last written carry (nil until this run writes one): what
    /// mdadm --detail shows as Update Time.
    var utimeSeconds: UInt64?
    /// md `can_decrease_events`: the last update was a pure clean→dirty one.
    var canDecreaseEvents = false
    /// Roles or member states changed since the last update (not a pure clean/dirty change).
    var devicesChanged = false
    var update: InFlightUpdate?
    var updateRequested = false
    /// Control commands waiting for the next update to complete (e.g. `echo active`).
    var waiters: [RequestID] = []
    /// Control commands waiting for some update, queued or in flight.
    var waiterCount: Int { waiters.count + (update?.waiters.count ?? 0) }
    /// Roles and the clean flag as on disk after the last completed update.
    var persistedClean: Bool

    struct InFlightUpdate {
        /// Flushes (first phase) or superblock writes (second phase) not completed yet.
        var outstanding: Int
        var flushing = true
        /// The update writes "dirty": when it lands, waiting data writes may go.
        var clearsPending: Bool
        var clean: Bool
        var waiters: [RequestID]
    }

    init(freshest: MDSuperblock1) {
        events = freshest.events
        inSync = freshest.isClean
        persistedClean = freshest.isClean
    }
}

extension RaidCore {
    /// md_write_start: the first write after `clean` marks the array dirty, and data writes wait
    /// until that is on disk.
    func markDirtyIfClean() {
        superblocks.safeModeFired = false
        guard superblocks.inSync else { return }
        superblocks.inSync = false
        superblocks.changePending = true
        requestSuperblockUpdate()
    }

    /// md_write_end: every finished write pushes the safe-mode deadline out.
    func armSafeMode() {
        guard config.safeModeDelayNanos > 0 else { return }
        armTimer(.safeMode, at: now + config.safeModeDelayNanos)
        safeModeDeadline = now + config.safeModeDelayNanos
    }

    func safeModeTimerFired() {
        guard let deadline = safeModeDeadline, now >= deadline else { return }
        safeModeDeadline = nil
        guard !superblocks.inSync, !readOnly else { return }
        superblocks.safeModeFired = true
        trySetInSync()
    }

    /// md set_in_sync: clean again once no writes are in flight and no resync is owed (md's
    /// md_check_recovery requires recovery_cp == MaxSector for this).
    func trySetInSync() {
        guard superblocks.safeModeFired, writesPending == 0, !superblocks.inSync else { return }
        guard sync.recoveryCheckpointSectors == maxSector, !(bitmap?.anyResyncPending ?? false) else { return }
        superblocks.inSync = true
        superblocks.safeModeFired = false
        requestSuperblockUpdate()
    }

    /// Asks for the superblocks to be rewritten with the current state. Never waits for anything
    /// but the member writes themselves: no control command, lock or sync can hold it back.
    func requestSuperblockUpdate(waiter: RequestID? = nil) {
        if !metadataWritable {
            // md_update_sb on a read-only or auto-read-only array: nothing is written now; the
            // change goes out when the array becomes writable. The command is answered at once,
            // as md answers it.
            superblocks.updateRequested = true
            if let waiter { out.append(.completeControl(waiter, .done)) }
            return
        }
        if let waiter { superblocks.waiters.append(waiter) }
        if superblocks.update != nil || superblockUpdateDeferred {
            superblocks.updateRequested = true
            return
        }
        startSuperblockUpdate()
    }

    /// Superblocks and bitmap may be written: the array is read-write (md_is_rdwr).
    var metadataWritable: Bool { !readOnly && !readAuto && !config.membersAreReadOnly }

    /// The array just became read-write: metadata changes held back go out now.
    func metadataBecameWritable() {
        guard metadataWritable else { return }
        if superblocks.updateRequested && superblocks.update == nil && !superblockUpdateDeferred {
            superblocks.updateRequested = false
            startSuperblockUpdate()
        }
        scheduleBitmapWrite()
    }

    /// A superblock update is in flight, held back, or asked for by commands waiting on it.
    var superblockWorkOutstanding: Bool {
        superblocks.update != nil || superblockUpdateDeferred || !superblocks.waiters.isEmpty
    }

    /// The broken variant: md 5.4 could not write the superblock while a sync stop held the lock.
    var superblockUpdateDeferred: Bool {
        variant.contains(.deferSuperblockWhileStopPending) && sync.stopPending
    }

    func startSuperblockUpdate() {
        let clean = superblocks.inSync
        let pureCleanDirtyChange = !superblocks.devicesChanged && clean != superblocks.persistedClean
        // md_update_sb: events go up, except that a clean update right after the matching dirty
        // one takes the bump back (so idle arrays do not count up forever).
        if pureCleanDirtyChange && clean && sync.recoveryCheckpointSectors == maxSector && superblocks.canDecreaseEvents
            && superblocks.events != 1 && degradedCount == 0
        {
            superblocks.events -= 1
            superblocks.canDecreaseEvents = false
        } else {
            superblocks.events += 1
            superblocks.canDecreaseEvents = pureCleanDirtyChange && !clean
        }
        superblocks.devicesChanged = false
        counters.superblockUpdates += 1
        let targets = members.filter(\.receivesSuperblocks)
        superblocks.update = .init(
            outstanding: targets.count, clearsPending: superblocks.changePending && !clean, clean: clean,
            waiters: superblocks.waiters)
        superblocks.waiters.removeAll()
        // The bitmap header carries the same events (md writes it first; if the superblock lands
        // and the bitmap does not, the next assembly sees a stale bitmap and resyncs everything).
        if let bitmap {
            bitmap.events = superblocks.events
            scheduleBitmapWrite(force: true)
        }
        // Metadata barrier: every member is flushed, and only once all flushes have landed are
        // the superblocks written (FUA). md flushes each device before its own superblock; a clean
        // superblock on one member must not outlive data or parity still in another member's
        // cache, so here the barrier spans the whole array.
        for m in targets { issue(.superblockFlush(member: m), member: m, offsetBytes: 0, kind: .flush, purpose: .metadataBarrier) }
        if targets.isEmpty { writeSuperblocks() }
    }

    func superblockFlushCompleted(member m: MemberIndex, failure: MemberIOError?) {
        if let failure { failMember(m, reason: "flush before the superblock write failed: \(failure)") }
        precondition(superblocks.update?.flushing == true && superblocks.update!.outstanding > 0, "superblock flush completion with none outstanding")
        superblocks.update!.outstanding -= 1
        if superblocks.update!.outstanding == 0 { writeSuperblocks() }
    }

    /// Second phase: the superblocks themselves, with the roles as they are now.
    func writeSuperblocks() {
        let targets = members.filter(\.receivesSuperblocks)
        superblocks.update!.flushing = false
        superblocks.update!.outstanding = targets.count
        let clean = superblocks.update!.clean
        for m in targets {
            issue(
                .superblockWrite(member: m), member: m, offsetBytes: members[m].template.superOffsetSectors * 512,
                kind: .write(from: IOBuffer(superblockBytes(for: m, clean: clean)), fua: true), purpose: .superblock)
        }
        if targets.isEmpty { finishSuperblockUpdate() }
    }

    /// The superblock member `m` gets now (md super_1_sync).
    func superblockBytes(for m: MemberIndex, clean: Bool) -> [UInt8] {
        var sb = members[m].template
        sb.events = superblocks.events
        sb.utime = (config.wallClockAtZeroSeconds + now / nanosPerSecond) & MDSuperblock1.timeSecondsMask
        superblocks.utimeSeconds = sb.utime
        sb.resyncOffsetSectors = clean ? sync.recoveryCheckpointSectors : 0
        var roles = [UInt16](repeating: MDRole.spareValue, count: Int(sb.maxDev))
        for member in members.list {
            let number = Int(member.template.devNumber)
            guard number < roles.count else { continue }
            switch member.role {
            case .active(let slot): roles[number] = UInt16(slot.rawValue)
            case .faulty: roles[number] = MDRole.faultyValue
            case .spare, .removed: roles[number] = MDRole.spareValue
            }
        }
        sb.devRoles = roles
        var features = sb.featureMap.subtracting([.recoveryOffset, .recoveryBitmap])
        if let rebuilt = members[m].recoveryOffsetSectors, members[m].isActive {
            features.insert(.recoveryOffset)
            sb.recoveryOffsetSectors = rebuilt
        } else {
            sb.recoveryOffsetSectors = 0
        }
        sb.featureMap = features
        // `encode` computes the checksum (no round trip through `withValidChecksum`, which
        // decoded the bytes again on every superblock write).
        return sb.encode()
    }

    func superblockWriteCompleted(member m: MemberIndex, failure: MemberIOError?) {
        if let failure { failMember(m, reason: "superblock write failed: \(failure)") }
        precondition(superblocks.update?.flushing == false && superblocks.update!.outstanding > 0, "superblock write completion with none outstanding")
        superblocks.update!.outstanding -= 1
        if superblocks.update!.outstanding == 0 { finishSuperblockUpdate() }
    }

    func finishSuperblockUpdate() {
        let update = superblocks.update!
        superblocks.update = nil
        superblocks.persistedClean = update.clean
        if update.clearsPending && !superblocks.inSync {
            superblocks.changePending = false
            wakeMetadataWaiters()
            let frozen = frozenStripes
            frozenStripes.removeAll()
            for s in frozen { handleStripe(s) }
        }
        for waiter in update.waiters { out.append(.completeControl(waiter, .done)) }
        if superblocks.updateRequested && !superblockUpdateDeferred && metadataWritable {
            superblocks.updateRequested = false
            startSuperblockUpdate()
        }
        // A `readonly` that waited for this work: taken up now that none is left (while
        // stopping, the stop answers it).
        if let waiter = readOnlyWaiter, !superblockWorkOutstanding, case .running = stopState {
            readOnlyWaiter = nil
            setArrayState(.readonly, id: waiter)
        }
    }

}
