import DiskIO
import RaidCore

/// Memory a client read may leave unwritten, so that its bytes go from the members' page cache
/// to a socket with no copy through user space: a server's reply. Where a member read would
/// only copy bytes the page cache already holds into this memory, the engine records the member
/// file range instead (`Extent`), and the server sends those ranges with sendfile(2) in place of
/// the memory they stand for. The rest of the memory is filled as usual (reads through the
/// stripe cache, a degraded read's reconstruction).
///
/// Only healthy chunk-aligned reads (md's `raid5_read_one_chunk`) read member bytes into a
/// client's memory, and the core never looks at those bytes after the read completes, so
/// leaving them unread changes nothing it decides. The bytes are read when the reply is sent
/// rather than when the member read completed: a write to the same range completing in between
/// can only be one the client sent before it had this read's reply, which NBD (as a disk) leaves
/// unordered against it.
///
/// Recorded on the engine's loop before the read's completion is posted to the mailbox; read by
/// the server after the read completed (the mailbox's lock orders the two).
public final class SpliceableReadTarget: @unchecked Sendable {
    public struct Extent: Sendable {
        /// The member file, held open until the reply that sends from it is done.
        public let descriptor: SharedDescriptor
        public let fileOffsetBytes: UInt64
        /// Where the bytes belong in the target's memory.
        public let offsetInTarget: Int
        public let count: Int
    }

    /// What the memory belongs to (kept alive as long as the target).
    public let owner: any Sendable
    /// Bytes of memory the target stands for.
    public let capacity: Int
    public private(set) var extents: [Extent] = []

    public init(owner: any Sendable, capacity: Int) {
        self.owner = owner
        self.capacity = capacity
    }

    func record(_ extent: Extent) {
        precondition(extent.count > 0 && extent.offsetInTarget >= 0 && extent.offsetInTarget + extent.count <= capacity,
                     "a spliced extent outside its target's memory")
        extents.append(extent)
    }

    /// The extents in memory order, each after the one before (checked: two member reads never
    /// fill the same bytes of one request's memory, and a send must cover every byte once).
    public func extentsInOrder() -> [Extent] {
        let sorted = extents.sorted { $0.offsetInTarget < $1.offsetInTarget }
        var end = 0
        for e in sorted {
            precondition(e.offsetInTarget >= end, "spliced extents overlap in their target's memory")
            end = e.offsetInTarget + e.count
        }
        return sorted
    }
}
