// A blocking libpq session for the command-line tools (admin console, `verify`, `backfill`): libpq behind safe Swift.
import CLibPQ
import Glibc

/// One libpq connection (command-line tools only, never on a loop thread).
public struct PGSession {
    public struct Failure: Error, CustomStringConvertible {
        public var description: String
    }

    private let conn: OpaquePointer

    /// `reaching` names the other end in the error ("the admin console", "backend legacy").
    public init(_ conninfo: String, reaching: String) throws {
        conn = try Self.open(conninfo, reaching: reaching)
    }

    /// A libpq connection to `conninfo`, or the error that names `reaching` (`BenchConnection` opens its own
    /// connections this way too).
    static func open(_ conninfo: String, reaching: String) throws -> OpaquePointer {
        guard let c = PQconnectdb(conninfo) else { throw Failure(description: "out of memory") }
        return try checked(c, reaching: reaching)
    }

    /// Connects with libpq keywords and values (no quoting of passwords or paths needed).
    public init(parameters: [(String, String)], reaching: String) throws {
        let keywords = parameters.map { strdup($0.0) }, values = parameters.map { strdup($0.1) }
        defer { (keywords + values).forEach { free($0) } }
        let k = keywords.map { UnsafePointer($0) } + [nil], v = values.map { UnsafePointer($0) } + [nil]
        guard let c = PQconnectdbParams(k, v, 0) else { throw Failure(description: "out of memory") }
        conn = try Self.checked(c, reaching: reaching)
    }

    private static func checked(_ c: OpaquePointer, reaching: String) throws -> OpaquePointer {
        guard PQstatus(c) == CONNECTION_OK else {
            let message = String(cString: PQerrorMessage(c)).trimmingCharacters(in: .whitespacesAndNewlines)
            PQfinish(c)
            throw Failure(description: "cannot reach \(reaching): \(message)")
        }
        return c
    }

    /// A failed result's message as a user reads it: trimmed, without libpq's `ERROR:  ` prefix.
    static func message(of res: OpaquePointer) -> String {
        var message = String(cString: PQresultErrorMessage(res)).trimmingCharacters(in: .whitespacesAndNewlines)
        if message.hasPrefix("ERROR:  ") { message.removeFirst(8) }
        return message
    }

    public func close() { PQfinish(conn) }

    /// Runs one statement; returns column names and rows (NULL as ""). Without parameters it uses the simple
    /// protocol (the admin console speaks only that); with them, PQexecParams.
    @discardableResult
    public func run(_ sql: String, _ parameters: [String] = []) throws -> (columns: [String], rows: [[String]]) {
        let result: OpaquePointer?
        if parameters.isEmpty {
            result = PQexec(conn, sql)
        } else {
            let copies = parameters.map { strdup($0) }
            defer { copies.forEach { free($0) } }
            result = PQexecParams(conn, sql, Int32(copies.count), nil, copies.map { UnsafePointer($0) }, nil, nil, 0)
        }
        guard let res = result else { throw Failure(description: String(cString: PQerrorMessage(conn))) }
        defer { PQclear(res) }
        let status = PQresultStatus(res)
        guard status == PGRES_TUPLES_OK || status == PGRES_COMMAND_OK else {
            throw Failure(description: Self.message(of: res))
        }
        let columns = (0..<PQnfields(res)).map { String(cString: PQfname(res, $0)) }
        let rows = (0..<PQntuples(res)).map { r in
            (0..<PQnfields(res)).map { c in PQgetisnull(res, r, c) == 1 ? "" : String(cString: PQgetvalue(res, r, c)) }
        }
        return (columns, rows)
    }

    /// Streams `copyOut` (a `COPY ... TO STDOUT`) on `source` into `copyIn` (a `COPY ... FROM STDIN`) here,
    /// chunk by chunk, without holding the table in memory. Returns the rows copied.
    public func copy(from source: PGSession, _ copyOut: String, into copyIn: String) throws -> Int64 {
        try source.startCopy(copyOut, PGRES_COPY_OUT)
        do { try startCopy(copyIn, PGRES_COPY_IN) } catch { source.cancelAndDrain(); throw error }
        var chunk: UnsafeMutablePointer<CChar>?
        while true {
            let n = PQgetCopyData(source.conn, &chunk, 0)
            if n == -1 { break }
            guard n > 0, let data = chunk else {
                _ = PQputCopyEnd(conn, "the source of the copy failed")
                _ = try? finishCommand()
                throw Failure(description: "reading the copy: " + String(cString: PQerrorMessage(source.conn)))
            }
            let sent = PQputCopyData(conn, data, n)
            PQfreemem(data)
            guard sent == 1 else {
                source.cancelAndDrain()
                throw Failure(description: "writing the copy: " + String(cString: PQerrorMessage(conn)))
            }
        }
        _ = try source.finishCommand()
        guard PQputCopyEnd(conn, nil) == 1 else { throw Failure(description: String(cString: PQerrorMessage(conn))) }
        return try finishCommand()
    }

    private func startCopy(_ sql: String, _ expected: ExecStatusType) throws {
        guard let res = PQexec(conn, sql) else { throw Failure(description: String(cString: PQerrorMessage(conn))) }
        defer { PQclear(res) }
        guard PQresultStatus(res) == expected else {
            throw Failure(description: String(cString: PQresultErrorMessage(res)).trimmingCharacters(in: .whitespacesAndNewlines))
        }
    }

    /// Reads the results of the command in progress; returns its row count (`COPY n`) or throws its error.
    private func finishCommand() throws -> Int64 {
        var rows: Int64 = 0
        var failure: String?
        while let res = PQgetResult(conn) {
            if PQresultStatus(res) == PGRES_COMMAND_OK { rows = Int64(String(cString: PQcmdTuples(res))) ?? 0 }
            else if failure == nil { failure = String(cString: PQresultErrorMessage(res)).trimmingCharacters(in: .whitespacesAndNewlines) }
            PQclear(res)
        }
        if let failure { throw Failure(description: failure) }
        return rows
    }

    /// Abandons a COPY OUT in progress (the connection's transaction is then rolled back by the caller).
    private func cancelAndDrain() {
        if let cancel = PQgetCancel(conn) {
            var buffer = [CChar](repeating: 0, count: 256)
            _ = PQcancel(cancel, &buffer, 256)
            PQfreeCancel(cancel)
        }
        var chunk: UnsafeMutablePointer<CChar>?
        while PQgetCopyData(conn, &chunk, 0) > 0 { PQfreemem(chunk) }
        _ = try? finishCommand()
    }
}
