import DiskIO
import MDFormat
import RaidCore
import TestSupport
import Testing

@testable import RaidEngine

/// The plug: member I/Os of one batch merged into as few system calls as the work allows.
@Suite struct IOPlugTests {
    var nextID: UInt64 = 0

    mutating func io(_ member: Int, _ offset: UInt64, _ kind: MemberIOKind, _ purpose: MemberIOPurpose = .data) -> MemberIORequest {
        nextID += 1
        return MemberIORequest(id: MemberIOID(nextID), member: MemberIndex(member), offsetBytes: offset, kind: kind, purpose: purpose)
    }

    @Test mutating func consecutiveReadsOfOneMemberBecomeOneCall() {
        let storage = IOBufferStorage(capacity: 64 << 10)
        // Eight 4 KiB reads, issued out of order, into one contiguous client buffer.
        let order = [3, 0, 7, 1, 2, 6, 4, 5]
        let batch = order.map { i in io(0, 1_000_000 + UInt64(i) * 4096, .read(into: IOBuffer(storage: storage, offset: i * 4096, count: 4096))) }
        let merged = IOPlug().merge(batch)
        #expect(merged.count == 1)
        #expect(merged[0].offsetBytes == 1_000_000)
        #expect(merged[0].requests.map(\.offsetBytes) == (0..<8).map { 1_000_000 + UInt64($0) * 4096 })
        // Neighbours in memory as well as on the device: one iovec.
        #expect(merged[0].buffers.count == 1 && merged[0].buffers[0].count == 32768)
    }

    @Test mutating func gapsMembersKindsAndFUASplitRuns() {
        let b = { IOBuffer(uninitializedCount: 4096) }
        let batch = [
            io(0, 0, .write(from: b(), fua: false)), io(0, 4096, .write(from: b(), fua: false)),
            io(0, 12288, .write(from: b(), fua: false)),  // a gap
            io(1, 0, .write(from: b(), fua: false)), io(1, 4096, .write(from: b(), fua: true)),  // FUA differs
            io(2, 0, .read(into: b())), io(2, 4096, .write(from: b(), fua: false)),  // read vs write
            io(3, 0, .flush, .clientFlush), io(3, 0, .flush, .metadataBarrier),  // one flush answers both
        ]
        let merged = IOPlug().merge(batch)
        #expect(merged.map(\.requests.count) == [2, 1, 1, 1, 1, 1, 2])
        #expect(merged.map(\.member.rawValue) == [0, 0, 1, 1, 2, 2, 3])
        #expect(merged.last!.kind == .flush)
        // Buffers from separate allocations stay separate iovecs.
        #expect(merged[0].buffers.count == 2)
    }

    /// Reads that must come from the device (a check's, a rewrite's verification) never merge
    /// with a client's neighbouring read: the merged call has one purpose, and a client's may be
    /// served from the page cache. Before, a data read followed on the device by a check's read
    /// made one call tagged `.data`, and the check compared cached copies for those blocks.
    @Test mutating func readsThatMustComeFromTheDeviceDoNotMergeWithOthers() {
        let b = { IOBuffer(uninitializedCount: 4096) }
        let batch = [
            io(0, 0, .read(into: b()), .data), io(0, 4096, .read(into: b()), .syncRead), io(0, 8192, .read(into: b()), .syncRead),
            io(1, 0, .read(into: b()), .parity), io(1, 4096, .read(into: b()), .rewrite),
            io(2, 0, .write(from: b(), fua: false), .data), io(2, 4096, .write(from: b(), fua: false), .rewrite),
        ]
        let merged = IOPlug().merge(batch)
        #expect(merged.map(\.requests.count) == [1, 2, 1, 1, 2])
        #expect(merged.map(\.purpose) == [.data, .syncRead, .parity, .rewrite, .data])
        // Nor are they tried from the page cache on the loop.
        #expect(RaidEngine.readsOnLoop(purpose: .data, byteCount: 4096))
        #expect(!RaidEngine.readsOnLoop(purpose: .syncRead, byteCount: 4096))
        #expect(!RaidEngine.readsOnLoop(purpose: .rewrite, byteCount: 4096))
    }

    @Test mutating func runsStopAtTheIovecAndByteBounds() {
        let batch = (0..<1500).map { i in io(0, UInt64(i) * 4096, .read(into: IOBuffer(uninitializedCount: 4096))) }
        #expect(IOPlug().merge(batch).map(\.requests.count) == [1024, 476])
        var plug = IOPlug()
        plug.maxBytes = 64 << 10
        #expect(plug.merge(batch).allSatisfy { $0.byteCount <= 64 << 10 })
        #expect(plug.merge(batch).count == 1500 / 16 + 1)
    }

    /// A check's window of stripes goes out as several calls per member, so that each member has
    /// reads in flight while the stripes of the first are compared; a client's reads merge whole.
    @Test mutating func syncReadsMergeInCallsOfAtMost256KiB() {
        let sync = (0..<256).map { i in io(0, UInt64(i) * 4096, .read(into: IOBuffer(uninitializedCount: 4096)), .syncRead) }
        #expect(IOPlug().merge(sync).map(\.byteCount) == [256 << 10, 256 << 10, 256 << 10, 256 << 10])
        let client = (0..<256).map { i in io(1, UInt64(i) * 4096, .read(into: IOBuffer(uninitializedCount: 4096))) }
        #expect(IOPlug().merge(client).map(\.byteCount) == [1 << 20])
    }

    /// A merged read that fails is retried piece by piece, so only the piece on the bad sector
    /// reports the error (the rest of the run did read fine).
    @Test mutating func aFailedMergedCallIsRetriedPieceByPiece() throws {
        let dir = TemporaryDirectory()
        let path = dir.file("f.img")
        _ = try MemberFile(creating: path, sizeBytes: 1 << 20)
        let device = FaultyMember(try MemberFile(path: path, mode: .readWrite))
        device.addBadRange(8192..<8704)
        let batch = (0..<4).map { i in io(0, UInt64(i) * 4096, .read(into: IOBuffer(uninitializedCount: 4096))) }
        let merged = IOPlug().merge(batch)
        #expect(merged.count == 1)
        let results = MemberIOPool.perform(IOJob(device: device, io: merged[0]))
        #expect(results.map { $0.1.succeeded } == [true, true, false, true])
    }
}
