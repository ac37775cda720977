//! The tokenizer crate's integration tests, in one binary: real vocabularies tokenized exactly as
//! llama.cpp does (`reference`) and real chat templates rendered exactly as jinja2 does (`chat`).

mod chat;
mod reference;
