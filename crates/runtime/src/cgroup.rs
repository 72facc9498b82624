//! A memory cgroup around each jail: one limit for everything a game holds in memory —
//! its processes, the files in its tmpfs directories, and the kernel's objects for them
//! (an inode and a directory entry per file), so a game that floods its `/tmp` with empty
//! files runs into its own limit, not the machine's.
//!
//! The host makes the jail's group under its own: cgroup v1's memory hierarchy as it is
//! (a container usually gets its own writable subtree), or cgroup v2 where the host's group
//! lets it (`Delegate=yes` under systemd): the host then moves itself into a leaf
//! `cloudplay-host` and turns the memory controller on for its children, as container
//! runtimes do. Where neither can be written, [`MemoryCgroup::create`] answers `None` and
//! the jail falls back to an address-space limit.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tracing::{debug, warn};

const ROOT: &str = "/sys/fs/cgroup";
const PREFIX: &str = "cloudplay-game-";

/// Where this host makes its jails' groups, found once.
#[derive(Debug, Clone)]
enum Hierarchy {
    V1(PathBuf),
    V2(PathBuf),
}

/// One jail's memory group; removed (its processes killed first) when dropped.
#[derive(Debug)]
pub struct MemoryCgroup {
    dir: PathBuf,
    procs: File,
}

fn hierarchy() -> Option<&'static Hierarchy> {
    static FOUND: OnceLock<Option<Hierarchy>> = OnceLock::new();
    FOUND
        .get_or_init(|| {
            let found = find_hierarchy(&std::fs::read_to_string("/proc/self/cgroup").ok()?);
            match &found {
                Some(h) => debug!(hierarchy = ?h, "jails get memory cgroups"),
                None => warn!("no writable memory cgroup: jails fall back to an address-space limit"),
            }
            if let Some(Hierarchy::V1(dir) | Hierarchy::V2(dir)) = &found {
                sweep_stale(dir);
            }
            found
        })
        .as_ref()
}

/// The memory hierarchy's directory of this process, from `/proc/self/cgroup`.
fn find_hierarchy(own: &str) -> Option<Hierarchy> {
    for line in own.lines() {
        let mut fields = line.splitn(3, ':');
        let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        let path = path.trim_start_matches('/');
        if controllers.split(',').any(|c| c == "memory") {
            let dir = Path::new(ROOT).join("memory").join(path);
            if dir.join("memory.limit_in_bytes").is_file() && can_make_children(&dir) {
                return Some(Hierarchy::V1(dir));
            }
        }
    }
    let path = own.lines().find_map(|l| l.strip_prefix("0::"))?.trim_start_matches('/');
    let dir = Path::new(ROOT).join(path);
    let controllers = std::fs::read_to_string(dir.join("cgroup.controllers")).ok()?;
    if !controllers.split_whitespace().any(|c| c == "memory") {
        return None;
    }
    let enabled = |dir: &Path| {
        std::fs::read_to_string(dir.join("cgroup.subtree_control"))
            .is_ok_and(|s| s.split_whitespace().any(|c| c == "memory"))
    };
    if enabled(&dir) {
        return can_make_children(&dir).then_some(Hierarchy::V2(dir));
    }
    // A group with processes cannot hand controllers to children: the host moves itself
    // into a leaf first.
    let leaf = dir.join("cloudplay-host");
    let moved = std::fs::create_dir_all(&leaf)
        .and_then(|()| std::fs::write(leaf.join("cgroup.procs"), std::process::id().to_string()))
        .and_then(|()| std::fs::write(dir.join("cgroup.subtree_control"), "+memory"));
    match moved {
        Ok(()) if enabled(&dir) => Some(Hierarchy::V2(dir)),
        _ => None,
    }
}

fn can_make_children(dir: &Path) -> bool {
    let probe = dir.join(format!("{PREFIX}probe-{}", std::process::id()));
    let made = std::fs::create_dir(&probe).is_ok();
    if made {
        let _ = std::fs::remove_dir(&probe);
    }
    made
}

/// Groups an earlier host process left (it was killed): removing fails while one still
/// has processes, so only empty ones go.
fn sweep_stale(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(PREFIX) {
            let _ = std::fs::remove_dir(entry.path());
        }
    }
}

fn write_value(path: &Path, value: &str) -> std::io::Result<()> {
    OpenOptions::new().write(true).open(path)?.write_all(value.as_bytes())
}

impl MemoryCgroup {
    /// A new group limited to `limit` bytes (swap included where the kernel counts it),
    /// or `None` where this host cannot make one.
    pub fn create(limit: u64) -> Option<MemoryCgroup> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let hierarchy = hierarchy()?;
        let (parent, limits): (&Path, &[&str]) = match hierarchy {
            Hierarchy::V1(dir) => (dir, &["memory.limit_in_bytes", "memory.memsw.limit_in_bytes"]),
            Hierarchy::V2(dir) => (dir, &["memory.max"]),
        };
        let name = format!("{PREFIX}{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let dir = parent.join(name);
        let made = (|| {
            std::fs::create_dir(&dir)?;
            for (i, file) in limits.iter().enumerate() {
                let path = dir.join(file);
                // The memory limit must hold; memory+swap exists only with swap accounting.
                match write_value(&path, &limit.to_string()) {
                    Err(e) if i > 0 && !path.exists() => debug!(error = %e, "no {file}"),
                    other => other?,
                }
            }
            if let Hierarchy::V2(_) = hierarchy {
                let _ = write_value(&dir.join("memory.swap.max"), "0");
                // The kernel's OOM killer takes the whole group at once, not one process.
                let _ = write_value(&dir.join("memory.oom.group"), "1");
            }
            OpenOptions::new().write(true).open(dir.join("cgroup.procs"))
        })();
        match made {
            Ok(procs) => Some(MemoryCgroup { dir, procs }),
            Err(e) => {
                warn!(dir = %dir.display(), error = %e, "could not make a jail's memory cgroup");
                let _ = std::fs::remove_dir(&dir);
                None
            }
        }
    }

    /// The group's `cgroup.procs`: a child writes `0` to it between fork and exec to join
    /// ([`join_from_child`]).
    pub fn procs_fd(&self) -> RawFd {
        self.procs.as_raw_fd()
    }

    /// The group's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// How much the group's processes and files hold now, bytes.
    pub fn usage(&self) -> Option<u64> {
        ["memory.usage_in_bytes", "memory.current"]
            .iter()
            .find_map(|f| std::fs::read_to_string(self.dir.join(f)).ok())
            .and_then(|s| s.trim().parse().ok())
    }

    fn pids(&self) -> Vec<libc::pid_t> {
        std::fs::read_to_string(self.dir.join("cgroup.procs"))
            .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }
}

/// Moves the calling process into the group whose `cgroup.procs` is `fd`. Only an
/// async-signal-safe `write`: for `pre_exec`.
pub fn join_from_child(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: writing two bytes from a static buffer to a descriptor we own.
    if unsafe { libc::write(fd, c"0".as_ptr().cast(), 1) } == 1 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        // Anything left (the jail's processes die with its PID namespace, but not at once).
        let _ = write_value(&self.dir.join("cgroup.kill"), "1");
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            for pid in self.pids() {
                // SAFETY: signalling a process of the group; at worst it is already gone.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            match std::fs::remove_dir(&self.dir) {
                Ok(()) => return,
                Err(e) if Instant::now() >= deadline => {
                    warn!(dir = %self.dir.display(), error = %e, "a jail's memory cgroup was left behind");
                    return;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }
}
