// Test support: a small blocking libpq client, for driving the proxy the way real drivers do.
import CLibPQ
import Foundation

struct PQError: Error, CustomStringConvertible {
    var message: String
    var sqlState: String?
    var description: String { "\(sqlState ?? "-----"): \(message)" }
}

/// One libpq connection. Blocking; tests only.
final class PQConnection {
    let conn: OpaquePointer

    init(_ conninfo: String) throws {
        guard let c = PQconnectdb(conninfo) else { throw PQError(message: "PQconnectdb returned nil") }
        conn = c // deinit finishes it, also when init throws below
        guard PQstatus(c) == CONNECTION_OK else {
            let message = String(cString: PQerrorMessage(c))
            throw PQError(message: message, sqlState: Self.sqlState(in: message))
        }
    }

    deinit { PQfinish(conn) }

    /// libpq reports login failures only as text; tests match the SQLSTATE-bearing part of the message.
    static func sqlState(in message: String) -> String? { nil }

    /// Runs `sql` (simple protocol) and returns the rows of the last result as text.
    @discardableResult
    func query(_ sql: String) throws -> [[String?]] {
        let res = PQexec(conn, sql)
        defer { PQclear(res) }
        return try rows(res)
    }

    /// Runs `sql` with parameters through the extended protocol.
    @discardableResult
    func query(_ sql: String, _ params: [String?]) throws -> [[String?]] {
        let cstrs: [UnsafeMutablePointer<CChar>?] = params.map { $0.map { strdup($0)! } }
        defer { cstrs.forEach { free($0) } }
        let res = cstrs.map { UnsafePointer($0) }.withUnsafeBufferPointer {
            PQexecParams(conn, sql, Int32(params.count), nil, $0.baseAddress, nil, nil, 0)
        }
        defer { PQclear(res) }
        return try rows(res)
    }

    /// Prepares a named statement (Parse, then Sync), as drivers do for a statement they run again and again.
    func prepare(_ name: String, _ sql: String) throws {
        let res = PQprepare(conn, name, sql, 0, nil)
        defer { PQclear(res) }
        _ = try rows(res)
    }

    /// Runs a statement `prepare`d before (Bind, Execute, Sync).
    func execPrepared(_ name: String, _ params: [String?]) throws -> [[String?]] {
        let cstrs: [UnsafeMutablePointer<CChar>?] = params.map { $0.map { strdup($0)! } }
        defer { cstrs.forEach { free($0) } }
        let res = cstrs.map { UnsafePointer($0) }.withUnsafeBufferPointer {
            PQexecPrepared(conn, name, Int32(params.count), $0.baseAddress, nil, nil, 0)
        }
        defer { PQclear(res) }
        return try rows(res)
    }

    /// A driver's batch (pgjdbc's executeBatch, asyncpg's executemany): in pipeline mode, a Parse of `sql`
    /// as `name` (the unnamed statement when empty), then a Bind/Describe/Execute per parameter set, and one
    /// Sync. Returns each execution's rows; throws the first error (the rest of the batch is then skipped,
    /// as PostgreSQL does).
    @discardableResult
    func batch(_ sql: String, name: String = "", _ paramSets: [[String?]]) throws -> [[[String?]]] {
        guard PQenterPipelineMode(conn) == 1 else { throw PQError(message: String(cString: PQerrorMessage(conn))) }
        defer { PQexitPipelineMode(conn) }
        let width = paramSets.first?.count ?? 0
        guard PQsendPrepare(conn, name, sql, Int32(width), nil) == 1 else { throw PQError(message: String(cString: PQerrorMessage(conn))) }
        for params in paramSets {
            let cstrs: [UnsafeMutablePointer<CChar>?] = params.map { $0.map { strdup($0)! } }
            defer { cstrs.forEach { free($0) } }
            let sent = cstrs.map { UnsafePointer($0) }.withUnsafeBufferPointer {
                PQsendQueryPrepared(conn, name, Int32(params.count), $0.baseAddress, nil, nil, 0)
            }
            guard sent == 1 else { throw PQError(message: String(cString: PQerrorMessage(conn))) }
        }
        guard PQpipelineSync(conn) == 1 else { throw PQError(message: String(cString: PQerrorMessage(conn))) }
        var results: [[[String?]]] = []
        var failure: PQError?
        // Prepare's result, then one per execution (each followed by a NULL), then the Sync's.
        while true {
            guard let res = PQgetResult(conn) else { continue }
            defer { PQclear(res) }
            let status = PQresultStatus(res)
            if status == PGRES_PIPELINE_SYNC { break }
            if status == PGRES_PIPELINE_ABORTED { continue }
            do { results.append(try rows(res)) } catch let e as PQError { if failure == nil { failure = e } }
        }
        if let failure { throw failure }
        return Array(results.dropFirst()) // the Prepare's
    }

    private func rows(_ res: OpaquePointer?) throws -> [[String?]] {
        guard let res else { throw PQError(message: String(cString: PQerrorMessage(conn))) }
        switch PQresultStatus(res) {
        case PGRES_TUPLES_OK, PGRES_COMMAND_OK, PGRES_EMPTY_QUERY: break
        default:
            let state = PQresultErrorField(res, Int32(UInt8(ascii: "C"))).map { String(cString: $0) }
            throw PQError(message: String(cString: PQresultErrorMessage(res)), sqlState: state)
        }
        var out: [[String?]] = []
        for r in 0..<PQntuples(res) {
            out.append((0..<PQnfields(res)).map { c in PQgetisnull(res, r, c) == 1 ? nil : String(cString: PQgetvalue(res, r, c)) })
        }
        return out
    }

    func scalar(_ sql: String) throws -> String? { try query(sql).first?.first ?? nil }

    var backendPID: Int32 { PQbackendPID(conn) }
    func parameterStatus(_ name: String) -> String? { PQparameterStatus(conn, name).map { String(cString: $0) } }
    var isOK: Bool { PQstatus(conn) == CONNECTION_OK }

    /// Waits up to `timeout` for a NOTIFY; returns (channel, payload, sender pid).
    func waitForNotification(timeout: TimeInterval) -> (String, String, Int32)? {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            PQconsumeInput(conn)
            if let n = PQnotifies(conn) {
                defer { PQfreemem(n) }
                return (String(cString: n.pointee.relname), String(cString: n.pointee.extra), n.pointee.be_pid)
            }
            usleep(10_000)
        }
        return nil
    }

    /// Sends `sql` without waiting, cancels it after `delay`, and returns (error SQLSTATE, seconds from cancel to result).
    /// `extended`: sent with the extended protocol (the unnamed statement, no parameters) instead of a simple Query.
    func cancelAfter(_ delay: TimeInterval, running sql: String, extended: Bool = false) -> (String?, TimeInterval) {
        if extended { PQsendQueryParams(conn, sql, 0, nil, nil, nil, nil, 0) } else { start(sql) }
        Thread.sleep(forTimeInterval: delay)
        let cancel = PQgetCancel(conn)
        var err = [CChar](repeating: 0, count: 256)
        let sentAt = Date()
        PQcancel(cancel, &err, 256)
        PQfreeCancel(cancel)
        return (awaitResults(), Date().timeIntervalSince(sentAt))
    }

    /// Sends `sql` without waiting for its answer (collect it with `awaitResults`).
    func start(_ sql: String) { PQsendQuery(conn, sql) }

    /// Waits for every result of the query `start` sent; the SQLSTATE of the error, if one ended it.
    func awaitResults() -> String? {
        var state: String?
        while let res = PQgetResult(conn) {
            if let s = PQresultErrorField(res, Int32(UInt8(ascii: "C"))) { state = String(cString: s) }
            PQclear(res)
        }
        return state
    }
}

extension PQConnection {
    /// Sends a query and closes the connection without waiting for the answer (a client that goes away).
    func sendAndVanish(_ sql: String) {
        PQsendQuery(conn, sql)
        PQflush(conn)
    }

    /// COPY ... FROM STDIN through the extended protocol (PQexecParams), as drivers do.
    func copyInExtended(_ sql: String, rows: [String]) throws -> String {
        guard let res = PQexecParams(conn, sql, 0, nil, nil, nil, nil, 0) else { throw PQError(message: "no result") }
        guard PQresultStatus(res) == PGRES_COPY_IN else {
            defer { PQclear(res) }
            throw PQError(message: String(cString: PQresultErrorMessage(res)))
        }
        PQclear(res)
        for row in rows { _ = PQputCopyData(conn, row + "\n", Int32((row + "\n").utf8.count)) }
        PQputCopyEnd(conn, nil)
        var tag = ""
        while let r = PQgetResult(conn) {
            if PQresultStatus(r) != PGRES_COMMAND_OK { let m = String(cString: PQresultErrorMessage(r)); PQclear(r); throw PQError(message: m) }
            tag = String(cString: PQcmdStatus(r))
            PQclear(r)
        }
        return tag
    }
}
