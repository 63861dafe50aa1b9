import ArgumentParser
import RaidCore
import RaidSimulation

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
            let start = monotonicSeconds()
            var runs = 0
            var failures = 0
            var events = 0
            let total = UInt64(range.count) * UInt64(scenarios.count)
            let bar = range.count > 1 ? ProgressBar(action: "sim", countsSectors: false) : nil
            for s in range {
                for name in scenarios {
                    let profile = faults.flatMap(FaultProfile.named) ?? SimVariants.defaultProfile(seed: s)
                    let result = SimRunner.run(
                        seed: s, scenario: name, faults: profile, variant: broken, checkDeterminism: !noDeterminism && !trace,
                        trace: trace && seed != nil ? { print($0) } : nil)
                    runs += 1
                    events += result.events
                    if let failure = result.failure {
                        failures += 1
                        print("FAIL seed \(s) scenario \(name) faults \(profile.name): \(failure)")
                        if seed != nil || failures <= 3 { for line in result.report { print("  " + line) } }
                    } else if verbose || seed != nil {
                        print("ok   seed \(s) scenario \(name) faults \(profile.name): \(result.events) events, \(formatTime(result.simulatedNanos)) simulated, trace \(String(result.traceHash, radix: 16))")
                    }
                    bar?.update(done: UInt64(runs), total: total)
                }
            }
            bar?.finish()
            let elapsed = monotonicSeconds() - start
            let seedsPerSecond = Double(range.count) / max(elapsed, 1e-9)
            print("\(runs) runs (\(range.count) seeds x \(scenarios.count) scenarios\(noDeterminism ? "" : ", each replayed")), \(failures) failures, \(events) events, \(formatFixed(elapsed, digits: 1)) s, \(formatFixed(seedsPerSecond, digits: 1)) seeds/s")
            if failures > 0 { throw ExitCode(1) }
        }
    }
}
