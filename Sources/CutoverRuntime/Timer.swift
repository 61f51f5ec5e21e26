// Repeating or one-shot timers and signal watchers on the loop.
import CLibUV

/// A libuv timer calling a closure. Close it to release it.
public final class LoopTimer: HandleOwner {
    let handle: UnsafeMutablePointer<uv_timer_t>
    var callback: () -> Void
    private var closed = false

    public init(loop: EventLoop, _ callback: @escaping () -> Void) {
        self.callback = callback
        handle = .allocate(capacity: 1)
        uv_timer_init(loop.loop, handle)
        handle.pointee.data = Unmanaged.passRetained(self).toOpaque()
    }

    deinit { handle.deallocate() }

    /// Fires after `timeoutMs`, then every `repeatMs` if non-zero.
    public func start(timeoutMs: UInt64, repeatMs: UInt64 = 0) {
        guard !closed else { return }
        uv_timer_start(handle, { h in
            Unmanaged<LoopTimer>.fromOpaque(h!.pointee.data!).takeUnretainedValue().callback()
        }, timeoutMs, repeatMs)
    }

    public func stop() { if !closed { uv_timer_stop(handle) } }

    public func close() {
        guard !closed else { return }
        closed = true
        callback = {} // break cycles through the closure now, not at the close callback
        uv_close(uvshim_timer_handle(handle)) { h in
            Unmanaged<LoopTimer>.fromOpaque(h!.pointee.data!).takeUnretainedValue().handleClosed()
        }
    }

    func handleClosed() { Unmanaged.passUnretained(self).release() }
}

extension EventLoop {
    /// Runs `body` from the loop at its next iteration: for an outcome that must not be reported from
    /// inside the call that caused it (its caller may not have stored what the report is about yet).
    public func soon(_ body: @escaping () -> Void) {
        let timer = LoopTimer(loop: self, {})
        timer.callback = { [unowned timer] in
            timer.close() // libuv's +1 keeps it alive until the close callback
            body()
        }
        timer.start(timeoutMs: 0)
    }
}

/// Delivers a POSIX signal to a closure on the loop thread.
public final class SignalWatcher: HandleOwner {
    let handle: UnsafeMutablePointer<uv_signal_t>
    var callback: (Int32) -> Void
    private var closed = false

    public init(loop: EventLoop, signal: Int32, _ callback: @escaping (Int32) -> Void) {
        self.callback = callback
        handle = .allocate(capacity: 1)
        uv_signal_init(loop.loop, handle)
        handle.pointee.data = Unmanaged.passRetained(self).toOpaque()
        uv_signal_start(handle, { h, signum in
            Unmanaged<SignalWatcher>.fromOpaque(h!.pointee.data!).takeUnretainedValue().callback(signum)
        }, signal)
    }

    deinit { handle.deallocate() }

    public func close() {
        guard !closed else { return }
        closed = true
        callback = { _ in }
        uv_close(uvshim_signal_handle(handle)) { h in
            Unmanaged<SignalWatcher>.fromOpaque(h!.pointee.data!).takeUnretainedValue().handleClosed()
        }
    }

    func handleClosed() { Unmanaged.passUnretained(self).release() }
}
