import RaidSimulation
import Testing

@testable import RaidCore

/// The core's ID-keyed table against `Dictionary` as the reference: the same answers after every
/// operation of long random runs, including the ones that shift entries back on removal.
@Suite struct IDTableTests {
    /// Keys as the core issues them (rising, a window of them alive, the oldest lingering) and
    /// as stripes use them (any unit, clustered): both end up in runs of neighbouring slots.
    @Test(arguments: [UInt64(1), 2, 3])
    func anIDTableAnswersAsADictionaryWouldThroughInsertsRemovalsAndGrowth(seed: UInt64) {
        var random = SimRandom(seed: seed)
        var table = IDTable<UInt64, Int>()
        var reference: [UInt64: Int] = [:]
        var nextID: UInt64 = 1
        for step in 0..<60_000 {
            let key: UInt64
            switch random.below(4) {
            case 0: key = nextID; nextID += 1  // a new ID
            case 1: key = nextID > 64 ? nextID - 1 - UInt64(random.below(64)) : UInt64(random.below(64))  // a recent one
            case 2: key = UInt64(random.below(4096)) * 8  // a stripe unit
            default: key = reference.isEmpty ? 0 : reference.keys.min()!  // the oldest alive
            }
            // Grow the population first, then let it shrink to empty and grow again.
            let insert = (step / 20_000) % 2 == 0 ? random.chance(0.6) : random.chance(0.35)
            let answer = insert ? table.updateValue(step, forKey: key) : table.removeValue(forKey: key)
            let expected = insert ? reference.updateValue(step, forKey: key) : reference.removeValue(forKey: key)
            let probe = UInt64(random.below(Int(nextID) + 4096 * 8))
            // The first difference says it all; stop there.
            guard answer == expected, table.count == reference.count, table[probe] == reference[probe] else {
                Issue.record("step \(step): \(insert ? "insert" : "remove") \(key) gave \(String(describing: answer)), not \(String(describing: expected)); count \(table.count) vs \(reference.count); lookup of \(probe) gave \(String(describing: table[probe])), not \(String(describing: reference[probe]))")
                return
            }
        }
        for (key, value) in reference { #expect(table[key] == value) }
        #expect(table.sortedByKey().map(\.key) == reference.keys.sorted())
        #expect(table.values.sorted() == reference.values.sorted())
        table.removeAll()
        #expect(table.isEmpty && table[reference.keys.first ?? 0] == nil)
    }
}
