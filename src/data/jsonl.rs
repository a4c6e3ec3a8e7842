//! Instruction data in JSONL (`alpaca`, `chat`, `prompt_completion`), rendered through the
//! model's chat template. By default only the assistant (completion) tokens are labels.

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use tokenizers::Tokenizer;

use super::config::{DataConfig, DataFormat, TooLong};
use super::preview::{Fate, Sample};
use super::{DataReport, Window};
use crate::chat::{self, Message};

/// What rendering needs from the model.
pub struct Templating<'a> {
    pub tokenizer: &'a Tokenizer,
    pub chat_template: Option<&'a str>,
    /// Where the template came from, named in its errors.
    pub template_source: &'a str,
    pub bos_token: &'a str,
    pub eos_token: &'a str,
    pub pad_id: u32,
}

/// The roles chat templates know (HF's, plus `tool` and `ipython` for tool calls).
pub const ROLES: [&str; 5] = ["system", "user", "assistant", "tool", "ipython"];

/// Reads one JSONL line into a conversation.
pub fn messages(v: &Value, format: DataFormat) -> Result<Vec<Message>, String> {
    let s = |k: &str| -> Result<String, String> {
        v.get(k)
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| format!("missing string field \"{k}\""))
    };
    match format {
        DataFormat::Alpaca => {
            let input = v.get("input").and_then(Value::as_str).unwrap_or("");
            let user = if input.is_empty() {
                s("instruction")?
            } else {
                format!("{}\n\n{input}", s("instruction")?)
            };
            Ok(vec![Message::user(&user), Message { role: "assistant".into(), content: s("output")? }])
        }
        DataFormat::PromptCompletion => Ok(vec![
            Message::user(&s("prompt")?),
            Message { role: "assistant".into(), content: s("completion")? },
        ]),
        DataFormat::Chat => {
            let list =
                v.get("messages").and_then(Value::as_array).ok_or("missing array field \"messages\"")?;
            list.iter()
                .enumerate()
                .map(|(i, m)| {
                    let f = |k: &str| m.get(k).and_then(Value::as_str).map(str::to_string);
                    match (f("role"), f("content")) {
                        // A typo'd role ("asistant") would be trained as prompt, silently.
                        (Some(role), Some(_)) if !ROLES.contains(&role.as_str()) => Err(format!(
                            "messages[{i}]: unknown role {role:?} (expected one of {})",
                            ROLES.join(", ")
                        )),
                        (Some(role), Some(content)) => Ok(Message { role, content }),
                        _ => Err(format!("messages[{i}] needs string \"role\" and \"content\"")),
                    }
                })
                .collect()
        }
        _ => Err("not a JSONL format".into()),
    }
}

/// JSONL lines read one at a time, each at most `max` bytes: a line is `Ok(text)`, or
/// `Err(why)` when it is too long or not UTF-8 (the caller skips it or stops, naming the line).
struct Lines<R> {
    r: R,
    max: usize,
    buf: Vec<u8>,
}

impl<R: std::io::BufRead> Lines<R> {
    fn next_line(&mut self) -> std::io::Result<Option<Result<&str, String>>> {
        use std::io::{BufRead, Read};
        self.buf.clear();
        let n = (&mut self.r).take(self.max as u64 + 1).read_until(b'\n', &mut self.buf)?;
        if n == 0 {
            return Ok(None);
        }
        if self.buf.last() == Some(&b'\n') {
            self.buf.pop();
        } else if self.buf.len() > self.max {
            // Skip to the end of this line without keeping it.
            let mut rest = Vec::new();
            loop {
                rest.clear();
                let m = (&mut self.r).take(1 << 20).read_until(b'\n', &mut rest)?;
                if m == 0 || rest.last() == Some(&b'\n') {
                    break;
                }
            }
            let max = self.max;
            return Ok(Some(Err(format!("line longer than {max} bytes (data.max_line_bytes)"))));
        }
        Ok(Some(std::str::from_utf8(&self.buf).map_err(|e| format!("not UTF-8: {e}"))))
    }
}

/// Renders a conversation and marks the characters of each assistant turn.
fn render(t: &Templating, msgs: &[Message]) -> Result<(String, Vec<(usize, usize)>)> {
    let tmpl = t
        .chat_template
        .ok_or_else(|| anyhow!("this model has no chat template, which JSONL formats need"))?;
    let render = |msgs: &[Message], gen: bool| {
        chat::render(tmpl, msgs, gen, t.bos_token, t.eos_token).with_context(|| t.template_source.to_string())
    };
    let full = render(msgs, false)?;
    let mut spans = Vec::new();
    for (i, m) in msgs.iter().enumerate().filter(|(_, m)| m.role == "assistant") {
        let before = render(&msgs[..i], true)?;
        let upto = render(&msgs[..=i], false)?;
        if !full.starts_with(&upto) || !upto.starts_with(&before) {
            bail!("the chat template does not render turn {i} ({}) as a prefix of the conversation", m.role);
        }
        spans.push((before.len(), upto.len()));
    }
    Ok((full, spans))
}

/// One sample turned into tokens and labels, or the reason it cannot be.
fn encode(t: &Templating, cfg: &DataConfig, msgs: &[Message]) -> Result<(Vec<u32>, Vec<f32>)> {
    let (rendered, spans) = render(t, msgs)?;
    let enc = t.tokenizer.encode(rendered.as_str(), false).map_err(|e| anyhow!("{e}"))?;
    let mask = enc
        .get_offsets()
        .iter()
        .map(
            |&(s, _)| {
                if cfg.train_on_prompt || spans.iter().any(|&(a, b)| s >= a && s < b) {
                    1.0
                } else {
                    0.0
                }
            },
        )
        .collect();
    Ok((enc.get_ids().to_vec(), mask))
}

/// Loads a JSONL file into windows of `cfg.seq_len`. With `trace`, each sample is also told
/// where it went (`preview::Sample`), and a fault that would stop a run is recorded on its
/// sample instead, so the preview shows the whole file.
pub fn load(
    path: &Path,
    cfg: &DataConfig,
    t: &Templating,
    report: &mut DataReport,
    mut trace: Option<&mut Vec<Sample>>,
) -> Result<Vec<Window>> {
    let file = std::fs::File::open(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let mut lines = Lines { r: std::io::BufReader::new(file), max: cfg.max_line_bytes, buf: Vec::new() };
    let (mut stream_ids, mut stream_mask, mut out) = (Vec::new(), Vec::new(), Vec::new());
    let mut lineno = 0;
    while let Some(line) = lines.next_line().with_context(|| format!("{}:{}", path.display(), lineno + 1))? {
        lineno += 1;
        let source = format!("{}:{lineno}", path.display());
        let parsed = line.and_then(|line| {
            if line.trim().is_empty() {
                return Ok(None);
            }
            let v = serde_json::from_str::<Value>(line).map_err(|e| e.to_string())?;
            messages(&v, cfg.format).map(Some)
        });
        // The faults a run stops on: kept on the sample when tracing.
        let fatal = |trace: &mut Option<&mut Vec<Sample>>, e: anyhow::Error| match trace {
            Some(tr) => {
                let why = format!("{e:#}").replace('\n', " ");
                tr.push(Sample::failed(source.clone(), Fate::Invalid(why), true));
                Ok(())
            }
            None => Err(anyhow!("{source}: {e:#}")),
        };
        let msgs = match parsed {
            Ok(None) => continue,
            Ok(Some(m)) => m,
            Err(e) if cfg.skip_invalid => {
                tracing::warn!("{source}: skipped: {e}");
                report.skipped_invalid += 1;
                if let Some(tr) = trace.as_deref_mut() {
                    tr.push(Sample::failed(source.clone(), Fate::Invalid(e), false));
                }
                continue;
            }
            Err(e) => {
                fatal(&mut trace, anyhow!(e))?;
                continue;
            }
        };
        let (mut ids, mut mask) = match encode(t, cfg, &msgs) {
            Ok(x) => x,
            Err(e) => {
                fatal(&mut trace, e)?;
                continue;
            }
        };
        report.samples += 1;
        // The sample as encoded, before truncation and padding; recorded once, by its fate.
        let mut whole = trace.is_some().then(|| (ids.clone(), mask.clone()));
        let mut record = |fate: Fate, placed: Option<(usize, usize)>, cuts: Vec<usize>| {
            if let (Some(tr), Some((ids, mask))) = (trace.as_deref_mut(), whole.take()) {
                tr.push(Sample::traced(source.clone(), ids, mask, fate, placed, cuts));
            }
        };
        if ids.is_empty() || mask.iter().skip(1).all(|&m| m == 0.0) {
            report.dropped_empty += 1;
            record(Fate::Empty, None, vec![]);
            continue;
        }
        let mut fate = Fate::Kept;
        if ids.len() > cfg.seq_len {
            match cfg.too_long {
                TooLong::Drop => {
                    report.dropped_too_long += 1;
                    record(Fate::TooLong, None, vec![cfg.seq_len]);
                    continue;
                }
                TooLong::Error => {
                    let why = format!(
                        "sample has {} tokens, more than seq_len {} (too_long = \"error\")",
                        ids.len(),
                        cfg.seq_len
                    );
                    fatal(&mut trace, anyhow!(why))?;
                    continue;
                }
                TooLong::Truncate => {
                    ids.truncate(cfg.seq_len);
                    mask.truncate(cfg.seq_len);
                    report.truncated += 1;
                    if mask.iter().skip(1).all(|&m| m == 0.0) {
                        report.dropped_empty += 1;
                        record(Fate::Empty, None, vec![cfg.seq_len]);
                        continue;
                    }
                    fate = Fate::Truncated;
                }
            }
        }
        let cut = if fate == Fate::Truncated { vec![cfg.seq_len] } else { vec![] };
        if cfg.packing {
            // Where the stream's window edges fall inside this sample.
            let at = stream_ids.len();
            let mut cuts: Vec<usize> = (1..ids.len()).filter(|k| (at + k) % cfg.seq_len == 0).collect();
            cuts.extend(cut);
            record(fate, Some((at / cfg.seq_len, at % cfg.seq_len)), cuts);
            stream_ids.extend_from_slice(&ids);
            stream_mask.extend_from_slice(&mask);
        } else {
            record(fate, Some((out.len(), 0)), cut);
            let pad = cfg.seq_len - ids.len();
            ids.extend(std::iter::repeat_n(t.pad_id, pad));
            mask.extend(std::iter::repeat_n(0.0, pad));
            out.push(Window { ids, mask });
        }
    }
    if cfg.packing {
        // The tail shorter than one window is padded rather than lost.
        let rem = stream_ids.len() % cfg.seq_len;
        if rem != 0 {
            let pad = cfg.seq_len - rem;
            stream_ids.extend(std::iter::repeat_n(t.pad_id, pad));
            stream_mask.extend(std::iter::repeat_n(0.0, pad));
        }
        out = super::windows(&stream_ids, &stream_mask, cfg.seq_len);
    }
    report.windows += out.len();
    Ok(out)
}
