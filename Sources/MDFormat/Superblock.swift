/// md's all-ones sector value: "no limit" / "fully in sync" for `resync_offset`.
public let maxSector: UInt64 = .max

/// `feature_map` bits of the v1 superblock (md-format.md §1.3).
public struct MDFeatures: OptionSet, Sendable, Hashable, CustomStringConvertible {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    public static let bitmapOffset = MDFeatures(rawValue: 1)
    public static let recoveryOffset = MDFeatures(rawValue: 2)
    public static let reshapeActive = MDFeatures(rawValue: 4)
    public static let badBlocks = MDFeatures(rawValue: 8)
    public static let replacement = MDFeatures(rawValue: 16)
    public static let reshapeBackwards = MDFeatures(rawValue: 32)
    public static let newOffset = MDFeatures(rawValue: 64)
    public static let recoveryBitmap = MDFeatures(rawValue: 128)
    public static let clustered = MDFeatures(rawValue: 256)
    public static let journal = MDFeatures(rawValue: 512)
    public static let ppl = MDFeatures(rawValue: 1024)
    public static let multiplePPLs = MDFeatures(rawValue: 2048)
    public static let raid0Layout = MDFeatures(rawValue: 4096)

    /// Every bit the kernel knows (`MD_FEATURE_ALL`); anything else is rejected.
    public static let all = MDFeatures(rawValue: 0x1FFF)

    static let names: [(MDFeatures, String)] = [
        (.bitmapOffset, "bitmap"), (.recoveryOffset, "recovery-offset"), (.reshapeActive, "reshape in progress"),
        (.badBlocks, "bad-block list"), (.replacement, "replacement"), (.reshapeBackwards, "backwards reshape"),
        (.newOffset, "new-offset reshape"), (.recoveryBitmap, "bitmap-guided recovery"), (.clustered, "clustered md"),
        (.journal, "write journal"), (.ppl, "partial parity log (PPL)"), (.multiplePPLs, "multiple PPLs"),
        (.raid0Layout, "raid0 layout"),
    ]

    public var description: String {
        let parts = Self.names.filter { contains($0.0) }.map(\.1)
        return parts.isEmpty ? "none" : parts.joined(separator: ", ")
    }
}

/// What `dev_roles[dev_number]` says a device is.
public enum MDRole: Equatable, Hashable, Sendable, CustomStringConvertible {
    case active(slot: Int)
    case spare
    case faulty
    case journal

    public static let spareValue: UInt16 = 0xFFFF
    public static let faultyValue: UInt16 = 0xFFFE
    public static let journalValue: UInt16 = 0xFFFD
    /// Values below this are slot numbers (`MD_DISK_ROLE_MAX`).
    public static let maxSlotValue: UInt16 = 0xFF00

    public init(rawValue: UInt16) {
        switch rawValue {
        case Self.faultyValue: self = .faulty
        case Self.journalValue: self = .journal
        case let v where v < Self.maxSlotValue: self = .active(slot: Int(v))
        default: self = .spare
        }
    }

    public var rawValue: UInt16 {
        switch self {
        case .active(let slot): return UInt16(slot)
        case .spare: return Self.spareValue
        case .faulty: return Self.faultyValue
        case .journal: return Self.journalValue
        }
    }

    public var description: String {
        switch self {
        case .active(let slot): return "active \(slot)"
        case .spare: return "spare"
        case .faulty: return "faulty"
        case .journal: return "journal"
        }
    }
}

/// Where a v1.x superblock sits on a member; the minor version is implied by the location.
public enum MDMetadataVersion: String, Sendable, CaseIterable {
    case v1_0 = "1.0"
    case v1_1 = "1.1"
    case v1_2 = "1.2"

    /// Sector offset of the superblock on a device of `deviceSizeSectors`, or nil if the device
    /// is too small to hold one.
    public func superblockOffsetSectors(deviceSizeSectors: UInt64) -> UInt64? {
        guard deviceSizeSectors >= 24 else { return nil }
        switch self {
        case .v1_0: return (deviceSizeSectors - 16) & ~UInt64(7)
        case .v1_1: return 0
        case .v1_2: return 8
        }
    }

    /// How `mdadm --examine` names the version from `super_offset`.
    public init(superOffsetSectors: UInt64) {
        if superOffsetSectors <= 4 { self = .v1_1 } else if superOffsetSectors <= 8 { self = .v1_2 } else { self = .v1_0 }
    }
}

public enum MDFormatError: Error, Equatable, CustomStringConvertible {
    case truncated(what: String, needBytes: Int, haveBytes: Int)
    case badMagic(found: UInt32)
    case badMajorVersion(UInt32)
    case maxDevTooLarge(UInt32)
    case superOffsetMismatch(stored: UInt64, readAt: UInt64)
    case unknownFeatures(UInt32)
    case conflictingFeatures(String)
    case checksumMismatch(stored: UInt32, computed: UInt32)
    case nonZeroPadding(field: String)
    case invalidField(String)
    case deviceTooSmall(String)

    public var description: String {
        switch self {
        case .truncated(let what, let need, let have):
            return "truncated \(what): need \(need) bytes, have \(have)"
        case .badMagic(let found):
            return "no md superblock (magic is \(hex32(found)), expected a92b4efc)"
        case .badMajorVersion(let v): return "unsupported superblock major version \(v) (only 1.x is supported)"
        case .maxDevTooLarge(let v): return "superblock max_dev \(v) exceeds 1920"
        case .superOffsetMismatch(let stored, let readAt):
            return "superblock records super_offset \(stored) but was read at sector \(readAt)"
        case .unknownFeatures(let bits): return "unknown feature bits 0x\(String(bits, radix: 16)) in feature_map"
        case .conflictingFeatures(let what): return "invalid feature combination: \(what)"
        case .checksumMismatch(let stored, let computed):
            return "superblock checksum mismatch: stored \(hex32(stored)), computed \(hex32(computed))"
        case .nonZeroPadding(let field): return "superblock padding \(field) is not zero"
        case .invalidField(let what): return "invalid superblock: \(what)"
        case .deviceTooSmall(let what): return what
        }
    }
}

/// The md v1.x superblock (`struct mdp_superblock_1`), every field of md-format.md §1.2.
public struct MDSuperblock1: Equatable, Sendable {
    public static let magicValue: UInt32 = 0xa92b_4efc
    public static let headerBytes = 256
    /// The kernel reads 4 KiB at the superblock location.
    public static let readBytes = 4096
    public static let maxDevLimit: UInt32 = 1920

    public var magic: UInt32 = magicValue
    public var majorVersion: UInt32 = 1
    public var featureMap: MDFeatures = []
    public var pad0: UInt32 = 0
    public var setUUID: [UInt8] = .init(repeating: 0, count: 16)
    /// Raw 32 name bytes, NUL padded.
    public var setNameBytes: [UInt8] = .init(repeating: 0, count: 32)
    /// Raw: seconds in the low 40 bits, microseconds in the top 24.
    public var ctime: UInt64 = 0
    public var level: Int32 = 0
    public var layout: UInt32 = 0
    /// `size`: sectors of each member used for array data ("Used Dev Size").
    public var sizeSectors: UInt64 = 0
    public var chunkSectors: UInt32 = 0
    public var raidDisks: UInt32 = 0
    /// `bitmap_offset` (signed, relative to the superblock), or the PPL offset/size union.
    public var bitmapOffsetRaw: UInt32 = 0
    public var newLevel: UInt32 = 0
    public var reshapePositionSectors: UInt64 = 0
    public var deltaDisks: Int32 = 0
    public var newLayout: UInt32 = 0
    public var newChunkSectors: UInt32 = 0
    public var newOffsetSectors: Int32 = 0
    public var dataOffsetSectors: UInt64 = 0
    public var dataSizeSectors: UInt64 = 0
    public var superOffsetSectors: UInt64 = 0
    /// `recovery_offset` (or `journal_tail` on a journal device).
    public var recoveryOffsetSectors: UInt64 = 0
    public var devNumber: UInt32 = 0
    public var cntCorrectedRead: UInt32 = 0
    public var deviceUUID: [UInt8] = .init(repeating: 0, count: 16)
    public var devFlags: UInt8 = 0
    public var bblogShift: UInt8 = 0
    public var bblogSizeSectors: UInt16 = 0
    public var bblogOffsetSectors: Int32 = 0
    public var utime: UInt64 = 0
    public var events: UInt64 = 0
    public var resyncOffsetSectors: UInt64 = 0
    public var checksum: UInt32 = 0
    public var maxDev: UInt32 = 0
    public var pad3: [UInt8] = .init(repeating: 0, count: 32)
    public var devRoles: [UInt16] = []

    public init() {}

    // MARK: derived values

    public var bitmapOffsetSectors: Int32 { Int32(bitPattern: bitmapOffsetRaw) }
    public var pplOffsetSectors: Int16 { Int16(bitPattern: UInt16(truncatingIfNeeded: bitmapOffsetRaw)) }
    public var pplSizeSectors: UInt16 { UInt16(truncatingIfNeeded: bitmapOffsetRaw >> 16) }

    /// The array name (set_name up to its first NUL).
    public var setName: String {
        let end = setNameBytes.firstIndex(of: 0) ?? setNameBytes.count
        return String(decoding: setNameBytes[..<end], as: UTF8.self)
    }

    public mutating func setName(_ name: String) {
        var bytes = Array(name.utf8.prefix(32))
        bytes += [UInt8](repeating: 0, count: 32 - bytes.count)
        setNameBytes = bytes
    }

    public static let timeSecondsMask: UInt64 = 0xFF_FFFF_FFFF
    public var ctimeSeconds: UInt64 { ctime & Self.timeSecondsMask }
    public var utimeSeconds: UInt64 { utime & Self.timeSecondsMask }

    public var metadataVersion: MDMetadataVersion { MDMetadataVersion(superOffsetSectors: superOffsetSectors) }

    /// Role of the device with permanent slot index `devNumber` in this superblock's view.
    public func role(ofDevNumber number: UInt32) -> MDRole {
        guard Int(number) < devRoles.count else { return .spare }
        return MDRole(rawValue: devRoles[Int(number)])
    }

    /// This device's own role as recorded in its superblock.
    public var role: MDRole { role(ofDevNumber: devNumber) }

    /// True when the device has a role but is only rebuilt up to `recoveryOffsetSectors`.
    public var isRecovering: Bool { featureMap.contains(.recoveryOffset) }

    /// md's "clean": no write may have been in flight at the last superblock update.
    public var isClean: Bool { resyncOffsetSectors == maxSector }

    /// Bytes the superblock covers: the fixed header and `dev_roles`.
    public var coveredBytes: Int { Self.headerBytes + 2 * Int(maxDev) }

    /// Bytes mdadm writes: the covered size rounded up to a sector.
    public var writtenBytes: Int { (coveredBytes + 511) / 512 * 512 }

    // MARK: checksum

    /// `calc_sb_1_csum`: sum of the le32 words (a trailing le16 if max_dev is odd) over the covered
    /// bytes with the checksum field taken as zero, folded once to 32 bits.
    public static func computeChecksum(_ bytes: [UInt8], maxDev: UInt32) -> UInt32 {
        let length = headerBytes + 2 * Int(maxDev)
        precondition(bytes.count >= length)
        var sum: UInt64 = 0
        var offset = 0
        while length - offset >= 4 {
            if offset != 216 { sum &+= UInt64(bytes.le32(offset)) }
            offset += 4
        }
        if length - offset == 2 { sum &+= UInt64(bytes.le16(offset)) }
        return UInt32(truncatingIfNeeded: (sum & 0xFFFF_FFFF) &+ (sum >> 32))
    }

    // MARK: decoding

    /// Decodes the fields without judging them (see `validate`), so that a damaged superblock can
    /// still be shown. Fails only when the bytes cannot hold one.
    public init(decoding bytes: [UInt8]) throws {
        guard bytes.count >= Self.headerBytes else {
            throw MDFormatError.truncated(what: "superblock", needBytes: Self.headerBytes, haveBytes: bytes.count)
        }
        magic = bytes.le32(0)
        guard magic == Self.magicValue else { throw MDFormatError.badMagic(found: magic) }
        majorVersion = bytes.le32(4)
        featureMap = MDFeatures(rawValue: bytes.le32(8))
        pad0 = bytes.le32(12)
        setUUID = bytes.bytes(16, 16)
        setNameBytes = bytes.bytes(32, 32)
        ctime = bytes.le64(64)
        level = Int32(bitPattern: bytes.le32(72))
        layout = bytes.le32(76)
        sizeSectors = bytes.le64(80)
        chunkSectors = bytes.le32(88)
        raidDisks = bytes.le32(92)
        bitmapOffsetRaw = bytes.le32(96)
        newLevel = bytes.le32(100)
        reshapePositionSectors = bytes.le64(104)
        deltaDisks = Int32(bitPattern: bytes.le32(112))
        newLayout = bytes.le32(116)
        newChunkSectors = bytes.le32(120)
        newOffsetSectors = Int32(bitPattern: bytes.le32(124))
        dataOffsetSectors = bytes.le64(128)
        dataSizeSectors = bytes.le64(136)
        superOffsetSectors = bytes.le64(144)
        recoveryOffsetSectors = bytes.le64(152)
        devNumber = bytes.le32(160)
        cntCorrectedRead = bytes.le32(164)
        deviceUUID = bytes.bytes(168, 16)
        devFlags = bytes[184]
        bblogShift = bytes[185]
        bblogSizeSectors = bytes.le16(186)
        bblogOffsetSectors = Int32(bitPattern: bytes.le32(188))
        utime = bytes.le64(192)
        events = bytes.le64(200)
        resyncOffsetSectors = bytes.le64(208)
        checksum = bytes.le32(216)
        maxDev = bytes.le32(220)
        pad3 = bytes.bytes(224, 32)
        guard maxDev <= Self.maxDevLimit else { throw MDFormatError.maxDevTooLarge(maxDev) }
        let need = Self.headerBytes + 2 * Int(maxDev)
        guard bytes.count >= need else {
            throw MDFormatError.truncated(what: "superblock dev_roles", needBytes: need, haveBytes: bytes.count)
        }
        devRoles = (0..<Int(maxDev)).map { bytes.le16(Self.headerBytes + 2 * $0) }
        computedChecksum = Self.computeChecksum(bytes, maxDev: maxDev)
        storedChecksumIsValid = computedChecksum == checksum
    }

    /// Whether the checksum stored in the decoded bytes matched them (not compared by `==`).
    public private(set) var storedChecksumIsValid = true
    /// The checksum the decoded bytes should have carried.
    public private(set) var computedChecksum: UInt32 = 0

    public static func == (a: MDSuperblock1, b: MDSuperblock1) -> Bool {
        a.encode(updatingChecksum: false) == b.encode(updatingChecksum: false)
    }

    /// The kernel's load-time checks (`super_1_load`, md-format.md §1.9) for a superblock read at
    /// sector `readAtSectors` of a device of `deviceSizeSectors`.
    public func validate(readAtSectors: UInt64, deviceSizeSectors: UInt64) throws {
        guard magic == Self.magicValue else { throw MDFormatError.badMagic(found: magic) }
        guard majorVersion == 1 else { throw MDFormatError.badMajorVersion(majorVersion) }
        guard maxDev <= Self.maxDevLimit else { throw MDFormatError.maxDevTooLarge(maxDev) }
        guard superOffsetSectors == readAtSectors else {
            throw MDFormatError.superOffsetMismatch(stored: superOffsetSectors, readAt: readAtSectors)
        }
        let unknown = featureMap.rawValue & ~MDFeatures.all.rawValue
        guard unknown == 0 else { throw MDFormatError.unknownFeatures(unknown) }
        if !featureMap.isDisjoint(with: [.ppl, .multiplePPLs]) && !featureMap.isDisjoint(with: [.bitmapOffset, .journal]) {
            throw MDFormatError.conflictingFeatures("PPL together with a bitmap or journal")
        }
        if featureMap.isSuperset(of: [.ppl, .multiplePPLs]) {
            throw MDFormatError.conflictingFeatures("PPL together with multiple PPLs")
        }
        guard storedChecksumIsValid else {
            throw MDFormatError.checksumMismatch(stored: checksum, computed: computedChecksum)
        }
        guard dataSizeSectors >= 10 else { throw MDFormatError.invalidField("data_size \(dataSizeSectors) is below 10 sectors") }
        guard pad0 == 0 else { throw MDFormatError.nonZeroPadding(field: "pad0") }
        guard pad3.allSatisfy({ $0 == 0 }) else { throw MDFormatError.nonZeroPadding(field: "pad3") }
        let superblockSectors = UInt64((coveredBytes + 511) / 512)
        if metadataVersion != .v1_0 {
            guard dataOffsetSectors >= superOffsetSectors + superblockSectors else {
                throw MDFormatError.invalidField("data_offset \(dataOffsetSectors) overlaps the superblock")
            }
            if featureMap.contains(.newOffset) {
                // Checked arithmetic on crafted offsets: an offset past Int64 is no offset.
                guard dataOffsetSectors <= UInt64(Int64.max),
                    case let (newStart, overflow) = Int64(dataOffsetSectors).addingReportingOverflow(Int64(newOffsetSectors)), !overflow,
                    newStart >= Int64(superOffsetSectors + superblockSectors)
                else {
                    throw MDFormatError.invalidField("new data offset overlaps the superblock")
                }
            }
            guard deviceSizeSectors >= dataOffsetSectors, deviceSizeSectors - dataOffsetSectors >= dataSizeSectors else {
                throw MDFormatError.deviceTooSmall(
                    "device is \(deviceSizeSectors) sectors but the superblock needs \(dataOffsetSectors.addingReportingOverflow(dataSizeSectors).overflow ? "more" : "\(dataOffsetSectors + dataSizeSectors)") (data_offset \(dataOffsetSectors) + data_size \(dataSizeSectors)): image truncated?")
            }
        } else {
            // 1.0 keeps its superblock at the end: the data, from data_offset, must end before it.
            let (dataEnd, overflow) = dataOffsetSectors.addingReportingOverflow(dataSizeSectors)
            guard !overflow, dataEnd <= superOffsetSectors else {
                throw MDFormatError.invalidField("data (data_offset \(dataOffsetSectors) + data_size \(dataSizeSectors)) runs into the 1.0 superblock at \(superOffsetSectors)")
            }
        }
        if featureMap.contains(.raid0Layout) && level != 0 {
            throw MDFormatError.conflictingFeatures("raid0 layout flag on a level \(level) array")
        }
        if featureMap.contains(.badBlocks) && (bblogOffsetSectors == 0 || bblogSizeSectors > 8) {
            throw MDFormatError.invalidField("bad-block log flagged but its location is invalid")
        }
    }

    // MARK: encoding

    /// The superblock bytes as mdadm writes them (`writtenBytes` long), with the checksum
    /// recomputed unless `updatingChecksum` is false.
    public func encode(updatingChecksum: Bool = true) -> [UInt8] {
        var b = [UInt8](repeating: 0, count: max(writtenBytes, Self.headerBytes))
        b.putLE32(magic, at: 0)
        b.putLE32(majorVersion, at: 4)
        b.putLE32(featureMap.rawValue, at: 8)
        b.putLE32(pad0, at: 12)
        b.replaceSubrange(16..<32, with: setUUID)
        b.replaceSubrange(32..<64, with: setNameBytes)
        b.putLE64(ctime, at: 64)
        b.putLE32(UInt32(bitPattern: level), at: 72)
        b.putLE32(layout, at: 76)
        b.putLE64(sizeSectors, at: 80)
        b.putLE32(chunkSectors, at: 88)
        b.putLE32(raidDisks, at: 92)
        b.putLE32(bitmapOffsetRaw, at: 96)
        b.putLE32(newLevel, at: 100)
        b.putLE64(reshapePositionSectors, at: 104)
        b.putLE32(UInt32(bitPattern: deltaDisks), at: 112)
        b.putLE32(newLayout, at: 116)
        b.putLE32(newChunkSectors, at: 120)
        b.putLE32(UInt32(bitPattern: newOffsetSectors), at: 124)
        b.putLE64(dataOffsetSectors, at: 128)
        b.putLE64(dataSizeSectors, at: 136)
        b.putLE64(superOffsetSectors, at: 144)
        b.putLE64(recoveryOffsetSectors, at: 152)
        b.putLE32(devNumber, at: 160)
        b.putLE32(cntCorrectedRead, at: 164)
        b.replaceSubrange(168..<184, with: deviceUUID)
        b[184] = devFlags
        b[185] = bblogShift
        b.putLE16(bblogSizeSectors, at: 186)
        b.putLE32(UInt32(bitPattern: bblogOffsetSectors), at: 188)
        b.putLE64(utime, at: 192)
        b.putLE64(events, at: 200)
        b.putLE64(resyncOffsetSectors, at: 208)
        b.putLE32(checksum, at: 216)
        b.putLE32(maxDev, at: 220)
        b.replaceSubrange(224..<256, with: pad3)
        precondition(devRoles.count == Int(maxDev), "dev_roles must have max_dev entries")
        for (i, role) in devRoles.enumerated() { b.putLE16(role, at: Self.headerBytes + 2 * i) }
        if updatingChecksum { b.putLE32(Self.computeChecksum(b, maxDev: maxDev), at: 216) }
        return b
    }

    /// A copy whose stored checksum matches its fields.
    public func withValidChecksum() -> MDSuperblock1 {
        // Decoding our own encoding cannot fail.
        try! MDSuperblock1(decoding: encode(updatingChecksum: true))
    }
}
