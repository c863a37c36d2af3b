//! A YAML document as a tree whose every node and key remembers its line and column, so an error in a
//! scenario can point at the exact place. Built from saphyr-parser's events; kchaos maps the tree to its
//! own types (scenario.rs) instead of going through serde, which loses positions after parsing.
//!
//! Deliberately small: one document, string keys, no anchors or aliases (a scenario has no use for them,
//! and refusing them rules out alias bombs), a bounded nesting depth.

use std::{collections::HashSet, fmt};

use saphyr_parser::{Event, Parser, ScalarStyle, Span};

/// A place in the file: 1-based line and column.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Mark {
    pub line: usize,
    pub col: usize,
}

impl fmt::Display for Mark {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.col)
    }
}

impl From<&Span> for Mark {
    fn from(span: &Span) -> Self {
        Self {
            line: span.start.line(),
            col: span.start.col() + 1,
        }
    }
}

/// A value and where it starts.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub mark: Mark,
    pub value: Value,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// `~`, `null`, or nothing at all.
    Null,
    /// Any scalar, as written (typing happens where the field's meaning is known).
    Scalar(String),
    Seq(Vec<Node>),
    /// Entries in file order; keys are unique.
    Map(Vec<(Key, Node)>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Key {
    pub name: String,
    pub mark: Mark,
}

impl Value {
    /// What a user would call this kind of value, for "expected X, found Y".
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "nothing (null)",
            Value::Scalar(_) => "a single value",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }
}

/// A syntax error: where and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    pub mark: Mark,
    pub message: String,
}

/// Deeper than any scenario needs; bounds recursion on hostile input.
const MAX_DEPTH: usize = 32;

/// Up to this many keys a map checks for duplicates by scanning; past it, with a set.
const SCAN_LIMIT: usize = 16;

/// The most values (keys included) one document may hold: 100k faults of five fields take 1.2
/// million. Bounds the tree's memory (about 100 bytes a value) whatever the file's shape: 16 MiB of
/// `1,` would be 8 million values, over a GB.
pub const MAX_NODES: usize = 2_000_000;

/// Parses one YAML document. An empty file is `Null`.
pub fn parse(text: &str) -> Result<Node, SyntaxError> {
    let mut events = Events {
        parser: Parser::new_from_str(text),
        nodes: 0,
    };
    let mut root = None;
    loop {
        let (event, mark) = events.next()?;
        match event {
            Event::StreamStart | Event::DocumentEnd | Event::Nothing => {}
            Event::StreamEnd => break,
            Event::DocumentStart(_) => {
                if root.is_some() {
                    return Err(SyntaxError {
                        mark,
                        message: "a second YAML document (---): a scenario file holds exactly one"
                            .into(),
                    });
                }
                let (first, first_mark) = events.next()?;
                root = Some(build(&mut events, first, first_mark, 0)?);
            }
            other => {
                return Err(SyntaxError {
                    mark,
                    message: format!("unexpected YAML event {other:?}"),
                });
            }
        }
    }
    Ok(root.unwrap_or(Node {
        mark: Mark { line: 1, col: 1 },
        value: Value::Null,
    }))
}

struct Events<'a> {
    parser: Parser<'a, saphyr_parser::StrInput<'a>>,
    /// Values built so far.
    nodes: usize,
}

impl<'a> Events<'a> {
    fn next(&mut self) -> Result<(Event<'a>, Mark), SyntaxError> {
        match self.parser.next_event() {
            Some(Ok((event, span))) => Ok((event, Mark::from(&span))),
            Some(Err(e)) => Err(SyntaxError {
                mark: Mark {
                    line: e.marker().line(),
                    col: e.marker().col() + 1,
                },
                message: e.info().to_owned(),
            }),
            None => Err(SyntaxError {
                mark: Mark::default(),
                message: "the YAML ended early".into(),
            }),
        }
    }
}

fn build<'a>(
    events: &mut Events<'a>,
    event: Event<'a>,
    mark: Mark,
    depth: usize,
) -> Result<Node, SyntaxError> {
    if depth > MAX_DEPTH {
        return Err(SyntaxError {
            mark,
            message: format!("nested deeper than {MAX_DEPTH} levels"),
        });
    }
    events.nodes += 1;
    if events.nodes > MAX_NODES {
        return Err(SyntaxError {
            mark,
            message: format!(
                "more than {MAX_NODES} values (keys included) in one file: split the scenario"
            ),
        });
    }
    let value = match event {
        Event::Scalar(text, style, anchor, _tag) => {
            no_anchor(anchor, mark)?;
            if style == ScalarStyle::Plain && matches!(&*text, "" | "~" | "null" | "Null" | "NULL")
            {
                Value::Null
            } else {
                // A copy of exactly the text's size: keeping the scanner's own buffers fragments the
                // heap (100k faults, a million scalars: 185 MB instead of 87 MB, and slower).
                Value::Scalar(String::from(&*text))
            }
        }
        Event::SequenceStart(anchor, _tag) => {
            no_anchor(anchor, mark)?;
            let mut items = Vec::new();
            loop {
                let (ev, m) = events.next()?;
                if ev == Event::SequenceEnd {
                    break;
                }
                items.push(build(events, ev, m, depth + 1)?);
            }
            items.shrink_to_fit();
            Value::Seq(items)
        }
        Event::MappingStart(anchor, _tag) => {
            no_anchor(anchor, mark)?;
            let mut entries: Vec<(Key, Node)> = Vec::new();
            // Duplicate keys: a scan while the map is small, a set once it is large (a generated
            // `variables:` map may hold 100k keys).
            let mut seen: Option<HashSet<String>> = None;
            loop {
                let (ev, key_mark) = events.next()?;
                if ev == Event::MappingEnd {
                    break;
                }
                let key_node = build(events, ev, key_mark, depth + 1)?;
                let name = match key_node.value {
                    Value::Scalar(s) => s,
                    Value::Null => "null".into(),
                    other => {
                        return Err(SyntaxError {
                            mark: key_mark,
                            message: format!("a key must be a plain name, not {}", other.kind()),
                        });
                    }
                };
                let duplicate = match &mut seen {
                    Some(set) => !set.insert(name.clone()),
                    None => {
                        let found = entries.iter().any(|(k, _)| k.name == name);
                        if entries.len() >= SCAN_LIMIT {
                            let mut set: HashSet<String> =
                                entries.iter().map(|(k, _)| k.name.clone()).collect();
                            set.insert(name.clone());
                            seen = Some(set);
                        }
                        found
                    }
                };
                if duplicate {
                    return Err(SyntaxError {
                        mark: key_mark,
                        message: format!("duplicate key '{name}'"),
                    });
                }
                let (ev, m) = events.next()?;
                let value = build(events, ev, m, depth + 1)?;
                entries.push((
                    Key {
                        name,
                        mark: key_mark,
                    },
                    value,
                ));
            }
            // Most maps hold a few keys: the spare room of the first allocation adds up (26 MB
            // for 100k faults).
            entries.shrink_to_fit();
            Value::Map(entries)
        }
        Event::Alias(_) => {
            return Err(SyntaxError {
                mark,
                message: "aliases (*name) are not supported in scenario files: write the value out"
                    .into(),
            });
        }
        other => {
            return Err(SyntaxError {
                mark,
                message: format!("unexpected YAML event {other:?}"),
            });
        }
    };
    Ok(Node { mark, value })
}

fn no_anchor(anchor: usize, mark: Mark) -> Result<(), SyntaxError> {
    if anchor != 0 {
        return Err(SyntaxError {
            mark,
            message: "anchors (&name) are not supported in scenario files: write the value out"
                .into(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_positions() {
        let root = parse("title: x\nfaults:\n  - at: 1s\n    for: 2s\n").unwrap();
        let Value::Map(entries) = &root.value else {
            panic!("{root:?}")
        };
        assert_eq!(entries[1].0.name, "faults");
        assert_eq!(entries[1].0.mark, Mark { line: 2, col: 1 });
        let Value::Seq(items) = &entries[1].1.value else {
            panic!()
        };
        let Value::Map(fault) = &items[0].value else {
            panic!()
        };
        assert_eq!(fault[1].0.mark, Mark { line: 4, col: 5 });
        assert_eq!(fault[1].1.mark, Mark { line: 4, col: 10 });
    }

    #[test]
    fn refuses_what_scenarios_do_not_need() {
        assert!(
            parse("a: 1\na: 2\n")
                .unwrap_err()
                .message
                .contains("duplicate")
        );
        let many: String = (0..40).map(|i| format!("k{i}: 1\n")).collect();
        assert!(parse(&many).is_ok());
        let e = parse(&(many + "k7: 2\n")).unwrap_err();
        assert!(
            e.message.contains("duplicate key 'k7'") && e.mark.line == 41,
            "a large map finds duplicates too: {e:?}"
        );
        assert!(parse("a: &x 1\nb: *x\n").is_err());
        assert!(
            parse("a: 1\n---\nb: 2\n")
                .unwrap_err()
                .message
                .contains("second")
        );
        let deep = "[".repeat(100) + &"]".repeat(100);
        assert!(parse(&deep).unwrap_err().message.contains("deeper"));
        assert_eq!(parse("").unwrap().value, Value::Null);
        assert_eq!(parse("a: ~").unwrap().value, {
            Value::Map(vec![(
                Key {
                    name: "a".into(),
                    mark: Mark { line: 1, col: 1 },
                },
                Node {
                    mark: Mark { line: 1, col: 4 },
                    value: Value::Null,
                },
            )])
        });
    }

    #[test]
    fn syntax_errors_have_a_place() {
        let e = parse("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(e.mark.line >= 1, "{e:?}");
    }
}
