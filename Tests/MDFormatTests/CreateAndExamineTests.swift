import Testing

@testable import MDFormat

let gib: UInt64 = 2 * 1024 * 1024  // sectors

@Suite struct CreateDefaultsTests {
    /// md-format.md §1.8's table and mdadm 4.2's `size set to` figures for real devices.
    @Test(arguments: [
        (100 * 2048, 4096), (1 * gib, 4096), (10 * gib, 18432), (100 * gib, 133120), (200 * gib, 264192), (1024 * gib, 264192),
    ] as [(UInt64, UInt64)])
    func dataOffsetLikeMdadm(deviceSectors: UInt64, dataOffset: UInt64) {
        #expect(MDCreateDefaults.dataOffsetSectors(deviceSizeSectors: deviceSectors, chunkKiB: 512) == dataOffset)
    }

    @Test func smallChunkSmallDeviceGivesOneMiB() {
        // The fixtures: 64K chunks on ~1.3 MiB members put data at 2048 sectors.
        #expect(MDCreateDefaults.dataOffsetSectors(deviceSizeSectors: 2560, chunkKiB: 64) == 2048)
        #expect(MDCreateDefaults.dataOffsetSectors(deviceSizeSectors: 7168, chunkKiB: 512) == 4096)
    }

    @Test func usedSizeMatchesMdadm() throws {
        // mdadm -v on 1 GiB / 10 GiB / 1 TiB members: "size set to 1046528K / 10476544K / 1073609728K".
        for (device, sizeKiB) in [(1 * gib, 1_046_528), (10 * gib, 10_476_544), (1024 * gib, 1_073_609_728)] as [(UInt64, UInt64)] {
            var request = CreateRequest(
                level: .raid5, raidDisks: 3, memberSizesSectors: [device, device, device], arrayUUID: Array(0..<16),
                deviceUUIDs: (0..<3).map { _ in Array(16..<32) }, timeSeconds: 1_700_000_000)
            request.bitmap = .none
            let plan = try CreatePlan(request)
            #expect(plan.geometry.memberDataSectors == sizeKiB * 2)
        }
    }

    @Test func bitmapChunkAndBadBlockLog() throws {
        #expect(MDCreateDefaults.bitmapChunkBytes(sizeSectors: 2 * gib) == 64 << 20)
        #expect(MDCreateDefaults.maxDev(deviceCount: 6) == 128)
        #expect(MDCreateDefaults.maxDev(deviceCount: 200) == 384)
        var request = CreateRequest(
            level: .raid6, raidDisks: 4, memberSizesSectors: [10 * gib, 10 * gib, 10 * gib, 10 * gib], arrayUUID: Array(0..<16),
            deviceUUIDs: (0..<4).map { _ in Array(16..<32) }, timeSeconds: 1_700_000_000)
        request.bitmap = .none
        // No bitmap: the log goes after choose_bm_space(size) = 128 sectors.
        #expect(try CreatePlan(request).superblocks[0].bblogOffsetSectors == 136)
        request.bitmap = .internal_
        let withBitmap = try CreatePlan(request)
        #expect(withBitmap.superblocks[0].bblogOffsetSectors == 16)
        #expect(withBitmap.superblocks[0].bitmapOffsetSectors == 8)
        #expect(withBitmap.bitmap?.chunkSizeBytes == 64 << 20)
        #expect(withBitmap.bitmapAreaBytes?.count == 4096)
        // auto: mdadm 4.2 adds a bitmap only above 100 GiB per member.
        request.bitmap = .auto
        #expect(try CreatePlan(request).bitmap == nil)
        request.memberSizesSectors = [UInt64?](repeating: 101 * gib + 133120, count: 4)
        #expect(try CreatePlan(request).bitmap != nil)
    }

    @Test func newFilesAreSizedForTheirData() throws {
        var request = CreateRequest(
            level: .raid6, raidDisks: 5, memberSizesSectors: [nil, nil, nil, nil, nil], arrayUUID: Array(0..<16),
            deviceUUIDs: (0..<5).map { _ in Array(16..<32) }, timeSeconds: 1_700_000_000)
        request.chunkKiB = 64
        request.sizeSectors = 512
        let plan = try CreatePlan(request)
        #expect(plan.dataOffsetSectors == 2048)
        #expect(plan.memberSizesSectors == [2560, 2560, 2560, 2560, 2560])
        #expect(plan.geometry.arraySectors == 512 * 3)
        let sb = plan.superblocks[3]
        #expect(sb.devNumber == 3 && sb.role == .active(slot: 3))
        #expect(sb.events == 0 && sb.isClean && sb.storedChecksumIsValid)
        try sb.validate(readAtSectors: 8, deviceSizeSectors: 2560)
    }

    @Test func refusals() {
        func plan(_ change: (inout CreateRequest) -> Void) -> Result<CreatePlan, Error> {
            var r = CreateRequest(
                level: .raid5, raidDisks: 3, memberSizesSectors: [4096, 4096, 4096], arrayUUID: Array(0..<16),
                deviceUUIDs: (0..<3).map { _ in Array(16..<32) }, timeSeconds: 0)
            r.chunkKiB = 64
            change(&r)
            return Result { try CreatePlan(r) }
        }
        guard case .failure(CreateError.invalidChunk) = plan({ $0.chunkKiB = 3 }) else { Issue.record("3K chunk accepted"); return }
        guard case .failure(CreateError.geometry(.tooFewDisks)) = plan({ $0.level = .raid6 }) else { Issue.record("raid6 on 3 accepted"); return }
        guard case .failure(CreateError.memberTooSmall) = plan({ $0.memberSizesSectors[1] = 2100 }) else { Issue.record("small member accepted"); return }
        guard case .failure(CreateError.sizeNeeded) = plan({ $0.memberSizesSectors[2] = nil }) else { Issue.record("new file without size"); return }
        guard case .failure(CreateError.invalidLayout) = plan({ $0.layout = .ddfNContinue }) else { Issue.record("raid5 ddf layout accepted"); return }
    }

    @Test func setNameRules() {
        #expect(MDCreateDefaults.setName(name: "0", homehost: "vm") == "vm:0")
        #expect(MDCreateDefaults.setName(name: "a:b", homehost: "vm") == "a:b")
        #expect(MDCreateDefaults.setName(name: "data", homehost: nil) == "data")
        let long = String(repeating: "x", count: 30)
        #expect(MDCreateDefaults.setName(name: long, homehost: "host") == long)
    }
}

@Suite struct ExamineTests {
    /// mdadm 4.2's output for md-format.md's checksum vector (TZ=UTC, host "vm"), as observed.
    @Test func vectorReportMatchesMdadm() {
        let report = ExamineReport(superblock: vectorSuperblock().withValidChecksum(), deviceSizeSectors: 4096 + 2_093_056, homehost: "vm")
        let expected = """
                      Magic : a92b4efc
                    Version : 1.2
                Feature Map : 0x0
                 Array UUID : 00010203:04050607:08090a0b:0c0d0e0f
                       Name : myhost:0
              Creation Time : Tue Nov 14 22:13:20 2023
                 Raid Level : raid5
               Raid Devices : 3

             Avail Dev Size : 2093056 sectors (1022.00 MiB 1071.64 MB)
                 Array Size : 2093056 KiB (2044.00 MiB 2143.29 MB)
                Data Offset : 4096 sectors
               Super Offset : 8 sectors
               Unused Space : before=4016 sectors, after=0 sectors
                      State : clean
                Device UUID : 10111213:14151617:18191a1b:1c1d1e1f

                Update Time : Tue Nov 14 22:15:00 2023
              Bad Block Log : 512 entries available at offset 16 sectors
                   Checksum : 9c3e8c5b - correct
                     Events : 2

                     Layout : left-symmetric
                 Chunk Size : 512K

               Device Role : Active device 1
               Array State : AAA ('A' == active, '.' == missing, 'R' == replacing)
            """
        #expect(report.lines().joined(separator: "\n") == expected)
    }

    @Test func humanSizeBoundaries() {
        #expect(ExamineReport.humanSize(bytes: 9999 * 512) == "")
        #expect(ExamineReport.humanSize(bytes: 10000 * 512) == " (4.88 MiB 5.12 MB)")
        #expect(ExamineReport.humanSize(bytes: 4_194_303 * 512) == " (2048.00 MiB 2147.48 MB)")
        #expect(ExamineReport.humanSize(bytes: 4_194_304 * 512) == " (2.00 GiB 2.15 GB)")
        #expect(ExamineReport.humanSize(bytes: 4_294_967_296 * 512) == " (2.00 TiB 2.20 TB)")
        #expect(ExamineReport.humanSize(bytes: 123_456_789 * 512) == " (58.87 GiB 63.21 GB)")
    }

    @Test func badChecksumRoleStateAndTimes() {
        var sb = vectorSuperblock()
        sb.devRoles[2] = MDRole.faultyValue
        sb.devNumber = 2
        var bytes = sb.encode()
        bytes[216] ^= 0xFF
        let report = ExamineReport(superblock: try! MDSuperblock1(decoding: bytes), deviceSizeSectors: 4096 + 2_093_056)
        let lines = report.lines()
        #expect(lines.contains("   Device Role : spare"))
        #expect(lines.contains("   Array State : AA. ('A' == active, '.' == missing, 'R' == replacing)"))
        #expect(lines.contains { $0.hasPrefix("       Checksum : ") && $0.contains(" - expected ") })
        #expect(formatUTCTime(0) == "Thu Jan  1 00:00:00 1970")
        #expect(formatUTCTime(951_782_400) == "Tue Feb 29 00:00:00 2000")
    }

    @Test func jsonCarriesTheSameFacts() {
        let report = ExamineReport(superblock: vectorSuperblock().withValidChecksum(), deviceSizeSectors: 4096 + 2_093_056)
        let text = report.json(device: "a.img").render()
        #expect(text.contains("\"array_uuid\": \"00010203:04050607:08090a0b:0c0d0e0f\""))
        #expect(text.contains("\"events\": 2"))
        #expect(text.contains("\"checksum_correct\": true"))
        #expect(JSONValue.string("a\"b\n").render() == "\"a\\\"b\\n\"")
    }
}
