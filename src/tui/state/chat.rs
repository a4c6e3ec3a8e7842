//! The explorer's chat mode: a conversation with the model being trained. The engine writes
//! each reply whole between two training steps and streams its tokens, each with the top-k
//! alternatives at its position, which the explorer shows for the selected token.

use crate::chat::Message;
use crate::engine::protocol::{ChatRequest, Weights};
use crate::engine::Command;
use crate::logits::{Sampler, TopToken};

/// The longest reply asked for.
pub const MAX_REPLY: usize = 128;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reply {
    pub id: u64,
    /// Each token drawn, with the alternatives at its position.
    pub tokens: Vec<(TopToken, Vec<TopToken>)>,
    pub done: bool,
    pub error: Option<String>,
    /// The training step the reply was written at.
    pub step: u64,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Conversation {
    pub on: bool,
    /// Greedy replies; otherwise sampled with the explorer's temperature and top-p.
    pub greedy: bool,
    /// The turns so far (the reply being written is not among them until it is done).
    pub messages: Vec<Message>,
    pub reply: Option<Reply>,
    /// The reply token whose alternatives are shown.
    pub selected: usize,
    /// The other mode's prompt: the probe prompt while chatting, the unsent message while not.
    pub stash: String,
}

impl Conversation {
    /// Sends `text` as the user's turn: the request for the reply.
    pub fn send(&mut self, text: &str, id: u64, sampler: Sampler, top_k: usize, weights: Weights) -> Command {
        self.messages.push(Message::user(text));
        self.reply = Some(Reply { id, ..Default::default() });
        self.selected = 0;
        let sampler = if self.greedy { Sampler { temperature: 0.0, ..sampler } } else { sampler };
        Command::Chat(ChatRequest {
            id,
            messages: self.messages.clone(),
            sampler,
            max_tokens: MAX_REPLY,
            top_k,
            weights,
        })
    }

    /// Waiting for a reply.
    pub fn busy(&self) -> bool {
        self.reply.as_ref().is_some_and(|r| !r.done)
    }

    pub fn on_token(&mut self, id: u64, token: TopToken, alternatives: Vec<TopToken>) {
        if let Some(r) = self.reply.as_mut().filter(|r| r.id == id && !r.done) {
            r.tokens.push((token, alternatives));
            // Follow the newest token while it streams.
            self.selected = r.tokens.len() - 1;
        }
    }

    /// The reply is complete: it joins the conversation.
    pub fn on_done(&mut self, id: u64, step: u64, result: Result<String, String>) {
        let Some(r) = self.reply.as_mut().filter(|r| r.id == id) else { return };
        r.done = true;
        r.step = step;
        match result {
            Ok(text) => self.messages.push(Message { role: "assistant".into(), content: text }),
            Err(e) => {
                r.error = Some(e);
                // The user's turn got no answer: take it back, so it can be sent again.
                self.messages.pop();
            }
        }
    }

    pub fn move_selection(&mut self, by: isize) {
        let n = self.reply.as_ref().map_or(0, |r| r.tokens.len());
        if n > 0 {
            self.selected = (self.selected as isize + by).clamp(0, n as isize - 1) as usize;
        }
    }

    pub fn clear(&mut self) {
        self.messages.clear();
        self.reply = None;
        self.selected = 0;
    }
}
