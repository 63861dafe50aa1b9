import ArgumentParser
import DiskIO
import Logging
import MDFormat
import MDOffline
import RaidCore
import RaidEngine

/// Sequential throughput of the live engine on member files, next to `dd` on one member-sized
/// file of the same disk, in the same run (a figure, not a test: only the ratio compares).
struct EngineBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "engine",
        abstract: "Sequential write and read through the engine on file members, beside dd on one file.",
        discussion: """
            Creates an array of new files, writes SIZE through the engine in REQUEST-sized \
            requests with QUEUE-DEPTH in flight and a flush at the end, reads it back the same \
            way, then runs dd (bs=1M, conv=fdatasync) to and from one file of the same size on \
            the same disk. With --drop-caches (root), the page cache is dropped before each read. \
            Build with -c release.
            """)

    @Option(help: "Directory for the files (default: a new one under /tmp, removed afterwards).")
    var dir: String?

    @Option(help: "RAID level: 5 or 6.")
    var level: Int = 5

    @Option(help: "Members.")
    var members: Int = 4

    @Option(name: .customLong("size-mib"), help: "MiB written and read.")
    var sizeMiB: Int = 1024

    @Option(name: .customLong("request-kib"), help: "Request size in KiB.")
    var requestKiB: Int = 1024

    @Option(name: .customLong("queue-depth"), help: "Requests in flight.")
    var queueDepth: Int = 8

    @Option(name: .customLong("chunk-kib"), help: "Chunk size in KiB.")
    var chunkKiB: UInt64 = 512

    @Flag(help: "Internal write-intent bitmap.")
    var bitmap = false

    @Flag(help: "Open members with O_DIRECT.")
    var direct = false

    @Flag(name: .customLong("drop-caches"), help: "Drop the page cache before reading (needs root).")
    var dropCaches = false

    func run() async throws {
        do {
            try await measure()
        } catch let error as ExitCode {
            throw error
        } catch {
            printError("\(error)")
            throw ExitCode(1)
        }
    }

    func measure() async throws {
        guard level == 5 || level == 6, members >= (level == 6 ? 4 : 3), members <= 32 else {
            throw CommandFailure(message: "--level 5 or 6 with enough --members (3..32 for RAID5, 4..32 for RAID6)")
        }
        guard sizeMiB > 0, requestKiB > 0, requestKiB % 4 == 0, requestKiB <= 32768, queueDepth > 0 else {
            throw CommandFailure(message: "--size-mib, --request-kib (a multiple of 4, at most 32768) and --queue-depth must be positive")
        }
        #if DEBUG
        printError("warning: debug build; run `swift run -c release swraid bench engine` for real figures")
        #endif
        let ownDir = dir == nil
        let directory = try dir.map { d in try FileSystem.makeDirectory(d); return d } ?? FileSystem.makeTemporaryDirectory(prefix: "swraid-bench")
        let dataDisks = members - (level == 6 ? 2 : 1)
        let chunkBytes = Int(chunkKiB) << 10
        let totalBytes = sizeMiB << 20
        let rowBytes = chunkBytes * dataDisks
        let memberBytes = (totalBytes + rowBytes - 1) / rowBytes * chunkBytes
        let paths = (0..<members).map { "\(directory)/bench\($0).img" }
        let ddPath = "\(directory)/dd.img"
        defer {
            if ownDir {
                for p in paths + [ddPath] { FileSystem.remove(p) }
                FileSystem.removeDirectory(directory)
            }
        }
        for p in paths + [ddPath] where FileSystem.exists(p) { FileSystem.remove(p) }

        var request = CreateRequest(
            level: level == 6 ? .raid6 : .raid5, raidDisks: members, memberSizesSectors: [], arrayUUID: randomBytes(16),
            deviceUUIDs: (0..<members).map { _ in randomBytes(16) }, timeSeconds: Clock.wallSeconds())
        request.chunkKiB = chunkKiB
        request.sizeSectors = UInt64(memberBytes / 512)
        request.bitmap = bitmap ? .internal_ : .none
        request.name = "bench"
        try ArrayCreator(paths: paths, request: request, options: CreateOptions()).run()

        var logger = Logger(label: "swraid")
        logger.logLevel = .error
        var options = EngineOptions()
        options.direct = direct
        let engine = try RaidEngine.assemble(paths: paths, options: options, logger: logger)
        print("# swraid bench engine: \(engine.geometry.level) of \(members) files, \(chunkKiB)K chunks\(bitmap ? ", bitmap" : ""), "
            + "\(requestKiB) KiB requests, \(queueDepth) in flight\(direct ? ", O_DIRECT" : ", page cache")\(dropCaches ? ", caches dropped before reads" : "")")
        print("# \(directory) on the same disk as dd's file; \(sizeMiB) MiB each way")
        Terminal.flushStandardOutput()

        // A few buffers of data, reused (generating 1 GiB would be timed too).
        let requestBytes = requestKiB << 10
        let buffers = (0..<queueDepth).map { IOBuffer(DataPattern.bytes(count: requestBytes, seed: UInt64($0))) }
        let writeSeconds = try await sequential(engine, bytes: totalBytes, requestBytes: requestBytes, action: "write") { offset, index in
            try await engine.write(offsetBytes: UInt64(offset), data: buffers[index % buffers.count])
        }
        let flushStart = Clock.monotonicSeconds()
        try await engine.flush()
        let writeTotal = writeSeconds + Clock.monotonicSeconds() - flushStart
        if dropCaches { dropPageCache() }
        let readSeconds = try await sequential(engine, bytes: totalBytes, requestBytes: requestBytes, action: "read") { offset, _ in
            let n = min(requestBytes, totalBytes - offset)
            _ = try await engine.read(offsetBytes: UInt64(offset), length: n)
        }
        await engine.stop()

        let dd = FileSystem.findProgram("dd")
        var ddWrite: Double?
        var ddRead: Double?
        if let dd {
            ddWrite = try runDD([dd, "if=/dev/zero", "of=\(ddPath)", "bs=1M", "count=\(sizeMiB)", "conv=fdatasync"])
            if dropCaches { dropPageCache() }
            ddRead = try runDD([dd, "if=\(ddPath)", "of=/dev/null", "bs=1M"])
        }
        let mb = Double(totalBytes) / 1e6
        func row(_ what: String, _ ours: Double, _ theirs: Double?) {
            let ratio = theirs.map { formatFixed((mb / ours) / $0, digits: 2) } ?? "-"
            print("\(what.padding(toLength: 18)) swraid \(formatFixed(mb / ours, digits: 0).padding(toLength: 6)) MB/s   dd \(theirs.map { formatFixed($0, digits: 0) } ?? "-") MB/s   ratio \(ratio)")
        }
        row("sequential write", writeTotal, ddWrite)
        row("sequential read", readSeconds, ddRead)
        if dd == nil { print("# dd not found: no comparison") }
    }

    /// Moves `bytes` in order with `queueDepth` requests in flight; shows md's progress line.
    func sequential(_ engine: RaidEngine, bytes: Int, requestBytes: Int, action: String, _ body: @escaping @Sendable (Int, Int) async throws -> Void) async throws -> Double {
        let bar = ProgressBar(action: action)
        let start = Clock.monotonicSeconds()
        try await withThrowingTaskGroup(of: Void.self) { group in
            var offset = 0
            var index = 0
            var inFlight = 0
            while offset < bytes {
                if inFlight == queueDepth {
                    try await group.next()
                    inFlight -= 1
                    bar.update(done: UInt64((offset - inFlight * requestBytes) / 512), total: UInt64(bytes / 512))
                }
                let (at, i) = (offset, index)
                group.addTask { try await body(at, i) }
                inFlight += 1
                offset += requestBytes
                index += 1
            }
            try await group.waitForAll()
        }
        bar.update(done: UInt64(bytes / 512), total: UInt64(bytes / 512))
        return Clock.monotonicSeconds() - start
    }

    /// dd's own figure (MB/s) from its last line: "... copied, 0.51 s, 2.1 GB/s".
    func runDD(_ argv: [String]) throws -> Double {
        let (status, output) = try ChildProcess.runCapturingOutput(argv)
        guard status == 0, let line = output.split(separator: "\n").last(where: { $0.contains("copied") }) else {
            throw CommandFailure(message: "dd failed: \(output)")
        }
        let parts = line.split(separator: ",").map { $0.trimmingCharacters() }
        guard parts.count >= 3 else { throw CommandFailure(message: "cannot read dd's output: \(line)") }
        let speed = parts[parts.count - 1].split(separator: " ")
        guard speed.count == 2, let value = Double(speed[0]) else { throw CommandFailure(message: "cannot read dd's speed: \(line)") }
        let scale: Double = speed[1].hasPrefix("GB") ? 1000 : speed[1].hasPrefix("kB") ? 0.001 : speed[1].hasPrefix("MB") ? 1 : 1e-6
        return value * scale
    }

    func dropPageCache() {
        ChildProcess.syncFileSystems()
        if !ChildProcess.writeFile("/proc/sys/vm/drop_caches", "3\n") {
            printError("warning: could not drop the page cache (root needed); reads may come from memory")
        }
    }
}

extension Substring {
    func trimmingCharacters() -> String { String(self).trimmingWhitespace() }
}
