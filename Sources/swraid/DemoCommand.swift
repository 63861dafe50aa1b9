import ArgumentParser
import DiskIO
import MDFormat
import MDOffline

#if canImport(Glibc)
import Glibc
#endif

struct Demo: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Make an array of files and show what swraid can do with it so far.")

    @Option(help: "Directory for the member files (default: a new one under /tmp).")
    var dir: String?

    @Option(name: .customLong("member-mib"), help: "Size of each member file in MiB.")
    var memberMiB: Int = 64

    func run() throws {
        try failingCleanly {
            guard (8...4096).contains(memberMiB) else { throw CommandFailure(message: "--member-mib must be 8..4096") }
            let directory = try makeDirectory()
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
            if let mdadm = findProgram("mdadm") {
                section("The real mdadm reads the same superblock")
                _ = try? spawn([mdadm, "--examine", members[0]])
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
            _ = try? spawn([selfPath(), "cat", members[0], "missing", "missing", "missing", members[4], members[5]])

            section("Silent corruption: flip one byte on member 3, then check parity (md's 'check')")
            try corruptOneByte(members[3])
            _ = try? spawn([selfPath(), "check", "--verbose"] + members)
            say("RAID6's two syndromes pin the bad block on one member, which plain RAID5 cannot do.")

            section("The array core under simulation: seeded runs with faults and crashes, each replayed")
            _ = try? spawn([selfPath(), "sim", "--seeds", "1..10"])

            section("Linux md 5.4's hang (a model of its protocol), found in milliseconds")
            _ = try? spawn([selfPath(), "sim", "--model", "md-5.4", "--scenario", "seed"])
            say("Seed 6 closes the cycle the way the field report saw it: the check thread stuck on a full stripe cache.")
            _ = try? spawn([selfPath(), "sim", "--model", "md-5.4", "--scenario", "seed", "--seed", "6"])
            say("md 6.9's fix, and swraid's own core, never hang on the same scenario:")
            _ = try? spawn([selfPath(), "sim", "--model", "md-6.9", "--scenario", "seed", "--seeds", "1..20"])
            _ = try? spawn([selfPath(), "sim", "--scenario", "seed", "--seeds", "1..20"])

            section("Done")
            say("The member files are left in \(directory); try `swraid examine` or `mdadm --examine` on them.")
        }
    }

    func makeDirectory() throws -> String {
        if let dir {
            if mkdir(dir, 0o755) != 0 && errno != EEXIST {
                throw CommandFailure(message: "\(dir): cannot create: \(String(cString: strerror(errno)))")
            }
            return dir
        }
        var template = Array("/tmp/swraid-demo.XXXXXX".utf8CString)
        guard let made = mkdtemp(&template) else { throw CommandFailure(message: "cannot create a directory in /tmp") }
        return String(cString: made)
    }

    /// Writes deterministic pseudo-random bytes to each member (then create syncs parity over it).
    func fillMembers(_ members: [String]) throws {
        var state: UInt64 = 0x5357_5241_4944  // "SWRAID"
        let chunk = 1 << 20
        var buffer = [UInt64](repeating: 0, count: chunk / 8)
        for path in members {
            if MemberFile.exists(path) { unlink(path) }
            let file = try MemberFile(creating: path, sizeBytes: UInt64(memberMiB) << 20)
            defer { file.close() }
            for block in 0..<memberMiB {
                for i in buffer.indices {
                    state &+= 0x9E37_79B9_7F4A_7C15
                    var z = state
                    z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
                    z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
                    buffer[i] = z ^ (z >> 31)
                }
                try buffer.withUnsafeBytes { try file.write(at: UInt64(block) << 20, from: $0) }
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
        fflush(nil)
    }

    func runSelf(_ args: [String]) throws {
        say("$ swraid " + args.map(basename).joined(separator: " "))
        let status = try spawn([selfPath()] + args, echo: false)
        if status != 0 { throw CommandFailure(message: "swraid \(args[0]) failed (exit \(status))") }
    }

    /// Runs a program with our stdout/stderr and returns its exit status.
    @discardableResult
    func spawn(_ argv: [String], echo: Bool = true) throws -> Int32 {
        if echo { say("$ " + ([basename(argv[0]) == "swraid" || argv[0] == selfPath() ? "swraid" : argv[0]] + argv.dropFirst().map(basename)).joined(separator: " ")) }
        fflush(nil)
        var pid: pid_t = 0
        let cArgs = argv.map { strdup($0) } + [nil]
        defer { cArgs.forEach { free($0) } }
        let rc = posix_spawn(&pid, argv[0], nil, nil, cArgs, environ)
        guard rc == 0 else { throw CommandFailure(message: "cannot run \(argv[0]): \(String(cString: strerror(rc)))") }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        return (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
    }

    func selfPath() -> String {
        var buffer = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        return n > 0 ? String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self) : CommandLine.arguments[0]
    }

    func basename(_ path: String) -> String {
        guard path.hasPrefix("/") else { return path }
        return String(path.split(separator: "/").last ?? Substring(path))
    }

    func findProgram(_ name: String) -> String? {
        for dir in ["/usr/sbin", "/sbin", "/usr/bin", "/bin"] where access("\(dir)/\(name)", X_OK) == 0 {
            return "\(dir)/\(name)"
        }
        return nil
    }
}
