import ArgumentParser
import ControlPlane
import ControlProtocol
import DiskIO

/// Which running array a control verb talks to.
struct ControlTarget: ParsableArguments {
    @Option(help: "The array's control socket (default: the only array in the runtime directory).")
    var control: String?

    @Option(help: "The array's name (its socket in the runtime directory).")
    var array: String?

    func socketPath() throws -> String {
        if let control { return control }
        let known = ControlClient.knownArrays()
        if let array {
            guard let found = known.first(where: { $0.name == array }) else {
                throw CommandFailure(message: "no running array named '\(array)' in \(ControlServer.runtimeDirectory)")
            }
            return found.path
        }
        switch known.count {
        case 0: throw CommandFailure(message: "no running arrays in \(ControlServer.runtimeDirectory) (give --control PATH)")
        case 1: return known[0].path
        default: throw CommandFailure(message: "several running arrays (\(known.map(\.name).joined(separator: ", "))): give --array NAME")
        }
    }
}

/// A member named on the command line as the daemon must see it: the daemon resolves relative
/// paths against its own working directory, so a file that exists here goes as an absolute path
/// (the daemon matches members by file identity); anything else (an index, the name of a member
/// whose file is gone) goes as it is.
func memberAsTheDaemonSeesIt(_ name: String) -> String {
    FileSystem.exists(name) ? FileSystem.absolute(name) : name
}

/// Sends one request and prints its output; an error reply becomes one line on stderr and the
/// errno as the exit status (EBUSY 16, EINVAL 22, ...).
func performControl(_ request: ControlRequest, target: ControlTarget) throws {
    let path: String
    let reply: ControlReply
    do {
        path = try target.socketPath()
        reply = try ControlClient(path: path).request(request)
    } catch {
        printError("\(error)")
        throw ExitCode(1)
    }
    switch reply {
    case .ok(let lines):
        for line in lines { print(line) }
    case .error(let errno, let message):
        printError("\(request.line): \(errno): \(message)")
        throw ExitCode(errnoNumber(named: errno))
    }
}

struct StatusCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status",
        abstract: "Every running array in /proc/mdstat's format (or one, with --control or --array).")

    @OptionGroup var target: ControlTarget

    func run() throws {
        var sockets: [(name: String, path: String)] = []
        if target.control != nil || target.array != nil {
            do { sockets = [("", try target.socketPath())] } catch {
                printError("\(error)")
                throw ExitCode(1)
            }
        } else {
            sockets = ControlClient.knownArrays()
        }
        print(MDStatReport.header)
        for socket in sockets {
            do {
                guard case .ok(let lines) = try ControlClient(path: socket.path).request(.status) else { continue }
                for line in lines { print(line) }
                print("")
            } catch {
                // A socket left behind by a daemon that died: say so, list the others.
                printError("\(socket.path): \(error)")
            }
        }
        print(MDStatReport.footer)
    }
}

struct DetailCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "detail", abstract: "mdadm --detail's report for a running array.")

    @OptionGroup var target: ControlTarget

    @Flag(help: "The same facts as JSON.")
    var json = false

    func run() throws { try performControl(json ? .detailJSON : .detail, target: target) }
}

struct GetCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "get",
        abstract: "Read an md attribute (cat /sys/block/mdN/md/ATTR).",
        discussion: "sync_action, array_state, sync_completed, mismatch_cnt, degraded, stripe_cache_size, dev-N/state, ...")

    @OptionGroup var target: ControlTarget

    @Argument(help: "The attribute.")
    var attribute: String

    func run() throws { try performControl(.get(attribute), target: target) }
}

struct SetCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "set",
        abstract: "Write an md attribute (echo VALUE > /sys/block/mdN/md/ATTR).",
        discussion: "Returns when md's write would return. Exit status: 16 EBUSY, 22 EINVAL, 2 no such attribute, 13 read-only attribute.")

    @OptionGroup var target: ControlTarget

    @Argument(help: "The attribute.")
    var attribute: String

    @Argument(help: "The value.")
    var value: String

    func run() throws { try performControl(.set(attribute, value), target: target) }
}

struct FailCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fail", abstract: "mdadm --fail: mark a member faulty.")
    @OptionGroup var target: ControlTarget
    @Argument(help: "The member: its path, or its index.") var member: String
    func run() throws { try performControl(.fail(memberAsTheDaemonSeesIt(member)), target: target) }
}

struct InjectCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "inject",
        abstract: "Inject a member fault into an array run with --fault-injection (test rigs).",
        discussion: """
            Actions: read-error SECTOR COUNT (latent bad sectors from the data start, healed by a \
            write), write-error, stall, resume, wait-held N (answers once N I/Os are held), vanish, \
            clear, status.
            """)
    @OptionGroup var target: ControlTarget
    @Argument(help: "The member: its path, or its index.") var member: String
    @Argument(parsing: .remaining, help: "The fault.") var action: [String]
    func run() throws { try performControl(.inject(([member] + action).joined(separator: " ")), target: target) }
}

struct RemoveCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "remove", abstract: "mdadm --remove: a faulty or spare member leaves the array.")
    @OptionGroup var target: ControlTarget
    @Argument(help: "The member: its path, or its index.") var member: String
    func run() throws { try performControl(.remove(memberAsTheDaemonSeesIt(member)), target: target) }
}

struct AddCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "add",
        abstract: "mdadm --add: a new device joins as a spare (recovery starts when a slot is empty).")
    @OptionGroup var target: ControlTarget
    @Argument(help: "The device or file (its contents are overwritten).") var path: String
    func run() throws { try performControl(.add(FileSystem.absolute(path)), target: target) }
}

struct ReAddCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "re-add", abstract: "mdadm --re-add: a removed member comes back.")
    @OptionGroup var target: ControlTarget
    @Argument(help: "The member: its path, or its index.") var member: String
    func run() throws { try performControl(.readd(memberAsTheDaemonSeesIt(member)), target: target) }
}

struct WaitCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "wait", abstract: "mdadm --wait: until no resync, recovery, check or repair runs.")
    @OptionGroup var target: ControlTarget
    func run() throws { try performControl(.wait, target: target) }
}

struct StopCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stop",
        abstract: "mdadm --stop: finish requests in flight, mark the array clean, and end its daemon.")
    @OptionGroup var target: ControlTarget
    func run() throws { try performControl(.stop, target: target) }
}
