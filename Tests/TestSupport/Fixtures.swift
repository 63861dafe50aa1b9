#if canImport(Glibc)
import Glibc
#endif

/// The mdpattern-v1 data the fixtures hold (shared/fixtures/README.md): sector S of seed K is
/// 64 little-endian words, w[0] = S, w[1] = K, w[j] = splitmix64(K ^ (S*64 + j)).
public enum MDPattern {
    public static func splitmix64(_ x: UInt64) -> UInt64 {
        var z = x &+ 0x9e37_79b9_7f4a_7c15
        z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
        z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
        return z ^ (z >> 31)
    }

    public static func sector(_ s: UInt64, seed: UInt64) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: 512)
        for j in 0..<64 {
            let w: UInt64 = j == 0 ? s : j == 1 ? seed : splitmix64(seed ^ (s &* 64 &+ UInt64(j)))
            for b in 0..<8 { out[j * 8 + b] = UInt8(truncatingIfNeeded: w >> (8 * UInt64(b))) }
        }
        return out
    }

    public static func bytes(startSector: UInt64, sectors: Int, seed: UInt64) -> [UInt8] {
        (0..<UInt64(sectors)).flatMap { sector(startSector + $0, seed: seed) }
    }
}

/// Deterministic pseudo-random bytes (splitmix64 words), fast enough for megabytes in tests.
public func pseudoRandomData(_ count: Int, seed: UInt64) -> [UInt8] {
    var out = [UInt8](repeating: 0, count: count)
    out.withUnsafeMutableBytes { raw in
        var state = seed
        var i = 0
        while i + 8 <= count {
            state &+= 0x9e37_79b9_7f4a_7c15
            raw.storeBytes(of: MDPattern.splitmix64(state).littleEndian, toByteOffset: i, as: UInt64.self)
            i += 8
        }
        while i < count {
            state &+= 1
            raw[i] = UInt8(truncatingIfNeeded: MDPattern.splitmix64(state))
            i += 1
        }
    }
    return out
}

/// Locates ../shared/fixtures relative to the package root; nil (tests skip) when absent.
public enum FixturePaths {
    public static var packageRoot: String {
        // #filePath is .../Tests/TestSupport/Fixtures.swift
        var parts = #filePath.split(separator: "/", omittingEmptySubsequences: false)
        parts.removeLast(3)
        return parts.joined(separator: "/")
    }

    public static var fixturesRoot: String? {
        let path = packageRoot + "/../shared/fixtures"
        var st = stat()
        return stat(path + "/fixtures.json", &st) == 0 ? path : nil
    }

    public static let skipMessage = "../shared/fixtures is absent (a clone outside the workspace): kernel-made fixture tests skipped"
}

/// A temporary directory removed when the value is released.
public final class TemporaryDirectory {
    public let path: String

    public init(_ prefix: String = "swraid-test") {
        var template = Array("/tmp/\(prefix).XXXXXX".utf8CString)
        path = String(cString: mkdtemp(&template)!)
    }

    /// Removes the directory with everything in it, subdirectories too (tests make `run/`,
    /// `fuse/` and `mnt/` inside): a directory stack, not recursion.
    deinit {
        var pending = [path]
        var directories: [String] = []
        while let directory = pending.popLast() {
            directories.append(directory)
            guard let dir = opendir(directory) else { continue }
            while let entry = readdir(dir) {
                let name = withUnsafePointer(to: entry.pointee.d_name) {
                    $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) }
                }
                if name == "." || name == ".." { continue }
                let full = directory + "/" + name
                var st = stat()
                if lstat(full, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR {
                    pending.append(full)
                } else {
                    unlink(full)
                }
            }
            closedir(dir)
        }
        // Deepest first: each is empty once the ones below it are gone.
        for directory in directories.reversed() { rmdir(directory) }
    }

    public func file(_ name: String) -> String { path + "/" + name }
}

/// GF(2^8) arithmetic by shift-and-add with md's polynomial 0x11D, independent of RaidMath's
/// tables, for checking them.
public enum GF256Reference {
    public static func mul(_ a: UInt8, _ b: UInt8) -> UInt8 {
        var result: UInt8 = 0
        var x = a
        var y = b
        while y != 0 {
            if y & 1 != 0 { result ^= x }
            x = (x << 1) ^ ((x & 0x80) != 0 ? 0x1d : 0)
            y >>= 1
        }
        return result
    }

    public static func pow2(_ i: Int) -> UInt8 { (0..<i).reduce(UInt8(1)) { v, _ in mul(v, 2) } }
}
