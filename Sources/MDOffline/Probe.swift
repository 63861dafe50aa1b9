import DiskIO
import MDFormat

/// A member's superblock as found on disk, with where it was and how large the device is.
public struct ProbedMember: Sendable {
    public let path: String
    public let superblock: MDSuperblock1
    public let deviceSizeSectors: UInt64
    /// The bitmap header, when feature bit 0 says there is one and it could be read.
    public let bitmap: MDBitmapSuperblock?
    /// The bitmap area (header and bits) as read, for counting dirty bits.
    public let bitmapArea: [UInt8]?
}

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

public enum SuperblockProbe {
    /// Finds and validates the v1.x superblock of `file`, trying the 1.2, 1.1 and 1.0 locations
    /// and keeping, like mdadm, the valid one with the newest creation time. A superblock whose
    /// magic matches but which fails validation is reported with the reason, unless another
    /// location holds a valid one.
    public static func probe(_ file: MemberFile, validate: Bool = true) throws -> ProbedMember {
        let sizeBytes: UInt64
        do { sizeBytes = try file.sizeBytes() } catch let e as DiskIOError { throw ProbeError.io(e) }
        let sizeSectors = sizeBytes / 512
        guard sizeSectors >= 24 else { throw ProbeError.tooSmall(path: file.path, sizeBytes: sizeBytes) }
        var best: MDSuperblock1? = nil
        var firstError: MDFormatError? = nil
        for version in [MDMetadataVersion.v1_2, .v1_1, .v1_0] {
            guard let at = version.superblockOffsetSectors(deviceSizeSectors: sizeSectors) else { continue }
            let count = Int(min(UInt64(MDSuperblock1.readBytes), sizeBytes - at * 512))
            let bytes: [UInt8]
            do { bytes = try file.read(at: at * 512, count: count) } catch let e as DiskIOError { throw ProbeError.io(e) }
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
            } catch let e as MDFormatError {
                if firstError == nil { firstError = e }
            }
        }
        guard let sb = best else {
            if let e = firstError { throw ProbeError.invalid(path: file.path, e) }
            throw ProbeError.noSuperblock(path: file.path)
        }
        var bitmap: MDBitmapSuperblock? = nil
        var area: [UInt8]? = nil
        if sb.featureMap.contains(.bitmapOffset) {
            let start = Int64(sb.superOffsetSectors) + Int64(sb.bitmapOffsetSectors)
            if start >= 0, UInt64(start) * 512 + 256 <= sizeBytes {
                let b = try? file.read(at: UInt64(start) * 512, count: MDBitmapSuperblock.headerBytes)
                if let b, let header = try? MDBitmapSuperblock(decoding: b) {
                    bitmap = header
                    let want = min(UInt64(header.usedBytes), sizeBytes - UInt64(start) * 512)
                    area = try? file.read(at: UInt64(start) * 512, count: Int(want))
                }
            }
        }
        return ProbedMember(
            path: file.path, superblock: sb, deviceSizeSectors: sizeSectors, bitmap: bitmap, bitmapArea: area)
    }
}

extension SuperblockProbe {
    /// Describes any md metadata on `file`: a readable v1.x superblock, md's magic at a v1.x
    /// location whose superblock cannot be decoded, or a v0.90 superblock. nil when there is
    /// none. `create` refuses to overwrite any of these without `--force`, as mdadm does.
    public static func existingMetadata(_ file: MemberFile) -> String? {
        let problem: String
        do {
            let sb = try probe(file, validate: false).superblock
            return "raid\(sb.level) array \(formatMDUUID(sb.setUUID)) '\(sb.setName)', \(sb.role)"
        } catch {
            // A damaged superblock still marks the device as an md member.
            problem = "\(error)"
        }
        guard let sizeBytes = try? file.sizeBytes() else { return nil }
        let sizeSectors = sizeBytes / 512
        func magicAt(_ sector: UInt64) -> Bool {
            guard sector * 512 + 4 <= sizeBytes, let b = try? file.read(at: sector * 512, count: 4) else { return false }
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
