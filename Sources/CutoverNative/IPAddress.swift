// Telling an IP address from a host name, as the C library parses them.
import Glibc

public enum IPAddress {
    /// Whether `text` is an IPv4 or IPv6 address (anything else is a name to resolve or to check a
    /// certificate against).
    public static func isLiteral(_ text: String) -> Bool {
        var v4 = in_addr(), v6 = in6_addr()
        return inet_pton(AF_INET, text, &v4) == 1 || inet_pton(AF_INET6, text, &v6) == 1
    }
}
