//! One module into bundle form: its IR text and its weight table, checked
//! by reading them back the way the runtime will.

use std::collections::{BTreeMap, HashMap};

use m4c_ir::{Graph, Storage, Tensor};
use m4c_runtime::bundle::format::{CodeWeight, WeightEntry};
use m4c_runtime::bundle::lean::find_code_weights;

use super::pool::WeightPool;

/// A module's IR text and weight tables (constant name → blob and type,
/// or → where the module's code stores it).
pub struct Packed {
    pub text: String,
    pub weights: BTreeMap<String, WeightEntry>,
    pub code_weights: BTreeMap<String, CodeWeight>,
}

/// A module's CPU code, whose weights IR weights may be read from: the
/// name of its sections, its plan and its weights.
pub struct CpuCode<'a> {
    pub section: String,
    pub plan: &'a [u8],
    pub weights: &'a [u8],
}

/// Prints `g`, interns the bytes of every constant the text leaves out
/// (printed as `weight`) in `pool`, except those `code` already stores
/// (read from there), and checks that parsing the text with those weights
/// gives back a verified graph that prints identically and whose every
/// constant has the original bytes.
pub fn pack(g: &Graph, pool: &mut WeightPool, code: Option<CpuCode>) -> Result<Packed, String> {
    let text = m4c_ir::text::print(g);
    let bare = m4c_ir::text::parse(&text, &HashMap::new())
        .map_err(|e| format!("printed IR does not parse back: {e}"))?;
    let by_name: HashMap<&str, &Tensor> = g
        .constant_tensors()
        .map(|(id, t)| (g.value(id).name.as_str(), t))
        .collect();
    let mut candidates = BTreeMap::new();
    for id in bare.constants() {
        if !matches!(bare.constant(id).map(|t| &t.storage), Some(Storage::Absent)) {
            continue;
        }
        let name = &bare.value(id).name;
        let t = by_name
            .get(name.as_str())
            .ok_or_else(|| format!("weight %{name} is not a constant of the graph"))?;
        candidates.insert(name.clone(), *t);
    }
    let code_weights = match code {
        Some(c) => find_code_weights(c.plan, c.weights, &c.section, &candidates)
            .map_err(|e| format!("code `{}`: {e}", c.section))?,
        None => BTreeMap::new(),
    };
    let mut weights = BTreeMap::new();
    let mut tensors = HashMap::new();
    for (name, t) in candidates {
        tensors.insert(name.clone(), t.clone());
        if code_weights.contains_key(&name) {
            continue;
        }
        let bytes = t.bytes().map_err(|e| format!("weight %{name}: {e}"))?;
        let entry = WeightEntry {
            blob: pool.intern(bytes),
            dtype: t.dtype.to_string(),
            shape: t.shape.clone(),
        };
        weights.insert(name, entry);
    }
    check_round_trip(g, &text, &tensors)?;
    Ok(Packed {
        text,
        weights,
        code_weights,
    })
}

/// Reads `text` back with `weights` and compares with the original graph.
fn check_round_trip(
    g: &Graph,
    text: &str,
    weights: &HashMap<String, Tensor>,
) -> Result<(), String> {
    let back = m4c_ir::text::parse(text, weights).map_err(|e| e.to_string())?;
    back.verify().map_err(|e| e.to_string())?;
    if m4c_ir::text::print(&back) != text {
        return Err("IR text does not print back identically".into());
    }
    for ((a, ta), (_, tb)) in g.constant_tensors().zip(back.constant_tensors()) {
        if !ta.shares_storage(tb) && ta.bytes().ok() != tb.bytes().ok() {
            return Err(format!(
                "constant %{} changes when read back from the IR text",
                g.value(a).name
            ));
        }
    }
    Ok(())
}
