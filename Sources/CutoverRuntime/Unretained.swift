// A class reference called without a retain/release pair: the one unsafe reference the proxy layer uses.

/// Holds `Object` unretained and calls it through `_withUnsafeGuaranteedRef`, so a call costs no
/// retain/release pair (an `unowned(unsafe)` reference, or a protocol existential, is copied strong on
/// every read). Sound only under the loop's rule: whoever lets go of such an object while one of its
/// callbacks may be running hands it to `EventLoop.retire` first, so it is never freed under a caller.
@frozen public struct Unretained<Object: AnyObject> {
    @usableFromInline let reference: Unmanaged<Object>

    @inlinable public init(_ object: Object) { reference = .passUnretained(object) }

    /// Runs `body` with the object, which stays alive for the call by the rule above.
    @inlinable @inline(__always)
    public func call<Result>(_ body: (Object) throws -> Result) rethrows -> Result {
        try reference._withUnsafeGuaranteedRef(body)
    }

    /// The object as an ordinary (retained) reference, for the rare paths.
    @inlinable public var object: Object { reference.takeUnretainedValue() }
}
