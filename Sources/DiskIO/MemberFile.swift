import SystemPackage

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

public enum DiskIOError: Error, CustomStringConvertible, Equatable {
    case open(path: String, reason: String)
    case read(path: String, offsetBytes: UInt64, reason: String)
    case write(path: String, offsetBytes: UInt64, reason: String)
    case shortRead(path: String, offsetBytes: UInt64, wantedBytes: Int, gotBytes: Int)
    case sync(path: String, reason: String)
    case resize(path: String, reason: String)

    public var description: String {
        switch self {
        case .open(let path, let reason): return "\(path): cannot open: \(reason)"
        case .read(let path, let offset, let reason): return "\(path): read at byte \(offset) failed: \(reason)"
        case .write(let path, let offset, let reason): return "\(path): write at byte \(offset) failed: \(reason)"
        case .shortRead(let path, let offset, let wanted, let got):
            return "\(path): truncated: wanted \(wanted) bytes at byte \(offset), the file ends after \(got)"
        case .sync(let path, let reason): return "\(path): flush failed: \(reason)"
        case .resize(let path, let reason): return "\(path): cannot set size: \(reason)"
        }
    }
}

/// A member device: a regular file or a block device, accessed with positioned reads and
/// writes. Every system call the package makes on members goes through this type.
public final class MemberFile {
    public enum Mode: Sendable { case readOnly, readWrite }

    public let path: String
    public let mode: Mode
    private let fd: FileDescriptor
    private var closed = false

    /// Opens an existing member.
    public init(path: String, mode: Mode) throws {
        self.path = path
        self.mode = mode
        do {
            fd = try FileDescriptor.open(
                FilePath(path), mode == .readOnly ? .readOnly : .readWrite, options: [.closeOnExec])
        } catch let errno as Errno {
            throw DiskIOError.open(path: path, reason: errno.description)
        }
    }

    /// Creates a new, empty member file of `sizeBytes` (sparse); fails if it exists.
    public init(creating path: String, sizeBytes: UInt64) throws {
        self.path = path
        self.mode = .readWrite
        do {
            fd = try FileDescriptor.open(
                FilePath(path), .readWrite, options: [.create, .exclusiveCreate, .closeOnExec],
                permissions: [.ownerReadWrite, .groupRead, .otherRead])
        } catch let errno as Errno {
            throw DiskIOError.open(path: path, reason: errno.description)
        }
        do {
            try fd.resize(to: Int64(sizeBytes))
        } catch let errno as Errno {
            try? fd.close()
            throw DiskIOError.resize(path: path, reason: errno.description)
        }
    }

    deinit { if !closed { try? fd.close() } }

    public func close() {
        guard !closed else { return }
        closed = true
        try? fd.close()
    }

    /// Size in bytes (works for block devices too: the end offset).
    public func sizeBytes() throws -> UInt64 {
        do {
            let end = try fd.seek(offset: 0, from: .end)
            return UInt64(end)
        } catch let errno as Errno {
            throw DiskIOError.read(path: path, offsetBytes: 0, reason: "cannot find size: \(errno)")
        }
    }

    /// Fills `buffer` from `offsetBytes`; a read past the end is an error naming the truncation.
    public func read(at offsetBytes: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws {
        var done = 0
        while done < buffer.count {
            let n: Int
            do {
                n = try fd.read(
                    fromAbsoluteOffset: Int64(offsetBytes) + Int64(done),
                    into: UnsafeMutableRawBufferPointer(rebasing: buffer[done...]), retryOnInterrupt: true)
            } catch let errno as Errno {
                throw DiskIOError.read(path: path, offsetBytes: offsetBytes + UInt64(done), reason: errno.description)
            }
            if n == 0 {
                throw DiskIOError.shortRead(path: path, offsetBytes: offsetBytes, wantedBytes: buffer.count, gotBytes: done)
            }
            done += n
        }
    }

    public func read(at offsetBytes: UInt64, count: Int) throws -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        try out.withUnsafeMutableBytes { try read(at: offsetBytes, into: $0) }
        return out
    }

    public func write(at offsetBytes: UInt64, from buffer: UnsafeRawBufferPointer) throws {
        precondition(mode == .readWrite, "write to a member opened read-only")
        var done = 0
        while done < buffer.count {
            do {
                done += try fd.write(
                    toAbsoluteOffset: Int64(offsetBytes) + Int64(done),
                    UnsafeRawBufferPointer(rebasing: buffer[done...]), retryOnInterrupt: true)
            } catch let errno as Errno {
                throw DiskIOError.write(path: path, offsetBytes: offsetBytes + UInt64(done), reason: errno.description)
            }
        }
    }

    public func write(at offsetBytes: UInt64, bytes: [UInt8]) throws {
        try bytes.withUnsafeBytes { try write(at: offsetBytes, from: $0) }
    }

    /// Makes every completed write durable.
    public func sync() throws {
        if fsync(fd.rawValue) != 0 {
            throw DiskIOError.sync(path: path, reason: Errno(rawValue: errno).description)
        }
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
