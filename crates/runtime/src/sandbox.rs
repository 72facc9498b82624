//! The jail game code runs in: libretro workers (a core is code from a package, content
//! is data from a tenant) and native programs, through bubblewrap (`bwrap`).
//!
//! Each jail has its own user (nobody), PID, mount, IPC, UTS and network namespaces; an
//! empty environment but for what the caller sets; `/usr` and a short list of `/etc` files
//! read-only; a private `/tmp` of bounded size; and nothing else of the host's filesystem
//! but the paths the caller binds (the game's content read-only, its save directory
//! writable). So the platform's keys, database, config and other sessions' sockets and
//! cookies are out of sight. It dies with the thread that started it, and when it does,
//! the kernel ends everything in its PID namespace: no descendant outlives the session,
//! `setsid()` or not. Resource limits (processes, CPU time, file size, open files) are set
//! before `bwrap` starts and inherited inside; memory is limited by a cgroup of the jail's
//! own ([`crate::cgroup`]), which also counts the files of its tmpfs directories and the
//! kernel's objects for them, and by an address-space limit per process (alone where the
//! host can make no cgroup).
//!
//! A jail with network ([`Jail::egress`]) still has its own network namespace: user-mode
//! networking (`slirp4netns`) carries its traffic out through the host's sockets, and
//! before the program starts an nftables table inside that namespace refuses every
//! destination on the host itself, on loopback, link-local (the cloud metadata address),
//! private, shared and reserved ranges, unless the operator allows the range.
//!
//! A system-call filter (seccomp, [`SeccompFilter`]) refuses what games never need:
//! tracing other processes, mounting, new namespaces (nested user namespaces are off too),
//! keyrings, BPF, performance counters, kernel modules and `kexec`, reading other
//! processes' memory; `clone3` answers `ENOSYS` so the C library falls back to `clone`,
//! whose namespace flags the filter can see. A jail may also forbid making links
//! ([`Jail::forbid_links`]): libretro cores never need them.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompRule, TargetArch,
};

use cloudplay_proto::cidr::Cidr;

use crate::RuntimeError;
use crate::cgroup::MemoryCgroup;

/// The sandbox program (Debian's `bubblewrap`).
pub const BWRAP: &str = "bwrap";
/// User-mode networking for a jail with network (Debian's `slirp4netns`).
pub const SLIRP4NETNS: &str = "slirp4netns";
/// What writes the egress rules inside a jail's network namespace (Debian's `nftables`).
pub const NFT: &str = "nft";
/// How long a jail's network may take to be set up.
const NETWORK_SETUP: std::time::Duration = std::time::Duration::from_secs(5);

/// `/etc` entries programs commonly need (dynamic linking, fonts, X resources, user
/// names, time zone); nothing else of `/etc` is visible.
const ETC_ENTRIES: &[&str] = &[
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "alternatives",
    "fonts",
    "X11",
    "passwd",
    "group",
    "nsswitch.conf",
    "localtime",
    "pulse",
    "alsa",
    "terminfo",
];

/// Resource limits inside a jail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JailLimits {
    /// Processes and threads of the jail's user.
    pub processes: u64,
    /// CPU seconds of any one process.
    pub cpu_secs: u64,
    /// Largest file a process may write, bytes.
    pub file_size: u64,
    /// Open files of one process.
    pub open_files: u64,
    /// Memory of the whole jail, bytes (0 = none): its processes, its tmpfs files and the
    /// kernel's objects for them (a cgroup, where the host can make one); and each process's
    /// address space.
    pub memory: u64,
    /// Size of the private `/tmp`, bytes.
    pub tmp_size: u64,
}

impl Default for JailLimits {
    fn default() -> Self {
        JailLimits {
            processes: 256,
            cpu_secs: 12 * 3600,
            file_size: 256 << 20,
            open_files: 1024,
            memory: 0,
            tmp_size: 256 << 20,
        }
    }
}

/// A jail being set up; [`Jail::command`] turns it into the command that runs a program
/// inside it.
#[derive(Debug)]
pub struct Jail {
    binds: Vec<(&'static str, PathBuf)>,
    env: Vec<(String, OsString)>,
    /// With network: the ranges the operator allows beyond public addresses.
    egress: Option<Vec<Cidr>>,
    limits: JailLimits,
    chdir: Option<PathBuf>,
    forbid_links: bool,
    /// Private directories of bounded size (their files count against the jail's memory).
    tmpfs: Vec<(PathBuf, u64)>,
    /// Descriptors the program inside gets, at the same numbers.
    passed: Vec<OwnedFd>,
    /// Read-only binds at another path inside: (host, inside).
    ro_at: Vec<(PathBuf, PathBuf)>,
}

/// Whether this machine can make jails.
pub fn available() -> bool {
    crate::find_program(BWRAP).is_some()
}

/// An absolute path for a bind: relative paths are taken from the current directory.
fn absolute(path: &Path) -> Result<PathBuf, RuntimeError> {
    std::path::absolute(path).map_err(|e| RuntimeError::Io(format!("{}: {e}", path.display())))
}

impl Jail {
    pub fn new(limits: JailLimits) -> Jail {
        Jail {
            binds: Vec::new(),
            env: Vec::new(),
            egress: None,
            limits,
            chdir: None,
            forbid_links: false,
            tmpfs: Vec::new(),
            passed: Vec::new(),
            ro_at: Vec::new(),
        }
    }

    /// Refuses making links and device nodes inside (`symlink`, `link`, `mknod`):
    /// nothing in the jail can plant a link for anyone to follow, nor flood a directory
    /// with them.
    pub fn forbid_links(&mut self) -> &mut Jail {
        self.forbid_links = true;
        self
    }

    /// Makes `path` (a file or directory of the host) visible at the same path, read-only.
    pub fn read_only(&mut self, path: &Path) -> Result<&mut Jail, RuntimeError> {
        self.binds.push(("--ro-bind", absolute(path)?));
        Ok(self)
    }

    /// Makes `path` visible at the same path, writable.
    pub fn writable(&mut self, path: &Path) -> Result<&mut Jail, RuntimeError> {
        self.binds.push(("--bind", absolute(path)?));
        Ok(self)
    }

    /// A private, empty directory at `path` inside (nothing of the host's), of at most
    /// `size` bytes; gone with the jail.
    pub fn tmpfs(&mut self, path: &Path, size: u64) -> &mut Jail {
        self.tmpfs.push((path.to_path_buf(), size));
        self
    }

    /// Makes the host's `path` visible read-only at `inside`.
    pub fn read_only_at(&mut self, path: &Path, inside: &Path) -> Result<&mut Jail, RuntimeError> {
        self.ro_at.push((absolute(path)?, inside.to_path_buf()));
        Ok(self)
    }

    /// Hands `fd` to the program inside; answers its number there.
    pub fn pass(&mut self, fd: OwnedFd) -> i32 {
        let number = fd.as_raw_fd();
        self.passed.push(fd);
        number
    }

    /// Gives the jail a network to public addresses, and to the ranges in `allowed` (off
    /// by default: only its own loopback).
    pub fn egress(&mut self, allowed: &[Cidr]) -> &mut Jail {
        self.egress = Some(allowed.to_vec());
        self
    }

    /// Sets a variable of the jail's otherwise empty environment.
    pub fn env(&mut self, name: &str, value: impl Into<OsString>) -> &mut Jail {
        self.env.push((name.into(), value.into()));
        self
    }

    /// The working directory inside (default `/`).
    pub fn chdir(&mut self, dir: &Path) -> Result<&mut Jail, RuntimeError> {
        self.chdir = Some(absolute(dir)?);
        Ok(self)
    }

    /// The command that runs `program` with `args` in this jail, supervised (its own
    /// process group, killed with the starting thread) and with the jail's limits; set its
    /// standard streams with [`JailCommand::command_mut`], then [`JailCommand::spawn`] it.
    pub fn command(
        self,
        program: &Path,
        args: &[impl AsRef<std::ffi::OsStr>],
    ) -> Result<JailCommand, RuntimeError> {
        let bwrap = crate::find_program(BWRAP).ok_or_else(|| {
            RuntimeError::Io("the sandbox (bwrap, Debian's bubblewrap) is not installed".into())
        })?;
        let program = if program.is_absolute() || program.components().count() > 1 {
            absolute(program)?
        } else {
            crate::find_program(&program.to_string_lossy())
                .ok_or_else(|| RuntimeError::ProgramFailed(format!("{:?} is not installed", program)))?
        };
        let mut command = Command::new(bwrap);
        // bwrap itself starts from nothing too: its own process stays inside the jail as
        // PID 1, where the game could read its environment from /proc/1/environ.
        command.env_clear();
        command.args(["--unshare-all", "--unshare-user", "--uid", "65534", "--gid", "65534"]);
        command.args([
            "--die-with-parent",
            "--new-session",
            "--cap-drop",
            "ALL",
            "--clearenv",
            "--disable-userns",
        ]);
        // Descriptors bwrap reads (filters, files to place, the network's handshake): they
        // stay open in the child only (close-on-exec is cleared there), and are closed here
        // with the command.
        let mut inherited: Vec<OwnedFd> = self.passed;
        for filter in
            [SeccompFilter::Refused { forbid_links: self.forbid_links }, SeccompFilter::NotImplemented]
        {
            let fd = filter.memfd()?;
            command.arg("--add-seccomp-fd").arg(fd.as_raw_fd().to_string());
            inherited.push(fd);
        }
        let egress = match &self.egress {
            Some(allowed) => {
                let setup = EgressSetup::prepare(allowed)?;
                command.arg("--info-fd").arg(setup.info_child.as_raw_fd().to_string());
                command.arg("--block-fd").arg(setup.block_child.as_raw_fd().to_string());
                let resolver = memfd(c"cloudplay-resolv", b"nameserver 10.0.2.3\n")?;
                command.arg("--ro-bind-data").arg(resolver.as_raw_fd().to_string()).arg("/etc/resolv.conf");
                inherited.push(resolver);
                Some(setup)
            }
            None => None,
        };
        command.args(["--ro-bind", "/usr", "/usr"]);
        for dir in ["bin", "sbin", "lib", "lib32", "lib64", "libx32"] {
            let host = Path::new("/").join(dir);
            match std::fs::read_link(&host) {
                Ok(target) => {
                    command.arg("--symlink").arg(target).arg(&host);
                }
                Err(_) if host.is_dir() => {
                    command.arg("--ro-bind").arg(&host).arg(&host);
                }
                Err(_) => {}
            }
        }
        for entry in ETC_ENTRIES {
            let path = Path::new("/etc").join(entry);
            if path.exists() {
                command.arg("--ro-bind").arg(&path).arg(&path);
            }
        }
        command.args(["--proc", "/proc", "--dev", "/dev"]);
        command.arg("--size").arg(self.limits.tmp_size.to_string()).args(["--tmpfs", "/tmp"]);
        // The program itself, wherever it lives (a cloudplay binary in a build directory).
        if !program.starts_with("/usr") {
            command.arg("--ro-bind").arg(&program).arg(&program);
        }
        for (path, size) in &self.tmpfs {
            command.arg("--size").arg(size.to_string()).arg("--tmpfs").arg(path);
        }
        for (kind, path) in &self.binds {
            command.arg(kind).arg(path).arg(path);
        }
        for (path, inside) in &self.ro_at {
            command.arg("--ro-bind").arg(path).arg(inside);
        }
        for (name, value) in &self.env {
            command.arg("--setenv").arg(name).arg(value);
        }
        command.arg("--chdir").arg(self.chdir.as_deref().unwrap_or(Path::new("/")));
        command.arg("--").arg(&program).args(args);
        crate::supervise(&mut command);
        let limits = self.limits;
        let cgroup = if limits.memory > 0 { MemoryCgroup::create(limits.memory) } else { None };
        let cgroup_procs = cgroup.as_ref().map(MemoryCgroup::procs_fd);
        // The address-space limit stays as a second line: a huge mapping is refused at once,
        // not only once touched.
        let address_space = limits.memory;
        let mut child_fds: Vec<i32> = inherited.iter().map(AsRawFd::as_raw_fd).collect();
        if let Some(setup) = &egress {
            child_fds.extend([setup.info_child.as_raw_fd(), setup.block_child.as_raw_fd()]);
        }
        // SAFETY: only async-signal-safe calls (fcntl, write, setrlimit) between fork and exec.
        unsafe {
            command.pre_exec(move || {
                for &fd in &child_fds {
                    if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                if let Some(procs) = cgroup_procs {
                    crate::cgroup::join_from_child(procs)?;
                }
                let set = |resource, value: u64| {
                    let limit = libc::rlimit { rlim_cur: value, rlim_max: value };
                    libc::setrlimit(resource, &limit);
                };
                set(libc::RLIMIT_CORE, 0);
                set(libc::RLIMIT_NPROC, limits.processes);
                set(libc::RLIMIT_CPU, limits.cpu_secs);
                set(libc::RLIMIT_FSIZE, limits.file_size);
                set(libc::RLIMIT_NOFILE, limits.open_files);
                if address_space > 0 {
                    set(libc::RLIMIT_AS, address_space);
                }
                Ok(())
            });
        }
        Ok(JailCommand { command, inherited, egress, cgroup })
    }
}

/// A jail's command, ready to start.
#[derive(Debug)]
pub struct JailCommand {
    command: Command,
    inherited: Vec<OwnedFd>,
    egress: Option<EgressSetup>,
    cgroup: Option<MemoryCgroup>,
}

/// What a running jail holds on the host: its memory cgroup and its network's helper.
/// Dropped after the jail's process is reaped, it ends what is left.
#[derive(Debug, Default)]
pub struct JailGuard {
    network: Option<Child>,
    cgroup: Option<MemoryCgroup>,
}

impl JailGuard {
    /// The jail's memory cgroup, where the host could make one.
    pub fn cgroup(&self) -> Option<&MemoryCgroup> {
        self.cgroup.as_ref()
    }
}

impl Drop for JailGuard {
    fn drop(&mut self) {
        if let Some(mut helper) = self.network.take() {
            let _ = helper.kill();
            let _ = helper.wait();
        }
    }
}

impl JailCommand {
    /// The command, to set its standard streams.
    pub fn command_mut(&mut self) -> &mut Command {
        &mut self.command
    }

    /// Starts the jail; with network, the program itself starts only once its egress
    /// rules are in place (and never if they could not be).
    pub fn spawn(self) -> Result<(Child, JailGuard), RuntimeError> {
        let JailCommand { mut command, inherited, egress, cgroup } = self;
        let mut child = command.spawn().map_err(|e| RuntimeError::Io(format!("starting the jail: {e}")))?;
        // The child's copies are its own now; ours go (the network's handshake sees EOF
        // when bwrap closes its end).
        drop(command);
        drop(inherited);
        let mut guard = JailGuard { network: None, cgroup };
        if let Some(setup) = egress {
            match setup.connect() {
                Ok(helper) => guard.network = Some(helper),
                Err(e) => {
                    // SAFETY: our own child's process group, not reaped yet.
                    unsafe { libc::killpg(child.id() as libc::pid_t, libc::SIGKILL) };
                    let _ = child.wait();
                    return Err(e);
                }
            }
        }
        Ok((child, guard))
    }
}

/// The handshake that holds a jail with network until its rules are in place: bwrap
/// tells the sandbox's PID on `info`, and waits on `block` before it runs the program.
#[derive(Debug)]
struct EgressSetup {
    info_child: OwnedFd,
    info: std::fs::File,
    block_child: OwnedFd,
    block: std::fs::File,
    rules: String,
    slirp: PathBuf,
    nft: PathBuf,
}

fn pipe() -> Result<(std::fs::File, OwnedFd), RuntimeError> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two descriptors we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(RuntimeError::Io(format!("pipe: {}", std::io::Error::last_os_error())));
    }
    // SAFETY: both were just created and are owned by nothing else.
    unsafe { Ok((std::fs::File::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1]))) }
}

impl EgressSetup {
    fn prepare(allowed: &[Cidr]) -> Result<EgressSetup, RuntimeError> {
        let missing = |what: &str, package: &str| {
            RuntimeError::Io(format!("a game with network needs {what} (Debian's {package}), not installed"))
        };
        let slirp = crate::find_program(SLIRP4NETNS).ok_or_else(|| missing(SLIRP4NETNS, "slirp4netns"))?;
        let nft = crate::find_program(NFT)
            .or_else(|| crate::find_program("/usr/sbin/nft"))
            .ok_or_else(|| missing(NFT, "nftables"))?;
        let (info, info_child) = pipe()?;
        let (block_read, block_write) = pipe()?;
        Ok(EgressSetup {
            info_child,
            info,
            block_child: block_read.into(),
            block: block_write.into(),
            rules: egress_rules(allowed, &host_addresses()),
            slirp,
            nft,
        })
    }

    /// Waits for the sandbox, starts its user-mode network, writes its rules, lets the
    /// program start. Answers the network's helper, which lives as long as the jail.
    fn connect(self) -> Result<Child, RuntimeError> {
        use std::io::{Read, Write};
        let failed = |what: &str, e: &dyn std::fmt::Display| {
            RuntimeError::Io(format!("the game's network: {what}: {e}"))
        };
        let EgressSetup { info_child, mut info, block_child, mut block, rules, slirp, nft } = self;
        drop((info_child, block_child));
        let deadline = std::time::Instant::now() + NETWORK_SETUP;
        // bwrap writes `{"child-pid": N, …}` once the namespaces exist, then closes it.
        let text = String::from_utf8_lossy(&read_until(&mut info, b'}', deadline)).into_owned();
        let pid: u32 = text
            .split("\"child-pid\":")
            .nth(1)
            .and_then(|rest| rest.trim_start().split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|digits| digits.parse().ok())
            .ok_or_else(|| failed("the sandbox's answer", &text))?;
        let netns = format!("/proc/{pid}/ns/net");
        let (mut ready, ready_child) = pipe()?;
        let ready_fd = ready_child.as_raw_fd();
        let mut helper = Command::new(&slirp);
        helper
            .args([
                "--configure",
                "--mtu=65520",
                "--disable-host-loopback",
                "--enable-sandbox",
                "--enable-seccomp",
            ])
            .arg(format!("--ready-fd={ready_fd}"))
            .args(["--netns-type=path", &netns, "tap0"])
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        crate::supervise(&mut helper);
        // SAFETY: only fcntl between fork and exec.
        unsafe {
            helper.pre_exec(move || {
                if libc::fcntl(ready_fd, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut helper = helper.spawn().map_err(|e| failed("slirp4netns", &e))?;
        drop(ready_child);
        let is_ready = read_until(&mut ready, b'1', deadline).contains(&b'1');
        let fail = |helper: &mut Child, what: &str, detail: String| {
            let _ = helper.kill();
            let _ = helper.wait();
            failed(what, &detail)
        };
        if !is_ready {
            let mut output = String::new();
            let _ = helper.kill();
            if let Some(mut stderr) = helper.stderr.take() {
                let _ = stderr.read_to_string(&mut output);
            }
            let _ = helper.wait();
            return Err(failed("slirp4netns did not start", &output.trim()));
        }
        let mut writer = Command::new(&nft);
        writer
            .arg("-f")
            .arg("-")
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let netns_file = std::fs::File::open(&netns)
            .map_err(|e| fail(&mut helper, "the sandbox's namespace", e.to_string()))?;
        let netns_fd = netns_file.as_raw_fd();
        // SAFETY: setns between fork and exec, on a descriptor the child inherits.
        unsafe {
            writer.pre_exec(move || {
                if libc::setns(netns_fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let output = writer.spawn().and_then(|mut nft| {
            if let Some(mut stdin) = nft.stdin.take() {
                stdin.write_all(rules.as_bytes())?;
            }
            nft.wait_with_output()
        });
        drop(netns_file);
        match output {
            Ok(out) if out.status.success() => {}
            Ok(out) => {
                return Err(fail(
                    &mut helper,
                    "its rules",
                    String::from_utf8_lossy(&out.stderr).trim().into(),
                ));
            }
            Err(e) => return Err(fail(&mut helper, "its rules", e.to_string())),
        }
        block.write_all(b"1").map_err(|e| fail(&mut helper, "starting the program", e.to_string()))?;
        Ok(helper)
    }
}

/// Reads from `file` until `stop` arrives, the writer closes it, or `deadline` passes.
fn read_until(file: &mut std::fs::File, stop: u8, deadline: std::time::Instant) -> Vec<u8> {
    use std::io::Read;
    let mut got = Vec::new();
    let mut chunk = [0u8; 512];
    while !got.contains(&stop) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let mut poll = libc::pollfd { fd: file.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one pollfd of ours, for at most the time left.
        let ready = unsafe { libc::poll(&mut poll, 1, left.as_millis().min(i32::MAX as u128) as i32) };
        if ready <= 0 {
            break;
        }
        match file.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
        }
    }
    got
}

/// Ranges no game reaches unless the operator allows them: loopback, link-local (cloud
/// metadata at 169.254.169.254), private, shared (carrier NAT), benchmarking,
/// documentation, multicast and reserved ones (IANA's special-purpose registries).
const REFUSED_V4: &[&str] = &[
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.0.2.0/24",
    "192.88.99.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "224.0.0.0/3",
];
const REFUSED_V6: &[&str] = &[
    "::/127",
    "::ffff:0:0/96",
    "64:ff9b::/96",
    "100::/64",
    "2001:db8::/32",
    "fc00::/7",
    "fe80::/10",
    "ff00::/8",
];

/// The nftables table a jail's namespace gets: the operator's ranges and the resolver
/// pass, then every refused range and each of the host's own addresses is refused.
pub fn egress_rules(allowed: &[Cidr], host: &[std::net::IpAddr]) -> String {
    let set = |items: &[String]| format!("{{ {} }}", items.join(", "));
    let (allowed4, allowed6): (Vec<String>, Vec<String>) = {
        let (v4, v6): (Vec<&Cidr>, Vec<&Cidr>) = allowed.iter().partition(|c| c.is_ipv4());
        (v4.iter().map(|c| c.to_string()).collect(), v6.iter().map(|c| c.to_string()).collect())
    };
    let mut refused4: Vec<String> = REFUSED_V4.iter().map(|s| s.to_string()).collect();
    let mut refused6: Vec<String> = REFUSED_V6.iter().map(|s| s.to_string()).collect();
    for address in host {
        match address {
            std::net::IpAddr::V4(ip) => refused4.push(ip.to_string()),
            std::net::IpAddr::V6(ip) => refused6.push(ip.to_string()),
        }
    }
    let mut rules = String::from(
        "table inet cloudplay_egress {\n  chain out {\n    type filter hook output priority 0; policy accept;\n    oif \"lo\" accept\n    ip daddr 10.0.2.3 meta l4proto { tcp, udp } th dport 53 accept\n",
    );
    if !allowed4.is_empty() {
        rules += &format!("    ip daddr {} accept\n", set(&allowed4));
    }
    if !allowed6.is_empty() {
        rules += &format!("    ip6 daddr {} accept\n", set(&allowed6));
    }
    rules += &format!("    ip daddr {} reject with icmpx type admin-prohibited\n", set(&refused4));
    rules += &format!("    ip6 daddr {} reject with icmpx type admin-prohibited\n", set(&refused6));
    rules += "  }\n}\n";
    rules
}

/// The addresses of this host's own interfaces (a game may not reach the host by them).
fn host_addresses() -> Vec<std::net::IpAddr> {
    let mut found = Vec::new();
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills a list we walk read-only and free once.
    unsafe {
        if libc::getifaddrs(&mut list) != 0 {
            return found;
        }
        let mut entry = list;
        while !entry.is_null() {
            let address = (*entry).ifa_addr;
            if !address.is_null() {
                match i32::from((*address).sa_family) {
                    libc::AF_INET => {
                        let v4 = &*(address as *const libc::sockaddr_in);
                        found.push(std::net::Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr)).into());
                    }
                    libc::AF_INET6 => {
                        let v6 = &*(address as *const libc::sockaddr_in6);
                        found.push(std::net::Ipv6Addr::from(v6.sin6_addr.s6_addr).into());
                    }
                    _ => {}
                }
            }
            entry = (*entry).ifa_next;
        }
        libc::freeifaddrs(list);
    }
    found.sort();
    found.dedup();
    found
}

/// A memory file holding `bytes`, read from the start (for bwrap's descriptor options).
fn memfd(name: &std::ffi::CStr, bytes: &[u8]) -> Result<OwnedFd, RuntimeError> {
    use std::io::{Seek, Write};
    // SAFETY: memfd_create with a valid name; the descriptor is owned from here on.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(RuntimeError::Io(format!("the jail's files: {}", std::io::Error::last_os_error())));
    }
    // SAFETY: `fd` was just created and is owned by nothing else.
    let mut file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    let written = file.write_all(bytes).and_then(|()| file.rewind());
    written.map_err(|e| RuntimeError::Io(format!("the jail's files: {e}")))?;
    Ok(file.into())
}

/// The jail's system-call filters (seccomp BPF for bwrap's `--add-seccomp-fd`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeccompFilter {
    /// What games never need answers `EPERM`.
    Refused { forbid_links: bool },
    /// `clone3` answers `ENOSYS` (its flags are behind a pointer the filter cannot read;
    /// the C library falls back to `clone`).
    NotImplemented,
}

/// System calls no game needs, refused with `EPERM`.
const REFUSED_SYSCALLS: &[libc::c_long] = &[
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_unshare,
    libc::SYS_setns,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_reboot,
    libc::SYS_acct,
    libc::SYS_quotactl,
    libc::SYS_userfaultfd,
    libc::SYS_open_by_handle_at,
    libc::SYS_name_to_handle_at,
    libc::SYS_fsopen,
    libc::SYS_fsmount,
    libc::SYS_move_mount,
    libc::SYS_open_tree,
    libc::SYS_mount_setattr,
];

/// Making links and nodes, refused where [`Jail::forbid_links`] says so.
#[cfg(target_arch = "x86_64")]
const LINK_SYSCALLS: &[libc::c_long] = &[
    libc::SYS_symlink,
    libc::SYS_symlinkat,
    libc::SYS_link,
    libc::SYS_linkat,
    libc::SYS_mknod,
    libc::SYS_mknodat,
];
#[cfg(not(target_arch = "x86_64"))]
const LINK_SYSCALLS: &[libc::c_long] = &[libc::SYS_symlinkat, libc::SYS_linkat, libc::SYS_mknodat];

/// `clone` flags that make a namespace.
const NAMESPACE_FLAGS: [libc::c_int; 7] = [
    libc::CLONE_NEWUSER,
    libc::CLONE_NEWNS,
    libc::CLONE_NEWNET,
    libc::CLONE_NEWPID,
    libc::CLONE_NEWUTS,
    libc::CLONE_NEWIPC,
    libc::CLONE_NEWCGROUP,
];

impl SeccompFilter {
    /// The filter as BPF for this machine's architecture.
    pub fn program(self) -> Result<BpfProgram, RuntimeError> {
        fn error(e: impl std::fmt::Display) -> RuntimeError {
            RuntimeError::Io(format!("the jail's system-call filter: {e}"))
        }
        let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(error)?;
        let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
        let (errno, syscalls): (i32, Vec<libc::c_long>) = match self {
            SeccompFilter::Refused { forbid_links } => {
                let mut syscalls = REFUSED_SYSCALLS.to_vec();
                if forbid_links {
                    syscalls.extend_from_slice(LINK_SYSCALLS);
                }
                // clone with any namespace flag; plain clones (threads, fork) pass.
                let flagged = NAMESPACE_FLAGS
                    .iter()
                    .map(|&flag| {
                        let flag = flag as u64;
                        let condition = SeccompCondition::new(
                            0,
                            SeccompCmpArgLen::Qword,
                            SeccompCmpOp::MaskedEq(flag),
                            flag,
                        )?;
                        SeccompRule::new(vec![condition])
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(error)?;
                rules.insert(libc::SYS_clone, flagged);
                (libc::EPERM, syscalls)
            }
            SeccompFilter::NotImplemented => (libc::ENOSYS, vec![libc::SYS_clone3]),
        };
        for syscall in syscalls {
            rules.insert(syscall, Vec::new());
        }
        let filter = seccompiler::SeccompFilter::new(
            rules,
            SeccompAction::Allow,
            SeccompAction::Errno(errno as u32),
            arch,
        )
        .map_err(error)?;
        filter.try_into().map_err(error)
    }

    /// The filter in a memory file, as bwrap reads it: `struct sock_filter`s back to back.
    fn memfd(self) -> Result<OwnedFd, RuntimeError> {
        let program = self.program()?;
        let bytes: Vec<u8> = program
            .iter()
            .flat_map(|i| [&i.code.to_ne_bytes()[..], &[i.jt, i.jf], &i.k.to_ne_bytes()[..]].concat())
            .collect();
        memfd(c"cloudplay-seccomp", &bytes)
    }
}

/// How a jailed program ended. `bwrap` passes the program's exit status on, and reports a
/// program killed by signal N as status 128 + N, which this undoes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    Exited(i32),
    Signalled(i32),
    Unknown,
}

impl Ending {
    pub fn of(status: ExitStatus, jailed: bool) -> Ending {
        match (status.code(), status.signal()) {
            (_, Some(signal)) => Ending::Signalled(signal),
            (Some(code), _) if jailed && (129..=128 + 64).contains(&code) => Ending::Signalled(code - 128),
            (Some(code), _) => Ending::Exited(code),
            _ => Ending::Unknown,
        }
    }
}

impl std::fmt::Display for Ending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ending::Exited(code) => write!(f, "exited with status {code}"),
            Ending::Signalled(signal) => write!(f, "was killed by signal {signal}"),
            Ending::Unknown => write!(f, "ended"),
        }
    }
}
