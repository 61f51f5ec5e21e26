// Host name resolution on libuv's thread pool (the loop never waits for DNS; at start the proxy turns its
// loop until the first answers are in).
import CLibUV
import Glibc

/// One asynchronous lookup of a host name (`getaddrinfo` on libuv's thread pool). libuv holds +1 on it from
/// `start` until its completion has run.
public final class HostLookup {
    public typealias Completion = (_ addresses: [String], _ failure: String?) -> Void

    private let request: UnsafeMutablePointer<uv_getaddrinfo_t>
    private var completion: Completion?
    public let host: String

    private init(host: String, completion: @escaping Completion) {
        self.host = host
        self.completion = completion
        request = .allocate(capacity: 1)
    }

    deinit { request.deallocate() }

    /// Starts resolving `host`. `completion` runs once on the loop's thread with the numeric addresses in
    /// the resolver's order of preference (empty, with the reason, if it failed or was cancelled).
    @discardableResult
    public static func start(loop: EventLoop, host: String, completion: @escaping Completion) -> HostLookup {
        let lookup = HostLookup(host: host, completion: completion)
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        lookup.request.pointee.data = Unmanaged.passRetained(lookup).toOpaque()
        let rc = uv_getaddrinfo(loop.loop, lookup.request, onResolved, host, nil, &hints)
        if rc != 0 {
            // Not queued (no callback will come): finish now, as a failed lookup.
            Unmanaged.passUnretained(lookup).release()
            lookup.finish([], uvErrorName(rc))
        }
        return lookup
    }

    /// Cancels the lookup if the thread pool has not started it; its completion then reports "cancelled".
    public func cancel() {
        guard completion != nil else { return }
        _ = uv_cancel(uvshim_getaddrinfo_req(request))
    }

    fileprivate func finish(_ addresses: [String], _ failure: String?) {
        let c = completion
        completion = nil
        c?(addresses, failure)
    }

    /// The distinct numeric addresses of a getaddrinfo result, in its order.
    fileprivate static func numericAddresses(_ list: UnsafeMutablePointer<addrinfo>?) -> [String] {
        var out: [String] = []
        var buffer = [CChar](repeating: 0, count: Int(NI_MAXHOST))
        var node = list
        while let n = node {
            if getnameinfo(n.pointee.ai_addr, n.pointee.ai_addrlen, &buffer, socklen_t(buffer.count), nil, 0, NI_NUMERICHOST) == 0 {
                let text = String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
                if !out.contains(text) { out.append(text) }
            }
            node = n.pointee.ai_next
        }
        return out
    }
}

private func onResolved(_ request: UnsafeMutablePointer<uv_getaddrinfo_t>?, _ status: Int32, _ result: UnsafeMutablePointer<addrinfo>?) {
    let lookup = Unmanaged<HostLookup>.fromOpaque(request!.pointee.data!).takeRetainedValue()
    let addresses = status == 0 ? HostLookup.numericAddresses(result) : []
    if let result { uv_freeaddrinfo(result) }
    let failure = status == uvshim_ecanceled() ? "cancelled" : status != 0 ? uvErrorName(status) : addresses.isEmpty ? "no addresses" : nil
    lookup.finish(addresses, failure)
}
