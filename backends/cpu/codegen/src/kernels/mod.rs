//! Generators of the graph kernels. Every kernel has the uniform signature
//! of `m4c_cpu_device::KernelFn`: a table of buffer pointers, the range
//! `begin..end` of its outermost loop it computes, and a scratch pointer.
//! Shapes and strides are compile-time constants.

pub(crate) mod attention;
pub(crate) mod conv;
mod conv_depthwise;
mod conv_direct;
pub(crate) mod conv_epilogue;
mod conv_gemm;
mod conv_gemm_t;
pub(crate) mod elementwise;
pub(crate) mod gather;
mod kernel;
pub(crate) mod math;
pub(crate) mod matmul;
pub(crate) mod movement;
pub(crate) mod pool;
pub(crate) mod reduce;
pub(crate) mod resize;
pub(crate) mod softmax_norm;
pub(crate) mod window;

pub(crate) use kernel::{
    broadcast_strides, contiguous_strides, fold_axes, folded_extent, int_type, Cx, Elem, Kernel,
};
