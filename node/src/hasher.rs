//! Password hashing on a small pool of worker threads, off the connection threads.
//!
//! Argon2id with the crate's defaults (19 MiB, 2 passes, 1 lane: the OWASP recommendation) costs
//! tens of milliseconds and 19 MiB per hash. Bounding the pool to the number of cores keeps a
//! burst of logins from running a thousand of them at once; connection threads wait for their
//! job's answer on a channel.

use std::thread;

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use crossbeam_channel::{Sender, bounded, unbounded};

enum Job {
    Hash {
        password: String,
        reply: Sender<Result<String, String>>,
    },
    Verify {
        hash: String,
        password: String,
        reply: Sender<bool>,
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
                            Job::Hash { password, reply } => {
                                let hashed = argon2
                                    .hash_password(password.as_bytes())
                                    .map(|h| h.to_string())
                                    .map_err(|e| e.to_string());
                                let _ = reply.send(hashed);
                            }
                            Job::Verify {
                                hash,
                                password,
                                reply,
                            } => {
                                let ok = PasswordHash::new(&hash).is_ok_and(|parsed| {
                                    argon2.verify_password(password.as_bytes(), &parsed).is_ok()
                                });
                                let _ = reply.send(ok);
                            }
                        }
                    }
                })?;
        }
        Ok(Self { jobs })
    }

    /// A fresh Argon2id PHC string (random salt) for `password`.
    pub fn hash(&self, password: String) -> Result<String, String> {
        let (reply, answer) = bounded(1);
        self.jobs
            .send(Job::Hash { password, reply })
            .map_err(|_| "hashing pool stopped".to_string())?;
        answer
            .recv()
            .map_err(|_| "hashing pool stopped".to_string())?
    }

    /// Whether `password` matches the PHC string `hash`.
    pub fn verify(&self, hash: String, password: String) -> bool {
        let (reply, answer) = bounded(1);
        self.jobs
            .send(Job::Verify {
                hash,
                password,
                reply,
            })
            .is_ok()
            && answer.recv().unwrap_or(false)
    }
}
