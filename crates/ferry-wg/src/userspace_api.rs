//! The standard UAPI socket (`/var/run/wireguard/NAME.sock`) for an in-process boringtun
//! device run in file-descriptor mode.
//!
//! Why: when boringtun serves the socket itself it also registers SIGINT and SIGTERM on
//! a signalfd and exits its workers on them, racing the host program's own handlers for
//! the signal (a `kill` of the server could be swallowed by half of the device). In fd
//! mode it registers no signals and no socket; this proxy serves the socket so `wg show`
//! works, forwarding one request at a time over the device's descriptor.

use crate::error::WgError;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use zeroize::Zeroizing;

/// Largest request or reply forwarded (a few thousand peers fit easily).
const MAX_MESSAGE: usize = 64 << 20;

/// The proxy runs on plain threads, not on the caller's async runtime: a caller that
/// blocks its runtime while `wg show` (or our own client) talks to the socket must not
/// deadlock.
pub(crate) struct ApiProxy {
    path: PathBuf,
    stop: Arc<AtomicBool>,
}

impl Drop for ApiProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag, then remove the socket.
        let _ = UnixStream::connect(&self.path);
        let _ = std::fs::remove_file(&self.path);
    }
}

type Backend = Arc<Mutex<BufReader<UnixStream>>>;

/// Serves `path`, forwarding to the device's end of the socket pair `ours`.
pub(crate) fn serve(path: &Path, ours: UnixStream) -> Result<ApiProxy, WgError> {
    let io = |what: &str, e| WgError::io(format!("{what} {}", path.display()), e);
    let backend: Backend = Arc::new(Mutex::new(BufReader::new(ours)));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| io("creating the directory of", e))?;
    }
    let _ = std::fs::remove_file(path); // stale: the caller checked nothing answers on it
    let listener = UnixListener::bind(path).map_err(|e| io("binding", e))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|e| io("restricting", e))?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    std::thread::Builder::new()
        .name("wg-uapi-proxy".into())
        .spawn(move || {
            for conn in listener.incoming() {
                if flag.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let backend = backend.clone();
                let _ = std::thread::Builder::new().name("wg-uapi-conn".into()).spawn(move || {
                    if let Err(e) = handle(conn, &backend) {
                        tracing::debug!(error = %e, "UAPI client connection ended with an error");
                    }
                });
            }
        })
        .map_err(|e| io("starting the UAPI proxy for", e))?;
    Ok(ApiProxy { path: path.to_path_buf(), stop })
}

/// Reads lines up to and including the first empty line; false at end of stream.
fn read_message(r: &mut impl BufRead, out: &mut Zeroizing<String>) -> std::io::Result<bool> {
    loop {
        let before = out.len();
        if r.read_line(out)? == 0 {
            return Ok(false);
        }
        if &out[before..] == "\n" {
            return Ok(true);
        }
        if out.len() > MAX_MESSAGE {
            return Err(std::io::Error::other("UAPI message too large"));
        }
    }
}

fn handle(conn: UnixStream, backend: &Backend) -> std::io::Result<()> {
    conn.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
    let mut w = conn.try_clone()?;
    let mut r = BufReader::new(conn);
    loop {
        let mut request = Zeroizing::new(String::new());
        if !read_message(&mut r, &mut request)? {
            return Ok(());
        }
        // boringtun reads `get=1` as one line: the blank line after it would reach its
        // next read as an empty (invalid) command, so it is not forwarded.
        let forward: &str = match request.lines().next() {
            Some("get=1") => "get=1\n",
            Some("set=1") => &request,
            _ => {
                w.write_all(b"errno=22\n\n")?;
                continue;
            }
        };
        let mut reply = Zeroizing::new(String::new());
        {
            let mut device = backend.lock().unwrap_or_else(|p| p.into_inner());
            device.get_mut().write_all(forward.as_bytes())?;
            if !read_message(&mut *device, &mut reply)? {
                return Err(std::io::Error::other("the device closed its UAPI descriptor"));
            }
        }
        w.write_all(reply.as_bytes())?;
    }
}
