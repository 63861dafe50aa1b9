import ControlProtocol
import DiskIO
import FoundationEssentials
import Logging
import MDFormat
import NIOCore
import NIOPosix
import RaidCore
import RaidEngine

/// What the control socket's requests do to a running array.
public final class ControlService: @unchecked Sendable {
    public let engine: RaidEngine
    /// The name the reports use where md prints `mdN` (the array's name).
    public let name: String
    let requestShutdown: @Sendable () async -> Void
    let stopped = StopSignal()
    /// Requests being answered, so that the daemon's last act (the reply to `stop`) is not cut
    /// off by its exit; closed when the control server stops.
    let replies = CallGate()
    /// The members' fault injectors, when the daemon runs with --fault-injection.
    let faultInjection: FaultInjection?

    public init(engine: RaidEngine, name: String, faultInjection: FaultInjection? = nil, requestShutdown: @escaping @Sendable () async -> Void) {
        self.engine = engine
        self.name = name
        self.faultInjection = faultInjection
        self.requestShutdown = requestShutdown
    }

    /// Resumes every `stop` request once the array has stopped (the daemon calls it).
    public func arrayStopped() { stopped.fire() }

    public func handle(_ request: ControlRequest) async -> ControlReply {
        func result(_ body: () async throws -> [String]) async -> ControlReply {
            do {
                return .ok(try await body())
            } catch let e as ControlError {
                return .error(errno: e.errnoName, message: e.description)
            } catch let e as EngineError {
                if case .busy = e { return .error(errno: "EBUSY", message: e.description) }
                return .error(errno: "EINVAL", message: e.description)
            } catch {
                return .error(errno: "EIO", message: "\(error)")
            }
        }
        switch request {
        case .get(let attribute): return await result { [try await engine.attribute(attribute)] }
        case .set(let attribute, let value): return await result { try await engine.set(attribute, value); return [] }
        case .status:
            let snap = await engine.snapshot()
            return .ok(MDStatReport.lines(name: name, snapshot: snap, devices: devices(snap), readOnly: engine.readOnly))
        case .detail:
            let snap = await engine.snapshot()
            return .ok(MDDetail(name: name, snapshot: snap, devices: devices(snap), homehost: Host.name()).lines(formatTime: localCTime))
        case .detailJSON:
            let snap = await engine.snapshot()
            return .ok([MDDetail(name: name, snapshot: snap, devices: devices(snap), homehost: Host.name()).json()])
        case .fail(let m): return await result { try await engine.fail(member: m); return [] }
        case .remove(let m): return await result { try await engine.remove(member: m); return [] }
        case .readd(let m): return await result { try await engine.readd(member: m); return [] }
        case .add(let path): return await result { try await engine.add(path: path); return [] }
        case .wait:
            await engine.waitForSync()
            return .ok([])
        case .stop:
            await requestShutdown()
            await stopped.wait()
            return .ok([])
        case .help:
            return .ok(ControlRequest.usage + (faultInjection == nil ? [] : [FaultInjection.usage]))
        case .inject(let text):
            guard let faultInjection else {
                return .error(errno: "EPERM", message: "fault injection is off (start swraid run with --fault-injection)")
            }
            let member = String(text.prefix { $0 != " " })
            let action = String(text.dropFirst(member.count).drop { $0 == " " })
            return await result { try await faultInjection.perform(member: try await engine.member(named: member), action: action) }
        }
    }

    func devices(_ snap: ArraySnapshot) -> [ReportDevice] {
        snap.members.map { m in
            let numbers = DiskIO.FileSystem.blockDeviceNumbers(m.name)
            return ReportDevice(path: m.name, major: numbers?.major ?? 0, minor: numbers?.minor ?? 0)
        }
    }
}

/// Linux's `struct ucred` (which Swift's Glibc module leaves out without _GNU_SOURCE): what
/// SO_PEERCRED returns for a Unix-domain socket's peer.
struct PeerCredentials: Sendable {
    var pid: Int32 = 0
    var uid: UInt32 = 0
    var gid: UInt32 = 0

    /// SO_PEERCRED on Linux.
    static let optionName: Int32 = 17
}

/// A one-shot event many tasks can wait for.
public final class StopSignal: @unchecked Sendable {
    let lock = ConditionLock()
    var fired = false
    var waiters: [CheckedContinuation<Void, Never>] = []

    public init() {}

    public func fire() {
        let ready: [CheckedContinuation<Void, Never>] = lock.withLock {
            fired = true
            defer { waiters.removeAll() }
            return waiters
        }
        for w in ready { w.resume() }
    }

    public func wait() async {
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let now: Bool = lock.withLock {
                if fired { return true }
                waiters.append(c)
                return false
            }
            if now { c.resume() }
        }
    }
}

/// ctime(3)-style local time, as mdadm prints Creation and Update Time.
public func localCTime(_ seconds: UInt64) -> String {
    guard let t = Clock.localTime(seconds) else { return formatUTCTime(seconds) }
    return ctimeText(weekday: t.weekday, month: t.month, day: t.day, hour: t.hour, minute: t.minute, second: t.second, year: t.year)
}

/// The control socket: a Unix-domain socket, mode 0600, serving the line protocol of
/// `ControlRequest` one request at a time per connection.
public final class ControlServer: @unchecked Sendable {
    public let path: String
    let channel: Channel

    let service: ControlService

    init(path: String, channel: Channel, service: ControlService) {
        self.path = path
        self.channel = channel
        self.service = service
    }

    /// The runtime directory arrays' sockets live in: `$XDG_RUNTIME_DIR/swraid`, else
    /// `/run/swraid`.
    public static var runtimeDirectory: String {
        if let xdg = ProcessInfo.processInfo.environment["XDG_RUNTIME_DIR"], !xdg.isEmpty { return xdg + "/swraid" }
        return "/run/swraid"
    }

    /// Who may use the socket: the daemon's own user, and root.
    public static func peerMayControl(uid: uid_t, daemonUID: uid_t = getuid()) -> Bool { uid == daemonUID || uid == 0 }

    /// The default socket path for an array named `name`.
    public static func defaultPath(arrayName name: String) -> String {
        runtimeDirectory + "/" + name.split(separator: "/", omittingEmptySubsequences: false).joined(separator: "_") + ".sock"
    }

    /// Listens on `path`. The socket's loop is not the engine's: a `stop` request is answered
    /// after the engine, and its loop, have shut down.
    public static func start(
        service: ControlService, path: String, on loop: EventLoop = MultiThreadedEventLoopGroup.singleton.next(), logger: Logger
    ) async throws -> ControlServer {
        // The folder the socket goes in: what precedes the last "/" ("/" itself for "/x.sock").
        let directory = path.lastIndex(of: "/").map { $0 == path.startIndex ? "/" : String(path[..<$0]) } ?? ""
        if !directory.isEmpty {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        }
        let bootstrap = ServerBootstrap(group: loop)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(ControlConnection(service: service, logger: logger))
                }
            }
        // The socket is created with a umask that leaves it to its owner only.
        let previous = umask(0o077)
        defer { umask(previous) }
        let channel = try await bootstrap.bind(unixDomainSocketPath: path, cleanupExistingSocketFile: true).get()
        _ = chmod(path, 0o600)
        logger.info("control socket \(path)")
        return ControlServer(path: path, channel: channel, service: service)
    }

    /// Stops listening, and returns once every request taken has been answered.
    public func stop() async {
        try? await channel.close().get()
        _ = unlink(path)
        await service.replies.closeAndDrain()
    }
}

/// One control connection: lines in, replies out, one request at a time.
final class ControlConnection: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    let service: ControlService
    let logger: Logger
    var framer = ControlRequestFramer()
    var busy = false
    var context: ChannelHandlerContext?

    init(service: ControlService, logger: Logger) {
        self.service = service
        self.logger = logger
    }

    /// Set once the peer's credentials were checked (same user as the daemon, or root).
    var peerAllowed = false
    /// Set once the connection was refused: input is dropped from then on.
    var refused = false

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }

    /// The socket is 0600 already; the peer's credentials (SO_PEERCRED) are checked as well,
    /// so that a socket exposed by mistake (a bind mount, a copied path) still answers no one
    /// else.
    func channelActive(context: ChannelHandlerContext) {
        context.fireChannelActive()
        guard let provider = context.channel as? SocketOptionProvider else { return refuse(context, "cannot check the peer's credentials", errno: "EACCES") }
        let credentials: EventLoopFuture<PeerCredentials> = provider.unsafeGetSocketOption(
            level: NIOBSDSocket.OptionLevel(rawValue: SOL_SOCKET), name: NIOBSDSocket.Option(rawValue: PeerCredentials.optionName))
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        credentials.whenComplete { result in
            let me = bound.value
            guard let context = me.context else { return }
            switch result {
            case .success(let peer) where ControlServer.peerMayControl(uid: peer.uid):
                me.peerAllowed = true
                me.next(context)
            case .success(let peer):
                me.refuse(context, "uid \(peer.uid) may not control this array (only uid \(getuid()) or root)", errno: "EACCES")
            case .failure(let error):
                me.refuse(context, "cannot check the peer's credentials: \(error)", errno: "EACCES")
            }
        }
    }
    func handlerRemoved(context: ChannelHandlerContext) { self.context = nil }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        context.fireChannelWritabilityChanged()
        next(context)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !refused else { return }
        let incoming = unwrapInboundIn(data)
        do {
            try framer.append(incoming.readableBytesView)
        } catch {
            return refuse(context, error.description)
        }
        next(context)
    }

    /// Serves the next waiting line, if the previous request was answered. A loop, not
    /// recursion: the client decides how many lines wait, and a run of bad ones is answered
    /// one after the other here.
    func next(_ context: ChannelHandlerContext) {
        // A client that does not read its replies stops being served until it does (the
        // replies to bad lines would otherwise pile up in memory).
        while peerAllowed, !busy, !refused, context.channel.isWritable {
            let line: String
            do {
                guard let complete = try framer.nextLine() else { return }
                line = complete
            } catch {
                return refuse(context, error.description)
            }
            let request: ControlRequest
            do {
                request = try ControlRequest.parse(line)
            } catch {
                write(context, .error(errno: "EINVAL", message: error.description))
                continue
            }
            serve(context, request)
        }
    }

    /// Hands one request to the service; the connection is busy until its reply is written.
    func serve(_ context: ChannelHandlerContext, _ request: ControlRequest) {
        let service = self.service
        guard service.replies.enter() else { return refuse(context, "the control server is stopping", errno: "ENODEV") }
        busy = true
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        let loop = context.eventLoop
        Task {
            let reply = await service.handle(request)
            loop.execute {
                let me = bound.value
                me.busy = false
                guard let context = me.context else { return service.replies.leave() }
                me.write(context, reply) { service.replies.leave() }
                me.next(context)
            }
        }
    }

    func write(_ context: ChannelHandlerContext, _ reply: ControlReply, written: (@Sendable () -> Void)? = nil) {
        var buffer = context.channel.allocator.buffer(capacity: 256)
        buffer.writeString(reply.encoded)
        let promise = written.map { done in
            let p = context.eventLoop.makePromise(of: Void.self)
            p.futureResult.whenComplete { _ in done() }
            return p
        }
        context.writeAndFlush(wrapOutboundOut(buffer), promise: promise)
    }

    /// Answers with an error and ends the connection: our side is closed for writing and what
    /// the peer still sends is dropped until it closes (closing with its bytes unread would
    /// reset the connection and could lose the reply on the way).
    func refuse(_ context: ChannelHandlerContext, _ why: String, errno: String = "EINVAL") {
        refused = true
        framer = ControlRequestFramer()
        write(context, .error(errno: errno, message: why))
        context.close(mode: .output, promise: nil)
    }
}
