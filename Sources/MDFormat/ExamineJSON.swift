/// A JSON value with ordered object keys, enough for reports (no Foundation in this layer).
public indirect enum JSONValue: Equatable, Sendable {
    case string(String)
    case int(Int64)
    case uint(UInt64)
    case bool(Bool)
    case null
    case array([JSONValue])
    case object([(String, JSONValue)])

    public static func == (a: JSONValue, b: JSONValue) -> Bool { a.render() == b.render() }

    public func render(indent: Int = 0) -> String {
        let pad = String(repeating: "  ", count: indent + 1)
        let closePad = String(repeating: "  ", count: indent)
        switch self {
        case .string(let s): return Self.quote(s)
        case .int(let v): return String(v)
        case .uint(let v): return String(v)
        case .bool(let v): return v ? "true" : "false"
        case .null: return "null"
        case .array(let items):
            if items.isEmpty { return "[]" }
            return "[\n" + items.map { pad + $0.render(indent: indent + 1) }.joined(separator: ",\n") + "\n" + closePad + "]"
        case .object(let fields):
            if fields.isEmpty { return "{}" }
            return "{\n" + fields.map { pad + Self.quote($0.0) + ": " + $0.1.render(indent: indent + 1) }.joined(separator: ",\n")
                + "\n" + closePad + "}"
        }
    }

    static func quote(_ s: String) -> String {
        var out = "\""
        for scalar in s.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                if scalar.value < 0x20 {
                    let hex = String(scalar.value, radix: 16)
                    out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
                } else {
                    out.unicodeScalars.append(scalar)
                }
            }
        }
        return out + "\""
    }
}

extension ExamineReport {
    /// The same facts as `lines()`, as JSON with md's field names and units in the keys.
    public func json(device: String) -> JSONValue {
        let sb = superblock
        var f: [(String, JSONValue)] = [
            ("device", .string(device)),
            ("magic", .string(hex32(sb.magic))),
            ("version", .string(sb.metadataVersion.rawValue)),
            ("feature_map", .uint(UInt64(sb.featureMap.rawValue))),
            ("array_uuid", .string(formatMDUUID(sb.setUUID))),
            ("name", .string(sb.setName)),
            ("creation_time", .uint(sb.ctimeSeconds)),
            ("raid_level", .string(Self.levelName(sb.level))),
            ("raid_devices", .uint(UInt64(sb.raidDisks))),
            ("avail_dev_size_sectors", .uint(sb.dataSizeSectors)),
        ]
        if let arraySectors = Self.arraySizeSectors(sb) { f.append(("array_size_kib", .uint(arraySectors / 2))) }
        f.append(("used_dev_size_sectors", .uint(sb.sizeSectors)))
        f.append(("data_offset_sectors", .uint(sb.dataOffsetSectors)))
        f.append(("super_offset_sectors", .uint(sb.superOffsetSectors)))
        if sb.featureMap.contains(.recoveryOffset) { f.append(("recovery_offset_sectors", .uint(sb.recoveryOffsetSectors))) }
        if let unused = unusedSpace {
            f.append(("unused_space_before_sectors", .uint(unused.before)))
            f.append(("unused_space_after_sectors", .uint(unused.after)))
        }
        f.append(("state", .string(sb.isClean ? "clean" : "active")))
        f.append(("resync_offset_sectors", .uint(sb.resyncOffsetSectors)))
        f.append(("device_uuid", .string(formatMDUUID(sb.deviceUUID))))
        f.append(("internal_bitmap_offset_sectors", sb.featureMap.contains(.bitmapOffset) ? .int(Int64(sb.bitmapOffsetSectors)) : .null))
        f.append(("update_time", .uint(sb.utimeSeconds)))
        if sb.bblogSizeSectors > 0 && sb.bblogOffsetSectors != 0 {
            f.append(("bad_block_log_entries", .uint(UInt64(sb.bblogSizeSectors) * 512 / 8)))
            f.append(("bad_block_log_offset_sectors", .int(Int64(sb.bblogOffsetSectors))))
        }
        f.append(("checksum", .string(String(sb.checksum, radix: 16))))
        f.append(("checksum_correct", .bool(sb.storedChecksumIsValid)))
        f.append(("events", .uint(sb.events)))
        f.append(("layout", .string(layoutName)))
        f.append(("layout_number", .uint(UInt64(sb.layout))))
        f.append(("chunk_size_kib", .uint(UInt64(sb.chunkSectors / 2))))
        f.append(("device_role", .string(deviceRole)))
        f.append(("dev_number", .uint(UInt64(sb.devNumber))))
        f.append(("array_state", .string(arrayState)))
        if let bitmap {
            f.append(("bitmap", .object([
                ("version", .uint(UInt64(bitmap.version))),
                ("events", .uint(bitmap.events)),
                ("events_cleared", .uint(bitmap.eventsCleared)),
                ("chunk_size_bytes", .uint(UInt64(bitmap.chunkSizeBytes))),
                ("sync_size_sectors", .uint(bitmap.syncSizeSectors)),
                ("bits", .uint(UInt64(bitmap.bitCount))),
            ])))
        }
        return .object(f)
    }
}
