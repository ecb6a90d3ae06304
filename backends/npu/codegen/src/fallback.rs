//! The CPU-fallback parts of an NPU module: each part's nodes become an
//! IR sub-graph (inputs and outputs keep the module's value names), which
//! the fallback code generator — the CPU backend, handed in by the
//! registry or the CLI as a `&dyn CodeGenerator`, so this crate does not
//! depend on it — compiles. The compiled sections and the sub-graph's
//! constants go into the module's `code-weights` section ([`Store`]); a
//! part the generator refuses or fails on keeps only its IR, which the
//! runtime runs on the reference interpreter, with the reason recorded.

use std::collections::HashMap;

use m4c_compiler::backend::{refusals, CodeGenerator, CompileRequest, Refusal};
use m4c_ir::{Graph, Tensor, ValueDef, ValueId};
use m4c_npu::module::{ByteRange, CpuCode, ModulePart};
use m4c_runtime::bundle::format::SectionKind;
use m4c_runtime::exec::npu::encode_constants;

use crate::constraints;

/// Blobs stored in alignment for the CPU device, which reads packed
/// weights in place.
const ALIGN: usize = 64;

/// The module's `code-weights` section as it is built: every fallback
/// part's constants and compiled sections, each 64-byte aligned.
#[derive(Default)]
pub struct Store {
    /// The section's bytes.
    pub bytes: Vec<u8>,
}

impl Store {
    /// Appends `blob` and returns where it lies.
    fn put(&mut self, blob: &[u8]) -> ByteRange {
        let offset = self.bytes.len().next_multiple_of(ALIGN);
        self.bytes.resize(offset, 0);
        self.bytes.extend_from_slice(blob);
        ByteRange {
            offset,
            len: blob.len(),
        }
    }
}

/// One fallback part, built: the plan's entry and why each node is off
/// the NPU.
pub struct Built {
    /// The plan entry.
    pub part: ModulePart,
    /// One refusal per node (`constraint: detail`).
    pub nodes: Vec<Refusal>,
}

/// Builds the fallback part of `nodes` of `g` (`exported`: values read
/// outside the part or graph outputs; `failed`: nodes whose NPU layer
/// could not be generated, with the generator's message) and compiles it
/// with `generator` if given.
pub fn build(
    g: &Graph,
    nodes: &[usize],
    exported: &dyn Fn(ValueId) -> bool,
    failed: &HashMap<ValueId, String>,
    generator: Option<&dyn CodeGenerator>,
    request: &CompileRequest,
    store: &mut Store,
) -> Result<Built, String> {
    let (sub, constants) = subgraph(g, nodes, exported)?;
    let why: Vec<Refusal> = nodes
        .iter()
        .map(|&i| {
            let node = &g.nodes[i];
            let reason =
                constraints::refuse(g, node).unwrap_or_else(|| match failed.get(&node.output) {
                    Some(msg) => format!("layer: {msg}"),
                    None => "grouped with the fallback".into(),
                });
            Refusal {
                node: i,
                value: g.value(node.output).name.clone(),
                op: node.op.kind().name(),
                reason,
            }
        })
        .collect();
    let mut reasons: Vec<String> = vec![];
    for r in &why {
        let line = format!("{}: {}", r.op, r.reason);
        if !reasons.contains(&line) {
            reasons.push(line);
        }
    }
    let constants = store.put(&encode_constants(&constants)?);
    let (cpu, not_compiled) = match generator {
        None => (None, Some("no fallback code generator was given".into())),
        Some(generator) => match compile(generator, &sub, request, store) {
            Ok(code) => (Some(code), None),
            Err(why) => (None, Some(why)),
        },
    };
    Ok(Built {
        part: ModulePart::Fallback {
            ir: m4c_ir::text::print(&sub),
            constants,
            reasons,
            cpu,
            not_compiled,
        },
        nodes: why,
    })
}

/// Compiles `sub` with `generator` for this host and stores its sections.
fn compile(
    generator: &dyn CodeGenerator,
    sub: &Graph,
    request: &CompileRequest,
    store: &mut Store,
) -> Result<CpuCode, String> {
    let refused = refusals(generator, sub);
    if let Some(first) = refused.first() {
        return Err(format!(
            "backend `{}` refuses {} node(s); first: {first}",
            generator.name(),
            refused.len()
        ));
    }
    let request = CompileRequest {
        target: None,
        tuning: None,
        threads: request.threads,
    };
    let artifact = generator
        .compile(sub, &request)
        .map_err(|e| e.to_string())?;
    if !artifact.runnable {
        return Err(format!(
            "backend `{}`'s code for {} cannot run on this host",
            generator.name(),
            artifact.target
        ));
    }
    let section = |kind: SectionKind| {
        artifact
            .section(kind)
            .ok_or_else(|| format!("backend `{}` gave no {kind} section", generator.name()))
    };
    let library = section(SectionKind::Code)?;
    Ok(CpuCode {
        target: artifact.target.clone(),
        tuning: artifact.tuning.clone(),
        library_blake3: blake3::hash(library).to_hex().to_string(),
        library: store.put(library),
        plan: store.put(section(SectionKind::CodePlan)?),
        weights: store.put(section(SectionKind::CodeWeights)?),
    })
}

/// Named constants of a sub-graph (borrowed from the module's graph).
type Constants<'g> = Vec<(String, &'g Tensor)>;

/// The sub-graph of `nodes` and the constants it reads.
fn subgraph<'g>(
    g: &'g Graph,
    nodes: &[usize],
    exported: &dyn Fn(ValueId) -> bool,
) -> Result<(Graph, Constants<'g>), String> {
    let mut sub = Graph::new(format!("{}/fallback", g.name));
    let mut constants = vec![];
    let mut map = HashMap::new();
    for &i in nodes {
        let node = &g.nodes[i];
        let mut args = vec![];
        for &v in &node.inputs {
            let value = g.value(v);
            let id = *map.entry(v).or_insert_with(|| match &value.def {
                ValueDef::Const(t) => {
                    constants.push((value.name.clone(), t));
                    sub.add_const(value.name.clone(), t.clone())
                }
                _ => sub.add_input(value.name.clone(), value.ty.clone()),
            });
            args.push(id);
        }
        let out = sub
            .add_node(node.op.clone(), &args, g.value(node.output).name.clone())
            .map_err(|e| e.to_string())?;
        map.insert(node.output, out);
        if exported(node.output) {
            sub.outputs.push(out);
        }
    }
    Ok((sub, constants))
}
