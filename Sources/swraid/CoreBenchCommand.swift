import ArgumentParser
import DiskIO
import MDFormat
import MDOffline
import RaidCore
import RaidSimulation

/// The array core alone: one thread, the core and its driver, members as plain memory whose I/O
/// completes at once. What the core costs per byte and per request, with no system call, thread
/// or socket in the way (every shell's ceiling).
struct CoreBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "core",
        abstract: "The array core alone on one thread, members in memory: full-stripe and 1 MiB writes, 1 MiB reads, 4 KiB random writes.",
        discussion: """
            Runs RAID5 of 4 and RAID6 of 5 (CHUNK, mdadm's 512K by default; no bitmap) with member I/O completed at \
            once from memory: SIZE of sequential full-stripe writes (one stripe row of data each), of \
            1 MiB writes and of 1 MiB reads, all with 8 in flight, then 4 KiB writes at random 4 KiB \
            offsets with 32 in flight. Build with -c release.
            """)

    @Option(name: .customLong("size-mib"), help: "MiB written and read per shape (the array is 256 MiB; writes wrap).")
    var sizeMiB: Int = 2048

    @Option(name: .customLong("small-writes"), help: "4 KiB writes per shape.")
    var smallWrites: Int = 200_000

    @Option(name: .customLong("chunk-kib"), help: "Chunk size in KiB.")
    var chunkKiB: Int = 512

    @Option(name: .customLong("stripe-kib"), help: "md's stripe_size in KiB (4 to 32).")
    var stripeKiB: Int = 4

    func run() throws {
        guard sizeMiB > 0, smallWrites > 0 else { throw CommandFailure(message: "--size-mib and --small-writes must be positive") }
        guard chunkKiB >= 4, chunkKiB <= 65536, chunkKiB & (chunkKiB - 1) == 0 else {
            throw CommandFailure(message: "--chunk-kib takes a power of two from 4 to 65536")
        }
        guard stripeKiB >= 4, stripeKiB <= 32, stripeKiB & (stripeKiB - 1) == 0 else {
            throw CommandFailure(message: "--stripe-kib takes a power of two from 4 to 32 (md's stripe_size)")
        }
        #if DEBUG
        printError("warning: debug build; run `swift run -c release swraid bench core` for real figures")
        #endif
        print("# swraid bench core: one thread, members in memory (I/O completes at once), \(chunkKiB)K chunks, no bitmap")
        print("# [in brackets: the same without the members' own copying, the core's share alone]")
        for (level, disks) in [(RaidLevel.raid5, 4), (.raid6, 5)] {
            let array = try MemoryArray(level: level, disks: disks, chunkKiB: chunkKiB, stripeKiB: stripeKiB, arrayBytes: 256 << 20)
            let name = "\(level == .raid5 ? "RAID5" : "RAID6")x\(disks)"
            let total = sizeMiB << 20
            // Full-stripe writes: one stripe row of data per request (the chunk times the data
            // members: 1.5 MiB with 512K chunks), every row written whole.
            let rowBytes = (disks - level.maxDegraded) * chunkKiB << 10
            let fullBytes = max(1, total / rowBytes) * rowBytes
            let full = array.measure(requestBytes: rowBytes, totalBytes: fullBytes, queueDepth: 8, write: true, random: false)
            let write = array.measure(requestBytes: 1 << 20, totalBytes: total, queueDepth: 8, write: true, random: false)
            let read = array.measure(requestBytes: 1 << 20, totalBytes: total, queueDepth: 8, write: false, random: false)
            // Every 1 MiB the writes wrote holds the same pattern: the reads must return it.
            guard array.lastRead?.bytes == DataPattern.bytes(count: 1 << 20, seed: 3) else {
                throw CommandFailure(message: "\(name): a read returned something else than was written")
            }
            let small = array.measure(requestBytes: 4096, totalBytes: smallWrites * 4096, queueDepth: 32, write: true, random: true)
            // Each figure, then (in brackets) the same without the time the simulated members
            // spent copying: the core's own rate, and what its shell's memory costs it.
            func rate(_ amount: Double, _ m: (seconds: Double, copySeconds: Double), _ scale: Double, digits: Int) -> String {
                "\(formatFixed(amount / m.seconds / scale, digits: digits)) [\(formatFixed(amount / (m.seconds - m.copySeconds) / scale, digits: digits))]"
            }
            print(
                "\(name.padding(toLength: 8)) full-stripe write \(rate(Double(fullBytes), full, 1e9, digits: 2)) GB/s   "
                    + "1 MiB write \(rate(Double(total), write, 1e9, digits: 2)) GB/s   "
                    + "1 MiB read \(rate(Double(total), read, 1e9, digits: 2)) GB/s   "
                    + "4 KiB random write \(rate(Double(smallWrites), small, 1e3, digits: 0)) k/s")
            Terminal.flushStandardOutput()
        }
    }
}

/// An array whose members are plain memory: a `CoreShell` that performs each member I/O with
/// one copy as soon as the actions of an event are dispatched, on the calling thread.
final class MemoryArray: CoreShell {
    typealias ClientContext = Void
    typealias ControlContext = Void

    let memberBytes: Int
    let members: [UnsafeMutableRawPointer]
    let arrayBytes: Int
    private(set) var driver: CoreDriver<MemoryArray>!
    /// Member I/O issued and not yet performed (bounded by the core's own bounds).
    private var pending: [MemberIORequest] = []
    /// The round being performed: swapped with `pending`, so that neither array is copied
    /// (`let batch = pending` then emptying `pending` made Swift copy it, a fresh allocation per
    /// round) and the requests are read in place rather than copied out one by one.
    private var performing: [MemberIORequest] = []
    private var timers: [(timer: TimerID, at: Nanoseconds, token: UInt64)] = []
    private var now: Nanoseconds = 0
    private var inFlight = 0
    private var failures = 0
    /// The data of the latest read answered (checked against what was written).
    private(set) var lastRead: IOBuffer?
    /// Time spent copying member data (the simulated members' share of a measurement).
    private(set) var copyNanos: UInt64 = 0

    init(level: RaidLevel, disks: Int, chunkKiB: Int, stripeKiB: Int = 4, arrayBytes wanted: Int) throws {
        let dataDisks = disks - (level == .raid6 ? 2 : 1)
        let chunkBytes = chunkKiB << 10
        let memberDataBytes = (wanted / dataDisks + chunkBytes - 1) / chunkBytes * chunkBytes
        var request = CreateRequest(
            // Room for the metadata mdadm would put before the data of members this small.
            level: level, raidDisks: disks, memberSizesSectors: Array(repeating: UInt64(memberDataBytes / 512 + 8192), count: disks), arrayUUID: Array(repeating: 7, count: 16),
            deviceUUIDs: (0..<disks).map { Array(repeating: UInt8($0), count: 16) }, timeSeconds: 1_700_000_000)
        request.chunkKiB = UInt64(chunkKiB)
        request.bitmap = .none
        request.sizeSectors = UInt64(memberDataBytes / 512)
        request.name = "bench"
        let plan = try CreatePlan(request, clean: true)
        memberBytes = Int(plan.memberSizesSectors[0]) * 512
        arrayBytes = memberDataBytes * dataDisks
        members = (0..<disks).map { _ in
            let m = UnsafeMutableRawPointer.allocate(byteCount: Int(plan.memberSizesSectors[0]) * 512, alignment: 4096)
            m.initializeMemory(as: UInt8.self, repeating: 0, count: Int(plan.memberSizesSectors[0]) * 512)
            return m
        }
        let metadata = (0..<disks).map { i in
            MemberMetadata(name: "mem\(i)", superblock: plan.superblocks[i], deviceSizeSectors: plan.memberSizesSectors[i])
        }
        var config = CoreConfig()
        config.stripeCacheSize = 1024
        config.stripeSizeBytes = stripeKiB << 10
        let core = try RaidCore(assembly: try CoreAssembly(members: metadata), config: config)
        driver = CoreDriver(core: core, shell: self)
        driver.start(now: 0)
        settle()
    }

    deinit { for m in members { m.deallocate() } }

    /// Seconds for `totalBytes` of requests of `requestBytes`, `queueDepth` in flight, at
    /// sequential offsets (wrapping) or at random aligned ones (a fixed seed), and the part of
    /// them spent copying member data.
    func measure(requestBytes: Int, totalBytes: Int, queueDepth: Int, write: Bool, random: Bool) -> (seconds: Double, copySeconds: Double) {
        copyNanos = 0
        let data = IOBuffer(DataPattern.bytes(count: requestBytes, seed: 3))
        let slots = UInt64(arrayBytes / requestBytes)
        var choice = SimRandom(seed: 11)  // a fixed seed: the same offsets every run
        var submitted = 0
        let requests = totalBytes / requestBytes
        let started = Clock.monotonicSeconds()
        var idleRounds = 0
        while submitted < requests || inFlight > 0 {
            // The queue is kept full: a request goes in as soon as one completes, as a client
            // at that queue depth does. (Refilled only once all had completed, a stream of
            // 1 MiB writes left its last row partial every `queueDepth` requests, and that row
            // went to the stripes at the gathering's deadline: a third of that phase's time.)
            while inFlight < queueDepth && submitted < requests {
                let slot = random ? choice.next() % slots : UInt64(submitted) % slots
                let offset = slot * UInt64(requestBytes)
                inFlight += 1
                submitted += 1
                _ = driver.submit(
                    write ? .write(offsetBytes: offset, data: data, fua: false) : .read(offsetBytes: offset, length: requestBytes),
                    context: (), now: now)
            }
            if step() {
                idleRounds = 0
            } else {
                idleRounds += 1
                precondition(idleRounds < 1_000_000, "the core waits on nothing")
            }
        }
        settle()  // the metadata writes the last completions caused belong to this figure
        let seconds = Clock.monotonicSeconds() - started
        precondition(failures == 0, "the core failed \(failures) requests")
        return (seconds, Double(copyNanos) * 1e-9)
    }

    /// Performs member I/O until none is issued; fires the earliest timer when the core waits
    /// on one with requests in flight (bounded: each round must make progress).
    private func settle() {
        var rounds = 0
        while !pending.isEmpty || (inFlight > 0 && !timers.isEmpty) {
            if !step() { rounds += 1 }
            precondition(rounds < 1_000_000, "the core waits on nothing")
        }
    }

    /// One round: the member I/O issued so far, performed and completed; or, when none is
    /// issued, the earliest timer fired. True when member I/O was done.
    private func step() -> Bool {
        if pending.isEmpty {
            guard let earliest = timers.indices.min(by: { timers[$0].at < timers[$1].at }) else {
                preconditionFailure("the core waits on nothing: \(inFlight) requests in flight, no member I/O and no timer")
            }
            let t = timers.remove(at: earliest)
            now = max(now, t.at)
            _ = driver.timerFired(t.timer, token: t.token, now: now)
            return false
        }
        precondition(performing.isEmpty, "a round began inside another")
        swap(&pending, &performing)
        // The batch's copies first, timed apart from the core (two clock reads per batch),
        // then its completions: what a figure owes to the members' memory, not the core.
        let copyStart = Clock.monotonicNanoseconds()
        for i in performing.indices {
            let base = members[performing[i].member.rawValue] + Int(performing[i].offsetBytes)
            switch performing[i].kind {
            case .read(let buffer): buffer.baseAddress.copyMemory(from: base, byteCount: buffer.count)
            case .write(let buffer, _): base.copyMemory(from: buffer.baseAddress, byteCount: buffer.count)
            case .flush: break
            }
        }
        copyNanos += Clock.monotonicNanoseconds() - copyStart
        // Completions may issue new member I/O: it goes to `pending`, for the next round.
        for i in performing.indices { driver.memberIOCompleted(performing[i].id, result: .success, now: now) }
        performing.removeAll(keepingCapacity: true)
        return true
    }

    func performMemberIO(_ io: MemberIORequest) {
        precondition(Int(io.offsetBytes) <= memberBytes, "member I/O past the member")
        pending.append(io)
    }

    func armTimer(_ timer: TimerID, at deadline: Nanoseconds, token: UInt64) {
        timers.removeAll { $0.timer == timer }
        timers.append((timer, deadline, token))
    }

    func clientCompleted(_ id: RequestID, request: ClientRequest, context: Void, result: ClientResult) {
        inFlight -= 1
        switch result {
        case .failed: failures += 1
        case .data(let d): lastRead = d
        case .done: break
        }
    }

    func controlCompleted(_ id: RequestID, command: ControlCommand, context: Void, result: ControlResult) {}

    func log(_ level: CoreLogLevel, _ text: String) {}
}
