//! The host's one routing thread. It owns the run's [`History`] and the clients' queues:
//! engine events are recorded and sent to every client, except probe answers, which go to
//! the client that asked under the id it used (ids are per connection; the hub gives the
//! engine its own). Commands from any client go to the engine, in arrival order.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::time::{Duration, Instant};

use super::conn::offer;
use crate::engine::history::History;
use crate::engine::{Command, CommandHandle, Event};

/// The file a failed run leaves its reason in (`whet runs` shows it as failed).
pub const FAILED_FILE: &str = ".whet-failed";

/// After its run ends the host stays this long for clients to read the end, and leaves
/// earlier once none is attached.
const LINGER_EMPTY: Duration = Duration::from_secs(2);
const LINGER_MAX: Duration = Duration::from_secs(30);

pub enum HubMsg {
    Event(Event),
    Join { id: u64, out: SyncSender<Vec<Event>> },
    Command { id: u64, cmd: Command },
    Left(u64),
}

pub struct Hub {
    run_dir: PathBuf,
    history: History,
    clients: BTreeMap<u64, SyncSender<Vec<Event>>>,
    /// The engine's probe id → (client, the client's id).
    probes: HashMap<u64, (u64, u64)>,
    next_probe: u64,
    ended: Option<Instant>,
}

impl Hub {
    pub fn new(run_dir: &Path) -> Self {
        Self {
            run_dir: run_dir.to_path_buf(),
            history: History::default(),
            clients: BTreeMap::new(),
            probes: HashMap::new(),
            next_probe: 1,
            ended: None,
        }
    }

    /// Routes until the run has ended and its clients have had the chance to see it.
    pub fn run(mut self, rx: Receiver<HubMsg>, engine: &CommandHandle) {
        loop {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(m) => self.handle(m, engine),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            if let Some(t) = self.ended {
                if (self.clients.is_empty() && t.elapsed() >= LINGER_EMPTY) || t.elapsed() >= LINGER_MAX {
                    return;
                }
            }
        }
    }

    fn handle(&mut self, m: HubMsg, engine: &CommandHandle) {
        match m {
            HubMsg::Event(e) => self.event(e),
            HubMsg::Join { id, out } => {
                // The whole picture first, in one batch, then live events as they come.
                if offer(&out, self.history.replay()) {
                    self.clients.insert(id, out);
                } else {
                    tracing::warn!("client {id}: could not queue the history for it");
                }
            }
            HubMsg::Left(id) => {
                self.clients.remove(&id);
                self.probes.retain(|_, (c, _)| *c != id);
            }
            HubMsg::Command { id, cmd } => self.command(id, cmd, engine),
        }
    }

    fn command(&mut self, id: u64, cmd: Command, engine: &CommandHandle) {
        match cmd {
            // Probe and chat ids are each client's own: the hub numbers them for the engine.
            Command::Probe(mut p) => {
                p.id = self.remap(id, p.id);
                engine.send(Command::Probe(p));
            }
            Command::Chat(mut c) => {
                c.id = self.remap(id, c.id);
                engine.send(Command::Chat(c));
            }
            // A client leaving says Shutdown; the run is not its to end that way.
            Command::Shutdown => tracing::info!("client {id} said shutdown: treated as detach"),
            Command::Start { .. } | Command::Open(_) => {
                let why = format!(
                    "this engine host runs {} only: stop it first, or probe other models in the workbench",
                    self.run_dir.display()
                );
                self.send_to(id, vec![Event::Warning(why)]);
            }
            other => {
                tracing::info!("client {id}: {}", command_name(&other));
                engine.send(other);
            }
        }
    }

    fn remap(&mut self, client: u64, theirs: u64) -> u64 {
        let ours = self.next_probe;
        self.next_probe += 1;
        self.probes.insert(ours, (client, theirs));
        ours
    }

    fn event(&mut self, e: Event) {
        // Answers go to the client that asked, under its own id.
        let answer = match e {
            Event::ProbeResult { id, step, result } => self
                .probes
                .remove(&id)
                .map(|(c, theirs)| (c, Event::ProbeResult { id: theirs, step, result })),
            Event::ChatToken { id, token, alternatives } => self
                .probes
                .get(&id)
                .map(|&(c, theirs)| (c, Event::ChatToken { id: theirs, token, alternatives })),
            Event::ChatDone { id, step, result } => {
                self.probes.remove(&id).map(|(c, theirs)| (c, Event::ChatDone { id: theirs, step, result }))
            }
            e => {
                self.record(e);
                return;
            }
        };
        if let Some((client, e)) = answer {
            self.send_to(client, vec![e]);
        }
    }

    fn record(&mut self, e: Event) {
        self.history.record(&e);
        match &e {
            Event::Loaded(info) => {
                let _ = std::fs::remove_file(self.run_dir.join(FAILED_FILE));
                if info.start_step > 0 {
                    // A resumed run: the charts start at step 1, from the run's own logs.
                    self.history.seed_from_run(&self.run_dir, info.start_step);
                }
            }
            Event::Failed(why) => {
                let _ = std::fs::write(self.run_dir.join(FAILED_FILE), why);
                self.ended = Some(Instant::now());
            }
            Event::Finished { .. } => self.ended = Some(Instant::now()),
            _ => {}
        }
        let ids: Vec<u64> = self.clients.keys().copied().collect();
        for id in ids {
            self.send_to(id, vec![e.clone()]);
        }
    }

    fn send_to(&mut self, id: u64, batch: Vec<Event>) {
        let Some(out) = self.clients.get(&id) else { return };
        if !offer(out, batch) {
            tracing::warn!("client {id} is not reading its events; dropping it (training goes on)");
            self.clients.remove(&id);
        }
    }
}

fn command_name(c: &Command) -> String {
    match c {
        Command::SetSchedule(p) => format!("set schedule: {p}"),
        other => format!("{other:?}").chars().take(80).collect(),
    }
}
