// Every log line's message and metadata made safe to print: a client-chosen value (an application_name with a
// newline, a statement) cannot start a line of its own or forge one, whatever handler prints it.
import CutoverCore
import Logging

public struct EscapingLogHandler<Inner: LogHandler>: LogHandler {
    private var inner: Inner

    public init(_ inner: Inner) { self.inner = inner }

    /// A value is cut at this many characters (a statement text can be megabytes).
    static var limit: Int { 4096 }

    public func log(event: LogEvent) {
        var e = event
        e.message = "\(LogText.clean(event.message.description, limit: Self.limit))"
        e.metadata = event.metadata.map(Self.clean)
        inner.log(event: e)
    }

    static func clean(_ metadata: Logger.Metadata) -> Logger.Metadata { metadata.mapValues(clean) }

    static func clean(_ value: Logger.MetadataValue) -> Logger.MetadataValue {
        switch value {
        case .string(let s): return .string(LogText.clean(s, limit: limit))
        case .stringConvertible(let c): return .string(LogText.clean(c.description, limit: limit))
        case .array(let values): return .array(values.map(clean))
        case .dictionary(let values): return .dictionary(clean(values))
        }
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { inner[metadataKey: key] }
        set { inner[metadataKey: key] = newValue.map(Self.clean) }
    }

    public var metadata: Logger.Metadata {
        get { inner.metadata }
        set { inner.metadata = Self.clean(newValue) }
    }

    public var logLevel: Logger.Level {
        get { inner.logLevel }
        set { inner.logLevel = newValue }
    }

    public var metadataProvider: Logger.MetadataProvider? {
        get { inner.metadataProvider }
        set { inner.metadataProvider = newValue }
    }
}
