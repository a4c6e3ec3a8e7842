//! `whet data CONFIG`: the training set as the engine will see it (the same preview the
//! workbench's Data view draws), and its stats; `--json` for scripts.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{bail, Result};
use serde_json::json;

use crate::data::config::DataFormat;
use crate::data::dataset;
use crate::data::preview::{self, Fate, Mark, Preview, Sample};
use crate::engine::config::{MethodKind, RunConfig};

#[derive(Debug, Clone, clap::Args)]
pub struct DataArgs {
    pub config: PathBuf,
    /// Show this sample (0-based); without it, the first one. With --json, only this one.
    #[arg(long)]
    pub sample: Option<usize>,
    /// One JSON object per sample (ids, pieces, text, a loss flag per token), then the stats.
    #[arg(long)]
    pub json: bool,
    /// Override a config value, as `whet train --set`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
}

/// The preview of a run config's training data, its first `keep` samples with their pieces.
/// A tokenizer it has to train (pretraining) is not saved.
pub fn preview_run(cfg: &RunConfig, keep: usize) -> Result<Preview> {
    let model = cfg.model.path.as_deref().filter(|_| cfg.method.kind != MethodKind::Pretrain);
    let text = dataset::text_side_for(model, &cfg.data, &cfg.tokenizer, &cfg.run.out_dir, false)?;
    preview::preview(&cfg.data, text.as_ref(), keep)
}

pub fn data(a: &DataArgs) -> Result<()> {
    let cfg = crate::train_cli::read_config(&a.config, &a.sets)?;
    let p = preview_run(&cfg, usize::MAX)?;
    if let Some(n) = a.sample.filter(|&n| n >= p.samples.len()) {
        bail!("--sample {n}: the data has {} samples (0..{})", p.samples.len(), p.samples.len());
    }
    match print(a, &cfg, &p) {
        // `whet data … | head`: the reader has what it wanted.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => Ok(r?),
    }
}

fn print(a: &DataArgs, cfg: &RunConfig, p: &Preview) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    if a.json {
        let picked: Vec<&Sample> = match a.sample {
            Some(n) => vec![&p.samples[n]],
            None => p.samples.iter().collect(),
        };
        for s in picked {
            writeln!(out, "{}", sample_json(s))?;
        }
        writeln!(out, "{}", json!({ "stats": p.stats }))?;
        return Ok(());
    }
    let color = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    write!(out, "{}", stats_text(&cfg.data.train.display().to_string(), p))?;
    let n = a.sample.unwrap_or(0);
    match p.samples.get(n) {
        Some(s) => write!(out, "\n{}", sample_text(n, s, color))?,
        None => writeln!(out, "\nno samples")?,
    }
    Ok(())
}

fn sample_json(s: &Sample) -> serde_json::Value {
    let text: String = s.pieces.iter().map(|p| p.text.as_str()).collect();
    json!({
        "source": s.source,
        "fate": s.fate,
        "window": s.window,
        "eval": s.eval,
        "ids": s.ids,
        "pieces": s.pieces.iter().map(|p| &p.text).collect::<Vec<_>>(),
        "special": s.pieces.iter().map(|p| p.special).collect::<Vec<_>>(),
        "text": text,
        "loss": s.labels,
    })
}

fn plural(n: usize, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

/// The stats as lines of text (the Data view shows the same lines).
pub fn stats_lines(p: &Preview) -> Vec<String> {
    let st = &p.stats;
    let items = match p.format {
        DataFormat::Tokens => String::new(),
        DataFormat::Text => format!("{} · ", plural(st.samples, "document")),
        _ => format!("{} · ", plural(st.samples, "sample")),
    };
    let mut v = vec![
        format!(
            "{items}{} of {} tokens ({} for eval) · {} tokens, {:.1}% carry loss · {} padding",
            plural(st.windows, "window"),
            st.seq_len,
            st.eval_windows,
            st.tokens,
            100.0 * st.label_share(),
            st.padding
        ),
        format!(
            "truncated {} · dropped: too long {}, no loss {} · invalid {}",
            st.truncated.n, st.too_long.n, st.empty.n, st.invalid.n
        ),
    ];
    for (what, c) in [
        ("truncated", &st.truncated),
        ("too long", &st.too_long),
        ("no loss", &st.empty),
        ("invalid", &st.invalid),
    ] {
        if let Some(f) = &c.first {
            v.push(format!("  first {what}: {f}"));
        }
    }
    if let Some(f) = &st.fatal {
        v.push(format!("a run stops here (set data.skip_invalid to skip such lines): {f}"));
    }
    if !st.lengths.is_empty() {
        let most = st.lengths.iter().map(|b| b.count).max().unwrap_or(0).max(1);
        v.push(format!("lengths in tokens (seq_len {}):", st.seq_len));
        for b in &st.lengths {
            let n = b.count;
            let range = match b.to {
                Some(to) => format!("{}–{to}", b.from),
                None => format!("> {}", b.from - 1),
            };
            let bar = "█".repeat((n * 30).div_ceil(most));
            v.push(format!("  {range:>11} {bar} {n}"));
        }
    }
    v
}

fn stats_text(file: &str, p: &Preview) -> String {
    let mut s = format!("{file} · {:?}\n", p.format).to_lowercase();
    for l in stats_lines(p) {
        s.push_str(&l);
        s.push('\n');
    }
    s
}

/// One line about a sample: where it came from and what became of it.
pub fn sample_header(n: usize, s: &Sample) -> String {
    let fate = match &s.fate {
        Fate::Kept => "kept".to_string(),
        Fate::Truncated => format!("truncated at {}", s.cuts.last().copied().unwrap_or(0)),
        Fate::TooLong => "dropped: longer than seq_len".to_string(),
        Fate::Empty => "dropped: no token carries loss".to_string(),
        Fate::Invalid(why) => format!("invalid: {why}"),
    };
    let at = match s.window {
        Some((w, o)) if s.eval => format!(" · eval window {w}+{o}"),
        Some((w, o)) => format!(" · window {w}+{o}"),
        None => String::new(),
    };
    // The labels inside the window: a truncated sample's tail carries none.
    let used = if s.fate == Fate::Truncated { s.cuts.last().copied().unwrap_or(0) } else { s.ids.len() };
    let loss = s.labels.iter().take(used).filter(|&&l| l).count();
    format!("sample {n} ({}) · {fate}{at} · {} tokens, {loss} carry loss", s.source, s.ids.len())
}

/// A sample as text: with colour, loss tokens green and the rest dim, neighbours in alternate
/// shades; without, `plain_lines`.
fn sample_text(n: usize, s: &Sample, color: bool) -> String {
    let mut out = sample_header(n, s) + "\n";
    if !color {
        out.push_str("«…»: carries loss · │ between tokens · ✂ window cut · ~…~ not trained on\n");
        for l in plain_lines(s) {
            out.push_str(&l);
            out.push('\n');
        }
        return out;
    }
    out.push_str("green: carries loss · dim: context · struck: not trained on · ✂ window cut\n");
    for line in s.lines() {
        for g in line {
            if g.cut {
                out.push('✂');
            }
            let code = match (g.mark, g.odd) {
                (Mark::Loss, false) => "32",
                (Mark::Loss, true) => "92",
                (Mark::Context, false) => "2",
                (Mark::Context, true) => "37",
                (Mark::Unused, _) => "9;2",
            };
            let bold = if g.special { ";1" } else { "" };
            out.push_str(&format!("\x1b[{code}{bold}m{}\x1b[0m", g.text));
        }
        out.push('\n');
    }
    out
}

/// A sample without colour: `│` between tokens, `«…»` around those that carry loss, `~…~`
/// around those not trained on, `✂` at a window cut. The Data view shows the same with
/// NO_COLOR.
pub fn plain_lines(s: &Sample) -> Vec<String> {
    let open = |m: Mark| match m {
        Mark::Loss => "«",
        Mark::Unused => "~",
        Mark::Context => "",
    };
    let close = |m: Mark| match m {
        Mark::Loss => "»",
        Mark::Unused => "~",
        Mark::Context => "",
    };
    // Each line opens and closes its own marks, so a line reads alone.
    let mut out = vec![];
    for line in s.lines() {
        let mut l = String::new();
        let mut prev = Mark::Context;
        for (i, g) in line.iter().enumerate() {
            if g.mark != prev {
                l.push_str(close(prev));
            } else if i > 0 {
                l.push('│');
            }
            if g.cut {
                l.push('✂');
            }
            if g.mark != prev {
                l.push_str(open(g.mark));
            }
            prev = g.mark;
            l.push_str(&g.text);
        }
        l.push_str(close(prev));
        out.push(l);
    }
    out
}
