//! Turning `[data]` into train and eval windows, and training a tokenizer for pretraining.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::{decoders, pre_tokenizers, AddedToken, Tokenizer, TokenizerImpl};

use super::config::{DataConfig, DataFormat, TokenizerConfig};
use super::preview::Sample;
use super::{jsonl, tokens, windows, DataReport, Window};
use crate::load::TextSide;

/// The files a `train`/`eval` path names: the file, or every file in the directory (sorted).
fn files(path: &Path) -> Result<Vec<PathBuf>> {
    if path.is_dir() {
        let mut v: Vec<PathBuf> = std::fs::read_dir(path)
            .with_context(|| format!("{}: cannot list", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect();
        v.sort();
        if v.is_empty() {
            bail!("{}: the directory holds no files", path.display());
        }
        Ok(v)
    } else if path.is_file() {
        Ok(vec![path.to_path_buf()])
    } else if path.exists() {
        // /dev/zero, a FIFO, a socket: reading one never ends or never starts.
        bail!(
            "data file {}: not a regular file (a device, pipe or socket); give a file or a directory",
            path.display()
        )
    } else {
        bail!("data file {}: no such file or directory", path.display())
    }
}

/// Windows from one `train` or `eval` path.
pub fn load(
    path: &Path,
    cfg: &DataConfig,
    text: Option<&TextSide>,
    report: &mut DataReport,
) -> Result<Vec<Window>> {
    load_traced(path, cfg, text, report, None)
}

/// `load`, telling each JSONL sample where it went (the data preview).
pub fn load_traced(
    path: &Path,
    cfg: &DataConfig,
    text: Option<&TextSide>,
    report: &mut DataReport,
    mut trace: Option<&mut Vec<Sample>>,
) -> Result<Vec<Window>> {
    if cfg.seq_len < 2 {
        bail!("data.seq_len must be at least 2, got {}", cfg.seq_len);
    }
    let need_text = || text.ok_or_else(|| anyhow!("data.format {:?} needs a tokenizer", cfg.format));
    let out = match cfg.format {
        DataFormat::Tokens => {
            let mut ids = Vec::new();
            for f in files(path)? {
                ids.extend(tokens::read_tokens(&f, cfg.token_dtype)?);
            }
            windows(&ids, &vec![1.0; ids.len()], cfg.seq_len)
        }
        DataFormat::Text => {
            let t = need_text()?;
            let eos = t.eos_ids.first().copied();
            let mut ids = Vec::new();
            for f in files(path)? {
                let s =
                    std::fs::read_to_string(&f).with_context(|| format!("{}: cannot read", f.display()))?;
                let enc =
                    t.tokenizer.encode(s.as_str(), false).map_err(|e| anyhow!("{}: {e}", f.display()))?;
                ids.extend_from_slice(enc.get_ids());
                ids.extend(eos); // documents are joined with EOS
                report.samples += 1;
            }
            windows(&ids, &vec![1.0; ids.len()], cfg.seq_len)
        }
        DataFormat::Alpaca | DataFormat::Chat | DataFormat::PromptCompletion => {
            let t = need_text()?;
            let templating = jsonl::Templating {
                tokenizer: &t.tokenizer,
                chat_template: t.chat_template.as_deref(),
                template_source: &t.chat_template_source,
                bos_token: t.bos_token.as_deref().unwrap_or(""),
                eos_token: t.eos_token.as_deref().unwrap_or(""),
                pad_id: t.eos_ids.first().copied().unwrap_or(0),
            };
            let mut all: Vec<Window> = Vec::new();
            for f in files(path)? {
                let (base, from) = (all.len(), trace.as_ref().map_or(0, |t| t.len()));
                all.extend(jsonl::load(&f, cfg, &templating, report, trace.as_deref_mut())?);
                // Each file numbers its windows from 0; the run concatenates them.
                for s in trace.as_deref_mut().map(|t| &mut t[from..]).unwrap_or_default() {
                    if let Some((w, _)) = &mut s.window {
                        *w += base;
                    }
                }
            }
            return Ok(all);
        }
    };
    report.windows += out.len();
    Ok(out)
}

/// Trains a byte-level BPE tokenizer on the training text (pretraining without a tokenizer).
pub fn train_tokenizer(train: &Path, cfg: &TokenizerConfig) -> Result<Tokenizer> {
    let specials: Vec<AddedToken> =
        cfg.special_tokens.iter().map(|s| AddedToken::from(s.clone(), true)).collect();
    let mut trainer = BpeTrainerBuilder::new()
        .vocab_size(cfg.vocab_size)
        .min_frequency(2)
        .special_tokens(specials)
        .initial_alphabet(pre_tokenizers::byte_level::ByteLevel::alphabet().into_iter().collect())
        .show_progress(false)
        .build();
    let mut tok: TokenizerImpl<
        BPE,
        tokenizers::NormalizerWrapper,
        pre_tokenizers::byte_level::ByteLevel,
        tokenizers::PostProcessorWrapper,
        decoders::byte_level::ByteLevel,
    > = TokenizerImpl::new(BPE::default());
    tok.with_pre_tokenizer(Some(pre_tokenizers::byte_level::ByteLevel::new(false, true, true)));
    tok.with_decoder(Some(decoders::byte_level::ByteLevel::default()));
    let paths: Vec<String> = files(train)?.iter().map(|p| p.display().to_string()).collect();
    tok.train_from_files(&mut trainer, paths).map_err(|e| anyhow!("training the tokenizer: {e}"))?;
    let json = tok.to_string(false).map_err(|e| anyhow!("tokenizer: {e}"))?;
    Tokenizer::from_bytes(json.as_bytes()).map_err(|e| anyhow!("tokenizer: {e}"))
}

/// The text side of a trained or given tokenizer for pretraining: EOS is the first special.
pub fn text_side(tokenizer: Tokenizer, cfg: &TokenizerConfig) -> TextSide {
    let eos_token = cfg.special_tokens.first().cloned();
    let eos_ids = eos_token.as_deref().and_then(|t| tokenizer.token_to_id(t)).into_iter().collect();
    TextSide {
        tokenizer,
        chat_template: None,
        chat_template_source: String::new(),
        bos_token: None,
        eos_token,
        eos_ids,
    }
}

/// The text side of a run: the model's own (fine-tuning, `model` is its path), a given
/// `tokenizer.json`, the one trained earlier into `run_dir` (a resumed pretraining run), or one
/// trained now on the training text and saved there. Pre-tokenized data needs none.
pub fn run_text_side(
    model: Option<&Path>,
    data: &DataConfig,
    cfg: &TokenizerConfig,
    run_dir: &Path,
) -> Result<Option<TextSide>> {
    text_side_for(model, data, cfg, run_dir, true)
}

/// `run_text_side`; with `save` false a tokenizer trained now is not written (the data
/// preview reads a run's data without touching its directory).
pub fn text_side_for(
    model: Option<&Path>,
    data: &DataConfig,
    cfg: &TokenizerConfig,
    run_dir: &Path,
    save: bool,
) -> Result<Option<TextSide>> {
    if let Some(p) = model {
        return Ok(Some(crate::load::load_text(p)?));
    }
    let saved = run_dir.join("tokenizer.json");
    let from_file = |p: &Path| Tokenizer::from_file(p).map_err(|e| anyhow!("{}: {e}", p.display()));
    let tok = match (&cfg.path, saved.exists()) {
        (Some(p), _) => from_file(p)?,
        (None, true) => from_file(&saved)?,
        (None, false) if data.format == DataFormat::Tokens => return Ok(None),
        (None, false) => {
            let tok = train_tokenizer(&data.train, cfg)?;
            if save {
                tok.save(&saved, false).map_err(|e| anyhow!("{}: {e}", saved.display()))?;
            }
            tok
        }
    };
    Ok(Some(text_side(tok, cfg)))
}

/// Train and eval windows: `eval` from its own path, or the last `eval_fraction` of train.
pub fn splits(cfg: &DataConfig, text: Option<&TextSide>) -> Result<(Vec<Window>, Vec<Window>, DataReport)> {
    let mut report = DataReport::default();
    let mut train = load(&cfg.train, cfg, text, &mut report)?;
    let eval = match &cfg.eval {
        Some(p) => load(p, cfg, text, &mut report)?,
        None => train.split_off(train.len() - eval_count(train.len(), cfg.eval_fraction)),
    };
    Ok((train, eval, report))
}

/// How many of `n` train windows `eval_fraction` takes for eval (from the end; at least one
/// window stays for training).
pub fn eval_count(n: usize, eval_fraction: f64) -> usize {
    if eval_fraction <= 0.0 {
        return 0;
    }
    (((n as f64) * eval_fraction).ceil() as usize).min(n.saturating_sub(1))
}
