/// The internal write-intent bitmap's header (`bitmap_super_t`, md-format.md §2.2) and its bits.
public struct MDBitmapSuperblock: Equatable, Sendable {
    public static let magicValue: UInt32 = 0x6d74_6962
    public static let headerBytes = 256
    /// Little-endian bit order; what mdadm and the kernel write by default.
    public static let versionLittleEndian: UInt32 = 4
    public static let stateStale: UInt32 = 2
    public static let stateWriteError: UInt32 = 4

    public var magic: UInt32 = magicValue
    public var version: UInt32 = versionLittleEndian
    public var uuid: [UInt8] = .init(repeating: 0, count: 16)
    public var events: UInt64 = 0
    public var eventsCleared: UInt64 = 0
    /// Sectors covered per member (sb.size for raid4/5/6).
    public var syncSizeSectors: UInt64 = 0
    public var state: UInt32 = 0
    /// Bytes of per-member data covered by one bit.
    public var chunkSizeBytes: UInt32 = 0
    public var daemonSleepSeconds: UInt32 = 5
    public var writeBehind: UInt32 = 0
    public var sectorsReserved: UInt32 = 0
    public var nodes: UInt32 = 0
    public var clusterName: [UInt8] = .init(repeating: 0, count: 64)

    public init() {}

    public init(decoding bytes: [UInt8]) throws {
        guard bytes.count >= Self.headerBytes else {
            throw MDFormatError.truncated(what: "bitmap superblock", needBytes: Self.headerBytes, haveBytes: bytes.count)
        }
        magic = bytes.le32(0)
        version = bytes.le32(4)
        uuid = bytes.bytes(8, 16)
        events = bytes.le64(24)
        eventsCleared = bytes.le64(32)
        syncSizeSectors = bytes.le64(40)
        state = bytes.le32(48)
        chunkSizeBytes = bytes.le32(52)
        daemonSleepSeconds = bytes.le32(56)
        writeBehind = bytes.le32(60)
        sectorsReserved = bytes.le32(64)
        nodes = bytes.le32(68)
        clusterName = bytes.bytes(72, 64)
    }

    /// The kernel's load checks: a bitmap failing them is ignored (md-format.md §2.4).
    public func validate(arrayUUID: [UInt8]) throws {
        guard magic == Self.magicValue else {
            throw MDFormatError.invalidField("bitmap magic is \(hex32(magic)), expected 6d746962")
        }
        guard (3...5).contains(version) else { throw MDFormatError.invalidField("bitmap version \(version) is not supported") }
        guard uuid == arrayUUID else { throw MDFormatError.invalidField("bitmap UUID does not match the array") }
        guard chunkSizeBytes >= 512, chunkSizeBytes & (chunkSizeBytes - 1) == 0 else {
            throw MDFormatError.invalidField("bitmap chunk size \(chunkSizeBytes) is not a power of two >= 512")
        }
        guard daemonSleepSeconds >= 1 else { throw MDFormatError.invalidField("bitmap daemon_sleep is 0") }
    }

    public var chunkSectors: UInt64 { UInt64(chunkSizeBytes) / 512 }

    /// Number of bits: one per `chunkSizeBytes` of `syncSizeSectors`, rounded up.
    /// (Rounded up without `size + chunk - 1`, and clamped: a crafted header may carry any
    /// values; `validate` and the area's size decide whether the bits are believed.)
    public var bitCount: Int {
        guard chunkSectors > 0 else { return 0 }
        let whole = syncSizeSectors / chunkSectors
        return Int(clamping: whole + (syncSizeSectors % chunkSectors == 0 ? 0 : 1))
    }

    /// Bytes of header plus bits.
    public var usedBytes: Int {
        let bits = UInt64(bitCount)
        return Int(clamping: UInt64(Self.headerBytes) + bits / 8 + (bits % 8 == 0 ? 0 : 1))
    }

    public func encode() -> [UInt8] {
        var b = [UInt8](repeating: 0, count: Self.headerBytes)
        b.putLE32(magic, at: 0)
        b.putLE32(version, at: 4)
        b.replaceSubrange(8..<24, with: uuid)
        b.putLE64(events, at: 24)
        b.putLE64(eventsCleared, at: 32)
        b.putLE64(syncSizeSectors, at: 40)
        b.putLE32(state, at: 48)
        b.putLE32(chunkSizeBytes, at: 52)
        b.putLE32(daemonSleepSeconds, at: 56)
        b.putLE32(writeBehind, at: 60)
        b.putLE32(sectorsReserved, at: 64)
        b.putLE32(nodes, at: 68)
        b.replaceSubrange(72..<136, with: clusterName)
        return b
    }

    /// Bit `j` is at byte `256 + j/8`, LSB first, of the bitmap area.
    public static func isBitSet(_ area: [UInt8], bit: Int) -> Bool {
        let byte = headerBytes + bit / 8
        guard byte < area.count else { return false }
        return area[byte] & (1 << UInt8(bit % 8)) != 0
    }

    /// Number of set bits among the first `bitCount` bits of a bitmap area.
    /// Bits past the end of the area are clear (a crafted header may claim more bits than the
    /// area holds; they are not looked for one by one).
    public func dirtyBitCount(area: [UInt8]) -> Int {
        let bitsInArea = max(0, area.count - Self.headerBytes) * 8
        return (0..<min(bitCount, bitsInArea)).reduce(0) { $0 + (Self.isBitSet(area, bit: $1) ? 1 : 0) }
    }
}
