/// What a client sends during the handshake, encoded (the server's side is `NBDHandshake`).
/// swraid's own client, the tests' raw client and the fuzzers' seeds all speak through it.
public enum NBDClientHandshake {
    /// The client's flags: fixed newstyle, and no zeroes when the server offered it.
    public static func flags(noZeroes: Bool) -> [UInt8] {
        var w = NBDWriter(capacity: 4)
        w.u32(NBDHandshakeFlag.clientFixedNewstyle | (noZeroes ? NBDHandshakeFlag.clientNoZeroes : 0))
        return w.bytes
    }

    /// One option: IHAVEOPT, its code, its data.
    public static func option(_ option: NBDOption, _ data: [UInt8] = []) -> [UInt8] {
        var w = NBDWriter(capacity: 16 + data.count)
        w.u64(NBDMagic.option)
        w.u32(option.rawValue)
        w.u32(UInt32(data.count))
        w.raw(data)
        return w.bytes
    }

    /// NBD_OPT_GO (or NBD_OPT_INFO): the export's name and the information asked for.
    public static func go(export: String, informationRequests: [UInt16] = [], option code: NBDOption = .go) -> [UInt8] {
        var w = NBDWriter()
        w.u32(UInt32(export.utf8.count))
        w.string(export)
        w.u16(UInt16(informationRequests.count))
        for request in informationRequests { w.u16(request) }
        return option(code, w.bytes)
    }
}
