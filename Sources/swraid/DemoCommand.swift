import ArgumentParser
import DiskIO
import Logging
import MDFormat
import MDOffline
import RaidCore
import RaidEngine

struct Demo: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Make an array of files and show what swraid can do with it so far.")

    @Option(help: "Directory for the member files (default: a new one under /tmp).")
    var dir: String?

    @Option(name: .customLong("member-mib"), help: "Size of each member file in MiB.")
    var memberMiB: Int = 64

    func run() async throws {
        do {
            try await tour()
        } catch let error as ExitCode {
            throw error
        } catch {
            printError("\(error)")
            throw ExitCode(1)
        }
    }

    func tour() async throws {
        guard (8...4096).contains(memberMiB) else { throw CommandFailure(message: "--member-mib must be 8..4096") }
        let directory = try dir.map { d in try FileSystem.makeDirectory(d); return d } ?? FileSystem.makeTemporaryDirectory(prefix: "swraid-demo")
        let members = (0..<6).map { "\(directory)/member\($0).img" }
        say("""
            swraid demo: a RAID6 of six member files in \(directory)
            Each member is filled with data first (as if the disks came with contents); create
            then makes parity consistent with it, exactly as md's initial resync would.
            """)
        try fillMembers(members)

        section("Create the array: md v1.2 metadata, 64K chunks, internal write-intent bitmap")
        try runSelf(["create", "--level", "6", "--raid-devices", "6", "--chunk", "64K", "--bitmap", "internal",
                     "--bitmap-chunk", "1M", "--name", "demo"] + members)

        section("Inspect a member the way mdadm --examine does")
        try runSelf(["examine", members[0]])
        if let mdadm = FileSystem.findProgram("mdadm") {
            section("The real mdadm reads the same superblock")
            spawn([mdadm, "--examine", members[0]])
        }

        section("Read the array offline (no kernel md, no root) and fingerprint it")
        let full = try fingerprint(members)
        say("$ swraid cat \(members.map(basename).joined(separator: " ")) | sha256sum\n\(full)  -")

        section("Lose two members: RAID6 rebuilds their chunks from P and Q")
        let degraded = [members[0], "missing", members[2], members[3], "missing", members[5]]
        let rebuilt = try fingerprint(degraded)
        say("$ swraid cat \(degraded.map(basename).joined(separator: " ")) | sha256sum\n\(rebuilt)  -")
        say(rebuilt == full ? "same data: the two lost members were rebuilt from parity" : "MISMATCH (this is a bug)")

        section("Too many lost members: swraid refuses rather than return wrong data")
        spawn([selfPath(), "cat", members[0], "missing", "missing", "missing", members[4], members[5]])

        try await liveArray(members, directory: directory)

        section("Silent corruption: flip one byte on member 3, then check parity (md's 'check')")
        try corruptOneByte(members[3])
        spawn([selfPath(), "check", "--verbose"] + members)
        say("RAID6's two syndromes pin the bad block on one member, which plain RAID5 cannot do.")

        section("The array core under simulation: seeded runs with faults and crashes, each replayed")
        spawn([selfPath(), "sim", "--seeds", "1..10"])

        section("Linux md 5.4's hang (a model of its protocol), found in milliseconds")
        spawn([selfPath(), "sim", "--model", "md-5.4", "--scenario", "seed"])
        say("Seed 6 closes the cycle the way the field report saw it: the check thread stuck on a full stripe cache.")
        spawn([selfPath(), "sim", "--model", "md-5.4", "--scenario", "seed", "--seed", "6"])
        say("md 6.9's fix, and swraid's own core, never hang on the same scenario:")
        spawn([selfPath(), "sim", "--model", "md-6.9", "--scenario", "seed", "--seeds", "1..20"])
        spawn([selfPath(), "sim", "--scenario", "seed", "--seeds", "1..20"])

        section("Done")
        say("The member files are left in \(directory); try `swraid examine` or `mdadm --examine` on them.")
    }

    /// The engine on the same files: writes, a check stopped half way, a member failing under
    /// writes, a spare rebuilt, a clean stop, and the result checked offline.
    func liveArray(_ members: [String], directory: String) async throws {
        section("The live array: swraid's engine runs the RAID6 on its member files")
        var logger = Logger(label: "swraid")
        logger.logLevel = .critical
        let spare = "\(directory)/spare.img"
        if FileSystem.exists(spare) { FileSystem.remove(spare) }
        _ = try MemberFile(creating: spare, sizeBytes: UInt64(memberMiB) << 20)
        let engine = try RaidEngine.assemble(paths: members, logger: logger)
        say("assembled \(engine.geometry.level) '\(engine.arrayName)': \(engine.sizeBytes >> 20) MiB, array_state \(try await engine.attribute("array_state"))")

        // New data over the first half of the array, 1 MiB requests, 8 in flight.
        let size = Int(engine.sizeBytes / 2) / (1 << 20) * (1 << 20)
        let start = Clock.monotonicSeconds()
        var hash = SHA256()
        try await withThrowingTaskGroup(of: Void.self) { group in
            var offset = 0
            var inFlight = 0
            while offset < size {
                if inFlight == 8 {
                    try await group.next()
                    inFlight -= 1
                }
                let data = IOBuffer(DataPattern.bytes(count: 1 << 20, seed: UInt64(offset)))
                data.withUnsafeBytes { hash.update($0) }
                let at = UInt64(offset)
                group.addTask { try await engine.write(offsetBytes: at, data: data) }
                inFlight += 1
                offset += 1 << 20
            }
            try await group.waitForAll()
        }
        try await engine.flush()
        let seconds = Clock.monotonicSeconds() - start
        say("wrote \(size >> 20) MiB in \(formatFixed(seconds, digits: 2)) s (\(Int(Double(size) / seconds / 1e6)) MB/s), flushed; array_state \(try await engine.attribute("array_state"))")

        say("$ echo check > sync_action; echo idle > sync_action   (md's way to pause a check)")
        try await engine.set("sync_action", "check")
        try await Task.sleep(nanoseconds: 30_000_000)
        try await engine.set("sync_action", "idle")
        say("paused at sync_min \(try await engine.attribute("sync_min")) of \(try await engine.attribute("component_size")) KiB; idle returned at once")

        say("$ mdadm --fail member4.img   (while writes go on)")
        async let writes: Void = rewriteFirstMiB(engine)
        try await engine.fail(member: members[4])
        try await writes
        say("array_state \(try await engine.attribute("array_state")), degraded \(try await engine.attribute("degraded")): the array goes on")

        say("$ mdadm --add spare.img   (recovery onto the spare starts at once)")
        try await engine.add(path: spare)
        let bar = ProgressBar(action: "recovery")
        while let progress = await engine.snapshot().syncProgress {
            bar.update(done: progress.done, total: progress.total)
            try await Task.sleep(nanoseconds: 100_000_000)
        }
        bar.finish()
        await engine.waitForSync()
        let after = await engine.snapshot()
        say("degraded \(after.degraded); roles: " + after.members.map { "\(basename($0.name)) \($0.role)" }.joined(separator: ", "))
        await engine.stop()
        say("stopped: every superblock says clean")

        var live = members
        live[4] = spare
        let check = try OfflineArray(paths: live)
        let report = try check.check()
        var firstHalf = SHA256()
        var seen = 0
        try check.stream(sink: { chunk in
            let take = min(chunk.count, size - seen)
            if take > 0 { firstHalf.update(UnsafeRawBufferPointer(rebasing: chunk[0..<take])) }
            seen += chunk.count
        })
        let same = SHA256.hex(firstHalf.finalize()) == SHA256.hex(hash.finalize())
        say("offline check of the members: mismatch_cnt \(report.mismatchSectors); the data written reads back \(same ? "intact" : "WRONG (this is a bug)")")
    }

    func rewriteFirstMiB(_ engine: RaidEngine) async throws {
        for i in 0..<16 {
            try await engine.write(offsetBytes: UInt64(i) << 20, data: IOBuffer(DataPattern.bytes(count: 1 << 20, seed: UInt64(i) << 20)))
        }
    }

    /// Writes deterministic pseudo-random bytes to each member (then create syncs parity over it).
    func fillMembers(_ members: [String]) throws {
        for (i, path) in members.enumerated() {
            if FileSystem.exists(path) { FileSystem.remove(path) }
            let file = try MemberFile(creating: path, sizeBytes: UInt64(memberMiB) << 20)
            defer { file.close() }
            for block in 0..<memberMiB {
                let data = DataPattern.bytes(count: 1 << 20, seed: 0x5357_5241_4944 &+ UInt64(i * 4096 + block))
                try file.write(at: UInt64(block) << 20, bytes: data)
            }
        }
    }

    func fingerprint(_ members: [String]) throws -> String {
        let array = try OfflineArray(paths: members)
        var hash = SHA256()
        try array.stream(sink: { hash.update($0) })
        return SHA256.hex(hash.finalize())
    }

    func corruptOneByte(_ path: String) throws {
        let file = try MemberFile(path: path, mode: .readWrite)
        defer { file.close() }
        let probed = try SuperblockProbe.probe(file)
        let offset = (probed.superblock.dataOffsetSectors + 1000) * 512 + 77
        var byte = try file.read(at: offset, count: 1)
        byte[0] ^= 0x5A
        try file.write(at: offset, bytes: byte)
        say("flipped the byte at offset \(offset) of \(basename(path))")
    }

    func section(_ title: String) { say("\n== \(title)") }

    func say(_ text: String) {
        print(text)
        Terminal.flushStandardOutput()
    }

    func runSelf(_ args: [String]) throws {
        say("$ swraid " + args.map(basename).joined(separator: " "))
        let status = try ChildProcess.run([selfPath()] + args)
        if status != 0 { throw CommandFailure(message: "swraid \(args[0]) failed (exit \(status))") }
    }

    /// Runs a program with our standard streams, showing the command first; its exit status is
    /// part of what the demo shows, not a failure of the demo.
    func spawn(_ argv: [String]) {
        let shown = argv[0] == selfPath() ? "swraid" : argv[0]
        say("$ " + ([shown] + argv.dropFirst().map(basename)).joined(separator: " "))
        Terminal.flushStandardOutput()
        _ = try? ChildProcess.run(argv)
    }

    func selfPath() -> String { FileSystem.currentExecutablePath() ?? CommandLine.arguments[0] }

    func basename(_ path: String) -> String {
        guard path.hasPrefix("/") else { return path }
        return String(path.split(separator: "/").last ?? Substring(path))
    }
}

