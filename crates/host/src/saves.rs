//! In-game saves on the host. Before a game starts, the player's newest cloud copy of its
//! in-game save (SRAM) — or the host's own copy when there is none — is handed to the game
//! ([`cloudplay_game::Game::restore_in_game_save`]); while the session runs, the session
//! reads the game's save every sync interval and once more as it ends, and hands it here:
//! a change is written to the host's copy and committed to the control plane
//! ([`SaveSink`]) as the next version of the one it replaces. Saves cross the jail only
//! through the worker's pipe: the host's copies live in a directory no game code can write,
//! so the host never opens a file a game made or linked. A commit refused because
//! the player saved elsewhere since ends this session's commits: the newer progress stays
//! the newest, and this session's file stays on the host. At most one sync interval of
//! progress is lost when a host dies (plus the runtime's flush interval).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use cloudplay_proto::runtime::CloudSave;
use cloudplay_proto::worker::MAX_SAVE_RAM;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tracing::{info, warn};

/// How often a session's in-game save is read back and committed when it changed.
pub const SAVE_SYNC_INTERVAL: Duration = Duration::from_secs(20);

/// Why a commit did not happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommitError {
    /// Refused for good (the player saved elsewhere since, or the quota is full): stop.
    Refused(String),
    /// Failed this time (the control plane is unreachable): try again later.
    Failed(String),
}

/// Where a host commits saves: the control plane, in this process or across the fleet.
pub trait SaveSink: Send + Sync {
    /// Commits `bytes` as the next version after `base_version` of the in-game save of
    /// session `session_id`; answers the new version.
    fn commit<'a>(
        &'a self,
        session_id: &'a str,
        base_version: Option<u64>,
        bytes: &'a [u8],
    ) -> Pin<Box<dyn Future<Output = Result<u64, CommitError>> + Send + 'a>>;
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads the host's own copy of an in-game save: a regular file of at most
/// [`MAX_SAVE_RAM`] bytes, opened without following a link (save directories of older
/// versions were writable by game code, which could have left one there).
pub fn read_kept(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    let metadata = file.metadata()?;
    if !metadata.is_file() || metadata.len() > MAX_SAVE_RAM as u64 {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "not an in-game save"));
    }
    let mut bytes = Vec::with_capacity(metadata.len() as usize);
    file.take(MAX_SAVE_RAM as u64 + 1).read_to_end(&mut bytes)?;
    if bytes.len() > MAX_SAVE_RAM {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "not an in-game save"));
    }
    Ok(bytes)
}

/// Replaces `path` with `bytes` so that a crash or power loss leaves the old file or the
/// new one, never a torn one: a temporary file of this writer's own (two sessions of one
/// player may save the same game at once) under an unpredictable name, created
/// exclusively, synced, renamed over, and the rename synced.
pub fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().ok_or_else(|| std::io::Error::other("a save file needs a directory"))?;
    std::fs::create_dir_all(dir)?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("save");
    let temporary = dir.join(format!(".{name}.{}-{:016x}.tmp", std::process::id(), rand::random::<u64>()));
    let written = (|| {
        let mut file = std::fs::OpenOptions::new().write(true).create_new(true).open(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    written?;
    std::fs::File::open(dir)?.sync_all()
}

/// The in-game save a session starts with: the launch's cloud save when its bytes match
/// its checksum, else the host's own copy from an earlier session here.
pub fn starting_save(path: &Path, cloud: Option<&CloudSave>) -> Option<Vec<u8>> {
    if let Some(save) = cloud {
        match save.bytes() {
            Ok(bytes) if sha256_hex(&bytes) == save.sha256 => return Some(bytes),
            _ => warn!(version = save.version, "the cloud save does not match its checksum; not used"),
        }
    }
    read_kept(path).ok().filter(|bytes| !bytes.is_empty())
}

/// Where a session's in-game saves are kept: the host's own file, and the cloud version
/// the session started from.
pub struct SyncStart {
    pub session_id: Arc<str>,
    /// The host's copy, in a directory no game code can write.
    pub path: PathBuf,
    /// The cloud version the session started from (and its checksum), if any.
    pub base: Option<(u64, String)>,
}

/// Keeps each in-game save the session hands over (every sync interval, and once as the
/// game ends) that differs from the last: written to the host's file, and committed to
/// `sink` when there is one. Returns once the session has gone.
pub async fn keep_in_sync(
    sink: Option<Arc<dyn SaveSink>>,
    start: SyncStart,
    mut saves: mpsc::Receiver<Vec<u8>>,
) {
    let SyncStart { session_id, path, base } = start;
    let (mut version, mut committed_sha) = base.map_or((None, None), |(v, sha)| (Some(v), Some(sha)));
    let mut written_sha = None;
    let mut sink = sink;
    while let Some(bytes) = saves.recv().await {
        if bytes.is_empty() || bytes.len() > MAX_SAVE_RAM {
            continue;
        }
        let sha = sha256_hex(&bytes);
        if written_sha.as_deref() != Some(sha.as_str()) {
            let (file, data) = (path.clone(), bytes.clone());
            match tokio::task::spawn_blocking(move || write_durably(&file, &data)).await {
                Ok(Ok(())) => written_sha = Some(sha.clone()),
                Ok(Err(e)) => {
                    warn!(session = %session_id, error = %e, "could not keep the in-game save on this host")
                }
                Err(_) => {}
            }
        }
        let Some(to) = &sink else { continue };
        if committed_sha.as_deref() == Some(sha.as_str()) {
            continue;
        }
        match to.commit(&session_id, version, &bytes).await {
            Ok(committed) => {
                info!(session = %session_id, version = committed, bytes = bytes.len(), "cloud save committed");
                version = Some(committed);
                committed_sha = Some(sha);
            }
            Err(CommitError::Refused(why)) => {
                warn!(session = %session_id, %why, "cloud save refused; this session's save stays on this host");
                sink = None;
            }
            Err(CommitError::Failed(why)) => {
                warn!(session = %session_id, %why, "cloud save failed; trying again with the next read");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("cloudplay-save-{:016x}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn saves_from_writers_side_by_side_never_tear_or_leave_litter() {
        let dir = scratch();
        let path = dir.join("game.srm");
        // Two sessions of one player saving the same game at once: each write lands whole.
        std::thread::scope(|scope| {
            for byte in [1u8, 2] {
                let path = &path;
                scope.spawn(move || {
                    for _ in 0..50 {
                        write_durably(path, &vec![byte; 8192]).unwrap();
                    }
                });
            }
        });
        let saved = std::fs::read(&path).unwrap();
        assert!(saved.len() == 8192 && saved.iter().all(|&b| b == saved[0]), "one writer's save, whole");
        let names: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["game.srm"], "no temporary files left behind");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_kept_save_is_never_read_through_a_link_nor_from_a_special_file() {
        let dir = scratch();
        let secret = dir.join("secret");
        std::fs::write(&secret, b"CLOUDPLAY_TICKET_KEY=...").unwrap();
        let link = dir.join("game.srm");
        std::os::unix::fs::symlink(&secret, &link).unwrap();
        assert!(read_kept(&link).is_err(), "a link is not followed");
        assert!(starting_save(&link, None).is_none());
        std::os::unix::fs::symlink("/proc/self/environ", dir.join("environ.srm")).unwrap();
        assert!(read_kept(&dir.join("environ.srm")).is_err());
        let fifo = dir.join("fifo.srm");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        assert!(read_kept(&fifo).is_err(), "a FIFO is refused without blocking");
        std::fs::write(dir.join("big.srm"), vec![0u8; MAX_SAVE_RAM + 1]).unwrap();
        assert!(read_kept(&dir.join("big.srm")).is_err(), "larger than any save");
        // Writing over a planted link replaces the link; its target is untouched.
        write_durably(&link, b"progress").unwrap();
        assert_eq!(std::fs::read(&secret).unwrap(), b"CLOUDPLAY_TICKET_KEY=...");
        assert_eq!(read_kept(&link).unwrap(), b"progress");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_cloud_save_that_fails_its_checksum_gives_way_to_the_kept_one() {
        let dir = scratch();
        let path = dir.join("game.srm");
        std::fs::write(&path, b"kept").unwrap();
        let good = CloudSave::new(3, sha256_hex(b"cloud"), b"cloud");
        assert_eq!(starting_save(&path, Some(&good)).unwrap(), b"cloud");
        let bad = CloudSave::new(3, sha256_hex(b"other"), b"cloud");
        assert_eq!(starting_save(&path, Some(&bad)).unwrap(), b"kept");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
