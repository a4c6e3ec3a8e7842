//! `whet train CONFIG.toml [--set key=value …] [--resume RUN_DIR]`: the engine, headless.
//! A progress bar on a TTY, plain lines otherwise. The first Ctrl-C / SIGTERM finishes the
//! current step, saves and exits 0; a second exits at once.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};

use crate::engine::config::RunConfig;
use crate::engine::{self, checkpoint, Command, Event};

/// Reads the config (with `--set` overrides); errors name the file.
pub fn read_config(path: &Path, sets: &[String]) -> Result<RunConfig> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
    RunConfig::with_overrides(&text, sets).map_err(|e| anyhow!("{}: {e}", path.display()))
}

/// The run directory: `--resume DIR`, else `[run] out_dir`.
pub fn run_dir(cfg: &RunConfig, resume: Option<&Path>) -> PathBuf {
    resume.map(Path::to_path_buf).unwrap_or_else(|| cfg.run.out_dir.clone())
}

#[derive(Debug, Clone, clap::Args)]
pub struct TrainArgs {
    pub config: PathBuf,
    /// Override a config key, e.g. `--set optim.max_steps=100`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// Continue the run in this directory from its newest checkpoint.
    #[arg(long, value_name = "RUN_DIR")]
    pub resume: Option<PathBuf>,
    /// Train in a process of its own that outlives this terminal: print the run directory
    /// and the attach command once the run has loaded, then return.
    #[arg(long)]
    pub detach: bool,
    #[command(flatten)]
    pub device: crate::cli::DeviceArgs,
}

pub fn train(a: &TrainArgs) -> Result<()> {
    let resume = a.resume.as_deref();
    let mut cfg = read_config(&a.config, &a.sets)?;
    // `--device` wins over `[run] device`; the run's config.toml records the one used.
    if let Some(spec) = a.device.spec() {
        cfg.run.device = Some(spec);
    }
    let dir = run_dir(&cfg, resume);
    // The host resolves the device itself; here it is checked before anything starts.
    let dev = crate::cli::device(cfg.run.device)?;
    if resume.is_none() && !checkpoint::list(&dir.join("checkpoints")).is_empty() {
        bail!(
            "{} already holds a run with checkpoints: pass --resume {0} to continue it, or set run.out_dir",
            dir.display()
        );
    }
    if a.detach {
        let start = Command::Start { config: Box::new(cfg), run_dir: dir.clone(), resume: resume.is_some() };
        return detach(&start, &dir);
    }
    let on = crate::engine::device::label(&dev);
    let handle = engine::spawn(dev);
    let signals = Arc::new(AtomicUsize::new(0));
    {
        let (tx, n) = (handle.sender(), signals.clone());
        ctrlc::set_handler(move || {
            if n.fetch_add(1, Ordering::SeqCst) == 0 {
                say_err("\nstopping after this step and saving (signal again to quit at once)");
                let _ = tx.send(Command::Stop { save: true });
            } else {
                std::process::exit(130);
            }
        })
        .context("installing the signal handler")?;
    }
    handle.send(Command::Start { config: Box::new(cfg), run_dir: dir.clone(), resume: resume.is_some() });

    let tty = std::io::stdout().is_terminal();
    let mut bar: Option<ProgressBar> = None;
    let mut failed = None;
    let say = |bar: &Option<ProgressBar>, s: String| match bar {
        Some(b) => b.println(s),
        None => out(&s),
    };
    while let Some(ev) = handle.recv() {
        match ev {
            Event::Loaded(i) => {
                say(
                    &bar,
                    format!(
                        "run {} · {} · {} params ({} trainable) · {} train / {} eval windows · steps {}..{} · on {}",
                        dir.display(),
                        i.method,
                        i.params,
                        i.trainable,
                        i.train_windows,
                        i.eval_windows,
                        i.start_step,
                        i.total_steps,
                        on
                    ),
                );
                if tty {
                    let b = ProgressBar::new(i.total_steps).with_position(i.start_step);
                    b.set_style(
                        ProgressStyle::with_template(
                            "{bar:30} {pos}/{len} {msg} [{elapsed_precise}<{eta_precise}]",
                        )
                        .unwrap_or_else(|_| ProgressStyle::default_bar()),
                    );
                    bar = Some(b);
                }
            }
            Event::Step(s) => {
                let line = format!(
                    "step {} loss {:.4} lr {:.3e} grad_norm {:.3} tok/s {:.0} {}",
                    s.step,
                    s.loss,
                    s.lr,
                    s.grad_norm,
                    s.tokens_per_s,
                    s.flops_label()
                );
                match &bar {
                    Some(b) => {
                        b.set_position(s.step);
                        b.set_message(line);
                    }
                    None => out(&line),
                }
            }
            Event::Eval { step, loss } => say(&bar, format!("eval step {step} loss {loss:.4}")),
            Event::Checkpoint { step, path } => {
                say(&bar, format!("checkpoint step {step}: {}", path.display()))
            }
            Event::ScheduleEdited { step, new, .. } => {
                say(&bar, format!("schedule edited at step {step}: {new}"))
            }
            Event::GradClipSet { step, old, new } => {
                say(&bar, format!("grad clip {old} -> {new} from step {}", step + 1))
            }
            Event::Warning(w) => say(&bar, format!("warning: {w}")),
            Event::Log(l) => tracing::info!("{l}"),
            Event::Failed(e) => {
                failed = Some(e);
                break;
            }
            Event::Finished { step, outputs } => {
                if let Some(b) = &bar {
                    b.finish_and_clear();
                }
                for o in outputs {
                    out(&format!("wrote {}", o.display()));
                }
                out(&format!("finished at step {step}"));
                break;
            }
            Event::ProbeResult { .. }
            | Event::ChatToken { .. }
            | Event::ChatDone { .. }
            | Event::Paused { .. }
            | Event::Resumed { .. }
            | Event::Opened { .. } => {}
        }
    }
    handle.shutdown();
    match failed {
        Some(e) => Err(anyhow!(e)),
        None => Ok(()),
    }
}

/// `--detach`: a host trains the run; this waits until it has loaded (or failed) and says how
/// to attach.
fn detach(start: &Command, dir: &Path) -> Result<()> {
    engine::host::launch::launch(start)?;
    let handle = engine::remote::attach(dir)?;
    let loaded = loop {
        match handle.recv() {
            Some(Event::Loaded(i)) => break Ok(i),
            Some(Event::Failed(e)) => break Err(anyhow!(e)),
            Some(_) => {}
            None => break Err(anyhow!("the engine host exited; see {}", dir.join("host.log").display())),
        }
    };
    handle.shutdown(); // detach: the run goes on
    let i = loaded?;
    out(&format!(
        "training {} in the background · {} · steps {}..{}",
        dir.display(),
        i.method,
        i.start_step,
        i.total_steps
    ));
    out(&format!("attach: whet attach {}", dir.display()));
    Ok(())
}

/// Progress goes to stdout best effort: a closed pipe (`whet train … | head -1`) or a dead
/// terminal must never stop training, so write errors are dropped (the run's logs and
/// metrics.jsonl hold everything).
fn out(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

fn say_err(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}
