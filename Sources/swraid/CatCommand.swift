import ArgumentParser
import DiskIO
import MDOffline


struct Cat: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Assemble an array read-only from its members and stream its data.",
        discussion: """
            Members may be given in any order; roles come from the superblocks. Name an absent \
            member 'missing' or leave it out: it is rebuilt from parity, as is a stale member \
            (one whose events are behind the others'). Refuses when the data cannot be correct.
            """)

    @Option(name: [.short, .long], help: "Write the array's data to this file instead of standard output.")
    var output: String?

    @Flag(name: [.short, .long], help: "Read even a degraded array that was not shut down cleanly.")
    var force = false

    @Flag(name: [.short, .long], help: "Print the members used and left out on standard error.")
    var verbose = false

    @Argument(help: "Member images or devices, or 'missing'.")
    var members: [String]

    func run() throws {
        try failingCleanly {
            if output == nil && Terminal.isTerminal(Terminal.standardOutput) {
                throw CommandFailure(message: "refusing to write array data to a terminal: give --output FILE or pipe it")
            }
            let array = try OfflineArray(paths: members, force: force)
            if verbose || !array.plan.missingRoles.isEmpty || !array.plan.excluded.isEmpty {
                for note in array.notes { printError(note) }
            }
            // Compare files, not spellings: `./m1.img` truncated would destroy member m1.img.
            if let path = output, let target = MemberFile.identity(path),
                let member = array.members.first(where: { MemberFile.identity($0.name) == target })
            {
                throw CommandFailure(message: "--output \(path) is member \(member.name); refusing to overwrite it")
            }
            let sink = try OutputFile(path: output)
            defer { sink.close() }
            let bar = (output != nil && Terminal.isTerminal(Terminal.standardError)) || verbose ? ProgressBar(action: "copy") : nil
            try array.stream(sink: { try sink.write($0) }, progress: { bar?.update(done: $0, total: $1) })
            bar?.finish()
            try sink.finish()
        }
    }
}

