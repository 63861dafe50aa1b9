/// What the server can do for an export; turned into transmission flags in one place.
public struct NBDCapabilities: Sendable, Equatable {
    public var readOnly = false
    public var flush = true
    public var fua = true
    public var trim = true
    public var writeZeroes = true
    /// NBD_CMD_FLAG_FAST_ZERO is understood (answered with ENOTSUP when it cannot be fast).
    public var fastZero = true
    /// A flush on any connection covers writes completed on all (one engine behind them all).
    public var multiConn = true

    public init() {}

    /// The transmission flags for these capabilities. DF only with structured replies, as the
    /// protocol requires.
    public func transmissionFlags(structuredReplies: Bool) -> NBDTransmissionFlags {
        var f: NBDTransmissionFlags = [.hasFlags]
        if readOnly { f.insert(.readOnly) }
        if flush { f.insert(.sendFlush) }
        if fua { f.insert(.sendFUA) }
        if trim && !readOnly { f.insert(.sendTrim) }
        if writeZeroes && !readOnly {
            f.insert(.sendWriteZeroes)
            if fastZero { f.insert(.sendFastZero) }
        }
        if multiConn { f.insert(.canMultiConn) }
        if structuredReplies { f.insert(.sendDF) }
        return f
    }
}

/// One export a server offers.
public struct NBDExport: Sendable, Equatable {
    public var name: String
    public var description: String
    public var sizeBytes: UInt64
    public var capabilities: NBDCapabilities
    public var minimumBlockSize: UInt32
    public var preferredBlockSize: UInt32
    public var maximumBlockSize: UInt32

    public init(name: String, description: String = "", sizeBytes: UInt64, capabilities: NBDCapabilities = NBDCapabilities(),
                minimumBlockSize: UInt32 = 512, preferredBlockSize: UInt32 = 4096, maximumBlockSize: UInt32 = 32 << 20) {
        self.name = name
        self.description = description
        self.sizeBytes = sizeBytes
        self.capabilities = capabilities
        self.minimumBlockSize = minimumBlockSize
        self.preferredBlockSize = preferredBlockSize
        self.maximumBlockSize = maximumBlockSize
    }
}

/// What the negotiation agreed, for the transmission phase.
public struct NBDSession: Sendable, Equatable {
    public let export: NBDExport
    public let structuredReplies: Bool
    public var transmissionFlags: NBDTransmissionFlags { export.capabilities.transmissionFlags(structuredReplies: structuredReplies) }
}

/// The server side of the fixed newstyle handshake, as a state machine over received bytes
/// (design.md §7, after nbdkit: negotiation, request validation and dispatch are separate
/// pieces). Feed it what the socket delivered; it says what to send, whether to close, and
/// when the transmission phase begins. Unknown options get NBD_REP_ERR_UNSUP and the
/// negotiation goes on; bytes that are not NBD (a wrong magic, unknown client flags, an option
/// too large or too many options) close the connection, and only it.
public struct NBDHandshake {
    public enum Event: Equatable, Sendable {
        case send([UInt8])
        /// Close the connection (after sending what came before), with the reason for the log.
        case close(String)
        /// Negotiation is over; requests follow (after what came before is sent).
        case transmission(NBDSession)
    }

    enum State: Equatable { case clientFlags, options, finished }

    public let exports: [NBDExport]
    /// Largest option data accepted (the protocol's strings are at most 4 KiB).
    public let maxOptionBytes: Int
    /// Options accepted in one negotiation before the client is judged hostile.
    public let maxOptions: Int
    var state = State.clientFlags
    var noZeroes = false
    var structuredReplies = false
    var optionsSeen = 0

    public init(exports: [NBDExport], maxOptionBytes: Int = 16 << 10, maxOptions: Int = 256) {
        self.exports = exports
        self.maxOptionBytes = maxOptionBytes
        self.maxOptions = maxOptions
    }

    /// What the server sends first: NBDMAGIC, IHAVEOPT, its handshake flags.
    public static var greeting: [UInt8] {
        var w = NBDWriter()
        w.u64(NBDMagic.initPassword)
        w.u64(NBDMagic.option)
        w.u16(NBDHandshakeFlag.fixedNewstyle | NBDHandshakeFlag.noZeroes)
        return w.bytes
    }

    public var isFinished: Bool { state == .finished }

    /// Consumes what it can of `input` (complete messages only) and says what to do. Returns
    /// how many bytes were used; the rest must be offered again with more data.
    public mutating func receive(_ input: UnsafeRawBufferPointer) -> (consumed: Int, events: [Event]) {
        var reader = NBDReader(input)
        var events: [Event] = []
        var consumed = 0
        loop: while state != .finished {
            switch state {
            case .clientFlags:
                guard let flags = reader.u32() else { break loop }
                consumed = reader.position
                let known = NBDHandshakeFlag.clientFixedNewstyle | NBDHandshakeFlag.clientNoZeroes
                if flags & ~known != 0 {
                    finish(&events, .close("client sent unknown flags 0x\(String(flags, radix: 16))"))
                    break loop
                }
                noZeroes = flags & NBDHandshakeFlag.clientNoZeroes != 0
                state = .options
            case .options:
                guard let magic = reader.u64(), let code = reader.u32(), let length = reader.u32() else { break loop }
                if magic != NBDMagic.option {
                    finish(&events, .close("not an NBD option (magic 0x\(String(magic, radix: 16)))"))
                    break loop
                }
                if Int(length) > maxOptionBytes {
                    finish(&events, .close("option \(code) carries \(length) bytes, over the \(maxOptionBytes)-byte limit"))
                    break loop
                }
                // Incomplete: wait for the rest (nothing is consumed from this option).
                guard let data = reader.bytes(Int(length)) else { break loop }
                consumed = reader.position
                optionsSeen += 1
                if optionsSeen > maxOptions {
                    finish(&events, .close("more than \(maxOptions) options in one negotiation"))
                    break loop
                }
                handleOption(code, data, &events)
            case .finished:
                break loop
            }
        }
        return (consumed, events)
    }

    mutating func finish(_ events: inout [Event], _ last: Event) {
        events.append(last)
        state = .finished
    }

    static func reply(_ option: UInt32, _ type: NBDOptionReply, _ data: [UInt8] = []) -> [UInt8] {
        var w = NBDWriter(capacity: 20 + data.count)
        w.u64(NBDMagic.optionReply)
        w.u32(option)
        w.u32(type.rawValue)
        w.u32(UInt32(data.count))
        w.raw(data)
        return w.bytes
    }

    static func errorReply(_ option: UInt32, _ type: NBDOptionReply, _ message: String) -> [UInt8] {
        reply(option, type, Array(message.utf8.prefix(4096)))
    }

    func lookup(_ name: String) -> NBDExport? {
        // The empty name is the default export.
        if name.isEmpty { return exports.first }
        return exports.first { $0.name == name }
    }

    mutating func handleOption(_ code: UInt32, _ data: [UInt8], _ events: inout [Event]) {
        guard let option = NBDOption(rawValue: code) else {
            events.append(.send(Self.errorReply(code, .errUnsupported, "option \(code) is not supported")))
            return
        }
        switch option {
        case .exportName:
            let name = String(decoding: data, as: UTF8.self)
            guard let export = lookup(name), !data.contains(0) else {
                // NBD_OPT_EXPORT_NAME cannot be answered with an error.
                finish(&events, .close("no export named '\(name)'"))
                return
            }
            var w = NBDWriter()
            w.u64(export.sizeBytes)
            w.u16(export.capabilities.transmissionFlags(structuredReplies: structuredReplies).rawValue)
            if !noZeroes { w.zeroes(124) }
            events.append(.send(w.bytes))
            finish(&events, .transmission(NBDSession(export: export, structuredReplies: structuredReplies)))
        case .abort:
            events.append(.send(Self.reply(code, .ack)))
            finish(&events, .close("client aborted the negotiation"))
        case .list:
            guard data.isEmpty else {
                events.append(.send(Self.errorReply(code, .errInvalid, "NBD_OPT_LIST takes no data")))
                return
            }
            for export in exports {
                var w = NBDWriter()
                w.u32(UInt32(export.name.utf8.count))
                w.string(export.name)
                w.string(export.description)
                events.append(.send(Self.reply(code, .server, w.bytes)))
            }
            events.append(.send(Self.reply(code, .ack)))
        case .startTLS:
            events.append(.send(Self.errorReply(code, .errUnsupported, "this server does not offer TLS")))
        case .structuredReply:
            guard data.isEmpty else {
                events.append(.send(Self.errorReply(code, .errInvalid, "NBD_OPT_STRUCTURED_REPLY takes no data")))
                return
            }
            structuredReplies = true
            events.append(.send(Self.reply(code, .ack)))
        case .info, .go:
            infoOrGo(option, code, data, &events)
        case .peekExport, .listMetaContext, .setMetaContext, .extendedHeaders:
            events.append(.send(Self.errorReply(code, .errUnsupported, "\(option) is not supported")))
        }
    }

    /// NBD_OPT_INFO and NBD_OPT_GO: name length, name, count of information requests, requests.
    mutating func infoOrGo(_ option: NBDOption, _ code: UInt32, _ data: [UInt8], _ events: inout [Event]) {
        let parsed: (name: String, requests: [UInt16])? = data.withUnsafeBytes { raw in
            var r = NBDReader(raw)
            guard let nameLength = r.u32(), Int(nameLength) <= r.remaining, let nameBytes = r.bytes(Int(nameLength)),
                !nameBytes.contains(0), let count = r.u16(), r.remaining == Int(count) * 2
            else { return nil }
            var requests: [UInt16] = []
            for _ in 0..<count { requests.append(r.u16()!) }
            return (String(decoding: nameBytes, as: UTF8.self), requests)
        }
        guard let parsed else {
            events.append(.send(Self.errorReply(code, .errInvalid, "\(option): malformed request")))
            return
        }
        guard let export = lookup(parsed.name) else {
            events.append(.send(Self.errorReply(code, .errUnknown, "no export named '\(parsed.name)'")))
            return
        }
        func info(_ type: NBDInfo, _ body: (inout NBDWriter) -> Void) {
            var w = NBDWriter()
            w.u16(type.rawValue)
            body(&w)
            events.append(.send(Self.reply(code, .info, w.bytes)))
        }
        info(.export) { w in
            w.u64(export.sizeBytes)
            w.u16(export.capabilities.transmissionFlags(structuredReplies: structuredReplies).rawValue)
        }
        if parsed.requests.contains(NBDInfo.name.rawValue) { info(.name) { $0.string(export.name) } }
        if parsed.requests.contains(NBDInfo.description.rawValue) && !export.description.isEmpty {
            info(.description) { $0.string(export.description) }
        }
        // Block sizes go out whether asked for or not: requests must respect them.
        info(.blockSize) { w in
            w.u32(export.minimumBlockSize)
            w.u32(export.preferredBlockSize)
            w.u32(export.maximumBlockSize)
        }
        events.append(.send(Self.reply(code, .ack)))
        if option == .go {
            finish(&events, .transmission(NBDSession(export: export, structuredReplies: structuredReplies)))
        }
    }
}
