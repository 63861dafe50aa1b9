import ControlPlane
import ControlProtocol
import DiskIO
import Foundation
import Logging
import MDFormat
import MDOffline
import RaidCore
import RaidEngine
import TestSupport
import Testing

let quietLogger = Logger(label: "swraid-test", factory: { _ in SwiftLogNoOpLogHandler() })

@Suite struct ControlProtocolTests {
    @Test func everyVerbParsesAndPrintsBackTheSameLine() throws {
        let requests: [ControlRequest] = [
            .get("sync_action"), .set("sync_action", "check"), .set("dev-2/state", "faulty"), .status, .detail, .detailJSON,
            .fail("/tmp/a b/m1.img"), .remove("1"), .readd("m1"), .add("/dev/loop3"), .wait, .stop, .help,
        ]
        for request in requests {
            #expect(try ControlRequest.parse(request.line + "\n") == request, "\(request.line)")
        }
        // The last argument takes the rest of the line (paths with spaces).
        #expect(try ControlRequest.parse("add /tmp/with space.img") == .add("/tmp/with space.img"))
        #expect(try ControlRequest.parse("set array_size default\r\n") == .set("array_size", "default"))
    }

    @Test func badRequestsAreNamed() {
        #expect(throws: ControlRequest.ParseError.unknownVerb("frobnicate")) { try ControlRequest.parse("frobnicate now") }
        #expect(throws: ControlRequest.ParseError.unknownVerb("")) { try ControlRequest.parse("") }
        #expect(throws: ControlRequest.ParseError.missingArgument("get")) { try ControlRequest.parse("get") }
        #expect(throws: ControlRequest.ParseError.missingArgument("set ATTR")) { try ControlRequest.parse("set sync_action") }
        #expect(throws: ControlRequest.ParseError.unexpectedArgument("stop")) { try ControlRequest.parse("stop now") }
    }

    @Test func theFramerHandsOutLinesAcrossChunksWithinItsBounds() throws {
        var framer = ControlRequestFramer()
        try framer.append(Array("get sync_action\nsta".utf8))
        #expect(try framer.nextLine() == "get sync_action")
        #expect(try framer.nextLine() == nil)
        try framer.append(Array("tus\n\n".utf8))
        #expect(try framer.nextLine() == "status")
        #expect(try framer.nextLine() == "")
        #expect(try framer.nextLine() == nil)
        #expect(framer.pendingBytes == 0)
        // A line of exactly the limit is a request; one byte more is not.
        try framer.append([UInt8](repeating: UInt8(ascii: "x"), count: ControlRequest.maxLineBytes) + [UInt8(ascii: "\n")])
        #expect(try framer.nextLine()?.utf8.count == ControlRequest.maxLineBytes)
        try framer.append([UInt8](repeating: UInt8(ascii: "x"), count: ControlRequest.maxLineBytes + 1))
        #expect(throws: ControlRequestFramer.Refusal.lineTooLong) { try framer.nextLine() }
        // Lines sent ahead of their replies wait, up to the bound, and nothing past it is kept.
        var ahead = ControlRequestFramer()
        let line = Array("get array_state\n".utf8)
        let fits = ControlRequestFramer.maxPendingBytes / line.count
        try ahead.append(Array([[UInt8]](repeating: line, count: fits).joined()))
        #expect(throws: ControlRequestFramer.Refusal.tooMuchPending) { try ahead.append(line) }
        #expect(ahead.pendingBytes == fits * line.count)
        #expect(try ahead.nextLine() == "get array_state")
        try ahead.append(line)
    }

    @Test func aReplyCountThatIsNotACountIsNotAReply() {
        // "ok -1" made the decoder build a range backwards and trap (seen while writing the
        // control fuzzer, which now decodes every input as replies as well).
        #expect(ControlReply.decode("ok -1\n")?.reply == .error(errno: "EPROTO", message: "not a control reply: ok -1"))
        #expect(ControlReply.decode("ok x\n")?.reply == .error(errno: "EPROTO", message: "not a control reply: ok x"))
    }

    @Test func repliesRoundTripAndWaitForTheirLastLine() {
        let reply = ControlReply.ok(["first", "", "third: with spaces"])
        let text = reply.encoded
        #expect(text == "ok 3\nfirst\n\nthird: with spaces\n")
        #expect(ControlReply.decode(text)?.reply == reply)
        #expect(ControlReply.decode(text)?.consumed == text.utf8.count)
        // Incomplete: nothing yet.
        #expect(ControlReply.decode(String(text.dropLast())) == nil)
        #expect(ControlReply.decode("ok 1\n") == nil)
        let error = ControlReply.error(errno: "EBUSY", message: "busy: a check\nis running")
        #expect(error.encoded == "error EBUSY busy: a check is running\n")
        #expect(ControlReply.decode(error.encoded)?.reply == .error(errno: "EBUSY", message: "busy: a check is running"))
        #expect(ControlReply.decode("HTTP/1.1 400\n")?.reply == .error(errno: "EPROTO", message: "not a control reply: HTTP/1.1 400"))
        #expect(errnoNumber(named: "EBUSY") == 16)
        #expect(errnoNumber(named: "EINVAL") == 22)
    }
}

@Suite struct MDStatFormatTests {
    /// The seed scenario's mdstat line (md-semantics.md §2.4): bar, label, percent, numbers.
    @Test func theProgressLineIsMdsOwn() {
        let line = MDStatReport.progressLine(label: "check", doneKiB: 7_350_290_348, totalKiB: 7_813_894_144, speedKiBps: 135)
        #expect(line.hasPrefix("[==================>..]  check = 94.0% (7350290348/7813894144) finish="))
        #expect(line.hasSuffix(" speed=135K/sec"))
        #expect(MDStatReport.progressLine(label: "resync", doneKiB: 0, totalKiB: 1000, speedKiBps: 0)
            == "[>....................]  resync =  0.0% (0/1000) finish=0.0min speed=0K/sec")
        // 600 KiB left at 10 KiB/s: one minute.
        #expect(MDStatReport.progressLine(label: "recovery", doneKiB: 400, totalKiB: 1000, speedKiBps: 10)
            == "[========>............]  recovery = 40.0% (400/1000) finish=1.0min speed=10K/sec")
        #expect(MDStatReport.progressLine(label: "check", doneKiB: 1000, totalKiB: 1000, speedKiBps: 5)
            == "[====================>]  check =100.0% (1000/1000) finish=0.0min speed=5K/sec")
    }
}

/// The arrays the kernel made, served read-only: `detail` agrees with what mdadm printed while
/// the kernel ran them, and serving them changes nothing on disk.
@Suite(.serialized) struct FixtureDetailTests {
    @Test(.enabled(if: FixturePaths.fixturesRoot != nil, Comment(rawValue: FixturePaths.skipMessage)))
    func detailAgreesWithMdadmFieldByField() async throws {
        let fixtures = FixtureArray.all()
        #expect(fixtures.count >= 8)
        for fixture in fixtures {
            let expected = try String(contentsOfFile: fixture.path("detail.txt"), encoding: .utf8)
                .split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
            let paths = fixture.memberFiles.map(fixture.path)
            let before = try paths.map { try Data(contentsOf: URL(fileURLWithPath: $0)) }
            var options = EngineOptions()
            options.readOnly = true
            let engine = try RaidEngine.assemble(paths: paths, options: options, logger: quietLogger)
            let service = ControlService(engine: engine, name: "/dev/md0") {}
            let reply = await service.handle(.detail)
            let snapshot = await engine.snapshot()
            await engine.stop()
            let after = try paths.map { try Data(contentsOf: URL(fileURLWithPath: $0)) }
            #expect(before == after, "\(fixture): serving read-only changed a member")
            // What the socket answers is the report (local time, this host's name)...
            let local = MDDetail(name: "/dev/md0", snapshot: snapshot, devices: paths.map { ReportDevice(path: $0) }, homehost: Host.name())
            #expect(reply == .ok(local.lines(formatTime: localCTime)), "\(fixture)")
            // ...and the report, on a host named like the fixtures' VM with its UTC clock, is
            // what mdadm printed.
            let asInVM = MDDetail(name: "/dev/md0", snapshot: snapshot, devices: paths.map { ReportDevice(path: $0) }, homehost: "oracle")
            compare(fixture, got: asInVM.lines(formatTime: formatUTCTime), expected: expected)
        }
    }

    /// Line by line; device rows compared without major, minor and path.
    func compare(_ fixture: FixtureArray, got: [String], expected: [String]) {
        let expected = expected.last == "" ? Array(expected.dropLast()) : expected
        #expect(got.count == expected.count, "\(fixture): \(got.count) lines, mdadm printed \(expected.count)\n\(got.joined(separator: "\n"))")
        let tableHeader = expected.firstIndex { $0.hasPrefix("    Number   Major") } ?? expected.count
        for (i, (mine, theirs)) in zip(got, expected).enumerated() {
            if i > tableHeader {
                #expect(withoutDeviceNames(mine) == withoutDeviceNames(theirs), "\(fixture) line \(i + 1):\n  ours:  \(mine)\n  mdadm: \(theirs)")
            } else if fixture.name == "r6-ls-64k-5-stale" && (theirs.contains("State : ") || theirs.contains("Events : ")) {
                // mdadm read this one while the array was still active (events 21); the
                // superblocks record the clean stop that followed (events 22).
                #expect(mine == theirs.replacingOccurrences(of: "active, degraded", with: "clean, degraded").replacingOccurrences(of: ": 21", with: ": 22"))
            } else {
                #expect(mine == theirs, "\(fixture) line \(i + 1):\n  ours:  \(mine)\n  mdadm: \(theirs)")
            }
        }
    }

    /// A device row with its Major and Minor columns blanked and its path cut off (what differs
    /// between the VM's /dev/vdX and our image files); Number, RaidDevice and State stay, at
    /// their columns.
    func withoutDeviceNames(_ row: String) -> String {
        var characters = Array(row)
        for i in 8..<min(25, characters.count) { characters[i] = " " }
        var text = String(characters)
        if let path = text.range(of: "   /") { text = String(text[..<path.lowerBound]) }
        return text
    }
}

/// A new array's control socket in a temporary directory.
final class ControlledArray: @unchecked Sendable {
    let dir: TemporaryDirectory
    let paths: [String]
    let engine: RaidEngine
    let server: ControlServer
    let stopRequested = StopSignal()
    let service: ControlService

    init() async throws {
        var request = CreateRequest(
            level: .raid5, raidDisks: 4, memberSizesSectors: [], arrayUUID: (0..<16).map { UInt8($0 + 40) },
            deviceUUIDs: (0..<4).map { i in (0..<16).map { UInt8(truncatingIfNeeded: $0 + i * 16 + 1) } }, timeSeconds: 1_764_000_000)
        request.chunkKiB = 64
        request.sizeSectors = 8 * 2048
        request.bitmap = .internal_
        request.bitmapChunkBytes = 1 << 20
        request.name = "ctl"
        request.homehost = "test"
        let dir = TemporaryDirectory()
        self.dir = dir
        paths = (0..<4).map { dir.file("m\($0).img") }
        try ArrayCreator(paths: paths, request: request, options: CreateOptions()).run()
        engine = try RaidEngine.assemble(paths: paths, options: EngineOptions(), logger: quietLogger)
        let signal = stopRequested
        service = ControlService(engine: engine, name: "ctl") { signal.fire() }
        server = try await ControlServer.start(service: service, path: dir.file("run/ctl.sock"), logger: quietLogger)
    }

    /// One request through the socket, from a thread of its own (the client blocks).
    func ask(_ request: ControlRequest) async throws -> ControlReply {
        let path = server.path
        return try await withCheckedThrowingContinuation { continuation in
            Thread {
                do { continuation.resume(returning: try ControlClient(path: path).request(request)) } catch { continuation.resume(throwing: error) }
            }.start()
        }
    }

    /// Raw bytes to the socket and whatever comes back until the daemon closes or `replies` replies arrived.
    func exchange(_ bytes: [UInt8], replies: Int) async throws -> (replies: [ControlReply], closed: Bool) {
        try await converse(bytes) { socket in
            var text = ""
            var got: [ControlReply] = []
            var closed = false
            while got.count < replies {
                let chunk = try socket.receive()
                if chunk.isEmpty { closed = true; break }
                text += String(decoding: chunk, as: UTF8.self)
                while let (reply, used) = ControlReply.decode(text) {
                    got.append(reply)
                    text = String(text.utf8.dropFirst(used))!
                }
            }
            return (got, closed)
        }
    }

    /// Sends `bytes` on a new connection, then reads with `body`, on a thread of its own (the
    /// socket client blocks).
    func converse<T: Sendable>(_ bytes: [UInt8], _ body: @escaping @Sendable (StreamSocketClient) throws -> T) async throws -> T {
        let path = server.path
        return try await withCheckedThrowingContinuation { continuation in
            Thread {
                do {
                    let socket = try StreamSocketClient(path: path)
                    try socket.send(String(decoding: bytes, as: UTF8.self))
                    continuation.resume(returning: try body(socket))
                } catch { continuation.resume(throwing: error) }
            }.start()
        }
    }

    /// Sends `bytes` on a new connection and reads until what arrived ends with `tail` (or the
    /// server closes).
    func exchange(_ bytes: [UInt8], until tail: [UInt8]) async throws -> [UInt8] {
        try await converse(bytes) { socket in
            var received: [UInt8] = []
            while !received.reversed().starts(with: tail.reversed()) {
                let chunk = try socket.receive()
                if chunk.isEmpty { break }
                received += chunk
            }
            return received
        }
    }

    func stop() async {
        await engine.stop()
        service.arrayStopped()
        await server.stop()
    }
}

@Suite struct ControlSocketTests {
    @Test func theDefaultSocketPathNamesTheArrayWithEverySlashReplaced() {
        let directory = ControlServer.runtimeDirectory
        #expect(ControlServer.defaultPath(arrayName: "data") == directory + "/data.sock")
        #expect(ControlServer.defaultPath(arrayName: "host:a/b") == directory + "/host:a_b.sock")
        // Leading, trailing and repeated slashes are each replaced, none dropped.
        #expect(ControlServer.defaultPath(arrayName: "/a//b/") == directory + "/_a__b_.sock")
    }

    @Test func theSocketIsItsOwnersAloneAndSpeaksMdsAttributes() async throws {
        let array = try await ControlledArray()
        var st = stat()
        #expect(stat(array.server.path, &st) == 0)
        #expect(st.st_mode & 0o777 == 0o600)
        #expect(try await array.ask(.get("sync_action")) == .ok(["idle"]))
        #expect(try await array.ask(.get("level")) == .ok(["raid5"]))
        #expect(try await array.ask(.get("raid_disks")) == .ok(["4"]))
        #expect(try await array.ask(.get("dev-1/state")) == .ok(["in_sync"]))
        // Each refusal carries md's errno.
        #expect(try await array.ask(.set("sync_action", "bogus")).errnoName == "EINVAL")
        #expect(try await array.ask(.get("no_such_attribute")).errnoName == "ENOENT")
        #expect(try await array.ask(.set("mismatch_cnt", "5")).errnoName == "EACCES")
        #expect(try await array.ask(.fail("/nonexistent/member.img")).errnoName == "EINVAL")
        #expect(try await array.ask(.add(array.paths[0])).errnoName != nil)
        // A check runs slowly enough to be seen; a second sync action is EBUSY; idle stops it.
        #expect(try await array.ask(.set("sync_speed_max", "64")) == .ok([]))
        #expect(try await array.ask(.set("sync_action", "check")) == .ok([]))
        #expect(try await array.ask(.get("sync_action")) == .ok(["check"]))
        #expect(try await array.ask(.set("sync_action", "repair")).errnoName == "EBUSY")
        guard case .ok(let status) = try await array.ask(.status) else { Issue.record("status refused"); return }
        try #require(status.count == 4, "\(status)")
        #expect(status[0] == "ctl : active raid5 m3.img[3] m2.img[2] m1.img[1] m0.img[0]")
        #expect(status[2].contains("  check = "), "\(status)")
        #expect(status[3].hasPrefix("      bitmap: "), "\(status)")
        #expect(try await array.ask(.set("sync_action", "idle")) == .ok([]))
        #expect(try await array.ask(.get("sync_action")) == .ok(["idle"]))
        guard case .ok(let json) = try await array.ask(.detailJSON), json.count == 1 else { Issue.record("detail-json refused"); return }
        let object = try JSONSerialization.jsonObject(with: Data(json[0].utf8)) as! [String: Any]
        #expect(object["raid_level"] as? String == "raid5")
        #expect((object["devices"] as? [Any])?.count == 4)
        await array.stop()
    }

    /// One request is one line: an argument with a line break in it is refused by the client
    /// before anything is sent. Sent, `idle` then `stop` were two requests, the second served
    /// (if the connection lived long enough) with nobody waiting for its answer.
    @Test func anArgumentWithALineBreakIsRefusedBeforeItIsSent() async throws {
        let array = try await ControlledArray()
        for value in ["idle\nstop", "idle\r\nstop"] {
            do {
                let reply = try await array.ask(.set("sync_action", value))
                Issue.record("sent, and answered \(reply)")
            } catch {
                #expect("\(error)".contains("line break"), "\(error)")
            }
        }
        #expect(try await array.ask(.get("array_state")) != .ok(["inactive"]))
        #expect(try await array.ask(.get("sync_action")) == .ok(["idle"]), "the array no longer answers: the second line was served")
        await array.stop()
    }

    @Test func garbageGetsAnErrorAndTheConnectionLivesOnUntilALineIsTooLong() async throws {
        let array = try await ControlledArray()
        let mixed = Array("frobnicate\nget\n\u{1}\u{2}\u{3}\nget sync_action\n".utf8)
        let (replies, closed) = try await array.exchange(mixed, replies: 4)
        #expect(!closed)
        #expect(replies.count == 4)
        #expect(replies.prefix(3).allSatisfy { $0.errnoName == "EINVAL" }, "\(replies)")
        #expect(replies.last == .ok(["idle"]))
        let endless = [UInt8](repeating: UInt8(ascii: "x"), count: ControlRequest.maxLineBytes + 100)
        let (tooLong, closedAfter) = try await array.exchange(endless, replies: 2)
        #expect(tooLong.first?.errnoName == "EINVAL")
        #expect(closedAfter)
        // The daemon still answers.
        #expect(try await array.ask(.get("array_state")) == .ok(["clean"]))
        await array.stop()
    }

    @Test func aFloodOfBadLinesInOnePacketIsAnsweredLineByLineAndTheConnectionLivesOn() async throws {
        // Each bad line gets its error; they are served in a loop (the server once recursed once
        // per waiting line, so a client chose the depth of the daemon's stack).
        let array = try await ControlledArray()
        let badLines = 30_000
        let flood = [UInt8](repeating: UInt8(ascii: "\n"), count: badLines) + Array("get array_state\n".utf8)
        let received = try await array.exchange(flood, until: Array("ok 1\nclean\n".utf8))
        let lines = received.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false)
        #expect(lines.filter { $0.starts(with: Array("error EINVAL".utf8)) }.count == badLines)
        #expect(try await array.ask(.get("sync_action")) == .ok(["idle"]))
        await array.stop()
    }

    @Test func stopAnswersOnceTheArrayHasStoppedClean() async throws {
        let array = try await ControlledArray()
        #expect(try await array.ask(.set("array_state", "active")) == .ok([]))
        async let reply = array.ask(.stop)
        // The daemon's part: the request arrives as a stop signal, the array stops, then the reply.
        await array.stopRequested.wait()
        await array.engine.stop()
        array.service.arrayStopped()
        #expect(try await reply == .ok([]))
        await array.server.stop()
        let superblock = try SuperblockProbe.probe(try MemberFile(path: array.paths[0], mode: .readOnly)).superblock
        #expect(superblock.resyncOffsetSectors == maxSector, "the stop left the array dirty")
    }
}

extension ControlReply {
    var errnoName: String? {
        if case .error(let errno, _) = self { return errno }
        return nil
    }
}
