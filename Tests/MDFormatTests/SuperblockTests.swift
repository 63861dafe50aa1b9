import Testing

@testable import MDFormat

/// md-format.md §1.5's checksum test vector, as a superblock.
func vectorSuperblock() -> MDSuperblock1 {
    var sb = MDSuperblock1()
    sb.setUUID = Array(0x00...0x0f)
    sb.setName("myhost:0")
    sb.ctime = 1_700_000_000
    sb.level = 5
    sb.layout = 2
    sb.sizeSectors = 2_093_056
    sb.chunkSectors = 1024
    sb.raidDisks = 3
    sb.dataOffsetSectors = 4096
    sb.dataSizeSectors = 2_093_056
    sb.superOffsetSectors = 8
    sb.devNumber = 1
    sb.deviceUUID = Array(0x10...0x1f)
    sb.bblogSizeSectors = 8
    sb.bblogOffsetSectors = 16
    sb.utime = 1_700_000_100
    sb.events = 2
    sb.resyncOffsetSectors = maxSector
    sb.maxDev = 128
    sb.devRoles = [0, 1, 2] + [UInt16](repeating: 0xFFFF, count: 125)
    return sb
}

@Suite struct SuperblockTests {
    @Test func checksumVector() throws {
        let bytes = vectorSuperblock().encode()
        #expect(bytes.count == 512)
        #expect(Array(bytes[216..<220]) == [0x5b, 0x8c, 0x3e, 0x9c])
        let decoded = try MDSuperblock1(decoding: bytes)
        #expect(decoded.checksum == 0x9c3e_8c5b)
        #expect(decoded.storedChecksumIsValid)
        try decoded.validate(readAtSectors: 8, deviceSizeSectors: 4096 + 2_093_056)
    }

    @Test func roundTripKeepsEveryField() throws {
        var sb = vectorSuperblock()
        sb.featureMap = [.bitmapOffset, .recoveryOffset]
        sb.bitmapOffsetRaw = UInt32(bitPattern: -16)
        sb.newLevel = 6
        sb.reshapePositionSectors = 12345
        sb.deltaDisks = -1
        sb.newLayout = 18
        sb.newChunkSectors = 128
        sb.newOffsetSectors = -2048
        sb.recoveryOffsetSectors = 999
        sb.cntCorrectedRead = 7
        sb.devFlags = 3
        sb.bblogShift = 1
        let decoded = try MDSuperblock1(decoding: sb.encode())
        #expect(decoded == sb.withValidChecksum())
        #expect(decoded.bitmapOffsetSectors == -16)
        #expect(decoded.deltaDisks == -1)
        #expect(decoded.newOffsetSectors == -2048)
        #expect(decoded.role == .active(slot: 1))
        #expect(decoded.setName == "myhost:0")
    }

    @Test func oddMaxDevChecksumsTrailingHalfWord() throws {
        var sb = vectorSuperblock()
        sb.maxDev = 129
        sb.devRoles.append(0xABCD)
        let bytes = sb.encode()
        var sum: UInt64 = 0
        for offset in stride(from: 0, to: 256 + 2 * 128, by: 4) where offset != 216 {
            sum += UInt64(bytes[offset]) | UInt64(bytes[offset + 1]) << 8 | UInt64(bytes[offset + 2]) << 16 | UInt64(bytes[offset + 3]) << 24
        }
        sum += 0xABCD
        let expected = UInt32(truncatingIfNeeded: (sum & 0xFFFF_FFFF) + (sum >> 32))
        #expect(try MDSuperblock1(decoding: bytes).checksum == expected)
    }

    @Test func rejectsDamage() throws {
        let good = vectorSuperblock().encode()
        func validate(_ bytes: [UInt8], at: UInt64 = 8) throws {
            try MDSuperblock1(decoding: bytes).validate(readAtSectors: at, deviceSizeSectors: 4096 + 2_093_056)
        }
        var flipped = good
        flipped[40] ^= 1
        #expect(throws: MDFormatError.self) { try validate(flipped) }
        do {
            try validate(flipped)
        } catch let error as MDFormatError {
            guard case .checksumMismatch = error else { Issue.record("expected a checksum error, got \(error)"); return }
        }

        var magic = good
        magic[0] = 0
        #expect(throws: MDFormatError.badMagic(found: 0xa92b_4e00)) { try validate(magic) }

        var features = vectorSuperblock()
        features.featureMap = MDFeatures(rawValue: 0x8000)
        #expect(throws: MDFormatError.unknownFeatures(0x8000)) { try validate(features.encode()) }

        #expect(throws: MDFormatError.superOffsetMismatch(stored: 8, readAt: 0)) { try validate(good, at: 0) }

        var pad = vectorSuperblock()
        pad.pad3[5] = 1
        #expect(throws: MDFormatError.nonZeroPadding(field: "pad3")) { try validate(pad.encode()) }

        var version = vectorSuperblock()
        version.majorVersion = 2
        #expect(throws: MDFormatError.badMajorVersion(2)) { try validate(version.encode()) }

        #expect(throws: MDFormatError.self) { try MDSuperblock1(decoding: Array(good[0..<200])) }

        let truncatedDevice = Result { try MDSuperblock1(decoding: good).validate(readAtSectors: 8, deviceSizeSectors: 3000) }
        guard case .failure(MDFormatError.deviceTooSmall) = truncatedDevice else {
            Issue.record("a device shorter than data_offset + data_size must be refused")
            return
        }
    }

    @Test func rolesDecode() {
        #expect(MDRole(rawValue: 0) == .active(slot: 0))
        #expect(MDRole(rawValue: 0xFEFF) == .active(slot: 0xFEFF))
        #expect(MDRole(rawValue: 0xFF00) == .spare)
        #expect(MDRole(rawValue: 0xFFFF) == .spare)
        #expect(MDRole(rawValue: 0xFFFE) == .faulty)
        #expect(MDRole(rawValue: 0xFFFD) == .journal)
        for role in [MDRole.active(slot: 3), .spare, .faulty, .journal] { #expect(MDRole(rawValue: role.rawValue) == role) }
    }

    @Test func versionFromLocation() {
        #expect(MDMetadataVersion(superOffsetSectors: 0) == .v1_1)
        #expect(MDMetadataVersion(superOffsetSectors: 8) == .v1_2)
        #expect(MDMetadataVersion(superOffsetSectors: 2_097_136) == .v1_0)
        #expect(MDMetadataVersion.v1_0.superblockOffsetSectors(deviceSizeSectors: 2_097_152) == 2_097_136)
        #expect(MDMetadataVersion.v1_0.superblockOffsetSectors(deviceSizeSectors: 23) == nil)
    }

    @Test func bitmapHeaderRoundTrip() throws {
        var b = MDBitmapSuperblock()
        b.uuid = Array(0x00...0x0f)
        b.events = 17
        b.eventsCleared = 1
        b.syncSizeSectors = 768
        b.chunkSizeBytes = 32768
        let decoded = try MDBitmapSuperblock(decoding: b.encode())
        #expect(decoded == b)
        #expect(decoded.bitCount == 12)
        try decoded.validate(arrayUUID: Array(0x00...0x0f))
        #expect(throws: MDFormatError.self) { try decoded.validate(arrayUUID: Array(repeating: 0, count: 16)) }
        var area = b.encode() + [UInt8](repeating: 0, count: 3840)
        area[256] = 0b0000_0101
        #expect(b.dirtyBitCount(area: area) == 2)
        #expect(MDBitmapSuperblock.isBitSet(area, bit: 2))
    }

    @Test func uuidText() {
        #expect(formatMDUUID(Array(0x00...0x0f)) == "00010203:04050607:08090a0b:0c0d0e0f")
        #expect(parseMDUUID("00010203:04050607:08090a0b:0c0d0e0f") == Array(0x00...0x0f))
        #expect(parseMDUUID("0001") == nil)
    }
}
