import MDFormat
import RaidCore

/// A simulated member device: what reads return now, what would survive a crash, and the writes
/// in between (completed but not yet flushed). Faults are decided by the simulation.
public final class SimMember {
    public let name: String
    /// Bytes as reads see them.
    public private(set) var current: [UInt8]
    /// Bytes that survive a crash.
    public private(set) var durable: [UInt8]
    /// Sectors written (completed) but not yet durable: sector → its latest content. A volatile
    /// cache holds the newest data for a sector, so an older write can never reappear over a
    /// newer one.
    /// Per sector: index into `unflushedWrites` of its latest unflushed write, or -1.
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

    public var sizeBytes: Int { current.count }

    public func read(offset: Int, length: Int) -> [UInt8]? {
        guard !dead, offset >= 0, offset + length <= current.count else { return nil }
        for sector in (offset / 512)..<((offset + length + 511) / 512) where badSectors.contains(sector) { return nil }
        return Array(current[offset..<(offset + length)])
    }

    /// Applies a completed write; with `fua` it is durable at once.
    public func write(offset: Int, data: [UInt8], fua: Bool) -> Bool {
        guard !dead, offset >= 0, offset + data.count <= current.count else { return false }
        current.replaceSubrange(offset..<(offset + data.count), with: data)
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
        if fua { durable.replaceSubrange(offset..<(offset + data.count), with: data) }
        return true
    }

    /// Everything completed so far becomes durable.
    public func flush() -> Bool {
        guard !dead else { return false }
        // Copy only what changed: sharing `current` would make the next write copy the device.
        for sector in unflushedSectors where unflushedWrite[sector] >= 0 {
            let range = (sector * 512)..<((sector + 1) * 512)
            durable.replaceSubrange(range, with: current[range])
            unflushedWrite[sector] = -1
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

    /// The superblock and bitmap as a shell would read them at assembly, or nil if there is none.
    public func probe() -> CoreMemberInput? {
        let sectors = UInt64(current.count / 512)
        let at = 8
        guard current.count >= at * 512 + 4096,
            let sb = try? MDSuperblock1(decoding: Array(current[(at * 512)..<(at * 512 + 4096)])),
            (try? sb.validate(readAtSectors: UInt64(at), deviceSizeSectors: sectors)) != nil
        else { return nil }
        var area: [UInt8]? = nil
        if sb.featureMap.contains(.bitmapOffset) {
            let start = Int(Int64(sb.superOffsetSectors) + Int64(sb.bitmapOffsetSectors)) * 512
            let end = min(current.count, start + 64 * 1024)
            if start >= 0 && start < end { area = Array(current[start..<end]) }
        }
        return CoreMemberInput(name: name, superblock: sb, deviceSizeSectors: sectors, bitmapArea: area)
    }
}
