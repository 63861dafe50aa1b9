import Foundation

/// One array of shared/fixtures (its manifest.json, the fields the tests use).
public struct FixtureArray: Sendable, CustomStringConvertible {
    public let name: String
    public let directory: String
    public let level: Int
    public let layoutNumber: UInt32
    public let chunkKiB: Int
    public let raidDisks: Int
    public let memberFiles: [String]
    public let memberRoles: [Int]
    public let arrayBytes: UInt64
    public let seed: UInt64
    public let sha256: String
    public let missingRoles: [Int]
    public let staleRoles: [Int]
    public let dataOffsetSectors: UInt64

    public var description: String { name }
    public var maxDegraded: Int { level == 6 ? 2 : 1 }
    public func path(_ file: String) -> String { directory + "/" + file }

    /// All arrays listed in fixtures.json, or [] when the fixtures are absent.
    public static func all() -> [FixtureArray] {
        guard let root = FixturePaths.fixturesRoot,
            let data = FileManager.default.contents(atPath: root + "/fixtures.json"),
            let index = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
            let arrays = index["arrays"] as? [[String: Any]]
        else { return [] }
        return arrays.compactMap { a in
            guard let name = a["name"] as? String, let level = a["level"] as? String else { return nil }
            let dir = root + "/" + ((a["dir"] as? String) ?? name)
            return FixtureArray(
                name: name, directory: dir, level: level == "raid6" ? 6 : 5,
                layoutNumber: UInt32(a["layout_num"] as? Int ?? 0), chunkKiB: a["chunk_kib"] as? Int ?? 0,
                raidDisks: a["raid_disks"] as? Int ?? 0, memberFiles: a["members"] as? [String] ?? [],
                memberRoles: a["member_roles"] as? [Int] ?? [], arrayBytes: UInt64(a["array_bytes"] as? Int ?? 0),
                seed: UInt64(a["seed"] as? Int ?? 0), sha256: a["sha256"] as? String ?? "",
                missingRoles: a["missing_roles"] as? [Int] ?? [], staleRoles: a["stale_roles"] as? [Int] ?? [],
                dataOffsetSectors: UInt64((a["data_offset_sectors"] as? [Int])?.first ?? 0))
        }
    }
}

/// Subsets of `items` with at most `maxCount` elements (including the empty one).
public func subsets<T>(_ items: [T], maxCount: Int) -> [[T]] {
    var result: [[T]] = [[]]
    for item in items {
        result += result.filter { $0.count < maxCount }.map { $0 + [item] }
    }
    return result
}

/// Result of running a program.
public struct ProcessResult: Sendable {
    public let status: Int32
    public let stdout: Data
    public let stderr: String
    public var stdoutText: String { String(decoding: stdout, as: UTF8.self) }
}

/// Runs `executable` with `arguments`, capturing both streams (no shell involved). Standard
/// error goes through a temporary file so neither stream can block the other.
public func runProcess(_ executable: String, _ arguments: [String], environment: [String: String]? = nil) throws -> ProcessResult {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: executable)
    process.arguments = arguments
    if let environment { process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 } }
    let errPath = NSTemporaryDirectory() + "swraid-stderr-\(UUID().uuidString)"
    FileManager.default.createFile(atPath: errPath, contents: nil)
    defer { try? FileManager.default.removeItem(atPath: errPath) }
    let errHandle = try FileHandle(forWritingTo: URL(fileURLWithPath: errPath))
    let out = Pipe()
    process.standardOutput = out
    process.standardError = errHandle
    process.standardInput = FileHandle.nullDevice
    try process.run()
    let stdout = out.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    try errHandle.close()
    let stderr = String(decoding: FileManager.default.contents(atPath: errPath) ?? Data(), as: UTF8.self)
    return ProcessResult(status: process.terminationStatus, stdout: stdout, stderr: stderr)
}

/// The swraid executable SwiftPM built next to the test bundle.
public var swraidExecutable: String {
    let me = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
    return (me as NSString).deletingLastPathComponent + "/swraid"
}

public func which(_ name: String) -> String? {
    for dir in ["/usr/sbin", "/sbin", "/usr/bin", "/bin", "/usr/local/bin"] where FileManager.default.isExecutableFile(atPath: dir + "/" + name) {
        return dir + "/" + name
    }
    return nil
}

/// Bytes of a file, for "nothing was written" comparisons.
public func fileBytes(_ path: String) -> Data? { FileManager.default.contents(atPath: path) }
