import ArgumentParser
import DiskIO
import MDFormat
import MDOffline


struct Examine: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print a member's md superblock, as mdadm --examine does.")

    @Flag(help: "Print JSON instead of mdadm's text.")
    var json = false

    @Option(help: "Host name for the '(local to host X)' note (default: this machine's name; <none> for none).")
    var homehost: String?

    @Argument(help: "Member images or devices.")
    var members: [String]

    func run() throws {
        try failingCleanly {
            var reports: [(String, ExamineReport)] = []
            var problems: [String] = []
            // Like mdadm, a superblock that fails validation (a bad checksum, say) is still shown,
            // with the problem named on stderr and a non-zero exit. No superblock at all is fatal.
            for path in members {
                let file = try MemberFile(path: path, mode: .readOnly)
                defer { file.close() }
                let probed = try SuperblockProbe.probe(file, validate: false)
                do {
                    try probed.superblock.validate(
                        readAtSectors: probed.superblock.superOffsetSectors, deviceSizeSectors: probed.deviceSizeSectors)
                } catch {
                    problems.append("\(path): \(error)")
                }
                reports.append((path, ExamineReport(
                    superblock: probed.superblock, deviceSizeSectors: probed.deviceSizeSectors, bitmap: probed.bitmap,
                    homehost: homehost == "<none>" ? nil : (homehost ?? Host.name()))))
            }
            if json {
                let value: JSONValue = .array(reports.map { $0.1.json(device: $0.0) })
                print(value.render())
            } else {
                for (path, report) in reports {
                    print("\(path):")
                    for line in report.lines(formatTime: localCTime) { print(line) }
                }
            }
            if !problems.isEmpty {
                for problem in problems { printError(problem) }
                throw ExitCode(1)
            }
        }
    }
}

/// ctime(3) text in local time, as mdadm prints Creation/Update Time.
func localCTime(_ seconds: UInt64) -> String {
    guard let t = Clock.localTime(seconds) else { return formatUTCTime(seconds) }
    return ctimeText(weekday: t.weekday, month: t.month, day: t.day, hour: t.hour, minute: t.minute, second: t.second, year: t.year)
}
