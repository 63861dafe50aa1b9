import ArgumentParser
import DiskIO
import RaidMath


struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Benchmarks (figures, not tests).", subcommands: [ParityBench.self, EngineBench.self, CoreBench.self])
}

/// Intel ISA-L's parity functions, loaded at run time if the library is installed, so that both
/// are measured side by side in one process (`apt install libisal2`).
struct ISAL {
    typealias GenFunction = @convention(c) (Int32, Int32, UnsafeMutablePointer<UnsafeMutableRawPointer?>) -> Int32
    /// `ec_init_tables(k, rows, coefficients, tables)`.
    typealias InitTablesFunction = @convention(c) (Int32, Int32, UnsafeMutablePointer<UInt8>, UnsafeMutablePointer<UInt8>) -> Void
    /// `ec_encode_data(length, k, rows, tables, sources, outputs)`.
    typealias EncodeFunction = @convention(c) (
        Int32, Int32, Int32, UnsafeMutablePointer<UInt8>, UnsafeMutablePointer<UnsafeMutableRawPointer?>,
        UnsafeMutablePointer<UnsafeMutableRawPointer?>
    ) -> Void
    let xorGen: GenFunction
    let pqGen: GenFunction
    let ecInitTables: InitTablesFunction
    let ecEncodeData: EncodeFunction

    static func load() -> ISAL? {
        guard let library = DynamicLibrary(names: ["libisal.so.2", "libisal.so"]),
            let x = library.symbol("xor_gen"), let pq = library.symbol("pq_gen"),
            let initTables = library.symbol("ec_init_tables"), let encode = library.symbol("ec_encode_data")
        else { return nil }
        return ISAL(
            xorGen: unsafeBitCast(x, to: GenFunction.self), pqGen: unsafeBitCast(pq, to: GenFunction.self),
            ecInitTables: unsafeBitCast(initTables, to: InitTablesFunction.self),
            ecEncodeData: unsafeBitCast(encode, to: EncodeFunction.self))
    }
}

struct ParityBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "parity",
        abstract: "GB/s of data processed by XOR and P+Q, beside ISA-L when installed.",
        discussion: """
            Same method as shared/tools/perf/parity_bench.c: each figure is the median of 5 \
            trials of at least 0.3 s, swraid's and ISA-L's alternating; "1 GiB" walks stripes \
            laid out over a 1 GiB arena. Parity is stored non-temporally, as ISA-L stores it. \
            Build with -c release.
            """)

    @Flag(help: "Shorter trials and a 256 MiB working set (a smoke run, figures less stable).")
    var quick = false

    @Flag(name: .customLong("no-isal"), help: "Do not load ISA-L even if it is installed.")
    var noISAL = false

    @Option(help: "Only these operations: xor, pq, rec (default all).")
    var only: String?

    @Option(help: "Only this working set: cache or memory (default both).")
    var workingSet: String?

    @Option(help: "Kernel build to measure: baseline, avx2 or avx512 (default: the best this CPU runs).")
    var kernel: String?

    /// XOR parity, P+Q, and RAID6's recovery of two lost data blocks from the other data, P and Q
    /// (against ISA-L's general `ec_encode_data` with two output rows, how ISA-L users recover).
    enum Kind: String { case xor, pq, rec }

    func run() throws {
        try failingCleanly { try measure() }
    }

    func measure() throws {
        let arenaBytes = quick ? 256 << 20 : 1 << 30
        let minSeconds = quick ? 0.05 : 0.3
        let trials = quick ? 3 : 5
        let isal = noISAL ? nil : ISAL.load()
        let tier = try kernel.map { name in
            guard let t = ParityKernelTier(rawValue: name) else {
                throw CommandFailure(message: "unknown kernel '\(name)'; known: \(ParityKernelTier.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            guard t.isSupported else { throw CommandFailure(message: "this CPU cannot run the \(t) kernels") }
            return t
        } ?? ParityKernelTier.best
        #if DEBUG
        printError("warning: debug build; run `swift run -c release swraid bench parity` for real figures")
        #endif
        let arena = UnsafeMutableRawPointer.allocate(byteCount: arenaBytes + (4 << 20), alignment: 4096)
        defer { arena.deallocate() }
        // Non-trivial contents, as parity_bench.c fills its arena.
        let words = arena.bindMemory(to: UInt64.self, capacity: (arenaBytes + (4 << 20)) / 8)
        for i in 0..<((arenaBytes + (4 << 20)) / 8) { words[i] = UInt64(i) &* 0x9E37_79B9_7F4A_7C15 }

        print("# swraid bench parity: GB/s of data bytes in, one core, median of \(trials) alternating trials")
        print("# swraid kernels: \(tier) (best on this CPU: \(ParityKernelTier.best))")
        print("# ISA-L: \(isal == nil ? "not found (apt install libisal2 to compare)" : "loaded (libisal.so.2)")")
        let header = ["operation", "chunk", "working set", "swraid", "ISA-L", "ratio", "target"]
        print(row(header))
        let cases: [(Kind, Int)] = [(.xor, 4), (.xor, 8), (.pq, 4), (.pq, 8), (.rec, 4)]
        let sets: [Bool] = workingSet == "cache" ? [false] : workingSet == "memory" ? [true] : [false, true]
        for outOfCache in sets {
            for chunk in [64 << 10, 512 << 10] {
                for (kind, k) in cases where only == nil || only == kind.rawValue {
                    // Trials alternate between the two so that machine noise falls on both alike.
                    let run = { (lib: ISAL?) in
                        trial(kind: kind, k: k, chunk: chunk, outOfCache: outOfCache, arena: arena, arenaBytes: arenaBytes, minSeconds: minSeconds, isal: lib, tier: tier)
                    }
                    _ = run(nil)
                    if let isal { _ = run(isal) }
                    var oursRuns: [Double] = []
                    var theirRuns: [Double] = []
                    for _ in 0..<trials {
                        oursRuns.append(run(nil))
                        if let isal { theirRuns.append(run(isal)) }
                    }
                    let ours = median(oursRuns)
                    let theirs = isal == nil ? nil : median(theirRuns)
                    let ratio = theirs.map { formatFixed(ours / $0, digits: 2) } ?? "-"
                    let target = outOfCache ? ">=0.90" : ">=0.60"
                    let name = kind == .xor ? "xor \(k)+1" : kind == .pq ? "p+q \(k)+2" : "rec \(k)+2"
                    print(row([
                        name, "\(chunk >> 10)K",
                        outOfCache ? "\(arenaBytes >> 20) MiB" : "in cache", formatFixed(ours, digits: 1),
                        theirs.map { formatFixed($0, digits: 1) } ?? "-", ratio, target,
                    ]))
                    Terminal.flushStandardOutput()
                }
            }
        }
    }

    func row(_ cells: [String]) -> String {
        let widths = [11, 6, 12, 8, 8, 6, 7]
        return zip(cells, widths).map { cell, width in cell.padding(toLength: width) }.joined(separator: " ")
    }

    func median(_ values: [Double]) -> Double { values.sorted()[values.count / 2] }

    /// One trial: stripes of k data chunks followed by their parity, walked until `minSeconds`.
    func trial(
        kind: Kind, k: Int, chunk: Int, outOfCache: Bool, arena: UnsafeMutableRawPointer, arenaBytes: Int,
        minSeconds: Double, isal: ISAL?, tier: ParityKernelTier
    ) -> Double {
        let parityCount = kind == .xor ? 1 : 2
        let stripeBytes = (k + parityCount) * chunk
        let stripes = outOfCache ? arenaBytes / stripeBytes : 1
        let sources = UnsafeMutableBufferPointer<UnsafeRawPointer>.allocate(capacity: k)
        let all = UnsafeMutablePointer<UnsafeMutableRawPointer?>.allocate(capacity: k + 2)
        let outputs = UnsafeMutablePointer<UnsafeMutableRawPointer?>.allocate(capacity: 2)
        // Recovery: data blocks 0 and 1 are lost. ISA-L gets the survivors (data 2..k-1, P, Q) and
        // a 2-row matrix (its decode matrix's shape; the speed does not depend on the values).
        let coefficients = UnsafeMutablePointer<UInt8>.allocate(capacity: 2 * k)
        let tables = UnsafeMutablePointer<UInt8>.allocate(capacity: 32 * 2 * k)
        let scratch = ParityScratch(byteCount: chunk)
        defer { sources.deallocate(); all.deallocate(); outputs.deallocate(); coefficients.deallocate(); tables.deallocate() }
        if kind == .rec, let isal {
            for i in 0..<(2 * k) { coefficients[i] = UInt8(truncatingIfNeeded: 3 &+ i &* 29) }
            isal.ecInitTables(Int32(k), 2, coefficients, tables)
        }
        let start = monotonicSeconds()
        var elapsed = 0.0
        var ops = 0
        repeat {
            for s in 0..<stripes {
                let base = arena + s * stripeBytes
                if kind == .rec {
                    let block = { (i: Int) in base + i * chunk }
                    if let isal {
                        for i in 0..<k { all[i] = block(i + 2) }
                        outputs[0] = block(0)
                        outputs[1] = block(1)
                        isal.ecEncodeData(Int32(chunk), Int32(k), 2, tables, all, outputs)
                    } else {
                        // Two data blocks lost: cannot throw (two is what RAID6 tolerates).
                        try! Parity.reconstructRAID6(
                            slots: (0..<k).map(block), p: block(k), q: block(k + 1), lost: [.data(slot: 0), .data(slot: 1)],
                            byteCount: chunk, scratch: scratch, tier: tier)
                    }
                } else if let isal {
                    for i in 0..<(k + parityCount) { all[i] = base + i * chunk }
                    _ = kind == .xor
                        ? isal.xorGen(Int32(k + 1), Int32(chunk), all) : isal.pqGen(Int32(k + 2), Int32(chunk), all)
                } else {
                    for i in 0..<k { sources[i] = UnsafeRawPointer(base + i * chunk) }
                    if kind == .xor {
                        xorKernel(UnsafeBufferPointer(sources), into: base + k * chunk, byteCount: chunk, nonTemporal: outOfCache, tier: tier)
                    } else {
                        pqKernel(UnsafeBufferPointer(sources), p: base + k * chunk, q: base + (k + 1) * chunk, byteCount: chunk, nonTemporal: outOfCache, tier: tier)
                    }
                }
                ops += 1
            }
            elapsed = monotonicSeconds() - start
        } while elapsed < minSeconds
        return Double(ops * k * chunk) / elapsed / 1e9
    }
}

extension String {
    func padding(toLength width: Int) -> String {
        count >= width ? self : self + String(repeating: " ", count: width - count)
    }
}
