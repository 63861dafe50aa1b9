import Testing

@testable import RaidCore

/// The pool behind request buffers: size classes, reuse, and the bound on what it keeps idle.
@Suite struct IOBufferPoolTests {
    @Test func sizesRoundUpToAPowerOfTwoFrom4KiBTo32MiB() {
        func classBytes(_ n: Int) -> Int? { IOBufferPool.SizeClass(fitting: n)?.byteCount }
        #expect(classBytes(0) == 4096)
        #expect(classBytes(512) == 4096)
        #expect(classBytes(4096) == 4096)
        #expect(classBytes(4097) == 8192)
        #expect(classBytes(12288) == 16384)
        #expect(classBytes(1 << 20) == 1 << 20)
        #expect(classBytes((1 << 20) + 512) == 2 << 20)
        #expect(classBytes(32 << 20) == 32 << 20)
        #expect(classBytes((32 << 20) + 1) == nil)
    }

    @Test func releasedMemoryIsReusedAndIdleBytesStayUnderTheBound() throws {
        let pool = IOBufferPool(maxIdleBytes: 3 * 8192)
        let eightKiB = try #require(IOBufferPool.SizeClass(fitting: 8192))
        let taken = (0..<4).map { _ in pool.take(eightKiB) }
        #expect(Set(taken.map { UInt(bitPattern: $0) }).count == 4)
        for p in taken { pool.give(p, eightKiB) }
        // The fourth went back to the system: the pool keeps at most its bound.
        #expect(pool.idleBytes == 3 * 8192)
        let again = pool.take(eightKiB)
        #expect(taken[0..<3].contains(again), "a buffer of the same class is handed out again")
        #expect(pool.idleBytes == 2 * 8192)
        // Another class does not take this class's memory.
        let sixteenKiB = try #require(IOBufferPool.SizeClass(fitting: 16384))
        let other = pool.take(sixteenKiB)
        #expect(pool.idleBytes == 2 * 8192)
        // Over the bound, the buffer released last is kept and idle ones of other classes go.
        pool.give(other, sixteenKiB)
        #expect(pool.idleBytes == 8192 + 16384, "one idle 8 KiB buffer should have gone to make room")
        pool.give(again, eightKiB)
        #expect(pool.idleBytes == 2 * 8192, "the idle 16 KiB buffer should have gone to make room")
        let reused = pool.take(eightKiB)
        #expect(taken[0..<3].contains(reused) || reused == again)
        pool.give(reused, eightKiB)
    }

    @Test func stripeMemoryStaysOutOfThePool() {
        #expect(IOBufferStorage(capacity: 6 * 4096, pooled: false).sizeClass == nil)
        #expect(IOBufferStorage(capacity: 6 * 4096).sizeClass?.byteCount == 32768)
        #expect(IOBufferStorage(capacity: 33 << 20).sizeClass == nil, "beyond the largest class: plain memory")
    }
}
