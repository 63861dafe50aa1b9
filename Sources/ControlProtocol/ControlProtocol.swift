/// The control socket's protocol: one request per line, one reply per request. Plain text, so
/// that scripts can use it with `socat` or `nc -U` as well as through the CLI.
///
///     request   = verb [" " argument]* "\n"        (the last argument takes the rest of the line)
///     reply     = "ok " count "\n" line{count}     (count lines of output follow)
///               | "error " ERRNO " " message "\n"  (ERRNO as md names it: EBUSY, EINVAL, ...)
///
/// Verbs: `get ATTR`, `set ATTR VALUE`, `status`, `detail`, `detail-json`, `fail MEMBER`,
/// `remove MEMBER`, `re-add MEMBER`, `add PATH`, `wait`, `stop`, `help`.
public enum ControlRequest: Sendable, Equatable {
    case get(String)
    case set(String, String)
    case status
    case detail
    case detailJSON
    case fail(String)
    case remove(String)
    case readd(String)
    case add(String)
    case wait
    case stop
    case help
    /// `inject MEMBER ACTION`: fault injection, when the daemon runs with --fault-injection.
    case inject(String)

    /// Longest request line accepted (longer ones are refused and the connection closed).
    public static let maxLineBytes = 8192

    public static let usage: [String] = [
        "get ATTR            read an md attribute (sync_action, array_state, mismatch_cnt, dev-N/state, ...)",
        "set ATTR VALUE      write an md attribute (echo VALUE > md/ATTR)",
        "status              /proc/mdstat's entry for the array",
        "detail              mdadm --detail's report",
        "detail-json         the same as JSON",
        "fail MEMBER         mdadm --fail (MEMBER: a path, or dev-N's N)",
        "remove MEMBER       mdadm --remove",
        "re-add MEMBER       mdadm --re-add",
        "add PATH            mdadm --add: a new device joins as a spare",
        "wait                mdadm --wait: until no resync, recovery, check or repair runs",
        "stop                stop the array cleanly (the daemon exits)",
    ]

    public enum ParseError: Error, Equatable, CustomStringConvertible {
        case unknownVerb(String)
        case missingArgument(String)
        case unexpectedArgument(String)

        public var description: String {
            switch self {
            case .unknownVerb(let v): return "unknown verb '\(v)' (try 'help')"
            case .missingArgument(let v): return "'\(v)' needs an argument"
            case .unexpectedArgument(let v): return "'\(v)' takes no argument"
            }
        }
    }

    public static func parse(_ line: String) throws(ParseError) -> ControlRequest {
        var text = Substring(line)
        while let last = text.last, last.isNewline { text.removeLast() }
        let verbEnd = text.firstIndex(of: " ") ?? text.endIndex
        let verb = String(text[..<verbEnd])
        let rest = verbEnd < text.endIndex ? String(text[text.index(after: verbEnd)...]) : ""
        func argument() throws(ParseError) -> String {
            guard !rest.isEmpty else { throw .missingArgument(verb) }
            return rest
        }
        func none() throws(ParseError) {
            guard rest.isEmpty else { throw .unexpectedArgument(verb) }
        }
        switch verb {
        case "get": return .get(try argument())
        case "set":
            let a = try argument()
            guard let space = a.firstIndex(of: " ") else { throw .missingArgument("set ATTR") }
            return .set(String(a[..<space]), String(a[a.index(after: space)...]))
        case "status": try none(); return .status
        case "detail": try none(); return .detail
        case "detail-json": try none(); return .detailJSON
        case "fail": return .fail(try argument())
        case "remove": return .remove(try argument())
        case "re-add": return .readd(try argument())
        case "add": return .add(try argument())
        case "wait": try none(); return .wait
        case "stop": try none(); return .stop
        case "help": try none(); return .help
        case "inject": return .inject(try argument())
        default: throw .unknownVerb(verb)
        }
    }

    /// The request as a line (what the CLI sends).
    public var line: String {
        switch self {
        case .get(let a): return "get \(a)"
        case .set(let a, let v): return "set \(a) \(v)"
        case .status: return "status"
        case .detail: return "detail"
        case .detailJSON: return "detail-json"
        case .fail(let m): return "fail \(m)"
        case .remove(let m): return "remove \(m)"
        case .readd(let m): return "re-add \(m)"
        case .add(let p): return "add \(p)"
        case .wait: return "wait"
        case .stop: return "stop"
        case .help: return "help"
        case .inject(let a): return "inject \(a)"
        }
    }
}

/// A reply: output lines, or md's errno and a message.
public enum ControlReply: Sendable, Equatable {
    case ok([String])
    case error(errno: String, message: String)

    public var encoded: String {
        switch self {
        case .ok(let lines):
            // Lines never contain a newline (they are split on it first).
            let flat = lines.flatMap { $0.split(separator: "\n", omittingEmptySubsequences: false).map(String.init) }
            return "ok \(flat.count)\n" + flat.map { $0 + "\n" }.joined()
        case .error(let errno, let message):
            return "error \(errno) \(message.replacingNewlines())\n"
        }
    }

    /// Decodes a reply from the front of `text`; nil while incomplete.
    public static func decode(_ text: String) -> (reply: ControlReply, consumed: Int)? {
        guard let firstEnd = text.firstIndex(of: "\n") else { return nil }
        let first = text[..<firstEnd]
        if first.hasPrefix("error ") {
            let rest = first.dropFirst(6)
            let space = rest.firstIndex(of: " ") ?? rest.endIndex
            let message = space < rest.endIndex ? String(rest[rest.index(after: space)...]) : ""
            return (.error(errno: String(rest[..<space]), message: message), text.utf8.distance(from: text.startIndex, to: text.index(after: firstEnd)))
        }
        // A count that is not a number of lines (negative, or not a number) is not a reply.
        guard first.hasPrefix("ok "), let count = Int(first.dropFirst(3)), count >= 0 else {
            return (.error(errno: "EPROTO", message: "not a control reply: \(first)"), text.utf8.count)
        }
        var lines: [String] = []
        var index = text.index(after: firstEnd)
        for _ in 0..<count {
            guard let end = text[index...].firstIndex(of: "\n") else { return nil }
            lines.append(String(text[index..<end]))
            index = text.index(after: end)
        }
        return (.ok(lines), text.utf8.distance(from: text.startIndex, to: index))
    }
}

extension String {
    func replacingNewlines() -> String { String(map { $0 == "\n" ? " " : $0 }) }
}

/// Cuts the control socket's byte stream into request lines, within bounds. The server serves
/// one request at a time, so lines a client sends ahead wait here: at most `maxPendingBytes` of
/// them, and no line longer than `ControlRequest.maxLineBytes`. Past either bound the connection
/// is refused (a client decides how much it sends; the daemon decides how much it keeps).
public struct ControlRequestFramer: Sendable {
    /// Bytes kept for lines not yet served (requests sent ahead of their replies).
    public static let maxPendingBytes = 64 << 10

    public enum Refusal: Error, Equatable, CustomStringConvertible {
        case lineTooLong
        case tooMuchPending
        public var description: String {
            switch self {
            case .lineTooLong: return "request line over \(ControlRequest.maxLineBytes) bytes"
            case .tooMuchPending: return "over \(ControlRequestFramer.maxPendingBytes) bytes of requests sent ahead of their replies"
            }
        }
    }

    private var pending: [UInt8] = []
    /// Where the next line starts in `pending` (consumed bytes are dropped at the next append).
    private var lineStart = 0
    /// How far `pending` was searched for a newline already (each byte is looked at once).
    private var scanned = 0

    public init() {}

    /// Bytes received and not yet handed out as lines.
    public var pendingBytes: Int { pending.count - lineStart }

    /// Keeps received bytes; refuses them (keeping nothing) when they would pass the bound.
    public mutating func append(_ bytes: some Collection<UInt8>) throws(Refusal) {
        guard bytes.count <= Self.maxPendingBytes - pendingBytes else { throw .tooMuchPending }
        if lineStart > 0 {
            pending.removeFirst(lineStart)
            scanned -= lineStart
            lineStart = 0
        }
        pending.append(contentsOf: bytes)
        assert(pendingBytes <= Self.maxPendingBytes)
    }

    /// The next complete line without its newline (invalid UTF-8 replaced, as text), or nil
    /// until one has arrived.
    public mutating func nextLine() throws(Refusal) -> String? {
        let newline = pending[scanned...].firstIndex(of: UInt8(ascii: "\n"))
        scanned = newline ?? pending.count
        let end = newline ?? pending.count
        if end - lineStart > ControlRequest.maxLineBytes { throw .lineTooLong }
        guard let newline else { return nil }
        let line = String(decoding: pending[lineStart..<newline], as: UTF8.self)
        lineStart = newline + 1
        scanned = lineStart
        return line
    }
}
