/// `mdadm --examine` output for a v1.x member: the same labels, order and conditions as mdadm
/// 4.2's `examine_super1`, so that scripts and eyes trained on mdadm read it unchanged.
public struct ExamineReport: Sendable {
    public let superblock: MDSuperblock1
    public let deviceSizeSectors: UInt64
    public let bitmap: MDBitmapSuperblock?
    /// Host name for the "(local to host X)" note; mdadm uses the machine's host name.
    public let homehost: String?

    public init(superblock: MDSuperblock1, deviceSizeSectors: UInt64, bitmap: MDBitmapSuperblock? = nil, homehost: String? = nil) {
        self.superblock = superblock
        self.deviceSizeSectors = deviceSizeSectors
        self.bitmap = bitmap
        self.homehost = homehost
    }

    /// mdadm's level names.
    public static func levelName(_ level: Int32) -> String {
        switch level {
        case -4: return "multipath"
        case -1: return "linear"
        case 0: return "raid0"
        case 1: return "raid1"
        case 4: return "raid4"
        case 5: return "raid5"
        case 6: return "raid6"
        case 10: return "raid10"
        default: return "-unknown-"
        }
    }

    /// mdadm's `human_size`: nothing below 5000 KiB, then MiB/MB under 2 GiB, GiB/GB under 2 TiB,
    /// then TiB/TB, each with two decimals rounded half up.
    public static func humanSize(bytes: UInt64) -> String {
        func pair(_ unit: UInt64, _ decimalUnit: UInt64, _ name: String, _ decimalName: String) -> String {
            // bytes * 200 / unit, in two parts so that no size overflows (a crafted superblock
            // may claim any).
            let c = (bytes / unit * 200 + bytes % unit * 200 / unit + 1) / 2
            let d = (bytes / (decimalUnit / 200) + 1) / 2
            return " (\(c / 100).\(twoDigits(c % 100)) \(name) \(d / 100).\(twoDigits(d % 100)) \(decimalName))"
        }
        if bytes < 5000 * 1024 { return "" }
        if bytes < 2 << 30 { return pair(1 << 20, 1_000_000, "MiB", "MB") }
        if bytes < 2 << 40 { return pair(1 << 30, 1_000_000_000, "GiB", "GB") }
        return pair(1 << 40, 1_000_000_000_000, "TiB", "TB")
    }

    /// Array capacity in sectors as examine computes it (nil when it prints no Array Size).
    public static func arraySizeSectors(_ sb: MDSuperblock1) -> UInt64? {
        guard sb.level > 0 else { return nil }
        let n = UInt64(sb.raidDisks)
        var denominator: UInt64 = 1
        let dataDisks: UInt64
        switch sb.level {
        case 1: dataDisks = 1
        case 4, 5: dataDisks = n >= 1 ? n - 1 : 0
        case 6: dataDisks = n >= 2 ? n - 2 : 0
        case 10:
            dataDisks = n
            denominator = UInt64(sb.layout & 0xFF) * UInt64((sb.layout >> 8) & 0xFF)
        default: dataDisks = 0
        }
        guard dataDisks > 0, denominator > 0 else { return nil }
        // Wrapping, as mdadm's unsigned arithmetic does, for a crafted size.
        return sb.sizeSectors &* dataDisks / denominator
    }

    static func twoDigits(_ v: UInt64) -> String { v < 10 ? "0\(v)" : "\(v)" }

    /// `Unused Space` before and after the data, computed as mdadm 4.2's `getinfo_super1` does
    /// (quirks included: the bitmap end is taken relative to the superblock, and `after` wraps on
    /// a device shorter than the data). nil when mdadm hides the line.
    public var unusedSpace: (before: UInt64, after: UInt64)? {
        let sb = superblock
        if sb.featureMap.contains(.newOffset) { return nil }
        // In mdadm's C integer arithmetic: two's complement, wrapping. A crafted superblock may
        // carry any offsets; the line is then nonsense, as mdadm's is, but nothing traps.
        let so = Int64(bitPattern: sb.superOffsetSectors)
        let dataOffset = Int64(bitPattern: sb.dataOffsetSectors)
        let ds = Int64(bitPattern: sb.level > 0 ? sb.sizeSectors : sb.dataSizeSectors)
        let bo: Int64 = sb.featureMap.contains(.bitmapOffset) ? Int64(sb.bitmapOffsetSectors) : 0
        let hasPPL = !sb.featureMap.isDisjoint(with: [.ppl, .multiplePPLs]) && !sb.featureMap.contains(.bitmapOffset)
        let po: Int64 = hasPPL ? Int64(sb.pplOffsetSectors) : 0
        let ps: Int64 = hasPPL ? Int64(sb.pplSizeSectors) : 0
        let hasBBLog = sb.bblogOffsetSectors != 0 && sb.bblogSizeSectors != 0
        var before: UInt64
        var after: UInt64
        if dataOffset < so {
            before = UInt64(bitPattern: dataOffset)
            var end = so
            if hasBBLog { end = min(end, so &+ Int64(sb.bblogOffsetSectors)) }
            if so &+ bo &+ po < end { end = so &+ bo &+ po }
            after = dataOffset &+ ds < end ? UInt64(bitPattern: end &- ds &- dataOffset) : 0
        } else {
            var earliest = so &+ 72
            if bo > 0 {
                let used = bitmap?.usedBytes ?? 0
                let bitmapSectors = Int64((used / 4096 + (used % 4096 == 0 ? 0 : 1)) * 8)
                earliest = max(earliest, bo &+ bitmapSectors)
            } else if po > 0 {
                earliest = max(earliest, po &+ ps)
            }
            if hasBBLog { earliest = max(earliest, so &+ Int64(sb.bblogOffsetSectors) &+ Int64(sb.bblogSizeSectors)) }
            before = earliest < dataOffset ? UInt64(bitPattern: dataOffset &- earliest) : 0
            after = deviceSizeSectors &- UInt64(bitPattern: ds) &- UInt64(bitPattern: dataOffset)
        }
        if before == 0 && after == 0 { after = 1 }
        return after == 1 ? nil : (before, after)
    }

    public var deviceRole: String {
        let sb = superblock
        switch sb.role {
        case .spare, .faulty: return "spare"
        case .journal: return "Journal"
        case .active(let slot):
            return sb.featureMap.contains(.replacement) ? "Replacement device \(slot)" : "Active device \(slot)"
        }
    }

    /// One character per slot: A active, . missing, R being replaced (two devices hold it).
    public var arrayState: String {
        let sb = superblock
        var out = ""
        // No array has more slots than the role table holds; a crafted count is cut there.
        let slots = min(Int(sb.raidDisks) + max(0, -Int(sb.deltaDisks)), Int(MDSuperblock1.maxDevLimit))
        var holders = [Int](repeating: 0, count: slots)
        for role in sb.devRoles where Int(role) < slots { holders[Int(role)] += 1 }
        for slot in 0..<slots {
            switch holders[slot] {
            case 0: out += "."
            case 1: out += "A"
            case 2 where sb.level > 0: out += "R"
            default: out += "?"
            }
        }
        return out
    }

    public var checksumLine: String {
        let sb = superblock
        if sb.storedChecksumIsValid { return "\(String(sb.checksum, radix: 16)) - correct" }
        return "\(String(sb.checksum, radix: 16)) - expected \(String(sb.computedChecksum, radix: 16))"
    }

    /// The Layout line's text for the level (nil when mdadm prints no Layout line).
    public static func layoutText(level: Int32, layout: UInt32, features: MDFeatures) -> String? {
        switch level {
        case 5:
            return layout <= 5 ? RaidLayout(rawValue: layout).name! : "-unknown-"
        case 6:
            return RaidLayout(rawValue: layout).name ?? "-unknown-"
        case 0:
            guard features.contains(.raid0Layout) else { return nil }
            return [0: "dangerous", 1: "original", 2: "alternate"][layout] ?? "-unknown-"
        case 10:
            // near/far/offset copies, printed as mdadm's print_r10_layout (no space after ':').
            let near = layout & 0xFF
            let far = (layout >> 8) & 0xFF
            var text = ""
            if near != 1 { text += " near=\(near)" }
            if far != 1 { text += "\(near != 1 ? "," : "") \(layout & 0x10000 != 0 ? "offset" : "far")=\(far)" }
            if near * far == 1 { text += "NO REDUNDANCY" }
            return text
        default:
            return nil
        }
    }

    public var layoutName: String {
        Self.layoutText(level: superblock.level, layout: superblock.layout, features: superblock.featureMap)?
            .trimmingLeadingSpace() ?? "-unknown-"
    }

    /// The report's lines after the device line (the caller prints `/dev/X:` or `FILE:`).
    public func lines(formatTime: (UInt64) -> String = formatUTCTime) -> [String] {
        let sb = superblock
        var out: [String] = []
        out.append("          Magic : \(hex32(sb.magic))")
        out.append("        Version : \(sb.metadataVersion.rawValue)")
        out.append("    Feature Map : 0x\(String(sb.featureMap.rawValue, radix: 16))")
        out.append("     Array UUID : \(formatMDUUID(sb.setUUID))")
        var name = "           Name : \(sb.setName)"
        if let host = homehost, sb.setName.hasPrefix(host + ":") { name += "  (local to host \(host))" }
        out.append(name)
        out.append("  Creation Time : \(formatTime(sb.ctimeSeconds))")
        out.append("     Raid Level : \(Self.levelName(sb.level))")
        out.append("   Raid Devices : \(sb.raidDisks)")
        out.append("")
        out.append(" Avail Dev Size : \(sb.dataSizeSectors) sectors\(Self.humanSize(bytes: sb.dataSizeSectors << 9))")
        if let arraySectors = Self.arraySizeSectors(sb) {
            out.append("     Array Size : \(arraySectors / 2) KiB\(Self.humanSize(bytes: arraySectors << 9))")
        }
        if sb.level > 0 && sb.sizeSectors != sb.dataSizeSectors {
            out.append("  Used Dev Size : \(sb.sizeSectors) sectors\(Self.humanSize(bytes: sb.sizeSectors << 9))")
        }
        if sb.dataOffsetSectors != 0 { out.append("    Data Offset : \(sb.dataOffsetSectors) sectors") }
        if sb.featureMap.contains(.newOffset) {
            out.append("     New Offset : \(Int64(bitPattern: sb.dataOffsetSectors) &+ Int64(sb.newOffsetSectors)) sectors")
        }
        out.append("   Super Offset : \(sb.superOffsetSectors) sectors")
        if sb.featureMap.contains(.recoveryOffset) {
            out.append("Recovery Offset : \(sb.recoveryOffsetSectors) sectors")
        }
        if let unused = unusedSpace {
            out.append("   Unused Space : before=\(unused.before) sectors, after=\(unused.after) sectors")
        }
        out.append("          State : \(sb.isClean ? "clean" : "active")")
        out.append("    Device UUID : \(formatMDUUID(sb.deviceUUID))")
        out.append("")
        if sb.featureMap.contains(.bitmapOffset) {
            out.append("Internal Bitmap : \(sb.bitmapOffsetSectors) sectors from superblock")
        }
        if sb.featureMap.contains(.ppl) {
            out.append("            PPL : \(sb.pplSizeSectors) sectors at offset \(sb.pplOffsetSectors) sectors from superblock")
        }
        if sb.featureMap.contains(.reshapeActive) {
            out.append("  Reshape pos'n : \(sb.reshapePositionSectors / 2)\(Self.humanSize(bytes: sb.reshapePositionSectors << 9))")
            if sb.deltaDisks != 0 {
                out.append("  Delta Devices : \(sb.deltaDisks) (\(Int(sb.raidDisks) - Int(sb.deltaDisks))->\(sb.raidDisks))")
            }
            if Int32(bitPattern: sb.newLevel) != sb.level {
                out.append("      New Level : \(Self.levelName(Int32(bitPattern: sb.newLevel)))")
            }
            if sb.newLayout != sb.layout {
                out.append("     New Layout : \(RaidLayout(rawValue: sb.newLayout).name ?? "-unknown-")")
            }
            if sb.newChunkSectors != sb.chunkSectors {
                out.append("  New Chunksize : \(sb.newChunkSectors / 2)K")
            }
            out.append("")
        }
        if sb.devFlags != 0 {
            var flags = "          Flags :"
            if sb.devFlags & 1 != 0 { flags += " write-mostly" }
            if sb.devFlags & 2 != 0 { flags += " failfast" }
            out.append(flags)
        }
        out.append("    Update Time : \(formatTime(sb.utimeSeconds))")
        if sb.bblogSizeSectors > 0 && sb.bblogOffsetSectors != 0 {
            var line = "  Bad Block Log : \(Int(sb.bblogSizeSectors) * 512 / 8) entries available at offset \(sb.bblogOffsetSectors) sectors"
            if sb.featureMap.contains(.badBlocks) { line += " - bad blocks present." }
            out.append(line)
        }
        out.append("       Checksum : \(checksumLine)")
        out.append("         Events : \(sb.events)")
        out.append("")
        if let layout = Self.layoutText(level: sb.level, layout: sb.layout, features: sb.featureMap) {
            out.append(sb.level == 10 ? "         Layout :\(layout)" : "         Layout : \(layout)")
        }
        switch sb.level {
        case 0, 4, 5, 6, 10: out.append("     Chunk Size : \(sb.chunkSectors / 2)K")
        case -1: out.append("       Rounding : \(sb.chunkSectors / 2)K")
        default: break
        }
        out.append("")
        out.append("   Device Role : \(deviceRole)")
        out.append("   Array State : \(arrayState) ('A' == active, '.' == missing, 'R' == replacing)")
        return out
    }
}

/// ctime(3)-style text for a Unix time, in UTC: `Wed Nov 25 01:48:51 2026`.
public func formatUTCTime(_ seconds: UInt64) -> String {
    let days = Int64(seconds / 86_400)
    let secs = Int(seconds % 86_400)
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468
    let era = (z >= 0 ? z : z - 146_096) / 146_097
    let doe = z - era * 146_097
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
    let mp = (5 * doy + 2) / 153
    let day = Int(doy - (153 * mp + 2) / 5 + 1)
    let month = Int(mp < 10 ? mp + 3 : mp - 9)
    let year = Int(yoe + era * 400) + (month <= 2 ? 1 : 0)
    let weekday = Int((days % 7 + 7 + 4) % 7)  // 1970-01-01 was a Thursday
    return ctimeText(weekday: weekday, month: month, day: day, hour: secs / 3600, minute: secs / 60 % 60, second: secs % 60, year: year)
}

/// `Www Mmm dd hh:mm:ss yyyy` with ctime's space-padded day.
public func ctimeText(weekday: Int, month: Int, day: Int, hour: Int, minute: Int, second: Int, year: Int) -> String {
    let weekdays = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"]
    let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
    func two(_ v: Int) -> String { v < 10 ? "0\(v)" : "\(v)" }
    let dayText = day < 10 ? " \(day)" : "\(day)"
    return "\(weekdays[weekday]) \(months[month - 1]) \(dayText) \(two(hour)):\(two(minute)):\(two(second)) \(year)"
}

extension String {
    func trimmingLeadingSpace() -> String { String(drop { $0 == " " }) }
}
