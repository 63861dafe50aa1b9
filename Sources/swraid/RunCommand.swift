import ArgumentParser
import ControlPlane
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

    @Option(help: "The control socket (default: $XDG_RUNTIME_DIR/swraid/NAME.sock, else /run/swraid/NAME.sock).")
    var control: String?

    @Option(help: "Serve Prometheus metrics over HTTP on HOST:PORT (GET /metrics).")
    var metrics: String?

    @Option(help: "Each connection's kernel send buffer in KiB (SO_SNDBUF); 0 keeps the system's default (TCP then tunes its own).")
    var sendBufferKib: Int = 512

    @Flag(inversion: .prefixedNo, help: "Send the bytes of healthy reads the members' page cache holds with sendfile, from the member files, instead of copying them into each reply first.")
    var sendfile = true

    @Option(name: .customLong("poll-max-us"), help: "Longest time in microseconds a connection that owes its client nothing polls its socket for the next request before the server sleeps (0 to 1000; 0 never polls). As QEMU's I/O threads poll, and only while it pays: after three spells in a row that the request did not come in, a connection stops polling, and tries again one idle spell in 32. Cuts queue-depth-1 latency, at the cost of a CPU kept busy while such a client runs.")
    var pollMaxUs = Int(AdaptivePoll.defaultMaxNanos / 1000)

    @Option(name: .customLong("io-threads"), help: "Threads running member system calls (1 to 64; default: per member, the processors per member from 1 to 4). One member may hold at most its even share (N / members, at least 1), so with N at least the member count a stalled member holds up only the I/O that needs it.")
    var ioThreads: Int?

    @Flag(help: "Serve read-only: nothing is written to the members.")
    var readonly = false

    @Flag(help: "Assemble even a degraded array that was not shut down cleanly (data may be stale).")
    var force = false

    @Flag(help: ArgumentHelp(
        "Put every member behind a fault injector the control socket's `inject` verb drives (test rigs).",
        visibility: .hidden))
    var faultInjection = false

    @Argument(help: "Member files or block devices.")
    var members: [String]

    func validate() throws {
        guard sendBufferKib >= 0, sendBufferKib <= 1 << 20 else {
            throw ValidationError("--send-buffer-kib takes 0 (the system's default) to 1048576")
        }
        guard (0...Int(AdaptivePoll.limitNanos / 1000)).contains(pollMaxUs) else {
            throw ValidationError("--poll-max-us takes 0 (never poll) to \(AdaptivePoll.limitNanos / 1000)")
        }
        if let ioThreads, !(1...64).contains(ioThreads) {
            throw ValidationError("--io-threads takes 1 to 64")
        }
    }

    func run() async throws {
        let address: NBDListenAddress
        if let socket {
            guard listen == nil else { throw failure("give --listen or --socket, not both") }
            address = .unix(path: socket)
        } else {
            let (host, port) = try hostAndPort(listen ?? "127.0.0.1:10809", option: "--listen")
            address = .tcp(host: host, port: port)
        }
        let metricsAddress = try metrics.map { try hostAndPort($0, option: "--metrics") }
        LoggingSystem.bootstrap { StreamLogHandler.standardError(label: $0) }
        var logger = Logger(label: "swraid")
        logger.logLevel = .info
        var serverOptions = NBDServerOptions()
        serverOptions.sendBufferBytes = sendBufferKib == 0 ? nil : sendBufferKib << 10
        serverOptions.sendfileReads = sendfile
        serverOptions.pollMaxNanos = UInt64(pollMaxUs) * 1000
        var options = EngineOptions()
        options.readOnly = readonly
        options.force = force
        options.ioThreads = ioThreads
        let bounds = serverOptions.coreBounds(maxBlockBytes: 32 << 20)
        options.config.maxRequestsInFlight = max(options.config.maxRequestsInFlight, bounds.requests)
        options.config.maxBytesInFlight = max(options.config.maxBytesInFlight, bounds.bytes)
        options.config.maxParkedItems = max(options.config.maxParkedItems, bounds.pieces)
        let engine: RaidEngine
        var injection: FaultInjection?
        let wrap: ([MemberDevice]) -> [MemberDevice] = { devices in
            let faults = FaultInjection(wrapping: devices)
            injection = faults
            return faults.devices
        }
        do { engine = try RaidEngine.assemble(paths: members, options: options, logger: logger, wrappingDevices: faultInjection ? wrap : nil) } catch {
            printError("\(error)")
            throw ExitCode(1)
        }
        injection?.limitHeld(perMember: engine.ioThreadsPerMember)
        let name = Run.reportName(engine.arrayName)
        let service = ArrayService(
            engine: engine, name: name, address: address, options: serverOptions, faultInjection: injection,
            controlPath: control ?? ControlServer.defaultPath(arrayName: name), metricsAddress: metricsAddress, logger: logger)
        // The service returns after a clean stop (a signal, or `swraid stop`): that ends the run.
        let configuration = ServiceGroupConfiguration(
            services: [.init(service: service, successTerminationBehavior: .gracefullyShutdownGroup)],
            gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
        let group = ServiceGroup(configuration: configuration)
        do {
            try await group.run()
        } catch {
            printError("\(error)")
            await engine.stop()
            throw ExitCode(1)
        }
    }

    /// The name md would give the array's device under /dev/md/: the set name without its
    /// "homehost:" prefix.
    static func reportName(_ setName: String) -> String {
        let name = setName.split(separator: ":", maxSplits: 1).last.map(String.init) ?? setName
        return name.isEmpty ? "swraid" : name
    }

    func hostAndPort(_ text: String, option: String) throws -> (String, Int) {
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]), (0...65535).contains(port) else {
            throw failure("\(option) takes HOST:PORT, not '\(text)'")
        }
        return (String(text[..<colon]), port)
    }

    func failure(_ message: String) -> Error {
        printError(message)
        return ExitCode(1)
    }
}

/// The running array as a service: serve over NBD and answer the control socket until the
/// graceful shutdown (SIGINT/SIGTERM) or a `stop` request, then stop cleanly.
struct ArrayService: Service {
    let engine: RaidEngine
    let name: String
    let address: NBDListenAddress
    let options: NBDServerOptions
    let faultInjection: FaultInjection?
    let controlPath: String
    let metricsAddress: (String, Int)?
    let logger: Logger

    func run() async throws {
        let stopRequested = StopSignal()
        let control = ControlService(engine: engine, name: name, faultInjection: faultInjection) { stopRequested.fire() }
        if faultInjection != nil { logger.warning("fault injection is on: `swraid inject` can fail this array's members") }
        let server: NBDServer
        let controlServer: ControlServer
        do {
            server = try await NBDServer.start(engine: engine, address: address, options: options, logger: logger)
        } catch {
            await engine.stop()
            throw CommandFailure(message: "cannot listen on \(address): \(error)")
        }
        do {
            controlServer = try await ControlServer.start(service: control, path: controlPath, logger: logger)
        } catch {
            await server.stop()
            await engine.stop()
            throw CommandFailure(message: "cannot open the control socket \(controlPath): \(error)")
        }
        var metricsServer: MetricsServer?
        if let (host, port) = metricsAddress {
            let metrics = ArrayMetrics(engine: engine, name: name, serverPolls: { await server.pollCounts() })
            await engine.setObserver(metrics)
            do {
                metricsServer = try await MetricsServer.start(metrics: metrics, host: host, port: port, logger: logger)
            } catch {
                await controlServer.stop()
                await server.stop()
                await engine.stop()
                throw CommandFailure(message: "cannot serve metrics on \(host):\(port): \(error)")
            }
        }
        var bound = address
        if case .tcp(let host, _) = address, let port = server.localAddress?.port { bound = .tcp(host: host, port: port) }
        logger.notice("serving \(name) (\(engine.sizeBytes) bytes) on \(bound), control socket \(controlPath)")
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                // Throws on cancellation: the other way to stop has been taken.
                try? await gracefulShutdown()
                stopRequested.fire()
            }
            await stopRequested.wait()
            group.cancelAll()
        }
        logger.notice("stopping: finishing requests in flight, marking the array clean")
        await metricsServer?.stop()
        await server.stop()
        await engine.stop()
        control.arrayStopped()
        await controlServer.stop()
        logger.notice("stopped")
    }
}
