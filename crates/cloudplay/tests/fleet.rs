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

struct Process {
    child: Child,
    /// The public listener.
    addr: SocketAddr,
    /// The fleet listener (mutual TLS).
    fleet: SocketAddr,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The address after `scheme` in `line`.
fn address_after(line: &str, scheme: &str) -> Option<SocketAddr> {
    let rest = line.split(scheme).nth(1)?;
    rest.split(|c: char| c == '/' || c.is_whitespace()).next()?.parse().ok()
}

/// A fleet's scratch directory: the control plane's database and identity, each host's
/// identity. Removed when dropped.
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("cloudplay-fleet-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn path(&self, name: &str) -> String {
        self.0.join(name).to_str().unwrap().to_string()
    }

    /// The control plane's settings: a database file `cloudplay enrol` shares.
    fn control_env(&self) -> Vec<(String, String)> {
        vec![
            ("CLOUDPLAY_DATABASE_URL".into(), format!("sqlite://{}", self.path("control.db"))),
            ("CLOUDPLAY_FLEET_DIR".into(), self.path("control-fleet")),
        ]
    }

    /// `cloudplay enrol` against this fleet's control plane.
    fn enrol(&self) -> String {
        let output = Command::new(env!("CARGO_BIN_EXE_cloudplay"))
            .arg("enrol")
            .envs(self.control_env())
            .env("CLOUDPLAY_LOG", "warn")
            .output()
            .expect("cloudplay enrol runs");
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let stdout = String::from_utf8(output.stdout).unwrap();
        stdout.trim().strip_prefix("CLOUDPLAY_ENROLMENT_TOKEN=").expect("a token line").to_string()
    }

    /// The environment of host `name`: its own identity directory, enrolled with `token`.
    fn host_env(&self, name: &str, token: &str) -> Vec<(String, String)> {
        vec![
            ("CLOUDPLAY_FLEET_DIR".into(), self.path(&format!("host-{name}"))),
            ("CLOUDPLAY_ENROLMENT_TOKEN".into(), token.into()),
        ]
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn command(args: &[&str], envs: &[(String, String)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cloudplay"));
    command
        .args(args)
        .envs(envs.iter().map(|(k, v)| (k, v)))
        .env("CLOUDPLAY_LOG", "warn")
        .env("CLOUDPLAY_HOST_LEASE_SECS", "3")
        .env("CLOUDPLAY_FLEET_LISTEN", "127.0.0.1:0");
    command
}

/// Starts `cloudplay ARGS` with `envs` and waits (at most 30 s) for the line with its URLs.
fn spawn_with(args: &[&str], envs: &[(String, String)]) -> Process {
    let mut child = command(args, envs).stdout(Stdio::piped()).spawn().expect("cloudplay starts");
    let stdout = child.stdout.take().unwrap();
    let (found, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let (Some(addr), Some(fleet)) =
                (address_after(&line, "http://"), address_after(&line, "https://"))
            {
                let _ = found.send((addr, fleet));
            }
        }
    });
    let (addr, fleet) = lines.recv_timeout(Duration::from_secs(30)).expect("the process printed its URLs");
    Process { child, addr, fleet }
}

/// A control plane of `scratch`.
fn control(scratch: &Scratch, extra: &[(String, String)]) -> Process {
    let mut envs = scratch.control_env();
    envs.extend_from_slice(extra);
    spawn_with(&["control", "--listen", "127.0.0.1:0"], &envs)
}

/// A host named `name` in `region`, freshly enrolled with `control`.
fn host(
    scratch: &Scratch,
    control: &Process,
    name: &str,
    region: &str,
    capacity: &str,
    extra: &[(String, String)],
) -> Process {
    let control_url = format!("https://{}", control.fleet);
    let mut envs = scratch.host_env(name, &scratch.enrol());
    envs.extend_from_slice(extra);
    let args = [
        "host",
        "--control",
        &control_url,
        "--region",
        region,
        "--capacity",
        capacity,
        "--listen",
        "127.0.0.1:0",
    ];
    spawn_with(&args, &envs)
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
    let scratch = Scratch::new("placement");
    let control = control(&scratch, &[]);
    let control_url = format!("http://{}", control.addr);
    let near = host(&scratch, &control, "near", "near", "1", &[]);
    let far = host(&scratch, &control, "far", "far", "1", &[]);
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

/// The libretro cores' directory, if it has nestopia (CI must).
fn nestopia() -> Option<String> {
    let cores =
        std::env::var("CLOUDPLAY_CORES_DIR").unwrap_or_else(|_| "/usr/lib/x86_64-linux-gnu/libretro".into());
    if std::path::Path::new(&cores).join("nestopia_libretro.so").is_file() {
        return Some(cores);
    }
    assert!(std::env::var_os("CI").is_none(), "CI must provide the nestopia core");
    eprintln!("skipped: no nestopia core (CLOUDPLAY_CORES_DIR)");
    None
}

/// A control plane whose catalogue is Colour Pad, and the content directory with it.
fn colour_pad_control(scratch: &Scratch) -> (Process, std::path::PathBuf) {
    let content = scratch.0.join("content");
    std::fs::create_dir_all(content.join("nes")).unwrap();
    std::fs::write(content.join("nes/colour-pad.nes"), cloudplay_runtime::homebrew::colour_pad_rom())
        .unwrap();
    let catalogue = scratch.0.join("catalogue.toml");
    std::fs::write(
        &catalogue,
        "[[game]]\nid = \"colour-pad\"\ntitle = \"Colour Pad\"\n\
         runtime = { kind = \"libretro\", core = \"nestopia\", content = \"nes/colour-pad.nes\" }\n",
    )
    .unwrap();
    (control(scratch, &[("CLOUDPLAY_CATALOGUE".into(), catalogue.to_str().unwrap().into())]), content)
}

#[test]
fn games_go_only_to_hosts_that_run_their_runtime() {
    let Some(cores) = nestopia() else { return };
    let scratch = Scratch::new("runtimes");
    let (control, content) = colour_pad_control(&scratch);
    let host = |region: &str, cores: &str| {
        let envs = [
            ("CLOUDPLAY_CORES_DIR".to_string(), cores.to_string()),
            ("CLOUDPLAY_CONTENT_DIR".into(), content.to_str().unwrap().into()),
        ];
        host(&scratch, &control, region, region, "2", &envs)
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
}

/// Hosts are known by their certificate: an impostor with a fresh enrolment token cannot
/// take over an enrolled host id, a token enrols one host once, registrations are
/// validated, and neither fleet listener talks to a stranger.
#[test]
fn a_host_is_known_by_its_certificate_alone() {
    use cloudplay_control::identity::{EnrolmentToken, Fingerprint, Identity};
    use cloudplay_control::remote::fleet_request;

    let scratch = Scratch::new("identity");
    let control = control(&scratch, &[]);
    let honest =
        host(&scratch, &control, "honest", "near", "1", &[("CLOUDPLAY_HOST_ID".into(), "h1".into())]);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let token = EnrolmentToken::parse(&scratch.enrol()).expect("a token");
    let impostor = Identity::generate().unwrap();
    let tls = impostor.client_config(token.control).unwrap();
    let fleet_url = format!("https://{}", control.fleet);
    let send = |method: &str, path: &str, body: Option<Value>| {
        runtime
            .block_on(fleet_request(&fleet_url, &tls, method, path, body.map(|b| b.to_string())))
            .expect("the control plane answers a client with a certificate")
    };
    let registration = |id: &str, token: Option<String>| {
        json!({"protocol": 1, "id": id, "region": "elsewhere", "endpoint": "https://127.0.0.1:9", "public_url": "http://127.0.0.1:9",
               "capacity": 1, "runtimes": ["builtin"], "enrolment_token": token})
    };

    // Taking over the enrolled id, even with a valid token, is refused; so are its heartbeats.
    let (status, body) =
        send("POST", "/internal/v1/hosts", Some(registration("h1", Some(token.to_string()))));
    assert_eq!(status, 403, "{}", String::from_utf8_lossy(&body));
    assert_eq!(send("POST", "/internal/v1/hosts/h1/heartbeat", None).0, 403);

    // Bad registrations change nothing (the token is not spent by them).
    let bad_inputs = [
        ("capacity", json!(0)),
        ("capacity", json!(4_294_967_295u64)),
        ("endpoint", json!("https://127.0.0.1:9\r\nX-Evil: 1")),
        ("endpoint", json!("http://127.0.0.1:9")),
        ("public_url", json!("http://a/b?c")),
        ("region", json!("near\n")),
        ("protocol", json!(2)),
    ];
    for (field, value) in bad_inputs {
        let mut body = registration("h2", Some(token.to_string()));
        body[field] = value.clone();
        let (status, answer) = send("POST", "/internal/v1/hosts", Some(body));
        assert_eq!(status, 400, "{field} = {value}");
        if field == "protocol" {
            let answer = String::from_utf8_lossy(&answer);
            assert!(
                answer.contains("fleet protocol 2 is not spoken here"),
                "a version mismatch says so: {answer}"
            );
        }
    }
    // A new host needs a real, unused token.
    assert_eq!(send("POST", "/internal/v1/hosts", Some(registration("h2", None))).0, 401);
    let forged = EnrolmentToken { secret: format!("cpe_{}", "ab".repeat(32)), control: token.control };
    assert_eq!(send("POST", "/internal/v1/hosts", Some(registration("h2", Some(forged.to_string())))).0, 401);
    assert_eq!(send("POST", "/internal/v1/hosts", Some(registration("h2", Some(token.to_string())))).0, 201);
    assert_eq!(
        send("POST", "/internal/v1/hosts", Some(registration("h3", Some(token.to_string())))).0,
        401,
        "a token enrols one host"
    );

    // The honest host still serves its region.
    let request = json!({"game": "neon-cycles", "rtt_ms": {"near": 10},
        "options": {"probe": true, "width": 320, "height": 240, "fps": 30}});
    let (status, created) = post(control.addr, "/api/v1/sessions", request, &mut String::new());
    assert_eq!(status, 201, "{created}");
    assert!(created["whep_url"].as_str().unwrap().starts_with(&format!("http://{}/whep/", honest.addr)));

    // Strangers: plain HTTP gets no answer from a fleet listener, and the host's listener
    // takes no certificate but its control plane's.
    let plain = http_request(control.fleet, "GET", "/internal/v1/hosts", &[], b"");
    assert!(plain.is_err(), "plain HTTP on the fleet listener: {plain:?}");
    let host_pin = Fingerprint::of(&std::fs::read(scratch.0.join("host-honest/identity.crt.der")).unwrap());
    let to_host = impostor.client_config(host_pin).unwrap();
    let answer = runtime.block_on(fleet_request(
        &format!("https://{}", honest.fleet),
        &to_host,
        "GET",
        "/internal/v1/sessions/anything",
        None,
    ));
    assert!(answer.is_err(), "the host refused a stranger's certificate: {answer:?}");
}

/// Cloud saves across the fleet: a player holds A in Colour Pad on one host (its battery
/// RAM counts the frames), and the game's save is committed to the control plane within a
/// sync interval; that host is killed with SIGKILL; the player's next session, placed on
/// the other host, starts from the save (that host's copy, read back out of the game, is
/// the committed one).
#[test]
fn a_players_save_outlives_its_host_and_follows_them_to_another() {
    let Some(cores) = nestopia() else { return };
    let scratch = Scratch::new("saves");
    let (control, content) = colour_pad_control(&scratch);
    let host = |region: &str| {
        let envs = [
            ("CLOUDPLAY_CORES_DIR".to_string(), cores.clone()),
            ("CLOUDPLAY_CONTENT_DIR".into(), content.to_str().unwrap().into()),
            ("CLOUDPLAY_SAVES_DIR".into(), scratch.path(&format!("saves-{region}"))),
            ("CLOUDPLAY_SAVE_SYNC_SECS".into(), "1".into()),
        ];
        host(&scratch, &control, region, region, "2", &envs)
    };
    let near = host("near");
    let far = host("far");
    let regions = |n: usize| {
        move || get(control.addr, "/api/v1/regions").1["regions"].as_array().is_some_and(|r| r.len() == n)
    };
    assert!(eventually(Duration::from_secs(10), regions(2)), "both regions registered");

    let signup = json!({"email": "pat@example.test", "password": "password-1", "display_name": "Pat"});
    let (status, _, answer) = http_request(
        control.addr,
        "POST",
        "/api/v1/tenants/local/signup",
        &[("Content-Type", "application/json")],
        signup.to_string().as_bytes(),
    )
    .unwrap();
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&answer));
    let answer: Value = serde_json::from_slice(&answer).unwrap();
    let (user, auth) = (
        answer["user"]["id"].as_str().unwrap().to_string(),
        format!("Bearer {}", answer["token"].as_str().unwrap()),
    );
    let play = || {
        let request = json!({"game": "colour-pad", "rtt_ms": {"near": 10, "far": 40},
            "options": {"width": 320, "height": 240, "fps": 30}});
        let headers = [("Content-Type", "application/json"), ("Authorization", auth.as_str())];
        let (status, _, answer) =
            http_request(control.addr, "POST", "/api/v1/sessions", &headers, request.to_string().as_bytes())
                .unwrap();
        assert_eq!(status, 201, "{}", String::from_utf8_lossy(&answer));
        serde_json::from_slice::<cloudplay_proto::api::SessionCreated>(&answer).unwrap()
    };
    let save_file =
        |region: &str| scratch.0.join(format!("saves-{region}/local/{user}/nestopia/colour-pad.srm"));

    let session = play();
    assert!(session.whep_url.starts_with(&format!("http://{}/", near.addr)), "the first session is near");
    let mut client = StreamClient::connect(near.addr, &session).expect("WHEP on the near host");
    assert!(
        eventually(Duration::from_secs(15), || client
            .poll(Duration::from_millis(50))
            .is_ok_and(|f| !f.is_empty())),
        "frames arrive"
    );
    assert!(eventually(Duration::from_secs(10), || {
        let _ = client.poll(Duration::from_millis(20));
        client.input_open()
    }));
    let a = |down| cloudplay_proto::InputEvent::Key { usage: 0x1B, down, repeat: false }; // X = A
    client.send_input(a(true)).unwrap();
    let held = std::time::Instant::now();
    while held.elapsed() < Duration::from_secs(1) {
        let _ = client.poll(Duration::from_millis(50));
    }
    client.send_input(a(false)).unwrap();
    let _ = client.poll(Duration::from_millis(200));
    let mut committed = Vec::new();
    let mut in_the_cloud = || {
        let (status, _, bytes) = http_request(
            control.addr,
            "GET",
            "/api/v1/saves/colour-pad/sram",
            &[("Authorization", auth.as_str())],
            b"",
        )
        .unwrap();
        // The count of frames with A held, first in the battery RAM.
        let counted = bytes.len() >= 2 && u16::from_le_bytes([bytes[0], bytes[1]]) >= 20;
        committed = bytes;
        status == 200 && counted
    };
    assert!(eventually(Duration::from_secs(10), &mut in_the_cloud), "committed within a sync interval or so");
    drop(client);

    // The near host dies; the player's next session goes far and starts from the save.
    drop(near);
    assert!(eventually(Duration::from_secs(10), regions(1)), "the near host leaves the fleet");
    assert!(play().whep_url.starts_with(&format!("http://{}/", far.addr)), "the next session is far");
    assert!(
        eventually(Duration::from_secs(10), || std::fs::read(save_file("far"))
            .is_ok_and(|kept| kept == committed)),
        "the far host's game started from the committed save"
    );
}
