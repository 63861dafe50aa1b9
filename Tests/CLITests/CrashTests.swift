import DiskIO
import Foundation
import Logging
import MDFormat
import MDOffline
import RaidCore
import RaidEngine
import TestSupport
import Testing

/// Engine options and a silent logger for the engines these tests run in-process.
private func testOptions() -> EngineOptions {
    var o = EngineOptions()
    o.ioThreads = 4
    return o
}

private let quietLogger = Logger(label: "swraid-test", factory: { _ in SwiftLogNoOpLogHandler() })

/// What a killed `swraid stress-writer` said it did: its writes in issue order, which were
/// acknowledged, and which are durable (acknowledged with FUA, or before an acknowledged flush
/// was submitted).
struct WriterLog {
    struct Write {
        let seq: UInt64
        let offset: Int
        let length: Int
        let fua: Bool
    }

    var size = 0
    var writes: [Write] = []
    var acked: Set<UInt64> = []
    var durable: Set<UInt64> = []
    /// Writes acknowledged so far, in order (a flush covers those before its `F` line).
    var ackedOrder: [UInt64] = []
    var flushCovers: [UInt64: Int] = [:]
    var errors: [String] = []

    mutating func take(_ line: Substring) {
        let f = line.split(separator: " ")
        guard let kind = f.first else { return }
        switch kind {
        case "ready": size = Int(f[1])!
        case "W": writes.append(Write(seq: UInt64(f[1])!, offset: Int(f[2])!, length: Int(f[3])!, fua: f[4] == "1"))
        case "A":
            let seq = UInt64(f[1])!
            acked.insert(seq)
            ackedOrder.append(seq)
            if writes.last(where: { $0.seq == seq })?.fua == true { durable.insert(seq) }
        case "F": flushCovers[UInt64(f[1])!] = ackedOrder.count
        case "FA":
            if let covered = flushCovers[UInt64(f[1])!] { durable.formUnion(ackedOrder[0..<covered]) }
        case "E": errors.append(String(line))
        default: break
        }
    }
}

/// The engine killed with SIGKILL in the middle of writes, over and over on the same members:
/// every acknowledged durable write reads back intact, nothing it did not write changed, the
/// resync md would run runs, and a check then finds nothing. (SIGKILL kills the process, not the
/// machine: the page cache keeps every completed member write. Power loss, where FUA and flush
/// matter, is the simulator's crash scenario.)
@Suite(.serialized) struct SIGKILLTests {
    @Test func sigkillLosesNoAcknowledgedWriteAndLeavesTheRestAlone() async throws {
        let dir = TemporaryDirectory()
        let paths = try makeCrashArray(dir)
        // What the array held before each run (all zeros after create).
        var baseline: [UInt8]? = nil
        var firstSeq: UInt64 = 1
        for (cycle, killAfterAcks) in [150, 900, 400].enumerated() {
            let log = try runAndKill(paths, seed: UInt64(cycle + 1), firstSeq: firstSeq, killAfterAcks: killAfterAcks)
            #expect(log.errors.isEmpty, "the writer saw errors: \(log.errors.prefix(3))")
            #expect(log.acked.count >= killAfterAcks)
            firstSeq = (log.writes.map(\.seq).max() ?? firstSeq) + 1_000_000
            if baseline == nil { baseline = [UInt8](repeating: 0, count: log.size) }
            let wasDirty = try paths.contains { !(try SuperblockProbe.probe(try MemberFile(path: $0, mode: .readOnly)).superblock.isClean) }
            let engine = try RaidEngine.assemble(paths: paths, options: testOptions(), logger: quietLogger)
            await engine.waitForSync()
            if wasDirty {
                // The array was killed dirty: md's resync (bitmap-limited here) ran before it went clean.
                #expect(try await engine.attribute("last_sync_action") == "resync", "cycle \(cycle)")
            }
            #expect(try await engine.attribute("resync_start") == "none")
            let content = try await engine.read(offsetBytes: 0, length: log.size).bytes
            try verify(content, against: log, baseline: baseline!, cycle: cycle)
            try await engine.set("sync_action", "check")
            await engine.waitForSync()
            #expect(try await engine.attribute("mismatch_cnt") == "0", "cycle \(cycle)")
            await engine.stop()
            baseline = content
        }
    }

    func makeCrashArray(_ dir: TemporaryDirectory) throws -> [String] {
        var request = CreateRequest(
            level: .raid6, raidDisks: 5, memberSizesSectors: [], arrayUUID: (0..<16).map { UInt8($0 + 40) },
            deviceUUIDs: (0..<5).map { i in (0..<16).map { UInt8(i * 16 + $0) } }, timeSeconds: 1_764_000_000)
        request.chunkKiB = 64
        request.sizeSectors = 8 * 2048
        request.bitmap = .internal_
        request.bitmapChunkBytes = 1 << 20
        let paths = (0..<5).map { dir.file("c\($0).img") }
        try ArrayCreator(paths: paths, request: request, options: CreateOptions()).run()
        return paths
    }

    /// Starts the writer, reads its log until `killAfterAcks` writes are acknowledged, kills it
    /// with SIGKILL, and returns everything it logged.
    func runAndKill(_ paths: [String], seed: UInt64, firstSeq: UInt64, killAfterAcks: Int) throws -> WriterLog {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: swraidExecutable)
        process.arguments = ["stress-writer", "--seed", String(seed), "--first-seq", String(firstSeq)] + paths
        let out = Pipe()
        process.standardOutput = out
        process.standardError = FileHandle.nullDevice
        try process.run()
        var log = WriterLog()
        var pending = Data()
        var killed = false
        let handle = out.fileHandleForReading
        while true {
            let chunk = handle.availableData
            if chunk.isEmpty { break }
            pending.append(chunk)
            while let newline = pending.firstIndex(of: UInt8(ascii: "\n")) {
                log.take(Substring(String(decoding: pending[pending.startIndex..<newline], as: UTF8.self)))
                pending.removeSubrange(pending.startIndex...newline)
            }
            if !killed && log.acked.count >= killAfterAcks {
                kill(process.processIdentifier, SIGKILL)
                killed = true
            }
        }
        process.waitUntilExit()
        #expect(killed && process.terminationReason == .uncaughtSignal && process.terminationStatus == SIGKILL, "the writer ended without being killed")
        return log
    }

    /// Every sector holds its last durable write, or a later write that may have landed (the
    /// writer never had two writes of one sector in flight, so each sector's writes are ordered).
    func verify(_ content: [UInt8], against log: WriterLog, baseline: [UInt8], cycle: Int) throws {
        let sectors = content.count / 512
        var history = [[Int]](repeating: [], count: sectors)
        for (i, w) in log.writes.enumerated() {
            for s in (w.offset / 512)..<((w.offset + w.length) / 512) { history[s].append(i) }
        }
        var dataCache: [Int: [UInt8]] = [:]
        func data(_ i: Int) -> [UInt8] {
            if let d = dataCache[i] { return d }
            let d = DataPattern.bytes(count: log.writes[i].length, seed: log.writes[i].seq)
            dataCache[i] = d
            return d
        }
        var checkedDurable = 0
        for s in 0..<sectors {
            let got = content[(s * 512)..<((s + 1) * 512)]
            if history[s].isEmpty {
                // Not written in this run: exactly what was there before.
                if !got.elementsEqual(baseline[(s * 512)..<((s + 1) * 512)]) {
                    Issue.record("cycle \(cycle): array sector \(s) changed though no write touched it")
                    return
                }
                continue
            }
            let lastDurable = history[s].lastIndex { log.durable.contains(log.writes[$0].seq) }
            var allowed = lastDurable.map { Array(history[s][$0...]) } ?? history[s]
            if lastDurable != nil { checkedDurable += 1 }
            let matches = allowed.contains { i in
                let w = log.writes[i]
                let at = s * 512 - w.offset
                return got.elementsEqual(data(i)[at..<(at + 512)])
            }
            if matches { continue }
            if lastDurable == nil && got.elementsEqual(baseline[(s * 512)..<((s + 1) * 512)]) { continue }
            allowed.removeAll()
            Issue.record("cycle \(cycle): array sector \(s) holds neither its durable write nor a later one (\(history[s].count) writes)")
            return
        }
        #expect(checkedDurable > 0, "no durable write to check")
    }
}
