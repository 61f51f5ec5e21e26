// The cryptographic primitives authentication needs, from OpenSSL's libcrypto (one crypto library for the project).
// Lives with the other C wrappers; CutoverCore re-exports it.
import COpenSSL
import Foundation

/// Thin, safe wrappers over libcrypto. Every function works on byte arrays and cannot fail for valid input.
public enum Crypto {
    public static func sha256(_ data: [UInt8]) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: 32)
        data.withUnsafeBufferPointer { d in _ = SHA256(d.baseAddress, d.count, &out) }
        return out
    }

    public static func hmacSHA256(key: [UInt8], _ data: [UInt8]) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: 32)
        var len: UInt32 = 32
        key.withUnsafeBufferPointer { k in
            data.withUnsafeBufferPointer { d in
                _ = HMAC(EVP_sha256(), k.baseAddress, Int32(k.count), d.baseAddress, d.count, &out, &len)
            }
        }
        return out
    }

    public static func pbkdf2SHA256(password: [UInt8], salt: [UInt8], iterations: Int) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: 32)
        password.withUnsafeBufferPointer { p in
            salt.withUnsafeBufferPointer { s in
                p.withMemoryRebound(to: CChar.self) { pc in
                    _ = PKCS5_PBKDF2_HMAC(pc.baseAddress, Int32(pc.count), s.baseAddress, Int32(s.count),
                                          Int32(iterations), EVP_sha256(), 32, &out)
                }
            }
        }
        return out
    }

    /// Lower-case hex MD5, as PostgreSQL's md5 authentication uses it.
    public static func md5Hex(_ data: [UInt8]) -> String {
        var out = [UInt8](repeating: 0, count: 16)
        var len: UInt32 = 16
        data.withUnsafeBufferPointer { d in _ = EVP_Digest(d.baseAddress, d.count, &out, &len, EVP_md5(), nil) }
        return out.map { String(format: "%02x", $0) }.joined()
    }

    public static func randomBytes(_ count: Int) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        if RAND_bytes(&out, Int32(count)) != 1 {
            var g = SystemRandomNumberGenerator()
            for i in 0..<count { out[i] = UInt8.random(in: 0...255, using: &g) }
        }
        return out
    }

    public static func base64(_ bytes: [UInt8]) -> String { Data(bytes).base64EncodedString() }

    public static func fromBase64(_ s: some StringProtocol) -> [UInt8]? { Data(base64Encoded: String(s)).map { Array($0) } }

    /// Constant-time comparison, so a proof check does not leak how many bytes matched.
    public static func equal(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        guard a.count == b.count else { return false }
        var diff: UInt8 = 0
        for i in 0..<a.count { diff |= a[i] ^ b[i] }
        return diff == 0
    }
}
