//! Hostile-input corpus: thousands of corrupted GGUF files generated deterministically from
//! small valid ones (truncated at every offset, bytes mutated, every count/length/dimension/
//! offset field set to extreme values, bad alignments, bad type ids, duplicate names,
//! overlapping and out-of-range tensors) go through the parser. Each must return an error (or
//! parse, where the mutation is benign, to something self-consistent), never panic, allocate no
//! more than a small multiple of its size, and the whole corpus must finish in bounded time.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::{Duration, Instant};

use crate::{self as gguf, DataCheck, GgufHeader, GgufWriter, MetadataArray, MetadataValue};
use llmd_quant::GgmlType;

/// Counts the bytes allocated by the current thread, so a parse's peak allocation can be
/// measured.
struct CountingAlloc;

thread_local! {
    /// Bytes currently allocated by this thread (since it started counting).
    static CURRENT: Cell<isize> = const { Cell::new(0) };
    /// Highest value of CURRENT since the last reset.
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn track(delta: isize) {
    // try_with: the thread-locals may be gone while a thread is being torn down.
    let _ = CURRENT.try_with(|c| {
        let v = c.get() + delta;
        c.set(v);
        let _ = PEAK.try_with(|p| {
            if v > p.get() {
                p.set(v)
            }
        });
    });
}

// SAFETY: forwards every call to the system allocator unchanged; only counts sizes.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        track(layout.size() as isize);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        track(-(layout.size() as isize));
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        track(new_size as isize - layout.size() as isize);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// Peak bytes allocated while running `f` on this thread.
fn peak_alloc<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = CURRENT.with(Cell::get);
    PEAK.with(|p| p.set(base));
    let out = f();
    let peak = PEAK.with(Cell::get) - base;
    (out, peak.max(0) as usize)
}

/// The test kit's seeded generator, so the corpus is the same on every run.
use llmd_testkit::Rng;

/// The valid seed files: a model-like file with tokenizer arrays, one with every value type
/// and a custom alignment, and a minimal one.
fn seeds() -> Vec<Vec<u8>> {
    let mut out = Vec::new();

    let mut w = GgufWriter::new();
    w.add_metadata(
        "general.architecture",
        MetadataValue::String("llama".into()),
    )
    .unwrap();
    w.add_metadata("llama.block_count", MetadataValue::U32(1))
        .unwrap();
    w.add_metadata(
        "tokenizer.ggml.tokens",
        MetadataValue::Array(MetadataArray::String(vec![
            "<s>".into(),
            "a".into(),
            "bc".into(),
        ])),
    )
    .unwrap();
    w.add_metadata(
        "tokenizer.ggml.scores",
        MetadataValue::Array(MetadataArray::F32(vec![0.0, -1.0, -2.0])),
    )
    .unwrap();
    w.add_tensor("token_embd.weight", &[32, 3], GgmlType::Q8_0)
        .unwrap();
    w.add_tensor("blk.0.attn_q.weight", &[256, 2], GgmlType::Q4_K)
        .unwrap();
    w.add_tensor("output_norm.weight", &[32], GgmlType::F32)
        .unwrap();
    out.push(finish(w));

    let mut w = GgufWriter::new();
    w.set_alignment(64).unwrap();
    let values = [
        MetadataValue::U8(1),
        MetadataValue::I8(-1),
        MetadataValue::U16(2),
        MetadataValue::I16(-2),
        MetadataValue::U32(3),
        MetadataValue::I32(-3),
        MetadataValue::F32(0.5),
        MetadataValue::Bool(true),
        MetadataValue::String("s".into()),
        MetadataValue::U64(4),
        MetadataValue::I64(-4),
        MetadataValue::F64(0.25),
        MetadataValue::Array(MetadataArray::Bool(vec![true, false])),
        MetadataValue::Array(MetadataArray::U16(vec![1, 2])),
        MetadataValue::Array(MetadataArray::Array(vec![
            MetadataArray::I8(vec![1]),
            MetadataArray::String(vec!["x".into()]),
        ])),
    ];
    for (i, v) in values.into_iter().enumerate() {
        w.add_metadata(format!("k{i:02}"), v).unwrap();
    }
    w.add_tensor("t.aaaa", &[4, 2, 2, 2], GgmlType::F16)
        .unwrap();
    w.add_tensor("t.bbbb", &[64], GgmlType::Q5_0).unwrap();
    w.add_tensor("t.cccc", &[256], GgmlType::Q6_K).unwrap();
    out.push(finish(w));

    let mut w = GgufWriter::new();
    w.add_tensor("x", &[1], GgmlType::F32).unwrap();
    out.push(finish(w));
    out
}

fn finish(w: GgufWriter) -> Vec<u8> {
    let datas: Vec<Vec<u8>> = w
        .tensors()
        .iter()
        .map(|t| (0..t.n_bytes).map(|i| (i % 251) as u8).collect())
        .collect();
    let mut s = w.start(Vec::new()).unwrap();
    for d in &datas {
        s.write_tensor(d).unwrap();
    }
    s.finish().unwrap()
}

/// The kind of a fixed-width field in a valid file, found by walking its structure.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Field {
    /// The tensor or metadata count in the fixed header.
    Count,
    /// A string's byte length.
    StrLen,
    /// A metadata value type tag (or array element type).
    ValueType,
    /// An array's element count.
    ArrayLen,
    /// A tensor's dimension count.
    NDims,
    /// A tensor dimension.
    Dim,
    /// A tensor type id.
    TensorType,
    /// A tensor's data offset.
    TensorOffset,
}

/// Every fixed-width field of a valid file: (offset, width in bytes, kind).
fn fields(bytes: &[u8]) -> Vec<(usize, usize, Field)> {
    let u32_at = |p: usize| u32::from_le_bytes(bytes[p..p + 4].try_into().unwrap());
    let u64_at = |p: usize| u64::from_le_bytes(bytes[p..p + 8].try_into().unwrap());
    let mut out = vec![(8, 8, Field::Count), (16, 8, Field::Count)];
    let n_tensors = u64_at(8);
    let n_kv = u64_at(16);
    let mut p = 24;
    fn value(
        p: &mut usize,
        ty: u32,
        out: &mut Vec<(usize, usize, Field)>,
        u32_at: &dyn Fn(usize) -> u32,
        u64_at: &dyn Fn(usize) -> u64,
    ) {
        match ty {
            0 | 1 | 7 => *p += 1,
            2 | 3 => *p += 2,
            4..=6 => *p += 4,
            10..=12 => *p += 8,
            8 => {
                out.push((*p, 8, Field::StrLen));
                *p += 8 + u64_at(*p) as usize;
            }
            9 => {
                let elem = u32_at(*p);
                out.push((*p, 4, Field::ValueType));
                out.push((*p + 4, 8, Field::ArrayLen));
                let n = u64_at(*p + 4);
                *p += 12;
                for _ in 0..n {
                    value(p, elem, out, u32_at, u64_at);
                }
            }
            _ => unreachable!("seed files are valid"),
        }
    }
    for _ in 0..n_kv {
        out.push((p, 8, Field::StrLen));
        p += 8 + u64_at(p) as usize;
        out.push((p, 4, Field::ValueType));
        let ty = u32_at(p);
        p += 4;
        value(&mut p, ty, &mut out, &u32_at, &u64_at);
    }
    for _ in 0..n_tensors {
        out.push((p, 8, Field::StrLen));
        p += 8 + u64_at(p) as usize;
        out.push((p, 4, Field::NDims));
        let nd = u32_at(p) as usize;
        p += 4;
        for _ in 0..nd {
            out.push((p, 8, Field::Dim));
            p += 8;
        }
        out.push((p, 4, Field::TensorType));
        out.push((p + 4, 8, Field::TensorOffset));
        p += 12;
    }
    out
}

/// What a corpus file must do.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// Must be rejected.
    Err,
    /// May parse or be rejected (benign mutations exist).
    Either,
}

fn put(bytes: &mut [u8], at: usize, width: usize, v: u64) {
    bytes[at..at + width].copy_from_slice(&v.to_le_bytes()[..width]);
}

/// Generates the corpus.
fn corpus() -> Vec<(String, Vec<u8>, Expect)> {
    let mut out = Vec::new();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for (si, seed) in seeds().into_iter().enumerate() {
        let header = gguf::parse(&seed).unwrap();
        let fs = fields(&seed);

        // Truncated at every offset of the header and at every tensor boundary (a complete
        // file is required, so each must fail).
        for cut in 0..header.data_offset as usize {
            out.push((
                format!("seed{si} cut at {cut}"),
                seed[..cut].to_vec(),
                Expect::Err,
            ));
        }
        for t in &header.tensors {
            for cut in [t.data_start as usize + 1, t.data_end() as usize - 1] {
                out.push((
                    format!("seed{si} cut at {cut}"),
                    seed[..cut].to_vec(),
                    Expect::Err,
                ));
            }
        }

        // Every field set to extreme values.
        for &(at, width, kind) in &fs {
            let extremes: &[u64] = &[
                u64::MAX,
                u64::MAX / 2,
                1 << 63,
                1 << 32,
                u32::MAX as u64,
                seed.len() as u64,
                seed.len() as u64 + 1,
                0,
                1,
            ];
            for &v in extremes {
                let mut b = seed.clone();
                put(&mut b, at, width, v);
                let expect = match kind {
                    // Huge counts and lengths cannot fit.
                    Field::Count | Field::StrLen | Field::ArrayLen | Field::Dim
                        if v >= seed.len() as u64 =>
                    {
                        Expect::Err
                    }
                    Field::NDims if v == 0 || v > 4 => Expect::Err,
                    Field::Dim if v == 0 => Expect::Err,
                    Field::TensorOffset if v >= seed.len() as u64 => Expect::Err,
                    _ => Expect::Either,
                };
                out.push((format!("seed{si} {kind:?}@{at}={v}"), b, expect));
            }
        }

        // Every type id for every value-type and tensor-type field.
        for &(at, _, kind) in &fs {
            let ids: Vec<u32> = match kind {
                Field::ValueType => (0..16).chain([u32::MAX]).collect(),
                Field::TensorType => (0..42).chain([u32::MAX, 1 << 31]).collect(),
                Field::NDims => vec![5, 6, 255, u32::MAX],
                _ => continue,
            };
            for id in ids {
                let mut b = seed.clone();
                put(&mut b, at, 4, u64::from(id));
                let expect = match kind {
                    Field::NDims => Expect::Err,
                    Field::TensorType if llmd_quant::GgmlType::from_id(id).is_err() => Expect::Err,
                    Field::ValueType if id > 12 => Expect::Err,
                    _ => Expect::Either,
                };
                out.push((format!("seed{si} {kind:?}@{at} id {id}"), b, expect));
            }
        }

        // Tensor offsets moved onto each other (overlap), misaligned, out of range.
        let offs: Vec<usize> = fs
            .iter()
            .filter(|f| f.2 == Field::TensorOffset)
            .map(|f| f.0)
            .collect();
        for (i, &a) in offs.iter().enumerate() {
            for (j, &b) in offs.iter().enumerate() {
                if i != j {
                    let mut m = seed.clone();
                    m.copy_within(b..b + 8, a);
                    out.push((
                        format!("seed{si} tensor {i} offset = tensor {j}'s"),
                        m,
                        Expect::Err,
                    ));
                }
            }
            for v in [1u64, 8, 16, 31, 33] {
                let mut m = seed.clone();
                let old = u64::from_le_bytes(m[a..a + 8].try_into().unwrap());
                put(&mut m, a, 8, old + v);
                out.push((format!("seed{si} tensor {i} offset +{v}"), m, Expect::Err));
            }
        }

        // Random byte mutations (1 to 4 bytes), in the header and anywhere.
        for n in 0..300 {
            let mut b = seed.clone();
            let limit = if n % 2 == 0 {
                header.data_offset as usize
            } else {
                b.len()
            };
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(limit);
                b[at] = match rng.below(3) {
                    0 => b[at] ^ (1 << rng.below(8)),
                    1 => 0xFF,
                    _ => rng.next_u64() as u8,
                };
            }
            out.push((format!("seed{si} random mutation {n}"), b, Expect::Either));
        }

        // Random garbage appended, and random-length prefixes of garbage.
        for n in 0..20 {
            let mut b = seed.clone();
            b.extend((0..rng.below(100)).map(|_| rng.next_u64() as u8));
            out.push((format!("seed{si} trailing garbage {n}"), b, Expect::Either));
        }
    }

    // Specific structural corruptions on seed 1 (which has equal-length tensor names and
    // an alignment key).
    let seed = &seeds()[1];
    let fs = fields(seed);
    let header = gguf::parse(seed).unwrap();
    let name_at: Vec<usize> = fs
        .iter()
        .filter(|f| f.2 == Field::StrLen)
        .map(|f| f.0)
        .collect();
    // Duplicate tensor names: make "t.bbbb" read "t.aaaa".
    let mut b = seed.clone();
    let first = header.tensors[0].info_offset as usize;
    let second = header.tensors[1].info_offset as usize;
    b.copy_within(first + 8..first + 14, second + 8);
    out.push(("duplicate tensor name".into(), b, Expect::Err));
    // Duplicate metadata key: make "k01" read "k00".
    let k1 = name_at
        .iter()
        .find(|&&at| &seed[at + 8..at + 11] == b"k01")
        .unwrap();
    let mut b = seed.clone();
    b[k1 + 8 + 2] = b'0';
    out.push(("duplicate key".into(), b, Expect::Err));
    // Bad alignments.
    let align_value = header.metadata.entry("general.alignment").unwrap().offset as usize + 4;
    for a in [0u64, 3, 48, 1 << 31, u32::MAX as u64] {
        let mut b = seed.clone();
        put(&mut b, align_value, 4, a);
        let expect = if a == 1 << 31 {
            Expect::Either
        } else {
            Expect::Err
        };
        out.push((format!("alignment {a}"), b, expect));
    }
    out
}

/// Invariants of anything the parser accepts.
fn check_accepted(h: &GgufHeader, len: usize, name: &str) {
    assert!(h.version == 2 || h.version == 3, "{name}");
    assert!(h.alignment.is_power_of_two(), "{name}");
    assert_eq!(h.data_offset % h.alignment, 0, "{name}");
    assert!(
        h.data_offset <= len as u64 || h.tensors.is_empty(),
        "{name}"
    );
    for t in &h.tensors {
        assert!(!t.dims.is_empty() && t.dims.len() <= 4, "{name}");
        assert!(t.dims.iter().all(|&d| d > 0), "{name}");
        assert_eq!(
            t.ty.row_bytes(t.dims[0]).unwrap() * t.n_rows(),
            t.n_bytes,
            "{name}"
        );
        assert!(t.data_end() <= len as u64, "{name}");
        assert_eq!(t.data_start % h.alignment, 0, "{name}");
    }
}

#[test]
fn corpus_of_corrupted_files_never_panics() {
    let corpus = corpus();
    assert!(
        corpus.len() >= 1000,
        "corpus has only {} files",
        corpus.len()
    );
    let start = Instant::now();
    let (mut rejected, mut accepted) = (0, 0);
    for (name, bytes, expect) in &corpus {
        let t0 = Instant::now();
        let result = std::panic::catch_unwind(|| {
            peak_alloc(|| {
                let complete = gguf::parse(bytes);
                let partial = GgufHeader::parse_with(bytes, DataCheck::HeaderOnly);
                (complete, partial)
            })
        });
        let ((complete, partial), peak) = match result {
            Ok(r) => r,
            Err(_) => panic!("parser panicked on corpus file {name:?}"),
        };
        assert!(
            t0.elapsed() < Duration::from_millis(200),
            "{name}: took {:?}",
            t0.elapsed()
        );
        // Allocation stays within a small multiple of the input (plus a fixed allowance for
        // the error message and hash tables).
        assert!(
            peak <= 64 * bytes.len() + 64 * 1024,
            "{name}: allocated {peak} bytes for a {}-byte input",
            bytes.len()
        );
        match &complete {
            Ok(h) => {
                assert_eq!(
                    *expect,
                    Expect::Either,
                    "{name}: accepted but must be rejected"
                );
                check_accepted(h, bytes.len(), name);
                accepted += 1;
            }
            Err(e) => {
                assert!(!e.to_string().is_empty());
                rejected += 1;
            }
        }
        // Header-only parsing accepts a superset: if the complete parse succeeded, so must it.
        if complete.is_ok() {
            assert!(
                partial.is_ok(),
                "{name}: header-only parse failed where full succeeded"
            );
        }
    }
    println!(
        "corpus: {} files, {rejected} rejected, {accepted} accepted, {:?}",
        corpus.len(),
        start.elapsed()
    );
    assert!(rejected > corpus.len() / 2);
    assert!(start.elapsed() < Duration::from_secs(30));
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = Rng(42);
    for n in 0..2000 {
        let len = rng.below(512);
        let mut bytes: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        // Half of them with a valid magic and version so parsing goes deeper.
        if n % 2 == 0 && len >= 8 {
            bytes[..4].copy_from_slice(b"GGUF");
            bytes[4..8].copy_from_slice(&3u32.to_le_bytes());
        }
        let result = std::panic::catch_unwind(|| gguf::parse(&bytes).is_ok());
        assert!(result.is_ok(), "panicked on random input {n}");
    }
}
