use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use cloudplay::app::Server;
use cloudplay::config::Config;
use tracing_subscriber::EnvFilter;

/// cloudplay: open cloud game streaming. Games run here; players play in any browser.
#[derive(Parser)]
#[command(
    version,
    about,
    long_about = None,
    after_help = "Examples:\n  cloudplay serve                                   play at http://127.0.0.1:8080/\n  cloudplay serve --listen 0.0.0.0:8080 --public-ip 192.168.1.20 --media-port 8443\n                                                    let other devices on the LAN play\n  cloudplay serve --config cloudplay.toml           settings from a file (docs/configuration.md)\n  cloudplay bench --seconds 30 --sizes 1280x720     measure the streaming pipeline\n\nLogs: CLOUDPLAY_LOG=debug (a tracing filter). Docs: docs/ in the source tree."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run everything in one process: API, stream host and web client.
    ///
    /// Settings come from the built-in defaults, then --config FILE (TOML), then
    /// CLOUDPLAY_* environment variables, then these flags. Open the printed URL to play.
    Serve {
        #[command(flatten)]
        server: ServerFlags,
        #[command(flatten)]
        media: MediaFlags,
    },
    /// Run the control plane alone (a fleet): API, portal and placement; hosts join it on
    /// its fleet listener (fleet_listen, mutual TLS). For several instances, share
    /// database_url, ticket_key and the fleet identity (fleet_cert/fleet_key).
    Control {
        #[command(flatten)]
        server: ServerFlags,
    },
    /// Print a one-time token that lets one new host join this control plane's fleet
    /// (run it where the control plane runs, with its configuration).
    Enrol {
        /// TOML configuration file (for database_url and fleet_dir).
        #[arg(long, env = "CLOUDPLAY_CONFIG")]
        config: Option<PathBuf>,
        /// Minutes the token stays valid.
        #[arg(long, default_value_t = 60)]
        valid_mins: u64,
    },
    /// Run one stream host that joins a control plane's fleet in a region.
    Host {
        #[command(flatten)]
        server: ServerFlags,
        #[command(flatten)]
        media: MediaFlags,
        /// The control plane's fleet listener, e.g. https://10.0.0.2:7443.
        #[arg(long)]
        control: Option<String>,
        /// Region this host serves (placement picks the region nearest each player).
        #[arg(long)]
        region: Option<String>,
        /// Sessions this host runs at once.
        #[arg(long)]
        capacity: Option<usize>,
        /// Unique host id (default: REGION-random).
        #[arg(long)]
        id: Option<String>,
    },
    /// Internal: run one libretro core for a host, speaking the worker protocol on stdio.
    #[command(hide = true)]
    LibretroWorker {
        /// The catalogue game it runs (shown by `ps`; the core comes over the pipe).
        #[arg(long)]
        game: Option<String>,
    },
    /// Write one of cloudplay's own tiny console programs (MIT/Apache) to a file: content for
    /// trying the libretro runtime without a third-party ROM (see docs/games.md). A `.nes`
    /// path gets "Colour Pad" (NES), a `.gb` path "Shade Pad" (Game Boy).
    Homebrew {
        /// Where to write it, e.g. cloudplay-data/content/nes/colour-pad.nes.
        path: PathBuf,
        /// Colour Pad reacting one frame late (its picture shows the buttons of the frame
        /// before): a game's own input lag, for measuring run-ahead.
        #[arg(long)]
        late: bool,
    },
    /// Manage tenants: the game platforms served by this deployment.
    Tenant {
        #[command(subcommand)]
        command: TenantCommand,
    },
    /// Relay UDP to a host's media port through an emulated network (delay, jitter, loss,
    /// caps, outages; see docs/benchmarks.md), for trying and measuring bad links. Start
    /// the server with `CLOUDPLAY_MEDIA_PORT` set to `--to`'s port and
    /// `CLOUDPLAY_MEDIA_ADVERTISE` to the address this prints.
    Netem {
        /// The host's media address (ip:port).
        #[arg(long)]
        to: SocketAddr,
        /// Where players send (default: any free port on `--to`'s address).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// A scenario: clean, loss-5, bursts-2, cap-1.5, cap-steps, outage-2, outage-20.
        #[arg(long, default_value = "loss-5")]
        scenario: String,
        /// Stop after this many seconds (default: run until interrupted).
        #[arg(long)]
        seconds: Option<u64>,
        /// Seed of the loss pattern.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Measure the streaming pipeline and print a table (see docs/benchmarks.md).
    Bench {
        /// Seconds to measure each resolution.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Resolutions to measure, as WIDTHxHEIGHT.
        #[arg(long, value_delimiter = ',', default_value = "1280x720,1920x1080")]
        sizes: Vec<String>,
        /// Measure session allocations in the control plane's storage instead, on each of
        /// these database URLs (sqlite: uses a temporary file; postgres: a temporary schema).
        #[arg(long, value_delimiter = ',')]
        placement: Vec<String>,
        /// Concurrent workers for --placement.
        #[arg(long, default_value_t = 16)]
        workers: usize,
        /// Measure each game runtime instead (built-in, libretro, native) at the first
        /// of --sizes: frame production to encoder, per stage.
        #[arg(long)]
        runtimes: bool,
        /// Measure the native client through the network emulator's scenarios instead
        /// (all but outage-20 when none is named), at the first of --sizes.
        #[arg(long, value_delimiter = ',', num_args = 0..)]
        network: Option<Vec<String>>,
        /// Measure one session's audience instead: add viewers up to each of these counts
        /// (at the first of --sizes) and print host CPU and send latency per step.
        #[arg(long, value_delimiter = ',')]
        viewers: Vec<usize>,
        /// Measure a creator's stream instead: a native WHIP publisher's picture to a
        /// native viewer's decoded frame, and the start of watching.
        #[arg(long)]
        ingest: bool,
        /// Measure a player's microphone on the host instead: decoding and noise
        /// suppression (per packet, share of a core), and the sound server's hop.
        #[arg(long)]
        microphone: bool,
        /// With --runtimes: also run this many sessions of each runtime at once.
        #[arg(long, value_delimiter = ',')]
        sessions: Vec<usize>,
        /// Settings file (for cores_dir and the other runtime settings).
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

/// Flags of every command that serves HTTP.
#[derive(clap::Args)]
struct ServerFlags {
    /// TOML configuration file (see docs/configuration.md).
    #[arg(long, env = "CLOUDPLAY_CONFIG")]
    config: Option<PathBuf>,
    /// HTTP address to listen on, e.g. 0.0.0.0:8080 to accept other devices.
    #[arg(long)]
    listen: Option<SocketAddr>,
}

impl ServerFlags {
    /// Defaults, then the file, then the environment, then these flags.
    fn settings(&self) -> anyhow::Result<Config> {
        let mut settings = settings(self.config.as_ref())?;
        if let Some(listen) = self.listen {
            settings.listen = listen;
        }
        Ok(settings)
    }
}

/// Flags of every command that streams media.
#[derive(clap::Args)]
struct MediaFlags {
    /// The IP browsers reach this machine at (LAN or public) for media.
    #[arg(long)]
    public_ip: Option<std::net::IpAddr>,
    /// UDP port for WebRTC media (0 = any free port).
    #[arg(long)]
    media_port: Option<u16>,
}

impl MediaFlags {
    fn apply(&self, settings: &mut Config) {
        if let Some(ip) = self.public_ip {
            settings.public_ip = ip;
        }
        if let Some(port) = self.media_port {
            settings.media_port = port;
        }
    }
}

/// Serves until Ctrl-C.
async fn until_interrupted() {
    tokio::signal::ctrl_c().await.ok();
}

#[derive(Subcommand)]
enum TenantCommand {
    /// Create a tenant and print its first admin API key (shown only once).
    Create {
        /// Tenant id: lowercase letters, digits and '-' (e.g. acme).
        id: String,
        /// Display name on the tenant's portal.
        #[arg(long)]
        name: String,
        /// Players are not placed in regions slower than this.
        #[arg(long, default_value_t = 80)]
        max_rtt_ms: u32,
        /// Brand colour of the portal, as CSS.
        #[arg(long, default_value = "#00e6ff")]
        color: String,
        /// TOML configuration file (for database_url).
        #[arg(long, env = "CLOUDPLAY_CONFIG")]
        config: Option<PathBuf>,
    },
}

fn settings(config: Option<&PathBuf>) -> anyhow::Result<Config> {
    let mut settings = match config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    for name in settings.apply_env(std::env::vars())? {
        eprintln!("warning: ignoring {name}: not a cloudplay setting (docs/configuration.md lists them)");
    }
    let here = std::env::current_dir().context("the working directory")?;
    settings.make_paths_absolute(&here);
    Ok(settings)
}

async fn create_tenant(
    settings: Config,
    id: String,
    name: String,
    max_rtt_ms: u32,
    color: String,
) -> anyhow::Result<()> {
    use cloudplay_control::store::Tenant;
    let store = cloudplay::app::open_store(&settings.database_url).await?;
    let now = cloudplay_control::unix_ms();
    let tenant = Tenant { id: id.clone(), name, brand_color: color, logo_url: String::new(), max_rtt_ms };
    store.create_tenant(&tenant, now).await.with_context(|| format!("creating tenant {id}"))?;
    let (_, key) = store.create_api_key(&id, &["admin", "sessions:write"], now).await?;
    println!("tenant {id} created; its admin API key (shown once, keep it safe):\n{key}");
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Command::LibretroWorker { .. } = cli.command {
        // Before anything else: stdout carries the worker protocol.
        std::process::exit(cloudplay_runtime::retro_process::worker_main());
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            EnvFilter::try_from_env("CLOUDPLAY_LOG")
                .unwrap_or_else(|_| EnvFilter::new("info,str0m=warn,dimpl=warn")),
        )
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match cli.command {
        Command::Serve { server, media } => {
            let mut settings = server.settings()?;
            media.apply(&mut settings);
            runtime.block_on(async {
                let server = Server::start(settings).await?;
                let mut url = server.http_addr.to_string();
                if server.http_addr.ip().is_unspecified() {
                    url = format!("localhost:{}", server.http_addr.port());
                }
                println!("cloudplay is running: open http://{url}/ to play (Ctrl-C stops it)");
                server.run(until_interrupted()).await
            })
        }
        Command::Control { server } => {
            let settings = server.settings()?;
            runtime.block_on(async {
                let server = cloudplay::fleet::ControlServer::start(settings).await?;
                println!(
                    "cloudplay control plane is running: http://{}/ ; hosts join at https://{} (Ctrl-C stops it)",
                    server.http_addr, server.fleet_addr
                );
                server.run(until_interrupted()).await
            })
        }
        Command::Host { server, media, control, region, capacity, id } => {
            let mut settings = server.settings()?;
            media.apply(&mut settings);
            settings.control_url = control.or(settings.control_url);
            settings.region = region.unwrap_or(settings.region);
            settings.max_sessions = capacity.unwrap_or(settings.max_sessions);
            settings.host_id = id.unwrap_or(settings.host_id);
            runtime.block_on(async {
                let server = cloudplay::fleet::HostServer::start(settings).await?;
                println!(
                    "cloudplay host is running: http://{} ; fleet listener https://{} (Ctrl-C stops it)",
                    server.http_addr, server.fleet_addr
                );
                server.run(until_interrupted()).await
            })
        }
        Command::Enrol { config, valid_mins } => runtime.block_on(async {
            let settings = settings(config.as_ref())?;
            let token =
                cloudplay::fleet::enrol(&settings, std::time::Duration::from_secs(valid_mins * 60)).await?;
            eprintln!("a one-time enrolment token, valid {valid_mins} min; start the new host with:");
            println!("CLOUDPLAY_ENROLMENT_TOKEN={token}");
            Ok(())
        }),
        Command::Tenant { command: TenantCommand::Create { id, name, max_rtt_ms, color, config } } => {
            runtime.block_on(create_tenant(settings(config.as_ref())?, id, name, max_rtt_ms, color))
        }
        Command::Bench { seconds, sizes, network: Some(keys), .. } => {
            let size = cloudplay::bench::parse_size(sizes.first().map_or("1280x720", String::as_str))?;
            runtime.block_on(cloudplay::bench::network(seconds, size, &keys))
        }
        Command::Bench { seconds, ingest: true, .. } => runtime.block_on(cloudplay::bench::ingest(seconds)),
        Command::Bench { seconds, microphone: true, .. } => cloudplay::bench::microphone(seconds),
        Command::Bench { seconds, sizes, viewers, .. } if !viewers.is_empty() => {
            let size = cloudplay::bench::parse_size(sizes.first().map_or("1280x720", String::as_str))?;
            runtime.block_on(cloudplay::bench::viewers(seconds, size, &viewers))
        }
        Command::Bench { seconds, placement, workers, .. } if !placement.is_empty() => {
            runtime.block_on(cloudplay::bench::placement(&placement, seconds, workers))
        }
        Command::LibretroWorker { .. } => Ok(()), // ran above, before the runtime

        Command::Netem { to, listen, scenario, seconds, seed } => {
            let keys =
                || cloudplay_netem::Scenario::table().iter().map(|s| s.key).collect::<Vec<_>>().join(", ");
            let Some(shape) = cloudplay_netem::Scenario::by_key(&scenario) else {
                anyhow::bail!("no scenario {scenario:?}; known: {}", keys());
            };
            let listen = listen.unwrap_or(SocketAddr::new(to.ip(), 0));
            let relay =
                cloudplay_netem::relay::Relay::start_on(listen, to, shape.clone(), shape.clone(), seed)
                    .with_context(|| format!("relaying on {listen}"))?;
            println!("relay {} → {to}: {}", relay.address(), shape.name);
            runtime.block_on(async {
                match seconds {
                    Some(seconds) => tokio::time::sleep(std::time::Duration::from_secs(seconds)).await,
                    None => {
                        let _ = tokio::signal::ctrl_c().await;
                    }
                }
            });
            let (up, down) = relay.counters();
            eprintln!("to the host: {up:?}\nto players: {down:?}");
            Ok(())
        }

        Command::Homebrew { path, late } => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            }
            let rom = match path.extension().and_then(|e| e.to_str()) {
                Some("nes") if late => cloudplay_runtime::homebrew::colour_pad_late_rom(),
                Some("nes") => cloudplay_runtime::homebrew::colour_pad_rom(),
                Some("gb") => cloudplay_runtime::homebrew::shade_pad_gb_rom(),
                _ => anyhow::bail!("name the file .nes (Colour Pad) or .gb (Shade Pad)"),
            };
            std::fs::write(&path, rom).with_context(|| format!("writing {}", path.display()))?;
            println!("wrote {}", path.display());
            Ok(())
        }
        Command::Bench { seconds, sizes, runtimes: true, config, sessions, .. } => {
            let size = cloudplay::bench::parse_size(sizes.first().map_or("1280x720", String::as_str))?;
            cloudplay::bench::runtimes(&settings(config.as_ref())?, seconds, size, &sessions)
        }
        Command::Bench { seconds, sizes, .. } => {
            let sizes = sizes
                .iter()
                .map(|s| cloudplay::bench::parse_size(s))
                .collect::<anyhow::Result<Vec<_>>>()
                .context("--sizes")?;
            runtime.block_on(cloudplay::bench::run(seconds, &sizes))
        }
    }
}
