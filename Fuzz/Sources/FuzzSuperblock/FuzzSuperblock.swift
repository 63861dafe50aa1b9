import FuzzDriver
import MDFormat
import RaidCore

// A member image's metadata as `swraid examine` and `swraid run` take it in: the v1.2
// superblock decoded and judged by the kernel's load checks, shown as mdadm --examine shows it
// (text and JSON), its bitmap header and bits read, the members assembled by md's rules, and the
// array's core built and started from them.
//
// Input: byte 0 = choices (bits 0-1: members beside the first; bit 2: one of them stale; bit 3:
// keep the stored checksum, else it is made right, as anyone crafting an image can); bytes 1-4 =
// the device's size in sectors (little-endian); then the superblock's 4 KiB; the rest is the
// bitmap area (header and bits).
//
// Properties: nothing traps, nothing allocates without bound (libFuzzer's -rss_limit_mb); a
// superblock that encodes and decodes again is the same superblock.

let superblockBytes = 4096

func fuzzOne(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let input = fuzzInput(data, size)
    guard input.count >= 5 + MDSuperblock1.headerBytes else { return 0 }
    let choices = input[0]
    let deviceSizeSectors = UInt64(input[1]) | UInt64(input[2]) << 8 | UInt64(input[3]) << 16 | UInt64(input[4]) << 24
    let sbEnd = min(input.count, 5 + superblockBytes)
    let area = Array(input[sbEnd...])
    guard var sb = try? MDSuperblock1(decoding: Array(input[5..<sbEnd])) else { return 0 }
    if choices & 8 == 0 { sb = sb.withValidChecksum() }
    let again = try? MDSuperblock1(decoding: sb.encode(updatingChecksum: false))
    fuzzCheck(again == sb, "a superblock did not survive being encoded")

    let bitmap = area.isEmpty ? nil : try? MDBitmapSuperblock(decoding: area)
    if let bitmap {
        _ = try? bitmap.validate(arrayUUID: sb.setUUID)
        _ = bitmap.usedBytes
        _ = bitmap.dirtyBitCount(area: area)
    }
    // What examine prints, valid or not.
    let report = ExamineReport(superblock: sb, deviceSizeSectors: deviceSizeSectors, bitmap: bitmap)
    _ = report.lines()
    _ = report.json(device: "/dev/fuzz").render()

    guard (try? sb.validate(readAtSectors: 8, deviceSizeSectors: deviceSizeSectors)) != nil else { return 0 }
    var members = [MemberMetadata(name: "m0", superblock: sb, deviceSizeSectors: deviceSizeSectors, bitmap: bitmap, bitmapArea: area.isEmpty ? nil : area)]
    for i in 0..<Int(choices & 3) {
        var other = sb
        other.devNumber = sb.devNumber &+ UInt32(i + 1)
        if choices & 4 != 0 && i == 0 { other.events = sb.events &- 1 }
        members.append(MemberMetadata(name: "m\(i + 1)", superblock: other.withValidChecksum(), deviceSizeSectors: deviceSizeSectors))
    }
    guard let assembly = try? CoreAssembly(members: members) else { return 0 }
    var config = CoreConfig()
    config.stripeCacheSize = 4
    guard let core = try? RaidCore(assembly: assembly, config: config) else { return 0 }
    _ = core.start(now: 0)
    return 0
}

func seeds() -> [(name: String, bytes: [UInt8])] {
    var out: [(name: String, bytes: [UInt8])] = []
    for (name, level, disks, bitmap) in [("raid6-5-bitmap", RaidLevel.raid6, 5, BitmapChoice.internal_), ("raid5-4", .raid5, 4, .none)] {
        let memberSectors: UInt64 = 64 << 11
        var request = CreateRequest(
            level: level, raidDisks: disks, memberSizesSectors: Array(repeating: memberSectors, count: disks),
            arrayUUID: (0..<16).map { UInt8($0) }, deviceUUIDs: (0..<disks).map { d in (0..<16).map { UInt8($0 + 16 * d) } },
            timeSeconds: 1_700_000_000)
        request.bitmap = bitmap
        guard let plan = try? CreatePlan(request) else { continue }
        var sbBytes = plan.superblocks[0].encode()
        sbBytes += [UInt8](repeating: 0, count: superblockBytes - sbBytes.count)
        let size = UInt32(memberSectors)
        let header: [UInt8] = [UInt8(disks - 1) | 4, UInt8(size & 0xFF), UInt8(size >> 8 & 0xFF), UInt8(size >> 16 & 0xFF), UInt8(size >> 24)]
        out.append((name, header + sbBytes + (plan.bitmapAreaBytes.map { Array($0.prefix(512)) } ?? [])))
    }
    return out
}

@_cdecl("FuzzSuperblock_main")
func main(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    fuzzerMain(argc, argv, seeds: seeds) { data, size in fuzzOne(data, size) }
}
