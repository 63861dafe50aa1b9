import DequeModule

/// What a shell supplies to a `CoreDriver` (design.md §4.1): it performs member I/O and timers
/// and hears about completions. The driver calls these on its owner (one thread or event loop)
/// and never from inside `RaidCore.handle`.
public protocol CoreShell: AnyObject {
    /// What the shell keeps with each client request until its completion (a callback, a
    /// promise, nothing).
    associatedtype ClientContext
    associatedtype ControlContext

    /// Starts `io`; its end is reported with `CoreDriver.memberIOCompleted`.
    func performMemberIO(_ io: MemberIORequest)
    /// Fires `timer` at `deadline` by calling `CoreDriver.timerFired(_:token:now:)` with
    /// `token`. Arming a timer again replaces the earlier deadline (the driver ignores a fire
    /// whose token is not the latest, so a shell need not cancel).
    func armTimer(_ timer: TimerID, at deadline: Nanoseconds, token: UInt64)
    func clientCompleted(_ id: RequestID, request: ClientRequest, context: ClientContext, result: ClientResult)
    func controlCompleted(_ id: RequestID, command: ControlCommand, context: ControlContext, result: ControlResult)
    func log(_ level: CoreLogLevel, _ text: String)
    /// Every action of the events handed to the driver so far has been dispatched: the place to
    /// submit member I/O the shell batched (md's unplug). The shell may report member I/O it
    /// completed at once here (`CoreDriver.memberIOCompleted`: a read the page cache served);
    /// the driver dispatches what that causes before it returns, and calls this again.
    func actionsDispatched()
}

extension CoreShell {
    public func actionsDispatched() {}
}

/// The one driver every shell uses: it keeps the tables of pending client requests, control
/// commands, member I/Os and timers, hands each of the core's actions to the shell, feeds
/// results back, and asserts (always, in release builds too) that every request and command
/// gets exactly one completion and every member I/O exactly one result.
///
/// Dispatch is a loop over a queue, not recursion: a shell that submits a new request from a
/// completion callback gets its actions queued behind the current ones.
public final class CoreDriver<Shell: CoreShell> {
    public let core: RaidCore
    public unowned let shell: Shell

    public struct PendingClient {
        public let request: ClientRequest
        public let since: Nanoseconds
        public let context: Shell.ClientContext

        @inlinable
        init(request: ClientRequest, since: Nanoseconds, context: Shell.ClientContext) {
            self.request = request
            self.since = since
            self.context = context
        }
    }

    public struct PendingControl {
        public let command: ControlCommand
        public let since: Nanoseconds
        public let context: Shell.ControlContext

        @inlinable
        init(command: ControlCommand, since: Nanoseconds, context: Shell.ControlContext) {
            self.command = command
            self.since = since
            self.context = context
        }
    }

    public var pendingClients: IDTable<RequestID, PendingClient> { _pendingClients }
    @exclusivity(unchecked) @usableFromInline var _pendingClients = IDTable<RequestID, PendingClient>()
    public var pendingControls: IDTable<RequestID, PendingControl> { _pendingControls }
    @exclusivity(unchecked) @usableFromInline var _pendingControls = IDTable<RequestID, PendingControl>()
    public var memberIOsInFlight: IDTable<MemberIOID, MemberIORequest> { _memberIOsInFlight }
    @exclusivity(unchecked) @usableFromInline var _memberIOsInFlight = IDTable<MemberIOID, MemberIORequest>()
    /// Bytes of member I/O in flight (reads and writes).
    public var memberIOBytesInFlight: Int { _memberIOBytesInFlight }
    @exclusivity(unchecked) @usableFromInline var _memberIOBytesInFlight: Int = 0
    /// Armed timers: deadline and the token of the latest arm.
    public var timers: [TimerID: (deadline: Nanoseconds, token: UInt64)] { _timers }
    @exclusivity(unchecked) @usableFromInline var _timers: [TimerID: (deadline: Nanoseconds, token: UInt64)] = [:]
    public var isAbandoned: Bool { _isAbandoned }
    @exclusivity(unchecked) @usableFromInline var _isAbandoned: Bool = false
    public var now: Nanoseconds { _now }
    @exclusivity(unchecked) @usableFromInline var _now: Nanoseconds
    @exclusivity(unchecked) @usableFromInline var nextRequestID: UInt64
    @exclusivity(unchecked) @usableFromInline var nextTimerToken: UInt64 = 0
    @exclusivity(unchecked) @usableFromInline var queue = Deque<CoreAction>()
    @exclusivity(unchecked) @usableFromInline var dispatching = false

    /// `firstRequestID`: where request numbering starts (a shell that replaces its driver, as
    /// the simulator does after a crash, keeps IDs unique across drivers).
    public init(core: RaidCore, shell: Shell, firstRequestID: UInt64 = 1, now: Nanoseconds = 0) {
        self.core = core
        self.shell = shell
        self.nextRequestID = firstRequestID
        self._now = now
    }

    /// The next ID `submit` or `control` will use.
    public var upcomingRequestID: UInt64 { nextRequestID }

    /// An ID no request will get: for a shell that answers a request itself (a command that did
    /// not parse) and wants it numbered with the rest.
    @inlinable
    public func reserveRequestID() -> RequestID {
        defer { nextRequestID += 1 }
        return RequestID(nextRequestID)
    }

    @inlinable
    public func start(now: Nanoseconds) {
        advance(to: now)
        feed(core.start(now: now))
    }

    /// Hands a client request to the core; its completion comes through the shell (possibly
    /// before this returns, when the driver is not already dispatching).
    @inlinable
    @discardableResult
    public func submit(_ request: ClientRequest, context: Shell.ClientContext, now: Nanoseconds) -> RequestID {
        precondition(!_isAbandoned, "request submitted to an abandoned driver")
        advance(to: now)
        let id = RequestID(nextRequestID)
        nextRequestID += 1
        _pendingClients[id] = PendingClient(request: request, since: now, context: context)
        feedEvent(.client(id, request), now: now)
        return id
    }

    @inlinable
    @discardableResult
    public func control(_ command: ControlCommand, context: Shell.ControlContext, now: Nanoseconds) -> RequestID {
        precondition(!_isAbandoned, "command submitted to an abandoned driver")
        advance(to: now)
        let id = RequestID(nextRequestID)
        nextRequestID += 1
        _pendingControls[id] = PendingControl(command: command, since: now, context: context)
        feedEvent(.control(id, command), now: now)
        return id
    }

    /// A member I/O the shell performed has ended.
    @inlinable
    public func memberIOCompleted(_ id: MemberIOID, result: MemberIOResult, now: Nanoseconds) {
        guard !_isAbandoned else { return }
        guard let io = _memberIOsInFlight.removeValue(forKey: id) else {
            preconditionFailure("member I/O \(id) completed twice, or was never issued")
        }
        precondition(_memberIOBytesInFlight >= io.byteCount, "member I/O byte accounting would go below zero")
        _memberIOBytesInFlight -= io.byteCount
        advance(to: now)
        feedEvent(.memberIOCompleted(id, result), now: now)
    }

    /// A timer the shell armed has fired. Returns false (and does nothing) when a later arm
    /// replaced it.
    @inlinable
    @discardableResult
    public func timerFired(_ timer: TimerID, token: UInt64, now: Nanoseconds) -> Bool {
        guard !_isAbandoned, let armed = _timers[timer], armed.token == token else { return false }
        _timers[timer] = nil
        advance(to: now)
        feedEvent(.timerFired(timer), now: now)
        return true
    }

    /// The core is gone (the simulator's power loss): nothing more is dispatched, results still
    /// on their way are ignored.
    @inlinable
    public func abandon() {
        _isAbandoned = true
        queue.removeAll()
    }

    /// Member I/Os in flight, oldest first.
    public var inFlightMemberIOs: [MemberIORequest] { _memberIOsInFlight.sortedByKey().map(\.value) }

    /// When the longest-waiting request or command came, or nil when none waits (cheap: the
    /// liveness checker asks after every event, and describing each request cost 3 % of a run).
    public var oldestUnansweredSince: Nanoseconds? {
        var oldest: Nanoseconds?
        _pendingClients.forEachValue { oldest = min(oldest ?? $0.since, $0.since) }
        _pendingControls.forEachValue { oldest = min(oldest ?? $0.since, $0.since) }
        return oldest
    }

    /// Requests and commands not answered yet, oldest first: a description and when each came.
    public var unanswered: [(String, Nanoseconds)] {
        _pendingClients.sortedByKey().map { ("client request \($0.key) (\($0.value.request))", $0.value.since) }
            + _pendingControls.sortedByKey().map { ("control command \($0.key) ('\($0.value.command)')", $0.value.since) }
    }

    @inlinable
    func advance(to time: Nanoseconds) {
        precondition(time >= _now, "time went backwards (\(time) < \(_now))")
        _now = time
    }

    @inlinable
    func feedEvent(_ event: CoreEvent, now: Nanoseconds) {
        core.handle(event, now: now, appendingTo: &queue)
        dispatchQueued()
    }

    @inlinable
    func feed(_ actions: [CoreAction]) {
        queue.append(contentsOf: actions)
        dispatchQueued()
    }

    /// Rounds of `actionsDispatched` one dispatch may take: each round needs member I/O the
    /// shell completed at once in the round before, and every such I/O was issued by this
    /// dispatch, so a real run takes a handful. The bound turns a livelock (an I/O that causes
    /// itself again) into a crash with a message rather than a hang.
    @usableFromInline static var maxDispatchRounds: Int { 1 << 20 }

    @inlinable
    func dispatchQueued() {
        guard !dispatching else { return }
        dispatching = true
        defer { dispatching = false }
        // A loop, not recursion: what the shell completes from `actionsDispatched` is queued
        // (this method returns at once while `dispatching`) and dispatched by the next round.
        // One strong reference to the shell for the whole dispatch: each use of the `unowned`
        // property is an atomic check-and-retain and a release, about six pairs per 4 KiB write.
        let shell = self.shell
        var rounds = 0
        repeat {
            while !_isAbandoned, let action = queue.popFirst() { dispatch(action, to: shell) }
            guard !_isAbandoned else { return }
            shell.actionsDispatched()
            rounds += 1
            precondition(rounds <= Self.maxDispatchRounds, "dispatch does not settle: \(rounds) rounds of member I/O completed at once")
        } while !queue.isEmpty
    }

    @inlinable
    func dispatch(_ action: consuming CoreAction, to shell: Shell) {
        switch consume action {
        case .memberIO(let io):
            precondition(_memberIOsInFlight.updateValue(io, forKey: io.id) == nil, "member I/O \(io.id) issued twice")
            _memberIOBytesInFlight += io.byteCount
            shell.performMemberIO(io)
        case .completeClient(let id, let result):
            guard let pending = _pendingClients.removeValue(forKey: id) else {
                preconditionFailure("client request \(id) completed twice, or was never submitted")
            }
            shell.clientCompleted(id, request: pending.request, context: pending.context, result: result)
        case .completeControl(let id, let result):
            guard let pending = _pendingControls.removeValue(forKey: id) else {
                preconditionFailure("control command \(id) completed twice, or was never submitted")
            }
            shell.controlCompleted(id, command: pending.command, context: pending.context, result: result)
        case .armTimer(let timer, let deadline):
            nextTimerToken += 1
            _timers[timer] = (deadline, nextTimerToken)
            shell.armTimer(timer, at: deadline, token: nextTimerToken)
        case .log(let level, let text):
            shell.log(level, text)
        }
    }
}
