//! The `tidemq` binary as a child process on ephemeral ports with its own
//! data directory, and a raw HTTP/1.1 GET for its endpoints.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};

const BIN: &str = env!("CARGO_BIN_EXE_tidemq");

/// One `tidemq` process. Killed (SIGKILL) when dropped.
pub struct NodeProcess {
    child: Option<Child>,
    data_dir: PathBuf,
    env: Vec<(String, String)>,
    args: Vec<String>,
    /// Soft and hard open-file limits to start it with.
    open_files: Option<(u64, u64)>,
    /// The bound MQTT address.
    pub mqtt: SocketAddr,
    /// The bound gRPC address of the meta service.
    pub grpc: SocketAddr,
    /// The bound HTTP address.
    pub http: SocketAddr,
    /// Every listener's name and bound address, `[listener]` first.
    pub listeners: Vec<(String, SocketAddr)>,
}

impl NodeProcess {
    /// Starts `tidemq` with its data in `data_dir` and every address on
    /// port 0 (unless `env` sets one), and waits for its ready line.
    pub fn start(data_dir: &Path, env: &[(&str, &str)]) -> anyhow::Result<NodeProcess> {
        Self::start_with_args(data_dir, env, &[])
    }

    /// Like [`NodeProcess::start`], with extra command-line arguments.
    pub fn start_with_args(
        data_dir: &Path,
        env: &[(&str, &str)],
        args: &[&str],
    ) -> anyhow::Result<NodeProcess> {
        let mut node = Self::unstarted(data_dir, env, args);
        node.restart()?;
        Ok(node)
    }

    /// Like [`NodeProcess::start`], under soft and hard open-file limits.
    pub fn start_with_open_files(
        data_dir: &Path,
        env: &[(&str, &str)],
        soft: u64,
        hard: u64,
    ) -> anyhow::Result<NodeProcess> {
        let mut node = Self::unstarted(data_dir, env, &[]);
        node.open_files = Some((soft, hard));
        node.restart()?;
        Ok(node)
    }

    fn unstarted(data_dir: &Path, env: &[(&str, &str)], args: &[&str]) -> NodeProcess {
        NodeProcess {
            child: None,
            data_dir: data_dir.to_path_buf(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            args: args.iter().map(|a| a.to_string()).collect(),
            open_files: None,
            mqtt: SocketAddr::from(([0, 0, 0, 0], 0)),
            grpc: SocketAddr::from(([0, 0, 0, 0], 0)),
            http: SocketAddr::from(([0, 0, 0, 0], 0)),
            listeners: Vec::new(),
        }
    }

    /// (Re)starts the process with the same data directory and environment.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        ensure!(self.child.is_none(), "the node is still running");
        let mut command = Command::new(BIN);
        command
            .arg(format!("--data-dir={}", self.data_dir.display()))
            .args(&self.args)
            .env("TIDEMQ_LISTENER__BIND", "127.0.0.1:0")
            .env("TIDEMQ_META__GRPC_ADDR", "127.0.0.1:0")
            .env("TIDEMQ_HTTP__BIND", "127.0.0.1:0")
            // Samples often enough that a test sees runtime gauges at once.
            .env("TIDEMQ_RUNTIME__MONITOR_INTERVAL_MS", "100")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (key, value) in &self.env {
            command.env(key, value);
        }
        if let Some((soft, hard)) = self.open_files {
            use std::os::unix::process::CommandExt;
            let limit = libc::rlimit {
                rlim_cur: soft,
                rlim_max: hard,
            };
            // SAFETY: between fork and exec the closure calls only
            // setrlimit, which is async-signal-safe, and allocates nothing.
            unsafe {
                command.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        let mut child = command.spawn().context("spawning tidemq")?;
        let stdout = child.stdout.take().context("stdout")?;
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        // Drains stdout for the process's whole life so that logging never
        // blocks on a full pipe; SHOW_NODE_LOGS=1 shows it.
        let show = std::env::var_os("SHOW_NODE_LOGS").is_some();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if show {
                    eprintln!("{line}");
                }
                if line.starts_with("tidemq ready") {
                    let _ = ready_tx.send(line);
                }
            }
        });
        self.child = Some(child);
        let line = ready_rx
            .recv_timeout(Duration::from_secs(60))
            .context("tidemq printed no ready line")?;
        let addr = |key: &str| -> anyhow::Result<SocketAddr> {
            let prefix = format!("{key}=");
            line.split_whitespace()
                .find_map(|word| word.strip_prefix(&prefix))
                .with_context(|| format!("no {key}= in {line:?}"))?
                .parse()
                .with_context(|| format!("bad {key} address in {line:?}"))
        };
        self.mqtt = addr("mqtt")?;
        self.grpc = addr("grpc")?;
        self.http = addr("http")?;
        let listed = line
            .split_whitespace()
            .find_map(|word| word.strip_prefix("listeners="))
            .with_context(|| format!("no listeners= in {line:?}"))?;
        self.listeners = listed
            .split(',')
            .map(|entry| {
                let (name, addr) = entry.split_once('@').context("name@addr")?;
                Ok((name.to_string(), addr.parse()?))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(())
    }

    /// Sends SIGHUP (reload).
    pub fn sighup(&self) -> anyhow::Result<()> {
        let pid = self.pid().context("the node is not running")?;
        let sent = Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()?;
        ensure!(sent.success(), "kill -HUP failed");
        Ok(())
    }

    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends SIGTERM and waits up to 20 s for the process to exit.
    pub fn sigterm(&mut self) -> anyhow::Result<ExitStatus> {
        let mut child = self.child.take().context("the node is not running")?;
        let sent = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()?;
        ensure!(sent.success(), "kill -TERM failed");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("tidemq ignored SIGTERM for 20 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the process with SIGKILL (no shutdown at all) and reaps it.
    pub fn sigkill(&mut self) -> anyhow::Result<()> {
        let mut child = self.child.take().context("the node is not running")?;
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// `GET path` on the HTTP endpoint until `accept(status, body)` holds,
    /// for up to `wait`; returns the last answer.
    pub fn http_until(
        &self,
        path: &str,
        wait: Duration,
        accept: impl Fn(u16, &str) -> bool,
    ) -> anyhow::Result<(u16, String)> {
        let deadline = Instant::now() + wait;
        loop {
            let (status, body) = http_get(self.http, path)?;
            if accept(status, &body) || Instant::now() > deadline {
                return Ok((status, body));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl NodeProcess {
    /// The value of the metric sample `sample` (name and labels, as
    /// exported: `tidemq_x_total{reason="y"}`), or 0 when not exported.
    pub fn metric(&self, sample: &str) -> anyhow::Result<f64> {
        let (_, body) = http_get(self.http, "/metrics")?;
        Ok(body
            .lines()
            .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' '))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or(0.0))
    }

    /// Reads the metric sample `sample` until `accept(value)` holds, for up
    /// to `wait`; then fails, saying what did not happen (`what`).
    pub async fn metric_until(
        &self,
        sample: &str,
        wait: Duration,
        what: &str,
        accept: impl Fn(f64) -> bool,
    ) -> anyhow::Result<f64> {
        let deadline = Instant::now() + wait;
        loop {
            let value = self.metric(sample)?;
            if accept(value) {
                return Ok(value);
            }
            ensure!(Instant::now() < deadline, "{what} ({sample} = {value})");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A plain HTTP/1.1 GET: the status code and the body.
pub fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    http_get_with(addr, path, None)
}

/// [`http_get`] carrying `authorization: Bearer {token}`.
pub fn http_get_with(
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
) -> anyhow::Result<(u16, String)> {
    http_request(addr, "GET", path, token)
}

/// A `POST` with an empty body; the status and the body of the answer.
pub fn http_post(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    http_request(addr, "POST", path, None)
}

fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> anyhow::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .with_context(|| format!("no end of headers in {response:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("no status in {head:?}"))?;
    Ok((status, body.to_string()))
}
