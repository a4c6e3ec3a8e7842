//! The workbench TUI: a second client of the engine. One tokio `select!` over terminal input,
//! engine events and a ~30 fps clock; `App::update` folds each message and returns effects;
//! the screen is redrawn on the clock when something changed.
//!
//! This is the only module that imports ratatui, crossterm or tokio.

pub mod app;
pub mod discover;
pub mod keymap;
pub mod msg;
pub mod pane;
pub mod state;
pub mod ui;

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use candle_core::Device;
use crossterm::event::{DisableMouseCapture, EnableMouseCapture, Event as TermEvent, EventStream};
use futures::StreamExt;
use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};

use crate::engine::device::DeviceSpec;
use crate::engine::{self, Command};
use app::App;
use msg::{Effect, Msg};
use state::form::{FormState, DEFAULT_DOC};

pub struct Options {
    /// Extra model paths from the command line.
    pub models: Vec<PathBuf>,
    pub config: Option<PathBuf>,
    pub device: Device,
    /// `whet attach RUN_DIR`: attach to this run's engine host at start.
    pub attach: Option<PathBuf>,
}

/// The workbench's two engines: its own, for probing a model with no run, and the engine
/// host of the run it is attached to, if any. `update` never sees which gets a command.
struct Engines {
    local: engine::CommandHandle,
    remote: Option<Remote>,
    /// Counts connections, so the end of an old one is not taken for the current one's.
    generation: u64,
}

struct Remote {
    generation: u64,
    commands: engine::CommandHandle,
    /// The run it trains: its lock names the host's pid, whose memory the Metrics pane shows.
    run_dir: PathBuf,
}

/// A new connection, made off the UI thread and handed to the loop.
struct Link {
    run_dir: PathBuf,
    handle: engine::EngineHandle,
}

pub fn run(opts: Options) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the UI runtime")?;
    rt.block_on(main_loop(opts))
}

fn initial_form(config: Option<&PathBuf>) -> FormState {
    let path = config.cloned().unwrap_or_else(|| PathBuf::from(app::DEFAULT_LORA));
    std::fs::read_to_string(&path)
        .ok()
        .and_then(|t| FormState::from_doc(&t, Some(path)).ok())
        .or_else(|| FormState::from_doc(DEFAULT_DOC, None).ok())
        .unwrap_or_else(|| FormState {
            doc: Default::default(),
            selected: 0,
            errors: Default::default(),
            editing: None,
            path: None,
        })
}

async fn main_loop(opts: Options) -> Result<()> {
    let (local, events) = engine::spawn(opts.device.clone()).into_parts();
    let (tx, mut rx) = unbounded_channel::<Msg>();
    let (link_tx, mut link_rx) = unbounded_channel::<Link>();
    // The engine speaks std::mpsc; a bridge thread turns its events into messages.
    bridge(events, tx.clone(), None)?;
    let mut engines = Engines { local, remote: None, generation: 0 };
    let spec = DeviceSpec::of(&opts.device);
    let color = std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let mut app = App::new(initial_form(opts.config.as_ref()), color);
    app.models.device = engine::device::name(&opts.device);
    scan_models(&tx, opts.models.clone());
    perform(Effect::ScanRuns, &mut engines, &tx, &link_tx, spec);
    if let Ok(cfg) = app.form.config() {
        if let Some(p) = cfg.model.path.filter(|p| p.exists()) {
            engines.local.send(Command::Open(p));
        }
    }

    let mut terminal = ratatui::init(); // also restores the terminal on panic
                                        // ratatui's hook leaves mouse capture on; switch it off before the message prints.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let _ = crossterm::execute!(std::io::stdout(), DisableMouseCapture);
        hook(info);
    }));
    let _ = crossterm::execute!(std::io::stdout(), EnableMouseCapture);
    if let Some(dir) = opts.attach.clone() {
        perform(Effect::Attach(dir), &mut engines, &tx, &link_tx, spec);
    }
    let size = terminal.size().unwrap_or_default();
    app.update(Msg::Resize(size.width, size.height));
    let mut input = EventStream::new();
    let mut clock = tokio::time::interval(Duration::from_millis(33));
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut ticks = 0u64;
    let result: Result<()> = loop {
        let msg = tokio::select! {
            _ = clock.tick() => Msg::Tick,
            Some(ev) = input.next() => match ev {
                Ok(TermEvent::Key(k)) if k.kind != crossterm::event::KeyEventKind::Release => Msg::Key(k),
                Ok(TermEvent::Mouse(m)) => Msg::Mouse(m),
                Ok(TermEvent::Resize(w, h)) => Msg::Resize(w, h),
                Ok(_) => continue,
                Err(e) => break terminal_gone(e),
            },
            Some(m) = rx.recv() => match m {
                // The end of a connection the workbench has already let go of.
                Msg::HostGone(g) if engines.remote.as_ref().is_none_or(|r| r.generation != g) => continue,
                Msg::HostGone(g) => {
                    engines.remote = None;
                    Msg::HostGone(g)
                }
                m => m,
            },
            Some(link) = link_rx.recv() => {
                let (commands, events) = link.handle.into_parts();
                engines.generation += 1;
                let generation = engines.generation;
                let run_dir = link.run_dir.clone();
                if let Some(old) = engines.remote.replace(Remote { generation, commands, run_dir }) {
                    old.commands.shutdown();
                }
                bridge(events, tx.clone(), Some(generation))?;
                Msg::Attached(link.run_dir)
            }
            _ = hup.recv() => Msg::Signal,
            _ = term.recv() => Msg::Signal,
        };
        let tick = matches!(msg, Msg::Tick);
        let was_mouse = app.mouse;
        for effect in app.update(msg) {
            perform(effect, &mut engines, &tx, &link_tx, spec);
        }
        if app.mouse != was_mouse {
            let _ = if app.mouse {
                crossterm::execute!(std::io::stdout(), EnableMouseCapture)
            } else {
                crossterm::execute!(std::io::stdout(), DisableMouseCapture)
            };
        }
        if app.quit {
            break Ok(());
        }
        if tick {
            ticks += 1;
            if ticks.is_multiple_of(30) {
                // The memory that matters is the training's: the host's while attached.
                let host = engines.remote.as_ref().and_then(|r| engine::run_lock::holder(&r.run_dir));
                if let Some(b) = resident_bytes(host) {
                    app.update(Msg::Memory(b));
                }
            }
            if app.dirty {
                if let Err(e) = terminal.draw(|f| ui::render(&app, f)) {
                    break terminal_gone(e);
                }
                app.dirty = false;
            }
        }
    };
    let _ = crossterm::execute!(std::io::stdout(), DisableMouseCapture);
    // Not `ratatui::restore()`: it reports a failure with eprintln!, which panics when the
    // terminal is gone (EIO after a hang-up). A dead terminal needs no restoring.
    if let Err(e) = ratatui::try_restore() {
        tracing::info!("terminal not restored (gone?): {e}");
    }
    let _ = std::io::stdout().flush();
    // Terminal's own drop shows the cursor and eprintln!s a failure, which panics on a dead
    // terminal; it holds nothing else that needs releasing at exit.
    let _ = terminal.show_cursor();
    std::mem::forget(terminal);
    // Detach from the host (its run goes on), then stop the workbench's own engine.
    if let Some(r) = engines.remote.take() {
        r.commands.shutdown();
    }
    engines.local.shutdown();
    result
}

/// A terminal read or write failed: the terminal is gone (EIO after a hang-up, a closed
/// pty). That ends the workbench, not the run, and is not an error to report on it.
fn terminal_gone(e: std::io::Error) -> Result<()> {
    tracing::info!("the terminal is gone ({e}); leaving, the run goes on in its host");
    Ok(())
}

/// A thread turning an engine's events into messages; a host connection's ends with
/// `HostGone` when the host goes.
fn bridge(
    events: std::sync::mpsc::Receiver<engine::Event>,
    tx: UnboundedSender<Msg>,
    generation: Option<u64>,
) -> Result<()> {
    std::thread::Builder::new()
        .name("whet-ui-bridge".into())
        .spawn(move || {
            for ev in events {
                if tx.send(Msg::Engine(ev)).is_err() {
                    return;
                }
            }
            if let Some(g) = generation {
                let _ = tx.send(Msg::HostGone(g));
            }
        })
        .context("starting the event bridge")?;
    Ok(())
}

/// Carries out an effect: engine commands go to an engine, file I/O and connecting run off
/// the UI thread.
fn perform(
    effect: Effect,
    engines: &mut Engines,
    tx: &UnboundedSender<Msg>,
    link_tx: &UnboundedSender<Link>,
    spec: DeviceSpec,
) {
    match effect {
        Effect::Engine(c) => match (&engines.remote, &c) {
            (Some(r), c) if !matches!(c, Command::Open(_)) => r.commands.send(c.clone()),
            _ => engines.local.send(c),
        },
        Effect::Host(start) => connect(tx, link_tx, move || host_start(start, spec)),
        Effect::ResumeRun(dir) => connect(tx, link_tx, move || {
            let cfg = crate::train_cli::read_config(&dir.join("config.toml"), &[])?;
            host_start(Command::Start { config: Box::new(cfg), run_dir: dir, resume: true }, spec)
        }),
        Effect::Attach(dir) => connect(tx, link_tx, move || {
            let handle = engine::remote::attach(&dir)?;
            Ok(Link { run_dir: dir, handle })
        }),
        Effect::Detach => {
            if let Some(r) = engines.remote.take() {
                tracing::debug!("detaching connection {}", r.generation);
                r.commands.shutdown();
            }
        }
        Effect::ScanRuns => {
            let tx = tx.clone();
            tokio::task::spawn_blocking(move || {
                let runs = crate::engine::sockets::state_dir(|k| std::env::var(k).ok())
                    .map(|state| crate::engine::registry::list(&state))
                    .unwrap_or_default();
                let _ = tx.send(Msg::Runs(runs));
            });
        }
        Effect::LoadConfig { path, start } => {
            let tx = tx.clone();
            tokio::task::spawn_blocking(move || {
                let text = std::fs::read_to_string(&path).map_err(|e| e.to_string());
                let _ = tx.send(Msg::ConfigLoaded { path, text, start });
            });
        }
        Effect::SaveConfig { path, text } => {
            let tx = tx.clone();
            tokio::task::spawn_blocking(move || {
                // Atomically (temp file, fsync, rename): a crash mid-save never leaves the
                // user's config cut short.
                let result =
                    crate::load::atomic_dir::write_file(&path, text.as_bytes()).map_err(|e| format!("{e:#}"));
                let _ = tx.send(Msg::ConfigSaved { path, result });
            });
        }
        Effect::PreviewData { id, config } => {
            let tx = tx.clone();
            tokio::task::spawn_blocking(move || {
                let result = crate::data_cli::preview_run(&config, crate::tui::state::data::KEEP)
                    .map(Box::new)
                    .map_err(|e| format!("{e:#}"));
                let _ = tx.send(Msg::DataPreview { id, result });
            });
        }
        Effect::Export(args) => {
            let tx = tx.clone();
            tokio::task::spawn_blocking(move || {
                let progress = tx.clone();
                let result = crate::export::run(&args, &mut |s| {
                    let _ = progress.send(Msg::ExportProgress(s));
                })
                .map(|p| {
                    let size = crate::export::disk_size(&p);
                    (p, size)
                })
                .map_err(|e| format!("{e:#}"));
                let _ = tx.send(Msg::Exported(result));
            });
        }
    }
}

/// Starts a host for `start` (the run's device is the workbench's unless its config names
/// one) and attaches to it.
fn host_start(mut start: Command, spec: DeviceSpec) -> Result<Link> {
    if let Command::Start { config, .. } = &mut start {
        config.run.device.get_or_insert(spec);
    }
    engine::host::launch::launch(&start)?;
    let Command::Start { run_dir, .. } = start else { anyhow::bail!("not a Start command") };
    let handle = engine::remote::attach(&run_dir)?;
    Ok(Link { run_dir, handle })
}

/// Makes a connection off the UI thread; hands it to the loop, or says why it failed.
fn connect(
    tx: &UnboundedSender<Msg>,
    link_tx: &UnboundedSender<Link>,
    make: impl FnOnce() -> Result<Link> + Send + 'static,
) {
    let (tx, link_tx) = (tx.clone(), link_tx.clone());
    tokio::task::spawn_blocking(move || match make() {
        Ok(link) => {
            let _ = link_tx.send(link);
        }
        Err(e) => {
            let _ = tx.send(Msg::AttachFailed(format!("{e:#}")));
        }
    });
}

fn scan_models(tx: &UnboundedSender<Msg>, extra: Vec<PathBuf>) {
    let tx = tx.clone();
    tokio::task::spawn_blocking(move || {
        let cache = discover::hf_cache_dir(|k| std::env::var(k).ok());
        let entries = discover::scan(
            std::path::Path::new("models"),
            &extra,
            std::path::Path::new("configs"),
            cache.as_deref(),
        );
        let _ = tx.send(Msg::Models(entries));
    });
}

/// Resident set size of this process, or of `pid`, from /proc (Linux); None elsewhere.
fn resident_bytes(pid: Option<i32>) -> Option<u64> {
    let path = pid.map_or_else(|| "/proc/self/statm".to_string(), |p| format!("/proc/{p}/statm"));
    let statm = std::fs::read_to_string(path).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}
