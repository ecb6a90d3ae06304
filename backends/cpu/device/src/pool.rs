//! A small fixed-size pool of worker threads that spin between kernels.
//!
//! Why not a general-purpose pool: a model is a few dozen to a few hundred
//! kernel calls of tens of microseconds to a few milliseconds, each split
//! into one part per thread. rayon's workers sleep after some 20 µs
//! without work and take about 25 µs to wake (measured on the Zen 4
//! guest: a fork-join of two 20 µs halves took 22.5 µs after < 5 µs of
//! serial work, 46 µs after ≥ 50 µs), and every part that finishes first
//! leaves its worker idle until the next kernel: at 2 threads, the time
//! between a kernel's start and the end of its slower part beyond that
//! part's own run was 5.5 % of SqueezeNet's kernel time and 10.4 % of
//! EfficientNet's (blocks of `graph_models.py`). Here each worker spins on its
//! slot for a millisecond after its last part (kernels follow each other
//! far faster than that while a model runs) and only then parks.
//!
//! A part is plain data (`Copy + Send + 'static`: function pointers and
//! addresses as integers) run by a plain function, so a worker runs it
//! without borrowing anything from the caller; [`ThreadPool::run_parts`]
//! returns only when every part has run, which is what keeps the
//! addresses inside a part valid while it runs.

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::DeviceError;

/// How long a worker spins for its next part before it parks. Spinning
/// yields the core every 256 turns, so more threads than cores still make
/// progress (4 threads on this 2-core guest: SqueezeNet blocks 5.3 ms
/// against rayon's 4.3; parking at once instead, 6.0: each kernel then
/// waits for three wake-ups).
const SPIN: Duration = Duration::from_millis(1);

/// The threads a kernel's independent pieces run on: the caller's own
/// thread and `threads − 1` workers. One thread means no workers at all,
/// so single-threaded runs pay no synchronisation.
pub struct ThreadPool {
    threads: usize,
    workers: Vec<Worker>,
}

/// A part posted to a worker, type-erased.
type Job = Box<dyn FnOnce() -> i32 + Send>;

/// One worker's mailbox: the part to run and the counters that hand it
/// over (`posted` by the caller, `done` by the worker).
#[derive(Default)]
struct Slot {
    job: Mutex<Option<Job>>,
    posted: AtomicUsize,
    done: AtomicUsize,
    status: AtomicI32,
    parked: AtomicBool,
    stop: AtomicBool,
}

struct Worker {
    slot: Arc<Slot>,
    handle: Option<JoinHandle<()>>,
}

/// The most threads a pool may have: 4 per hardware thread (at least 8,
/// at most 1024), so a mistyped count never spawns thousands of threads.
pub fn max_threads() -> usize {
    let hardware = std::thread::available_parallelism().map_or(1, |n| n.get());
    hardware.saturating_mul(4).clamp(8, 1024)
}

/// Checks a requested thread count against the pool's limits (at least 1,
/// at most [`max_threads`]) before anything is spawned or compiled.
pub fn check_threads(threads: usize) -> Result<usize, DeviceError> {
    let max = max_threads();
    match threads {
        0 => Err(DeviceError::NoThreads),
        n if n > max => Err(DeviceError::TooManyThreads { requested: n, max }),
        n => Ok(n),
    }
}

impl ThreadPool {
    /// A pool of `threads` threads (at least 1, at most [`max_threads`]:
    /// more is an error, not a clamp, so a run never silently differs from
    /// what was asked).
    pub fn new(threads: usize) -> Result<Self, DeviceError> {
        check_threads(threads)?;
        let mut workers = Vec::with_capacity(threads - 1);
        for i in 1..threads {
            let slot = Arc::new(Slot::default());
            let mine = slot.clone();
            let handle = std::thread::Builder::new()
                .name(format!("m4c-cpu-{i}"))
                .spawn(move || work(&mine))
                .map_err(DeviceError::Spawn)?;
            workers.push(Worker {
                slot,
                handle: Some(handle),
            });
        }
        Ok(Self { threads, workers })
    }

    /// The number of threads work is spread over.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `run(part)` for every part — one on each worker, the first
    /// and any beyond [`Self::threads`] on the caller's thread — and
    /// returns when all have, with their statuses or-ed together.
    pub fn run_parts<P: Copy + Send + 'static>(&self, parts: &[P], run: fn(P) -> i32) -> i32 {
        let Some((&first, rest)) = parts.split_first() else {
            return 0;
        };
        let (posted, mine) = rest.split_at(rest.len().min(self.workers.len()));
        let mut waits = Vec::with_capacity(posted.len());
        for (worker, &part) in self.workers.iter().zip(posted) {
            let slot = &worker.slot;
            *lock(&slot.job) = Some(Box::new(move || run(part)));
            let ticket = slot.posted.fetch_add(1, Ordering::SeqCst) + 1;
            if slot.parked.load(Ordering::SeqCst) {
                if let Some(handle) = &worker.handle {
                    handle.thread().unpark();
                }
            }
            waits.push((slot, ticket));
        }
        let mut status = run(first);
        for &part in mine {
            status |= run(part);
        }
        for (slot, ticket) in waits {
            let mut spin = Spin::default();
            while slot.done.load(Ordering::Acquire) != ticket {
                spin.turn();
            }
            status |= slot.status.load(Ordering::Relaxed);
        }
        status
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        for worker in &self.workers {
            worker.slot.stop.store(true, Ordering::SeqCst);
            if let Some(handle) = &worker.handle {
                handle.thread().unpark();
            }
        }
        for worker in &mut self.workers {
            if let Some(handle) = worker.handle.take() {
                // A worker runs only plain parts; a join error would be a
                // panic already reported on its thread.
                let _ = handle.join();
            }
        }
    }
}

/// A busy wait's turns: a spin-loop hint, and every 256 turns the core
/// yielded, so that a thread with work runs (more threads than cores).
#[derive(Default)]
struct Spin(u32);

impl Spin {
    /// One turn; whether it yielded.
    fn turn(&mut self) -> bool {
        self.0 = self.0.wrapping_add(1);
        if self.0.is_multiple_of(256) {
            std::thread::yield_now();
            true
        } else {
            std::hint::spin_loop();
            false
        }
    }
}

/// The job slot, also after a panic elsewhere poisoned it (the slot holds
/// no invariant a panic could break).
fn lock(job: &Mutex<Option<Job>>) -> std::sync::MutexGuard<'_, Option<Job>> {
    job.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A worker's loop: wait for the next ticket (spinning for [`SPIN`], then
/// parked), run its part, publish the status and the ticket.
fn work(slot: &Slot) {
    let mut seen = 0;
    loop {
        let mut since = Instant::now();
        let mut spin = Spin::default();
        loop {
            if slot.stop.load(Ordering::Acquire) {
                return;
            }
            let posted = slot.posted.load(Ordering::Acquire);
            if posted != seen {
                seen = posted;
                break;
            }
            // After each yield, park once the spin time is over.
            if !spin.turn() || since.elapsed() < SPIN {
                continue;
            }
            slot.parked.store(true, Ordering::SeqCst);
            if slot.posted.load(Ordering::SeqCst) == seen && !slot.stop.load(Ordering::SeqCst) {
                std::thread::park();
            }
            slot.parked.store(false, Ordering::SeqCst);
            since = Instant::now();
        }
        let job = lock(&slot.job).take();
        let status = job.map_or(0, |job| job());
        slot.status.store(status, Ordering::Relaxed);
        slot.done.store(seen, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_threads_is_an_error() {
        assert!(matches!(ThreadPool::new(0), Err(DeviceError::NoThreads)));
    }

    #[test]
    fn absurd_thread_counts_are_refused_before_spawning() {
        let max = max_threads();
        assert!((8..=1024).contains(&max));
        assert!(ThreadPool::new(max).is_ok());
        match ThreadPool::new(100_000) {
            Err(
                e @ DeviceError::TooManyThreads {
                    requested: 100_000, ..
                },
            ) => {
                assert!(e
                    .to_string()
                    .starts_with("100000 threads requested; at most"))
            }
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("100000 threads accepted"),
        }
    }

    /// A part that records its index in a shared table.
    fn mark((table, i): (&'static [AtomicUsize], usize)) -> i32 {
        table[i].fetch_add(i + 1, Ordering::SeqCst);
        1 << i
    }

    #[test]
    fn every_part_runs_once_and_statuses_combine() {
        for threads in [1, 2, 3] {
            let pool = ThreadPool::new(threads).unwrap();
            let table: &'static [AtomicUsize] =
                Box::leak((0..threads).map(|_| AtomicUsize::new(0)).collect());
            for round in 1..=50 {
                let parts: Vec<_> = (0..threads).map(|i| (table, i)).collect();
                let status = pool.run_parts(&parts, mark);
                assert_eq!(status, (1 << threads) - 1);
                let seen: Vec<usize> = table.iter().map(|a| a.load(Ordering::SeqCst)).collect();
                assert_eq!(seen, (1..=threads).map(|i| i * round).collect::<Vec<_>>());
            }
        }
    }

    #[test]
    fn parts_beyond_the_threads_run_on_the_caller() {
        let pool = ThreadPool::new(2).unwrap();
        let table: &'static [AtomicUsize] =
            Box::leak((0..4).map(|_| AtomicUsize::new(0)).collect());
        let parts: Vec<_> = (0..4).map(|i| (table, i)).collect();
        assert_eq!(pool.run_parts(&parts, mark), 0b1111);
        let seen: Vec<usize> = table.iter().map(|a| a.load(Ordering::SeqCst)).collect();
        assert_eq!(seen, [1, 2, 3, 4]);
    }

    #[test]
    fn parked_workers_wake_for_the_next_part() {
        let pool = ThreadPool::new(2).unwrap();
        let table: &'static [AtomicUsize] =
            Box::leak(Box::new([AtomicUsize::new(0), AtomicUsize::new(0)]));
        std::thread::sleep(SPIN * 5);
        assert_eq!(pool.run_parts(&[(table, 0), (table, 1)], mark), 3);
        assert_eq!(table[1].load(Ordering::SeqCst), 2);
    }
}
