/// One device offered for assembly: its name, its decoded and validated superblock, its size.
public struct AssemblyCandidate: Sendable {
    public let name: String
    public let superblock: MDSuperblock1
    public let deviceSizeSectors: UInt64

    public init(name: String, superblock: MDSuperblock1, deviceSizeSectors: UInt64) {
        self.name = name
        self.superblock = superblock
        self.deviceSizeSectors = deviceSizeSectors
    }
}

/// Why a device offered for assembly is not used.
public enum ExclusionReason: Equatable, Sendable, CustomStringConvertible {
    case stale(events: UInt64, arrayEvents: UInt64)
    case spare
    case faulty
    case recovering(rebuiltSectors: UInt64)
    case duplicateRole(slot: Int, keptMember: String)

    public var description: String {
        switch self {
        case .stale(let events, let arrayEvents):
            return "stale: events \(events) behind the array's \(arrayEvents); its data is out of date"
        case .spare: return "spare (no active role)"
        case .faulty: return "marked faulty by the newer members"
        case .recovering(let sectors): return "only partly rebuilt (recovery offset \(sectors) sectors)"
        case .duplicateRole(let slot, let kept): return "also claims role \(slot), which \(kept) holds with newer events"
        }
    }
}

public enum AssemblyError: Error, Equatable, CustomStringConvertible {
    case noMembers
    case differentArrays(String, String)
    case inconsistentGeometry(String)
    case unsupportedLevel(Int32)
    case unsupportedFeature(String)
    case tooManyMissing(missingRoles: [Int], tolerated: Int, level: RaidLevel)
    case dirtyDegraded(missingRoles: [Int])
    case conflictingRoles(slot: Int, String, String)
    case geometry(GeometryError)
    case memberTooSmall(String)
    /// The freshest events counter is within 2^32 of its largest value: the live array's
    /// superblock updates would run out of counts.
    case eventsExhausted(UInt64)

    public var description: String {
        switch self {
        case .noMembers: return "no md members given"
        case .differentArrays(let a, let b): return "members of different arrays: \(a) and \(b)"
        case .inconsistentGeometry(let what): return "members disagree: \(what)"
        case .unsupportedLevel(let level): return "raid level \(level) is not supported (raid4, raid5 and raid6 are)"
        case .unsupportedFeature(let what): return "array uses a feature swraid does not support yet: \(what)"
        case .tooManyMissing(let roles, let tolerated, let level):
            let list = roles.map(String.init).joined(separator: ", ")
            return "cannot return correct data: \(roles.count) of the array's roles are missing (\(list)); \(level) tolerates \(tolerated)"
        case .dirtyDegraded(let roles):
            let list = roles.map(String.init).joined(separator: ", ")
            return "array was not shut down cleanly and is degraded (role \(list) missing): parity may be stale, so data could be wrong (md refuses too; --force to read anyway)"
        case .conflictingRoles(let slot, let a, let b): return "\(a) and \(b) both claim role \(slot) with equal events"
        case .geometry(let error): return error.description
        case .memberTooSmall(let what): return what
        case .eventsExhausted(let events): return "the superblock's events counter (\(events)) is too close to its largest value to count further updates: refusing to run the array"
        }
    }
}

/// Which devices make up the array and which roles are missing, decided as md does from the
/// superblocks: roles come from the freshest superblock's `dev_roles`, members more than one
/// event behind are stale.
public struct AssemblyPlan: Sendable {
    /// The freshest superblock: it defines the array.
    public let superblock: MDSuperblock1
    public let geometry: RaidGeometry
    /// `memberForRole[slot]` = index into the candidates, or nil if the role is missing.
    public let memberForRole: [Int?]
    public let excluded: [(index: Int, reason: ExclusionReason)]

    public var missingRoles: [Int] { memberForRole.indices.filter { memberForRole[$0] == nil } }
    public var isDegraded: Bool { !missingRoles.isEmpty }
    public var arraySectors: UInt64 { geometry.arraySectors }

    /// Features that change the layout of data or need replaying before data can be read.
    static let unsupported: [(MDFeatures, String)] = [
        (.reshapeActive, "reshape in progress"), (.journal, "write journal"), (.ppl, "partial parity log (PPL)"),
        (.multiplePPLs, "partial parity log (PPL)"), (.clustered, "clustered md"),
    ]

    public init(candidates: [AssemblyCandidate], force: Bool = false) throws {
        guard let first = candidates.first else { throw AssemblyError.noMembers }
        for c in candidates.dropFirst() where c.superblock.setUUID != first.superblock.setUUID {
            throw AssemblyError.differentArrays(
                "\(first.name) (array \(formatMDUUID(first.superblock.setUUID)))",
                "\(c.name) (array \(formatMDUUID(c.superblock.setUUID)))")
        }
        let freshestIndex = candidates.indices.max { candidates[$0].superblock.events < candidates[$1].superblock.events }!
        let sb = candidates[freshestIndex].superblock
        for (feature, name) in Self.unsupported where candidates.contains(where: { $0.superblock.featureMap.contains(feature) }) {
            throw AssemblyError.unsupportedFeature(name)
        }
        guard let level = RaidLevel(rawValue: sb.level) else { throw AssemblyError.unsupportedLevel(sb.level) }
        for c in candidates {
            let s = c.superblock
            var diffs: [String] = []
            if s.level != sb.level { diffs.append("level \(s.level) vs \(sb.level)") }
            if s.layout != sb.layout { diffs.append("layout \(s.layout) vs \(sb.layout)") }
            if s.chunkSectors != sb.chunkSectors { diffs.append("chunk \(s.chunkSectors) vs \(sb.chunkSectors) sectors") }
            if s.raidDisks != sb.raidDisks { diffs.append("raid devices \(s.raidDisks) vs \(sb.raidDisks)") }
            if s.sizeSectors != sb.sizeSectors { diffs.append("used size \(s.sizeSectors) vs \(sb.sizeSectors) sectors") }
            if !diffs.isEmpty {
                throw AssemblyError.inconsistentGeometry("\(c.name) vs \(candidates[freshestIndex].name): " + diffs.joined(separator: ", "))
            }
            if s.sizeSectors > s.dataSizeSectors {
                throw AssemblyError.memberTooSmall("\(c.name): array uses \(s.sizeSectors) sectors but the member holds \(s.dataSizeSectors)")
            }
        }
        do {
            geometry = try RaidGeometry(
                level: level, layout: RaidLayout(rawValue: sb.layout), raidDisks: Int(sb.raidDisks),
                chunkSectors: UInt64(sb.chunkSectors), memberDataSectors: sb.sizeSectors)
        } catch let error as GeometryError {
            throw AssemblyError.geometry(error)
        }

        var roles = [Int?](repeating: nil, count: Int(sb.raidDisks))
        var excluded: [(Int, ExclusionReason)] = []
        for (index, c) in candidates.enumerated() {
            let s = c.superblock
            // (Written without `events + 1`: a crafted superblock may carry the largest count.)
            if case .active = s.role, s.events < sb.events, sb.events - s.events > 1 {
                excluded.append((index, .stale(events: s.events, arrayEvents: sb.events)))
                continue
            }
            switch sb.role(ofDevNumber: s.devNumber) {
            case .spare, .journal:
                // The freshest view may not know a device that is itself fresh and active
                // (dev_number beyond the table); md treats that as spare too.
                excluded.append((index, .spare))
                continue
            case .faulty:
                excluded.append((index, .faulty))
                continue
            case .active(let slot):
                if s.role != .active(slot: slot) {
                    // Its own superblock disagrees with the array's view: it is not in sync.
                    excluded.append((index, .stale(events: s.events, arrayEvents: sb.events)))
                    continue
                }
                if s.isRecovering {
                    excluded.append((index, .recovering(rebuiltSectors: s.recoveryOffsetSectors)))
                    continue
                }
                guard slot < roles.count else {
                    throw AssemblyError.inconsistentGeometry("\(c.name) has role \(slot) but the array has \(roles.count) roles")
                }
                if let other = roles[slot] {
                    let o = candidates[other].superblock
                    if o.events == s.events {
                        throw AssemblyError.conflictingRoles(slot: slot, candidates[other].name, c.name)
                    }
                    let (keep, drop) = o.events > s.events ? (other, index) : (index, other)
                    roles[slot] = keep
                    excluded.append((drop, .duplicateRole(slot: slot, keptMember: candidates[keep].name)))
                } else {
                    roles[slot] = index
                }
            }
        }
        let missing = roles.indices.filter { roles[$0] == nil }
        if missing.count > level.maxDegraded {
            throw AssemblyError.tooManyMissing(missingRoles: missing, tolerated: level.maxDegraded, level: level)
        }
        if !missing.isEmpty && !sb.isClean && !force {
            throw AssemblyError.dirtyDegraded(missingRoles: missing)
        }
        superblock = sb
        memberForRole = roles
        self.excluded = excluded.sorted { $0.0 < $1.0 }.map { (index: $0.0, reason: $0.1) }
    }
}
