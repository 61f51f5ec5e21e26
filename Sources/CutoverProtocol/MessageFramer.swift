// Accumulating framer for the startup and authentication phases: yields whole messages, never trusts a length early.

/// Splits a byte stream into complete messages. Incomplete input yields nil; a bad length throws.
///
///     typed:    | id (1) | length (4, includes itself) | body (length - 4) |
///     untyped:  | length (4, includes itself) | body |      (the startup packet only)
public struct MessageFramer: Sendable {
    public struct Frame: Equatable, Sendable {
        public var id: UInt8?
        public var body: ArraySlice<UInt8>
    }

    private var buffer: [UInt8] = []
    private var start = 0
    public var expectUntyped: Bool
    public let maxMessageSize: Int

    public init(untyped: Bool = false, maxMessageSize: Int = 1 << 20) {
        expectUntyped = untyped
        self.maxMessageSize = maxMessageSize
    }

    public var bufferedByteCount: Int { buffer.count - start }

    public mutating func append<C: Collection>(_ bytes: C) where C.Element == UInt8 {
        if start > 0 && start == buffer.count { buffer.removeAll(keepingCapacity: true); start = 0 }
        buffer.append(contentsOf: bytes)
    }

    /// Removes and returns everything not yet framed (used when switching to pass-through forwarding).
    public mutating func takeRemainder() -> [UInt8] {
        defer { buffer.removeAll(); start = 0 }
        return Array(buffer[start...])
    }

    public mutating func next() throws -> Frame? {
        let header = expectUntyped ? 4 : 5
        guard buffer.count - start >= header else { return nil }
        let lengthAt = expectUntyped ? start : start + 1
        let length = Int(Int32(bitPattern: UInt32(buffer[lengthAt]) << 24 | UInt32(buffer[lengthAt + 1]) << 16
            | UInt32(buffer[lengthAt + 2]) << 8 | UInt32(buffer[lengthAt + 3])))
        guard length >= 4 else { throw ProtocolError.invalidLength(length) }
        if expectUntyped && length < 8 { throw ProtocolError.invalidLength(length) }
        guard length <= maxMessageSize else { throw ProtocolError.messageTooLarge(length: length, limit: maxMessageSize) }
        let total = (expectUntyped ? 0 : 1) + length
        guard buffer.count - start >= total else { return nil }
        let id: UInt8? = expectUntyped ? nil : buffer[start]
        let body = buffer[(lengthAt + 4)..<(start + total)]
        start += total
        if start == buffer.count { buffer.removeAll(keepingCapacity: true); start = 0 }
        return Frame(id: id, body: body)
    }
}
