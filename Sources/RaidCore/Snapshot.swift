import MDFormat

/// One member as the running array sees it.
public struct MemberSnapshot: Sendable, Equatable {
    public let index: MemberIndex
    public let name: String
    public let role: MemberRole
    /// md's dev_number (the member's entry in the superblocks' roles table).
    public let devNumber: UInt32
    /// Member sectors rebuilt so far, while it is being rebuilt.
    public let recoveryOffsetSectors: UInt64?
    public let readErrors: Int
    public let deviceUUID: [UInt8]
    public let dataOffsetSectors: UInt64
}

/// The array's state at one moment, for status, detail and metrics (taken on the core's owner,
/// then read anywhere).
public struct ArraySnapshot: Sendable {
    public let geometry: RaidGeometry
    public let superblock: MDSuperblock1
    public let events: UInt64
    public let arrayState: ArrayState
    public let syncAction: SyncAction
    public let syncKind: SyncKind?
    /// Member sectors done and in all, while a sync runs.
    public let syncProgress: (done: UInt64, total: UInt64)?
    public let syncSpeedKiBps: UInt64?
    public let lastSyncAction: SyncKind?
    public let mismatchCount: UInt64
    public let resyncOffsetSectors: UInt64
    public let degraded: Int
    public let members: [MemberSnapshot]
    public let stripeCacheSize: Int
    public let stripeCacheActive: Int
    public let bitmapChunkBytes: UInt64?
    public let bitmapBitsSet: Int
    public let bitmapBitCount: Int
    public let counters: CoreCounters
    public let requestsInFlight: Int
    public let bytesInFlight: Int
    public let isClean: Bool
    public let isStopped: Bool
}

extension RaidCore {
    public func snapshot() -> ArraySnapshot {
        let memberList = members.indices.map { m in
            let member = members[m]
            return MemberSnapshot(
                index: m, name: member.name, role: member.role, devNumber: member.template.devNumber,
                recoveryOffsetSectors: member.recoveryOffsetSectors, readErrors: member.readErrors,
                deviceUUID: member.template.deviceUUID, dataOffsetSectors: member.dataOffsetSectors)
        }
        // The superblock as last written: its events and update time, not the assembly's.
        var superblock = members.list.first!.template
        superblock.events = superblocks.events
        if let written = superblocks.utimeSeconds { superblock.utime = written }
        return ArraySnapshot(
            geometry: geometry, superblock: superblock, events: superblocks.events, arrayState: arrayState,
            syncAction: syncAction, syncKind: sync.running?.kind, syncProgress: syncProgressSectors,
            syncSpeedKiBps: sync.running == nil ? nil : currentSyncRateKiBps(), lastSyncAction: sync.lastAction,
            mismatchCount: sync.mismatchSectors, resyncOffsetSectors: sync.recoveryCheckpointSectors, degraded: degradedCount,
            members: memberList, stripeCacheSize: config.stripeCacheSize, stripeCacheActive: stripeCacheActive,
            bitmapChunkBytes: bitmap.map { $0.chunkSectors * 512 }, bitmapBitsSet: bitmap?.bits.filter { $0 }.count ?? 0,
            bitmapBitCount: bitmap?.bitCount ?? 0, counters: counters, requestsInFlight: requestsInFlight,
            bytesInFlight: bytesInFlight, isClean: superblocks.inSync, isStopped: isStopped)
    }
}
