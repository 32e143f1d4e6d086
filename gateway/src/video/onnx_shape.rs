//! Frees the spatial dimensions of a fixed-shape detection model, so it can run on
//! rectangular inputs ("rectangle inference", issue 18).
//!
//! A 16:9 camera frame letterboxed into the model's square 416 × 416 input leaves 44 % of the
//! tensor as padding, and the convolutions pay for every padded pixel. A YOLOX graph is
//! size-agnostic (its Focus slices, the ×2 resizes of its neck and the `[1, 85, -1]`
//! reshapes of its head work for any height and width that are multiples of 32), but the
//! exported file declares its input as `[1, 3, 416, 416]` and ONNX Runtime refuses any other
//! shape. [`free_spatial_dims`] rewrites only those declarations in the model's bytes:
//!
//! - the first graph input's dimensions 2 and 3 (height, width) become the symbols
//!   `height` and `width`;
//! - the first graph output's dimension 1 (the rows of grid cells) becomes `cells`;
//! - the graph's `value_info` (optional intermediate shapes, all fixed to 416) is dropped:
//!   ONNX Runtime infers the shapes again for each input size.
//!
//! Everything else is copied byte for byte. The walk reads protobuf's wire format directly
//! (field numbers from `onnx.proto`: ModelProto.graph = 7; GraphProto.input = 11, output =
//! 12, value_info = 13; ValueInfoProto.type = 2; TypeProto.tensor_type = 1;
//! TypeProto.Tensor.shape = 2; TensorShapeProto.dim = 1; Dimension.dim_param = 2). Whether
//! the graph really runs at another size is not decided here: the detector probes it once
//! at load and keeps the square input when it does not ([`super::detect::OrtDetector::load`]).

/// Why a model's dimensions could not be freed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ShapeError {
    /// The bytes are not protobuf as ONNX writes it (truncated, or a group / unknown wire type).
    #[error("not an ONNX model: {0}")]
    Malformed(&'static str),
    /// The model has no graph, or its graph no input/output with enough dimensions.
    #[error("the model declares no {0}")]
    Missing(&'static str),
}

const MODEL_GRAPH: u64 = 7;
const GRAPH_INPUT: u64 = 11;
const GRAPH_OUTPUT: u64 = 12;
const GRAPH_VALUE_INFO: u64 = 13;
const VALUE_INFO_TYPE: u64 = 2;
const TYPE_TENSOR: u64 = 1;
const TENSOR_SHAPE: u64 = 2;
const SHAPE_DIM: u64 = 1;
const DIM_PARAM: u64 = 2;
const LEN: u8 = 2;

/// Rewrites one nested message's bytes.
type Rewrite<'a> = &'a dyn Fn(&[u8]) -> Result<Vec<u8>, ShapeError>;

/// The model with its first input's height and width and its first output's row count made
/// symbolic, and its `value_info` dropped (see the module docs).
pub fn free_spatial_dims(model: &[u8]) -> Result<Vec<u8>, ShapeError> {
    nested(model, MODEL_GRAPH, &rewrite_graph, "graph")
}

fn rewrite_graph(graph: &[u8]) -> Result<Vec<u8>, ShapeError> {
    let (mut input_done, mut output_done) = (false, false);
    let out = rewrite(graph, |f, out| {
        if f.wire != LEN {
            return Ok(false);
        }
        let symbols: &[(usize, &str)] = match f.number {
            GRAPH_VALUE_INFO => return Ok(true),
            GRAPH_INPUT if !input_done => {
                input_done = true;
                &[(2, "height"), (3, "width")]
            }
            GRAPH_OUTPUT if !output_done => {
                output_done = true;
                &[(1, "cells")]
            }
            _ => return Ok(false),
        };
        put_len(out, f.number, &rewrite_value_info(f.payload, symbols)?);
        Ok(true)
    })?;
    match (input_done, output_done) {
        (false, _) => Err(ShapeError::Missing("input")),
        (_, false) => Err(ShapeError::Missing("output")),
        _ => Ok(out),
    }
}

/// ValueInfoProto → TypeProto → Tensor → TensorShapeProto: the dims at the given indexes
/// become the given symbols.
fn rewrite_value_info(info: &[u8], symbols: &[(usize, &str)]) -> Result<Vec<u8>, ShapeError> {
    let shape = |shape: &[u8]| rewrite_dims(shape, symbols);
    let tensor = |t: &[u8]| nested(t, TENSOR_SHAPE, &shape, "shape");
    let ty = |t: &[u8]| nested(t, TYPE_TENSOR, &tensor, "tensor type");
    nested(info, VALUE_INFO_TYPE, &ty, "type")
}

/// Rewrites the one length-delimited field `number` of `msg` with `inner`; an error when the
/// message has none.
fn nested(
    msg: &[u8],
    number: u64,
    inner: Rewrite,
    what: &'static str,
) -> Result<Vec<u8>, ShapeError> {
    let mut found = false;
    let out = rewrite(msg, |f, out| {
        if f.number == number && f.wire == LEN {
            found = true;
            put_len(out, number, &inner(f.payload)?);
            return Ok(true);
        }
        Ok(false)
    })?;
    if found {
        Ok(out)
    } else {
        Err(ShapeError::Missing(what))
    }
}

fn rewrite_dims(shape: &[u8], symbols: &[(usize, &str)]) -> Result<Vec<u8>, ShapeError> {
    let mut index = 0;
    let out = rewrite(shape, |f, out| {
        if f.number != SHAPE_DIM || f.wire != LEN {
            return Ok(false);
        }
        let at = index;
        index += 1;
        match symbols.iter().find(|(i, _)| *i == at) {
            Some((_, name)) => {
                let mut dim = Vec::new();
                put_len(&mut dim, DIM_PARAM, name.as_bytes());
                put_len(out, SHAPE_DIM, &dim);
                Ok(true)
            }
            None => Ok(false),
        }
    })?;
    if symbols.iter().any(|(i, _)| *i >= index) {
        return Err(ShapeError::Missing("dimension to free"));
    }
    Ok(out)
}

/// One field of a protobuf message.
struct Field<'a> {
    number: u64,
    wire: u8,
    /// The field as it is in the message, key included (copied when not rewritten).
    raw: &'a [u8],
    /// A length-delimited field's content (empty for the other wire types).
    payload: &'a [u8],
}

/// Copies `msg` field by field; `edit` writes its own bytes for a field and returns `true`,
/// or returns `false` to keep the field as it is.
fn rewrite(
    msg: &[u8],
    mut edit: impl FnMut(&Field, &mut Vec<u8>) -> Result<bool, ShapeError>,
) -> Result<Vec<u8>, ShapeError> {
    let mut out = Vec::with_capacity(msg.len());
    let mut at = 0;
    while at < msg.len() {
        let field = read_field(msg, &mut at)?;
        if !edit(&field, &mut out)? {
            out.extend_from_slice(field.raw);
        }
    }
    Ok(out)
}

fn read_field<'a>(msg: &'a [u8], at: &mut usize) -> Result<Field<'a>, ShapeError> {
    let start = *at;
    let key = read_varint(msg, at)?;
    let (number, wire) = (key >> 3, (key & 7) as u8);
    let mut payload: &[u8] = &[];
    match wire {
        0 => {
            read_varint(msg, at)?;
        }
        1 => *at = skip(msg, *at, 8)?,
        5 => *at = skip(msg, *at, 4)?,
        LEN => {
            let len = usize::try_from(read_varint(msg, at)?)
                .map_err(|_| ShapeError::Malformed("length out of range"))?;
            let end = skip(msg, *at, len)?;
            payload = &msg[*at..end];
            *at = end;
        }
        _ => return Err(ShapeError::Malformed("unsupported wire type")),
    }
    if number == 0 {
        return Err(ShapeError::Malformed("field number 0"));
    }
    Ok(Field {
        number,
        wire,
        raw: &msg[start..*at],
        payload,
    })
}

fn skip(msg: &[u8], at: usize, n: usize) -> Result<usize, ShapeError> {
    at.checked_add(n)
        .filter(|&end| end <= msg.len())
        .ok_or(ShapeError::Malformed("truncated"))
}

fn read_varint(msg: &[u8], at: &mut usize) -> Result<u64, ShapeError> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *msg.get(*at).ok_or(ShapeError::Malformed("truncated"))?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(ShapeError::Malformed("varint longer than 10 bytes"))
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_len(out: &mut Vec<u8>, number: u64, payload: &[u8]) {
    put_varint(out, number << 3 | u64::from(LEN));
    put_varint(out, payload.len() as u64);
    out.extend_from_slice(payload);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A dimension: `dim_value` (field 1, varint).
    fn dim(v: u64) -> Vec<u8> {
        let mut d = Vec::new();
        put_varint(&mut d, 1 << 3);
        put_varint(&mut d, v);
        d
    }

    fn value_info(name: &str, dims: &[u64]) -> Vec<u8> {
        let mut shape = Vec::new();
        for &v in dims {
            put_len(&mut shape, SHAPE_DIM, &dim(v));
        }
        let mut tensor = vec![0x08, 0x01]; // elem_type = FLOAT
        put_len(&mut tensor, TENSOR_SHAPE, &shape);
        let mut ty = Vec::new();
        put_len(&mut ty, TYPE_TENSOR, &tensor);
        let mut info = Vec::new();
        put_len(&mut info, 1, name.as_bytes());
        put_len(&mut info, VALUE_INFO_TYPE, &ty);
        info
    }

    fn model(graph_fields: &[(u64, Vec<u8>)]) -> Vec<u8> {
        let mut graph = Vec::new();
        for (n, payload) in graph_fields {
            put_len(&mut graph, *n, payload);
        }
        let mut m = vec![0x08, 0x07]; // ir_version = 7
        put_len(&mut m, MODEL_GRAPH, &graph);
        m
    }

    /// The dims of every field `number` of the graph, as `Ok(value)` / `Err(symbol)`.
    fn dims_of(model: &[u8], number: u64) -> Vec<Vec<Result<u64, String>>> {
        let mut all = Vec::new();
        let graph = first(model, MODEL_GRAPH);
        let mut at = 0;
        while at < graph.len() {
            let f = read_field(graph, &mut at).unwrap();
            if f.number != number {
                continue;
            }
            let shape = first(first(first(f.payload, VALUE_INFO_TYPE), TYPE_TENSOR), 2);
            let mut dims = Vec::new();
            let mut i = 0;
            while i < shape.len() {
                let d = read_field(shape, &mut i).unwrap();
                let mut j = 0;
                let inner = read_field(d.payload, &mut j).unwrap();
                dims.push(match inner.number {
                    1 => Ok(read_varint(inner.raw, &mut 1).unwrap()),
                    _ => Err(String::from_utf8(inner.payload.to_vec()).unwrap()),
                });
            }
            all.push(dims);
        }
        all
    }

    fn first(msg: &[u8], number: u64) -> &[u8] {
        let mut at = 0;
        while at < msg.len() {
            let f = read_field(msg, &mut at).unwrap();
            if f.number == number {
                return f.payload;
            }
        }
        panic!("no field {number}");
    }

    #[test]
    fn the_first_input_gets_symbolic_height_and_width_and_the_first_output_symbolic_rows() {
        let m = model(&[
            (1, b"node".to_vec()),
            (GRAPH_INPUT, value_info("images", &[1, 3, 416, 416])),
            (GRAPH_INPUT, value_info("extra", &[1, 3, 8, 8])),
            (GRAPH_OUTPUT, value_info("output", &[1, 3549, 85])),
            (GRAPH_VALUE_INFO, value_info("hidden", &[1, 16, 208, 208])),
        ]);
        let freed = free_spatial_dims(&m).unwrap();
        let sym = |s: &str| Err(s.to_owned());
        assert_eq!(
            dims_of(&freed, GRAPH_INPUT),
            vec![
                vec![Ok(1), Ok(3), sym("height"), sym("width")],
                vec![Ok(1), Ok(3), Ok(8), Ok(8)],
            ]
        );
        assert_eq!(
            dims_of(&freed, GRAPH_OUTPUT),
            vec![vec![Ok(1), sym("cells"), Ok(85)]]
        );
        assert!(
            dims_of(&freed, GRAPH_VALUE_INFO).is_empty(),
            "value_info dropped"
        );
        assert_eq!(freed[..2], [0x08, 0x07], "other fields copied");
        assert_eq!(first(first(&freed, MODEL_GRAPH), 1), b"node");
    }

    #[test]
    fn truncated_or_shapeless_models_are_refused_with_a_reason_not_a_panic() {
        let m = model(&[
            (GRAPH_INPUT, value_info("images", &[1, 3, 416, 416])),
            (GRAPH_OUTPUT, value_info("output", &[1, 3549, 85])),
        ]);
        for cut in 1..m.len() {
            assert!(free_spatial_dims(&m[..cut]).is_err(), "cut at {cut}");
        }
        assert_eq!(free_spatial_dims(b""), Err(ShapeError::Missing("graph")));
        let flat = model(&[
            (GRAPH_INPUT, value_info("v", &[128])),
            (GRAPH_OUTPUT, value_info("o", &[1, 2])),
        ]);
        assert_eq!(
            free_spatial_dims(&flat),
            Err(ShapeError::Missing("dimension to free"))
        );
        let no_output = model(&[(GRAPH_INPUT, value_info("images", &[1, 3, 4, 4]))]);
        assert_eq!(
            free_spatial_dims(&no_output),
            Err(ShapeError::Missing("output"))
        );
        assert_eq!(
            free_spatial_dims(&[0x0b]),
            Err(ShapeError::Malformed("unsupported wire type"))
        );
    }
}
