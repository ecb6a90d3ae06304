//! LoRA slots at firmware build (`--lora-slots q_proj,v_proj:16`): every
//! MatMul whose module path ends with a target (as PEFT's `target_modules`
//! match) becomes `y = x·W + (x·A)·B` with `A [in, R]` and `B [R, out]`
//! two new module inputs (`m4c_runtime::adapter::slots` names them and
//! binds an adapter's factors to them at load). The code generator
//! compiles the slot like any MatMul, so one compiled module serves every
//! adapter of rank ≤ R.

use std::str::FromStr;

use m4c_ir::{Graph, Op, Rebuild, TensorType};
use m4c_runtime::adapter::slots::input_names;

use super::{module_scope, scope_ends_with};

/// Which MatMuls get slots and their rank.
#[derive(Clone, Debug, PartialEq)]
pub struct SlotSpec {
    /// Module-path suffixes (`q_proj`, `self_attn.v_proj`).
    pub targets: Vec<String>,
    /// The slots' rank `R`.
    pub rank: usize,
}

impl FromStr for SlotSpec {
    type Err = String;
    /// `TARGET[,TARGET...]:RANK`.
    fn from_str(s: &str) -> Result<SlotSpec, String> {
        let (targets, rank) = s
            .rsplit_once(':')
            .ok_or("expected TARGET[,TARGET...]:RANK (e.g. q_proj,v_proj:16)")?;
        let rank: usize = rank
            .parse()
            .ok()
            .filter(|&r| (1..=4096).contains(&r))
            .ok_or(format!("slot rank '{rank}' must be in 1..=4096"))?;
        let targets: Vec<String> = targets
            .split(',')
            .map(str::trim)
            .map(String::from)
            .collect();
        if targets.iter().any(String::is_empty) {
            return Err("an empty target in --lora-slots".into());
        }
        Ok(SlotSpec { targets, rank })
    }
}

/// One slotted MatMul.
#[derive(Clone, Debug, PartialEq)]
pub struct SlotSite {
    /// Its module path.
    pub site: String,
    /// Input features of the MatMul.
    pub in_features: usize,
    /// Output features of the MatMul.
    pub out_features: usize,
}

/// `g` with a slot at every MatMul `spec` targets (none: `g` unchanged and
/// no sites). Two slotted MatMuls with one module path are an error.
pub fn add_slots(g: &Graph, spec: &SlotSpec) -> Result<(Graph, Vec<SlotSite>), String> {
    let mut sites: Vec<(usize, SlotSite)> = vec![];
    for (i, n) in g.nodes.iter().enumerate() {
        let Op::MatMul {
            trans_a: false,
            trans_b,
        } = n.op
        else {
            continue;
        };
        let Some(site) = module_scope(&g.value(n.output).name) else {
            continue;
        };
        if !spec.targets.iter().any(|t| scope_ends_with(&site, t)) {
            continue;
        }
        let Some(w) = g.constant(n.inputs[1]) else {
            continue;
        };
        let (k, out) = match w.shape[..] {
            [r, c] if trans_b => (c, r),
            [r, c] => (r, c),
            _ => continue,
        };
        if sites.iter().any(|(_, s)| s.site == site) {
            return Err(format!(
                "--lora-slots: two MatMuls carry the module path {site}"
            ));
        }
        sites.push((
            i,
            SlotSite {
                site,
                in_features: k,
                out_features: out,
            },
        ));
    }
    if sites.is_empty() {
        return Ok((g.clone(), vec![]));
    }
    let internal = |e: m4c_ir::IrError| format!("adding LoRA slots: {e}");
    let mut rb = Rebuild::new(g);
    let mut slot_inputs = vec![];
    for (_, s) in &sites {
        let dtype = m4c_ir::DType::F32;
        let (a, b) = input_names(&s.site);
        let a = rb
            .out
            .add_input(a, TensorType::fixed(dtype, &[s.in_features, spec.rank]));
        let b = rb
            .out
            .add_input(b, TensorType::fixed(dtype, &[spec.rank, s.out_features]));
        slot_inputs.push((a, b));
    }
    rb.copy_constants();
    let plain = Op::MatMul {
        trans_a: false,
        trans_b: false,
    };
    for (idx, node) in g.nodes.iter().enumerate() {
        let Some(k) = sites.iter().position(|(i, _)| *i == idx) else {
            rb.copy_node(node).map_err(internal)?;
            continue;
        };
        let ins = rb.inputs_of(node).map_err(internal)?;
        let name = &g.value(node.output).name;
        let out = &mut rb.out;
        // The sum takes the MatMul's name (what follows and the module's
        // outputs see the same names); the MatMul keeps its module path.
        let (scope, last) = name.rsplit_once('/').unwrap_or(("", name));
        let y = out
            .add_node(node.op.clone(), &ins, format!("{scope}/slot_base_{last}"))
            .map_err(internal)?;
        let x_dtype = out.value(ins[0]).ty.dtype;
        if x_dtype != m4c_ir::DType::F32 {
            return Err(format!(
                "--lora-slots: {}: slots are f32, the activation is {x_dtype}",
                sites[k].1.site,
            ));
        }
        let (a, b) = slot_inputs[k];
        let xa = out
            .add_node(
                plain.clone(),
                &[ins[0], a],
                format!("{scope}/lora_slot/A/MatMul_output_0"),
            )
            .map_err(internal)?;
        let xab = out
            .add_node(
                plain.clone(),
                &[xa, b],
                format!("{scope}/lora_slot/B/MatMul_output_0"),
            )
            .map_err(internal)?;
        let sum = out
            .add_node(Op::Add, &[y, xab], name.clone())
            .map_err(internal)?;
        rb.set(node.output, sum);
    }
    let out = rb.finish().map_err(internal)?;
    out.verify().map_err(internal)?;
    Ok((out, sites.into_iter().map(|(_, s)| s).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use m4c_ir::{DType, Tensor};
    use m4c_ops::{run_graph, Value};

    #[test]
    fn a_slot_computes_the_lora_branch_and_zeros_cost_nothing() {
        let mut g = Graph::new("t");
        let x = g.add_input("x", TensorType::fixed(DType::F32, &[2, 3]));
        let w = g.add_const(
            "w",
            Tensor::from_f32(&[3, 2], &[1.0, 0.0, 0.0, 1.0, 1.0, 1.0]),
        );
        let y = g
            .add_node(
                Op::MatMul {
                    trans_a: false,
                    trans_b: false,
                },
                &[x, w],
                "/m/q_proj/MatMul_output_0",
            )
            .unwrap();
        g.outputs = vec![y];
        let spec: SlotSpec = "q_proj:2".parse().unwrap();
        let (s, sites) = add_slots(&g, &spec).unwrap();
        assert_eq!(sites.len(), 1);
        assert_eq!(s.inputs.len(), 3);
        assert_eq!(s.value(s.outputs[0]).name, "/m/q_proj/MatMul_output_0");
        let v = |shape: &[usize], data: &[f32]| {
            Value::from_tensor(&Tensor::from_f32(shape, data)).unwrap()
        };
        let xv = v(&[2, 3], &[1., 2., 3., 4., 5., 6.]);
        let base = run_graph(&g, std::slice::from_ref(&xv)).unwrap();
        let same = run_graph(
            &s,
            &[xv.clone(), v(&[3, 2], &[0.; 6]), v(&[2, 2], &[0.; 4])],
        )
        .unwrap();
        assert_eq!(base, same);
        // A = e0 column, B = [[1, 0], [0, 0]]: adds x[:, 0] to y[:, 0].
        let a = v(&[3, 2], &[1., 0., 0., 0., 0., 0.]);
        let b = v(&[2, 2], &[1., 0., 0., 0.]);
        let Value::F32(y) = &run_graph(&s, &[xv, a, b]).unwrap()[0] else {
            panic!()
        };
        assert_eq!(
            y.as_slice().unwrap(),
            [1. + 3. + 1., 2. + 3., 4. + 6. + 4., 5. + 6.]
        );
        assert!("q_proj".parse::<SlotSpec>().is_err());
        assert!("q_proj:0".parse::<SlotSpec>().is_err());
    }
}
