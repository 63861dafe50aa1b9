import Glibc
import Dispatch
import DiskIO
import MDFormat
import RaidCore
import Testing

@testable import RaidEngine

/// A device whose flushes block while its gate is shut, counting how many run at once.
private final class GatedDevice: MemberDevice, @unchecked Sendable {
    let name: String
    private let lock = ConditionLock()
    private var shut = false
    private var running = 0
    private var mostAtOnce = 0
    private var entered = 0

    init(name: String) { self.name = name }

    func shutGate() { lock.withLock { shut = true } }
    func openGate() { lock.withLock { shut = false; lock.broadcast() } }
    var mostRunningAtOnce: Int { lock.withLock { mostAtOnce } }
    /// The thread of each call, in order.
    private(set) var threadsThatRan: [UInt] = []
    var threads: [UInt] { lock.withLock { threadsThatRan } }
    /// Waits until `count` calls have entered in all.
    func waitForEntered(_ count: Int) {
        lock.lock()
        while entered < count { lock.wait() }
        lock.unlock()
    }

    func sizeBytes() throws(MemberIOError) -> UInt64 { 1 << 20 }
    func read(at offsetBytes: UInt64, into buffers: [UnsafeMutableRawBufferPointer], purpose: MemberIOPurpose) throws(MemberIOError) {}
    func write(at offsetBytes: UInt64, from buffers: [UnsafeRawBufferPointer], fua: Bool, purpose: MemberIOPurpose) throws(MemberIOError) {}
    func flush(purpose: MemberIOPurpose) throws(MemberIOError) {
        lock.lock()
        threadsThatRan.append(UInt(pthread_self()))
        running += 1
        entered += 1
        mostAtOnce = max(mostAtOnce, running)
        lock.broadcast()
        while shut { lock.wait() }
        running -= 1
        lock.unlock()
    }
    func close() {}
}

/// Collects the pool's results as they are delivered.
private final class Deliveries: @unchecked Sendable {
    private let lock = ConditionLock()
    private var done: [MemberIOID] = []
    let arrived = DispatchSemaphore(value: 0)

    func add(_ results: [(MemberIOID, MemberIOResult)]) {
        lock.withLock { done += results.map(\.0) }
        for _ in results { arrived.signal() }
    }
    var ids: Set<MemberIOID> { lock.withLock { Set(done) } }
}

@Suite struct MemberIOPoolTests {
    private func flush(_ id: UInt64, member: Int, on device: MemberDevice) -> IOJob {
        let request = MemberIORequest(id: MemberIOID(id), member: MemberIndex(member), offsetBytes: 0, kind: .flush, purpose: .clientFlush)
        return IOJob(device: device, io: MergedIO(member: MemberIndex(member), kind: .flush, offsetBytes: 0, requests: [request]))
    }

    /// A stalled member holds at most its share of the threads: with four threads and a limit of
    /// two per member, six I/Os stuck on member 0 take two threads and member 1's I/O still runs
    /// (without the limit they take all four and member 1 waits for member 0). Member 0's queued
    /// I/O runs once it resumes, never more than two at once.
    @Test func aStalledMemberHoldsOnlyItsShareOfTheThreads() {
        let stalled = GatedDevice(name: "m0")
        let healthy = GatedDevice(name: "m1")
        let deliveries = Deliveries()
        let pool = MemberIOPool(threads: 4, perMemberLimit: MemberIOPool.perMemberLimit(threads: 4, members: 2)) { deliveries.add($0) }
        #expect(pool.perMemberLimit == 2)
        stalled.shutGate()
        for i in 0..<6 { pool.submit(flush(UInt64(i), member: 0, on: stalled)) }
        stalled.waitForEntered(2)
        for i in 10..<14 { pool.submit(flush(UInt64(i), member: 1, on: healthy)) }
        // The deadline only turns a hang (the bug) into a failure; the pass needs no waiting.
        let healthyDone = (10..<14).allSatisfy { _ in deliveries.arrived.wait(timeout: .now() + 30) == .success }
        #expect(healthyDone, "member 1's I/O waited for the stalled member")
        #expect(deliveries.ids == Set((10..<14).map { MemberIOID(UInt64($0)) }))
        stalled.openGate()
        for _ in 0..<6 { #expect(deliveries.arrived.wait(timeout: .now() + 30) == .success) }
        #expect(deliveries.ids.count == 10)
        #expect(stalled.mostRunningAtOnce == 2, "member 0 held \(stalled.mostRunningAtOnce) threads")
        #expect(pool.busyJobs == 0)
        pool.shutdown()
    }

    /// An unplug's jobs arrive together and wake one thread; that thread wakes the next for
    /// the jobs it leaves, so the one that takes the stalled member's job does not keep the
    /// others from starting.
    @Test func aBatchWithAStalledMembersJobStillRunsTheRest() {
        let stalled = GatedDevice(name: "m0")
        let healthy = GatedDevice(name: "m1")
        let deliveries = Deliveries()
        let pool = MemberIOPool(threads: 2, perMemberLimit: 1) { deliveries.add($0) }
        stalled.shutGate()
        pool.waitUntilEveryThreadWaits()
        pool.submit([flush(0, member: 0, on: stalled)] + (10..<14).map { flush(UInt64($0), member: 1, on: healthy) })
        // The deadline only turns a hang (the bug) into a failure; the pass needs no waiting.
        let healthyDone = (10..<14).allSatisfy { _ in deliveries.arrived.wait(timeout: .now() + 30) == .success }
        #expect(healthyDone, "member 1's I/O waited for the stalled member")
        #expect(deliveries.ids == Set((10..<14).map { MemberIOID(UInt64($0)) }))
        stalled.openGate()
        #expect(deliveries.arrived.wait(timeout: .now() + 30) == .success)
        #expect(deliveries.ids.count == 5)
        #expect(pool.busyJobs == 0)
        pool.shutdown()
    }

    /// A job arriving while every thread sleeps wakes the one that went to sleep last, so that
    /// one job at a time keeps running on one thread instead of on each in turn.
    @Test func theThreadThatSleptLastTakesTheNextJob() {
        let device = GatedDevice(name: "m0")
        let deliveries = Deliveries()
        let pool = MemberIOPool(threads: 4, perMemberLimit: 4) { deliveries.add($0) }
        for i in 0..<8 {
            pool.waitUntilEveryThreadWaits()
            pool.submit(flush(UInt64(i), member: 0, on: device))
            // The deadline only turns a hang (the bug) into a failure; the pass needs no waiting.
            #expect(deliveries.arrived.wait(timeout: .now() + 30) == .success)
        }
        let threads = device.threads
        #expect(threads.count == 8)
        #expect(Set(threads.dropFirst()).count == 1, "successive jobs ran on \(Set(threads).count) threads")
        pool.shutdown()
    }

    @Test func theShareIsAnEvenSplitOfTheThreadsAndAtLeastOne() {
        #expect(MemberIOPool.perMemberLimit(threads: 10, members: 5) == 2)
        #expect(MemberIOPool.perMemberLimit(threads: 5, members: 5) == 1)
        #expect(MemberIOPool.perMemberLimit(threads: 2, members: 5) == 1)
        #expect(MemberIOPool.perMemberLimit(threads: 32, members: 4) == 8)
    }
}

@Suite struct IOThreadDefaultTests {
    /// A share for every member (so a stall stays with its member), of the processors per member
    /// from 1 to 4, within the option's 64.
    @Test func theDefaultGivesEveryMemberAShareOfTheProcessors() {
        #expect(RaidEngine.defaultIOThreads(members: 5, processors: 2) == 5)
        #expect(RaidEngine.defaultIOThreads(members: 4, processors: 2) == 4)
        #expect(RaidEngine.defaultIOThreads(members: 4, processors: 8) == 8)
        #expect(RaidEngine.defaultIOThreads(members: 4, processors: 64) == 16)
        #expect(RaidEngine.defaultIOThreads(members: 100, processors: 2) == 64)
        for members in 1...16 {
            for processors in [1, 2, 3, 8, 96] {
                let threads = RaidEngine.defaultIOThreads(members: members, processors: processors)
                #expect(MemberIOPool.perMemberLimit(threads: threads, members: members) * members <= threads,
                        "every member finds its share free with \(threads) threads for \(members)")
            }
        }
        #expect(Host.processorCount() >= 1)
    }
}
