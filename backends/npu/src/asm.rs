//! The assembler: text to [`Program`].
//!
//! One statement per line; `;` starts a comment. Directives: `.dram SIZE`
//! (DRAM image bytes), `.segment ADDR` (starts a new, possibly empty,
//! segment of initial DRAM contents at ADDR) and `.data ADDR HEXBYTES`
//! (initial DRAM contents: a `.data` line that continues the last segment
//! extends it, any other starts a segment). The disassembler opens every
//! segment with `.segment`, so text → binary → text keeps the segments
//! exactly, adjacent ones included.
//! Instructions: `mnemonic field=value ...` with every field of the opcode
//! given once; values are decimal or `0x` hex; enumerated fields (engines,
//! memory spaces, vector operations) by name.

use crate::isa::{FieldKind, Instr, OPS};
use crate::program::{Program, ProgramError, Segment};

/// Why assembly failed: the line (1-based) and what is wrong there.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AsmError {
    /// A syntax or operand error on one line.
    #[error("line {line}: {message}")]
    Line {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// The assembled program fails validation.
    #[error(transparent)]
    Program(#[from] ProgramError),
}

/// Assembles `source` and validates the result.
pub fn assemble(source: &str) -> Result<Program, AsmError> {
    let mut program = Program::default();
    for (i, raw) in source.lines().enumerate() {
        let err = |message: String| AsmError::Line {
            line: i + 1,
            message,
        };
        let text = raw.split(';').next().unwrap_or("").trim();
        if text.is_empty() {
            continue;
        }
        let mut words = text.split_whitespace();
        let head = words.next().unwrap_or("");
        let rest: Vec<&str> = words.collect();
        match head {
            ".dram" => {
                let [size] = rest[..] else {
                    return Err(err("`.dram` takes one size".into()));
                };
                program.dram_size = parse_int(size)
                    .and_then(|v| u32::try_from(v).ok())
                    .ok_or_else(|| err(format!("bad DRAM size `{size}`")))?;
            }
            ".segment" => {
                let [addr] = rest[..] else {
                    return Err(err("`.segment` takes an address".into()));
                };
                let addr = parse_int(addr)
                    .and_then(|v| u32::try_from(v).ok())
                    .ok_or_else(|| err(format!("bad address `{addr}`")))?;
                program.segments.push(Segment {
                    addr,
                    bytes: vec![],
                });
            }
            ".data" => {
                let [addr, hex] = rest[..] else {
                    return Err(err("`.data` takes an address and hex bytes".into()));
                };
                let addr = parse_int(addr)
                    .and_then(|v| u32::try_from(v).ok())
                    .ok_or_else(|| err(format!("bad address `{addr}`")))?;
                let bytes = parse_hex(hex).ok_or_else(|| err("bad hex data".into()))?;
                push_data(&mut program.segments, addr, bytes);
            }
            _ => program.instrs.push(parse_instr(head, &rest).map_err(err)?),
        }
    }
    program.validate()?;
    Ok(program)
}

fn push_data(segments: &mut Vec<Segment>, addr: u32, bytes: Vec<u8>) {
    if let Some(last) = segments.last_mut() {
        if last.addr as u64 + last.bytes.len() as u64 == addr as u64 {
            last.bytes.extend_from_slice(&bytes);
            return;
        }
    }
    segments.push(Segment { addr, bytes });
}

fn parse_instr(mnemonic: &str, operands: &[&str]) -> Result<Instr, String> {
    let spec = OPS
        .iter()
        .find(|s| s.mnemonic == mnemonic)
        .ok_or_else(|| format!("unknown instruction `{mnemonic}`"))?;
    let mut values: Vec<Option<i64>> = vec![None; spec.fields.len()];
    for operand in operands {
        let (name, value) = operand
            .split_once('=')
            .ok_or_else(|| format!("operand `{operand}` is not `field=value`"))?;
        let idx = spec
            .fields
            .iter()
            .position(|f| f.name == name)
            .ok_or_else(|| format!("`{mnemonic}` has no field `{name}`"))?;
        if values[idx].is_some() {
            return Err(format!("field `{name}` given twice"));
        }
        let field = &spec.fields[idx];
        let parsed = match field.kind {
            FieldKind::Named(names) => names.iter().position(|n| *n == value).map(|i| i as i64),
            FieldKind::Uint | FieldKind::Int => parse_int(value),
        }
        .ok_or_else(|| format!("bad value `{value}` for field `{name}`"))?;
        let (lo, hi) = field.range();
        if parsed < lo || parsed > hi {
            return Err(format!("{name}={parsed} out of range {lo}..={hi}"));
        }
        values[idx] = Some(parsed);
    }
    let values: Vec<i64> = values
        .iter()
        .zip(spec.fields)
        .map(|(v, f)| v.ok_or_else(|| format!("`{mnemonic}` is missing field `{}`", f.name)))
        .collect::<Result<_, _>>()?;
    Instr::from_values(spec.opcode, &values).ok_or_else(|| "internal: field count".into())
}

fn parse_int(text: &str) -> Option<i64> {
    let (neg, body) = match text.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, text),
    };
    let v = match body.strip_prefix("0x") {
        Some(hex) => i64::from_str_radix(hex, 16).ok()?,
        None => body.parse::<i64>().ok()?,
    };
    Some(if neg { -v } else { v })
}

fn parse_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disasm::disassemble;

    #[test]
    fn adjacent_and_empty_segments_survive_disassembly() {
        let program = Program {
            dram_size: 64,
            segments: vec![
                Segment {
                    addr: 0,
                    bytes: vec![1, 2, 3],
                },
                Segment {
                    addr: 3,
                    bytes: vec![4],
                },
                Segment {
                    addr: 8,
                    bytes: vec![],
                },
            ],
            instrs: assemble("halt").unwrap().instrs,
        };
        let bytes = program.to_bytes();
        let again = assemble(&disassemble(&Program::from_bytes(&bytes).unwrap())).unwrap();
        assert_eq!(again.to_bytes(), bytes, "asm(disasm(x)) is byte-identical");
    }

    #[test]
    fn segment_takes_one_address() {
        let e = assemble(".dram 8\n.segment\nhalt").unwrap_err();
        assert_eq!(e.to_string(), "line 2: `.segment` takes an address");
    }

    #[test]
    fn assembles_directives_and_instructions() {
        let p = assemble(
            ".dram 64\n.data 0x10 0102\n.data 0x12 ff ; continues\n\
             wait engine=mx sem=2\nsignal engine=ld sem=2\nhalt\n",
        )
        .unwrap();
        assert_eq!(
            p.segments,
            vec![Segment {
                addr: 16,
                bytes: vec![1, 2, 255]
            }]
        );
        assert_eq!(p.instrs[0], Instr::Wait { engine: 1, sem: 2 });
    }

    #[test]
    fn errors_name_the_line() {
        let cases = [
            ("frob\nhalt", 1, "unknown instruction"),
            ("halt\nwait engine=mx", 2, "missing field `sem`"),
            ("wait engine=zz sem=1", 1, "bad value"),
            ("wait engine=mx sem=99", 1, "out of range"),
            ("wait engine=mx sem=1 sem=1", 1, "given twice"),
            ("halt x", 1, "not `field=value`"),
            (".data 0 abc", 1, "bad hex"),
        ];
        for (src, line, needle) in cases {
            match assemble(src) {
                Err(AsmError::Line { line: l, message }) => {
                    assert_eq!(l, line, "{src}");
                    assert!(message.contains(needle), "{src}: {message}");
                }
                other => panic!("{src}: {other:?}"),
            }
        }
    }
}
