//! A small fixed-size pool of worker threads.

use rayon::prelude::*;

use crate::DeviceError;

/// The threads a kernel's independent pieces run on. One thread means the
/// caller's own thread and no pool at all, so single-threaded runs pay no
/// synchronisation.
pub struct ThreadPool {
    threads: usize,
    pool: Option<rayon::ThreadPool>,
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
    /// A pool of `threads` workers (at least 1, at most [`max_threads`]:
    /// more is an error, not a clamp, so a run never silently differs from
    /// what was asked).
    pub fn new(threads: usize) -> Result<Self, DeviceError> {
        check_threads(threads)?;
        let pool = if threads == 1 {
            None
        } else {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .thread_name(|i| format!("m4c-cpu-{i}"))
                .build()
                .map_err(|e| DeviceError::Spawn(std::io::Error::other(e)))?;
            Some(pool)
        };
        Ok(Self { threads, pool })
    }

    /// The number of threads work is spread over.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `op` on one of the pool's threads (the caller's own thread when
    /// there is no pool) and returns its result. A whole graph runs inside
    /// one `install`, so each kernel's [`Self::for_each_mut`] forks and
    /// joins among the pool's threads, which are still awake from the
    /// previous kernel, instead of handing the work over from the caller's
    /// thread and waking the pool again for every kernel.
    pub fn install<R: Send>(&self, op: impl FnOnce() -> R + Send) -> R {
        match &self.pool {
            Some(pool) => pool.install(op),
            None => op(),
        }
    }

    /// Calls `work(i, &mut items[i])` for every item, the items spread over
    /// the pool's threads, and returns when all calls have.
    pub fn for_each_mut<T: Send>(&self, items: &mut [T], work: impl Fn(usize, &mut T) + Sync) {
        match &self.pool {
            Some(pool) if items.len() > 1 => pool.install(|| {
                items
                    .par_iter_mut()
                    .with_max_len(1)
                    .enumerate()
                    .for_each(|(i, item)| work(i, item))
            }),
            _ => items
                .iter_mut()
                .enumerate()
                .for_each(|(i, item)| work(i, item)),
        }
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

    #[test]
    fn every_item_is_visited_once() {
        for threads in [1, 2, 3] {
            let pool = ThreadPool::new(threads).unwrap();
            let mut items = vec![0usize; 10];
            pool.for_each_mut(&mut items, |i, item| *item += i + 1);
            assert_eq!(items, (1..=10).collect::<Vec<_>>());
        }
    }
}
