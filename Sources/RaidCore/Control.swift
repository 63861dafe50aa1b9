import MDFormat

// The core's control surface: md's attributes read, and one handler per command. Parsing the
// text of a write lives in MDAttributes.swift; what the write does to the array lives here.

extension RaidCore {
    /// md's `array_state` (md-semantics.md §2.2).
    public var arrayState: ArrayState {
        if case .stopped = stopState { return .inactive }
        if readOnly { return .readonly }
        if readAuto { return .readAuto }
        if isBroken { return .broken }
        if superblocks.changePending { return .writePending }
        if superblocks.inSync { return .clean }
        if superblocks.safeModeFired { return .activeIdle }
        return .active
    }

    /// md's `sync_action` as read.
    public var syncAction: SyncAction {
        if sync.frozen { return .frozen }
        return sync.running?.kind.action ?? .idle
    }

    public var syncKind: SyncKind? { sync.running?.kind }

    /// `sync_completed`: "done / total" in member sectors, or "none".
    public var syncCompleted: String {
        guard let run = sync.running else { return "none" }
        return "\(run.watermarkUnit * unitSectors) / \(sync.totalSectors)"
    }

    /// The running sync's progress in member sectors (done, total), for mdstat-style output.
    public var syncProgressSectors: (done: UInt64, total: UInt64)? {
        guard let run = sync.running else { return nil }
        return (run.watermarkUnit * unitSectors, sync.totalSectors)
    }

    public var mismatchCount: UInt64 { sync.mismatchSectors }
    public var events: UInt64 { superblocks.events }
    /// Syncs started and reaped over the core's life.
    public var syncsStarted: Int { sync.started }
    public var syncsReaped: Int { sync.reaped }
    /// Control requests waiting for a sync to stop.
    public var pendingStopRequests: Int { sync.stopWaiters.count }
    public var isClean: Bool { superblocks.inSync }
    public var writePending: Bool { superblocks.changePending }
    public var isStopped: Bool { if case .stopped = stopState { return true } else { return false } }
    public var requestsOutstanding: Int { requestsInFlight }
    public var memberIOOutstanding: Int { ioContexts.count }
    /// Member roles as the core sees them now, by member index.
    public var memberRoles: [MemberRole] { members.list.map(\.role) }
    public var memberNames: [String] { members.list.map(\.name) }
    public func role(of m: MemberIndex) -> MemberRole { members[m].role }
    /// The member holding `slot`, if any.
    public func member(inSlot slot: Role) -> MemberIndex? { roleMember[slot.rawValue] }
    public func recoveryOffset(member: MemberIndex) -> UInt64? { members[member].recoveryOffsetSectors }
    public func readErrorCount(member: MemberIndex) -> Int { members[member].readErrors }
    /// The superblock the core would write to member `m` now (its template: offsets, device UUID).
    public func superblockTemplate(member m: MemberIndex) -> MDSuperblock1 { members[m].template }

    /// An attribute as `cat md/NAME` prints it (without the newline), or nil for a member index
    /// the array does not have.
    public func attribute(_ name: AttributeName) -> String? {
        switch name {
        case .array(let a): return attribute(a)
        case .member(let m, let a):
            guard m.rawValue >= 0, m.rawValue < members.count else { return nil }
            return memberAttribute(m, a)
        }
    }

    /// The attribute named `name`, or nil when there is no such attribute.
    public func attribute(_ name: String) -> String? {
        guard let parsed = try? AttributeName(parsing: name) else { return nil }
        return attribute(parsed)
    }

    public func attribute(_ a: MDAttribute) -> String {
        switch a {
        case .arrayState: return arrayState.rawValue
        case .syncAction: return syncAction.rawValue
        case .syncCompleted: return syncCompleted
        case .lastSyncAction: return sync.lastAction?.rawValue ?? "none"
        case .mismatchCount: return String(sync.mismatchSectors)
        case .syncMin: return String(sync.syncMinSectors)
        case .syncMax: return sync.syncMaxSectors.map(String.init) ?? "max"
        case .syncSpeedMin: return speedText(config.syncSpeedMinKiBps, system: CoreConfig.systemSyncSpeedMinKiBps)
        case .syncSpeedMax: return speedText(config.syncSpeedMaxKiBps, system: CoreConfig.systemSyncSpeedMaxKiBps)
        case .syncSpeed: return sync.running == nil ? "none" : String(currentSyncRateKiBps())
        case .stripeCacheSize: return String(config.stripeCacheSize)
        case .stripeCacheActive: return String(stripeCacheActive)
        case .stripeSize: return String(unitBytes)
        case .safeModeDelay: return formatSeconds(config.safeModeDelayNanos)
        case .degraded: return String(degradedCount)
        case .raidDisks: return String(geometry.raidDisks)
        case .level: return geometry.level.description
        case .layout: return String(geometry.layout.rawValue)
        case .chunkSize: return String(geometry.chunkBytes)
        case .componentSize: return String(geometry.memberDataSectors / 2)
        // md prints "default" unless the size was set by hand (swraid never sets it).
        case .arraySize: return "default"
        case .resyncStart: return sync.recoveryCheckpointSectors == maxSector ? "none" : String(sync.recoveryCheckpointSectors)
        case .maxReadErrors: return String(config.maxReadErrors)
        case .metadataVersion: return members.list.first?.template.metadataVersion.rawValue ?? "1.2"
        case .consistencyPolicy: return bitmap == nil ? "resync" : "bitmap"
        case .uuid: return formatStandardUUID(members.list.first?.template.setUUID ?? [])
        }
    }

    func memberAttribute(_ m: MemberIndex, _ a: MemberAttribute) -> String {
        let member = members[m]
        switch a {
        case .state:
            switch member.role {
            case .active: return member.recoveryOffsetSectors == nil ? "in_sync" : "spare"
            case .spare: return "spare"
            case .faulty: return "faulty"
            case .removed: return "removed"
            }
        case .errors: return String(member.template.cntCorrectedRead)
        case .slot: return member.slot.map { String($0.rawValue) } ?? "none"
        }
    }

    func speedText(_ value: UInt64, system: UInt64) -> String {
        "\(value) (\(value == system ? "system" : "local"))"
    }

    // MARK: - control commands

    func handleControl(id: RequestID, command: ControlCommand) {
        func done() { out.append(.completeControl(id, .done)) }
        func fail(_ e: ControlError) { out.append(.completeControl(id, .failed(e))) }
        switch stopState {
        case .running: break
        case .stopping(let waiters, let started):
            if case .stop = command, waiters.count < config.maxControlWaiters {
                stopState = .stopping(waiters: waiters + [id], finalUpdateStarted: started)
            } else {
                fail(.stopped)
            }
            return
        case .stopped:
            if case .stop = command { done() } else { fail(.stopped) }
            return
        }
        // Commands that may wait for a superblock update or a sync stop are bounded in number.
        if commandMayWait(command) && controlWaiters >= config.maxControlWaiters {
            fail(.busy("\(controlWaiters) control commands are already waiting"))
            return
        }
        switch command {
        case .setSyncAction(let action): setSyncAction(action, id: id)
        case .setArrayState(let state): setArrayState(state, id: id)
        case .setStripeCacheSize(let n): setStripeCacheSize(n, id: id)
        case .setSafeModeDelay(let nanos):
            config.safeModeDelayNanos = nanos
            done()
        case .setSyncSpeedMin(let limit):
            config.syncSpeedMinKiBps = limit.kibps(system: CoreConfig.systemSyncSpeedMinKiBps)
            done()
            pumpSync()
        case .setSyncSpeedMax(let limit):
            config.syncSpeedMaxKiBps = limit.kibps(system: CoreConfig.systemSyncSpeedMaxKiBps)
            done()
            pumpSync()
        case .setSyncMin(let sectors): setSyncMin(sectors, id: id)
        case .setSyncMax(let max): setSyncMax(max, id: id)
        case .setMaxReadErrors(let n):
            config.maxReadErrors = n
            done()
        case .setMemberErrors(let m, let n):
            guard isMember(m) else { return fail(.invalid("no member \(m)")) }
            members[m].template.cntCorrectedRead = UInt32(n)
            done()
        case .fail(let m): failByRequest(m, id: id)
        case .remove(let m): removeMember(m, id: id)
        case .readd(let m): readdMember(m, id: id)
        case .addNew(let metadata): addNewMember(metadata, id: id)
        case .stop: stop(id: id)
        }
    }

    var controlWaiters: Int { superblocks.waiterCount + sync.stopWaiters.count + (readOnlyWaiter == nil ? 0 : 1) }

    func commandMayWait(_ command: ControlCommand) -> Bool {
        switch command {
        case .setSyncAction, .setArrayState, .fail, .remove, .readd, .addNew: return true
        default: return false
        }
    }

    func isMember(_ m: MemberIndex) -> Bool { m.rawValue >= 0 && m.rawValue < members.count }

    /// `echo ACTION > sync_action` (md's action_store).
    func setSyncAction(_ action: SyncAction, id: RequestID) {
        // A read-only array runs no sync; md still takes idle and frozen there.
        if readOnly && action != .idle && action != .frozen {
            out.append(.completeControl(id, .failed(.busy("array is read-only"))))
            return
        }
        switch action {
        case .idle:
            sync.frozen = false
            leaveReadAuto()
            if sync.running != nil {
                interruptSync(waiter: id)
            } else {
                out.append(.completeControl(id, .done))
                checkRecovery()
            }
        case .frozen:
            sync.frozen = true
            if sync.running != nil { interruptSync(waiter: id) } else { out.append(.completeControl(id, .done)) }
        case .resync, .recover, .check, .repair:
            if let running = sync.running {
                out.append(.completeControl(id, .failed(.busy("\(running.kind.rawValue) is running"))))
                return
            }
            sync.frozen = false
            leaveReadAuto()
            if action == .check { sync.requested = .check }
            if action == .repair { sync.requested = .repair }
            out.append(.completeControl(id, .done))
            checkRecovery()
        }
    }

    /// md: any successful `sync_action` or `array_state` write drops auto-read-only.
    func leaveReadAuto() {
        guard readAuto, !readOnly else { return }
        readAuto = false
        metadataBecameWritable()
    }

    /// `echo STATE > array_state` (md's array_state_store).
    func setArrayState(_ state: ArrayState, id: RequestID) {
        func done() { out.append(.completeControl(id, .done)) }
        func fail(_ e: ControlError) { out.append(.completeControl(id, .failed(e))) }
        if config.membersAreReadOnly && (state == .clean || state == .active || state == .readAuto) {
            return fail(.readOnly)
        }
        switch state {
        case .clean:
            if writesPending > 0 { return fail(.busy("writes in flight")) }
            readOnly = false
            leaveReadAuto()
            metadataBecameWritable()
            if !superblocks.inSync {
                superblocks.inSync = true
                superblocks.safeModeFired = false
                requestSuperblockUpdate(waiter: id)
            } else {
                done()
            }
            checkRecovery()
        case .active:
            readOnly = false
            leaveReadAuto()
            metadataBecameWritable()
            if superblocks.inSync {
                markDirtyIfClean()
                requestSuperblockUpdate(waiter: id)
                // Dirty with no write to follow: safe mode takes it back to clean after
                // safe_mode_delay as after a last write (md leaves a clean array clean here;
                // left dirty until some write came, a crash meanwhile cost a resync).
                armSafeMode()
            } else if superblocks.update != nil || superblocks.changePending {
                // md's escape from write-pending; here the pending write always lands anyway.
                requestSuperblockUpdate(waiter: id)
            } else {
                done()
            }
            checkRecovery()
        case .readonly:
            // md_set_readonly: the sync stops and the array is written clean first
            // (__md_stop_writes); from then on nothing is written.
            if writesPending > 0 { return fail(.busy("writes in flight")) }
            if readOnly { return done() }
            if superblockWorkOutstanding {
                // md_set_readonly waits for the superblock writes in flight (sb_wait) before it
                // stops writes. Taken up again once they have landed: read-only at once, the
                // updates queued behind the one in flight would never be written (a read-only
                // array writes nothing) and the commands waiting for them never answered.
                guard readOnlyWaiter == nil else { return fail(.busy("another readonly request waits for the superblock update in flight")) }
                readOnlyWaiter = id
                return
            }
            if sync.running != nil { interruptSync(waiter: nil) }
            if !superblocks.inSync && metadataWritable {
                superblocks.inSync = true
                superblocks.safeModeFired = false
                _ = bitmap?.clearIdleBits()
                requestSuperblockUpdate(waiter: id)
            } else {
                done()
            }
            readOnly = true
        case .readAuto:
            // md: only a read-only array may become auto-read-only (EBUSY when read-write).
            if !readOnly && !readAuto { return fail(.busy("array is read-write")) }
            readOnly = false
            readAuto = true
            done()
        case .writePending, .activeIdle, .broken, .suspended:
            fail(.invalid("array_state cannot be set to '\(state)'"))
        case .clear, .inactive:
            fail(.busy("stop the array with the stop command, not array_state"))
        }
    }

    func setStripeCacheSize(_ n: Int, id: RequestID) {
        guard CoreConfig.stripeCacheSizeRange.contains(n) else {
            out.append(.completeControl(id, .failed(.invalid("stripe_cache_size must be 17..32768"))))
            return
        }
        config.stripeCacheSize = n
        while stripes.count < n {
            let s = Stripe(slot: stripes.count, raidDisks: geometry.raidDisks, unitBytes: unitBytes)
            stripes.append(s)
            freeStripes.append(s)
        }
        // Shrinking drops free stripes now (in one pass over the cache); busy ones go as they
        // are released.
        if stripes.count > n {
            let excess = min(stripes.count - n, freeStripes.count)
            let victims = Set(freeStripes.suffix(excess).map(ObjectIdentifier.init))
            freeStripes.removeLast(excess)
            stripes.removeAll { victims.contains(ObjectIdentifier($0)) }
        }
        serveStripeWaiters()
        out.append(.completeControl(id, .done))
    }

    /// md's min_sync_store: EBUSY while a sync runs, EINVAL above sync_max; rounded down to 4 KiB.
    func setSyncMin(_ sectors: UInt64, id: RequestID) {
        if sectors > (sync.syncMaxSectors ?? maxSector) || sectors > sync.totalSectors {
            out.append(.completeControl(id, .failed(.invalid("sync_min \(sectors) is above sync_max or the device"))))
        } else if sync.running != nil {
            out.append(.completeControl(id, .failed(.busy("a sync is running"))))
        } else {
            sync.syncMinSectors = sectors / 8 * 8
            out.append(.completeControl(id, .done))
        }
    }

    /// md's max_sync_store: a multiple of the chunk size, not below sync_min; lowering it while a
    /// sync runs is EBUSY.
    func setSyncMax(_ value: SyncMax, id: RequestID) {
        switch value {
        case .max:
            sync.syncMaxSectors = nil
        case .sectors(let sectors):
            if sectors < sync.syncMinSectors || sectors % geometry.chunkSectors != 0 {
                out.append(.completeControl(id, .failed(.invalid("sync_max must be a multiple of the chunk (\(geometry.chunkSectors) sectors) and not below sync_min"))))
                return
            }
            if sync.running != nil && sectors < (sync.syncMaxSectors ?? maxSector) {
                out.append(.completeControl(id, .failed(.busy("sync_max cannot be lowered while a sync runs"))))
                return
            }
            sync.syncMaxSectors = sectors
        }
        out.append(.completeControl(id, .done))
        pumpSync()
    }

    /// `mdadm --fail`: the member is faulty; answered once the superblocks say so.
    func failByRequest(_ m: MemberIndex, id: RequestID) {
        guard isMember(m) else {
            out.append(.completeControl(id, .failed(.invalid("no member \(m)"))))
            return
        }
        switch members[m].role {
        case .active, .spare:
            failMember(m, reason: "failed by request")
            requestSuperblockUpdate(waiter: id)
        case .faulty:
            out.append(.completeControl(id, .done))
        case .removed:
            out.append(.completeControl(id, .failed(.invalid("member \(m) has been removed"))))
        }
    }

    /// `mdadm --remove`: only a faulty or spare member may go (md: EBUSY for an active one).
    func removeMember(_ m: MemberIndex, id: RequestID) {
        guard isMember(m), members[m].role == .faulty || members[m].role == .spare else {
            out.append(.completeControl(id, .failed(.busy("only a faulty or spare member can be removed"))))
            return
        }
        members[m].role = .removed
        log(.info, "member \(m) (\(members[m].name)) removed")
        superblocks.devicesChanged = true
        requestSuperblockUpdate(waiter: id)
    }

    /// `mdadm --re-add`: a removed member becomes a spare again (and is rebuilt where needed).
    func readdMember(_ m: MemberIndex, id: RequestID) {
        guard isMember(m), members[m].role == .removed else {
            out.append(.completeControl(id, .failed(.busy("member \(m) is not a removed device"))))
            return
        }
        let number = members[m].template.devNumber
        if members.list.enumerated().contains(where: { $0.offset != m.rawValue && $0.element.role != .removed && $0.element.template.devNumber == number }) {
            out.append(.completeControl(id, .failed(.busy("device number \(number) is in use by another member"))))
            return
        }
        members[m].role = .spare
        members[m].readErrors = 0
        superblocks.devicesChanged = true
        requestSuperblockUpdate(waiter: id)
        checkRecovery()
    }

    /// `mdadm --add`: a new device, with a spare superblock of this array written on it by the
    /// shell, joins as a spare; recovery starts onto it when a slot is empty.
    func addNewMember(_ metadata: MemberMetadata, id: RequestID) {
        let sb = metadata.superblock
        let template = members.list.first!.template
        var problem: String?
        if sb.setUUID != template.setUUID {
            problem = "\(metadata.name) belongs to another array"
        } else if metadata.deviceSizeSectors < sb.dataOffsetSectors + geometry.memberDataSectors {
            problem = "\(metadata.name) is too small: it needs \(sb.dataOffsetSectors + geometry.memberDataSectors) sectors, it has \(metadata.deviceSizeSectors)"
        } else if sb.devNumber >= template.maxDev {
            problem = "device number \(sb.devNumber) is beyond the roles table (\(template.maxDev))"
        } else if members.list.contains(where: { $0.template.devNumber == sb.devNumber && $0.role != .removed }) {
            problem = "device number \(sb.devNumber) is in use"
        } else if members.list.contains(where: { $0.template.deviceUUID == sb.deviceUUID && $0.role != .removed }) {
            problem = "\(metadata.name) is already a member"
        }
        if let problem {
            out.append(.completeControl(id, .failed(.invalid(problem))))
            return
        }
        let m = members.append(Member(name: metadata.name, template: sb, deviceSizeSectors: metadata.deviceSizeSectors, role: .spare))
        log(.info, "member \(m) (\(metadata.name)) added as a spare")
        superblocks.devicesChanged = true
        requestSuperblockUpdate(waiter: id)
        checkRecovery()
    }

    // MARK: - stop (md's do_md_stop)

    /// Stops the array: requests already admitted finish, a running sync is interrupted (its
    /// position recorded), the array is marked clean with the bitmap's idle bits cleared, and
    /// the command is answered once that is on disk. New requests get ESHUTDOWN at once.
    func stop(id: RequestID) {
        log(.info, "stopping")
        stopState = .stopping(waiters: [id], finalUpdateStarted: false)
        releaseAllGathers()
        if sync.running != nil { interruptSync(waiter: nil) }
    }

    /// Moves a stop on after each event: the final update once nothing is in flight, then the
    /// answer once it has landed.
    func progressStop() {
        guard case .stopping(let waiters, let started) = stopState else { return }
        // An update held back on a read-only array is never written: it does not hold up the stop.
        let quiet = requestsInFlight == 0 && sync.running == nil && superblocks.update == nil
            && (!superblocks.updateRequested || !metadataWritable)
            && (bitmap?.writeOutstanding ?? 0) == 0
        guard quiet else { return }
        if !started {
            stopState = .stopping(waiters: waiters, finalUpdateStarted: true)
            if !readOnly && !readAuto {
                // md's __md_stop_writes: in_sync, then a superblock update if anything is
                // dirty or pending; the bitmap is flushed with its idle bits cleared.
                let bitsCleared = bitmap?.clearIdleBits() ?? false
                if !superblocks.inSync || superblocks.devicesChanged {
                    superblocks.inSync = true
                    superblocks.safeModeFired = false
                    requestSuperblockUpdate()
                    return
                }
                if bitsCleared {
                    scheduleBitmapWrite()
                    return
                }
            }
        }
        // Also after the final update (or with nothing to write): the array is stopped.
        stopState = .stopped
        if let waiter = readOnlyWaiter {
            readOnlyWaiter = nil
            out.append(.completeControl(waiter, .failed(.stopped)))
        }
        log(.info, "stopped\(superblocks.inSync ? ", clean" : "")")
        for w in waiters { out.append(.completeControl(w, .done)) }
    }
}

extension SyncSpeedLimit {
    func kibps(system: UInt64) -> UInt64 {
        switch self {
        case .system: return system
        case .kibps(let n): return n
        }
    }
}

/// A UUID as md's `uuid` attribute prints it (8-4-4-4-12 hex digits).
public func formatStandardUUID(_ bytes: [UInt8]) -> String {
    let hex = bytes.map { b -> String in
        let s = String(b, radix: 16)
        return s.count == 1 ? "0" + s : s
    }
    guard hex.count == 16 else { return hex.joined() }
    return [hex[0..<4], hex[4..<6], hex[6..<8], hex[8..<10], hex[10..<16]].map { $0.joined() }.joined(separator: "-")
}
