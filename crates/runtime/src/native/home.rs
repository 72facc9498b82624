//! A signed-in player's `HOME` for a jailed native game, kept between sessions without the
//! host ever opening a file the game wrote.
//!
//! Inside the jail the home is a tmpfs of the player's quota (`native_home_mb`), its files
//! counted in the jail's memory cgroup too. The host keeps it as one archive in its own
//! save directory, which no jail sees: a small keeper script, jailed with the game, unpacks
//! the archive (handed over as a read-only descriptor) before the program starts, and when
//! the program ends — by itself, or because the host closed the keeper's control pipe —
//! packs the home into a pipe the host reads. The host keeps what it read only if the
//! keeper finished within [`SAVE_GRACE`], the archive is whole and no larger than the
//! limit; otherwise the previous one stays. Progress since the session began is lost if
//! the host itself dies.
//!
//! A home directory an earlier version bound into the jail (`{dir}/` instead of
//! `{dir}.tar`) is copied in once, read-only, by the keeper, and removed once its archive
//! is kept.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::RuntimeError;
use crate::sandbox::Jail;

/// The player's home inside the jail.
pub const JAIL_HOME: &str = "/home/player";
/// Where an earlier version's home directory is seen, read-only, to be copied in.
const LEGACY_INSIDE: &str = "/run/cloudplay-old-home";
/// How long the program and the keeper get to end and pack the home once asked.
pub const SAVE_GRACE: Duration = Duration::from_secs(5);

/// The keeper: `bash -c KEEPER keeper RESTORE_FD OUT_FD CONTROL_FD PROGRAM ARGS…` (bash, not
/// sh: dash redirects only descriptors 0–9). The
/// program gets none of the three descriptors; EOF on the control pipe ends it (TERM,
/// then KILL 2 s later); the home is packed after it ends, and the keeper exits with the
/// program's status.
const KEEPER: &str = r#"restore=$1 out=$2 control=$3
shift 3
cd "$HOME" || exit 125
if [ -n "$restore" ]; then
  tar -x -f "/proc/self/fd/$restore" -C "$HOME" --no-same-owner 2>/dev/null
  eval "exec $restore<&-"
fi
if [ -d /run/cloudplay-old-home ]; then cp -a /run/cloudplay-old-home/. "$HOME"/ 2>/dev/null; fi
eval "\"\$@\" $out>&- $control<&- &"
game=$!
eval "( read -r _ <&$control; kill -TERM $game 2>/dev/null; sleep 2; kill -KILL $game 2>/dev/null ) $out>&- &"
watcher=$!
eval "exec $control<&-"
wait $game
status=$?
kill $watcher 2>/dev/null
tar -c -f "/proc/self/fd/$out" -C "$HOME" . 2>/dev/null
exit $status
"#;

/// A jailed game's kept home, from its start to its archive being kept.
pub struct KeptHome {
    archive: PathBuf,
    legacy: Option<PathBuf>,
    /// Closing it asks the keeper to end the program and pack up.
    control: Option<OwnedFd>,
    /// The packed home as read, `None` when it was over the limit.
    packed: Option<JoinHandle<Option<Vec<u8>>>>,
}

/// The archive of a player's home at `dir`.
pub fn archive_of(dir: &Path) -> PathBuf {
    let mut name = dir.file_name().map(OsString::from).unwrap_or_default();
    name.push(".tar");
    dir.with_file_name(name)
}

impl KeptHome {
    /// Sets `jail` up to unpack the player's home kept for `dir` into its bounded home
    /// and pack it at the end; answers the command (program and arguments) that runs
    /// `command` through the keeper.
    pub fn prepare(
        dir: &Path,
        quota: u64,
        jail: &mut Jail,
        command: &[String],
    ) -> Result<(KeptHome, Vec<OsString>), RuntimeError> {
        let io = |what: &str, e: std::io::Error| RuntimeError::Io(format!("the player's home: {what}: {e}"));
        let archive = archive_of(dir);
        let restore =
            match std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(&archive) {
                Ok(file) => Some(jail.pass(file.into())),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(io("its archive", e)),
            };
        let legacy = (restore.is_none() && dir.symlink_metadata().is_ok_and(|m| m.is_dir()))
            .then(|| dir.to_path_buf());
        if let Some(legacy) = &legacy {
            jail.read_only_at(legacy, Path::new(LEGACY_INSIDE))?;
        }
        let (out_read, out_write) = std::io::pipe().map_err(|e| io("a pipe", e))?;
        let (control_read, control_write) = std::io::pipe().map_err(|e| io("a pipe", e))?;
        let out = jail.pass(out_write.into());
        let control = jail.pass(control_read.into());
        // Tar's headers and padding come on top of the files themselves.
        let limit = quota.saturating_mul(2).saturating_add(1 << 20);
        let packed = std::thread::Builder::new()
            .name("native-home".into())
            .spawn(move || read_at_most(out_read, limit))
            .map_err(|e| io("a thread", e))?;
        let mut args: Vec<OsString> = vec!["-c".into(), KEEPER.into(), "keeper".into()];
        args.push(restore.map(|fd| fd.to_string()).unwrap_or_default().into());
        args.push(out.to_string().into());
        args.push(control.to_string().into());
        args.extend(command.iter().map(OsString::from));
        let kept = KeptHome { archive, legacy, control: Some(control_write.into()), packed: Some(packed) };
        Ok((kept, args))
    }

    /// Asks the keeper to end the program and pack the home, waits for the jail to end
    /// (`ended`) for up to [`SAVE_GRACE`], and keeps the archive if it came whole.
    pub fn finish(&mut self, mut ended: impl FnMut() -> bool) {
        drop(self.control.take());
        let Some(packed) = self.packed.take() else { return };
        let deadline = Instant::now() + SAVE_GRACE;
        while !ended() {
            if Instant::now() >= deadline {
                warn!(archive = %self.archive.display(), "the game's home was not packed in time: the previous one is kept");
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let bytes = match packed.join() {
            Ok(Some(bytes)) if is_whole_archive(&bytes) => bytes,
            Ok(Some(_)) => {
                warn!(archive = %self.archive.display(), "the game's home came back incomplete: the previous one is kept");
                return;
            }
            _ => {
                warn!(archive = %self.archive.display(), "the game's home is over its limit: the previous one is kept");
                return;
            }
        };
        match keep_durably(&self.archive, &bytes) {
            Ok(()) => {
                info!(archive = %self.archive.display(), bytes = bytes.len(), "the player's home is kept");
                if let Some(legacy) = self.legacy.take() {
                    // Symlink-safe: links inside are removed, never followed.
                    let _ = std::fs::remove_dir_all(legacy);
                }
            }
            Err(e) => {
                warn!(archive = %self.archive.display(), error = %e, "the player's home could not be kept")
            }
        }
    }
}

/// Everything `pipe` carries, or `None` past `limit` bytes (the rest is read and dropped
/// so the writer is never stuck).
fn read_at_most(mut pipe: impl Read, limit: u64) -> Option<Vec<u8>> {
    let mut bytes = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    let mut over = false;
    loop {
        match pipe.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) if !over && (bytes.len() + n) as u64 <= limit => bytes.extend_from_slice(&chunk[..n]),
            Ok(_) => {
                over = true;
                bytes = Vec::new();
            }
        }
    }
    (!over).then_some(bytes)
}

/// A tar archive ends with two zero blocks (and is padded with zeros to its record size);
/// one cut short by a killed packer does not.
fn is_whole_archive(bytes: &[u8]) -> bool {
    bytes.len() >= 1024
        && bytes.len().is_multiple_of(512)
        && bytes[bytes.len() - 1024..].iter().all(|&b| b == 0)
}

/// Writes `bytes` to `path` under an unpredictable temporary name, synced, renamed into
/// place, the directory synced.
fn keep_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let temporary = dir.join(format!(".{name}.{:016x}.tmp", rand::random::<u64>()));
    let written = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .mode(0o600)
            .open(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_whole_archives_within_the_limit_are_kept() {
        assert!(is_whole_archive(&[0u8; 10240]));
        let mut cut = vec![0u8; 10240];
        cut[9500] = 1;
        assert!(!is_whole_archive(&cut), "data in the closing blocks");
        assert!(!is_whole_archive(&[0u8; 1000]), "not whole blocks");
        assert_eq!(read_at_most(&[7u8; 100][..], 100), Some(vec![7u8; 100]));
        assert_eq!(read_at_most(&[7u8; 101][..], 100), None);
        assert_eq!(archive_of(Path::new("/s/t/u/native/supertux")), Path::new("/s/t/u/native/supertux.tar"));
    }
}
