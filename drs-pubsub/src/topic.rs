//! Topics for pub/sub: dot-separated names, patterns with `*` (one
//! segment) and `>` (the rest), and a trie that finds every pattern a
//! topic matches without scanning them all.

use std::{collections::HashMap, fmt};

/// The longest topic or pattern accepted, in bytes.
pub const MAX_TOPIC_LEN: usize = 256;

/// The most segments a topic or pattern may have. With it, matching a
/// publication visits at most this many levels of the trie, whatever the
/// patterns subscribed.
pub const MAX_TOPIC_DEPTH: usize = 32;

/// Why a topic or pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadTopic {
    topic: String,
    reason: &'static str,
}

impl fmt::Display for BadTopic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid topic {:?}: {}", self.topic, self.reason)
    }
}

impl std::error::Error for BadTopic {}

fn check(topic: &str, wildcards: bool) -> Result<(), BadTopic> {
    let bad = |reason| {
        let shown: String = topic.chars().take(64).collect();
        Err(BadTopic {
            topic: shown,
            reason,
        })
    };
    if topic.is_empty() {
        return bad("it is empty");
    }
    if topic.len() > MAX_TOPIC_LEN {
        return bad("it is longer than 256 bytes");
    }
    if topic.split('.').nth(MAX_TOPIC_DEPTH).is_some() {
        return bad("it has more than 32 segments");
    }
    if topic.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return bad("it contains whitespace or control characters");
    }
    let mut segments = topic.split('.').peekable();
    while let Some(segment) = segments.next() {
        if segment.is_empty() {
            return bad("a segment is empty");
        }
        let last = segments.peek().is_none();
        match segment {
            "*" | ">" if !wildcards => return bad("wildcards are for subscriptions only"),
            ">" if !last => return bad("`>` must be the last segment"),
            "*" | ">" => {}
            s if s.contains(['*', '>']) => {
                return bad("`*` and `>` must be whole segments");
            }
            _ => {}
        }
    }
    Ok(())
}

/// Checks a concrete topic (what is published): dot-separated non-empty
/// segments, no wildcards, no whitespace, at most [`MAX_TOPIC_LEN`] bytes.
pub fn check_topic(topic: &str) -> Result<(), BadTopic> {
    check(topic, false)
}

/// Checks a subscription pattern: like a topic, where a whole segment may
/// be `*` (any one segment) and the last may be `>` (one or more).
pub fn check_pattern(pattern: &str) -> Result<(), BadTopic> {
    check(pattern, true)
}

/// Whether `topic` matches `pattern` (both assumed valid).
///
/// ```
/// use drs_pubsub::topic::matches;
/// assert!(matches("sensors.*", "sensors.t1"));
/// assert!(!matches("sensors.*", "sensors.t1.raw"));
/// assert!(matches("sensors.>", "sensors.t1.raw"));
/// assert!(!matches("sensors.>", "sensors"));
/// ```
pub fn matches(pattern: &str, topic: &str) -> bool {
    let mut topic = topic.split('.');
    for p in pattern.split('.') {
        match (p, topic.next()) {
            (">", Some(_)) => return true,
            (_, None) => return false,
            ("*", Some(_)) => {}
            (p, Some(t)) if p == t => {}
            _ => return false,
        }
    }
    topic.next().is_none()
}

/// Subscriptions by pattern: each pattern holds a set of values (who
/// subscribed), and [`for_each_match`](TopicTrie::for_each_match) visits
/// the values of every pattern a topic matches in time proportional to
/// the topic's length and the patterns that match, not to how many there
/// are.
pub struct TopicTrie<V> {
    root: Node<V>,
    len: usize,
}

struct Node<V> {
    children: HashMap<Box<str>, Node<V>>,
    star: Option<Box<Node<V>>>,
    /// Values of the pattern ending here.
    here: Vec<V>,
    /// Values of the pattern ending with `>` here.
    rest: Vec<V>,
}

impl<V> Default for Node<V> {
    fn default() -> Self {
        Self {
            children: HashMap::new(),
            star: None,
            here: Vec::new(),
            rest: Vec::new(),
        }
    }
}

impl<V> Node<V> {
    fn is_empty(&self) -> bool {
        self.children.is_empty()
            && self.star.is_none()
            && self.here.is_empty()
            && self.rest.is_empty()
    }
}

impl<V> Default for TopicTrie<V> {
    fn default() -> Self {
        Self {
            root: Node::default(),
            len: 0,
        }
    }
}

impl<V> fmt::Debug for TopicTrie<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TopicTrie").field("len", &self.len).finish()
    }
}

impl<V: PartialEq> TopicTrie<V> {
    /// An empty trie.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many (pattern, value) pairs it holds.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds `value` under `pattern` (assumed valid); false if it was there.
    pub fn insert(&mut self, pattern: &str, value: V) -> bool {
        let mut node = &mut self.root;
        let mut segments = pattern.split('.').peekable();
        while let Some(segment) = segments.next() {
            if segment == ">" && segments.peek().is_none() {
                if node.rest.contains(&value) {
                    return false;
                }
                node.rest.push(value);
                self.len += 1;
                return true;
            }
            node = if segment == "*" {
                node.star.get_or_insert_with(Box::default)
            } else {
                node.children.entry(segment.into()).or_default()
            };
        }
        if node.here.contains(&value) {
            return false;
        }
        node.here.push(value);
        self.len += 1;
        true
    }

    /// Removes `value` from `pattern`; false if it was not there. Empty
    /// branches are pruned.
    pub fn remove(&mut self, pattern: &str, value: &V) -> bool {
        let segments: Vec<&str> = pattern.split('.').collect();
        let removed = remove_in(&mut self.root, &segments, value);
        if removed {
            self.len -= 1;
        }
        removed
    }

    /// Calls `f` with the value of every pattern that `topic` matches (a
    /// value under several matching patterns is visited once per pattern).
    pub fn for_each_match(&self, topic: &str, mut f: impl FnMut(&V)) {
        let segments: Vec<&str> = topic.split('.').collect();
        visit(&self.root, &segments, &mut f);
    }
}

fn remove_in<V: PartialEq>(node: &mut Node<V>, segments: &[&str], value: &V) -> bool {
    let Some((&first, rest)) = segments.split_first() else {
        return take(&mut node.here, value);
    };
    if first == ">" && rest.is_empty() {
        return take(&mut node.rest, value);
    }
    if first == "*" {
        let Some(star) = node.star.as_deref_mut() else {
            return false;
        };
        let removed = remove_in(star, rest, value);
        if star.is_empty() {
            node.star = None;
        }
        return removed;
    }
    let Some(child) = node.children.get_mut(first) else {
        return false;
    };
    let removed = remove_in(child, rest, value);
    if child.is_empty() {
        node.children.remove(first);
    }
    removed
}

fn take<V: PartialEq>(values: &mut Vec<V>, value: &V) -> bool {
    match values.iter().position(|v| v == value) {
        Some(i) => {
            values.swap_remove(i);
            true
        }
        None => false,
    }
}

fn visit<V>(node: &Node<V>, segments: &[&str], f: &mut impl FnMut(&V)) {
    let Some((first, rest)) = segments.split_first() else {
        node.here.iter().for_each(&mut *f);
        return;
    };
    node.rest.iter().for_each(&mut *f);
    if let Some(child) = node.children.get(*first) {
        visit(child, rest, f);
    }
    if let Some(star) = &node.star {
        visit(star, rest, f);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_and_patterns() {
        for ok in ["a", "a.b", "sensors.t1", "a-b_c.d:e"] {
            check_topic(ok).unwrap();
            check_pattern(ok).unwrap();
        }
        for ok in ["*", ">", "a.*", "a.>", "*.b.>", "*.*"] {
            check_pattern(ok).unwrap();
            assert!(check_topic(ok).is_err(), "{ok} is no topic");
        }
        for bad in [
            "", ".", "a.", ".a", "a..b", "a b", "a\nb", "a.>.b", "a*", "a.b>", "x>",
        ] {
            assert!(check_pattern(bad).is_err(), "{bad:?} accepted");
        }
        let long = "a".repeat(MAX_TOPIC_LEN + 1);
        assert!(check_topic(&long).unwrap_err().to_string().contains("256"));
        check_topic(&"a".repeat(MAX_TOPIC_LEN)).unwrap();
        let deep = vec!["a"; MAX_TOPIC_DEPTH].join(".");
        check_topic(&deep).unwrap();
        check_pattern(&deep.replace('a', "*")).unwrap();
        let deeper = format!("{deep}.a");
        assert!(check_topic(&deeper)
            .unwrap_err()
            .to_string()
            .contains("32 segments"));
        assert!(check_pattern(&deeper.replace('a', "*")).is_err());
    }

    #[test]
    fn matching() {
        let cases = [
            ("a.b", "a.b", true),
            ("a.b", "a.c", false),
            ("a.*", "a.b", true),
            ("a.*", "a", false),
            ("a.*", "a.b.c", false),
            ("a.>", "a.b.c", true),
            ("a.>", "a", false),
            (">", "a", true),
            ("*.b", "x.b", true),
            ("*", "a.b", false),
        ];
        for (pattern, topic, expected) in cases {
            assert_eq!(matches(pattern, topic), expected, "{pattern} ~ {topic}");
            let mut trie = TopicTrie::new();
            trie.insert(pattern, 1);
            let mut found = false;
            trie.for_each_match(topic, |_| found = true);
            assert_eq!(found, expected, "trie: {pattern} ~ {topic}");
        }
    }

    #[test]
    fn trie_insert_remove_prune() {
        let mut trie = TopicTrie::new();
        assert!(trie.insert("a.*", 1));
        assert!(!trie.insert("a.*", 1));
        assert!(trie.insert("a.>", 1));
        assert!(trie.insert("a.b", 2));
        assert_eq!(trie.len(), 3);
        let mut got = Vec::new();
        trie.for_each_match("a.b", |v| got.push(*v));
        got.sort();
        assert_eq!(got, [1, 1, 2]);
        assert!(trie.remove("a.*", &1));
        assert!(!trie.remove("a.*", &1));
        assert!(trie.remove("a.>", &1));
        assert!(trie.remove("a.b", &2));
        assert!(trie.is_empty());
        assert!(trie.root.is_empty(), "branches pruned");
    }

    #[test]
    fn trie_agrees_with_matches() {
        let patterns = [
            "a", "a.b", "a.*", "*.b", "a.>", ">", "*.*", "a.b.c", "*.b.>", "c.*.e",
        ];
        let topics = [
            "a", "b", "a.b", "a.c", "c.b", "a.b.c", "a.x.c", "c.d.e", "x.b.y.z",
        ];
        let mut trie = TopicTrie::new();
        for (i, p) in patterns.iter().enumerate() {
            trie.insert(p, i);
        }
        for t in topics {
            let mut got = Vec::new();
            trie.for_each_match(t, |v| got.push(*v));
            got.sort();
            let want: Vec<usize> = (0..patterns.len())
                .filter(|&i| matches(patterns[i], t))
                .collect();
            assert_eq!(got, want, "topic {t}");
        }
    }
}
