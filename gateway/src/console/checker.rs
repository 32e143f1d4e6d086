//! Password checks, bounded: argon2 needs 19 MiB and tens of milliseconds per check, so an
//! unbounded number of them (one per `POST /login`) is a way to take the gateway's memory
//! and CPU. Checks run on [`WORKERS`] thread(s) of their own — never tokio's blocking pool,
//! which the uplink's outbox jobs need, and never more than one core of the two an edge box
//! may have — with at most [`QUEUE`] waiting, and at most one check in flight per source
//! address. Whatever does not fit is refused at once.
//!
//! Memory stays bounded too: each worker keeps one argon2 work area, allocated at its first
//! check (the size of the largest hash it has checked) and reused for every later one, so
//! no flood of logins grows the process beyond [`WORKERS`] work areas.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use argon2::{Algorithm, Argon2, Block, Params, PasswordHash, Version};
use subtle::ConstantTimeEq;
use tokio::sync::oneshot;

/// Threads that run argon2 (each keeps one 19 MiB work area).
pub const WORKERS: usize = 1;
/// Checks that may wait for a worker; more are refused with `503`.
pub const QUEUE: usize = 16;

/// Why a check was not run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CheckRefused {
    /// This address already has a check waiting or running (`429`).
    #[error("a login from this address is already being checked")]
    AddressBusy,
    /// Every worker is busy and the queue is full (`503`).
    #[error("too many logins are being checked")]
    Busy,
}

struct Job {
    password: String,
    phc: String,
    reply: oneshot::Sender<bool>,
    /// The address's place, held until the worker is done with the job (a client that
    /// hangs up does not free it while its check still runs).
    claim: Claim,
}

/// The bounded password checker of one console.
pub struct Checker {
    jobs: crossbeam_channel::Sender<Job>,
    /// Addresses with a check waiting or running: one each, so a single machine cannot
    /// fill the queue.
    in_flight: Arc<Mutex<HashSet<IpAddr>>>,
}

/// Releases an address's place when its check is answered or abandoned.
struct Claim {
    addr: IpAddr,
    in_flight: Arc<Mutex<HashSet<IpAddr>>>,
}

impl Drop for Claim {
    fn drop(&mut self) {
        if let Ok(mut set) = self.in_flight.lock() {
            set.remove(&self.addr);
        }
    }
}

impl Checker {
    /// Starts the worker threads; they end when the checker is dropped.
    pub fn start() -> Checker {
        let (jobs, rx) = crossbeam_channel::bounded::<Job>(QUEUE);
        for i in 0..WORKERS {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("console-pw-{i}"))
                .spawn(move || work(rx));
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start a password check thread");
            }
        }
        Checker {
            jobs,
            in_flight: Arc::default(),
        }
    }

    /// Checks `password` against the PHC string `phc` on a worker; `Ok(matches)`.
    pub async fn verify(
        &self,
        from: IpAddr,
        password: &str,
        phc: &str,
    ) -> Result<bool, CheckRefused> {
        let claim = self.claim(from)?;
        let (reply, answer) = oneshot::channel();
        let job = Job {
            password: password.to_owned(),
            phc: phc.to_owned(),
            reply,
            claim,
        };
        self.jobs.try_send(job).map_err(|_| CheckRefused::Busy)?;
        answer.await.map_err(|_| CheckRefused::Busy)
    }

    fn claim(&self, addr: IpAddr) -> Result<Claim, CheckRefused> {
        let mut set = self.in_flight.lock().map_err(|_| CheckRefused::Busy)?;
        if !set.insert(addr) {
            return Err(CheckRefused::AddressBusy);
        }
        Ok(Claim {
            addr,
            in_flight: self.in_flight.clone(),
        })
    }
}

fn work(rx: crossbeam_channel::Receiver<Job>) {
    let mut area = Vec::new();
    for job in rx {
        if job.reply.is_closed() {
            continue; // the client went away while waiting
        }
        let checked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            verify_in(&mut area, &job.password, &job.phc)
        }));
        // The address's place goes before the answer, so its next login finds it free.
        let Job { reply, claim, .. } = job;
        drop(claim);
        let _ = reply.send(checked.unwrap_or(false));
    }
}

/// Checks `password` against the argon2 PHC string `phc`, with `area` as argon2's work
/// memory (grown to the hash's size if smaller, then kept for the next check).
pub fn verify_in(area: &mut Vec<Block>, password: &str, phc: &str) -> bool {
    let Ok(hash) = PasswordHash::new(phc) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (&hash.salt, &hash.hash) else {
        return false;
    };
    let (Ok(params), Ok(algorithm)) = (
        Params::try_from(&hash),
        Algorithm::try_from(hash.algorithm.as_str()),
    ) else {
        return false;
    };
    let Ok(version) = hash.version.map(Version::try_from).transpose() else {
        return false;
    };
    let blocks = params.block_count();
    if area.len() < blocks {
        area.resize(blocks, Block::default());
    }
    let mut out = vec![0u8; expected.len()];
    let argon2 = Argon2::new(algorithm, version.unwrap_or_default(), params);
    let Some(memory) = area.get_mut(..blocks) else {
        return false;
    };
    argon2
        .hash_password_into_with_memory(password.as_bytes(), salt, &mut out, memory)
        .is_ok()
        && bool::from(out.as_slice().ct_eq(expected.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEMO: &str = "$argon2id$v=19$m=19456,t=2,p=1$c2hvdXdhbmctZGVtby1zYQ$pMAMAJaZaTelU1nfxz3/8UfuGG6UrIxQfDFnKLoYXNk";

    #[test]
    fn the_reused_work_area_verifies_like_argon2_itself() {
        let mut area = Vec::new();
        assert!(verify_in(&mut area, "shouwang-demo", DEMO));
        let size = area.len();
        assert_eq!(size, 19_456, "one block per KiB");
        assert!(!verify_in(&mut area, "shouwang-dem0", DEMO));
        assert!(!verify_in(&mut area, "shouwang-demo", "$2b$12$notargon"));
        assert_eq!(area.len(), size, "reused, not grown");
        for (password, phc) in [("shouwang-demo", DEMO), ("other", DEMO)] {
            assert_eq!(
                verify_in(&mut area, password, phc),
                super::super::auth::verify_password(password, phc)
            );
        }
    }

    #[tokio::test]
    async fn one_check_per_address_at_a_time_and_a_bounded_queue() {
        let checker = Checker::start();
        let a: IpAddr = [10, 0, 0, 1].into();
        let first = checker.verify(a, "shouwang-demo", DEMO);
        let second = checker.verify(a, "shouwang-demo", DEMO);
        let (first, second) = tokio::join!(first, second);
        assert_eq!(first, Ok(true));
        assert_eq!(second, Err(CheckRefused::AddressBusy));
        assert_eq!(checker.verify(a, "wrong", DEMO).await, Ok(false));
        let many = (0..(WORKERS + QUEUE + 8) as u8).map(|i| {
            let addr: IpAddr = [10, 0, 1, i].into();
            let checker = &checker;
            async move { checker.verify(addr, "wrong", DEMO).await }
        });
        let answers = futures_util::future::join_all(many).await;
        assert!(answers.contains(&Err(CheckRefused::Busy)), "{answers:?}");
        assert!(answers.iter().filter(|a| a.is_ok()).count() >= QUEUE);
    }
}
