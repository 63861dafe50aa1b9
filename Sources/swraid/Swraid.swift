import ArgumentParser
import DiskIO

@main
struct Swraid: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "swraid",
        abstract: "Software RAID 5/6 in user space, on Linux md's on-disk format.",
        discussion: """
            Members are image files or block devices carrying md v1.x superblocks; the words and \
            defaults are mdadm's.
            """,
        subcommands: [
            Demo.self, Create.self, Run.self, StatusCommand.self, DetailCommand.self, GetCommand.self, SetCommand.self,
            FailCommand.self, InjectCommand.self, RemoveCommand.self, AddCommand.self, ReAddCommand.self, WaitCommand.self, StopCommand.self, Examine.self, Cat.self, Check.self, Sim.self, Bench.self, StressWriter.self,
        ])
}

/// One line on stderr, prefixed like mdadm's messages.
func printError(_ message: String) {
    Terminal.flushStandardOutput()
    Terminal.write("swraid: \(message)\n", to: Terminal.standardError)
}

/// Fails the command with one line and exit status 1 (ArgumentParser would add usage text).
struct CommandFailure: Error, CustomStringConvertible {
    let message: String
    var description: String { message }
}

extension ParsableCommand {
    /// Runs `body`; any error becomes one clear line on stderr and a non-zero exit.
    func failingCleanly(_ body: () throws -> Void) throws {
        do {
            try body()
        } catch let error as CleanExit {
            throw error
        } catch let error as ExitCode {
            throw error
        } catch {
            printError("\(error)")
            throw ExitCode(1)
        }
    }
}
