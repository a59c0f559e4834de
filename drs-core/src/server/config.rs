//! [`ServerConfig`]: the settings of a server.

use super::*;

/// Settings of a server: what every connection gets, and the limits of the
/// whole server. `Default` gives the documented defaults; a [`ConnConfig`]
/// converts into one with the server-wide defaults.
///
/// ```
/// let config = drs_core::ServerConfig::default()
///     .max_connections(1000)
///     .memory_budget(64 << 20);
/// let server = drs_core::Server::with_config(config);
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServerConfig {
    /// Settings of every connection.
    pub conn: ConnConfig,
    /// Connections served at once (admitted or not). Past it a new
    /// connection is accepted, sent a keyless `drs.error` saying so and
    /// closed at once; existing ones are untouched. Default 10,000.
    pub max_connections: usize,
    /// Bytes held for all peers together: unfinished frames and commands
    /// waiting to be served. Past it the connections holding the most are
    /// disconnected ([`CloseReason::BudgetExceeded`]). Default 256 MiB.
    pub memory_budget: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ConnConfig::default().into()
    }
}

impl From<ConnConfig> for ServerConfig {
    fn from(conn: ConnConfig) -> Self {
        Self {
            conn,
            max_connections: 10_000,
            memory_budget: DEFAULT_MEMORY_BUDGET,
        }
    }
}

impl ServerConfig {
    /// Sets the connection settings.
    pub fn conn(mut self, conn: ConnConfig) -> Self {
        self.conn = conn;
        self
    }

    /// Sets the connection limit (at least 1).
    pub fn max_connections(mut self, max: usize) -> Self {
        self.max_connections = max.max(1);
        self
    }

    /// Sets the server-wide memory budget in bytes.
    pub fn memory_budget(mut self, bytes: usize) -> Self {
        self.memory_budget = bytes;
        self
    }
}
