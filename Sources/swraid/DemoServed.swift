import ControlPlane
import DiskIO
import Logging
import MDOffline
import NBDClient
import NBDServer
import RaidCore
import RaidEngine

/// The demo's live part: the RAID6 served over NBD and controlled through its socket with the
/// CLI's own verbs, while swraid's NBD client drives a mixed workload from several connections.
extension Demo {
    /// Returns the members afterwards (the spare in the failed member's place).
    func servedArray(_ members: [String], directory: String) async throws -> [String] {
        section("Serve it: `swraid run` assembles the array, serves it over NBD, answers a control socket")
        var logger = Logger(label: "swraid")
        logger.logLevel = .critical
        let spare = "\(directory)/spare.img"
        if FileSystem.exists(spare) { FileSystem.remove(spare) }
        _ = try MemberFile(creating: spare, sizeBytes: UInt64(memberMiB) << 20)
        let engine = try RaidEngine.assemble(paths: members, logger: logger)
        let server = try await NBDServer.start(engine: engine, address: .tcp(host: "127.0.0.1", port: 0), options: NBDServerOptions(), logger: logger)
        let port = server.localAddress?.port ?? 0
        let controlPath = "\(directory)/demo.sock"
        let control = try await ControlServer.start(service: ControlService(engine: engine, name: "demo") {}, path: controlPath, logger: logger)
        say("serving nbd://127.0.0.1:\(port)/\(server.export.name) (\(engine.sizeBytes >> 20) MiB), control socket \(basename(controlPath))")
        say("(here in-process; `swraid run --listen HOST:PORT MEMBER...` does the same as a daemon)")

        let cli = { (args: [String]) async in await spawnOffPool([selfPath()] + args + ["--control", controlPath]) }
        await cli(["status"])

        section("A mixed workload over NBD: 4 connections of swraid's own client, 1 MiB requests")
        say("writes, reads checked as they go, write-zeroes and flushes, over the first half of the array")
        let workload = DemoWorkload(host: "127.0.0.1", port: port, export: server.export.name, bytes: Int(engine.sizeBytes / 2), connections: 4)
        workload.start()

        section("A check, paused and resumed under that load (md's `echo idle > sync_action`)")
        say("md holds a sync to sync_speed_min while clients are busy; raised here so the tour keeps moving")
        await cli(["set", "sync_speed_min", "20000"])
        await cli(["set", "sync_action", "check"])
        await cli(["status"])
        await cli(["set", "sync_action", "idle"])
        await cli(["get", "sync_action"])
        await cli(["set", "sync_action", "check"])
        await cli(["status"])
        await cli(["wait"])
        await cli(["get", "mismatch_cnt"])

        section("A member fails under the load, is removed, and a spare is rebuilt")
        await cli(["fail", members[4]])
        await cli(["status"])
        await cli(["remove", members[4]])
        await cli(["add", spare])
        let bar = ProgressBar(action: "recovery")
        while let progress = await engine.snapshot().syncProgress {
            bar.update(done: progress.done, total: progress.total)
            try await Task.sleep(nanoseconds: 100_000_000)
        }
        bar.finish()
        await cli(["wait"])
        await cli(["status"])

        let written = try await workload.finish()
        section("Verify every byte over NBD")
        let pollsBefore = await server.pollCounts()
        let verified = try await verifyOverNBD(port: port, export: server.export.name, expected: written)
        let pollsAfter = await server.pollCounts()
        say(verified.bad == 0
            ? "\(verified.blocks) MiB read back over NBD: every byte as written (\(written.requests) requests by 4 clients)"
            : "\(verified.bad) of \(verified.blocks) MiB read back WRONG (this is a bug)")
        say("\(await server.splicedReplies()) read replies went out from the member files with sendfile (no copy through swraid)")
        say("the lone verifying connection: the server polled for its next request \(pollsAfter.spells - pollsBefore.spells) times, \(pollsAfter.caught - pollsBefore.caught) came while it did (--poll-max-us; this client checks each MiB before asking again, so after three misses in a row polling closed, probing once in 32 requests)")
        await cli(["detail"])

        section("Stop cleanly: requests finished, every superblock marked clean")
        await server.stop()
        await engine.stop()
        await control.stop()
        var live = members
        live[4] = spare
        let report = try OfflineArray(paths: live).check()
        say("offline check of the members afterwards: mismatch_cnt \(report.mismatchSectors)")
        return live
    }

    /// Reads every MiB the workload wrote and compares it with what it should hold.
    func verifyOverNBD(port: Int, export: String, expected: DemoWorkload.Result) async throws -> (blocks: Int, bad: Int) {
        try await runOffPool {
            let client = try NBDClient(host: "127.0.0.1", port: port, export: export)
            defer { client.disconnect() }
            var buffer = [UInt8](repeating: 0, count: 1 << 20)
            var bad = 0
            for (block, content) in expected.blocks.enumerated() where content != .untouched {
                try buffer.withUnsafeMutableBytes { try client.read(offset: UInt64(block) << 20, into: $0) }
                if buffer != DemoWorkload.bytes(for: content) { bad += 1 }
            }
            return (expected.blocks.filter { $0 != .untouched }.count, bad)
        }
    }
}

/// Runs a blocking body on a thread of its own (not the concurrency pool's few threads).
func runOffPool<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        OSThread.start { continuation.resume(with: Result { try body() }) }
    }
}

/// Shows and runs a command off the concurrency pool (it talks to servers that need the pool).
func spawnOffPool(_ argv: [String]) async {
    let shown = (["swraid"] + argv.dropFirst().filter { !$0.hasSuffix(".sock") && $0 != "--control" }.map { a in
        a.hasPrefix("/") ? String(a.split(separator: "/").last ?? Substring(a)) : a
    }).joined(separator: " ")
    print("$ " + shown)
    Terminal.flushStandardOutput()
    _ = try? await runOffPool { try ChildProcess.run(argv) }
}

/// What the demo's clients do: each connection owns a quarter of the range and goes over it
/// again and again (write 1 MiB, read it back and compare; every 8th MiB write-zeroes instead;
/// a flush every 16) until told to stop, remembering what each MiB holds.
final class DemoWorkload: @unchecked Sendable {
    /// What a MiB should hold: never written (as created), zeroes, or a pattern's seed.
    enum Content: Sendable, Equatable {
        case untouched
        case zeroes
        case pattern(UInt64)
    }

    struct Result: Sendable {
        var blocks: [Content]
        var requests: Int
    }

    let host: String
    let port: Int
    let export: String
    let blockCount: Int
    let connections: Int
    let lock = ConditionLock()
    var stopRequested = false
    var finished = 0
    var results: [Int: Swift.Result<(blocks: [(Int, Content)], requests: Int), Error>] = [:]

    init(host: String, port: Int, export: String, bytes: Int, connections: Int) {
        self.host = host
        self.port = port
        self.export = export
        blockCount = bytes >> 20
        self.connections = connections
    }

    static func bytes(for content: Content) -> [UInt8] {
        switch content {
        case .untouched: return []
        case .zeroes: return [UInt8](repeating: 0, count: 1 << 20)
        case .pattern(let seed): return DataPattern.bytes(count: 1 << 20, seed: seed)
        }
    }

    func start() {
        for c in 0..<connections {
            OSThread.start { [self] in
                let outcome = Swift.Result { try self.run(connection: c) }
                lock.withLock {
                    results[c] = outcome
                    finished += 1
                }
                lock.broadcast()
            }
        }
    }

    func run(connection c: Int) throws -> (blocks: [(Int, Content)], requests: Int) {
        let client = try NBDClient(host: host, port: port, export: export)
        defer { client.disconnect() }
        let mine = Array(stride(from: c, to: blockCount, by: connections))
        var contents = [Content](repeating: .untouched, count: mine.count)
        var requests = 0
        var readBack = [UInt8](repeating: 0, count: 1 << 20)
        var pass: UInt64 = 0
        // At least one whole pass, then on until stopped (bounded: 1000 passes).
        while pass < 1000 {
            for (i, block) in mine.enumerated() {
                let offset = UInt64(block) << 20
                if (block + Int(pass)) % 8 == 7 {
                    try client.writeZeroes(offset: offset, length: 1 << 20)
                    contents[i] = .zeroes
                } else {
                    let seed = UInt64(block) << 32 | pass
                    let data = DataPattern.bytes(count: 1 << 20, seed: seed)
                    try data.withUnsafeBytes { try client.write(offset: offset, $0) }
                    try readBack.withUnsafeMutableBytes { try client.read(offset: offset, into: $0) }
                    guard readBack == data else { throw NBDClient.Failure.protocolViolation("MiB \(block) read back wrong right after its write") }
                    contents[i] = .pattern(seed)
                    requests += 1
                }
                requests += 1
                if i % 16 == 15 {
                    try client.flush()
                    requests += 1
                }
            }
            pass += 1
            if lock.withLock({ stopRequested }) { break }
        }
        try client.flush()
        return (Array(zip(mine, contents)), requests + 1)
    }

    /// Stops the clients after their current pass; what every MiB holds.
    func finish() async throws -> Result {
        let outcomes = try await runOffPool { [self] in
            lock.withLock { stopRequested = true }
            lock.lock()
            while finished < connections { lock.wait() }
            let r = results
            lock.unlock()
            return r
        }
        var blocks = [Content](repeating: .untouched, count: blockCount)
        var requests = 0
        for c in 0..<connections {
            let (mine, count) = try outcomes[c]!.get()
            for (block, content) in mine { blocks[block] = content }
            requests += count
        }
        return Result(blocks: blocks, requests: requests)
    }
}
