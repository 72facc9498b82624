//! Cloud saves on the host. Before a game starts, the player's newest cloud copy of its
//! in-game save (SRAM) is put in place in the player's save directory, where the game reads
//! it; while the session runs, that file is read back every sync interval and once more
//! after the game has ended (and flushed it), and a change is committed to the control
//! plane ([`SaveSink`]) as the next version of the one it replaces. A commit refused because
//! the player saved elsewhere since ends this session's commits: the newer progress stays
//! the newest, and this session's file stays on the host. At most one sync interval of
//! progress is lost when a host dies (plus the runtime's flush interval).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use cloudplay_proto::runtime::CloudSave;
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;
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

/// Writes `save` to `path` (atomically: a temporary file, then a rename) if its bytes match
/// its checksum.
pub fn put_in_place(path: &Path, save: &CloudSave) -> Result<(), String> {
    let bytes = save.bytes()?;
    if sha256_hex(&bytes) != save.sha256 {
        return Err(format!("cloud save version {} does not match its checksum", save.version));
    }
    let dir = path.parent().ok_or("a save file needs a directory")?;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let temporary = dir.join(format!(".cloud-{}.tmp", std::process::id()));
    std::fs::write(&temporary, &bytes).map_err(|e| format!("{}: {e}", temporary.display()))?;
    std::fs::rename(&temporary, path).map_err(|e| format!("{}: {e}", path.display()))
}

/// What a session starts its sync from: its save file, and the cloud version it holds.
pub struct SyncStart {
    pub session_id: Arc<str>,
    pub path: PathBuf,
    /// The cloud version put in place (and its checksum), if any.
    pub base: Option<(u64, String)>,
    pub interval: Duration,
}

/// Commits the session's save file whenever it changed, every `interval` and once after
/// `ended` (the game has ended and flushed it).
pub async fn keep_in_sync(sink: Arc<dyn SaveSink>, start: SyncStart, ended: oneshot::Receiver<()>) {
    let SyncStart { session_id, path, base, interval } = start;
    let (mut version, mut committed_sha) = match base {
        Some((version, sha)) => (Some(version), Some(sha)),
        None => (None, None),
    };
    let mut ended = std::pin::pin!(ended);
    loop {
        let finished = tokio::select! {
            _ = tokio::time::sleep(interval) => false,
            _ = &mut ended => true,
        };
        let file = path.clone();
        if let Ok(Ok(bytes)) = tokio::task::spawn_blocking(move || std::fs::read(file)).await
            && !bytes.is_empty()
        {
            let sha = sha256_hex(&bytes);
            if committed_sha.as_deref() != Some(sha.as_str()) {
                match sink.commit(&session_id, version, &bytes).await {
                    Ok(committed) => {
                        info!(session = %session_id, version = committed, bytes = bytes.len(), "cloud save committed");
                        version = Some(committed);
                        committed_sha = Some(sha);
                    }
                    Err(CommitError::Refused(why)) => {
                        warn!(session = %session_id, file = %path.display(), %why, "cloud save refused; this session's save stays on this host");
                        return;
                    }
                    Err(CommitError::Failed(why)) => {
                        warn!(session = %session_id, %why, "cloud save failed; trying again");
                    }
                }
            }
        }
        if finished {
            return;
        }
    }
}
