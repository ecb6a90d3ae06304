//! Sliding-window geometry shared by Conv and the pooling operators.
//!
//! A window op is evaluated as a sum (or max) over kernel taps: for every
//! kernel offset, the strided view of the padded input that this offset
//! reads for all output positions at once.

use ndarray::{ArrayD, ArrayViewD, IxDyn, Slice};

use crate::error::{OpsError, Result};

/// Window attributes checked against an input's spatial extent.
pub(crate) struct Window {
    kernel: Vec<usize>,
    strides: Vec<usize>,
    dilations: Vec<usize>,
    pads: Vec<usize>,
    /// Output extent per spatial axis.
    pub out: Vec<usize>,
}

impl Window {
    /// Validates the attributes for an input whose trailing axes are
    /// `spatial` and computes the output extent.
    pub fn new(
        op: &'static str,
        spatial: &[usize],
        kernel: &[usize],
        strides: &[usize],
        pads: &[usize],
        dilations: &[usize],
    ) -> Result<Window> {
        let sp = spatial.len();
        if kernel.len() != sp
            || strides.len() != sp
            || dilations.len() != sp
            || pads.len() != 2 * sp
        {
            return Err(OpsError::invalid(
                op,
                format!("attributes must cover {sp} spatial axes"),
            ));
        }
        let out = (0..sp)
            .map(|i| {
                let span = dilations[i]
                    .checked_mul(kernel[i].max(1) - 1)
                    .and_then(|s| s.checked_add(1))
                    .ok_or_else(|| OpsError::invalid(op, "kernel span overflows"))?;
                let padded = crate::budget::add3(op, spatial[i], pads[i], pads[i + sp])?;
                if kernel[i] == 0 || strides[i] == 0 || dilations[i] == 0 || padded < span {
                    return Err(OpsError::invalid(
                        op,
                        format!(
                            "window {span} (stride {}) does not fit padded axis {padded}",
                            strides[i]
                        ),
                    ));
                }
                Ok((padded - span) / strides[i] + 1)
            })
            .collect::<Result<_>>()?;
        Ok(Window {
            kernel: kernel.to_vec(),
            strides: strides.to_vec(),
            dilations: dilations.to_vec(),
            pads: pads.to_vec(),
            out,
        })
    }

    /// Number of kernel taps.
    pub fn taps(&self) -> usize {
        self.kernel.iter().product()
    }

    /// `x` with its trailing spatial axes padded by `fill`; the padded
    /// tensor is checked against the memory budget first.
    pub fn pad<T: Clone>(&self, op: &'static str, x: ArrayViewD<T>, fill: T) -> Result<ArrayD<T>> {
        let sp = self.kernel.len();
        let lead = x.ndim() - sp;
        let mut shape = x.shape()[..lead].to_vec();
        for d in 0..sp {
            shape.push(crate::budget::add3(
                op,
                x.shape()[lead + d],
                self.pads[d],
                self.pads[d + sp],
            )?);
        }
        crate::budget::check(op, &shape, std::mem::size_of::<T>())?;
        let mut out = ArrayD::from_elem(IxDyn(&shape), fill);
        out.slice_each_axis_mut(|ax| {
            let i = ax.axis.index();
            let begin = if i < lead { 0 } else { self.pads[i - lead] };
            Slice::from(begin..begin + x.shape()[i])
        })
        .assign(&x);
        Ok(out)
    }

    /// The output shape for an input whose leading axes are `lead`, checked
    /// against the memory budget for elements of `elem_bytes`.
    pub fn out_shape(
        &self,
        op: &'static str,
        lead: &[usize],
        elem_bytes: usize,
    ) -> Result<Vec<usize>> {
        let mut shape = lead.to_vec();
        shape.extend(&self.out);
        crate::budget::check(op, &shape, elem_bytes)?;
        Ok(shape)
    }

    /// For every kernel offset (row-major), the view of `padded` it reads:
    /// leading axes unchanged, spatial axes of the output's extent.
    pub fn tap_views<'a, T>(
        &'a self,
        padded: &'a ArrayD<T>,
    ) -> impl Iterator<Item = ArrayViewD<'a, T>> + 'a {
        let sp = self.kernel.len();
        let lead = padded.ndim() - sp;
        ndarray::indices(IxDyn(&self.kernel))
            .into_iter()
            .map(move |k| {
                padded.slice_each_axis(|ax| {
                    let i = ax.axis.index();
                    if i < lead {
                        return Slice::from(..);
                    }
                    let d = i - lead;
                    let start = k[d] * self.dilations[d];
                    let end = start + (self.out[d] - 1) * self.strides[d] + 1;
                    Slice::new(start as isize, Some(end as isize), self.strides[d] as isize)
                })
            })
    }
}
