//! "Did you mean …?": the nearest known word to a misspelt key or value.

/// The closest of `options` to `word` by edit distance, if it is close enough to be a typo.
pub fn suggest<'a>(word: &str, options: &[&'a str]) -> Option<&'a str> {
    options
        .iter()
        .map(|o| (levenshtein(word, o), *o))
        .filter(|(d, o)| *d <= 2.max(o.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, o)| o)
}

/// ` (did you mean "x"?)`, or nothing when no option is close.
pub fn did_you_mean(word: &str, options: &[&str]) -> String {
    suggest(word, options).map(|s| format!(" (did you mean {s:?}?)")).unwrap_or_default()
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            cur.push((prev[j] + usize::from(ca != *cb)).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Turns serde's "unknown field `x`, expected one of `a`, `b`" into a message with a guess.
pub fn add_suggestion(msg: &str) -> Option<String> {
    let start = msg.find("unknown field `")? + "unknown field `".len();
    let field = &msg[start..start + msg[start..].find('`')?];
    let expected = &msg[msg.find("expected")?..];
    let options: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
    let guess = suggest(field, &options)?;
    Some(format!("{msg}\ndid you mean `{guess}` instead of `{field}`?"))
}
