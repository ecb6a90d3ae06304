//! Printing a graph in the textual IR.

use std::fmt::{self, Write};

use super::attrs::{to_attrs, AttrValue};
use crate::{DType, Graph, Tensor, ValueId};

/// Constants with at most this many elements are printed as literals;
/// larger ones (weights) are printed as `weight`.
pub const INLINE_LIMIT: usize = 16;

/// Writes `%name`, quoting names with characters outside `[A-Za-z0-9_./-]`.
pub fn write_name(out: &mut String, name: &str) {
    out.push('%');
    if !name.is_empty() && name.chars().all(is_plain_name_char) {
        out.push_str(name);
    } else {
        write_quoted(out, name);
    }
}

/// Writes `s` in double quotes, escaping `"` and `\` with a backslash and
/// control characters as `\n`, `\r`, `\t` or `\u{HEX}`, so that any
/// string stays on one line and parses back to itself.
pub fn write_quoted(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Characters allowed in an unquoted value name.
pub fn is_plain_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "_./-".contains(c)
}

fn write_literal(out: &mut String, t: &Tensor) -> Result<bool, fmt::Error> {
    let items: Vec<String> = match t.dtype {
        DType::F32 => match t.to_f32_vec() {
            Ok(v) => v.iter().map(|x| format!("{x:?}")).collect(),
            Err(_) => return Ok(false),
        },
        DType::I64 | DType::I32 | DType::I8 | DType::U8 => match t.to_index_vec() {
            Ok(v) => v.iter().map(|x| x.to_string()).collect(),
            Err(_) => return Ok(false),
        },
        DType::Bool => match t.to_bool_vec() {
            Ok(v) => v.iter().map(|x| x.to_string()).collect(),
            Err(_) => return Ok(false),
        },
        _ => return Ok(false),
    };
    write!(out, "[{}]", items.join(", "))?;
    Ok(true)
}

/// Renders a graph; [`crate::text::parse`] reads it back.
///
/// ```
/// use m4c_ir::{DType, Graph, Op, TensorType};
/// let mut g = Graph::new("g");
/// let x = g.add_input("x", TensorType::fixed(DType::F32, &[4]));
/// let y = g.add_node(Op::Softmax { axis: 0 }, &[x], "y").unwrap();
/// g.outputs.push(y);
/// let text = m4c_ir::text::print(&g);
/// assert!(text.contains("%y: f32[4] = Softmax(%x) {axis=0}"));
/// ```
pub fn print(g: &Graph) -> String {
    let mut out = String::new();
    #[allow(clippy::expect_used, reason = "fmt::Write for String never fails")]
    render(g, &mut out).expect("writing to a String cannot fail");
    out
}

fn render(g: &Graph, out: &mut String) -> fmt::Result {
    let name = |out: &mut String, id: ValueId| write_name(out, &g.value(id).name);
    out.push_str("graph ");
    write_quoted(out, &g.name);
    out.push_str(" {\n");
    for &i in &g.inputs {
        out.push_str("  input ");
        name(out, i);
        writeln!(out, ": {}", g.value(i).ty)?;
    }
    for (id, t) in g.constant_tensors() {
        let v = g.value(id);
        out.push_str("  const ");
        name(out, id);
        write!(out, ": {} = ", v.ty)?;
        if t.len() > INLINE_LIMIT || !write_literal(out, t)? {
            out.push_str("weight");
        }
        out.push('\n');
    }
    for node in &g.nodes {
        out.push_str("  ");
        name(out, node.output);
        write!(out, ": {} = {}(", g.value(node.output).ty, node.op.name())?;
        for (k, &i) in node.inputs.iter().enumerate() {
            if k > 0 {
                out.push_str(", ");
            }
            name(out, i);
        }
        out.push(')');
        let attrs = to_attrs(&node.op);
        if !attrs.is_empty() {
            let parts: Vec<String> = attrs
                .iter()
                .map(|(k, v)| match v {
                    AttrValue::Scalar(s) => format!("{k}={s}"),
                    AttrValue::List(l) => format!("{k}=[{}]", l.join(",")),
                })
                .collect();
            write!(out, " {{{}}}", parts.join(", "))?;
        }
        out.push('\n');
    }
    for &o in &g.outputs {
        out.push_str("  output ");
        name(out, o);
        out.push('\n');
    }
    out.push_str("}\n");
    Ok(())
}
