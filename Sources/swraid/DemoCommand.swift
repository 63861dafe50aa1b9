import ArgumentParser
import DiskIO
import Logging
import MDFormat
import MDOffline
import RaidCore
import RaidEngine

struct Demo: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Make an array of files and show what swraid can do with it: a tour in under a minute.")

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

        let live = try await servedArray(members, directory: directory)

        section("Silent corruption: flip one byte on member 3, then check parity (md's 'check')")
        try corruptOneByte(live[3])
        spawn([selfPath(), "check", "--verbose"] + live)
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

