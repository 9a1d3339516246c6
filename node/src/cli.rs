//! What `synckit-node serve`, `synckit-node cluster up` and `synckit-node admin` do (the
//! `client` and `bench` subcommands are in [`crate::client`]).

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::net;
use crate::raft::{Cluster, Member};
use crate::service::Service;

/// Raises this process's soft limit on open files to its hard limit, so that the connections it
/// may hold are bounded by `--max-connections` and the hard limit, not by a conservative soft
/// default (often 1,024: each connection holds three descriptors in the node, two in a client).
/// Returns the limit now in force, if it could be read.
pub fn raise_open_files_limit() -> Option<u64> {
    let (soft, hard) = match rlimit::Resource::NOFILE.get() {
        Ok(limits) => limits,
        Err(error) => {
            tracing::warn!(%error, "cannot read the open-files limit");
            return None;
        }
    };
    if soft >= hard {
        return Some(soft);
    }
    match rlimit::increase_nofile_limit(hard) {
        Ok(now) => {
            tracing::info!(from = soft, to = now, "open-files limit raised");
            Some(now)
        }
        Err(error) => {
            tracing::warn!(%error, soft, hard, "cannot raise the open-files limit");
            Some(soft)
        }
    }
}

/// Starts a node and serves until killed.
pub fn serve(config: &Config) -> Result<(), String> {
    raise_open_files_limit();
    let service = Arc::new(Service::open(config).map_err(|e| e.to_string())?);
    let listener = TcpListener::bind(config.chat_addr)
        .map_err(|e| format!("cannot listen on {}: {e}", config.chat_addr))?;
    let chat = listener.local_addr().map_err(|e| e.to_string())?;
    let http = net::http::start(config.http_addr, Arc::clone(&service))
        .map_err(|e| format!("cannot serve HTTP on {}: {e}", config.http_addr))?;
    let grpc = net::grpc::start(config.grpc_addr, Arc::clone(&service))
        .map_err(|e| format!("cannot serve gRPC on {}: {e}", config.grpc_addr))?;
    stop_on_signal(Arc::clone(&service))?;
    // One machine-readable line on stdout: scripts and tests read the bound addresses from it
    // (fields added later go last, so older readers of its start keep working).
    println!(
        "synckit-node listening chat={chat} http={http} data={} grpc={grpc}",
        config.data_dir.display()
    );
    let _ = std::io::stdout().flush();
    tracing::info!(%chat, %http, %grpc, data = %config.data_dir.display(), "node started");
    let threads = match config.io_threads {
        // Half the cores: the log, the applier and the hashing pool need the rest (measured on
        // 2 cores: one loop spends 20 % less CPU per command than two, and serves more).
        0 => std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1)),
        n => n,
    };
    net::serve(listener, service, threads).map_err(|e| e.to_string())
}

/// On SIGINT or SIGTERM: make the log durable up to the last record queued (acknowledged
/// changes already are; this adds the "delivered" marks of live pushes, which nobody waits for),
/// then exit. `kill -9` skips this, and those pushes are then offered again by `read_messages`.
fn stop_on_signal(service: Arc<Service>) -> Result<(), String> {
    ctrlc::set_handler(move || {
        tracing::info!("stop signal: syncing the log, then exiting");
        let code = match service.sync_log() {
            Ok(()) => 0,
            Err(error) => {
                tracing::error!(%error, "the log could not be synced before exiting");
                1
            }
        };
        tracing::info!("node stopped");
        std::process::exit(code);
    })
    .map_err(|e| format!("cannot install the stop-signal handler: {e}"))
}

/// `synckit-node cluster up`.
#[derive(clap::Args, Debug)]
pub struct ClusterUpArgs {
    /// Members to start.
    #[arg(long, default_value_t = 5)]
    pub nodes: u64,
    /// Directory for the cluster file (`cluster.toml`) and the members' data directories. An
    /// existing cluster file there is reused, so the same cluster starts again with its data.
    #[arg(long, default_value = "./cluster")]
    pub dir: PathBuf,
    /// More `serve` flags for every member, after `--` (e.g. `-- --requests-per-sec 100000`).
    #[arg(last = true)]
    pub serve_args: Vec<String>,
}

/// Writes (or reuses) a cluster file of `--nodes` members on free loopback ports, starts each
/// member as a child process, and waits: Ctrl-C (or SIGTERM) stops them all cleanly.
pub fn cluster_up(args: &ClusterUpArgs) -> Result<(), String> {
    if args.nodes == 0 {
        return Err("--nodes must be at least 1".into());
    }
    std::fs::create_dir_all(&args.dir)
        .map_err(|e| format!("cannot create {}: {e}", args.dir.display()))?;
    let dir = args
        .dir
        .canonicalize()
        .map_err(|e| format!("{}: {e}", args.dir.display()))?;
    let file = dir.join("cluster.toml");
    let cluster = if file.exists() {
        Cluster::from_file(&file, 1)?
    } else {
        let cluster = Cluster::new(1, free_members(args.nodes, &dir)?)?;
        std::fs::write(&file, cluster.to_toml())
            .map_err(|e| format!("cannot write {}: {e}", file.display()))?;
        cluster
    };
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
    let (stop, stopped) = crossbeam_channel::bounded::<()>(1);
    ctrlc::set_handler(move || {
        let _ = stop.try_send(());
    })
    .map_err(|e| format!("cannot install the stop-signal handler: {e}"))?;
    let mut children = Vec::new();
    for member in &cluster.members {
        let mut command = Command::new(&exe);
        command
            .arg("serve")
            .arg("--cluster")
            .arg(&file)
            .arg("--id")
            .arg(member.id.to_string())
            .args(&args.serve_args);
        stop_with_parent(&mut command);
        let child = command
            .spawn()
            .map_err(|e| format!("cannot start member {}: {e}", member.id))?;
        children.push((member.id, child));
    }
    let chat: Vec<String> = cluster
        .members
        .iter()
        .map(|m| m.chat_addr.to_string())
        .collect();
    let mut banner = format!(
        "synckit-node cluster up: {} members, cluster file {}\n  chat: synckit-node client --addr {} ...\n",
        cluster.members.len(),
        file.display(),
        chat.join(","),
    );
    for (member, (_, child)) in cluster.members.iter().zip(&children) {
        banner.push_str(&format!(
            "  member {}: pid {}, chat {}, stats http://{}/stats\n",
            member.id,
            child.id(),
            member.chat_addr,
            member.http_addr
        ));
    }
    banner.push_str("  Ctrl-C stops every member; kill any two (kill -9 PID) and the chat goes on");
    println!("{banner}");
    let _ = std::io::stdout().flush();
    loop {
        if stopped.recv_timeout(Duration::from_millis(500)).is_ok() {
            break;
        }
        children.retain_mut(|(id, child)| match child.try_wait() {
            Ok(Some(status)) => {
                eprintln!(
                    "synckit-node cluster: member {id} exited ({status}); the others go on. Start it again: {}",
                    restart_command(&exe, &file, *id, &args.serve_args)
                );
                false
            }
            _ => true,
        });
        if children.is_empty() {
            return Err("every member exited".into());
        }
    }
    for (_, child) in &children {
        terminate(child);
    }
    for (id, mut child) in children {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                _ => {
                    eprintln!("synckit-node cluster: member {id} did not stop; killing it");
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
            }
        }
    }
    Ok(())
}

/// The shell command that starts member `id` again as `cluster up` started it, each word quoted
/// where a shell would split or expand it.
fn restart_command(exe: &Path, file: &Path, id: u64, serve_args: &[String]) -> String {
    let words = [
        exe.display().to_string(),
        "serve".into(),
        "--cluster".into(),
        file.display().to_string(),
        "--id".into(),
        id.to_string(),
    ];
    words
        .iter()
        .chain(serve_args)
        .map(|word| match shlex::try_quote(word) {
            Ok(quoted) => quoted.into_owned(),
            // Only a NUL byte cannot be quoted, and no argument holds one.
            Err(_) => word.clone(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Members on loopback ports free now, below the ephemeral range
/// ([`net::reserve_loopback_ports`]: the members' connections to each other cannot take them
/// before they bind).
fn free_members(count: u64, dir: &Path) -> Result<Vec<Member>, String> {
    let count_ports = usize::try_from(count.saturating_mul(4)).map_err(|e| e.to_string())?;
    let held = net::reserve_loopback_ports(count_ports).map_err(|e| e.to_string())?;
    let mut addrs = held.iter().map(TcpListener::local_addr);
    let mut port = || -> Result<SocketAddr, String> {
        addrs
            .next()
            .expect("one reserved port per address")
            .map_err(|e| e.to_string())
    };
    (1..=count)
        .map(|id| {
            Ok(Member {
                id,
                chat_addr: port()?,
                http_addr: port()?,
                raft_addr: port()?,
                data_dir: dir.join(format!("node-{id}")),
                grpc_addr: Some(port()?),
            })
        })
        .collect()
}

/// Members stop when `cluster up` dies, even by SIGKILL: the kernel sends each SIGTERM when
/// its parent goes (`PR_SET_PDEATHSIG`), so no member is left holding its ports.
fn stop_with_parent(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    // The signal comes when the spawning *thread* ends: `cluster up` spawns from the thread
    // that waits for the members until they stop.
    let parent = std::process::id();
    // SAFETY: the closure runs in the child between fork and exec, where only async-signal-safe
    // calls are allowed: it calls `prctl` and `getppid` (both are) and compares integers, and
    // allocates or locks nothing.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before the request was made: then nobody sends it.
            if u32::try_from(libc::getppid()).ok() != Some(parent) {
                // An OS error code, not a message: nothing may be allocated here.
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

/// Asks a child to stop as Ctrl-C would (SIGTERM: it syncs its log and exits).
fn terminate(child: &std::process::Child) {
    let Ok(pid) = libc::pid_t::try_from(child.id()) else {
        return;
    };
    // SAFETY: kill(2) with a pid this process spawned and has not reaped yet, so the pid still
    // names that child; it has no memory-safety preconditions.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
}

/// `synckit-node admin`: membership changes, through the members' HTTP (stats) addresses.
#[derive(clap::Args, Debug)]
pub struct AdminArgs {
    /// The members' HTTP addresses, comma-separated: each is asked in turn until the leader
    /// accepts (a follower answers `not_leader`).
    #[arg(long, value_delimiter = ',', required = true)]
    pub http: Vec<SocketAddr>,
    /// Give up after this many seconds without an answer from the leader.
    #[arg(long, default_value_t = 20)]
    pub timeout_secs: u64,
    /// The change.
    #[command(subcommand)]
    pub command: AdminCommand,
}

/// A membership change.
#[derive(clap::Subcommand, Debug)]
pub enum AdminCommand {
    /// Remove the voter ID (a dead member, or one to replace; the leader itself may be removed).
    RemoveNode {
        /// The member's id.
        id: u64,
    },
    /// Add member ID as a voter; then start it with `serve --cluster FILE --id ID --join`.
    AddNode {
        /// The new member's id (not a current voter's).
        id: u64,
        /// Its chat address.
        #[arg(long)]
        chat_addr: SocketAddr,
        /// Its HTTP address.
        #[arg(long)]
        http_addr: SocketAddr,
        /// Its raft address.
        #[arg(long)]
        raft_addr: SocketAddr,
        /// Its data directory (as its cluster file names it).
        #[arg(long)]
        data_dir: PathBuf,
        /// Its gRPC address, if its cluster file names one.
        #[arg(long)]
        grpc_addr: Option<SocketAddr>,
    },
}

impl AdminCommand {
    /// The request's path and query.
    fn target(&self) -> String {
        match self {
            AdminCommand::RemoveNode { id } => format!("/admin/remove-node?id={id}"),
            AdminCommand::AddNode {
                id,
                chat_addr,
                http_addr,
                raft_addr,
                data_dir,
                grpc_addr,
            } => {
                let mut target = format!(
                    "/admin/add-node?id={id}&chat_addr={chat_addr}&http_addr={http_addr}\
                     &raft_addr={raft_addr}&data_dir={}",
                    percent_encode(&data_dir.to_string_lossy())
                );
                if let Some(grpc_addr) = grpc_addr {
                    target.push_str(&format!("&grpc_addr={grpc_addr}"));
                }
                target
            }
        }
    }
}

/// Runs `synckit-node admin`: one JSON line on stdout (the leader's answer); exit code 0 when
/// the change was applied, 1 when the cluster refused it, 2 when no leader answered in time.
pub fn admin(args: &AdminArgs) -> std::process::ExitCode {
    let target = args.command.target();
    let deadline = std::time::Instant::now() + Duration::from_secs(args.timeout_secs);
    let mut last = String::from("no member was asked");
    loop {
        for addr in &args.http {
            match http_post(*addr, &target) {
                Ok((status, body)) => {
                    let answer: serde_json::Value =
                        serde_json::from_str(&body).unwrap_or(serde_json::Value::Null);
                    if status == 200 {
                        println!("{}", body.trim());
                        return std::process::ExitCode::SUCCESS;
                    }
                    if answer["error"]["code"] == "not_leader" {
                        last = format!("{addr}: {}", answer["error"]["message"]);
                        continue;
                    }
                    if answer.is_null() {
                        last = format!("{addr}: HTTP {status}: {}", body.trim());
                        continue;
                    }
                    println!("{}", body.trim());
                    eprintln!(
                        "synckit-node admin: {addr} refused: {}",
                        answer["error"]["message"]
                            .as_str()
                            .unwrap_or("(no message)")
                    );
                    return std::process::ExitCode::from(1);
                }
                Err(error) => last = format!("{addr}: {error}"),
            }
        }
        if std::time::Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let message = format!("no leader accepted the change in time (last: {last})");
    println!(
        "{}",
        serde_json::json!({"ok": false, "error": {"code": "unavailable", "message": message}})
    );
    eprintln!("synckit-node admin: {message}");
    std::process::ExitCode::from(2)
}

/// One `POST` without a body, over a fresh connection: the status and the body.
fn http_post(addr: SocketAddr, target: &str) -> std::io::Result<(u16, String)> {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    // The member waits for raft at most its write timeout (5 s) before answering.
    stream.set_read_timeout(Some(Duration::from_secs(15)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "POST {target} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("a truncated HTTP response"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other("no HTTP status"))?;
    Ok((status, body.to_string()))
}

/// Escapes what a query value cannot hold as is.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                (byte as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_restart_command_reads_back_as_the_words_that_started_the_member() {
        let plain = restart_command(
            Path::new("/usr/bin/synckit-node"),
            Path::new("cluster/cluster.toml"),
            1,
            &[],
        );
        assert_eq!(
            plain,
            "/usr/bin/synckit-node serve --cluster cluster/cluster.toml --id 1"
        );
        let args: Vec<String> = ["--log", "info raft=warn", "--note", "it's $HOME; *"]
            .map(String::from)
            .to_vec();
        let quoted = restart_command(
            Path::new("/opt/sync kit/synckit-node"),
            Path::new("/tmp/my cluster/cluster.toml"),
            3,
            &args,
        );
        let mut expected = vec![
            "/opt/sync kit/synckit-node",
            "serve",
            "--cluster",
            "/tmp/my cluster/cluster.toml",
            "--id",
            "3",
        ];
        expected.extend(args.iter().map(String::as_str));
        assert_eq!(shlex::split(&quoted).unwrap(), expected, "{quoted}");
    }
}
