//! The tokenizer crate's tests against references, run in the crate's one test binary beside
//! the unit tests: real vocabularies tokenized exactly as
//! llama.cpp does (`reference`) and real chat templates rendered exactly as jinja2 does (`chat`).

mod chat;
mod reference;
