//! Configuration: embedded defaults, then an optional TOML file, then `CLOUDPLAY_*`
//! environment variables, then command-line flags (see `docs/configuration.md`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use cloudplay_control::identity::{EnrolmentToken, Identity};
use cloudplay_proto::ratelimit::Rate;
use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// HTTP address for the API, WHEP, metrics and the web client.
    pub listen: SocketAddr,
    /// The address browsers reach the media (UDP) port at; set it to the LAN or public
    /// IP for other devices to play.
    pub public_ip: IpAddr,
    /// UDP port for all WebRTC media (0 = any free port).
    pub media_port: u16,
    /// Where browsers send media instead of `public_ip:media_port`, when something in
    /// between forwards it (a NAT port forward, a UDP proxy, `cloudplay netem`).
    pub media_advertise: Option<SocketAddr>,
    /// Base URL put into `whep_url` links (default: from each request's Host header).
    pub public_url: Option<String>,
    /// Id of the built-in host; tickets are addressed to it.
    pub host_id: String,
    /// Most concurrent sessions.
    pub max_sessions: usize,
    /// Seconds a session with nobody connected stays alive.
    pub idle_timeout_secs: u64,
    /// Seconds between commits of a session's changed in-game save to the cloud (and once
    /// at its end): at most this much progress is lost when a host dies.
    pub save_sync_secs: u64,
    /// Lifetime of session tickets in seconds (at most 60).
    pub ticket_ttl_secs: u64,
    /// Where the control plane keeps its state: `sqlite://FILE` (created if missing),
    /// `sqlite::memory:` (nothing kept), or `postgres://USER@HOST/DB`.
    pub database_url: String,
    /// Region of the built-in host.
    pub region: String,
    /// Seconds a client has to send its request headers before the connection is closed.
    pub header_read_timeout_secs: u64,
    /// HTTP connections open at once, all clients together (at most half the process's
    /// descriptors); one address (IPv6: one /64) holds at most a sixteenth of them, 64 at most.
    pub max_connections: u32,
    /// Reverse proxies in front of cloudplay (addresses or ranges, `127.0.0.1/32`): only
    /// their `Forwarded` / `X-Forwarded-For` headers name the client, for per-address
    /// limits. What comes through any proxy is never taken for the operator (`/metrics`).
    pub trusted_proxies: Vec<String>,
    /// Fleet mode: the address of the fleet listener (mutual TLS), apart from the public
    /// one. The control plane takes hosts' registrations there (default `0.0.0.0:7443`); a
    /// host takes its control plane's calls there (default `0.0.0.0:7444`, so both fit on
    /// one machine).
    pub fleet_listen: Option<SocketAddr>,
    /// `cloudplay host`: the `https://` URL the control plane reaches this host's fleet
    /// listener at (default: `https://public_ip:PORT`).
    pub fleet_url: Option<String>,
    /// Where this fleet member keeps its TLS identity (made on first start) and, on a host,
    /// its id and the control plane's fingerprint.
    pub fleet_dir: PathBuf,
    /// The operator's certificate chain (PEM) for the fleet listener, instead of a
    /// self-signed one; with `fleet_key`.
    pub fleet_cert: Option<PathBuf>,
    /// The private key (PEM) of `fleet_cert`.
    pub fleet_key: Option<PathBuf>,
    /// `cloudplay host`: the one-time token from `cloudplay enrol`, needed on first start.
    pub enrolment_token: Option<String>,
    /// A bearer token that lets other machines read `/metrics` (loopback always may).
    pub metrics_token: Option<String>,
    /// A host that misses heartbeats this long is drained and its sessions reported lost.
    pub host_lease_secs: u64,
    /// The control plane's Ed25519 signing key as base64 of 32 bytes (default: fresh at
    /// start; set it to share tickets across control plane instances and restarts).
    pub ticket_key: Option<String>,
    /// `cloudplay host`: the control plane to register with.
    pub control_url: Option<String>,
    /// A TOML catalogue of games (libretro, native, built-in) offered by the default
    /// tenant; see `docs/games.md`.
    pub catalogue: Option<PathBuf>,
    /// Where this host finds libretro cores (`{core}_libretro.so`).
    pub cores_dir: PathBuf,
    /// Game content (ROMs); catalogue entries name files relative to it.
    pub content_dir: PathBuf,
    /// BIOS and other files libretro cores look for.
    pub system_dir: PathBuf,
    /// In-game saves of signed-in players.
    pub saves_dir: PathBuf,
    /// Run native games (needs `Xvfb`).
    pub native_games: bool,
    /// Seconds a native game has to open its window.
    pub native_startup_timeout_secs: u64,
    /// Memory of a jailed game (a native game, a libretro worker) in MiB, 0 = none: a
    /// cgroup where the host can make one, else an address-space limit.
    pub native_memory_limit_mb: u64,
    /// Address ranges (CIDR) native games with `network = true` may reach beyond public
    /// addresses: never the host, loopback, link-local or private ranges otherwise.
    pub native_network_allow: Vec<String>,
    /// MiB a player's home may hold for a jailed native game (kept between sessions).
    pub native_home_mb: u64,
    /// Run libretro cores inside the host process instead of one worker process per
    /// session (saves a process, but a crashing core then takes the host down).
    pub libretro_in_process: bool,
    /// The cloudplay binary that runs libretro workers (default: this one).
    pub libretro_worker: Option<PathBuf>,
    /// Live and queued sessions one player or guest may have at once.
    pub sessions_per_player: u32,
    /// Viewers one session may have.
    pub viewers_per_session: u32,
    /// Players and viewers of all sessions of this host together.
    pub max_peers: u32,
    /// Creators' broadcasts (WHIP) this host carries at once.
    pub max_broadcasts: u32,
    /// The share of this host's broadcasts one tenant's creators may hold, and of the
    /// fleet's game slots one tenant holds while other tenants' players wait, in percent
    /// (at least one slot): one platform cannot take every slot from the others.
    pub tenant_share_percent: u32,
    /// WHIP and WHEP endpoints that sessions and channels may be pushed to and pulled from:
    /// `http://host:port/path`, matched exactly on scheme, host and port and within the
    /// path (empty: pushing and pulling are off). See `docs/configuration.md`.
    pub push_allowed: Vec<String>,
    /// WHEP offers one address may make per minute (IPv6: one /64).
    pub offers_per_minute: u32,
    /// Session requests one address may make per minute without an API key.
    pub session_requests_per_minute: u32,
    /// Sign-ups one address may make per minute.
    pub signups_per_minute: u32,
    /// Log-in attempts one address may make per minute.
    pub logins_per_minute: u32,
    /// Moments ("play this moment") one player may keep until they expire (a week).
    pub moments_per_player: u32,
    /// MiB of moments one player may keep.
    pub moment_mb_per_player: u64,
    /// MiB of moments one tenant may keep, all its players together.
    pub moment_mb_per_tenant: u64,
    /// Captures (save states and moments) of one session per minute: each pauses its game.
    pub captures_per_session_per_minute: u32,
    /// When sessions tick: `latency-first` (an input runs the next tick and frame at once,
    /// within its slot of the 60 Hz grid) or `fixed-tick` (on the grid only).
    pub schedule: cloudplay_host::Schedule,
    /// Run game code (libretro workers, native programs) in a bubblewrap jail. Turning it
    /// off gives games the host's rights and reach: for development only.
    pub sandbox: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 8080),
            public_ip: Ipv4Addr::LOCALHOST.into(),
            media_port: 0,
            media_advertise: None,
            public_url: None,
            host_id: "local".into(),
            max_sessions: 8,
            idle_timeout_secs: 60,
            save_sync_secs: 20,
            ticket_ttl_secs: 30,
            database_url: "sqlite://cloudplay-data/cloudplay.db".into(),
            region: "local".into(),
            header_read_timeout_secs: 10,
            max_connections: 4096,
            trusted_proxies: Vec::new(),
            fleet_listen: None,
            fleet_url: None,
            fleet_dir: "cloudplay-data/fleet".into(),
            fleet_cert: None,
            fleet_key: None,
            enrolment_token: None,
            metrics_token: None,
            host_lease_secs: 15,
            ticket_key: None,
            control_url: None,
            catalogue: None,
            cores_dir: "/usr/lib/x86_64-linux-gnu/libretro".into(),
            content_dir: "cloudplay-data/content".into(),
            system_dir: "cloudplay-data/system".into(),
            saves_dir: "cloudplay-data/saves".into(),
            native_games: true,
            native_startup_timeout_secs: 10,
            native_memory_limit_mb: 4096,
            native_network_allow: Vec::new(),
            native_home_mb: 256,
            libretro_in_process: false,
            libretro_worker: None,
            sessions_per_player: 2,
            viewers_per_session: 50,
            max_peers: 256,
            max_broadcasts: 16,
            tenant_share_percent: 50,
            push_allowed: Vec::new(),
            offers_per_minute: 20,
            session_requests_per_minute: 10,
            signups_per_minute: 5,
            logins_per_minute: 10,
            moments_per_player: 20,
            moment_mb_per_player: 32,
            moment_mb_per_tenant: 1024,
            captures_per_session_per_minute: 6,
            schedule: cloudplay_host::Schedule::LatencyFirst,
            sandbox: true,
        }
    }
}

impl Config {
    /// This fleet member's TLS identity: the operator's certificate, or the one kept in
    /// `fleet_dir` (made on first use).
    pub fn fleet_identity(&self) -> anyhow::Result<Identity> {
        Ok(match (&self.fleet_cert, &self.fleet_key) {
            (Some(cert), Some(key)) => Identity::from_pem_files(cert, key)?,
            _ => Identity::load_or_create(&self.fleet_dir)?,
        })
    }

    /// Where the fleet listener of a control plane (`host` false) or a host listens.
    pub fn fleet_address(&self, host: bool) -> SocketAddr {
        let port = if host { 7444 } else { 7443 };
        self.fleet_listen.unwrap_or(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port))
    }

    /// How the HTTP listeners treat connections.
    pub fn listener_settings(&self) -> anyhow::Result<crate::listener::ListenerSettings> {
        let proxies = self.trusted_proxies.iter().map(|p| p.parse()).collect::<Result<Vec<_>, String>>();
        Ok(crate::listener::ListenerSettings::new(
            std::time::Duration::from_secs(self.header_read_timeout_secs),
            self.max_connections,
            proxies.map_err(|e| anyhow::anyhow!("trusted_proxies: {e}"))?,
        ))
    }

    /// What one caller may trigger on this host.
    pub fn host_limits(&self) -> cloudplay_host::HostLimits {
        cloudplay_host::HostLimits {
            viewers_per_session: self.viewers_per_session,
            peers: self.max_peers,
            offers_per_address: Rate::new(self.offers_per_minute, self.offers_per_minute),
            broadcasts: self.max_broadcasts,
            broadcasts_per_tenant: (self.max_broadcasts * self.tenant_share_percent / 100).max(1),
        }
    }

    /// What one caller may ask of the control plane.
    pub fn control_limits(&self) -> cloudplay_control::Limits {
        cloudplay_control::Limits {
            live_sessions_per_owner: self.sessions_per_player,
            signups_per_address: Rate::new(self.signups_per_minute, self.signups_per_minute),
            logins_per_address: Rate::new(self.logins_per_minute, self.logins_per_minute),
            sessions_per_address: Rate::new(
                self.session_requests_per_minute,
                self.session_requests_per_minute,
            ),
            moments: cloudplay_control::store::MomentQuota {
                per_owner: self.moments_per_player,
                bytes_per_owner: self.moment_mb_per_player << 20,
                bytes_per_tenant: self.moment_mb_per_tenant << 20,
            },
            captures_per_session: Rate::new(
                self.captures_per_session_per_minute,
                self.captures_per_session_per_minute,
            ),
            tenant_share_percent: self.tenant_share_percent,
        }
    }

    /// What this host's game runtimes use.
    pub fn runtimes(&self) -> cloudplay_runtime::RuntimeConfig {
        cloudplay_runtime::RuntimeConfig {
            cores_dir: self.cores_dir.clone(),
            content_dir: self.content_dir.clone(),
            system_dir: self.system_dir.clone(),
            saves_dir: self.saves_dir.clone(),
            native: self.native_games,
            xvfb: "Xvfb".into(),
            native_startup_timeout: std::time::Duration::from_secs(self.native_startup_timeout_secs),
            native_memory_limit: self.native_memory_limit_mb << 20,
            // Checked by `validate`.
            native_home_quota: self.native_home_mb << 20,
            native_network_allow: self.native_network_allow.iter().filter_map(|r| r.parse().ok()).collect(),
            libretro_worker: if self.libretro_in_process {
                None
            } else {
                let program = self.libretro_worker.clone().or_else(|| std::env::current_exe().ok());
                program.map(|program| vec![program, "libretro-worker".into()])
            },
            sandbox: self.sandbox,
        }
    }

    /// Any free port and an in-memory database: for tests and benchmarks.
    pub fn ephemeral() -> Config {
        Config {
            listen: SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 0),
            fleet_listen: Some(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 0)),
            database_url: "sqlite::memory:".into(),
            ..Config::default()
        }
    }

    /// Reads a TOML file on top of the defaults.
    pub fn from_file(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let config: Config = toml::from_str(&text).with_context(|| format!("in {}", path.display()))?;
        Ok(config)
    }

    /// Applies `CLOUDPLAY_<FIELD>` variables from `vars`.
    /// Returns the `CLOUDPLAY_*` names it does not know (other tools share the prefix,
    /// so they are reported, not refused); a known name with a bad value is an error.
    pub fn apply_env(&mut self, vars: impl Iterator<Item = (String, String)>) -> anyhow::Result<Vec<String>> {
        let mut unknown = Vec::new();
        for (name, value) in vars {
            let Some(field) = name.strip_prefix("CLOUDPLAY_") else { continue };
            let bad = |e: &dyn std::fmt::Display| anyhow::anyhow!("{name}={value:?}: {e}");
            match field {
                "LISTEN" => self.listen = value.parse().map_err(|e| bad(&e))?,
                "PUBLIC_IP" => self.public_ip = value.parse().map_err(|e| bad(&e))?,
                "MEDIA_PORT" => self.media_port = value.parse().map_err(|e| bad(&e))?,
                "MEDIA_ADVERTISE" => self.media_advertise = Some(value.parse().map_err(|e| bad(&e))?),
                "PUBLIC_URL" => self.public_url = Some(value),
                "HOST_ID" => self.host_id = value,
                "MAX_SESSIONS" => self.max_sessions = value.parse().map_err(|e| bad(&e))?,
                "IDLE_TIMEOUT_SECS" => self.idle_timeout_secs = value.parse().map_err(|e| bad(&e))?,
                "SAVE_SYNC_SECS" => self.save_sync_secs = value.parse().map_err(|e| bad(&e))?,
                "TICKET_TTL_SECS" => self.ticket_ttl_secs = value.parse().map_err(|e| bad(&e))?,
                "DATABASE_URL" => self.database_url = value,
                "REGION" => self.region = value,
                "HEADER_READ_TIMEOUT_SECS" => {
                    self.header_read_timeout_secs = value.parse().map_err(|e| bad(&e))?
                }
                "MAX_CONNECTIONS" => self.max_connections = value.parse().map_err(|e| bad(&e))?,
                "NATIVE_HOME_MB" => self.native_home_mb = value.parse().map_err(|e| bad(&e))?,
                "NATIVE_NETWORK_ALLOW" => {
                    self.native_network_allow =
                        value.split(',').map(str::trim).filter(|p| !p.is_empty()).map(String::from).collect()
                }
                "TRUSTED_PROXIES" => {
                    self.trusted_proxies =
                        value.split(',').map(str::trim).filter(|p| !p.is_empty()).map(String::from).collect()
                }
                "FLEET_LISTEN" => self.fleet_listen = Some(value.parse().map_err(|e| bad(&e))?),
                "FLEET_URL" => self.fleet_url = Some(value),
                "FLEET_DIR" => self.fleet_dir = value.into(),
                "FLEET_CERT" => self.fleet_cert = Some(value.into()),
                "FLEET_KEY" => self.fleet_key = Some(value.into()),
                "ENROLMENT_TOKEN" => self.enrolment_token = Some(value),
                "METRICS_TOKEN" => self.metrics_token = Some(value),
                "HOST_LEASE_SECS" => self.host_lease_secs = value.parse().map_err(|e| bad(&e))?,
                "TICKET_KEY" => self.ticket_key = Some(value),
                "CONTROL_URL" => self.control_url = Some(value),
                "CATALOGUE" => self.catalogue = Some(value.into()),
                "CORES_DIR" => self.cores_dir = value.into(),
                "CONTENT_DIR" => self.content_dir = value.into(),
                "SYSTEM_DIR" => self.system_dir = value.into(),
                "SAVES_DIR" => self.saves_dir = value.into(),
                "NATIVE_GAMES" => self.native_games = value.parse().map_err(|e| bad(&e))?,
                "NATIVE_STARTUP_TIMEOUT_SECS" => {
                    self.native_startup_timeout_secs = value.parse().map_err(|e| bad(&e))?
                }
                "NATIVE_MEMORY_LIMIT_MB" => {
                    self.native_memory_limit_mb = value.parse().map_err(|e| bad(&e))?
                }
                "SANDBOX" => self.sandbox = value.parse().map_err(|e| bad(&e))?,
                "SESSIONS_PER_PLAYER" => self.sessions_per_player = value.parse().map_err(|e| bad(&e))?,
                "VIEWERS_PER_SESSION" => self.viewers_per_session = value.parse().map_err(|e| bad(&e))?,
                "MAX_PEERS" => self.max_peers = value.parse().map_err(|e| bad(&e))?,
                "MAX_BROADCASTS" => self.max_broadcasts = value.parse().map_err(|e| bad(&e))?,
                "TENANT_SHARE_PERCENT" => self.tenant_share_percent = value.parse().map_err(|e| bad(&e))?,
                "PUSH_ALLOWED" => {
                    self.push_allowed =
                        value.split(',').map(str::trim).filter(|p| !p.is_empty()).map(String::from).collect()
                }
                "OFFERS_PER_MINUTE" => self.offers_per_minute = value.parse().map_err(|e| bad(&e))?,
                "SESSION_REQUESTS_PER_MINUTE" => {
                    self.session_requests_per_minute = value.parse().map_err(|e| bad(&e))?
                }
                "SIGNUPS_PER_MINUTE" => self.signups_per_minute = value.parse().map_err(|e| bad(&e))?,
                "SCHEDULE" => {
                    self.schedule = match value.as_str() {
                        "latency-first" => cloudplay_host::Schedule::LatencyFirst,
                        "fixed-tick" => cloudplay_host::Schedule::FixedTick,
                        _ => return Err(bad(&"latency-first or fixed-tick")),
                    }
                }
                "LOGINS_PER_MINUTE" => self.logins_per_minute = value.parse().map_err(|e| bad(&e))?,
                "MOMENTS_PER_PLAYER" => self.moments_per_player = value.parse().map_err(|e| bad(&e))?,
                "MOMENT_MB_PER_PLAYER" => self.moment_mb_per_player = value.parse().map_err(|e| bad(&e))?,
                "MOMENT_MB_PER_TENANT" => self.moment_mb_per_tenant = value.parse().map_err(|e| bad(&e))?,
                "CAPTURES_PER_SESSION_PER_MINUTE" => {
                    self.captures_per_session_per_minute = value.parse().map_err(|e| bad(&e))?
                }
                "CONFIG" | "LOG" => {}
                _ => unknown.push(name),
            }
        }
        Ok(unknown)
    }

    /// Makes every directory and file setting absolute, relative to `base` (the working
    /// directory at start-up), once: game code runs in a jail whose working directory is
    /// `/`, so a relative path handed to it would name another file.
    pub fn make_paths_absolute(&mut self, base: &Path) {
        let absolute = |path: &mut PathBuf| {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        };
        for dir in [
            &mut self.cores_dir,
            &mut self.content_dir,
            &mut self.system_dir,
            &mut self.saves_dir,
            &mut self.fleet_dir,
        ] {
            absolute(dir);
        }
        for file in
            [&mut self.catalogue, &mut self.fleet_cert, &mut self.fleet_key, &mut self.libretro_worker]
                .into_iter()
                .flatten()
        {
            absolute(file);
        }
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        if self.public_ip.is_unspecified() {
            bail!("public_ip must be an address browsers can reach, not {}", self.public_ip);
        }
        if let Some(advertise) = self.media_advertise
            && (advertise.ip().is_unspecified() || advertise.port() == 0)
        {
            bail!("media_advertise must be an address and port browsers can reach, not {advertise}");
        }
        if !(1..=60).contains(&self.ticket_ttl_secs) {
            bail!("ticket_ttl_secs must be between 1 and 60");
        }
        if !(1..=3600).contains(&self.save_sync_secs) {
            bail!("save_sync_secs must be between 1 and 3600");
        }
        if !(1..=300).contains(&self.header_read_timeout_secs) {
            bail!("header_read_timeout_secs must be between 1 and 300");
        }
        if !(2..=600).contains(&self.host_lease_secs) {
            bail!("host_lease_secs must be between 2 and 600");
        }
        if self.metrics_token.as_ref().is_some_and(|t| t.len() < 16) {
            bail!("metrics_token must be at least 16 characters");
        }
        if self.fleet_cert.is_some() != self.fleet_key.is_some() {
            bail!("fleet_cert and fleet_key go together");
        }
        if self.enrolment_token.as_deref().is_some_and(|t| EnrolmentToken::parse(t).is_none()) {
            bail!("enrolment_token is not a token from `cloudplay enrol` (cpe_….<fingerprint>)");
        }
        let rates = [
            ("offers_per_minute", self.offers_per_minute),
            ("session_requests_per_minute", self.session_requests_per_minute),
            ("signups_per_minute", self.signups_per_minute),
            ("logins_per_minute", self.logins_per_minute),
            ("captures_per_session_per_minute", self.captures_per_session_per_minute),
        ];
        if let Some((name, _)) = rates.iter().find(|(_, rate)| !(1..=100_000).contains(rate)) {
            bail!("{name} must be between 1 and 100000");
        }
        if !(1..=1 << 20).contains(&self.moment_mb_per_player)
            || !(1..=1 << 20).contains(&self.moment_mb_per_tenant)
        {
            bail!("moment_mb_per_player and moment_mb_per_tenant must be between 1 and 1048576");
        }
        cloudplay_control::endpoints::AllowList::new(&self.push_allowed).map_err(anyhow::Error::msg)?;
        for proxy in &self.trusted_proxies {
            proxy.parse::<crate::listener::Cidr>().map_err(|e| anyhow::anyhow!("trusted_proxies: {e}"))?;
        }
        for range in &self.native_network_allow {
            range
                .parse::<crate::listener::Cidr>()
                .map_err(|e| anyhow::anyhow!("native_network_allow: {e}"))?;
        }
        if !(1..=1 << 20).contains(&self.native_home_mb) {
            bail!("native_home_mb must be between 1 and 1048576");
        }
        if !(16..=1_000_000).contains(&self.max_connections) {
            bail!("max_connections must be between 16 and 1000000");
        }
        if !(1..=100).contains(&self.tenant_share_percent) {
            bail!("tenant_share_percent must be between 1 and 100");
        }
        if self.max_peers == 0 {
            bail!("max_peers must be at least 1");
        }
        if self.sessions_per_player == 0 {
            bail!("sessions_per_player must be at least 1");
        }
        if self.max_sessions == 0 {
            bail!("max_sessions must be at least 1");
        }
        if !(1..=120).contains(&self.native_startup_timeout_secs) {
            bail!("native_startup_timeout_secs must be between 1 and 120");
        }
        if self.host_id.is_empty() || self.host_id.len() > 64 {
            bail!("host_id must be 1 to 64 characters");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_then_environment_override_defaults() {
        let mut config: Config = toml::from_str("listen = \"0.0.0.0:9000\"\nmax_sessions = 2\n").unwrap();
        assert_eq!(config.listen.port(), 9000);
        assert_eq!(config.idle_timeout_secs, 60, "unset fields keep their default");
        let vars = [("CLOUDPLAY_MAX_SESSIONS".to_string(), "5".to_string()), ("HOME".into(), "/x".into())];
        config.apply_env(vars.into_iter()).unwrap();
        assert_eq!(config.max_sessions, 5);
        assert!(config.validate().is_ok());
        let fixed: Config = toml::from_str("schedule = \"fixed-tick\"").unwrap();
        assert_eq!(fixed.schedule, cloudplay_host::Schedule::FixedTick);
        assert!(toml::from_str::<Config>("schedule = \"sometimes\"").is_err());
        let vars = [("CLOUDPLAY_SCHEDULE".to_string(), "latency-first".to_string())];
        let mut config = fixed;
        config.apply_env(vars.into_iter()).unwrap();
        assert_eq!(config.schedule, cloudplay_host::Schedule::LatencyFirst);
    }

    #[test]
    fn relative_directories_become_absolute_once() {
        let mut config = Config { catalogue: Some("games.toml".into()), ..Config::default() };
        config.make_paths_absolute(Path::new("/srv/cloudplay"));
        assert_eq!(config.content_dir, Path::new("/srv/cloudplay/cloudplay-data/content"));
        assert_eq!(config.saves_dir, Path::new("/srv/cloudplay/cloudplay-data/saves"));
        assert_eq!(config.catalogue.as_deref(), Some(Path::new("/srv/cloudplay/games.toml")));
        assert_eq!(config.cores_dir, Path::new("/usr/lib/x86_64-linux-gnu/libretro"), "absolute stays");
        let again = config.clone();
        config.make_paths_absolute(Path::new("/elsewhere"));
        assert_eq!(config, again, "only once: absolute paths are left alone");
    }

    #[test]
    fn bad_settings_are_refused_with_the_reason() {
        assert!(toml::from_str::<Config>("listen = 5").is_err());
        assert!(toml::from_str::<Config>("colour = \"red\"").unwrap_err().to_string().contains("colour"));
        let mut config = Config::default();
        let err =
            config.apply_env([("CLOUDPLAY_MEDIA_PORT".into(), "99999".into())].into_iter()).unwrap_err();
        assert!(err.to_string().contains("CLOUDPLAY_MEDIA_PORT"));
        let unknown = config.apply_env([("CLOUDPLAY_NOPE".into(), "1".into())].into_iter()).unwrap();
        assert_eq!(unknown, ["CLOUDPLAY_NOPE"], "reported, not applied");
        config.public_ip = Ipv4Addr::UNSPECIFIED.into();
        assert!(config.validate().is_err());
        let mut config = Config::default();
        assert!(config.apply_env([("CLOUDPLAY_MEDIA_ADVERTISE".into(), "nope".into())].into_iter()).is_err());
        for unreachable in ["0.0.0.0:9000", "127.0.0.1:0"] {
            config.media_advertise = Some(unreachable.parse().unwrap());
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains("media_advertise"), "{err}");
        }
    }
}
