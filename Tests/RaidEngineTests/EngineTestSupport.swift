import DiskIO
import Glibc
import Logging
import RaidMath
import MDFormat
import MDOffline
import RaidCore
import RaidEngine
import TestSupport
import Testing

/// Makes an array of new (sparse, all-zero) member files the way `swraid create` does.
func makeArray(
    in dir: TemporaryDirectory, level: RaidLevel, disks: Int, memberMiB: UInt64 = 8, chunkKiB: UInt64 = 64, bitmap: Bool = true,
    prefix: String = "m"
) throws -> [String] {
    var request = CreateRequest(
        level: level, raidDisks: disks, memberSizesSectors: [], arrayUUID: (0..<16).map { UInt8($0 * 7 + 1) },
        deviceUUIDs: (0..<disks).map { i in (0..<16).map { UInt8(truncatingIfNeeded: $0 + i * 16 + 3) } }, timeSeconds: 1_764_000_000)
    request.chunkKiB = chunkKiB
    request.sizeSectors = memberMiB * 2048
    request.bitmap = bitmap ? .internal_ : .none
    request.bitmapChunkBytes = bitmap ? 1 << 20 : nil
    request.name = "enginetest"
    request.homehost = "test"
    let paths = (0..<disks).map { dir.file("\(prefix)\($0).img") }
    try ArrayCreator(paths: paths, request: request, options: CreateOptions()).run()
    return paths
}

/// A logger that drops everything (tests look at state, not at log lines).
let quietLogger: Logger = {
    var l = Logger(label: "swraid-test", factory: { _ in SwiftLogNoOpLogHandler() })
    l.logLevel = .critical
    return l
}()

/// Options for test engines: small stripe cache, the members' locks taken as in production.
func testOptions(readOnly: Bool = false) -> EngineOptions {
    var o = EngineOptions()
    o.readOnly = readOnly
    o.ioThreads = 4
    return o
}

/// The expected content of an array, sector by sector: what was written, or, after a TRIM,
/// either what was there or zeros (TRIM may zero whole stripe units and leave the rest).
final class Shadow {
    var bytes: [UInt8]
    /// Sectors a TRIM touched: they may read as their old content or as zeros.
    var zeroOrOld: [Bool]

    init(sizeBytes: Int) {
        bytes = [UInt8](repeating: 0, count: sizeBytes)
        zeroOrOld = [Bool](repeating: false, count: sizeBytes / 512)
    }

    func write(_ offset: Int, _ data: IOBuffer) {
        bytes.withUnsafeMutableBytes { $0.baseAddress!.advanced(by: offset).copyMemory(from: data.baseAddress, byteCount: data.count) }
        for s in (offset / 512)..<((offset + data.count) / 512) { zeroOrOld[s] = false }
    }

    func zero(_ offset: Int, _ length: Int) {
        bytes.replaceSubrange(offset..<(offset + length), with: [UInt8](repeating: 0, count: length))
        for s in (offset / 512)..<((offset + length) / 512) { zeroOrOld[s] = false }
    }

    func trim(_ offset: Int, _ length: Int) {
        for s in (offset / 512)..<((offset + length) / 512) { zeroOrOld[s] = true }
    }

    /// The first sector of `data` (read at `offset`) that is not allowed, or nil. (memcmp: the
    /// tests compare whole arrays, and this target is not optimised.)
    func firstMismatch(_ offset: Int, _ data: UnsafeRawBufferPointer) -> Int? {
        bytes.withUnsafeBytes { expected in
            if memcmp(expected.baseAddress! + offset, data.baseAddress!, data.count) == 0 { return nil }
            for i in stride(from: 0, to: data.count, by: 512) {
                let s = (offset + i) / 512
                if memcmp(expected.baseAddress! + offset + i, data.baseAddress! + i, 512) == 0 { continue }
                if zeroOrOld[s] && bufferIsZero(data.baseAddress! + i, byteCount: 512) { continue }
                return s
            }
            return nil
        }
    }

    func firstMismatch(_ offset: Int, _ data: IOBuffer) -> Int? { data.withUnsafeBytes { firstMismatch(offset, $0) } }

    func firstMismatch(_ offset: Int, _ data: [UInt8]) -> Int? { data.withUnsafeBytes { firstMismatch(offset, $0) } }
}

/// Seeded choices for workloads.
struct TestRandom {
    var state: UInt64
    mutating func next() -> UInt64 {
        state = MDPattern.splitmix64(state)
        return state
    }
    mutating func below(_ n: Int) -> Int { Int(next() % UInt64(n)) }
}

/// Random reads, writes (some FUA), flushes, trims and write-zeroes through the engine, in waves
/// of up to `queueDepth` requests that never overlap each other; every read is checked against
/// the shadow when its wave ends. Returns the number of requests.
@discardableResult
func runWorkload(_ engine: RaidEngine, shadow: Shadow, seed: UInt64, requests: Int, queueDepth: Int = 8) async throws -> Int {
    var random = TestRandom(state: seed)
    let size = Int(engine.sizeBytes)
    let rowBytes = Int(engine.geometry.rowDataSectors * 512)
    var done = 0
    var writeSeed = seed &* 1000
    while done < requests {
        var wave: [(ClientRequest, Int, Int)] = []
        var taken: [Range<Int>] = []
        for _ in 0..<queueDepth {
            let kind = random.below(100)
            var length = 512 * (1 + random.below(random.below(4) == 0 ? 512 : 32))
            if random.below(8) == 0 { length = rowBytes * (1 + random.below(2)) }
            length = min(length, size)
            var offset = 512 * random.below((size - length) / 512 + 1)
            if kind >= 90 { offset = offset / rowBytes * rowBytes; length = min(rowBytes, size - offset) }
            let range = offset..<(offset + length)
            if taken.contains(where: { $0.overlaps(range) }) { continue }
            taken.append(range)
            let request: ClientRequest
            switch kind {
            case 0..<40: request = .read(offsetBytes: UInt64(offset), length: length)
            case 40..<75:
                writeSeed &+= 1
                request = .write(offsetBytes: UInt64(offset), data: IOBuffer(pseudoRandomData(length, seed: writeSeed)), fua: random.below(4) == 0)
            case 75..<82: request = .flush
            case 82..<90: request = .writeZeroes(offsetBytes: UInt64(offset), length: length, fua: false)
            default: request = .trim(offsetBytes: UInt64(offset), length: length)
            }
            wave.append((request, offset, length))
        }
        let results = await withTaskGroup(of: (Int, ClientResult).self) { group in
            for (i, item) in wave.enumerated() {
                group.addTask { (i, await engine.perform(item.0)) }
            }
            var out = [ClientResult?](repeating: nil, count: wave.count)
            for await (i, r) in group { out[i] = r }
            return out.map { $0! }
        }
        for ((request, offset, length), result) in zip(wave, results) {
            switch (request, result) {
            case (.read, .data(let buffer)):
                if let bad = shadow.firstMismatch(offset, buffer) {
                    Issue.record("read \(offset)+\(length) returned wrong data at array sector \(bad)")
                    return done
                }
            case (.write(_, let data, _), .done): shadow.write(offset, data)
            case (.writeZeroes, .done): shadow.zero(offset, length)
            case (.trim, .done): shadow.trim(offset, length)
            case (.flush, .done): break
            default:
                Issue.record("\(request) failed: \(result)")
                return done
            }
        }
        done += wave.count
    }
    return done
}

/// Reads the whole array through the engine and compares it with the shadow.
func verifyWholeArray(_ engine: RaidEngine, _ shadow: Shadow, sourceLocation: SourceLocation = #_sourceLocation) async throws {
    let size = Int(engine.sizeBytes)
    var offset = 0
    let piece = 4 << 20
    while offset < size {
        let n = min(piece, size - offset)
        let data = try await engine.read(offsetBytes: UInt64(offset), length: n)
        if let bad = shadow.firstMismatch(offset, data) {
            Issue.record("array sector \(bad) reads wrong", sourceLocation: sourceLocation)
            return
        }
        offset += n
    }
}

/// The members' bytes as the offline tools see them (no engine): parity checked like md's
/// `check`, content compared with the shadow.
func verifyOffline(_ paths: [String], _ shadow: Shadow, sourceLocation: SourceLocation = #_sourceLocation) throws {
    let array = try OfflineArray(paths: paths)
    let report = try array.check()
    #expect(report.mismatchSectors == 0, "offline check: mismatch_cnt \(report.mismatchSectors)", sourceLocation: sourceLocation)
    var offset = 0
    try array.stream(sink: { chunk in
        if let bad = shadow.firstMismatch(offset, chunk) {
            Issue.record("offline read: array sector \(bad) is wrong", sourceLocation: sourceLocation)
        }
        offset += chunk.count
    })
}

/// Waits, on a thread of its own, until `gate` holds `count` I/Os. Not on the cooperative
/// pool: the I/O is submitted by a task (an `async let`) that needs one of the pool's threads
/// to start, and two tests blocking in `waitForWaiters` at once held both threads of a 2-core
/// machine, so that neither's I/O ever came (a clean-clone CI run hung so).
func waitUntilHeld(_ gate: FaultGate, _ count: Int) async {
    await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
        OSThread.start {
            gate.waitForWaiters(count)
            done.resume()
        }
    }
}
