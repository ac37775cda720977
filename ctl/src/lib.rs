//! llmctl: the command-line client of llmd. The binary is a thin wrapper around this library so
//! that packaging can generate completions and man pages from the same clap definitions.
