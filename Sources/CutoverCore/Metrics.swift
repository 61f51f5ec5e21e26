// The observability endpoint's pure parts: Prometheus text exposition and the HTTP request head it reads.

/// Builds a Prometheus text exposition (format 0.0.4): each family once with HELP and TYPE, then its samples.
public struct PrometheusText {
    public enum Kind: String { case counter, gauge, summary }

    public private(set) var text = ""

    public init() {}

    /// Declares a family; its samples follow with `sample`.
    public mutating func family(_ name: String, _ kind: Kind, _ help: String) {
        text += "# HELP \(name) \(help.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\n", with: "\\n"))\n"
        text += "# TYPE \(name) \(kind.rawValue)\n"
    }

    public mutating func sample(_ name: String, _ value: Double) { sample(name, [:], value) }
    public mutating func sample(_ name: String, _ value: Int) { sample(name, [:], Double(value)) }

    public mutating func sample(_ name: String, _ labels: KeyValuePairs<String, String>, _ value: Double) {
        text += name
        if !labels.isEmpty {
            text += "{" + labels.map { "\($0.key)=\"\(Self.escape($0.value))\"" }.joined(separator: ",") + "}"
        }
        text += " " + Self.format(value) + "\n"
    }

    public mutating func sample(_ name: String, _ labels: KeyValuePairs<String, String>, _ value: Int) {
        sample(name, labels, Double(value))
    }

    /// Label values escape backslash, double quote and newline.
    public static func escape(_ value: String) -> String {
        var out = ""
        for c in value {
            switch c {
            case "\\": out += "\\\\"
            case "\"": out += "\\\""
            case "\n": out += "\\n"
            default: out.append(c)
            }
        }
        return out
    }

    /// Integers without a fraction; NaN and infinities as Prometheus spells them.
    public static func format(_ v: Double) -> String {
        if v.isNaN { return "NaN" }
        if v.isInfinite { return v > 0 ? "+Inf" : "-Inf" }
        if v == v.rounded(), abs(v) < 1e15 { return String(Int64(v)) }
        return "\(v)"
    }
}

/// The request line of an HTTP/1.x request, read from the bytes received so far.
public struct HTTPRequestHead: Equatable, Sendable {
    public var method: String
    /// The path without its query string.
    public var path: String

    public enum Problem: Error, Equatable { case malformed, tooLarge }

    /// Nil while the head (up to the blank line) is incomplete; throws if it cannot be a request or is
    /// longer than `limit` bytes.
    public static func parse(_ bytes: [UInt8], limit: Int = 8192) throws -> HTTPRequestHead? {
        guard let end = headEnd(bytes) else {
            if bytes.count > limit { throw Problem.tooLarge }
            return nil
        }
        guard end <= limit else { throw Problem.tooLarge }
        guard let lineEnd = bytes.firstIndex(of: UInt8(ascii: "\r")) else { throw Problem.malformed }
        let parts = bytes[..<lineEnd].split(separator: UInt8(ascii: " "), omittingEmptySubsequences: false)
        guard parts.count == 3, !parts[0].isEmpty, parts[1].first == UInt8(ascii: "/"),
              parts[2].starts(with: Array("HTTP/1.".utf8)) else { throw Problem.malformed }
        let target = parts[1].prefix { $0 != UInt8(ascii: "?") }
        return HTTPRequestHead(method: String(decoding: parts[0], as: UTF8.self), path: String(decoding: target, as: UTF8.self))
    }

    /// Offset just past the blank line that ends the head.
    private static func headEnd(_ b: [UInt8]) -> Int? {
        guard b.count >= 4 else { return nil }
        for i in 3..<b.count where b[i] == 10 && b[i - 1] == 13 && b[i - 2] == 10 && b[i - 3] == 13 { return i + 1 }
        return nil
    }

    /// A whole response with `Connection: close` (the endpoint answers one request per connection).
    public static func response(status: Int, reason: String, contentType: String = "text/plain; charset=utf-8",
                                body: String, includeBody: Bool = true) -> [UInt8] {
        let payload = Array(body.utf8)
        let head = "HTTP/1.1 \(status) \(reason)\r\nContent-Type: \(contentType)\r\nContent-Length: \(payload.count)\r\n"
            + "Cache-Control: no-store\r\nConnection: close\r\n\r\n"
        return Array(head.utf8) + (includeBody ? payload : [])
    }
}
