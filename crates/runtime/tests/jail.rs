//! The jail's limits seen from inside: its memory cgroup (processes, tmpfs files and the
//! kernel's inodes for them) and a network that leaves only for public addresses and the
//! ranges the operator allows.

use std::io::Read;
use std::net::{IpAddr, TcpListener};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use cloudplay_proto::cidr::Cidr;
use cloudplay_runtime::find_program;
use cloudplay_runtime::sandbox::{Jail, JailGuard, JailLimits};

fn available(programs: &[&str]) -> bool {
    if programs.iter().all(|p| find_program(p).is_some() || Path::new(p).exists()) {
        return true;
    }
    assert!(std::env::var_os("CI").is_none(), "CI must install {programs:?} (see .ci/run)");
    eprintln!("skipped: one of {programs:?} is not installed");
    false
}

/// Runs `script` with `sh` in `jail` for at most 30 s: its standard output, and whether it
/// exited by itself (not killed).
fn run(jail: Jail, script: &str) -> (String, bool, JailGuard) {
    let mut command = jail.command(Path::new("sh"), &["-c", script]).unwrap();
    command.command_mut().stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::inherit());
    let (mut child, guard) = command.spawn().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the jailed script ran past 30 s");
        std::thread::sleep(Duration::from_millis(20));
    };
    let text = reader.join().unwrap();
    eprintln!("{script}\n→ {status}: {text}");
    (text, status.code() == Some(0), guard)
}

fn with_memory(bytes: u64) -> Jail {
    Jail::new(JailLimits { memory: bytes, ..JailLimits::default() })
}

#[test]
fn a_jail_gets_a_memory_cgroup_that_stops_a_hungry_program() {
    if !available(&["bwrap", "perl"]) {
        return;
    }
    let (out, _, guard) =
        run(with_memory(64 << 20), r#"perl -e '$x = "a" x (300 << 20); print "SURVIVED\n"'"#);
    assert!(!out.contains("SURVIVED"), "300 MiB fit in a 64 MiB jail");
    // This machine kind lets the host make cgroups (a fallback to an address-space limit
    // would pass the check above too).
    if std::env::var_os("CI").is_some() {
        assert!(guard.cgroup().is_some(), "no memory cgroup was made");
    }
    let dir = guard.cgroup().map(|c| c.dir().to_path_buf());
    drop(guard);
    if let Some(dir) = dir {
        assert!(!dir.exists(), "the jail's cgroup is removed with it");
    }
}

#[test]
fn files_and_inodes_in_a_jails_tmp_count_against_its_memory() {
    if !available(&["bwrap"]) {
        return;
    }
    // Empty files take no tmpfs blocks, only inodes and directory entries: the tmpfs size
    // does not bound them, the cgroup does. Then one big file against the same limit.
    // The jail's own start fits well within the limit.
    let (out, exited, _) = run(with_memory(24 << 20), "echo STARTED");
    assert!(exited && out.contains("STARTED"), "a 24 MiB jail runs a shell");
    let (out, _, _) = run(
        with_memory(24 << 20),
        "dd if=/dev/zero of=/tmp/big bs=1M count=200 2>/dev/null; echo \"bytes $(stat -c %s /tmp/big)\"",
    );
    if let Some(bytes) =
        out.lines().find_map(|l| l.strip_prefix("bytes ")).and_then(|v| v.trim().parse::<u64>().ok())
    {
        assert!(bytes < 100 << 20, "a {bytes}-byte file in a 24 MiB jail");
    }
    // Counted every thousand files, as the shell may be killed before it says more.
    let script = r#"
        i=0
        while [ $i -lt 150000 ]; do
          : > /tmp/f$i 2>/dev/null || break
          i=$((i+1))
          [ $((i % 1000)) -eq 0 ] && echo "files $i"
        done
        echo "files $i"
    "#;
    let (out, _, guard) = run(with_memory(24 << 20), script);
    if guard.cgroup().is_none() {
        assert!(std::env::var_os("CI").is_none(), "no memory cgroup was made");
        eprintln!("skipped: this host makes no memory cgroups");
        return;
    }
    let files = out.lines().filter_map(|l| l.strip_prefix("files ")?.trim().parse::<u64>().ok()).max();
    let files = files.expect("the file loop ran");
    assert!(files < 150_000, "{files} empty files in a 24 MiB jail");
}

/// An address of this host that is not loopback, for a listener the jail must not reach.
fn host_address() -> Option<IpAddr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    // No packet is sent: connecting a UDP socket only picks the route's source address.
    socket.connect("192.0.2.1:9").ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

fn reach(ip: IpAddr, port: u16, label: &str) -> String {
    format!("(timeout 3 bash -c 'echo > /dev/tcp/{ip}/{port}') 2>/dev/null && echo 'REACHED {label}'\n")
}

fn with_egress(allowed: &[Cidr]) -> Jail {
    let mut jail = Jail::new(JailLimits::default());
    jail.egress(allowed);
    jail
}

#[test]
fn a_jail_with_network_reaches_neither_the_host_nor_private_ranges_unless_allowed() {
    if !available(&["bwrap", "bash", "slirp4netns", "nft"]) {
        return;
    }
    let Some(host) = host_address() else {
        eprintln!("skipped: this machine has no address but loopback");
        return;
    };
    let on_host = TcpListener::bind((host, 0)).unwrap();
    let on_loopback = TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let (host_port, loopback_port) =
        (on_host.local_addr().unwrap().port(), on_loopback.local_addr().unwrap().port());
    let probes = [
        reach(host, host_port, "host"),
        // slirp4netns's alias for the host's loopback.
        reach("10.0.2.2".parse().unwrap(), loopback_port, "host-loopback"),
        reach("169.254.169.254".parse().unwrap(), 80, "metadata"),
        reach("10.0.2.3".parse().unwrap(), 53, "resolver"),
    ]
    .concat();
    let script = format!(
        "grep -q 10.0.2.3 /etc/resolv.conf && echo RESOLVER-SET\nip route | grep -q default && echo ROUTED\n{probes}"
    );

    let (out, _, _guard) = run(with_egress(&[]), &script);
    assert!(out.contains("ROUTED") && out.contains("RESOLVER-SET"), "the jail has a network:\n{out}");
    for refused in ["REACHED host", "REACHED host-loopback", "REACHED metadata"] {
        assert!(!out.contains(refused), "{refused}:\n{out}");
    }

    // The operator allows the host's own range: now it is reached, and nothing else is.
    let allowed: Cidr = host.to_string().parse().unwrap();
    let (out, _, _guard) = run(with_egress(&[allowed]), &script);
    assert!(out.contains("REACHED host\n"), "an allowed range is reached:\n{out}");
    for refused in ["REACHED host-loopback", "REACHED metadata"] {
        assert!(!out.contains(refused), "{refused}:\n{out}");
    }

    // Without network, nothing at all.
    let (out, _, _guard) = run(Jail::new(JailLimits::default()), &script);
    assert!(!out.contains("ROUTED") && !out.contains("REACHED"), "no network:\n{out}");
}
