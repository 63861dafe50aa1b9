#if canImport(Glibc)
import Glibc
#endif
import Logging
import NBDProtocol
import NIOCore
import RaidCore
import RaidEngine

/// One client connection: the handshake, then requests parsed, validated and handed to the
/// engine (dispatch), replies written as the engine answers (in any order, as NBD allows).
/// Runs on the engine's event loop, so the engine's completion callbacks arrive here without a
/// hop. In-flight requests and bytes are bounded per connection: past the bound the connection
/// stops reading its socket until replies go out (TCP does the rest of the back-pressure).
final class NBDConnection: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = IOData

    let engine: RaidEngine
    let export: NBDExport
    let options: NBDServerOptions
    var logger: Logger
    let registry: ConnectionRegistry
    var handshake: NBDHandshake
    var session: NBDSession?
    var context: ChannelHandlerContext?
    /// Bytes received and not parsed yet.
    var cumulation: ByteBuffer?
    var inFlight = 0
    /// Bytes of this connection's requests in flight; the registry counts every connection's.
    var inFlightBytes = 0 {
        didSet {
            if inFlightBytes > oldValue { registry.take(inFlightBytes - oldValue) } else if inFlightBytes < oldValue { registry.give(oldValue - inFlightBytes) }
        }
    }
    /// On the registry's list of connections waiting for the server's byte bound to lift.
    var waitingForServerBytes = false
    /// A write whose data is still arriving.
    var receiving: (cookie: UInt64, request: NBDValidRequest, buffer: IOBuffer, filled: Int)?
    /// Bytes of a refused write's data still to drop.
    var discardRemaining = 0
    var disconnecting = false
    /// The client shut its sending side (EOF): it sends nothing more, but may still read.
    var inputEnded = false
    var closed = false
    var handshakeTimer: Scheduled<Void>?
    /// Watches a write whose data is arriving (see `watchWriteData`).
    var writeDataTimer: Scheduled<Void>?
    /// Bytes received since the connection opened (the write-data watch compares them).
    var receivedBytes = 0
    /// `process` is running: a completion that arrives meanwhile (the engine can answer at once)
    /// leaves the parsing to it rather than starting over on the same bytes.
    var processing = false

    /// Whether and how long the loop polls this connection's socket when it owes its client
    /// nothing.
    var poll: AdaptivePoll
    /// A poll of the socket is queued on the loop.
    var pollScheduled = false
    /// NIO is handing this connection what it read from the socket (`channelRead` until
    /// `channelReadComplete`).
    var readingBurst = false
    /// The connection went idle during the burst: it polls at the burst's end.
    var pollDueAfterBurst = false
    /// NIO was asked for the socket's descriptor (once: see `socketDescriptor`).
    var socketDescriptorAsked = false
    /// The socket's descriptor, asked of NIO once (asking costs a cast to a generic existential,
    /// which the Swift runtime resolves by demangling its type: several µs each time). Used only
    /// while the channel is open, on the loop, where NIO would close it.
    var socketDescriptor: CInt?

    /// Largest piece of a TRIM or WRITE_ZEROES handed to the engine at once.
    static let pieceBytes = 32 << 20

    init(engine: RaidEngine, export: NBDExport, options: NBDServerOptions, logger: Logger, registry: ConnectionRegistry) {
        self.engine = engine
        self.export = export
        self.options = options
        self.logger = logger
        self.registry = registry
        handshake = NBDHandshake(exports: [export])
        poll = AdaptivePoll(maxNanos: options.pollMaxNanos, pinnedOpen: options.pollWindowPinnedOpen)
    }

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }

    func handlerRemoved(context: ChannelHandlerContext) { self.context = nil }

    func channelActive(context: ChannelHandlerContext) {
        logger[metadataKey: "peer"] = .string(context.remoteAddress.map { "\($0)" } ?? "unix")
        guard registry.admit(context.channel) else {
            logger.warning("refused a connection: \(registry.limit) connections already open")
            close(context)
            return
        }
        send(context, NBDHandshake.greeting)
        context.flush()
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        handshakeTimer = context.eventLoop.scheduleTask(in: options.handshakeTimeout) {
            let me = bound.value
            guard me.session == nil, let context = me.context else { return }
            me.logger.notice("closed a connection that did not finish the handshake in time")
            me.close(context)
        }
        context.read()
    }

    func channelInactive(context: ChannelHandlerContext) {
        closed = true
        handshakeTimer?.cancel()
        writeDataTimer?.cancel()
        // A write cut off by the connection closing gives its bytes back to the server's bound.
        dropCutWrite()
        registry.remove(context.channel)
        registry.stopWaiting(self)
        context.fireChannelInactive()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, event == .inputClosed {
            inputEnded = true
            process(context)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    /// A client that shut its sending side is answered like one that sent NBD_CMD_DISC once
    /// everything it sent is parsed: what it asked is answered, then the connection closes. A
    /// message it left unfinished (a header cut short, a write missing data) is dropped, and
    /// nothing of a cut write reaches the array. During the handshake, EOF just closes.
    func finishIfInputEnded(_ context: ChannelHandlerContext) {
        guard inputEnded, !closed, !disconnecting, !processing else { return }
        guard session != nil else { return close(context) }
        // Complete requests still wait for the bound to lift: a completion parses them (or the
        // server's bound lifting, for one with nothing of its own in flight).
        // Its data will never come: dropped first, as its bytes may be what holds the server at
        // its bound (waiting for the bound to lift would then wait for ever).
        dropCutWrite()
        if atBound { return waitIfAtServerBound() }
        disconnecting = true
        if inFlight == 0 { finishDisconnect(context) }
    }

    /// A write whose data stopped coming: nothing of it reaches the array, and its bytes go back.
    func dropCutWrite() {
        guard let cut = receiving else { return }
        receiving = nil
        inFlight -= 1
        inFlightBytes -= cut.buffer.count
    }

    /// While a write's data is arriving, checks every `writeDataTimeout` that enough came
    /// (`writeDataMinBytes`, or the rest of the write): a connection that sent less in a whole
    /// period is closed (its write dropped). Started wherever a write's header is taken: in a
    /// read of the socket, or when a bound lifted (`resumeIfBelowBound`), after which no read
    /// may ever come.
    func watchWriteData(_ context: ChannelHandlerContext) {
        guard writeDataTimer == nil, let r = receiving, !closed else { return }
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        let receivedAtStart = receivedBytes
        let wanted = min(options.writeDataMinBytes, r.buffer.count - r.filled)
        writeDataTimer = context.eventLoop.scheduleTask(in: options.writeDataTimeout) {
            let me = bound.value
            me.writeDataTimer = nil
            guard let r = me.receiving, !me.closed, let context = me.context else { return }
            if me.receivedBytes - receivedAtStart < wanted {
                me.logger.notice("closed a connection whose write data stopped arriving (\(r.filled) of \(r.buffer.count) bytes, \(me.receivedBytes - receivedAtStart) in the last \(me.options.writeDataTimeout))")
                me.close(context)
            } else {
                me.watchWriteData(context)
            }
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        logger.debug("connection error: \(error)")
        close(context)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var incoming = unwrapInboundIn(data)
        readingBurst = true
        receivedBytes += incoming.readableBytes
        appendReceived(&cumulation, &incoming)
        process(context)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        context.flush()
        if receiving != nil { watchWriteData(context) }
        if wantsMoreInput { context.read() } else { waitIfAtServerBound() }
        readingBurst = false
        if pollDueAfterBurst {
            pollDueAfterBurst = false
            pollForNextRequest(context)
        }
    }

    /// Stopped by the server's byte bound alone (not this connection's own): ask to be woken
    /// when it lifts, as nothing of this connection's own may finish to wake it.
    func waitIfAtServerBound() {
        guard !closed, !disconnecting, registry.atByteBound, let context else { return }
        registry.waitForBytes(self, on: context.eventLoop)
    }

    /// Below the bounds, not disconnecting: keep reading the socket. The data of a write already
    /// taken (or of a refused one being dropped) is read whatever the bounds: they hold back new
    /// requests, and a write larger than the connection's byte bound would otherwise wait for
    /// the very bytes the connection stopped reading.
    var wantsMoreInput: Bool {
        !closed && !disconnecting && !inputEnded && (receiving != nil || discardRemaining > 0 || !atBound)
    }

    /// At a bound: too many requests or bytes in flight, or replies waiting to be sent past the
    /// channel's high-water mark. Answered requests leave the in-flight count when their reply
    /// is queued, so a client that asks faster than it reads (or never reads) would otherwise
    /// have the server hold any amount of reply data; instead it stops taking requests until the
    /// socket drains.
    var atBound: Bool {
        outboundBlocked || inFlight >= options.maxRequestsPerConnection
            || (inFlight > 0 && inFlightBytes >= options.maxBytesPerConnection) || registry.atByteBound
    }

    /// The server's byte bound lifted (see `ConnectionRegistry.give`).
    func resumeAfterServerBound() {
        guard let context else { return }
        resumeIfBelowBound(context)
    }

    /// Replies queued beyond the channel's write-buffer high-water mark (NIO's writability).
    var outboundBlocked = false

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        outboundBlocked = !context.channel.isWritable
        // Drained below the low-water mark: what waited may go on.
        if !outboundBlocked { resumeIfBelowBound(context) }
        context.fireChannelWritabilityChanged()
    }

    /// Below every bound again: parse what waited and read the socket again (unless this comes
    /// while parsing, which then simply goes on).
    func resumeIfBelowBound(_ context: ChannelHandlerContext) {
        guard !closed, !processing else { return }
        guard !atBound else { return waitIfAtServerBound() }
        process(context)
        if wantsMoreInput { context.read() } else { waitIfAtServerBound() }
    }

    func close(_ context: ChannelHandlerContext) {
        guard !closed else { return }
        closed = true
        context.close(promise: nil)
    }

    /// A flush is due once the loop's current task is over.
    var flushScheduled = false
    /// A reply was queued while `process` was taking requests: flushed when it is done.
    var flushAfterProcessing = false
    /// Flushes of replies `flushSoon` made (each a write to the socket, at least).
    private(set) var replyFlushes = 0

    /// Flushes replies once the current task is over: the completions of one batch of member
    /// I/O go out in one write to the socket (and one wake-up of the client) instead of one
    /// each. The last reply the connection owes goes at once (at queue depth 1 the hop would
    /// only add latency). A reply that comes while requests are being taken (a read the page
    /// cache served at once) waits for the rest of them: the replies to one read of the socket
    /// go out in one write, not one each.
    func flushSoon(_ context: ChannelHandlerContext) {
        if processing {
            flushAfterProcessing = true
            return
        }
        if inFlight == 0 && !flushScheduled {
            replyFlushes += 1
            context.flush()
            becameIdle(context)
            return
        }
        afterThisTask(context, .replyFlush) { connection, context in
            guard !connection.closed else { return }
            connection.replyFlushes += 1
            context.flush()
        }
    }

    /// What a connection defers to a task of its own on the loop, each with its flag (a switch,
    /// not a key path: reading a flag through a key path is a runtime call, once per reply).
    enum DeferredTask {
        case replyFlush
        case poll
    }

    func isScheduled(_ task: DeferredTask) -> Bool {
        switch task {
        case .replyFlush: flushScheduled
        case .poll: pollScheduled
        }
    }

    func setScheduled(_ task: DeferredTask, _ value: Bool) {
        switch task {
        case .replyFlush: flushScheduled = value
        case .poll: pollScheduled = value
        }
    }

    /// Runs `body` in a task of its own on the loop once the current one is over; `task`'s flag
    /// is set meanwhile, and while it is, asking again does nothing.
    func afterThisTask(
        _ context: ChannelHandlerContext, _ task: DeferredTask, _ body: @escaping (NBDConnection, ChannelHandlerContext) -> Void
    ) {
        guard !isScheduled(task) else { return }
        setScheduled(task, true)
        let bound = NIOLoopBound((self, body), eventLoop: context.eventLoop)
        context.eventLoop.execute {
            let (connection, body) = bound.value
            connection.setScheduled(task, false)
            guard let context = connection.context else { return }
            body(connection, context)
        }
    }

    // MARK: - polling for the next request

    /// The connection owes its client nothing: the loop may poll the socket for the client's
    /// next request once what it is doing now is over (not inside it: this may be the engine's
    /// dispatch, whose remaining actions must not wait for the client). Within a burst of
    /// input (a read the page cache answered at once, the common case at queue depth 1) that
    /// is the burst's end; otherwise a task of its own on the loop (which costs the loop a
    /// turn, a system call on this VM: done inside the burst, polling costs fio on the
    /// server's own CPU 4 µs per read more than not polling at all, by hand).
    func becameIdle(_ context: ChannelHandlerContext) {
        guard poll.maxNanos > 0, session != nil, !closed else { return }
        if readingBurst {
            pollDueAfterBurst = true
            return
        }
        afterThisTask(context, .poll) { connection, context in connection.pollForNextRequest(context) }
    }

    /// Whether the loop may spend the window on this connection's socket: only while nothing
    /// else could want the loop. The connection owes nothing, waits for input and is the
    /// server's only one (another's request would wait for this client's), and the array has no
    /// member I/O on its way (its completion would wait).
    var mayPoll: Bool {
        !closed && !disconnecting && inFlight == 0 && wantsMoreInput && registry.open.count == 1 && engine.memberIOIdle
    }

    /// Polls the socket (without reading it: NIO reads it as ever) until the client's next
    /// bytes are there or the spell `poll` gives is over.
    func pollForNextRequest(_ context: ChannelHandlerContext) {
        guard mayPoll else { return }
        let spellNanos = poll.spellNanos()
        guard spellNanos > 0 else { return }
        if !socketDescriptorAsked {
            socketDescriptorAsked = true
            socketDescriptor = try? context.pipeline.syncOperations.withUnsafeTransportIfAvailable(of: NIOBSDSocket.Handle.self) { $0 }
        }
        // A channel without a socket to poll (none in this server) just does not poll.
        guard let fd = socketDescriptor, context.channel.isActive else { return }
        let start = NIODeadline.now().uptimeNanoseconds
        let caught = Self.waitUntilReadable(fd, untilUptimeNanos: start &+ spellNanos)
        poll.spellEnded(caught: caught)
        registry.pollSpells += 1
        if caught { registry.pollSpellsCaught += 1 }
        registry.pollNanos += NIODeadline.now().uptimeNanoseconds &- start
    }

    /// Polls made in one spell at most, whatever the clock says (one costs well over 100 ns, so
    /// this is past the longest window `AdaptivePoll` allows).
    static let maxPollsPerSpell = 1 << 14

    /// Non-blocking polls of `fd` for input (or its end, or an error: whatever NIO should see)
    /// until the deadline (which one yield may overrun); true when there was some. Between
    /// polls the CPU is offered to whatever else waits for it there (`sched_yield` returns at
    /// once when nothing does): a client on the same CPU is what the poll waits for, and it
    /// would otherwise wait for the poll (by hand, fio on the server's CPU: 52-64 µs per read
    /// against 38-42 without polling).
    static func waitUntilReadable(_ fd: CInt, untilUptimeNanos deadline: UInt64) -> Bool {
        var entry = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        for _ in 0..<maxPollsPerSpell {
            let ready = Glibc.poll(&entry, 1, 0)
            if ready != 0 { return ready > 0 }
            if NIODeadline.now().uptimeNanoseconds >= deadline { return false }
            sched_yield()
        }
        return false
    }

    func send(_ context: ChannelHandlerContext, _ bytes: [UInt8]) {
        var buffer = context.channel.allocator.buffer(capacity: bytes.count)
        buffer.writeBytes(bytes)
        context.write(wrapOutboundOut(.byteBuffer(buffer)), promise: nil)
    }

    // MARK: - input

    /// Takes every complete message from the received bytes, within the bounds.
    func process(_ context: ChannelHandlerContext) {
        guard !processing else { return }
        processing = true
        defer {
            processing = false
            if flushAfterProcessing {
                flushAfterProcessing = false
                flushSoon(context)
            }
            finishIfInputEnded(context)
        }
        while !closed, var buffer = cumulation, buffer.readableBytes > 0 {
            defer { if !closed { cumulation = buffer.readableBytes > 0 ? buffer : nil } }
            if session == nil {
                let (consumed, events) = buffer.withUnsafeReadableBytes { handshake.receive($0) }
                buffer.moveReaderIndex(forwardBy: consumed)
                for event in events {
                    switch event {
                    case .send(let bytes): send(context, bytes)
                    case .close(let why):
                        logger.notice("handshake ended: \(why)")
                        context.flush()
                        close(context)
                    case .transmission(let agreed):
                        session = agreed
                        handshakeTimer?.cancel()
                        logger.info("client started on export '\(agreed.export.name)'\(agreed.structuredReplies ? " with structured replies" : "")")
                    }
                }
                if consumed == 0 { break }
                continue
            }
            if discardRemaining > 0 {
                let n = min(discardRemaining, buffer.readableBytes)
                buffer.moveReaderIndex(forwardBy: n)
                discardRemaining -= n
                continue
            }
            if let r = receiving {
                let n = min(r.buffer.count - r.filled, buffer.readableBytes)
                buffer.withUnsafeReadableBytes { raw in
                    (r.buffer.baseAddress + r.filled).copyMemory(from: raw.baseAddress!, byteCount: n)
                }
                buffer.moveReaderIndex(forwardBy: n)
                receiving!.filled += n
                if receiving!.filled == r.buffer.count {
                    receiving = nil
                    dispatch(context, r.cookie, r.request, data: r.buffer, accountedBytes: 0)
                }
                continue
            }
            if atBound || disconnecting { break }
            let parsed = buffer.withUnsafeReadableBytes { NBDRequestHeader.parse($0) }
            switch parsed {
            case .needMore:
                return
            case .garbage(let magic):
                logger.notice("closed a connection that sent a bad request magic 0x\(String(magic, radix: 16))")
                close(context)
                return
            case .header(let header):
                buffer.moveReaderIndex(forwardBy: NBDRequestHeader.byteCount)
                handle(context, header)
            }
        }
    }

    /// Validation, then either an error reply or the request on its way to the engine.
    func handle(_ context: ChannelHandlerContext, _ header: NBDRequestHeader) {
        guard let session else { return }
        switch NBDValidator.validate(header, session: session) {
        case .failure(let error):
            // A refused write's data still follows the header: drop it to stay in step.
            discardRemaining = header.payloadBytes
            send(context, NBDReply.error(cookie: header.cookie, error, message: Self.explain(error, header), structured: session.structuredReplies))
            // Out with the other replies. Not only when the read of the socket is over: a
            // request parsed after a bound lifted (`resumeIfBelowBound`) has no such read, and
            // its reply waited for the client's next bytes, which a client waiting for the
            // reply never sends (test `anErrorReplyToARequestParsedAfterABoundLiftsIsSent`).
            flushSoon(context)
        case .success(.disconnect):
            disconnecting = true
            if inFlight == 0 { finishDisconnect(context) }
        case .success(let request):
            if case .write(_, let length, _) = request {
                // The data is copied once, from the socket's buffer into memory the array
                // computes parity over.
                inFlight += 1
                inFlightBytes += length
                receiving = (header.cookie, request, IOBuffer(uninitializedCount: length), 0)
                watchWriteData(context)
            } else {
                dispatch(context, header.cookie, request, data: nil, accountedBytes: nil)
            }
        }
    }

    static func explain(_ error: NBDError, _ h: NBDRequestHeader) -> String {
        let what = h.command.map { "\($0)" } ?? "command \(h.type)"
        switch error {
        case .invalid: return "\(what) \(h.offset)+\(h.length) (flags 0x\(String(h.flags.rawValue, radix: 16))) is not valid for this export"
        case .noSpace: return "\(what) \(h.offset)+\(h.length) goes past the end of the export"
        case .permission: return "the export is read-only"
        case .notSupported: return "fast zeroing is not supported"
        default: return "\(what) failed"
        }
    }

    // MARK: - dispatch

    /// Hands a valid request to the engine; `accountedBytes` is nil when the bytes are still to
    /// be counted (a write counted them when its data started arriving).
    func dispatch(_ context: ChannelHandlerContext, _ cookie: UInt64, _ request: NBDValidRequest, data: IOBuffer?, accountedBytes: Int?) {
        let bytes: Int
        switch request {
        case .read(_, let length): bytes = length
        case .write(_, let length, _): bytes = length
        default: bytes = 0
        }
        if accountedBytes == nil {
            inFlight += 1
            inFlightBytes += bytes
        }
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        let finish: @Sendable (ClientResult) -> Void = { result in bound.value.complete(cookie, request, bytes: bytes, result) }
        switch request {
        case .read(let offset, let length):
            // A read too small for the engine to leave to sendfile gets a plain reply (no
            // target to record member ranges in).
            let reply = ReadReply(
                cookie: cookie, offset: offset, length: length, structured: session?.structuredReplies ?? false,
                spliceable: options.sendfileReads && length >= RaidEngine.spliceReadMinBytes, registry: registry, allocator: context.channel.allocator)
            engine.submit(.read(offsetBytes: offset, length: length, into: reply.destination)) { result in
                bound.value.complete(cookie, request, bytes: bytes, result, reply: reply)
            }
        case .write(let offset, _, let fua):
            engine.submit(.write(offsetBytes: offset, data: data!, fua: fua), completion: finish)
        case .flush:
            engine.submit(.flush, completion: finish)
        case .trim(let offset, let length, let fua):
            inPieces(context, offset, length, flushAfter: fua, { .trim(offsetBytes: $0, length: $1) }, finish)
        case .writeZeroes(let offset, let length, let fua):
            inPieces(context, offset, length, flushAfter: false, { .writeZeroes(offsetBytes: $0, length: $1, fua: fua) }, finish)
        case .disconnect:
            preconditionFailure("a disconnect is not dispatched")
        }
    }

    /// A TRIM or WRITE_ZEROES larger than the array takes at once, one piece after another (a
    /// trim with FUA is followed by a flush, the core's trim having no FUA of its own). Each
    /// piece waits for room under the server's zeroing bound (`maxZeroingBytesInFlight`), and
    /// the next starts in a task of its own on the loop, however the engine answered (no
    /// recursion through completions). A connection that closed sends no more pieces.
    func inPieces(
        _ context: ChannelHandlerContext, _ offset: UInt64, _ length: Int, flushAfter: Bool, _ make: @escaping @Sendable (UInt64, Int) -> ClientRequest,
        _ finish: @escaping @Sendable (ClientResult) -> Void
    ) {
        let engine = self.engine
        let loop = context.eventLoop
        let bound = NIOLoopBound(self, eventLoop: loop)
        let end = offset + UInt64(length)
        @Sendable func step(_ at: UInt64) {
            guard at < end else {
                if flushAfter { engine.submit(.flush, completion: finish) } else { finish(.done) }
                return
            }
            if bound.value.closed { return finish(.failed(.shutdown)) }
            let n = Int(min(UInt64(Self.pieceBytes), end - at))
            let registry = bound.value.registry
            registry.startZeroing(n) {
                engine.submit(make(at, n)) { result in
                    registry.zeroingDone(n, on: loop)
                    if case .failed = result { return finish(result) }
                    loop.execute { step(at + UInt64(n)) }
                }
            }
        }
        step(offset)
    }

    /// The engine answered: the reply goes out, the bounds loosen, reading resumes. A read's
    /// reply was prepared before it was submitted, and its data landed there.
    func complete(_ cookie: UInt64, _ request: NBDValidRequest, bytes: Int, _ result: ClientResult, reply: ReadReply? = nil) {
        precondition(inFlight > 0 && inFlightBytes >= bytes, "connection in-flight accounting would go below zero")
        inFlight -= 1
        inFlightBytes -= bytes
        guard !closed, let context, let session else { return }
        let structured = session.structuredReplies
        switch result {
        case .data(let data):
            // The core answers a read with the destination it was given (`ClientOp.buffer`).
            guard let reply, reply.holds(data) else { preconditionFailure("a read answered with memory other than its reply's") }
            let buffer = reply.buffer
            // Once the socket took it, a large buffer serves a later reply (see `replyBuffer`);
            // a small one goes back to the allocator, with no promise to wait on.
            let promise = ConnectionRegistry.keepsReplyBuffers(ofCapacity: buffer.capacity) ? context.eventLoop.makePromise(of: Void.self) : nil
            if let target = reply.spliceTarget, !target.extents.isEmpty {
                writeSpliced(context, buffer, headerBytes: reply.headerBytes, target.extentsInOrder(), promise: promise)
            } else {
                context.write(wrapOutboundOut(.byteBuffer(buffer)), promise: promise)
            }
            if let promise {
                let registry = self.registry
                promise.futureResult.whenSuccess { registry.keepReplyBuffer(buffer) }
            }
        case .done:
            send(context, NBDReply.done(cookie: cookie))
        case .failed(let error):
            let nbd = Self.nbdError(error)
            if case .busy = error { logger.error("the array refused a request as busy: the server's bounds should have held it back") }
            send(context, NBDReply.error(cookie: cookie, nbd, message: "\(error)", structured: structured))
        }
        flushSoon(context)
        if disconnecting {
            if inFlight == 0 { finishDisconnect(context) }
            return
        }
        resumeIfBelowBound(context)
    }

    /// A read reply whose data is partly (or wholly) member file ranges the page cache holds:
    /// the header and any bytes the read did fill (a degraded read's rebuilt chunk, a piece too
    /// small to be worth a sendfile) go from the buffer, each range with sendfile (a
    /// `FileRegion`), in order. Each region's handle wraps the member's lent descriptor, which
    /// the reply keeps open until the socket took it or the connection failed; the handles give
    /// the descriptor back rather than close it (the shared descriptor closes once, when its
    /// last user lets go). A sendfile that fails (an I/O error on a page evicted since the
    /// engine looked, which is unlikely: it was read in a moment before) fails the channel as
    /// any write error does: the client sees the connection close, never wrong data.
    func writeSpliced(_ context: ChannelHandlerContext, _ buffer: ByteBuffer, headerBytes: Int, _ extents: [SpliceableReadTarget.Extent], promise: EventLoopPromise<Void>?) {
        var handles: [NIOFileHandle] = []
        handles.reserveCapacity(extents.count)
        var pieces: [IOData] = []
        pieces.reserveCapacity(2 * extents.count + 2)
        var at = 0
        func bytes(upTo end: Int) {
            guard end > at, let slice = buffer.getSlice(at: buffer.readerIndex + headerBytes + at, length: end - at) else { return }
            pieces.append(.byteBuffer(slice))
            at = end
        }
        if let header = buffer.getSlice(at: buffer.readerIndex, length: headerBytes) { pieces.append(.byteBuffer(header)) }
        for e in extents {
            bytes(upTo: e.offsetInTarget)
            let handle = NIOFileHandle(_deprecatedTakingOwnershipOfDescriptor: e.descriptor.rawValue)
            handles.append(handle)
            let start = Int(e.fileOffsetBytes)
            pieces.append(.fileRegion(FileRegion(fileHandle: handle, readerIndex: start, endIndex: start + e.count)))
            at = e.offsetInTarget + e.count
        }
        bytes(upTo: buffer.readableBytes - headerBytes)
        registry.splicedReplies += 1
        // Written in order: the last piece's promise completes after every earlier one's.
        let last = context.eventLoop.makePromise(of: Void.self)
        let regionHandles = handles
        let logger = self.logger
        for (i, piece) in pieces.enumerated() {
            context.write(wrapOutboundOut(piece), promise: i == pieces.count - 1 ? last : nil)
        }
        last.futureResult.whenComplete { result in
            // Ownership back, not closed: each extent's shared descriptor closes once, when the
            // last reply using it lets go (kept alive until here by this closure).
            for h in regionHandles { _ = try? h.takeDescriptorOwnership() }
            withExtendedLifetime(extents) {}
            switch result {
            case .success: promise?.succeed()
            case .failure(let error):
                logger.warning("a read reply sent from the member files failed (\(error)); the connection closes")
                promise?.fail(error)
            }
        }
    }

    static func nbdError(_ error: ClientError) -> NBDError {
        switch error {
        case .io, .busy: return .io
        case .invalid: return .invalid
        case .readOnly: return .permission
        case .shutdown: return .shutdown
        }
    }

    /// NBD_CMD_DISC (or the client's end of input): every outstanding request has been
    /// answered; the connection closes once the socket has taken every reply. NIO's close fails
    /// the writes still queued, so closing at once cut off a reply larger than the socket's
    /// buffer. An empty write queued behind the replies completes after them (writes complete in
    /// order); the close waits for it. (Closing the output first is no help: with the client's
    /// input already ended NIO turns that into a full close.)
    func finishDisconnect(_ context: ChannelHandlerContext) {
        guard !closed, !closingOutput else { return }
        closingOutput = true
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        let repliesSent = context.eventLoop.makePromise(of: Void.self)
        repliesSent.futureResult.whenComplete { _ in
            let me = bound.value
            guard let context = me.context else { return }
            me.close(context)
        }
        context.writeAndFlush(wrapOutboundOut(.byteBuffer(context.channel.allocator.buffer(capacity: 0))), promise: repliesSent)
    }

    /// `finishDisconnect` is waiting for the replies to go out.
    var closingOutput = false
}

/// Appends received bytes to what waits to be parsed, dropping what was parsed first. A stream
/// that leaves a few bytes of the next message after each read (TCP cuts anywhere) would
/// otherwise grow one buffer without end: the parsed bytes ahead of the reader index are never
/// reused, and each append past the capacity doubles it. The bytes moved are at most what one
/// read brought (a connection at its bound stops reading).
func appendReceived(_ cumulation: inout ByteBuffer?, _ incoming: inout ByteBuffer) {
    guard var buffer = cumulation else {
        cumulation = incoming
        return
    }
    cumulation = nil  // the storage is now referenced once, and is moved in place
    buffer.discardReadBytes()
    buffer.writeBuffer(&incoming)
    cumulation = buffer
}

/// A read's reply, made before the read is submitted: the header, then room for the data, in
/// one buffer the read lands in (`destination`), so that the data goes from the members to the
/// socket with no copy in between. The room is uninitialised until the read fills it; only the
/// engine touches it until the read completes, and the buffer is not changed after `init` (a
/// change would copy SwiftNIO's storage away from the memory the read writes to).
struct ReadReply: Sendable {
    /// The whole reply, header and data.
    let buffer: ByteBuffer
    /// Bytes of the header ahead of the data in `buffer`.
    let headerBytes: Int
    /// The data's bytes inside `buffer`, as the engine's reads take them.
    let destination: IOBuffer
    /// Where the engine recorded the member ranges it left for sendfile, when the reply takes them.
    let spliceTarget: SpliceableReadTarget?

    init(cookie: UInt64, offset: UInt64, length: Int, structured: Bool, spliceable: Bool, registry: ConnectionRegistry, allocator: ByteBufferAllocator) {
        let header = NBDReply.readHeader(cookie: cookie, offset: offset, length: length, structured: structured)
        var buffer = registry.replyBuffer(capacity: header.count + length, allocator: allocator)
        buffer.writeBytes(header)
        // The buffer is this function's alone here, so the pointer is into the storage that
        // `self.buffer` keeps alive and that no write will move (nothing writes to it again).
        let dataStart = buffer.withUnsafeMutableWritableBytes { UnsafeMutableRawPointer($0.baseAddress!) }
        buffer.moveWriterIndex(forwardBy: length)
        self.buffer = buffer
        headerBytes = header.count
        let owner: any AnyObject & Sendable
        if spliceable {
            let target = SpliceableReadTarget(owner: buffer, capacity: length)
            spliceTarget = target
            owner = target
        } else {
            spliceTarget = nil
            owner = ReplyStorageOwner(buffer)
        }
        destination = IOBuffer(storage: IOBufferStorage(borrowing: dataStart, capacity: length, owner: owner), offset: 0, count: length)
    }

    /// Whether `data` is the reply's own room (the read landed where it was asked to).
    func holds(_ data: IOBuffer) -> Bool {
        data.storage === destination.storage && data.offset == 0 && data.count == destination.count
    }
}

/// Keeps a reply buffer's storage alive for as long as an `IOBuffer` points into it.
final class ReplyStorageOwner: Sendable {
    let buffer: ByteBuffer
    init(_ buffer: ByteBuffer) { self.buffer = buffer }
}
