//! The hex examples of docs/wire.md, for the tests that check the
//! document against the code and the dissector.

/// One fenced ```hex block: its tag (`frame`, `udp`, `raw`, `marshal`) and bytes.
pub struct Example {
    /// The fence's tag.
    pub tag: String,
    /// Where it starts in docs/wire.md.
    pub line: usize,
    /// Its bytes.
    pub bytes: Vec<u8>,
}

impl Example {
    /// The encapsulation of a `udp` or `raw` example (`None` for a bare
    /// frame or a marshalled value).
    pub fn encapsulation(&self) -> Option<xrelay_datapath::wire::encap::Encapsulation> {
        use xrelay_datapath::wire::encap::{Encapsulation, ETHERTYPE_RELAY};
        match self.tag.as_str() {
            "udp" => Some(Encapsulation::default()),
            "raw" => Some(Encapsulation::Ethernet {
                ethertype: ETHERTYPE_RELAY,
            }),
            _ => None,
        }
    }
}

/// Every example, in document order.
pub fn examples() -> Vec<Example> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/wire.md");
    let text = std::fs::read_to_string(path).expect("docs/wire.md is readable");
    let mut examples = Vec::new();
    let mut current: Option<Example> = None;
    for (index, line) in text.lines().enumerate() {
        if let Some(tag) = line.strip_prefix("```hex ") {
            current = Some(Example {
                tag: tag.trim().to_string(),
                line: index + 1,
                bytes: Vec::new(),
            });
        } else if line.starts_with("```") {
            examples.extend(current.take());
        } else if let Some(example) = current.as_mut() {
            let data = line.split('#').next().unwrap_or("");
            let digits: String = data.split_whitespace().collect();
            assert!(
                digits.len().is_multiple_of(2),
                "odd hex digits at docs/wire.md:{}",
                index + 1
            );
            for i in (0..digits.len()).step_by(2) {
                let byte = u8::from_str_radix(&digits[i..i + 2], 16)
                    .unwrap_or_else(|_| panic!("bad hex at docs/wire.md:{}", index + 1));
                example.bytes.push(byte);
            }
        }
    }
    examples
}
