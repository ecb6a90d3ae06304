//! Launch geometry shared by the emitters: how many invocations each
//! kernel description runs as, in which workgroups (CUDA: thread blocks),
//! and how a flat index splits into row-major coordinates. The WGSL and
//! PTX emitters differ in syntax only; what each invocation computes and
//! where the work is divided is decided here, once.

use m4c_gpu_device::MAX_WORKGROUPS;

use crate::kernel::{Gemm, Map, Row};

/// Invocations per workgroup of a Map or Row kernel.
pub const GROUP: usize = 64;
/// Edge of a GEMM workgroup (`TILE × TILE` invocations) and its K step.
pub const TILE: usize = 16;

/// Workgroups for `units` workgroups' worth of work: x up to the
/// dispatch limit, the rest in y.
pub fn spread(units: usize) -> Result<[u32; 3], String> {
    let x = units.clamp(1, MAX_WORKGROUPS as usize);
    let y = units.div_ceil(x);
    if y > MAX_WORKGROUPS as usize {
        return Err(format!("{units} workgroups exceed one dispatch"));
    }
    Ok([x as u32, y as u32, 1])
}

/// Row-major strides of a loop nest or shape (an empty extent counts as
/// one, so divisions stay defined; its loop is empty anyway).
pub fn strides(dims: &[usize]) -> Vec<usize> {
    let mut stride: usize = dims.iter().map(|&n| n.max(1)).product();
    dims.iter()
        .map(|&n| {
            stride /= n.max(1);
            stride
        })
        .collect()
}

/// How a [`Map`] is launched: `per` output elements per invocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapLaunch {
    /// Output elements.
    pub count: usize,
    /// Elements each invocation writes.
    pub per: usize,
    /// Invocations doing work (the last workgroup's tail returns early).
    pub threads: usize,
    pub workgroups: [u32; 3],
}

/// The launch of `m` with `per` elements per invocation (WGSL packs four
/// bytes per invocation, since it cannot store single bytes; PTX one).
pub fn map(m: &Map, per: usize) -> Result<MapLaunch, String> {
    let count: usize = m.shape.iter().product();
    let threads = count.div_ceil(per);
    Ok(MapLaunch {
        count,
        per,
        threads,
        workgroups: spread(threads.div_ceil(GROUP))?,
    })
}

/// How a [`Gemm`] is blocked: each `TILE × TILE` workgroup computes a
/// `block × block` output tile, each invocation an `r × r` register tile
/// (rows `ly + TILE·i`, columns `lx + TILE·j`); workgroup z is the batch
/// index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GemmLaunch {
    pub r: usize,
    pub block: usize,
    pub workgroups: [u32; 3],
}

/// The blocking of `g`: 4×4 register tiles where there are enough output
/// blocks to fill a GPU, else one output per invocation (small products).
pub fn gemm(g: &Gemm) -> Result<GemmLaunch, String> {
    let batch: usize = g.batch.iter().product();
    if batch > MAX_WORKGROUPS as usize {
        return Err(format!("{batch} matrix products exceed one dispatch"));
    }
    let r = if g.m.div_ceil(4 * TILE) * g.n.div_ceil(4 * TILE) * batch >= 64 {
        4
    } else {
        1
    };
    let block = r * TILE;
    Ok(GemmLaunch {
        r,
        block,
        workgroups: [
            g.n.div_ceil(block).max(1) as u32,
            g.m.div_ceil(block).max(1) as u32,
            batch.max(1) as u32,
        ],
    })
}

/// The batch axes of `g` innermost first, as `(extent, a stride, b
/// stride)`: the order in which the batch index is divided.
pub fn batch_axes(g: &Gemm) -> impl Iterator<Item = (usize, usize, usize)> + '_ {
    (0..g.batch.len())
        .rev()
        .map(|d| (g.batch[d].max(1), g.a_batch[d], g.b_batch[d]))
}

/// One workgroup per row of `r`.
pub fn row(r: &Row) -> Result<[u32; 3], String> {
    spread(r.outer * r.inner)
}

/// The halving steps of a `GROUP`-wide tree reduction (32, 16, …, 1).
pub fn reduction_steps() -> impl Iterator<Item = usize> {
    std::iter::successors(Some(GROUP / 2), |&s| (s > 1).then_some(s / 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strides_and_spread() {
        assert_eq!(strides(&[2, 3, 4]), vec![12, 4, 1]);
        assert_eq!(strides(&[2, 0, 4]), vec![4, 4, 1]);
        assert_eq!(spread(70_000).unwrap(), [65_535, 2, 1]);
        assert!(spread(65_535 * 65_536).is_err());
        assert_eq!(
            reduction_steps().collect::<Vec<_>>(),
            vec![32, 16, 8, 4, 2, 1]
        );
    }
}
