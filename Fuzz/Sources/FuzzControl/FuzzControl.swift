import ControlProtocol
import FuzzDriver

// The control socket's input path as the server runs it: bytes cut into lines by the framer
// (in the pieces a socket might deliver), each line parsed as a request. And the client's: the
// same bytes decoded as replies.
//
// Properties: nothing traps; the framer keeps its bounds and hands out every byte it took once;
// a parsed request survives being written as a line and parsed again; a decoded reply says it
// used no more than it was given.

func fuzzOne(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let input = fuzzInput(data, size)
    guard let first = input.first else { return 0 }
    // The first byte picks the size of the pieces the stream arrives in.
    let piece = Int(first) % 97 + 1
    let stream = input.dropFirst()
    var framer = ControlRequestFramer()
    var position = stream.startIndex
    var handedOut = 0
    feeding: while position < stream.endIndex {
        let end = min(position + piece, stream.endIndex)
        do {
            try framer.append(stream[position..<end])
        } catch {
            break feeding
        }
        position = end
        while true {
            let line: String?
            do { line = try framer.nextLine() } catch { break feeding }
            guard let line else { break }
            handedOut += 1
            fuzzCheck(!line.utf8.contains(UInt8(ascii: "\n")), "a line came out with its newline inside")
            fuzzCheck(line.utf8.count <= 3 * ControlRequest.maxLineBytes, "a line over the limit came out")
            if let request = try? ControlRequest.parse(line) {
                let again = try? ControlRequest.parse(request.line)
                fuzzCheck(again == request, "\(request) written as '\(request.line)' parsed as \(String(describing: again))")
            }
        }
        fuzzCheck(framer.pendingBytes <= ControlRequestFramer.maxPendingBytes, "the framer kept \(framer.pendingBytes) bytes")
    }
    // The client's side: replies decoded from the same bytes, one after another.
    var text = String(decoding: stream, as: UTF8.self)
    var replies = 0
    while replies < 64, let (_, used) = ControlReply.decode(text) {
        fuzzCheck(used > 0 && used <= text.utf8.count, "a reply used \(used) of \(text.utf8.count) bytes")
        text = String(decoding: text.utf8.dropFirst(used), as: UTF8.self)
        replies += 1
    }
    _ = handedOut
    return 0
}

func seeds() -> [(name: String, bytes: [UInt8])] {
    let requests: [ControlRequest] = [
        .get("sync_action"), .set("sync_action", "check"), .set("sync_action", "idle"), .status, .detail, .detailJSON,
        .fail("1"), .remove("/srv/m1.img"), .readd("1"), .add("/srv/m4.img"), .wait, .stop, .help,
    ]
    var out: [(name: String, bytes: [UInt8])] = []
    out.append(("requests", [7] + Array(requests.map { $0.line + "\n" }.joined().utf8)))
    out.append(("replies", [1] + Array((ControlReply.ok(["idle", "", "x"]).encoded + ControlReply.error(errno: "EBUSY", message: "busy").encoded).utf8)))
    out.append(("garbage", [3] + Array("frobnicate\nget\n\u{1}\u{2}\r\nset a\nok 2\nerror\n".utf8)))
    return out
}

@_cdecl("FuzzControl_main")
func main(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    fuzzerMain(argc, argv, seeds: seeds) { data, size in fuzzOne(data, size) }
}
