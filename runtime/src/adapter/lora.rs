//! Attaching LoRA factors to a module graph at load time, without the
//! compiler: each site's MatMul `y = x·W` (found by the module path its
//! output name carries, as exporters write it:
//! `/model/layers.0/self_attn/q_proj/MatMul_output_0`) becomes
//! `y + s·((x·Aᵀ)·Bᵀ)` (keep: `W` stays a shared slice of the firmware) or
//! gets `W + s·Aᵀ·Bᵀ` as a private weight (fold).

use std::collections::HashMap;

use m4c_ir::{DType, Graph, Op, Rebuild, Tensor, ValueDef, ValueId};

use crate::bundle::format::LoraMode;

/// One adapted layer: PEFT factors `a` `[r, in]`, `b` `[out, r]`, scale.
#[derive(Clone, Debug)]
pub struct LoraFactors {
    /// Module path, e.g. `model.layers.0.self_attn.q_proj`.
    pub target: String,
    pub a: Tensor,
    pub b: Tensor,
    pub scale: f64,
}

/// The module path an exporter's value name carries: the `/`-separated
/// scopes before the operator's own name, joined with `.`.
pub fn module_scope(value_name: &str) -> Option<String> {
    let mut parts: Vec<&str> = value_name.split('/').filter(|s| !s.is_empty()).collect();
    parts.pop()?;
    (!parts.is_empty()).then(|| parts.join("."))
}

/// True when `scope` ends with the module path `module` on a `.` boundary.
pub fn scope_ends_with(scope: &str, module: &str) -> bool {
    scope == module
        || scope
            .strip_suffix(module)
            .is_some_and(|head| head.ends_with('.'))
}

/// A resolved site: the MatMul node and whether its weight is transposed.
pub struct Site<'a> {
    /// Index of the adapted MatMul in `g.nodes`.
    pub node: usize,
    pub trans_b: bool,
    pub factors: &'a LoraFactors,
}

/// Finds each factor pair's MatMul (by module path) and checks that the
/// factors fit its weight; every site that does not is listed. Shared by
/// load-time attachment and the compiler's PEFT ingestion.
pub fn resolve<'a>(g: &Graph, sites: &'a [LoraFactors]) -> Result<Vec<Site<'a>>, Vec<String>> {
    let mut problems = vec![];
    let mut found_sites = vec![];
    for f in sites {
        let found: Vec<usize> = g
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| matches!(n.op, Op::MatMul { trans_a: false, .. }))
            .filter(|(_, n)| {
                module_scope(&g.value(n.output).name)
                    .is_some_and(|s| scope_ends_with(&s, &f.target))
            })
            .map(|(i, _)| i)
            .collect();
        let node = match found[..] {
            [i] => i,
            [] => {
                problems.push(format!("{}: no MatMul carries this module name", f.target));
                continue;
            }
            _ => {
                problems.push(format!(
                    "{}: {} MatMuls carry this module name",
                    f.target,
                    found.len()
                ));
                continue;
            }
        };
        let n = &g.nodes[node];
        let Op::MatMul { trans_b, .. } = n.op else {
            unreachable!("filtered on MatMul")
        };
        // A constant weight, or one computed from constants by
        // dequantisation (a quantised base, as `m4c quantize` writes it):
        // keep mode needs only its shape and type.
        let wv = g.value(n.inputs[1]);
        let (shape, dtype) = match (g.constant(n.inputs[1]), wv.ty.static_shape()) {
            (Some(w), _) => (w.shape.clone(), w.dtype),
            (None, Some(s)) if is_from_constants(g, n.inputs[1]) => (s, wv.ty.dtype),
            _ => {
                problems.push(format!(
                    "{}: the MatMul's weight is neither a constant nor dequantised from one",
                    f.target
                ));
                continue;
            }
        };
        let (k, out) = match shape[..] {
            [r, c] if trans_b => (c, r),
            [r, c] => (r, c),
            _ => {
                problems.push(format!("{}: weight shape {:?} is not 2-D", f.target, shape));
                continue;
            }
        };
        let rank_ok = f.a.shape.len() == 2 && f.b.shape.len() == 2 && f.a.shape[0] == f.b.shape[1];
        if !rank_ok || f.a.shape[1] != k || f.b.shape[0] != out {
            problems.push(format!(
                "{}: lora_A {:?} / lora_B {:?} do not fit weight [in={k}, out={out}]",
                f.target, f.a.shape, f.b.shape
            ));
            continue;
        }
        if f.a.dtype != dtype || f.b.dtype != dtype {
            problems.push(format!(
                "{}: factors are {}/{}, weight is {}",
                f.target, f.a.dtype, f.b.dtype, dtype
            ));
            continue;
        }
        found_sites.push(Site {
            node,
            trans_b,
            factors: f,
        });
    }
    if problems.is_empty() {
        Ok(found_sites)
    } else {
        Err(problems)
    }
}

/// True when `v` is computed from constants only (e.g. `Cast → Sub → Mul`
/// dequantising a quantised weight).
fn is_from_constants(g: &Graph, v: ValueId) -> bool {
    let mut stack = vec![v];
    let mut seen = std::collections::HashSet::new();
    while let Some(v) = stack.pop() {
        if !seen.insert(v) {
            continue;
        }
        match &g.value(v).def {
            ValueDef::Const(_) => {}
            ValueDef::Node(i) => stack.extend(&g.nodes[*i].inputs),
            _ => return false,
        }
    }
    true
}

/// Returns `g` with every site attached as `mode` says; all sites that do
/// not fit are listed in the error. `prefix` names the added values
/// (`{prefix}.{target}.lora_A.weight`, ...), so several adapters can be
/// stacked on one graph.
pub fn attach(
    g: &Graph,
    sites: &[LoraFactors],
    mode: LoraMode,
    prefix: &str,
) -> Result<Graph, Vec<String>> {
    let resolved = resolve(g, sites)?;
    match mode {
        LoraMode::Keep => keep(g, &resolved, prefix).map_err(|e| vec![e]),
        LoraMode::Fold => fold(g, &resolved),
    }
}

fn keep(g: &Graph, sites: &[Site], prefix: &str) -> Result<Graph, String> {
    let by_node: HashMap<usize, &Site> = sites.iter().map(|s| (s.node, s)).collect();
    let internal = |e: m4c_ir::IrError| format!("attaching LoRA: {e}");
    let mut rb = Rebuild::new(g);
    rb.copy_constants();
    let trans = Op::MatMul {
        trans_a: false,
        trans_b: true,
    };
    for (idx, node) in g.nodes.iter().enumerate() {
        let y = rb.copy_node(node).map_err(internal)?;
        let Some(site) = by_node.get(&idx) else {
            continue;
        };
        let ins = rb.inputs_of(node).map_err(internal)?;
        let name = &g.value(node.output).name;
        let out = &mut rb.out;
        let f = site.factors;
        let scope = name.rsplit_once('/').map_or(name.as_str(), |(s, _)| s);
        let a = out.add_const(format!("{prefix}.{}.lora_A.weight", f.target), f.a.clone());
        let b = out.add_const(format!("{prefix}.{}.lora_B.weight", f.target), f.b.clone());
        let scope = format!("{scope}/{prefix}");
        let s = out.add_const(
            format!("{scope}/scale"),
            Tensor::from_f32(&[], &[f.scale as f32]),
        );
        let xa = out
            .add_node(
                trans.clone(),
                &[ins[0], a],
                format!("{scope}/lora_A/MatMul_output_0"),
            )
            .map_err(internal)?;
        let xab = out
            .add_node(
                trans.clone(),
                &[xa, b],
                format!("{scope}/lora_B/MatMul_output_0"),
            )
            .map_err(internal)?;
        let scaled = out
            .add_node(Op::Mul, &[xab, s], format!("{scope}/Mul_output_0"))
            .map_err(internal)?;
        let sum = out
            .add_node(Op::Add, &[y, scaled], format!("{scope}/Add_output_0"))
            .map_err(internal)?;
        rb.set(node.output, sum);
    }
    let out = rb.finish().map_err(internal)?;
    out.verify().map_err(internal)?;
    Ok(out)
}

fn fold(g: &Graph, sites: &[Site]) -> Result<Graph, Vec<String>> {
    let mut out = g.clone();
    let mut problems = vec![];
    for site in sites {
        let f = site.factors;
        let w_id = g.nodes[site.node].inputs[1];
        let users = g.nodes.iter().filter(|n| n.inputs.contains(&w_id)).count();
        if users != 1 || g.outputs.contains(&w_id) {
            problems.push(format!(
                "{}: the weight is used elsewhere too; fold would change those uses (use keep)",
                f.target
            ));
            continue;
        }
        let Some(w) = g.constant(w_id) else {
            problems.push(format!(
                "{}: the weight is dequantised, not a constant; fold needs a constant (use keep)",
                f.target
            ));
            continue;
        };
        match folded(w, f, site.trans_b) {
            Ok(t) => out.values[w_id.index()].def = ValueDef::Const(t),
            Err(e) => problems.push(format!("{}: {e}", f.target)),
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

/// `W + s·Aᵀ·Bᵀ` (W `[in, out]`) or `W + s·B·A` (W `[out, in]`, trans_b),
/// accumulated in f64.
fn folded(w: &Tensor, f: &LoraFactors, trans_b: bool) -> Result<Tensor, String> {
    if w.dtype != DType::F32 {
        return Err(format!(
            "fold supports f32 weights, this one is {}",
            w.dtype
        ));
    }
    let (wv, a, b) = (
        w.to_f32_vec().map_err(|e| e.to_string())?,
        f.a.to_f32_vec().map_err(|e| e.to_string())?,
        f.b.to_f32_vec().map_err(|e| e.to_string())?,
    );
    let (r, k, n) = (f.a.shape[0], f.a.shape[1], f.b.shape[0]);
    let mut data = wv;
    for i in 0..k {
        for j in 0..n {
            let delta: f64 = (0..r)
                .map(|q| f64::from(a[q * k + i]) * f64::from(b[j * r + q]))
                .sum();
            let at = if trans_b { j * k + i } else { i * n + j };
            data[at] = (f64::from(data[at]) + f.scale * delta) as f32;
        }
    }
    Ok(Tensor::from_f32(&w.shape, &data))
}

#[cfg(test)]
mod tests {
    use super::*;
    use m4c_ir::TensorType;
    use m4c_ops::{run_graph, Value};
    use ndarray::ArrayD;

    /// x[2,3] · W[3,4] named like an exporter's q_proj.
    fn linear(trans_b: bool) -> Graph {
        let mut g = Graph::new("t");
        let x = g.add_input("x", TensorType::fixed(DType::F32, &[2, 3]));
        let wv: Vec<f32> = (0..12).map(|i| i as f32 * 0.1 - 0.5).collect();
        let shape = if trans_b { [4, 3] } else { [3, 4] };
        let w = g.add_const("w", Tensor::from_f32(&shape, &wv));
        let y = g
            .add_node(
                Op::MatMul {
                    trans_a: false,
                    trans_b,
                },
                &[x, w],
                "/model/layers.0/q_proj/MatMul_output_0",
            )
            .unwrap();
        g.outputs = vec![y];
        g
    }

    fn factors() -> LoraFactors {
        let a: Vec<f32> = (0..6).map(|i| (i as f32 - 2.0) * 0.3).collect();
        let b: Vec<f32> = (0..8).map(|i| (i as f32) * 0.05 - 0.2).collect();
        LoraFactors {
            target: "layers.0.q_proj".into(),
            a: Tensor::from_f32(&[2, 3], &a),
            b: Tensor::from_f32(&[4, 2], &b),
            scale: 2.0,
        }
    }

    /// y = x·W + s·x·Aᵀ·Bᵀ computed directly.
    fn truth(x: &[f32], trans_b: bool) -> Vec<f64> {
        let w: Vec<f64> = (0..12).map(|i| i as f64 * 0.1 - 0.5).collect();
        let f = factors();
        let (a, b) = (f.a.to_f32_vec().unwrap(), f.b.to_f32_vec().unwrap());
        let mut y = vec![0.0; 8];
        for r in 0..2 {
            for j in 0..4 {
                let mut acc = 0.0;
                for i in 0..3 {
                    let wij = if trans_b { w[j * 3 + i] } else { w[i * 4 + j] };
                    let mut d = 0.0;
                    for q in 0..2 {
                        d += f64::from(a[q * 3 + i]) * f64::from(b[j * 2 + q]);
                    }
                    acc += f64::from(x[r * 3 + i]) * (wij + 2.0 * d);
                }
                y[r * 4 + j] = acc;
            }
        }
        y
    }

    #[test]
    fn keep_and_fold_compute_the_adapted_layer() {
        let x: Vec<f32> = (0..6).map(|i| i as f32 * 0.7 - 1.0).collect();
        let input = Value::F32(ArrayD::from_shape_vec(vec![2, 3], x.clone()).unwrap());
        for trans_b in [false, true] {
            let want = truth(&x, trans_b);
            for mode in [LoraMode::Keep, LoraMode::Fold] {
                let g = attach(&linear(trans_b), &[factors()], mode, "lora").unwrap();
                let Value::F32(y) = &run_graph(&g, std::slice::from_ref(&input)).unwrap()[0] else {
                    panic!("f32")
                };
                for (got, want) in y.iter().zip(&want) {
                    assert!((f64::from(*got) - want).abs() < 1e-5, "{mode} {trans_b}");
                }
            }
        }
    }

    #[test]
    fn sites_that_do_not_fit_are_all_listed() {
        let mut wrong = factors();
        wrong.a = Tensor::from_f32(&[2, 5], &[0.0; 10]);
        let mut missing = factors();
        missing.target = "layers.0.k_proj".into();
        let e = attach(&linear(false), &[wrong, missing], LoraMode::Keep, "lora").unwrap_err();
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(e[0].contains("do not fit"), "{}", e[0]);
        assert!(e[1].contains("k_proj: no MatMul"), "{}", e[1]);
    }

    #[test]
    fn scopes_of_exported_names() {
        let s = module_scope("/model/model/layers.0/self_attn/q_proj/MatMul_output_0").unwrap();
        assert_eq!(s, "model.model.layers.0.self_attn.q_proj");
        assert!(scope_ends_with(&s, "model.layers.0.self_attn.q_proj"));
        assert!(!scope_ends_with(&s, "layers.0.self_attn.proj"));
        assert_eq!(module_scope("linear"), None);
    }
}
