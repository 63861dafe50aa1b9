import ControlProtocol
import DiskIO

/// The CLI's side of the control socket: one request, one reply, over a blocking connection.
public struct ControlClient {
    public let path: String

    public init(path: String) { self.path = path }

    /// Longest reply accepted (a `detail` of a large array is a few KiB).
    public static let maxReplyBytes = 1 << 20

    public func request(_ request: ControlRequest) throws(SystemError) -> ControlReply {
        // One request is one line: a line break inside an argument (`swraid set sync_action
        // $'idle\nstop'`, a path with a newline) would send a second request the daemon serves
        // after the first, with nobody waiting for its answer.
        let line = request.line
        guard !line.contains(where: { $0.isNewline }) else {
            throw SystemError("an argument contains a line break, which the control protocol cannot carry")
        }
        let socket = try StreamSocketClient(path: path)
        var sendError: SystemError?
        // The daemon may refuse before reading (the peer check): its answer is still there to read.
        do { try socket.send(line + "\n") } catch { sendError = error }
        var received: [UInt8] = []
        while true {
            let chunk: [UInt8]
            do { chunk = try socket.receive() } catch { throw sendError ?? error }
            if chunk.isEmpty {
                throw sendError ?? SystemError("\(path): the daemon closed the connection before replying")
            }
            received += chunk
            if let (reply, _) = ControlReply.decode(String(decoding: received, as: UTF8.self)) { return reply }
            guard received.count <= Self.maxReplyBytes else { throw SystemError("\(path): reply over \(Self.maxReplyBytes) bytes") }
        }
    }

    /// The control sockets in the runtime directory, by array name.
    public static func knownArrays(in directory: String = ControlServer.runtimeDirectory) -> [(name: String, path: String)] {
        FileSystem.directoryEntries(directory).compactMap { entry in
            guard entry.hasSuffix(".sock") else { return nil }
            let path = directory + "/" + entry
            guard FileSystem.isSocket(path) else { return nil }
            return (String(entry.dropLast(5)), path)
        }
    }
}

/// errno numbers for the names the control protocol carries: the CLI's exit status on an error,
/// so that scripts can tell EBUSY from EINVAL as they would from a sysfs write.
public func errnoNumber(named name: String) -> Int32 {
    switch name {
    case "ENOENT": return 2
    case "EIO": return 5
    case "EACCES": return 13
    case "EBUSY": return 16
    case "ENODEV": return 19
    case "EINVAL": return 22
    case "EROFS": return 30
    default: return 1
    }
}
