import DiskIO

/// Monotonic seconds, for progress and benchmarks (the CLI shell may read clocks).
func monotonicSeconds() -> Double { Clock.monotonicSeconds() }

/// md's progress line, as /proc/mdstat prints it:
/// `[====>................]  resync = 21.4% (224256/1046528) finish=0.6min speed=22425K/sec`
/// Redrawn in place on a terminal (at most 10 times a second); elsewhere printed at each 10 %.
final class ProgressBar {
    let action: String
    let unitsPerKiB: Int
    /// How the speed is shown: md's `K/sec` for sectors, otherwise items per second.
    let speedUnit: String
    let start = monotonicSeconds()
    var lastDraw = 0.0
    var lastDecile = -1
    let interactive: Bool
    var finished = false

    /// `action` is md's word for the work (resync, check, recover, copy...). Progress counts
    /// 512-byte sectors; md shows KiB.
    /// `countsSectors`: progress is in 512-byte sectors, shown in KiB as md does; otherwise
    /// items (named by `items`, e.g. "runs") are shown as they are.
    init(action: String, countsSectors: Bool = true, items: String = "items") {
        self.action = action
        self.unitsPerKiB = countsSectors ? 2 : 1
        self.speedUnit = countsSectors ? "K/sec" : " \(items)/sec"
        interactive = Terminal.isTerminal(Terminal.standardError)
    }

    func update(done: UInt64, total: UInt64) {
        let now = monotonicSeconds()
        let fraction = total == 0 ? 1 : Double(done) / Double(total)
        let decile = Int(fraction * 10)
        if interactive {
            guard now - lastDraw >= 0.1 || done == total else { return }
        } else {
            // Off a terminal: a line per 10 %, and none at all for work done within a second.
            guard decile != lastDecile, now - start >= 1 || done >= total else { return }
        }
        lastDraw = now
        lastDecile = decile
        let divisor = UInt64(unitsPerKiB)
        let line = Self.render(action: action, done: done / divisor, total: total / divisor, elapsed: now - start, speedUnit: speedUnit)
        write(interactive ? "\r" + line + "\u{1B}[K" : line + "\n")
        if done >= total { finish() }
    }

    func finish() {
        guard !finished else { return }
        finished = true
        if interactive { write("\n") }
    }

    private func write(_ text: String) {
        Terminal.flushStandardOutput()
        Terminal.write(text, to: Terminal.standardError)
    }

    /// The mdstat line for `done` of `total` KiB after `elapsed` seconds: 20 cells, per-mille/50
    /// `=` signs, a `>`, the rest dots; the percentage truncated to a tenth as md does.
    static func render(action: String, done: UInt64, total: UInt64, elapsed: Double, speedUnit: String = "K/sec") -> String {
        let perMille = total == 0 ? 1000 : Int(min(1000, done * 1000 / total))
        let filled = perMille / 50
        let bar = "[" + String(repeating: "=", count: filled) + ">" + String(repeating: ".", count: 20 - filled) + "]"
        let whole = String(perMille / 10)
        let percent = String(repeating: " ", count: max(0, 3 - whole.count)) + whole + "." + String(perMille % 10)
        let speed = elapsed > 0 ? Double(done) / elapsed : 0
        let remainingMinutes = speed > 0 ? Double(total - min(done, total)) / speed / 60 : 0
        return "\(bar)  \(action) =\(percent)% (\(done)/\(total)) finish=\(formatFixed(remainingMinutes, digits: 1))min speed=\(UInt64(speed))\(speedUnit)"
    }
}
