//! `atomic_write`: creates and replaces files, leaves no temporary file behind on success or on
//! error, handles relative paths without a directory (in a child process, so the test binary's
//! working directory never changes), and concurrent readers only ever see whole versions.

use std::fs;
use std::io;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;

use sync_kit::fs::atomic_write;

mod common;
use common::bounded;

/// The names in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn creates_a_new_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("new.txt");
    atomic_write(&path, b"hello").unwrap();
    assert_eq!(fs::read(&path).unwrap(), b"hello");
    assert_eq!(
        names(dir.path()),
        ["new.txt"],
        "no temporary file left behind"
    );
}

#[test]
fn replaces_an_existing_file_many_times() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data.bin");
    fs::write(
        &path,
        b"original content that is longer than some replacements",
    )
    .unwrap();
    for i in 0..100usize {
        let content: Vec<u8> = (0..(i * 37) % 5000).map(|b| (b * 7 + i) as u8).collect();
        atomic_write(&path, &content).unwrap();
        assert_eq!(fs::read(&path).unwrap(), content, "version {i}");
    }
    atomic_write(&path, b"").unwrap();
    assert_eq!(
        fs::read(&path).unwrap(),
        b"",
        "an empty file is a valid version"
    );
    atomic_write(&path, String::from("text")).unwrap();
    assert_eq!(fs::read_to_string(&path).unwrap(), "text");
    assert_eq!(names(dir.path()), ["data.bin"]);
}

#[test]
fn writes_a_large_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("large");
    let content: Vec<u8> = (0..8u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    atomic_write(&path, &content).unwrap();
    assert!(fs::read(&path).unwrap() == content);
    assert_eq!(names(dir.path()), ["large"]);
}

#[test]
fn missing_directory_is_an_error_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no-such-dir").join("file.txt");
    let err = atomic_write(&path, b"x").unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
    assert!(names(dir.path()).is_empty(), "{:?}", names(dir.path()));
}

#[test]
fn path_without_a_file_name_is_invalid_input() {
    let dir = tempfile::tempdir().unwrap();
    let inner = dir.path().join("inner");
    fs::create_dir(&inner).unwrap();
    let err = atomic_write(inner.join(".."), b"x").unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{err}");
    let err = atomic_write("", b"x").unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{err}");
    assert_eq!(names(dir.path()), ["inner"]);
    assert!(names(&inner).is_empty());
}

#[test]
fn failed_rename_removes_the_temporary_file_and_keeps_the_target() {
    // The target is a non-empty directory: the final rename fails after the temporary file was
    // written and synced.
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("target");
    fs::create_dir(&target).unwrap();
    fs::write(target.join("inside"), b"keep").unwrap();
    let err = atomic_write(&target, b"new content").unwrap_err();
    assert_ne!(err.kind(), io::ErrorKind::NotFound, "{err}");
    assert_eq!(
        names(dir.path()),
        ["target"],
        "the temporary file is removed on error"
    );
    assert_eq!(fs::read(target.join("inside")).unwrap(), b"keep");
}

#[cfg(unix)]
#[test]
fn new_file_gets_the_default_permissions_of_a_new_file() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("plain");
    fs::File::create(&plain).unwrap();
    let expected = fs::metadata(&plain).unwrap().permissions().mode() & 0o777;
    let path = dir.path().join("atomic");
    atomic_write(&path, b"x").unwrap();
    let got = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(
        got, expected,
        "atomic_write gave mode {got:o}, File::create gives {expected:o}"
    );
}

/// The child half of `relative_path_without_a_directory`: runs only when re-executed with the
/// environment variable set, in a temporary working directory.
#[test]
fn child_relative_write() {
    if std::env::var_os("SYNC_KIT_TEST_RELATIVE_WRITE_CHILD").is_none() {
        return;
    }
    atomic_write("plain.txt", b"bare name").unwrap();
    atomic_write("./dotted.txt", b"dot slash").unwrap();
    atomic_write("plain.txt", b"bare name, replaced").unwrap();
    println!("CHILD-RELATIVE-OK");
}

#[test]
fn relative_path_without_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path().to_path_buf();
    let output = bounded("relative-path child", move || {
        Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "child_relative_write",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("SYNC_KIT_TEST_RELATIVE_WRITE_CHILD", "1")
            .current_dir(&cwd)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    });
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("CHILD-RELATIVE-OK"),
        "child failed: {:?}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        fs::read(dir.path().join("plain.txt")).unwrap(),
        b"bare name, replaced"
    );
    assert_eq!(
        fs::read(dir.path().join("dotted.txt")).unwrap(),
        b"dot slash"
    );
    assert_eq!(names(dir.path()), ["dotted.txt", "plain.txt"]);
}

/// A self-checking payload: `[writer, seq, len, checksum]` then `len` bytes.
fn payload(writer: u64, seq: u64) -> Vec<u8> {
    let len = ((writer * 7919 + seq * 104_729) % 20_000) as usize;
    let body: Vec<u8> = (0..len)
        .map(|i| (i as u64 ^ seq ^ (writer << 3)) as u8)
        .collect();
    let mut out = Vec::with_capacity(32 + len);
    out.extend_from_slice(&writer.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&(len as u64).to_le_bytes());
    out.extend_from_slice(&checksum(&body).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn parse(bytes: &[u8]) -> Option<(u64, u64)> {
    let word = |i: usize| -> Option<u64> {
        Some(u64::from_le_bytes(
            bytes.get(i * 8..i * 8 + 8)?.try_into().ok()?,
        ))
    };
    let (writer, seq, len, sum) = (word(0)?, word(1)?, word(2)?, word(3)?);
    let body = &bytes[32..];
    (body.len() as u64 == len && checksum(body) == sum).then_some((writer, seq))
}

#[test]
fn concurrent_readers_only_see_whole_versions() {
    bounded("concurrent writers and readers", || {
        let dir = tempfile::tempdir().unwrap();
        let path = Arc::new(dir.path().join("shared.bin"));
        atomic_write(&*path, payload(99, 0)).unwrap();
        let done = Arc::new(AtomicBool::new(false));
        let reads = Arc::new(AtomicU64::new(0));
        let writers: Vec<_> = (0..3u64)
            .map(|w| {
                let path = path.clone();
                thread::spawn(move || {
                    for seq in 1..=60 {
                        atomic_write(&*path, payload(w, seq)).unwrap();
                    }
                })
            })
            .collect();
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let (path, done, reads) = (path.clone(), done.clone(), reads.clone());
                thread::spawn(move || {
                    let mut last_seen: [u64; 4] = [0; 4];
                    while !done.load(Ordering::Relaxed) {
                        let bytes = fs::read(&*path).expect("the file always exists");
                        let (writer, seq) = parse(&bytes).unwrap_or_else(|| {
                            panic!(
                                "a reader saw a partial or mixed file ({} bytes)",
                                bytes.len()
                            )
                        });
                        let slot = if writer == 99 { 3 } else { writer as usize };
                        assert!(seq >= last_seen[slot], "a writer's versions never go back");
                        last_seen[slot] = seq;
                        reads.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        done.store(true, Ordering::Relaxed);
        for r in readers {
            r.join().unwrap();
        }
        assert!(reads.load(Ordering::Relaxed) > 0);
        let (_, seq) = parse(&fs::read(&*path).unwrap()).unwrap();
        assert_eq!(seq, 60, "the last write of some writer wins");
        assert_eq!(
            names(dir.path()),
            ["shared.bin"],
            "no temporary file left behind"
        );
    });
}

#[test]
fn long_file_names_the_file_system_accepts_can_be_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("n".repeat(250));
    fs::write(&path, b"created by fs::write").expect("a 250-byte name is valid here");
    atomic_write(&path, b"replaced").unwrap();
    assert_eq!(fs::read(&path).unwrap(), b"replaced");
}
