import DiskIO
import Foundation
import MDOffline
import NBDClient
import TestSupport
import Testing

/// NBD writers on their own connections, each writing 64 KiB blocks of its share with FUA until
/// told to stop: every acknowledged write is durable, and the ledger keeps the latest per block.
final class NBDLoad: @unchecked Sendable {
    static let blockBytes = 64 << 10
    let lock = ConditionLock()
    private var latest: [Int: UInt64] = [:]
    private var acks = 0
    private var failures: [String] = []
    private var stopping = false
    private var threads: [OSThread] = []

    /// Writers write blocks `firstBlock ..< firstBlock + blocks`.
    init(port: Int, writers: Int, firstBlock: Int = 0, blocks: Int, seed: UInt64) {
        threads = (0..<writers).map { w in
            OSThread { [self] in
                do {
                    let client = try NBDClient(host: "127.0.0.1", port: port, export: "cli")
                    defer { client.disconnect() }
                    var random = SplitMix(seed: seed &+ UInt64(w))
                    var written: UInt64 = 0
                    while !lock.withLock({ stopping }) {
                        let block = firstBlock + w + writers * Int(random.next() % UInt64(blocks / writers))
                        let blockSeed = seed &* 1_000_003 &+ UInt64(w) << 32 &+ written
                        written += 1
                        let data = DataPattern.bytes(count: Self.blockBytes, seed: blockSeed)
                        try data.withUnsafeBytes { try client.write(offset: UInt64(block * Self.blockBytes), $0, fua: true) }
                        lock.withLock {
                            latest[block] = blockSeed
                            acks += 1
                        }
                        lock.broadcast()
                    }
                } catch {
                    lock.withLock { failures.append("writer \(w): \(error)") }
                    lock.broadcast()
                }
            }
        }
    }

    /// Returns once `count` more writes were acknowledged (or a writer failed).
    func waitForAcks(_ count: Int) {
        lock.lock()
        let target = acks + count
        while acks < target && failures.isEmpty { lock.wait() }
        lock.unlock()
    }

    /// Stops the writers; the latest acknowledged write per block, and what failed.
    func stop() -> (latest: [Int: UInt64], failures: [String], acks: Int) {
        lock.withLock { stopping = true }
        for t in threads { t.join() }
        return lock.withLock { (latest, failures, acks) }
    }

    /// The blocks whose content over NBD is not their latest acknowledged write.
    static func wrongBlocks(port: Int, _ latest: [Int: UInt64]) throws -> [Int] {
        let client = try NBDClient(host: "127.0.0.1", port: port, export: "cli")
        defer { client.disconnect() }
        var wrong: [Int] = []
        var buffer = [UInt8](repeating: 0, count: blockBytes)
        for (block, seed) in latest.sorted(by: { $0.key < $1.key }) {
            try buffer.withUnsafeMutableBytes { try client.read(offset: UInt64(block * blockBytes), into: $0) }
            if buffer != DataPattern.bytes(count: blockBytes, seed: seed) { wrong.append(block) }
        }
        return wrong
    }
}

/// Where two byte arrays first differ (nil when equal): an expectation on whole megabytes would
/// have the test library describe them element by element.
func firstDifference(_ a: [UInt8], _ b: [UInt8]) -> Int? {
    if a == b { return nil }
    return zip(a, b).enumerated().first { $0.element.0 != $0.element.1 }?.offset ?? min(a.count, b.count)
}

/// What a reader thread got.
final class ReadBox: @unchecked Sendable {
    private let lock = ConditionLock()
    private var bytes: [UInt8]?
    func set(_ b: [UInt8]) { lock.withLock { bytes = b } }
    func get() -> [UInt8]? { lock.withLock { bytes } }
    /// Whether the read has come back.
    var done: Bool { lock.withLock { bytes != nil } }
}

/// Member faults injected into a live `swraid run` (started with --fault-injection, driven by
/// `swraid inject`) while NBD clients write, and a member file whose FUSE server dies: md's
/// answers to failing disks, with no acknowledged write lost, no hang, and status and detail
/// saying what happened.
@Suite(.serialized) struct MemberFaultTests {
    let runner = RunCommandTests()

    func makeArray(_ dir: TemporaryDirectory, level: Int, disks: Int) throws -> [String] {
        let members = (0..<disks).map { dir.file("m\($0).img") }
        let created = try swraid(
            ["create", "--level", "\(level)", "--raid-devices", "\(disks)", "--chunk", "64K", "--bitmap", "internal", "--bitmap-chunk", "1M",
             "--size", "8M", "--name", "cli"] + members)
        #expect(created.status == 0, "\(created.stderr)")
        return members
    }

    /// A live `swraid run --fault-injection` on a new array, and how to reach it.
    struct LiveArray {
        let dir: TemporaryDirectory
        let members: [String]
        let socket: String
        let daemon: Process
        let port: Int

        /// `swraid stop`, and the daemon's clean exit.
        func stop() throws {
            #expect(try swraid(["stop", "--control", socket]).status == 0)
            daemon.waitUntilExit()
            #expect(daemon.terminationStatus == 0)
        }
    }

    func startFaultyArray(level: Int, disks: Int) throws -> LiveArray {
        let dir = TemporaryDirectory()
        let members = try makeArray(dir, level: level, disks: disks)
        let socket = dir.file("c.sock")
        let (daemon, _, port) = try runner.startDaemonWithPort(members, control: socket, extra: ["--fault-injection"])
        return LiveArray(dir: dir, members: members, socket: socket, daemon: daemon, port: port)
    }

    func control(_ socket: String, _ args: String...) throws -> ProcessResult {
        try swraid([args[0], "--control", socket] + args.dropFirst())
    }

    @Test func latentBadSectorsAreReadAroundAndRewrittenWhileClientsWrite() throws {
        let array = try startFaultyArray(level: 5, disks: 4)
        let (socket, port) = (array.socket, array.port)
        // Known data in the first 3 MiB, then writers on the rest of the array.
        let known = DataPattern.bytes(count: 3 << 20, seed: 77)
        let client = try NBDClient(host: "127.0.0.1", port: port, export: "cli")
        for piece in stride(from: 0, to: known.count, by: 1 << 20) {
            try known[piece..<(piece + (1 << 20))].withUnsafeBytes { try client.write(offset: UInt64(piece), $0, fua: true) }
        }
        let load = NBDLoad(port: port, writers: 2, firstBlock: known.count / NBDLoad.blockBytes, blocks: 200, seed: 5)
        load.waitForAcks(20)
        // Member 1's first 16 KiB of data (array bytes 64 KiB on: RAID5 of 4, left-symmetric)
        // goes bad under the file system's feet.
        #expect(try control(socket, "inject", "1", "read-error", "0", "32").status == 0)
        var readBack = [UInt8](repeating: 0, count: known.count)
        try readBack.withUnsafeMutableBytes { raw in
            for piece in stride(from: 0, to: raw.count, by: 1 << 20) {
                try client.read(offset: UInt64(piece), into: UnsafeMutableRawBufferPointer(rebasing: raw[piece..<(piece + (1 << 20))]))
            }
        }
        client.disconnect()
        #expect(firstDifference(readBack, known) == nil, "reads rebuilt the bad sectors from the others")
        load.waitForAcks(20)
        let (latest, failures, _) = load.stop()
        #expect(failures.isEmpty, "\(failures)")
        let status = try control(socket, "inject", "1", "status").stdoutText
        #expect(status.contains("bad ranges: 0"), "md's rewrite healed the sectors: \(status)")
        #expect(!status.contains("injected: read 0 "), "the bad sectors were read: \(status)")
        #expect(try control(socket, "get", "dev-1/state").stdoutText == "in_sync\n")
        #expect(try control(socket, "get", "degraded").stdoutText == "0\n")
        #expect(try Int(control(socket, "get", "dev-1/errors").stdoutText.trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0 >= 1)
        #expect(try NBDLoad.wrongBlocks(port: port, latest) == [])
        try array.stop()
    }

    @Test func aWriteErrorUnderLoadFailsTheMemberAndLosesNoAcknowledgedWrite() throws {
        let array = try startFaultyArray(level: 6, disks: 5)
        let (members, socket, port) = (array.members, array.socket, array.port)
        let load = NBDLoad(port: port, writers: 3, blocks: 240, seed: 6)
        load.waitForAcks(40)
        #expect(try control(socket, "inject", members[2], "write-error").status == 0)
        load.waitForAcks(80)
        let (latest, failures, acks) = load.stop()
        #expect(failures.isEmpty, "\(failures)")
        #expect(try control(socket, "get", "dev-2/state").stdoutText.hasPrefix("faulty"))
        let status = try control(socket, "status").stdoutText
        #expect(status.contains("[5/4] [UU_UU]"), "\(status)")
        #expect(status.contains("m2.img[2](F)"), "\(status)")
        let detail = try control(socket, "detail").stdoutText
        #expect(detail.contains("State : clean, degraded") || detail.contains("State : active, degraded"), "\(detail)")
        #expect(detail.contains("faulty   \(members[2])"), "\(detail)")
        #expect(try NBDLoad.wrongBlocks(port: port, latest) == [], "after \(acks) acknowledged writes")
        try array.stop()
    }

    @Test func failDuringACheckUnderLoadThenASpareRebuildsWhileClientsWrite() throws {
        let array = try startFaultyArray(level: 6, disks: 5)
        let (dir, members, socket, port) = (array.dir, array.members, array.socket, array.port)
        let load = NBDLoad(port: port, writers: 2, blocks: 240, seed: 7)
        load.waitForAcks(20)
        #expect(try control(socket, "set", "sync_action", "check").status == 0)
        #expect(try control(socket, "get", "sync_action").stdoutText == "check\n")
        // `swraid fail` while the check runs and the writers write: md interrupts the check.
        #expect(try control(socket, "fail", "3").status == 0)
        load.waitForAcks(20)
        #expect(try control(socket, "wait").status == 0)
        #expect(try control(socket, "get", "sync_action").stdoutText == "idle\n")
        #expect(try control(socket, "status").stdoutText.contains("[5/4] [UUU_U]"))
        #expect(try control(socket, "remove", "3").status == 0)
        // A new file of the members' size joins as a spare; recovery rebuilds onto it under load.
        let spare = dir.file("spare.img")
        #expect(FileManager.default.createFile(atPath: spare, contents: nil))
        let size = try FileManager.default.attributesOfItem(atPath: members[0])[.size] as! UInt64
        #expect(truncate(spare, off_t(size)) == 0)
        #expect(try control(socket, "add", spare).status == 0)
        load.waitForAcks(20)
        #expect(try control(socket, "wait").status == 0)
        let (latest, failures, _) = load.stop()
        #expect(failures.isEmpty, "\(failures)")
        let status = try control(socket, "status").stdoutText
        #expect(status.contains("[5/5] [UUUUU]"), "\(status)")
        #expect(try NBDLoad.wrongBlocks(port: port, latest) == [])
        #expect(try control(socket, "set", "sync_action", "check").status == 0)
        #expect(try control(socket, "wait").status == 0)
        #expect(try control(socket, "get", "mismatch_cnt").stdoutText == "0\n")
        try array.stop()
    }

    @Test func raid6LosesTwoMembersOneAfterTheOtherUnderLoadAndAThirdBreaksItCleanly() throws {
        let array = try startFaultyArray(level: 6, disks: 5)
        let (socket, port) = (array.socket, array.port)
        let load = NBDLoad(port: port, writers: 3, blocks: 240, seed: 8)
        load.waitForAcks(30)
        #expect(try control(socket, "inject", "1", "vanish").status == 0)
        load.waitForAcks(30)
        #expect(try control(socket, "status").stdoutText.contains("[5/4] [U_UUU]"))
        #expect(try control(socket, "inject", "4", "vanish").status == 0)
        load.waitForAcks(30)
        let (latest, failures, _) = load.stop()
        #expect(failures.isEmpty, "\(failures)")
        let status = try control(socket, "status").stdoutText
        #expect(status.contains("[5/3] [U_UU_]"), "\(status)")
        #expect(try NBDLoad.wrongBlocks(port: port, latest) == [], "doubly degraded reads rebuild from P and Q")
        // One more is one too many: requests fail, none returns wrong data, the daemon stays up.
        #expect(try control(socket, "inject", "0", "vanish").status == 0)
        let client = try NBDClient(host: "127.0.0.1", port: port, export: "cli")
        var buffer = [UInt8](repeating: 0, count: NBDLoad.blockBytes)
        let write = Result { try buffer.withUnsafeBytes { try client.write(offset: 0, $0, fua: true) } }
        let read = Result { try buffer.withUnsafeMutableBytes { try client.read(offset: UInt64(NBDLoad.blockBytes), into: $0) } }
        #expect((try? write.get()) == nil, "a write to a broken array fails")
        #expect((try? read.get()) == nil, "a read from a broken array fails")
        client.disconnect()
        #expect(try control(socket, "get", "array_state").stdoutText == "broken\n")
        #expect(try control(socket, "stop").status == 0)
        array.daemon.waitUntilExit()
    }

    @Test func aStalledMemberHoldsUpOnlyTheIOThatNeedsIt() throws {
        let array = try startFaultyArray(level: 5, disks: 4)
        let (socket, port) = (array.socket, array.port)
        let data = DataPattern.bytes(count: 1 << 20, seed: 9)
        let writer = try NBDClient(host: "127.0.0.1", port: port, export: "cli")
        try data.withUnsafeBytes { try writer.write(offset: 0, $0, fua: true) }
        writer.disconnect()
        #expect(try control(socket, "inject", "3", "stall").status == 0)
        // Array chunk 3 (bytes 192-256 KiB) lives on member 3 (RAID5 of 4, left-symmetric, row 1).
        let held = ReadBox()
        let stalledRead = OSThread {
            let client = try? NBDClient(host: "127.0.0.1", port: port, export: "cli")
            var buffer = [UInt8](repeating: 0, count: 4096)
            try? buffer.withUnsafeMutableBytes { try client?.read(offset: 192 << 10, into: $0) }
            client?.disconnect()
            held.set(buffer)
        }
        #expect(try control(socket, "inject", "3", "wait-held", "1").stdoutText.contains("held: "))
        // While it is held: reads of chunks on the other members, and the control socket.
        let other = try NBDClient(host: "127.0.0.1", port: port, export: "cli")
        var buffer = [UInt8](repeating: 0, count: 64 << 10)
        for chunk in [0, 1, 2, 4, 5] {
            try buffer.withUnsafeMutableBytes { try other.read(offset: UInt64(chunk << 16), into: $0) }
            #expect(firstDifference(buffer, Array(data[(chunk << 16)..<((chunk + 1) << 16)])) == nil, "chunk \(chunk)")
        }
        other.disconnect()
        #expect(try control(socket, "status").stdoutText.contains("[4/4] [UUUU]"))
        // (Member 3's share of a superblock update may be held beside the read.)
        let stalled = try control(socket, "inject", "3", "status").stdoutText
        #expect((stalled.split(separator: " ").last.flatMap { Int($0.trimmingCharacters(in: .whitespacesAndNewlines)) } ?? 0) >= 1, "\(stalled)")
        #expect(!held.done)
        #expect(try control(socket, "inject", "3", "resume").status == 0)
        stalledRead.join()
        #expect(firstDifference(held.get() ?? [], Array(data[(192 << 10)..<((192 << 10) + 4096)])) == nil, "the held read completes with its data")
        try array.stop()
    }

    @Test func faultInjectionIsOffUnlessAskedFor() throws {
        let dir = TemporaryDirectory()
        let members = try makeArray(dir, level: 5, disks: 4)
        let socket = dir.file("c.sock")
        let (daemon, _) = try runner.startDaemon(members, control: socket)
        let refused = try control(socket, "inject", "1", "vanish")
        #expect(refused.status == 1)
        #expect(refused.stderr.contains("EPERM: fault injection is off"))
        #expect(try control(socket, "get", "degraded").stdoutText == "0\n")
        #expect(try control(socket, "stop").status == 0)
        daemon.waitUntilExit()
    }

    @Test(.enabled(if: which("nbdfuse") != nil && which("qemu-nbd") != nil && getuid() == 0, "needs root, /dev/fuse, nbdfuse and qemu-nbd"))
    func aMemberFileWhoseServerDiesFailsTheMemberUnderLoad() throws {
        // A member file taken away for real: member 2 lives on a FUSE file system (nbdfuse over
        // qemu-nbd), and the FUSE server is killed mid-load (its open file then answers ENOTCONN, and
        // qemu-nbd exits with its only client gone).
        let dir = TemporaryDirectory()
        var members = try makeArray(dir, level: 6, disks: 5)
        let mount = dir.file("mnt")
        try FileManager.default.createDirectory(atPath: mount, withIntermediateDirectories: true)
        // nbdfuse writes its pid file once the mount is ready: a FIFO, read once, no polling.
        let pidFile = dir.file("fuse.pid")
        #expect(mkfifo(pidFile, 0o600) == 0)
        let fuse = Process()
        fuse.executableURL = URL(fileURLWithPath: which("nbdfuse")!)
        // nbdfuse starts qemu-nbd itself (socket activation), so nothing races its listening.
        fuse.arguments = ["-P", pidFile, mount + "/m2", "[", which("qemu-nbd")!, "-f", "raw", members[2], "]"]
        try fuse.run()
        defer {
            if fuse.isRunning { kill(fuse.processIdentifier, SIGKILL) }
            fuse.waitUntilExit()
            _ = try? runProcess("/bin/umount", ["-l", mount])
        }
        let pid = FileHandle(forReadingAtPath: pidFile)?.readDataToEndOfFile() ?? Data()
        try #require(Int32(String(decoding: pid, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)) != nil, "nbdfuse mounted")
        members[2] = mount + "/m2"
        let socket = dir.file("c.sock")
        let (daemon, _, port) = try runner.startDaemonWithPort(members, control: socket)
        let load = NBDLoad(port: port, writers: 3, blocks: 240, seed: 10)
        load.waitForAcks(40)
        kill(fuse.processIdentifier, SIGKILL)
        load.waitForAcks(60)
        let (latest, failures, _) = load.stop()
        #expect(failures.isEmpty, "\(failures)")
        let status = try control(socket, "status").stdoutText
        #expect(status.contains("[5/4] [UU_UU]"), "\(status)")
        #expect(try control(socket, "get", "dev-2/state").stdoutText.hasPrefix("faulty"))
        #expect(try NBDLoad.wrongBlocks(port: port, latest) == [])
        #expect(try control(socket, "stop").status == 0)
        daemon.waitUntilExit()
        #expect(daemon.terminationStatus == 0)
    }
}
