//! The CPU kernels' integration tests, in one binary: dot products (`cpu_dot`), the threaded
//! matrix multiply (`cpu_matmul`), the packed weight layout (`cpu_packed`), row operations
//! (`cpu_ops`), attention by query tiles (`cpu_attention_tile`) and the thread pool
//! (`cpu_pool`); `cpu_common` holds what they share.

mod cpu_attention_tile;
mod cpu_common;
mod cpu_dot;
mod cpu_matmul;
mod cpu_ops;
mod cpu_packed;
mod cpu_pool;
