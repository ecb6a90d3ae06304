//! Resize (opset 11+), and its predecessors Resize-10 and Upsample.

use m4c_ir::op::{CoordMode, NearestRounding, ResizeMode};
use m4c_ir::Op;

use super::ctx::{axis, dims, Lowering, NodeCtx, B};

/// Resize / Upsample to a static output shape.
pub fn resize(b: &mut B, n: &NodeCtx) -> Lowering {
    let x = n.input(0)?;
    let s = b.shape(&x);
    let r = s.len();
    let legacy = n.node.op_type == "Upsample" || n.opset < 11;
    let (scales_in, sizes_in) = if n.node.op_type == "Upsample" && n.opset < 9 {
        (n.floats("scales"), None)
    } else if legacy {
        (n.const_floats(1)?, None)
    } else {
        (
            n.const_floats(2)?.filter(|v| !v.is_empty()),
            n.const_ints(3)?.filter(|v| !v.is_empty()),
        )
    };
    if n.int("antialias", 0) != 0 {
        return Err("antialias is not supported".into());
    }
    if n.string("keep_aspect_ratio_policy", "stretch") != "stretch" {
        return Err("keep_aspect_ratio_policy other than stretch is not supported".into());
    }
    let ax: Vec<usize> = match n.ints("axes") {
        Some(a) => a.iter().map(|&a| axis(a, r)).collect::<Result<_, _>>()?,
        None => (0..r).collect(),
    };
    let mut scales = vec![1.0f32; r];
    let mut sizes = s.clone();
    match (scales_in, sizes_in) {
        (_, Some(sz)) => {
            if sz.len() != ax.len() {
                return Err("sizes do not match the axes".into());
            }
            let sz = dims("sizes", &sz)?;
            for (k, &a) in ax.iter().enumerate() {
                sizes[a] = sz[k];
                scales[a] = sizes[a] as f32 / s[a] as f32;
            }
        }
        (Some(sc), None) => {
            if sc.len() != ax.len() {
                return Err("scales do not match the axes".into());
            }
            for (k, &a) in ax.iter().enumerate() {
                scales[a] = sc[k];
                sizes[a] = (s[a] as f32 * sc[k]).floor() as usize;
            }
        }
        (None, None) => return Err("needs scales or sizes".into()),
    }
    let mode = match n.string("mode", "nearest").as_str() {
        "nearest" => {
            let rounding = if legacy {
                NearestRounding::Floor
            } else {
                match n.string("nearest_mode", "round_prefer_floor").as_str() {
                    "round_prefer_floor" => NearestRounding::RoundPreferFloor,
                    "round_prefer_ceil" => NearestRounding::RoundPreferCeil,
                    "floor" => NearestRounding::Floor,
                    "ceil" => NearestRounding::Ceil,
                    other => return Err(format!("unknown nearest_mode '{other}'")),
                }
            };
            ResizeMode::Nearest(rounding)
        }
        "linear" | "bilinear" | "trilinear" => ResizeMode::Linear,
        other => return Err(format!("resize mode '{other}' is not supported")),
    };
    let coord = if legacy {
        CoordMode::Asymmetric
    } else {
        match n
            .string("coordinate_transformation_mode", "half_pixel")
            .as_str()
        {
            "half_pixel" => CoordMode::HalfPixel,
            "pytorch_half_pixel" => CoordMode::PytorchHalfPixel,
            "align_corners" => CoordMode::AlignCorners,
            "asymmetric" => CoordMode::Asymmetric,
            other => {
                return Err(format!(
                    "coordinate_transformation_mode '{other}' is not supported"
                ))
            }
        }
    };
    if sizes == s {
        return Ok(vec![x]);
    }
    Ok(vec![b.op(
        Op::Resize {
            mode,
            coord,
            scales,
            sizes,
        },
        &[x],
        n.name(),
    )?])
}
