//! The training engine: a worker thread that owns a run and talks only through messages.
//!
//! `spawn()` returns an [`EngineHandle`] holding the command sender and the event receiver.
//! The thread runs steps while a run is active and checks for commands between steps, so a
//! probe, pause or schedule edit waits at most one step. It blocks on `recv` only when idle or
//! paused. Errors become `Event::Failed`; the thread then waits for the next `Start`.

pub mod build;
pub mod checkpoint;
pub mod config;
pub mod device;
pub mod history;
pub mod host;
mod probing;
pub mod protocol;
pub mod registry;
pub mod remote;
pub mod run_lock;
pub mod sockets;
pub mod trainer;
pub mod wire;

use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Result;
use candle_core::Device;

pub use protocol::{Command, Event, ModelInfo, StepStats};
use trainer::Trainer;

/// A client's handle on the engine: commands in, events out. Its channels stay private.
pub struct EngineHandle {
    commands: CommandHandle,
    events: Receiver<Event>,
}

impl EngineHandle {
    pub fn send(&self, c: Command) {
        self.commands.send(c);
    }

    /// Waits for the next event; None once the engine has exited.
    pub fn recv(&self) -> Option<Event> {
        self.events.recv().ok()
    }

    /// Waits at most `timeout` for the next event.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Event, RecvTimeoutError> {
        self.events.recv_timeout(timeout)
    }

    /// A sender for a thread that only sends (a signal handler).
    pub fn sender(&self) -> Sender<Command> {
        self.commands.commands.clone()
    }

    /// Sends `Shutdown` and waits for the thread.
    pub fn shutdown(self) {
        self.commands.shutdown();
    }

    /// Splits the handle for a client that reads events on another thread (the TUI's bridge).
    pub fn into_parts(self) -> (CommandHandle, Receiver<Event>) {
        (self.commands, self.events)
    }
}

/// The command half of an [`EngineHandle`].
pub struct CommandHandle {
    commands: Sender<Command>,
    join: Option<JoinHandle<()>>,
}

impl CommandHandle {
    pub fn send(&self, c: Command) {
        // A closed channel means the engine has exited; its last event says why.
        let _ = self.commands.send(c);
    }

    /// Sends `Shutdown` and waits for the thread.
    pub fn shutdown(mut self) {
        self.send(Command::Shutdown);
        if let Some(j) = self.join.take() {
            let _ = j.join();
        }
    }
}

/// Starts the engine thread on `dev`.
pub fn spawn(dev: Device) -> EngineHandle {
    let (ctx, crx) = mpsc::channel();
    let (etx, erx) = mpsc::channel();
    let join = std::thread::Builder::new()
        .name("whet-engine".into())
        .spawn(move || {
            Engine { dev, events: etx, commands: crx, run: None, paused: false, viewer: None }.main()
        })
        .ok();
    if join.is_none() {
        tracing::error!("could not start the engine thread");
    }
    EngineHandle { commands: CommandHandle { commands: ctx, join }, events: erx }
}

struct Engine {
    dev: Device,
    events: Sender<Event>,
    commands: Receiver<Command>,
    run: Option<Run>,
    paused: bool,
    /// A model opened for probing outside a run.
    viewer: Option<crate::load::LoadedModel>,
}

/// An active run and its output files.
struct Run {
    trainer: Trainer,
    metrics: std::fs::File,
    edits: std::fs::File,
    /// The checkpoint the explorer compares against, loaded once (step, model).
    pinned: Option<(u64, crate::model::Llama)>,
}

enum Flow {
    Continue,
    Exit,
}

impl Engine {
    fn main(mut self) {
        loop {
            // Drain commands; block only when there is nothing to run.
            let idle = self.run.is_none() || self.paused;
            let cmd = if idle {
                match self.commands.recv() {
                    Ok(c) => Some(c),
                    Err(_) => return, // every handle dropped
                }
            } else {
                match self.commands.recv_timeout(Duration::ZERO) {
                    Ok(c) => Some(c),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => {
                        self.finish(true);
                        return;
                    }
                }
            };
            if let Some(c) = cmd {
                match self.handle(c) {
                    Ok(Flow::Continue) => {}
                    Ok(Flow::Exit) => return,
                    Err(e) => self.fail(e),
                }
                continue;
            }
            if let Err(e) = self.step() {
                self.fail(e);
            }
        }
    }

    fn fail(&mut self, e: anyhow::Error) {
        tracing::error!("{e:#}");
        emit(&self.events, Event::Failed(format!("{e:#}")));
        self.run = None;
        self.paused = false;
    }

    fn handle(&mut self, c: Command) -> Result<Flow> {
        match c {
            Command::Start { config, run_dir, resume } => {
                if self.run.is_some() {
                    emit(&self.events, Event::Warning("a run is already active; stop it first".into()));
                    return Ok(Flow::Continue);
                }
                self.run = Some(Run::start(*config, run_dir, resume, &self.dev)?);
                self.paused = false;
                if let Some(r) = &self.run {
                    // Loaded first: it starts a host's history, which then keeps the report.
                    emit(&self.events, Event::Loaded(r.trainer.info()));
                    emit(&self.events, Event::Log(format!("data: {}", r.trainer.report)));
                }
            }
            Command::Pause => {
                if let Some(r) = &self.run {
                    self.paused = true;
                    emit(&self.events, Event::Paused { step: r.trainer.step() });
                }
            }
            Command::Resume => {
                if let Some(r) = &self.run {
                    self.paused = false;
                    emit(&self.events, Event::Resumed { step: r.trainer.step() });
                }
            }
            Command::Stop { save } => self.finish(save),
            Command::SaveCheckpoint => self.checkpoint()?,
            Command::SetSchedule(new) => {
                let Some(r) = &mut self.run else { return self.no_run("SetSchedule") };
                match r.trainer.set_schedule(new) {
                    Ok(edit) => {
                        r.log_edit(&edit)?;
                        emit(
                            &self.events,
                            Event::ScheduleEdited {
                                step: edit.step,
                                old: Box::new(edit.old),
                                new: Box::new(edit.new),
                            },
                        );
                    }
                    Err(e) => emit(&self.events, Event::Warning(format!("{e:#}"))),
                }
            }
            Command::SetGradClip(c) => {
                let Some(r) = &mut self.run else { return self.no_run("SetGradClip") };
                match r.trainer.set_grad_clip(c) {
                    Ok(old) => emit(&self.events, Event::GradClipSet { step: r.trainer.step(), old, new: c }),
                    Err(e) => emit(&self.events, Event::Warning(format!("{e:#}"))),
                }
            }
            Command::Probe(p) => self.probe(&p),
            Command::Chat(c) => self.chat(&c),
            Command::Open(path) => match probing::open(&path, &self.dev) {
                Ok(m) => {
                    self.viewer = Some(m);
                    emit(&self.events, Event::Opened { path });
                }
                Err(e) => emit(&self.events, Event::Warning(format!("{e:#}"))),
            },
            Command::Evaluate => self.evaluate()?,
            Command::Shutdown => {
                self.finish(true);
                return Ok(Flow::Exit);
            }
        }
        Ok(Flow::Continue)
    }

    fn no_run(&self, what: &str) -> Result<Flow> {
        emit(&self.events, Event::Warning(format!("{what}: no run is active")));
        Ok(Flow::Continue)
    }

    fn step(&mut self) -> Result<()> {
        let Some(r) = &mut self.run else { return Ok(()) };
        let trainer = &mut r.trainer;
        // The whole step on one thread of the pool: see `model::on_pool`.
        let s = crate::model::on_pool(|| trainer.train_step())?;
        r.log_step(&s)?;
        emit(&self.events, Event::Step(s));
        let (t, run) = (&r.trainer, &r.trainer.cfg.run);
        if s.skipped > 0 && t.bad_in_row() > 0 {
            emit(
                &self.events,
                Event::Warning(format!("step {}: non-finite loss or gradient; update skipped", s.step)),
            );
            if t.bad_in_row() >= run.max_bad_steps.max(1) {
                anyhow::bail!("{} bad steps in a row: halting (run.max_bad_steps)", t.bad_in_row());
            }
        }
        let (eval_every, save_every) = (run.eval_every, run.save_every);
        if eval_every > 0 && s.step % eval_every == 0 {
            self.evaluate()?;
        }
        if save_every > 0 && s.step % save_every == 0 {
            self.checkpoint()?;
        }
        let Some(r) = &self.run else { return Ok(()) };
        if r.trainer.should_stop_early() {
            emit(&self.events, Event::Log(format!("early stopping at step {}", s.step)));
            self.finish(true);
        } else if r.trainer.done() {
            self.finish(true);
        }
        Ok(())
    }

    fn evaluate(&mut self) -> Result<()> {
        let Some(r) = &mut self.run else { return Ok(()) };
        let trainer = &mut r.trainer;
        if let Some(loss) = crate::model::on_pool(|| trainer.evaluate())? {
            let step = r.trainer.step();
            r.log_eval(step, loss)?;
            emit(&self.events, Event::Eval { step, loss });
        }
        Ok(())
    }

    fn checkpoint(&mut self) -> Result<()> {
        let Some(r) = &self.run else { return Ok(()) };
        let path = r.trainer.save_checkpoint()?;
        emit(&self.events, Event::Checkpoint { step: r.trainer.step(), path });
        Ok(())
    }

    /// Ends the active run: with `save`, a final checkpoint and the exported adapter or model.
    fn finish(&mut self, save: bool) {
        let Some(r) = self.run.take() else { return };
        self.paused = false;
        let step = r.trainer.step();
        let mut outputs = vec![];
        if save {
            let saved = r.trainer.save_checkpoint().and_then(|p| {
                emit(&self.events, Event::Checkpoint { step, path: p });
                r.trainer.export()
            });
            match saved {
                Ok(p) => outputs.push(p),
                Err(e) => emit(&self.events, Event::Failed(format!("saving at the end of the run: {e:#}"))),
            }
        }
        emit(&self.events, Event::Finished { step, outputs });
    }
}

fn emit(events: &Sender<Event>, e: Event) {
    // A closed channel means every client is gone; the run still saves on its own.
    let _ = events.send(e);
}

impl Run {
    fn start(cfg: config::RunConfig, run_dir: PathBuf, resume: bool, dev: &Device) -> Result<Self> {
        let trainer = Trainer::new(cfg, &run_dir, resume, dev)?;
        if resume {
            checkpoint::trim_logs(&run_dir, trainer.step(), trainer.edits())?;
        }
        let toml = trainer.cfg.to_toml().map_err(anyhow::Error::msg)?;
        let path = run_dir.join("config.toml");
        std::fs::write(&path, toml).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let open = |name: &str| -> Result<std::fs::File> {
            let p = run_dir.join(name);
            let f = std::fs::OpenOptions::new().create(true).append(true).open(&p);
            f.map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))
        };
        Ok(Self { metrics: open("metrics.jsonl")?, edits: open("edits.jsonl")?, trainer, pinned: None })
    }

    fn log_step(&mut self, s: &StepStats) -> Result<()> {
        use std::io::Write;
        writeln!(self.metrics, "{}", serde_json::to_string(s)?)?;
        Ok(())
    }

    fn log_eval(&mut self, step: u64, loss: f64) -> Result<()> {
        use std::io::Write;
        writeln!(self.metrics, "{}", serde_json::json!({"step": step, "eval_loss": loss}))?;
        Ok(())
    }

    fn log_edit(&mut self, e: &checkpoint::Edit) -> Result<()> {
        use std::io::Write;
        writeln!(self.edits, "{}", serde_json::to_string(e)?)?;
        self.edits.sync_data()?;
        Ok(())
    }
}
