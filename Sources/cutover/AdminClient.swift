// `cutover status`, `phase`, `pause`, `resume` and `divergences`: talk to a running proxy's admin database through libpq.
import ArgumentParser
import CutoverCore
import Foundation

struct AdminOptions: ParsableArguments {
    @Option(name: .customLong("admin-url"),
            help: "libpq connection string of the proxy's admin database (default: $CUTOVER_ADMIN_URL).")
    var adminURL: String?

    /// Connects, or exits with status 2 (the proxy could not be reached) and says why.
    func connect() throws -> PGSession {
        do { return try open() } catch let e as PGSession.Failure {
            print("cutover: \(e)")
            throw ExitCode(2)
        }
    }

    /// Runs `body` on a connection to the admin console: exits 2 when the proxy cannot be reached, 1 when it
    /// refuses a command (its message printed).
    func session(_ body: (PGSession) throws -> Void) throws {
        let client = try connect()
        defer { client.close() }
        do { try body(client) } catch let e as PGSession.Failure {
            print("cutover: \(e)")
            throw ExitCode(1)
        }
    }

    /// Sends each command in turn and prints its result, a blank line between results.
    func printResults(of commands: [String]) throws {
        try session { client in
            for (i, command) in commands.enumerated() {
                if i > 0 { print("") }
                let r = try client.run(command)
                printTable(r.columns, r.rows)
            }
        }
    }

    /// The route's phase and its `paused` column as the proxy's SHOW ROUTES has them; nil when the proxy has no
    /// such route. Throws when the console cannot be asked (no URL, unreachable, refused).
    func routeState(_ route: String) throws -> (phase: String, paused: String, pauseID: String, settled: Bool)? {
        let client = try open()
        defer { client.close() }
        let routes = try client.run("SHOW ROUTES")
        guard let name = routes.columns.firstIndex(of: "route"), let phase = routes.columns.firstIndex(of: "phase"),
              let paused = routes.columns.firstIndex(of: "paused") else {
            throw ValidationError("SHOW ROUTES has no route, phase or paused column (columns: \(routes.columns.joined(separator: ", ")))")
        }
        let id = routes.columns.firstIndex(of: "pause_id"), settled = routes.columns.firstIndex(of: "pause_settled")
        guard let row = routes.rows.first(where: { $0[name] == route }) else { return nil }
        return (row[phase], row[paused], id.map { row[$0] } ?? "", settled.map { row[$0] == "yes" } ?? false)
    }

    func open() throws -> PGSession { try PGSession(try connectionString(), reaching: "the admin console") }

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
        try admin.printResults(of: ["SHOW ROUTES"] + (stats ? ["SHOW STATS"] : []) + (sessions ? ["SHOW SESSIONS"] : []))
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
        guard Phase(rawValue: phase) != nil else {
            throw ValidationError("unknown phase \(phase): use legacy, dual-legacy, dual-new or new")
        }
        if let mirror, mirror != "async" && mirror != "sync" { throw ValidationError("mirror must be async or sync") }
    }

    func run() throws {
        try admin.printResults(of: (mirror.map { ["SET MIRROR \(route) TO \($0)"] } ?? []) + ["SET PHASE \(route) TO \(phase)\(force ? " FORCE" : "")"])
    }
}

struct Pause: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Hold new transactions on a route of a running proxy; waits for the in-flight ones (still_busy counts those left).")
    @OptionGroup var admin: AdminOptions
    @Argument(help: "The route (its database name).") var route: String
    @Option(help: "Seconds to wait for in-flight transactions (default: the proxy's flip_timeout; at most 86400).") var timeout: Double?

    func validate() throws {
        if let timeout, !(timeout > 0 && timeout <= 86_400) { throw ValidationError("--timeout must be a number of seconds from 0 to 86400") }
    }

    func run() throws { try admin.printResults(of: ["PAUSE \(route)" + (timeout.map { " \($0)" } ?? "")]) }
}

struct Resume: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Let a paused route's transactions go on a running proxy.")
    @OptionGroup var admin: AdminOptions
    @Argument(help: "The route (its database name).") var route: String

    func run() throws { try admin.printResults(of: ["RESUME \(route)"]) }
}

struct Divergences: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List a running proxy's latest divergences (of one route, or all).")
    @OptionGroup var admin: AdminOptions
    @Argument(help: "The route (its database name); all routes when left out.") var route: String?

    func run() throws { try admin.printResults(of: ["SHOW DIVERGENCES" + (route.map { " \($0)" } ?? "")]) }
}
