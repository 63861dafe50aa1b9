import ArgumentParser
import DiskIO
import MDFormat
import MDOffline

#if canImport(Glibc)
import Glibc
#endif

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
                    homehost: homehost == "<none>" ? nil : (homehost ?? systemHostName()))))
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
                fflush(nil)
                for problem in problems { printError(problem) }
                throw ExitCode(1)
            }
        }
    }
}

/// ctime(3) text in local time, as mdadm prints Creation/Update Time.
func localCTime(_ seconds: UInt64) -> String {
    var t = time_t(seconds)
    var parts = tm()
    guard localtime_r(&t, &parts) != nil else { return formatUTCTime(seconds) }
    return ctimeText(
        weekday: Int(parts.tm_wday), month: Int(parts.tm_mon) + 1, day: Int(parts.tm_mday), hour: Int(parts.tm_hour),
        minute: Int(parts.tm_min), second: Int(parts.tm_sec), year: Int(parts.tm_year) + 1900)
}
