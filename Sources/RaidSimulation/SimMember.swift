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
    /// Per sector: written since the last flush (and not by a FUA write since). A volatile cache
    /// holds the newest data for a sector, which is what `current` holds, so a crash chooses per
    /// sector between `durable` and `current`: an older write can never reappear over a newer
    /// one, and no write's data need be kept apart.
    private var unflushed: [Bool]
    /// Sectors with `unflushed` set (each once).
    private var unflushedSectors: [Int] = []
    /// The device is dead: every I/O fails.
    public var dead = false
    /// Sectors that fail to read until rewritten (latent bad sectors).
    public var badSectors: Set<Int> = []

    public init(name: String, image: [UInt8]) {
        self.name = name
        current = image
        durable = image
        unflushed = [Bool](repeating: false, count: image.count / 512)
    }

    public var sizeInBytes: Int { current.count }

    // MARK: - MemberDevice

    public func sizeBytes() throws(MemberIOError) -> UInt64 { UInt64(current.count) }

    public func read(at offsetBytes: UInt64, into buffers: [UnsafeMutableRawBufferPointer], purpose: MemberIOPurpose) throws(MemberIOError) {
        var at = Int(offsetBytes)
        for b in buffers {
            try read(at: at, into: b)
            at += b.count
        }
    }

    /// One buffer's read (the simulator's I/Os have one; no array of buffers to allocate).
    func read(at offset: Int, into buffer: UnsafeMutableRawBufferPointer) throws(MemberIOError) {
        let length = buffer.count
        guard !dead else { throw MemberIOError.io }
        guard offset >= 0, offset + length <= current.count else { throw MemberIOError(errno: 5, message: "read past the end") }
        if !badSectors.isEmpty {
            for sector in (offset / 512)..<((offset + length + 511) / 512) where badSectors.contains(sector) { throw MemberIOError.io }
        }
        guard length > 0 else { return }
        current.withUnsafeBytes { raw in
            buffer.baseAddress!.copyMemory(from: raw.baseAddress! + offset, byteCount: length)
        }
    }

    public func write(at offsetBytes: UInt64, from buffers: [UnsafeRawBufferPointer], fua: Bool, purpose: MemberIOPurpose) throws(MemberIOError) {
        let length = buffers.reduce(0) { $0 + $1.count }
        let offset = Int(offsetBytes)
        // All or nothing: a write that cannot be done changes no byte.
        guard !dead, offset >= 0, offset + length <= current.count else { throw MemberIOError.io }
        var at = offset
        for b in buffers {
            guard write(offset: at, from: b, fua: fua) else { throw MemberIOError.io }
            at += b.count
        }
    }

    public func flush(purpose: MemberIOPurpose) throws(MemberIOError) {
        guard flush() else { throw MemberIOError.io }
    }

    public func close() {}

    // MARK: - the simulated disk

    /// Applies a completed write; with `fua` it is durable at once.
    @discardableResult
    public func write(offset: Int, data: [UInt8], fua: Bool) -> Bool {
        data.withUnsafeBytes { write(offset: offset, from: $0, fua: fua) }
    }

    /// Applies a completed write from one buffer (copied once, into `current`).
    func write(offset: Int, from data: UnsafeRawBufferPointer, fua: Bool) -> Bool {
        guard !dead, offset >= 0, offset + data.count <= current.count else { return false }
        guard data.count > 0 else { return true }
        current.withUnsafeMutableBytes { to in
            (to.baseAddress! + offset).copyMemory(from: data.baseAddress!, byteCount: data.count)
        }
        if !badSectors.isEmpty {
            for sector in (offset / 512)..<((offset + data.count) / 512) { badSectors.remove(sector) }
        }
        let sectors = (offset / 512)..<((offset + data.count) / 512)
        if fua {
            for sector in sectors { unflushed[sector] = false }
            current.withUnsafeBytes { from in
                durable.withUnsafeMutableBytes { to in
                    (to.baseAddress! + offset).copyMemory(from: from.baseAddress! + offset, byteCount: data.count)
                }
            }
        } else {
            for sector in sectors where !unflushed[sector] {
                unflushed[sector] = true
                unflushedSectors.append(sector)
            }
        }
        return true
    }

    /// Everything completed so far becomes durable.
    @discardableResult
    public func flush() -> Bool {
        guard !dead else { return false }
        // Copy only what changed: sharing `current` would make the next write copy the device.
        current.withUnsafeBytes { from in
            durable.withUnsafeMutableBytes { to in
                for sector in unflushedSectors where unflushed[sector] {
                    (to.baseAddress! + sector * 512).copyMemory(from: from.baseAddress! + sector * 512, byteCount: 512)
                    unflushed[sector] = false
                }
            }
        }
        unflushedSectors.removeAll(keepingCapacity: true)
        return true
    }

    /// Power loss: each sector written since the last flush (and each sector of a write still in
    /// flight, given here) independently keeps its new content or loses it.
    public func crash(inFlightWrites: [(offset: Int, data: [UInt8])], random: inout SimRandom) {
        var image = durable
        for sector in unflushedSectors.sorted() where unflushed[sector] {
            unflushed[sector] = false
            guard random.chance(0.6) else { continue }
            image.replaceSubrange((sector * 512)..<((sector + 1) * 512), with: current[(sector * 512)..<((sector + 1) * 512)])
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

/// The same on a simulated member, without the device protocol's array of buffers per I/O
/// (the simulator performs hundreds of thousands of these per second).
func perform(_ io: MemberIORequest, on member: SimMember) -> MemberIOResult {
    switch io.kind {
    case .read(let buffer):
        do throws(MemberIOError) {
            try member.read(at: Int(io.offsetBytes), into: UnsafeMutableRawBufferPointer(start: buffer.baseAddress, count: buffer.count))
        } catch {
            return .failure(error)
        }
    case .write(let buffer, let fua):
        guard member.write(offset: Int(io.offsetBytes), from: UnsafeRawBufferPointer(start: buffer.baseAddress, count: buffer.count), fua: fua) else {
            return .failure(.io)
        }
    case .flush:
        guard member.flush() else { return .failure(.io) }
    }
    return .success
}
