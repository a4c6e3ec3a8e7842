//! Tokenizers rebuilt from GGUF metadata, against the tokenizer the vocabulary came from.
//! SentencePiece: scripts/reference/make_spm_gguf.py (reference ids from sentencepiece itself).
//! Byte-level BPE (SmolLM2): tests/default_model.rs.

mod common;

use common::*;
use whet::load::gguf_file::GgufFile;
use whet::load::gguf_tokenizer;

#[test]
fn sentencepiece_bpe_matches_sentencepiece() {
    let g = GgufFile::open(&fixture("tiny-spm.gguf")).unwrap();
    let tok = gguf_tokenizer::tokenizer(&g).unwrap();
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("tiny-spm.json")).unwrap()).unwrap();
    for case in cases.as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> =
            case["ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
        let got = tok.encode(text, true).unwrap().get_ids().to_vec();
        assert_eq!(got, want, "ids of {text:?}");
        assert_eq!(tok.decode(&got, true).unwrap(), text, "round trip of {text:?}");
    }
    let sp = gguf_tokenizer::specials(&g);
    assert_eq!((sp.bos, sp.eos), (Some(1), Some(2)));
}
