//! The decoder's fast path: a record's JSON read in one hand-written pass, for the
//! shapes producers write (no escapes, plain numbers, the payload after its type and
//! version).
//!
//! It yields the same [`Envelope`] the serde pass yields, or `None` whenever it is not
//! sure: an escape, a number it cannot read exactly, a repeated key, deep nesting, any
//! syntax error. The serde pass then reads the record and gives the verdict and the
//! message. So this path can only make a valid record cheaper, never change an answer;
//! `tests` holds it to the serde pass on adversarial records.

use std::borrow::Cow;

use smallvec::SmallVec;

use super::decode::{Envelope, Payload, absent_fields, schema_of};
use super::json::Loose;
use crate::model::schema::{FieldType, Registry, VersionSchema};

/// Nesting deeper than this goes to serde (whose limit is 128).
const MAX_DEPTH: u32 = 64;

/// `10^0 ..= 10^22`: every one exact in an `f64`.
const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18,
    1e19, 1e20, 1e21, 1e22,
];

/// Reads the envelope of `text` into `envelope` (a default one), when this path can
/// read it exactly; `None` leaves `envelope` half read.
pub(super) fn read<'a>(text: &'a str, registry: &Registry, envelope: &mut Envelope<'a>) -> Option<()> {
    let mut reader = Reader {
        text,
        bytes: text.as_bytes(),
        at: 0,
    };
    reader.ws();
    let mut seen = 0u8;
    reader.object(|r, key| {
        let (bit, slot) = match key {
            "event_id" => (1, &mut envelope.event_id),
            "event_type" => (2, &mut envelope.event_type),
            "event_version" => (4, &mut envelope.event_version),
            "event_time" => (8, &mut envelope.event_time),
            "user_id" => (16, &mut envelope.user_id),
            "payload" => {
                (seen & 32 == 0).then_some(())?;
                seen |= 32;
                match schema_of(registry, envelope) {
                    Some(schema) => r.payload(schema, &mut envelope.payload)?,
                    // Before its type and version (rare): kept as text, for the
                    // decoder to read once it knows the schema, as serde's pass does.
                    None => {
                        envelope.payload = match r.raw_text(1)? {
                            "null" => Payload::Absent,
                            text => Payload::Raw(serde_json::from_str(text).ok()?),
                        }
                    }
                }
                return Some(Key::Known);
            }
            _ => return r.skip(1).map(|()| Key::Other),
        };
        (seen & bit == 0).then_some(())?;
        seen |= bit;
        *slot = r.loose(1)?;
        Some(Key::Known)
    })?;
    reader.ws();
    (reader.at == reader.bytes.len()).then_some(())
}

/// The envelope of `text`, when the fast path can read it.
#[cfg(test)]
fn envelope<'a>(text: &'a str, registry: &Registry) -> Option<Envelope<'a>> {
    let mut envelope = Envelope::default();
    read(text, registry, &mut envelope).map(|()| envelope)
}

/// Whose a key is: the caller's, which tells its repeats itself, or the object's.
enum Key {
    Known,
    Other,
}

/// What [`Reader::scan_number`] found.
#[derive(Default)]
struct Scanned {
    /// Where the number's text ends.
    end: usize,
    negative: bool,
    /// The first 19 digits, without the point.
    mantissa: u64,
    /// How many digits there are in all.
    digits: u32,
    /// The power of ten `mantissa` is scaled by, when `digits <= 19`.
    exponent: i32,
    /// The value is below `10^order`.
    order: i32,
}

struct Reader<'a> {
    text: &'a str,
    bytes: &'a [u8],
    at: usize,
}

/// The JSON number at the start of `bytes`, read as the decode reads it; `None` when
/// it is not one.
pub(super) fn leading_number(bytes: &[u8]) -> Option<f64> {
    // A number's reading needs no text (the standard parser checks its digits' UTF-8).
    Reader {
        text: "",
        bytes,
        at: 0,
    }
    .number()
}

/// Bytes of `x` that are zero get their high bit set; the lowest flagged byte is
/// always a true one.
fn zero_bytes(x: u64) -> u64 {
    x.wrapping_sub(0x0101_0101_0101_0101) & !x & 0x8080_8080_8080_8080
}

/// A key's first eight bytes and its length, in one word.
fn fingerprint(key: &str) -> u64 {
    let bytes = key.as_bytes();
    let mut head = [0u8; 8];
    let n = bytes.len().min(8);
    head[..n].copy_from_slice(&bytes[..n]);
    u64::from_le_bytes(head) ^ ((bytes.len() as u64) << 56)
}

impl<'a> Reader<'a> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.at += 1;
        }
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        self.ws();
        (self.peek()? == byte).then(|| self.at += 1)
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let end = self.at + word.len();
        (self.bytes.get(self.at..end)? == word).then(|| self.at = end)
    }

    /// A string without escapes or control characters, borrowed.
    fn string(&mut self) -> Option<&'a str> {
        if self.peek()? != b'"' {
            return None;
        }
        let start = self.at + 1;
        let mut i = start;
        // Eight bytes at a time to the first quote, backslash or control byte (the
        // lowest byte flagged is a true one), then byte by byte to it.
        while let Some(chunk) = self.bytes.get(i..i + 8) {
            let x = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
            let stop = zero_bytes(x ^ 0x2222_2222_2222_2222)
                | zero_bytes(x ^ 0x5c5c_5c5c_5c5c_5c5c)
                | (x.wrapping_sub(0x2020_2020_2020_2020) & !x & 0x8080_8080_8080_8080);
            if stop != 0 {
                i += (stop.trailing_zeros() / 8) as usize;
                break;
            }
            i += 8;
        }
        loop {
            match *self.bytes.get(i)? {
                b'"' => break,
                b'\\' | 0..0x20 => return None,
                _ => i += 1,
            }
        }
        self.at = i + 1;
        // Both ends are at a quote, so on character boundaries.
        self.text.get(start..i)
    }

    /// A number's text checked against JSON's grammar, and what it says.
    fn scan_number(&self) -> Option<Scanned> {
        let bytes = self.bytes;
        let mut i = self.at;
        let negative = bytes.get(i) == Some(&b'-');
        i += usize::from(negative);
        let mut number = Scanned {
            negative,
            ..Scanned::default()
        };
        let digits = |number: &mut Scanned, i: &mut usize| {
            let first = *i;
            while let Some(&d @ b'0'..=b'9') = bytes.get(*i) {
                number.digits += 1;
                if number.digits <= 19 {
                    number.mantissa = number.mantissa * 10 + u64::from(d - b'0');
                }
                *i += 1;
            }
            (*i - first) as i32
        };
        let integer = match *bytes.get(i)? {
            b'0' => {
                i += 1;
                1
            }
            b'1'..=b'9' => digits(&mut number, &mut i),
            _ => return None,
        };
        let mut fraction = 0;
        if bytes.get(i) == Some(&b'.') {
            i += 1;
            fraction = digits(&mut number, &mut i);
            if fraction == 0 {
                return None;
            }
        }
        let mut explicit: i32 = 0;
        if let Some(b'e' | b'E') = bytes.get(i) {
            i += 1;
            let sign = match bytes.get(i) {
                Some(b'-') => -1,
                _ => 1,
            };
            i += usize::from(matches!(bytes.get(i), Some(b'-' | b'+')));
            let first = i;
            while let Some(&d @ b'0'..=b'9') = bytes.get(i) {
                // More than three exponent digits: serde's.
                if i - first == 3 {
                    return None;
                }
                explicit = explicit * 10 + i32::from(d - b'0');
                i += 1;
            }
            if i == first {
                return None;
            }
            explicit *= sign;
        }
        number.end = i;
        number.exponent = explicit - fraction;
        number.order = integer + explicit;
        Some(number)
    }

    /// A number, read exactly as serde_json (with `float_roundtrip`) reads it: every
    /// reading is the correctly rounded value (integers as `u64 as f64` is), so the
    /// exact shortcut where it applies and the standard parser elsewhere agree with
    /// it. Out of range is serde's error.
    fn number(&mut self) -> Option<f64> {
        let number = self.scan_number()?;
        let m = number.mantissa as f64;
        let value = match number.exponent {
            _ if number.digits > 19 => None,
            _ if number.mantissa == 0 => Some(0.0),
            0 => Some(m),
            _ if number.mantissa > 1 << 53 => None,
            e @ 1..=22 => Some(m * POW10[e as usize]),
            e @ -22..=-1 => Some(m / POW10[(-e) as usize]),
            _ => None,
        };
        let value = match value {
            Some(v) if number.negative => -v,
            Some(v) => v,
            None => std::str::from_utf8(self.bytes.get(self.at..number.end)?)
                .ok()?
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())?,
        };
        self.at = number.end;
        Some(value)
    }

    /// A number checked and dropped: any in grammar that is surely in range (below
    /// `10^308`, so finite however it rounds).
    fn skip_number(&mut self) -> Option<()> {
        let number = self.scan_number()?;
        (number.order <= 308).then(|| self.at = number.end)
    }

    /// An object: `field` is called with each key and the reader at its value. A key
    /// seen twice in one object is serde's (it refuses the record): `field` tells
    /// repeats of the keys it knows itself, this the others.
    fn object(&mut self, mut field: impl FnMut(&mut Self, &'a str) -> Option<Key>) -> Option<()> {
        if self.open(b'{', b'}')? {
            return Some(());
        }
        // Each key with its first eight bytes and length: keys are told apart by
        // these almost always, without a string comparison.
        let mut others: SmallVec<[(u64, &'a str); 8]> = SmallVec::new();
        loop {
            self.ws();
            let key = self.string()?;
            self.expect(b':')?;
            self.ws();
            if let Key::Other = field(self, key)? {
                let print = fingerprint(key);
                if others.iter().any(|&(p, k)| p == print && k == key) {
                    return None;
                }
                others.push((print, key));
            }
            if self.close(b'}')? {
                return Some(());
            }
        }
    }

    /// An array: `element` is called with the reader at each element.
    fn array(&mut self, mut element: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        if self.open(b'[', b']')? {
            return Some(());
        }
        loop {
            self.ws();
            element(self)?;
            if self.close(b']')? {
                return Some(());
            }
        }
    }

    /// An object's or array's opening; `true` when it closes at once (`{}`, `[]`).
    fn open(&mut self, open: u8, close: u8) -> Option<bool> {
        self.expect(open)?;
        self.ws();
        let empty = self.peek()? == close;
        self.at += usize::from(empty);
        Some(empty)
    }

    /// After a member: a comma (`false`, more follow) or the closing byte (`true`).
    fn close(&mut self, close: u8) -> Option<bool> {
        self.ws();
        let byte = self.peek()?;
        (byte == b',' || byte == close).then(|| self.at += 1)?;
        Some(byte == close)
    }

    /// Any value, checked and dropped.
    fn skip(&mut self, depth: u32) -> Option<()> {
        match self.peek()? {
            b'"' => self.string().map(drop),
            b'{' if depth < MAX_DEPTH => self.object(|r, _| r.skip(depth + 1).map(|()| Key::Other)),
            b'[' if depth < MAX_DEPTH => self.array(|r| r.skip(depth + 1)),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            b'-' | b'0'..=b'9' => self.skip_number(),
            _ => None,
        }
    }

    /// Any value as the checks see it ([`Loose`]).
    fn loose(&mut self, depth: u32) -> Option<Loose<'a>> {
        Some(match self.peek()? {
            b'"' => Loose::Str(Cow::Borrowed(self.string()?)),
            b't' => self.literal(b"true").map(|()| Loose::Bool(true))?,
            b'f' => self.literal(b"false").map(|()| Loose::Bool(false))?,
            b'n' => self.literal(b"null").map(|()| Loose::Null)?,
            b'[' if depth < MAX_DEPTH => {
                let mut items = Some(Vec::new());
                self.array(|r| {
                    match (r.loose(depth + 1)?, items.as_mut()) {
                        (Loose::Str(s), Some(list)) => list.push(s),
                        _ => items = None,
                    }
                    Some(())
                })?;
                Loose::List(items)
            }
            b'{' => self.skip(depth).map(|()| Loose::Object)?,
            b'-' | b'0'..=b'9' => Loose::Num(self.number()?),
            _ => return None,
        })
    }

    /// Any value's text, checked.
    fn raw_text(&mut self, depth: u32) -> Option<&'a str> {
        let start = self.at;
        self.skip(depth)?;
        self.text.get(start..self.at)
    }

    /// A field of type `object` or `any`: its text, checked.
    fn raw(&mut self, depth: u32) -> Option<Loose<'a>> {
        Some(match self.raw_text(depth)? {
            "null" => Loose::Null,
            text => Loose::Raw(text),
        })
    }

    /// The payload, read against `schema` into `payload`: null, or an object.
    fn payload(&mut self, schema: &VersionSchema, payload: &mut Payload<'a>) -> Option<()> {
        if self.peek()? == b'n' {
            return self.literal(b"null").map(|()| *payload = Payload::Absent);
        }
        // Filled where it stands: the fields are a few hundred bytes inline.
        *payload = Payload::Fields(absent_fields(schema));
        let Payload::Fields(found) = payload else {
            unreachable!("just set")
        };
        let mut seen = 0u64;
        self.object(|r, key| match schema.fields.iter().position(|f| f.name == key) {
            // (A schema of more than 64 fields is serde's.)
            Some(index) => {
                (index < 64).then_some(())?;
                (seen & 1 << index == 0).then_some(())?;
                seen |= 1 << index;
                found[index] = match schema.fields[index].ty {
                    FieldType::Object | FieldType::Any => r.raw(2)?,
                    _ => r.loose(2)?,
                };
                Some(Key::Known)
            }
            None => r.skip(2).map(|()| Key::Other),
        })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::dataflow::ingest::decode::tests::recsys;
    use crate::dataflow::ingest::decode::{ENVELOPE_FIELDS, serde_envelope};

    /// When the fast path reads a record, serde reads the same envelope from it, to
    /// the bit (`Debug` tells -0.0 from 0.0).
    fn agrees(registry: &Registry, text: &str) -> bool {
        let Some(fast) = envelope(text, registry) else {
            return false;
        };
        match serde_envelope(text, registry) {
            Ok(slow) => assert_eq!(format!("{fast:?}"), format!("{slow:?}"), "{text}"),
            Err(e) => panic!("the fast path read a record serde refuses ({e}): {text}"),
        }
        true
    }

    const ENVELOPE: &str = r#""event_id":"e1","event_type":"ecommerce.purchase_completed","event_version":"2.0","event_time":10.5,"user_id":"u1""#;

    #[test]
    fn records_as_producers_write_them_take_the_fast_path() {
        let job = recsys();
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/data/sample/part-000.jsonl.gz");
        let mut text = String::new();
        std::io::Read::read_to_string(
            &mut flate2::read::MultiGzDecoder::new(std::fs::File::open(path).unwrap()),
            &mut text,
        )
        .unwrap();
        let (mut fast, mut valid) = (0, 0);
        for line in text.lines() {
            if serde_envelope(line, &job.registry).is_ok() {
                valid += 1;
                fast += usize::from(agrees(&job.registry, line));
            }
        }
        assert!(valid > 2000, "{valid}");
        assert_eq!(
            fast, valid,
            "every valid sample record has no escape or odd number"
        );
    }

    #[test]
    fn numbers_read_as_serde_reads_them() {
        let job = recsys();
        // Read by the exact shortcut...
        for number in [
            "0",
            "-0",
            "0.0",
            "-0.0",
            "1",
            "-1",
            "10.5",
            "1e3",
            "1E+3",
            "1.5e-3",
            "-2.25E2",
            "9007199254740992",
            "1767225600.25",
            "0.1",
            "123456789.123456",
            "1e22",
            "1e-22",
            "4.35",
            "99.99",
            // ... and by the standard parser.
            "1e23",
            "12345678901234567890",
            "9007199254740993",
            "0.30000000000000004",
            "1.5e-30",
            "1.3573143749999999",
            "3428.3799999999997",
            "-1e300",
            "1e-400",
            "123456789012345678901234567890.5",
        ] {
            let record =
                format!(r#"{{{ENVELOPE},"payload":{{"item_id":"i","price":{number},"x":{number}}}}}"#);
            assert!(agrees(&job.registry, &record), "{number}");
        }
        for hard in [
            "01", "1.", ".5", "1e", "1e+", "-", "+1", "1e400", "0x10", "NaN", "1e1000",
        ] {
            let record = format!(r#"{{{ENVELOPE},"payload":{{"item_id":"i","price":{hard}}}}}"#);
            assert!(envelope(&record, &job.registry).is_none(), "{hard}");
        }
    }

    #[test]
    fn what_it_is_not_sure_of_goes_to_serde() {
        let job = recsys();
        for record in [
            // An escape, a control character, a key repeated in the payload, the
            // envelope's others, the envelope, a nested object; text after the record;
            // a payload not an object; a trailing comma; a cut record; deep nesting.
            format!(r#"{{{ENVELOPE},"payload":{{"item_id":"i\"1","price":1}}}}"#),
            format!("{{{ENVELOPE},\"payload\":{{\"item_id\":\"i\t\",\"price\":1}}}}"),
            format!(r#"{{{ENVELOPE},"payload":{{"item_id":"i","price":1,"price":2}}}}"#),
            format!(r#"{{{ENVELOPE},"x":1,"x":1,"payload":{{"item_id":"i","price":1}}}}"#),
            format!(r#"{{{ENVELOPE},"user_id":"u2","payload":{{"item_id":"i","price":1}}}}"#),
            format!(r#"{{{ENVELOPE},"payload":{{"item_id":"i","price":1,"o":{{"a":1,"a":1}}}}}}"#),
            format!(r#"{{{ENVELOPE},"payload":{{"item_id":"i","price":1}}}} x"#),
            format!(r#"{{{ENVELOPE},"payload":[1]}}"#),
            format!(r#"{{{ENVELOPE},"payload":{{"item_id":"i","price":1,}}}}"#),
            format!(r#"{{{ENVELOPE},"payload":{{"item_id":"i","price":1}}"#),
            format!(
                r#"{{{ENVELOPE},"payload":{{"item_id":"i","price":1,"deep":{}1{}}}}}"#,
                "[".repeat(70),
                "]".repeat(70)
            ),
        ] {
            assert!(envelope(&record, &job.registry).is_none(), "{record}");
        }
        // A payload before its type is kept as text, as serde's pass keeps it.
        let first = r#"{"payload":{"a":[1,{"b":"c"}]},"event_id":"e","event_type":"x.y","event_version":"1.0","event_time":1,"user_id":"u"}"#;
        assert!(agrees(&job.registry, first));
        let first = format!(r#"{{"payload":{{"item_id":"i","price":1}},{ENVELOPE}}}"#);
        assert!(agrees(&job.registry, &first));
    }

    /// Any JSON-ish text: values of every kind, odd numbers and strings, repeated
    /// keys, stray bytes.
    fn value(depth: u32) -> BoxedStrategy<String> {
        let atom = prop_oneof![
            Just("null".to_owned()),
            Just("true".to_owned()),
            Just("fals".to_owned()),
            "-?(0|[1-9][0-9]{0,20})(\\.[0-9]{0,4})?([eE][+-]?[0-9]{0,3})?",
            "\"([a-z0-9 ]|\\\\[\"n/u]|\u{e9}|\t){0,6}\"",
        ];
        if depth == 0 {
            return atom.boxed();
        }
        prop_oneof![
            3 => atom,
            1 => prop::collection::vec(value(depth - 1), 0..4).prop_map(|v| format!("[{}]", v.join(","))),
            1 => prop::collection::vec((prop::sample::select(vec!["a", "b", "item_id", "price", "features_snapshot", "recommended_items"]), value(depth - 1)), 0..4)
                .prop_map(|kv| format!("{{{}}}", kv.iter().map(|(k, v)| format!("\"{k}\": {v}")).collect::<Vec<_>>().join(","))),
        ]
        .boxed()
    }

    fn field() -> impl Strategy<Value = String> {
        let name = prop::sample::select([&ENVELOPE_FIELDS[..], &["session_id"]].concat());
        let known = prop_oneof![
            Just("\"ecommerce.purchase_completed\"".to_owned()),
            Just("\"2.0\"".to_owned()),
            Just("\"1.0\"".to_owned()),
            Just("\"recommendation.items_shown\"".to_owned()),
            Just(r#"{"item_id":"i","price":2.5,"category":"c"}"#.to_owned()),
            Just(r#"{"impression_id":"i","model_version":"m","recommended_items":["a","b"],"features_snapshot":{"n":1}}"#.to_owned()),
        ];
        (name, prop_oneof![known, value(3)]).prop_map(|(k, v)| format!("\"{k}\" : {v}"))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn numbers_of_any_form_read_as_serde_reads_them(
            number in "-?(0|[1-9][0-9]{0,22})(\\.[0-9]{1,22})?([eE][+-]?[0-9]{1,3})?",
        ) {
            let job = recsys();
            let record = format!(
                r#"{{{ENVELOPE},"payload":{{"item_id":"i","price":{number},"x":[{number}]}}}}"#
            );
            agrees(&job.registry, &record);
        }

        #[test]
        fn payloads_of_any_shape_read_as_serde_reads_them(
            fields in prop::collection::vec(
                (prop::sample::select(vec!["impression_id", "model_version", "recommended_items", "features_snapshot", "x"]), value(3)),
                0..6,
            ),
            ws in "[ \t\n]{0,2}",
        ) {
            let job = recsys();
            let members: Vec<String> = fields.iter().map(|(k, v)| format!("{ws}\"{k}\"{ws}:{ws}{v}{ws}")).collect();
            let record = format!(
                r#"{{"event_id":"e","event_type":"recommendation.items_shown","event_version":"1.0","event_time":1,"user_id":"u","payload":{{{}}}}}"#,
                members.join(",")
            );
            agrees(&job.registry, &record);
        }

        #[test]
        fn the_fast_path_never_disagrees_with_serde(
            fields in prop::collection::vec(field(), 0..9),
            cut in any::<prop::sample::Index>(),
            truncate in any::<bool>(),
        ) {
            let job = recsys();
            let record = format!("{{{}}}", fields.join(","));
            agrees(&job.registry, &record);
            if truncate {
                let end = cut.index(record.len() + 1);
                if let Some(prefix) = record.get(..end) {
                    agrees(&job.registry, prefix);
                }
            }
        }
    }
}
