import CDiskIO
import MDFormat
import Synchronization
import SystemPackage

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

public enum DiskIOError: Error, CustomStringConvertible, Equatable {
    case open(path: String, reason: String)
    /// Another process holds the member (an exclusive lock: a running array, a create).
    case inUse(path: String)
    case resize(path: String, reason: String)
    /// A read, write or flush failed.
    case io(path: String, MemberIOError)

    public var description: String {
        switch self {
        case .open(let path, let reason): return "\(path): cannot open: \(reason)"
        case .inUse(let path): return "\(path): in use by another process (a running array or a create holds it)"
        case .resize(let path, let reason): return "\(path): cannot set size: \(reason)"
        case .io(let path, let error): return "\(path): \(error.message)"
        }
    }
}

/// How a member is opened.
public struct MemberOpenOptions: Sendable, Equatable {
    public enum Mode: Sendable, Equatable { case readOnly, readWrite }
    public var mode: Mode
    /// O_DIRECT: bypass the page cache (buffers, offsets and lengths aligned to 512 bytes; any
    /// that are not go through an aligned bounce buffer).
    public var direct = false
    /// Lock the member (flock) so that no second array or create writes to it meanwhile: an
    /// exclusive lock when opened read-write, a shared one when read-only (read-only users may
    /// share a member, a writer excludes them all). Refused with `DiskIOError.inUse` when the
    /// lock is held the other way.
    public var exclusive = false

    public init(mode: Mode, direct: Bool = false, exclusive: Bool = false) {
        self.mode = mode
        self.direct = direct
        self.exclusive = exclusive
    }
}

/// A member device: a regular file or a block device, accessed with positioned (vectored)
/// reads and writes. Every system call the package makes on members goes through this type.
///
/// Thread safety: the descriptor never changes while the file is open, and positioned I/O keeps
/// no shared offset, so I/O may run on several threads at once. `close` must come after all I/O
/// has finished (the owner's job).
public final class MemberFile: MemberDevice, @unchecked Sendable {
    public typealias Mode = MemberOpenOptions.Mode

    public let path: String
    public let options: MemberOpenOptions
    public var mode: Mode { options.mode }
    public var name: String { path }
    private let fd: FileDescriptor
    /// Set once, under `closeLock`: a closed file's descriptor number may belong to another file
    /// by now, so every I/O checks it first and fails with EBADF.
    private var closed = false
    private let closeLock = ConditionLock()
    /// RWF_DONTCACHE was refused here (an older kernel, or a file system without it): sync I/O
    /// goes through the page cache as any other from then on.
    private let dontCacheRefused = Atomic<Bool>(false)
    /// A second descriptor of the file, read-only and O_DIRECT, for resync, recovery, check and
    /// repair reads: they go from the disk into the stripe, as md's do, with no page cache copy
    /// and no page cache pages made and dropped (RWF_DONTCACHE still makes them: on this VM,
    /// whose freed memory the host takes back, each costs a host fault). -1 where the file
    /// system refused O_DIRECT (the reads then take `dontCache`), or for an O_DIRECT member
    /// (whose own descriptor already is). Closed with `fd`. Coherent with the buffered writes
    /// on `fd`: Linux writes a range's dirty pages back before a direct read of it.
    private let directSyncReadFd: Int32
    /// The direct descriptor failed a read as a file system without O_DIRECT for that range
    /// does (EINVAL): sync reads take the buffered path from then on.
    private let directSyncReadRefused = Atomic<Bool>(false)
    private let directSyncReadCount = Atomic<Int>(0)
    /// Sync reads made through the O_DIRECT descriptor (the tests ask).
    public var directSyncReads: Int { directSyncReadCount.load(ordering: .relaxed) }

    /// Whether resync, recovery, check and repair I/O still asks to leave no pages behind (false
    /// once the kernel or file system refused RWF_DONTCACHE, or with O_DIRECT).
    public var syncIOLeavesNoPages: Bool { !options.direct && !dontCacheRefused.load(ordering: .relaxed) }

    /// Whether buffered I/O for `purpose` leaves the page cache as it found it: resync,
    /// recovery, check and repair pass over the whole array once, and md's go through its
    /// stripe cache only; through the page cache they would push every client's cached data out
    /// (a check of a 1 GiB RAID6 of 5 left 1.8 GB cached), and on a VM whose freed memory the
    /// host takes back (virtio-balloon free page reporting, as here) each new page cache page
    /// costs a fault in the host: a buffered read of 1 GiB 5 s after `drop_caches` took
    /// 1.5-1.7 s of system time, against 0.85 with RWF_DONTCACHE, whose pages are reused. (Sync
    /// reads take `directSyncReadFd` first, where they can.)
    func dontCache(_ purpose: MemberIOPurpose) -> Bool {
        (purpose == .syncRead || purpose == .syncWrite) && syncIOLeavesNoPages
    }

    /// What `cachedDescriptor` lends and asks (made at its first call, under `closeLock`).
    private var lending: Lending = .notYet

    /// One duplicate of the descriptor for every reply sent from the file (the replies hold it;
    /// the last one closes it, after the member itself may have closed), and a read-only mapping
    /// of the file that mincore(2) asks about the page cache (never touched, so it costs address
    /// space only; unmapped when the member closes).
    private enum Lending {
        case notYet
        case unavailable
        case ready(SharedDescriptor, mapping: UnsafeMutableRawPointer, mappedBytes: UInt64)
    }
    public let isBlockDevice: Bool

    /// Opens an existing member.
    public convenience init(path: String, mode: Mode) throws(DiskIOError) {
        try self.init(path: path, options: MemberOpenOptions(mode: mode))
    }

    public init(path: String, options: MemberOpenOptions) throws(DiskIOError) {
        self.path = path
        self.options = options
        var raw = (options.mode == .readOnly ? O_RDONLY : O_RDWR) | O_CLOEXEC
        if options.direct { raw |= swraid_o_direct() }
        let descriptor = Glibc.open(path, raw)
        guard descriptor >= 0 else { throw DiskIOError.open(path: path, reason: lastErrorText()) }
        fd = FileDescriptor(rawValue: descriptor)
        var st = stat()
        isBlockDevice = fstat(descriptor, &st) == 0 && (st.st_mode & S_IFMT) == S_IFBLK
        // Opened before the lock below, and closed with `descriptor` where that fails.
        directSyncReadFd = options.direct ? -1 : Glibc.open(path, O_RDONLY | O_CLOEXEC | swraid_o_direct())
        if options.exclusive && !Self.lock(descriptor, shared: options.mode == .readOnly) {
            let busy = errno == EWOULDBLOCK
            let reason = lastErrorText()
            _ = Glibc.close(descriptor)
            if directSyncReadFd >= 0 { _ = Glibc.close(directSyncReadFd) }
            closed = true
            throw busy ? DiskIOError.inUse(path: path) : DiskIOError.open(path: path, reason: "cannot lock: \(reason)")
        }
    }

    /// Waits between attempts to lock a member someone else holds, in microseconds: the lock is
    /// asked again after each (doubling from 1 ms, at most 50 ms each, about a quarter of a
    /// second in all) before the member is called in use.
    static let lockRetryDelaysMicros: [UInt32] = [1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 50_000, 50_000, 50_000, 50_000]

    /// Takes the member's lock, asking again a few times while another holder has it: as
    /// mdadm's `open_dev_excl` does, a member held for a moment is not in use. Such moments are
    /// real: udev probing a block device after it was written and closed, or a child process
    /// between its fork and its exec, holding (until the exec closes it) a copy of the
    /// descriptor of the member's last user, whose lock goes with it (a clean-clone `.ci/run`
    /// saw a test's assembly refused so, right after its create closed the members, while the
    /// other tests spawned processes). False with `errno` set when the lock was not had.
    /// (`pause` waits between attempts; tests pass their own.)
    static func lock(_ descriptor: CInt, shared: Bool, pause: (UInt32) -> Void = { usleep($0) }) -> Bool {
        let operation = (shared ? LOCK_SH : LOCK_EX) | LOCK_NB
        for delay in lockRetryDelaysMicros {
            if flock(descriptor, operation) == 0 { return true }
            guard errno == EWOULDBLOCK else { return false }
            pause(delay)
        }
        return flock(descriptor, operation) == 0
    }

    /// Creates a new, empty member file of `sizeBytes` (sparse); fails if it exists.
    public init(creating path: String, sizeBytes: UInt64, exclusive: Bool = false) throws(DiskIOError) {
        self.path = path
        options = MemberOpenOptions(mode: .readWrite, exclusive: exclusive)
        isBlockDevice = false
        directSyncReadFd = -1
        let descriptor = Glibc.open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
        guard descriptor >= 0 else { throw DiskIOError.open(path: path, reason: lastErrorText()) }
        fd = FileDescriptor(rawValue: descriptor)
        if exclusive { _ = flock(descriptor, LOCK_EX | LOCK_NB) }
        if ftruncate(descriptor, off_t(sizeBytes)) != 0 {
            let reason = lastErrorText()
            _ = Glibc.close(descriptor)
            closed = true
            throw DiskIOError.resize(path: path, reason: reason)
        }
    }

    deinit { close() }

    /// Closes the descriptor (once, whichever thread asks first). The owner closes only when no
    /// I/O on the file is in flight.
    public func close() {
        let (shouldClose, lent) = closeLock.withLock { () -> (Bool, Lending) in
            if closed { return (false, .notYet) }
            closed = true
            // No `cachedDescriptor` call runs from here on (each checks `closed` under the
            // lock): the mapping has no user left, and the lent descriptor stays open only for
            // the replies holding it.
            defer { lending = .unavailable }
            return (true, lending)
        }
        guard shouldClose else { return }
        _ = Glibc.close(fd.rawValue)
        if directSyncReadFd >= 0 { _ = Glibc.close(directSyncReadFd) }
        if case .ready(_, let mapping, let mappedBytes) = lent { _ = swraid_unmap_file(mapping, mappedBytes) }
    }

    public var isClosed: Bool { closeLock.withLock { closed } }

    private func checkOpen() throws(MemberIOError) {
        if isClosed { throw MemberIOError(errno: EBADF, message: "\(path) is closed") }
    }

    /// Size in bytes (the device size for block devices).
    public func sizeBytes() throws(MemberIOError) -> UInt64 {
        try checkOpen()
        if isBlockDevice {
            var size: UInt64 = 0
            if swraid_block_device_size(fd.rawValue, &size) == 0 { return size }
        }
        let end = lseek(fd.rawValue, 0, SEEK_END)
        guard end >= 0 else { throw MemberIOError(errno: errno, message: "cannot find the size: \(lastErrorText())") }
        return UInt64(end)
    }

    /// The same size, with the path in the error.
    public func size() throws(DiskIOError) -> UInt64 {
        do { return try sizeBytes() } catch { throw DiskIOError.io(path: path, error) }
    }

    public func read(at offsetBytes: UInt64, into buffers: [UnsafeMutableRawBufferPointer], purpose: MemberIOPurpose) throws(MemberIOError) {
        try checkOpen()
        if options.direct && !Self.aligned(buffers.map { UnsafeRawBufferPointer($0) }, offsetBytes) {
            let total = buffers.reduce(0) { $0 + $1.count }
            let bounce = UnsafeMutableRawBufferPointer.allocate(byteCount: max(total, 1), alignment: 4096)
            defer { bounce.deallocate() }
            try transfer(read: true, offsetBytes, [UnsafeMutableRawBufferPointer(rebasing: bounce[0..<total])])
            var at = 0
            for b in buffers where b.count > 0 {
                b.baseAddress!.copyMemory(from: bounce.baseAddress! + at, byteCount: b.count)
                at += b.count
            }
            return
        }
        if purpose.readsFromTheDevice && directSyncReadFd >= 0 && !directSyncReadRefused.load(ordering: .relaxed)
            && Self.aligned(buffers.map { UnsafeRawBufferPointer($0) }, offsetBytes) {
            do throws(MemberIOError) {
                try transfer(read: true, offsetBytes, buffers, descriptor: directSyncReadFd)
                directSyncReadCount.add(1, ordering: .relaxed)
                return
            } catch where error.errno == EINVAL {
                // Alignment this file system will not take directly (a 4 KiB-sector disk), or no
                // O_DIRECT for regular reads: buffered from now on, this read included.
                directSyncReadRefused.store(true, ordering: .relaxed)
            }
        }
        try transfer(read: true, offsetBytes, buffers, dontCache: dontCache(purpose))
    }

    /// One preadv2 with RWF_NOWAIT (buffered files only: O_DIRECT reads always go to the device).
    public func readIfCached(at offsetBytes: UInt64, into buffers: [UnsafeMutableRawBufferPointer]) -> Bool {
        guard !options.direct, !isClosed else { return false }
        let vectors = buffers.filter { $0.count > 0 }.map { iovec(iov_base: $0.baseAddress, iov_len: $0.count) }
        let wanted = vectors.reduce(0) { $0 + $1.iov_len }
        guard wanted > 0, vectors.count <= Int(swraid_iov_max()) else { return false }
        let n = vectors.withUnsafeBufferPointer { swraid_preadv_nowait(fd.rawValue, $0.baseAddress, Int32($0.count), off_t(offsetBytes)) }
        return n == wanted
    }

    public func readIfCached(at offsetBytes: UInt64, into buffer: UnsafeMutableRawBufferPointer) -> Bool {
        guard !options.direct, !isClosed, let base = buffer.baseAddress, buffer.count > 0 else { return false }
        var vector = iovec(iov_base: base, iov_len: buffer.count)
        return swraid_preadv_nowait(fd.rawValue, &vector, 1, off_t(offsetBytes)) == buffer.count
    }

    /// mincore(2) of the range through the file's mapping (under the close lock, so never of a
    /// file being closed), then the file's one lent descriptor.
    public func cachedDescriptor(at offsetBytes: UInt64, count: Int) -> SharedDescriptor? {
        guard !options.direct, count > 0 else { return nil }
        return closeLock.withLock { () -> SharedDescriptor? in
            guard !closed else { return nil }
            if case .notYet = lending { lending = makeLending() }
            guard case .ready(let descriptor, let mapping, let mappedBytes) = lending,
                offsetBytes <= mappedBytes, UInt64(count) <= mappedBytes - offsetBytes,
                swraid_range_resident(mapping, offsetBytes, UInt64(count)) == 1
            else { return nil }
            return descriptor
        }
    }

    /// The lent descriptor and the mapping, or `.unavailable`. mincore answers truly only to a
    /// process that could write the file (otherwise Linux says every page is resident rather
    /// than tell): a file open read-write, or owned by this user, or any file to root. Anything
    /// else lends nothing, and its reads are copied.
    private func makeLending() -> Lending {
        var st = stat()
        guard fstat(fd.rawValue, &st) == 0 else { return .unavailable }
        guard options.mode == .readWrite || st.st_uid == geteuid() || geteuid() == 0 else { return .unavailable }
        // The size as `sizeBytes` finds it (which takes the close lock, held here).
        var size = UInt64(st.st_size)
        if isBlockDevice && swraid_block_device_size(fd.rawValue, &size) != 0 { return .unavailable }
        guard size > 0 else { return .unavailable }
        let copy = swraid_dup_cloexec(fd.rawValue)
        guard copy >= 0 else { return .unavailable }
        let descriptor = SharedDescriptor(takingOwnershipOf: copy)
        guard let mapping = swraid_map_file(copy, size) else { return .unavailable }
        return .ready(descriptor, mapping: mapping, mappedBytes: size)
    }

    public func write(at offsetBytes: UInt64, from buffers: [UnsafeRawBufferPointer], fua: Bool, purpose: MemberIOPurpose) throws(MemberIOError) {
        try checkOpen()
        guard options.mode == .readWrite else { throw MemberIOError(errno: EBADF, message: "\(path) is open read-only") }
        var sources = buffers
        var bounce: UnsafeMutableRawBufferPointer?
        defer { bounce?.deallocate() }
        if options.direct && !Self.aligned(buffers, offsetBytes) {
            let total = buffers.reduce(0) { $0 + $1.count }
            let b = UnsafeMutableRawBufferPointer.allocate(byteCount: max(total, 1), alignment: 4096)
            var at = 0
            for s in buffers where s.count > 0 {
                (b.baseAddress! + at).copyMemory(from: s.baseAddress!, byteCount: s.count)
                at += s.count
            }
            bounce = b
            sources = [UnsafeRawBufferPointer(rebasing: b[0..<total])]
        }
        try transfer(read: false, offsetBytes, sources.map { UnsafeMutableRawBufferPointer(mutating: $0) }, dsync: fua,
                     callMaxBytes: options.direct ? Int.max : Self.bufferedWriteCallMaxBytes, dontCache: dontCache(purpose))
        let total = sources.reduce(0) { $0 + $1.count }
        if !options.direct && !fua && total >= Self.writebackThresholdBytes {
            // md's writes go to the disk as they come; through the page cache they would wait
            // for the next flush, which then writes everything at once (a 1 GiB copy's final
            // flush took as long as the copy). Starting large writes now keeps the page cache
            // for reads and leaves the flush little to do. A hint: errors surface at the flush.
            _ = swraid_start_writeback(fd.rawValue, off_t(offsetBytes), off_t(total))
        }
    }

    /// A buffered write is made in calls of at most this many bytes, each ending on a multiple
    /// of it. Linux (6.x, ext4 and block devices) gives the page cache folio a buffered write
    /// creates the size of that write, up to 2 MiB, and every later small write into a folio
    /// walks all its blocks and leaves the whole folio dirty for writeback. 4 KiB random writes
    /// to a file filled by 4 MiB calls ran at 33 k/s, by 1 MiB calls at 52 k/s, by 256 KiB
    /// calls at 161 k/s, by 128 KiB at 197 k/s (fio, one thread, cached file). A random write
    /// to the array is a read-modify-write of small member writes, and swraid's plug merges
    /// member writes up to 4 MiB, so members are written in pieces this size: the size of the
    /// requests nbdcopy sends, which is what a file served by nbdkit gets. Smaller pieces cost
    /// sequential writes per folio: nbdcopy 1 GiB to RAID5 of 4 ran at 0.93-1.20 (median 1.0)
    /// of the unsplit speed with 256 KiB pieces, 0.91 with 128 KiB; random writes to RAID6 of 5
    /// ran as fast with either (256 KiB against 128 KiB, 0.79-1.12), 1.1-1.8 times the unsplit.
    public static let bufferedWriteCallMaxBytes = 256 << 10

    /// Writes this large start their writeback at once (small ones stay in the page cache, where
    /// rewrites of the same blocks merge).
    public static let writebackThresholdBytes = 256 << 10

    public func flush(purpose: MemberIOPurpose) throws(MemberIOError) {
        try checkOpen()
        if fdatasync(fd.rawValue) != 0 { throw MemberIOError(errno: errno, message: "flush failed: \(lastErrorText())") }
    }

    /// Moves all the bytes, looping over short transfers and splitting at IOV_MAX, and in calls
    /// that end on multiples of `callMaxBytes` (none crosses one).
    private func transfer(read: Bool, _ offsetBytes: UInt64, _ buffers: [UnsafeMutableRawBufferPointer], dsync: Bool = false,
                          callMaxBytes: Int = Int.max, dontCache: Bool = false, descriptor: Int32? = nil) throws(MemberIOError) {
        let raw = descriptor ?? fd.rawValue
        var useDontCache = dontCache
        precondition(callMaxBytes > 0)
        var vectors = buffers.filter { $0.count > 0 }.map { iovec(iov_base: $0.baseAddress, iov_len: $0.count) }
        let wanted = vectors.reduce(0) { $0 + $1.iov_len }
        var done = 0
        var first = 0
        let iovMax = Int(swraid_iov_max())
        // RWF_DSYNC makes only its own call's bytes durable: a write of several calls is made
        // with plain ones and one fdatasync after them.
        let oneCall = vectors.count <= iovMax
            && (callMaxBytes == Int.max || Int(offsetBytes % UInt64(callMaxBytes)) + wanted <= callMaxBytes)
        var useDsync = dsync && oneCall
        while first < vectors.count {
            let position = off_t(offsetBytes) + off_t(done)
            // This call's iovecs: as many as fit below the next multiple of callMaxBytes, the
            // last one cut short for the call (and given back its length after it).
            var room = callMaxBytes == Int.max ? Int.max : callMaxBytes - Int(UInt64(position) % UInt64(callMaxBytes))
            var count = 0
            var cut: (index: Int, fullLength: Int)?
            while first + count < vectors.count && count < iovMax && room > 0 {
                let length = vectors[first + count].iov_len
                if length > room {
                    cut = (first + count, length)
                    vectors[first + count].iov_len = room
                    room = 0
                } else {
                    room -= length
                }
                count += 1
            }
            let n: Int = vectors.withUnsafeBufferPointer { v in
                let base = v.baseAddress! + first
                if useDontCache {
                    if read { return swraid_preadv_dontcache(raw, base, Int32(count), position) }
                    return swraid_pwritev_dontcache(raw, base, Int32(count), position, useDsync ? 1 : 0)
                }
                if read { return preadv(raw, base, Int32(count), position) }
                if useDsync { return swraid_pwritev_dsync(raw, base, Int32(count), position) }
                return pwritev(raw, base, Int32(count), position)
            }
            if let cut { vectors[cut.index].iov_len = cut.fullLength }
            if n < 0 {
                if errno == EINTR { continue }
                if useDontCache && (errno == EOPNOTSUPP || errno == ENOSYS || errno == EINVAL) {
                    // No RWF_DONTCACHE here: through the page cache, and never asked again.
                    dontCacheRefused.store(true, ordering: .relaxed)
                    useDontCache = false
                    continue
                }
                if useDsync && (errno == EOPNOTSUPP || errno == ENOSYS || errno == EINVAL) {
                    // No RWF_DSYNC here: plain writes, then fdatasync below.
                    useDsync = false
                    continue
                }
                let what = read ? "read" : "write"
                throw MemberIOError(errno: errno, message: "\(what) at byte \(offsetBytes + UInt64(done)) failed: \(lastErrorText())")
            }
            if n == 0 && read {
                throw MemberIOError(errno: EIO, message: "truncated: wanted \(wanted) bytes at byte \(offsetBytes), the file ends after \(done)")
            }
            done += n
            // Drop the iovecs done and trim a partly done one.
            var left = n
            while left > 0 && first < vectors.count {
                if vectors[first].iov_len <= left {
                    left -= vectors[first].iov_len
                    first += 1
                } else {
                    vectors[first].iov_base = vectors[first].iov_base! + left
                    vectors[first].iov_len -= left
                    left = 0
                }
            }
        }
        if dsync && !useDsync {
            try flush(purpose: .data)
        }
    }

    private static func aligned(_ buffers: [UnsafeRawBufferPointer], _ offset: UInt64) -> Bool {
        offset % 512 == 0 && buffers.allSatisfy { $0.count % 512 == 0 && (UInt(bitPattern: $0.baseAddress) % 512 == 0) }
    }

    /// True when `path` names something that exists.
    public static func exists(_ path: String) -> Bool {
        var st = stat()
        return stat(path, &st) == 0
    }

    /// Removes a file this program created (a member of a create that failed).
    public static func remove(_ path: String) {
        _ = unlink(path)
    }

    /// What `path` names, so that two spellings of one file (or two nodes of one block device)
    /// compare equal; nil when it does not exist.
    public static func identity(_ path: String) -> FileIdentity? {
        var st = stat()
        guard stat(path, &st) == 0 else { return nil }
        if (st.st_mode & S_IFMT) == S_IFBLK { return .blockDevice(UInt64(st.st_rdev)) }
        return .file(device: UInt64(st.st_dev), inode: UInt64(st.st_ino))
    }
}

/// A file's identity as the kernel sees it (see `MemberFile.identity`).
public enum FileIdentity: Hashable, Sendable {
    case file(device: UInt64, inode: UInt64)
    case blockDevice(UInt64)
}

/// strerror of the current errno.
func lastErrorText() -> String { String(cString: strerror(errno)) }

extension MemberFile {
    /// Reads with the path in the error (for the offline tools' messages).
    public func read(at offsetBytes: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(DiskIOError) {
        do { try read(at: offsetBytes, into: [buffer], purpose: .data) } catch { throw DiskIOError.io(path: path, error) }
    }

    public func read(at offsetBytes: UInt64, count: Int) throws(DiskIOError) -> [UInt8] {
        do { return try read(at: offsetBytes, count: count, purpose: .data) } catch { throw DiskIOError.io(path: path, error) }
    }

    public func write(at offsetBytes: UInt64, from buffer: UnsafeRawBufferPointer) throws(DiskIOError) {
        do { try write(at: offsetBytes, from: [buffer], fua: false, purpose: .data) } catch { throw DiskIOError.io(path: path, error) }
    }

    public func write(at offsetBytes: UInt64, bytes: [UInt8]) throws(DiskIOError) {
        do { try write(at: offsetBytes, bytes: bytes, purpose: .data) } catch { throw DiskIOError.io(path: path, error) }
    }

    /// Makes every completed write durable.
    public func sync() throws(DiskIOError) {
        do { try flush(purpose: .data) } catch { throw DiskIOError.io(path: path, error) }
    }
}
