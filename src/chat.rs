//! Chat templates: the model's own Jinja template, rendered with minijinja plus Python
//! string-method compatibility (`.strip()`, `.startswith()`, … as HF templates use them).

use anyhow::{anyhow, Result};
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

/// Renders `messages` as HF's `apply_chat_template(..., tokenize=False)` does.
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
    env.add_function("raise_exception", |msg: String| -> Result<String, Error> {
        Err(Error::new(ErrorKind::InvalidOperation, msg))
    });
    env.add_template("chat", template).map_err(|e| anyhow!("chat template does not parse: {e}"))?;
    let tmpl = env.get_template("chat").map_err(|e| anyhow!("chat template: {e}"))?;
    tmpl.render(context! {
        messages => messages,
        add_generation_prompt => add_generation_prompt,
        bos_token => bos_token,
        eos_token => eos_token,
    })
    .map_err(|e| anyhow!("chat template failed to render: {e}"))
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
