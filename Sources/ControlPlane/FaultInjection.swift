import DiskIO
import MDFormat
import RaidCore

/// `swraid run --fault-injection`: every member behind a fault injector (DiskIO's
/// `FaultyMember`) that the control socket's `inject` verb drives while the array serves, as
/// dm-flakey or md's old "faulty" personality do for the kernel. For test rigs: what md does
/// with a failing disk can be shown on a live array, through real clients.
///
///     inject MEMBER read-error SECTOR COUNT   latent bad sectors (relative to the data start, as
///                                             md's bad_blocks): reads fail until a write covers them
///     inject MEMBER write-error               every write fails (EIO)
///     inject MEMBER stall                     every I/O is held until `resume`
///     inject MEMBER resume                    releases the held I/O
///     inject MEMBER wait-held N               answers once N I/Os are held by the stall
///     inject MEMBER vanish                    every I/O fails (ENXIO), as a disk dropping off the bus
///     inject MEMBER clear                     no more injected errors (a vanished member stays gone)
///     inject MEMBER status                    faults injected so far and I/O held
///
/// Members added later (`add`) are not behind an injector.
public final class FaultInjection: @unchecked Sendable {
    let members: [FaultyMember]
    private let lock = ConditionLock()
    /// The open stall per member (under `lock`).
    private var stalls: [FaultGate?]
    /// The most I/Os of one member the engine runs at once (its share of the I/O threads),
    /// once known (under `lock`): `wait-held` for more would wait for ever.
    private var heldLimitPerMember: Int?

    /// Tells the injector how many I/Os of one member can be in flight at once.
    public func limitHeld(perMember limit: Int) {
        lock.withLock { heldLimitPerMember = limit }
    }

    public static let usage =
        "inject MEMBER ACTION  fault injection (run --fault-injection): read-error SECTOR COUNT, write-error, stall, resume, wait-held N, vanish, clear, status"

    /// Takes the devices the engine will own, each wrapped in a fault injector.
    public init(wrapping devices: [MemberDevice]) {
        members = devices.map { FaultyMember($0) }
        stalls = Array(repeating: nil, count: devices.count)
    }

    public var devices: [MemberDevice] { members }

    /// The member's open stall, no longer recorded as open.
    private func takeStall(_ member: Int) -> FaultGate? {
        lock.withLock {
            defer { stalls[member] = nil }
            return stalls[member]
        }
    }

    /// Applies `action` to member `index` (as the engine resolved the name the user gave).
    /// `wait-held` blocks a thread of its own until the I/O is held, not the caller's.
    public func perform(member index: MemberIndex, action text: String) async throws(ControlError) -> [String] {
        let words = text.split(separator: " ", omittingEmptySubsequences: true)
        guard words.first == "wait-held" else { return try apply(member: index, action: text) }
        guard words.count == 2, let count = Int(words[1]), (1...1024).contains(count) else {
            throw ControlError.invalid("wait-held takes a count of I/Os (1 to 1024)")
        }
        if let limit = lock.withLock({ heldLimitPerMember }), count > limit {
            throw ControlError.invalid("at most \(limit) I/O of one member run at once (its share of the I/O threads): \(count) would never be held")
        }
        guard index.rawValue >= 0, index.rawValue < members.count,
            let gate = lock.withLock({ stalls[index.rawValue] })
        else { throw ControlError.invalid("member \(index.rawValue) is not stalled") }
        await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
            OSThread.start {
                gate.waitForWaiters(count)
                done.resume()
            }
        }
        return try apply(member: index, action: "status")
    }

    func apply(member index: MemberIndex, action text: String) throws(ControlError) -> [String] {
        guard index.rawValue >= 0, index.rawValue < members.count else {
            throw ControlError.invalid("member \(index.rawValue) was added after assembly and has no fault injector")
        }
        let member = members[index.rawValue]
        let words = text.split(separator: " ", omittingEmptySubsequences: true).map(String.init)
        guard let verb = words.first else { throw ControlError.invalid("inject needs an action: \(Self.usage)") }
        let arguments = Array(words.dropFirst())
        func none() throws(ControlError) {
            guard arguments.isEmpty else { throw ControlError.invalid("'\(verb)' takes no argument") }
        }
        switch verb {
        case "read-error":
            guard arguments.count == 2, let sector = UInt64(arguments[0]), let count = UInt64(arguments[1]), count > 0,
                count <= 1 << 32, sector <= UInt64.max / 512 - count
            else { throw ControlError.invalid("read-error takes SECTOR COUNT (sectors from the data start)") }
            let dataStart: UInt64
            do { dataStart = try SuperblockProbe.probe(member.inner).superblock.dataOffsetSectors } catch {
                throw ControlError.invalid("cannot read the member's superblock: \(error)")
            }
            guard dataStart <= UInt64.max / 512 - sector - count else { throw ControlError.invalid("sector \(sector) is past any device") }
            member.addBadRange(((dataStart + sector) * 512)..<((dataStart + sector + count) * 512))
        case "write-error":
            try none()
            member.add(FaultyMember.Rule([.write]))
        case "stall":
            try none()
            let gate = FaultGate()
            let fresh: Bool = lock.withLock {
                guard stalls[index.rawValue] == nil else { return false }
                stalls[index.rawValue] = gate
                return true
            }
            guard fresh else { throw ControlError.busy("member \(index.rawValue) is stalled already") }
            member.add(FaultyMember.Rule([.read, .write, .flush], stall: gate, failsAfterStall: false))
        case "resume":
            try none()
            guard let gate = takeStall(index.rawValue) else {
                throw ControlError.invalid("member \(index.rawValue) is not stalled")
            }
            gate.open()
        case "vanish":
            try none()
            member.vanish()
        case "clear":
            try none()
            member.removeAllRules()
            takeStall(index.rawValue)?.open()
        case "status":
            try none()
        default:
            throw ControlError.invalid("unknown fault '\(verb)': \(Self.usage)")
        }
        let held = lock.withLock { stalls[index.rawValue]?.waiters ?? 0 }
        let injected = member.injected
        return [
            "injected: read \(injected[.read, default: 0]) write \(injected[.write, default: 0]) flush \(injected[.flush, default: 0])",
            "bad ranges: \(member.remainingBadRanges.count), held: \(held)",
        ]
    }
}
