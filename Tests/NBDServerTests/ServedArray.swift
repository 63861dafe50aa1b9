import DiskIO
import Foundation
import Logging
import MDFormat
import MDOffline
import NBDServer
import NIOCore
import RaidCore
import RaidEngine
import TestSupport
import Testing

let quietLogger = Logger(label: "swraid-test", factory: { _ in SwiftLogNoOpLogHandler() })

/// An array of new member files served in-process on an ephemeral loopback port.
final class ServedArray: @unchecked Sendable {
    let dir: TemporaryDirectory
    let paths: [String]
    var engine: RaidEngine
    var server: NBDServer
    var port: Int
    /// The Unix socket served on instead of TCP, if any.
    let socketPath: String?

    static func make(
        level: RaidLevel = .raid6, disks: Int = 5, memberMiB: UInt64 = 16, chunkKiB: UInt64 = 64, bitmap: Bool = true, name: String = "served",
        serverOptions: NBDServerOptions = NBDServerOptions(), overUnixSocket: Bool = false, direct: Bool = false,
        wrappingDevices wrap: (([MemberDevice]) -> [MemberDevice])? = nil
    ) async throws -> ServedArray {
        let dir = TemporaryDirectory()
        var request = CreateRequest(
            level: level, raidDisks: disks, memberSizesSectors: [], arrayUUID: (0..<16).map { UInt8($0 * 3 + 5) },
            deviceUUIDs: (0..<disks).map { i in (0..<16).map { UInt8(truncatingIfNeeded: $0 + i * 16 + 9) } }, timeSeconds: 1_764_000_000)
        request.chunkKiB = chunkKiB
        request.sizeSectors = memberMiB * 2048
        request.bitmap = bitmap ? .internal_ : .none
        request.bitmapChunkBytes = bitmap ? 1 << 20 : nil
        request.name = name
        request.homehost = "test"
        let paths = (0..<disks).map { dir.file("m\($0).img") }
        try ArrayCreator(paths: paths, request: request, options: CreateOptions()).run()
        let socketPath = overUnixSocket ? dir.file("nbd.sock") : nil
        let (engine, server, port) = try await serve(paths, serverOptions: serverOptions, socketPath: socketPath, direct: direct, wrappingDevices: wrap)
        return ServedArray(dir: dir, paths: paths, engine: engine, server: server, port: port, socketPath: socketPath)
    }

    init(dir: TemporaryDirectory, paths: [String], engine: RaidEngine, server: NBDServer, port: Int, socketPath: String?) {
        self.socketPath = socketPath
        self.dir = dir
        self.paths = paths
        self.engine = engine
        self.server = server
        self.port = port
    }

    /// `direct`: members opened O_DIRECT, so that every member read goes to the I/O threads and
    /// stays in flight a while (one the page cache holds is answered at once, on the loop).
    static func serve(
        _ paths: [String], readOnly: Bool = false, serverOptions: NBDServerOptions = NBDServerOptions(), socketPath: String? = nil, direct: Bool = false,
        wrappingDevices wrap: (([MemberDevice]) -> [MemberDevice])? = nil
    ) async throws -> (RaidEngine, NBDServer, Int) {
        var options = EngineOptions()
        options.readOnly = readOnly
        options.direct = direct
        options.ioThreads = 4
        let engine = try RaidEngine.assemble(paths: paths, options: options, logger: quietLogger, wrappingDevices: wrap)
        var serverOptions = serverOptions
        serverOptions.readOnly = readOnly
        let address: NBDListenAddress = socketPath.map { .unix(path: $0) } ?? .tcp(host: "127.0.0.1", port: 0)
        let server = try await NBDServer.start(engine: engine, address: address, options: serverOptions, logger: quietLogger)
        return (engine, server, server.localAddress?.port ?? 0)
    }

    var uri: String {
        if let socketPath { return "nbd+unix:///\(server.export.name)?socket=\(socketPath)" }
        return "nbd://127.0.0.1:\(port)/\(server.export.name)"
    }

    /// Stops the server and the array (cleanly), as SIGTERM does.
    func stop() async {
        await server.stop()
        await engine.stop()
    }

    /// Assembles and serves the same members again (after `stop`).
    func restart(readOnly: Bool = false) async throws {
        (engine, server, port) = try await Self.serve(paths, readOnly: readOnly, socketPath: socketPath)
    }
}

/// Runs a client program; returns its exit status and output.
func client(_ program: String, _ arguments: [String]) throws -> ProcessResult {
    try runProcess(which(program)!, arguments)
}

let haveNBDTools = which("nbdinfo") != nil && which("nbdcopy") != nil
let haveQemuIO = which("qemu-io") != nil
