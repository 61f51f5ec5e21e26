// The `cutover` command: serve the proxy, check a config file; the other subcommands live in their own files.
import ArgumentParser
import CutoverCore
import CutoverProxy
import CutoverRuntime
import Foundation
import Logging

@main
struct Cutover: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cutover",
        abstract: "A PostgreSQL proxy that moves each service's schema to its own instance with no downtime.",
        version: CutoverVersion.string,
        subcommands: [Serve.self, CheckConfig.self, Status.self, PhaseCommand.self, Pause.self, Resume.self, Divergences.self,
                      Verify.self, Backfill.self, Bench.self])
}

/// The config file, given the same way to every subcommand that reads it (an option, so that a route name
/// after it is never taken for the file).
struct ConfigOption: ParsableArguments {
    @Option(help: "The TOML config file.")
    var config: String = "config/cutover.toml"
}

struct CheckConfig: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "check-config", abstract: "Validate a config file and print every problem with its key.",
        discussion: "Also checks what serve checks at start (the state file's directory takes a new file) and refuses a route whose legacy and new are one database. Exit status: 0 OK, 1 problems.")
    @OptionGroup var options: ConfigOption

    func run() throws {
        do {
            let c = try ConfigLoader.check(path: options.config)
            print("\(options.config): OK (\(c.users.count) users, \(c.backends.count) backends, \(c.routes.count) routes\(c.wildcardBackend != nil ? " + wildcard" : ""))")
        } catch let e as ConfigErrors {
            for p in e.problems { print("\(options.config): \(p)") }
            throw ExitCode(1)
        }
    }
}

struct Serve: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Run the proxy in the foreground until SIGTERM or SIGINT.")
    @OptionGroup var options: ConfigOption
    @Option(help: "Log level: trace, debug, info, notice, warning, error.")
    var logLevel: String = "info"
    @Option(help: "Override [server] listen port (0 picks a free port, printed at start).")
    var port: Int?

    func validate() throws {
        guard Logger.Level(rawValue: logLevel) != nil else { throw ValidationError("unknown log level \(logLevel)") }
    }

    func run() throws {
        let level = Logger.Level(rawValue: logLevel)!
        LoggingSystem.bootstrap { label in
            var h = EscapingLogHandler(StreamLogHandler.standardError(label: label))
            h.logLevel = level
            return h
        }
        let logger = Logger(label: "cutover")
        var config: CutoverConfig
        do { config = try ConfigLoader.loadForServing(path: options.config) } catch let e as ConfigErrors {
            for p in e.problems { logger.error("config problem", metadata: ["file": "\(options.config)", "problem": "\(p)"]) }
            throw ExitCode(1)
        }
        if let port { config.server.listenPort = port }

        // Each session holds a client and a backend socket (two with a follower); leave room for the rest.
        let limit = raiseOpenFileLimit()
        let needed = UInt64(config.server.maxClients) * 3 + 64
        if limit.soft < needed {
            logger.warning("open-file limit is too low for max_clients", metadata: ["limit": "\(limit.soft)", "needed": "\(needed)",
                                                                                    "max_clients": "\(config.server.maxClients)"])
        } else {
            logger.info("open-file limit", metadata: ["limit": "\(limit.soft)"])
        }

        let loop = EventLoop()
        let server: ProxyServer
        do { server = try ProxyServer(loop: loop, config: config, logger: logger) } catch {
            logger.error("cannot restore route phases from the state file", metadata: ["file": "\(config.server.stateFile ?? "")", "error": "\(error)"])
            throw ExitCode(1)
        }
        let path = options.config
        let overridePort = port
        server.reloader = {
            var c = try ConfigLoader.load(path: path)
            if let overridePort { c.server.listenPort = overridePort }
            return c
        }
        do { try server.start() } catch {
            logger.error("cannot start", metadata: ["error": "\(error)"])
            throw ExitCode(1)
        }
        print("cutover listening on \(config.server.listenHost):\(server.port)")
        fflush(nil)
        var watchers: [SignalWatcher] = []
        let stop: (Int32) -> Void = { signum in
            logger.info("signal received, shutting down", metadata: ["signal": "\(signum)"])
            server.shutdown { loop.stop() }
        }
        watchers.append(SignalWatcher(loop: loop, signal: SIGTERM, stop))
        watchers.append(SignalWatcher(loop: loop, signal: SIGINT, stop))
        watchers.append(SignalWatcher(loop: loop, signal: SIGHUP) { _ in
            do {
                try server.reload(try server.reloader!())
            } catch {
                logger.error("reload failed; keeping the previous configuration", metadata: ["error": "\(error)"])
            }
        })
        loop.run()
        for w in watchers { w.close() }
        let rc = loop.shutdown()
        if loop.isAbandoned { logger.warning("a host name lookup was still running at exit and was left behind (a name server not answering)") }
        logger.info("stopped", metadata: ["loop_close": "\(rc)"])
        if loop.isAbandoned {
            // libuv's exit-time destructor joins its thread pool, which would wait out the lookup after all.
            fflush(nil)
            _exit(0)
        }
    }
}
