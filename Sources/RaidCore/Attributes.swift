import MDFormat

extension RaidCore {
    /// md's `array_state` (md-semantics.md §2.2).
    public var arrayState: String {
        if readOnly { return "readonly" }
        if readAuto { return "read-auto" }
        if isBroken { return "broken" }
        if superblocks.changePending { return "write-pending" }
        if superblocks.inSync { return "clean" }
        if superblocks.safeModeFired { return "active-idle" }
        return "active"
    }

    /// md's `sync_action` as read.
    public var syncAction: String {
        if sync.frozen { return "frozen" }
        return sync.running?.kind.rawValue ?? "idle"
    }

    /// `sync_completed`: "done / total" in member sectors, or "none".
    public var syncCompleted: String {
        guard let run = sync.running else { return "none" }
        return "\(run.watermarkUnit * unitSectors) / \(sync.totalSectors)"
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
    public var requestsOutstanding: Int { requestsInFlight }
    public var memberIOOutstanding: Int { ioContexts.count }
    /// Member roles as the core sees them now.
    public var memberRoles: [MemberRole] { members.map(\.role) }
    public func recoveryOffset(member: Int) -> UInt64? { members[member].recoveryOffsetSectors }

    /// Every md attribute the core knows, by name, as `cat md/NAME` prints it.
    public func attribute(_ name: String) -> String? {
        switch name {
        case "array_state": return arrayState
        case "sync_action": return syncAction
        case "sync_completed": return syncCompleted
        case "last_sync_action": return sync.lastAction
        case "mismatch_cnt": return String(sync.mismatchSectors)
        case "sync_min": return String(sync.syncMinSectors)
        case "sync_max": return sync.syncMaxSectors.map(String.init) ?? "max"
        case "sync_speed_min": return speedText(config.syncSpeedMinKiBps, default: CoreConfig().syncSpeedMinKiBps)
        case "sync_speed_max": return speedText(config.syncSpeedMaxKiBps, default: CoreConfig().syncSpeedMaxKiBps)
        case "sync_speed": return sync.running == nil ? "none" : String(currentSyncRateKiBps())
        case "stripe_cache_size": return String(config.stripeCacheSize)
        case "stripe_cache_active": return String(stripeCacheActive)
        case "stripe_size": return String(unitBytes)
        case "safe_mode_delay":
            let ms = config.safeModeDelayNanos / nanosPerMilli
            return "\(ms / 1000).\(String(repeating: "0", count: 3 - String(ms % 1000).count))\(ms % 1000)"
        case "degraded": return String(degradedCount)
        case "raid_disks": return String(geometry.raidDisks)
        case "level": return geometry.level.description
        case "layout": return String(geometry.layout.rawValue)
        case "chunk_size": return String(geometry.chunkBytes)
        case "component_size": return String(geometry.memberDataSectors / 2)
        case "array_size": return String(geometry.arraySectors / 2)
        case "resync_start": return sync.recoveryCheckpointSectors == maxSector ? "none" : String(sync.recoveryCheckpointSectors)
        case "max_read_errors": return String(config.maxReadErrors)
        case "metadata_version": return "1.2"
        case "consistency_policy": return bitmap == nil ? "resync" : "bitmap"
        default: return nil
        }
    }

    func speedText(_ value: UInt64, default system: UInt64) -> String {
        "\(value) (\(value == system ? "system" : "local"))"
    }

    // MARK: - control

    func handleControl(id: RequestID, command: ControlCommand) {
        switch command {
        case .set(let attribute, let value):
            setAttribute(id: id, attribute, value.trimmingCharacters())
        case .fail(let role):
            guard role >= 0, role < geometry.raidDisks, let m = roleMember[role] else {
                out.append(.completeControl(id, .failed(.invalid("no member in role \(role)"))))
                return
            }
            failMember(m, reason: "failed by request")
            requestSuperblockUpdate(waiter: id)
        case .remove(let m):
            guard m >= 0, m < members.count, members[m].role == .faulty || members[m].role == .spare else {
                out.append(.completeControl(id, .failed(.busy("only a faulty or spare member can be removed"))))
                return
            }
            members[m].role = .removed
            superblocks.devicesChanged = true
            requestSuperblockUpdate(waiter: id)
        case .add(let m):
            guard m >= 0, m < members.count, members[m].role == .removed else {
                out.append(.completeControl(id, .failed(.busy("member \(m) is not a removed device"))))
                return
            }
            members[m].role = .spare
            members[m].readErrors = 0
            superblocks.devicesChanged = true
            requestSuperblockUpdate(waiter: id)
            checkRecovery()
        }
    }

    func setAttribute(id: RequestID, _ name: String, _ value: String) {
        func done() { out.append(.completeControl(id, .done)) }
        func fail(_ e: ControlError) { out.append(.completeControl(id, .failed(e))) }
        switch name {
        case "sync_action":
            guard let action = ["idle", "frozen", "resync", "recover", "check", "repair"].first(where: { $0 == value }) else {
                fail(.invalid("sync_action takes idle, frozen, resync, recover, check or repair, not '\(value)'"))
                return
            }
            if readOnly {
                fail(.busy("array is read-only"))
                return
            }
            switch action {
            case "idle":
                sync.frozen = false
                leaveReadAuto()
                if sync.running != nil { interruptSync(waiter: id) } else { done(); checkRecovery() }
            case "frozen":
                sync.frozen = true
                if sync.running != nil { interruptSync(waiter: id) } else { done() }
            default:
                if sync.running != nil {
                    fail(.busy("\(sync.running!.kind.rawValue) is running"))
                    return
                }
                sync.frozen = false
                leaveReadAuto()
                if action == "check" { sync.requested = .check }
                if action == "repair" { sync.requested = .repair }
                done()
                checkRecovery()
            }
        case "array_state":
            switch value {
            case "clean":
                if writesPending > 0 {
                    fail(.busy("writes in flight"))
                    return
                }
                readOnly = false
                leaveReadAuto()
                if !superblocks.inSync {
                    superblocks.inSync = true
                    superblocks.safeModeFired = false
                    requestSuperblockUpdate(waiter: id)
                } else {
                    done()
                }
            case "active":
                readOnly = false
                leaveReadAuto()
                if superblocks.inSync {
                    markDirtyIfClean()
                    requestSuperblockUpdate(waiter: id)
                } else {
                    // md's escape from write-pending; here the pending write always lands.
                    if superblocks.update != nil || superblocks.changePending { requestSuperblockUpdate(waiter: id) } else { done() }
                }
            case "readonly":
                if writesPending > 0 {
                    fail(.busy("writes in flight"))
                    return
                }
                readOnly = true
                if sync.running != nil { interruptSync(waiter: nil) }
                done()
            case "read-auto":
                if writesPending > 0 || !superblocks.inSync {
                    fail(.busy("array is dirty"))
                    return
                }
                readOnly = false
                readAuto = true
                done()
            case "write-pending", "active-idle", "broken", "suspended":
                fail(.invalid("array_state cannot be set to '\(value)'"))
            case "clear", "inactive":
                fail(.busy("stop the array through its owner, not array_state"))
            default:
                fail(.invalid("unknown array_state '\(value)'"))
            }
        case "stripe_cache_size":
            guard let n = Int(value), CoreConfig.stripeCacheSizeRange.contains(n) else {
                fail(.invalid("stripe_cache_size must be 17..32768"))
                return
            }
            resizeStripeCache(n)
            done()
        case "safe_mode_delay":
            guard let nanos = parseSeconds(value) else {
                fail(.invalid("safe_mode_delay takes seconds, like 0.200"))
                return
            }
            config.safeModeDelayNanos = nanos
            done()
        case "sync_speed_min", "sync_speed_max":
            let system = name == "sync_speed_min" ? CoreConfig().syncSpeedMinKiBps : CoreConfig().syncSpeedMaxKiBps
            let parsed: UInt64? = value == "system" ? system : UInt64(value)
            guard let speed = parsed, speed > 0 else {
                fail(.invalid("\(name) takes KiB/s or 'system'"))
                return
            }
            if name == "sync_speed_min" { config.syncSpeedMinKiBps = speed } else { config.syncSpeedMaxKiBps = speed }
            done()
            pumpSync()
        case "sync_min":
            guard let sectors = UInt64(value), sectors <= sync.totalSectors else {
                fail(.invalid("sync_min takes sectors within the device"))
                return
            }
            if sync.running != nil {
                fail(.busy("sync is running"))
                return
            }
            sync.syncMinSectors = sectors / geometry.chunkSectors * geometry.chunkSectors
            done()
        case "sync_max":
            if value == "max" {
                sync.syncMaxSectors = nil
            } else if let sectors = UInt64(value) {
                sync.syncMaxSectors = sectors / geometry.chunkSectors * geometry.chunkSectors
            } else {
                fail(.invalid("sync_max takes sectors or 'max'"))
                return
            }
            done()
            pumpSync()
        case "max_read_errors":
            guard let n = Int(value), n >= 0 else {
                fail(.invalid("max_read_errors takes a count"))
                return
            }
            config.maxReadErrors = n
            done()
        default:
            fail(.unknownAttribute(name))
        }
    }

    func leaveReadAuto() {
        if readAuto {
            readAuto = false
        }
    }

    func parseSeconds(_ text: String) -> Nanoseconds? {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count <= 2, let whole = UInt64(parts[0].isEmpty ? "0" : parts[0]) else { return nil }
        var nanos = whole * nanosPerSecond
        if parts.count == 2 {
            let frac = parts[1].prefix(9)
            guard frac.allSatisfy(\.isNumber), let digits = UInt64(frac.isEmpty ? "0" : String(frac)) else { return nil }
            var scale: UInt64 = 1
            for _ in 0..<(9 - frac.count) { scale *= 10 }
            nanos += digits * scale
        }
        return nanos
    }

    func resizeStripeCache(_ n: Int) {
        config.stripeCacheSize = n
        while stripes.count < n {
            let s = Stripe(slot: stripes.count, raidDisks: geometry.raidDisks, unitBytes: unitBytes)
            stripes.append(s)
            freeStripes.append(s)
        }
        // Shrinking drops free stripes now; busy ones go as they are released.
        while stripes.count > n, let victim = freeStripes.popLast() {
            stripes.removeAll { $0 === victim }
        }
        serveStripeWaiters()
    }
}

extension String {
    func trimmingCharacters() -> String {
        var s = Substring(self)
        while let c = s.first, c == " " || c == "\n" || c == "\t" { s.removeFirst() }
        while let c = s.last, c == " " || c == "\n" || c == "\t" { s.removeLast() }
        return String(s)
    }
}
