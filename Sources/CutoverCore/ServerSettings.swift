// The [server] settings by their config-file names: what SHOW CONFIG lists, and which only a restart applies.

extension ServerConfig {
    /// Settings a reload cannot apply (the listeners are bound, the phases were restored from that file):
    /// a reload keeps the running values and says which the file changed.
    public static let restartOnlyKeys: Set<String> = ["listen", "unix_socket_dir", "metrics_listen", "state_file"]

    /// Every `[server]` key with its value as the file would spell it (nil: not set), in the documented order.
    public var settings: [(key: String, value: String?)] {
        func s(_ v: Double) -> String { v.isFinite && v == v.rounded() && abs(v) < 1e15 ? String(Int(v)) : String(v) }
        return [
            ("listen", "\(listenHost):\(listenPort)"),
            ("unix_socket_dir", unixSocketDirectory),
            ("max_clients", "\(maxClients)"),
            ("max_message_size", "\(maxMessageSize)"),
            ("connect_timeout", s(connectTimeout)),
            ("auth_timeout", s(authTimeout)),
            ("client_idle_timeout", s(clientIdleTimeout)),
            ("idle_transaction_timeout", s(idleTransactionTimeout)),
            ("shutdown_timeout", s(shutdownTimeout)),
            ("write_high_water", "\(writeHighWater)"),
            ("admin_database", adminDatabase),
            ("state_file", stateFile),
            ("divergence_log", divergenceLog),
            ("log_literals", "\(logLiterals)"),
            ("divergence_memory", "\(divergenceMemory)"),
            ("divergence_log_limit", "\(divergenceLogLimit)"),
            ("mirror_queue_bytes", "\(mirrorQueueBytes)"),
            ("mirror_queue_statements", "\(mirrorQueueStatements)"),
            ("follower_timeout", s(followerTimeout)),
            ("flip_timeout", s(flipTimeout)),
            ("follower_logins", "\(followerLogins)"),
            ("backend_pool_size", "\(backendPoolSize)"),
            ("backend_pool_total", "\(backendPoolTotal)"),
            ("backend_idle_timeout", s(backendIdleTimeout)),
            ("backend_lifetime", s(backendLifetime)),
            ("dns_refresh", s(dnsRefresh)),
            ("metrics_listen", metricsHost.map { "\($0):\(metricsPort)" }),
            ("client_tls", clientTLS.rawValue),
            ("client_tls_cert_file", clientTLSCertificateFile),
            ("client_tls_key_file", clientTLSKeyFile),
            ("client_tls_ca_file", clientTLSCAFile),
            ("client_tls_crl_file", clientTLSCRLFile),
            ("tcp_keepalive", "\(tcpKeepalive)"),
            ("tcp_keepidle", "\(tcpKeepidle)"),
            ("tcp_keepintvl", "\(tcpKeepintvl)"),
            ("tcp_keepcnt", "\(tcpKeepcnt)"),
            ("tcp_user_timeout", "\(tcpUserTimeout)"),
        ]
    }

    /// For a reload: takes the restart-only settings from `running`, and returns those this config (the
    /// file's) wanted otherwise, by key, with the file's value.
    public mutating func keepRestartOnlySettings(of running: ServerConfig) -> [String: String?] {
        let wanted = Dictionary(settings.map { ($0.key, $0.value) }, uniquingKeysWith: { a, _ in a })
        let kept = Dictionary(running.settings.map { ($0.key, $0.value) }, uniquingKeysWith: { a, _ in a })
        var changed: [String: String?] = [:]
        for key in Self.restartOnlyKeys where wanted[key] != kept[key] { changed[key] = wanted[key] ?? nil }
        listenHost = running.listenHost
        listenPort = running.listenPort
        unixSocketDirectory = running.unixSocketDirectory
        metricsHost = running.metricsHost
        metricsPort = running.metricsPort
        stateFile = running.stateFile
        return changed
    }
}
