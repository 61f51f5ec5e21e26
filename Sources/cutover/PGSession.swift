// A blocking libpq session for the command-line tools: the admin console, and backends for `verify`.
import CLibPQ
import Glibc

/// One libpq connection (command-line tools only, never on a loop thread).
struct PGSession {
    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    let conn: OpaquePointer

    /// `reaching` names the other end in the error ("the admin console", "backend legacy").
    init(_ conninfo: String, reaching: String) throws {
        guard let c = PQconnectdb(conninfo) else { throw Failure(description: "out of memory") }
        try self.init(c, reaching: reaching)
    }

    /// Connects with libpq keywords and values (no quoting of passwords or paths needed).
    init(parameters: [(String, String)], reaching: String) throws {
        let keywords = parameters.map { strdup($0.0) }, values = parameters.map { strdup($0.1) }
        defer { (keywords + values).forEach { free($0) } }
        let k = keywords.map { UnsafePointer($0) } + [nil], v = values.map { UnsafePointer($0) } + [nil]
        guard let c = PQconnectdbParams(k, v, 0) else { throw Failure(description: "out of memory") }
        try self.init(c, reaching: reaching)
    }

    private init(_ c: OpaquePointer, reaching: String) throws {
        guard PQstatus(c) == CONNECTION_OK else {
            let message = String(cString: PQerrorMessage(c)).trimmingCharacters(in: .whitespacesAndNewlines)
            PQfinish(c)
            throw Failure(description: "cannot reach \(reaching): \(message)")
        }
        conn = c
    }

    func close() { PQfinish(conn) }

    /// Runs one statement; returns column names and rows (NULL as ""). Without parameters it uses the simple
    /// protocol (the admin console speaks only that); with them, PQexecParams.
    func run(_ sql: String, _ parameters: [String] = []) throws -> (columns: [String], rows: [[String]]) {
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
            var message = String(cString: PQresultErrorMessage(res)).trimmingCharacters(in: .whitespacesAndNewlines)
            if message.hasPrefix("ERROR:  ") { message.removeFirst(8) }
            throw Failure(description: message)
        }
        let columns = (0..<PQnfields(res)).map { String(cString: PQfname(res, $0)) }
        let rows = (0..<PQntuples(res)).map { r in
            (0..<PQnfields(res)).map { c in PQgetisnull(res, r, c) == 1 ? "" : String(cString: PQgetvalue(res, r, c)) }
        }
        return (columns, rows)
    }
}
