//! A lock per sync so two runs can never interleave their writes to one state.
//!
//! The lock is an object created with `PutMode::Create` (atomic on a local folder and on
//! object stores). A lock whose owner process is gone (same host) or that is older than
//! `lock_stale_secs` is taken over, with a warning.

use std::sync::Arc;

use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};

use super::StateError;
use crate::error::{Error, Result};

/// What `lock.json` holds: which run took the lock, where and when.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LockInfo {
    /// The run holding the lock.
    pub run_id: String,
    /// The command that took it.
    pub command: String,
    /// The holder's process id on its host.
    pub pid: u32,
    /// The holder's host name.
    pub host: String,
    /// When the lock was taken, RFC 3339 in UTC.
    pub acquired_at: String,
}

/// A held lock; call [`Lock::release`] when done (a crash leaves it to be taken over).
#[derive(Debug)]
pub struct Lock {
    store: Arc<dyn ObjectStore>,
    path: ObjPath,
    released: bool,
}

/// This machine's host name, or `unknown` when it cannot be read.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".to_string())
}

/// Whether process `pid` of this host (and PID namespace) still runs; true where it cannot
/// be told.
pub(crate) fn process_alive(pid: u32) -> bool {
    if cfg!(target_os = "linux") {
        std::path::Path::new(&format!("/proc/{pid}")).exists()
    } else {
        // Without a portable check, rely on the age rule alone.
        true
    }
}

impl Lock {
    /// Takes the lock at `path` for `run_id` running `command`, taking over one whose
    /// process is gone or that is older than `stale_secs` seconds; fails while another run
    /// holds it.
    pub async fn acquire(
        store: Arc<dyn ObjectStore>,
        path: ObjPath,
        sync: &str,
        run_id: &str,
        command: &str,
        stale_secs: u64,
    ) -> Result<Lock> {
        let info = LockInfo {
            run_id: run_id.to_string(),
            command: command.to_string(),
            pid: std::process::id(),
            host: hostname(),
            acquired_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        };
        let body = serde_json::to_vec_pretty(&info)
            .map_err(|e| Error::Internal(format!("lock encode: {e}")))?;
        for _attempt in 0..3 {
            let opts = PutOptions {
                mode: PutMode::Create,
                ..Default::default()
            };
            match store
                .put_opts(&path, PutPayload::from(body.clone()), opts)
                .await
            {
                Ok(_) => {
                    return Ok(Lock {
                        store,
                        path,
                        released: false,
                    });
                }
                Err(object_store::Error::AlreadyExists { .. }) => {}
                Err(e) => {
                    return Err(Error::from(StateError::store(
                        format!("state: cannot create lock {path}"),
                        e,
                    )));
                }
            }
            // Held: decide whether its owner is still there.
            let existing = match store.get(&path).await {
                Ok(r) => r.bytes().await.ok(),
                Err(object_store::Error::NotFound { .. }) => continue,
                Err(e) => {
                    return Err(Error::from(StateError::store(
                        format!("state: cannot read lock {path}"),
                        e,
                    )));
                }
            };
            let holder: Option<LockInfo> = existing.and_then(|b| serde_json::from_slice(&b).ok());
            let (stale, why) = match &holder {
                None => (true, "unreadable lock file".to_string()),
                Some(h) => {
                    let age = chrono::DateTime::parse_from_rfc3339(&h.acquired_at)
                        .map(|t| (chrono::Utc::now() - t.with_timezone(&chrono::Utc)).num_seconds())
                        .unwrap_or(i64::MAX);
                    if h.host == info.host && !process_alive(h.pid) {
                        (true, format!("its owner (pid {}) is gone", h.pid))
                    } else if age > stale_secs as i64 {
                        (
                            true,
                            format!("it is {age}s old (lock_stale_secs = {stale_secs})"),
                        )
                    } else {
                        (false, String::new())
                    }
                }
            };
            if !stale {
                let h = holder.as_ref();
                return Err(Error::from(StateError::Locked(format!(
                    "sync {sync} is locked by another run (run {}, {} by pid {} on {} since {}); try again when it ends",
                    h.map_or("?", |h| h.run_id.as_str()),
                    h.map_or("?", |h| h.command.as_str()),
                    h.map_or(0, |h| h.pid),
                    h.map_or("?", |h| h.host.as_str()),
                    h.map_or("?", |h| h.acquired_at.as_str()),
                ))));
            }
            tracing::warn!(lock = %path, reason = %why, "taking over a stale lock");
            match store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => {
                    return Err(Error::from(StateError::store(
                        format!("state: cannot remove stale lock {path}"),
                        e,
                    )));
                }
            }
        }
        Err(Error::from(StateError::Locked(format!(
            "sync {sync}: could not take the lock {path}; another run keeps taking it"
        ))))
    }

    /// Removes the lock; one already gone is fine.
    pub async fn release(mut self) -> Result<()> {
        self.released = true;
        match self.store.delete(&self.path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(Error::from(StateError::store(
                format!("state: cannot remove lock {}", self.path),
                e,
            ))),
        }
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        if !self.released {
            tracing::debug!(lock = %self.path, "lock dropped without release; the next run takes it over");
        }
    }
}

impl super::State {
    /// Takes this sync's lock (`lock.json`) for `run_id` running `command`; a lock older
    /// than `stale_secs` seconds, or whose process is gone, is taken over.
    pub async fn lock(&self, run_id: &str, command: &str, stale_secs: u64) -> Result<Lock> {
        Lock::acquire(
            Arc::clone(&self.store),
            self.path("lock.json"),
            &self.sync,
            run_id,
            command,
            stale_secs,
        )
        .await
    }
}
