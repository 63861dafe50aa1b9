import DiskIO
import NIOCore
import NIOEmbedded
import RaidCore
import TestSupport
import Testing

@testable import ControlPlane

/// The metrics endpoint reads a connection only while its responses drain.
@Suite struct MetricsReadThrottleTests {
    /// Counts the read requests that reach the socket (it sits between the head and the
    /// handler under test).
    final class ReadCounter: ChannelOutboundHandler {
        typealias OutboundIn = NIOAny
        var reads = 0
        func read(context: ChannelHandlerContext) {
            reads += 1
            context.read()
        }
    }

    /// A client that pipelines requests and never reads had each answered and queued, without
    /// bound: the next request was read as soon as a response was written. Now a read asked for
    /// while the channel is past its high-water mark waits until it drains.
    @Test func aReadWaitsWhileResponsesAreQueuedAndGoesOnOnceTheyDrain() throws {
        let channel = EmbeddedChannel()
        let counter = ReadCounter()
        try channel.pipeline.syncOperations.addHandler(counter)
        try channel.pipeline.syncOperations.addHandler(ReadsWhileWritable())
        channel.pipeline.read()
        #expect(counter.reads == 1, "a read while writable goes through")
        channel.isWritable = false
        channel.pipeline.fireChannelWritabilityChanged()
        channel.pipeline.read()
        channel.pipeline.read()
        #expect(counter.reads == 1, "a read while responses are queued past the mark went to the socket")
        channel.isWritable = true
        channel.pipeline.fireChannelWritabilityChanged()
        #expect(counter.reads == 2, "the held read did not go once the responses drained")
        channel.pipeline.fireChannelWritabilityChanged()
        #expect(counter.reads == 2, "a read went out that nobody asked for")
        _ = try channel.finish()
    }
}

/// `inject MEMBER wait-held N` for more I/Os than the engine runs at once on one member waited
/// for ever (the rest wait in the pool's queue, never at the gate): now refused, with the limit.
@Suite struct FaultInjectionTests {
    @Test func waitHeldForMoreThanTheMembersShareIsRefused() async throws {
        let dir = TemporaryDirectory()
        let file = try MemberFile(creating: dir.file("m0.img"), sizeBytes: 1 << 20)
        let injection = FaultInjection(wrapping: [file])
        injection.limitHeld(perMember: 2)
        _ = try await injection.perform(member: MemberIndex(0), action: "stall")
        do {
            _ = try await injection.perform(member: MemberIndex(0), action: "wait-held 3")
            Issue.record("wait-held 3 was taken")
        } catch {
            #expect("\(error)".contains("at most 2"), "\(error)")
        }
        _ = try await injection.perform(member: MemberIndex(0), action: "resume")
        file.close()
    }
}
