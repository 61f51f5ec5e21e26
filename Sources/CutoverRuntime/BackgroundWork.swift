// Blocking work on libuv's thread pool (a libpq round trip to a backend), its result handed back on the loop.
import CLibUV

/// One piece of work off the loop thread. libuv holds +1 on it from `start` until its completion has run.
public final class BackgroundWork<Result: Sendable>: @unchecked Sendable {
    private let request: UnsafeMutablePointer<uv_work_t>
    private let work: @Sendable () -> Result
    private var completion: ((Result) -> Void)?
    /// Written by the pool thread, read on the loop thread after libuv's hand-over (which orders them).
    private var result: Result?

    private init(work: @escaping @Sendable () -> Result, completion: @escaping (Result) -> Void) {
        self.work = work
        self.completion = completion
        request = .allocate(capacity: 1)
    }

    deinit { request.deallocate() }

    /// Runs `work` on the thread pool; `completion` runs on the loop's thread with what it returned (at once,
    /// on the loop, if the pool refused the work: with `work` run right here instead).
    public static func start(loop: EventLoop, _ work: @escaping @Sendable () -> Result, completion: @escaping (Result) -> Void) {
        let w = BackgroundWork(work: work, completion: completion)
        w.request.pointee.data = Unmanaged.passRetained(w).toOpaque()
        if uv_queue_work(loop.loop, w.request, onWork, onWorkDone) != 0 {
            Unmanaged.passUnretained(w).release()
            w.result = work()
            w.finish()
        }
    }

    fileprivate func run() { result = work() }

    fileprivate func finish() {
        let c = completion
        completion = nil
        if let result { c?(result) }
    }
}

/// The pool thread's half: only the work itself (no Swift object is shared with the loop thread meanwhile).
private func onWork(_ request: UnsafeMutablePointer<uv_work_t>?) {
    guard let data = request?.pointee.data else { return }
    (Unmanaged<AnyObject>.fromOpaque(data).takeUnretainedValue() as? BackgroundRunnable)?.runOnPool()
}

private func onWorkDone(_ request: UnsafeMutablePointer<uv_work_t>?, _ status: Int32) {
    guard let data = request?.pointee.data else { return }
    (Unmanaged<AnyObject>.fromOpaque(data).takeRetainedValue() as? BackgroundRunnable)?.finishOnLoop()
}

/// What the two C callbacks call, whatever the result type.
protocol BackgroundRunnable: AnyObject {
    func runOnPool()
    func finishOnLoop()
}

extension BackgroundWork: BackgroundRunnable {
    func runOnPool() { run() }
    func finishOnLoop() { finish() }
}
