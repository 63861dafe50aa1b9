/// Whether a connection that owes its client nothing polls its socket for the client's next
/// request before it lets the event loop sleep, and for how long: polling as QEMU's I/O threads
/// do (`poll-max-ns`), kept only while it pays. No clock here: the connection says how each
/// spell of polling ended.
///
/// Why: at queue depth 1 every request finds the loop asleep. Waking it costs the kernel a
/// cross-CPU wake-up, and on a virtual machine a halted vCPU brought back, with its caches and
/// branch predictors cold; swraid's user-space path per request is larger than a C server's, so
/// it pays more for the cold start (README, *QD1 latency*). A loop still running when the
/// request arrives pays neither.
///
/// Polling starts open: each idle spell is polled for up to `maxNanos`. After
/// `missesToClose` spells in a row that the client's next request did not come in, the client
/// is not in a tight loop and polling would only burn the CPU: it closes. While closed, one
/// idle spell in `probeInterval` is polled all the same, and one that catches the request
/// opens it again. (QEMU instead sizes its window by how long the loop then slept; here that
/// time includes the very wake-up polling avoids, 40-80 µs on the README's VM, so a client
/// that polling would serve looked too slow for it and the window never opened.)
public struct AdaptivePoll: Sendable, Equatable {
    /// The longest spell; 0 turns polling off.
    public let maxNanos: UInt64
    public private(set) var isOpen = true
    /// Spells in a row the request did not come in (while open).
    private(set) var missesInARow = 0
    /// Idle spells let go unpolled since polling closed (or since the last probe).
    private(set) var unpolledSinceProbe = 0
    /// Tests: always open, whatever the spells.
    let pinnedOpen: Bool

    public static let missesToClose = 3
    public static let probeInterval = 32
    /// What `swraid run` polls at most by default. QEMU's 32 µs was sized on NVMe hosts; on the
    /// 2-vCPU VM of the README's figures fio's own turnaround at queue depth 1 (its reply
    /// received, its next request sent) is 35-50 µs, so 32 µs caught some requests and missed
    /// most (by hand, fixed windows: 93-98 µs per read with 32 µs, 61-63 with 64, 136-139
    /// without polling).
    public static let defaultMaxNanos: UInt64 = 64_000
    /// The longest spell `swraid run` accepts (a loop that polls holds up everything else on it).
    public static let limitNanos: UInt64 = 1_000_000

    public init(maxNanos: UInt64) { self.init(maxNanos: maxNanos, pinnedOpen: false) }

    package init(maxNanos: UInt64, pinnedOpen: Bool) {
        precondition(maxNanos <= Self.limitNanos, "a poll spell past \(Self.limitNanos) ns would hold the loop too long")
        self.maxNanos = maxNanos
        self.pinnedOpen = pinnedOpen
    }

    /// The connection went idle and may poll: how long to poll this time (0: not at all).
    public mutating func spellNanos() -> UInt64 {
        guard maxNanos > 0 else { return 0 }
        if isOpen || pinnedOpen { return maxNanos }
        unpolledSinceProbe += 1
        guard unpolledSinceProbe >= Self.probeInterval else { return 0 }
        unpolledSinceProbe = 0
        return maxNanos
    }

    /// A spell of polling ended: the request came in it (`caught`) or not.
    public mutating func spellEnded(caught: Bool) {
        if caught {
            isOpen = true
            missesInARow = 0
        } else if isOpen {
            missesInARow += 1
            if missesInARow >= Self.missesToClose && !pinnedOpen {
                isOpen = false
                missesInARow = 0
                unpolledSinceProbe = 0
            }
        }
        assert(missesInARow < Self.missesToClose || pinnedOpen, "polling stayed open past its misses")
    }
}
