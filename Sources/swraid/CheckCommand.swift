import ArgumentParser
import MDOffline

struct Check: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Offline parity check of an array's members (md's 'check'; nothing is written).",
        discussion: "Prints mismatch_cnt as md counts it: 8 sectors per inconsistent 4 KiB block.")

    @Flag(name: [.short, .long], help: "Print where RAID6 syndromes place each mismatch.")
    var verbose = false

    @Argument(help: "Member images or devices.")
    var members: [String]

    func run() throws {
        try failingCleanly {
            let array = try OfflineArray(paths: members)
            for note in array.notes { printError(note) }
            let bar = ProgressBar(action: "check")
            let report = try array.check { bar.update(done: $0, total: $1) }
            bar.finish()
            print("mismatch_cnt \(report.mismatchSectors)")
            if verbose {
                for (role, sector) in report.located {
                    let member = array.plan.memberForRole[role].map { array.members[$0] }
                    let device = member.map { " (device sector \($0.superblock.dataOffsetSectors + sector))" } ?? ""
                    print("  role \(role) \(member?.name ?? "?"): 4K block at data sector \(sector)\(device) disagrees with the others")
                }
            }
            if report.mismatchSectors != 0 { throw ExitCode(2) }
        }
    }
}
