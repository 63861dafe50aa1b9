import Testing

@testable import NBDProtocol

/// A client's side of the negotiation, written by hand from the protocol document.
struct ClientBytes {
    var w = NBDWriter()
    func flags(_ f: UInt32) -> Self {
        var c = self
        c.w.u32(f)
        return c
    }
    func option(_ code: UInt32, _ data: [UInt8] = []) -> Self {
        var c = self
        c.w.u64(NBDMagic.option)
        c.w.u32(code)
        c.w.u32(UInt32(data.count))
        c.w.raw(data)
        return c
    }
    static func goData(_ name: String, _ infos: [UInt16] = []) -> [UInt8] {
        var d = NBDWriter()
        d.u32(UInt32(name.utf8.count))
        d.string(name)
        d.u16(UInt16(infos.count))
        for i in infos { d.u16(i) }
        return d.bytes
    }
}

/// An option reply as the server sent it.
struct OptionReply: Equatable {
    let option: UInt32
    let type: UInt32
    let data: [UInt8]
}

func optionReplies(_ events: [NBDHandshake.Event]) -> [OptionReply] {
    var out: [OptionReply] = []
    for case .send(let bytes) in events {
        bytes.withUnsafeBytes { raw in
            var r = NBDReader(raw)
            while r.remaining >= 20, r.u64() == NBDMagic.optionReply {
                let option = r.u32()!, type = r.u32()!, length = r.u32()!
                out.append(OptionReply(option: option, type: type, data: r.bytes(Int(length))!))
            }
        }
    }
    return out
}

func run(_ h: inout NBDHandshake, _ bytes: [UInt8]) -> (Int, [NBDHandshake.Event]) {
    bytes.withUnsafeBytes { h.receive($0) }
}

let arrayExport = NBDExport(name: "md0", description: "raid6 of 6", sizeBytes: 1 << 30, preferredBlockSize: 256 << 10)

@Suite struct HandshakeTests {
    @Test func greetingIsFixedNewstyle() {
        let g = NBDHandshake.greeting
        #expect(g.count == 18)
        #expect(Array(g[0..<8]) == Array("NBDMAGIC".utf8))
        #expect(Array(g[8..<16]) == Array("IHAVEOPT".utf8))
        #expect(g[17] & 1 == 1, "NBD_FLAG_FIXED_NEWSTYLE")
    }

    @Test func goSendsExportAndBlockSizesThenStartsTransmission() {
        var h = NBDHandshake(exports: [arrayExport])
        let c = ClientBytes()
        let bytes = c.flags(3).option(NBDOption.structuredReply.rawValue).option(NBDOption.go.rawValue, ClientBytes.goData("md0", [NBDInfo.blockSize.rawValue, NBDInfo.name.rawValue])).w.bytes
        let (consumed, events) = run(&h, bytes)
        #expect(consumed == bytes.count)
        let replies = optionReplies(events)
        #expect(replies.first == OptionReply(option: 8, type: 1, data: []))
        let infos = replies.filter { $0.type == NBDOptionReply.info.rawValue }
        // NBD_INFO_EXPORT: size and flags (DF because structured replies were negotiated).
        let export = infos.first { $0.data.prefix(2) == [0, 0] }!
        export.data.withUnsafeBytes { raw in
            var r = NBDReader(raw)
            _ = r.u16()
            #expect(r.u64() == 1 << 30)
            let flags = NBDTransmissionFlags(rawValue: r.u16()!)
            #expect(flags.isSuperset(of: [.hasFlags, .sendFlush, .sendFUA, .sendTrim, .sendWriteZeroes, .sendFastZero, .canMultiConn, .sendDF]))
            #expect(!flags.contains(.readOnly))
        }
        let sizes = infos.first { $0.data.prefix(2) == [0, 3] }!
        #expect(sizes.data == [0, 3, 0, 0, 2, 0, 0, 4, 0, 0, 2, 0, 0, 0])
        #expect(infos.contains { $0.data.prefix(2) == [0, 1] && String(decoding: $0.data.dropFirst(2), as: UTF8.self) == "md0" })
        #expect(replies.last?.type == NBDOptionReply.ack.rawValue)
        #expect(events.last == NBDHandshake.Event.transmission(NBDSession(export: arrayExport, structuredReplies: true)))
    }

    @Test func unknownOptionsAreRefusedAndTheNegotiationGoesOn() {
        var h = NBDHandshake(exports: [arrayExport])
        let c = ClientBytes()
        let bytes = c.flags(1).option(99, [1, 2, 3]).option(NBDOption.startTLS.rawValue).option(NBDOption.setMetaContext.rawValue, [0, 0, 0, 0])
            .option(NBDOption.list.rawValue).w.bytes
        let (_, events) = run(&h, bytes)
        let replies = optionReplies(events)
        #expect(replies.map(\.type).prefix(3) == [NBDOptionReply.errUnsupported.rawValue, NBDOptionReply.errUnsupported.rawValue, NBDOptionReply.errUnsupported.rawValue])
        // LIST names the export, then ACK; no transmission, no close.
        #expect(replies[3].type == NBDOptionReply.server.rawValue)
        #expect(replies[3].data == [0, 0, 0, 3] + Array("md0".utf8) + Array("raid6 of 6".utf8))
        #expect(replies[4].type == NBDOptionReply.ack.rawValue)
        #expect(!h.isFinished)
    }

    @Test func malformedOptionsGetErrInvalid() {
        var h = NBDHandshake(exports: [arrayExport])
        let c = ClientBytes()
        var truncatedGo = ClientBytes.goData("md0", [3])
        truncatedGo.removeLast()
        let bytes = c.flags(1).option(NBDOption.list.rawValue, [1]).option(NBDOption.structuredReply.rawValue, [0])
            .option(NBDOption.go.rawValue, truncatedGo).option(NBDOption.info.rawValue, ClientBytes.goData("nope")).w.bytes
        let replies = optionReplies(run(&h, bytes).1)
        #expect(replies.map(\.type) == [NBDOptionReply.errInvalid, .errInvalid, .errInvalid, .errUnknown].map(\.rawValue))
        #expect(String(decoding: replies[3].data, as: UTF8.self).contains("no export named 'nope'"))
        #expect(!h.isFinished)
    }

    @Test func exportNameAnswersWithSizeFlagsAndZeroes() {
        for noZeroes in [false, true] {
            var h = NBDHandshake(exports: [arrayExport])
            let c = ClientBytes()
            let bytes = c.flags(noZeroes ? 3 : 1).option(NBDOption.exportName.rawValue, Array("md0".utf8)).w.bytes
            let (_, events) = run(&h, bytes)
            guard case .send(let reply) = events.first else { Issue.record("no reply"); continue }
            #expect(reply.count == (noZeroes ? 10 : 134))
            #expect(Array(reply[0..<8]) == [0, 0, 0, 0, 0x40, 0, 0, 0])
            #expect(events.last == NBDHandshake.Event.transmission(NBDSession(export: arrayExport, structuredReplies: false)))
        }
    }

    @Test func theDefaultExportIsTheFirst() {
        var h = NBDHandshake(exports: [arrayExport])
        let c = ClientBytes()
        let (_, events) = run(&h, c.flags(1).option(NBDOption.go.rawValue, ClientBytes.goData("")).w.bytes)
        #expect(events.last == NBDHandshake.Event.transmission(NBDSession(export: arrayExport, structuredReplies: false)))
    }

    @Test(arguments: [
        ("unknown client flags", ClientBytes().w.bytes + [0, 0, 0, 4]),
        ("garbage instead of an option", [0, 0, 0, 1] + Array("GET / HTTP/1.1\r\n\r\n".utf8)),
        ("an option too large", ClientBytes().flags(1).w.bytes + [0x49, 0x48, 0x41, 0x56, 0x45, 0x4F, 0x50, 0x54, 0, 0, 0, 1, 0x7f, 0, 0, 0]),
        ("an unknown export by name", ClientBytes().flags(1).option(1, Array("other".utf8)).w.bytes),
    ] as [(String, [UInt8])])
    func hostileOrHopelessInputClosesTheConnection(what: String, bytes: [UInt8]) {
        var h = NBDHandshake(exports: [arrayExport])
        let (_, events) = run(&h, bytes)
        guard case .close? = events.last else { Issue.record("\(what): not closed (\(events))"); return }
        #expect(h.isFinished)
    }

    @Test func tooManyOptionsClose() {
        var h = NBDHandshake(exports: [arrayExport], maxOptions: 10)
        var c = ClientBytes().flags(1)
        for _ in 0..<11 { c = c.option(NBDOption.list.rawValue) }
        let (_, events) = run(&h, c.w.bytes)
        guard case .close? = events.last else { Issue.record("not closed"); return }
    }

    @Test func abortIsAcknowledgedThenClosed() {
        var h = NBDHandshake(exports: [arrayExport])
        let c = ClientBytes()
        let (_, events) = run(&h, c.flags(1).option(NBDOption.abort.rawValue).w.bytes)
        #expect(optionReplies(events) == [OptionReply(option: 2, type: 1, data: [])])
        guard case .close? = events.last else { Issue.record("not closed"); return }
    }

    /// Bytes may arrive one at a time: nothing is consumed until a message is complete.
    @Test func partialInputWaitsForTheRest() {
        var h = NBDHandshake(exports: [arrayExport])
        let c = ClientBytes()
        let bytes = c.flags(1).option(NBDOption.go.rawValue, ClientBytes.goData("md0", [3])).w.bytes
        var pending: [UInt8] = []
        var all: [NBDHandshake.Event] = []
        for b in bytes {
            pending.append(b)
            let (consumed, events) = run(&h, pending)
            pending.removeFirst(consumed)
            all += events
        }
        #expect(pending.isEmpty)
        #expect(all.last == NBDHandshake.Event.transmission(NBDSession(export: arrayExport, structuredReplies: false)))
    }
}

@Suite struct ValidatorTests {
    let session = NBDSession(export: arrayExport, structuredReplies: false)

    func check(_ type: NBDCommand, flags: NBDCommandFlags = [], offset: UInt64 = 0, length: UInt32 = 4096, session: NBDSession? = nil, rawType: UInt16? = nil) -> Result<NBDValidRequest, NBDError> {
        NBDValidator.validate(NBDRequestHeader(flags: flags, type: rawType ?? type.rawValue, cookie: 7, offset: offset, length: length), session: session ?? self.session)
    }

    @Test func goodRequestsPass() {
        #expect(check(.read) == .success(.read(offset: 0, length: 4096)))
        #expect(check(.write, flags: .fua, offset: 512) == .success(.write(offset: 512, length: 4096, fua: true)))
        #expect(check(.flush, length: 0) == .success(.flush))
        #expect(check(.trim, offset: 1 << 20, length: 1 << 20) == .success(.trim(offset: 1 << 20, length: 1 << 20, fua: false)))
        #expect(check(.writeZeroes, flags: [.noHole]) == .success(.writeZeroes(offset: 0, length: 4096, fua: false)))
        #expect(check(.disconnect, length: 0) == .success(.disconnect))
        // The last block of the export.
        #expect(check(.read, offset: (1 << 30) - 512, length: 512) == .success(.read(offset: (1 << 30) - 512, length: 512)))
    }

    @Test func errorsAreTheOnesTheProtocolGives() {
        #expect(check(.read, rawType: 42) == .failure(.invalid))
        #expect(check(.read, flags: NBDCommandFlags(rawValue: 1 << 9)) == .failure(.invalid))
        #expect(check(.write, flags: .noHole) == .failure(.invalid))
        #expect(check(.read, flags: .dontFragment) == .failure(.invalid), "DF without structured replies")
        #expect(check(.read, offset: 100) == .failure(.invalid))
        #expect(check(.read, length: 100) == .failure(.invalid))
        #expect(check(.read, length: 0) == .failure(.invalid))
        #expect(check(.read, length: (32 << 20) + 512) == .failure(.invalid))
        #expect(check(.read, offset: 1 << 30) == .failure(.invalid))
        #expect(check(.write, offset: (1 << 30) - 512) == .failure(.noSpace))
        #expect(check(.flush, offset: 512, length: 0) == .failure(.invalid))
        #expect(check(.writeZeroes, flags: .fastZero) == .failure(.notSupported))
        #expect(check(.blockStatus) == .failure(.invalid))
        var readOnly = arrayExport
        readOnly.capabilities.readOnly = true
        let ro = NBDSession(export: readOnly, structuredReplies: true)
        #expect(check(.write, session: ro) == .failure(.permission))
        #expect(check(.trim, session: ro) == .failure(.permission))
        #expect(check(.read, flags: .dontFragment, session: ro) == .success(.read(offset: 0, length: 4096)))
    }

    @Test func headersParseAndGarbageIsSeen() {
        let header = NBDRequestHeader(flags: .fua, type: 1, cookie: 0xdead_beef, offset: 4096, length: 512)
        let bytes = header.encoded()
        #expect(bytes.withUnsafeBytes { NBDRequestHeader.parse($0) } == .header(header))
        #expect(Array(bytes.prefix(10)).withUnsafeBytes { NBDRequestHeader.parse($0) } == .needMore)
        #expect([UInt8](repeating: 0x41, count: 28).withUnsafeBytes { NBDRequestHeader.parse($0) } == .garbage(0x4141_4141))
        #expect(header.payloadBytes == 512)
    }

    @Test func repliesAreEncodedAsTheProtocolSays() {
        #expect(NBDReply.done(cookie: 5) == [0x67, 0x44, 0x66, 0x98, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5])
        #expect(NBDReply.error(cookie: 5, .invalid, message: "x", structured: false) == [0x67, 0x44, 0x66, 0x98, 0, 0, 0, 22, 0, 0, 0, 0, 0, 0, 0, 5])
        let structured = NBDReply.error(cookie: 5, .io, message: "bad", structured: true)
        #expect(Array(structured[0..<8]) == [0x66, 0x8e, 0x33, 0xef, 0, 1, 0x80, 1])
        #expect(Array(structured[16..<20]) == [0, 0, 0, 9])
        #expect(Array(structured[20...]) == [0, 0, 0, 5, 0, 3] + Array("bad".utf8))
        let read = NBDReply.readHeader(cookie: 9, offset: 4096, length: 512, structured: true)
        #expect(read.count == 28)
        #expect(Array(read[16..<20]) == [0, 0, 2, 8])
    }
}
