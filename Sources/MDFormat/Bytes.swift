/// Little-endian field access on byte arrays: everything md stores on disk is little-endian.
extension Array where Element == UInt8 {
    @inlinable func le16(_ offset: Int) -> UInt16 {
        UInt16(self[offset]) | UInt16(self[offset + 1]) << 8
    }

    @inlinable func le32(_ offset: Int) -> UInt32 {
        var v: UInt32 = 0
        for i in 0..<4 { v |= UInt32(self[offset + i]) << (8 * UInt32(i)) }
        return v
    }

    @inlinable func le64(_ offset: Int) -> UInt64 {
        var v: UInt64 = 0
        for i in 0..<8 { v |= UInt64(self[offset + i]) << (8 * UInt64(i)) }
        return v
    }

    @inlinable mutating func putLE16(_ value: UInt16, at offset: Int) {
        self[offset] = UInt8(truncatingIfNeeded: value)
        self[offset + 1] = UInt8(truncatingIfNeeded: value >> 8)
    }

    @inlinable mutating func putLE32(_ value: UInt32, at offset: Int) {
        for i in 0..<4 { self[offset + i] = UInt8(truncatingIfNeeded: value >> (8 * UInt32(i))) }
    }

    @inlinable mutating func putLE64(_ value: UInt64, at offset: Int) {
        for i in 0..<8 { self[offset + i] = UInt8(truncatingIfNeeded: value >> (8 * UInt64(i))) }
    }

    func bytes(_ offset: Int, _ count: Int) -> [UInt8] { Array(self[offset..<(offset + count)]) }
}

/// md prints UUIDs as four groups of four bytes in on-disk order: `00010203:04050607:...`.
public func formatMDUUID(_ bytes: [UInt8]) -> String {
    precondition(bytes.count == 16)
    var out = ""
    for (i, b) in bytes.enumerated() {
        if i > 0 && i % 4 == 0 { out += ":" }
        out += hex2(b)
    }
    return out
}

/// Parses `xxxxxxxx:xxxxxxxx:xxxxxxxx:xxxxxxxx` (also accepts `-`/no separators, 32 hex digits).
public func parseMDUUID(_ text: String) -> [UInt8]? {
    let digits = text.filter { $0 != ":" && $0 != "-" }
    guard digits.count == 32 else { return nil }
    var out: [UInt8] = []
    var it = digits.makeIterator()
    while let hi = it.next(), let lo = it.next() {
        guard let v = UInt8(String([hi, lo]), radix: 16) else { return nil }
        out.append(v)
    }
    return out
}

func hex2(_ b: UInt8) -> String {
    let digits = Array("0123456789abcdef")
    return String([digits[Int(b >> 4)], digits[Int(b & 15)]])
}

func hex32(_ v: UInt32) -> String {
    var s = String(v, radix: 16)
    while s.count < 8 { s = "0" + s }
    return s
}
