//! Pre-tokenized files: flat little-endian u16 or u32 ids, or llm.c's `.bin` (a 256 × i32
//! header: magic 20240520, version 1 = u16 tokens / 2 = u32 tokens, token count).

use std::path::Path;

use anyhow::{bail, Context, Result};

use super::config::TokenDtype;

const LLMC_MAGIC: i32 = 20240520;
const LLMC_HEADER: usize = 256 * 4;

pub fn read_tokens(path: &Path, dtype: TokenDtype) -> Result<Vec<u32>> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let i32_at =
        |i: usize| i32::from_le_bytes([bytes[4 * i], bytes[4 * i + 1], bytes[4 * i + 2], bytes[4 * i + 3]]);
    let (body, width) = if bytes.len() >= LLMC_HEADER && i32_at(0) == LLMC_MAGIC {
        let width = match i32_at(1) {
            1 => 2,
            2 => 4,
            v => bail!("{}: llm.c header version {v} is not 1 (u16) or 2 (u32)", path.display()),
        };
        let n = usize::try_from(i32_at(2)).unwrap_or(usize::MAX);
        let body = &bytes[LLMC_HEADER..];
        if n.checked_mul(width).is_none_or(|need| need > body.len()) {
            bail!(
                "{}: llm.c header says {n} tokens but the file holds {}",
                path.display(),
                body.len() / width
            );
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

#[cfg(test)]
mod tests {
    use super::*;

    fn write(bytes: &[u8]) -> (tempfile::TempDir, std::path::PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("t.bin");
        std::fs::write(&p, bytes).unwrap();
        (d, p)
    }

    fn llmc(version: i32, n: i32, body: &[u8]) -> Vec<u8> {
        let mut h = vec![0i32; 256];
        (h[0], h[1], h[2]) = (LLMC_MAGIC, version, n);
        let mut out: Vec<u8> = h.iter().flat_map(|v| v.to_le_bytes()).collect();
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn flat_u16_and_u32() {
        let (_d, p) = write(&[1, 0, 0, 1, 255, 255]);
        assert_eq!(read_tokens(&p, TokenDtype::U16).unwrap(), vec![1, 256, 65535]);
        let (_d, p) = write(&[1, 0, 0, 0, 0, 0, 1, 0]);
        assert_eq!(read_tokens(&p, TokenDtype::U32).unwrap(), vec![1, 65536]);
        let (_d, p) = write(&[1, 0, 2]);
        assert!(read_tokens(&p, TokenDtype::U16).unwrap_err().to_string().contains("not a whole number"));
    }

    #[test]
    fn llmc_header_versions_and_counts() {
        let (_d, p) = write(&llmc(1, 2, &[7, 0, 8, 0, 9, 0]));
        assert_eq!(read_tokens(&p, TokenDtype::U32).unwrap(), vec![7, 8], "the header's count wins");
        let (_d, p) = write(&llmc(2, 1, &[5, 0, 1, 0]));
        assert_eq!(read_tokens(&p, TokenDtype::U16).unwrap(), vec![65541]);
        let (_d, p) = write(&llmc(1, 9, &[1, 0]));
        assert!(read_tokens(&p, TokenDtype::U16).unwrap_err().to_string().contains("header says 9 tokens"));
        let (_d, p) = write(&llmc(3, 1, &[1, 0]));
        assert!(read_tokens(&p, TokenDtype::U16).unwrap_err().to_string().contains("version 3"));
    }
}
