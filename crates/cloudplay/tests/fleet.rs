//! A fleet on one machine, as separate processes: one control plane and hosts in two
//! regions. Players go to the nearest region with room, spill over, queue when all are
//! full, and are served from the queue when a slot frees; a host killed with SIGKILL is
//! drained within its lease. Media flows from the host's own port with a ticket the
//! host verifies with the key it fetched at registration.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use cloudplay::client::{StreamClient, http_request};
use serde_json::{Value, json};

const TOKEN: &str = "fleet-secret-for-tests";

struct Process {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `cloudplay ARGS` and waits (at most 30 s) for the line with its URL.
fn spawn(args: &[&str]) -> Process {
    spawn_with(args, &[])
}

/// As [`spawn`], with extra environment variables.
fn spawn_with(args: &[&str], envs: &[(&str, &str)]) -> Process {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cloudplay"))
        .args(args)
        .envs(envs.iter().copied())
        .env("CLOUDPLAY_LOG", "warn")
        .env("CLOUDPLAY_FLEET_TOKEN", TOKEN)
        .env("CLOUDPLAY_HOST_LEASE_SECS", "3")
        .env("CLOUDPLAY_DATABASE_URL", "sqlite::memory:")
        .stdout(Stdio::piped())
        .spawn()
        .expect("cloudplay starts");
    let stdout = child.stdout.take().unwrap();
    let (found, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(url) = line.split("http://").nth(1) {
                let addr =
                    url.split(|c: char| c == '/' || c.is_whitespace()).next().unwrap_or_default().to_string();
                let _ = found.send(addr);
            }
        }
    });
    let addr = lines.recv_timeout(Duration::from_secs(30)).expect("the process printed its URL");
    Process { child, addr: addr.parse().unwrap() }
}

/// A guest's request: with the guest's cookie once it has one, which the first session
/// request hands out (`cookie` is set then).
fn post(addr: SocketAddr, path: &str, body: Value, cookie: &mut String) -> (u16, Value) {
    let origin = format!("http://{addr}");
    let mut headers = vec![("Content-Type", "application/json")];
    if !cookie.is_empty() {
        headers.extend([("Cookie", cookie.as_str()), ("Origin", origin.as_str())]);
    }
    let (status, answer_headers, bytes) =
        http_request(addr, "POST", path, &headers, body.to_string().as_bytes()).unwrap();
    if let Some(set) = answer_headers.iter().find(|(name, _)| name == "set-cookie") {
        *cookie = set.1.split(';').next().unwrap_or_default().to_string();
    }
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

fn get(addr: SocketAddr, path: &str) -> (u16, Value) {
    get_as(addr, path, "")
}

fn get_as(addr: SocketAddr, path: &str, cookie: &str) -> (u16, Value) {
    let headers: &[(&str, &str)] = if cookie.is_empty() { &[] } else { &[("Cookie", cookie)] };
    let (status, _, bytes) = http_request(addr, "GET", path, headers, b"").unwrap();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

/// Polls `check` every 200 ms for at most `limit`.
fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

#[test]
fn players_are_placed_nearest_spill_over_queue_and_survive_a_lost_host() {
    let control = spawn(&["control", "--listen", "127.0.0.1:0"]);
    let control_url = format!("http://{}", control.addr);
    let host_args = |region: &'static str| {
        [
            "host",
            "--control",
            control_url.as_str(),
            "--region",
            region,
            "--capacity",
            "1",
            "--listen",
            "127.0.0.1:0",
        ]
    };
    let near = spawn(&host_args("near"));
    let far = spawn(&host_args("far"));
    assert!(
        eventually(Duration::from_secs(10), || get(control.addr, "/api/v1/regions").1["regions"]
            .as_array()
            .is_some_and(|r| r.len() == 2)),
        "both regions registered"
    );

    let request = json!({"game": "neon-cycles", "rtt_ms": {"near": 10, "far": 40},
        "options": {"probe": true, "width": 320, "height": 240, "fps": 30}});
    let (mut guest1, mut guest2, mut guest3) = (String::new(), String::new(), String::new());
    let (status, first) = post(control.addr, "/api/v1/sessions", request.clone(), &mut guest1);
    assert!(guest1.starts_with("cloudplay_guest="), "a guest gets an identity: {guest1}");
    assert_eq!(status, 201, "{first}");
    assert!(
        first["whep_url"].as_str().unwrap().starts_with(&format!("http://{}/whep/", near.addr)),
        "nearest: {first}"
    );

    // The host verifies the ticket with the key it fetched when it registered.
    let session: cloudplay_proto::api::SessionCreated = serde_json::from_value(first.clone()).unwrap();
    let mut client = StreamClient::connect(near.addr, &session).expect("WHEP on the near host");
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut probed = false;
    while !probed && Instant::now() < deadline {
        probed = client.poll(Duration::from_millis(100)).unwrap().iter().any(|f| f.probe.is_some());
    }
    assert!(probed, "frames from the near host decode");

    let (status, second) = post(control.addr, "/api/v1/sessions", request.clone(), &mut guest2);
    assert_eq!(status, 201);
    assert!(
        second["whep_url"].as_str().unwrap().starts_with(&format!("http://{}/whep/", far.addr)),
        "spilled to far: {second}"
    );
    let (status, third) = post(control.addr, "/api/v1/sessions", request.clone(), &mut guest3);
    assert_eq!((status, third["queue_position"].as_u64()), (202, Some(1)), "all full: queued {third}");
    let queued_id = third["session_id"].as_str().unwrap().to_string();

    // SIGKILL the near host: within its 3 s lease it is drained and its session is lost.
    drop(client);
    let killed_at = Instant::now();
    drop(near);
    let first_id = first["session_id"].as_str().unwrap();
    assert!(
        eventually(Duration::from_secs(10), || get_as(
            control.addr,
            &format!("/api/v1/sessions/{first_id}"),
            &guest1
        )
        .0 == 404),
        "the lost host's session is gone"
    );
    let one_region =
        || get(control.addr, "/api/v1/regions").1["regions"].as_array().is_some_and(|r| r.len() == 1);
    assert!(eventually(Duration::from_secs(10), one_region), "the near host leaves the fleet");
    // Lease 3 s, heartbeats and maintenance every second; slack for a loaded CI machine.
    let drained_after = killed_at.elapsed();
    println!("near host drained {drained_after:?} after SIGKILL");
    assert!(
        drained_after < Duration::from_secs(7),
        "drained within one lease (+ maintenance), took {drained_after:?}"
    );

    // A slot frees on far: the queued player is placed there.
    let second_id = second["session_id"].as_str().unwrap();
    let (status, _, _) = http_request(
        control.addr,
        "DELETE",
        &format!("/api/v1/sessions/{second_id}"),
        &[("Cookie", &guest2), ("Origin", &control_url)],
        b"",
    )
    .unwrap();
    assert_eq!(status, 204);
    assert!(
        eventually(Duration::from_secs(10), || get_as(
            control.addr,
            &format!("/api/v1/sessions/{queued_id}"),
            &guest3
        )
        .1["state"]
            == "placed"),
        "served from the queue"
    );
    let (status, ticket) =
        post(control.addr, &format!("/api/v1/sessions/{queued_id}/tickets"), json!({}), &mut guest3);
    assert_eq!(status, 201);
    assert!(ticket["whep_url"].as_str().unwrap().starts_with(&format!("http://{}/whep/", far.addr)));
}

#[test]
fn games_go_only_to_hosts_that_run_their_runtime() {
    let cores =
        std::env::var("CLOUDPLAY_CORES_DIR").unwrap_or_else(|_| "/usr/lib/x86_64-linux-gnu/libretro".into());
    if !std::path::Path::new(&cores).join("nestopia_libretro.so").is_file() {
        assert!(std::env::var_os("CI").is_none(), "CI must provide the nestopia core");
        eprintln!("skipped: no nestopia core (CLOUDPLAY_CORES_DIR)");
        return;
    }
    let scratch = std::env::temp_dir().join(format!("cloudplay-fleet-runtimes-{}", std::process::id()));
    std::fs::create_dir_all(scratch.join("nes")).unwrap();
    std::fs::write(scratch.join("nes/colour-pad.nes"), cloudplay_runtime::homebrew::colour_pad_rom())
        .unwrap();
    let catalogue = scratch.join("catalogue.toml");
    std::fs::write(
        &catalogue,
        "[[game]]\nid = \"colour-pad\"\ntitle = \"Colour Pad\"\n\
         runtime = { kind = \"libretro\", core = \"nestopia\", content = \"nes/colour-pad.nes\" }\n",
    )
    .unwrap();
    let control = spawn_with(
        &["control", "--listen", "127.0.0.1:0"],
        &[("CLOUDPLAY_CATALOGUE", catalogue.to_str().unwrap())],
    );
    let control_url = format!("http://{}", control.addr);
    let host = |region: &str, cores: &str| {
        spawn_with(
            &[
                "host",
                "--control",
                &control_url,
                "--region",
                region,
                "--capacity",
                "2",
                "--listen",
                "127.0.0.1:0",
            ],
            &[("CLOUDPLAY_CORES_DIR", cores), ("CLOUDPLAY_CONTENT_DIR", scratch.to_str().unwrap())],
        )
    };
    // The near host has no cores, the far one has them.
    let _near = host("near", "/nonexistent");
    let far = host("far", &cores);
    assert!(
        eventually(Duration::from_secs(10), || get(control.addr, "/api/v1/regions").1["regions"]
            .as_array()
            .is_some_and(|r| r.len() == 2)),
        "both regions registered"
    );
    let request = json!({"game": "colour-pad", "rtt_ms": {"near": 10, "far": 40},
        "options": {"probe": true, "width": 320, "height": 240, "fps": 30}});
    let (status, created) = post(control.addr, "/api/v1/sessions", request, &mut String::new());
    assert_eq!(status, 201, "{created}");
    assert!(
        created["whep_url"].as_str().unwrap().starts_with(&format!("http://{}/whep/", far.addr)),
        "the emulated game goes to the host with the core, not the nearest: {created}"
    );
    let session: cloudplay_proto::api::SessionCreated = serde_json::from_value(created).unwrap();
    let mut client = StreamClient::connect(far.addr, &session).expect("WHEP on the far host");
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut probed = false;
    while !probed && Instant::now() < deadline {
        probed = client.poll(Duration::from_millis(100)).unwrap().iter().any(|f| f.probe.is_some());
    }
    assert!(probed, "the remote host streams the emulator");
    let _ = std::fs::remove_dir_all(&scratch);
}
