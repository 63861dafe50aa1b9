import DiskIO
import Logging
import MDFormat
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import Prometheus
import RaidCore
import RaidEngine

/// The array's metrics in Prometheus's text format (swift-prometheus): counters and latency
/// histograms fed by the engine as requests and member I/O complete, gauges refreshed from a
/// snapshot of the array at each scrape.
public final class ArrayMetrics: EngineObserver, @unchecked Sendable {
    public let registry = PrometheusCollectorRegistry()
    let engine: RaidEngine
    let arrayLabel: (String, String)

    // Fed on the engine's loop (the objects themselves are thread-safe).
    let requests: [ClientRequestKind: Counter]
    let requestBytes: [ClientRequestKind: Counter]
    let requestErrors: [ClientRequestKind: Counter]
    let latency: [ClientRequestKind: DurationHistogram]
    /// Member I/O counters, made the first time a member and purpose meet; only touched on the
    /// engine's loop. Bounded: members × purposes × operations.
    var memberIO: [MemberIOKey: (ios: Counter, bytes: Counter, errors: Counter)] = [:]

    struct MemberIOKey: Hashable {
        var member: Int
        var operation: MemberIOOperation
        var purpose: MemberIOPurpose
    }

    /// Latency buckets from 50 µs to 5 s (NBD requests on files and disks).
    static let latencyBuckets: [Duration] = [
        .microseconds(50), .microseconds(100), .microseconds(250), .microseconds(500), .milliseconds(1), .milliseconds(2),
        .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50), .milliseconds(100), .milliseconds(250),
        .milliseconds(500), .seconds(1), .seconds(5),
    ]

    /// How an NBD server's connections polled for their next request (`NBDServer.pollCounts`).
    public typealias PollCounts = (spells: Int, caught: Int, nanos: UInt64)

    /// The server's poll counts, read at each scrape; nil without a server.
    let serverPolls: (@Sendable () async -> PollCounts)?

    public init(engine: RaidEngine, name: String, serverPolls: (@Sendable () async -> PollCounts)? = nil) {
        self.engine = engine
        self.serverPolls = serverPolls
        arrayLabel = ("array", name)
        var requests: [ClientRequestKind: Counter] = [:]
        var requestBytes: [ClientRequestKind: Counter] = [:]
        var requestErrors: [ClientRequestKind: Counter] = [:]
        var latency: [ClientRequestKind: DurationHistogram] = [:]
        for kind in ClientRequestKind.allCases {
            let labels = [arrayLabel, ("kind", kind.rawValue)]
            requests[kind] = registry.makeCounter(descriptor: Self.name("client_requests", "total", "Client requests completed, by kind."), labels: labels)
            requestBytes[kind] = registry.makeCounter(descriptor: Self.name("client", "bytes_total", "Bytes named by completed client requests, by kind."), labels: labels)
            requestErrors[kind] = registry.makeCounter(descriptor: Self.name("client_errors", "total", "Client requests that completed with an error, by kind."), labels: labels)
            latency[kind] = registry.makeDurationHistogram(
                descriptor: Self.name("client_request_duration", "seconds", "Client request latency in the array, submit to completion."),
                labels: labels, buckets: Self.latencyBuckets)
        }
        self.requests = requests
        self.requestBytes = requestBytes
        self.requestErrors = requestErrors
        self.latency = latency
    }

    static func name(_ metric: String, _ unit: String, _ help: String) -> MetricNameDescriptor {
        MetricNameDescriptor(namespace: "swraid", metricName: metric, unitName: unit, helpText: help)
    }

    // MARK: EngineObserver (on the engine's loop)

    public func clientRequestCompleted(kind: ClientRequestKind, bytes: Int, latencyNanoseconds: UInt64, failed: Bool) {
        requests[kind]!.increment()
        requestBytes[kind]!.increment(by: Int64(bytes))
        if failed { requestErrors[kind]!.increment() }
        latency[kind]!.record(.nanoseconds(Int64(clamping: latencyNanoseconds)))
    }

    public func memberIOCompleted(member: MemberIndex, operation: MemberIOOperation, purpose: MemberIOPurpose, bytes: Int, failed: Bool) {
        let key = MemberIOKey(member: member.rawValue, operation: operation, purpose: purpose)
        let counters = memberIO[key] ?? makeMemberIOCounters(key)
        counters.ios.increment()
        counters.bytes.increment(by: Int64(bytes))
        if failed { counters.errors.increment() }
    }

    func makeMemberIOCounters(_ key: MemberIOKey) -> (ios: Counter, bytes: Counter, errors: Counter) {
        let labels = [arrayLabel, ("member", String(key.member)), ("op", key.operation.rawValue), ("purpose", key.purpose.rawValue)]
        let made = (
            registry.makeCounter(descriptor: Self.name("member_ios", "total", "Member I/Os completed, by member, operation and purpose."), labels: labels),
            registry.makeCounter(descriptor: Self.name("member", "bytes_total", "Member I/O bytes, by member, operation and purpose."), labels: labels),
            registry.makeCounter(descriptor: Self.name("member_io_errors", "total", "Member I/Os that failed, by member, operation and purpose."), labels: labels))
        memberIO[key] = made
        return made
    }

    // MARK: Scrape

    /// The text exposition, with the gauges taken from the array as it is now.
    public func scrape() async -> [UInt8] {
        refresh(await engine.snapshot())
        let shortcuts = await engine.memberReadShortcuts()
        for (how, count) in [("loop_from_page_cache", shortcuts.servedFromCache), ("sendfile", shortcuts.spliced)] {
            gauge("member_read_shortcuts", "count", "Member reads not handed to the I/O threads: done on the event loop from the page cache (loop_from_page_cache), or not done at all, their bytes sent to the client from the member file with sendfile (sendfile).", [("how", how)])
                .set(Int64(count))
        }
        if let serverPolls {
            let polls = await serverPolls()
            gauge("nbd_poll_spells", "count", "Times an NBD connection that owed its client nothing polled its socket for the next request instead of letting the loop sleep.").set(Int64(polls.spells))
            gauge("nbd_poll_caught", "count", "Poll spells the client's next request came in.").set(Int64(polls.caught))
            gauge("nbd_poll", "seconds", "Time spent polling.").set(Double(polls.nanos) / 1e9)
        }
        return registry.emitToBuffer()
    }

    func gauge(_ metric: String, _ unit: String, _ help: String, _ labels: [(String, String)] = []) -> Gauge {
        registry.makeGauge(descriptor: Self.name(metric, unit, help), labels: [arrayLabel] + labels)
    }

    func refresh(_ s: ArraySnapshot) {
        for state in ArrayState.allCases {
            gauge("array_state", "info", "1 for the array's md array_state, 0 for the others.", [("state", state.rawValue)])
                .set(Int64(s.arrayState == state ? 1 : 0))
        }
        for action in SyncAction.allCases {
            gauge("sync_action", "info", "1 for the array's md sync_action, 0 for the others.", [("action", action.rawValue)])
                .set(Int64(s.syncAction == action ? 1 : 0))
        }
        gauge("degraded", "members", "md's degraded: slots without an in-sync member.").set(Int64(s.degraded))
        gauge("mismatch", "sectors", "md's mismatch_cnt: sectors the last check or repair found inconsistent.").set(Int64(clamping: s.mismatchCount))
        gauge("sync_completed", "sectors", "Member sectors the running sync has done (0 when none runs).").set(Int64(clamping: s.syncProgress?.done ?? 0))
        gauge("sync_total", "sectors", "Member sectors the running sync covers (0 when none runs).").set(Int64(clamping: s.syncProgress?.total ?? 0))
        gauge("sync_speed", "kibibytes_per_second", "md's sync_speed: the running sync's recent rate.").set(Int64(clamping: s.syncSpeedKiBps ?? 0))
        gauge("stripe_cache_size", "stripes", "md's stripe_cache_size.").set(Int64(s.stripeCacheSize))
        gauge("stripe_cache_active", "stripes", "md's stripe_cache_active: stripes in use.").set(Int64(s.stripeCacheActive))
        gauge("requests_in_flight", "requests", "Client requests inside the array.").set(Int64(s.requestsInFlight))
        gauge("bytes_in_flight", "bytes", "Client bytes inside the array.").set(Int64(s.bytesInFlight))
        // How the core has written so far (counts since start; gauges, as the snapshot carries them).
        let writePaths = [
            ("read_modify_write", s.counters.readModifyWrites), ("reconstruct_write", s.counters.reconstructWrites),
            ("full_stripe_batch", s.counters.fullStripeBatches), ("gathered_row", s.counters.gatheredRows),
            ("gather_released", s.counters.gathersReleased), ("gather_late", s.counters.gathersLate),
            ("gather_released_idle", s.counters.gathersReleasedIdle),
        ]
        for (path, count) in writePaths {
            gauge("write_paths", "count", "Stripe writes by how parity was made (read_modify_write, reconstruct_write), full-stripe batches, and rows of a write stream gathered into one (gathered_row) or sent to the stripes after all (gather_released; of those, gather_released_idle when nothing else was in flight), and stream writes that continued a row released at its deadline, lengthening the wait (gather_late).", [("path", path)])
                .set(Int64(count))
        }
        let ioBuffers = [("in_use", IOBufferStorage.liveBytes), ("peak_in_use", IOBufferStorage.peakLiveBytes), ("idle", IOBufferPool.shared.idleBytes)]
        for (state, bytes) in ioBuffers {
            gauge("io_buffers", "bytes", "I/O buffer memory, process-wide: in use (client data, stripes, parity), its peak, and idle in the pool.", [("state", state)])
                .set(Int64(bytes))
        }
        gauge("bitmap_dirty", "chunks", "Write-intent bitmap chunks set.").set(Int64(s.bitmapBitsSet))
        gauge("events", "count", "The superblocks' event count.").set(Int64(clamping: s.events))
        for m in s.members {
            let state = MemberStateWord(m)
            for word in MemberStateWord.allCases {
                gauge("member_state", "info", "1 for the member's state (md's dev-N/state words), 0 for the others.", [("member", String(m.index.rawValue)), ("state", word.rawValue)])
                    .set(Int64(state == word ? 1 : 0))
            }
            gauge("member_read_errors", "count", "md's dev-N/errors: read errors corrected or counted against the member.", [("member", String(m.index.rawValue))])
                .set(Int64(m.readErrors))
        }
    }
}

/// A member's state in one word, as md's dev-N/state would lead with it.
enum MemberStateWord: String, CaseIterable {
    case inSync = "in_sync"
    case rebuilding
    case spare
    case faulty
    case removed

    init(_ m: MemberSnapshot) {
        switch m.role {
        case .active: self = m.recoveryOffsetSectors == nil ? .inSync : .rebuilding
        case .spare: self = .spare
        case .faulty: self = .faulty
        case .removed: self = .removed
        }
    }
}

/// `GET /metrics` over HTTP/1.1 (anything else 404); one response per request.
public final class MetricsServer: @unchecked Sendable {
    let channel: Channel

    init(channel: Channel) { self.channel = channel }

    public var localAddress: SocketAddress? { channel.localAddress }

    public static func start(metrics: ArrayMetrics, host: String, port: Int, logger: Logger) async throws -> MetricsServer {
        let bootstrap = ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.pipeline.configureHTTPServerPipeline(withErrorHandling: false).flatMapThrowing {
                    try channel.pipeline.syncOperations.addHandler(ReadsWhileWritable(), position: .first)
                    try channel.pipeline.syncOperations.addHandler(MetricsHandler(metrics: metrics))
                }
            }
        let channel = try await bootstrap.bind(host: host, port: port).get()
        logger.info("metrics on http://\(host):\(channel.localAddress?.port ?? port)/metrics")
        return MetricsServer(channel: channel)
    }

    public func stop() async { try? await channel.close().get() }
}

/// Reads a connection's socket only while its replies drain: NIO's HTTP pipelining handler
/// reads the next request as soon as a response's end is written, not sent, so a client that
/// pipelines requests and never reads its responses had the daemon scrape for each of them and
/// queue every response in memory. Read requests wait while the channel is past its write
/// high-water mark and go out when it drains. First in the pipeline, so that it sees every read.
final class ReadsWhileWritable: ChannelDuplexHandler {
    typealias InboundIn = NIOAny
    typealias OutboundIn = NIOAny

    private var readHeld = false

    func read(context: ChannelHandlerContext) {
        if context.channel.isWritable {
            context.read()
        } else {
            readHeld = true
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable && readHeld {
            readHeld = false
            context.read()
        }
        context.fireChannelWritabilityChanged()
    }
}

final class MetricsHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    let metrics: ArrayMetrics
    var head: HTTPRequestHead?

    init(metrics: ArrayMetrics) { self.metrics = metrics }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let h): head = h
        case .body: break
        case .end:
            guard let head else { return }
            self.head = nil
            let path = head.uri.split(separator: "?", maxSplits: 1).first.map(String.init) ?? head.uri
            guard head.method == .GET || head.method == .HEAD, path == "/metrics" else {
                respond(context, status: head.method == .GET ? .notFound : .methodNotAllowed, body: Array("GET /metrics\n".utf8), keepAlive: head.isKeepAlive)
                return
            }
            let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
            let metrics = self.metrics
            let keepAlive = head.isKeepAlive
            let isHead = head.method == .HEAD
            let promise = context.eventLoop.makePromise(of: [UInt8].self)
            promise.completeWithTask { await metrics.scrape() }
            promise.futureResult.whenSuccess { body in
                let (me, context) = bound.value
                me.respond(context, status: .ok, body: isHead ? [] : body, keepAlive: keepAlive, contentType: "text/plain; version=0.0.4; charset=utf-8")
            }
        }
    }

    /// A request the HTTP parser could not read: 400, and the connection closed.
    func errorCaught(context: ChannelHandlerContext, error: Error) {
        head = nil
        respond(context, status: .badRequest, body: Array("bad request\n".utf8), keepAlive: false)
    }

    func respond(_ context: ChannelHandlerContext, status: HTTPResponseStatus, body: [UInt8], keepAlive: Bool, contentType: String = "text/plain; charset=utf-8") {
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: contentType)
        headers.add(name: "Content-Length", value: String(body.count))
        if !keepAlive { headers.add(name: "Connection", value: "close") }
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: status, headers: headers))), promise: nil)
        var buffer = context.channel.allocator.buffer(capacity: body.count)
        buffer.writeBytes(body)
        context.write(wrapOutboundOut(.body(.byteBuffer(buffer))), promise: nil)
        let done = context.writeAndFlush(wrapOutboundOut(.end(nil)))
        if !keepAlive {
            let channel = context.channel
            done.whenComplete { _ in channel.close(promise: nil) }
        }
    }
}
