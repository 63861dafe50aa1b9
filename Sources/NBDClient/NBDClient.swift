import DiskIO
import NBDProtocol

/// A small blocking NBD client: fixed newstyle handshake with NBD_OPT_GO, simple replies, one
/// request at a time. Enough for `swraid demo` to drive a served array with nothing installed;
/// several clients on several threads make a concurrent workload.
public final class NBDClient {
    public enum Failure: Error, CustomStringConvertible {
        case protocolViolation(String)
        case refused(String)
        case request(NBDCommand, NBDError?)

        public var description: String {
            switch self {
            case .protocolViolation(let why): return "NBD protocol: \(why)"
            case .refused(let why): return "the server refused: \(why)"
            case .request(let command, let error): return "\(command) failed: \(error.map(\.description) ?? "unknown error")"
            }
        }
    }

    let socket: StreamSocketClient
    public private(set) var sizeBytes: UInt64 = 0
    public private(set) var transmissionFlags = NBDTransmissionFlags()
    var nextCookie: UInt64 = 1
    /// The largest read or write this client sends in one request.
    public static let maxRequestBytes = 1 << 20

    /// Connects and negotiates `export`.
    public init(host: String, port: Int, export: String) throws {
        socket = try StreamSocketClient(host: host, port: port)
        try negotiate(export: export)
    }

    func receive(_ count: Int) throws -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        let complete = try bytes.withUnsafeMutableBytes { try socket.receiveExactly(count, into: $0) }
        guard complete else { throw Failure.protocolViolation("the server closed the connection") }
        return bytes
    }

    static func u32(_ b: ArraySlice<UInt8>) -> UInt32 { b.reduce(0) { $0 << 8 | UInt32($1) } }
    static func u64(_ b: ArraySlice<UInt8>) -> UInt64 { b.reduce(0) { $0 << 8 | UInt64($1) } }

    func negotiate(export: String) throws {
        let greeting = try receive(18)
        guard Self.u64(greeting[0..<8]) == NBDMagic.initPassword, Self.u64(greeting[8..<16]) == NBDMagic.option else {
            throw Failure.protocolViolation("not an NBD newstyle server")
        }
        let handshakeFlags = UInt16(greeting[16]) << 8 | UInt16(greeting[17])
        guard handshakeFlags & NBDHandshakeFlag.fixedNewstyle != 0 else { throw Failure.protocolViolation("the server is not fixed newstyle") }
        let request = NBDClientHandshake.flags(noZeroes: handshakeFlags & NBDHandshakeFlag.noZeroes != 0) + NBDClientHandshake.go(export: export)
        try request.withUnsafeBytes { try socket.send($0) }
        // Option replies until the ACK of GO; bounded (a server may send a few INFO replies).
        for _ in 0..<64 {
            let header = try receive(20)
            guard Self.u64(header[0..<8]) == NBDMagic.optionReply else { throw Failure.protocolViolation("bad option reply magic") }
            let type = Self.u32(header[12..<16])
            let length = Int(Self.u32(header[16..<20]))
            guard length <= 65536 else { throw Failure.protocolViolation("option reply of \(length) bytes") }
            let data = try receive(length)
            if type == NBDOptionReply.ack.rawValue { return }
            if type & 0x8000_0000 != 0 {
                throw Failure.refused("export '\(export)': \(String(decoding: data, as: UTF8.self))")
            }
            if type == NBDOptionReply.info.rawValue, data.count >= 12, data[0] == 0, data[1] == NBDInfo.export.rawValue {
                sizeBytes = Self.u64(data[2..<10])
                transmissionFlags = NBDTransmissionFlags(rawValue: UInt16(data[10]) << 8 | UInt16(data[11]))
            }
        }
        throw Failure.protocolViolation("no ACK after 64 option replies")
    }

    /// Sends one request and waits for its simple reply; returns the data of a read.
    func transact(_ command: NBDCommand, flags: NBDCommandFlags = [], offset: UInt64, length: Int, payload: UnsafeRawBufferPointer? = nil, into: UnsafeMutableRawBufferPointer? = nil) throws {
        let cookie = nextCookie
        nextCookie += 1
        let header = NBDRequestHeader(flags: flags, type: command.rawValue, cookie: cookie, offset: offset, length: UInt32(length)).encoded()
        try header.withUnsafeBytes { try socket.send($0) }
        if let payload { try socket.send(payload) }
        let reply = try receive(16)
        guard Self.u32(reply[0..<4]) == NBDMagic.simpleReply else { throw Failure.protocolViolation("not a simple reply") }
        guard Self.u64(reply[8..<16]) == cookie else { throw Failure.protocolViolation("reply for another request") }
        let error = Self.u32(reply[4..<8])
        guard error == 0 else { throw Failure.request(command, NBDError(rawValue: error)) }
        if let into {
            guard try socket.receiveExactly(length, into: into) else { throw Failure.protocolViolation("the server closed the connection mid-read") }
        }
    }

    public func read(offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws {
        precondition(buffer.count <= Self.maxRequestBytes, "read larger than one request")
        try transact(.read, offset: offset, length: buffer.count, into: buffer)
    }

    public func write(offset: UInt64, _ data: UnsafeRawBufferPointer, fua: Bool = false) throws {
        precondition(data.count <= Self.maxRequestBytes, "write larger than one request")
        try transact(.write, flags: fua ? .fua : [], offset: offset, length: data.count, payload: data)
    }

    public func flush() throws { try transact(.flush, offset: 0, length: 0) }

    public func trim(offset: UInt64, length: Int) throws { try transact(.trim, offset: offset, length: length) }

    public func writeZeroes(offset: UInt64, length: Int) throws { try transact(.writeZeroes, offset: offset, length: length) }

    /// NBD_CMD_DISC: the server finishes what is in flight and closes.
    public func disconnect() {
        let header = NBDRequestHeader(flags: [], type: NBDCommand.disconnect.rawValue, cookie: nextCookie, offset: 0, length: 0).encoded()
        try? header.withUnsafeBytes { try socket.send($0) }
    }
}
