import PropertyBased
import Testing

@testable import RaidMath

/// Owns page-aligned buffers for a stripe row, with helpers to read them back as arrays.
final class Row {
    let count: Int
    let byteCount: Int
    let buffers: [UnsafeMutableRawPointer]

    init(count: Int, byteCount: Int) {
        self.count = count
        self.byteCount = byteCount
        buffers = (0..<count).map { _ in UnsafeMutableRawPointer.allocate(byteCount: max(byteCount, 1), alignment: 64) }
    }

    deinit { buffers.forEach { $0.deallocate() } }

    func set(_ i: Int, _ bytes: [UInt8]) {
        precondition(bytes.count == byteCount)
        bytes.withUnsafeBytes { buffers[i].copyMemory(from: $0.baseAddress!, byteCount: byteCount) }
    }

    func get(_ i: Int) -> [UInt8] { Array(UnsafeRawBufferPointer(start: buffers[i], count: byteCount)) }

    func scribble(_ i: Int) { buffers[i].initializeMemory(as: UInt8.self, repeating: 0xA5, count: byteCount) }
}

/// Scalar references the SIMD kernels are checked against.
enum Reference {
    static func pq(_ slots: [[UInt8]]) -> (p: [UInt8], q: [UInt8]) {
        let n = slots[0].count
        var p = [UInt8](repeating: 0, count: n)
        var q = [UInt8](repeating: 0, count: n)
        for (slot, data) in slots.enumerated() {
            let g = GF256.pow2(slot)
            for i in 0..<n {
                p[i] ^= data[i]
                q[i] ^= GF256.mul(g, data[i])
            }
        }
        return (p, q)
    }
}

/// Deterministic bytes for a property-test case (the generator supplies the seed).
func pseudoRandomBytes(_ count: Int, seed: UInt64) -> [UInt8] {
    var state = seed
    return (0..<count).map { _ in
        state = state &* 6364136223846793005 &+ 1442695040888963407
        return UInt8(truncatingIfNeeded: state >> 33)
    }
}

@Suite struct ParityVectorTests {
    /// md-format.md §4.3: slot-ordered data and the P and Q mdadm's qsyndrome gives.
    @Test(arguments: [
        ([0x01, 0x02, 0x03, 0x04], 0x04, 0x29),
        ([0x5a, 0xc3, 0xff, 0x10, 0x80, 0x00], 0xf6, 0x72),
        ([0x80, 0x80, 0x80, 0x80], 0x00, 0xd3),
    ] as [([UInt8], UInt8, UInt8)])
    func syndromeVectors(data: [UInt8], p: UInt8, q: UInt8) {
        // Whole 64-byte blocks go through the SIMD path, the odd byte through the tail.
        let length = 129
        let row = Row(count: data.count + 2, byteCount: length)
        for (i, d) in data.enumerated() { row.set(i, [UInt8](repeating: d, count: length)) }
        Parity.pq(slots: (0..<data.count).map { UnsafeRawPointer(row.buffers[$0]) },
                  p: row.buffers[data.count], q: row.buffers[data.count + 1], byteCount: length)
        #expect(row.get(data.count) == [UInt8](repeating: p, count: length))
        #expect(row.get(data.count + 1) == [UInt8](repeating: q, count: length))
    }

    @Test func twoDataRecoveryVector() throws {
        // Lose slots 1 and 4 of 5a c3 ff 10 80 00: md-format.md gives c3 and 80 back.
        let data: [UInt8] = [0x5a, 0xc3, 0xff, 0x10, 0x80, 0x00]
        let row = Row(count: 8, byteCount: 64)
        for (i, d) in data.enumerated() { row.set(i, [UInt8](repeating: d, count: 64)) }
        row.set(6, [UInt8](repeating: 0xf6, count: 64))
        row.set(7, [UInt8](repeating: 0x72, count: 64))
        row.scribble(1)
        row.scribble(4)
        try Parity.reconstructRAID6(
            slots: Array(row.buffers[0..<6]), p: row.buffers[6], q: row.buffers[7],
            lost: [.data(slot: 1), .data(slot: 4)], byteCount: 64, scratch: ParityScratch())
        #expect(row.get(1) == [UInt8](repeating: 0xc3, count: 64))
        #expect(row.get(4) == [UInt8](repeating: 0x80, count: 64))
    }

    @Test func dataPlusPRecoveryVector() throws {
        let data: [UInt8] = [0x5a, 0xc3, 0xff, 0x10, 0x80, 0x00]
        let row = Row(count: 8, byteCount: 64)
        for (i, d) in data.enumerated() { row.set(i, [UInt8](repeating: d, count: 64)) }
        row.set(7, [UInt8](repeating: 0x72, count: 64))
        row.scribble(2)
        row.scribble(6)
        try Parity.reconstructRAID6(
            slots: Array(row.buffers[0..<6]), p: row.buffers[6], q: row.buffers[7],
            lost: [.data(slot: 2), .p], byteCount: 64, scratch: ParityScratch())
        #expect(row.get(2) == [UInt8](repeating: 0xff, count: 64))
        #expect(row.get(6) == [UInt8](repeating: 0xf6, count: 64))
    }

    @Test func tooManyLostIsRefused() {
        let row = Row(count: 5, byteCount: 64)
        #expect(throws: ParityError.tooManyLost(count: 3, tolerated: 2)) {
            try Parity.reconstructRAID6(
                slots: Array(row.buffers[0..<3]), p: row.buffers[3], q: row.buffers[4],
                lost: [.data(slot: 0), .p, .q], byteCount: 64, scratch: ParityScratch())
        }
    }
}

@Suite struct ParityPropertyTests {
    /// Lengths that exercise whole SIMD blocks, tails and tiny buffers.
    static let lengths = Gen.int(in: 1...1100)

    @Test func kernelsMatchScalarReference() async {
        await propertyCheck(count: 200, input: Gen.int(in: 1...16), Self.lengths, Gen.uint64()) { n, length, seed in
            let row = Row(count: n + 2, byteCount: length)
            var slots: [[UInt8]] = []
            for i in 0..<n {
                let bytes = pseudoRandomBytes(length, seed: seed &+ UInt64(i))
                slots.append(bytes)
                row.set(i, bytes)
            }
            let sources = (0..<n).map { UnsafeRawPointer(row.buffers[$0]) }
            Parity.pq(slots: sources, p: row.buffers[n], q: row.buffers[n + 1], byteCount: length)
            let expected = Reference.pq(slots)
            #expect(row.get(n) == expected.p)
            #expect(row.get(n + 1) == expected.q)
            Parity.xor(sources, into: row.buffers[n], byteCount: length)
            #expect(row.get(n) == expected.p)
            // The streaming-store paths (parity headed for a member write) give the same bytes.
            row.scribble(n)
            row.scribble(n + 1)
            Parity.pq(slots: sources, p: row.buffers[n], q: row.buffers[n + 1], byteCount: length, nonTemporal: true)
            #expect(row.get(n) == expected.p)
            #expect(row.get(n + 1) == expected.q)
            row.scribble(n)
            Parity.xor(sources, into: row.buffers[n], byteCount: length, nonTemporal: true)
            #expect(row.get(n) == expected.p)
        }
    }

    /// Every kernel build this CPU can run (baseline, AVX2 and AVX-512 where present) gives the
    /// reference bytes: all block sizes and tails, aligned and misaligned, cached and streaming.
    @Test(arguments: ParityKernelTier.allCases.filter(\.isSupported))
    func everyKernelTierMatchesTheReference(tier: ParityKernelTier) async {
        await propertyCheck(count: 150, input: Gen.int(in: 1...16), Gen.int(in: 1...1100), Gen.int(in: 0...3), Gen.uint64()) { n, length, skew, seed in
            let row = Row(count: n + 2, byteCount: length + 64)
            var slots: [[UInt8]] = []
            for i in 0..<n {
                let bytes = pseudoRandomBytes(length, seed: seed &+ UInt64(i))
                slots.append(bytes)
                bytes.withUnsafeBytes { (row.buffers[i] + skew).copyMemory(from: $0.baseAddress!, byteCount: length) }
            }
            let expected = Reference.pq(slots)
            let sources = (0..<n).map { UnsafeRawPointer(row.buffers[$0] + skew) }
            let p = row.buffers[n] + skew, q = row.buffers[n + 1] + skew
            func read(_ b: UnsafeMutableRawPointer) -> [UInt8] { Array(UnsafeRawBufferPointer(start: b, count: length)) }
            for streaming in [false, true] {
                row.scribble(n)
                row.scribble(n + 1)
                sources.withUnsafeBufferPointer { pqKernel($0, p: p, q: q, byteCount: length, nonTemporal: streaming, tier: tier) }
                #expect(read(p) == expected.p, "\(tier) p+q \(n) x \(length) skew \(skew)")
                #expect(read(q) == expected.q, "\(tier) p+q \(n) x \(length) skew \(skew)")
                row.scribble(n)
                sources.withUnsafeBufferPointer { xorKernel($0, into: p, byteCount: length, nonTemporal: streaming, tier: tier) }
                #expect(read(p) == expected.p, "\(tier) xor \(n) x \(length) skew \(skew)")
            }
        }
    }

    @Test func gfMultiplyAddMatchesScalar() async {
        await propertyCheck(count: 200, input: Gen.uint8(), Gen.uint8(), Self.lengths, Gen.uint64()) { a, b, length, seed in
            let x = pseudoRandomBytes(length, seed: seed)
            let y = pseudoRandomBytes(length, seed: seed ^ 0xFFFF)
            var out = [UInt8](repeating: 0, count: length)
            x.withUnsafeBytes { xp in
                y.withUnsafeBytes { yp in
                    out.withUnsafeMutableBytes { op in
                        gfMulAddKernel(a, xp.baseAddress!, b, yp.baseAddress!, into: op.baseAddress!, byteCount: length)
                    }
                }
            }
            #expect(out == (0..<length).map { GF256.mul(a, x[$0]) ^ GF256.mul(b, y[$0]) })
        }
    }

    /// The one-pass combine (RAID6 two-block recovery) in every kernel build this CPU runs, for
    /// 1 to 20 sources (past the AVX-512 build's on-stack tables) and one or two outputs, against
    /// byte-by-byte arithmetic.
    @Test(arguments: ParityKernelTier.allCases.filter(\.isSupported))
    func gfCombineMatchesScalar(tier: ParityKernelTier) async {
        await propertyCheck(count: 150, input: Gen.int(in: 1...20), Self.lengths, Gen.int(in: 1...2), Gen.uint64()) { n, length, rows, seed in
            let sources = (0..<n).map { pseudoRandomBytes(length, seed: seed &+ UInt64($0)) }
            var coefficients: [[UInt8]] = []
            for r in 0..<rows {
                coefficients.append((0..<n).map { s in UInt8(truncatingIfNeeded: (seed >> UInt64((s + 7 * r) % 56)) &+ UInt64(31 * s + r)) })
            }
            let row = Row(count: n + rows, byteCount: length)
            for (i, bytes) in sources.enumerated() { row.set(i, bytes) }
            let outputs = (0..<rows).map { row.buffers[n + $0] }
            let pointers = (0..<n).map { UnsafeRawPointer(row.buffers[$0]) }
            pointers.withUnsafeBufferPointer { gfCombineKernel($0, coefficients: coefficients, outputs: outputs, byteCount: length, tier: tier) }
            for r in 0..<rows {
                var expected = [UInt8](repeating: 0, count: length)
                for s in 0..<n {
                    for i in 0..<length { expected[i] ^= GF256.mul(coefficients[r][s], sources[s][i]) }
                }
                #expect(row.get(n + r) == expected, "\(tier) \(n) sources x \(length), row \(r)")
            }
        }
    }

    /// RAID5: any one lost block of a 3..16-member row is the XOR of the others.
    @Test func raid5RebuildsAnyOneBlock() async {
        await propertyCheck(count: 300, input: Gen.int(in: 3...16), Self.lengths, Gen.uint64(), Gen.int(in: 0...15)) { members, length, seed, pick in
            let row = Row(count: members, byteCount: length)
            var original: [[UInt8]] = []
            for i in 0..<(members - 1) {
                original.append(pseudoRandomBytes(length, seed: seed &+ UInt64(i)))
                row.set(i, original[i])
            }
            Parity.xor((0..<(members - 1)).map { UnsafeRawPointer(row.buffers[$0]) }, into: row.buffers[members - 1], byteCount: length)
            original.append(row.get(members - 1))
            let lost = pick % members
            row.scribble(lost)
            Parity.xor((0..<members).filter { $0 != lost }.map { UnsafeRawPointer(row.buffers[$0]) }, into: row.buffers[lost], byteCount: length)
            #expect(row.get(lost) == original[lost])
        }
    }

    /// RAID6: any one or two lost blocks (data+data, data+P, data+Q, P+Q) of a 4..16-member row.
    @Test func raid6RebuildsAnyTwoBlocks() async {
        await propertyCheck(count: 400, input: Gen.int(in: 4...16), Self.lengths, Gen.uint64(), Gen.int(in: 0...1000)) { members, length, seed, pick in
            let dataCount = members - 2
            let row = Row(count: members, byteCount: length)
            var original: [[UInt8]] = []
            for i in 0..<dataCount {
                original.append(pseudoRandomBytes(length, seed: seed &+ UInt64(i)))
                row.set(i, original[i])
            }
            let p = row.buffers[dataCount], q = row.buffers[dataCount + 1]
            Parity.pq(slots: (0..<dataCount).map { UnsafeRawPointer(row.buffers[$0]) }, p: p, q: q, byteCount: length)
            original.append(row.get(dataCount))
            original.append(row.get(dataCount + 1))
            // Pick one or two distinct blocks among data slots, P (index dataCount) and Q.
            let first = pick % members
            let second = (first + 1 + (pick / members) % (members - 1)) % members
            let lostIndices = pick % 3 == 0 ? [first] : [first, second]
            func block(_ i: Int) -> RAID6Block { i < dataCount ? .data(slot: i) : (i == dataCount ? .p : .q) }
            lostIndices.forEach(row.scribble)
            try Parity.reconstructRAID6(
                slots: Array(row.buffers[0..<dataCount]), p: p, q: q, lost: lostIndices.map(block),
                byteCount: length, scratch: ParityScratch())
            for i in 0..<members { #expect(row.get(i) == original[i], "block \(i) after losing \(lostIndices)") }
        }
    }

    /// The RAID6 check names the one corrupt block, whichever it is.
    @Test func raid6CheckLocatesOneCorruptBlock() async {
        await propertyCheck(count: 300, input: Gen.int(in: 4...16), Gen.int(in: 1...600), Gen.uint64(), Gen.int(in: 0...1000)) { members, length, seed, pick in
            let dataCount = members - 2
            let row = Row(count: members, byteCount: length)
            for i in 0..<dataCount { row.set(i, pseudoRandomBytes(length, seed: seed &+ UInt64(i))) }
            let slots = (0..<dataCount).map { UnsafeRawPointer(row.buffers[$0]) }
            let p = row.buffers[dataCount], q = row.buffers[dataCount + 1]
            Parity.pq(slots: slots, p: p, q: q, byteCount: length)
            let scratch = ParityScratch()
            #expect(ParityCheck.raid6(slots: slots, p: p, q: q, byteCount: length, scratch: scratch) == .consistent)
            let victim = pick % members
            var bytes = row.get(victim)
            bytes[pick % length] ^= UInt8(1 + pick % 255)
            row.set(victim, bytes)
            let expected: RAID6Block = victim < dataCount ? .data(slot: victim) : (victim == dataCount ? .p : .q)
            #expect(ParityCheck.raid6(slots: slots, p: p, q: q, byteCount: length, scratch: scratch) == .corrupt(expected))
        }
    }

    @Test func raid6CheckDoesNotBlameOneMemberForTwoCorruptions() {
        let row = Row(count: 6, byteCount: 256)
        for i in 0..<4 { row.set(i, pseudoRandomBytes(256, seed: UInt64(i))) }
        let slots = (0..<4).map { UnsafeRawPointer(row.buffers[$0]) }
        Parity.pq(slots: slots, p: row.buffers[4], q: row.buffers[5], byteCount: 256)
        var a = row.get(0)
        a[10] ^= 0x11
        row.set(0, a)
        var b = row.get(2)
        b[200] ^= 0x22
        row.set(2, b)
        #expect(ParityCheck.raid6(slots: slots, p: row.buffers[4], q: row.buffers[5], byteCount: 256, scratch: ParityScratch()) == .unlocatable)
    }

    @Test func raid5CheckSeesAFlippedBit() {
        let row = Row(count: 4, byteCount: 4096)
        for i in 0..<3 { row.set(i, pseudoRandomBytes(4096, seed: UInt64(i))) }
        let data = (0..<3).map { UnsafeRawPointer(row.buffers[$0]) }
        Parity.xor(data, into: row.buffers[3], byteCount: 4096)
        let scratch = ParityScratch()
        #expect(ParityCheck.raid5Consistent(data: data, p: row.buffers[3], byteCount: 4096, scratch: scratch))
        var bytes = row.get(1)
        bytes[4095] ^= 0x80
        row.set(1, bytes)
        #expect(!ParityCheck.raid5Consistent(data: data, p: row.buffers[3], byteCount: 4096, scratch: scratch))
    }
}

#if os(Linux) && arch(x86_64)
import Foundation

@Suite struct KernelTierTests {
    /// The CPUID probes agree with what the kernel reports: on a CPU with every AVX-512 feature
    /// the module is built for, the AVX-512 kernels are the ones that run; else, with AVX2, the
    /// AVX2 ones; else the baseline.
    @Test func probeAgreesWithProcCpuinfo() throws {
        let cpuinfo = try String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)
        guard let flagsLine = cpuinfo.split(separator: "\n").first(where: { $0.hasPrefix("flags") }) else { return }
        let flags = Set(flagsLine.split(separator: " ").map(String.init))
        let needed = ["avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512cd", "avx2", "bmi1", "bmi2", "fma", "movbe", "popcnt", "f16c", "abm"]
        let expected: ParityKernelTier = needed.allSatisfy(flags.contains) ? .avx512 : flags.contains("avx2") ? .avx2 : .baseline
        #expect(ParityKernelTier.best == expected, "cpu flags \(needed.filter { !flags.contains($0) }) missing; probe says \(ParityKernelTier.best)")
        #expect(ParityKernelTier.allCases.filter(\.isSupported).count == 1 + ParityKernelTier.allCases.firstIndex(of: expected)!)
    }
}
#endif
