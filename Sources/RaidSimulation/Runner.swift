import RaidCore

/// Runs seeds: each run twice, trace hashes compared (one seed replays one run exactly).
public enum SimRunner {
    package static func run(
        seed: UInt64, scenario name: String, faults: FaultProfile, variant: FaultyCoreVariant = [], checkDeterminism: Bool = true,
        trace: ((String) -> Void)? = nil
    ) -> SimResult {
        func once() -> SimResult {
            guard let scenario = Scenarios.make(name) else { preconditionFailure("unknown scenario \(name)") }
            do {
                let sim = try Simulation(seed: seed, scenario: scenario, faults: faults, variant: variant)
                sim.traceSink = trace
                return sim.run()
            } catch {
                return SimResult(
                    seed: seed, scenario: name, failure: SimFailure(kind: .invariant, message: "setting up the run failed: \(error)"),
                    traceHash: 0, events: 0, memberIOs: 0, simulatedNanos: 0, report: [], stats: [:])
            }
        }
        let first = once()
        guard checkDeterminism else { return first }
        let second = once()
        if first.traceHash != second.traceHash && first.failure == nil {
            return SimResult(
                seed: seed, scenario: name,
                failure: SimFailure(kind: .determinism, message: "two runs of seed \(seed) diverged (trace \(String(first.traceHash, radix: 16)) vs \(String(second.traceHash, radix: 16)))"),
                traceHash: first.traceHash, events: first.events, memberIOs: first.memberIOs, simulatedNanos: first.simulatedNanos, report: first.report, stats: first.stats)
        }
        return first
    }
}

/// Names for the deliberately broken cores, and the default fault mix.
package enum SimVariants {
    package static let all: [(String, FaultyCoreVariant)] = [
        ("defer-superblock-while-stop-pending", .deferSuperblockWhileStopPending),
        ("write-before-dirty-superblock", .writeBeforeDirtySuperblock),
        ("flush-without-member-flush", .flushWithoutMemberFlush),
        ("mismatch-count-in-sectors-of-one", .mismatchCountInSectorsOfOne),
        ("skip-parity-on-partial-write", .skipParityOnPartialWrite),
        ("wrong-reconstruction", .wrongReconstruction),
    ]

    package static var names: [String] { all.map(\.0) }

    package static func named(_ name: String) -> FaultyCoreVariant? { all.first { $0.0 == name }?.1 }

    /// Seeds cycle through the fault profiles so that a seed range covers all of them.
    package static func defaultProfile(seed: UInt64) -> FaultProfile {
        [FaultProfile.none, .latency, .errors, .all][Int(seed % 4)]
    }
}
