import ArgumentParser
import CDiskIO
import Dispatch
import DiskIO
import RaidCore
import RaidSimulation

/// Results of parallel runs, in one place (the workers share nothing else).
final class SimTally: @unchecked Sendable {
    private let lock = ConditionLock()
    private(set) var runs = 0
    private(set) var failures = 0
    private(set) var events = 0
    private(set) var memberIOs = 0
    private(set) var failed: [(UInt64, String, SimResult, String)] = []
    private var nextIndex: UInt64 = 0

    /// The next seed (as an index into the range) for a worker that is free, or nil when all are
    /// taken. Handed out one at a time: a fixed split gave one worker the seeds whose fault
    /// profiles stall (the profile is the seed mod 4), and the other sat idle at the end.
    func claim(below count: UInt64) -> UInt64? {
        lock.lock()
        defer { lock.unlock() }
        guard nextIndex < count else { return nil }
        defer { nextIndex += 1 }
        return nextIndex
    }

    func add(_ result: SimResult, seed: UInt64, scenario: String, profile: String, verbose: Bool, single: Bool) -> Int {
        lock.lock()
        defer { lock.unlock() }
        runs += 1
        events += result.events
        memberIOs += result.memberIOs
        if let failure = result.failure {
            failures += 1
            print("FAIL seed \(seed) scenario \(scenario) faults \(profile): \(failure)")
            if single || failures <= 3 { for line in result.report { print("  " + line) } }
            failed.append((seed, scenario, result, profile))
        } else if verbose || single {
            print("ok   seed \(seed) scenario \(scenario) faults \(profile): \(result.events) events, \(result.memberIOs) member I/Os, \(formatTime(result.simulatedNanos)) simulated, trace \(String(result.traceHash, radix: 16))")
            // What the checkers counted (the way to pick a regression seed for a rare path).
            if !result.stats.isEmpty {
                print("     " + result.stats.sorted { $0.key < $1.key }.map { "\($0.key): \($0.value)" }.joined(separator: ", "))
            }
        }
        return runs
    }
}

struct Sim: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Deterministic simulation: drive the array core through seeded runs with faults and crashes.",
        discussion: """
            Each seed is run twice and the two traces compared. A failing seed prints the seed, \
            the requests still waiting and the last events before the failure, so it can be \
            replayed with --seed.
            """)

    @Option(help: "One seed to run (prints its details).")
    var seed: UInt64?

    @Option(help: "A range of seeds, A..B (inclusive).")
    var seeds: String = "1..100"

    @Option(help: "Scenario: \(Scenarios.names.joined(separator: ", ")) or all.")
    var scenario: String = "all"

    @Option(help: "Fault profile: none, latency, errors, all (default: a mix across seeds).")
    var faults: String?

    @Option(help: "Run a deliberately broken core (for checker tests): \(SimVariants.names.joined(separator: ", ")).")
    var variant: String?

    @Flag(help: "Print one line per run, not only failures.")
    var verbose = false

    @Flag(help: "With --seed: print every event of the run as it happens.")
    var trace = false

    @Flag(name: .customLong("no-determinism"), help: "Run each seed once (skip the replay comparison).")
    var noDeterminism = false

    @Option(help: "Seeds run in parallel (default: one per CPU).")
    var jobs: Int?

    @Option(help: "What to simulate: swraid (the array core), md-5.4 or md-6.9 (models of md's protocol; seed scenario only).")
    var model: String = "swraid"

    @Flag(help: "With an md model: write 'active' to array_state after 3 s of write-pending (the field's escape).")
    var escape = false

    func run() throws {
        try failingCleanly {
            let range: ClosedRange<UInt64>
            if let seed {
                range = seed...seed
            } else {
                let parts = seeds.split(separator: ".", omittingEmptySubsequences: true)
                guard parts.count == 2, let a = UInt64(parts[0]), let b = UInt64(parts[1]), a <= b else {
                    throw CommandFailure(message: "--seeds takes A..B, like 1..1000")
                }
                range = a...b
            }
            if model != "swraid" {
                guard let version = MDModelVersion(rawValue: model) else {
                    throw CommandFailure(message: "unknown model '\(model)'; known: swraid, md-5.4, md-6.9")
                }
                guard scenario == "seed" || scenario == "all" else {
                    throw CommandFailure(message: "the md models run the seed scenario only")
                }
                try runModel(version, seeds: range)
                return
            }
            let scenarios = scenario == "all" ? Scenarios.names : [scenario]
            guard scenarios.allSatisfy({ Scenarios.names.contains($0) }) else {
                throw CommandFailure(message: "unknown scenario '\(scenario)'; known: \(Scenarios.names.joined(separator: ", ")), all")
            }
            if let faults, FaultProfile.named(faults) == nil {
                throw CommandFailure(message: "unknown fault profile '\(faults)'; known: none, latency, errors, all")
            }
            let broken: FaultyCoreVariant
            if let variant {
                guard let v = SimVariants.named(variant) else {
                    throw CommandFailure(message: "unknown variant '\(variant)'; known: \(SimVariants.names.joined(separator: ", "))")
                }
                broken = v
            } else {
                broken = []
            }
            // Each run allocates and frees its members' images (up to a few MiB): keep them in
            // malloc's heap rather than a fresh mmap each time, whose pages fault in one by one
            // and whose munmap interrupts the other worker's CPU to flush its TLB.
            swraid_keep_heap(64 << 20, 256 << 20)
            let start = monotonicSeconds()
            let total = UInt64(range.count) * UInt64(scenarios.count)
            let bar = range.count > 1 ? ProgressBar(action: "sim", countsSectors: false, items: "runs") : nil
            let tally = SimTally()
            let workers = max(1, min(jobs ?? Host.processorCount(), 64))
            let lower = range.lowerBound
            let count = UInt64(range.count)
            let single = seed != nil
            let (verboseOutput, traceOn, replay, faultsName) = (verbose, trace, !noDeterminism, faults)
            let barLock = ConditionLock()
            nonisolated(unsafe) let progressBar = bar
            DispatchQueue.concurrentPerform(iterations: workers) { _ in
                while let index = tally.claim(below: count) {
                    let s = lower + index
                    for name in scenarios {
                        let profile = faultsName.flatMap(FaultProfile.named) ?? SimVariants.defaultProfile(seed: s)
                        let result = SimRunner.run(
                            seed: s, scenario: name, faults: profile, variant: broken, checkDeterminism: replay && !traceOn,
                            trace: traceOn && single ? { print($0) } : nil)
                        let done = tally.add(result, seed: s, scenario: name, profile: profile.name, verbose: verboseOutput, single: single)
                        barLock.lock()
                        progressBar?.update(done: UInt64(done), total: total)
                        barLock.unlock()
                    }
                }
            }
            let runs = tally.runs
            let failures = tally.failures
            let events = tally.events
            let memberIOs = tally.memberIOs
            bar?.finish()
            let elapsed = max(monotonicSeconds() - start, 1e-9)
            let seedsPerSecond = Double(range.count) / elapsed
            // As with the events, the member I/Os are each run's first pass: a replay (the
            // determinism check) does the same I/O again inside the time measured.
            let memberIOsPerSecond = Double(memberIOs) / elapsed
            print("\(runs) runs (\(range.count) seeds x \(scenarios.count) scenarios\(noDeterminism ? "" : ", each replayed"), \(workers) jobs), \(failures) failures, \(events) events, \(memberIOs) member I/Os, \(formatFixed(elapsed, digits: 1)) s, \(formatFixed(seedsPerSecond, digits: 1)) seeds/s, \(formatFixed(memberIOsPerSecond / 1000, digits: 1)) k member I/Os/s")
            if failures > 0 { throw ExitCode(1) }
        }
    }

    /// Runs an md protocol model over the seeds; stops at the first hang and explains it.
    func runModel(_ version: MDModelVersion, seeds: ClosedRange<UInt64>) throws {
        let start = monotonicSeconds()
        var runs = 0
        var events = 0
        var escapes = 0
        for s in seeds {
            let outcome = MDModelRunner.run(seed: s, version: version, escape: escape)
            runs += 1
            events += outcome.events
            escapes += outcome.escapes
            if let failure = outcome.failure {
                let elapsed = monotonicSeconds() - start
                print("HANG seed \(s) model \(version.rawValue) scenario seed: \(failure)")
                print("found after \(runs) seed\(runs == 1 ? "" : "s") in \(formatFixed(elapsed, digits: 3)) s of wall time (\(formatTime(outcome.simulatedNanos)) simulated)")
                print("wait-for cycle:")
                for line in outcome.cycle { print("  " + line) }
                print("monitor (elapsed, sync_action, sync_completed, array_state, stripe_cache_active):")
                for line in outcome.monitor { print("  " + line) }
                throw ExitCode(1)
            }
            if verbose { print("ok   seed \(s) model \(version.rawValue): \(outcome.events) events, \(outcome.escapes) escapes, \(outcome.stats.sorted { $0.key < $1.key })") }
        }
        let elapsed = monotonicSeconds() - start
        print("\(runs) runs of model \(version.rawValue) (seed scenario\(escape ? ", escape enabled" : "")), 0 hangs, \(escapes) escapes, \(events) events, \(formatFixed(elapsed, digits: 1)) s")
    }
}
