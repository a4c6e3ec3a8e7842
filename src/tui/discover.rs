//! Finding models on disk: the default model, the models folder, paths from the command line,
//! the Hugging Face cache and from-scratch configs. Runs off the UI thread (spawn_blocking).

use std::path::{Path, PathBuf};

use super::state::models::{Details, Kind, ModelEntry, Status};
use crate::engine::config::{MethodKind, RunConfig};
use crate::load::{self, gguf_file::GgufFile, hf};
use crate::model::Config;

/// The hub cache: `HF_HUB_CACHE`, then `HF_HOME/hub`, then `XDG_CACHE_HOME/huggingface/hub`,
/// then `~/.cache/huggingface/hub`.
pub fn hf_cache_dir(env: impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    if let Some(p) = env("HF_HUB_CACHE") {
        return Some(PathBuf::from(p));
    }
    if let Some(p) = env("HF_HOME") {
        return Some(PathBuf::from(p).join("hub"));
    }
    if let Some(p) = env("XDG_CACHE_HOME") {
        return Some(PathBuf::from(p).join("huggingface/hub"));
    }
    env("HOME").map(|h| PathBuf::from(h).join(".cache/huggingface/hub"))
}

/// Everything listable, in display order.
pub fn scan(
    models_dir: &Path,
    extra: &[PathBuf],
    configs_dir: &Path,
    cache: Option<&Path>,
) -> Vec<ModelEntry> {
    let mut out = vec![];
    let mut add = |path: PathBuf, kind: Kind| {
        if out.iter().any(|e: &ModelEntry| e.path == path) {
            return;
        }
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let status = match inspect(&path) {
            Ok(d) => Status::Ok(d),
            Err(e) => Status::Broken(format!("{e:#}")),
        };
        out.push(ModelEntry { name, path, kind, status });
    };
    for p in extra {
        add(p.clone(), if load::is_gguf(p) { Kind::Gguf } else { Kind::HfDir });
    }
    let mut local: Vec<PathBuf> = std::fs::read_dir(models_dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    local.sort();
    for p in local {
        if load::is_gguf(&p) {
            add(p, Kind::Gguf);
        } else if p.join("config.json").exists() {
            add(p, Kind::HfDir);
        }
    }
    if let Some(cache) = cache {
        out.extend(scan_cache(cache));
    }
    out.extend(scan_scratch(configs_dir));
    out
}

/// `models--ORG--NAME/refs/main` → `snapshots/<commit>/`; partial entries are marked.
pub fn scan_cache(cache: &Path) -> Vec<ModelEntry> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(cache)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    dirs.sort();
    dirs.into_iter()
        .filter_map(|d| {
            let repo = d.file_name()?.to_str()?.strip_prefix("models--")?.replacen("--", "/", 1);
            let entry =
                |path: PathBuf, status| ModelEntry { name: repo.clone(), path, kind: Kind::HfCache, status };
            let refs = d.join("refs/main");
            let commit = match std::fs::read_to_string(&refs) {
                Ok(c) => c.trim().to_string(),
                Err(_) => {
                    return Some(entry(d.clone(), Status::Broken("no refs/main: partial download".into())))
                }
            };
            let snap = d.join("snapshots").join(&commit);
            if !snap.join("config.json").exists() {
                return Some(entry(
                    snap,
                    Status::Broken(format!("snapshot {commit} lacks config.json: partial download")),
                ));
            }
            let status = match inspect(&snap) {
                Ok(det) => Status::Ok(det),
                Err(e) => Status::Broken(format!("{e:#}")),
            };
            Some(entry(snap, status))
        })
        .collect()
}

fn scan_scratch(configs: &Path) -> Vec<ModelEntry> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(configs)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.sort();
    files
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .filter_map(|p| {
            let cfg = RunConfig::from_toml(&std::fs::read_to_string(&p).ok()?).ok()?;
            let arch = cfg.model.arch.filter(|_| cfg.method.kind == MethodKind::Pretrain)?;
            let d = Details {
                arch: "llama (from scratch)".into(),
                params: 0,
                layers: arch.layers,
                heads: arch.heads,
                kv_heads: arch.kv_heads,
                vocab: arch.vocab.unwrap_or(cfg.tokenizer.vocab_size),
                context: arch.max_seq,
                dtype: "f32".into(),
                size_bytes: 0,
                chat_template: false,
            };
            let name = format!("{} (scratch)", p.file_stem()?.to_string_lossy());
            Some(ModelEntry { name, path: p, kind: Kind::Scratch, status: Status::Ok(d) })
        })
        .collect()
}

/// Reads headers only (no weights): architecture, sizes, dtype, chat template.
pub fn inspect(path: &Path) -> anyhow::Result<Details> {
    if load::is_gguf(path) {
        let g = GgufFile::open(path)?;
        let cfg = load::gguf::config(&g)?;
        let params: u64 = g.tensors.iter().map(|t| t.shape.iter().product::<usize>() as u64).sum();
        let mut kinds: Vec<String> = g.tensors.iter().map(|t| format!("{:?}", t.dtype)).collect();
        kinds.sort();
        kinds.dedup();
        let arch = g.get("general.architecture").and_then(|v| v.as_str()).unwrap_or("?").to_string();
        let size = std::fs::metadata(path)?.len();
        Ok(details(arch, params, &cfg, kinds.join("+"), size, g.get("tokenizer.chat_template").is_some()))
    } else if path.is_dir() {
        let hc = hf::config(path)?;
        let cfg =
            hc.to_config().map_err(|e| anyhow::anyhow!("{}: {e}", path.join("config.json").display()))?;
        let files = hf::weight_files(path)?;
        let mut params = 0u64;
        let mut size = 0u64;
        for f in &files {
            let meta = std::fs::metadata(f).map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?;
            size += meta.len();
            params += safetensors_params(f)?;
        }
        let chat = hf::tokenizer_side(path)?.chat_template.is_some();
        Ok(details(hc.arch(), params, &cfg, hc.dtype.clone().unwrap_or_else(|| "?".into()), size, chat))
    } else {
        anyhow::bail!("{}: not a model", path.display())
    }
}

fn details(
    arch: String,
    params: u64,
    cfg: &Config,
    dtype: String,
    size_bytes: u64,
    chat_template: bool,
) -> Details {
    Details {
        arch,
        params,
        layers: cfg.num_hidden_layers,
        heads: cfg.num_attention_heads,
        kv_heads: cfg.num_key_value_heads,
        vocab: cfg.vocab_size,
        context: cfg.max_position_embeddings,
        dtype,
        size_bytes,
        chat_template,
    }
}

/// Parameter count from a safetensors header, reading only the header.
fn safetensors_params(path: &Path) -> anyhow::Result<u64> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let n = u64::from_le_bytes(len);
    if n > 100 << 20 || n > f.metadata()?.len() {
        anyhow::bail!("{}: safetensors header length {n} is out of range", path.display());
    }
    let mut buf = vec![0u8; n as usize];
    f.read_exact(&mut buf).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let v: serde_json::Value =
        serde_json::from_slice(&buf).map_err(|e| anyhow::anyhow!("{}: bad header: {e}", path.display()))?;
    let obj = v.as_object().ok_or_else(|| anyhow::anyhow!("{}: header is not an object", path.display()))?;
    Ok(obj
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .filter_map(|(_, t)| {
            t.get("shape")?.as_array().map(|s| s.iter().filter_map(|d| d.as_u64()).product::<u64>())
        })
        .sum())
}
