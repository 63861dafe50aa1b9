#if canImport(Glibc)
import Glibc
#endif

/// A plain operating-system thread (for the engine's I/O pool: blocking system calls must not
/// run on the event loop or Swift's cooperative pool).
public final class OSThread: @unchecked Sendable {
    private var thread = pthread_t()
    private var joined = false

    /// Starts `body` on a new thread.
    public init(_ body: @escaping @Sendable () -> Void) {
        final class Box { let body: @Sendable () -> Void; init(_ b: @escaping @Sendable () -> Void) { body = b } }
        let box = Unmanaged.passRetained(Box(body))
        let rc = pthread_create(&thread, nil, { raw in
            let box = Unmanaged<Box>.fromOpaque(raw!).takeRetainedValue()
            box.body()
            return nil
        }, box.toOpaque())
        precondition(rc == 0, "cannot start a thread: \(String(cString: strerror(rc)))")
    }

    /// Starts `body` on a detached thread (one nobody joins: it cleans up after itself).
    public static func start(_ body: @escaping @Sendable () -> Void) {
        let thread = OSThread(body)
        thread.joined = true
        pthread_detach(thread.thread)
    }

    /// Waits for the thread to end (once; the owner calls it from one place).
    public func join() {
        precondition(!joined, "thread joined twice")
        joined = true
        pthread_join(thread, nil)
    }
}
