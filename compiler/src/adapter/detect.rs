//! Finding LoRA branches already inside an exported graph
//! (`MatMul(x, W) + s·((x·A)·B)`, as PEFT's unmerged ONNX export or
//! ORT-GenAI write them). The graph is loaded into an e-graph and searched
//! with the very matcher the LoRA fold rule uses, so detection and folding
//! agree on what a branch is.

use std::collections::HashMap;

use egg::Id;
use m4c_ir::{Graph, OpKind};

use super::{module_scope, LoraSite};
use crate::opt::convert::{load, Provenance};
use crate::opt::lang::shape_of;
use crate::opt::rule::{binary, scalar};
use crate::opt::rules::lora::{biased, branches, matmuls};

/// Every LoRA branch of `g`, in graph order.
pub fn detect(g: &Graph) -> Vec<LoraSite> {
    let empty = Default::default();
    let loaded = load(
        g,
        &Provenance {
            adapter: &empty,
            mixed: &empty,
        },
    );
    let eg = &loaded.eg;
    // Constant leaves by class, to name the factors.
    let mut const_name: HashMap<Id, &str> = HashMap::new();
    for c in g.constants() {
        const_name
            .entry(eg.find(loaded.class_of[c.index()]))
            .or_insert(&g.value(c).name);
    }
    let mut sites = vec![];
    for node in &g.nodes {
        if node.op.kind() != OpKind::Add {
            continue;
        }
        let class = eg.find(loaded.class_of[node.output.index()]);
        let found = binary(eg, class, OpKind::Add)
            .into_iter()
            .find_map(|(p, q)| {
                let bases = biased(eg, p).into_iter().map(|(base, _)| base);
                let products = bases.flat_map(|base| matmuls(eg, base));
                products.into_iter().find_map(|(x, w, _)| {
                    branches(eg, q, x).into_iter().find_map(|br| {
                        let (w, a, b) = (
                            const_name.get(&w)?,
                            const_name.get(&br.a)?,
                            const_name.get(&br.b)?,
                        );
                        Some((w.to_string(), a.to_string(), b.to_string(), br))
                    })
                })
            });
        let Some((weight, a, b, br)) = found else {
            continue;
        };
        let (a_shape, b_shape) = (shape_of(eg, br.a), shape_of(eg, br.b));
        let (in_features, rank) = if br.trans_a {
            (a_shape[1], a_shape[0])
        } else {
            (a_shape[0], a_shape[1])
        };
        let out_features = if br.trans_b { b_shape[0] } else { b_shape[1] };
        let name = &g.value(node.output).name;
        sites.push(LoraSite {
            module: module_scope(name).unwrap_or_else(|| name.clone()),
            weight,
            a,
            b,
            rank,
            in_features,
            out_features,
            scale: br.scale.and_then(|s| scalar(eg, s)).unwrap_or(1.0),
        });
    }
    sites
}
