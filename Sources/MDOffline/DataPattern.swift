/// Reproducible data for tools that write and later verify (the demo, the crash writer and the
/// tests that check its work): the splitmix64 stream of `seed`, as little-endian 64-bit words.
/// Anyone with the seed can regenerate any write.
public enum DataPattern {
    public static func fill(_ buffer: UnsafeMutableRawBufferPointer, seed: UInt64) {
        var state = seed
        var i = 0
        while i + 8 <= buffer.count {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            buffer.storeBytes(of: (z ^ (z >> 31)).littleEndian, toByteOffset: i, as: UInt64.self)
            i += 8
        }
        while i < buffer.count {
            buffer[i] = UInt8(truncatingIfNeeded: seed &+ UInt64(i))
            i += 1
        }
    }

    public static func bytes(count: Int, seed: UInt64) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        out.withUnsafeMutableBytes { fill($0, seed: seed) }
        return out
    }
}
