// A libpq connection that runs one statement over and over for `cutover bench`, discarding the rows.
import CLibPQ
import Glibc

/// How a benchmark statement travels, as pgbench's `-M`: Query, or Parse/Bind/Execute each time, or Bind/Execute
/// of a statement prepared once per connection.
public enum BenchProtocol: String, CaseIterable, Sendable {
    case simple, extended, prepared
}

/// One client connection of a benchmark (never on a loop thread: every call blocks).
///
/// Kept apart from `PGSession` because its one job is to cost the client as little as possible per query: no
/// rows are copied into Swift values.
public final class BenchConnection {
    public typealias Failure = PGSession.Failure

    private let conn: OpaquePointer
    private let mode: BenchProtocol
    private static let statementName = "cutover_bench"

    /// Connects with a libpq connection string (or URI) and, in `prepared` mode, prepares `sql` (with
    /// `parameters` text parameters). `reaching` names the target in the error.
    public init(_ conninfo: String, reaching: String, sql: String, parameters: Int, mode: BenchProtocol) throws {
        conn = try PGSession.open(conninfo, reaching: reaching)
        self.mode = mode
        if mode == .prepared {
            let res = PQprepare(conn, Self.statementName, sql, Int32(parameters), nil)
            if let failure = Self.failure(res, conn) {
                close()
                throw Failure(description: "\(reaching): cannot prepare the statement: \(failure)")
            }
        }
    }

    public func close() { PQfinish(conn) }

    /// False once the server or the network ended the connection (libpq does not reconnect by itself).
    public var isAlive: Bool { PQstatus(conn) == CONNECTION_OK }

    /// Runs the statement once and returns nil, or the error the server (or libpq) reported. `sql` is the text
    /// to send (in `simple` mode with the parameter already in it; ignored in `prepared` mode), `parameter` the
    /// value of `$1` in the other modes.
    public func execute(_ sql: String, parameter: String?) -> String? {
        let res: OpaquePointer?
        if mode == .simple {
            res = PQexec(conn, sql)
        } else if let parameter {
            res = parameter.withCString { value in
                var values: UnsafePointer<CChar>? = value  // an array of one, without allocating one
                return mode == .extended ? PQexecParams(conn, sql, 1, nil, &values, nil, nil, 0)
                                         : PQexecPrepared(conn, Self.statementName, 1, &values, nil, nil, 0)
            }
        } else {
            res = mode == .extended ? PQexecParams(conn, sql, 0, nil, nil, nil, nil, 0)
                                    : PQexecPrepared(conn, Self.statementName, 0, nil, nil, nil, 0)
        }
        return Self.failure(res, conn)
    }

    /// The error of a result (and frees it), or nil when it succeeded.
    private static func failure(_ res: OpaquePointer?, _ conn: OpaquePointer) -> String? {
        guard let res else { return String(cString: PQerrorMessage(conn)).trimmingCharacters(in: .whitespacesAndNewlines) }
        defer { PQclear(res) }
        switch PQresultStatus(res) {
        case PGRES_TUPLES_OK, PGRES_COMMAND_OK, PGRES_EMPTY_QUERY: return nil
        default:
            let message = PGSession.message(of: res)
            return message.isEmpty ? String(cString: PQresStatus(PQresultStatus(res))) : message
        }
    }
}
