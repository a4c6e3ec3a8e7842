//! A bounds-checked GGUF reader (spec: ggml `docs/gguf.md`), versions 2 and 3.
//!
//! We parse the header ourselves rather than through `candle_core::quantized::gguf_file` so that
//! every malformed field becomes an error naming the file, the field or tensor and the byte
//! offset: a count or length is checked against the bytes left before anything is allocated.
//! Tensor data is handed to candle (`qtensor_from_ggml`) for dequantization.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::quantized::{ggml_file::qtensor_from_ggml, GgmlDType};
use candle_core::{Device, Tensor};

const MAGIC: &[u8; 4] = b"GGUF";
const MAX_DIMS: u32 = 4;

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(String),
    Array(Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) if v >= 0 => Some(v as u64),
            Value::I16(v) if v >= 0 => Some(v as u64),
            Value::I32(v) if v >= 0 => Some(v as u64),
            Value::I64(v) if v >= 0 => Some(v as u64),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: GgmlDType,
    /// In candle order (outermost first), i.e. GGUF's `ne` reversed.
    pub shape: Vec<usize>,
    /// Absolute byte offset of the data in the file.
    pub start: usize,
    pub len: usize,
}

/// A parsed GGUF file, memory-mapped.
pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: HashMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
    data: memmap2::Mmap,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

/// A GGUF error: the file, then what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {msg}")]
pub struct GgufError {
    pub path: String,
    pub msg: String,
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn left(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        if n > self.left() {
            return Err(format!(
                "truncated at byte {} reading {what}: need {n} bytes, {} left",
                self.pos,
                self.left()
            ));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn u32(&mut self, what: &str) -> Result<u32, String> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self, what: &str) -> Result<u64, String> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    /// A count that must fit in what is left of the file at `min_size` bytes per item.
    fn count(&mut self, min_size: usize, what: &str) -> Result<usize, String> {
        let at = self.pos;
        let n = self.u64(what)?;
        let fits = usize::try_from(n).ok().filter(|&n| n.saturating_mul(min_size) <= self.left());
        fits.ok_or_else(|| format!("{what} at byte {at} is {n}, more than the file can hold"))
    }

    fn string(&mut self, what: &str) -> Result<String, String> {
        let n = self.count(1, &format!("length of {what}"))?;
        let at = self.pos;
        let b = self.take(n, what)?;
        // Some real vocabularies hold invalid UTF-8 pieces; keep them, lossily, rather than fail.
        match std::str::from_utf8(b) {
            Ok(s) => Ok(s.to_string()),
            Err(_) if what.starts_with("element") => Ok(String::from_utf8_lossy(b).into_owned()),
            Err(e) => Err(format!("{what} at byte {at} is not UTF-8: {e}")),
        }
    }

    fn value(&mut self, ty: u32, what: &str, depth: usize) -> Result<Value, String> {
        let mut fixed = |n: usize| -> Result<&'a [u8], String> { self.take(n, what) };
        Ok(match ty {
            0 => Value::U8(fixed(1)?[0]),
            1 => Value::I8(fixed(1)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(fixed(2)?.try_into().map_err(|_| "u16")?)),
            3 => Value::I16(i16::from_le_bytes(fixed(2)?.try_into().map_err(|_| "i16")?)),
            4 => Value::U32(u32::from_le_bytes(fixed(4)?.try_into().map_err(|_| "u32")?)),
            5 => Value::I32(i32::from_le_bytes(fixed(4)?.try_into().map_err(|_| "i32")?)),
            6 => Value::F32(f32::from_le_bytes(fixed(4)?.try_into().map_err(|_| "f32")?)),
            7 => match fixed(1)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(format!("{what}: bool byte is {b}, not 0 or 1")),
            },
            8 => Value::Str(self.string(what)?),
            9 => {
                if depth > 0 {
                    return Err(format!("{what}: nested arrays are not supported"));
                }
                let ety = self.u32(&format!("element type of {what}"))?;
                let n = self.count(min_value_size(ety), &format!("length of {what}"))?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(ety, &format!("element of {what}"), depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64(what)?),
            11 => Value::I64(self.u64(what)? as i64),
            12 => Value::F64(f64::from_bits(self.u64(what)?)),
            t => return Err(format!("{what}: unknown value type {t}")),
        })
    }
}

fn min_value_size(ty: u32) -> usize {
    match ty {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8..=12 => 8, // a string or array is at least its 8-byte length
        _ => 1,
    }
}

fn dtype_from_u32(t: u32) -> Option<GgmlDType> {
    Some(match t {
        0 => GgmlDType::F32,
        1 => GgmlDType::F16,
        2 => GgmlDType::Q4_0,
        3 => GgmlDType::Q4_1,
        6 => GgmlDType::Q5_0,
        7 => GgmlDType::Q5_1,
        8 => GgmlDType::Q8_0,
        9 => GgmlDType::Q8_1,
        10 => GgmlDType::Q2K,
        11 => GgmlDType::Q3K,
        12 => GgmlDType::Q4K,
        13 => GgmlDType::Q5K,
        14 => GgmlDType::Q6K,
        15 => GgmlDType::Q8K,
        30 => GgmlDType::BF16,
        _ => return None,
    })
}

/// Parses a GGUF header and tensor table from bytes (the fuzz target's entry): the version,
/// the metadata count and the tensor count, or why the bytes are refused.
pub fn check_bytes(buf: &[u8]) -> Result<(u32, usize, usize), String> {
    parse(buf).map(|(v, m, t)| (v, m.len(), t.len()))
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self, GgufError> {
        let err = |msg: String| GgufError { path: path.display().to_string(), msg };
        let file = std::fs::File::open(path).map_err(|e| err(format!("cannot open: {e}")))?;
        // SAFETY: the map is read-only and we never hand out references that outlive `self`.
        // A file truncated underneath us would fault; that is the usual mmap caveat.
        let data = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| err(format!("cannot map: {e}")))?;
        let (version, metadata, tensors) = parse(&data).map_err(err)?;
        Ok(Self { path: path.to_path_buf(), version, metadata, tensors, data })
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// A tensor's bytes as stored.
    pub fn raw(&self, info: &TensorInfo) -> &[u8] {
        &self.data[info.start..info.start + info.len]
    }

    /// Dequantizes one tensor to f32 on `dev`.
    pub fn dequantize(&self, info: &TensorInfo, dev: &Device) -> Result<Tensor, GgufError> {
        let bytes = &self.data[info.start..info.start + info.len];
        let q = qtensor_from_ggml(info.dtype, bytes, info.shape.clone(), &Device::Cpu)
            .and_then(|q| q.dequantize(dev))
            .map_err(|e| GgufError {
                path: self.path.display().to_string(),
                msg: format!("tensor {}: {e}", info.name),
            })?;
        Ok(q)
    }
}

type Parsed = (u32, HashMap<String, Value>, Vec<TensorInfo>);

fn parse(buf: &[u8]) -> Result<Parsed, String> {
    let mut r = Reader { buf, pos: 0 };
    let magic = r.take(4, "magic").map_err(|_| "not a GGUF file: shorter than its magic".to_string())?;
    if magic != MAGIC {
        return Err(format!("not a GGUF file: bad magic {magic:02x?} (expected \"GGUF\")"));
    }
    let version = r.u32("version")?;
    if !(2..=3).contains(&version) {
        return Err(format!("GGUF version {version} is not supported (2 or 3)"));
    }
    // A tensor info is at least 8 (name len) + 4 (n_dims) + 4 (type) + 8 (offset) bytes,
    // a metadata pair at least 8 (key len) + 4 (type) + 1.
    let n_tensors = r.count(24, "tensor count")?;
    let n_kv = r.count(13, "metadata count")?;

    let mut metadata = HashMap::with_capacity(n_kv);
    for i in 0..n_kv {
        let key = r.string(&format!("metadata key #{i}"))?;
        let ty = r.u32(&format!("type of metadata {key:?}"))?;
        let v = r.value(ty, &format!("metadata {key:?}"), 0)?;
        // A repeated key would silently replace the first (a second block_count hides layers).
        if metadata.contains_key(&key) {
            return Err(format!("metadata {key:?} appears twice"));
        }
        metadata.insert(key, v);
    }

    let mut raw = Vec::with_capacity(n_tensors);
    for i in 0..n_tensors {
        let name = r.string(&format!("name of tensor #{i}"))?;
        let n_dims = r.u32(&format!("tensor {name}: dimension count"))?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(format!("tensor {name}: {n_dims} dimensions (1 to {MAX_DIMS} allowed)"));
        }
        let mut ne = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            ne.push(r.u64(&format!("tensor {name}: dimensions"))?);
        }
        let ty = r.u32(&format!("tensor {name}: type"))?;
        let dtype = dtype_from_u32(ty)
            .ok_or_else(|| format!("tensor {name}: unknown or unsupported ggml type {ty}"))?;
        let offset = r.u64(&format!("tensor {name}: offset"))?;
        raw.push((name, ne, dtype, offset));
    }

    let alignment = match metadata.get("general.alignment") {
        None => 32,
        Some(v) => match v.as_u64() {
            Some(a) if a > 0 && a.is_power_of_two() && a <= 1 << 20 => a as usize,
            _ => return Err(format!("general.alignment {v:?} is not a power of two")),
        },
    };
    let data_start = r.pos.div_ceil(alignment) * alignment;

    let mut tensors = Vec::with_capacity(raw.len());
    let mut seen = std::collections::HashSet::with_capacity(raw.len());
    for (name, ne, dtype, offset) in raw {
        if !seen.insert(name.clone()) {
            return Err(format!("tensor {name} appears twice"));
        }
        let elems = ne.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
        let elems = elems
            .and_then(|e| usize::try_from(e).ok())
            .ok_or_else(|| format!("tensor {name}: dimensions {ne:?} overflow"))?;
        let block = dtype.block_size();
        if !(ne[0] as usize).is_multiple_of(block) {
            return Err(format!(
                "tensor {name}: first dimension {} is not a multiple of the {dtype:?} block size {block}",
                ne[0]
            ));
        }
        let len = (elems / block)
            .checked_mul(dtype.type_size())
            .ok_or_else(|| format!("tensor {name}: size of {ne:?} {dtype:?} overflows"))?;
        let start = usize::try_from(offset)
            .ok()
            .and_then(|o| o.checked_add(data_start))
            .filter(|s| s.checked_add(len).is_some_and(|end| end <= buf.len()))
            .ok_or_else(|| {
                format!(
                    "tensor {name}: data at offset {offset} (+{len} bytes) runs past the end of the file ({} bytes)",
                    buf.len()
                )
            })?;
        if !(offset as usize).is_multiple_of(alignment) {
            return Err(format!("tensor {name}: offset {offset} is not aligned to {alignment}"));
        }
        let shape = ne.iter().rev().map(|&d| d as usize).collect();
        tensors.push(TensorInfo { name, dtype, shape, start, len });
    }
    Ok((version, metadata, tensors))
}
