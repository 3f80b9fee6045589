//! Event-type patterns with AMQP topic semantics, and the trie that matches an
//! event type against every subscription at once.
//!
//! Words are separated by `.`; `*` stands for exactly one word, `#` for zero or more.
//! Matching follows RabbitMQ's topic exchange, empty words included (`a..b` has three
//! words, the middle one empty), so a pattern means here what it means on the broker.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use super::event_type::valid_word;
use super::InvalidValue;

const MAX_LEN: usize = 255;

/// A validated subscription pattern such as `sales.order.*` or `billing.#`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TopicPattern(Box<str>);

impl TopicPattern {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `key` (an event type / routing key) matches this pattern.
    pub fn matches(&self, key: &str) -> bool {
        let pattern: Vec<&str> = self.0.split('.').collect();
        let key: Vec<&str> = key.split('.').collect();
        words_match(&pattern, &key)
    }

    /// The same match as a POSIX regular expression over `'.' || key`, for filtering
    /// stored events in PostgreSQL (`'.' || type ~ regex`). Each word is prefixed by
    /// its dot, so `#` (any number of words, none included) takes its dots with it.
    /// Words hold only letters, digits, `_` and `-`: nothing to escape.
    pub fn to_dotted_regex(&self) -> String {
        let mut regex = String::from("^");
        for word in self.0.split('.') {
            match word {
                "#" => regex.push_str(r"(\.[^.]*)*"),
                "*" => regex.push_str(r"\.[^.]*"),
                _ => {
                    regex.push_str(r"\.");
                    regex.push_str(word);
                }
            }
        }
        regex.push('$');
        regex
    }
}

/// Reference matcher over words, used by `TopicPattern::matches` and to check the trie.
fn words_match(pattern: &[&str], key: &[&str]) -> bool {
    match pattern.split_first() {
        None => key.is_empty(),
        Some((&"#", rest)) => (0..=key.len()).any(|skip| words_match(rest, &key[skip..])),
        Some((&"*", rest)) => !key.is_empty() && words_match(rest, &key[1..]),
        Some((word, rest)) => key.first() == Some(word) && words_match(rest, &key[1..]),
    }
}

impl FromStr for TopicPattern {
    type Err = InvalidValue;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(InvalidValue("event-type pattern is empty".into()));
        }
        if s.len() > MAX_LEN {
            return Err(InvalidValue(format!(
                "event-type pattern is longer than {MAX_LEN} bytes"
            )));
        }
        if !s.split('.').all(|w| w == "*" || w == "#" || valid_word(w)) {
            return Err(InvalidValue(format!(
                "event-type pattern `{s}`: words are letters, digits, '_', '-', or exactly `*` or `#`"
            )));
        }
        Ok(Self(s.into()))
    }
}

impl fmt::Display for TopicPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Every subscription's patterns in one trie: matching an event costs a walk over its
/// words, not a loop over all subscriptions.
#[derive(Debug, Default)]
pub struct TopicTrie<T> {
    root: Node<T>,
    len: usize,
}

#[derive(Debug)]
struct Node<T> {
    words: HashMap<Box<str>, Node<T>>,
    star: Option<Box<Node<T>>>,
    hash: Option<Box<Node<T>>>,
    values: Vec<T>,
}

impl<T> Default for Node<T> {
    fn default() -> Self {
        Self {
            words: HashMap::new(),
            star: None,
            hash: None,
            values: Vec::new(),
        }
    }
}

impl<T: Copy + Ord> TopicTrie<T> {
    pub fn new() -> Self {
        Self {
            root: Node::default(),
            len: 0,
        }
    }

    /// Number of patterns inserted.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn insert(&mut self, pattern: &TopicPattern, value: T) {
        let mut node = &mut self.root;
        for word in pattern.as_str().split('.') {
            node = match word {
                "*" => node.star.get_or_insert_with(Box::default),
                "#" => node.hash.get_or_insert_with(Box::default),
                _ => node.words.entry(word.into()).or_default(),
            };
        }
        node.values.push(value);
        self.len += 1;
    }

    /// The values of every pattern matching `key`, sorted, each once.
    pub fn matches(&self, key: &str) -> Vec<T> {
        let words: Vec<&str> = key.split('.').collect();
        let mut out = Vec::new();
        collect(&self.root, &words, &mut out);
        out.sort_unstable();
        out.dedup();
        out
    }
}

fn collect<T: Copy>(node: &Node<T>, key: &[&str], out: &mut Vec<T>) {
    if let Some(hash) = &node.hash {
        // `#` swallows zero or more words: try every split.
        for skip in 0..=key.len() {
            collect(hash, &key[skip..], out);
        }
    }
    match key.split_first() {
        None => out.extend_from_slice(&node.values),
        Some((word, rest)) => {
            if let Some(next) = node.words.get(*word) {
                collect(next, rest, out);
            }
            if let Some(star) = &node.star {
                collect(star, rest, out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_regex_form_matches_what_the_pattern_matches() {
        let keys = [
            "a", "a.b", "a.b.c", "a..c", "b.a", "a.x.b", "a.b.b", "x", "a-b.c_d",
        ];
        for pattern in [
            "a", "a.*", "a.#", "#", "*", "#.b", "a.#.b", "*.b.*", "a.*.c", "a-b.#", "#.#",
        ] {
            let p: TopicPattern = pattern.parse().unwrap();
            let re = regex::Regex::new(&p.to_dotted_regex()).unwrap();
            for key in keys {
                assert_eq!(
                    re.is_match(&format!(".{key}")),
                    p.matches(key),
                    "{pattern} vs {key}"
                );
            }
        }
    }

    /// (pattern, key, matches?) — RabbitMQ topic exchange semantics.
    const TABLE: &[(&str, &str, bool)] = &[
        ("sales.order.created", "sales.order.created", true),
        ("sales.order.created", "sales.order.paid", false),
        ("sales.order.*", "sales.order.created", true),
        ("sales.order.*", "sales.order", false),
        ("sales.order.*", "sales.order.created.v2", false),
        ("sales.#", "sales", true),
        ("sales.#", "sales.order", true),
        ("sales.#", "sales.order.created", true),
        ("sales.#", "billing.invoice.paid", false),
        ("#", "anything.at.all", true),
        ("#", "x", true),
        ("*", "x", true),
        ("*", "x.y", false),
        ("*.*", "x.y", true),
        ("#.created", "sales.order.created", true),
        ("#.created", "created", true),
        ("#.created", "sales.created.not", false),
        ("sales.*.created", "sales.order.created", true),
        ("sales.*.created", "sales.created", false),
        ("sales.#.created", "sales.created", true),
        ("sales.#.created", "sales.a.b.c.created", true),
        ("#.#", "a.b", true),
        ("#.*", "a", true),
        ("#.*", "", true), // one empty word
        ("*.#.*", "a", false),
        ("*.#.*", "a.b", true),
        // empty words, as the broker sees them
        ("a.*.b", "a..b", true),
        ("*", "", true),
        ("a.#", "a.", true),
        ("a", "a.", false),
    ];

    #[test]
    fn the_reference_matcher_follows_the_table() {
        for (pattern, key, expected) in TABLE {
            let p = TopicPattern((*pattern).into());
            assert_eq!(p.matches(key), *expected, "{pattern} ~ {key:?}");
        }
    }

    #[test]
    fn the_trie_agrees_with_the_table() {
        for (pattern, key, expected) in TABLE {
            let mut trie = TopicTrie::new();
            trie.insert(&TopicPattern((*pattern).into()), 1u32);
            assert_eq!(
                !trie.matches(key).is_empty(),
                *expected,
                "{pattern} ~ {key:?}"
            );
        }
    }

    #[test]
    fn the_trie_returns_each_value_once_across_overlapping_patterns() {
        let mut trie = TopicTrie::new();
        for (value, pattern) in ["sales.#", "sales.order.*", "#", "billing.#"]
            .iter()
            .enumerate()
        {
            trie.insert(&pattern.parse().unwrap(), value);
        }
        trie.insert(&"sales.order.created".parse().unwrap(), 0);
        assert_eq!(trie.matches("sales.order.created"), vec![0, 1, 2]);
        assert_eq!(trie.matches("billing.invoice.paid"), vec![2, 3]);
        assert_eq!(trie.len(), 5);
    }

    #[test]
    fn patterns_refuse_partial_wildcards_and_empty_words() {
        for ok in ["sales.#", "*.order.*", "#", "a-b.c_d"] {
            assert!(ok.parse::<TopicPattern>().is_ok(), "{ok}");
        }
        for bad in ["", "sales*", "sales.#x", "a..b", "a.", "a b"] {
            assert!(bad.parse::<TopicPattern>().is_err(), "{bad:?}");
        }
    }
}
