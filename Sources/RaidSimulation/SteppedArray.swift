import DiskIO
import MDFormat
import RaidCore

/// A test double that steps an array core by hand, as swift-nio ships `EmbeddedEventLoop`: the
/// same `CoreDriver` every shell uses, over simulated members, where member I/O waits in a list
/// until the test completes it and timers fire only when the test fires them. Tests look at the
/// state in between (write-pending, parked requests, a stop waiting).
public final class SteppedArray: CoreShell {
    public typealias ClientContext = Void
    public typealias ControlContext = Void

    public private(set) var members: [SimMember]
    public private(set) var driver: CoreDriver<SteppedArray>!
    public var core: RaidCore { driver.core }
    public var now: Nanoseconds = 0
    /// Member I/O issued and not completed, in issue order.
    public private(set) var pendingIO: [MemberIORequest] = []
    /// Every member I/O issued, in order.
    public private(set) var issued: [MemberIORequest] = []
    /// Issues and completions in the order they happened.
    public private(set) var history: [(io: MemberIORequest, completed: Bool)] = []
    public private(set) var timers: [TimerID: (at: Nanoseconds, token: UInt64)] = [:]
    public private(set) var clientResults: [RequestID: ClientResult] = [:]
    public private(set) var controlResults: [RequestID: ControlResult] = [:]
    public private(set) var logLines: [String] = []
    /// Members whose I/O (all of it) fails.
    public var failingMembers: Set<Int> = []
    /// Members whose writes (only) fail.
    public var failingWrites: Set<Int> = []
    /// Called as each member I/O is issued (before it can complete).
    public var onIssue: ((MemberIORequest) -> Void)?
    /// Reads complete at once, from `actionsDispatched`, as the engine completes a read the page
    /// cache serves while the driver is dispatching.
    public var completeReadsAtOnce = false
    /// How deep `actionsDispatched` calls have nested (1: never inside another).
    public private(set) var deepestActionsDispatchedNesting = 0
    private var actionsDispatchedNesting = 0

    public convenience init(members: [SimMember], config: CoreConfig = CoreConfig()) throws {
        try self.init(members: members, config: config, variant: [])
    }

    package init(members: [SimMember], config: CoreConfig, variant: FaultyCoreVariant) throws {
        self.members = members
        let assembly = try CoreAssembly(members: members.compactMap { $0.probe() })
        let core = try RaidCore(assembly: assembly, config: config, variant: variant, now: 0)
        driver = CoreDriver(core: core, shell: self)
        driver.start(now: 0)
    }

    // MARK: - CoreShell

    public func performMemberIO(_ io: MemberIORequest) {
        pendingIO.append(io)
        issued.append(io)
        history.append((io, false))
        onIssue?(io)
    }

    public func armTimer(_ timer: TimerID, at deadline: Nanoseconds, token: UInt64) { timers[timer] = (deadline, token) }

    public func clientCompleted(_ id: RequestID, request: ClientRequest, context: Void, result: ClientResult) {
        precondition(clientResults[id] == nil)
        clientResults[id] = result
    }

    public func controlCompleted(_ id: RequestID, command: ControlCommand, context: Void, result: ControlResult) {
        precondition(controlResults[id] == nil)
        controlResults[id] = result
    }

    public func log(_ level: CoreLogLevel, _ text: String) { logLines.append(text) }

    public func actionsDispatched() {
        actionsDispatchedNesting += 1
        defer { actionsDispatchedNesting -= 1 }
        deepestActionsDispatchedNesting = max(deepestActionsDispatchedNesting, actionsDispatchedNesting)
        guard completeReadsAtOnce else { return }
        while let i = pendingIO.firstIndex(where: { if case .read = $0.kind { true } else { false } }) { completeOne(at: i) }
    }

    // MARK: - stepping

    /// A new device joins the table (before `.addNew` names it): its I/O goes to `member`.
    public func attach(_ member: SimMember) { members.append(member) }

    @discardableResult
    public func submit(_ request: ClientRequest) -> RequestID { driver.submit(request, context: (), now: now) }

    @discardableResult
    public func control(_ command: ControlCommand) -> RequestID { driver.control(command, context: (), now: now) }

    /// `echo VALUE > md/NAME`, parsed as the control plane parses it (a parse error is answered
    /// like a refused write, without reaching the core).
    @discardableResult
    public func set(_ attribute: String, _ value: String) -> RequestID {
        do {
            return control(try ControlCommand.parse(attribute: attribute, value: value))
        } catch {
            let id = driver.reserveRequestID()
            controlResults[id] = .failed(error)
            return id
        }
    }

    /// Completes the pending member I/O at `index` (the oldest by default) against the members.
    public func completeOne(at index: Int = 0) {
        let io = pendingIO.remove(at: index)
        now += 10_000
        let m = io.member.rawValue
        let member = members[m]
        let failing = failingMembers.contains(m) || (io.isWrite && failingWrites.contains(m))
        let result = failing ? MemberIOResult.failure(.io) : perform(io, on: member)
        history.append((io, true))
        driver.memberIOCompleted(io.id, result: result, now: now)
    }

    /// Completes member I/O, oldest first, until none is left (bounded).
    public func settle(limit: Int = 1_000_000) {
        var n = 0
        while !pendingIO.isEmpty && n < limit {
            completeOne()
            n += 1
        }
        precondition(n < limit, "the core keeps issuing I/O")
    }

    /// Advances time to the timer's deadline and fires it (if armed).
    public func fireTimer(_ timer: TimerID) {
        guard let armed = timers.removeValue(forKey: timer) else { return }
        now = max(now, armed.at)
        driver.timerFired(timer, token: armed.token, now: now)
    }

    /// The answer to a command (nil while it waits). A function, so that
    /// `h.controlResult(h.set(...))` runs the command before it looks.
    public func controlResult(_ id: RequestID) -> ControlResult? { controlResults[id] }

    public func clientResult(_ id: RequestID) -> ClientResult? { clientResults[id] }

    public func data(_ id: RequestID) -> [UInt8]? {
        if case .data(let d)? = clientResults[id] { return d.bytes }
        return nil
    }

    public func superblock(_ m: Int) -> MDSuperblock1 { members[m].probe()!.superblock }
}
