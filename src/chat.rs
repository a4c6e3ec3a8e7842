//! Chat templates: the model's own Jinja template, rendered with minijinja plus Python
//! string-method compatibility (`.strip()`, `.startswith()`, … as HF templates use them).

use anyhow::{anyhow, bail, Result};
use minijinja::{context, Environment, Error, ErrorKind};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn user(content: &str) -> Self {
        Self { role: "user".into(), content: content.into() }
    }
}

/// The work a template may do for one render (minijinja's fuel: about one unit an
/// instruction). A real chat template over a long conversation uses thousands; nested
/// `range(100000)` loops run out instead of hanging the probe or the run.
pub const FUEL: u64 = 20_000_000;
/// The most text one render may produce.
pub const MAX_OUTPUT: usize = 64 << 20;

/// Renders `messages` as HF's `apply_chat_template(..., tokenize=False)` does, within
/// [`FUEL`] and [`MAX_OUTPUT`]. Errors say "chat template"; callers add where it came from.
pub fn render(
    template: &str,
    messages: &[Message],
    add_generation_prompt: bool,
    bos_token: &str,
    eos_token: &str,
) -> Result<String> {
    let mut env = Environment::new();
    minijinja_contrib::add_to_environment(&mut env);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.set_fuel(Some(FUEL));
    env.add_function("raise_exception", |msg: String| -> Result<String, Error> {
        Err(Error::new(ErrorKind::InvalidOperation, msg))
    });
    env.add_template("chat", template).map_err(|e| anyhow!("chat template does not parse: {e}"))?;
    let tmpl = env.get_template("chat").map_err(|e| anyhow!("chat template: {e}"))?;
    let mut out = Capped(Vec::new());
    let ctx = context! {
        messages => messages,
        add_generation_prompt => add_generation_prompt,
        bos_token => bos_token,
        eos_token => eos_token,
    };
    match tmpl.render_captured_to(ctx, &mut out) {
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::OutOfFuel => {
            bail!("chat template: gave up after {FUEL} steps of work (a loop too deep or too long)")
        }
        Err(e) if out.0.len() >= MAX_OUTPUT => {
            bail!("chat template: renders more than {MAX_OUTPUT} bytes ({e})")
        }
        Err(e) => bail!("chat template failed to render: {e}"),
    }
    String::from_utf8(out.0).map_err(|e| anyhow!("chat template rendered invalid UTF-8: {e}"))
}

/// A writer that refuses to grow past [`MAX_OUTPUT`].
struct Capped(Vec<u8>);

impl std::io::Write for Capped {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.0.len() + buf.len() > MAX_OUTPUT {
            self.0.resize(MAX_OUTPUT, 0); // marks the cause for `render`
            return Err(std::io::Error::other("output limit"));
        }
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_chatml_with_python_string_methods() {
        let t = "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'].strip() + '<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";
        let out = render(t, &[Message::user("  hi  ")], true, "", "").unwrap();
        assert_eq!(out, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
    }

    #[test]
    fn bos_token_and_raise_exception() {
        let t = "{{ bos_token }}{% if messages[0]['role'] != 'user' %}{{ raise_exception('first must be user') }}{% endif %}ok";
        assert_eq!(render(t, &[Message::user("x")], false, "<s>", "</s>").unwrap(), "<s>ok");
        let sys = Message { role: "system".into(), content: "x".into() };
        let err = render(t, &[sys], false, "<s>", "</s>").unwrap_err().to_string();
        assert!(err.contains("first must be user"), "{err}");
    }
}
