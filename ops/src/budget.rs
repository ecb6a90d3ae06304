//! The memory budget: every tensor whose size comes from attributes or data
//! is sized with checked arithmetic and compared with a byte budget before
//! it is allocated, so hostile shapes become errors instead of aborts.
//!
//! The budget is process-wide (the interpreter is called from deep inside
//! graph execution and constant folding): [`set_max_memory`] changes it,
//! [`default_max_memory`] is the initial value.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::error::{OpsError, Result};

/// Budget used when the physical memory cannot be read.
const FALLBACK: usize = 8 << 30;

/// 0 = not set yet (the default is computed on first use).
static MAX_MEMORY: AtomicUsize = AtomicUsize::new(0);

/// The default budget: half of the physical memory (`MemTotal` in
/// `/proc/meminfo`), at most 8 GiB; 8 GiB where it cannot be read.
pub fn default_max_memory() -> usize {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| mem_total(&text))
        .map_or(FALLBACK, |total| (total / 2).min(FALLBACK))
}

/// `MemTotal` in bytes from the text of `/proc/meminfo`.
fn mem_total(meminfo: &str) -> Option<usize> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut words = line.split_whitespace().skip(1);
    let kib: usize = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") | None => kib.checked_mul(1024),
        Some(_) => None,
    }
}

/// Sets the largest tensor (in bytes) the interpreter may allocate.
pub fn set_max_memory(bytes: usize) {
    MAX_MEMORY.store(bytes.max(1), Ordering::Relaxed);
}

/// The largest tensor (in bytes) the interpreter may allocate.
pub fn max_memory() -> usize {
    match MAX_MEMORY.load(Ordering::Relaxed) {
        0 => {
            let d = default_max_memory();
            MAX_MEMORY.store(d, Ordering::Relaxed);
            d
        }
        n => n,
    }
}

/// Bytes of a tensor of `shape` with `elem_bytes`-byte elements, or `None`
/// when the size overflows.
pub fn tensor_bytes(shape: &[usize], elem_bytes: usize) -> Option<usize> {
    shape
        .iter()
        .try_fold(elem_bytes, |acc, &d| acc.checked_mul(d))
}

/// Checks that a tensor of `shape` (elements of `elem_bytes`) made by `op`
/// fits the budget `max`: an overflowing or too large size is an error
/// naming the operator, the shape and the size.
pub fn check_with(op: &'static str, shape: &[usize], elem_bytes: usize, max: usize) -> Result<()> {
    match tensor_bytes(shape, elem_bytes) {
        Some(n) if n <= max => Ok(()),
        Some(n) => Err(OpsError::invalid(
            op,
            format!("a tensor of shape {shape:?} needs {n} bytes, over the memory budget of {max} bytes"),
        )),
        None => Err(OpsError::invalid(
            op,
            format!("the size of a tensor of shape {shape:?} overflows"),
        )),
    }
}

/// [`check_with`] against the process-wide budget.
pub fn check(op: &'static str, shape: &[usize], elem_bytes: usize) -> Result<()> {
    check_with(op, shape, elem_bytes, max_memory())
}

/// `a + b + c` for extents (padded axes), an error of `op` on overflow.
pub(crate) fn add3(op: &'static str, a: usize, b: usize, c: usize) -> Result<usize> {
    a.checked_add(b)
        .and_then(|s| s.checked_add(c))
        .ok_or_else(|| OpsError::invalid(op, format!("extent {a} + {b} + {c} overflows")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_mem_total() {
        let text = "MemFree: 10 kB\nMemTotal:       16000 kB\n";
        assert_eq!(mem_total(text), Some(16000 * 1024));
        assert_eq!(mem_total("nothing"), None);
        assert!(default_max_memory() <= FALLBACK);
    }

    #[test]
    fn overflow_and_budget_are_errors() {
        assert_eq!(tensor_bytes(&[2, 3], 4), Some(24));
        assert_eq!(tensor_bytes(&[usize::MAX, 2], 1), None);
        assert!(check_with("X", &[2, 3], 4, 24).is_ok());
        let over = check_with("X", &[2, 3], 4, 23).unwrap_err().to_string();
        assert!(
            over.contains("24 bytes") && over.starts_with("X: "),
            "{over}"
        );
        let wrap = check_with("X", &[1 << 40, 1 << 40], 4, usize::MAX).unwrap_err();
        assert!(wrap.to_string().contains("overflows"));
        assert!(add3("X", usize::MAX, 1, 0).is_err());
    }
}
