import CDiskIO
#if canImport(Glibc)
import Glibc
#endif

// Every system call the package makes outside member I/O: clocks, terminals, output files,
// directories, child processes, the host name, dynamic libraries. The CLI and the engine call
// these; nothing above DiskIO talks to the kernel directly.

public enum Clock {
    /// Monotonic nanoseconds (CLOCK_MONOTONIC): the engine's time and the CLI's stopwatch.
    public static func monotonicNanoseconds() -> UInt64 {
        var t = timespec()
        clock_gettime(CLOCK_MONOTONIC, &t)
        return UInt64(t.tv_sec) * 1_000_000_000 + UInt64(t.tv_nsec)
    }

    public static func monotonicSeconds() -> Double { Double(monotonicNanoseconds()) * 1e-9 }

    /// Seconds since the epoch (superblock times).
    public static func wallSeconds() -> UInt64 { UInt64(time(nil)) }

    /// The local calendar time of `seconds` since the epoch (for mdadm's ctime-style times):
    /// weekday 0 = Sunday, month 1...12; nil when the system cannot say.
    public static func localTime(_ seconds: UInt64) -> (weekday: Int, month: Int, day: Int, hour: Int, minute: Int, second: Int, year: Int)? {
        var t = time_t(seconds)
        var parts = tm()
        guard localtime_r(&t, &parts) != nil else { return nil }
        return (Int(parts.tm_wday), Int(parts.tm_mon) + 1, Int(parts.tm_mday), Int(parts.tm_hour), Int(parts.tm_min), Int(parts.tm_sec), Int(parts.tm_year) + 1900)
    }
}

public enum Terminal {
    public static let standardOutput: Int32 = 1
    public static let standardError: Int32 = 2

    public static func isTerminal(_ fd: Int32) -> Bool { isatty(fd) != 0 }

    /// Flushes what `print` has buffered for standard output (before writing to the raw
    /// descriptors, so the two stay in order).
    public static func flushStandardOutput() { fflush(nil) }

    /// Writes all of `text` to `fd` (standard error messages, progress lines).
    public static func write(_ text: String, to fd: Int32) {
        var t = text
        t.withUTF8 { buffer in
            var done = 0
            while done < buffer.count {
                let n = Glibc.write(fd, buffer.baseAddress! + done, buffer.count - done)
                if n < 0 && errno == EINTR { continue }
                if n <= 0 { return }
                done += n
            }
        }
    }
}

public struct SystemError: Error, CustomStringConvertible, Equatable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// A file being written from start to end (`swraid cat --output`), or standard output.
public final class OutputFile {
    public let path: String
    private let fd: Int32
    private let ownsDescriptor: Bool

    /// Creates (or truncates) `path`, or writes to standard output when nil.
    public init(path: String?) throws(SystemError) {
        if let path {
            fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
            guard fd >= 0 else { throw SystemError("\(path): cannot create: \(lastErrorText())") }
            self.path = path
            ownsDescriptor = true
        } else {
            fd = Terminal.standardOutput
            self.path = "standard output"
            ownsDescriptor = false
        }
    }

    deinit { close() }

    public func write(_ buffer: UnsafeRawBufferPointer) throws(SystemError) {
        var done = 0
        while done < buffer.count {
            let n = Glibc.write(fd, buffer.baseAddress! + done, buffer.count - done)
            if n < 0 {
                if errno == EINTR { continue }
                throw SystemError("\(path): write failed: \(lastErrorText())")
            }
            done += n
        }
    }

    /// Makes the file durable (nothing for standard output).
    public func finish() throws(SystemError) {
        if ownsDescriptor && fsync(fd) != 0 { throw SystemError("\(path): flush failed: \(lastErrorText())") }
    }

    private var closed = false
    public func close() {
        guard ownsDescriptor, !closed else { return }
        closed = true
        _ = Glibc.close(fd)
    }
}

public enum FileSystem {
    /// Creates `path` (fine if it exists already).
    public static func makeDirectory(_ path: String) throws(SystemError) {
        if mkdir(path, 0o755) != 0 && errno != EEXIST { throw SystemError("\(path): cannot create: \(lastErrorText())") }
    }

    /// A new directory under `parent` named `prefix` plus random characters.
    public static func makeTemporaryDirectory(prefix: String, in parent: String = "/tmp") throws(SystemError) -> String {
        var template = Array("\(parent)/\(prefix).XXXXXX".utf8CString)
        guard let made = mkdtemp(&template) else { throw SystemError("cannot create a directory in \(parent): \(lastErrorText())") }
        return String(cString: made)
    }

    public static func isExecutable(_ path: String) -> Bool { access(path, X_OK) == 0 }

    public static func exists(_ path: String) -> Bool { MemberFile.exists(path) }

    /// `path` made absolute against this process's working directory (unchanged when it is
    /// absolute already, or when the working directory cannot be had).
    public static func absolute(_ path: String) -> String {
        guard !path.hasPrefix("/"), let cwd = getcwd(nil, 0) else { return path }
        defer { free(cwd) }
        let directory = String(cString: cwd)
        return (directory.hasSuffix("/") ? directory : directory + "/") + path
    }

    /// Removes an empty directory (fine if it is not there).
    public static func removeDirectory(_ path: String) { rmdir(path) }

    /// Removes a file (fine if it is not there).
    public static func remove(_ path: String) { MemberFile.remove(path) }

    /// Finds `name` in the usual program directories.
    public static func findProgram(_ name: String) -> String? {
        for dir in ["/usr/sbin", "/sbin", "/usr/bin", "/bin", "/usr/local/bin"] where isExecutable("\(dir)/\(name)") {
            return "\(dir)/\(name)"
        }
        return nil
    }

    /// The running program's own path.
    public static func currentExecutablePath() -> String? {
        var buffer = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        return n > 0 ? String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self) : nil
    }
}

public enum ChildProcess {
    /// Runs `argv` (argv[0] a path) with this process's standard streams; returns its exit
    /// status (128 + signal when killed).
    public static func run(_ argv: [String]) throws(SystemError) -> Int32 {
        var pid: pid_t = 0
        let cArgs = argv.map { strdup($0) } + [nil]
        defer { cArgs.forEach { free($0) } }
        let rc = posix_spawn(&pid, argv[0], nil, nil, cArgs, environ)
        guard rc == 0 else { throw SystemError("cannot run \(argv[0]): \(String(cString: strerror(rc)))") }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        return (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
    }
}

extension ChildProcess {
    /// Runs `argv` with its standard output and error sent to a temporary file, and returns its
    /// exit status and what it wrote there (for tools like dd that report on stderr).
    public static func runCapturingOutput(_ argv: [String]) throws(SystemError) -> (status: Int32, output: String) {
        var template = Array("/tmp/swraid-child.XXXXXX".utf8CString)
        let fd = mkstemp(&template)
        guard fd >= 0 else { throw SystemError("cannot create a temporary file: \(lastErrorText())") }
        let path = String(decoding: template.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        defer { _ = Glibc.close(fd); unlink(path) }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, fd, 1)
        posix_spawn_file_actions_adddup2(&actions, fd, 2)
        var pid: pid_t = 0
        let cArgs = argv.map { strdup($0) } + [nil]
        defer { cArgs.forEach { free($0) } }
        let rc = posix_spawn(&pid, argv[0], &actions, nil, cArgs, environ)
        guard rc == 0 else { throw SystemError("cannot run \(argv[0]): \(String(cString: strerror(rc)))") }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        var offset: off_t = 0
        while true {
            let n = pread(fd, &buffer, buffer.count, offset)
            if n <= 0 { break }
            bytes += buffer[0..<n]
            offset += off_t(n)
        }
        return ((status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f), String(decoding: bytes, as: UTF8.self))
    }

    /// Writes `text` to a file (for /proc/sys/vm/drop_caches and the like); false on failure.
    public static func writeFile(_ path: String, _ text: String) -> Bool {
        let fd = open(path, O_WRONLY | O_CLOEXEC)
        guard fd >= 0 else { return false }
        defer { _ = Glibc.close(fd) }
        var t = text
        return t.withUTF8 { Glibc.write(fd, $0.baseAddress, $0.count) == $0.count }
    }

    /// sync(2): every dirty page of every file system to disk.
    public static func syncFileSystems() { sync() }
}

extension FileSystem {
    /// The major and minor numbers of a block device; nil for anything else (files have none).
    public static func blockDeviceNumbers(_ path: String) -> (major: Int, minor: Int)? {
        var st = stat()
        guard stat(path, &st) == 0, st.st_mode & S_IFMT == S_IFBLK else { return nil }
        // glibc's gnu_dev_major/minor encoding of dev_t.
        let dev = UInt64(st.st_rdev)
        let major = ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0x0000_0fff)
        let minor = ((dev >> 12) & 0xffff_ff00) | (dev & 0x0000_00ff)
        return (Int(major), Int(minor))
    }

    /// The names in a directory (not "." or ".."), sorted; empty when it cannot be read.
    public static func directoryEntries(_ path: String) -> [String] {
        guard let dir = opendir(path) else { return [] }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names.sorted()
    }

    /// Whether `path` is a Unix-domain socket.
    public static func isSocket(_ path: String) -> Bool {
        var st = stat()
        return stat(path, &st) == 0 && st.st_mode & S_IFMT == S_IFSOCK
    }
}

/// A blocking client of a stream socket: a Unix-domain one (the CLI's side of the control
/// socket) or TCP (the demo's NBD client).
public final class StreamSocketClient {
    private let fd: Int32

    /// Connects to `host` (an IPv4 address or a name) on `port`.
    public init(host: String, port: Int) throws(SystemError) {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var found: UnsafeMutablePointer<addrinfo>?
        let rc = getaddrinfo(host, String(port), &hints, &found)
        guard rc == 0, let first = found else { throw SystemError("\(host):\(port): \(String(cString: gai_strerror(rc)))") }
        defer { freeaddrinfo(found) }
        var lastError = "no address"
        var entry: UnsafeMutablePointer<addrinfo>? = first
        while let a = entry {
            let s = socket(a.pointee.ai_family, a.pointee.ai_socktype | Int32(SOCK_CLOEXEC.rawValue), a.pointee.ai_protocol)
            if s >= 0 {
                if connect(s, a.pointee.ai_addr, a.pointee.ai_addrlen) == 0 {
                    var one: Int32 = 1
                    _ = setsockopt(s, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
                    fd = s
                    return
                }
                lastError = lastErrorText()
                _ = Glibc.close(s)
            }
            entry = a.pointee.ai_next
        }
        throw SystemError("\(host):\(port): \(lastError)")
    }

    public init(path: String) throws(SystemError) {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        let capacity = MemoryLayout.size(ofValue: address.sun_path)
        guard bytes.count < capacity else { throw SystemError("\(path): socket path longer than \(capacity - 1) bytes") }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        let s = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard s >= 0 else { throw SystemError("socket: \(lastErrorText())") }
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(s, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard connected == 0 else {
            let why = lastErrorText()
            _ = Glibc.close(s)
            throw SystemError("\(path): \(why)")
        }
        fd = s
    }

    deinit { _ = Glibc.close(fd) }

    public func send(_ text: String) throws(SystemError) {
        var bytes = Array(text.utf8)
        var sent = 0
        while sent < bytes.count {
            let n = bytes.withUnsafeMutableBytes { Glibc.send(fd, $0.baseAddress! + sent, $0.count - sent, Int32(MSG_NOSIGNAL)) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw SystemError("control socket: \(lastErrorText())") }
            sent += n
        }
    }

    /// Exactly `count` bytes into `buffer` from `offset`; false if the stream ended first.
    public func receiveExactly(_ count: Int, into buffer: UnsafeMutableRawBufferPointer) throws(SystemError) -> Bool {
        precondition(count <= buffer.count, "receive into a buffer too small")
        var done = 0
        while done < count {
            let n = recv(fd, buffer.baseAddress! + done, count - done, 0)
            if n < 0 && errno == EINTR { continue }
            guard n >= 0 else { throw SystemError("socket: \(lastErrorText())") }
            if n == 0 { return false }
            done += n
        }
        return true
    }

    /// Sends all of `bytes`.
    public func send(_ bytes: UnsafeRawBufferPointer) throws(SystemError) {
        var sent = 0
        while sent < bytes.count {
            let n = Glibc.send(fd, bytes.baseAddress! + sent, bytes.count - sent, Int32(MSG_NOSIGNAL))
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw SystemError("socket: \(lastErrorText())") }
            sent += n
        }
    }

    /// Bytes as they arrive (at most `limit`); empty at end of stream.
    public func receive(limit: Int = 65536) throws(SystemError) -> [UInt8] {
        var buffer = [UInt8](repeating: 0, count: limit)
        while true {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n < 0 && errno == EINTR { continue }
            guard n >= 0 else { throw SystemError("control socket: \(lastErrorText())") }
            return Array(buffer.prefix(n))
        }
    }
}

public enum Host {
    /// gethostname(2), or nil.
    public static func name() -> String? {
        var buffer = [CChar](repeating: 0, count: 256)
        guard gethostname(&buffer, buffer.count) == 0 else { return nil }
        let name = String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return name.isEmpty ? nil : name
    }

    public static func processID() -> Int32 { getpid() }

    /// The processors this process may run on (its CPU affinity mask), at least 1.
    public static func processorCount() -> Int {
        max(1, Int(swraid_processor_count()))
    }
}

/// A shared library opened at run time (ISA-L for the parity benchmark).
public final class DynamicLibrary: @unchecked Sendable {
    private let handle: UnsafeMutableRawPointer

    /// The first of `names` that opens.
    public init?(names: [String]) {
        guard let h = names.lazy.compactMap({ dlopen($0, RTLD_NOW) }).first else { return nil }
        handle = h
    }

    public func symbol(_ name: String) -> UnsafeMutableRawPointer? { dlsym(handle, name) }
}
