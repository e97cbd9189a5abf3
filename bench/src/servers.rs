//! The processes under test, each started fresh on loopback: Corral (this binary
//! re-executed as `serve-corral`, on a new data dir), the bare reference handler (this
//! binary as `reference`), and nginx when it is installed. CPU time is read from /proc.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

use crate::load::{Conn, get};

/// The admin account `serve-corral --admin` creates before serving.
pub const ADMIN: (&str, &str) = ("benchadmin", "bench-password");

/// A server process the bench started; killed when dropped.
pub struct Server {
    pub addr: SocketAddr,
    child: Child,
    pub data_dir: Option<tempfile::TempDir>,
}

impl Server {
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// CPU seconds used so far by the process and its children (nginx workers).
    pub fn cpu_seconds(&self) -> f64 {
        self.pid().map_or(0.0, process_tree_cpu)
    }

    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            // SIGTERM first, so Corral shuts down in order.
            let _ = std::process::Command::new("kill")
                .arg(pid.to_string())
                .status();
        }
        if tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

fn free_port() -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?)
}

/// Waits until `path` answers 200.
async fn wait_ready(addr: SocketAddr, path: &str, child: &mut Child) -> anyhow::Result<()> {
    // Long enough for Corral to fill its random sample from millions of seeded rows.
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("the server exited during start-up: {status}");
        }
        let mut conn = Conn::new(addr);
        if let Ok(r) = conn.send(get(addr, path)).await
            && r.status() == 200
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{addr}{path} never answered 200");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts Corral on a fresh data dir with an admin account, with `env` (CORRAL_* settings)
/// on top. Rate limits are off (every request comes from one address, so the buckets of
/// one client would be measured) unless `BENCH_RATE_LIMITS=on`; then their 429s count as
/// errors.
pub async fn corral(env: &[(&str, String)]) -> anyhow::Result<Server> {
    corral_in(tempfile::TempDir::new()?, env).await
}

/// Like [`corral`], on a data dir prepared already (seeded, say).
pub async fn corral_in(dir: tempfile::TempDir, env: &[(&str, String)]) -> anyhow::Result<Server> {
    let addr = free_port()?;
    let mut command = Command::new(std::env::current_exe()?);
    command
        .arg("serve-corral")
        .arg("--data-dir")
        .arg(dir.path())
        .arg("--bind")
        .arg(addr.to_string())
        .env("CORRAL_LOG__FILTER", "warn")
        // No background variant making in the measurements, whatever the hour.
        .env("CORRAL_OPTIMIZER__WINDOW", "never")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    if std::env::var("BENCH_RATE_LIMITS").as_deref() != Ok("on") {
        command.env("CORRAL_RATE_LIMITS__ENABLED", "false");
    }
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command.spawn().context("start corral")?;
    wait_ready(addr, "/readyz", &mut child).await?;
    Ok(Server {
        addr,
        child,
        data_dir: Some(dir),
    })
}

/// Starts the bare axum handler that answers every GET with the bytes in `body_file`.
pub async fn reference(body_file: &Path, content_type: &str) -> anyhow::Result<Server> {
    let addr = free_port()?;
    let mut child = Command::new(std::env::current_exe()?)
        .arg("reference")
        .arg("--bind")
        .arg(addr.to_string())
        .arg("--body-file")
        .arg(body_file)
        .arg("--content-type")
        .arg(content_type)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("start the reference server")?;
    wait_ready(addr, "/", &mut child).await?;
    Ok(Server {
        addr,
        child,
        data_dir: None,
    })
}

/// Where nginx is, if installed.
pub fn nginx_binary() -> Option<PathBuf> {
    ["/usr/sbin/nginx", "/usr/bin/nginx", "/usr/local/sbin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// Starts nginx serving `images_dir` under the same URLs as Corral's `/i/{name}`, with
/// as many workers as cores.
pub async fn nginx(binary: &Path, images_dir: &Path, work: &Path) -> anyhow::Result<Server> {
    let addr = free_port()?;
    // Run as root, nginx hands its workers to `nobody`, who cannot read a private temp
    // dir; keep them as the user the bench runs as.
    let user = if running_as_root() {
        "user root root;\n"
    } else {
        ""
    };
    let conf = format!(
        r#"{user}worker_processes auto;
daemon off;
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    open_file_cache max=1000 inactive=60s;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_requests 1000000;
    types {{ image/png png; image/jpeg jpg; image/gif gif; image/webp webp; }}
    client_body_temp_path {work}/body;
    proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
    server {{
        listen {addr};
        root {images};
        location = /ready {{ return 200; }}
        location ~ "^/i/(([0-9a-f]{{2}})([0-9a-f]{{2}})[0-9a-f]{{36}}\.(png|jpg|gif|webp))$" {{
            add_header Cache-Control "public, max-age=31536000, immutable";
            try_files /$2/$3/$1 =404;
        }}
        # The variants Corral made, beside its images: /v/<sha1>/<recipe file>.
        location ~ "^/v/(([0-9a-f]{{2}})([0-9a-f]{{2}})[0-9a-f]{{36}})/([0-9]+x[0-9]+-[a-z]+\.(png|jpg|gif|webp))$" {{
            root {images}/../variants;
            add_header Cache-Control "public, max-age=31536000, immutable";
            try_files /$2/$3/$1/$4 =404;
        }}
    }}
}}
"#,
        work = work.display(),
        images = images_dir.display(),
    );
    let path = work.join("nginx.conf");
    std::fs::write(&path, conf)?;
    let mut child = Command::new(binary)
        .arg("-c")
        .arg(&path)
        .arg("-p")
        .arg(work)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("start nginx")?;
    wait_ready(addr, "/ready", &mut child).await?;
    Ok(Server {
        addr,
        child,
        data_dir: None,
    })
}

/// Resident memory of a process, in MiB.
pub fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
            line.split_whitespace().nth(1)?.parse::<f64>().ok()
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("Uid:"))?;
            line.split_whitespace().nth(1).map(|uid| uid == "0")
        })
        .unwrap_or(false)
}

/// utime + stime of `pid` and its direct children, in seconds.
pub fn process_tree_cpu(pid: u32) -> f64 {
    let mut total = proc_cpu(pid);
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(child) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if parent_of(child) == Some(pid) {
                total += proc_cpu(child);
            }
        }
    }
    total
}

/// The kernel's clock ticks per second for /proc times (USER_HZ, 100 on Linux).
const TICKS: f64 = 100.0;

fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; fields start after its closing parenthesis.
    let rest = &stat[stat.rfind(')')? + 2..];
    Some(rest.split_whitespace().map(String::from).collect())
}

fn parent_of(pid: u32) -> Option<u32> {
    stat_fields(pid)?.get(1)?.parse().ok()
}

/// utime + stime of one process, in seconds.
pub fn proc_cpu(pid: u32) -> f64 {
    let Some(fields) = stat_fields(pid) else {
        return 0.0;
    };
    // After the name: state(0) ppid(1) ... utime(11) stime(12).
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i)?.parse::<f64>().ok())
        .sum();
    ticks / TICKS
}
