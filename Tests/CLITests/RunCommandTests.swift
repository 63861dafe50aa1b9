import DiskIO
import Foundation
import MDFormat
import TestSupport
import Testing

/// `swraid run` as a user runs it: a daemon in the foreground, driven by the CLI's verbs over
/// its control socket, stopped by `swraid stop` or SIGTERM, leaving the array clean.
@Suite struct RunCommandTests {
    /// Starts `swraid run` and returns once it logs that it serves (read from its stderr as it
    /// comes: no polling).
    func startDaemon(_ members: [String], control: String) throws -> (Process, FileHandle) {
        let (process, log, _) = try startDaemonWithPort(members, control: control)
        return (process, log)
    }

    /// The same, also returning the NBD port the daemon bound (it logs it).
    func startDaemonWithPort(_ members: [String], control: String, extra: [String] = []) throws -> (Process, FileHandle, Int) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: swraidExecutable)
        process.arguments = ["run", "--listen", "127.0.0.1:0", "--control", control] + extra + members
        let stderr = Pipe()
        process.standardError = stderr
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        var seen = ""
        while !seen.contains("control socket") {
            let chunk = stderr.fileHandleForReading.availableData
            guard !chunk.isEmpty else { throw POSIXError(.EPIPE) }
            seen += String(decoding: chunk, as: UTF8.self)
        }
        let served = seen.split(separator: "\n").first { $0.contains("over NBD on ") }
        let port = served.flatMap { Int($0.split(separator: ":").last ?? "") } ?? 0
        return (process, stderr.fileHandleForReading, port)
    }

    func makeArray(_ dir: TemporaryDirectory) throws -> [String] {
        let members = (0..<4).map { dir.file("m\($0).img") }
        let created = try swraid(["create", "--level", "5", "--raid-devices", "4", "--chunk", "64K", "--size", "8M", "--name", "cli"] + members)
        #expect(created.status == 0, "\(created.stderr)")
        return members
    }

    func isClean(_ path: String) throws -> Bool {
        let file = try MemberFile(path: path, mode: .readOnly)
        defer { file.close() }
        return try SuperblockProbe.probe(file).superblock.resyncOffsetSectors == maxSector
    }

    @Test func verbsOverTheSocketThenStopLeaveTheArrayClean() throws {
        let dir = TemporaryDirectory()
        let members = try makeArray(dir)
        let control = dir.file("cli.sock")
        let (daemon, log) = try startDaemon(members, control: control)
        let status = try swraid(["status", "--control", control])
        #expect(status.status == 0)
        #expect(status.stdoutText.contains("cli : active raid5 m3.img[3] m2.img[2] m1.img[1] m0.img[0]"), "\(status.stdoutText)")
        #expect(status.stdoutText.contains("[4/4] [UUUU]"))
        #expect(try swraid(["get", "--control", control, "level"]).stdoutText == "raid5\n")
        let bad = try swraid(["set", "--control", control, "sync_action", "sideways"])
        #expect(bad.status == 22)
        #expect(bad.stderr.contains("EINVAL"))
        #expect(try swraid(["get", "--control", control, "no_such_thing"]).status == 2)
        #expect(try swraid(["fail", "--control", control, dir.file("not-a-member.img")]).status == 22)
        #expect(try swraid(["detail", "--control", control]).stdoutText.contains("Raid Devices : 4"))
        let stop = try swraid(["stop", "--control", control])
        #expect(stop.status == 0, "\(stop.stderr)")
        daemon.waitUntilExit()
        #expect(daemon.terminationStatus == 0, "\(String(decoding: log.readDataToEndOfFile(), as: UTF8.self))")
        #expect(!DiskIO.FileSystem.exists(control))
        for m in members { #expect(try isClean(m)) }
    }

    @Test func sigtermStopsCleanlyWithExitZero() throws {
        let dir = TemporaryDirectory()
        let members = try makeArray(dir)
        let control = dir.file("cli.sock")
        let (daemon, log) = try startDaemon(members, control: control)
        // Dirty the array (md's "active"), then SIGTERM: it must be clean on disk afterwards.
        #expect(try swraid(["set", "--control", control, "array_state", "active"]).status == 0)
        #expect(try !isClean(members[0]))
        daemon.terminate()
        daemon.waitUntilExit()
        let text = String(decoding: log.readDataToEndOfFile(), as: UTF8.self)
        #expect(daemon.terminationStatus == 0, "\(text)")
        #expect(text.contains("stopped"))
        for m in members { #expect(try isClean(m)) }
    }

    /// A socket exposed by mistake (made world-writable here) still answers no other user: the
    /// daemon checks the peer's credentials (SO_PEERCRED) before it reads a request.
    @Test(.enabled(if: getuid() == 0 && which("setpriv") != nil, "needs root and setpriv to connect as another user"))
    func anotherUserIsRefusedEvenThroughAnOpenSocket() throws {
        let dir = TemporaryDirectory()
        let members = try makeArray(dir)
        let control = dir.file("cli.sock")
        let (daemon, _) = try startDaemon(members, control: control)
        defer { daemon.terminate(); daemon.waitUntilExit() }
        #expect(chmod(dir.path, 0o755) == 0)
        #expect(chmod(control, 0o666) == 0)
        let other = try runProcess(which("setpriv")!, ["--reuid=65534", "--regid=65534", "--clear-groups", swraidExecutable, "get", "--control", control, "level"])
        #expect(other.status == 13, "\(other.stdoutText)\(other.stderr)")
        #expect(other.stderr.contains("uid 65534 may not control this array"), "\(other.stderr)")
        // The owner still gets answers.
        #expect(try swraid(["get", "--control", control, "level"]).stdoutText == "raid5\n")
    }

    /// Two writers on one member is silent corruption: a second `swraid run` or a `create` on
    /// members in use is refused with a clear message and changes nothing.
    @Test func aSecondRunOrACreateOnMembersInUseIsRefused() throws {
        let dir = TemporaryDirectory()
        let members = try makeArray(dir)
        let (daemon, _) = try startDaemon(members, control: dir.file("cli.sock"))
        defer { daemon.terminate(); daemon.waitUntilExit() }
        let before = members.map { fileBytes($0) }
        let second = try swraid(["run", "--listen", "127.0.0.1:0", "--control", dir.file("second.sock")] + members)
        #expect(second.status == 1)
        #expect(second.stderr.contains("in use by another process"), "\(second.stderr)")
        let create = try swraid(["create", "--level", "5", "--raid-devices", "4", "--force", "--size", "4M"] + members)
        #expect(create.status != 0)
        #expect(create.stderr.contains("in use"), "\(create.stderr)")
        #expect(members.map { fileBytes($0) } == before)
    }

    /// A send buffer, thread count or poll window out of range is refused before anything is
    /// opened.
    @Test func aSendBufferThreadCountOrPollWindowOutOfRangeIsRefused() throws {
        let dir = TemporaryDirectory()
        let members = try makeArray(dir)
        let before = members.map { fileBytes($0) }
        let cases = [
            ("--send-buffer-kib=-1", "--send-buffer-kib takes 0"), ("--send-buffer-kib=2000000", "--send-buffer-kib takes 0"),
            ("--io-threads=0", "--io-threads takes 1 to 64"), ("--io-threads=65", "--io-threads takes 1 to 64"),
            ("--poll-max-us=-1", "--poll-max-us takes 0"), ("--poll-max-us=1001", "--poll-max-us takes 0"),
            // Microseconds that would overflow when made nanoseconds: refused, not a trap.
            ("--poll-max-us=99999999999999999", "--poll-max-us takes 0"),
        ]
        for (bad, message) in cases {
            // `timeout`: a run that took the value would serve until stopped.
            let run = try runProcess(which("timeout")!, ["30", swraidExecutable, "run", "--listen", "127.0.0.1:0", "--control", dir.file("cli.sock"), bad] + members)
            #expect(run.status != 0 && run.stderr.contains(message), "\(bad): \(run.status) \(run.stderr)")
        }
        #expect(members.map { fileBytes($0) } == before)
    }
}
