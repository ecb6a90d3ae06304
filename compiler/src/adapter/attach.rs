//! Attaching a PEFT adapter to a backbone graph: each adapted module's
//! MatMul `y = x·W` (found by the module path its value name carries, as a
//! TorchScript/transformers export writes it) becomes
//! `y + s·((x·Aᵀ)·Bᵀ)`, with `A`/`B` referenced in the adapter file
//! (`trans_b` MatMuls, no copy). Every module that does not fit is listed
//! in one error.

use std::collections::HashMap;

use m4c_ir::{Graph, Op, Tensor, ValueDef, ValueId};

use super::peft::{ModuleFactors, PeftAdapter};
use super::{module_scope, scope_ends_with, AdapterError, LoraSite};

/// Where one module attaches: the MatMul node's index.
struct Target<'a> {
    node: usize,
    module: &'a str,
    factors: &'a ModuleFactors,
}

fn find_targets<'a>(g: &Graph, ad: &'a PeftAdapter) -> Result<Vec<Target<'a>>, AdapterError> {
    let mut problems = vec![];
    let mut targets = vec![];
    for (module, f) in &ad.modules {
        let found: Vec<usize> = g
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| matches!(n.op, Op::MatMul { trans_a: false, .. }))
            .filter(|(_, n)| {
                module_scope(&g.value(n.output).name).is_some_and(|s| scope_ends_with(&s, module))
            })
            .map(|(i, _)| i)
            .collect();
        let node = match found[..] {
            [i] => i,
            [] => {
                problems.push(format!(
                    "{module}: no MatMul of the model carries this module name"
                ));
                continue;
            }
            _ => {
                problems.push(format!(
                    "{module}: {} MatMuls carry this module name",
                    found.len()
                ));
                continue;
            }
        };
        let n = &g.nodes[node];
        let Op::MatMul { trans_b, .. } = n.op else {
            continue;
        };
        let Some(w) = g.constant(n.inputs[1]) else {
            problems.push(format!("{module}: the MatMul's weight is not a constant"));
            continue;
        };
        let (k, out) = match w.shape[..] {
            [r, c] if trans_b => (c, r),
            [r, c] => (r, c),
            _ => {
                problems.push(format!("{module}: weight shape {:?} is not 2-D", w.shape));
                continue;
            }
        };
        if f.a.shape[1] != k || f.b.shape[0] != out {
            problems.push(format!(
                "{module}: lora_A {:?} / lora_B {:?} do not fit weight [in={k}, out={out}]",
                f.a.shape, f.b.shape
            ));
            continue;
        }
        if f.a.dtype != w.dtype || f.b.dtype != w.dtype {
            problems.push(format!(
                "{module}: factors are {}, weight is {}",
                f.a.dtype, w.dtype
            ));
            continue;
        }
        targets.push(Target {
            node,
            module,
            factors: f,
        });
    }
    if problems.is_empty() {
        Ok(targets)
    } else {
        Err(AdapterError::Mismatch {
            adapter: ad.path.clone(),
            problems,
        })
    }
}

/// Returns `g` with the adapter's branches attached (keep form) and the
/// sites, in graph order.
pub fn attach(g: &Graph, ad: &PeftAdapter) -> Result<(Graph, Vec<LoraSite>), AdapterError> {
    let targets = find_targets(g, ad)?;
    let by_node: HashMap<usize, &Target> = targets.iter().map(|t| (t.node, t)).collect();
    let internal = |e: m4c_ir::IrError| AdapterError::Mismatch {
        adapter: ad.path.clone(),
        problems: vec![e.to_string()],
    };
    let mut out = Graph::new(g.name.clone());
    let mut map: Vec<Option<ValueId>> = vec![None; g.values.len()];
    for &i in &g.inputs {
        let v = g.value(i);
        map[i.index()] = Some(out.add_input(v.name.clone(), v.ty.clone()));
    }
    for (i, v) in g.values.iter().enumerate() {
        if let ValueDef::Const(t) = &v.def {
            map[i] = Some(out.add_const(v.name.clone(), t.clone()));
        }
    }
    let mut sites = vec![];
    for (idx, node) in g.nodes.iter().enumerate() {
        let ins: Vec<ValueId> = node
            .inputs
            .iter()
            .map(|v| map[v.index()].expect("topological order"))
            .collect();
        let name = &g.value(node.output).name;
        let y = out
            .add_node(node.op.clone(), &ins, name.clone())
            .map_err(internal)?;
        map[node.output.index()] = Some(y);
        let Some(t) = by_node.get(&idx) else { continue };
        let scope = name.rsplit_once('/').map_or(name.as_str(), |(s, _)| s);
        let prefix = format!("{scope}/{}", ad.name);
        let a_name = format!("{}.{}.lora_A.weight", ad.name, t.module);
        let b_name = format!("{}.{}.lora_B.weight", ad.name, t.module);
        let a = out.add_const(a_name.clone(), t.factors.a.clone());
        let b = out.add_const(b_name.clone(), t.factors.b.clone());
        let s = out.add_const(
            format!("{prefix}/scale"),
            Tensor::from_f32(&[], &[t.factors.scale as f32]),
        );
        let xt = Op::MatMul {
            trans_a: false,
            trans_b: true,
        };
        let xa = out
            .add_node(
                xt.clone(),
                &[ins[0], a],
                format!("{prefix}/lora_A/MatMul_output_0"),
            )
            .map_err(internal)?;
        let xab = out
            .add_node(xt, &[xa, b], format!("{prefix}/lora_B/MatMul_output_0"))
            .map_err(internal)?;
        let scaled = out
            .add_node(Op::Mul, &[xab, s], format!("{prefix}/Mul_output_0"))
            .map_err(internal)?;
        let sum = out
            .add_node(Op::Add, &[y, scaled], format!("{prefix}/Add_output_0"))
            .map_err(internal)?;
        map[node.output.index()] = Some(sum);
        let w = g.constant(node.inputs[1]).expect("checked in find_targets");
        let (rank, in_features) = (t.factors.a.shape[0], t.factors.a.shape[1]);
        sites.push(LoraSite {
            module: t.module.to_string(),
            weight: g.value(node.inputs[1]).name.clone(),
            a: a_name,
            b: b_name,
            rank,
            in_features,
            out_features: t.factors.b.shape[0],
            scale: t.factors.scale,
        });
        debug_assert_eq!(w.len(), in_features * t.factors.b.shape[0]);
    }
    out.outputs = g
        .outputs
        .iter()
        .map(|o| map[o.index()].expect("output defined"))
        .collect();
    out.verify().map_err(internal)?;
    Ok((out, sites))
}
