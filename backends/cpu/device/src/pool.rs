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

impl ThreadPool {
    /// A pool of `threads` workers (at least 1).
    pub fn new(threads: usize) -> Result<Self, DeviceError> {
        if threads == 0 {
            return Err(DeviceError::NoThreads);
        }
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
    fn every_item_is_visited_once() {
        for threads in [1, 2, 3] {
            let pool = ThreadPool::new(threads).unwrap();
            let mut items = vec![0usize; 10];
            pool.for_each_mut(&mut items, |i, item| *item += i + 1);
            assert_eq!(items, (1..=10).collect::<Vec<_>>());
        }
    }
}
