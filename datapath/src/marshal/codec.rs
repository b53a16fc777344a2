//! The canonical encoding (docs/wire.md, "Marshalling"): fixed-width
//! little-endian integers, lengths as `u32`, no padding, nothing that
//! depends on the machine's word size or byte order. [`Reader`] enforces
//! limits on lengths, element counts and nesting, so a hostile peer cannot
//! make the decoder allocate without bound, loop for long or overflow the
//! stack.

use std::collections::BTreeMap;

/// Why bytes did not decode. Small and `Copy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The input ends in the middle of a value.
    #[error("unexpected end of input")]
    UnexpectedEnd,
    /// A `bool` byte other than 0 or 1.
    #[error("invalid bool byte {0}")]
    InvalidBool(u8),
    /// A string that is not UTF-8.
    #[error("string is not UTF-8")]
    InvalidUtf8,
    /// A `char` that is not a Unicode scalar value.
    #[error("invalid char {0:#x}")]
    InvalidChar(u32),
    /// An `Option` or enum tag with no matching variant.
    #[error("invalid tag {tag} for {type_name}")]
    InvalidTag {
        /// The type being decoded.
        type_name: &'static str,
        /// The tag read.
        tag: u32,
    },
    /// A length prefix above the reader's limit.
    #[error("length {len} exceeds the limit {max}")]
    TooLong {
        /// The length read.
        len: u64,
        /// The limit in force.
        max: u64,
    },
    /// More sequence elements in total than the reader allows.
    #[error("too many elements")]
    TooManyItems,
    /// Values nested deeper than the reader allows.
    #[error("nesting deeper than {0}")]
    TooDeep(u32),
    /// Map keys that are not in strictly ascending order (the encoding of a
    /// map is canonical: one encoding per value).
    #[error("map keys out of order or repeated")]
    UnorderedKeys,
    /// Bytes left over after the last value.
    #[error("{0} bytes after the last value")]
    TrailingBytes(usize),
}

/// Limits a [`Reader`] enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The longest byte string, string or sequence, in elements.
    pub max_len: u32,
    /// The total number of sequence elements across the whole input.
    pub max_items: u64,
    /// How deep structs, enums, options, boxes and sequences may nest.
    pub max_depth: u32,
}

impl Default for Limits {
    /// Generous for RPC messages (up to 16 MiB) yet bounded: 16 Mi
    /// elements per sequence and in total, nesting 64 deep.
    fn default() -> Self {
        Limits {
            max_len: 16 * 1024 * 1024,
            max_items: 16 * 1024 * 1024,
            max_depth: 64,
        }
    }
}

/// A cursor over encoded bytes, with the [`Limits`] that keep decoding of
/// untrusted input bounded.
#[derive(Debug)]
pub struct Reader<'a> {
    bytes: &'a [u8],
    limits: Limits,
    items_left: u64,
    depth: u32,
}

impl<'a> Reader<'a> {
    /// A reader with the default limits.
    pub fn new(bytes: &'a [u8]) -> Self {
        Self::with_limits(bytes, Limits::default())
    }

    /// A reader with the given limits.
    pub fn with_limits(bytes: &'a [u8], limits: Limits) -> Self {
        Reader {
            bytes,
            limits,
            items_left: limits.max_items,
            depth: 0,
        }
    }

    /// Bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.bytes.len()
    }

    /// Takes the next `len` bytes.
    pub fn take(&mut self, len: usize) -> Result<&'a [u8], DecodeError> {
        if len > self.bytes.len() {
            return Err(DecodeError::UnexpectedEnd);
        }
        let (head, tail) = self.bytes.split_at(len);
        self.bytes = tail;
        Ok(head)
    }

    /// Takes the next `N` bytes as an array.
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    /// Reads a `u32` length prefix for a sequence of `len` elements and
    /// charges it against the limits.
    pub fn sequence_len(&mut self) -> Result<usize, DecodeError> {
        let len = u32::from_le_bytes(self.array()?);
        if len > self.limits.max_len {
            return Err(DecodeError::TooLong {
                len: u64::from(len),
                max: u64::from(self.limits.max_len),
            });
        }
        let len64 = u64::from(len);
        if len64 > self.items_left {
            return Err(DecodeError::TooManyItems);
        }
        self.items_left -= len64;
        usize::try_from(len).map_err(|_| DecodeError::TooManyItems)
    }

    /// Runs `decode` one nesting level deeper, failing past the limit.
    pub fn nested<T>(
        &mut self,
        decode: impl FnOnce(&mut Self) -> Result<T, DecodeError>,
    ) -> Result<T, DecodeError> {
        if self.depth >= self.limits.max_depth {
            return Err(DecodeError::TooDeep(self.limits.max_depth));
        }
        self.depth += 1;
        let result = decode(self);
        self.depth -= 1;
        result
    }

    /// Checks that every byte was consumed.
    pub fn finish(&self) -> Result<(), DecodeError> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes(self.bytes.len()))
        }
    }
}

/// A value with a canonical encoding.
pub trait Encode {
    /// Appends the encoding of `self` to `out`.
    ///
    /// # Panics
    /// If a sequence inside is longer than `u32::MAX` elements: such a value
    /// has no encoding (and is far beyond any message limit).
    fn encode(&self, out: &mut Vec<u8>);

    /// Appends the encodings of `items` one after another. Byte slices
    /// override this to copy in one go.
    #[doc(hidden)]
    fn encode_items(items: &[Self], out: &mut Vec<u8>)
    where
        Self: Sized,
    {
        for item in items {
            item.encode(out);
        }
    }
}

/// A value that can be decoded from its canonical encoding.
pub trait Decode: Sized {
    /// Reads one value.
    fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError>;

    /// Reads `count` values (already charged against the limits). The
    /// vector grows with the input, never ahead of it, so a forged count
    /// cannot make it allocate more than the input's size.
    #[doc(hidden)]
    fn decode_items(reader: &mut Reader<'_>, count: usize) -> Result<Vec<Self>, DecodeError> {
        let mut items = Vec::with_capacity(count.min(reader.remaining()));
        for _ in 0..count {
            items.push(Self::decode(reader)?);
        }
        Ok(items)
    }
}

/// Encodes `value` into a fresh vector.
pub fn to_vec<T: Encode + ?Sized>(value: &T) -> Vec<u8> {
    let mut out = Vec::new();
    value.encode(&mut out);
    out
}

/// Decodes exactly one `T` from `bytes` with the default limits; trailing
/// bytes are an error.
pub fn from_slice<T: Decode>(bytes: &[u8]) -> Result<T, DecodeError> {
    let mut reader = Reader::new(bytes);
    let value = T::decode(&mut reader)?;
    reader.finish()?;
    Ok(value)
}

fn encode_len(len: usize, out: &mut Vec<u8>) {
    let len = u32::try_from(len).expect("sequence longer than u32::MAX elements");
    out.extend_from_slice(&len.to_le_bytes());
}

macro_rules! integers {
    ($($ty:ty),*) => {$(
        impl Encode for $ty {
            fn encode(&self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
        }
        impl Decode for $ty {
            fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
                Ok(<$ty>::from_le_bytes(reader.array()?))
            }
        }
    )*};
}

integers!(u16, u32, u64, u128, i8, i16, i32, i64, i128, f32, f64);

impl Encode for u8 {
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(*self);
    }

    fn encode_items(items: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(items);
    }
}

impl Decode for u8 {
    fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(reader.take(1)?[0])
    }

    fn decode_items(reader: &mut Reader<'_>, count: usize) -> Result<Vec<u8>, DecodeError> {
        Ok(reader.take(count)?.to_vec())
    }
}

impl Encode for bool {
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(u8::from(*self));
    }
}

impl Decode for bool {
    fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        match u8::decode(reader)? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(DecodeError::InvalidBool(other)),
        }
    }
}

impl Encode for char {
    fn encode(&self, out: &mut Vec<u8>) {
        u32::from(*self).encode(out);
    }
}

impl Decode for char {
    fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let scalar = u32::decode(reader)?;
        char::from_u32(scalar).ok_or(DecodeError::InvalidChar(scalar))
    }
}

impl Encode for () {
    fn encode(&self, _out: &mut Vec<u8>) {}
}

impl Decode for () {
    fn decode(_reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(())
    }
}

impl Encode for str {
    fn encode(&self, out: &mut Vec<u8>) {
        self.as_bytes().encode(out);
    }
}

impl Encode for String {
    fn encode(&self, out: &mut Vec<u8>) {
        self.as_str().encode(out);
    }
}

impl Decode for String {
    fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let bytes = Vec::<u8>::decode(reader)?;
        String::from_utf8(bytes).map_err(|_| DecodeError::InvalidUtf8)
    }
}

impl<T: Encode> Encode for [T] {
    fn encode(&self, out: &mut Vec<u8>) {
        encode_len(self.len(), out);
        T::encode_items(self, out);
    }
}

impl<T: Encode> Encode for Vec<T> {
    fn encode(&self, out: &mut Vec<u8>) {
        self.as_slice().encode(out);
    }
}

impl<T: Decode> Decode for Vec<T> {
    fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let count = reader.sequence_len()?;
        reader.nested(|reader| T::decode_items(reader, count))
    }
}

impl<T: Encode, const N: usize> Encode for [T; N] {
    fn encode(&self, out: &mut Vec<u8>) {
        T::encode_items(self, out);
    }
}

impl<T: Decode, const N: usize> Decode for [T; N] {
    fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let items = reader.nested(|reader| T::decode_items(reader, N))?;
        match items.try_into() {
            Ok(array) => Ok(array),
            Err(_) => Err(DecodeError::UnexpectedEnd),
        }
    }
}

impl<T: Encode> Encode for Option<T> {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            None => out.push(0),
            Some(value) => {
                out.push(1);
                value.encode(out);
            }
        }
    }
}

impl<T: Decode> Decode for Option<T> {
    fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        match u8::decode(reader)? {
            0 => Ok(None),
            1 => reader.nested(|reader| T::decode(reader).map(Some)),
            tag => Err(DecodeError::InvalidTag {
                type_name: "Option",
                tag: u32::from(tag),
            }),
        }
    }
}

impl<T: Encode + ?Sized> Encode for Box<T> {
    fn encode(&self, out: &mut Vec<u8>) {
        (**self).encode(out);
    }
}

impl<T: Decode> Decode for Box<T> {
    fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        reader.nested(|reader| T::decode(reader).map(Box::new))
    }
}

impl<T: Encode + ?Sized> Encode for &T {
    fn encode(&self, out: &mut Vec<u8>) {
        (**self).encode(out);
    }
}

/// Maps encode as a sequence of key-value pairs in ascending key order, so
/// equal maps have equal encodings.
impl<K: Encode, V: Encode> Encode for BTreeMap<K, V> {
    fn encode(&self, out: &mut Vec<u8>) {
        encode_len(self.len(), out);
        for (key, value) in self {
            key.encode(out);
            value.encode(out);
        }
    }
}

impl<K: Decode + Ord, V: Decode> Decode for BTreeMap<K, V> {
    fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let count = reader.sequence_len()?;
        reader.nested(|reader| {
            let mut map = BTreeMap::new();
            for _ in 0..count {
                let key = K::decode(reader)?;
                if map.last_key_value().is_some_and(|(last, _)| &key <= last) {
                    return Err(DecodeError::UnorderedKeys);
                }
                let value = V::decode(reader)?;
                map.insert(key, value);
            }
            Ok(map)
        })
    }
}

macro_rules! tuples {
    ($(($($name:ident),+))*) => {$(
        impl<$($name: Encode),+> Encode for ($($name,)+) {
            fn encode(&self, out: &mut Vec<u8>) {
                #[expect(non_snake_case, reason = "the type parameters name the fields")]
                let ($($name,)+) = self;
                $($name.encode(out);)+
            }
        }
        impl<$($name: Decode),+> Decode for ($($name,)+) {
            fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
                Ok(($($name::decode(reader)?,)+))
            }
        }
    )*};
}

tuples! {
    (A)
    (A, B)
    (A, B, C)
    (A, B, C, D)
    (A, B, C, D, E)
    (A, B, C, D, E, F)
    (A, B, C, D, E, F, G)
    (A, B, C, D, E, F, G, H)
}
