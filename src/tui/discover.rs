//! Finding models on disk: the default model, the models folder, paths from the command line,
//! the Hugging Face cache and from-scratch configs. Runs off the UI thread (spawn_blocking).

use std::path::{Path, PathBuf};

use super::state::models::{Kind, ModelEntry, Status};
use crate::engine::config::{MethodKind, RunConfig};
use crate::load::{self, inspect, ModelSummary};

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
            let d = ModelSummary {
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
