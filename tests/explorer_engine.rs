//! The explorer's requests on the engine: temperature and top-p over the whole vocabulary, a
//! target token's probability, chat replies streamed between steps with each token's
//! alternatives, a checkpoint compared with the live weights, and a finished run opened.

mod common;

use std::time::Duration;

use candle_core::Device;
use common::*;
use whet::chat::Message;
use whet::engine::config::RunConfig;
use whet::engine::protocol::{ChatRequest, Probe, Weights};
use whet::engine::{self, Command, EngineHandle, Event};
use whet::logits::{ProbeResult, Sampler, TopToken};

const VOCAB: usize = 320;

fn config(max_steps: u64) -> RunConfig {
    RunConfig::from_toml(&format!(
        "[model]\npath = \"{}\"\n[method]\nkind = \"lora\"\nr = 2\nalpha = 4\ntargets = [\"q_proj\", \"v_proj\"]\n\
         [data]\ntrain = \"{}\"\nformat = \"tokens\"\nseq_len = 16\nshuffle = false\n[optim]\nbatch_size = 4\n\
         max_steps = {max_steps}\n[schedule]\nkind = \"constant\"\nlr = 5e-2\n",
        fixture("tiny-llama-gqa").display(),
        fixture("train/tokens.u16").display(),
    ))
    .unwrap()
}

fn next(h: &EngineHandle) -> Event {
    h.recv_timeout(Duration::from_secs(60)).expect("an engine event")
}

fn wait<T>(h: &EngineHandle, mut pick: impl FnMut(Event) -> Option<T>) -> T {
    loop {
        match next(h) {
            Event::Failed(m) => panic!("engine failed: {m}"),
            e => {
                if let Some(t) = pick(e) {
                    return t;
                }
            }
        }
    }
}

fn probe(h: &EngineHandle, p: Probe) -> (u64, Result<ProbeResult, String>) {
    let want = p.id;
    h.send(Command::Probe(p));
    wait(h, |e| match e {
        Event::ProbeResult { id, step, result } if id == want => Some((step, result)),
        _ => None,
    })
}

/// Every token's probability, by id.
fn full(h: &EngineHandle, id: u64, prompt: &str, weights: Weights) -> Vec<f64> {
    let (_, r) = probe(h, Probe { weights, ..Probe::new(id, prompt, VOCAB) });
    let r = r.unwrap();
    assert_eq!(r.top.len(), VOCAB);
    let mut p = vec![0.0; VOCAB];
    for t in &r.top {
        p[t.id as usize] = t.prob;
    }
    p
}

fn max_diff(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

#[test]
fn temperature_and_top_p_apply_over_the_whole_vocabulary_and_a_target_is_charted() {
    let h = engine::spawn(Device::Cpu);
    h.send(Command::Open(fixture("tiny-llama-gqa")));
    wait(&h, |e| matches!(e, Event::Opened { .. }).then_some(()));
    let p = full(&h, 1, "How are", Weights::Live);

    // T = 0.5: p² renormalised over all 320 tokens.
    let sampler = Sampler { temperature: 0.5, top_p: 1.0 };
    let (_, r) = probe(&h, Probe { sampler, target: Some("a".into()), ..Probe::new(2, "How are", 5) });
    let r = r.unwrap();
    let z: f64 = p.iter().map(|x| x * x).sum();
    for (t, s) in r.top.iter().zip(&r.sampled) {
        let want = p[t.id as usize].powi(2) / z;
        assert!((s - want).abs() < 1e-9, "token {}: {s} vs {want}", t.id);
    }
    // Renormalising over the 5 shown tokens only, as the explorer once did, is a different answer.
    let shown: f64 = r.top.iter().map(|t| t.prob * t.prob).sum();
    assert!((r.sampled[0] - r.top[0].prob.powi(2) / shown).abs() > 1e-3);

    // top-p 0.5 at T = 1: the smallest nucleus of the full distribution, renormalised.
    let (_, r2) =
        probe(&h, Probe { sampler: Sampler { temperature: 1.0, top_p: 0.5 }, ..Probe::new(3, "How are", 5) });
    let r2 = r2.unwrap();
    let mut sorted = p.clone();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let (mut mass, mut n) = (0.0, 0);
    while mass < 0.5 {
        mass += sorted[n];
        n += 1;
    }
    for (i, (t, s)) in r2.top.iter().zip(&r2.sampled).enumerate() {
        let want = if i < n { t.prob / mass } else { 0.0 };
        assert!((s - want).abs() < 1e-9, "rank {i}: {s} vs {want}");
    }

    // The target's probability is its entry in the full distribution.
    let target: TopToken = r.target.unwrap();
    assert_eq!(target.text, "a");
    assert!((target.prob - p[target.id as usize]).abs() < 1e-12);
}

#[test]
fn chat_replies_stream_between_steps_and_a_checkpoint_compares_with_the_live_model() {
    let dir = tempfile::tempdir().unwrap();
    let h = engine::spawn(Device::Cpu);
    h.send(Command::Start { config: Box::new(config(40)), run_dir: dir.path().to_path_buf(), resume: false });
    h.send(Command::Pause);
    let at = wait(&h, |e| if let Event::Paused { step } = e { Some(step) } else { None });

    // A greedy reply: each token is the top of its alternatives, and the text is theirs.
    let messages = vec![Message::user("Hi")];
    let chat = |id: u64, temperature: f64, weights: Weights| ChatRequest {
        id,
        messages: messages.clone(),
        sampler: Sampler { temperature, top_p: 0.9 },
        max_tokens: 6,
        top_k: 3,
        weights,
    };
    h.send(Command::Chat(chat(10, 0.0, Weights::Live)));
    let mut tokens = vec![];
    let (step, text) = wait(&h, |e| match e {
        Event::ChatToken { id: 10, token, alternatives } => {
            assert_eq!(alternatives.len(), 3);
            assert_eq!(alternatives[0].id, token.id, "greedy draws the top token");
            assert!((alternatives[0].prob - token.prob).abs() < 1e-12);
            tokens.push(token);
            None
        }
        Event::ChatDone { id: 10, step, result } => Some((step, result.unwrap())),
        _ => None,
    });
    assert_eq!(step, at, "written between two steps, while paused");
    assert!(!tokens.is_empty() && tokens.len() <= 6);
    let joined: String = tokens.iter().map(|t| t.text.as_str()).collect();
    assert_eq!(text, joined);

    // The live distribution now, saved as a checkpoint; then training moves on.
    let before = full(&h, 20, "How are", Weights::Live);
    h.send(Command::SaveCheckpoint);
    let saved = wait(&h, |e| if let Event::Checkpoint { step, .. } = e { Some(step) } else { None });
    assert_eq!(saved, at);
    h.send(Command::Resume);
    // A chat sent while training runs is answered between two steps.
    h.send(Command::Chat(chat(11, 1.0, Weights::Base)));
    let done_at = wait(&h, |e| match e {
        Event::ChatDone { id: 11, step, result } => {
            assert!(result.is_ok(), "{result:?}");
            Some(step)
        }
        _ => None,
    });
    wait(&h, |e| matches!(e, Event::Step(s) if s.step >= done_at.max(at) + 3).then_some(()));
    h.send(Command::Pause);
    let later = wait(&h, |e| if let Event::Paused { step } = e { Some(step) } else { None });
    assert!(later > at);

    let live = full(&h, 21, "How are", Weights::Live);
    let pinned = full(&h, 22, "How are", Weights::Checkpoint(saved));
    assert!(
        max_diff(&pinned, &before) < 1e-6,
        "the checkpoint is the model as saved: {}",
        max_diff(&pinned, &before)
    );
    assert!(max_diff(&live, &before) > 1e-4, "training changed the live model: {}", max_diff(&live, &before));
    let (_, missing) = probe(&h, Probe { weights: Weights::Checkpoint(999), ..Probe::new(23, "How are", 3) });
    assert!(missing.unwrap_err().contains("checkpoint 999"));
    h.send(Command::Stop { save: true });
    wait(&h, |e| matches!(e, Event::Finished { .. }).then_some(()));

    // The finished run opens for probing: its base with the adapter, as merging them gives.
    h.send(Command::Open(dir.path().to_path_buf()));
    wait(&h, |e| matches!(e, Event::Opened { .. }).then_some(()));
    let opened = full(&h, 31, "How are", Weights::Live);
    let merged = dir.path().join("merged");
    whet::cli::merge_into(&fixture("tiny-llama-gqa"), &dir.path().join("adapter"), &merged).unwrap();
    h.send(Command::Open(merged));
    wait(&h, |e| matches!(e, Event::Opened { .. }).then_some(()));
    let reference = full(&h, 32, "How are", Weights::Live);
    assert!(max_diff(&opened, &reference) < 1e-5, "{}", max_diff(&opened, &reference));
    assert!(max_diff(&opened, &before) > 1e-4, "the run's final weights, not its start");
}
