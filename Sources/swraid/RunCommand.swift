import ArgumentParser
import DiskIO
import Logging
import NBDServer
import RaidCore
import RaidEngine
import ServiceLifecycle

/// `swraid run`: assemble an array and serve it over NBD in the foreground until SIGINT or
/// SIGTERM, then stop it cleanly (requests in flight answered, the array marked clean on disk).
struct Run: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Assemble an array and serve it over NBD until stopped (SIGINT/SIGTERM stop it cleanly).",
        discussion: """
            Members may be given in any order; md's assembly rules decide the roles. Listens on \
            127.0.0.1:10809 unless told otherwise. The export is named after the array.
            """)

    @Option(help: "TCP address to listen on, HOST:PORT (default 127.0.0.1:10809).")
    var listen: String?

    @Option(help: "Listen on this Unix socket instead of TCP.")
    var socket: String?

    @Flag(help: "Serve read-only: nothing is written to the members.")
    var readonly = false

    @Flag(help: "Assemble even a degraded array that was not shut down cleanly (data may be stale).")
    var force = false

    @Argument(help: "Member files or block devices.")
    var members: [String]

    func run() async throws {
        let address: NBDListenAddress
        if let socket {
            guard listen == nil else { throw failure("give --listen or --socket, not both") }
            address = .unix(path: socket)
        } else {
            let text = listen ?? "127.0.0.1:10809"
            guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]), (0...65535).contains(port) else {
                throw failure("--listen takes HOST:PORT, not '\(text)'")
            }
            address = .tcp(host: String(text[..<colon]), port: port)
        }
        LoggingSystem.bootstrap { StreamLogHandler.standardError(label: $0) }
        var logger = Logger(label: "swraid")
        logger.logLevel = .info
        let serverOptions = NBDServerOptions()
        var options = EngineOptions()
        options.readOnly = readonly
        options.force = force
        let bounds = serverOptions.coreBounds(maxBlockBytes: 32 << 20)
        options.config.maxRequestsInFlight = max(options.config.maxRequestsInFlight, bounds.requests)
        options.config.maxBytesInFlight = max(options.config.maxBytesInFlight, bounds.bytes)
        let engine: RaidEngine
        do { engine = try RaidEngine.assemble(paths: members, options: options, logger: logger) } catch {
            printError("\(error)")
            throw ExitCode(1)
        }
        let service = ArrayService(engine: engine, address: address, options: serverOptions, logger: logger)
        let group = ServiceGroup(services: [service], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
        do {
            try await group.run()
        } catch {
            printError("\(error)")
            await engine.stop()
            throw ExitCode(1)
        }
    }

    func failure(_ message: String) -> Error {
        printError(message)
        return ExitCode(1)
    }
}

/// The running array as a service: serve until the graceful shutdown, then stop.
struct ArrayService: Service {
    let engine: RaidEngine
    let address: NBDListenAddress
    let options: NBDServerOptions
    let logger: Logger

    func run() async throws {
        let server: NBDServer
        do {
            server = try await NBDServer.start(engine: engine, address: address, options: options, logger: logger)
        } catch {
            await engine.stop()
            throw CommandFailure(message: "cannot listen on \(address): \(error)")
        }
        try? await gracefulShutdown()
        logger.notice("stopping: finishing requests in flight, marking the array clean")
        await server.stop()
        await engine.stop()
        logger.notice("stopped")
    }
}
