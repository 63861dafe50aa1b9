import FuzzDriver
import NBDProtocol

// An NBD connection's input as the server handles it (NBDConnection.process): the handshake
// state machine fed the stream in the pieces a socket might deliver, then request headers
// parsed and validated, a write's data skipped, until the stream ends or is judged garbage.
//
// Properties: nothing traps; the handshake never says it used more than it was given; every
// option reply is well formed; a request that passes validation lies inside its export, within
// the block sizes, and writes nothing to a read-only export.

let exports = [
    NBDExport(name: "raid6", description: "swraid RAID6", sizeBytes: (64 << 20) + 4096, minimumBlockSize: 512,
              preferredBlockSize: 4096, maximumBlockSize: 32 << 20),
    NBDExport(name: "ro", sizeBytes: 1 << 30, capabilities: { var c = NBDCapabilities(); c.readOnly = true; return c }(),
              minimumBlockSize: 4096),
]

/// Checks one option reply (or the reply to NBD_OPT_EXPORT_NAME, which has no header).
func checkSent(_ bytes: [UInt8], finishing: Bool) {
    if finishing && (bytes.count == 10 || bytes.count == 134) { return }
    bytes.withUnsafeBytes { raw in
        var r = NBDReader(raw)
        fuzzCheck(r.u64() == NBDMagic.optionReply, "an option reply without its magic")
        _ = r.u32()
        _ = r.u32()
        let length = r.u32()
        fuzzCheck(length.map { Int($0) == r.remaining } ?? false, "an option reply whose length is not its data's")
    }
}

func checkValid(_ request: NBDValidRequest, _ session: NBDSession) {
    let export = session.export
    func inside(_ offset: UInt64, _ length: Int, data: Bool) {
        fuzzCheck(length > 0, "a request of no bytes passed")
        fuzzCheck(offset <= export.sizeBytes && UInt64(length) <= export.sizeBytes - offset, "\(offset)+\(length) passed on a \(export.sizeBytes)-byte export")
        fuzzCheck(offset % UInt64(export.minimumBlockSize) == 0 && length % Int(export.minimumBlockSize) == 0, "an unaligned request passed")
        if data { fuzzCheck(length <= Int(export.maximumBlockSize), "a \(length)-byte data request passed") }
    }
    switch request {
    case .read(let offset, let length): inside(offset, length, data: true)
    case .write(let offset, let length, _):
        fuzzCheck(!export.capabilities.readOnly, "a write passed on a read-only export")
        inside(offset, length, data: true)
    case .trim(let offset, let length, _), .writeZeroes(let offset, let length, _):
        fuzzCheck(!export.capabilities.readOnly, "a trim or zeroing passed on a read-only export")
        inside(offset, length, data: false)
    case .flush, .disconnect: break
    }
}

func fuzzOne(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let input = fuzzInput(data, size)
    guard let first = input.first else { return 0 }
    let piece = Int(first) % 61 + 1
    let stream = input.dropFirst()
    var handshake = NBDHandshake(exports: exports, maxOptionBytes: 16 << 10, maxOptions: 256)
    var session: NBDSession?
    var cumulation: [UInt8] = []
    var discardRemaining = 0
    var position = stream.startIndex
    var requests = 0
    connection: while position < stream.endIndex {
        let end = min(position + piece, stream.endIndex)
        cumulation += stream[position..<end]
        position = end
        while !cumulation.isEmpty {
            if session == nil {
                let (consumed, events) = cumulation.withUnsafeBytes { handshake.receive($0) }
                fuzzCheck(consumed >= 0 && consumed <= cumulation.count, "the handshake used \(consumed) of \(cumulation.count) bytes")
                cumulation.removeFirst(consumed)
                for (index, event) in events.enumerated() {
                    switch event {
                    case .send(let bytes):
                        let last = index + 1 < events.count && { if case .transmission = events[index + 1] { return true } else { return false } }()
                        checkSent(bytes, finishing: last)
                    case .close:
                        fuzzCheck(index == events.count - 1, "events after a close")
                        break connection
                    case .transmission(let agreed):
                        fuzzCheck(index == events.count - 1 && handshake.isFinished, "transmission began mid-handshake")
                        session = agreed
                    }
                }
                if consumed == 0 { break }
                continue
            }
            if discardRemaining > 0 {
                let n = min(discardRemaining, cumulation.count)
                cumulation.removeFirst(n)
                discardRemaining -= n
                continue
            }
            let parsed = cumulation.withUnsafeBytes { NBDRequestHeader.parse($0) }
            switch parsed {
            case .needMore:
                fuzzCheck(cumulation.count < NBDRequestHeader.byteCount, "a whole header was not enough")
                continue connection
            case .garbage:
                break connection
            case .header(let header):
                let again = header.encoded().withUnsafeBytes { NBDRequestHeader.parse($0) }
                fuzzCheck(again == .header(header), "\(header) did not survive being encoded")
                cumulation.removeFirst(NBDRequestHeader.byteCount)
                requests += 1
                switch NBDValidator.validate(header, session: session!) {
                case .failure(let error):
                    discardRemaining = header.payloadBytes
                    let reply = NBDReply.error(cookie: header.cookie, error, message: "refused", structured: session!.structuredReplies)
                    fuzzCheck(reply.count >= 16, "an error reply of \(reply.count) bytes")
                case .success(.disconnect):
                    break connection
                case .success(let request):
                    checkValid(request, session!)
                    if case .write(_, let length, _) = request { discardRemaining = length }
                }
            }
        }
    }
    _ = requests
    return 0
}

func seeds() -> [(name: String, bytes: [UInt8])] {
    func option(_ code: NBDOption, _ data: [UInt8] = []) -> [UInt8] { NBDClientHandshake.option(code, data) }
    func go(_ name: String, _ infos: [UInt16]) -> [UInt8] { NBDClientHandshake.go(export: name, informationRequests: infos) }
    func request(_ command: NBDCommand, _ flags: NBDCommandFlags = [], offset: UInt64, length: UInt32, cookie: UInt64) -> [UInt8] {
        NBDRequestHeader(flags: flags, type: command.rawValue, cookie: cookie, offset: offset, length: length).encoded()
    }
    let start = NBDClientHandshake.flags(noZeroes: true)
    var traffic = request(.write, .fua, offset: 4096, length: 512, cookie: 1) + [UInt8](repeating: 0xA5, count: 512)
    traffic += request(.read, offset: 0, length: 4096, cookie: 2) + request(.flush, offset: 0, length: 0, cookie: 3)
    traffic += request(.trim, offset: 0, length: 1 << 20, cookie: 4) + request(.writeZeroes, [.noHole], offset: 8192, length: 8192, cookie: 5)
    traffic += request(.read, offset: (64 << 20), length: 8192, cookie: 6) + request(.disconnect, offset: 0, length: 0, cookie: 7)
    let info = NBDClientHandshake.go(export: "ro", informationRequests: [3], option: .info)
    return [
        ("go-structured", [13] + start + option(.structuredReply) + go("raid6", [1, 2, 3]) + traffic),
        ("list-info-go", [5] + start + option(.list) + info + go("", []) + traffic),
        ("export-name", [60] + start + option(.exportName, Array("ro".utf8)) + traffic),
        ("abort", [0] + start + option(.startTLS) + option(.abort)),
    ]
}

@_cdecl("FuzzNBD_main")
func main(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    fuzzerMain(argc, argv, seeds: seeds) { data, size in fuzzOne(data, size) }
}
