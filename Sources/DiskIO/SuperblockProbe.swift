import MDFormat

public enum ProbeError: Error, CustomStringConvertible, Equatable {
    case noSuperblock(path: String)
    case tooSmall(path: String, sizeBytes: UInt64)
    case invalid(path: String, MDFormatError)
    case io(DiskIOError)

    public var description: String {
        switch self {
        case .noSuperblock(let path):
            return "\(path): no md superblock found (looked for v1.0, v1.1 and v1.2)"
        case .tooSmall(let path, let size):
            return "\(path): truncated: \(size) bytes is too small to hold an md v1.x superblock"
        case .invalid(let path, let error): return "\(path): \(error)"
        case .io(let error): return error.description
        }
    }
}

/// The one superblock probe (v1.0, v1.1, v1.2), on any member device: files, block devices,
/// simulated members and fault-injecting wrappers all go through it.
public enum SuperblockProbe {
    /// Finds and validates the v1.x superblock of `device`, trying the 1.2, 1.1 and 1.0
    /// locations and keeping, like mdadm, the valid one with the newest creation time. A
    /// superblock whose magic matches but which fails validation is reported with the reason,
    /// unless another location holds a valid one.
    public static func probe(_ device: MemberDevice, validate: Bool = true) throws(ProbeError) -> MemberMetadata {
        let path = device.name
        func read(_ offset: UInt64, _ count: Int) throws(ProbeError) -> [UInt8] {
            do { return try device.read(at: offset, count: count, purpose: .superblock) } catch { throw ProbeError.io(.io(path: path, error)) }
        }
        let sizeBytes: UInt64
        do { sizeBytes = try device.sizeBytes() } catch { throw ProbeError.io(.io(path: path, error)) }
        let sizeSectors = sizeBytes / 512
        guard sizeSectors >= 24 else { throw ProbeError.tooSmall(path: path, sizeBytes: sizeBytes) }
        var best: MDSuperblock1? = nil
        var firstError: MDFormatError? = nil
        for version in [MDMetadataVersion.v1_2, .v1_1, .v1_0] {
            guard let at = version.superblockOffsetSectors(deviceSizeSectors: sizeSectors) else { continue }
            let count = Int(min(UInt64(MDSuperblock1.readBytes), sizeBytes - at * 512))
            let bytes = try read(at * 512, count)
            guard bytes.count >= 4, bytes.le32At(0) == MDSuperblock1.magicValue else { continue }
            do {
                let sb = try MDSuperblock1(decoding: bytes)
                if validate {
                    try sb.validate(readAtSectors: at, deviceSizeSectors: sizeSectors)
                } else if sb.superOffsetSectors != at {
                    continue
                }
                // mdadm keeps the newest by ctime when several locations hold one.
                if best == nil || sb.ctimeSeconds > best!.ctimeSeconds { best = sb }
            } catch {
                if firstError == nil { firstError = (error as? MDFormatError) ?? .invalidField("\(error)") }
            }
        }
        guard let sb = best else {
            if let e = firstError { throw ProbeError.invalid(path: path, e) }
            throw ProbeError.noSuperblock(path: path)
        }
        var bitmap: MDBitmapSuperblock? = nil
        var area: [UInt8]? = nil
        if sb.featureMap.contains(.bitmapOffset) {
            let start = Int64(sb.superOffsetSectors) + Int64(sb.bitmapOffsetSectors)
            if start >= 0, UInt64(start) * 512 + 256 <= sizeBytes {
                let b = try? device.read(at: UInt64(start) * 512, count: MDBitmapSuperblock.headerBytes, purpose: .bitmap)
                if let b, let header = try? MDBitmapSuperblock(decoding: b) {
                    bitmap = header
                    let want = min(UInt64(header.usedBytes), sizeBytes - UInt64(start) * 512)
                    area = try? device.read(at: UInt64(start) * 512, count: Int(want), purpose: .bitmap)
                }
            }
        }
        return MemberMetadata(name: path, superblock: sb, deviceSizeSectors: sizeSectors, bitmap: bitmap, bitmapArea: area)
    }
}

extension SuperblockProbe {
    /// Describes any md metadata on `file`: a readable v1.x superblock, md's magic at a v1.x
    /// location whose superblock cannot be decoded, or a v0.90 superblock. nil when there is
    /// none. `create` refuses to overwrite any of these without `--force`, as mdadm does.
    public static func existingMetadata(_ device: MemberDevice) -> String? {
        let problem: String
        do {
            let sb = try probe(device, validate: false).superblock
            return "raid\(sb.level) array \(formatMDUUID(sb.setUUID)) '\(sb.setName)', \(sb.role)"
        } catch {
            // A damaged superblock still marks the device as an md member.
            problem = "\(error)"
        }
        guard let sizeBytes = try? device.sizeBytes() else { return nil }
        let sizeSectors = sizeBytes / 512
        func magicAt(_ sector: UInt64) -> Bool {
            guard sector * 512 + 4 <= sizeBytes, let b = try? device.read(at: sector * 512, count: 4, purpose: .superblock) else { return false }
            let value = b.le32At(0)
            return value == MDSuperblock1.magicValue || value.byteSwapped == MDSuperblock1.magicValue
        }
        for version in [MDMetadataVersion.v1_2, .v1_1, .v1_0] {
            if let at = version.superblockOffsetSectors(deviceSizeSectors: sizeSectors), magicAt(at) {
                return "md magic at sector \(at), a v\(version.rawValue) superblock that cannot be read: \(problem)"
            }
        }
        // v0.90 keeps its superblock in the last 64 KiB-aligned 64 KiB of the device.
        if sizeSectors >= 256 {
            let at = (sizeSectors & ~UInt64(127)) - 128
            if magicAt(at) { return "an md v0.90 superblock at sector \(at)" }
        }
        return nil
    }
}

extension Array where Element == UInt8 {
    func le32At(_ offset: Int) -> UInt32 {
        UInt32(self[offset]) | UInt32(self[offset + 1]) << 8 | UInt32(self[offset + 2]) << 16 | UInt32(self[offset + 3]) << 24
    }
}
