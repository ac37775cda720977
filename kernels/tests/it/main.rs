//! The CPU kernels' integration tests, in one binary: dot products (`cpu_dot`), the threaded
//! matrix multiply (`cpu_matmul`), row operations (`cpu_ops`) and the thread pool (`cpu_pool`);
//! `cpu_common` holds what they share.

mod cpu_common;
mod cpu_dot;
mod cpu_matmul;
mod cpu_ops;
mod cpu_pool;
