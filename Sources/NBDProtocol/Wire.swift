/// Big-endian encoding into a byte array (network byte order, as NBD sends everything).
public struct NBDWriter {
    public private(set) var bytes: [UInt8] = []

    public init(capacity: Int = 64) { bytes.reserveCapacity(capacity) }

    public mutating func u16(_ v: UInt16) { bytes.append(UInt8(v >> 8)); bytes.append(UInt8(truncatingIfNeeded: v)) }

    public mutating func u32(_ v: UInt32) {
        for shift in stride(from: 24, through: 0, by: -8) { bytes.append(UInt8(truncatingIfNeeded: v >> UInt32(shift))) }
    }

    public mutating func u64(_ v: UInt64) {
        for shift in stride(from: 56, through: 0, by: -8) { bytes.append(UInt8(truncatingIfNeeded: v >> UInt64(shift))) }
    }

    public mutating func raw(_ b: [UInt8]) { bytes.append(contentsOf: b) }

    public mutating func string(_ s: String) { bytes.append(contentsOf: Array(s.utf8)) }

    public mutating func zeroes(_ n: Int) { bytes.append(contentsOf: repeatElement(0, count: n)) }
}

/// Big-endian decoding from received bytes; every read says whether the bytes were there.
public struct NBDReader {
    public let buffer: UnsafeRawBufferPointer
    public private(set) var position = 0

    public init(_ buffer: UnsafeRawBufferPointer) { self.buffer = buffer }

    public var remaining: Int { buffer.count - position }

    public mutating func u8() -> UInt8? {
        guard remaining >= 1 else { return nil }
        defer { position += 1 }
        return buffer[position]
    }

    public mutating func u16() -> UInt16? {
        guard remaining >= 2 else { return nil }
        defer { position += 2 }
        return UInt16(buffer[position]) << 8 | UInt16(buffer[position + 1])
    }

    public mutating func u32() -> UInt32? {
        guard remaining >= 4 else { return nil }
        var v: UInt32 = 0
        for i in 0..<4 { v = v << 8 | UInt32(buffer[position + i]) }
        position += 4
        return v
    }

    public mutating func u64() -> UInt64? {
        guard remaining >= 8 else { return nil }
        var v: UInt64 = 0
        for i in 0..<8 { v = v << 8 | UInt64(buffer[position + i]) }
        position += 8
        return v
    }

    public mutating func bytes(_ n: Int) -> [UInt8]? {
        guard n >= 0, remaining >= n else { return nil }
        defer { position += n }
        return Array(buffer[position..<(position + n)])
    }
}
