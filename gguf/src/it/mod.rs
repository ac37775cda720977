//! The GGUF crate's tests of the whole reader and writer, run in the crate's one test binary
//! beside the unit tests: the reader on hand-made and hostile files
//! (`reader`, `corpus`), llama.cpp's `gguf` package reading what the writer and the synthetic
//! models write (`python`), and a real model's every tensor dequantized like the package does
//! (`real_dequant`).

mod corpus;
mod python;
mod reader;
mod real_dequant;
