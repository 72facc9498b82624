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
//! `setsid()` or not. Resource limits (processes, CPU time, file size, open files, address
//! space) are set before `bwrap` starts and inherited inside.
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
use std::process::{Command, ExitStatus};
use std::sync::Arc;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompRule, TargetArch,
};

use crate::RuntimeError;

/// The sandbox program (Debian's `bubblewrap`).
pub const BWRAP: &str = "bwrap";

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
    /// Address space of one process, bytes (0 = none).
    pub address_space: u64,
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
            address_space: 0,
            tmp_size: 256 << 20,
        }
    }
}

/// A jail being set up; [`Jail::command`] turns it into the command that runs a program
/// inside it.
#[derive(Debug, Clone)]
pub struct Jail {
    binds: Vec<(&'static str, PathBuf)>,
    env: Vec<(String, OsString)>,
    network: bool,
    limits: JailLimits,
    chdir: Option<PathBuf>,
    forbid_links: bool,
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
        Jail { binds: Vec::new(), env: Vec::new(), network: false, limits, chdir: None, forbid_links: false }
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

    /// Lets the jail use the host's network (off by default).
    pub fn network(&mut self, allowed: bool) -> &mut Jail {
        self.network = allowed;
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
    /// process group, killed with the starting thread) and with the jail's limits.
    pub fn command(
        &self,
        program: &Path,
        args: &[impl AsRef<std::ffi::OsStr>],
    ) -> Result<Command, RuntimeError> {
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
        if self.network {
            command.arg("--share-net");
        }
        command.args([
            "--die-with-parent",
            "--new-session",
            "--cap-drop",
            "ALL",
            "--clearenv",
            "--disable-userns",
        ]);
        // The filters reach bwrap as descriptors it reads; they stay open in the child only
        // (close-on-exec is cleared there), and are closed here with the command.
        let filters = [
            SeccompFilter::Refused { forbid_links: self.forbid_links }.memfd()?,
            SeccompFilter::NotImplemented.memfd()?,
        ];
        for filter in &filters {
            command.arg("--add-seccomp-fd").arg(filter.as_raw_fd().to_string());
        }
        let filters = Arc::new(filters);
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
        for (kind, path) in &self.binds {
            command.arg(kind).arg(path).arg(path);
        }
        for (name, value) in &self.env {
            command.arg("--setenv").arg(name).arg(value);
        }
        command.arg("--chdir").arg(self.chdir.as_deref().unwrap_or(Path::new("/")));
        command.arg("--").arg(&program).args(args);
        crate::supervise(&mut command);
        let limits = self.limits;
        // SAFETY: only async-signal-safe calls (fcntl, setrlimit) between fork and exec.
        unsafe {
            command.pre_exec(move || {
                for filter in filters.iter() {
                    if libc::fcntl(filter.as_raw_fd(), libc::F_SETFD, 0) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
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
                if limits.address_space > 0 {
                    set(libc::RLIMIT_AS, limits.address_space);
                }
                Ok(())
            });
        }
        Ok(command)
    }
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
        use std::io::{Seek, Write};
        let program = self.program()?;
        let bytes: Vec<u8> = program
            .iter()
            .flat_map(|i| [&i.code.to_ne_bytes()[..], &[i.jt, i.jf], &i.k.to_ne_bytes()[..]].concat())
            .collect();
        // SAFETY: memfd_create with a static name; the descriptor is owned from here on.
        let fd = unsafe { libc::memfd_create(c"cloudplay-seccomp".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(RuntimeError::Io(format!("the jail's filter: {}", std::io::Error::last_os_error())));
        }
        // SAFETY: `fd` was just created and is owned by nothing else.
        let mut file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        let written = file.write_all(&bytes).and_then(|()| file.rewind());
        written.map_err(|e| RuntimeError::Io(format!("the jail's filter: {e}")))?;
        Ok(file.into())
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
