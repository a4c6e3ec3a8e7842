//! Pre-tokenized files: flat little-endian u16 or u32 ids, or llm.c's `.bin` (a 256 × i32
//! header: magic 20240520, version 1 = u16 tokens / 2 = u32 tokens, token count).

use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::engine::config::TokenDtype;

const LLMC_MAGIC: i32 = 20240520;
const LLMC_HEADER: usize = 256 * 4;

pub fn read_tokens(path: &Path, dtype: TokenDtype) -> Result<Vec<u32>> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let i32_at = |i: usize| i32::from_le_bytes([bytes[4 * i], bytes[4 * i + 1], bytes[4 * i + 2], bytes[4 * i + 3]]);
    let (body, width) = if bytes.len() >= LLMC_HEADER && i32_at(0) == LLMC_MAGIC {
        let width = match i32_at(1) {
            1 => 2,
            2 => 4,
            v => bail!("{}: llm.c header version {v} is not 1 (u16) or 2 (u32)", path.display()),
        };
        let n = usize::try_from(i32_at(2)).unwrap_or(usize::MAX);
        let body = &bytes[LLMC_HEADER..];
        if n.checked_mul(width).is_none_or(|need| need > body.len()) {
            bail!("{}: llm.c header says {n} tokens but the file holds {}", path.display(), body.len() / width);
        }
        (&body[..n * width], width)
    } else {
        (&bytes[..], if dtype == TokenDtype::U32 { 4 } else { 2 })
    };
    if body.len() % width != 0 {
        bail!("{}: {} bytes is not a whole number of {width}-byte tokens", path.display(), body.len());
    }
    Ok(match width {
        2 => body.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]]) as u32).collect(),
        _ => body.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
    })
}
