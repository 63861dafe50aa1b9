import MDFormat

#if canImport(Glibc)
import Glibc
#endif

/// A member of an array as the layers above see it: a file, a block device, a simulated disk, or
/// a wrapper that injects faults. Offsets are absolute bytes on the device. Every call says what
/// the I/O is for (`purpose`), and a failure carries its errno.
///
/// Vectored calls move the buffers' bytes to or from one contiguous range of the device, in
/// order (a plugged, merged request, as the block layer would make of consecutive stripes).
public protocol MemberDevice: AnyObject {
    /// How the device was named (its path, for files).
    var name: String { get }
    func sizeBytes() throws(MemberIOError) -> UInt64
    /// Fills every buffer, in order, from `offsetBytes` on; a read past the end is an error.
    func read(at offsetBytes: UInt64, into buffers: [UnsafeMutableRawBufferPointer], purpose: MemberIOPurpose) throws(MemberIOError)
    /// Writes every buffer, in order, from `offsetBytes` on. `fua`: durable when this returns.
    func write(at offsetBytes: UInt64, from buffers: [UnsafeRawBufferPointer], fua: Bool, purpose: MemberIOPurpose) throws(MemberIOError)
    /// Makes every write completed so far durable.
    func flush(purpose: MemberIOPurpose) throws(MemberIOError)
    func close()
    /// Fills the buffers as `read` would, but only from memory the system already holds (the
    /// page cache), never waiting for the device: true when every byte was read, false when the
    /// caller must `read` instead (some bytes were not cached, the device cannot tell, or any
    /// error; the buffers' contents are then unspecified). Never blocks on I/O, so an event
    /// loop may call it.
    func readIfCached(at offsetBytes: UInt64, into buffers: [UnsafeMutableRawBufferPointer]) -> Bool
    /// The same into one buffer (a small read at low queue depth: no arrays).
    func readIfCached(at offsetBytes: UInt64, into buffer: UnsafeMutableRawBufferPointer) -> Bool
    /// A descriptor of the device's own to send the range from, when the page cache holds every
    /// byte of it, read in whole: what a server hands to sendfile(2) to send those bytes without
    /// reading them first (they then go from the page cache to the socket with no copy through
    /// user space). nil when it cannot say so without waiting: some page not cached or still
    /// being read, O_DIRECT, a device with nothing to lend (simulated, the fault injector), a
    /// file the page cache will not answer truly about, any error. Never blocks on I/O.
    func cachedDescriptor(at offsetBytes: UInt64, count: Int) -> SharedDescriptor?
}

/// A duplicate of a member's file descriptor, shared by every reply sent from the member and
/// closed when the last user lets go of it: a reply queued for sendfile keeps the file open even
/// if the array closes the member meanwhile (and the number cannot be reused for another file
/// under it).
public final class SharedDescriptor: Sendable {
    public let rawValue: CInt
    public init(takingOwnershipOf descriptor: CInt) { rawValue = descriptor }
    deinit { _ = Glibc.close(rawValue) }
}

extension MemberDevice {
    /// Devices that cannot read without waiting (simulated ones, the fault injector, whose
    /// faults apply to every read) always say no.
    public func readIfCached(at offsetBytes: UInt64, into buffers: [UnsafeMutableRawBufferPointer]) -> Bool { false }

    public func readIfCached(at offsetBytes: UInt64, into buffer: UnsafeMutableRawBufferPointer) -> Bool {
        readIfCached(at: offsetBytes, into: [buffer])
    }

    /// The same devices have no descriptor to lend.
    public func cachedDescriptor(at offsetBytes: UInt64, count: Int) -> SharedDescriptor? { nil }

    public func read(at offsetBytes: UInt64, into buffer: UnsafeMutableRawBufferPointer, purpose: MemberIOPurpose) throws(MemberIOError) {
        try read(at: offsetBytes, into: [buffer], purpose: purpose)
    }

    public func read(at offsetBytes: UInt64, count: Int, purpose: MemberIOPurpose) throws(MemberIOError) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        var failure: MemberIOError?
        out.withUnsafeMutableBytes { raw in
            do throws(MemberIOError) { try read(at: offsetBytes, into: [raw], purpose: purpose) } catch { failure = error }
        }
        if let failure { throw failure }
        return out
    }

    public func write(at offsetBytes: UInt64, from buffer: UnsafeRawBufferPointer, fua: Bool = false, purpose: MemberIOPurpose) throws(MemberIOError) {
        try write(at: offsetBytes, from: [buffer], fua: fua, purpose: purpose)
    }

    public func write(at offsetBytes: UInt64, bytes: [UInt8], fua: Bool = false, purpose: MemberIOPurpose) throws(MemberIOError) {
        var failure: MemberIOError?
        bytes.withUnsafeBytes { raw in
            do throws(MemberIOError) { try write(at: offsetBytes, from: [raw], fua: fua, purpose: purpose) } catch { failure = error }
        }
        if let failure { throw failure }
    }
}
