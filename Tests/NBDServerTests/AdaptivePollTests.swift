import NBDProtocol
@testable import NBDServer
import NIOCore
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
        func readAtQueueDepthOne(_ first: Int) {
            for i in first..<(first + reads) {
                client.request(.read, cookie: UInt64(i + 1), offset: UInt64(i % 64) * 4096, length: 4096)
                let reply = client.simpleReply(dataBytes: 4096)
                #expect(reply?.error == 0 && reply?.cookie == UInt64(i + 1), "read \(i)")
            }
        }
        readAtQueueDepthOne(0)
        let alone = await array.server.pollCounts().spells
        let other = try RawClient(unixPath: array.socketPath!)
        _ = try other.negotiate(export: "served")
        readAtQueueDepthOne(reads)
        let beside = await array.server.pollCounts().spells - alone
        await array.stop()
        // Every reply left the lone connection idle: one spell each (the last may not have run
        // yet when counted).
        #expect(alone >= reads - 1, "\(alone) poll spells for \(reads) reads on the only connection")
        #expect(beside == 0, "\(beside) poll spells with a second connection open")
    }
}
