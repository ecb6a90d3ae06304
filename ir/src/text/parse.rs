//! Parsing the textual IR back into a [`Graph`].

use std::collections::{BTreeMap, HashMap};

use super::attrs::{from_attrs, AttrValue};
use super::print::is_plain_name_char;
use crate::{DType, Dim, Graph, IrError, OpKind, Storage, Tensor, TensorType, ValueId};

/// Largest element count a type in IR text may have (2⁴⁸): far above any
/// real tensor, far below where byte counts overflow.
const MAX_ELEMENTS: usize = 1 << 48;

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Name(String),
    Str(String),
    Word(String),
    Punct(char),
}

fn tokenize(line: &str) -> Result<Vec<Tok>, String> {
    let mut toks = vec![];
    let mut chars = line.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c == '#' {
            break;
        } else if c == '%' || c == '"' {
            chars.next();
            let quoted = c == '"' || chars.peek() == Some(&'"');
            if c == '%' && quoted {
                chars.next();
            }
            let mut s = String::new();
            if quoted {
                loop {
                    match chars.next() {
                        Some('\\') => s.push(unescape(&mut chars)?),
                        Some('"') => break,
                        Some(ch) => s.push(ch),
                        None => return Err("unterminated string".into()),
                    }
                }
            } else {
                while let Some(&ch) = chars.peek().filter(|ch| is_plain_name_char(**ch)) {
                    s.push(ch);
                    chars.next();
                }
            }
            toks.push(if c == '%' { Tok::Name(s) } else { Tok::Str(s) });
        } else if "=:()[]{},".contains(c) {
            toks.push(Tok::Punct(c));
            chars.next();
        } else if c.is_ascii_alphanumeric() || "_.+-".contains(c) {
            let mut s = String::new();
            while let Some(&ch) = chars
                .peek()
                .filter(|ch| ch.is_ascii_alphanumeric() || "_.+-".contains(**ch))
            {
                s.push(ch);
                chars.next();
            }
            toks.push(Tok::Word(s));
        } else {
            return Err(format!("unexpected character `{c}`"));
        }
    }
    Ok(toks)
}

struct Line {
    toks: Vec<Tok>,
    pos: usize,
}

impl Line {
    fn next(&mut self) -> Result<Tok, String> {
        let t = self
            .toks
            .get(self.pos)
            .cloned()
            .ok_or("unexpected end of line")?;
        self.pos += 1;
        Ok(t)
    }

    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }

    fn punct(&mut self, c: char) -> Result<(), String> {
        match self.next()? {
            Tok::Punct(p) if p == c => Ok(()),
            t => Err(format!("expected `{c}`, found {t:?}")),
        }
    }

    fn word(&mut self) -> Result<String, String> {
        match self.next()? {
            Tok::Word(w) => Ok(w),
            t => Err(format!("expected a word, found {t:?}")),
        }
    }

    fn name(&mut self) -> Result<String, String> {
        match self.next()? {
            Tok::Name(n) => Ok(n),
            t => Err(format!("expected a %name, found {t:?}")),
        }
    }

    /// `[a, b, c]` of words.
    fn list(&mut self) -> Result<Vec<String>, String> {
        self.punct('[')?;
        let mut items = vec![];
        if self.peek() == Some(&Tok::Punct(']')) {
            self.next()?;
            return Ok(items);
        }
        loop {
            items.push(self.word()?);
            match self.next()? {
                Tok::Punct(',') => {}
                Tok::Punct(']') => return Ok(items),
                t => Err(format!("expected `,` or `]`, found {t:?}"))?,
            }
        }
    }

    fn ty(&mut self) -> Result<TensorType, String> {
        let dtype: DType = self.word()?.parse()?;
        let dims = self
            .list()?
            .into_iter()
            .map(|d| d.parse().map(Dim::Fixed).unwrap_or(Dim::Sym(d)))
            .collect::<Vec<_>>();
        // Element counts (and byte counts) must fit comfortably in usize.
        let mut fixed = dims.iter().filter_map(|d| match d {
            Dim::Fixed(n) => Some(*n),
            Dim::Sym(_) => None,
        });
        if fixed
            .try_fold(1usize, |acc, n| acc.checked_mul(n))
            .is_none_or(|n| n > MAX_ELEMENTS)
        {
            return Err(format!("shape {dims:?} has too many elements"));
        }
        Ok(TensorType { dtype, dims })
    }

    fn end(&self) -> Result<(), String> {
        match self.peek() {
            None => Ok(()),
            Some(t) => Err(format!("trailing {t:?}")),
        }
    }
}

fn literal(ty: &TensorType, items: &[String]) -> Result<Tensor, String> {
    let shape = ty.static_shape().ok_or("constants need static shapes")?;
    let bad = |e: &dyn std::fmt::Display| format!("bad literal: {e}");
    let n: usize = shape.iter().product();
    if items.len() != n {
        return Err(format!(
            "literal has {} elements, type {ty} needs {n}",
            items.len()
        ));
    }
    Ok(match ty.dtype {
        DType::F32 => Tensor::from_f32(
            &shape,
            &items
                .iter()
                .map(|s| s.parse().map_err(|e| bad(&e)))
                .collect::<Result<Vec<f32>, _>>()?,
        ),
        DType::I64 => Tensor::from_i64(
            &shape,
            &items
                .iter()
                .map(|s| s.parse().map_err(|e| bad(&e)))
                .collect::<Result<Vec<i64>, _>>()?,
        ),
        DType::I32 => Tensor::from_i32(
            &shape,
            &items
                .iter()
                .map(|s| s.parse().map_err(|e| bad(&e)))
                .collect::<Result<Vec<i32>, _>>()?,
        ),
        DType::I8 => Tensor::from_i8(
            &shape,
            &items
                .iter()
                .map(|s| s.parse().map_err(|e| bad(&e)))
                .collect::<Result<Vec<i8>, _>>()?,
        ),
        DType::U8 => Tensor::from_u8(
            &shape,
            &items
                .iter()
                .map(|s| s.parse().map_err(|e| bad(&e)))
                .collect::<Result<Vec<u8>, _>>()?,
        ),
        DType::Bool => Tensor::from_bool(
            &shape,
            &items
                .iter()
                .map(|s| s.parse().map_err(|e| bad(&e)))
                .collect::<Result<Vec<bool>, _>>()?,
        ),
        other => return Err(format!("no literal syntax for {other}")),
    })
}

/// The character after a backslash in a quoted string (see
/// `print::write_quoted`): `n`, `r`, `t`, `u{HEX}`, or the character itself.
fn unescape(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Result<char, String> {
    match chars.next().ok_or("unterminated escape")? {
        'n' => Ok('\n'),
        'r' => Ok('\r'),
        't' => Ok('\t'),
        'u' => {
            if chars.next() != Some('{') {
                return Err("expected `{` after `\\u`".into());
            }
            let hex: String = chars.by_ref().take_while(|&c| c != '}').collect();
            u32::from_str_radix(&hex, 16)
                .ok()
                .and_then(char::from_u32)
                .ok_or_else(|| format!("`\\u{{{hex}}}` is not a character"))
        }
        c => Ok(c),
    }
}

/// Parses the textual IR. Constants printed as `weight` come back without
/// data ([`Storage::Absent`]) unless `weights` has a tensor of that name.
pub fn parse(text: &str, weights: &HashMap<String, Tensor>) -> Result<Graph, IrError> {
    let mut graph: Option<Graph> = None;
    let mut ids: HashMap<String, ValueId> = HashMap::new();
    let mut closed = false;
    for (idx, raw) in text.lines().enumerate() {
        let at = |msg: String| IrError::Parse { line: idx + 1, msg };
        let toks = tokenize(raw).map_err(at)?;
        if toks.is_empty() {
            continue;
        }
        if closed {
            return Err(at("text after the closing `}`".into()));
        }
        let mut l = Line { toks, pos: 0 };
        let step = (|| -> Result<(), String> {
            let Some(g) = graph.as_mut() else {
                if l.word()? != "graph" {
                    return Err("expected `graph \"name\" {`".into());
                }
                let Tok::Str(name) = l.next()? else {
                    return Err("expected the graph name in quotes".into());
                };
                l.punct('{')?;
                graph = Some(Graph::new(name));
                return l.end();
            };
            let lookup = |ids: &HashMap<String, ValueId>, n: &str| {
                ids.get(n)
                    .copied()
                    .ok_or_else(|| format!("unknown value %{n}"))
            };
            let define = |ids: &mut HashMap<String, ValueId>, n: &str, id: ValueId| match ids
                .insert(n.to_string(), id)
            {
                Some(_) => Err(format!("value %{n} defined twice")),
                None => Ok(()),
            };
            match l.next()? {
                Tok::Punct('}') => closed = true,
                Tok::Word(w) if w == "input" => {
                    let n = l.name()?;
                    l.punct(':')?;
                    let id = g.add_input(n.clone(), l.ty()?);
                    define(&mut ids, &n, id)?;
                }
                Tok::Word(w) if w == "output" => {
                    let id = lookup(&ids, &l.name()?)?;
                    g.outputs.push(id);
                }
                Tok::Word(w) if w == "const" => {
                    let n = l.name()?;
                    l.punct(':')?;
                    let ty = l.ty()?;
                    l.punct('=')?;
                    let tensor = if l.peek() == Some(&Tok::Punct('[')) {
                        literal(&ty, &l.list()?)?
                    } else {
                        if l.word()? != "weight" {
                            return Err("expected a literal or `weight`".into());
                        }
                        let shape = ty.static_shape().ok_or("constants need static shapes")?;
                        match weights.get(&n) {
                            Some(t) if t.dtype == ty.dtype && t.shape == shape => t.clone(),
                            Some(t) => {
                                return Err(format!(
                                    "weight %{n} is {}{:?}, text says {ty}",
                                    t.dtype, t.shape
                                ))
                            }
                            None => Tensor {
                                dtype: ty.dtype,
                                shape,
                                storage: Storage::Absent,
                            },
                        }
                    };
                    let id = g.add_const(n.clone(), tensor);
                    define(&mut ids, &n, id)?;
                }
                Tok::Name(n) => {
                    l.punct(':')?;
                    let ty = l.ty()?;
                    l.punct('=')?;
                    let op_name = l.word()?;
                    let kind = OpKind::from_name(&op_name)
                        .ok_or_else(|| format!("unknown operator `{op_name}`"))?;
                    l.punct('(')?;
                    let mut inputs = vec![];
                    while l.peek() != Some(&Tok::Punct(')')) {
                        inputs.push(lookup(&ids, &l.name()?)?);
                        if l.peek() == Some(&Tok::Punct(',')) {
                            l.next()?;
                        }
                    }
                    l.punct(')')?;
                    let mut attrs = BTreeMap::new();
                    if l.peek() == Some(&Tok::Punct('{')) {
                        l.next()?;
                        while l.peek() != Some(&Tok::Punct('}')) {
                            let key = l.word()?;
                            l.punct('=')?;
                            let v = if l.peek() == Some(&Tok::Punct('[')) {
                                AttrValue::List(l.list()?)
                            } else {
                                AttrValue::Scalar(l.word()?)
                            };
                            attrs.insert(key, v);
                            if l.peek() == Some(&Tok::Punct(',')) {
                                l.next()?;
                            }
                        }
                        l.next()?;
                    }
                    let op = from_attrs(kind, attrs)?;
                    let id = g
                        .add_node(op, &inputs, n.clone())
                        .map_err(|e| e.to_string())?;
                    if g.value(id).ty != ty {
                        return Err(format!(
                            "%{n} is written as {ty} but its operator gives {}",
                            g.value(id).ty
                        ));
                    }
                    define(&mut ids, &n, id)?;
                }
                t => return Err(format!("unexpected {t:?}")),
            }
            l.end()
        })();
        step.map_err(at)?;
    }
    match (graph, closed) {
        (Some(g), true) => Ok(g),
        _ => Err(IrError::Parse {
            line: text.lines().count(),
            msg: "missing closing `}`".into(),
        }),
    }
}
