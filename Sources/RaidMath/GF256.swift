/// Arithmetic in GF(2^8) with md's reducing polynomial x^8+x^4+x^3+x^2+1 (0x11D) and
/// generator g = {02}, the field Linux md's RAID6 uses for its Q syndrome.
public enum GF256 {
    /// The reducing polynomial's low byte (the x^8 term is implied).
    public static let polynomialLowByte: UInt8 = 0x1D

    /// `exp[i] = g^i` for i in 0..<510, so `exp[log a + log b]` needs no modulo.
    public static let exp: [UInt8] = {
        var table = [UInt8](repeating: 0, count: 510)
        var value: UInt8 = 1
        for i in 0..<255 {
            table[i] = value
            table[i + 255] = value
            value = mul2(value)
        }
        precondition(value == 1, "g must generate the multiplicative group")
        return table
    }()

    /// `log[a]` for a != 0; `log[0]` is unused (0).
    public static let log: [UInt8] = {
        var table = [UInt8](repeating: 0, count: 256)
        for i in 0..<255 { table[Int(exp[i])] = UInt8(i) }
        return table
    }()

    /// Multiplication by g = {02}.
    @inlinable @inline(__always)
    public static func mul2(_ a: UInt8) -> UInt8 {
        (a << 1) ^ ((a & 0x80) != 0 ? polynomialLowByte : 0)
    }

    public static func mul(_ a: UInt8, _ b: UInt8) -> UInt8 {
        if a == 0 || b == 0 { return 0 }
        return exp[Int(log[Int(a)]) + Int(log[Int(b)])]
    }

    /// Multiplicative inverse; `a` must not be 0.
    public static func inv(_ a: UInt8) -> UInt8 {
        precondition(a != 0, "0 has no inverse in GF(2^8)")
        return exp[255 - Int(log[Int(a)])]
    }

    public static func div(_ a: UInt8, _ b: UInt8) -> UInt8 {
        precondition(b != 0, "division by 0 in GF(2^8)")
        if a == 0 { return 0 }
        return exp[Int(log[Int(a)]) + 255 - Int(log[Int(b)])]
    }

    /// g^i for any non-negative i.
    public static func pow2(_ i: Int) -> UInt8 {
        precondition(i >= 0)
        return exp[i % 255]
    }
}
