import FoundationEssentials
import MDFormat
import RaidCore

/// A member device as the reports name it: its path, and the block device numbers when it is
/// one (files have none; mdadm would print the device's major and minor).
public struct ReportDevice: Sendable {
    public var path: String
    public var major: Int
    public var minor: Int

    public init(path: String, major: Int = 0, minor: Int = 0) {
        self.path = path
        self.major = major
        self.minor = minor
    }
}

/// `/proc/mdstat`'s entry for one array (md_seq_show), and the lines around it.
public enum MDStatReport {
    public static let header = "Personalities : [raid6] [raid5] [raid4] "
    public static let footer = "unused devices: <none>"

    /// The array's lines: the header line, the geometry line, the progress line while a sync
    /// runs, the bitmap line when there is a bitmap. `name` stands where md prints `mdN`.
    public static func lines(name: String, snapshot s: ArraySnapshot, devices: [ReportDevice], readOnly: Bool, now elapsedSeconds: Double? = nil) -> [String] {
        var out: [String] = []
        var head = "\(name) : \(s.isStopped ? "inactive" : "active")"
        if s.arrayState == .readonly { head += " (read-only)" }
        if s.arrayState == .readAuto { head += " (auto-read-only)" }
        head += " \(s.geometry.level)"
        // md lists members most recently added first.
        for m in s.members.reversed() where m.role != .removed {
            let base = devices.indices.contains(m.index.rawValue) ? lastComponent(devices[m.index.rawValue].path) : m.name
            var entry = " \(base)[\(m.devNumber)]"
            switch m.role {
            case .faulty: entry += "(F)"
            case .spare: entry += "(S)"
            default: break
            }
            head += entry
        }
        out.append(head)
        let g = s.geometry
        let slots = (0..<g.raidDisks).map { slot -> Bool in
            s.members.contains { $0.role == .active(slot: Role(slot)) && $0.recoveryOffsetSectors == nil }
        }
        let inSync = slots.filter { $0 }.count
        out.append(
            "      \(g.arraySectors / 2) blocks super \(s.superblock.metadataVersion.rawValue) level \(g.level.rawValue), \(g.chunkBytes / 1024)k chunk, "
                + "algorithm \(g.layout.rawValue) [\(g.raidDisks)/\(inSync)] [\(slots.map { $0 ? "U" : "_" }.joined())]")
        if let kind = s.syncKind, let progress = s.syncProgress {
            out.append("      " + progressLine(label: kind.mdstatLabel, doneKiB: progress.done / 2, totalKiB: progress.total / 2, speedKiBps: s.syncSpeedKiBps ?? 0))
        } else if s.resyncOffsetSectors != maxSector && (s.arrayState == .readAuto || s.arrayState == .readonly) {
            out.append("      \tresync=PENDING")
        }
        if let chunk = s.bitmapChunkBytes {
            // md keeps 16-bit counters, 2048 regions to a 4 KiB page; a page is in memory
            // while a region on it has its bit set.
            let pages = (s.bitmapBitCount + 2047) / 2048
            let used = min(pages, (s.bitmapBitsSet + 2047) / 2048)
            out.append("      bitmap: \(used)/\(pages) pages [\(used * 4)KB], \(chunk / 1024)KB chunk")
        }
        return out
    }

    /// md's progress line: 20 cells of `=` up to a `>`, the percentage truncated to a tenth,
    /// done/total in KiB, the minutes left at the current speed, the speed.
    public static func progressLine(label: String, doneKiB: UInt64, totalKiB: UInt64, speedKiBps: UInt64) -> String {
        let perMille = totalKiB == 0 ? 1000 : Int(min(1000, doneKiB * 1000 / totalKiB))
        let filled = perMille / 50
        // 20 cells: filled '=' then '>' then 20 - filled '.' (21 characters, as md prints them).
        let bar = "[" + String(repeating: "=", count: filled) + ">" + String(repeating: ".", count: 20 - filled) + "]"
        let whole = String(perMille / 10)
        let percent = String(repeating: " ", count: max(0, 3 - whole.count)) + whole + "." + String(perMille % 10)
        let remaining = totalKiB - min(doneKiB, totalKiB)
        let minutesTenths = speedKiBps == 0 ? 0 : remaining * 10 / speedKiBps / 60
        return "\(bar)  \(label) =\(percent)% (\(doneKiB)/\(totalKiB)) finish=\(minutesTenths / 10).\(minutesTenths % 10)min speed=\(speedKiBps)K/sec"
    }

    static func lastComponent(_ path: String) -> String { String(path.split(separator: "/").last ?? Substring(path)) }
}

/// `mdadm --detail`'s facts for a running array, gathered once so that the text report (mdadm
/// 4.2's Detail and detail_super1: the same labels, order and spacing) and the JSON report agree.
public struct MDDetail: Sendable, Encodable {
    public struct Device: Sendable, Encodable, Equatable {
        /// md's dev_number; nil for a slot no member fills ("removed").
        public var number: UInt32?
        public var major: Int
        public var minor: Int
        /// The slot; nil for spares and faulty members.
        public var raidDevice: Int?
        /// mdadm's words: "active sync", "spare rebuilding", "spare", "faulty", "removed".
        public var state: String
        public var path: String?
    }

    public var device: String
    public var version: String
    public var creationTimeSeconds: UInt64
    public var raidLevel: String
    public var arraySizeKiB: UInt64
    public var usedDevSizeKiB: UInt64
    public var raidDevices: Int
    public var totalDevices: Int
    public var intentBitmap: Bool
    public var updateTimeSeconds: UInt64
    /// mdadm's State words: "clean" or "active", then "degraded" or "FAILED", then the sync.
    public var state: [String]
    public var activeDevices: Int
    public var workingDevices: Int
    public var failedDevices: Int
    public var spareDevices: Int
    public var layout: String
    public var chunkSizeKiB: UInt64
    public var consistencyPolicy: String
    /// "Rebuild", "Resync", "Check" while a sync runs, with its whole percent.
    public var syncStatus: String?
    public var syncPercent: UInt64?
    public var name: String
    public var localToHost: String?
    public var uuid: String
    public var events: UInt64
    public var devices: [Device]

    public init(name arrayName: String, snapshot s: ArraySnapshot, devices reportDevices: [ReportDevice], homehost: String?) {
        let g = s.geometry
        let sb = s.superblock
        device = arrayName
        version = sb.metadataVersion.rawValue
        creationTimeSeconds = sb.ctimeSeconds
        raidLevel = "\(g.level)"
        arraySizeKiB = g.arraySectors / 2
        usedDevSizeKiB = g.memberDataSectors / 2
        raidDevices = g.raidDisks
        totalDevices = s.members.filter { $0.role != .removed }.count
        intentBitmap = s.bitmapChunkBytes != nil
        updateTimeSeconds = sb.utimeSeconds
        let inSyncSlots = (0..<g.raidDisks).filter { slot in
            s.members.contains { $0.role == .active(slot: Role(slot)) && $0.recoveryOffsetSectors == nil }
        }.count
        var words = [s.isClean ? "clean" : "active"]
        if inSyncSlots < g.raidDisks { words.append(g.raidDisks - inSyncSlots > g.maxDegraded ? "FAILED" : "degraded") }
        switch s.syncKind {
        case .recover?: words.append("recovering")
        case .resync?, .repair?: words.append("resyncing")
        case .check?: words.append("checking")
        case nil: break
        }
        state = words
        activeDevices = s.members.filter { if case .active = $0.role { return $0.recoveryOffsetSectors == nil } else { return false } }.count
        spareDevices = s.members.filter { $0.role == .spare || ($0.recoveryOffsetSectors != nil && $0.role != .faulty) }.count
        workingDevices = activeDevices + spareDevices
        failedDevices = s.members.filter { $0.role == .faulty }.count
        layout = g.layout.name ?? "-unknown-"
        chunkSizeKiB = UInt64(g.chunkBytes / 1024)
        consistencyPolicy = s.bitmapChunkBytes == nil ? "resync" : "bitmap"
        if let kind = s.syncKind, let p = s.syncProgress, p.total > 0 {
            switch kind {
            case .recover: syncStatus = "Rebuild"
            case .resync, .repair: syncStatus = "Resync"
            case .check: syncStatus = "Check"
            }
            syncPercent = p.done * 100 / p.total
        }
        name = sb.setName
        if let host = homehost, sb.setName.hasPrefix(host + ":") { localToHost = host }
        uuid = formatMDUUID(sb.setUUID)
        events = s.events
        func reportDevice(_ m: MemberSnapshot) -> ReportDevice {
            reportDevices.indices.contains(m.index.rawValue) ? reportDevices[m.index.rawValue] : ReportDevice(path: m.name)
        }
        // One row per slot (its member, or "removed"), then spares and faulty members.
        var rows: [Device] = []
        for slot in 0..<g.raidDisks {
            if let m = s.members.first(where: { $0.role == .active(slot: Role(slot)) }) {
                let d = reportDevice(m)
                rows.append(Device(
                    number: m.devNumber, major: d.major, minor: d.minor, raidDevice: slot,
                    state: m.recoveryOffsetSectors == nil ? "active sync" : "spare rebuilding", path: d.path))
            } else {
                rows.append(Device(number: nil, major: 0, minor: 0, raidDevice: slot, state: "removed", path: nil))
            }
        }
        for m in s.members where m.role == .spare || m.role == .faulty {
            let d = reportDevice(m)
            rows.append(Device(number: m.devNumber, major: d.major, minor: d.minor, raidDevice: nil, state: m.role == .faulty ? "faulty" : "spare", path: d.path))
        }
        devices = rows
    }

    /// The text report, times through `formatTime` (mdadm prints ctime(3)'s local time).
    public func lines(formatTime: (UInt64) -> String) -> [String] {
        var out: [String] = ["\(device):"]
        out.append("           Version : \(version)")
        out.append("     Creation Time : \(formatTime(creationTimeSeconds))")
        out.append("        Raid Level : \(raidLevel)")
        out.append("        Array Size : \(arraySizeKiB)\(ExamineReport.humanSize(bytes: arraySizeKiB * 1024))")
        out.append("     Used Dev Size : \(usedDevSizeKiB)\(ExamineReport.humanSize(bytes: usedDevSizeKiB * 1024))")
        out.append("      Raid Devices : \(raidDevices)")
        out.append("     Total Devices : \(totalDevices)")
        out.append("       Persistence : Superblock is persistent")
        out.append("")
        if intentBitmap {
            out.append("     Intent Bitmap : Internal")
            out.append("")
        }
        out.append("       Update Time : \(formatTime(updateTimeSeconds))")
        out.append("             State : \(state.joined(separator: ", ")) ")
        out.append("    Active Devices : \(activeDevices)")
        out.append("   Working Devices : \(workingDevices)")
        out.append("    Failed Devices : \(failedDevices)")
        out.append("     Spare Devices : \(spareDevices)")
        out.append("")
        out.append("            Layout : \(layout)")
        out.append("        Chunk Size : \(chunkSizeKiB)K")
        out.append("")
        out.append("Consistency Policy : \(consistencyPolicy)")
        out.append("")
        if let word = syncStatus, let percent = syncPercent {
            out.append("\(Self.lpad(word + " Status", 18)) : \(percent)% complete")
            out.append("")
        }
        out.append("              Name : \(name)\(localToHost.map { "  (local to host \($0))" } ?? "")")
        out.append("              UUID : \(uuid)")
        out.append("            Events : \(events)")
        out.append("")
        out.append("    Number   Major   Minor   RaidDevice State")
        var sparesStarted = false
        for d in devices {
            if d.raidDevice == nil && !sparesStarted {
                sparesStarted = true
                out.append("")
            }
            let number = d.number.map { Self.lpad($0, 8) } ?? "       -"
            let slot = d.raidDevice.map { Self.lpad($0, 5) } ?? "    -"
            var row = "\(number)   \(Self.lpad(d.major, 5))    \(Self.lpad(d.minor, 5))    \(slot)      \(d.state)"
            if let path = d.path { row += "   \(path)" }
            out.append(row)
        }
        return out
    }

    /// The same facts as one line of JSON (keys in snake_case, times as Unix seconds).
    public func json() -> String {
        let encoder = JSONEncoder()
        encoder.keyEncodingStrategy = .convertToSnakeCase
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        guard let data = try? encoder.encode(self) else { return "{}" }
        return String(decoding: data, as: UTF8.self)
    }

    static func lpad<T: CustomStringConvertible>(_ v: T, _ width: Int) -> String {
        let s = v.description
        return String(repeating: " ", count: max(0, width - s.count)) + s
    }

    enum CodingKeys: String, CodingKey {
        case device, version, creationTimeSeconds, raidLevel, raidDevices, totalDevices, intentBitmap, updateTimeSeconds
        case state, activeDevices, workingDevices, failedDevices, spareDevices, layout, consistencyPolicy, syncStatus
        case syncPercent, name, localToHost, uuid, events, devices
        case arraySizeKiB = "arraySizeKib"
        case usedDevSizeKiB = "usedDevSizeKib"
        case chunkSizeKiB = "chunkSizeKib"
    }
}
