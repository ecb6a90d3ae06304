//! Recurrent layers (LSTM, GRU, RNN) unrolled over their static sequence
//! length: one MatMul for the input projection of all steps, then per step
//! a MatMul with the recurrence weights and elementwise gate math. This is
//! how an NPU without a recurrent unit runs them.

use m4c_ir::Op;

use super::builder::Val;
use super::ctx::{Lowering, NodeCtx, B};
use super::elementwise::{bin, clamp, un};
use super::shape::{reshape, slice_axis, transpose};

/// The shared shape of the three recurrent ops.
struct Rnn<'a> {
    n: &'a NodeCtx<'a>,
    name: String,
    hidden: usize,
    gates: usize,
    seq: usize,
    batch: usize,
    /// `[seq, batch, input]` (layout 1 inputs are transposed to this).
    x: Val,
}

/// One direction's weights: input projection for all steps plus bias, and
/// the recurrence matrix.
struct Dir {
    /// `[seq, batch, gates·hidden]`
    xw: Val,
    /// `[hidden, gates·hidden]`
    r_t: Val,
    /// Recurrence bias `[gates·hidden]` (GRU keeps it apart).
    rb: Val,
    reverse: bool,
}

impl<'a> Rnn<'a> {
    fn new(b: &mut B, n: &'a NodeCtx<'a>, gates: usize) -> Result<Self, String> {
        let name = n.name().to_string();
        let xs = b.shape(&n.input(0)?);
        if xs.len() != 3 {
            return Err(format!("input {xs:?} must be 3-D"));
        }
        let layout1 = n.int("layout", 0) != 0;
        let (seq, batch, input) = if layout1 {
            (xs[1], xs[0], xs[2])
        } else {
            (xs[0], xs[1], xs[2])
        };
        let hidden = check_shapes(b, n, gates, batch, input)?;
        if n.opt_input(4).is_some() {
            let lens = n.const_ints(4)?.ok_or("sequence_lens must be constant")?;
            if lens.iter().any(|&l| usize::try_from(l) != Ok(seq)) {
                return Err("sequence_lens shorter than the sequence are not supported".into());
            }
        }
        let mut x = n.input(0)?;
        if layout1 {
            x = transpose(b, &x, &[1, 0, 2], &name)?;
        }
        Ok(Rnn {
            n,
            name,
            hidden,
            gates,
            seq,
            batch,
            x,
        })
    }

    fn directions(&self, b: &mut B) -> Result<Vec<Dir>, String> {
        let (n, name, gh) = (self.n, self.name.as_str(), self.gates * self.hidden);
        let reverse: Vec<bool> = match n.string("direction", "forward").as_str() {
            "forward" => vec![false],
            "reverse" => vec![true],
            "bidirectional" => vec![false, true],
            other => return Err(format!("unknown direction '{other}'")),
        };
        let input = b.shape(&self.x)[2];
        let x2 = reshape(b, &self.x, &[self.seq * self.batch, input], name)?;
        let (w, r) = (n.input(1)?, n.input(2)?);
        let bias = n.opt_input(3);
        let mut dirs = vec![];
        for (d, &rev) in reverse.iter().enumerate() {
            let wd = slice_axis(b, &w, 0, d, 1, 1, name)?;
            let wd = reshape(b, &wd, &[gh, input], name)?;
            let rd = slice_axis(b, &r, 0, d, 1, 1, name)?;
            let rd = reshape(b, &rd, &[gh, self.hidden], name)?;
            let r_t = transpose(b, &rd, &[1, 0], name)?;
            let mut xw = b.op(
                Op::MatMul {
                    trans_a: false,
                    trans_b: true,
                },
                &[x2.clone(), wd],
                name,
            )?;
            let rb = match &bias {
                Some(bv) => {
                    let bd = slice_axis(b, bv, 0, d, 1, 1, name)?;
                    let bd = reshape(b, &bd, &[2 * gh], name)?;
                    let wb = slice_axis(b, &bd, 0, 0, 1, gh, name)?;
                    xw = bin(b, Op::Add, &xw, &wb, name)?;
                    slice_axis(b, &bd, 0, gh, 1, gh, name)?
                }
                None => b.scalar(b.dtype(&xw), 0.0)?,
            };
            let xw = reshape(b, &xw, &[self.seq, self.batch, gh], name)?;
            dirs.push(Dir {
                xw,
                r_t,
                rb,
                reverse: rev,
            });
        }
        Ok(dirs)
    }

    /// Initial state `[dirs, batch, hidden]` input `i`, for direction `d`.
    fn initial(&self, b: &mut B, i: usize, d: usize) -> Result<Val, String> {
        let (bsz, h) = (self.batch, self.hidden);
        match self.n.opt_input(i) {
            Some(v) => {
                let s = slice_axis(b, &v, 0, d, 1, 1, &self.name)?;
                reshape(b, &s, &[bsz, h], &self.name)
            }
            None => Ok(Val::konst(m4c_ir::Tensor::from_f32(
                &[bsz, h],
                &vec![0.0; bsz * h],
            ))),
        }
    }

    /// Gate `k` of a `[batch, gates·hidden]` pre-activation.
    fn gate(&self, b: &mut B, v: &Val, k: usize) -> Result<Val, String> {
        slice_axis(b, v, 1, k * self.hidden, 1, self.hidden, &self.name)
    }

    /// Step `t`'s input projection `[batch, gates·hidden]`.
    fn step_input(&self, b: &mut B, dir: &Dir, t: usize) -> Result<Val, String> {
        let s = slice_axis(b, &dir.xw, 0, t, 1, 1, &self.name)?;
        reshape(b, &s, &[self.batch, self.gates * self.hidden], &self.name)
    }

    /// Applies activation `idx` of the node's `activations` list.
    fn act(&self, b: &mut B, v: &Val, idx: usize, default: &str) -> Result<Val, String> {
        let names: Vec<String> = self
            .n
            .node
            .attribute
            .iter()
            .find(|a| a.name == "activations")
            .map(|a| {
                a.strings
                    .iter()
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect()
            })
            .unwrap_or_default();
        let clip = self.n.float("clip", 0.0);
        let v = if clip > 0.0 {
            let (lo, hi) = (b.f32(-clip), b.f32(clip));
            clamp(b, v, Some(lo), Some(hi), &self.name)?
        } else {
            v.clone()
        };
        match names.get(idx).map(String::as_str).unwrap_or(default) {
            "Sigmoid" => un(b, Op::Sigmoid, &v, &self.name),
            "Tanh" => un(b, Op::Tanh, &v, &self.name),
            "Relu" => {
                let z = b.f32(0.0);
                bin(b, Op::Max, &v, &z, &self.name)
            }
            other => Err(format!("activation '{other}' is not supported")),
        }
    }

    /// Stacks per-step hidden states into Y `[seq, dirs, batch, hidden]`
    /// (or layout 1) and the final states `[dirs, batch, hidden]`.
    fn outputs(&self, b: &mut B, per_dir: Vec<(Vec<Val>, Vec<Val>)>) -> Lowering {
        let (name, bsz, h) = (self.name.as_str(), self.batch, self.hidden);
        let nd = per_dir.len();
        let mut ys = vec![];
        let mut finals: Vec<Vec<Val>> = vec![vec![]; per_dir[0].1.len()];
        for (steps, last) in per_dir {
            let steps: Vec<Val> = steps
                .iter()
                .map(|s| reshape(b, s, &[1, 1, bsz, h], name))
                .collect::<Result<_, _>>()?;
            ys.push(if steps.len() == 1 {
                steps[0].clone()
            } else {
                b.op(Op::Concat { axis: 0 }, &steps, name)?
            });
            for (k, v) in last.iter().enumerate() {
                finals[k].push(reshape(b, v, &[1, bsz, h], name)?);
            }
        }
        let mut y = if nd == 1 {
            ys.remove(0)
        } else {
            b.op(Op::Concat { axis: 1 }, &ys, name)?
        };
        let layout1 = self.n.int("layout", 0) != 0;
        if layout1 {
            y = transpose(b, &y, &[2, 0, 1, 3], name)?;
        }
        let mut outs = vec![y];
        for f in finals {
            let v = if f.len() == 1 {
                f[0].clone()
            } else {
                b.op(Op::Concat { axis: 0 }, &f, name)?
            };
            outs.push(if layout1 {
                transpose(b, &v, &[1, 0, 2], name)?
            } else {
                v
            });
        }
        Ok(outs)
    }

    fn order(&self, dir: &Dir) -> Vec<usize> {
        if dir.reverse {
            (0..self.seq).rev().collect()
        } else {
            (0..self.seq).collect()
        }
    }
}

/// Checks the weights and states of a recurrent node against the spec
/// (W `[dirs, gates·hidden, input]`, R `[dirs, gates·hidden, hidden]`,
/// B `[dirs, 2·gates·hidden]`, initial states `[dirs, batch, hidden]`,
/// peepholes `[dirs, 3·hidden]`; layout 1 swaps the states' first two
/// axes) before any is sliced. Returns `hidden_size`.
fn check_shapes(
    b: &B,
    n: &NodeCtx,
    gates: usize,
    batch: usize,
    input: usize,
) -> Result<usize, String> {
    let raw = n.int("hidden_size", 0);
    let hidden = usize::try_from(raw)
        .ok()
        .filter(|&h| h >= 1)
        .ok_or_else(|| format!("hidden_size {raw} must be ≥ 1"))?;
    let dirs = if n.string("direction", "forward") == "bidirectional" {
        2
    } else {
        1
    };
    let gh = hidden
        .checked_mul(gates)
        .ok_or_else(|| format!("hidden_size {raw} overflows"))?;
    let state = if n.int("layout", 0) != 0 {
        [batch, dirs, hidden]
    } else {
        [dirs, batch, hidden]
    };
    let expected: [(usize, Vec<usize>); 6] = [
        (1, vec![dirs, gh, input]),
        (2, vec![dirs, gh, hidden]),
        (3, vec![dirs, gh.saturating_mul(2)]),
        (5, state.to_vec()),
        (6, state.to_vec()),
        (7, vec![dirs, hidden.saturating_mul(3)]),
    ];
    for (i, want) in expected {
        let Some(v) = n.opt_input(i) else { continue };
        let got = b.shape(&v);
        if got != want && !(i >= 6 && gates != 4) {
            return Err(format!("input {i} is {got:?}, must be {want:?}"));
        }
    }
    Ok(hidden)
}

fn recur(b: &mut B, h: &Val, dir: &Dir, name: &str) -> Result<Val, String> {
    b.op(
        Op::MatMul {
            trans_a: false,
            trans_b: false,
        },
        &[h.clone(), dir.r_t.clone()],
        name,
    )
}

/// LSTM (gates i, o, f, c; peepholes supported; no input_forget).
pub fn lstm(b: &mut B, n: &NodeCtx) -> Lowering {
    if n.int("input_forget", 0) != 0 {
        return Err("input_forget is not supported".into());
    }
    let rnn = Rnn::new(b, n, 4)?;
    let name = rnn.name.clone();
    let mut per_dir = vec![];
    for (d, dir) in rnn.directions(b)?.iter().enumerate() {
        let (mut h, mut c) = (rnn.initial(b, 5, d)?, rnn.initial(b, 6, d)?);
        let peep: Option<Vec<Val>> = match n.opt_input(7) {
            Some(p) => {
                let pd = slice_axis(b, &p, 0, d, 1, 1, &name)?;
                let pd = reshape(b, &pd, &[3 * rnn.hidden], &name)?;
                Some(
                    (0..3)
                        .map(|k| slice_axis(b, &pd, 0, k * rnn.hidden, 1, rnn.hidden, &name))
                        .collect::<Result<_, _>>()?,
                )
            }
            None => None,
        };
        let mut steps = vec![];
        for t in rnn.order(dir) {
            let xin = rnn.step_input(b, dir, t)?;
            let hr = recur(b, &h, dir, &name)?;
            let pre = bin(b, Op::Add, &xin, &hr, &name)?;
            let pre = bin(b, Op::Add, &pre, &dir.rb, &name)?;
            let (mut gi, mut go, mut gf, gc) = (
                rnn.gate(b, &pre, 0)?,
                rnn.gate(b, &pre, 1)?,
                rnn.gate(b, &pre, 2)?,
                rnn.gate(b, &pre, 3)?,
            );
            if let Some(p) = &peep {
                let pi = bin(b, Op::Mul, &p[0], &c, &name)?;
                gi = bin(b, Op::Add, &gi, &pi, &name)?;
                let pf = bin(b, Op::Mul, &p[2], &c, &name)?;
                gf = bin(b, Op::Add, &gf, &pf, &name)?;
            }
            let i = rnn.act(b, &gi, 0, "Sigmoid")?;
            let f = rnn.act(b, &gf, 0, "Sigmoid")?;
            let cc = rnn.act(b, &gc, 1, "Tanh")?;
            let fc = bin(b, Op::Mul, &f, &c, &name)?;
            let ic = bin(b, Op::Mul, &i, &cc, &name)?;
            c = bin(b, Op::Add, &fc, &ic, &name)?;
            if let Some(p) = &peep {
                let po = bin(b, Op::Mul, &p[1], &c, &name)?;
                go = bin(b, Op::Add, &go, &po, &name)?;
            }
            let o = rnn.act(b, &go, 0, "Sigmoid")?;
            let hc = rnn.act(b, &c, 2, "Tanh")?;
            h = bin(b, Op::Mul, &o, &hc, &name)?;
            steps.push(h.clone());
        }
        if dir.reverse {
            steps.reverse();
        }
        per_dir.push((steps, vec![h, c]));
    }
    rnn.outputs(b, per_dir)
}

/// GRU (gates z, r, h; both `linear_before_reset` forms).
pub fn gru(b: &mut B, n: &NodeCtx) -> Lowering {
    let rnn = Rnn::new(b, n, 3)?;
    let name = rnn.name.clone();
    let linear_before_reset = n.int("linear_before_reset", 0) != 0;
    let mut per_dir = vec![];
    for (d, dir) in rnn.directions(b)?.iter().enumerate() {
        let mut h = rnn.initial(b, 5, d)?;
        let (rz, rr, rh) = (
            rnn.gate_of(b, &dir.r_t, 0)?,
            rnn.gate_of(b, &dir.r_t, 1)?,
            rnn.gate_of(b, &dir.r_t, 2)?,
        );
        let rb: Vec<Val> = if b.shape(&dir.rb).is_empty() {
            vec![dir.rb.clone(); 3]
        } else {
            (0..3)
                .map(|k| slice_axis(b, &dir.rb, 0, k * rnn.hidden, 1, rnn.hidden, &name))
                .collect::<Result<_, _>>()?
        };
        let mut steps = vec![];
        for t in rnn.order(dir) {
            let xin = rnn.step_input(b, dir, t)?;
            let (xz, xr, xh) = (
                rnn.gate(b, &xin, 0)?,
                rnn.gate(b, &xin, 1)?,
                rnn.gate(b, &xin, 2)?,
            );
            let mm = |b: &mut B, v: &Val, w: &Val| {
                b.op(
                    Op::MatMul {
                        trans_a: false,
                        trans_b: false,
                    },
                    &[v.clone(), w.clone()],
                    &name,
                )
            };
            let hz = mm(b, &h, &rz)?;
            let z_pre = bin(b, Op::Add, &xz, &hz, &name)?;
            let z_pre = bin(b, Op::Add, &z_pre, &rb[0], &name)?;
            let z = rnn.act(b, &z_pre, 0, "Sigmoid")?;
            let hr = mm(b, &h, &rr)?;
            let r_pre = bin(b, Op::Add, &xr, &hr, &name)?;
            let r_pre = bin(b, Op::Add, &r_pre, &rb[1], &name)?;
            let r = rnn.act(b, &r_pre, 0, "Sigmoid")?;
            let rec = if linear_before_reset {
                let hh = mm(b, &h, &rh)?;
                let hh = bin(b, Op::Add, &hh, &rb[2], &name)?;
                bin(b, Op::Mul, &r, &hh, &name)?
            } else {
                let rh_in = bin(b, Op::Mul, &r, &h, &name)?;
                let hh = mm(b, &rh_in, &rh)?;
                bin(b, Op::Add, &hh, &rb[2], &name)?
            };
            let h_pre = bin(b, Op::Add, &xh, &rec, &name)?;
            let cand = rnn.act(b, &h_pre, 1, "Tanh")?;
            // h = (1 − z)·cand + z·h = cand + z·(h − cand)
            let diff = bin(b, Op::Sub, &h, &cand, &name)?;
            let zd = bin(b, Op::Mul, &z, &diff, &name)?;
            h = bin(b, Op::Add, &cand, &zd, &name)?;
            steps.push(h.clone());
        }
        if dir.reverse {
            steps.reverse();
        }
        per_dir.push((steps, vec![h]));
    }
    rnn.outputs(b, per_dir)
}

/// Simple RNN: `h = f(x·Wᵀ + h·Rᵀ + b)`.
pub fn rnn(b: &mut B, n: &NodeCtx) -> Lowering {
    let rnn = Rnn::new(b, n, 1)?;
    let name = rnn.name.clone();
    let mut per_dir = vec![];
    for (d, dir) in rnn.directions(b)?.iter().enumerate() {
        let mut h = rnn.initial(b, 5, d)?;
        let mut steps = vec![];
        for t in rnn.order(dir) {
            let xin = rnn.step_input(b, dir, t)?;
            let hr = recur(b, &h, dir, &name)?;
            let pre = bin(b, Op::Add, &xin, &hr, &name)?;
            let pre = bin(b, Op::Add, &pre, &dir.rb, &name)?;
            h = rnn.act(b, &pre, 0, "Tanh")?;
            steps.push(h.clone());
        }
        if dir.reverse {
            steps.reverse();
        }
        per_dir.push((steps, vec![h]));
    }
    rnn.outputs(b, per_dir)
}

impl Rnn<'_> {
    /// Columns of gate `k` of the transposed recurrence `[hidden, gates·hidden]`.
    fn gate_of(&self, b: &mut B, r_t: &Val, k: usize) -> Result<Val, String> {
        slice_axis(b, r_t, 1, k * self.hidden, 1, self.hidden, &self.name)
    }
}
