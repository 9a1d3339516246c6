//! Password hashing on a small pool of worker threads, off the threads that serve connections.
//!
//! Argon2id with the crate's defaults (19 MiB, 2 passes, 1 lane: the OWASP recommendation) costs
//! tens of milliseconds and 19 MiB per hash. Bounding the pool to the number of cores keeps a
//! burst of logins from running a thousand of them at once. A job's continuation runs on the
//! hashing thread once the hash is done, so nobody waits for it (`hash` and `verify` wait, for
//! start-up and tests).

use std::thread;

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use crossbeam_channel::{Sender, unbounded};

type Then<T> = Box<dyn FnOnce(T) + Send>;

enum Job {
    Hash {
        password: String,
        then: Then<Result<String, String>>,
    },
    Verify {
        hash: String,
        password: String,
        then: Then<bool>,
    },
}

/// A handle to the hashing pool.
#[derive(Clone, Debug)]
pub struct Hasher {
    jobs: Sender<Job>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Job { .. }") // never print passwords
    }
}

impl Hasher {
    /// Starts `workers` hashing threads.
    pub fn start(workers: usize) -> std::io::Result<Self> {
        let (jobs, queue) = unbounded::<Job>();
        for i in 0..workers.max(1) {
            let queue = queue.clone();
            thread::Builder::new()
                .name(format!("argon2-{i}"))
                .spawn(move || {
                    let argon2 = Argon2::default();
                    for job in queue {
                        match job {
                            Job::Hash { password, then } => then(
                                argon2
                                    .hash_password(password.as_bytes())
                                    .map(|h| h.to_string())
                                    .map_err(|e| e.to_string()),
                            ),
                            Job::Verify {
                                hash,
                                password,
                                then,
                            } => then(PasswordHash::new(&hash).is_ok_and(|parsed| {
                                argon2.verify_password(password.as_bytes(), &parsed).is_ok()
                            })),
                        }
                    }
                })?;
        }
        Ok(Self { jobs })
    }

    /// Hashes `password` with a fresh random salt (an Argon2id PHC string), then runs `then` on
    /// the hashing thread.
    pub fn hash_then(
        &self,
        password: String,
        then: impl FnOnce(Result<String, String>) + Send + 'static,
    ) {
        let job = Job::Hash {
            password,
            then: Box::new(then),
        };
        if let Err(crossbeam_channel::SendError(Job::Hash { then, .. })) = self.jobs.send(job) {
            then(Err("hashing pool stopped".to_string()));
        }
    }

    /// Checks `password` against the PHC string `hash`, then runs `then` on the hashing thread.
    pub fn verify_then(
        &self,
        hash: String,
        password: String,
        then: impl FnOnce(bool) + Send + 'static,
    ) {
        let job = Job::Verify {
            hash,
            password,
            then: Box::new(then),
        };
        if let Err(crossbeam_channel::SendError(Job::Verify { then, .. })) = self.jobs.send(job) {
            then(false);
        }
    }

    /// [`Hasher::hash_then`], waiting for the result.
    pub fn hash(&self, password: String) -> Result<String, String> {
        let (reply, answer) = oneshot::channel();
        self.hash_then(password, move |hashed| {
            let _ = reply.send(hashed);
        });
        answer
            .recv()
            .map_err(|_| "hashing pool stopped".to_string())?
    }

    /// [`Hasher::verify_then`], waiting for the result.
    pub fn verify(&self, hash: String, password: String) -> bool {
        let (reply, answer) = oneshot::channel();
        self.verify_then(hash, password, move |ok| {
            let _ = reply.send(ok);
        });
        answer.recv().unwrap_or(false)
    }
}
