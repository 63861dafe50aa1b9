@testable import DiskIO
import Foundation
import MDFormat
import TestSupport
import Testing

/// A scratch file of `bytes` zeros in a new directory (removed with the returned closure).
func scratchFile(_ bytes: UInt64) throws -> (path: String, cleanup: () -> Void) {
    let dir = try FileSystem.makeTemporaryDirectory(prefix: "swraid-diskio")
    let path = dir + "/f.img"
    _ = try MemberFile(creating: path, sizeBytes: bytes)
    return (path, { FileSystem.remove(path); rmdir(dir) })
}

/// A 1 MiB scratch file opened read-write, with `count` bytes of `pattern(count, seed)` written
/// at `offset` through the page cache (the page cache tests start from it).
func scratchFileWritten(_ count: Int, at offset: UInt64, seed: UInt8) throws -> (path: String, file: MemberFile, data: [UInt8], cleanup: () -> Void) {
    let (path, cleanup) = try scratchFile(1 << 20)
    let file = try MemberFile(path: path, mode: .readWrite)
    let data = pattern(count, seed)
    try file.write(at: offset, bytes: data, purpose: .data)
    return (path, file, data, cleanup)
}

func pattern(_ n: Int, _ seed: UInt8) -> [UInt8] { (0..<n).map { UInt8(truncatingIfNeeded: $0 &* 13 &+ Int(seed)) } }

@Suite struct MemberFileTests {
    @Test(arguments: [false, true])
    func vectoredWritesAndReadsLandInOrder(direct: Bool) throws {
        let (path, cleanup) = try scratchFile(8 << 20)
        defer { cleanup() }
        let file = try MemberFile(path: path, options: MemberOpenOptions(mode: .readWrite, direct: direct))
        // 1500 buffers of 512 bytes: more than IOV_MAX in one call, so the write is split.
        let pieces = (0..<1500).map { pattern(512, UInt8(truncatingIfNeeded: $0)) }
        let buffers = pieces.map { p -> UnsafeMutableRawBufferPointer in
            let b = UnsafeMutableRawBufferPointer.allocate(byteCount: 512, alignment: 4096)
            p.withUnsafeBytes { b.copyMemory(from: $0) }
            return b
        }
        defer { buffers.forEach { $0.deallocate() } }
        try file.write(at: 4096, from: buffers.map { UnsafeRawBufferPointer($0) }, fua: true, purpose: .data)
        let back = try file.read(at: 4096, count: 1500 * 512, purpose: .data)
        #expect(back == pieces.flatMap { $0 })
        // A read into several buffers fills them in order.
        let a = UnsafeMutableRawBufferPointer.allocate(byteCount: 1024, alignment: 4096)
        let b = UnsafeMutableRawBufferPointer.allocate(byteCount: 512, alignment: 4096)
        defer { a.deallocate(); b.deallocate() }
        try file.read(at: 4096, into: [a, b], purpose: .data)
        #expect(Array(a) == pieces[0] + pieces[1])
        #expect(Array(b) == pieces[2])
    }

    /// A buffered write is made in calls that end on multiples of 256 KiB, so buffers that
    /// straddle a multiple are cut for one call and finished by the next: every byte lands once,
    /// in order (with and without FUA, whose RWF_DSYNC then becomes one fdatasync at the end).
    @Test(arguments: [false, true])
    func aBufferedWriteSplitAtItsCallBoundLandsWhole(fua: Bool) throws {
        let (path, cleanup) = try scratchFile(2 << 20)
        defer { cleanup() }
        let file = try MemberFile(path: path, mode: .readWrite)
        #expect(MemberFile.bufferedWriteCallMaxBytes == 256 << 10)
        // Odd sizes from an odd offset: most buffers cross a 256 KiB multiple somewhere, one is
        // larger than two calls.
        let sizes = [1000, 280_001, 4096, 262_144, 600_000, 3, 360_000]
        let pieces = sizes.enumerated().map { pattern($0.element, UInt8($0.offset + 1)) }
        let offset: UInt64 = 12_345
        try withBuffers(pieces) { try file.write(at: offset, from: $0, fua: fua, purpose: .data) }
        let total = sizes.reduce(0, +)
        #expect(try file.read(at: offset, count: total, purpose: .data) == pieces.flatMap { $0 })
        // Nothing written around it.
        #expect(try file.read(at: 0, count: Int(offset), purpose: .data).allSatisfy { $0 == 0 })
        #expect(try file.read(at: offset + UInt64(total), count: 4096, purpose: .data).allSatisfy { $0 == 0 })
    }

    private func withBuffers(_ pieces: [[UInt8]], _ body: ([UnsafeRawBufferPointer]) throws -> Void) throws {
        let buffers = pieces.map { p -> UnsafeMutableRawBufferPointer in
            let b = UnsafeMutableRawBufferPointer.allocate(byteCount: p.count, alignment: 16)
            p.withUnsafeBytes { b.copyMemory(from: $0) }
            return b
        }
        defer { buffers.forEach { $0.deallocate() } }
        try body(buffers.map { UnsafeRawBufferPointer($0) })
    }

    /// What the engine's loop reads itself: bytes the page cache holds (just written through
    /// the cache), into several buffers in order. O_DIRECT files, ranges past the end, a closed
    /// file and the fault injector say no, leaving the read to the I/O threads.
    @Test func readIfCachedReadsWhatThePageCacheHoldsAndOnlyThat() throws {
        let (path, file, data, cleanup) = try scratchFileWritten(12288, at: 8192, seed: 3)
        defer { cleanup() }
        let a = UnsafeMutableRawBufferPointer.allocate(byteCount: 8192, alignment: 4096)
        let b = UnsafeMutableRawBufferPointer.allocate(byteCount: 4096, alignment: 4096)
        defer { a.deallocate(); b.deallocate() }
        #expect(file.readIfCached(at: 8192, into: [a, b]))
        #expect(Array(a) + Array(b) == data)
        #expect(!file.readIfCached(at: (1 << 20) - 4096, into: [a]), "a range past the end is not all there")
        #expect(!FaultyMember(file).readIfCached(at: 8192, into: [a]), "faults apply to every read: none bypasses them")
        let direct = try MemberFile(path: path, options: MemberOpenOptions(mode: .readOnly, direct: true))
        #expect(!direct.readIfCached(at: 8192, into: [a]))
        file.close()
        #expect(!file.readIfCached(at: 8192, into: [a]))
    }

    /// What a server hands to sendfile: the file's one lent descriptor, for a range the page
    /// cache holds whole (just written through it), which stays open and reads the bytes after
    /// the member closes. A range with a page never cached (a hole), O_DIRECT files, the fault
    /// injector and a closed file lend nothing.
    @Test func cachedDescriptorLendsTheFileOnlyForRangesThePageCacheHoldsWhole() throws {
        let (path, file, data, cleanup) = try scratchFileWritten(12288, at: 8192, seed: 5)
        defer { cleanup() }
        let lent = try #require(file.cachedDescriptor(at: 8192, count: 12288), "a range just written through the cache")
        #expect(file.cachedDescriptor(at: 8192 + 512, count: 1024) === lent, "a piece of a cached range, from the file's one lent descriptor")
        #expect(file.cachedDescriptor(at: 65536, count: 4096) == nil, "a hole never read or written is not cached")
        #expect(file.cachedDescriptor(at: 8192, count: 12288 + 4096) == nil, "one page past the written range is not cached")
        #expect(file.cachedDescriptor(at: (1 << 20) - 4096, count: 8192) == nil, "a range past the end")
        #expect(FaultyMember(file).cachedDescriptor(at: 8192, count: 4096) == nil, "faults apply to every read: none bypasses them")
        let direct = try MemberFile(path: path, options: MemberOpenOptions(mode: .readOnly, direct: true))
        #expect(direct.cachedDescriptor(at: 8192, count: 4096) == nil)
        direct.close()
        file.close()
        #expect(file.cachedDescriptor(at: 8192, count: 4096) == nil)
        var back = [UInt8](repeating: 0, count: 12288)
        let n = back.withUnsafeMutableBytes { pread(lent.rawValue, $0.baseAddress, 12288, 8192) }
        #expect(n == 12288 && back == data, "the lent descriptor is its own: it reads the bytes after the member closed")
    }

    /// Sync reads (check, resync, recovery) leave the page cache as they found it, as md's go
    /// through its stripe cache only; a client's read of the same range stays cached. Where
    /// the kernel or file system refuses RWF_DONTCACHE (before Linux 6.14), the file says so
    /// and the read still returns the bytes.
    @Test func syncReadsLeaveNoPagesInThePageCache() throws {
        let (path, file, data, cleanup) = try scratchFileWritten(65536, at: 65536, seed: 9)
        defer { cleanup() }
        try file.flush(purpose: .clientFlush)
        // Drop the written (now clean) pages, so that the reads below bring them in.
        let own = open(path, O_RDONLY)
        defer { close(own) }
        #expect(posix_fadvise(own, 0, 0, POSIX_FADV_DONTNEED) == 0)
        #expect(file.cachedDescriptor(at: 65536, count: 65536) == nil, "the pages were dropped")
        #expect(try file.read(at: 65536, count: 65536, purpose: .syncRead) == data)
        if file.syncIOLeavesNoPages {
            #expect(file.cachedDescriptor(at: 65536, count: 65536) == nil, "a sync read left its pages cached")
        }
        #expect(try file.read(at: 65536, count: 65536, purpose: .data) == data)
        #expect(file.cachedDescriptor(at: 65536, count: 65536) != nil, "a client's read is cached")
        file.close()
    }

    /// Sync reads into aligned buffers go through the O_DIRECT descriptor and still see writes
    /// the page cache holds dirty (Linux writes them back first); others take the buffered path.
    @Test func alignedSyncReadsGoPastThePageCacheAndSeeItsDirtyPages() throws {
        let (path, file, data, cleanup) = try scratchFileWritten(65536, at: 65536, seed: 11)
        defer { cleanup() }
        _ = path
        let aligned = UnsafeMutableRawBufferPointer.allocate(byteCount: 65536, alignment: 4096)
        defer { aligned.deallocate() }
        aligned.initializeMemory(as: UInt8.self, repeating: 0)
        try file.read(at: 65536, into: [aligned], purpose: .syncRead)
        #expect(Array(aligned) == data, "the direct read missed the dirty pages")
        #expect(file.directSyncReads == 1)
        // Not aligned to 512 bytes: the buffered path, with the same bytes.
        let unaligned = UnsafeMutableRawBufferPointer(rebasing: aligned[8..<(8 + 4096)])
        try file.read(at: 65536, into: [unaligned], purpose: .syncRead)
        #expect(Array(unaligned) == Array(data[0..<4096]))
        #expect(file.directSyncReads == 1)
        // A client's read never takes it.
        try file.read(at: 65536, into: [aligned], purpose: .data)
        #expect(file.directSyncReads == 1)
        file.close()
    }

    @Test func directIOBouncesBuffersThatAreNotAligned() throws {
        let (path, cleanup) = try scratchFile(1 << 20)
        defer { cleanup() }
        let file = try MemberFile(path: path, options: MemberOpenOptions(mode: .readWrite, direct: true))
        let data = pattern(4096, 7)
        // [UInt8] storage is not 512-aligned in general: the write goes through a bounce buffer.
        let unaligned = UnsafeMutableRawBufferPointer.allocate(byteCount: 4096 + 8, alignment: 16)
        defer { unaligned.deallocate() }
        let view = UnsafeMutableRawBufferPointer(rebasing: unaligned[8..<(4096 + 8)])
        data.withUnsafeBytes { view.copyMemory(from: $0) }
        try file.write(at: 8192, from: [UnsafeRawBufferPointer(view)], fua: false, purpose: .data)
        try file.read(at: 8192, into: [view], purpose: .data)
        #expect(Array(view) == data)
    }

    @Test func aReadPastTheEndIsAnErrorNamingTheTruncation() throws {
        let (path, cleanup) = try scratchFile(4096)
        defer { cleanup() }
        let file = try MemberFile(path: path, mode: .readOnly)
        #expect(throws: MemberIOError.self) { _ = try file.read(at: 2048, count: 4096, purpose: .superblock) }
        do {
            _ = try file.read(at: 2048, count: 4096)
            Issue.record("a read past the end succeeded")
        } catch {
            #expect(error.description.contains("truncated"))
            #expect(error.description.contains(path))
        }
    }

    @Test func anExclusiveLockKeepsASecondOwnerOut() throws {
        let (path, cleanup) = try scratchFile(4096)
        defer { cleanup() }
        let first = try MemberFile(path: path, options: MemberOpenOptions(mode: .readWrite, exclusive: true))
        #expect(throws: DiskIOError.inUse(path: path)) { _ = try MemberFile(path: path, options: MemberOpenOptions(mode: .readWrite, exclusive: true)) }
        first.close()
        let second = try MemberFile(path: path, options: MemberOpenOptions(mode: .readWrite, exclusive: true))
        second.close()
    }

    /// A lock held for a moment (udev probing, a spawned child between fork and exec) is not
    /// "in use": the lock is asked again between pauses, as mdadm's `open_dev_excl` does. Here
    /// the other holder lets go during the first pause; one that never does is refused after
    /// every pause, with EWOULDBLOCK.
    @Test func aLockHeldForAMomentIsAskedAgainAndOneHeldThroughoutIsRefused() throws {
        let (path, cleanup) = try scratchFile(4096)
        defer { cleanup() }
        let holder = open(path, O_RDWR | O_CLOEXEC)
        let asker = open(path, O_RDWR | O_CLOEXEC)
        defer { close(holder); close(asker) }
        try #require(holder >= 0 && asker >= 0 && flock(holder, LOCK_EX | LOCK_NB) == 0)
        var pauses = 0
        #expect(MemberFile.lock(asker, shared: false) { _ in
            pauses += 1
            if pauses == 1 { flock(holder, LOCK_UN) }
        }, "the lock was let go during the first pause")
        #expect(pauses == 1)
        flock(asker, LOCK_UN)
        try #require(flock(holder, LOCK_EX | LOCK_NB) == 0)
        pauses = 0
        let had = MemberFile.lock(asker, shared: true) { _ in pauses += 1 }
        let lockErrno = errno
        #expect(!had && lockErrno == EWOULDBLOCK, "a lock held throughout was had, or failed otherwise (errno \(lockErrno))")
        #expect(pauses == MemberFile.lockRetryDelaysMicros.count)
    }

    @Test func readersShareAMemberAndAWriterExcludesThem() throws {
        let (path, cleanup) = try scratchFile(4096)
        defer { cleanup() }
        let readerA = try MemberFile(path: path, options: MemberOpenOptions(mode: .readOnly, exclusive: true))
        let readerB = try MemberFile(path: path, options: MemberOpenOptions(mode: .readOnly, exclusive: true))
        #expect(throws: DiskIOError.inUse(path: path)) { _ = try MemberFile(path: path, options: MemberOpenOptions(mode: .readWrite, exclusive: true)) }
        readerA.close()
        readerB.close()
        let writer = try MemberFile(path: path, options: MemberOpenOptions(mode: .readWrite, exclusive: true))
        #expect(throws: DiskIOError.inUse(path: path)) { _ = try MemberFile(path: path, options: MemberOpenOptions(mode: .readOnly, exclusive: true)) }
        writer.close()
    }
}

@Suite struct FileSystemTests {
    /// What the CLI sends the daemon for `add` and member names: an absolute path, as the
    /// daemon's working directory is not the caller's.
    @Test func aRelativePathIsMadeAbsoluteAgainstTheWorkingDirectory() throws {
        let cwd = FileManager.default.currentDirectoryPath
        #expect(FileSystem.absolute("m0.img") == (cwd == "/" ? "/m0.img" : cwd + "/m0.img"))
        #expect(FileSystem.absolute("sub/m0.img").hasSuffix("/sub/m0.img"))
        #expect(FileSystem.absolute("sub/m0.img").hasPrefix("/"))
        #expect(FileSystem.absolute("/dev/sdb") == "/dev/sdb")
    }
}

@Suite struct FaultyMemberTests {
    @Test func rulesMatchByOperationRangePurposeAndCount() throws {
        let (path, cleanup) = try scratchFile(1 << 20)
        defer { cleanup() }
        let device = FaultyMember(try MemberFile(path: path, mode: .readWrite))
        device.add(FaultyMember.Rule([.read], byteRange: 65536..<69632, purposes: [.data], times: 2))
        device.add(FaultyMember.Rule([.write], everyNth: 3, errno: ENOSPC))
        // Outside the range, or another purpose: no fault.
        #expect(throws: Never.self) { _ = try device.read(at: 0, count: 4096, purpose: .data) }
        #expect(throws: Never.self) { _ = try device.read(at: 65536, count: 4096, purpose: .parity) }
        // In range: fails twice, then reads normally.
        for _ in 0..<2 {
            #expect(throws: MemberIOError.self) { _ = try device.read(at: 65536 - 512, count: 1024, purpose: .data) }
        }
        #expect(throws: Never.self) { _ = try device.read(at: 65536, count: 4096, purpose: .data) }
        // Every third write fails with the errno the rule names.
        var failures: [Int32] = []
        for i in 0..<6 {
            do { try device.write(at: UInt64(i) * 512, bytes: pattern(512, 1), purpose: .data) } catch { failures.append(error.errno) }
        }
        #expect(failures == [ENOSPC, ENOSPC])
        #expect(device.injected[.read] == 2 && device.injected[.write] == 2)
        #expect(device.callCount(.read, .data) == 4 && device.callCount(.read, .parity) == 1)
    }

    @Test func aBadRangeFailsUntilItIsRewritten() throws {
        let (path, cleanup) = try scratchFile(1 << 20)
        defer { cleanup() }
        let device = FaultyMember(try MemberFile(path: path, mode: .readWrite))
        device.addBadRange(8192..<12288)
        #expect(throws: MemberIOError.self) { _ = try device.read(at: 0, count: 16384, purpose: .data) }
        // A write over part of it does not remap it; one over all of it does.
        try device.write(at: 8192, bytes: pattern(512, 2), purpose: .data)
        #expect(throws: MemberIOError.self) { _ = try device.read(at: 8192, count: 4096, purpose: .data) }
        try device.write(at: 8192, bytes: pattern(4096, 3), purpose: .rewrite)
        #expect(try device.read(at: 8192, count: 4096, purpose: .data) == pattern(4096, 3))
        #expect(device.remainingBadRanges.isEmpty)
    }

    @Test func aVanishedDeviceFailsEverything() throws {
        let (path, cleanup) = try scratchFile(1 << 20)
        defer { cleanup() }
        let device = FaultyMember(try MemberFile(path: path, mode: .readWrite))
        device.vanish()
        #expect(throws: MemberIOError(errno: ENXIO, message: "device vanished")) { _ = try device.read(at: 0, count: 512, purpose: .superblock) }
        #expect(throws: MemberIOError.self) { try device.flush(purpose: .clientFlush) }
    }

    @Test func aStallHoldsOnlyTheIOThatMatchesUntilTheGateOpens() throws {
        let (path, cleanup) = try scratchFile(1 << 20)
        defer { cleanup() }
        let device = FaultyMember(try MemberFile(path: path, mode: .readWrite))
        let gate = FaultGate()
        device.add(FaultyMember.Rule([.read], byteRange: 0..<4096, stall: gate, failsAfterStall: false))
        let finished = ConditionLock()
        nonisolated(unsafe) var stalledDone = false
        let thread = Thread {
            _ = try? device.read(at: 0, count: 512, purpose: .data)
            finished.withLock {
                stalledDone = true
                finished.broadcast()
            }
        }
        thread.start()
        gate.waitForWaiters(1)
        // Other I/O on the same device goes on while one read is held.
        #expect(try device.read(at: 8192, count: 512, purpose: .data).count == 512)
        #expect(finished.withLock { stalledDone } == false)
        gate.open()
        finished.lock()
        while !stalledDone { finished.wait() }
        finished.unlock()
    }
}

@Suite struct SuperblockProbeTests {
    @Test func noSuperblockAndTooSmallAreNamed() throws {
        let (path, cleanup) = try scratchFile(64 << 10)
        defer { cleanup() }
        #expect(throws: ProbeError.noSuperblock(path: path)) { _ = try SuperblockProbe.probe(try MemberFile(path: path, mode: .readOnly)) }
        let (tiny, cleanupTiny) = try scratchFile(4096)
        defer { cleanupTiny() }
        #expect(throws: ProbeError.tooSmall(path: tiny, sizeBytes: 4096)) { _ = try SuperblockProbe.probe(try MemberFile(path: tiny, mode: .readOnly)) }
    }
}
