import DiskIO
import MDFormat
import RaidCore

/// A simulated member device: what reads return now, what would survive a crash, and the writes
/// in between (completed but not yet flushed). It is a `MemberDevice` like a real file, so the
/// same superblock probe reads it; when I/O happens and which faults strike is decided by the
/// simulation.
public final class SimMember: MemberDevice {
    public let name: String
    /// Bytes as reads see them.
    public private(set) var current: [UInt8]
    /// Bytes that survive a crash.
    public private(set) var durable: [UInt8]
    /// Per sector: index into `unflushedWrites` of its latest unflushed write, or -1. A volatile
    /// cache holds the newest data for a sector, so an older write can never reappear over a
    /// newer one.
    private var unflushedWrite: [Int32]
    /// Per sector: which sector of that write it is.
    private var unflushedIndex: [Int32]
    /// Sectors with an unflushed write (each once).
    private var unflushedSectors: [Int] = []
    /// Data of the writes `unflushedWrite` points into.
    private var unflushedWrites: [[UInt8]] = []
    /// The device is dead: every I/O fails.
    public var dead = false
    /// Sectors that fail to read until rewritten (latent bad sectors).
    public var badSectors: Set<Int> = []

    public init(name: String, image: [UInt8]) {
        self.name = name
        current = image
        durable = image
        unflushedWrite = [Int32](repeating: -1, count: image.count / 512)
        unflushedIndex = [Int32](repeating: 0, count: image.count / 512)
    }

    public var sizeInBytes: Int { current.count }

    // MARK: - MemberDevice

    public func sizeBytes() throws(MemberIOError) -> UInt64 { UInt64(current.count) }

    public func read(at offsetBytes: UInt64, into buffers: [UnsafeMutableRawBufferPointer], purpose: MemberIOPurpose) throws(MemberIOError) {
        let length = buffers.reduce(0) { $0 + $1.count }
        let offset = Int(offsetBytes)
        guard !dead else { throw MemberIOError.io }
        guard offset >= 0, offset + length <= current.count else { throw MemberIOError(errno: 5, message: "read past the end") }
        if !badSectors.isEmpty {
            for sector in (offset / 512)..<((offset + length + 511) / 512) where badSectors.contains(sector) { throw MemberIOError.io }
        }
        current.withUnsafeBytes { raw in
            var at = offset
            for b in buffers where b.count > 0 {
                b.baseAddress!.copyMemory(from: raw.baseAddress! + at, byteCount: b.count)
                at += b.count
            }
        }
    }

    public func write(at offsetBytes: UInt64, from buffers: [UnsafeRawBufferPointer], fua: Bool, purpose: MemberIOPurpose) throws(MemberIOError) {
        var data: [UInt8] = []
        for b in buffers { data.append(contentsOf: b) }
        guard write(offset: Int(offsetBytes), data: data, fua: fua) else { throw MemberIOError.io }
    }

    public func flush(purpose: MemberIOPurpose) throws(MemberIOError) {
        guard flush() else { throw MemberIOError.io }
    }

    public func close() {}

    // MARK: - the simulated disk

    /// Applies a completed write; with `fua` it is durable at once.
    @discardableResult
    public func write(offset: Int, data: [UInt8], fua: Bool) -> Bool {
        guard !dead, offset >= 0, offset + data.count <= current.count else { return false }
        SimMember.copy(data, into: &current, at: offset)
        if !badSectors.isEmpty {
            for sector in (offset / 512)..<((offset + data.count) / 512) { badSectors.remove(sector) }
        }
        if !fua { unflushedWrites.append(data) }
        for i in 0..<(data.count / 512) {
            let sector = offset / 512 + i
            if fua {
                unflushedWrite[sector] = -1
            } else {
                if unflushedWrite[sector] < 0 { unflushedSectors.append(sector) }
                unflushedWrite[sector] = Int32(unflushedWrites.count - 1)
                unflushedIndex[sector] = Int32(i)
            }
        }
        if fua { SimMember.copy(data, into: &durable, at: offset) }
        return true
    }

    /// `bytes[at...]` = `data`, with one memcpy (`replaceSubrange` goes element by element).
    static func copy(_ data: [UInt8], into bytes: inout [UInt8], at offset: Int) {
        precondition(offset >= 0 && offset + data.count <= bytes.count, "copy past the end of the member")
        bytes.withUnsafeMutableBytes { to in
            data.withUnsafeBytes { from in
                guard let source = from.baseAddress else { return }
                (to.baseAddress! + offset).copyMemory(from: source, byteCount: from.count)
            }
        }
    }

    /// Everything completed so far becomes durable.
    @discardableResult
    public func flush() -> Bool {
        guard !dead else { return false }
        // Copy only what changed: sharing `current` would make the next write copy the device.
        current.withUnsafeBytes { from in
            durable.withUnsafeMutableBytes { to in
                for sector in unflushedSectors where unflushedWrite[sector] >= 0 {
                    (to.baseAddress! + sector * 512).copyMemory(from: from.baseAddress! + sector * 512, byteCount: 512)
                    unflushedWrite[sector] = -1
                }
            }
        }
        unflushedSectors.removeAll()
        unflushedWrites.removeAll()
        return true
    }

    /// Power loss: each sector written since the last flush (and each sector of a write still in
    /// flight, given here) independently keeps its new content or loses it.
    public func crash(inFlightWrites: [(offset: Int, data: [UInt8])], random: inout SimRandom) {
        var image = durable
        for sector in unflushedSectors.sorted() where unflushedWrite[sector] >= 0 {
            let w = Int(unflushedWrite[sector])
            let i = Int(unflushedIndex[sector])
            unflushedWrite[sector] = -1
            guard random.chance(0.6) else { continue }
            image.replaceSubrange((sector * 512)..<((sector + 1) * 512), with: unflushedWrites[w][(i * 512)..<((i + 1) * 512)])
        }
        for w in inFlightWrites {
            for i in 0..<(w.data.count / 512) where random.chance(0.5) {
                let at = w.offset + i * 512
                image.replaceSubrange(at..<(at + 512), with: w.data[(i * 512)..<((i + 1) * 512)])
            }
        }
        durable = image
        current = image
        unflushedSectors.removeAll()
        unflushedWrites.removeAll()
    }

    /// Direct corruption for checker tests (bypasses the array).
    public func corrupt(offset: Int, length: Int, xor: UInt8) {
        for i in offset..<(offset + length) {
            current[i] ^= xor
            durable[i] ^= xor
        }
    }

    /// The superblock and bitmap as a shell reads them at assembly (the one probe every shell
    /// uses), or nil when there is none.
    public func probe() -> MemberMetadata? { try? SuperblockProbe.probe(self) }
}

/// Performs one member I/O of the core on a device, through the device protocol, and says how
/// it ended (the simulator and the stepped test double do their I/O this way).
func perform(_ io: MemberIORequest, on device: MemberDevice) -> MemberIOResult {
    do throws(MemberIOError) {
        switch io.kind {
        case .read(let buffer):
            try device.read(at: io.offsetBytes, into: [UnsafeMutableRawBufferPointer(start: buffer.baseAddress, count: buffer.count)], purpose: io.purpose)
        case .write(let buffer, let fua):
            try device.write(at: io.offsetBytes, from: [UnsafeRawBufferPointer(start: buffer.baseAddress, count: buffer.count)], fua: fua, purpose: io.purpose)
        case .flush:
            try device.flush(purpose: io.purpose)
        }
        return .success
    } catch {
        return .failure(error)
    }
}
