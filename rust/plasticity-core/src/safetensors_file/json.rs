//! The header's JSON as written, and Python's `repr` of it for error messages.
//!
//! serde_json's maps (and the safetensors crate, which parses into them) keep
//! the last of two equal keys and drop the first without a word; a header is
//! parsed here into [`Json`], whose objects keep every pair in file order, and
//! an object holding a key twice is refused the way Python's
//! `json.loads(..., object_pairs_hook=...)` refuses it: when the object ends
//! (so a syntax error before that wins), innermost object first, naming the
//! first key that repeats.
//!
//! [`PyRepr`] writes a value as Python's `repr` would, so the messages read
//! as they did when this validation was Python (`unknown dtype 'F7'`,
//! `got [-6]`).

use std::cell::RefCell;
use std::collections::HashSet;
use std::fmt::{self, Display, Write as _};

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};

/// A JSON value with object pairs in file order (duplicates refused at parse).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Json {
    Null,
    Bool(bool),
    /// Every integer serde_json reads as one (`-2^63 ..= 2^64 - 1`); larger
    /// integers come as [`Json::Float`], as serde_json gives them.
    Int(i128),
    Float(f64),
    Str(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

impl Json {
    /// Python's `type(v).__name__` for the value `json.loads` would give.
    pub(crate) fn py_type_name(&self) -> &'static str {
        match self {
            Json::Null => "NoneType",
            Json::Bool(_) => "bool",
            Json::Int(_) => "int",
            Json::Float(_) => "float",
            Json::Str(_) => "str",
            Json::Array(_) => "list",
            Json::Object(_) => "dict",
        }
    }
}

/// Why [`parse`] refused the text.
#[derive(Debug)]
pub(crate) enum ParseError {
    /// An object holds this key twice.
    DuplicateKey(String),
    /// Not JSON (serde_json's message; nesting deeper than 128 is one).
    Syntax(serde_json::Error),
}

/// Parse one JSON value (surrounding whitespace allowed, nothing else).
pub(crate) fn parse(text: &str) -> Result<Json, ParseError> {
    let dup = RefCell::new(None);
    let mut de = serde_json::Deserializer::from_str(text);
    let parsed = Seed { dup: &dup }
        .deserialize(&mut de)
        .and_then(|v| de.end().map(|()| v));
    match (parsed, dup.into_inner()) {
        (_, Some(key)) => Err(ParseError::DuplicateKey(key)),
        (Ok(v), None) => Ok(v),
        (Err(e), None) => Err(ParseError::Syntax(e)),
    }
}

/// Deserializes a [`Json`]; the first duplicate key found is left in `dup`.
#[derive(Clone, Copy)]
struct Seed<'a> {
    dup: &'a RefCell<Option<String>>,
}

impl<'de> DeserializeSeed<'de> for Seed<'_> {
    type Value = Json;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Json, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Seed<'_> {
    type Value = Json;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Json, E> {
        Ok(Json::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Json, E> {
        Ok(Json::Int(v.into()))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Json, E> {
        Ok(Json::Int(v.into()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Json, E> {
        Ok(Json::Float(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Json, E> {
        Ok(Json::Str(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Json, E> {
        Ok(Json::Str(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(self)? {
            out.push(v);
        }
        Ok(Json::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
        let mut pairs = Vec::new();
        while let Some(k) = map.next_key::<String>()? {
            let v = map.next_value_seed(self)?;
            pairs.push((k, v));
        }
        // The whole object is read: now, like Python's object_pairs_hook, refuse a repeated key.
        let mut seen = HashSet::with_capacity(pairs.len());
        if let Some((k, _)) = pairs.iter().find(|(k, _)| !seen.insert(k.as_str())) {
            *self.dup.borrow_mut() = Some(k.clone());
            return Err(de::Error::custom("duplicate key"));
        }
        Ok(Json::Object(pairs))
    }
}

/// Python's `repr` of a string, an integer list, or a JSON value.
pub struct PyRepr<'a, T: ?Sized>(pub &'a T);

impl Display for PyRepr<'_, str> {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write_py_str(f, self.0)
    }
}

impl Display for PyRepr<'_, String> {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write_py_str(f, self.0)
    }
}

impl Display for PyRepr<'_, [u64]> {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_char('[')?;
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{d}")?;
        }
        f.write_char(']')
    }
}

impl Display for PyRepr<'_, Json> {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self.0 {
            Json::Null => f.write_str("None"),
            Json::Bool(true) => f.write_str("True"),
            Json::Bool(false) => f.write_str("False"),
            Json::Int(i) => write!(f, "{i}"),
            Json::Float(x) => f.write_str(&py_float(*x)),
            Json::Str(s) => write_py_str(f, s),
            Json::Array(items) => {
                f.write_char('[')?;
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{}", PyRepr(v))?;
                }
                f.write_char(']')
            }
            Json::Object(pairs) => {
                f.write_char('{')?;
                for (i, (k, v)) in pairs.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{}: {}", PyRepr(k.as_str()), PyRepr(v))?;
                }
                f.write_char('}')
            }
        }
    }
}

/// `repr(s)`: single quotes unless `s` holds `'` and no `"`; backslash
/// escapes for `\\`, the quote, `\t` `\n` `\r` and for characters that are not
/// printable (`\xNN`, `\uNNNN`, `\UNNNNNNNN`).
fn write_py_str(f: &mut fmt::Formatter, s: &str) -> fmt::Result {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    f.write_char(quote)?;
    for c in s.chars() {
        match c {
            '\\' => f.write_str("\\\\")?,
            '\t' => f.write_str("\\t")?,
            '\n' => f.write_str("\\n")?,
            '\r' => f.write_str("\\r")?,
            c if c == quote => write!(f, "\\{c}")?,
            c if py_printable(c) => f.write_char(c)?,
            c if (c as u32) < 0x100 => write!(f, "\\x{:02x}", c as u32)?,
            c if (c as u32) < 0x10000 => write!(f, "\\u{:04x}", c as u32)?,
            c => write!(f, "\\U{:08x}", c as u32)?,
        }
    }
    f.write_char(quote)
}

/// Python's `str.isprintable` for one character: false for control, format,
/// private-use, separator (but the ASCII space) and non-characters. Python
/// also escapes unassigned code points, which would need Unicode's tables;
/// those are written as they are here.
fn py_printable(c: char) -> bool {
    let u = c as u32;
    !matches!(u,
        0x00..=0x1f | 0x7f..=0xa0 | 0xad
        // separators (Zs but the space, Zl, Zp)
        | 0x1680 | 0x2000..=0x200a | 0x2028 | 0x2029 | 0x202f | 0x205f | 0x3000
        // format characters (Cf)
        | 0x0600..=0x0605 | 0x061c | 0x06dd | 0x070f | 0x0890 | 0x0891 | 0x08e2 | 0x180e
        | 0x200b..=0x200f | 0x202a..=0x202e | 0x2060..=0x2064 | 0x2066..=0x206f | 0xfeff
        | 0xfff9..=0xfffb | 0x110bd | 0x110cd | 0x13430..=0x1343f | 0x1bca0..=0x1bca3
        | 0x1d173..=0x1d17a | 0xe0001 | 0xe0020..=0xe007f
        // private use (Co) and non-characters
        | 0xe000..=0xf8ff | 0xf0000..=0x10ffff | 0xfdd0..=0xfdef)
        && u & 0xfffe != 0xfffe
}

/// Python's `repr(x)` of a float: the shortest digits that read back as `x`,
/// positional when the decimal exponent is in `-4..16`, else `1.5e+16` style.
pub(crate) fn py_float(x: f64) -> String {
    if x.is_nan() {
        return "nan".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf" } else { "-inf" }.into();
    }
    // `{:e}` gives Rust's shortest round-trip digits, e.g. "-1.2345e-5", "1e16".
    let s = format!("{x:e}");
    let (mant, exp) = s.split_once('e').expect("{:e} always has an exponent");
    let exp: i32 = exp.parse().expect("{:e} exponent is an integer");
    let (sign, mant) = mant.strip_prefix('-').map_or(("", mant), |m| ("-", m));
    let digits: String = mant.chars().filter(|c| *c != '.').collect();
    let decpt = exp + 1; // the point goes after this many digits
    let mut out = String::from(sign);
    if -4 < decpt && decpt <= 16 {
        let n = digits.len() as i32;
        if decpt <= 0 {
            out.push_str("0.");
            out.extend(std::iter::repeat_n('0', (-decpt) as usize));
            out.push_str(&digits);
        } else if decpt >= n {
            out.push_str(&digits);
            out.extend(std::iter::repeat_n('0', (decpt - n) as usize));
            out.push_str(".0");
        } else {
            out.push_str(&digits[..decpt as usize]);
            out.push('.');
            out.push_str(&digits[decpt as usize..]);
        }
    } else {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let e = decpt - 1;
        let _ = write!(
            out,
            "e{}{:02}",
            if e < 0 { '-' } else { '+' },
            e.unsigned_abs()
        );
    }
    out
}
