//! `m4c inspect`: what a model is made of, how it lowers, and what each
//! registered backend would refuse of it.

use std::collections::BTreeMap;

use m4c_compiler::backend::refusals;
use m4c_compiler::onnx::pb::{self, GraphProto, TensorProto};
use serde_json::json;

use super::model_args::{DimArgs, Model, ModelPath};
use super::CliResult;

/// Arguments of `m4c inspect`.
///
/// Exit status: 0 when the model lowers fully, 2 when it does not (the
/// report still shows the part that does) or on any error.
#[derive(clap::Args)]
pub struct InspectArgs {
    /// The ONNX model, or an IR file from `m4c opt -o`.
    model: ModelPath,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    dims: DimArgs,
}

/// ONNX op types with counts, including nodes of subgraphs (If/Loop/Scan).
pub fn onnx_op_counts(g: &GraphProto) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    fn walk(g: &GraphProto, counts: &mut BTreeMap<String, usize>) {
        for n in &g.node {
            let key = if n.domain.is_empty() || n.domain == "ai.onnx" {
                n.op_type.clone()
            } else {
                format!("{}.{}", n.domain, n.op_type)
            };
            *counts.entry(key).or_default() += 1;
            for a in &n.attribute {
                for sub in a.g.iter().chain(&a.graphs) {
                    walk(sub, counts);
                }
            }
        }
    }
    walk(g, &mut counts);
    counts
}

fn elements(t: &TensorProto) -> u64 {
    t.dims.iter().map(|&d| d.max(0) as u64).product()
}

fn io_list(
    g: &GraphProto,
    inits: &[TensorProto],
) -> (Vec<serde_json::Value>, Vec<serde_json::Value>) {
    let describe = |v: &pb::ValueInfoProto| {
        let (dtype, dims) = match v.r#type.as_ref().and_then(|t| t.value.as_ref()) {
            Some(pb::type_proto::Value::TensorType(tt)) => {
                let dims: Vec<String> = tt
                    .shape
                    .as_ref()
                    .map(|s| {
                        s.dim
                            .iter()
                            .map(|d| match &d.value {
                                Some(pb::tensor_shape_proto::dimension::Value::DimValue(v)) => {
                                    v.to_string()
                                }
                                Some(pb::tensor_shape_proto::dimension::Value::DimParam(p)) => {
                                    p.clone()
                                }
                                None => "?".into(),
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                (
                    m4c_compiler::onnx::onnx_type_name(tt.elem_type).to_lowercase(),
                    dims,
                )
            }
            _ => ("?".into(), vec![]),
        };
        json!({ "name": v.name, "dtype": dtype, "shape": dims })
    };
    let inputs = g
        .input
        .iter()
        .filter(|i| !inits.iter().any(|t| t.name == i.name))
        .map(describe)
        .collect();
    let outputs = g.output.iter().map(describe).collect();
    (inputs, outputs)
}

/// Runs `m4c inspect`.
pub fn run(args: InspectArgs) -> CliResult<i32> {
    let model = Model::open(&args.model)?;
    let mut opts = args.dims.options(&model, Some(1))?;
    // A decoder with past: bind its lengths consistently (total = past +
    // sequence), not each to 1.
    for (name, n) in super::generate::decoder_dims(&model, &opts.dims, 1) {
        opts.dims.entry(name).or_insert(n);
    }
    let report = model.lower_report(&opts)?;
    let mut doc = match &model {
        Model::Onnx(m) => onnx_facts(m),
        Model::Ir { .. } => json!({ "model": args.model.display().to_string() }),
    };
    doc["lowers_fully"] = json!(report.graph.is_some());
    doc["ir_nodes"] = json!(report.ir_ops.values().sum::<usize>());
    doc["ir_ops"] = json!(report.ir_ops);
    doc["unsupported"] = json!(report.unsupported);
    doc["symbolic_dims"] = json!(report.dims);
    if let Some(g) = &report.graph {
        let backends: serde_json::Map<String, serde_json::Value> = m4c_backends::all()
            .iter()
            .chain(m4c_backends::calibrated())
            .map(|b| (b.name().to_string(), json!(refusals(*b, g))))
            .collect();
        doc["refused_by_backend"] = json!(backends);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        print_text(&doc);
    }
    if report.graph.is_none() {
        // The same one line `run` gives: every node that does not lower.
        return Err(m4c_compiler::FrontendError::Unsupported {
            path: args.model.clone(),
            nodes: report.unsupported,
        }
        .into());
    }
    Ok(0)
}

/// What the ONNX file itself says: producer, opset, I/O, parameters, ops.
fn onnx_facts(model: &m4c_compiler::OnnxModel) -> serde_json::Value {
    let g = model.graph();
    let ops = onnx_op_counts(g);
    let params: u64 = g.initializer.iter().map(elements).sum();
    let param_bytes: u64 = g
        .initializer
        .iter()
        .map(|t| {
            m4c_compiler::onnx::dtype_from_onnx(t.data_type)
                .map(|d| d.storage_bytes(elements(t) as usize) as u64)
                .unwrap_or(0)
        })
        .sum();
    let (inputs, outputs) = io_list(g, &g.initializer);
    json!({
        "model": model.path.display().to_string(),
        "opset": model.opset(""),
        "producer": format!("{} {}", model.proto.producer_name, model.proto.producer_version).trim(),
        "inputs": inputs,
        "outputs": outputs,
        "parameters": params,
        "parameter_bytes": param_bytes,
        "initializers": g.initializer.len(),
        "onnx_nodes": ops.values().sum::<usize>(),
        "onnx_ops": ops,
    })
}

fn print_text(d: &serde_json::Value) {
    match d.get("opset") {
        Some(opset) => println!(
            "model      {} (opset {opset}, {})",
            d["model"].as_str().unwrap_or(""),
            d["producer"].as_str().unwrap_or("")
        ),
        None => println!("model      {} (IR file)", d["model"].as_str().unwrap_or("")),
    }
    for (label, key) in [("input", "inputs"), ("output", "outputs")] {
        for v in d[key].as_array().into_iter().flatten() {
            let dims: Vec<&str> = v["shape"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|x| x.as_str())
                .collect();
            println!(
                "{label:<10} {} {}[{}]",
                v["name"].as_str().unwrap_or(""),
                v["dtype"].as_str().unwrap_or(""),
                dims.join(",")
            );
        }
    }
    if d.get("parameters").is_some() {
        println!(
            "parameters {} ({} bytes) in {} initializers",
            d["parameters"], d["parameter_bytes"], d["initializers"]
        );
    }
    let list = |m: &serde_json::Value| -> String {
        m.as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if d.get("onnx_ops").is_some() {
        println!(
            "ONNX ops   {} nodes, {} types: {}",
            d["onnx_nodes"],
            d["onnx_ops"].as_object().map_or(0, |m| m.len()),
            list(&d["onnx_ops"])
        );
    }
    let lowered = if d["lowers_fully"].as_bool() == Some(true) {
        "IR ops    "
    } else {
        "IR ops (the part that lowers)"
    };
    println!(
        "{lowered} {} nodes, {} types: {}",
        d["ir_nodes"],
        d["ir_ops"].as_object().map_or(0, |m| m.len()),
        list(&d["ir_ops"])
    );
    for (backend, refused) in d["refused_by_backend"].as_object().into_iter().flatten() {
        let refused = refused.as_array().cloned().unwrap_or_default();
        match refused.first() {
            None => println!("backend    {backend}: takes every node"),
            Some(first) => println!(
                "backend    {backend}: refuses {} node(s), first {} `{}`: {}",
                refused.len(),
                first["op"].as_str().unwrap_or(""),
                first["value"].as_str().unwrap_or(""),
                first["reason"].as_str().unwrap_or("")
            ),
        }
    }
    let unsupported = d["unsupported"].as_array().cloned().unwrap_or_default();
    if unsupported.is_empty() {
        println!("unsupported none");
    }
    for u in unsupported {
        println!(
            "unsupported {} (node '{}', opset {}): {}",
            u["op_type"].as_str().unwrap_or(""),
            u["node"].as_str().unwrap_or(""),
            u["opset"],
            u["reason"].as_str().unwrap_or("")
        );
    }
    if let Some(m) = d["symbolic_dims"].as_object().filter(|m| !m.is_empty()) {
        println!(
            "dims       {}",
            m.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
}
