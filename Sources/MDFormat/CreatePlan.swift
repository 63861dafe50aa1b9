/// mdadm's create-time placement rules (md-format.md §1.8, §2.3, §5.1), as functions of sizes.
public enum MDCreateDefaults {
    public static let defaultChunkKiB: UInt64 = 512
    public static let defaultBitmapChunkBytes: UInt64 = 64 << 20
    public static let bitmapDaemonSleepSeconds: UInt32 = 5
    public static let bblogSizeSectors: UInt16 = 8
    /// mdadm 4.2 adds an internal bitmap by itself above this per-member size (100 GiB).
    public static let autoBitmapThresholdSectors: UInt64 = 100 * 1024 * 1024 * 2
    static let gibSectors: UInt64 = 2 * 1024 * 1024

    /// `choose_bm_space`: sectors reserved after the superblock for a bitmap.
    public static func bitmapSpaceSectors(deviceSizeSectors devsize: UInt64) -> UInt64 {
        if devsize < 128 { return 0 }
        if devsize - 128 >= 200 * gibSectors { return 256 }
        if devsize - 8 > 8 * gibSectors { return 128 }
        return 8
    }

    /// mdadm's default 1.1/1.2 `data_offset` for a device of `deviceSizeSectors`: room for the
    /// bitmap plus a headroom of ~0.1 % of the device (at least two chunks), rounded to 1 MiB.
    public static func dataOffsetSectors(deviceSizeSectors devsize: UInt64, chunkKiB: UInt64) -> UInt64 {
        let bmspace = bitmapSpaceSectors(deviceSizeSectors: devsize)
        var headroom: UInt64 = 262_144
        while (headroom << 10) > devsize && (chunkKiB == 0 || headroom / 2 >= chunkKiB * 2 * 2) {
            headroom >>= 1
        }
        return (24 + bmspace + headroom + 2047) / 2048 * 2048
    }

    /// `add_internal_bitmap1`'s default chunk for a member data size of `sizeSectors`.
    public static func bitmapChunkBytes(sizeSectors: UInt64) -> UInt64 {
        let room = min(256, bitmapSpaceSectors(deviceSizeSectors: sizeSectors))
        let maxBits = (room * 512 - 256) * 8
        var chunk: UInt64 = 4096
        var bits = sizeSectors * 512 / 4096 + 1
        while bits > maxBits {
            chunk *= 2
            bits = (bits + 1) / 2
        }
        return max(chunk, defaultBitmapChunkBytes)
    }

    /// `max_dev` for an array of `deviceCount` devices: the roles table fills a 512-byte multiple.
    public static func maxDev(deviceCount: Int) -> UInt32 {
        UInt32(((256 + 2 * deviceCount + 511) / 512 * 512 - 256) / 2)
    }

    /// set_name as mdadm builds it: `homehost:name` when that fits, else the name alone.
    public static func setName(name: String, homehost: String?) -> String {
        if let host = homehost, !host.isEmpty, !name.contains(":"), host.utf8.count + 1 + name.utf8.count < 32 {
            return host + ":" + name
        }
        return String(decoding: name.utf8.prefix(31), as: UTF8.self)
    }
}

public enum BitmapChoice: Equatable, Sendable {
    case none
    case internal_
    /// mdadm 4.2's default: internal when each member holds more than 100 GiB.
    case auto
}

/// What `swraid create` was asked for, in md's units.
public struct CreateRequest: Sendable {
    public var level: RaidLevel
    public var raidDisks: Int
    public var chunkKiB: UInt64 = MDCreateDefaults.defaultChunkKiB
    public var layout: RaidLayout = .leftSymmetric
    public var bitmap: BitmapChoice = .auto
    public var bitmapChunkBytes: UInt64? = nil
    /// `--size`: sectors of each member to use; nil = as much as the smallest member allows.
    public var sizeSectors: UInt64? = nil
    public var name: String = "0"
    public var homehost: String? = nil
    /// `--data-offset`: sectors before the data (default: mdadm 4.2's choice from the size).
    public var dataOffsetSectors: UInt64? = nil
    /// Existing member sizes in sectors, nil for a member file that is yet to be created.
    public var memberSizesSectors: [UInt64?]
    /// Random bytes supplied by the caller (the format layer draws none itself).
    public var arrayUUID: [UInt8]
    public var deviceUUIDs: [[UInt8]]
    public var timeSeconds: UInt64

    public init(level: RaidLevel, raidDisks: Int, memberSizesSectors: [UInt64?], arrayUUID: [UInt8], deviceUUIDs: [[UInt8]], timeSeconds: UInt64) {
        self.level = level
        self.raidDisks = raidDisks
        self.memberSizesSectors = memberSizesSectors
        self.arrayUUID = arrayUUID
        self.deviceUUIDs = deviceUUIDs
        self.timeSeconds = timeSeconds
    }
}

public enum CreateError: Error, Equatable, CustomStringConvertible {
    case wrongMemberCount(given: Int, raidDisks: Int)
    case invalidChunk(String)
    case invalidLayout(String)
    case geometry(GeometryError)
    case sizeNeeded(member: Int)
    case memberTooSmall(member: Int, haveSectors: UInt64, needSectors: UInt64)
    case invalidBitmapChunk(UInt64)
    case bitmapDoesNotFit(bits: Int, roomSectors: UInt64)
    case invalidName(String)
    case invalidSize(String)
    /// `add`: every device number of the roles table is taken.
    case noFreeDeviceNumber(maxDev: UInt32)
    /// `add`: the new device cannot hold the array's member data.
    case spareTooSmall(haveSectors: UInt64, needSectors: UInt64)

    public var description: String {
        switch self {
        case .wrongMemberCount(let given, let n): return "\(given) members given for --raid-devices \(n)"
        case .invalidChunk(let what): return what
        case .invalidLayout(let what): return what
        case .geometry(let error): return error.description
        case .sizeNeeded(let member):
            return "member \(member + 1) does not exist: give --size so swraid knows how large to make it"
        case .memberTooSmall(let member, let have, let need):
            return "member \(member + 1) is too small: \(have) sectors, need at least \(need)"
        case .invalidBitmapChunk(let bytes): return "bitmap chunk \(bytes) bytes must be a power of two of at least 4K"
        case .bitmapDoesNotFit(let bits, let room):
            return "a bitmap of \(bits) bits does not fit in \(room) sectors: use a larger --bitmap-chunk"
        case .invalidName(let what): return what
        case .invalidSize(let what): return what
        case .noFreeDeviceNumber(let maxDev): return "no free device number: the roles table holds \(maxDev) devices"
        case .spareTooSmall(let have, let need): return "the new device is too small: \(have) sectors, need at least \(need)"
        }
    }
}

/// Everything `create` writes: per member its size, superblock and bitmap area.
public struct CreatePlan: Sendable {
    public let geometry: RaidGeometry
    public let dataOffsetSectors: UInt64
    /// Final size of each member device in sectors (new files are created this large).
    public let memberSizesSectors: [UInt64]
    /// Superblocks as written once the array is consistent (clean).
    public let superblocks: [MDSuperblock1]
    /// Bitmap superblock, if the array has an internal bitmap.
    public let bitmap: MDBitmapSuperblock?
    /// Bitmap area bytes (header + bits, rounded to 4 KiB) written at `sb_start + bitmapOffset`.
    public let bitmapAreaBytes: [UInt8]?

    public init(_ request: CreateRequest, clean: Bool = true) throws {
        let n = request.raidDisks
        guard request.memberSizesSectors.count == n else {
            throw CreateError.wrongMemberCount(given: request.memberSizesSectors.count, raidDisks: n)
        }
        guard n >= request.level.minimumRaidDisks else {
            throw CreateError.geometry(.tooFewDisks(level: request.level, raidDisks: n))
        }
        let chunkKiB = request.chunkKiB
        guard chunkKiB >= 4, chunkKiB & (chunkKiB - 1) == 0, chunkKiB <= 512 * 1024 else {
            throw CreateError.invalidChunk("invalid chunk size \(chunkKiB)K: must be a power of two from 4K up")
        }
        let chunkSectors = chunkKiB * 2
        if let size = request.sizeSectors, size < chunkSectors {
            throw CreateError.invalidSize("invalid --size: \(size / 2)K is less than one chunk (\(chunkKiB)K)")
        }
        guard !request.name.isEmpty, request.name.utf8.count <= 31, !request.name.contains("\0") else {
            throw CreateError.invalidName("invalid array name '\(request.name)': 1 to 31 bytes")
        }
        // raid4 has one placement (parity on the last disk); mdadm records its layout as 0.
        let storedLayout = request.level == .raid4 ? RaidLayout(rawValue: 0) : request.layout
        guard request.level == .raid4 || RaidLayout.valid(for: request.level).contains(request.layout) else {
            throw CreateError.invalidLayout("layout \(request.layout.rawValue) is not valid for \(request.level)")
        }
        let superOffset: UInt64 = 8

        // data_offset from the first device (mdadm uses the first device for all). A device that
        // does not exist yet is sized as data_offset + size, so iterate to a fixed point.
        let requestedSize = request.sizeSectors.map { $0 / chunkSectors * chunkSectors }
        if let forced = request.dataOffsetSectors, forced < 24 {
            throw CreateError.invalidChunk("data offset \(forced) sectors leaves no room for the superblock")
        }
        let firstSize: UInt64
        if let existing = request.memberSizesSectors[0] {
            firstSize = existing
        } else {
            guard let size = requestedSize else { throw CreateError.sizeNeeded(member: 0) }
            var offset = request.dataOffsetSectors ?? MDCreateDefaults.dataOffsetSectors(deviceSizeSectors: size, chunkKiB: chunkKiB)
            for _ in 0..<4 where request.dataOffsetSectors == nil {
                offset = MDCreateDefaults.dataOffsetSectors(deviceSizeSectors: size + offset, chunkKiB: chunkKiB)
            }
            firstSize = size + offset
        }
        let dataOffset = request.dataOffsetSectors ?? MDCreateDefaults.dataOffsetSectors(deviceSizeSectors: firstSize, chunkKiB: chunkKiB)

        var devSizes: [UInt64] = []
        for (i, existing) in request.memberSizesSectors.enumerated() {
            if let existing {
                devSizes.append(existing)
            } else {
                guard let size = requestedSize else { throw CreateError.sizeNeeded(member: i) }
                devSizes.append(dataOffset + size)
            }
        }
        let minAvail = devSizes.map { $0 > dataOffset ? $0 - dataOffset : 0 }.min()!
        let size: UInt64
        if let requested = requestedSize {
            size = requested
        } else {
            size = minAvail / chunkSectors * chunkSectors
        }
        for (i, dev) in devSizes.enumerated() where dev < dataOffset + max(size, chunkSectors) {
            throw CreateError.memberTooSmall(member: i, haveSectors: dev, needSectors: dataOffset + max(size, chunkSectors))
        }
        guard size >= chunkSectors else {
            throw CreateError.memberTooSmall(member: 0, haveSectors: devSizes[0], needSectors: dataOffset + chunkSectors)
        }
        do {
            geometry = try RaidGeometry(
                level: request.level, layout: storedLayout, raidDisks: n, chunkSectors: chunkSectors, memberDataSectors: size)
        } catch let error as GeometryError {
            throw CreateError.geometry(error)
        }

        // Bitmap: 4 KiB-rounded area right after the superblock (bitmap_offset +8).
        let wantBitmap: Bool
        switch request.bitmap {
        case .none: wantBitmap = false
        case .internal_: wantBitmap = true
        case .auto: wantBitmap = size > MDCreateDefaults.autoBitmapThresholdSectors
        }
        var bitmap: MDBitmapSuperblock? = nil
        var bitmapArea: [UInt8]? = nil
        let bitmapOffset: UInt64 = 8
        var bitmapSpace: UInt64 = 0
        if wantBitmap {
            let chunkBytes = request.bitmapChunkBytes ?? MDCreateDefaults.bitmapChunkBytes(sizeSectors: size)
            guard chunkBytes >= 4096, chunkBytes & (chunkBytes - 1) == 0, chunkBytes <= 1 << 31 else {
                throw CreateError.invalidBitmapChunk(chunkBytes)
            }
            var b = MDBitmapSuperblock()
            b.uuid = request.arrayUUID
            b.syncSizeSectors = size
            b.chunkSizeBytes = UInt32(chunkBytes)
            b.daemonSleepSeconds = MDCreateDefaults.bitmapDaemonSleepSeconds
            let areaBytes = (b.usedBytes + 4095) / 4096 * 4096
            bitmapSpace = UInt64(areaBytes / 512)
            let room = dataOffset - superOffset - bitmapOffset
            guard bitmapSpace <= room else { throw CreateError.bitmapDoesNotFit(bits: b.bitCount, roomSectors: room) }
            var area = b.encode() + [UInt8](repeating: 0, count: areaBytes - MDBitmapSuperblock.headerBytes)
            if !clean {
                // An array that still needs its initial sync has every region dirty.
                for i in 0..<((b.bitCount + 7) / 8) { area[MDBitmapSuperblock.headerBytes + i] = 0xFF }
            }
            bitmap = b
            bitmapArea = area
        }

        // Bad-block log after the bitmap space (mdadm: bm_space = bitmap size, else choose_bm_space).
        let bmSpace = wantBitmap ? bitmapSpace : MDCreateDefaults.bitmapSpaceSectors(deviceSizeSectors: size)
        var bblogOffset: Int32 = 0
        var bblogSize: UInt16 = 0
        if dataOffset >= superOffset + bitmapOffset + bmSpace + 8 {
            bblogOffset = Int32(bitmapOffset + bmSpace)
            bblogSize = MDCreateDefaults.bblogSizeSectors
        } else if dataOffset >= superOffset + 16 {
            bblogOffset = Int32(dataOffset - 8 - superOffset)
            bblogSize = MDCreateDefaults.bblogSizeSectors
        }

        let setName = MDCreateDefaults.setName(name: request.name, homehost: request.homehost)
        guard setName.utf8.count <= 31 else { throw CreateError.invalidName("array name too long") }
        let maxDev = MDCreateDefaults.maxDev(deviceCount: n)
        var roles = [UInt16](repeating: MDRole.spareValue, count: Int(maxDev))
        for i in 0..<n { roles[i] = UInt16(i) }

        var superblocks: [MDSuperblock1] = []
        for i in 0..<n {
            var sb = MDSuperblock1()
            sb.featureMap = wantBitmap ? .bitmapOffset : []
            sb.setUUID = request.arrayUUID
            sb.setName(setName)
            sb.ctime = request.timeSeconds & MDSuperblock1.timeSecondsMask
            sb.utime = sb.ctime
            sb.level = request.level.rawValue
            sb.layout = storedLayout.rawValue
            sb.sizeSectors = size
            sb.chunkSectors = UInt32(chunkSectors)
            sb.raidDisks = UInt32(n)
            sb.bitmapOffsetRaw = wantBitmap ? UInt32(bitmapOffset) : 0
            sb.dataOffsetSectors = dataOffset
            sb.dataSizeSectors = devSizes[i] - dataOffset
            sb.superOffsetSectors = superOffset
            sb.devNumber = UInt32(i)
            sb.deviceUUID = request.deviceUUIDs[i]
            sb.bblogSizeSectors = bblogSize
            sb.bblogOffsetSectors = bblogOffset
            sb.events = 0
            sb.resyncOffsetSectors = clean ? maxSector : 0
            sb.maxDev = maxDev
            sb.devRoles = roles
            superblocks.append(sb.withValidChecksum())
        }
        self.dataOffsetSectors = dataOffset
        self.memberSizesSectors = devSizes
        self.superblocks = superblocks
        self.bitmap = bitmap
        self.bitmapAreaBytes = bitmapArea
    }
}

extension MDSuperblock1 {
    /// The superblock `mdadm --add` writes on a new device joining this array as a spare: the
    /// array's fields from `template` (a current member's superblock), this device's own number,
    /// UUID, size and placement (the same data offset; for v1.0 the superblock at the device's
    /// end with the same room after the data as the template keeps), role spare.
    public static func spare(
        from template: MDSuperblock1, devNumber: UInt32, deviceUUID: [UInt8], deviceSizeSectors: UInt64, events: UInt64,
        timeSeconds: UInt64
    ) throws -> MDSuperblock1 {
        guard devNumber < template.maxDev else { throw CreateError.noFreeDeviceNumber(maxDev: template.maxDev) }
        var sb = template
        sb.devNumber = devNumber
        sb.deviceUUID = deviceUUID
        sb.events = events
        sb.utime = timeSeconds & MDSuperblock1.timeSecondsMask
        sb.recoveryOffsetSectors = 0
        sb.cntCorrectedRead = 0
        sb.featureMap = template.featureMap.subtracting([.recoveryOffset, .recoveryBitmap])
        switch template.metadataVersion {
        case .v1_1, .v1_2:
            guard deviceSizeSectors > template.dataOffsetSectors else {
                throw CreateError.spareTooSmall(haveSectors: deviceSizeSectors, needSectors: template.dataOffsetSectors + template.sizeSectors)
            }
            sb.dataSizeSectors = deviceSizeSectors - template.dataOffsetSectors
        case .v1_0:
            let tail = template.superOffsetSectors - (template.dataOffsetSectors + template.dataSizeSectors)
            guard let at = MDMetadataVersion.v1_0.superblockOffsetSectors(deviceSizeSectors: deviceSizeSectors),
                at > tail + template.dataOffsetSectors
            else {
                throw CreateError.spareTooSmall(haveSectors: deviceSizeSectors, needSectors: template.sizeSectors + tail + 16)
            }
            sb.superOffsetSectors = at
            sb.dataSizeSectors = at - tail - template.dataOffsetSectors
        }
        guard sb.dataSizeSectors >= template.sizeSectors else {
            throw CreateError.spareTooSmall(haveSectors: deviceSizeSectors, needSectors: deviceSizeSectors - sb.dataSizeSectors + template.sizeSectors)
        }
        var roles = template.devRoles
        if Int(devNumber) < roles.count { roles[Int(devNumber)] = MDRole.spareValue }
        sb.devRoles = roles
        return sb.withValidChecksum()
    }
}
