import MDFormat

/// What a member is to the running array.
public enum MemberRole: Equatable, Sendable, CustomStringConvertible {
    /// In the slot and in sync (or rebuilding, see `RaidCore.recoveryOffset`).
    case active(slot: Role)
    case spare
    case faulty
    /// Removed from the array (`remove`); its device is no longer written.
    case removed

    public var description: String {
        switch self {
        case .active(let slot): return "active \(slot)"
        case .spare: return "spare"
        case .faulty: return "faulty"
        case .removed: return "removed"
        }
    }
}

/// The core's record of one member.
struct Member {
    var name: String
    var template: MDSuperblock1
    var deviceSizeSectors: UInt64
    var role: MemberRole
    /// Member-relative sectors below this are rebuilt; nil = fully in sync.
    var recoveryOffsetSectors: UInt64?
    var readErrors = 0
    var dataOffsetSectors: UInt64 { template.dataOffsetSectors }

    var isActive: Bool { if case .active = role { return true } else { return false } }
    var slot: Role? { if case .active(let s) = role { return s } else { return nil } }
    /// Receives superblock writes (everything still attached to the array).
    var receivesSuperblocks: Bool { role != .faulty && role != .removed }
}

/// The members, indexed by `MemberIndex` (never by a bare Int: a role is not a member).
struct MemberTable {
    var list: [Member] = []

    subscript(_ m: MemberIndex) -> Member {
        get { list[m.rawValue] }
        _modify { yield &list[m.rawValue] }
    }

    var count: Int { list.count }
    var indices: [MemberIndex] { list.indices.map(MemberIndex.init) }

    func filter(_ isIncluded: (Member) -> Bool) -> [MemberIndex] {
        list.indices.filter { isIncluded(list[$0]) }.map(MemberIndex.init)
    }

    func first(where predicate: (Member) -> Bool) -> MemberIndex? {
        list.firstIndex(where: predicate).map(MemberIndex.init)
    }

    mutating func append(_ member: Member) -> MemberIndex {
        list.append(member)
        return MemberIndex(list.count - 1)
    }
}

/// The array as assembled from its members' superblocks, decided by md's rules (`AssemblyPlan`):
/// the freshest superblock defines the array, members whose events are behind are left out, spares
/// are kept, a partly rebuilt member goes back to its slot to resume from its recovery offset.
public struct CoreAssembly: Sendable {
    public let geometry: RaidGeometry
    public let freshest: MDSuperblock1
    public let members: [MemberMetadata]
    /// `roles[slot]` = member index, nil when missing.
    public let roles: [MemberIndex?]
    /// Members usable as spares.
    public let spares: [MemberIndex]
    /// Members returning to a slot they were being rebuilt into, and how far that got.
    public let recovering: [(member: MemberIndex, slot: Role, rebuiltSectors: UInt64)]
    /// Members left out (stale, faulty) with the reason.
    public let excluded: [(index: MemberIndex, reason: ExclusionReason)]
    public let bitmap: MDBitmapSuperblock?
    public let bitmapArea: [UInt8]?

    public init(members: [MemberMetadata], force: Bool = false) throws {
        let candidates = members.map {
            AssemblyCandidate(name: $0.name, superblock: $0.superblock, deviceSizeSectors: $0.deviceSizeSectors)
        }
        let plan = try AssemblyPlan(candidates: candidates, force: force)
        // The live core counts events up on every superblock update: a crafted counter near its
        // largest value would trap it, so one without 2^32 updates of room is refused here
        // (the offline tools, which never write, still read such members).
        guard plan.superblock.events <= UInt64.max - (1 << 32) else { throw AssemblyError.eventsExhausted(plan.superblock.events) }
        geometry = plan.geometry
        freshest = plan.superblock
        self.members = members
        var roles = plan.memberForRole.map { $0.map(MemberIndex.init) }
        spares = plan.excluded.filter { $0.reason == .spare }.map { MemberIndex($0.index) }
        var recovering: [(MemberIndex, Role, UInt64)] = []
        var excluded: [(index: MemberIndex, reason: ExclusionReason)] = []
        for (index, reason) in plan.excluded where reason != .spare {
            // md keeps a member that was being rebuilt (its own superblock says so, and the
            // array's names it in the same slot) and resumes its recovery where it stopped.
            if case .recovering(let rebuilt) = reason, case .active(let slot) = plan.superblock.role(ofDevNumber: members[index].superblock.devNumber),
                slot < roles.count, roles[slot] == nil
            {
                roles[slot] = MemberIndex(index)
                recovering.append((MemberIndex(index), Role(slot), rebuilt))
            } else {
                excluded.append((MemberIndex(index), reason))
            }
        }
        self.roles = roles
        self.recovering = recovering
        self.excluded = excluded
        // The bitmap as the freshest member holds it; a stale or invalid one means "all dirty".
        let freshestIndex = members.indices.first { members[$0].superblock == plan.superblock } ?? 0
        if plan.superblock.featureMap.contains(.bitmapOffset), let area = members[freshestIndex].bitmapArea,
            let header = try? MDBitmapSuperblock(decoding: area),
            (try? header.validate(arrayUUID: plan.superblock.setUUID)) != nil
        {
            bitmap = header
            bitmapArea = area
        } else {
            bitmap = nil
            bitmapArea = nil
        }
    }
}
