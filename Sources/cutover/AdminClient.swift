// `cutover status` and `cutover phase`: talk to a running proxy's admin database through libpq.
import ArgumentParser
import CutoverCore
import Foundation

struct AdminOptions: ParsableArguments {
    @Option(name: .customLong("admin-url"),
            help: "libpq connection string of the proxy's admin database (default: $CUTOVER_ADMIN_URL).")
    var adminURL: String?

    /// Connects, or exits with status 2 (the proxy could not be reached) and says why.
    func connect() throws -> PGSession {
        do { return try PGSession(try connectionString(), reaching: "the admin console") } catch let e as PGSession.Failure {
            print("cutover: \(e)")
            throw ExitCode(2)
        }
    }

    func connectionString() throws -> String {
        if let adminURL { return adminURL }
        if let env = ProcessInfo.processInfo.environment["CUTOVER_ADMIN_URL"], !env.isEmpty { return env }
        throw ValidationError("give --admin-url or set CUTOVER_ADMIN_URL, e.g. postgresql://ops@127.0.0.1:6432/cutover")
    }
}

/// "1 table", "3 tables".
func counted(_ n: Int, _ noun: String) -> String { "\(n) \(noun)\(n == 1 ? "" : "s")" }

/// Prints rows as an aligned table.
func printTable(_ columns: [String], _ rows: [[String]]) {
    var widths = columns.map(\.count)
    for row in rows { for (i, v) in row.enumerated() { widths[i] = max(widths[i], v.count) } }
    func line(_ values: [String]) -> String {
        zip(values, widths).map { $0.padding(toLength: $1, withPad: " ", startingAt: 0) }.joined(separator: "  ")
    }
    print(line(columns))
    print(widths.map { String(repeating: "-", count: $0) }.joined(separator: "  "))
    for row in rows { print(line(row)) }
}

struct Status: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show the routes (and sessions) of a running proxy.")
    @OptionGroup var admin: AdminOptions
    @Flag(help: "Also list the sessions.") var sessions = false
    @Flag(help: "Also list per-route statistics.") var stats = false

    func run() throws {
        let client = try admin.connect()
        defer { client.close() }
        do {
            let routes = try client.run("SHOW ROUTES")
            printTable(routes.columns, routes.rows)
            if stats { print(""); let s = try client.run("SHOW STATS"); printTable(s.columns, s.rows) }
            if sessions { print(""); let s = try client.run("SHOW SESSIONS"); printTable(s.columns, s.rows) }
        } catch let e as PGSession.Failure {
            print("cutover: \(e)"); throw ExitCode(1)
        }
    }
}

struct PhaseCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "phase",
        abstract: "Flip a route to a phase on a running proxy (one step at a time unless --force).")
    @OptionGroup var admin: AdminOptions
    @Argument(help: "The route (its database name).") var route: String
    @Argument(help: "legacy, dual-legacy, dual-new or new.") var phase: String
    @Flag(help: "Allow skipping steps, or flipping the leader of an out-of-sync route.") var force = false
    @Option(help: "Set the route's mirror mode (async or sync) before flipping.") var mirror: String?

    func validate() throws {
        guard ["legacy", "dual-legacy", "dual-new", "new"].contains(phase) else {
            throw ValidationError("unknown phase \(phase): use legacy, dual-legacy, dual-new or new")
        }
        if let mirror, mirror != "async" && mirror != "sync" { throw ValidationError("mirror must be async or sync") }
    }

    func run() throws {
        let client = try admin.connect()
        defer { client.close() }
        do {
            if let mirror { _ = try client.run("SET MIRROR \(route) TO \(mirror)") }
            let r = try client.run("SET PHASE \(route) TO \(phase)\(force ? " FORCE" : "")")
            printTable(r.columns, r.rows)
        } catch let e as PGSession.Failure {
            print("cutover: \(e)"); throw ExitCode(1)
        }
    }
}
