//! File benchmarks: `sync_kit::fs::atomic_write` next to the bare system calls it is made of.
//!
//! Every criterion group measures the same operation on each implementation in one run, so the
//! figures within a group are comparable (and their ratios are what counts; absolute numbers
//! depend on the machine, its disk and its load).
//!
//! Group `atomic_write_4k`: replacing one 4 KiB file, each way in its own directory under the
//! target directory (so on the same file system as the build, not a tmpfs):
//! - `sync_kit`: `sync_kit::fs::atomic_write`;
//! - `bare_syscalls`: the same sequence by hand with `std::fs`, the physical floor: create a temp
//!   file in the same directory, write, `sync_all`, rename over the target, open the directory
//!   and `sync_all` it;
//! - `std_fs_write` (context only): `std::fs::write` in place: no fsync, not crash-safe.
//!
//! fsync dominates, so the sample size is small.
//!
//! Run with `cargo bench -p sync-kit-benches --bench fs`.

use std::fs::{self, File};
use std::hint::black_box;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};

/// Size of the file written.
const SIZE: usize = 4096;

/// The atomic-write sequence by hand: temp file in the same directory, write, fsync, rename,
/// fsync of the directory. `n` makes the temp name unique.
fn bare_atomic_write(dir: &Path, target: &Path, bytes: &[u8], n: u64) -> std::io::Result<()> {
    let temp = dir.join(format!(".target.{n}.tmp"));
    let mut file = File::create_new(&temp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&temp, target)?;
    File::open(dir)?.sync_all()
}

fn atomic_write(c: &mut Criterion) {
    let root = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir in target");
    let bytes = vec![0xa5_u8; SIZE];

    let mut group = c.benchmark_group("atomic_write_4k");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .sample_size(20);

    let dir = root.path().join("sync_kit");
    fs::create_dir(&dir).expect("create dir");
    let target = dir.join("target");
    group.bench_function("sync_kit", |b| {
        b.iter(|| sync_kit::fs::atomic_write(black_box(&target), black_box(&bytes)).unwrap());
    });

    let dir = root.path().join("bare");
    fs::create_dir(&dir).expect("create dir");
    let target = dir.join("target");
    let mut n = 0;
    group.bench_function("bare_syscalls", |b| {
        b.iter(|| {
            n += 1;
            bare_atomic_write(&dir, black_box(&target), black_box(&bytes), n).unwrap();
        });
    });

    let dir = root.path().join("plain");
    fs::create_dir(&dir).expect("create dir");
    let target = dir.join("target");
    group.bench_function("std_fs_write", |b| {
        b.iter(|| fs::write(black_box(&target), black_box(&bytes)).unwrap());
    });

    group.finish();
}

criterion_group!(benches, atomic_write);
criterion_main!(benches);
