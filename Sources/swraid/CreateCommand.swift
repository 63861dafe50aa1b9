import ArgumentParser
import DiskIO
import MDFormat
import MDOffline


struct Create: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Create an md RAID4/5/6 array (v1.2 metadata) on member files or devices.",
        discussion: """
            Options mean what they mean to mdadm --create. A member file that does not exist is \
            created just large enough (give --size). Unless --assume-clean, parity is made \
            consistent with the members' current contents before the array is marked clean.
            """)

    @Option(name: [.short, .long], help: "RAID level: 4, 5 or 6 (raid5 and so on also work).")
    var level: String

    @Option(name: [.customShort("n"), .customLong("raid-devices")], help: "Number of members (roles).")
    var raidDevices: Int

    @Option(name: [.short, .long], help: "Chunk size; a bare number is KiB (default 512K).")
    var chunk: String = "512K"

    @Option(name: [.customLong("layout"), .customLong("parity"), .customShort("p")], help: "Layout name (left-symmetric, la, ...) or number.")
    var layout: String = "default"

    @Option(name: [.short, .long], help: "internal, none, or auto (mdadm 4.2: internal above 100 GiB per member).")
    var bitmap: String = "auto"

    @Option(name: .customLong("bitmap-chunk"), help: "Bytes of member data per bitmap bit; a bare number is KiB.")
    var bitmapChunk: String?

    @Option(name: [.customShort("z"), .long], help: "Space to use on each member; a bare number is KiB; max for all of the smallest.")
    var size: String?

    @Option(name: [.customShort("N"), .long], help: "Array name (stored as homehost:name).")
    var name: String = "0"

    @Option(name: .long, help: "Host name recorded with the array name; <none> for none.")
    var homehost: String?

    @Flag(name: .customLong("assume-clean"), help: "Do not make parity consistent; mark the array clean.")
    var assumeClean = false

    @Flag(name: [.short, .long], help: "Overwrite members that already hold an md superblock.")
    var force = false

    @Flag(name: [.short, .long], help: "Print nothing but errors.")
    var quiet = false

    @Argument(help: "Member files or block devices, in role order.")
    var members: [String]

    func run() throws {
        try failingCleanly {
            let request = try makeRequest()
            var options = CreateOptions()
            options.assumeClean = assumeClean
            options.force = force
            let creator = try ArrayCreator(paths: members, request: request, options: options)
            let plan = creator.plan
            let sb = plan.superblocks[0]
            if !quiet {
                print("swraid: creating \(plan.geometry.level) array \(formatMDUUID(sb.setUUID)) '\(sb.setName)'")
                print("  \(plan.geometry.raidDisks) devices, layout \(plan.geometry.layout), chunk \(plan.geometry.chunkSectors / 2)K, "
                    + "data offset \(plan.dataOffsetSectors) sectors, \(plan.geometry.memberDataSectors / 2)K used per member, "
                    + "array size \(plan.geometry.arraySectors / 2)K"
                    + (plan.bitmap.map { ", internal bitmap \($0.chunkSizeBytes / 1024)K chunks" } ?? ""))
                for (i, path) in members.enumerated() where creator.newMembers[i] {
                    print("  \(path): new file of \(plan.memberSizesSectors[i] * 512) bytes")
                }
            }
            let bar = quiet || assumeClean ? nil : ProgressBar(action: "resync")
            try creator.run { done, total in bar?.update(done: done, total: total) }
            bar?.finish()
            if !quiet {
                print("swraid: array created \(assumeClean ? "(--assume-clean: parity not checked)" : "with consistent parity"), state clean")
            }
        }
    }

    /// Turns the options' text into a request. Only parsing happens here: whether the values make
    /// an array (enough members, a valid chunk, a name that fits) is `CreatePlan`'s to say, in
    /// one place for every caller.
    func makeRequest() throws -> CreateRequest {
        guard let raidLevel = RaidLevel(name: level) else {
            throw CommandFailure(message: "invalid raid level '\(level)': swraid creates raid4, raid5 or raid6")
        }
        guard let chunkBytes = SizeArgument.parseBytes(chunk), chunkBytes % 1024 == 0 else {
            throw CommandFailure(message: "invalid chunk size '\(chunk)'")
        }
        let layoutName = raidLevel == .raid4 && layout == "default" ? "parity-last" : layout
        guard let raidLayout = RaidLayout(name: layoutName, level: raidLevel) else {
            let names = RaidLayout.valid(for: raidLevel).compactMap(\.name).joined(separator: ", ")
            throw CommandFailure(message: "unknown \(raidLevel) layout '\(layout)'; valid: \(names)")
        }
        let bitmapChoice: BitmapChoice
        switch bitmap {
        case "internal": bitmapChoice = .internal_
        case "none": bitmapChoice = .none
        case "auto": bitmapChoice = .auto
        default: throw CommandFailure(message: "invalid --bitmap '\(bitmap)': use internal, none or auto")
        }
        var bitmapChunkBytes: UInt64? = nil
        if let text = bitmapChunk {
            guard let bytes = SizeArgument.parseBytes(text) else { throw CommandFailure(message: "invalid --bitmap-chunk '\(text)'") }
            bitmapChunkBytes = bytes
        }
        var sizeSectors: UInt64? = nil
        // `max` (as mdadm): the whole of the smallest member, which is also what no --size means.
        if let text = size, text != "max" {
            guard let bytes = SizeArgument.parseBytes(text) else { throw CommandFailure(message: "invalid --size '\(text)'") }
            sizeSectors = bytes / 512
        }
        let host: String?
        switch homehost {
        case "<none>": host = nil
        case nil, "<system>": host = Host.name()
        case let h?: host = h
        }
        var request = CreateRequest(
            level: raidLevel, raidDisks: raidDevices, memberSizesSectors: [], arrayUUID: randomBytes(16),
            deviceUUIDs: (0..<max(0, raidDevices)).map { _ in randomBytes(16) }, timeSeconds: Clock.wallSeconds())
        request.chunkKiB = chunkBytes / 1024
        request.layout = raidLayout
        request.bitmap = bitmapChoice
        request.bitmapChunkBytes = bitmapChunkBytes
        request.sizeSectors = sizeSectors
        request.name = name
        request.homehost = host
        return request
    }
}

/// Random bytes for UUIDs (the CLI shell draws randomness; the format layer never does).
func randomBytes(_ count: Int) -> [UInt8] {
    var generator = SystemRandomNumberGenerator()
    return (0..<count).map { _ in UInt8.random(in: 0...255, using: &generator) }
}
