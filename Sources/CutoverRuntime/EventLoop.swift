// One libuv loop and the read buffer its connections share; the owner of every handle created on it.
import CLibUV
import Glibc

/// A libuv loop on the current thread. Not thread-safe: everything created on it is used only from its thread.
public final class EventLoop {
    @usableFromInline let loop: UnsafeMutablePointer<uv_loop_t>
    /// Reads land here and are consumed synchronously in the read callback, so one buffer serves every
    /// connection: an idle connection costs no buffer at all.
    let readBuffer: UnsafeMutableRawPointer
    let readBufferSize: Int
    /// Objects let go of inside a callback, kept until it has returned (see `retire`).
    private var retired: [AnyObject] = []
    /// Set by `shutdown`: the retire check is closed, so what is retired after is kept until deinit.
    private var isShutDown = false
    /// Set by `shutdown` when a request outlived its grace: the thread pool may still post to the loop.
    public private(set) var isAbandoned = false
    /// Releases `retired` in the check phase, right after the I/O callbacks of the iteration. Started only
    /// while something is retired, and unreferenced: it never keeps the loop running by itself.
    private let retireCheck: UnsafeMutablePointer<uv_check_t>

    public init(readBufferSize: Int = 256 << 10) {
        loop = .allocate(capacity: 1)
        uv_loop_init(loop)
        self.readBufferSize = readBufferSize
        readBuffer = .allocate(byteCount: readBufferSize, alignment: 16)
        retireCheck = .allocate(capacity: 1)
        // Handles find their EventLoop through libuv's loop (a connection then needs no field for it).
        loop.pointee.data = Unmanaged.passUnretained(self).toOpaque()
        uv_check_init(loop, retireCheck)
        retireCheck.pointee.data = Unmanaged.passUnretained(self).toOpaque()
        uv_unref(uvshim_check_handle(retireCheck))
        // A write to a reset peer must be an error code, not a process kill.
        signal(SIGPIPE, SIG_IGN)
    }

    deinit {
        readBuffer.deallocate()
        guard !isAbandoned else { return }
        retireCheck.deallocate()
        loop.deallocate()
    }

    /// Keeps `object` alive until the libuv callback running now has returned.
    ///
    /// Connections call their delegates, and backend links their sessions, through unretained references:
    /// no retain/release pair per call. So an owner that lets go of such an object while one of its
    /// callbacks may be on the stack (a session ending on a read, a follower dropped from its own answer)
    /// hands it here first; it is freed in this iteration's check phase, when no callback is running.
    public func retire(_ object: AnyObject) {
        if retired.isEmpty && !isShutDown { uv_check_start(retireCheck, onRetireCheck) }
        retired.append(object)
    }

    fileprivate func releaseRetired() {
        if !isShutDown { uv_check_stop(retireCheck) }
        var done: [AnyObject] = []
        swap(&done, &retired)
        done.removeAll() // their deinits may retire more: that starts the check again, for the next iteration
    }

    /// The shared read buffer of the EventLoop that owns `loop`, borrowed without a retain (an EventLoop
    /// outlives the handles created on it).
    @inline(__always)
    static func readBuffer(of loop: UnsafeMutablePointer<uv_loop_t>?) -> UnsafeMutableRawBufferPointer {
        // Unchecked unwraps: both are set before any handle exists (a check per read showed in callgrind).
        Unmanaged<EventLoop>.fromOpaque(loop.unsafelyUnwrapped.pointee.data.unsafelyUnwrapped)._withUnsafeGuaranteedRef {
            UnsafeMutableRawBufferPointer(start: $0.readBuffer, count: $0.readBufferSize)
        }
    }

    /// Milliseconds of the loop's cached clock (updated once per iteration): the session timers' time base.
    /// Inlinable: sessions read it on every chunk, and a cross-module call cost a retain/release pair too.
    @inlinable public var now: UInt64 { uv_now(loop) }

    /// A monotonic clock in nanoseconds, for latencies finer than the loop's millisecond clock.
    @inlinable public var nanoseconds: UInt64 { uv_hrtime() }

    /// Runs until `stop()` or until nothing is left to do.
    public func run() { uv_run(loop, UV_RUN_DEFAULT) }

    /// Runs one iteration without blocking (tests use this to pump the loop).
    public func runOnce(wait: Bool = false) { uv_run(loop, wait ? UV_RUN_ONCE : UV_RUN_NOWAIT) }

    public func stop() { uv_stop(loop) }

    /// Closes every handle still open, drains their callbacks and closes the loop. Returns uv_loop_close's result
    /// (0 means nothing leaked), or `UV_EBUSY` when a request was still running after `requestGraceMs`.
    ///
    /// Requests outlive their handles: a host name lookup already running on the thread pool cannot be
    /// cancelled, and one stuck on a name server that does not answer takes the resolver's whole timeout
    /// (10 s by default). Shutdown waits for it at most `requestGraceMs`, sleeping rather than spinning;
    /// after that the loop is abandoned: not closed, and its memory never freed (the thread pool still
    /// holds it), which costs nothing in a process about to exit.
    @discardableResult
    public func shutdown(requestGraceMs: UInt64 = 1000) -> Int32 {
        releaseRetired()
        isShutDown = true
        uv_walk(loop, { handle, _ in
            if let handle, uv_is_closing(handle) == 0 { uv_close(handle, closeAnyHandle) }
        }, nil)
        let deadline = uv_hrtime() + requestGraceMs * 1_000_000
        while uv_run(loop, UV_RUN_NOWAIT) != 0 {
            guard uv_hrtime() < deadline else {
                isAbandoned = true
                return -EBUSY
            }
            usleep(1000)
        }
        return uv_loop_close(loop)
    }

    /// Number of handles libuv still tracks as active or open, the loop's own retire check aside (a leak
    /// check for tests).
    public var liveHandles: Int {
        var count = 0
        withUnsafeMutablePointer(to: &count) { p in
            uv_walk(loop, { handle, arg in
                // The retire check is the one handle whose data is the EventLoop itself.
                if handle!.pointee.data != handle!.pointee.loop.pointee.data { arg!.assumingMemoryBound(to: Int.self).pointee += 1 }
            }, UnsafeMutableRawPointer(p))
        }
        return count
    }
}

private func onRetireCheck(_ handle: UnsafeMutablePointer<uv_check_t>?) {
    Unmanaged<EventLoop>.fromOpaque(handle!.pointee.data!).takeUnretainedValue().releaseRetired()
}

/// Close callback for handles found by `uv_walk` at shutdown: each owner's own callback already ran or never will,
/// so route to the owner if there is one.
private func closeAnyHandle(_ handle: UnsafeMutablePointer<uv_handle_t>?) {
    guard let handle, let data = handle.pointee.data else { return }
    (Unmanaged<AnyObject>.fromOpaque(data).takeUnretainedValue() as? HandleOwner)?.handleClosed()
}

/// Objects that own a libuv handle and hold libuv's +1 reference until its close callback.
protocol HandleOwner: AnyObject {
    func handleClosed()
}

/// Turns libuv error codes into readable text.
public func uvErrorName(_ code: Int32) -> String { String(cString: uv_strerror(code)) }

/// Raises the soft open-file limit to the hard limit; returns the limit now in force.
public func raiseOpenFileLimit() -> (soft: UInt64, hard: UInt64) {
    var lim = rlimit()
    guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &lim) == 0 else { return (0, 0) }
    if lim.rlim_cur < lim.rlim_max {
        var raised = lim
        raised.rlim_cur = lim.rlim_max
        if setrlimit(Int32(RLIMIT_NOFILE.rawValue), &raised) == 0 { lim = raised }
    }
    return (UInt64(lim.rlim_cur), UInt64(lim.rlim_max))
}
