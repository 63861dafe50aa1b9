import TestSupport
import Testing

@testable import MDFormat

/// md-format.md §3.5's worked tables (cross-checked there against mdadm's geo_map): per row, the
/// chunk each disk holds, then for RAID6 the data chunks in Q-syndrome slot order.
let workedLayoutTables: [(level: Int32, layout: UInt32, disks: Int, rows: [String])] = [
        (5, 0, 4, ["D0 D1 D2 P|", "D0 D1 P D2|", "D0 P D1 D2|", "P D0 D1 D2|"]),
        (5, 0, 5, ["D0 D1 D2 D3 P|", "D0 D1 D2 P D3|", "D0 D1 P D2 D3|", "D0 P D1 D2 D3|", "P D0 D1 D2 D3|"]),
        (5, 1, 4, ["P D0 D1 D2|", "D0 P D1 D2|", "D0 D1 P D2|", "D0 D1 D2 P|"]),
        (5, 1, 5, ["P D0 D1 D2 D3|", "D0 P D1 D2 D3|", "D0 D1 P D2 D3|", "D0 D1 D2 P D3|", "D0 D1 D2 D3 P|"]),
        (5, 2, 4, ["D0 D1 D2 P|", "D1 D2 P D0|", "D2 P D0 D1|", "P D0 D1 D2|"]),
        (5, 2, 5, ["D0 D1 D2 D3 P|", "D1 D2 D3 P D0|", "D2 D3 P D0 D1|", "D3 P D0 D1 D2|", "P D0 D1 D2 D3|"]),
        (5, 3, 4, ["P D0 D1 D2|", "D2 P D0 D1|", "D1 D2 P D0|", "D0 D1 D2 P|"]),
        (5, 3, 5, ["P D0 D1 D2 D3|", "D3 P D0 D1 D2|", "D2 D3 P D0 D1|", "D1 D2 D3 P D0|", "D0 D1 D2 D3 P|"]),
        (5, 4, 4, ["P D0 D1 D2|", "P D0 D1 D2|"]),
        (5, 4, 5, ["P D0 D1 D2 D3|", "P D0 D1 D2 D3|"]),
        (5, 5, 4, ["D0 D1 D2 P|", "D0 D1 D2 P|"]),
        (5, 5, 5, ["D0 D1 D2 D3 P|", "D0 D1 D2 D3 P|"]),
        (6, 0, 4, ["Q D0 D1 P|D0,D1", "D0 D1 P Q|D0,D1", "D0 P Q D1|D1,D0", "P Q D0 D1|D0,D1"]),
        (6, 0, 5, ["Q D0 D1 D2 P|D0,D1,D2", "D0 D1 D2 P Q|D0,D1,D2", "D0 D1 P Q D2|D2,D0,D1", "D0 P Q D1 D2|D1,D2,D0", "P Q D0 D1 D2|D0,D1,D2"]),
        (6, 1, 4, ["P Q D0 D1|D0,D1", "D0 P Q D1|D1,D0", "D0 D1 P Q|D0,D1", "Q D0 D1 P|D0,D1"]),
        (6, 1, 5, ["P Q D0 D1 D2|D0,D1,D2", "D0 P Q D1 D2|D1,D2,D0", "D0 D1 P Q D2|D2,D0,D1", "D0 D1 D2 P Q|D0,D1,D2", "Q D0 D1 D2 P|D0,D1,D2"]),
        (6, 2, 4, ["Q D0 D1 P|D0,D1", "D0 D1 P Q|D0,D1", "D1 P Q D0|D0,D1", "P Q D0 D1|D0,D1"]),
        (6, 2, 5, ["Q D0 D1 D2 P|D0,D1,D2", "D0 D1 D2 P Q|D0,D1,D2", "D1 D2 P Q D0|D0,D1,D2", "D2 P Q D0 D1|D0,D1,D2", "P Q D0 D1 D2|D0,D1,D2"]),
        (6, 3, 4, ["P Q D0 D1|D0,D1", "D1 P Q D0|D0,D1", "D0 D1 P Q|D0,D1", "Q D0 D1 P|D0,D1"]),
        (6, 3, 5, ["P Q D0 D1 D2|D0,D1,D2", "D2 P Q D0 D1|D0,D1,D2", "D1 D2 P Q D0|D0,D1,D2", "D0 D1 D2 P Q|D0,D1,D2", "Q D0 D1 D2 P|D0,D1,D2"]),
        (6, 4, 4, ["P Q D0 D1|D0,D1", "P Q D0 D1|D0,D1"]),
        (6, 4, 5, ["P Q D0 D1 D2|D0,D1,D2", "P Q D0 D1 D2|D0,D1,D2"]),
        (6, 5, 4, ["D0 D1 P Q|D0,D1", "D0 D1 P Q|D0,D1"]),
        (6, 5, 5, ["D0 D1 D2 P Q|D0,D1,D2", "D0 D1 D2 P Q|D0,D1,D2"]),
        (6, 8, 4, ["P Q D0 D1|g^2·D0,g^3·D1(P,Qslots=0)", "D0 P Q D1|g^0·D0,g^3·D1(P,Qslots=0)", "D0 D1 P Q|g^0·D0,g^1·D1(P,Qslots=0)", "Q D0 D1 P|g^1·D0,g^2·D1(P,Qslots=0)"]),
        (6, 8, 5, ["P Q D0 D1 D2|g^2·D0,g^3·D1,g^4·D2(P,Qslots=0)", "D0 P Q D1 D2|g^0·D0,g^3·D1,g^4·D2(P,Qslots=0)", "D0 D1 P Q D2|g^0·D0,g^1·D1,g^4·D2(P,Qslots=0)", "D0 D1 D2 P Q|g^0·D0,g^1·D1,g^2·D2(P,Qslots=0)", "Q D0 D1 D2 P|g^1·D0,g^2·D1,g^3·D2(P,Qslots=0)"]),
        (6, 9, 4, ["D0 D1 P Q|g^0·D0,g^1·D1(P,Qslots=0)", "D0 P Q D1|g^0·D0,g^3·D1(P,Qslots=0)", "P Q D0 D1|g^2·D0,g^3·D1(P,Qslots=0)", "Q D0 D1 P|g^1·D0,g^2·D1(P,Qslots=0)"]),
        (6, 9, 5, ["D0 D1 D2 P Q|g^0·D0,g^1·D1,g^2·D2(P,Qslots=0)", "D0 D1 P Q D2|g^0·D0,g^1·D1,g^4·D2(P,Qslots=0)", "D0 P Q D1 D2|g^0·D0,g^3·D1,g^4·D2(P,Qslots=0)", "P Q D0 D1 D2|g^2·D0,g^3·D1,g^4·D2(P,Qslots=0)", "Q D0 D1 D2 P|g^1·D0,g^2·D1,g^3·D2(P,Qslots=0)"]),
        (6, 10, 4, ["D0 D1 Q P|g^0·D0,g^1·D1(P,Qslots=0)", "D1 Q P D0|g^0·D1,g^3·D0(P,Qslots=0)", "Q P D0 D1|g^2·D0,g^3·D1(P,Qslots=0)", "P D0 D1 Q|g^1·D0,g^2·D1(P,Qslots=0)"]),
        (6, 10, 5, ["D0 D1 D2 Q P|g^0·D0,g^1·D1,g^2·D2(P,Qslots=0)", "D1 D2 Q P D0|g^0·D1,g^1·D2,g^4·D0(P,Qslots=0)", "D2 Q P D0 D1|g^0·D2,g^3·D0,g^4·D1(P,Qslots=0)", "Q P D0 D1 D2|g^2·D0,g^3·D1,g^4·D2(P,Qslots=0)", "P D0 D1 D2 Q|g^1·D0,g^2·D1,g^3·D2(P,Qslots=0)"]),
        (6, 16, 4, ["D0 D1 P Q|D0,D1", "D0 P D1 Q|D0,D1", "P D0 D1 Q|D0,D1", "D0 D1 P Q|D0,D1"]),
        (6, 16, 5, ["D0 D1 D2 P Q|D0,D1,D2", "D0 D1 P D2 Q|D0,D1,D2", "D0 P D1 D2 Q|D0,D1,D2", "P D0 D1 D2 Q|D0,D1,D2", "D0 D1 D2 P Q|D0,D1,D2"]),
        (6, 17, 4, ["P D0 D1 Q|D0,D1", "D0 P D1 Q|D0,D1", "D0 D1 P Q|D0,D1", "P D0 D1 Q|D0,D1"]),
        (6, 17, 5, ["P D0 D1 D2 Q|D0,D1,D2", "D0 P D1 D2 Q|D0,D1,D2", "D0 D1 P D2 Q|D0,D1,D2", "D0 D1 D2 P Q|D0,D1,D2", "P D0 D1 D2 Q|D0,D1,D2"]),
        (6, 18, 4, ["D0 D1 P Q|D0,D1", "D1 P D0 Q|D1,D0", "P D0 D1 Q|D0,D1", "D0 D1 P Q|D0,D1"]),
        (6, 18, 5, ["D0 D1 D2 P Q|D0,D1,D2", "D1 D2 P D0 Q|D1,D2,D0", "D2 P D0 D1 Q|D2,D0,D1", "P D0 D1 D2 Q|D0,D1,D2", "D0 D1 D2 P Q|D0,D1,D2"]),
        (6, 19, 4, ["P D0 D1 Q|D0,D1", "D1 P D0 Q|D1,D0", "D0 D1 P Q|D0,D1", "P D0 D1 Q|D0,D1"]),
        (6, 19, 5, ["P D0 D1 D2 Q|D0,D1,D2", "D2 P D0 D1 Q|D2,D0,D1", "D1 D2 P D0 Q|D1,D2,D0", "D0 D1 D2 P Q|D0,D1,D2", "P D0 D1 D2 Q|D0,D1,D2"]),
        (6, 20, 4, ["P D0 D1 Q|D0,D1", "P D0 D1 Q|D0,D1"]),
        (6, 20, 5, ["P D0 D1 D2 Q|D0,D1,D2", "P D0 D1 D2 Q|D0,D1,D2"]),
]

/// Renders what `RaidGeometry` says in the tables' notation.
func renderRow(_ g: RaidGeometry, _ row: UInt64) -> String {
    let stripe = g.stripeRow(row)
    let cells = (0..<g.raidDisks).map { disk -> String in
        switch stripe.content(ofDisk: disk) {
        case .p: return "P"
        case .q: return "Q"
        case .data(let dd): return "D\(dd)"
        }
    }
    var slots = ""
    if g.level == .raid6 {
        // Data chunks ordered by syndrome slot; DDF tables spell out the multipliers g^slot.
        let order = (0..<stripe.dataDisk.count).sorted { stripe.syndromeSlot[$0] < stripe.syndromeSlot[$1] }
        if g.layout.usesDDFSyndromeOrder {
            slots = order.map { "g^\(stripe.syndromeSlot[$0])·D\($0)" }.joined(separator: ",") + "(P,Qslots=0)"
        } else {
            slots = order.map { "D\($0)" }.joined(separator: ",")
        }
    }
    return cells.joined(separator: " ") + "|" + slots
}

@Suite struct GeometryTests {
    @Test func workedTablesFromMdFormat() throws {
        #expect(workedLayoutTables.count >= 40)
        for table in workedLayoutTables {
            let level = RaidLevel(rawValue: table.level)!
            let g = try RaidGeometry(
                level: level, layout: RaidLayout(rawValue: table.layout), raidDisks: table.disks, chunkSectors: 128,
                memberDataSectors: 128 * 64)
            for (row, expected) in table.rows.enumerated() {
                #expect(renderRow(g, UInt64(row)) == expected, "raid\(table.level) layout \(table.layout) n=\(table.disks) row \(row)")
            }
        }
    }

    /// md-format.md §4.3's layout-aware vector: 5-disk RAID6, row 2, D0=01 D1=80 D2=fe.
    @Test(arguments: [(2, "D1 D2 P Q D0", 0xc3), (0, "D0 D1 P Q D2", 0xc6), (16, "D0 P D1 D2 Q", 0xc3), (10, "D2 Q P D0 D1", 0x1e)] as [(UInt32, String, UInt8)])
    func layoutAwareSyndromeVector(layout: UInt32, disks: String, q: UInt8) throws {
        let g = try RaidGeometry(level: .raid6, layout: RaidLayout(rawValue: layout), raidDisks: 5, chunkSectors: 8, memberDataSectors: 80)
        let stripe = g.stripeRow(2)
        #expect(renderRow(g, 2).split(separator: "|").first.map(String.init) == disks)
        let data: [UInt8] = [0x01, 0x80, 0xfe]
        var qValue: UInt8 = 0
        var pValue: UInt8 = 0
        for dd in 0..<3 {
            pValue ^= data[dd]
            qValue ^= GF256Reference.mul(GF256Reference.pow2(stripe.syndromeSlot[dd]), data[dd])
        }
        #expect(pValue == 0x7f)
        #expect(qValue == q)
    }

    /// Every row places each disk exactly once, and locate/arraySector are inverses, for every
    /// layout and member count md accepts.
    @Test func mapsAreBijective() throws {
        for level in RaidLevel.allCases {
            for layout in RaidLayout.valid(for: level) {
                for n in level.minimumRaidDisks...12 {
                    let g = try RaidGeometry(level: level, layout: layout, raidDisks: n, chunkSectors: 8, memberDataSectors: 8 * UInt64(2 * n + 3))
                    for row in 0..<g.rowCount {
                        let stripe = g.stripeRow(row)
                        var disks = stripe.dataDisk + [stripe.pDisk]
                        if let q = stripe.qDisk { disks.append(q) }
                        #expect(disks.sorted() == Array(0..<n), "\(level) \(layout) n=\(n) row \(row)")
                        if level == .raid6 && !layout.usesDDFSyndromeOrder {
                            #expect(stripe.syndromeSlot.sorted() == Array(0..<(n - 2)))
                        }
                    }
                    for sector in stride(from: UInt64(0), to: g.arraySectors, by: 3) {
                        let at = g.locate(arraySector: sector)
                        let back = g.arraySector(disk: at.disk, memberSectorRelative: at.memberSectorRelative)
                        #expect(back.1 == sector)
                    }
                }
            }
        }
    }

    @Test func refusesBadGeometry() {
        #expect(throws: GeometryError.tooFewDisks(level: .raid6, raidDisks: 3)) {
            try RaidGeometry(level: .raid6, layout: .leftSymmetric, raidDisks: 3, chunkSectors: 128, memberDataSectors: 1280)
        }
        #expect(throws: GeometryError.invalidChunk(sectors: 6)) {
            try RaidGeometry(level: .raid5, layout: .leftSymmetric, raidDisks: 3, chunkSectors: 6, memberDataSectors: 60)
        }
        #expect(throws: GeometryError.invalidLayout(level: .raid5, layout: 16)) {
            try RaidGeometry(level: .raid5, layout: .leftAsymmetric6, raidDisks: 4, chunkSectors: 8, memberDataSectors: 80)
        }
    }

    @Test func layoutNames() {
        #expect(RaidLayout(name: "ls", level: .raid5) == .leftSymmetric)
        #expect(RaidLayout(name: "default", level: .raid6) == .leftSymmetric)
        #expect(RaidLayout(name: "right-asymmetric", level: .raid6) == .rightAsymmetric)
        #expect(RaidLayout(name: "parity-first-6", level: .raid6) == .parityFirst6)
        #expect(RaidLayout(name: "parity-first-6", level: .raid5) == nil)
        #expect(RaidLayout(name: "17", level: .raid6) == .rightAsymmetric6)
        #expect(RaidLayout(name: "7", level: .raid6) == nil)
        #expect(RaidLayout(name: "diagonal", level: .raid5) == nil)
    }

    /// The placements precomputed for one period are md's rule's answer for every row: each
    /// level and layout, 3 to 33 disks (33 is past the precomputed sizes), three periods of
    /// rows and some far away, including `locate`'s path.
    @Test func precomputedRowPatternsAnswerAsTheRuleForEveryLayout() throws {
        for level in [RaidLevel.raid4, .raid5, .raid6] {
            for layout in level == .raid4 ? [RaidLayout.parityLast] : RaidLayout.valid(for: level) {
                for n in level.minimumRaidDisks...33 {
                    let g = try RaidGeometry(level: level, layout: layout, raidDisks: n, chunkSectors: 8, memberDataSectors: 8 << 20)
                    let period = UInt64(n * (n - 1))
                    let rows = Array(0..<(3 * period)) + [g.rowCount - 1, g.rowCount / 2 + 7, 123_457]
                    for row in rows {
                        let computed = g.computeStripeRow(row)
                        guard g.stripeRow(row) == computed else {
                            Issue.record("\(level) \(layout) n=\(n) row \(row): \(g.stripeRow(row)) against \(computed)")
                            return
                        }
                        let dd = Int(row % UInt64(g.dataDisks))
                        let located = g.locate(arraySector: (row * UInt64(g.dataDisks) + UInt64(dd)) * 8 + 3)
                        #expect(located.disk == computed.dataDisk[dd] && located.row == row)
                    }
                }
            }
        }
    }
}
