import DiskIO
import Foundation
import MDOffline
import NBDProtocol
@testable import NBDServer
import NIOCore
import RaidCore
import TestSupport
import Testing

/// The server with real clients from Debian's packages (libnbd-bin, qemu-utils; `.ci/run`
/// installs them), and with a raw socket sending what no real client would.
@Suite struct NBDClientTests {
    @Test(.enabled(if: haveNBDTools, "nbdinfo/nbdcopy (libnbd-bin) not installed; .ci/run installs them"))
    func nbdinfoShowsTheExportAsAdvertised() async throws {
        let array = try await ServedArray.make(level: .raid6, disks: 6, chunkKiB: 64)
        let result = try client("nbdinfo", ["--json", array.uri])
        await array.stop()
        #expect(result.status == 0, "\(result.stderr)")
        let json = try JSONSerialization.jsonObject(with: result.stdout) as! [String: Any]
        let export = (json["exports"] as! [[String: Any]])[0]
        #expect(export["export-name"] as? String == "served")
        #expect(export["export-size"] as? Int == Int(array.engine.sizeBytes))
        #expect(export["block_size_minimum"] as? Int == 512)
        // RAID6 of 6: four 64 KiB chunks, a 256 KiB stripe, a power of two.
        #expect(export["block_size_preferred"] as? Int == 256 << 10)
        #expect(export["block_size_maximum"] as? Int == 32 << 20)
        for flag in ["can_flush", "can_fua", "can_trim", "can_zero", "can_fast_zero", "can_multi_conn"] {
            #expect(export[flag] as? Bool == true, "\(flag)")
        }
        #expect(export["is_read_only"] as? Bool == false)
        #expect(json["structured"] as? Bool == true)
    }

    @Test(.enabled(if: haveQemuIO, "qemu-io (qemu-utils) not installed; .ci/run installs it"))
    func qemuIOWritesPatternsAndReadsThemBack() async throws {
        let array = try await ServedArray.make(level: .raid5, disks: 4, chunkKiB: 64)
        // Sizes and offsets that start and end inside chunks, span rows, and cover whole stripes.
        let cases: [(offset: Int, length: Int)] = [(0, 512), (512, 4096), (65024, 1024), (70_000 * 512, 192 << 10), (3 << 20, 1 << 20),
            ((8 << 20) - 512, 512), (5 * 192 << 10, 7 * 4096), (17 * 4096 + 512, 129 * 512)]
        var commands: [String] = []
        for (i, c) in cases.enumerated() { commands += ["-c", "write -P \(0x11 + i) \(c.offset) \(c.length)"] }
        commands += ["-c", "flush"]
        for (i, c) in cases.enumerated() { commands += ["-c", "read -P \(0x11 + i) \(c.offset) \(c.length)"] }
        commands += ["-c", "write -z 10M 1M", "-c", "read -P 0 10M 1M", "-c", "write -P 0x77 -f 11M 64k", "-c", "read -P 0x77 11M 64k"]
        let result = try client("qemu-io", ["-f", "raw"] + commands + [array.uri])
        await array.stop()
        #expect(result.status == 0, "\(result.stdoutText)\(result.stderr)")
        #expect(!result.stdoutText.contains("Pattern verification failed"), "\(result.stdoutText)")
        #expect(!result.stdoutText.contains("error"), "\(result.stdoutText)")
        #expect(try OfflineArray(paths: array.paths).check().mismatchSectors == 0)
    }

    /// A pattern file of `bytes` to copy into the array, and the path a copy back goes to.
    func copyFiles(_ array: ServedArray, bytes: Int) throws -> (input: String, output: String) {
        let input = array.dir.file("in.bin")
        try writePatternFile(input, mebibytes: bytes >> 20)
        return (input, array.dir.file("out.bin"))
    }

    /// The first `bytes` copied back out of the array are those copied in.
    func expectCopiedBack(_ output: String, from input: String, bytes: Int, sourceLocation: SourceLocation = #_sourceLocation) throws {
        let back = try Data(contentsOf: URL(fileURLWithPath: output))
        let sent = try Data(contentsOf: URL(fileURLWithPath: input))
        #expect(back.prefix(bytes) == sent, "the data copied back differs", sourceLocation: sourceLocation)
    }

    @Test(.enabled(if: haveNBDTools, "nbdcopy (libnbd-bin) not installed; .ci/run installs it"))
    func nbdcopyRoundTripSurvivesAStopAndARestart() async throws {
        let array = try await ServedArray.make(level: .raid5, disks: 4, memberMiB: 96, chunkKiB: 512)
        let size = 256 << 20
        let (input, output) = try copyFiles(array, bytes: size)
        let copyIn = try client("nbdcopy", ["--flush", input, array.uri])
        #expect(copyIn.status == 0, "\(copyIn.stderr)")
        await array.stop()
        try await array.restart()
        let copyOut = try client("nbdcopy", [array.uri, output])
        await array.stop()
        #expect(copyOut.status == 0, "\(copyOut.stderr)")
        try expectCopiedBack(output, from: input, bytes: size)
        #expect(try OfflineArray(paths: array.paths).check().mismatchSectors == 0)
    }

    /// Served over a Unix socket: nbdcopy's copy in and back out round-trips. Over a Unix socket
    /// and over TCP, a connection's kernel send buffer is the one asked for (`sendBufferBytes`,
    /// doubled by Linux and capped at `net.core.wmem_max`), large enough for a whole read reply
    /// in one write.
    @Test(.enabled(if: haveNBDTools, "nbdcopy (libnbd-bin) not installed; .ci/run installs it"))
    func aConnectionGetsASendBufferForAWholeReplyOverUnixAndTCP() async throws {
        let array = try await ServedArray.make(level: .raid5, disks: 4, memberMiB: 24, chunkKiB: 512, overUnixSocket: true)
        let size = 64 << 20
        let (input, output) = try copyFiles(array, bytes: size)
        let copyIn = try client("timeout", ["60", which("nbdcopy")!, "--flush", input, array.uri])
        #expect(copyIn.status == 0, "\(copyIn.stderr)")
        let copyOut = try client("timeout", ["60", which("nbdcopy")!, array.uri, output])
        #expect(copyOut.status == 0, "\(copyOut.stderr)")
        try expectCopiedBack(output, from: input, bytes: size)

        let wmemMax = Int(try String(contentsOfFile: "/proc/sys/net/core/wmem_max", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines))!
        let expected = [SocketOptionValue(2 * min(NBDServerOptions().sendBufferBytes!, wmemMax))]
        let overUnix = try RawClient(unixPath: array.socketPath!)
        #expect(try await sendBuffers(array.server, after: overUnix) == expected, "over a Unix socket")
        await array.stop()
        let overTCPArray = try await ServedArray.make(level: .raid5, disks: 3, memberMiB: 8)
        let overTCP = try RawClient(port: overTCPArray.port)
        #expect(try await sendBuffers(overTCPArray.server, after: overTCP) == expected, "over TCP")
        await overTCPArray.stop()
    }

    /// Reads the page cache holds are answered at once, while the connection is still taking
    /// the requests that came with them: their replies wait for the rest and go out together
    /// (one flush for what one read of the socket brought), not one write each.
    @Test func repliesToReadsAnsweredAtOnceGoOutTogether() async throws {
        let array = try await ServedArray.make(level: .raid5, disks: 4, memberMiB: 8, overUnixSocket: true)
        let raw = try RawClient(unixPath: array.socketPath!)
        _ = try raw.negotiate(export: "served")
        let servedBefore = await array.engine.memberReadShortcuts().servedFromCache
        let count = 16
        // One send: the requests arrive together.
        raw.send((0..<count).flatMap { i in
            NBDRequestHeader(flags: [], type: NBDCommand.read.rawValue, cookie: UInt64(i + 1), offset: UInt64(i) * 8192, length: 4096).encoded()
        })
        for i in 0..<count {
            let reply = raw.simpleReply(dataBytes: 4096)
            #expect(reply?.error == 0 && reply?.cookie == UInt64(i + 1), "reply \(i)")
        }
        let servedAtOnce = await array.engine.memberReadShortcuts().servedFromCache - servedBefore
        let flushes = try await array.server.engine.eventLoop.submit {
            try array.server.connections.open.values.map { try $0.pipeline.syncOperations.handler(type: NBDConnection.self).replyFlushes }
        }.get()
        await array.stop()
        try #require(servedAtOnce == count, "the member files are not in the page cache here, so no reply came at once (\(servedAtOnce) of \(count))")
        #expect(flushes.count == 1 && flushes[0] <= 3, "\(flushes) flushes for \(count) replies")
    }

    /// The send buffer of each open connection, once `raw` has its greeting (its connection is
    /// open and set up by then).
    func sendBuffers(_ server: NBDServer, after raw: RawClient) async throws -> [SocketOptionValue] {
        #expect(raw.receive(18) != nil, "no greeting")
        return try await server.engine.eventLoop.submit {
            try server.connections.open.values.map { try $0.syncOptions!.getOption(.socketOption(.so_sndbuf)) }
        }.get()
    }

    /// A write larger than the connection's byte bound (32 MiB against 16): the connection takes
    /// no new request while it is in flight, but its own data must keep arriving. Before, the
    /// connection stopped reading the very data the write waited for, and nbdcopy hung.
    @Test(.enabled(if: haveNBDTools, "nbdcopy (libnbd-bin) not installed; .ci/run installs it"))
    func aWriteLargerThanTheConnectionBoundIsReceivedWhole() async throws {
        let array = try await ServedArray.make(level: .raid5, disks: 3, memberMiB: 40, chunkKiB: 512)
        let size = 64 << 20
        let (input, output) = try copyFiles(array, bytes: size)
        // `timeout`: a hang fails the test instead of holding the run.
        let copyIn = try client("timeout", ["60", which("nbdcopy")!, "--request-size=33554432", "--flush", input, array.uri])
        #expect(copyIn.status == 0, "nbdcopy with 32 MiB writes: status \(copyIn.status) \(copyIn.stderr)")
        let copyOut = try client("timeout", ["60", which("nbdcopy")!, array.uri, output])
        await array.stop()
        #expect(copyOut.status == 0, "\(copyOut.stderr)")
        try expectCopiedBack(output, from: input, bytes: size)
    }

    @Test(.enabled(if: haveQemuIO, "qemu-io (qemu-utils) not installed; .ci/run installs it"))
    func fourWritersAndAFifthReader() async throws {
        let array = try await ServedArray.make(level: .raid6, disks: 5, memberMiB: 16)
        // Four connections at once, disjoint ranges; the last flushes (a flush on any connection
        // covers writes completed on all: CAN_MULTI_CONN).
        let results = try await withThrowingTaskGroup(of: ProcessResult.self) { group in
            for w in 0..<4 {
                let uri = array.uri
                group.addTask {
                    var commands: [String] = []
                    for k in 0..<8 { commands += ["-c", "write -P \(0x21 + w) \((w * 8 + k) << 20) 1M"] }
                    if w == 3 { commands += ["-c", "flush"] }
                    return try client("qemu-io", ["-f", "raw"] + commands + [uri])
                }
            }
            var out: [ProcessResult] = []
            for try await r in group { out.append(r) }
            return out
        }
        #expect(results.allSatisfy { $0.status == 0 }, "\(results.map(\.stderr))")
        var reads: [String] = []
        for w in 0..<4 { reads += ["-c", "read -P \(0x21 + w) \(w * 8 << 20) 8M"] }
        let reader = try client("qemu-io", ["-f", "raw"] + reads + [array.uri])
        await array.stop()
        #expect(reader.status == 0 && !reader.stdoutText.contains("verification failed"), "\(reader.stdoutText)\(reader.stderr)")
    }

    @Test(.enabled(if: haveNBDTools, "nbdcopy (libnbd-bin) not installed; .ci/run installs it"))
    func aReadOnlyExportRefusesWritesWithEPERM() async throws {
        let array = try await ServedArray.make()
        await array.stop()
        let before = array.paths.map { fileBytes($0) }
        try await array.restart(readOnly: true)
        let info = try client("nbdinfo", ["--json", array.uri])
        #expect(info.stdoutText.contains("\"is_read_only\": true"))
        let raw = try RawClient(port: array.port)
        let (_, flags) = try raw.negotiate(export: "served")
        #expect(NBDTransmissionFlags(rawValue: flags).contains(.readOnly))
        raw.request(.write, cookie: 1, offset: 0, length: 512, payload: [UInt8](repeating: 1, count: 512))
        #expect(raw.simpleReply()?.error == NBDError.permission.rawValue)
        raw.request(.read, cookie: 2, offset: 0, length: 512)
        #expect(raw.simpleReply(dataBytes: 512)?.error == 0)
        await array.stop()
        #expect(array.paths.map { fileBytes($0) } == before)
    }
}

/// What a hostile or broken client sends: each case gets the protocol's answer (or its
/// connection closed), and the server goes on serving everyone else.
@Suite struct NBDHostileInputTests {
    @Test func badRequestsGetTheirErrorsAndTheConnectionLivesOn() async throws {
        let array = try await ServedArray.make(level: .raid5, disks: 3, memberMiB: 8)
        let raw = try RawClient(port: array.port)
        let (size, _) = try raw.negotiate(export: "served")
        #expect(size == array.engine.sizeBytes)
        let data = [UInt8](repeating: 0x5a, count: 4096)
        raw.request(.write, cookie: 1, offset: 8192, length: 4096, payload: data)
        #expect(raw.simpleReply()! == (0, 1, []))
        // Out of range, misaligned, too large, unknown command, unknown flag, bad flush: errors.
        raw.request(.read, cookie: 2, offset: size, length: 512)
        #expect(raw.simpleReply()!.error == NBDError.invalid.rawValue)
        raw.request(.write, cookie: 3, offset: size - 512, length: 1024, payload: [UInt8](repeating: 9, count: 1024))
        #expect(raw.simpleReply()!.error == NBDError.noSpace.rawValue)
        raw.request(.read, cookie: 4, offset: 100, length: 512)
        #expect(raw.simpleReply()!.error == NBDError.invalid.rawValue)
        raw.request(.read, cookie: 5, offset: 0, length: 64 << 20)
        #expect(raw.simpleReply()!.error == NBDError.invalid.rawValue)
        raw.send(NBDRequestHeader(flags: [], type: 77, cookie: 6, offset: 0, length: 512).encoded())
        #expect(raw.simpleReply()!.error == NBDError.invalid.rawValue)
        raw.request(.read, flags: NBDCommandFlags(rawValue: 1 << 12), cookie: 7, offset: 0, length: 512)
        #expect(raw.simpleReply()!.error == NBDError.invalid.rawValue)
        raw.request(.flush, cookie: 8, offset: 4096, length: 0)
        #expect(raw.simpleReply()!.error == NBDError.invalid.rawValue)
        // A refused write's data was dropped: the next request is read in step, and nothing
        // it carried reached the array.
        raw.request(.read, cookie: 9, offset: 8192, length: 4096)
        let good = raw.simpleReply(dataBytes: 4096)!
        #expect(good.error == 0 && good.cookie == 9 && good.data == data)
        raw.request(.read, cookie: 10, offset: size - 512, length: 512)
        #expect(raw.simpleReply(dataBytes: 512)!.data == [UInt8](repeating: 0, count: 512))
        // NBD_CMD_DISC: the server closes once outstanding requests are answered.
        raw.request(.disconnect, cookie: 11, offset: 0, length: 0)
        #expect(raw.serverClosed)
        await array.stop()
    }

    /// A bad request that waited behind a write holding the connection at its byte bound is
    /// parsed once the write completes, outside any read of the socket: its error reply must
    /// still go out (it waited for the client's next bytes, which a client waiting for that
    /// reply never sends).
    @Test func anErrorReplyToARequestParsedAfterABoundLiftsIsSent() async throws {
        var options = NBDServerOptions()
        options.maxBytesPerConnection = 64 << 10
        let array = try await ServedArray.make(level: .raid5, disks: 3, memberMiB: 8, serverOptions: options)
        let raw = try RawClient(port: array.port)
        let (size, _) = try raw.negotiate(export: "served")
        let data = [UInt8](repeating: 0x3c, count: 64 << 10)
        // One send: a write that fills the connection's byte bound, then a read past the end.
        raw.send(
            NBDRequestHeader(flags: [], type: NBDCommand.write.rawValue, cookie: 1, offset: 0, length: UInt32(data.count)).encoded() + data
                + NBDRequestHeader(flags: [], type: NBDCommand.read.rawValue, cookie: 2, offset: size, length: 512).encoded())
        let written = raw.simpleReply()
        let refused = raw.simpleReply()
        await array.stop()
        #expect(written?.cookie == 1 && written?.error == 0, "the write's reply: \(String(describing: written))")
        #expect(refused?.cookie == 2 && refused?.error == NBDError.invalid.rawValue, "the bad read's reply: \(String(describing: refused))")
    }

    @Test func garbageHandshakesCloseOnlyTheirOwnConnection() async throws {
        let array = try await ServedArray.make(level: .raid5, disks: 3, memberMiB: 8)
        // HTTP instead of NBD.
        let http = try RawClient(port: array.port)
        _ = http.receive(18)
        http.send(Array("GET / HTTP/1.1\r\nHost: x\r\n\r\n".utf8))
        #expect(http.serverClosed)
        // Unknown client flags.
        let flags = try RawClient(port: array.port)
        _ = flags.receive(18)
        flags.send([0, 0, 0, 0x80])
        #expect(flags.serverClosed)
        // A truncated option, then the client goes away.
        let truncated = try RawClient(port: array.port)
        _ = truncated.receive(18)
        truncated.send([0, 0, 0, 1] + Array("IHAVEO".utf8))
        // A client that vanishes in the middle of a write's data.
        let vanishing = try RawClient(port: array.port)
        _ = try vanishing.negotiate(export: "served")
        vanishing.request(.write, cookie: 1, offset: 0, length: 1 << 20, payload: [UInt8](repeating: 3, count: 4096))
        // Garbage after a good handshake: a bad request magic closes that connection.
        let badMagic = try RawClient(port: array.port)
        _ = try badMagic.negotiate(export: "served")
        badMagic.send([UInt8](repeating: 0xEE, count: 28))
        #expect(badMagic.serverClosed)
        // Everyone else is still served.
        let good = try RawClient(port: array.port)
        _ = try good.negotiate(export: "served", structured: true)
        good.request(.write, flags: .fua, cookie: 42, offset: 4096, length: 4096, payload: [UInt8](repeating: 7, count: 4096))
        #expect(good.simpleReply()! == (0, 42, []))
        // A structured read: one OFFSET_DATA chunk with the DONE flag.
        good.request(.read, cookie: 43, offset: 4096, length: 4096)
        let header = good.receive(20)!
        #expect(Array(header[0..<8]) == [0x66, 0x8e, 0x33, 0xef, 0, 1, 0, 1])
        let payload = good.receive(8 + 4096)!
        #expect(Array(payload[8...]) == [UInt8](repeating: 7, count: 4096))
        // A structured error carries a message.
        good.request(.read, cookie: 44, offset: 100, length: 512)
        let error = good.receive(20)!
        #expect(Array(error[6..<8]) == [0x80, 0x01])
        let length = Int(error[16..<20].reduce(UInt32(0)) { $0 << 8 | UInt32($1) })
        let body = good.receive(length)!
        #expect(Array(body[0..<4]) == [0, 0, 0, 22])
        #expect(String(decoding: body[6...], as: UTF8.self).contains("not valid"))
        await array.stop()
        #expect(try OfflineArray(paths: array.paths).check().mismatchSectors == 0)
    }

    @Test func aClientThatStopsSendingStillGetsItsRepliesThenTheConnectionCloses() async throws {
        let array = try await ServedArray.make(level: .raid5, disks: 3, memberMiB: 8)
        let raw = try RawClient(port: array.port)
        _ = try raw.negotiate(export: "served")
        let data = [UInt8](repeating: 0x42, count: 4096)
        raw.request(.write, flags: .fua, cookie: 1, offset: 0, length: 4096, payload: data)
        raw.request(.read, cookie: 2, offset: 0, length: 4096)
        // A write cut short by the end of the stream: dropped, never half-applied.
        raw.request(.write, cookie: 3, offset: 8192, length: 4096, payload: [UInt8](repeating: 0x99, count: 100))
        raw.finishSending()
        let answer = raw.receiveAll()
        // Two simple replies (16 bytes each, the read's followed by its data), then EOF.
        #expect(answer.count == 16 + 16 + 4096)
        #expect(Array(answer[8..<16]) == [0, 0, 0, 0, 0, 0, 0, 1])
        #expect(Array(answer[24..<32]) == [0, 0, 0, 0, 0, 0, 0, 2])
        #expect(Array(answer[32...]) == data)
        await array.stop()
        #expect(try OfflineArray(paths: array.paths).read(offsetBytes: 8192, byteCount: 4096) == [UInt8](repeating: 0, count: 4096))
    }

    /// A client that asks faster than it reads: replies wait in the server only up to the
    /// write-buffer high mark, past which the connection takes no request until the client reads.
    /// Before that bound the server answered everything it was sent and held the replies (here
    /// 8000 of 64 KiB, 512 MiB), whatever the client read. Checked after every reply the client
    /// takes: requests answered never run ahead of replies read by more than the bounds allow.
    /// Four clients each ask for 16 MiB at once (64 reads of 256 KiB, their connection's whole
    /// bound): with a server-wide bound of 2 MiB, at most that plus one request is in flight at
    /// any time, and every request is still answered (the connections that waited are woken).
    @Test func theServerBoundsBytesInFlightAcrossConnections() async throws {
        var options = NBDServerOptions()
        options.maxBytesInFlight = 2 << 20
        // O_DIRECT members: reads the page cache holds are answered at once and would never
        // fill the bound.
        let array = try await ServedArray.make(level: .raid5, disks: 3, memberMiB: 8, serverOptions: options, direct: true)
        let readBytes = 256 << 10
        var clients: [RawClient] = []
        for _ in 0..<4 {
            let raw = try RawClient(port: array.port)
            _ = try raw.negotiate(export: "served")
            clients.append(raw)
        }
        // Each client on a thread of its own: send every request, then read every reply.
        let answered = await withTaskGroup(of: Int.self) { group in
            for (c, raw) in clients.enumerated() {
                let fd = raw.fd
                group.addTask {
                    await withCheckedContinuation { continuation in
                        Thread {
                            var requests: [UInt8] = []
                            for i in 0..<64 {
                                requests += NBDRequestHeader(flags: [], type: NBDCommand.read.rawValue, cookie: UInt64(c * 64 + i), offset: UInt64(i * readBytes), length: UInt32(readBytes)).encoded()
                            }
                            var sent = 0
                            while sent < requests.count {
                                let n = requests[sent...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                                if n <= 0 { break }
                                sent += n
                            }
                            var reply = [UInt8](repeating: 0, count: 16 + readBytes)
                            var replies = 0
                            receiving: for _ in 0..<64 {
                                var got = 0
                                while got < reply.count {
                                    let n = reply[got...].withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
                                    if n <= 0 { break receiving }
                                    got += n
                                }
                                replies += 1
                            }
                            continuation.resume(returning: replies)
                        }.start()
                    }
                }
            }
            return await group.reduce(0, +)
        }
        #expect(answered == 4 * 64)
        let server = array.server
        let peak = try await array.engine.eventLoop.submit { server.connections.peakBytesInFlight }.get()
        #expect(peak <= options.maxBytesInFlight + readBytes, "\(peak) bytes were in flight at once")
        #expect(peak >= options.maxBytesInFlight, "the bound was never reached: the test proves nothing")
        await array.stop()
    }

    /// Runs blocking socket work on a thread of its own (not on one of the few threads Swift's
    /// concurrency runs every test's tasks on).
    func onThread<T: Sendable>(_ body: @escaping @Sendable () -> T) async -> T {
        await withCheckedContinuation { continuation in Thread { continuation.resume(returning: body()) }.start() }
    }

    /// Serves a RAID5 whose server-wide bound is 2 MiB, where a first client announces a 4 MiB
    /// write and sends 64 KiB of it: the server is at its bound. Then `cut` does what it does
    /// to that client, and a second client's 4 KiB read must be answered (a read past its
    /// 60 s receive timeout fails the test).
    func secondClientIsServedAfterAStalledWrite(_ options: NBDServerOptions, cut: @escaping @Sendable (RawClient) -> Void) async throws {
        var options = options
        options.maxBytesInFlight = 2 << 20
        let array = try await ServedArray.make(level: .raid5, disks: 3, memberMiB: 8, serverOptions: options)
        let server = array.server
        let stalled = try RawClient(port: array.port)
        _ = try stalled.negotiate(export: "served")
        stalled.request(.write, cookie: 1, offset: 0, length: 4 << 20, payload: [UInt8](repeating: 7, count: 64 << 10))
        let other = try RawClient(port: array.port)
        _ = try other.negotiate(export: "served")
        let held = try await array.engine.eventLoop.submit { server.connections.bytesInFlight }.get()
        #expect(held >= options.maxBytesInFlight, "the stalled write did not hold the bound: the test proves nothing")
        cut(stalled)
        let answered = await onThread {
            other.request(.read, cookie: 2, offset: 0, length: 4096)
            return other.simpleReply(dataBytes: 4096)?.error == 0
        }
        #expect(answered, "the second client was not served")
        let left = try await array.engine.eventLoop.submit { server.connections.bytesInFlight }.get()
        #expect(left == 0, "\(left) bytes still counted in flight")
        await array.stop()
    }

    /// A client that stops sending in the middle of a write is closed once no data came for
    /// `writeDataTimeout`, and its bytes go back: the other clients go on.
    @Test func aClientStalledInTheMiddleOfAWriteIsClosedAndTheOthersGoOn() async throws {
        var options = NBDServerOptions()
        options.writeDataTimeout = .milliseconds(200)
        try await secondClientIsServedAfterAStalledWrite(options) { _ in }
    }

    /// A client that trickles a byte now and then into a write is closed too: a period counts
    /// only when `writeDataMinBytes` came (or the rest of the write). Before, one byte per
    /// period kept the write, and every other client, waiting for ever.
    @Test func aClientTricklingAWritesDataIsClosedAndTheOthersGoOn() async throws {
        var options = NBDServerOptions()
        options.writeDataTimeout = .milliseconds(200)
        try await secondClientIsServedAfterAStalledWrite(options) { stalled in
            let socket = stalled.fd
            // Pacing, not synchronisation: a byte every 20 ms until the server closes.
            Thread {
                var byte: UInt8 = 1
                while Glibc.send(socket, &byte, 1, Int32(MSG_NOSIGNAL)) == 1 { usleep(20_000) }
            }.start()
        }
    }

    /// A write whose header is parsed when a bound lifts (after a read completed, with no read
    /// of the socket to follow) is watched for its data as one parsed during a read is. Before,
    /// its timer was started only at the end of a read of the socket, so a client that then
    /// sent nothing held the write's bytes for ever.
    @Test func aWriteParsedWhenABoundLiftsIsClosedWhenItsDataStops() async throws {
        var options = NBDServerOptions()
        options.maxBytesPerConnection = 64 << 10
        options.writeDataTimeout = .milliseconds(200)
        // O_DIRECT members: the read goes to the I/O threads and completes after the parse
        // stopped at the bound (one the page cache holds would complete inside the parse).
        let array = try await ServedArray.make(level: .raid5, disks: 3, memberMiB: 8, serverOptions: options, direct: true)
        let raw = try RawClient(port: array.port)
        _ = try raw.negotiate(export: "served")
        // One send: a read that fills the connection's byte bound, then a write's header alone.
        raw.send(
            NBDRequestHeader(flags: [], type: NBDCommand.read.rawValue, cookie: 1, offset: 0, length: 64 << 10).encoded()
                + NBDRequestHeader(flags: [], type: NBDCommand.write.rawValue, cookie: 2, offset: 0, length: 1 << 20).encoded())
        let (read, closed) = await onThread { (raw.simpleReply(dataBytes: 64 << 10), raw.serverClosed) }
        #expect(read?.cookie == 1 && read?.error == 0)
        #expect(closed, "the connection whose write data never came was not closed")
        let server = array.server
        let left = try await array.engine.eventLoop.submit { server.connections.bytesInFlight }.get()
        #expect(left == 0, "\(left) bytes still counted in flight")
        await array.stop()
    }

    /// NBD_CMD_DISC, or the client's end of input, after a read larger than the socket's
    /// buffers: the whole reply goes out before the connection closes. Before, the close came
    /// right after the flush and NIO dropped what the socket had not taken yet.
    @Test func aDisconnectAfterALargeReadSendsTheWholeReplyFirst() async throws {
        let array = try await ServedArray.make(level: .raid5, disks: 3, memberMiB: 8, overUnixSocket: true)
        let length = 8 << 20
        for endByDisconnect in [true, false] {
            let raw = try RawClient(unixPath: array.socketPath!)
            _ = try raw.negotiate(export: "served")
            raw.request(.read, cookie: 1, offset: 0, length: UInt32(length))
            if endByDisconnect {
                raw.request(.disconnect, cookie: 2, offset: 0, length: 0)
            } else {
                raw.finishSending()
            }
            let (reply, rest) = await onThread { (raw.simpleReply(dataBytes: length), raw.receiveAll()) }
            #expect(reply?.cookie == 1 && reply?.error == 0, "\(endByDisconnect ? "disconnect" : "end of input"): reply \(String(describing: reply.map { ($0.cookie, $0.error) }))")
            #expect(reply?.data.count == length, "\(endByDisconnect ? "disconnect" : "end of input"): \(reply?.data.count ?? 0) of \(length) bytes of the read's data came")
            #expect(rest.isEmpty, "bytes after the reply")
        }
        await array.stop()
    }

    /// TRIM and WRITE_ZEROES carry no data, yet the array counts each piece against its own
    /// bounds: ten of 32 MiB at once from one client (as fstrim or qemu-img's zero detection
    /// send) went past them, and the array refused the last ones (EIO), with any other client's
    /// request that came meanwhile. The server holds them to `maxZeroingBytesInFlight`.
    @Test func manyWriteZeroesAtOnceAreAllDoneAndOtherClientsAreServed() async throws {
        let array = try await ServedArray.make(level: .raid5, disks: 3, memberMiB: 24, bitmap: false)
        let zeroer = try RawClient(port: array.port)
        _ = try zeroer.negotiate(export: "served")
        let count = 10
        var batch: [UInt8] = []
        for i in 0..<count {
            batch += NBDRequestHeader(flags: [], type: NBDCommand.writeZeroes.rawValue, cookie: UInt64(i), offset: 0, length: 32 << 20).encoded()
        }
        zeroer.send(batch)
        let other = try RawClient(port: array.port)
        _ = try other.negotiate(export: "served")
        other.request(.read, cookie: 99, offset: 40 << 20, length: 4096)
        let read = await onThread { other.simpleReply(dataBytes: 4096) }
        let replies = await onThread { (0..<count).map { _ in zeroer.simpleReply() } }
        await array.stop()
        #expect(read?.cookie == 99 && read?.error == 0, "the other client's read: \(String(describing: read.map { ($0.cookie, $0.error) }))")
        #expect(replies.map { $0?.error } == Array(repeating: 0, count: count), "\(replies.map { $0.map { ($0.cookie, $0.error) } })")
        #expect(Set(replies.compactMap { $0?.cookie }) == Set((0..<count).map(UInt64.init)))
    }

    /// A client that shuts its sending side in the middle of a write: the write is dropped and
    /// its bytes go back at once (they held the very bound its connection waited on).
    @Test func aWriteCutByTheClientsEndOfInputGivesItsBytesBack() async throws {
        try await secondClientIsServedAfterAStalledWrite(NBDServerOptions()) { $0.finishSending() }
    }

    @Test func aClientThatDoesNotReadItsRepliesIsNotServedAheadOfIt() async throws {
        let array = try await ServedArray.make(level: .raid5, disks: 3, memberMiB: 8)
        let raw = try RawClient(port: array.port)
        _ = try raw.negotiate(export: "served")
        let replyBytes = 64 << 10
        let requests = 8000
        let before = await array.engine.snapshot().counters.clientRequests
        // Sent from another thread: once the server stops reading, this send blocks until the
        // replies below are read.
        var batch: [UInt8] = []
        for i in 0..<requests {
            batch += NBDRequestHeader(flags: [], type: NBDCommand.read.rawValue, cookie: UInt64(i), offset: UInt64(i % 200 * replyBytes), length: UInt32(replyBytes)).encoded()
        }
        let socket = raw.fd
        let requestBytes = batch
        let sender = Thread {
            var done = 0
            while done < requestBytes.count {
                let n = requestBytes[done...].withUnsafeBytes { Glibc.send(socket, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                if n <= 0 { return }
                done += n
            }
        }
        sender.start()
        // In flight (64 per connection), queued up to the 4 MiB high mark (64 replies), and in
        // the two kernel socket buffers of loopback TCP, which autotuning grows: measured at
        // 250-400 replies ahead with the bound, about 7800 without it.
        let slack = 1000
        // The replies are read on a thread of their own, 50 at a time: a blocking read must not
        // hold one of the few threads Swift's concurrency runs every test's tasks on.
        let socketFD = raw.fd
        func readReplies(_ count: Int) async -> Bool {
            await withCheckedContinuation { continuation in
                Thread {
                    var ok = true
                    var header = [UInt8](repeating: 0, count: 16)
                    var data = [UInt8](repeating: 0, count: replyBytes)
                    func receive(_ buffer: inout [UInt8]) -> Bool {
                        var done = 0
                        while done < buffer.count {
                            let n = buffer[done...].withUnsafeMutableBytes { recv(socketFD, $0.baseAddress, $0.count, 0) }
                            if n <= 0 { return false }
                            done += n
                        }
                        return true
                    }
                    for _ in 0..<count where ok {
                        // A simple reply: magic, error 0, cookie, then the data.
                        ok = receive(&header) && header[4..<8].allSatisfy { $0 == 0 } && receive(&data)
                    }
                    continuation.resume(returning: ok)
                }.start()
            }
        }
        var worstLead = 0
        var read = 0
        while read < requests {
            guard await readReplies(50) else {
                Issue.record("a reply after \(read) missing or failed")
                break
            }
            read += 50
            let answered = await array.engine.snapshot().counters.clientRequests - before
            worstLead = max(worstLead, answered - read)
        }
        #expect(worstLead <= slack, "the server answered \(worstLead) requests ahead of the replies read (bound \(slack))")
        await array.stop()
    }

    /// Hostile byte streams, many at once, against a live server while a well-behaved client
    /// writes and reads back its own region: streams made from a real session (handshake, then
    /// reads, writes, trims and flushes below 1 MiB) cut short, with bytes flipped in the
    /// handshake and with bytes pushed in anywhere (which breaks the framing after them). The
    /// server never stops serving the good client, never answers it with anything but its own
    /// data, and the array's parity is consistent afterwards.
    @Test func hostileStreamsNeverDisturbAnotherClient() async throws {
        let array = try await ServedArray.make(level: .raid6, disks: 5, memberMiB: 8)
        let port = array.port
        let session = Self.session()
        let outcome: (verified: Int, served: Int, wrong: [Int]) = try await runBlocking {
            let good = try RawClient(port: port)
            _ = try good.negotiate(export: "served")
            let finished = FinishedCount()
            let servedRequests = FinishedCount()
            let streams = 160
            let threads = (0..<4).map { t in
                OSThread {
                    var random = SplitMix(seed: UInt64(t + 1) * 7919)
                    for _ in 0..<(streams / 4) {
                        guard let hostile = try? RawClient(port: port) else { continue }
                        hostile.send(Self.mutate(session, &random))
                        hostile.finishSending()
                        let answer = hostile.receiveAll()
                        // A structured reply's magic: the stream got as far as its requests.
                        if answer.count >= 4, (0...(answer.count - 4)).contains(where: { answer[$0..<($0 + 4)] == [0x66, 0x8e, 0x33, 0xef] }) {
                            servedRequests.add()
                        }
                    }
                    finished.add()
                }
            }
            // The good client's region starts at 4 MiB, far from anything the streams write.
            var verified = 0
            var wrong: [Int] = []
            var round = 0
            while finished.value < threads.count || round < 8 {
                let offset = UInt64(4 << 20) + UInt64(round % 32) * 65536
                let data = (0..<65536).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ round) }
                good.request(.write, flags: .fua, cookie: UInt64(2 * round), offset: offset, length: 65536, payload: data)
                guard let written = good.simpleReply(), written.error == 0, written.cookie == UInt64(2 * round) else { wrong.append(round); break }
                good.request(.read, cookie: UInt64(2 * round + 1), offset: offset, length: 65536)
                let read = good.simpleReply(dataBytes: 65536)
                if read?.error != 0 || read?.cookie != UInt64(2 * round + 1) || read?.data != data { wrong.append(round) } else { verified += 1 }
                round += 1
            }
            for t in threads { t.join() }
            return (verified, servedRequests.value, wrong)
        }
        #expect(outcome.wrong.isEmpty, "rounds \(outcome.wrong) of the good client were answered wrong")
        #expect(outcome.verified >= 8)
        #expect(outcome.served > 0 && outcome.served < 160, "\(outcome.served) of 160 streams reached their requests")
        await array.stop()
        #expect(try OfflineArray(paths: array.paths).check().mismatchSectors == 0)
    }

    /// A whole session as a client sends it: handshake through NBD_OPT_GO, then requests.
    static func session() -> [UInt8] {
        let handshake = NBDClientHandshake.flags(noZeroes: true) + NBDClientHandshake.option(.structuredReply)
            + NBDClientHandshake.option(.list) + NBDClientHandshake.go(export: "served")
        var traffic: [UInt8] = []
        for i in 0..<6 {
            let offset = UInt64(i) * 131_072
            traffic += NBDRequestHeader(flags: .fua, type: NBDCommand.write.rawValue, cookie: UInt64(i), offset: offset, length: 4096).encoded()
            traffic += [UInt8](repeating: UInt8(i), count: 4096)
            traffic += NBDRequestHeader(flags: [], type: NBDCommand.read.rawValue, cookie: 100 + UInt64(i), offset: offset, length: 8192).encoded()
        }
        traffic += NBDRequestHeader(flags: [], type: NBDCommand.trim.rawValue, cookie: 200, offset: 0, length: 65536).encoded()
        traffic += NBDRequestHeader(flags: [], type: NBDCommand.flush.rawValue, cookie: 201, offset: 0, length: 0).encoded()
        return handshake + traffic
    }

    /// Cut short, bytes flipped in the handshake, bytes pushed in anywhere.
    static func mutate(_ session: [UInt8], _ random: inout SplitMix) -> [UInt8] {
        var out = session
        let handshakeBytes = 4 + 16 * 2 + 16 + 12
        for _ in 0..<Int(random.next() % 4) {
            let at = Int(random.next() % UInt64(handshakeBytes))
            out[at] ^= UInt8(truncatingIfNeeded: random.next() | 1)
        }
        for _ in 0..<Int(random.next() % 3) {
            let at = Int(random.next() % UInt64(out.count))
            let count = Int(1 + random.next() % 27)
            out.insert(contentsOf: (0..<count).map { _ in UInt8(truncatingIfNeeded: random.next()) }, at: at)
        }
        if random.next() % 2 == 0 { out.removeLast(Int(random.next() % UInt64(out.count))) }
        return out
    }
}

/// Threads that finished, counted across threads.
final class FinishedCount: @unchecked Sendable {
    private let lock = ConditionLock()
    private var count = 0
    func add() { lock.withLock { count += 1 } }
    var value: Int { lock.withLock { count } }
}

/// A file of `mebibytes` MiB of the data pattern (seed = the MiB's index), for nbdcopy to send.
func writePatternFile(_ path: String, mebibytes: Int) throws {
    let file = try OutputFile(path: path)
    for i in 0..<mebibytes { try DataPattern.bytes(count: 1 << 20, seed: UInt64(i)).withUnsafeBytes { try file.write($0) } }
    try file.finish()
    file.close()
}

/// The connection's receive buffer, fed as TCP feeds it: every read ends a few bytes into the
/// next message, which stay unparsed until the next read.
@Suite struct ReceiveBufferTests {
    @Test func bytesLeftUnparsedAfterEveryReadDoNotGrowTheBuffer() {
        var cumulation: ByteBuffer?
        var largest = 0
        for _ in 0..<2000 {
            var incoming = ByteBuffer(repeating: 7, count: 64 << 10)
            appendReceived(&cumulation, &incoming)
            // Everything parsed but a partial 28-byte request header.
            cumulation!.moveReaderIndex(forwardBy: cumulation!.readableBytes - 10)
            largest = max(largest, cumulation!.capacity)
        }
        #expect(cumulation!.readableBytes == 10)
        #expect(largest <= 256 << 10, "the receive buffer grew to \(largest) bytes")
    }
}

/// Read replies sent with sendfile from the member files (`NBDServerOptions.sendfileReads`).
@Suite struct NBDSendfileReadTests {
    /// A read through a raw client: the data of its reply (simple or structured, one chunk).
    func read(_ raw: RawClient, cookie: UInt64, offset: UInt64, length: Int, structured: Bool) -> [UInt8]? {
        raw.request(.read, cookie: cookie, offset: offset, length: UInt32(length))
        guard structured else {
            guard let reply = raw.simpleReply(dataBytes: length), reply.error == 0, reply.cookie == cookie else { return nil }
            return reply.data
        }
        // magic, flags, type, cookie, length; then the offset and the data.
        guard let header = raw.receive(20) else { return nil }
        let chunkLength = Int(header[16..<20].reduce(UInt32(0)) { $0 << 8 | UInt32($1) })
        guard header[0..<4].reduce(UInt32(0), { $0 << 8 | UInt32($1) }) == NBDMagic.structuredReply, chunkLength == 8 + length,
            let body = raw.receive(chunkLength),
            body[0..<8].reduce(UInt64(0), { $0 << 8 | UInt64($1) }) == offset
        else { return nil }
        return Array(body[8...])
    }

    /// Where a reply's data first differs from what was written ("no reply" when there was none),
    /// or nil: megabytes of bytes in a failure message say nothing.
    func firstDifference(_ data: [UInt8]?, _ expected: ArraySlice<UInt8>) -> String? {
        guard let data else { return "no reply" }
        guard data.count == expected.count else { return "\(data.count) bytes, \(expected.count) expected" }
        guard let i = data.indices.first(where: { data[$0] != expected[expected.startIndex + $0] }) else { return nil }
        return "byte \(i) differs"
    }

    /// Healthy chunk-aligned reads of bytes the members' page cache holds go out from the member
    /// files with sendfile, whole chunks and reads across members alike (pieces under 64 KiB
    /// are copied, and must read the same); with a
    /// member failed, one reply mixes chunks sent from files with a chunk the read rebuilt into
    /// the reply's memory. Every reply carries the bytes written, as with every read copied
    /// (the same reads with `sendfileReads` off, which must send nothing with sendfile).
    @Test(arguments: [(true, false), (true, true), (false, false)])
    func cachedChunksAreSentFromTheMemberFilesWithTheBytesACopyWouldSend(sendfile: Bool, structured: Bool) async throws {
        var options = NBDServerOptions()
        options.sendfileReads = sendfile
        let spliced = sendfile
        // RAID5 of 4, 64 KiB chunks: a row holds 192 KiB of data on three members.
        let array = try await ServedArray.make(level: .raid5, disks: 4, memberMiB: 4, chunkKiB: 64, bitmap: false, serverOptions: options, overUnixSocket: true)
        let raw = try RawClient(unixPath: array.socketPath!)
        _ = try raw.negotiate(export: "served", structured: structured)
        var random = SplitMix(seed: 0x5e4d_f11e)
        let written = (0..<(1 << 20)).map { _ in UInt8(truncatingIfNeeded: random.next()) }
        raw.request(.write, cookie: 1, offset: 0, length: UInt32(written.count), payload: written)
        #expect(raw.simpleReply()?.error == 0)
        raw.request(.flush, cookie: 2, offset: 0, length: 0)
        #expect(raw.simpleReply()?.error == 0)

        // One chunk; a piece inside one; three chunks on three members from the middle of one;
        // a 512-byte piece; the whole megabyte. Member reads under 64 KiB are copied (a
        // sendfile's system calls cost more): three of the five replies use sendfile.
        let reads: [(offset: Int, length: Int)] = [(0, 64 << 10), (4096 + 512, 20_480), (32 << 10, 160 << 10), (300 << 10, 512), (0, 1 << 20)]
        let readsWithSendfile = 3
        var cookie: UInt64 = 10
        for r in reads {
            cookie += 1
            let data = read(raw, cookie: cookie, offset: UInt64(r.offset), length: r.length, structured: structured)
            #expect(firstDifference(data, written[r.offset..<(r.offset + r.length)]) == nil, "read of \(r.length) bytes at \(r.offset)")
        }
        let splicedHealthy = await array.server.splicedReplies()
        #expect(spliced ? splicedHealthy == readsWithSendfile : splicedHealthy == 0, "replies sent with sendfile: \(splicedHealthy)")

        // The chunks of the failed member are rebuilt through stripes, into the reply's memory;
        // the others still come from the files.
        try await array.engine.fail(member: array.paths[1])
        cookie += 1
        let degraded = read(raw, cookie: cookie, offset: 0, length: 1 << 20, structured: structured)
        #expect(firstDifference(degraded, written[...]) == nil, "degraded read of the whole megabyte")
        let splicedDegraded = await array.server.splicedReplies() - splicedHealthy
        #expect(spliced ? splicedDegraded == 1 : splicedDegraded == 0, "degraded replies sent with sendfile: \(splicedDegraded)")
        await array.stop()
    }
}
