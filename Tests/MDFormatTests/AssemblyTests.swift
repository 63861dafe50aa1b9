import Testing

@testable import MDFormat

/// Superblocks of a clean n-member array as a create plan would write them.
func arraySuperblocks(level: RaidLevel = .raid6, n: Int = 5, uuid: UInt8 = 1) -> [MDSuperblock1] {
    var request = CreateRequest(
        level: level, raidDisks: n, memberSizesSectors: [UInt64?](repeating: 4096, count: n),
        arrayUUID: [UInt8](repeating: uuid, count: 16), deviceUUIDs: (0..<n).map { [UInt8](repeating: UInt8($0), count: 16) },
        timeSeconds: 1_700_000_000)
    request.chunkKiB = 64
    return try! CreatePlan(request).superblocks
}

func candidates(_ sbs: [MDSuperblock1]) -> [AssemblyCandidate] {
    sbs.enumerated().map { AssemblyCandidate(name: "m\($0.offset)", superblock: $0.element, deviceSizeSectors: 4096) }
}

@Suite struct AssemblyTests {
    @Test func completeArrayUsesEveryMember() throws {
        let plan = try AssemblyPlan(candidates: candidates(arraySuperblocks().reversed()))
        #expect(plan.memberForRole == [4, 3, 2, 1, 0])
        #expect(!plan.isDegraded)
        #expect(plan.excluded.isEmpty)
    }

    @Test func staleMemberIsLeftOut() throws {
        var sbs = arraySuperblocks()
        // The array moved on (events 22) after role 2 was failed and removed at events 17.
        for i in sbs.indices {
            sbs[i].events = i == 2 ? 17 : 22
            if i != 2 { sbs[i].devRoles[2] = MDRole.spareValue }
        }
        let plan = try AssemblyPlan(candidates: candidates(sbs))
        #expect(plan.missingRoles == [2])
        #expect(plan.excluded.map(\.index) == [2])
        #expect(plan.excluded.first?.reason == .stale(events: 17, arrayEvents: 22))
    }

    @Test func oneEventBehindIsStillInSync() throws {
        var sbs = arraySuperblocks()
        sbs[0].events = 5
        for i in 1..<sbs.count { sbs[i].events = 6 }
        #expect(try AssemblyPlan(candidates: candidates(sbs)).missingRoles.isEmpty)
    }

    @Test func refusesTooManyMissing() {
        let sbs = Array(arraySuperblocks()[0..<2])
        #expect(throws: AssemblyError.tooManyMissing(missingRoles: [2, 3, 4], tolerated: 2, level: .raid6)) {
            try AssemblyPlan(candidates: candidates(sbs))
        }
    }

    @Test func refusesMembersOfDifferentArrays() {
        let mixed = Array(arraySuperblocks(uuid: 1)[0..<3]) + Array(arraySuperblocks(uuid: 2)[3..<5])
        #expect(throws: AssemblyError.self) { try AssemblyPlan(candidates: candidates(mixed)) }
        do {
            _ = try AssemblyPlan(candidates: candidates(mixed))
        } catch let AssemblyError.differentArrays(a, b) {
            #expect(a.hasPrefix("m0") && b.hasPrefix("m3"))
        } catch {
            Issue.record("wrong error \(error)")
        }
    }

    @Test func refusesDirtyDegradedUnlessForced() throws {
        var sbs = arraySuperblocks(level: .raid5, n: 4)
        for i in sbs.indices { sbs[i].resyncOffsetSectors = 0 }
        let three = Array(sbs[0..<3])
        #expect(throws: AssemblyError.dirtyDegraded(missingRoles: [3])) { try AssemblyPlan(candidates: candidates(three)) }
        #expect(try AssemblyPlan(candidates: candidates(three), force: true).missingRoles == [3])
        // Dirty but complete is fine: data chunks are read directly.
        #expect(try AssemblyPlan(candidates: candidates(sbs)).missingRoles.isEmpty)
    }

    @Test func refusesUnsupportedFeaturesByName() {
        for (feature, name) in [(MDFeatures.reshapeActive, "reshape in progress"), (.journal, "write journal"), (.ppl, "partial parity log (PPL)"), (.clustered, "clustered md")] {
            var sbs = arraySuperblocks()
            sbs[1].featureMap.insert(feature)
            #expect(throws: AssemblyError.unsupportedFeature(name)) { try AssemblyPlan(candidates: candidates(sbs)) }
        }
    }

    @Test func refusesUnsupportedLevelAndGeometryDisagreement() {
        var raid1 = arraySuperblocks()
        for i in raid1.indices { raid1[i].level = 1 }
        #expect(throws: AssemblyError.unsupportedLevel(1)) { try AssemblyPlan(candidates: candidates(raid1)) }
        var chunks = arraySuperblocks()
        chunks[3].chunkSectors = 256
        #expect(throws: AssemblyError.self) { try AssemblyPlan(candidates: candidates(chunks)) }
    }

    @Test func duplicateRolesKeepTheNewerMember() throws {
        var sbs = arraySuperblocks()
        var copy = sbs[1]
        copy.events = 1
        for i in sbs.indices { sbs[i].events = 2 }
        let plan = try AssemblyPlan(candidates: candidates(sbs + [copy]))
        #expect(plan.memberForRole[1] == 1)
        #expect(plan.excluded.map(\.index) == [5])
        var equal = copy
        equal.events = 2
        #expect(throws: AssemblyError.conflictingRoles(slot: 1, "m1", "m5")) { try AssemblyPlan(candidates: candidates(sbs + [equal])) }
    }

    @Test func faultyAndSpareAreNotUsed() throws {
        var sbs = arraySuperblocks()
        for i in sbs.indices { sbs[i].devRoles[4] = MDRole.faultyValue }
        let plan = try AssemblyPlan(candidates: candidates(sbs))
        #expect(plan.missingRoles == [4])
        #expect(plan.excluded.first?.reason == .faulty)
    }
}
