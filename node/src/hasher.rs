//! Password hashing on a small pool of worker threads, off the threads that serve connections.
//!
//! Argon2id with the crate's defaults (19 MiB, 2 passes, 1 lane: the OWASP recommendation) costs
//! tens of milliseconds and 19 MiB per hash. Bounding the pool to the number of cores keeps a
//! burst of logins from running a thousand of them at once. A job's continuation runs on the
//! hashing thread once the hash is done, so nobody waits for it (`hash` and `verify` wait, for
//! start-up and tests).
//!
//! Each hashing thread keeps its 19 MiB of Argon2 memory from one hash to the next
//! (`Worker`). The crate's PHC functions allocate it zeroed for every hash and free it after:
//! the allocator then either maps it afresh (every page faulted and cleared again, a few
//! milliseconds per hash) or, once its adaptive mmap threshold has risen past 19 MiB, serves it
//! from the thread's arena, where it stays resident and fragments (a node measured 245 MB after
//! four concurrent logins, 11 MB before). Argon2 writes every block of its memory before it
//! reads it, so the memory needs no clearing between hashes. The strings are the crate's PHC
//! format, read and written with its types: hashes stored by earlier versions verify, and
//! these verify with the crate's own `verify_password`.

use std::thread;

use argon2::password_hash::phc::{Output, ParamsString, PasswordHash, Salt};
use argon2::{Algorithm, Argon2, Block, Params, Version};
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

/// One hashing thread's Argon2 memory, kept from one hash to the next (see the module
/// documentation). It grows to the default parameters' 19 MiB on first use; a stored hash with
/// larger memory parameters is verified in memory of its own, freed after it.
#[derive(Default)]
struct Worker {
    blocks: Vec<Block>,
}

impl Worker {
    /// An Argon2id PHC string of `password` with the crate's default parameters and a fresh
    /// random salt.
    fn hash(&mut self, password: &[u8]) -> Result<String, String> {
        let salt = argon2::password_hash::try_generate_salt()
            .map_err(|e| format!("no random salt: {e}"))?;
        let params = Params::default();
        let mut output = [0u8; Params::DEFAULT_OUTPUT_LEN];
        let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
        self.run(&argon2, password, &salt, &mut output)?;
        let phc = PasswordHash {
            algorithm: Algorithm::Argon2id.ident(),
            version: Some(Version::V0x13.into()),
            params: ParamsString::try_from(&params).map_err(|e| e.to_string())?,
            salt: Some(Salt::new(&salt).map_err(|e| e.to_string())?),
            hash: Some(Output::new(&output).map_err(|e| e.to_string())?),
        };
        Ok(phc.to_string())
    }

    /// Whether `password` matches the PHC string `hash` (any Argon2 variant, version and
    /// parameters the crate accepts); `false` for a string that is not one.
    fn verify(&mut self, hash: &str, password: &[u8]) -> bool {
        let Ok(parsed) = PasswordHash::new(hash) else {
            return false;
        };
        let (Some(salt), Some(expected)) = (&parsed.salt, &parsed.hash) else {
            return false;
        };
        let Ok(algorithm) = Algorithm::try_from(parsed.algorithm.as_str()) else {
            return false;
        };
        let version = match parsed.version.map(Version::try_from).transpose() {
            Ok(version) => version.unwrap_or_default(),
            Err(_) => return false,
        };
        let Ok(params) = Params::try_from(&parsed) else {
            return false;
        };
        let mut output = vec![0u8; expected.len()];
        let argon2 = Argon2::new(algorithm, version, params);
        if self.run(&argon2, password, salt, &mut output).is_err() {
            return false;
        }
        // `Output`'s equality is constant-time.
        Output::new(&output).is_ok_and(|computed| computed == *expected)
    }

    /// Argon2 of `password` and `salt` into `output`, in the kept memory when it is large
    /// enough for `argon2`'s parameters (growing it to the defaults' size), else in memory of
    /// its own.
    fn run(
        &mut self,
        argon2: &Argon2<'_>,
        password: &[u8],
        salt: &[u8],
        output: &mut [u8],
    ) -> Result<(), String> {
        let needed = argon2.params().block_count();
        let kept = Params::default().block_count();
        if needed > kept {
            let mut own = vec![Block::default(); needed];
            return argon2
                .hash_password_into_with_memory(password, salt, output, &mut own[..])
                .map_err(|e| e.to_string());
        }
        if self.blocks.len() < kept {
            self.blocks.resize(kept, Block::default());
        }
        argon2
            .hash_password_into_with_memory(password, salt, output, &mut self.blocks[..needed])
            .map_err(|e| e.to_string())
    }
}

/// Hashes `password` (as [`Hasher::hash`] does) on the calling thread, in memory freed on
/// return: for a hash made once, which should leave no 19 MiB behind.
pub fn hash_once(password: &str) -> Result<String, String> {
    Worker::default().hash(password.as_bytes())
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
                    let mut worker = Worker::default();
                    for job in queue {
                        match job {
                            Job::Hash { password, then } => then(worker.hash(password.as_bytes())),
                            Job::Verify {
                                hash,
                                password,
                                then,
                            } => then(worker.verify(&hash, password.as_bytes())),
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

#[cfg(test)]
mod tests {
    //! What the worker must keep: the crate's PHC format both ways (stored hashes of earlier
    //! versions go on verifying), refusals without panics, and one kept memory.

    use super::*;
    use argon2::password_hash::{PasswordHasher, PasswordVerifier};

    #[test]
    fn a_hash_verifies_its_password_and_no_other() {
        let mut worker = Worker::default();
        let hash = worker.hash(b"correct horse").unwrap();
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        assert!(worker.verify(&hash, b"correct horse"));
        assert!(!worker.verify(&hash, b"correct horse "));
        assert!(!worker.verify(&hash, b""));
        assert_ne!(
            worker.hash(b"correct horse").unwrap(),
            hash,
            "a fresh salt each time"
        );
    }

    #[test]
    fn strings_are_the_crates_own_format_both_ways() {
        let mut worker = Worker::default();
        let crates = Argon2::default().hash_password(b"pw").unwrap().to_string();
        assert!(worker.verify(&crates, b"pw"));
        assert!(!worker.verify(&crates, b"px"));
        let ours = worker.hash(b"pw").unwrap();
        let parsed = PasswordHash::new(&ours).unwrap();
        assert!(Argon2::default().verify_password(b"pw", &parsed).is_ok());
        assert!(Argon2::default().verify_password(b"px", &parsed).is_err());
    }

    #[test]
    fn other_variants_and_parameters_verify_larger_ones_in_memory_of_their_own() {
        let mut worker = Worker::default();
        for (algorithm, m_cost, t_cost) in [
            (Algorithm::Argon2id, 8 * 1024, 1),
            (Algorithm::Argon2i, 8 * 1024, 3),
            (Algorithm::Argon2d, 8 * 1024, 1),
            (Algorithm::Argon2id, 32 * 1024, 1),
        ] {
            let params = Params::new(m_cost, t_cost, 1, None).unwrap();
            let hash = Argon2::new(algorithm, Version::V0x13, params)
                .hash_password(b"pw")
                .unwrap()
                .to_string();
            assert!(worker.verify(&hash, b"pw"), "{hash}");
            assert!(!worker.verify(&hash, b"pw2"), "{hash}");
        }
        assert_eq!(
            worker.blocks.len(),
            Params::default().block_count(),
            "the kept memory stays at the defaults' size"
        );
    }

    #[test]
    fn strings_that_are_not_hashes_are_refused() {
        let mut worker = Worker::default();
        let good = worker.hash(b"pw").unwrap();
        // The same string with the output's first character changed: a wrong hash.
        let (head, output) = good.rsplit_once('$').unwrap();
        let other = if output.starts_with('A') { 'B' } else { 'A' };
        let flipped = format!("{head}${other}{}", &output[1..]);
        for bad in [
            "",
            "not a hash",
            "$argon2id$",
            "$argon2id$v=19$m=19456,t=2,p=1$",
            "$scrypt$ln=16,r=8,p=1$aM15713r3Xsvxbi31lqr1Q$nFNh2CVHVjNldFVKDHDlm4CbdRSCdEBsjjJxD+iCs5E",
            "$argon2id$v=99$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
            flipped.as_str(),
        ] {
            assert!(!worker.verify(bad, b"pw"), "{bad:?}");
        }
        assert!(worker.verify(&good, b"pw"));
    }

    #[test]
    fn one_memory_serves_every_hash() {
        let mut worker = Worker::default();
        let first = worker.hash(b"a").unwrap();
        let memory = worker.blocks.as_ptr();
        assert_eq!(worker.blocks.len(), Params::default().block_count());
        let second = worker.hash(b"b").unwrap();
        assert!(worker.verify(&first, b"a") && worker.verify(&second, b"b"));
        assert_eq!(
            worker.blocks.as_ptr(),
            memory,
            "the same memory, not a new one"
        );
    }
}
