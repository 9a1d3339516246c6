//! Crash safety of `atomic_write`: a child process (this test binary, re-executed) rewrites one
//! file in a loop with self-checking payloads and is SIGKILLed at random moments, 200+ times;
//! after every kill the file is exactly one complete version, never older than the last write the
//! child reported finished, and the only debris allowed is hidden `.name.*.tmp` files.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sync_kit::fs::atomic_write;

const CHILD_ENV: &str = "SYNC_KIT_TEST_CRASH_CHILD_FILE";
const CHILD_TEST: &str = "crash_child_writer";
const FILE_NAME: &str = "victim.bin";
const MAGIC: &[u8; 8] = b"SKCRASH1";
const KILLS: usize = 200;

/// A small PRNG (splitmix64).
struct Rng(u64);

impl Rng {
    fn seeded() -> Self {
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        Rng(t ^ u64::from(std::process::id()).rotate_left(32))
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn fnv1a(chunks: &[&[u8]]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for chunk in chunks {
        for &b in *chunk {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// `MAGIC, seq, len, hash(seq, len, body), body`.
fn encode(seq: u64, body: &[u8]) -> Vec<u8> {
    let len = body.len() as u64;
    let hash = fnv1a(&[&seq.to_le_bytes(), &len.to_le_bytes(), body]);
    let mut out = Vec::with_capacity(32 + body.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&hash.to_le_bytes());
    out.extend_from_slice(body);
    out
}

/// The sequence number of a complete, intact payload; an error describing the damage otherwise.
fn decode(bytes: &[u8]) -> Result<u64, String> {
    if bytes.len() < 32 {
        return Err(format!("truncated header: {} bytes", bytes.len()));
    }
    if &bytes[..8] != MAGIC {
        return Err("bad magic".into());
    }
    let word = |i: usize| u64::from_le_bytes(bytes[i * 8..i * 8 + 8].try_into().unwrap());
    let (seq, len, hash) = (word(1), word(2), word(3));
    let body = &bytes[32..];
    if body.len() as u64 != len {
        return Err(format!(
            "seq {seq}: body of {} bytes, header says {len}",
            body.len()
        ));
    }
    if fnv1a(&[&seq.to_le_bytes(), &len.to_le_bytes(), body]) != hash {
        return Err(format!("seq {seq}: checksum mismatch"));
    }
    Ok(seq)
}

/// The child: rewrites the file forever, reporting each finished write on stdout. Does nothing
/// unless started by `random_sigkills_never_expose_a_partial_file`.
#[test]
fn crash_child_writer() {
    let Some(path) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let path = PathBuf::from(path);
    let mut seq = match fs::read(&path) {
        Ok(bytes) => decode(&bytes).expect("the child found a damaged file") + 1,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 1,
        Err(e) => panic!("{e}"),
    };
    let mut rng = Rng::seeded();
    let mut out = std::io::stdout().lock();
    // On a line of its own: the harness has printed "test crash_child_writer ... " without a
    // newline.
    writeln!(out, "\nWRITING {seq}").unwrap();
    out.flush().unwrap();
    loop {
        let len = rng.below(64 * 1024 + 1) as usize;
        let mut body = vec![0u8; len];
        for chunk in body.chunks_mut(8) {
            let r = rng.next().to_le_bytes();
            chunk.copy_from_slice(&r[..chunk.len()]);
        }
        atomic_write(&path, encode(seq, &body)).unwrap();
        writeln!(out, "DONE {seq}").unwrap();
        out.flush().unwrap();
        seq += 1;
    }
}

/// Forwards the child's stdout lines to a channel (ends at EOF, i.e. when the child dies).
fn forward_lines(child: &mut Child) -> Receiver<String> {
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Entries of `dir` other than the target must be the hidden temporary files of `atomic_write`.
fn check_debris(dir: &Path) -> usize {
    let prefix = format!(".{FILE_NAME}.");
    let mut debris = 0;
    for entry in fs::read_dir(dir).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if name == FILE_NAME {
            continue;
        }
        assert!(
            name.starts_with(&prefix) && name.ends_with(".tmp"),
            "unexpected file {name:?} next to the target"
        );
        debris += 1;
    }
    debris
}

#[test]
fn random_sigkills_never_expose_a_partial_file() {
    let (done_tx, done_rx) = mpsc::channel();
    let body = thread::spawn(move || {
        run_kills();
        let _ = done_tx.send(());
    });
    match done_rx.recv_timeout(Duration::from_secs(150)) {
        Ok(()) => body.join().unwrap(),
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("the crash test did not finish in 150 s"),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            std::panic::resume_unwind(body.join().unwrap_err())
        }
    }
}

fn run_kills() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(FILE_NAME);
    let exe = std::env::current_exe().unwrap();
    let mut rng = Rng::seeded();
    let seed = rng.0;
    let started = Instant::now();
    // The highest sequence number the file has shown, and the highest a child reported done.
    let mut seen: Option<u64> = None;
    let mut rounds = 0;

    while rounds < KILLS {
        let mut child = Command::new(&exe)
            .args(["--exact", CHILD_TEST, "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, &path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let lines = forward_lines(&mut child);
        // Wait for the child to start writing (the harness prints its own lines first).
        let start_seq = loop {
            let line = lines
                .recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|e| panic!("child never started writing ({e}); seed {seed}"));
            if let Some((_, n)) = line.split_once("WRITING ") {
                break n.parse::<u64>().unwrap();
            }
        };
        assert_eq!(
            start_seq,
            seen.map_or(1, |s| s + 1),
            "the child resumes after the version on disk"
        );
        // Random moment; the delay only spreads the kills, it synchronises nothing.
        thread::sleep(Duration::from_micros(rng.below(15_000)));
        child.kill().unwrap(); // SIGKILL
        let status = child.wait().unwrap();
        assert!(
            !status.success(),
            "the child was killed, not finished: {status:?}"
        );
        // Every line the child wrote before dying.
        let mut last_done = None;
        while let Ok(line) = lines.recv_timeout(Duration::from_secs(30)) {
            if let Some(n) = line
                .strip_prefix("DONE ")
                .and_then(|n| n.parse::<u64>().ok())
            {
                last_done = Some(n);
            }
        }
        // The file must hold the last version reported finished, or the one after it (renamed
        // just before the kill, not yet reported); before any report, the version found at
        // start or the first one written.
        let floor = last_done.unwrap_or(start_seq - 1);
        match fs::read(&path) {
            Ok(bytes) => {
                let seq = decode(&bytes).unwrap_or_else(|damage| {
                    panic!(
                        "round {rounds}: the file is damaged after a SIGKILL: {damage} (seed {seed})"
                    )
                });
                assert!(
                    seq == floor + 1 || (seq == floor && floor > 0),
                    "round {rounds}: file has version {seq}; last reported done {last_done:?}, \
                     started at {start_seq} (seed {seed})"
                );
                seen = Some(seq);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                assert!(
                    seen.is_none() && last_done.is_none(),
                    "round {rounds}: the file vanished (last seen {seen:?}, reported \
                     {last_done:?}; seed {seed})"
                );
            }
            Err(e) => panic!("{e}"),
        }
        check_debris(dir.path());
        rounds += 1;
    }
    let debris = check_debris(dir.path());
    let final_seq = seen.expect("at least one write completed in 200 rounds");
    eprintln!(
        "fs_crash: {rounds} kills in {:?}, {final_seq} versions written, {debris} leftover \
         temporary files (kills between creating and renaming one; seed {seed})",
        started.elapsed()
    );
    assert!(
        final_seq >= 10,
        "too little progress to mean anything: {final_seq} versions"
    );
    // Each leftover temporary file is a kill that landed in the middle of a write: the test did
    // exercise the interesting window.
    assert!(
        debris > 0,
        "no kill landed in the middle of a write (seed {seed})"
    );
}
