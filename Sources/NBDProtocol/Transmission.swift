/// A request header as the client sent it (28 bytes; a write's data follows it).
public struct NBDRequestHeader: Sendable, Equatable {
    public static let byteCount = 28

    public let flags: NBDCommandFlags
    /// The command as sent (it may be one this server does not know).
    public let type: UInt16
    public let cookie: UInt64
    public let offset: UInt64
    public let length: UInt32

    public init(flags: NBDCommandFlags, type: UInt16, cookie: UInt64, offset: UInt64, length: UInt32) {
        self.flags = flags
        self.type = type
        self.cookie = cookie
        self.offset = offset
        self.length = length
    }

    public var command: NBDCommand? { NBDCommand(rawValue: type) }

    /// Bytes of data that follow the header on the wire (only a write carries any).
    public var payloadBytes: Int { type == NBDCommand.write.rawValue ? Int(length) : 0 }

    public enum Parse: Equatable {
        case needMore
        case header(NBDRequestHeader)
        /// Not a request: the stream cannot be trusted any more.
        case garbage(UInt32)
    }

    /// Reads one header from the front of `input`.
    public static func parse(_ input: UnsafeRawBufferPointer) -> Parse {
        var r = NBDReader(input)
        guard let magic = r.u32() else { return .needMore }
        guard magic == NBDMagic.request else { return .garbage(magic) }
        guard let flags = r.u16(), let type = r.u16(), let cookie = r.u64(), let offset = r.u64(), let length = r.u32() else {
            return .needMore
        }
        return .header(NBDRequestHeader(flags: NBDCommandFlags(rawValue: flags), type: type, cookie: cookie, offset: offset, length: length))
    }

    public func encoded() -> [UInt8] {
        var w = NBDWriter(capacity: Self.byteCount)
        w.u32(NBDMagic.request)
        w.u16(flags.rawValue)
        w.u16(type)
        w.u64(cookie)
        w.u64(offset)
        w.u32(length)
        return w.bytes
    }
}

/// A request that passed validation, in the terms the array understands.
public enum NBDValidRequest: Sendable, Equatable {
    case read(offset: UInt64, length: Int)
    case write(offset: UInt64, length: Int, fua: Bool)
    case flush
    case trim(offset: UInt64, length: Int, fua: Bool)
    case writeZeroes(offset: UInt64, length: Int, fua: Bool)
    case disconnect
}

/// Request validation (the second of nbdkit's three pieces): every rule the protocol gives an
/// error for, checked before anything reaches the array.
public enum NBDValidator {
    /// The request, or the error to answer it with. The connection lives on either way (a write's
    /// data is read and dropped by the caller when it is refused).
    public static func validate(_ h: NBDRequestHeader, session: NBDSession) -> Result<NBDValidRequest, NBDError> {
        let export = session.export
        let caps = export.capabilities
        guard let command = h.command else { return .failure(.invalid) }
        // Flags this server understands for this command; anything else is EINVAL.
        var allowed: NBDCommandFlags = caps.fua ? [.fua] : []
        switch command {
        case .read: if session.structuredReplies { allowed.insert(.dontFragment) }
        case .writeZeroes:
            allowed.insert(.noHole)
            if caps.fastZero { allowed.insert(.fastZero) }
        default: break
        }
        if !allowed.isSuperset(of: h.flags) { return .failure(.invalid) }
        let fua = h.flags.contains(.fua)
        switch command {
        case .disconnect:
            return .success(.disconnect)
        case .flush:
            guard caps.flush else { return .failure(.invalid) }
            guard h.offset == 0, h.length == 0 else { return .failure(.invalid) }
            return .success(.flush)
        case .read, .write, .trim, .writeZeroes:
            if command != .read && caps.readOnly { return .failure(.permission) }
            if command == .trim && !caps.trim { return .failure(.invalid) }
            if command == .writeZeroes && !caps.writeZeroes { return .failure(.invalid) }
            if h.length == 0 { return .failure(.invalid) }
            let minimum = UInt64(export.minimumBlockSize)
            if h.offset % minimum != 0 || UInt64(h.length) % minimum != 0 { return .failure(.invalid) }
            // Data-carrying requests respect the maximum; trim and zeroing may span more (the
            // dispatcher cuts them), within one 32-bit length.
            if (command == .read || command == .write) && h.length > export.maximumBlockSize { return .failure(.invalid) }
            if h.offset > export.sizeBytes || UInt64(h.length) > export.sizeBytes - h.offset {
                return .failure(command == .read ? .invalid : .noSpace)
            }
            // FAST_ZERO asks for zeroing faster than writing zeroes; swraid writes them.
            if command == .writeZeroes && h.flags.contains(.fastZero) { return .failure(.notSupported) }
            let length = Int(h.length)
            switch command {
            case .read: return .success(.read(offset: h.offset, length: length))
            case .write: return .success(.write(offset: h.offset, length: length, fua: fua))
            case .trim: return .success(.trim(offset: h.offset, length: length, fua: fua))
            default: return .success(.writeZeroes(offset: h.offset, length: length, fua: fua))
            }
        case .cache, .blockStatus, .resize:
            return .failure(.invalid)
        }
    }
}

/// Reply encoding: simple replies, and structured ones where negotiated (reads always use
/// them then, as the protocol requires).
public enum NBDReply {
    /// The header of a successful read's data; the data itself follows (sent from the array's
    /// buffer without a copy).
    public static func readHeader(cookie: UInt64, offset: UInt64, length: Int, structured: Bool) -> [UInt8] {
        var w = NBDWriter(capacity: 32)
        if structured {
            w.u32(NBDMagic.structuredReply)
            w.u16(NBDReplyFlag.done)
            w.u16(NBDReplyType.offsetData.rawValue)
            w.u64(cookie)
            w.u32(UInt32(8 + length))
            w.u64(offset)
        } else {
            w.u32(NBDMagic.simpleReply)
            w.u32(0)
            w.u64(cookie)
        }
        return w.bytes
    }

    /// Success without data (write, flush, trim, write-zeroes).
    public static func done(cookie: UInt64) -> [UInt8] {
        var w = NBDWriter(capacity: 16)
        w.u32(NBDMagic.simpleReply)
        w.u32(0)
        w.u64(cookie)
        return w.bytes
    }

    /// An error. With structured replies it carries a message for a human (and a read's error
    /// must be structured then).
    public static func error(cookie: UInt64, _ error: NBDError, message: String, structured: Bool) -> [UInt8] {
        var w = NBDWriter(capacity: 32 + message.utf8.count)
        if structured {
            let text = Array(message.utf8.prefix(4096))
            w.u32(NBDMagic.structuredReply)
            w.u16(NBDReplyFlag.done)
            w.u16(NBDReplyType.error.rawValue)
            w.u64(cookie)
            w.u32(UInt32(6 + text.count))
            w.u32(error.rawValue)
            w.u16(UInt16(text.count))
            w.raw(text)
        } else {
            w.u32(NBDMagic.simpleReply)
            w.u32(error.rawValue)
            w.u64(cookie)
        }
        return w.bytes
    }
}
