//! Sliding windows over `[N, C, spatial..]`: the tap arithmetic shared by
//! convolution and pooling, the offset tables through which the GEMM
//! convolutions read im2col's matrix from the (padded) input
//! ([`TapOffsets`]), and the pieces of kernels vectorised along the
//! last output axis (a vector of consecutive output positions of one row;
//! taps that fall into the padding or lanes past the row's end are masked).

use inkwell::types::VectorType;
use inkwell::values::{IntValue, PointerValue, VectorValue};
use inkwell::IntPredicate;

use super::{contiguous_strides, Cx, Elem, Kernel};
use crate::CodegenError;

/// A window geometry over the spatial axes.
#[derive(Clone, Debug)]
pub(crate) struct Window {
    pub input: Vec<usize>,
    pub output: Vec<usize>,
    pub kernel: Vec<usize>,
    pub strides: Vec<usize>,
    /// Begin pads per spatial axis.
    pub pads: Vec<usize>,
    pub dilations: Vec<usize>,
}

impl Window {
    /// Per spatial axis, the zero padding this window needs before and
    /// after its input so that every tap it reads lies inside: the begin
    /// pad, and as much after the end as the last output's last tap
    /// passes it.
    pub fn padding(&self) -> Vec<(usize, usize)> {
        (0..self.input.len())
            .map(|d| {
                let reach = (self.output[d].max(1) - 1) * self.strides[d]
                    + (self.kernel[d] - 1) * self.dilations[d]
                    + 1;
                (
                    self.pads[d],
                    reach.saturating_sub(self.pads[d] + self.input[d]),
                )
            })
            .collect()
    }

    /// The input dimensions padded by [`Window::padding`].
    pub fn padded_input(&self) -> Vec<usize> {
        self.padding()
            .iter()
            .zip(&self.input)
            .map(|(&(before, after), &n)| before + n + after)
            .collect()
    }

    /// The input position of tap `t` of output position `o` on axis `d`,
    /// and whether it lies inside the input.
    pub fn tap<'ctx>(
        &self,
        k: &Kernel<'_, 'ctx>,
        d: usize,
        o: IntValue<'ctx>,
        t: IntValue<'ctx>,
    ) -> Result<(IntValue<'ctx>, IntValue<'ctx>), CodegenError> {
        let p = k.em.mul_add(
            o,
            k.int(self.strides[d] as i64),
            k.int(-(self.pads[d] as i64)),
        )?;
        let p = k.em.mul_add(t, k.int(self.dilations[d] as i64), p)?;
        let inside = k.em.builder.build_int_compare(
            IntPredicate::ULT,
            p,
            k.int(self.input[d] as i64),
            "inside",
        )?;
        Ok((p, inside))
    }

    /// The input offset of the taps `(o, t)` inside one channel plane, and
    /// whether all are inside (the offset is 0 when not).
    pub fn offset<'ctx>(
        &self,
        k: &Kernel<'_, 'ctx>,
        o: &[IntValue<'ctx>],
        t: &[IntValue<'ctx>],
    ) -> Result<(IntValue<'ctx>, IntValue<'ctx>), CodegenError> {
        let strides = contiguous_strides(&self.input);
        let mut at = k.int(0);
        let mut all = k.cx.context.bool_type().const_all_ones();
        for d in 0..self.input.len() {
            let (p, inside) = self.tap(k, d, o[d], t[d])?;
            at = k.em.mul_add(p, k.int(strides[d]), at)?;
            all = k.em.builder.build_and(all, inside, "all")?;
        }
        let at =
            k.em.builder
                .build_select(all, at, k.int(0), "at")?
                .into_int_value();
        Ok((at, all))
    }
}

/// im2col without its matrix, for a window without padding over
/// `channels` planes: `B[k, p]` (`k = c·taps + t`) is element
/// `rows[k] + columns[p]` of the input's planes.
pub(crate) struct TapOffsets {
    /// Per k: `c·plane` plus tap `t`'s shift inside a plane.
    pub rows: Vec<i32>,
    /// Per output pixel: the input position of its first tap.
    pub columns: Vec<i32>,
}

impl TapOffsets {
    /// The tables of `window` (no padding) over `channels` planes; an
    /// error when an offset passes `i32`.
    pub fn new(window: &Window, channels: usize) -> Result<Self, CodegenError> {
        let strides = contiguous_strides(&window.input);
        let plane: usize = window.input.iter().product();
        let taps: usize = window.kernel.iter().product();
        let pixels: usize = window.output.iter().product();
        let spread = |index: usize, dims: &[usize], step: &[usize]| {
            let mut rest = index;
            let mut at = 0;
            for d in (0..dims.len()).rev() {
                at += (rest % dims[d]) * step[d] * strides[d] as usize;
                rest /= dims[d];
            }
            at
        };
        let fit = |at: usize| {
            i32::try_from(at).map_err(|_| CodegenError::Internal("tap offsets fit i32"))
        };
        Ok(Self {
            rows: (0..channels * taps)
                .map(|k| {
                    fit((k / taps) * plane + spread(k % taps, &window.kernel, &window.dilations))
                })
                .collect::<Result<_, _>>()?,
            columns: (0..pixels)
                .map(|p| fit(spread(p, &window.output, &window.strides)))
                .collect::<Result<_, _>>()?,
        })
    }

    /// Per vector of `lanes` pixels from `j·lanes`: 1 when all its lanes
    /// are pixels whose columns step by `step` (one wide load reads them);
    /// `−s` when the first `s` lanes and the others are two such runs (a
    /// vector crossing into the next output row: two masked loads read
    /// it); else 0 (a gather).
    pub fn runs(&self, lanes: usize, step: usize) -> Vec<i32> {
        self.columns
            .chunks(lanes)
            .map(|c| {
                let breaks: Vec<usize> = c
                    .windows(2)
                    .enumerate()
                    .filter(|(_, w)| i64::from(w[1]) - i64::from(w[0]) != step as i64)
                    .map(|(i, _)| i + 1)
                    .collect();
                match breaks[..] {
                    _ if c.len() != lanes => 0,
                    [] => 1,
                    [split] => -(split as i32),
                    _ => 0,
                }
            })
            .collect()
    }
}

/// Tables as one little-endian `i32` buffer, in order.
pub(crate) fn table_bytes(tables: &[&[i32]]) -> Vec<u8> {
    tables
        .iter()
        .flat_map(|t| t.iter())
        .flat_map(|v| v.to_le_bytes())
        .collect()
}

/// A vector of consecutive output positions on the last spatial axis.
pub(crate) struct Columns<'ctx> {
    /// The positions, one per lane.
    pub positions: VectorValue<'ctx>,
    /// The first position.
    pub first: IntValue<'ctx>,
    /// The lanes before the end of the row.
    pub live: VectorValue<'ctx>,
}

impl Window {
    /// Lanes of a row vector: a register's, fewer for rows shorter than
    /// that.
    pub fn row_lanes(&self, cx: Cx<'_, '_>) -> u32 {
        let last = self.output.last().copied().unwrap_or(1);
        (cx.lanes() as usize).min(last.next_power_of_two()) as u32
    }

    /// The loop extents over one plane's output: the leading output axes,
    /// then the row vectors of the last.
    pub fn row_dims(&self, lanes: u32) -> Vec<usize> {
        let (last, leading) = self.output.split_last().unwrap_or((&1, &[]));
        let mut dims = leading.to_vec();
        dims.push(last.div_ceil(lanes as usize));
        dims
    }

    /// The columns of row vector `index`.
    pub fn columns<'ctx>(
        &self,
        k: &Kernel<'_, 'ctx>,
        lanes: u32,
        index: IntValue<'ctx>,
    ) -> Result<Columns<'ctx>, CodegenError> {
        let lane_index = k.lane_indices(lanes);
        let b = &k.em.builder;
        let first = b.build_int_mul(index, k.int(i64::from(lanes)), "o0")?;
        let positions = b.build_int_add(k.splat_i64(first, lanes)?, lane_index, "o")?;
        let last = *self
            .output
            .last()
            .ok_or(CodegenError::Internal("a spatial axis"))?;
        let live = b.build_int_compare(
            IntPredicate::ULT,
            positions,
            k.splat_i64(k.int(last as i64), lanes)?,
            "live",
        )?;
        Ok(Columns {
            positions,
            first,
            live,
        })
    }

    /// The element offset inside one input plane of the row read by the
    /// leading-axes taps `t` of output row `rows`, and whether that row is
    /// inside the input.
    pub fn row_offset<'ctx>(
        &self,
        k: &Kernel<'_, 'ctx>,
        rows: &[IntValue<'ctx>],
        t: &[IntValue<'ctx>],
    ) -> Result<(IntValue<'ctx>, IntValue<'ctx>), CodegenError> {
        let strides = contiguous_strides(&self.input);
        let mut at = k.int(0);
        let mut inside = k.cx.context.bool_type().const_all_ones();
        for (d, &row) in rows.iter().enumerate() {
            let (p, ok) = self.tap(k, d, row, t[d])?;
            at = k.em.mul_add(p, k.int(strides[d]), at)?;
            inside = k.em.builder.build_and(inside, ok, "inside")?;
        }
        Ok((at, inside))
    }

    /// The input under last-axis tap `t` of `columns`, from the row at
    /// element `at` of `buffer`, and the mask of lanes that read it;
    /// other lanes hold `fill`. Small strides are one masked load of
    /// `lanes·stride` elements and a shuffle, larger ones a masked gather
    /// (masked-off elements are never read).
    pub fn load_row<'ctx>(
        &self,
        k: &Kernel<'_, 'ctx>,
        (buffer, at): (PointerValue<'ctx>, IntValue<'ctx>),
        columns: &Columns<'ctx>,
        t: IntValue<'ctx>,
        fill: f32,
    ) -> Result<(VectorValue<'ctx>, VectorValue<'ctx>), CodegenError> {
        let d = self.output.len() - 1;
        let lanes = columns.positions.get_type().get_size();
        let b = &k.em.builder;
        let f32t = k.cx.context.f32_type();
        let stride = self.strides[d] as i64;
        // Input position of lane l: (o0 + l)·stride + t·dilation - pad.
        let shift = k.em.mul_add(
            t,
            k.int(self.dilations[d] as i64),
            k.int(-(self.pads[d] as i64)),
        )?;
        let p = b.build_int_mul(columns.positions, k.splat_i64(k.int(stride), lanes)?, "p")?;
        let p = b.build_int_add(p, k.splat_i64(shift, lanes)?, "p")?;
        let inside = b.build_int_compare(
            IntPredicate::ULT,
            p,
            k.splat_i64(k.int(self.input[d] as i64), lanes)?,
            "inside",
        )?;
        let mask = b.build_and(inside, columns.live, "mask")?;
        let loaded = if stride <= MAX_LOADED_STRIDE {
            // The lanes·stride consecutive elements from the first lane's
            // tap in one masked load, then every stride-th.
            let wide = lanes * stride as u32;
            let start = k.em.mul_add(columns.first, k.int(stride), shift)?;
            let element = VectorType::const_vector(
                &(0..wide).map(|j| k.int(i64::from(j))).collect::<Vec<_>>(),
            );
            let lane_of = VectorType::const_vector(
                &(0..wide)
                    .map(|j| k.int(i64::from(j) / stride))
                    .collect::<Vec<_>>(),
            );
            let position = b.build_int_add(k.splat_i64(start, wide)?, element, "q")?;
            let inside = b.build_int_compare(
                IntPredicate::ULT,
                position,
                k.splat_i64(k.int(self.input[d] as i64), wide)?,
                "inside",
            )?;
            let lane = b.build_int_add(k.splat_i64(columns.first, wide)?, lane_of, "lane")?;
            let last = *self
                .output
                .last()
                .ok_or(CodegenError::Internal("a spatial axis"))?;
            let live = b.build_int_compare(
                IntPredicate::ULT,
                lane,
                k.splat_i64(k.int(last as i64), wide)?,
                "live",
            )?;
            let wide_mask = b.build_and(inside, live, "mask")?;
            let ptr = k.element(buffer, f32t.into(), b.build_int_add(at, start, "first")?)?;
            let wide_fill =
                VectorType::const_vector(&vec![f32t.const_float(f64::from(fill)); wide as usize]);
            let loaded = k.em.call_intrinsic(
                "llvm.masked.load",
                &[f32t.vec_type(wide).into(), ptr.get_type().into()],
                &[
                    ptr.into(),
                    align(k).into(),
                    wide_mask.into(),
                    wide_fill.into(),
                ],
            )?;
            let loaded = loaded
                .ok_or(CodegenError::Internal("masked loads return a value"))?
                .into_vector_value();
            every_stride(k, loaded, lanes, stride)?
        } else {
            let index = b.build_int_add(p, k.splat_i64(at, lanes)?, "index")?;
            k.masked_gather(buffer, index, mask, fill)?
        };
        Ok((loaded, mask))
    }

    /// Whether last-axis taps are read as one wide load per row vector
    /// (small strides) rather than gathered.
    pub fn loads_wide(&self) -> bool {
        self.strides
            .last()
            .is_some_and(|&s| s as i64 <= MAX_LOADED_STRIDE)
    }

    /// Whether row vector `columns` can be read with plain loads
    /// ([`Window::load_interior_row`]): every live lane's taps lie inside
    /// the input row and so does the wide load of every last-axis tap.
    /// With `rows` (the vector's leading output indices) a vector past
    /// the row's end, or one whose wide loads pass the row's end, is
    /// interior too as long as those loads stay inside the plane: its
    /// dead lanes read the next row's elements and are never stored
    /// ([`Window::store_row`] masks them). A 27-wide output row of 16
    /// lanes is then two plain vectors, not one plain and one masked
    /// (SqueezeNet's max pools took the masked path for half their
    /// vectors). `None` when the stride is read by gathers anyway.
    pub fn interior<'ctx>(
        &self,
        k: &Kernel<'_, 'ctx>,
        columns: &Columns<'ctx>,
        rows: Option<&[IntValue<'ctx>]>,
    ) -> Result<Option<IntValue<'ctx>>, CodegenError> {
        let d = self.output.len() - 1;
        let stride = self.strides[d] as i64;
        if stride > MAX_LOADED_STRIDE {
            return Ok(None);
        }
        let lanes = i64::from(columns.positions.get_type().get_size());
        let reach = (self.kernel[d] as i64 - 1) * self.dilations[d] as i64;
        let (width, out_width) = (self.input[d] as i64, self.output[d] as i64);
        let b = &k.em.builder;
        // The first tap's first element, and one past the last tap's wide
        // load (`lanes·stride` elements from its first lane's position).
        let low =
            k.em.mul_add(columns.first, k.int(stride), k.int(-(self.pads[d] as i64)))?;
        let high = b.build_int_add(low, k.int(lanes * stride + reach), "high")?;
        let end = b.build_int_add(columns.first, k.int(lanes), "end")?;
        let mut conditions = vec![b.build_int_compare(IntPredicate::SGE, low, k.int(0), "low")?];
        match rows {
            None => conditions.extend([
                b.build_int_compare(IntPredicate::SLE, high, k.int(width), "high")?,
                b.build_int_compare(IntPredicate::SLE, end, k.int(out_width), "full")?,
            ]),
            Some(rows) => {
                // The last live lane's last tap inside the row, the wide
                // loads of the last tap row inside the plane.
                let live_end = k.em.umin(end, k.int(out_width))?;
                let last = k.em.builder.build_int_sub(live_end, k.int(1), "last")?;
                let last =
                    k.em.mul_add(last, k.int(stride), k.int(reach + 1 - self.pads[d] as i64))?;
                let lead: Vec<IntValue<'ctx>> = self.kernel[..d]
                    .iter()
                    .map(|&n| k.int(n as i64 - 1))
                    .collect();
                let (bottom, _) = self.row_offset(k, rows, &lead)?;
                let b = &k.em.builder;
                let far = b.build_int_add(bottom, high, "far")?;
                let plane: usize = self.input.iter().product();
                conditions.extend([
                    b.build_int_compare(IntPredicate::SLE, last, k.int(width), "live")?,
                    b.build_int_compare(IntPredicate::SLE, far, k.int(plane as i64), "plane")?,
                ]);
            }
        }
        let b = &k.em.builder;
        let mut all = conditions[0];
        for c in &conditions[1..] {
            all = b.build_and(all, *c, "interior")?;
        }
        Ok(Some(all))
    }

    /// The input under last-axis tap `t` of `columns` (which
    /// [`Window::interior`] found interior) from the row at element `at`
    /// of `buffer`: one plain load of `lanes·stride` elements, then every
    /// stride-th.
    pub fn load_interior_row<'ctx>(
        &self,
        k: &Kernel<'_, 'ctx>,
        (buffer, at): (PointerValue<'ctx>, IntValue<'ctx>),
        columns: &Columns<'ctx>,
        t: IntValue<'ctx>,
    ) -> Result<VectorValue<'ctx>, CodegenError> {
        let d = self.output.len() - 1;
        let lanes = columns.positions.get_type().get_size();
        let stride = self.strides[d] as i64;
        let shift = k.em.mul_add(
            t,
            k.int(self.dilations[d] as i64),
            k.int(-(self.pads[d] as i64)),
        )?;
        let start = k.em.mul_add(columns.first, k.int(stride), shift)?;
        let at = k.em.builder.build_int_add(at, start, "first")?;
        let ptr = k.element(buffer, k.cx.context.f32_type().into(), at)?;
        let wide = k.load(Elem::F32, lanes * stride as u32, ptr)?;
        every_stride(k, wide, lanes, stride)
    }

    /// Every last-axis tap of `columns` (found interior) from the row at
    /// element `at` of `buffer`, taps whose offsets differ by less than the
    /// stride sharing one plain load of `lanes·stride` elements (each then
    /// a shuffle). [`Window::load_interior_row`] loads that much per tap:
    /// at stride 2 a 3-wide window's taps 0 and 1 read the same elements.
    pub fn load_interior_taps<'ctx>(
        &self,
        k: &Kernel<'_, 'ctx>,
        (buffer, at): (PointerValue<'ctx>, IntValue<'ctx>),
        columns: &Columns<'ctx>,
    ) -> Result<Vec<VectorValue<'ctx>>, CodegenError> {
        let d = self.output.len() - 1;
        let lanes = columns.positions.get_type().get_size() as usize;
        let (stride, dilation) = (self.strides[d], self.dilations[d]);
        let start = k.em.mul_add(
            columns.first,
            k.int(stride as i64),
            k.int(-(self.pads[d] as i64)),
        )?;
        let at = k.em.builder.build_int_add(at, start, "first")?;
        let i32t = k.cx.context.i32_type();
        let mut loads: Vec<(usize, VectorValue<'ctx>)> = Vec::new();
        let mut taps = Vec::with_capacity(self.kernel[d]);
        for t in 0..self.kernel[d] {
            let offset = t * dilation;
            let base = offset - offset % stride;
            let wide = match loads.iter().find(|(b, _)| *b == base) {
                Some(&(_, wide)) => wide,
                None => {
                    let from = k.em.builder.build_int_add(at, k.int(base as i64), "base")?;
                    let ptr = k.element(buffer, k.cx.context.f32_type().into(), from)?;
                    let wide = k.load(Elem::F32, (lanes * stride) as u32, ptr)?;
                    loads.push((base, wide));
                    wide
                }
            };
            let tap = VectorType::const_vector(
                &(0..lanes)
                    .map(|l| i32t.const_int((offset % stride + l * stride) as u64, false))
                    .collect::<Vec<_>>(),
            );
            let poison = wide.get_type().get_poison();
            taps.push(
                k.em.builder
                    .build_shuffle_vector(wide, poison, tap, "tap")?,
            );
        }
        Ok(taps)
    }

    /// Stores `value` for `columns` at `ptr` (the row's first column):
    /// lanes past the row's end are not written.
    pub fn store_row<'ctx>(
        &self,
        k: &Kernel<'_, 'ctx>,
        ptr: PointerValue<'ctx>,
        columns: &Columns<'ctx>,
        value: VectorValue<'ctx>,
    ) -> Result<(), CodegenError> {
        let last = *self
            .output
            .last()
            .ok_or(CodegenError::Internal("a spatial axis"))?;
        if last.is_multiple_of(value.get_type().get_size() as usize) {
            return k.store(Elem::F32, ptr, value);
        }
        k.em.call_intrinsic(
            "llvm.masked.store",
            &[value.get_type().into(), ptr.get_type().into()],
            &[
                value.into(),
                ptr.into(),
                align(k).into(),
                columns.live.into(),
            ],
        )?;
        Ok(())
    }
}

/// The largest stride read with one wide masked load per tap (and a
/// shuffle) rather than a gather.
pub(super) const MAX_LOADED_STRIDE: i64 = 4;

/// The alignment argument of the masked memory intrinsics (4: f32).
fn align<'ctx>(k: &Kernel<'_, 'ctx>) -> IntValue<'ctx> {
    k.cx.context.i32_type().const_int(4, false)
}

/// Lanes `0, stride, 2·stride, …` of `wide` (`lanes` of them).
pub(super) fn every_stride<'ctx>(
    k: &Kernel<'_, 'ctx>,
    wide: VectorValue<'ctx>,
    lanes: u32,
    stride: i64,
) -> Result<VectorValue<'ctx>, CodegenError> {
    if stride == 1 {
        return Ok(wide);
    }
    let i32t = k.cx.context.i32_type();
    let every = VectorType::const_vector(
        &(0..lanes)
            .map(|l| i32t.const_int(u64::from(l) * stride as u64, false))
            .collect::<Vec<_>>(),
    );
    Ok(k.em
        .builder
        .build_shuffle_vector(wide, wide.get_type().get_poison(), every, "strided")?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 3×3 window of stride 2 over a 5×6 (already padded) input of two
    /// channels: every `rows[k] + columns[p]` is the element a naive
    /// im2col reads, and vectors are runs only inside one output row.
    #[test]
    fn tap_offsets_address_what_im2col_reads() {
        let w = Window {
            input: vec![5, 6],
            output: vec![2, 2],
            kernel: vec![3, 3],
            strides: vec![2, 2],
            pads: vec![0, 0],
            dilations: vec![1, 1],
        };
        let t = TapOffsets::new(&w, 2).unwrap();
        for c in 0..2 {
            for (ky, kx) in (0..3).flat_map(|ky| (0..3).map(move |kx| (ky, kx))) {
                for (oy, ox) in (0..2).flat_map(|oy| (0..2).map(move |ox| (oy, ox))) {
                    let naive = c * 30 + (2 * oy + ky) * 6 + 2 * ox + kx;
                    let at = t.rows[c * 9 + ky * 3 + kx] + t.columns[oy * 2 + ox];
                    assert_eq!(at as usize, naive);
                }
            }
        }
        assert_eq!(t.columns, [0, 2, 12, 14]);
        assert_eq!(t.runs(2, 2), [1, 1]);
        // 0, 2 | 12, 14: two runs of stride 2, split after 2 lanes.
        assert_eq!(t.runs(4, 2), [-2]);
        // A partial last vector is never a run.
        assert_eq!(t.runs(3, 2), [-2, 0]);
    }

    /// Vectors crossing one row break are two runs, split at the lane
    /// after the row's last pixel; more breaks gather.
    #[test]
    fn vectors_across_one_row_are_two_runs() {
        let w = Window {
            input: vec![5, 7],
            output: vec![3, 5],
            kernel: vec![3, 3],
            strides: vec![1, 1],
            pads: vec![0, 0],
            dilations: vec![1, 1],
        };
        let t = TapOffsets::new(&w, 1).unwrap();
        assert_eq!(
            t.columns,
            [0, 1, 2, 3, 4, 7, 8, 9, 10, 11, 14, 15, 16, 17, 18]
        );
        // 0..4 | 7..9: split after 5 lanes; 10, 11 | 14..16 after 2.
        assert_eq!(t.runs(8, 1), [-5, 0]);
        assert_eq!(t.runs(5, 1), [1, 1, 1]);
        assert_eq!(t.runs(4, 1), [1, -1, -2, 0]);
        // Three rows in one vector: a gather.
        assert_eq!(t.runs(15, 1), [0]);
    }

    /// Padding covers exactly what the last output's last tap reaches.
    #[test]
    fn padding_reaches_the_last_tap() {
        let w = Window {
            input: vec![7],
            output: vec![4],
            kernel: vec![3],
            strides: vec![2],
            pads: vec![1],
            dilations: vec![1],
        };
        // Taps of output 3 read positions 5..=7 of the input: one past it.
        assert_eq!(w.padding(), [(1, 1)]);
        assert_eq!(w.padded_input(), [9]);
        let w = Window {
            output: vec![3],
            ..w
        };
        assert_eq!(w.padding(), [(1, 0)]);
    }
}
