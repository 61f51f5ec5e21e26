// Client-chosen text made safe for a log line: bounded, and unable to start a line of its own.

public enum LogText {
    /// `text` cut to `limit` characters (PostgreSQL's names are at most 63 bytes) with control characters
    /// written as `\u{…}` escapes: a name sent before authentication can neither fill the log nor forge lines.
    public static func clean(_ text: String, limit: Int = 63) -> String {
        var out = ""
        var count = 0
        for scalar in text.unicodeScalars {
            if count == limit { return out + "…" }
            if scalar.value < 0x20 || (0x7F...0x9F).contains(scalar.value) || scalar.value == 0x2028 || scalar.value == 0x2029 {
                out += "\\u{\(String(scalar.value, radix: 16))}"
            } else {
                out.unicodeScalars.append(scalar)
            }
            count += 1
        }
        return out
    }
}
