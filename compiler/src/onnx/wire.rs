//! Decoding `ModelProto` without copying the weights.
//!
//! prost decodes `raw_data` into an owned buffer; to reference weights in
//! place instead, this walks the protobuf wire format of the model, the
//! main graph and each of its initializers, hands every other field to
//! prost (merging field runs, as protobuf parsing is defined), and records
//! the byte range of each `graph.initializer[i].raw_data` without reading
//! it. Loading a model therefore never holds its weights twice.

use prost::Message;
use tract_onnx::pb::{ModelProto, TensorProto};

/// Byte range of one initializer's `raw_data` in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawSpan {
    pub offset: usize,
    pub len: usize,
}

const MODEL_GRAPH: u64 = 7;
const GRAPH_INITIALIZER: u64 = 5;
const TENSOR_RAW_DATA: u64 = 9;
const LEN_DELIMITED: u64 = 2;

fn varint(buf: &[u8], pos: &mut usize) -> Result<u64, String> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*pos).ok_or("truncated varint")?;
        *pos += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err("varint longer than 10 bytes".into())
}

/// Merges the fields of the message in `buf[start..end]` into `msg`, except
/// the length-delimited fields `special(msg, field, value_start,
/// value_end)` takes (returns true for): runs of the others go to prost.
fn merge_except<M: Message>(
    msg: &mut M,
    buf: &[u8],
    start: usize,
    end: usize,
    mut special: impl FnMut(&mut M, u64, usize, usize) -> Result<bool, String>,
) -> Result<(), String> {
    let mut run = start;
    let mut pos = start;
    let merge =
        |msg: &mut M, from: usize, to: usize| msg.merge(&buf[from..to]).map_err(|e| e.to_string());
    while pos < end {
        let field_start = pos;
        let key = varint(buf, &mut pos)?;
        let skip = |n: usize, pos: usize| {
            pos.checked_add(n)
                .filter(|&p| p <= end)
                .ok_or_else(|| "field runs past its message".to_string())
        };
        match key & 7 {
            0 => {
                varint(buf, &mut pos)?;
            }
            1 => pos = skip(8, pos)?,
            5 => pos = skip(4, pos)?,
            LEN_DELIMITED => {
                let len = usize::try_from(varint(buf, &mut pos)?).map_err(|e| e.to_string())?;
                let value_end = skip(len, pos)?;
                if special(msg, key >> 3, pos, value_end)? {
                    merge(msg, run, field_start)?;
                    run = value_end;
                }
                pos = value_end;
            }
            w => return Err(format!("wire type {w} (groups are not used by ONNX)")),
        }
    }
    if pos != end {
        return Err("field runs past its message".into());
    }
    merge(msg, run, end)
}

/// Decodes a model, leaving the main graph's initializers' `raw_data`
/// empty: the byte range of each in `buf` comes back instead, in the
/// order of `graph.initializer` (`None` for an initializer without inline
/// raw data).
pub fn decode_model(buf: &[u8]) -> Result<(ModelProto, Vec<Option<RawSpan>>), String> {
    let mut model = ModelProto::default();
    let mut spans = vec![];
    merge_except(&mut model, buf, 0, buf.len(), |model, field, s, e| {
        if field != MODEL_GRAPH {
            return Ok(false);
        }
        let graph = model.graph.get_or_insert_with(Default::default);
        merge_except(graph, buf, s, e, |graph, field, s, e| {
            if field != GRAPH_INITIALIZER {
                return Ok(false);
            }
            let mut tensor = TensorProto::default();
            let mut raw = None;
            merge_except(&mut tensor, buf, s, e, |_, field, s, e| {
                let is_raw = field == TENSOR_RAW_DATA;
                if is_raw {
                    raw = Some(RawSpan {
                        offset: s,
                        len: e - s,
                    });
                }
                Ok(is_raw)
            })?;
            graph.initializer.push(tensor);
            spans.push(raw);
            Ok(true)
        })?;
        Ok(true)
    })?;
    Ok((model, spans))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::pb::GraphProto;

    #[test]
    fn finds_raw_data_of_each_initializer() {
        let t = |name: &str, raw: Vec<u8>| TensorProto {
            name: name.into(),
            dims: vec![raw.len() as i64 / 4],
            data_type: 1,
            raw_data: raw,
            ..Default::default()
        };
        let model = ModelProto {
            ir_version: 8,
            graph: Some(GraphProto {
                name: "g".into(),
                initializer: vec![
                    t("a", vec![1, 2, 3, 4]),
                    t("b", vec![]),
                    t("c", (0..200).collect()),
                ],
                ..Default::default()
            }),
            ..Default::default()
        };
        let bytes = model.encode_to_vec();
        let (decoded, spans) = decode_model(&bytes).unwrap();
        assert_eq!(spans.len(), 3);
        // Everything but the payloads is what prost decodes.
        let mut expected = ModelProto::decode(bytes.as_slice()).unwrap();
        for t in &mut expected.graph.as_mut().unwrap().initializer {
            t.raw_data.clear();
        }
        assert_eq!(decoded, expected);
        let a = spans[0].unwrap();
        assert_eq!(&bytes[a.offset..a.offset + a.len], &[1, 2, 3, 4]);
        assert_eq!(spans[1], None);
        let c = spans[2].unwrap();
        assert_eq!(
            bytes[c.offset..c.offset + c.len].to_vec(),
            (0..200).collect::<Vec<u8>>()
        );
    }

    #[test]
    fn truncated_bytes_are_rejected() {
        let model = ModelProto {
            graph: Some(GraphProto::default()),
            ..Default::default()
        };
        let bytes = model.encode_to_vec();
        assert!(decode_model(&bytes[..bytes.len() - 1]).is_err());
    }
}
