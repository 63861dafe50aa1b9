import DiskIO
import MDFormat
import RaidCore

/// One system call's worth of member I/O: a run of the core's I/Os on one member, merged.
struct MergedIO {
    enum Kind: Equatable {
        case read
        case write(fua: Bool)
        case flush
    }

    let member: MemberIndex
    let kind: Kind
    let offsetBytes: UInt64
    /// The core's I/Os this call performs, in device order (their buffers are consecutive on the
    /// member; several flushes of one member are answered by one flush).
    let requests: [MemberIORequest]

    var byteCount: Int { requests.reduce(0) { $0 + $1.byteCount } }

    /// The buffers, with neighbours that are also neighbours in memory fused into one.
    var buffers: [IOBuffer] {
        var out: [IOBuffer] = []
        for io in requests {
            let buffer: IOBuffer
            switch io.kind {
            case .read(let b), .write(let b, _): buffer = b
            case .flush: continue
            }
            if let last = out.last, last.isFollowed(by: buffer) {
                out[out.count - 1] = IOBuffer(storage: last.storage, offset: last.offset, count: last.count + buffer.count)
            } else {
                out.append(buffer)
            }
        }
        return out
    }

    /// What the merged call is for, for the device and fault injector: the first request's.
    var purpose: MemberIOPurpose { requests[0].purpose }
}

/// md leans on the block layer's plugging to turn the 4 KiB stripe I/Os of a large request into
/// a few large ones; this is that plug. The I/Os the core issues while it handles a batch of
/// events are collected, then sorted by member and offset, and runs of reads (or writes of the
/// same FUA) that are contiguous on the device become one vectored call, up to `IOV_MAX`
/// buffers and `maxBytes`. Flushes of one member in a batch become one flush.
///
/// Reordering inside a batch is safe: the core only issues at once I/Os that may complete in
/// any order (the simulator reorders them freely), and a flush covers writes completed before it
/// was issued, which all are.
struct IOPlug {
    var maxBuffers = 1024
    var maxBytes = 4 << 20
    /// Resync, recovery, check and repair reads merge up to this much. Each read of a window
    /// completes its stripes only when every member's has, and the window's next stripes go
    /// out as they complete: one call per member per window would leave the disk idle between
    /// windows (a RAID5 check read at 0.6-0.8 of a plain `dd bs=1M` of the members). In calls
    /// of 256 KiB, a window of 256 stripes keeps several reads per member in flight, as the
    /// block layer splits md's resync bios (`max_sectors_kb`) and queues them (measured: RAID5
    /// of 4, 0.70-0.81 of the plain read with a window of 128 stripes in 256 KiB calls,
    /// 1.04-1.15 with 256; 0.66-0.68 with 192 in one call).
    var syncReadMaxBytes = 256 << 10

    func merge(_ batch: [MemberIORequest]) -> [MergedIO] {
        let sorted = batch.sorted { a, b in
            if a.member != b.member { return a.member < b.member }
            let ka = kindRank(a), kb = kindRank(b)
            if ka != kb { return ka < kb }
            if a.offsetBytes != b.offsetBytes { return a.offsetBytes < b.offsetBytes }
            return a.id < b.id
        }
        var out: [MergedIO] = []
        var run: [MemberIORequest] = []
        var runKind = MergedIO.Kind.flush
        var runEnd: UInt64 = 0
        var runBytes = 0
        func close() {
            guard let first = run.first else { return }
            out.append(MergedIO(member: first.member, kind: runKind, offsetBytes: first.offsetBytes, requests: run))
            run.removeAll()
        }
        for io in sorted {
            let kind = Self.kind(io)
            // Reads that must come from the device never merge with reads that may come from
            // the page cache: the merged call has one purpose, its first request's.
            let extends = !run.isEmpty && run[0].member == io.member && runKind == kind
                && (kind != .read || run[0].purpose.readsFromTheDevice == io.purpose.readsFromTheDevice)
                && (kind == .flush || (io.offsetBytes == runEnd && run.count < maxBuffers
                    && runBytes + io.byteCount <= (io.purpose == .syncRead ? syncReadMaxBytes : maxBytes)))
            if !extends {
                close()
                runKind = kind
                runBytes = 0
            }
            run.append(io)
            runEnd = io.offsetBytes + UInt64(io.byteCount)
            runBytes += io.byteCount
        }
        close()
        return out
    }

    static func kind(_ io: MemberIORequest) -> MergedIO.Kind {
        switch io.kind {
        case .read: return .read
        case .write(_, let fua): return .write(fua: fua)
        case .flush: return .flush
        }
    }

    private func kindRank(_ io: MemberIORequest) -> Int {
        switch io.kind {
        case .read: return 0
        case .write(_, let fua): return fua ? 2 : 1
        case .flush: return 3
        }
    }
}

extension Array where Element == IOBuffer {
    /// The buffers as a device read fills them.
    var readTargets: [UnsafeMutableRawBufferPointer] {
        map { UnsafeMutableRawBufferPointer(start: $0.baseAddress, count: $0.count) }
    }
}
