import Foundation
import NBDProtocol

#if canImport(Glibc)
import Glibc
#endif

/// A blocking TCP client that speaks NBD byte by byte, for sending what no real client would.
final class RawClient: @unchecked Sendable {  // used by one thread at a time
    let fd: Int32

    init(port: Int) throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let rc = withUnsafePointer(to: &addr) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard rc == 0 else { throw POSIXError(.ECONNREFUSED) }
        guardAgainstAHang()
    }

    /// Connected to the Unix socket at `path`.
    init(unixPath path: String) throws {
        fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else { throw POSIXError(.ENAMETOOLONG) }
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        let rc = withUnsafePointer(to: &addr) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard rc == 0 else { throw POSIXError(.ECONNREFUSED) }
        guardAgainstAHang()
    }

    /// A guard against a hang, not a timing check: a test fails after this rather than waiting
    /// for ever. 10 s was too short on a loaded 2-core CI run (a metrics scrape beside the qemu
    /// interop test went unanswered that long once).
    private func guardAgainstAHang() {
        var timeout = timeval(tv_sec: 60, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    }

    deinit { close(fd) }

    func send(_ bytes: [UInt8]) {
        var done = 0
        while done < bytes.count {
            let n = bytes[done...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n <= 0 { return }
            done += n
        }
    }

    /// Exactly `count` bytes, or nil if the server closed the connection first.
    func receive(_ count: Int) -> [UInt8]? {
        var out = [UInt8](repeating: 0, count: count)
        var done = 0
        while done < count {
            let n = out[done...].withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n <= 0 { return nil }
            done += n
        }
        return out
    }

    /// Says this side will send nothing more (the server reads EOF).
    func finishSending() { _ = shutdown(fd, Int32(SHUT_WR)) }

    /// Everything until the server closes the connection.
    func receiveAll() -> [UInt8] {
        var out: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n <= 0 { return out }
            out += chunk[0..<n]
        }
    }

    /// True when the server has closed the connection (EOF).
    var serverClosed: Bool {
        var byte: UInt8 = 0
        return recv(fd, &byte, 1, 0) == 0
    }

    /// The fixed newstyle handshake through NBD_OPT_GO (with structured replies if asked).
    func negotiate(export: String, structured: Bool = false) throws -> (size: UInt64, flags: UInt16) {
        guard let greeting = receive(18), Array(greeting[0..<8]) == Array("NBDMAGIC".utf8) else { throw POSIXError(.EPROTO) }
        send(NBDClientHandshake.flags(noZeroes: true) + (structured ? NBDClientHandshake.option(.structuredReply) : [])
            + NBDClientHandshake.go(export: export))
        var size: UInt64 = 0
        var flags: UInt16 = 0
        while true {
            guard let header = receive(20) else { throw POSIXError(.EPROTO) }
            let type = header[12..<16].reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
            let length = Int(header[16..<20].reduce(UInt32(0)) { $0 << 8 | UInt32($1) })
            let data = length > 0 ? receive(length)! : []
            if type == NBDOptionReply.info.rawValue && data.count >= 12 && data[0] == 0 && data[1] == 0 {
                size = data[2..<10].reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
                flags = UInt16(data[10]) << 8 | UInt16(data[11])
            }
            if type == NBDOptionReply.ack.rawValue {
                let option = header[8..<12].reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
                if option == NBDOption.go.rawValue { return (size, flags) }
            } else if type & 0x8000_0000 != 0 {
                throw POSIXError(.EPROTO)
            }
        }
    }

    func request(_ command: NBDCommand, flags: NBDCommandFlags = [], cookie: UInt64, offset: UInt64, length: UInt32, payload: [UInt8] = []) {
        send(NBDRequestHeader(flags: flags, type: command.rawValue, cookie: cookie, offset: offset, length: length).encoded() + payload)
    }

    /// A simple reply: (error, cookie), then `dataBytes` of data when the error is 0.
    func simpleReply(dataBytes: Int = 0) -> (error: UInt32, cookie: UInt64, data: [UInt8])? {
        guard let header = receive(16) else { return nil }
        let magic = header[0..<4].reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
        guard magic == NBDMagic.simpleReply else { return nil }
        let error = header[4..<8].reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
        let cookie = header[8..<16].reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        let data = error == 0 && dataBytes > 0 ? receive(dataBytes) ?? [] : []
        return (error, cookie, data)
    }
}
