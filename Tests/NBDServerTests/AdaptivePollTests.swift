import DiskIO
import Glibc
import MDFormat
import NBDProtocol
@testable import NBDServer
import NIOCore
import RaidCore
import TestSupport
import Testing

/// Whether an idle connection polls for its client's next request (`AdaptivePoll`): the rules
/// alone, then the server's conditions on a live connection.
@Suite struct AdaptivePollTests {
    /// Open from the start; three spells in a row without the request close it; closed, one
    /// idle spell in `probeInterval` is polled, a missed probe leaves it closed and a caught one
    /// opens it; a catch between misses starts their count again.
    @Test func pollingStaysOpenWhileItCatchesRequestsAndProbesOnceClosed() {
        let max: UInt64 = 50_000
        var poll = AdaptivePoll(maxNanos: max)
        #expect(poll.isOpen)
        // Two misses, a catch, two misses: never three in a row, so still open.
        for caught in [false, false, true, false, false] {
            #expect(poll.spellNanos() == max)
            poll.spellEnded(caught: caught)
        }
        #expect(poll.isOpen, "a catch between misses did not start their count again")
        poll.spellEnded(caught: false)
        #expect(!poll.isOpen, "three misses in a row left polling open")
        // Closed: probeInterval - 1 idle spells unpolled, then a probe (missed).
        for i in 1..<AdaptivePoll.probeInterval { #expect(poll.spellNanos() == 0, "idle spell \(i) polled while closed") }
        #expect(poll.spellNanos() == max, "no probe after \(AdaptivePoll.probeInterval) idle spells")
        poll.spellEnded(caught: false)
        #expect(!poll.isOpen, "a missed probe opened polling")
        for _ in 1..<AdaptivePoll.probeInterval { #expect(poll.spellNanos() == 0) }
        #expect(poll.spellNanos() == max)
        poll.spellEnded(caught: true)
        #expect(poll.isOpen, "a caught probe left polling closed")
        #expect(poll.spellNanos() == max)
    }

    /// A maximum of 0 never polls; a pinned window (tests) never closes.
    @Test func zeroNeverPollsAndAPinnedWindowNeverCloses() {
        var off = AdaptivePoll(maxNanos: 0)
        for _ in 0..<(2 * AdaptivePoll.probeInterval) { #expect(off.spellNanos() == 0) }
        var pinned = AdaptivePoll(maxNanos: 10_000, pinnedOpen: true)
        for _ in 0..<(2 * AdaptivePoll.missesToClose) {
            #expect(pinned.spellNanos() == 10_000)
            pinned.spellEnded(caught: false)
        }
        #expect(pinned.isOpen)
    }

    /// On a live server (polling pinned open, so that no timing decides): a lone connection
    /// reading at queue depth 1 polls after its replies; once a second connection is open, the
    /// first no longer polls (its spell would hold up the other's requests).
    @Test func aConnectionPollsForItsNextRequestOnlyWhileItIsTheServersOnlyOne() async throws {
        var options = NBDServerOptions()
        options.pollMaxNanos = 20_000
        options.pollWindowPinnedOpen = true
        let array = try await ServedArray.make(level: .raid5, disks: 3, memberMiB: 8, serverOptions: options, overUnixSocket: true)
        let client = try RawClient(unixPath: array.socketPath!)
        _ = try client.negotiate(export: "served")
        let reads = 32
        readAtQueueDepthOne(client, first: 0, count: reads)
        // Counted on the loop after the last spell: the spell after a reply is queued (or runs
        // at the end of the burst) before the client, which has the reply, can ask.
        let alone = await array.server.pollCounts().spells
        let other = try RawClient(unixPath: array.socketPath!)
        _ = try other.negotiate(export: "served")
        readAtQueueDepthOne(client, first: reads, count: reads)
        let beside = await array.server.pollCounts().spells - alone
        await array.stop()
        #expect(alone == reads, "\(alone) poll spells for \(reads) reads on the only connection: one after each reply")
        #expect(beside == 0, "\(beside) poll spells with a second connection open")
    }

    /// While the array has member I/O on its way (here member 0's flush, which the test holds
    /// on a pool thread), a lone idle connection does not poll: the completion would wait for
    /// the spell. The reads go to member 1 (RAID5 of 3, left-symmetric: array bytes 64 KiB to
    /// 128 KiB are its first chunk), whose thread is free. Once the flush is done, the same
    /// reads poll again (so the zero is not polling being off).
    @Test func aConnectionDoesNotPollWhileItsArrayHasMemberIOOnItsWay() async throws {
        var options = NBDServerOptions()
        options.pollMaxNanos = 20_000
        options.pollWindowPinnedOpen = true
        let gate = FlushGate()
        let array = try await ServedArray.make(
            level: .raid5, disks: 3, memberMiB: 8, bitmap: false, serverOptions: options, overUnixSocket: true,
            wrappingDevices: { devices in devices.enumerated().map { $0.offset == 0 ? HeldFlushDevice(wrapping: $0.element, gate: gate) : $0.element } })
        let client = try RawClient(unixPath: array.socketPath!)
        _ = try client.negotiate(export: "served")
        // No superblock write to mark the array clean during the test (md's safe mode, 200 ms
        // after the last write by default): its member I/O would skip spells of the reads after
        // the flush, as the condition under test says it must.
        try await array.engine.set("safe_mode_delay", "60")
        // Something to flush, then a flush from inside (not this connection's) held at the members.
        try await array.engine.write(offsetBytes: 1 << 20, data: IOBuffer([UInt8](repeating: 0x5a, count: 4096)))
        gate.shut()
        let flushing = Task { try await array.engine.flush() }
        await gate.heldFlush()
        let reads = 16
        let before = await array.server.pollCounts().spells
        let onMemberOne: (Int) -> UInt64 = { UInt64(64 << 10) + UInt64($0 % 16) * 4096 }
        readAtQueueDepthOne(client, first: 0, count: reads, offsetBytes: onMemberOne)
        let whileHeld = await array.server.pollCounts().spells - before
        gate.open()
        try await flushing.value
        readAtQueueDepthOne(client, first: reads, count: reads, offsetBytes: onMemberOne)
        let afterwards = await array.server.pollCounts().spells - before - whileHeld
        await array.stop()
        #expect(whileHeld == 0, "\(whileHeld) poll spells while a member flush was in flight")
        #expect(afterwards == reads, "\(afterwards) poll spells for \(reads) reads once the flush was done")
    }

    /// The poll itself, on a socket pair: input there (or the peer gone) is seen at once, and
    /// with none the poll gives up at its deadline.
    @Test func thePollSeesInputOrTheEndAndOtherwiseStopsAtItsDeadline() throws {
        var fds: [CInt] = [0, 0]
        try #require(socketpair(AF_UNIX, CInt(SOCK_STREAM.rawValue), 0, &fds) == 0)
        defer { Glibc.close(fds[0]) }
        let soon = NIODeadline.now().uptimeNanoseconds + 2_000_000
        #expect(!NBDConnection.waitUntilReadable(fds[0], untilUptimeNanos: soon), "nothing sent, yet the poll saw input")
        #expect(NIODeadline.now().uptimeNanoseconds >= soon, "the poll gave up before its deadline")
        var byte: UInt8 = 1
        #expect(Glibc.write(fds[1], &byte, 1) == 1)
        let far = NIODeadline.now().uptimeNanoseconds + 60_000_000_000
        #expect(NBDConnection.waitUntilReadable(fds[0], untilUptimeNanos: far), "a byte was there")
        #expect(Glibc.read(fds[0], &byte, 1) == 1)
        Glibc.close(fds[1])
        #expect(NBDConnection.waitUntilReadable(fds[0], untilUptimeNanos: far), "the peer closed: NIO should see the end")
    }
}

/// QD1 reads of 4 KiB on `client`, each answered before the next is sent; the i-th at
/// `offsetBytes(i)`.
func readAtQueueDepthOne(_ client: RawClient, first: Int, count: Int, offsetBytes: (Int) -> UInt64 = { UInt64($0 % 64) * 4096 }) {
    for i in first..<(first + count) {
        client.request(.read, cookie: UInt64(i + 1), offset: offsetBytes(i), length: 4096)
        let reply = client.simpleReply(dataBytes: 4096)
        #expect(reply?.error == 0 && reply?.cookie == UInt64(i + 1), "read \(i)")
    }
}

/// Holds member flushes while shut (on the pool's threads), and says when one is held (to an
/// awaiting test, without blocking one of the few threads of Swift's pool).
final class FlushGate: @unchecked Sendable {
    private let lock = ConditionLock()
    private var shutNow = false
    private var held = 0
    private var waiter: CheckedContinuation<Void, Never>?

    func shut() { lock.withLock { shutNow = true } }
    func open() { lock.withLock { shutNow = false; lock.broadcast() } }

    func heldFlush() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            lock.lock()
            if held > 0 {
                lock.unlock()
                continuation.resume()
            } else {
                waiter = continuation
                lock.unlock()
            }
        }
    }

    func pass() {
        lock.lock()
        held += 1
        let waiting = waiter
        waiter = nil
        lock.unlock()
        waiting?.resume()
        lock.lock()
        while shutNow { lock.wait() }
        held -= 1
        lock.unlock()
    }
}

/// A member file whose flushes wait at the gate; everything else goes straight to the file.
final class HeldFlushDevice: MemberDevice, @unchecked Sendable {
    let base: MemberDevice
    let gate: FlushGate
    init(wrapping base: MemberDevice, gate: FlushGate) {
        self.base = base
        self.gate = gate
    }
    var name: String { base.name }
    func sizeBytes() throws(MemberIOError) -> UInt64 { try base.sizeBytes() }
    func read(at offsetBytes: UInt64, into buffers: [UnsafeMutableRawBufferPointer], purpose: MemberIOPurpose) throws(MemberIOError) {
        try base.read(at: offsetBytes, into: buffers, purpose: purpose)
    }
    func write(at offsetBytes: UInt64, from buffers: [UnsafeRawBufferPointer], fua: Bool, purpose: MemberIOPurpose) throws(MemberIOError) {
        try base.write(at: offsetBytes, from: buffers, fua: fua, purpose: purpose)
    }
    func flush(purpose: MemberIOPurpose) throws(MemberIOError) {
        gate.pass()
        try base.flush(purpose: purpose)
    }
    func close() { base.close() }
}
