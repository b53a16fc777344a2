//! Marshalling: golden encodings of the standard and derived types, the
//! decoder's limits, the generated interface code, and properties (round
//! trip for generated values; arbitrary bytes never panic).

use std::collections::BTreeMap;

use proptest::prelude::*;
use xrelay_datapath::example::{
    KvError, KvStore, KvStoreClient, KvStoreOpcode, KvStoreServer, MemoryStore, StoreStats,
};
use xrelay_datapath::marshal::{
    codes, from_slice, to_vec, Caller, Decode, DecodeError, Dispatch, Encode, Exception, Limits,
    Local, Reader, RpcError,
};
use xrelay_datapath::{Decode, Encode, Exception};

#[derive(Debug, Clone, PartialEq, Encode, Decode)]
struct Point {
    x: i32,
    y: i32,
}

#[derive(Debug, Clone, PartialEq, Encode, Decode)]
struct Wrapper(u16, String);

#[derive(Debug, Clone, PartialEq, Encode, Decode)]
struct Unit;

#[derive(Debug, Clone, PartialEq, Encode, Decode)]
enum Shape {
    Empty,
    Circle { center: Point, radius: u32 },
    Polygon(Vec<Point>),
}

#[derive(Debug, Clone, PartialEq, Encode, Decode)]
struct Generic<T> {
    items: Vec<T>,
    first: Option<T>,
}

/// A recursive type: decoding must stop at the nesting limit, not overflow the stack.
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
enum Tree {
    Leaf,
    Node(Box<Tree>, Box<Tree>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Exception)]
enum Failure {
    First,
    Second,
    Third,
}

fn hex(text: &str) -> Vec<u8> {
    let digits: String = text.split_whitespace().collect();
    (0..digits.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn integers_are_little_endian_and_fixed_width() {
    assert_eq!(to_vec(&0x0102_0304u32), hex("04030201"));
    assert_eq!(to_vec(&-2i16), hex("feff"));
    assert_eq!(to_vec(&0x0102_0304_0506_0708u64), hex("0807060504030201"));
    assert_eq!(to_vec(&1u128).len(), 16);
    assert_eq!(to_vec(&1.0f64), hex("000000000000f03f"));
    assert_eq!(to_vec(&true), hex("01"));
    assert_eq!(to_vec(&'é'), hex("e9000000"));
    assert_eq!(to_vec(&()), Vec::<u8>::new());
}

#[test]
fn strings_and_sequences_carry_a_u32_length() {
    assert_eq!(to_vec("kv"), hex("02000000 6b76"));
    assert_eq!(to_vec(&String::from("kv")), hex("02000000 6b76"));
    assert_eq!(to_vec(&vec![1u8, 2, 3]), hex("03000000 010203"));
    assert_eq!(to_vec(&vec![1u16, 2]), hex("02000000 0100 0200"));
    assert_eq!(
        to_vec(&[1u16, 2]),
        hex("0100 0200"),
        "arrays have no length"
    );
    assert_eq!(
        to_vec(&(7u8, 8u16)),
        hex("07 0800"),
        "tuples are their fields"
    );
    assert_eq!(to_vec(&Some(5u8)), hex("01 05"));
    assert_eq!(to_vec(&None::<u8>), hex("00"));
    let map = BTreeMap::from([(2u8, 20u8), (1, 10)]);
    assert_eq!(to_vec(&map), hex("02000000 010a 0214"), "maps in key order");
}

#[test]
fn derived_structs_and_enums_have_the_documented_layout() {
    assert_eq!(to_vec(&Point { x: 1, y: -1 }), hex("01000000 ffffffff"));
    assert_eq!(to_vec(&Wrapper(3, "a".into())), hex("0300 01000000 61"));
    assert_eq!(to_vec(&Unit), Vec::<u8>::new());
    // Variant index as u16, then the fields.
    assert_eq!(to_vec(&Shape::Empty), hex("0000"));
    let circle = Shape::Circle {
        center: Point { x: 2, y: 3 },
        radius: 4,
    };
    assert_eq!(to_vec(&circle), hex("0100 02000000 03000000 04000000"));
    assert_eq!(to_vec(&Shape::Polygon(vec![])), hex("0200 00000000"));
    assert_eq!(from_slice::<Shape>(&to_vec(&circle)).unwrap(), circle);
    let generic = Generic {
        items: vec![1u8, 2],
        first: Some(1),
    };
    assert_eq!(to_vec(&generic), hex("02000000 0102 01 01"));
    assert_eq!(
        from_slice::<Generic<u8>>(&to_vec(&generic)).unwrap(),
        generic
    );
}

#[test]
fn invalid_values_are_typed_errors() {
    assert_eq!(from_slice::<bool>(&[2]), Err(DecodeError::InvalidBool(2)));
    assert_eq!(
        from_slice::<String>(&hex("02000000 c328")),
        Err(DecodeError::InvalidUtf8)
    );
    assert_eq!(
        from_slice::<char>(&hex("00d80000")),
        Err(DecodeError::InvalidChar(0xd800))
    );
    assert!(matches!(
        from_slice::<Option<u8>>(&[2, 0]),
        Err(DecodeError::InvalidTag { .. })
    ));
    assert!(matches!(
        from_slice::<Shape>(&hex("0300")),
        Err(DecodeError::InvalidTag {
            type_name: "Shape",
            tag: 3
        })
    ));
    assert_eq!(
        from_slice::<u32>(&[1, 2, 3]),
        Err(DecodeError::UnexpectedEnd)
    );
    assert_eq!(
        from_slice::<u8>(&[1, 2]),
        Err(DecodeError::TrailingBytes(1))
    );
    assert_eq!(
        from_slice::<BTreeMap<u8, u8>>(&hex("02000000 020a 0114")),
        Err(DecodeError::UnorderedKeys)
    );
}

#[test]
fn a_forged_length_neither_allocates_nor_loops_without_bound() {
    // Four billion elements announced, three bytes present.
    assert_eq!(
        from_slice::<Vec<u8>>(&hex("ffffffff 010203")).unwrap_err(),
        DecodeError::TooLong {
            len: u64::from(u32::MAX),
            max: u64::from(Limits::default().max_len)
        }
    );
    // Within max_len, but the bytes are missing.
    assert_eq!(
        from_slice::<Vec<u64>>(&hex("00000100 01")).unwrap_err(),
        DecodeError::UnexpectedEnd
    );
    // Zero-sized elements cost nothing per byte: the item budget bounds them.
    let limits = Limits {
        max_items: 1000,
        ..Limits::default()
    };
    let input = hex("e9030000");
    let mut reader = Reader::with_limits(&input, limits);
    assert_eq!(
        Vec::<()>::decode(&mut reader).unwrap_err(),
        DecodeError::TooManyItems
    );
    // The budget is shared by all sequences of one input.
    let input = hex("f4010000 f4010000 01000000");
    let mut reader = Reader::with_limits(&input, limits);
    assert_eq!(
        <(Vec<()>, Vec<()>, Vec<()>)>::decode(&mut reader).unwrap_err(),
        DecodeError::TooManyItems
    );
}

#[test]
fn nesting_is_bounded() {
    let mut tree = Tree::Leaf;
    for _ in 0..10 {
        tree = Tree::Node(Box::new(tree), Box::new(Tree::Leaf));
    }
    assert_eq!(from_slice::<Tree>(&to_vec(&tree)).unwrap(), tree);

    // 100 000 levels of Node(Node(...)): a stack overflow without the limit.
    let mut deep = Vec::new();
    for _ in 0..100_000 {
        deep.extend_from_slice(&hex("0100"));
    }
    assert_eq!(
        from_slice::<Tree>(&deep).unwrap_err(),
        DecodeError::TooDeep(64)
    );
}

#[test]
fn exceptions_map_to_genode_codes() {
    assert_eq!(Failure::First.code(), -1000);
    assert_eq!(Failure::Third.code(), -1002);
    assert_eq!(Failure::from_code(-1001), Some(Failure::Second));
    assert_eq!(Failure::from_code(-1003), None);
    assert_eq!(Failure::from_code(0), None);
    assert_eq!(KvError::NotFound.code(), -1000);
    assert_eq!(KvError::Full.code(), -1001);
}

#[test]
fn opcodes_follow_declaration_order() {
    assert_eq!(KvStoreOpcode::INTERFACE_ID, 0x4b56_0001);
    assert_eq!(KvStoreOpcode::INTERFACE_NAME, "KvStore");
    let names: Vec<(u16, &str)> = KvStoreOpcode::ALL
        .iter()
        .map(|op| (op.code(), op.name()))
        .collect();
    assert_eq!(
        names,
        vec![(0, "get"), (1, "put"), (2, "delete"), (3, "stats")]
    );
    assert_eq!(KvStoreOpcode::from_code(1), Some(KvStoreOpcode::Put));
    assert_eq!(KvStoreOpcode::from_code(4), None);
}

#[test]
fn generated_client_and_server_round_trip_calls() {
    let mut client = KvStoreClient::new(Local::new(KvStoreServer(MemoryStore::new(2))));
    assert_eq!(
        client.get("a".into()),
        Err(RpcError::Exception(KvError::NotFound))
    );
    assert_eq!(client.put("a".into(), vec![1, 2, 3]), Ok(None));
    assert_eq!(client.put("a".into(), vec![4]), Ok(Some(vec![1, 2, 3])));
    assert_eq!(client.put("b".into(), vec![]), Ok(None));
    assert_eq!(
        client.put("c".into(), vec![5]),
        Err(RpcError::Exception(KvError::Full))
    );
    assert_eq!(client.get("a".into()), Ok(vec![4]));
    assert_eq!(
        client.stats(),
        Ok(StoreStats {
            keys: 2,
            value_bytes: 1
        })
    );
    assert_eq!(client.delete("a".into()), Ok(()));
    assert_eq!(
        client.delete("a".into()),
        Err(RpcError::Exception(KvError::NotFound))
    );
    assert_eq!(client.caller_mut().dispatcher().0.stats().keys, 1);
}

#[test]
fn the_dispatcher_answers_bad_calls_with_codes() {
    let mut server = KvStoreServer(MemoryStore::new(4));
    let mut reply = vec![0xee];
    assert_eq!(server.dispatch(9, &[], &mut reply), codes::INVALID_OPCODE);
    assert!(reply.is_empty(), "an error reply carries no bytes");
    // get() with arguments that are not a string.
    assert_eq!(
        server.dispatch(0, &hex("05000000 61"), &mut reply),
        codes::BAD_ARGUMENTS
    );
    // get("a") with a trailing byte.
    assert_eq!(
        server.dispatch(0, &hex("01000000 61 00"), &mut reply),
        codes::BAD_ARGUMENTS
    );
    // A well-formed get of a missing key raises NotFound.
    assert_eq!(server.dispatch(0, &to_vec("a"), &mut reply), -1000);
    // stats() takes no arguments and succeeds.
    assert_eq!(server.dispatch(3, &[], &mut reply), codes::SUCCESS);
    assert_eq!(
        from_slice::<StoreStats>(&reply).unwrap(),
        StoreStats::default()
    );

    // Calls to another interface id are "invalid object".
    let mut local = Local::new(KvStoreServer(MemoryStore::new(1)));
    let mut reply = Vec::new();
    assert_eq!(
        local.call(0xdead, 0, &[], &mut reply),
        Ok(codes::INVALID_OBJECT)
    );
}

#[test]
fn client_reports_malformed_replies_and_unknown_codes() {
    /// A server that answers every call with a fixed code and reply.
    struct Canned(i32, Vec<u8>);
    impl Caller for Canned {
        fn call(
            &mut self,
            _interface: u32,
            _opcode: u16,
            _args: &[u8],
            reply: &mut Vec<u8>,
        ) -> Result<i32, xrelay_datapath::marshal::CallError> {
            reply.clone_from(&self.1);
            Ok(self.0)
        }
    }
    let mut client = KvStoreClient::new(Canned(0, hex("05000000 61")));
    assert!(matches!(
        client.get("a".into()),
        Err(RpcError::BadReply(DecodeError::UnexpectedEnd))
    ));
    let mut client = KvStoreClient::new(Canned(-1007, vec![]));
    assert_eq!(
        client.get("a".into()),
        Err(RpcError::UnknownException(-1007))
    );
    let mut client = KvStoreClient::new(Canned(codes::INVALID_OPCODE, vec![]));
    assert_eq!(client.stats(), Err(RpcError::InvalidOpcode));
}

fn point() -> impl Strategy<Value = Point> {
    (any::<i32>(), any::<i32>()).prop_map(|(x, y)| Point { x, y })
}

fn shape() -> impl Strategy<Value = Shape> {
    prop_oneof![
        Just(Shape::Empty),
        (point(), any::<u32>()).prop_map(|(center, radius)| Shape::Circle { center, radius }),
        proptest::collection::vec(point(), 0..8).prop_map(Shape::Polygon),
    ]
}

fn tree() -> impl Strategy<Value = Tree> {
    Just(Tree::Leaf).prop_recursive(8, 64, 2, |inner| {
        (inner.clone(), inner).prop_map(|(a, b)| Tree::Node(Box::new(a), Box::new(b)))
    })
}

fn round_trips<T: Encode + Decode + PartialEq + std::fmt::Debug>(
    value: &T,
) -> Result<(), TestCaseError> {
    let bytes = to_vec(value);
    let decoded: T = from_slice(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(&decoded, value);
    Ok(())
}

proptest! {
    #[test]
    fn integers_round_trip(a: u8, b: u16, c: u32, d: u64, e: u128, f: i8, g: i16, h: i32, i: i64, j: i128) {
        round_trips(&(a, b, c, d, e, f, g, h))?;
        round_trips(&(i, j))?;
    }

    #[test]
    fn floats_round_trip_bit_for_bit(x: f64, y: f32) {
        let bytes = to_vec(&(x, y));
        let (x2, y2): (f64, f32) = from_slice(&bytes).unwrap();
        prop_assert_eq!(x.to_bits(), x2.to_bits());
        prop_assert_eq!(y.to_bits(), y2.to_bits());
    }

    #[test]
    fn text_and_containers_round_trip(
        flag: bool,
        letter: char,
        text: String,
        bytes: Vec<u8>,
        nested: Vec<Vec<u16>>,
        maybe: Option<Option<i64>>,
        array: [u32; 5],
        map: BTreeMap<String, Vec<u8>>,
    ) {
        round_trips(&flag)?;
        round_trips(&letter)?;
        round_trips(&text)?;
        round_trips(&bytes)?;
        round_trips(&nested)?;
        round_trips(&maybe)?;
        round_trips(&array)?;
        round_trips(&map)?;
    }

    #[test]
    fn derived_types_round_trip(shape in shape(), tree in tree(), text: String, n: u16) {
        round_trips(&shape)?;
        round_trips(&tree)?;
        round_trips(&Wrapper(n, text))?;
        round_trips(&Generic { items: vec![shape.clone()], first: Some(shape) })?;
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes: Vec<u8>) {
        // Every outcome is fine except a panic (which fails the test).
        let _ = from_slice::<Shape>(&bytes);
        let _ = from_slice::<Tree>(&bytes);
        let _ = from_slice::<(String, Vec<u8>, Option<bool>, char)>(&bytes);
        let _ = from_slice::<BTreeMap<u16, String>>(&bytes);
        let _ = from_slice::<Vec<Vec<()>>>(&bytes);
        let _ = from_slice::<StoreStats>(&bytes);
        let mut server = KvStoreServer(MemoryStore::new(8));
        let mut reply = Vec::new();
        for opcode in 0..5 {
            let code = server.dispatch(opcode, &bytes, &mut reply);
            prop_assert!(code == codes::SUCCESS || code < 0);
        }
    }
}
