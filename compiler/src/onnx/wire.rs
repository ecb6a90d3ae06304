//! Locating initializer payloads inside the ONNX file.
//!
//! prost decodes `raw_data` into an owned buffer; to reference weights in
//! place instead, this walks the protobuf wire format of `ModelProto` just
//! far enough to find the byte range of every `graph.initializer[i].raw_data`.

/// Byte range of one initializer's `raw_data` in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawSpan {
    pub offset: usize,
    pub len: usize,
}

const MODEL_GRAPH: u64 = 7;
const GRAPH_INITIALIZER: u64 = 5;
const TENSOR_RAW_DATA: u64 = 9;

fn varint(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*pos)?;
        *pos += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// Calls `f(field, start, end)` for each length-delimited field of the
/// message in `buf[start..end]`; skips the other wire types.
fn for_each_len_field(
    buf: &[u8],
    start: usize,
    end: usize,
    mut f: impl FnMut(u64, usize, usize),
) -> Option<()> {
    let mut pos = start;
    while pos < end {
        let key = varint(buf, &mut pos)?;
        match key & 7 {
            0 => {
                varint(buf, &mut pos)?;
            }
            1 => pos += 8,
            5 => pos += 4,
            2 => {
                let len = usize::try_from(varint(buf, &mut pos)?).ok()?;
                let stop = pos.checked_add(len).filter(|&s| s <= end)?;
                f(key >> 3, pos, stop);
                pos = stop;
            }
            _ => return None,
        }
    }
    (pos == end).then_some(())
}

/// The `raw_data` span of each initializer of the main graph, in order
/// (`None` for initializers without inline raw data), or `None` when the
/// bytes are not a well-formed model.
pub fn initializer_spans(buf: &[u8]) -> Option<Vec<Option<RawSpan>>> {
    let mut graph = None;
    for_each_len_field(buf, 0, buf.len(), |field, s, e| {
        if field == MODEL_GRAPH {
            graph = Some((s, e));
        }
    })?;
    let (gs, ge) = graph?;
    let mut tensors = vec![];
    for_each_len_field(buf, gs, ge, |field, s, e| {
        if field == GRAPH_INITIALIZER {
            tensors.push((s, e));
        }
    })?;
    tensors
        .into_iter()
        .map(|(s, e)| {
            let mut raw = None;
            for_each_len_field(buf, s, e, |field, fs, fe| {
                if field == TENSOR_RAW_DATA {
                    raw = Some(RawSpan {
                        offset: fs,
                        len: fe - fs,
                    });
                }
            })?;
            Some(raw)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use tract_onnx::pb::{GraphProto, ModelProto, TensorProto};

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
        let spans = initializer_spans(&bytes).unwrap();
        assert_eq!(spans.len(), 3);
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
        assert!(initializer_spans(&bytes[..bytes.len() - 1]).is_none());
    }
}
