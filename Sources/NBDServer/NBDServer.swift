import DequeModule
import Logging
import NBDProtocol
import NIOCore
import NIOPosix
import RaidCore
import RaidEngine

/// Where the server listens.
public enum NBDListenAddress: Sendable, Equatable, CustomStringConvertible {
    case tcp(host: String, port: Int)
    case unix(path: String)

    public var description: String {
        switch self {
        case .tcp(let host, let port): return "\(host):\(port)"
        case .unix(let path): return "unix:\(path)"
        }
    }
}

public struct NBDServerOptions: Sendable {
    /// Connections at once; more are accepted and closed at once.
    public var maxConnections = 16
    /// Requests in flight on one connection before it stops reading from its socket.
    public var maxRequestsPerConnection = 64
    /// Bytes of requests in flight on one connection (reads' results, writes' data) before it
    /// stops reading; one request is always let through whatever its size.
    public var maxBytesPerConnection = 16 << 20
    /// Bytes of requests in flight on every connection together: what bounds the server's
    /// request memory however many clients connect. Past it, connections stop taking requests
    /// until some finish (one request may go past it, as one may on a connection).
    public var maxBytesInFlight = 12 << 20
    /// Bytes of TRIM and WRITE_ZEROES in the array at once, on every connection together. They
    /// carry no data, so the byte bounds above do not count them, but the array counts each
    /// piece (up to 32 MiB) against its own bounds: unbounded, 64 such requests of one client
    /// filled them and every other client's reads and writes were refused (EIO). Past it, the
    /// next piece waits for one to finish, oldest first.
    public var maxZeroingBytesInFlight = 64 << 20
    /// Reply bytes queued on one connection, not yet taken by the socket, past which it stops
    /// taking requests (the high mark) and below which it takes them again (the low one).
    public var replyWaterMark = ChannelOptions.Types.WriteBufferWaterMark(low: 1 << 20, high: 2 << 20)
    /// The kernel's send buffer of each connection (`SO_SNDBUF`, which Linux doubles and caps at
    /// `net.core.wmem_max`), nil for the system's default. A Unix socket's default, 208 KiB, is
    /// smaller than one 256 KiB read reply: each went out in two writes with a loop turn between,
    /// waiting for the socket to say it could take more. With 512 KiB, RAID5 of 4 served 1 GiB
    /// to nbdcopy at 2.4-2.8 GB/s with 225 ticks of CPU, against 1.7-2.3 GB/s and 270-380, and
    /// over TCP loopback at 1.9-2.3 GB/s against 1.4-2.0 (TCP's own tuning starts small and
    /// grows; a fixed buffer turns it off, so a link whose bandwidth times round trip is well
    /// over 1 MiB wants nil: `swraid run --send-buffer-kib 0`).
    public var sendBufferBytes: Int? = 512 << 10
    /// A connection still negotiating after this long is closed.
    public var handshakeTimeout: TimeAmount = .seconds(10)
    /// A connection whose write data stops arriving for this long is closed. The write's bytes
    /// count against `maxBytesInFlight` from its header on, so a client stalled in the middle of
    /// a large write would otherwise hold up every other connection.
    public var writeDataTimeout: TimeAmount = .seconds(30)
    /// Bytes of a write's data that must arrive in each `writeDataTimeout` (or the rest of the
    /// write, when less is left): a client that trickles a byte now and then would otherwise hold
    /// its write's bytes against the server's bound for ever. 64 KiB per 30 s is about 2 KiB/s.
    public var writeDataMinBytes = 64 << 10
    public var readOnly = false
    /// Read replies send the bytes of healthy chunk-aligned reads that the members' page cache
    /// holds with sendfile(2), from the member files, instead of reading them into the reply
    /// first (`SpliceableReadTarget`): the data then crosses from the page cache to the socket
    /// with no copy through user space. By hand, a cached 1 GiB file sent over a Unix socket in
    /// 256 KiB pieces took half the CPU of pread-then-send. Off, every read is copied.
    public var sendfileReads = true
    /// The longest a connection that owes its client nothing polls its socket for the next
    /// request before the loop sleeps; each connection polls only while that pays
    /// (`AdaptivePoll`). 0 never polls.
    public var pollMaxNanos = AdaptivePoll.defaultMaxNanos
    /// Tests: the poll window starts at its maximum and stays there, whatever the gaps.
    package var pollWindowPinnedOpen = false

    public init() {}

    /// Options the server cannot run with, said before it listens (rather than a trap on the
    /// loop at the first connection).
    public func validate() throws(NBDServerOptionsError) {
        guard pollMaxNanos <= AdaptivePoll.limitNanos else {
            throw NBDServerOptionsError(message: "pollMaxNanos \(pollMaxNanos) is past the limit of \(AdaptivePoll.limitNanos)")
        }
        guard maxZeroingBytesInFlight >= NBDConnection.pieceBytes else {
            throw NBDServerOptionsError(message: "maxZeroingBytesInFlight must hold one piece of \(NBDConnection.pieceBytes) bytes")
        }
        guard writeDataMinBytes >= 1 else {
            throw NBDServerOptionsError(message: "writeDataMinBytes must be at least 1 (a write whose data stopped would never be closed)")
        }
    }

    /// What the engine's core must accept so that the server's own bounds are the ones hit
    /// first (a request the core refused as busy would be an error the client did not earn).
    /// `pieces`: the stripe-unit pieces those requests can be cut into (at most one per 4 KiB,
    /// plus the two partial ends of each).
    public func coreBounds(maxBlockBytes: Int) -> (requests: Int, bytes: Int, pieces: Int) {
        let requests = maxConnections * maxRequestsPerConnection
        let bytes = maxBytesInFlight + maxBlockBytes + maxZeroingBytesInFlight
        return (requests, bytes, bytes / 4096 + 2 * requests)
    }
}

public struct NBDServerOptionsError: Error, CustomStringConvertible {
    public let message: String
    public var description: String { message }
}

/// Serves one array over NBD (fixed newstyle), on the engine's own event loop: connections
/// hand requests to the engine without a thread hop. The negotiation (`NBDHandshake`), the
/// validation (`NBDValidator`) and the dispatch to the engine (`NBDConnection`) are separate
/// pieces.
public final class NBDServer: @unchecked Sendable {
    public let engine: RaidEngine
    public let export: NBDExport
    public let options: NBDServerOptions
    let logger: Logger
    let listener: Channel
    let connections: ConnectionRegistry

    /// The export an array is served as: named after the array (md's name without the host
    /// part), preferring whole stripes, at most 32 MiB per request. The protocol wants the
    /// preferred size a power of two; a stripe of, say, three 64 KiB chunks is not one, so the
    /// largest power of two within the stripe is preferred then.
    public static func export(for engine: RaidEngine, readOnly: Bool) -> NBDExport {
        let name = engine.arrayName.split(separator: ":").last.map(String.init) ?? engine.arrayName
        var caps = NBDCapabilities()
        caps.readOnly = readOnly
        let stripe = UInt32(min(engine.geometry.rowDataSectors * 512, 32 << 20))
        let preferred = UInt32(1) << (31 - UInt32(stripe.leadingZeroBitCount))
        return NBDExport(
            name: name, description: "swraid \(engine.geometry.level) '\(engine.arrayName)'", sizeBytes: engine.sizeBytes,
            capabilities: caps, minimumBlockSize: 512, preferredBlockSize: preferred, maximumBlockSize: 32 << 20)
    }

    init(engine: RaidEngine, export: NBDExport, options: NBDServerOptions, logger: Logger, listener: Channel, connections: ConnectionRegistry) {
        self.engine = engine
        self.export = export
        self.options = options
        self.logger = logger
        self.listener = listener
        self.connections = connections
    }

    /// Starts listening. TCP listens where told (loopback by default in the CLI); a Unix socket
    /// path is replaced if a stale socket is there.
    public static func start(engine: RaidEngine, address: NBDListenAddress, options: NBDServerOptions = NBDServerOptions(), logger: Logger? = nil) async throws -> NBDServer {
        try options.validate()
        let export = Self.export(for: engine, readOnly: options.readOnly || engine.readOnly)
        let log = logger ?? engine.logger
        let registry = ConnectionRegistry(limit: options.maxConnections, maxBytesInFlight: options.maxBytesInFlight, maxZeroingBytesInFlight: options.maxZeroingBytesInFlight)
        let sendBufferBytes = options.sendBufferBytes
        let bootstrap = ServerBootstrap(group: engine.eventLoop)
            .serverChannelOption(.backlog, value: 64)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelOption(.autoRead, value: false)
            // Replies queued past the high mark stop the connection from taking requests until
            // they drain below the low one (NBDConnection.atBound).
            .childChannelOption(.writeBufferWaterMark, value: options.replyWaterMark)
            // A client may shut its sending side and still read its replies.
            .childChannelOption(.allowRemoteHalfClosure, value: true)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    if let sendBufferBytes {
                        try channel.syncOptions?.setOption(.socketOption(.so_sndbuf), value: SocketOptionValue(sendBufferBytes))
                    }
                    let handler = NBDConnection(engine: engine, export: export, options: options, logger: log, registry: registry)
                    try channel.pipeline.syncOperations.addHandler(handler)
                }
            }
        let channel: Channel
        switch address {
        case .tcp(let host, let port):
            channel = try await bootstrap.bind(host: host, port: port).get()
        case .unix(let path):
            channel = try await bootstrap.bind(unixDomainSocketPath: path, cleanupExistingSocketFile: true).get()
        }
        // The address as bound (a TCP port 0 becomes the port the kernel chose).
        var bound = address
        if case .tcp(let host, _) = address, let port = channel.localAddress?.port { bound = .tcp(host: host, port: port) }
        log.info("serving '\(export.name)' (\(export.sizeBytes) bytes) over NBD on \(bound)")
        return NBDServer(engine: engine, export: export, options: options, logger: log, listener: channel, connections: registry)
    }

    /// The address bound (with the port the system chose for port 0).
    public var localAddress: SocketAddress? { listener.localAddress }

    /// Read replies sent (partly or wholly) from the members' page cache with sendfile so far.
    public func splicedReplies() async -> Int {
        let registry = connections
        return (try? await engine.eventLoop.submit { registry.splicedReplies }.get()) ?? 0
    }

    /// How the connections polled for their next request so far: spells, spells the request
    /// came in, and the time spent.
    public func pollCounts() async -> (spells: Int, caught: Int, nanos: UInt64) {
        let registry = connections
        return (try? await engine.eventLoop.submit { (registry.pollSpells, registry.pollSpellsCaught, registry.pollNanos) }.get()) ?? (0, 0, 0)
    }

    /// Stops accepting, and closes every connection once its requests in flight are answered.
    public func stop() async {
        try? await listener.close().get()
        await connections.closeAll(on: engine.eventLoop)
    }
}

/// The open connections (on the loop only), for the connection bound and for stop.
final class ConnectionRegistry: @unchecked Sendable {
    let limit: Int
    var open: [ObjectIdentifier: Channel] = [:]
    /// Bytes of requests in flight on every connection (on the engine's loop only, as every
    /// connection's handler runs there).
    private(set) var bytesInFlight = 0
    let maxBytesInFlight: Int
    /// Connections that stopped taking requests at the server's byte bound, oldest first, each
    /// once (bounded by the connection limit).
    private var waitingForBytes: [NBDConnection] = []
    private var wakeScheduled = false
    /// The loop every connection runs on (known once one waits).
    private var waitersLoop: EventLoop?

    init(limit: Int, maxBytesInFlight: Int, maxZeroingBytesInFlight: Int) {
        precondition(maxBytesInFlight > 0, "the server's byte bound must be positive")
        self.limit = limit
        self.maxBytesInFlight = maxBytesInFlight
        self.maxZeroingBytesInFlight = maxZeroingBytesInFlight
    }

    // MARK: - TRIM and WRITE_ZEROES pieces (on the loop only)

    /// Bytes of zeroing pieces in the engine now (`NBDServerOptions.maxZeroingBytesInFlight`).
    private(set) var zeroingBytesInFlight = 0
    let maxZeroingBytesInFlight: Int
    /// Pieces waiting for room, oldest first: at most one per TRIM or WRITE_ZEROES in flight,
    /// which the connections' request bounds hold.
    private var zeroingWaiters = Deque<(bytes: Int, start: () -> Void)>()
    private var zeroingStartScheduled = false

    /// Runs `start` (which submits a piece of `bytes`) once the bound has room for it, in
    /// arrival order; `zeroingDone` gives the bytes back.
    func startZeroing(_ bytes: Int, _ start: @escaping () -> Void) {
        precondition(bytes <= maxZeroingBytesInFlight, "a zeroing piece larger than the bound would wait for ever")
        if zeroingWaiters.isEmpty && zeroingBytesInFlight + bytes <= maxZeroingBytesInFlight {
            zeroingBytesInFlight += bytes
            start()
        } else {
            zeroingWaiters.append((bytes, start))
        }
    }

    /// A piece finished. Waiting pieces start in a task of their own on the loop: not inside
    /// the completion, which may come from inside a `start` (the engine can answer at once).
    func zeroingDone(_ bytes: Int, on loop: EventLoop) {
        precondition(zeroingBytesInFlight >= bytes, "zeroing bytes in flight would go below zero")
        zeroingBytesInFlight -= bytes
        guard !zeroingWaiters.isEmpty, !zeroingStartScheduled else { return }
        zeroingStartScheduled = true
        loop.execute { self.startZeroingWaiters() }
    }

    private func startZeroingWaiters() {
        zeroingStartScheduled = false
        while let first = zeroingWaiters.first, zeroingBytesInFlight + first.bytes <= maxZeroingBytesInFlight {
            zeroingWaiters.removeFirst()
            zeroingBytesInFlight += first.bytes
            first.start()
        }
    }

    var atByteBound: Bool { bytesInFlight >= maxBytesInFlight }

    /// Read replies sent partly or wholly with sendfile (on the loop only).
    var splicedReplies = 0
    /// Times a connection polled its socket for the next request (`AdaptivePoll`), times the
    /// request came while it did, and the nanoseconds it took (on the loop only).
    var pollSpells = 0
    var pollSpellsCaught = 0
    var pollNanos: UInt64 = 0

    /// The most bytes ever in flight at once (tests check the bound with it).
    private(set) var peakBytesInFlight = 0

    func take(_ bytes: Int) {
        bytesInFlight += bytes
        peakBytesInFlight = max(peakBytesInFlight, bytesInFlight)
    }

    /// Bytes given back. Below the bound again, the connections that waited go on, oldest first,
    /// in a task of their own on the loop: not inside the handler of the connection that gave
    /// the bytes back, which is in the middle of answering a request.
    func give(_ bytes: Int) {
        precondition(bytesInFlight >= bytes, "server in-flight bytes would go below zero")
        bytesInFlight -= bytes
        guard !atByteBound, !waitingForBytes.isEmpty, !wakeScheduled, let loop = waitersLoop else { return }
        wakeScheduled = true
        loop.execute { self.wakeWaiters() }
    }

    /// Resumes waiting connections until the bound is reached again (one resumed may take bytes,
    /// or finish a request at once and give them back: `give` then only schedules another round).
    private func wakeWaiters() {
        wakeScheduled = false
        while !atByteBound, !waitingForBytes.isEmpty {
            let connection = waitingForBytes.removeFirst()
            connection.waitingForServerBytes = false
            connection.resumeAfterServerBound()
        }
    }

    /// `connection` stopped at the server's byte bound: it goes on when bytes are given back.
    func waitForBytes(_ connection: NBDConnection, on loop: EventLoop) {
        guard !connection.waitingForServerBytes else { return }
        precondition(waitingForBytes.count < limit, "more connections waiting than may be open")
        waitersLoop = loop
        connection.waitingForServerBytes = true
        waitingForBytes.append(connection)
    }

    /// Read replies that went out, kept for the next ones (on the loop only). A fresh buffer per
    /// reply, copied into and freed once sent, fragments glibc's heaps: the daemon's RSS grew by
    /// 15-60 MiB with each 1 GiB read by four connections. Bounded in bytes and in count (the
    /// search for one that fits is linear), server-wide.
    private var spareReplyBuffers: [ByteBuffer] = []
    private var spareReplyBytes = 0
    static let maxSpareReplyBytes = 4 << 20
    static let maxSpareReplyBuffers = 64

    /// Replies smaller than this are not kept: the allocator's own free lists serve them at no
    /// cost to the RSS, and keeping one costs a promise and a callback per reply (a 4 KiB read
    /// at queue depth 1 is mostly such fixed costs).
    static let minKeptReplyBytes = 64 << 10

    static func keepsReplyBuffers(ofCapacity capacity: Int) -> Bool { capacity >= minKeptReplyBytes }

    /// An empty buffer for a reply of `capacity` bytes: a spare one that fits, or a new one.
    func replyBuffer(capacity: Int, allocator: ByteBufferAllocator) -> ByteBuffer {
        guard Self.keepsReplyBuffers(ofCapacity: capacity) else { return allocator.buffer(capacity: capacity) }
        if let i = spareReplyBuffers.lastIndex(where: { $0.capacity >= capacity && $0.capacity <= 2 * capacity }) {
            var buffer = spareReplyBuffers.remove(at: i)
            spareReplyBytes -= buffer.capacity
            buffer.clear()
            return buffer
        }
        return allocator.buffer(capacity: capacity)
    }

    /// A reply buffer the socket is done with.
    func keepReplyBuffer(_ buffer: ByteBuffer) {
        guard Self.keepsReplyBuffers(ofCapacity: buffer.capacity), spareReplyBytes + buffer.capacity <= Self.maxSpareReplyBytes, spareReplyBuffers.count < Self.maxSpareReplyBuffers else { return }
        spareReplyBuffers.append(buffer)
        spareReplyBytes += buffer.capacity
    }

    /// A connection closed: it waits for nothing any more.
    func stopWaiting(_ connection: NBDConnection) {
        guard connection.waitingForServerBytes else { return }
        connection.waitingForServerBytes = false
        waitingForBytes.removeAll { $0 === connection }
    }

    /// Registers the channel; false when the server is full.
    func admit(_ channel: Channel) -> Bool {
        guard open.count < limit else { return false }
        open[ObjectIdentifier(channel)] = channel
        return true
    }

    func remove(_ channel: Channel) { open[ObjectIdentifier(channel)] = nil }

    func closeAll(on loop: EventLoop) async {
        let channels: [Channel] = try! await loop.submit { Array(self.open.values) }.get()
        for c in channels { try? await c.close().get() }
    }
}
