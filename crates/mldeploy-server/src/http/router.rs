//! Routing: from a request path to the routes that serve it, with path parameters.
//!
//! Patterns are paths whose segments may be `{name}` parameters, and whose last segment may be
//! `{name*}`: the rest of the path, one segment or more, slashes included. Exact paths (every route of a
//! server with one model on the hot path) are one hash lookup; patterns with parameters are
//! tried in order after that. Routes sharing a pattern form one path entry and are told apart
//! by method. The first protocol to claim a pattern owns it: a later protocol's route on the
//! same pattern is shadowed (and reported), so a model's custom route cannot hide `/health`.

use std::borrow::Cow;
use std::collections::HashMap;

use hyper::header::HeaderValue;
use hyper::Method;

use crate::protocol::Route;

/// The routes of one pattern.
pub(crate) struct PathEntry {
    /// The pattern: the route template metrics see.
    pub pattern: String,
    pub routes: Vec<Route>,
    /// `Allow` of this path: every method its routes take, and OPTIONS.
    pub allow: HeaderValue,
    owner: &'static str,
}

impl PathEntry {
    /// The route taking `method`.
    pub(crate) fn route_for(&self, method: &Method) -> Option<&Route> {
        self.routes.iter().find(|r| r.methods.allows(method))
    }

    /// Whether a route of this path answers OPTIONS itself (a custom route listing it).
    pub(crate) fn takes_options(&self) -> bool {
        self.routes.iter().any(|r| r.methods.takes_options())
    }
}

enum Segment {
    Literal(String),
    Param(String),
    /// The rest of the path (last segment only).
    Rest(String),
}

/// A matched path: its entry and its parameter values.
pub(crate) struct Matched<'r> {
    pub entry: &'r PathEntry,
    pub params: Vec<(&'r str, String)>,
}

/// Every route of a worker.
#[derive(Default)]
pub(crate) struct Router {
    entries: Vec<PathEntry>,
    /// Hashed with foldhash: SipHash took about as long as the rest of the lookup. Seeded
    /// per map, and only read with request paths (nothing a client sends is inserted).
    exact: HashMap<String, usize, foldhash::fast::RandomState>,
    patterns: Vec<(Vec<Segment>, usize)>,
    shadowed: Vec<String>,
}

fn parse(pattern: &str) -> Option<Vec<Segment>> {
    if !pattern.contains('{') {
        return None;
    }
    Some(
        pattern
            .split('/')
            .skip(1)
            .map(|s| match s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                Some(name) => match name.strip_suffix('*') {
                    Some(name) => Segment::Rest(name.to_string()),
                    None => Segment::Param(name.to_string()),
                },
                None => Segment::Literal(s.to_string()),
            })
            .collect(),
    )
}

/// `%XX` escapes of a path segment decoded (a model name may hold characters a path escapes).
fn decode(segment: &str) -> Cow<'_, str> {
    if !segment.contains('%') {
        return Cow::Borrowed(segment);
    }
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

impl Router {
    /// Add the routes of protocol `owner`.
    pub(crate) fn add(&mut self, owner: &'static str, routes: Vec<Route>) {
        for route in routes {
            let existing = self.entries.iter().position(|e| e.pattern == route.pattern);
            match existing {
                Some(i) if self.entries[i].owner == owner => {
                    let entry = &mut self.entries[i];
                    entry.routes.push(route);
                    entry.allow = allow_of(&entry.routes);
                }
                Some(_) => self.shadowed.push(route.pattern),
                None => {
                    let index = self.entries.len();
                    match parse(&route.pattern) {
                        Some(segments) => self.patterns.push((segments, index)),
                        None => {
                            self.exact.insert(route.pattern.clone(), index);
                        }
                    }
                    let pattern = route.pattern.clone();
                    let routes = vec![route];
                    self.entries.push(PathEntry { allow: allow_of(&routes), pattern, routes, owner });
                }
            }
        }
    }

    /// Patterns hidden by a route another protocol added first.
    pub(crate) fn shadowed(&self) -> &[String] {
        &self.shadowed
    }

    /// The entry serving `path`.
    pub(crate) fn find(&self, path: &str) -> Option<Matched<'_>> {
        if let Some(&i) = self.exact.get(path) {
            return Some(Matched { entry: &self.entries[i], params: Vec::new() });
        }
        let given: Vec<&str> = path.split('/').skip(1).collect();
        'patterns: for (segments, i) in &self.patterns {
            let rest = matches!(segments.last(), Some(Segment::Rest(_)));
            if segments.len() != given.len() && !(rest && given.len() >= segments.len()) {
                continue;
            }
            let mut params = Vec::new();
            for (at, (segment, part)) in segments.iter().zip(&given).enumerate() {
                match segment {
                    Segment::Literal(text) if text == part => {}
                    Segment::Literal(_) => continue 'patterns,
                    Segment::Param(_) if part.is_empty() => continue 'patterns,
                    Segment::Param(name) => params.push((name.as_str(), decode(part).into_owned())),
                    Segment::Rest(name) => {
                        let tail = given[at..].join("/");
                        if tail.is_empty() {
                            continue 'patterns;
                        }
                        params.push((name.as_str(), decode(&tail).into_owned()));
                    }
                }
            }
            return Some(Matched { entry: &self.entries[*i], params });
        }
        None
    }
}

fn allow_of(routes: &[Route]) -> HeaderValue {
    let mut methods: Vec<String> = Vec::new();
    for name in routes.iter().flat_map(|r| r.methods.names()) {
        if !methods.contains(&name) {
            methods.push(name);
        }
    }
    methods.push("OPTIONS".into());
    methods.dedup();
    HeaderValue::from_str(&methods.join(", ")).unwrap_or(HeaderValue::from_static("OPTIONS"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Methods, Reply};

    fn route(pattern: &str, methods: Methods) -> Route {
        Route::new(pattern, methods, |_, _| Reply::json(hyper::StatusCode::OK, "{}").into())
    }

    #[test]
    fn exact_paths_patterns_and_parameters() {
        let mut router = Router::default();
        router.add(
            "a",
            vec![route("/health", Methods::Read), route("/v2/models/{model}/infer", Methods::Post)],
        );
        router.add("a", vec![route("/v2/models/{model}/versions/{version}/infer", Methods::Post)]);
        assert_eq!(router.find("/health").unwrap().entry.pattern, "/health");
        let m = router.find("/v2/models/iris%2Fx/infer").unwrap();
        assert_eq!(m.entry.pattern, "/v2/models/{model}/infer");
        assert_eq!(m.params, vec![("model", "iris/x".to_string())]);
        let m = router.find("/v2/models/iris/versions/3/infer").unwrap();
        assert_eq!(m.params, vec![("model", "iris".to_string()), ("version", "3".to_string())]);
        assert!(router.find("/v2/models//infer").is_none());
        assert!(router.find("/v2/models/iris").is_none());
        assert!(router.find("/nope").is_none());
    }

    #[test]
    fn a_rest_parameter_takes_the_remaining_segments() {
        let mut router = Router::default();
        router
            .add("custom", vec![route("/files/{path*}", Methods::Read), route("/items/{id}", Methods::Read)]);
        let m = router.find("/files/a/b%20c/d.txt").unwrap();
        assert_eq!(m.entry.pattern, "/files/{path*}");
        assert_eq!(m.params, vec![("path", "a/b c/d.txt".to_string())]);
        assert_eq!(router.find("/files/x").unwrap().params, vec![("path", "x".to_string())]);
        assert!(router.find("/files/").is_none() && router.find("/files").is_none());
        assert!(router.find("/items/1/2").is_none(), "a plain parameter is one segment");
    }

    #[test]
    fn routes_of_one_path_are_told_apart_by_method_and_others_shadow_nothing() {
        let mut router = Router::default();
        router.add("server", vec![route("/health", Methods::Read)]);
        router.add("custom", vec![route("/x", Methods::List(vec!["GET".into()]))]);
        router.add(
            "custom",
            vec![route("/x", Methods::List(vec!["POST".into()])), route("/health", Methods::Post)],
        );
        let x = router.find("/x").unwrap().entry;
        assert!(x.route_for(&Method::POST).is_some() && x.route_for(&Method::GET).is_some());
        assert!(x.route_for(&Method::DELETE).is_none());
        assert_eq!(x.allow, "GET, POST, OPTIONS");
        assert_eq!(router.shadowed(), ["/health"]);
        assert!(router.find("/health").unwrap().entry.route_for(&Method::POST).is_none());
        assert_eq!(router.find("/health").unwrap().entry.allow, "GET, HEAD, OPTIONS");
    }
}
