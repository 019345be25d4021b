//! Hostile headers, each refused with the message plasticity has always given;
//! the writer's atomicity; round trips through the safetensors crate.

use std::fs;
use std::path::{Path, PathBuf};

use safetensors::SafeTensors;

use super::json::{py_float, PyRepr};
use super::*;

fn dir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

/// A file: the 8-byte length of `header`, `header`, then `data`.
fn st(header: &str, data: &[u8]) -> Vec<u8> {
    let mut v = (header.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(header.as_bytes());
    v.extend_from_slice(data);
    v
}

fn put(d: &Path, bytes: &[u8]) -> PathBuf {
    let p = d.join("bad.safetensors");
    fs::write(&p, bytes).unwrap();
    p
}

/// read_header's error, and its message without the "PATH: " prefix.
fn refused(bytes: &[u8]) -> (FileError, String) {
    let d = dir();
    let p = put(d.path(), bytes);
    let e = read_header(&p).expect_err("a hostile file must be refused");
    let msg = e.to_string();
    let prefix = format!("{}: ", p.display());
    assert!(msg.starts_with(&prefix), "{msg}");
    // The reader refuses it the same way (its own checks run before the crate's).
    let e2 = SafetensorsReader::open(&p).expect_err("the reader must refuse it too");
    assert_eq!(e2.to_string(), msg);
    (e, msg[prefix.len()..].to_string())
}

fn problem(bytes: &[u8]) -> HeaderError {
    refused(bytes)
        .0
        .header_problem()
        .expect("a header problem")
        .clone()
}

fn message(bytes: &[u8]) -> String {
    refused(bytes).1
}

const E: &str = r#"{"dtype":"F32","shape":[1],"data_offsets":[0,4]}"#;

fn good_file() -> Vec<u8> {
    st(
        r#"{"__metadata__":{"format":"pt"},"a.weight":{"dtype":"F32","shape":[8,4],"data_offsets":[0,128]},"b.weight":{"dtype":"F32","shape":[6],"data_offsets":[128,152]}}"#,
        &[0u8; 152],
    )
}

// ---------------------------------------------------------------- size and length

#[test]
fn empty_and_shorter_than_the_length_prefix() {
    assert_eq!(
        message(b""),
        "truncated: 0 bytes is too short for a safetensors file"
    );
    assert_eq!(
        message(b"\x01\x02\x03"),
        "truncated: 3 bytes is too short for a safetensors file"
    );
    assert_eq!(problem(b"\x01\x02\x03"), HeaderError::TooShort { size: 3 });
}

#[test]
fn absurd_header_length() {
    let mut v = (1u64 << 62).to_le_bytes().to_vec();
    v.extend_from_slice(b"{}");
    assert_eq!(
        message(&v),
        format!(
            "header length {} is absurd (limit 100000000 bytes)",
            1u64 << 62
        )
    );
    // One past the crate's limit is absurd; the limit itself is only truncated here.
    assert!(matches!(
        problem(&(MAX_HEADER_BYTES + 1).to_le_bytes()),
        HeaderError::AbsurdLength { .. }
    ));
    assert!(matches!(
        problem(&MAX_HEADER_BYTES.to_le_bytes()),
        HeaderError::HeaderTruncated { .. }
    ));
    assert!(matches!(
        problem(&u64::MAX.to_le_bytes()),
        HeaderError::AbsurdLength { .. }
    ));
}

#[test]
fn header_longer_than_the_file() {
    let mut v = 5000u64.to_le_bytes().to_vec();
    v.extend_from_slice(br#"{"a": 1}"#);
    assert_eq!(
        message(&v),
        "truncated: the header says 5000 bytes but the file has 8 after the length"
    );
}

#[test]
fn truncated_inside_the_header_and_inside_the_data() {
    let good = good_file();
    assert!(matches!(
        problem(&good[..40]),
        HeaderError::HeaderTruncated { .. }
    ));
    assert_eq!(
        message(&good[..good.len() - 10]),
        "tensor 'b.weight': data_offsets [128, 152] are out of range: the data section has 142 bytes (truncated file?)"
    );
}

#[test]
fn missing_file_and_directory_cannot_be_read() {
    let d = dir();
    let e = read_header(&d.path().join("missing.safetensors")).unwrap_err();
    assert!(
        e.to_string()
            .ends_with(": cannot read: No such file or directory"),
        "{e}"
    );
    let e = read_header(d.path()).unwrap_err();
    assert!(
        e.to_string().ends_with(": cannot read: Is a directory"),
        "{e}"
    );
}

// ---------------------------------------------------------------- text

#[test]
fn header_not_utf8_names_the_byte_and_python_reason() {
    let bad = |h: &[u8]| {
        let mut v = (h.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(h);
        message(&v)
    };
    assert_eq!(
        bad(b"{\"__metadata__\": {\"k\": \"\xff\xfe\"}}"),
        "header is not UTF-8 (invalid start byte at byte 24)"
    );
    assert_eq!(
        bad(b"{\"k\": \"\xc3(\"}"),
        "header is not UTF-8 (invalid continuation byte at byte 7)"
    );
    assert_eq!(
        bad(b"{\"k\": \"\xe0\x80\"}"),
        "header is not UTF-8 (invalid continuation byte at byte 7)"
    );
    assert_eq!(
        bad(b"{\"k\": \"\xe2\x82"),
        "header is not UTF-8 (unexpected end of data at byte 7)"
    );
}

#[test]
fn header_not_json() {
    let m = message(&st("{not json", b""));
    assert!(m.starts_with("header is not valid JSON ("), "{m}");
    assert!(message(&st("{} x", b"")).starts_with("header is not valid JSON ("));
    assert!(message(&st("{\"a\": NaN}", b"")).starts_with("header is not valid JSON ("));
    // Nesting deeper than serde_json's limit (128) is refused as JSON, not a stack overflow.
    let deep = "[".repeat(100_000) + &"]".repeat(100_000);
    assert!(message(&st(&deep, b"")).starts_with("header is not valid JSON ("));
}

#[test]
fn header_not_an_object() {
    assert_eq!(
        message(&st("[1, 2]", b"")),
        "header must be a JSON object, got list"
    );
    assert_eq!(
        message(&st("\"x\"", b"")),
        "header must be a JSON object, got str"
    );
    assert_eq!(
        message(&st("3", b"")),
        "header must be a JSON object, got int"
    );
    assert_eq!(
        message(&st("null", b"")),
        "header must be a JSON object, got NoneType"
    );
    assert_eq!(
        message(&st("true  ", b"")),
        "header must be a JSON object, got bool"
    );
}

#[test]
fn duplicate_keys_anywhere_are_refused() {
    let two = format!(r#"{{"x": {E}, "x": {E}}}"#);
    assert_eq!(
        message(&st(&two, &[0; 4])),
        "duplicate key 'x' in the header"
    );
    assert_eq!(
        problem(&st(&two, &[0; 4])),
        HeaderError::DuplicateKey("x".into())
    );
    // inside an entry, and inside __metadata__
    let inner = r#"{"x": {"dtype": "F32", "dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}"#;
    assert_eq!(
        message(&st(inner, &[0; 4])),
        "duplicate key 'dtype' in the header"
    );
    let meta = r#"{"__metadata__": {"k": "a", "k": "b"}}"#;
    assert_eq!(message(&st(meta, b"")), "duplicate key 'k' in the header");
    let meta_twice = r#"{"__metadata__": {}, "__metadata__": {}}"#;
    assert_eq!(
        message(&st(meta_twice, b"")),
        "duplicate key '__metadata__' in the header"
    );
    // The first key to repeat, once the object is read (Python's object_pairs_hook).
    let order = format!(r#"{{"a": {E}, "b": {E}, "b": {E}, "a": {E}}}"#);
    assert_eq!(
        message(&st(&order, &[0; 4])),
        "duplicate key 'b' in the header"
    );
    // A syntax error before the object ends wins over its duplicate.
    let broken = format!(r#"{{"x": {E}, "x": {E}, oops"#);
    assert!(message(&st(&broken, &[0; 4])).starts_with("header is not valid JSON ("));
}

#[test]
fn metadata_must_map_strings_to_strings() {
    for m in [
        r#"{"k": 1}"#,
        "[]",
        "\"s\"",
        r#"{"k": null}"#,
        r#"{"k": ["v"]}"#,
    ] {
        let h = format!(r#"{{"__metadata__": {m}}}"#);
        assert_eq!(
            message(&st(&h, b"")),
            "__metadata__ must map strings to strings",
            "{m}"
        );
    }
    let h = read_header(&put(dir().path(), &st(r#"{"__metadata__": null}"#, b""))).unwrap();
    assert!(h.metadata.is_empty() && h.tensors.is_empty());
}

// ---------------------------------------------------------------- entries

#[test]
fn entry_shape() {
    assert_eq!(
        message(&st(&format!(r#"{{"": {E}}}"#), &[0; 4])),
        "empty tensor name"
    );
    for e in [
        r#"{"dtype": "F32", "shape": [1], "data_offsets": [0, 4], "x": 1}"#,
        r#"{"dtype": "F32", "shape": [1]}"#,
        "[1]",
        "null",
    ] {
        assert_eq!(
            message(&st(&format!(r#"{{"b.weight": {e}}}"#), &[0; 4])),
            "tensor 'b.weight': entry must have exactly dtype, shape and data_offsets",
            "{e}"
        );
    }
}

#[test]
fn unknown_dtype() {
    let h = |dt: &str| {
        format!(r#"{{"a.weight": {{"dtype": {dt}, "shape": [1], "data_offsets": [0, 4]}}}}"#)
    };
    assert_eq!(
        message(&st(&h("\"F7\""), &[0; 4])),
        "tensor 'a.weight': unknown dtype 'F7'"
    );
    assert_eq!(
        message(&st(&h("\"f32\""), &[0; 4])),
        "tensor 'a.weight': unknown dtype 'f32'"
    );
    assert_eq!(
        message(&st(&h("4"), &[0; 4])),
        "tensor 'a.weight': unknown dtype 4"
    );
    assert_eq!(
        message(&st(&h("null"), &[0; 4])),
        "tensor 'a.weight': unknown dtype None"
    );
    assert_eq!(
        message(&st(&h("[\"F32\"]"), &[0; 4])),
        "tensor 'a.weight': unknown dtype ['F32']"
    );
    assert_eq!(
        problem(&st(&h("\"F7\""), &[0; 4])),
        HeaderError::UnknownDtype {
            name: "a.weight".into(),
            got: "'F7'".into()
        }
    );
}

#[test]
fn bad_shape() {
    let h = |s: &str| {
        format!(r#"{{"b.weight": {{"dtype": "F32", "shape": {s}, "data_offsets": [0, 0]}}}}"#)
    };
    let m = |s: &str| message(&st(&h(s), b""));
    assert_eq!(
        m("[-6]"),
        "tensor 'b.weight': shape must be a list of non-negative integers, got [-6]"
    );
    assert_eq!(
        m("[1.5, 2]"),
        "tensor 'b.weight': shape must be a list of non-negative integers, got [1.5, 2]"
    );
    assert_eq!(
        m("[true]"),
        "tensor 'b.weight': shape must be a list of non-negative integers, got [True]"
    );
    assert_eq!(
        m("6"),
        "tensor 'b.weight': shape must be a list of non-negative integers, got 6"
    );
    assert_eq!(
        m("{\"a\": \"b\"}"),
        "tensor 'b.weight': shape must be a list of non-negative integers, got {'a': 'b'}"
    );
    assert_eq!(
        m("[1e20]"),
        "tensor 'b.weight': shape must be a list of non-negative integers, got [1e+20]"
    );
}

#[test]
fn bad_offsets() {
    let h = |o: &str, shape: &str| {
        format!(r#"{{"b.weight": {{"dtype": "F32", "shape": {shape}, "data_offsets": {o}}}}}"#)
    };
    let m = |o: &str, shape: &str, n: usize| message(&st(&h(o, shape), &vec![0; n]));
    assert_eq!(
        m("[0]", "[1]", 4),
        "tensor 'b.weight': data_offsets must be [begin, end], got [0]"
    );
    assert_eq!(
        m("[0, 4, 8]", "[1]", 4),
        "tensor 'b.weight': data_offsets must be [begin, end], got [0, 4, 8]"
    );
    assert_eq!(
        m("[0, \"4\"]", "[1]", 4),
        "tensor 'b.weight': data_offsets must be [begin, end], got [0, '4']"
    );
    assert_eq!(
        m("null", "[1]", 4),
        "tensor 'b.weight': data_offsets must be [begin, end], got None"
    );
    assert_eq!(
        m("[8, 0]", "[0]", 8),
        "tensor 'b.weight': bad data_offsets [8, 0]"
    );
    assert_eq!(
        m("[-4, 0]", "[1]", 8),
        "tensor 'b.weight': bad data_offsets [-4, 0]"
    );
    assert_eq!(
        m("[0, 20]", "[6]", 20),
        "tensor 'b.weight': data_offsets [0, 20] hold 20 bytes but F32[6] needs 24"
    );
    assert_eq!(
        m("[0, 128]", "[32]", 16),
        "tensor 'b.weight': data_offsets [0, 128] are out of range: the data section has 16 bytes (truncated file?)"
    );
    // A byte count beyond every integer type is still named exactly.
    let huge = format!("[{}, {}, 2]", u64::MAX, u64::MAX);
    assert_eq!(
        m("[0, 4]", &huge, 4),
        format!(
            "tensor 'b.weight': data_offsets [0, 4] hold 4 bytes but F32[{0}, {0}, 2] needs 2722258935367507707411848954274792865800",
            u64::MAX
        )
    );
    // A scalar: the empty shape holds one element.
    assert_eq!(
        m("[0, 2]", "[]", 2),
        "tensor 'b.weight': data_offsets [0, 2] hold 2 bytes but F32[] needs 4"
    );
}

#[test]
fn sub_byte_dtypes_must_fill_whole_bytes() {
    let h = r#"{"q": {"dtype": "F4", "shape": [3], "data_offsets": [0, 2]}}"#;
    assert_eq!(
        message(&st(h, &[0; 2])),
        "tensor 'q': F4[3] is 12 bits, not a whole number of bytes"
    );
    let ok = r#"{"q": {"dtype": "F4", "shape": [4], "data_offsets": [0, 2]}}"#;
    read_header(&put(dir().path(), &st(ok, &[0; 2]))).expect("4 F4 values are 2 bytes");
}

// ---------------------------------------------------------------- layout

#[test]
fn overlap_gap_and_trailing_bytes() {
    let two = |a: &str, b: &str| {
        format!(
            r#"{{"a.weight": {{"dtype": "F32", "shape": [8, 4], "data_offsets": {a}}}, "b.weight": {{"dtype": "F32", "shape": [6], "data_offsets": {b}}}}}"#
        )
    };
    assert_eq!(
        message(&st(&two("[0, 128]", "[100, 124]"), &[0; 128])),
        "tensors 'a.weight' and 'b.weight' have overlapping data_offsets"
    );
    assert_eq!(
        message(&st(&two("[0, 128]", "[136, 160]"), &[0; 160])),
        "8 bytes before tensor 'b.weight' belong to no tensor"
    );
    assert_eq!(
        message(&st(&two("[24, 152]", "[0, 24]"), &[0; 160])),
        "8 trailing bytes after the last tensor belong to no tensor"
    );
    assert_eq!(
        message(&st(&two("[28, 156]", "[0, 24]"), &[0; 156])),
        "4 bytes before tensor 'a.weight' belong to no tensor"
    );
    let one = r#"{"b.weight": {"dtype": "F32", "shape": [6], "data_offsets": [0, 24]}}"#;
    assert_eq!(
        message(&st(one, &[0; 40])),
        "16 trailing bytes after the last tensor belong to no tensor"
    );
    assert_eq!(
        message(&st("{}", &[0; 3])),
        "3 trailing bytes after the last tensor belong to no tensor"
    );
}

#[test]
fn valid_header_in_offset_order_with_metadata_in_file_order() {
    let h = r#"{"z": {"dtype": "BF16", "shape": [2], "data_offsets": [4, 8]}, "__metadata__": {"b": "1", "a": "välue"},
               "e": {"dtype": "F32", "shape": [0, 3], "data_offsets": [4, 4]}, "y": {"dtype": "I64", "shape": [], "data_offsets": [8, 16]},
               "a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]}}"#;
    let d = dir();
    let p = put(d.path(), &st(h, &[7; 16]));
    let hdr = read_header(&p).unwrap();
    assert_eq!(
        hdr.metadata,
        vec![
            ("b".to_string(), "1".to_string()),
            ("a".to_string(), "välue".to_string())
        ]
    );
    let names: Vec<&str> = hdr.tensors.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["a", "e", "z", "y"]);
    assert_eq!(hdr.tensors[2].dtype, Dtype::BF16);
    assert_eq!(hdr.tensors[3].shape, Vec::<u64>::new());
    assert_eq!((hdr.data_len, hdr.data_start()), (16, 8 + h.len() as u64));
    let r = SafetensorsReader::open(&p).unwrap();
    assert_eq!(r.read("y").unwrap(), vec![7u8; 8]);
    assert_eq!(r.read("e").unwrap(), Vec::<u8>::new());
}

#[test]
fn names_are_quoted_as_python_repr_quotes_them() {
    let q = |s: &str| PyRepr(s).to_string();
    assert_eq!(q("a.weight"), "'a.weight'");
    assert_eq!(q("it's"), "\"it's\"");
    assert_eq!(q("it's \"x\""), "'it\\'s \"x\"'");
    assert_eq!(q("a\\b\tc\nd\re"), "'a\\\\b\\tc\\nd\\re'");
    assert_eq!(
        q("\u{0}\u{7f}\u{a0}é\u{200b}\u{e000}😀"),
        "'\\x00\\x7f\\xa0é\\u200b\\ue000😀'"
    );
    let err = HeaderError::Gap {
        bytes: 1,
        name: "it's".into(),
    };
    assert_eq!(
        err.to_string(),
        "1 bytes before tensor \"it's\" belong to no tensor"
    );
}

#[test]
fn floats_are_written_as_python_repr_writes_them() {
    for (x, want) in [
        (1.5, "1.5"),
        (2.0, "2.0"),
        (-0.0, "-0.0"),
        (0.0001, "0.0001"),
        (0.00001, "1e-05"),
        (1e15, "1000000000000000.0"),
        (1e16, "1e+16"),
        (1.2345678901234567e17, "1.2345678901234566e+17"),
        (-2.5e-300, "-2.5e-300"),
        (0.1, "0.1"),
        (123.456, "123.456"),
        (1e22, "1e+22"),
    ] {
        assert_eq!(py_float(x), want, "{x}");
    }
}

// ---------------------------------------------------------------- the safetensors crate

#[test]
fn limits_and_dtypes_agree_with_the_crate() {
    // The crate refuses one byte past our limit and accepts (reads on from) the limit.
    let over = (MAX_HEADER_BYTES + 1).to_le_bytes();
    assert!(matches!(
        SafeTensors::read_metadata(&over),
        Err(safetensors::SafeTensorError::HeaderTooLarge)
    ));
    let at = MAX_HEADER_BYTES.to_le_bytes();
    assert!(matches!(
        SafeTensors::read_metadata(&at),
        Err(safetensors::SafeTensorError::InvalidHeaderLength)
    ));
    for dt in DTYPES {
        assert_eq!(dtype_from_name(&dt.to_string()), Some(dt));
    }
    assert_eq!(dtype_from_name("F7"), None);
    assert_eq!(dtype_from_name("f32"), None);
}

#[test]
fn the_crate_check_runs_on_open() {
    let good = good_file();
    let (n, meta) = SafeTensors::read_metadata(&good).unwrap();
    assert_eq!(meta.data_len(), 152);
    let text = std::str::from_utf8(&good[8..8 + n]).unwrap();
    assert!(reader::crate_check(text, 152).is_ok());
    assert_eq!(
        reader::crate_check(text, 160).unwrap_err(),
        safetensors::SafeTensorError::MetadataIncompleteBuffer.to_string()
    );
    assert!(reader::crate_check(
        "{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 8]}}",
        8
    )
    .is_err());
}

// ---------------------------------------------------------------- reader

#[test]
fn reader_reads_each_tensor_and_names_its_mistakes() {
    let d = dir();
    let data: Vec<u8> = (0..152u8).collect();
    let p = d.path().join("m.safetensors");
    let mut bytes = good_file();
    let n = bytes.len();
    bytes[n - 152..].copy_from_slice(&data);
    fs::write(&p, &bytes).unwrap();
    let r = SafetensorsReader::open(&p).unwrap();
    assert_eq!(
        r.header().metadata,
        vec![("format".to_string(), "pt".to_string())]
    );
    assert_eq!(r.read("a.weight").unwrap(), data[..128]);
    let mut out = [0u8; 24];
    r.read_into("b.weight", &mut out).unwrap();
    assert_eq!(out, data[128..]);
    let e = r.read("c").unwrap_err();
    assert_eq!(e.to_string(), format!("{}: no tensor 'c'", p.display()));
    let e = r.read_into("b.weight", &mut [0u8; 20]).unwrap_err();
    assert_eq!(
        e.usage_problem(),
        Some(&UsageError::ByteCount {
            name: "b.weight".into(),
            got: 20,
            want: 24
        })
    );
    // The file shrinks under the open reader: a clear error, not short data.
    fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len((n - 10) as u64)
        .unwrap();
    let e = r.read("b.weight").unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "{}: file ended inside tensor 'b.weight' (changed since it was opened?)",
            p.display()
        )
    );
}

// ---------------------------------------------------------------- writer

fn spec(name: &str, dtype: Dtype, shape: &[u64]) -> TensorSpec {
    TensorSpec {
        name: name.into(),
        dtype,
        shape: shape.to_vec(),
    }
}

fn listing(d: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn f32s(x: &[f32]) -> Vec<u8> {
    x.iter().flat_map(|v| v.to_le_bytes()).collect()
}

#[test]
fn committed_file_round_trips_through_the_crate() {
    let d = dir();
    let p = d.path().join("x.safetensors");
    let specs = vec![
        spec("b", Dtype::F32, &[3, 4]),
        spec("a", Dtype::BF16, &[5]),
        spec("z", Dtype::I64, &[6]),
        spec("e", Dtype::F32, &[0, 3]),
        spec("s", Dtype::F64, &[]),
    ];
    let meta = vec![
        ("format".to_string(), "pt".to_string()),
        ("k".to_string(), "välue \"q\"\n".to_string()),
    ];
    let b = f32s(&(0..12).map(|i| i as f32 * 0.5).collect::<Vec<_>>());
    let a: Vec<u8> = (0..10).collect();
    let z: Vec<u8> = (0..6i64).flat_map(|v| v.to_le_bytes()).collect();
    let s = 2.5f64.to_le_bytes();
    let mut w = SafetensorsWriter::create(&p, specs, &meta).unwrap();
    let tmp = w.temp_path().unwrap().to_path_buf();
    let tmp_name = tmp.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        tmp_name.starts_with(".x.safetensors.") && tmp_name.ends_with(".tmp"),
        "{tmp_name}"
    );
    assert!(!p.exists());
    w.write("b", Dtype::F32, &[3, 4], &b).unwrap();
    w.write("a", Dtype::BF16, &[5], &a).unwrap();
    w.write("z", Dtype::I64, &[6], &z).unwrap();
    w.write("e", Dtype::F32, &[0, 3], &[]).unwrap();
    w.write("s", Dtype::F64, &[], &s).unwrap();
    w.commit().unwrap();
    w.commit().unwrap(); // a second commit is a no-op
    assert_eq!(listing(d.path()), ["x.safetensors"]);
    assert!(!tmp.exists());

    let bytes = fs::read(&p).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    assert_eq!(n % 8, 0, "the header is padded to 8 bytes");
    // Python's json.dumps(..., separators=(",", ":"), ensure_ascii=False), byte for byte.
    let text = std::str::from_utf8(&bytes[8..8 + n]).unwrap();
    assert_eq!(
        text.trim_end_matches(' '),
        r#"{"__metadata__":{"format":"pt","k":"välue \"q\"\n"},"b":{"dtype":"F32","shape":[3,4],"data_offsets":[0,48]},"a":{"dtype":"BF16","shape":[5],"data_offsets":[48,58]},"z":{"dtype":"I64","shape":[6],"data_offsets":[58,106]},"e":{"dtype":"F32","shape":[0,3],"data_offsets":[106,106]},"s":{"dtype":"F64","shape":[],"data_offsets":[106,114]}}"#
    );
    let st = SafeTensors::deserialize(&bytes).expect("the crate reads it");
    assert_eq!(st.tensor("b").unwrap().data(), b.as_slice());
    assert_eq!(st.tensor("a").unwrap().dtype(), Dtype::BF16);
    assert_eq!(st.tensor("z").unwrap().data(), z.as_slice());
    assert_eq!(st.tensor("s").unwrap().shape(), &[] as &[usize]);
    let (_, m) = SafeTensors::read_metadata(&bytes).unwrap();
    assert_eq!(m.metadata().as_ref().unwrap()["k"], "välue \"q\"\n");
    // and so do we
    let r = SafetensorsReader::open(&p).unwrap();
    assert_eq!(r.header().metadata, meta);
    assert_eq!(r.read("a").unwrap(), a);

    // Mode: what a plain open gives (0666 less the umask), not mkstemp's 0600 —
    // the same mode as a file created here with OpenOptions.
    use std::os::unix::fs::PermissionsExt;
    let plain = d.path().join("plain");
    fs::write(&plain, b"").unwrap();
    let mode = |q: &Path| fs::metadata(q).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&p), mode(&plain));
}

#[test]
fn no_metadata_no_tensors() {
    let d = dir();
    let p = d.path().join("empty.safetensors");
    SafetensorsWriter::create(&p, vec![], &[])
        .unwrap()
        .commit()
        .unwrap();
    assert_eq!(fs::read(&p).unwrap(), st("{}      ", b""));
    SafeTensors::deserialize(&fs::read(&p).unwrap()).unwrap();
}

/// A previous file at the target, and what each failure must leave: it, alone.
struct Target {
    d: tempfile::TempDir,
    p: PathBuf,
    before: Vec<u8>,
}

impl Target {
    fn new() -> Self {
        let d = dir();
        let p = d.path().join("x.safetensors");
        let mut w =
            SafetensorsWriter::create(&p, vec![spec("old", Dtype::F32, &[1])], &[]).unwrap();
        w.write("old", Dtype::F32, &[1], &f32s(&[1.0])).unwrap();
        w.commit().unwrap();
        let before = fs::read(&p).unwrap();
        Target { d, p, before }
    }

    fn two(&self) -> SafetensorsWriter {
        SafetensorsWriter::create(
            &self.p,
            vec![spec("a", Dtype::F32, &[2]), spec("b", Dtype::F32, &[2])],
            &[],
        )
        .unwrap()
    }

    fn untouched(&self) {
        assert_eq!(fs::read(&self.p).unwrap(), self.before);
        assert_eq!(
            listing(self.d.path()),
            ["x.safetensors"],
            "no temporary file may be left"
        );
    }
}

#[test]
fn abort_and_drop_leave_the_previous_file_and_no_temp_file() {
    let t = Target::new();
    let mut w = t.two();
    w.write("a", Dtype::F32, &[2], &f32s(&[1.0, 2.0])).unwrap();
    assert_eq!(
        listing(t.d.path()).len(),
        2,
        "the temporary file exists while writing"
    );
    w.abort();
    t.untouched();
    w.commit().unwrap(); // committing after an abort does nothing
    t.untouched();
    assert_eq!(
        w.write("b", Dtype::F32, &[2], &f32s(&[1.0, 2.0]))
            .unwrap_err()
            .usage_problem(),
        Some(&UsageError::WriterClosed)
    );

    let mut w = t.two();
    w.write("a", Dtype::F32, &[2], &f32s(&[1.0, 2.0])).unwrap();
    drop(w); // a crash of the caller between writes
    t.untouched();
}

#[test]
fn commit_with_missing_tensors_is_refused_and_cleans_up() {
    let t = Target::new();
    let mut w = t.two();
    w.write("a", Dtype::F32, &[2], &f32s(&[1.0, 2.0])).unwrap();
    let e = w.commit().unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "{}: 1 declared tensors were not written (first 'b')",
            t.p.display()
        )
    );
    t.untouched();
}

#[test]
fn wrong_order_dtype_shape_and_byte_count_are_refused() {
    let t = Target::new();
    let mut w = t.two();
    let path = t.p.display().to_string();
    let msg = |e: FileError| e.to_string();
    assert_eq!(
        msg(w.write("b", Dtype::F32, &[2], &[0; 8]).unwrap_err()),
        format!("{path}: expected tensor 'a' next, got 'b'")
    );
    assert_eq!(
        msg(w.write("a", Dtype::F64, &[2], &[0; 16]).unwrap_err()),
        format!("{path}: tensor 'a' declared F32[2], got F64 [2]")
    );
    assert_eq!(
        msg(w.write("a", Dtype::F32, &[3], &[0; 12]).unwrap_err()),
        format!("{path}: tensor 'a' declared F32[2], got F32 [3]")
    );
    assert_eq!(
        msg(w
            .write_described("a", None, &[2], &[], "torch.complex64 [2]")
            .unwrap_err()),
        format!("{path}: tensor 'a' declared F32[2], got torch.complex64 [2]")
    );
    assert_eq!(
        msg(w.write("a", Dtype::F32, &[2], &[0; 7]).unwrap_err()),
        format!("{path}: tensor 'a': 7 bytes given, 8 needed")
    );
    w.write("a", Dtype::F32, &[2], &[0; 8]).unwrap();
    w.write("b", Dtype::F32, &[2], &[0; 8]).unwrap();
    assert_eq!(
        msg(w.write("c", Dtype::F32, &[2], &[0; 8]).unwrap_err()),
        format!("{path}: every declared tensor is already written (got 'c')")
    );
    drop(w);
    t.untouched();
}

#[test]
fn bad_specs_are_refused_before_any_file_exists() {
    let d = dir();
    let p = d.path().join("x.safetensors");
    let err = |specs: Vec<TensorSpec>, meta: &[(String, String)]| {
        SafetensorsWriter::create(&p, specs, meta)
            .unwrap_err()
            .to_string()
    };
    assert_eq!(
        err(vec![spec("", Dtype::F32, &[1])], &[]),
        "bad tensor name ''"
    );
    assert_eq!(
        err(vec![spec("__metadata__", Dtype::F32, &[1])], &[]),
        "bad tensor name '__metadata__'"
    );
    assert_eq!(
        err(
            vec![spec("a", Dtype::F32, &[1]), spec("a", Dtype::F32, &[1])],
            &[]
        ),
        "tensor 'a' listed twice"
    );
    assert_eq!(
        err(vec![spec("a", Dtype::F4, &[2])], &[]),
        "tensor 'a': cannot write dtype F4"
    );
    assert_eq!(
        err(vec![spec("a", Dtype::F64, &[u64::MAX])], &[]),
        format!("tensor 'a': F64[{}] is too large to address", u64::MAX)
    );
    let twice = [
        ("k".to_string(), "1".to_string()),
        ("k".to_string(), "2".to_string()),
    ];
    assert_eq!(err(vec![], &twice), "metadata key 'k' listed twice");
    let missing = d.path().join("no").join("x.safetensors");
    let e = SafetensorsWriter::create(&missing, vec![], &[])
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        format!(
            "{}: directory {} does not exist",
            missing.display(),
            d.path().join("no").display()
        )
    );
    assert!(listing(d.path()).is_empty());
}

#[test]
fn a_failing_write_cleans_up_and_blocks_the_commit() {
    // The OS refusing a write (disk full), simulated by sending the writes to /dev/full.
    let t = Target::new();
    let mut w = t.two();
    w.write("a", Dtype::F32, &[2], &f32s(&[1.0, 2.0])).unwrap();
    let Ok(full) = fs::OpenOptions::new().write(true).open("/dev/full") else {
        return;
    };
    w.redirect_for_test(full);
    let e = w
        .write("b", Dtype::F32, &[2], &f32s(&[3.0, 4.0]))
        .unwrap_err();
    assert!(matches!(e, FileError::Io { .. }), "{e}");
    assert!(e.to_string().contains("No space left on device"), "{e}");
    t.untouched();
    assert_eq!(
        w.commit().unwrap_err().usage_problem(),
        Some(&UsageError::FailedEarlier)
    );
    t.untouched();
}
