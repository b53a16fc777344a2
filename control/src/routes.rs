//! Routing of this node's own session requests (from the operator CLI),
//! like the routes of Genode's init: a request for a service and label
//! goes to the peer of the best-matching `[[route]]`, asking for the
//! route's `remote` label there (or the request's own).
//!
//! Best match: an exact `label` beats a `label_prefix` or `label_suffix`,
//! a longer prefix or suffix beats a shorter one, and the service's
//! `default` route comes last. Between equally good routes the first in
//! the file wins. A request no route matches is refused and counted.

use crate::config::{Config, ServiceChoice};

/// Where a request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The peer's name.
    pub peer: String,
    /// The label to open on the peer.
    pub remote: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Selector {
    Label(String),
    Prefix(String),
    Suffix(String),
    Default,
}

#[derive(Debug, Clone)]
struct Route {
    service: ServiceChoice,
    selector: Selector,
    peer: String,
    remote: Option<String>,
}

/// The routes of one configuration (immutable; a reload builds a new one).
#[derive(Debug, Clone, Default)]
pub struct Routes {
    routes: Vec<Route>,
}

impl Routes {
    /// The routes of `config` (already checked: one selector each).
    pub fn new(config: &Config) -> Routes {
        let routes = config
            .routes
            .iter()
            .filter_map(|r| {
                let selector = if let Some(label) = &r.label {
                    Selector::Label(label.get_ref().clone())
                } else if let Some(prefix) = &r.label_prefix {
                    Selector::Prefix(prefix.get_ref().clone())
                } else if let Some(suffix) = &r.label_suffix {
                    Selector::Suffix(suffix.get_ref().clone())
                } else if r.default.as_ref().is_some_and(|d| *d.get_ref()) {
                    Selector::Default
                } else {
                    return None;
                };
                Some(Route {
                    service: r.service,
                    selector,
                    peer: r.peer.get_ref().clone(),
                    remote: r.remote.clone(),
                })
            })
            .collect();
        Routes { routes }
    }

    /// Where a request for `service` labelled `label` goes, or `None`.
    pub fn resolve(&self, service: ServiceChoice, label: &str) -> Option<Target> {
        // Score: exact > prefix/suffix by length > default; ties: first.
        let score = |selector: &Selector| match selector {
            Selector::Label(l) => (l == label).then_some(usize::MAX),
            Selector::Prefix(p) => label.starts_with(p.as_str()).then_some(p.len() + 1),
            Selector::Suffix(s) => label.ends_with(s.as_str()).then_some(s.len() + 1),
            Selector::Default => Some(0),
        };
        let mut best: Option<(usize, &Route)> = None;
        for route in self.routes.iter().filter(|r| r.service == service) {
            if let Some(s) = score(&route.selector) {
                if best.is_none_or(|(b, _)| s > b) {
                    best = Some((s, route));
                }
            }
        }
        best.map(|(_, route)| Target {
            peer: route.peer.clone(),
            remote: route.remote.clone().unwrap_or_else(|| label.to_owned()),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn routes(text: &str) -> Routes {
        let full = format!(
            "[node]\nname = \"a\"\naddress = \"198.18.0.1\"\n\
             [[peer]]\nname = \"b\"\naddress = \"198.18.0.2\"\nauthenticate = false\n\
             [[peer]]\nname = \"c\"\naddress = \"198.18.0.3\"\nauthenticate = false\n{text}"
        );
        let checked = crate::config::parse(Path::new("t.toml"), &full).expect("valid");
        Routes::new(&checked.config)
    }

    fn target(peer: &str, remote: &str) -> Option<Target> {
        Some(Target {
            peer: peer.into(),
            remote: remote.into(),
        })
    }

    #[test]
    fn exact_beats_longer_affixes_which_beat_shorter_ones_and_default() {
        let table = routes(
            r#"
[[route]]
service = "rom"
default = true
peer = "c"
[[route]]
service = "rom"
label_prefix = "app"
peer = "c"
remote = "short"
[[route]]
service = "rom"
label_prefix = "app -> "
peer = "b"
[[route]]
service = "rom"
label = "app -> config"
peer = "c"
remote = "config"
[[route]]
service = "rom"
label_suffix = "-> log"
peer = "b"
remote = "log"
"#,
        );
        let rom = ServiceChoice::Rom;
        assert_eq!(table.resolve(rom, "app -> config"), target("c", "config"));
        assert_eq!(
            table.resolve(rom, "app -> other"),
            target("b", "app -> other")
        );
        assert_eq!(table.resolve(rom, "apple"), target("c", "short"));
        assert_eq!(table.resolve(rom, "x -> log"), target("b", "log"));
        assert_eq!(table.resolve(rom, "zzz"), target("c", "zzz"));
        // Other services have no routes here.
        assert_eq!(table.resolve(ServiceChoice::Rpc, "app -> config"), None);
    }

    #[test]
    fn equally_good_routes_resolve_to_the_first_and_no_default_means_none() {
        let table = routes(
            r#"
[[route]]
service = "signal"
label_prefix = "ab"
peer = "b"
[[route]]
service = "signal"
label_suffix = "yz"
peer = "c"
"#,
        );
        let signal = ServiceChoice::Signal;
        assert_eq!(table.resolve(signal, "abxyz"), target("b", "abxyz"));
        assert_eq!(table.resolve(signal, "nothing"), None);
    }
}
