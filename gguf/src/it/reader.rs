//! Reader and writer round trips: every metadata value type (nested arrays included), tensor
//! infos and data views, alignment, header-only opening of truncated files, specific hostile
//! inputs with the error they must give, and typed model/tokenizer metadata.

use crate::{
    self as gguf, DataCheck, GgufError, GgufFile, GgufWriter, MetadataArray, MetadataError,
    MetadataValue, ModelDescription, NormKind, SlidingWindowPattern, TokenizerMetadata,
};
use llmd_quant::GgmlType;

/// Every scalar and array value type, plus a nested array.
fn all_values() -> Vec<(&'static str, MetadataValue)> {
    vec![
        ("t.u8", MetadataValue::U8(200)),
        ("t.i8", MetadataValue::I8(-100)),
        ("t.u16", MetadataValue::U16(60000)),
        ("t.i16", MetadataValue::I16(-30000)),
        ("t.u32", MetadataValue::U32(4_000_000_000)),
        ("t.i32", MetadataValue::I32(-2_000_000_000)),
        ("t.f32", MetadataValue::F32(1.5e-6)),
        ("t.bool", MetadataValue::Bool(true)),
        ("t.string", MetadataValue::String("héllo ▁wörld".into())),
        ("t.u64", MetadataValue::U64(u64::MAX - 1)),
        ("t.i64", MetadataValue::I64(i64::MIN + 1)),
        ("t.f64", MetadataValue::F64(-2.5e300)),
        (
            "a.u8",
            MetadataValue::Array(MetadataArray::U8(vec![1, 2, 3])),
        ),
        ("a.i8", MetadataValue::Array(MetadataArray::I8(vec![-1, 2]))),
        (
            "a.u16",
            MetadataValue::Array(MetadataArray::U16(vec![7, 65535])),
        ),
        ("a.i16", MetadataValue::Array(MetadataArray::I16(vec![-7]))),
        (
            "a.u32",
            MetadataValue::Array(MetadataArray::U32(vec![1, 2, 3, 4])),
        ),
        (
            "a.i32",
            MetadataValue::Array(MetadataArray::I32(vec![-1, 6])),
        ),
        (
            "a.f32",
            MetadataValue::Array(MetadataArray::F32(vec![0.5, -0.25])),
        ),
        (
            "a.bool",
            MetadataValue::Array(MetadataArray::Bool(vec![true, false, true])),
        ),
        (
            "a.string",
            MetadataValue::Array(MetadataArray::String(vec![
                "a".into(),
                "".into(),
                "ü".into(),
            ])),
        ),
        (
            "a.u64",
            MetadataValue::Array(MetadataArray::U64(vec![u64::MAX])),
        ),
        (
            "a.i64",
            MetadataValue::Array(MetadataArray::I64(vec![i64::MIN])),
        ),
        (
            "a.f64",
            MetadataValue::Array(MetadataArray::F64(vec![1e-300])),
        ),
        ("a.empty", MetadataValue::Array(MetadataArray::F32(vec![]))),
        (
            "a.nested",
            MetadataValue::Array(MetadataArray::Array(vec![
                MetadataArray::U32(vec![1, 2]),
                MetadataArray::String(vec!["x".into()]),
                MetadataArray::Array(vec![MetadataArray::Bool(vec![false])]),
            ])),
        ),
    ]
}

/// Deterministic filler bytes for tensor data.
fn filler(n: u64, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// A small valid file: all value types, four tensors of different types, given alignment.
fn sample(alignment: Option<u32>) -> (Vec<u8>, Vec<Vec<u8>>) {
    let mut w = GgufWriter::new();
    if let Some(a) = alignment {
        w.set_alignment(a).unwrap();
    }
    for (k, v) in all_values() {
        w.add_metadata(k, v).unwrap();
    }
    w.add_tensor("a.weight", &[8, 3], GgmlType::F32).unwrap();
    w.add_tensor("b.weight", &[64, 2, 1], GgmlType::Q8_0)
        .unwrap();
    w.add_tensor("c.weight", &[256], GgmlType::Q4_K).unwrap();
    w.add_tensor("d", &[2, 1, 1, 3], GgmlType::F16).unwrap();
    let datas: Vec<Vec<u8>> = w
        .tensors()
        .iter()
        .enumerate()
        .map(|(i, t)| filler(t.n_bytes, i as u8))
        .collect();
    let mut s = w.start(Vec::new()).unwrap();
    for d in &datas {
        s.write_tensor(d).unwrap();
    }
    (s.finish().unwrap(), datas)
}

#[test]
fn round_trip_every_value_type_and_tensor() {
    for alignment in [None, Some(1), Some(64), Some(4096)] {
        let (bytes, datas) = sample(alignment);
        let f = GgufFile::from_bytes(bytes, DataCheck::Complete).unwrap();
        assert_eq!(f.version(), 3);
        assert_eq!(f.alignment(), u64::from(alignment.unwrap_or(32)));
        assert_eq!(f.data_offset() % f.alignment(), 0);
        for (k, v) in all_values() {
            assert_eq!(f.metadata().get(k), Some(&v), "key {k}");
        }
        assert_eq!(f.tensors().len(), 4);
        let b = f.tensor("b.weight").unwrap();
        assert_eq!(b.dims, vec![64, 2, 1]);
        assert_eq!(b.ty, GgmlType::Q8_0);
        assert_eq!(b.n_bytes, 2 * 2 * 34);
        assert_eq!(b.n_elements(), 128);
        for (t, d) in f.tensors().iter().zip(&datas) {
            assert_eq!(f.tensor_data(t).unwrap(), &d[..], "tensor {}", t.name);
            assert_eq!(t.data_start % f.alignment(), 0);
        }
        assert!(f.is_complete());
        f.check_supported().unwrap();
    }
}

#[test]
fn open_from_disk_maps_the_file() {
    let (bytes, datas) = sample(None);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    std::fs::write(&path, &bytes).unwrap();
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.tensor_data_by_name("c.weight").unwrap(), &datas[2][..]);
    assert!(matches!(
        f.tensor_data_by_name("nope"),
        Err(GgufError::NoSuchTensor(_))
    ));
    // An empty file is an error, not a crash.
    let empty = dir.path().join("empty.gguf");
    std::fs::write(&empty, b"").unwrap();
    assert!(matches!(GgufFile::open(&empty), Err(GgufError::BadMagic)));
    assert!(matches!(
        GgufFile::open(dir.path().join("missing.gguf")),
        Err(GgufError::Io { .. })
    ));
}

#[test]
fn unmapped_open_reads_what_the_map_holds_until_the_file_changes() {
    let (bytes, datas) = sample(None);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    std::fs::write(&path, &bytes).unwrap();
    let f = GgufFile::open_unmapped(&path, DataCheck::Complete).unwrap();
    assert!(!f.is_mapped());
    let mapped = GgufFile::open(&path).unwrap();
    assert_eq!(f.tensors(), mapped.tensors());
    assert_eq!(f.metadata().len(), mapped.metadata().len());
    let c = f.tensor("c.weight").unwrap();
    let mut got = vec![0u8; c.n_bytes as usize];
    f.read_tensor_data(c, &mut got).unwrap();
    assert_eq!(got, datas[2]);
    assert!(matches!(f.tensor_data(c), Err(GgufError::NotMapped { .. })));
    // Truncated under the reader: an error naming the change, never a crash.
    let f = GgufFile::open_unmapped(&path, DataCheck::Complete).unwrap();
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(10).unwrap();
    let err = f.read_tensor_data(c, &mut got).unwrap_err();
    assert!(matches!(err, GgufError::Changed { .. }), "{err}");
    assert!(f.check_unchanged().is_err());
    // Partial files open header-only, unmapped too.
    std::fs::write(&path, &bytes[..(c.data_start + 10) as usize]).unwrap();
    let f = GgufFile::open_unmapped(&path, DataCheck::HeaderOnly).unwrap();
    assert_eq!(f.missing_tensors().count(), 2);
    assert!(GgufFile::open_unmapped(&path, DataCheck::Complete).is_err());
    std::fs::write(&path, b"").unwrap();
    assert!(matches!(
        GgufFile::open_unmapped(&path, DataCheck::Complete),
        Err(GgufError::BadMagic)
    ));
}

#[test]
fn header_only_open_reports_missing_tensors() {
    let (bytes, datas) = sample(None);
    let full = GgufFile::from_bytes(bytes.clone(), DataCheck::Complete).unwrap();
    let c = full.tensor("c.weight").unwrap().clone();
    // Cut the file in the middle of tensor c: a and b are present, c and d are not.
    let cut = (c.data_start + 10) as usize;
    let partial = bytes[..cut].to_vec();
    let err = gguf::parse(&partial).unwrap_err();
    assert!(
        matches!(err, GgufError::TensorOutOfRange { ref name, .. } if name == "c.weight"),
        "{err}"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("partial.gguf");
    std::fs::write(&path, &partial).unwrap();
    let f = GgufFile::open_header(&path).unwrap();
    assert!(!f.is_complete());
    let missing: Vec<&str> = f.missing_tensors().map(|t| t.name.as_str()).collect();
    assert_eq!(missing, ["c.weight", "d"]);
    assert_eq!(f.tensor_data_by_name("b.weight").unwrap(), &datas[1][..]);
    let err = f.tensor_data_by_name("c.weight").unwrap_err();
    assert!(matches!(err, GgufError::TensorDataMissing { .. }), "{err}");
    // A cut inside the header itself is an error even header-only.
    let header_cut = bytes[..100].to_vec();
    assert!(matches!(
        GgufFile::from_bytes(header_cut, DataCheck::HeaderOnly),
        Err(GgufError::Truncated { .. } | GgufError::CountTooLarge { .. })
    ));
    // The writer's header alone (no data at all) opens header-only.
    let mut w = GgufWriter::new();
    w.add_tensor("big", &[4096, 4096], GgmlType::Q4_K).unwrap();
    let header = w.header_bytes();
    let f = GgufFile::from_bytes(header, DataCheck::HeaderOnly).unwrap();
    assert_eq!(f.missing_tensors().count(), 1);
    assert_eq!(w.file_size(), f.data_offset() + 4096 * 4096 / 256 * 144);
}

/// Builds a header by hand: version, kv pairs as raw bytes, tensor infos as raw bytes.
fn raw(version: u32, n_tensors: u64, kvs: &[Vec<u8>], infos: &[Vec<u8>]) -> Vec<u8> {
    let mut out = b"GGUF".to_vec();
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&n_tensors.to_le_bytes());
    out.extend_from_slice(&(kvs.len() as u64).to_le_bytes());
    for kv in kvs {
        out.extend_from_slice(kv);
    }
    for i in infos {
        out.extend_from_slice(i);
    }
    out
}

fn s(x: &str) -> Vec<u8> {
    let mut v = (x.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(x.as_bytes());
    v
}

fn kv_u32(key: &str, v: u32) -> Vec<u8> {
    let mut out = s(key);
    out.extend_from_slice(&4u32.to_le_bytes());
    out.extend_from_slice(&v.to_le_bytes());
    out
}

fn info(name: &str, dims: &[u64], ty: u32, offset: u64) -> Vec<u8> {
    let mut out = s(name);
    out.extend_from_slice(&(dims.len() as u32).to_le_bytes());
    for d in dims {
        out.extend_from_slice(&d.to_le_bytes());
    }
    out.extend_from_slice(&ty.to_le_bytes());
    out.extend_from_slice(&offset.to_le_bytes());
    out
}

fn with_data(mut header: Vec<u8>, data: usize) -> Vec<u8> {
    let padded = header.len().div_ceil(32) * 32;
    header.resize(padded + data, 0);
    header
}

#[test]
fn specific_hostile_inputs_give_precise_errors() {
    use GgufError as E;
    let check = |bytes: Vec<u8>, pred: &dyn Fn(&GgufError) -> bool| {
        let err = gguf::parse(&bytes).expect_err("must fail");
        assert!(pred(&err), "unexpected error: {err}");
        err.to_string()
    };
    check(b"GGU".to_vec(), &|e| matches!(e, E::BadMagic));
    check(b"GGML\x03\0\0\0".to_vec(), &|e| matches!(e, E::BadMagic));
    let msg = check(raw(1, 0, &[], &[]), &|e| {
        matches!(e, E::UnsupportedVersion { version: 1 })
    });
    assert!(msg.contains("version 1"), "{msg}");
    check(raw(0x0300_0000, 0, &[], &[]), &|e| {
        matches!(e, E::BigEndian)
    });
    // Counts far larger than the file.
    let mut huge = raw(3, 0, &[], &[]);
    huge[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
    check(huge, &|e| matches!(e, E::CountTooLarge { .. }));
    let mut huge = raw(3, 0, &[], &[]);
    huge[8..16].copy_from_slice(&(1u64 << 40).to_le_bytes());
    check(huge, &|e| matches!(e, E::CountTooLarge { .. }));
    // A string length larger than the file.
    let mut kv = (u64::MAX).to_le_bytes().to_vec();
    kv.extend_from_slice(b"abcdefghijklmnop");
    check(raw(3, 0, &[kv], &[]), &|e| {
        matches!(e, E::Truncated { offset: 32, .. })
    });
    // An array count larger than the file.
    let mut kv = s("arr");
    kv.extend_from_slice(&9u32.to_le_bytes());
    kv.extend_from_slice(&8u32.to_le_bytes());
    kv.extend_from_slice(&(1u64 << 59).to_le_bytes());
    let msg = check(raw(3, 0, &[kv], &[]), &|e| {
        matches!(e, E::CountTooLarge { .. })
    });
    assert!(msg.contains("\"arr\""), "{msg}");
    // Unknown value type, invalid bool, invalid UTF-8, duplicate key.
    let mut kv = s("k");
    kv.extend_from_slice(&13u32.to_le_bytes());
    check(raw(3, 0, &[kv], &[]), &|e| {
        matches!(e, E::UnknownValueType { type_id: 13, .. })
    });
    let mut kv = s("k");
    kv.extend_from_slice(&7u32.to_le_bytes());
    kv.push(2);
    check(raw(3, 0, &[kv], &[]), &|e| {
        matches!(e, E::InvalidBool { value: 2, .. })
    });
    let mut kv = 2u64.to_le_bytes().to_vec();
    kv.extend_from_slice(&[0xff, 0xfe, 4, 0, 0, 0, 1, 0, 0, 0]);
    check(raw(3, 0, &[kv], &[]), &|e| {
        matches!(e, E::InvalidUtf8 { offset: 32, .. })
    });
    let msg = check(raw(3, 0, &[kv_u32("x", 1), kv_u32("x", 2)], &[]), &|e| {
        matches!(e, E::DuplicateKey { offset: 41, .. })
    });
    assert!(msg.contains("\"x\"") && msg.contains("byte 41"), "{msg}");
    // Arrays nested too deep.
    let mut kv = s("deep");
    kv.extend_from_slice(&9u32.to_le_bytes());
    for _ in 0..20 {
        kv.extend_from_slice(&9u32.to_le_bytes());
        kv.extend_from_slice(&1u64.to_le_bytes());
    }
    kv.extend_from_slice(&[0; 64]);
    check(raw(3, 0, &[kv], &[]), &|e| {
        matches!(e, E::NestingTooDeep { .. })
    });
    // Alignment: not a power of two, zero, wrong type.
    check(raw(3, 0, &[kv_u32("general.alignment", 48)], &[]), &|e| {
        matches!(e, E::BadAlignment { .. })
    });
    check(raw(3, 0, &[kv_u32("general.alignment", 0)], &[]), &|e| {
        matches!(e, E::BadAlignment { .. })
    });
    let mut kv = s("general.alignment");
    kv.extend_from_slice(&10u32.to_le_bytes());
    kv.extend_from_slice(&32u64.to_le_bytes());
    check(raw(3, 0, &[kv], &[]), &|e| {
        matches!(e, E::BadAlignment { .. })
    });
    // Tensor infos: n_dims 5 and 0, zero dim, unknown type, partial block, overflow,
    // misaligned, duplicate, out of range, overlapping.
    let one = |i: Vec<u8>, data: usize| with_data(raw(3, 1, &[], &[i]), data);
    check(one(info("t", &[1, 1, 1, 1, 1], 0, 0), 4), &|e| {
        matches!(e, E::BadDimCount { n_dims: 5, .. })
    });
    check(one(info("t", &[], 0, 0), 4), &|e| {
        matches!(e, E::BadDimCount { n_dims: 0, .. })
    });
    let msg = check(one(info("t", &[4, 0], 0, 0), 16), &|e| {
        matches!(e, E::ZeroDim { index: 1, .. })
    });
    assert!(msg.contains("\"t\""), "{msg}");
    check(one(info("t", &[4], 4, 0), 16), &|e| {
        matches!(e, E::UnknownTensorType { id: 4, .. })
    });
    check(one(info("t", &[100], 12, 0), 1000), &|e| {
        matches!(e, E::PartialBlock { .. })
    });
    check(one(info("t", &[1 << 62, 1 << 62], 0, 0), 16), &|e| {
        matches!(e, E::SizeOverflow { .. })
    });
    check(one(info("t", &[1 << 62], 0, 0), 16), &|e| {
        matches!(e, E::SizeOverflow { .. })
    });
    check(one(info("t", &[4], 0, u64::MAX - 31), 16), &|e| {
        matches!(e, E::SizeOverflow { .. })
    });
    check(one(info("t", &[4], 0, 16), 64), &|e| {
        matches!(e, E::MisalignedTensor { .. })
    });
    check(one(info("t", &[4], 0, 32), 40), &|e| {
        matches!(e, E::TensorOutOfRange { .. })
    });
    let two = |a: Vec<u8>, b: Vec<u8>, data: usize| with_data(raw(3, 2, &[], &[a, b]), data);
    check(
        two(info("t", &[4], 0, 0), info("t", &[4], 0, 32), 64),
        &|e| matches!(e, E::DuplicateTensor { .. }),
    );
    let msg = check(
        two(info("t", &[16], 0, 0), info("u", &[4], 0, 32), 64),
        &|e| matches!(e, E::TensorOverlap { .. }),
    );
    assert!(msg.contains("\"u\"") && msg.contains("\"t\""), "{msg}");
    // Unsupported (but known) types parse and fail check_supported with the tensor named.
    let f = gguf::parse(&one(info("nv", &[256], 40, 0), 144)).unwrap();
    let msg = f.check_supported().unwrap_err().to_string();
    assert_eq!(msg, "unsupported tensor type NVFP4 in tensor \"nv\"");
    // The IQ, TQ and MXFP4 formats are supported (issue 13).
    for (id, bytes) in [
        (16, 66),
        (19, 50),
        (23, 136),
        (29, 56),
        (34, 54),
        (35, 66),
        (39, 136),
    ] {
        let f = gguf::parse(&one(info("w", &[256], id, 0), bytes)).unwrap();
        f.check_supported().unwrap();
    }
    // Version 2 reads like version 3.
    let f = gguf::parse(&with_data(raw(2, 1, &[], &[info("t", &[4], 0, 0)]), 16)).unwrap();
    assert_eq!(f.version, 2);
}

fn model_file(extra: &[(&str, MetadataValue)], skip: &[&str]) -> GgufFile {
    let mut w = GgufWriter::new();
    let base: Vec<(&str, MetadataValue)> = vec![
        (
            "general.architecture",
            MetadataValue::String("gemma3".into()),
        ),
        ("general.name", MetadataValue::String("tiny".into())),
        ("general.file_type", MetadataValue::U32(15)),
        ("gemma3.block_count", MetadataValue::U32(4)),
        ("gemma3.embedding_length", MetadataValue::U32(64)),
        ("gemma3.feed_forward_length", MetadataValue::U32(128)),
        ("gemma3.attention.head_count", MetadataValue::U32(4)),
        (
            "gemma3.attention.head_count_kv",
            MetadataValue::Array(MetadataArray::I32(vec![1, 1, 2, 2])),
        ),
        ("gemma3.attention.key_length", MetadataValue::U32(32)),
        (
            "gemma3.attention.layer_norm_rms_epsilon",
            MetadataValue::F32(1e-6),
        ),
        ("gemma3.attention.sliding_window", MetadataValue::U32(512)),
        ("gemma3.rope.freq_base", MetadataValue::F32(1e6)),
        ("gemma3.context_length", MetadataValue::U64(32768)),
        (
            "tokenizer.ggml.model",
            MetadataValue::String("llama".into()),
        ),
        (
            "tokenizer.ggml.tokens",
            MetadataValue::Array(MetadataArray::String(vec![
                "<unk>".into(),
                "<s>".into(),
                "</s>".into(),
            ])),
        ),
        (
            "tokenizer.ggml.scores",
            MetadataValue::Array(MetadataArray::F32(vec![0.0, 0.0, -1.0])),
        ),
        (
            "tokenizer.ggml.token_type",
            MetadataValue::Array(MetadataArray::I32(vec![2, 3, 3])),
        ),
        ("tokenizer.ggml.bos_token_id", MetadataValue::U32(1)),
        ("tokenizer.ggml.eos_token_id", MetadataValue::U32(2)),
        ("tokenizer.ggml.seperator_token_id", MetadataValue::U32(0)),
        ("tokenizer.ggml.add_bos_token", MetadataValue::Bool(true)),
        (
            "tokenizer.chat_template",
            MetadataValue::String("{{ x }}".into()),
        ),
    ];
    let overridden = |k: &str| skip.contains(&k) || extra.iter().any(|(ek, _)| *ek == k);
    for (k, v) in base.into_iter().filter(|(k, _)| !overridden(k)) {
        w.add_metadata(k, v).unwrap();
    }
    for (k, v) in extra {
        w.add_metadata(*k, v.clone()).unwrap();
    }
    let bytes = w.start(Vec::new()).unwrap().finish().unwrap();
    GgufFile::from_bytes(bytes, DataCheck::Complete).unwrap()
}

#[test]
fn model_description_reads_typed_metadata() {
    let f = model_file(&[], &[]);
    let m = ModelDescription::from_gguf(&f).unwrap();
    assert_eq!(m.architecture, "gemma3");
    assert_eq!(m.name.as_deref(), Some("tiny"));
    assert_eq!(m.n_layer, 4);
    assert_eq!(m.n_embd, 64);
    assert_eq!(m.n_ff, vec![128; 4]);
    assert_eq!(m.n_head, vec![4; 4]);
    assert_eq!(m.n_head_kv, vec![1, 1, 2, 2]);
    assert_eq!((m.head_dim_k, m.head_dim_v), (32, 16));
    assert_eq!(m.rope.freq_base, 1e6);
    assert_eq!(m.rope.dimension_count, 32);
    assert_eq!(m.rope.freq_base_swa, None);
    assert_eq!(m.sliding_window, Some(512));
    assert_eq!(m.sliding_window_pattern, None);
    assert!(m.is_sliding_window_layer(0, 6) && !m.is_sliding_window_layer(5, 6));
    assert_eq!((m.norm_eps, m.norm_kind), (1e-6, NormKind::Rms));
    assert_eq!(m.context_length, 32768);
    assert_eq!(m.vocab_size, 3);
    assert_eq!(m.file_type, Some(15));
    assert_eq!(m.expert_count, None);
    let t = &m.tokenizer;
    assert_eq!(t.model, "llama");
    assert_eq!(t.tokens.len(), 3);
    assert_eq!(t.scores.as_deref(), Some(&[0.0, 0.0, -1.0][..]));
    assert_eq!(t.token_types.as_deref(), Some(&[2, 3, 3][..]));
    assert_eq!(
        (t.bos_token_id, t.eos_token_id, t.sep_token_id),
        (Some(1), Some(2), Some(0))
    );
    assert_eq!(t.add_bos_token, Some(true));
    assert_eq!(t.add_space_prefix, None);
    assert_eq!(t.chat_template.as_deref(), Some("{{ x }}"));
    assert!(t.merges.is_none() && t.pre.is_none());
    let t2 = TokenizerMetadata::from_gguf(&f).unwrap();
    assert_eq!(t2.tokens, t.tokens);

    // Optional keys when present.
    let f = model_file(
        &[
            (
                "gemma3.attention.sliding_window_pattern",
                MetadataValue::Array(MetadataArray::Bool(vec![true, false, true, false])),
            ),
            ("gemma3.rope.freq_base_swa", MetadataValue::F32(1e4)),
            ("gemma3.final_logit_softcapping", MetadataValue::F32(30.0)),
            ("gemma3.expert_count", MetadataValue::U32(8)),
        ],
        &[],
    );
    let m = ModelDescription::from_gguf(&f).unwrap();
    assert_eq!(
        m.sliding_window_pattern,
        Some(SlidingWindowPattern::PerLayer(vec![
            true, false, true, false
        ]))
    );
    assert!(!m.is_sliding_window_layer(1, 6) && m.is_sliding_window_layer(2, 6));
    assert_eq!(m.rope.freq_base_swa, Some(1e4));
    assert_eq!(m.final_logit_softcapping, Some(30.0));
    assert_eq!(m.expert_count, Some(8));
}

#[test]
fn model_description_errors_name_the_key() {
    let f = model_file(&[], &["gemma3.block_count"]);
    let err = ModelDescription::from_gguf(&f).unwrap_err();
    assert_eq!(err, MetadataError::Missing("gemma3.block_count".into()));
    assert_eq!(err.to_string(), "missing required key gemma3.block_count");
    let f = model_file(&[], &["general.architecture"]);
    assert_eq!(
        ModelDescription::from_gguf(&f).unwrap_err().to_string(),
        "missing required key general.architecture"
    );
    let f = model_file(&[], &["tokenizer.ggml.tokens"]);
    assert!(
        matches!(ModelDescription::from_gguf(&f), Err(MetadataError::Missing(k)) if k == "tokenizer.ggml.tokens")
    );
    let f = model_file(
        &[("gemma3.embedding_length", MetadataValue::String("x".into()))],
        &["gemma3.embedding_length"],
    );
    let msg = ModelDescription::from_gguf(&f).unwrap_err().to_string();
    assert!(
        msg.contains("gemma3.embedding_length") && msg.contains("found string"),
        "{msg}"
    );
    let f = model_file(
        &[(
            "gemma3.attention.head_count_kv",
            MetadataValue::Array(MetadataArray::U32(vec![1, 2])),
        )],
        &["gemma3.attention.head_count_kv"],
    );
    assert!(matches!(
        ModelDescription::from_gguf(&f),
        Err(MetadataError::WrongLength {
            len: 2,
            expected: 4,
            ..
        })
    ));
    let f = model_file(
        &[("tokenizer.ggml.bos_token_id", MetadataValue::I32(-1))],
        &["tokenizer.ggml.bos_token_id"],
    );
    assert!(matches!(
        TokenizerMetadata::from_gguf(&f),
        Err(MetadataError::OutOfRange { .. })
    ));
    let f = model_file(
        &[(
            "tokenizer.ggml.scores",
            MetadataValue::Array(MetadataArray::F32(vec![0.0])),
        )],
        &["tokenizer.ggml.scores"],
    );
    assert!(matches!(
        TokenizerMetadata::from_gguf(&f),
        Err(MetadataError::WrongLength { .. })
    ));
}

#[test]
fn writer_rejects_bad_input() {
    let mut w = GgufWriter::new();
    w.add_metadata("k", MetadataValue::U8(1)).unwrap();
    assert!(w.add_metadata("k", MetadataValue::U8(1)).is_err());
    assert!(w.add_tensor("t", &[100], GgmlType::Q4_K).is_err());
    assert!(w.add_tensor("t", &[1, 1, 1, 1, 1], GgmlType::F32).is_err());
    assert!(w.add_tensor("t", &[0], GgmlType::F32).is_err());
    w.add_tensor("t", &[4], GgmlType::F32).unwrap();
    assert!(w.add_tensor("t", &[4], GgmlType::F32).is_err());
    assert!(w.set_alignment(64).is_err());
    let mut s = w.start(Vec::new()).unwrap();
    assert!(s.write_tensor(&[0; 15]).is_err());
    s.write_tensor(&[0; 16]).unwrap();
    assert!(s.write_tensor(&[0; 16]).is_err());
    s.finish().unwrap();
    let mut w = GgufWriter::new();
    assert!(w.set_alignment(3).is_err());
    w.add_tensor("t", &[4], GgmlType::F32).unwrap();
    assert!(matches!(
        w.start(Vec::new()).unwrap().finish(),
        Err(gguf::WriteError::Incomplete {
            written: 0,
            declared: 1
        })
    ));
}

use llmd_testkit::data::test_data_file as test_data;

#[test]
fn real_gemma3_file_reads_completely() {
    let Some(path) = test_data("LLMD_GEMMA_GGUF") else {
        return;
    };
    let f = GgufFile::open(&path).unwrap();
    assert!(f.is_complete());
    f.check_supported().unwrap();
    let m = ModelDescription::from_gguf(&f).unwrap();
    assert_eq!(m.architecture, "gemma3");
    assert_eq!(m.n_layer, 18);
    assert_eq!(m.n_embd, 640);
    assert_eq!(m.vocab_size, 262144);
    assert_eq!(m.tokenizer.tokens.len(), 262144);
    assert_eq!(m.tokenizer.model, "llama");
    // This particular conversion carries no chat template.
    assert!(m.tokenizer.chat_template.is_none());
    assert_eq!(m.tokenizer.bos_token_id, Some(2));
    assert!(m.sliding_window.is_some());
    let emb = f.tensor("token_embd.weight").unwrap();
    assert_eq!(emb.dims, vec![640, 262144]);
    assert_eq!(f.tensor_data(emb).unwrap().len() as u64, emb.n_bytes);
}

#[test]
fn real_qwen2_partial_file_reads_header_only() {
    let Some(path) = test_data("LLMD_QWEN_HEADER_GGUF") else {
        return;
    };
    assert!(matches!(
        GgufFile::open(&path),
        Err(GgufError::TensorOutOfRange { .. })
    ));
    let f = GgufFile::open_header(&path).unwrap();
    assert!(!f.is_complete());
    assert!(f.missing_tensors().count() > 0);
    let m = ModelDescription::from_gguf(&f).unwrap();
    assert_eq!(m.architecture, "qwen2");
    assert_eq!(m.tokenizer.model, "gpt2");
    assert_eq!(m.tokenizer.tokens.len(), 152064);
    assert!(m.tokenizer.merges.as_ref().is_some_and(|v| !v.is_empty()));
    assert_eq!(m.n_layer, 28);
}
