import Testing

@testable import MDFormat

/// Metadata a hostile or damaged member image may carry: each case is one the superblock fuzzer
/// (Fuzz/, tools/fuzz/run.sh) made trap, and its input is kept in Fuzz/regressions/superblock.
/// Each must give an answer or a clear error.
@Suite struct CraftedMetadataTests {
    @Test func theLargestEventCountDoesNotOverflowAssembly() throws {
        // Found as `s.events + 1 < sb.events` trapping on events 2^64-1.
        var sbs = arraySuperblocks()
        for i in sbs.indices { sbs[i].events = UInt64.max }
        sbs[2].events = 0
        let plan = try AssemblyPlan(candidates: candidates(sbs))
        #expect(plan.excluded.first?.reason == .stale(events: 0, arrayEvents: UInt64.max))
        sbs[2].events = UInt64.max - 1
        #expect(try AssemblyPlan(candidates: candidates(sbs)).excluded.isEmpty)
    }

    @Test func aVersion10SuperblockWhoseDataRunsIntoItIsRefused() throws {
        // Found by review: 1.0's data_offset was never checked, so data_offset 16 with a
        // data_size reaching past the superblock passed (and `add` then trapped subtracting),
        // and data_offset 2^54 gave byte offsets past off_t on the first read.
        var sb = arraySuperblocks()[0]
        sb.superOffsetSectors = 4080  // 1.0: the superblock 8 KiB from the end of 4096 sectors
        sb.dataOffsetSectors = 0
        sb.dataSizeSectors = 4072
        try sb.withValidChecksum().validate(readAtSectors: 4080, deviceSizeSectors: 4096)
        sb.dataOffsetSectors = 16
        #expect(throws: MDFormatError.self) { try sb.withValidChecksum().validate(readAtSectors: 4080, deviceSizeSectors: 4096) }
        sb.dataOffsetSectors = 1 << 54
        #expect(throws: MDFormatError.self) { try sb.withValidChecksum().validate(readAtSectors: 4080, deviceSizeSectors: 4096) }
        sb.dataOffsetSectors = UInt64.max - 10
        #expect(throws: MDFormatError.self) { try sb.withValidChecksum().validate(readAtSectors: 4080, deviceSizeSectors: 4096) }
    }

    @Test func anArrayLargerThanAnOffsetCanAddressIsRefused() throws {
        // Found by review: RAID5 of 4 sparse members of 2^63 bytes each made an export size
        // that trapped computing its bytes.
        #expect(throws: GeometryError.arrayTooLarge(memberDataSectors: 1 << 54, dataDisks: 3)) {
            _ = try RaidGeometry(level: .raid5, layout: .leftSymmetric, raidDisks: 4, chunkSectors: 8, memberDataSectors: 1 << 54)
        }
        let largest = UInt64(Int64.max) / 512 / 3 / 8 * 8
        #expect(try RaidGeometry(level: .raid5, layout: .leftSymmetric, raidDisks: 4, chunkSectors: 8, memberDataSectors: largest).arraySectors
            == largest * 3)
    }

    @Test func aBitmapClaimingMoreBitsThanTheAreaHoldsCountsTheAreaOnly() {
        // Found as `(sync_size + chunk - 1) / chunk` trapping, then as a count of 2^55 bits
        // looked at one by one.
        var header = MDBitmapSuperblock()
        header.chunkSizeBytes = 512
        header.syncSizeSectors = UInt64.max
        #expect(header.bitCount == Int.max)
        #expect(header.usedBytes == MDBitmapSuperblock.headerBytes + (1 << 60))
        let area = header.encode() + [0xFF, 0x01]
        #expect(header.dirtyBitCount(area: area) == 9)
        header.syncSizeSectors = 9
        header.chunkSizeBytes = 1024
        #expect(header.bitCount == 5)
        #expect(header.usedBytes == MDBitmapSuperblock.headerBytes + 1)
    }

    @Test func examineShowsSizesNearTheLimitWithoutTrapping() {
        // Found as `bytes * 200` trapping in mdadm's human_size, then the unused-space sums.
        #expect(ExamineReport.humanSize(bytes: UInt64.max) == " (16777216.00 TiB 18446744.07 TB)")
        #expect(ExamineReport.humanSize(bytes: 3 << 40) == " (3.00 TiB 3.30 TB)")
        var sb = arraySuperblocks()[0]
        sb.dataSizeSectors = UInt64.max
        sb.sizeSectors = UInt64.max - 1
        sb.dataOffsetSectors = UInt64.max - 7
        sb.raidDisks = UInt32.max
        let lines = ExamineReport(superblock: sb, deviceSizeSectors: 4096).lines()
        #expect(lines.contains(" Avail Dev Size : 18446744073709551615 sectors (16777216.00 TiB 18446744.07 TB)"))
        #expect(lines.contains { $0.hasPrefix("   Array State : ") && $0.count < 2000 })
    }

    @Test func aDataOffsetPastTheDeviceIsRefusedWithItsReason() {
        // Found as the refusal's own message trapping while adding offset and size.
        var sb = arraySuperblocks()[0]
        sb.dataOffsetSectors = UInt64.max - 3
        sb = sb.withValidChecksum()
        #expect(throws: MDFormatError.self) { try sb.validate(readAtSectors: 8, deviceSizeSectors: 4096) }
        do {
            try sb.validate(readAtSectors: 8, deviceSizeSectors: 4096)
        } catch {
            #expect("\(error)".contains("device is 4096 sectors but the superblock needs more"))
        }
    }
}
