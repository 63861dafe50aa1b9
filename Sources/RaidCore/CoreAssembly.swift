import MDFormat

/// One member device as the shell found it: its superblock (and bitmap area), its size.
public struct CoreMemberInput: Sendable {
    public var name: String
    public var superblock: MDSuperblock1
    public var deviceSizeSectors: UInt64
    /// The bitmap area (header and bits) as read from this member, if the array has one.
    public var bitmapArea: [UInt8]?

    public init(name: String, superblock: MDSuperblock1, deviceSizeSectors: UInt64, bitmapArea: [UInt8]? = nil) {
        self.name = name
        self.superblock = superblock
        self.deviceSizeSectors = deviceSizeSectors
        self.bitmapArea = bitmapArea
    }
}

/// What a member is to the running array.
public enum MemberRole: Equatable, Sendable, CustomStringConvertible {
    /// In the slot and in sync (or rebuilding, see `recoveryOffsetSectors`).
    case active(slot: Int)
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
    var slot: Int? { if case .active(let s) = role { return s } else { return nil } }
    /// Receives superblock writes (everything still attached to the array).
    var receivesSuperblocks: Bool { role != .faulty && role != .removed }
}

/// The array as assembled from its members' superblocks: which member holds which role, the
/// freshest superblock, the bitmap. Decided like `AssemblyPlan` (md's rules), keeping spares.
public struct CoreAssembly: Sendable {
    public let geometry: RaidGeometry
    public let freshest: MDSuperblock1
    public let members: [CoreMemberInput]
    /// `roles[slot]` = member index, nil when missing.
    public let roles: [Int?]
    /// Members usable as spares.
    public let spares: [Int]
    /// Members left out (stale, faulty) with the reason.
    public let excluded: [(index: Int, reason: ExclusionReason)]
    public let bitmap: MDBitmapSuperblock?
    public let bitmapArea: [UInt8]?

    public init(members: [CoreMemberInput], force: Bool = false) throws {
        let candidates = members.map {
            AssemblyCandidate(name: $0.name, superblock: $0.superblock, deviceSizeSectors: $0.deviceSizeSectors)
        }
        let plan = try AssemblyPlan(candidates: candidates, force: force)
        geometry = plan.geometry
        freshest = plan.superblock
        self.members = members
        roles = plan.memberForRole
        spares = plan.excluded.filter { $0.reason == .spare }.map(\.index)
        excluded = plan.excluded.filter { $0.reason != .spare }
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
