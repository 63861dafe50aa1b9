import ArgumentParser
import DiskIO
import Logging
import MDOffline
import RaidCore
import RaidEngine
import RaidSimulation

/// Writes to an array through the engine until killed, logging on standard output each write as
/// it is issued and as it is acknowledged, so that whoever kills it knows what must have
/// survived. Used by the SIGKILL crash tests; hidden from help.
///
/// Lines (each one write(2), so lines never interleave):
///   `ready SIZE`                  assembled; SIZE bytes of array
///   `W SEQ OFFSET LENGTH FUA`     about to submit write SEQ (FUA 0 or 1); its data is
///                                 `DataPattern.bytes(count: LENGTH, seed: SEQ)`
///   `A SEQ`                       write SEQ acknowledged
///   `F SEQ` / `FA SEQ`            flush SEQ submitted / acknowledged (it covers every write whose
///                                 `A` line came before its `F` line)
///   `E SEQ ERROR`                 request SEQ failed
/// In-flight writes never overlap, so each sector's writes are ordered.
struct StressWriter: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stress-writer", abstract: "Write to an array until killed, logging what was acknowledged (for crash tests).",
        shouldDisplay: false)

    @Option(help: "Seed for offsets, lengths and data.")
    var seed: UInt64 = 1

    @Option(name: .customLong("queue-depth"), help: "Requests in flight.")
    var queueDepth: Int = 8

    @Option(name: .customLong("max-kib"), help: "Largest write in KiB.")
    var maxKiB: Int = 256

    @Option(name: .customLong("fua-percent"), help: "Writes sent with FUA, in percent.")
    var fuaPercent: Int = 20

    @Option(name: .customLong("flush-percent"), help: "Requests that are flushes, in percent.")
    var flushPercent: Int = 5

    @Option(name: .customLong("first-seq"), help: "Number of the first request (keep numbers unique across runs).")
    var firstSeq: UInt64 = 1

    @Argument(help: "Member files or devices.")
    var members: [String]

    func run() async throws {
        var logger = Logger(label: "swraid")
        logger.logLevel = .error
        let engine: RaidEngine
        do { engine = try RaidEngine.assemble(paths: members, logger: logger) } catch {
            printError("\(error)")
            throw ExitCode(1)
        }
        let size = engine.sizeBytes
        emit("ready \(size)")
        var random = SimRandom(seed: seed)
        func next() -> UInt64 { random.next() }
        var seq = firstSeq
        var inFlight: [UInt64: Range<UInt64>] = [:]
        await withTaskGroup(of: UInt64.self) { group in
            while true {
                if inFlight.count >= queueDepth, let done = await group.next() { inFlight[done] = nil }
                seq += 1
                let id = seq
                if Int(next() % 100) < flushPercent {
                    emit("F \(id)")
                    group.addTask {
                        let result = await engine.perform(.flush)
                        emit(result == .done ? "FA \(id)" : "E \(id) \(result)")
                        return id
                    }
                    inFlight[id] = 0..<0
                    continue
                }
                let sectors = 1 + next() % UInt64(maxKiB * 2)
                let length = sectors * 512
                let offset = (next() % (size / 512 - sectors + 1)) * 512
                let range = offset..<(offset + length)
                if inFlight.values.contains(where: { $0.overlaps(range) }) { continue }
                let fua = Int(next() % 100) < fuaPercent
                let data = IOBuffer(DataPattern.bytes(count: Int(length), seed: id))
                emit("W \(id) \(offset) \(length) \(fua ? 1 : 0)")
                inFlight[id] = range
                group.addTask {
                    let result = await engine.perform(.write(offsetBytes: offset, data: data, fua: fua))
                    emit(result == .done ? "A \(id)" : "E \(id) \(result)")
                    return id
                }
            }
        }
    }
}

private func emit(_ line: String) { Terminal.write(line + "\n", to: Terminal.standardOutput) }
