//! Typed reading of the YAML tree: each accessor checks one field, substitutes `${var}`, and on a
//! mistake records a diagnostic (file, line, column, field, what is allowed) and goes on, so one
//! `validate` lists every error.

use std::{collections::BTreeMap, time::Duration};

use super::{
    diagnostic::{Diagnostic, did_you_mean},
    yaml::{Key, Mark, Node, Value},
};
use crate::units;

/// Where `${name}` values come from, strongest first: `--var`, the environment (`KCHAOS_VAR_<name>`),
/// the scenario's own `variables:` defaults.
#[derive(Clone, Debug, Default)]
pub struct Vars {
    pub cli: BTreeMap<String, String>,
    pub env: BTreeMap<String, String>,
    pub defaults: BTreeMap<String, String>,
}

/// The environment prefix of variable overrides.
pub const ENV_PREFIX: &str = "KCHAOS_VAR_";

impl Vars {
    /// `--var KEY=VALUE` pairs and the process environment.
    pub fn from_cli(pairs: &[String]) -> Result<Self, crate::error::BadInput> {
        let mut cli = BTreeMap::new();
        for pair in pairs {
            let Some((k, v)) = pair.split_once('=') else {
                return Err(crate::error::BadInput::new(format!(
                    "--var {pair}: write KEY=VALUE, e.g. --var cgroup=system.slice/app.service"
                )));
            };
            if !valid_name(k) {
                return Err(crate::error::BadInput::new(format!(
                    "--var {pair}: a variable name is letters, digits, '_' and '-'"
                )));
            }
            cli.insert(k.to_owned(), v.to_owned());
        }
        let env = std::env::vars()
            .filter_map(|(k, v)| Some((k.strip_prefix(ENV_PREFIX)?.to_owned(), v)))
            .collect();
        Ok(Self {
            cli,
            env,
            defaults: BTreeMap::new(),
        })
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.cli
            .get(name)
            .or_else(|| self.env.get(name))
            .or_else(|| self.defaults.get(name))
            .map(String::as_str)
    }

    /// Every variable with a value, as used.
    pub fn resolved(&self) -> BTreeMap<String, String> {
        let mut all = self.defaults.clone();
        all.extend(self.env.clone());
        all.extend(self.cli.clone());
        all
    }
}

pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Replaces `${name}` with its value; `$$` is a literal `$`.
pub fn substitute(text: &str, vars: &Vars) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(more) = after.strip_prefix('$') {
            out.push('$');
            rest = more;
        } else if let Some(body) = after.strip_prefix('{') {
            let Some(end) = body.find('}') else {
                return Err(format!(
                    "'{text}': '${{' without a closing '}}' (write $$ for a literal $)"
                ));
            };
            let name = &body[..end];
            if !valid_name(name) {
                return Err(format!(
                    "'${{{name}}}': a variable name is letters, digits, '_' and '-'"
                ));
            }
            match vars.get(name) {
                Some(v) => out.push_str(v),
                None => {
                    return Err(format!(
                        "variable '{name}' has no value: give --var {name}=VALUE, set {ENV_PREFIX}{name}, \
                         or a default under variables:"
                    ));
                }
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// The reading context: the file name, the variables, the errors so far.
pub struct Ctx<'v> {
    pub file: String,
    pub vars: &'v Vars,
    pub errors: Vec<Diagnostic>,
}

/// A mapping whose keys were checked against what is allowed.
pub struct Fields<'n> {
    pub mark: Mark,
    pub path: String,
    entries: &'n [(Key, Node)],
}

impl<'n> Fields<'n> {
    pub fn get(&self, key: &str) -> Option<&'n Node> {
        self.entries
            .iter()
            .find(|(k, _)| k.name == key)
            .map(|(_, v)| v)
    }

    /// The field's node unless it is absent or null.
    pub fn value(&self, key: &str) -> Option<&'n Node> {
        self.get(key).filter(|n| n.value != Value::Null)
    }

    pub fn has(&self, key: &str) -> bool {
        self.value(key).is_some()
    }

    pub fn path_of(&self, key: &str) -> String {
        join(&self.path, key)
    }

    pub fn keys(&self) -> impl Iterator<Item = &'n Key> {
        self.entries.iter().map(|(k, _)| k)
    }

    pub fn entries(&self) -> &'n [(Key, Node)] {
        self.entries
    }
}

pub fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// The most errors one reading keeps: a 16 MiB file of mistakes would otherwise hold millions (GBs).
pub const MAX_ERRORS: usize = 1000;

impl Ctx<'_> {
    /// Records an error, up to [`MAX_ERRORS`] of them (and one more, so a reader can tell).
    pub fn err(&mut self, mark: Mark, field: &str, message: impl Into<String>) {
        if self.errors.len() <= MAX_ERRORS {
            self.errors
                .push(Diagnostic::new(&self.file, mark, field, message));
        }
    }

    /// A mapping with only `allowed` keys; unknown keys are errors that list what is allowed.
    pub fn map<'n>(&mut self, node: &'n Node, path: &str, allowed: &[&str]) -> Option<Fields<'n>> {
        let Value::Map(entries) = &node.value else {
            self.err(
                node.mark,
                path,
                format!(
                    "expected a mapping with keys {}, found {}",
                    allowed.join(", "),
                    node.value.kind()
                ),
            );
            return None;
        };
        for (k, _) in entries {
            if !allowed.contains(&k.name.as_str()) {
                let hint = did_you_mean(&k.name, allowed)
                    .map(|s| format!(" (did you mean '{s}'?)"))
                    .unwrap_or_default();
                self.err(
                    k.mark,
                    &join(path, &k.name),
                    format!(
                        "unknown field '{}'{hint}: allowed are {}",
                        k.name,
                        allowed.join(", ")
                    ),
                );
            }
        }
        Some(Fields {
            mark: node.mark,
            path: path.to_owned(),
            entries,
        })
    }

    /// The items of a list (a single value counts as a list of one where `single_ok`).
    pub fn list<'n>(&mut self, node: &'n Node, path: &str, single_ok: bool) -> Vec<&'n Node> {
        match &node.value {
            Value::Seq(items) => items.iter().collect(),
            Value::Null => Vec::new(),
            Value::Scalar(_) if single_ok => vec![node],
            other => {
                self.err(
                    node.mark,
                    path,
                    format!("expected a list, found {}", other.kind()),
                );
                Vec::new()
            }
        }
    }

    /// A scalar as text, with `${var}` substituted.
    pub fn text(&mut self, node: &Node, path: &str) -> Option<String> {
        match &node.value {
            Value::Scalar(s) => match substitute(s, self.vars) {
                Ok(t) => Some(t),
                Err(e) => {
                    self.err(node.mark, path, e);
                    None
                }
            },
            other => {
                self.err(
                    node.mark,
                    path,
                    format!("expected a single value, found {}", other.kind()),
                );
                None
            }
        }
    }

    pub fn required<'n>(&mut self, f: &Fields<'n>, key: &str, what: &str) -> Option<&'n Node> {
        let v = f.value(key);
        if v.is_none() {
            self.err(
                f.mark,
                &f.path_of(key),
                format!("missing field '{key}': {what}"),
            );
        }
        v
    }

    pub fn duration(&mut self, node: &Node, path: &str) -> Option<Duration> {
        let t = self.text(node, path)?;
        match units::parse_duration(&t) {
            Ok(d) => Some(d),
            Err(e) => {
                self.err(node.mark, path, e.0);
                None
            }
        }
    }

    pub fn percent(&mut self, node: &Node, path: &str) -> Option<f64> {
        let t = self.text(node, path)?;
        match units::parse_percent(&t) {
            Ok(p) => Some(p),
            Err(e) => {
                self.err(node.mark, path, e.0);
                None
            }
        }
    }

    pub fn uint(&mut self, node: &Node, path: &str, max: u64) -> Option<u64> {
        let t = self.text(node, path)?;
        match t.trim().parse::<u64>() {
            Ok(v) if v <= max => Some(v),
            _ => {
                self.err(
                    node.mark,
                    path,
                    format!("'{t}' is not allowed: write a whole number from 0 to {max}"),
                );
                None
            }
        }
    }

    pub fn int(&mut self, node: &Node, path: &str) -> Option<i64> {
        let t = self.text(node, path)?;
        match t.trim().parse::<i64>() {
            Ok(v) => Some(v),
            Err(_) => {
                self.err(node.mark, path, format!("'{t}' is not a whole number"));
                None
            }
        }
    }

    pub fn boolean(&mut self, node: &Node, path: &str) -> Option<bool> {
        let t = self.text(node, path)?;
        match t.as_str() {
            "true" | "yes" | "on" => Some(true),
            "false" | "no" | "off" => Some(false),
            _ => {
                self.err(
                    node.mark,
                    path,
                    format!("'{t}' is not allowed: write true or false"),
                );
                None
            }
        }
    }

    /// One of `choices`.
    pub fn choice(&mut self, node: &Node, path: &str, choices: &[&str]) -> Option<String> {
        let t = self.text(node, path)?;
        if choices.contains(&t.as_str()) {
            Some(t)
        } else {
            let hint = did_you_mean(&t, choices)
                .map(|s| format!(" (did you mean '{s}'?)"))
                .unwrap_or_default();
            self.err(
                node.mark,
                path,
                format!(
                    "'{t}' is not allowed{hint}: allowed are {}",
                    choices.join(", ")
                ),
            );
            None
        }
    }

    /// A list of strings, or one string.
    pub fn strings(&mut self, node: &Node, path: &str) -> Vec<(String, Mark)> {
        let items = self.list(node, path, true);
        let mut out = Vec::new();
        for (i, item) in items.into_iter().enumerate() {
            let p = format!("{path}[{i}]");
            if let Some(t) = self.text(item, &p) {
                out.push((t, item.mark));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> Vars {
        let mut v = Vars::default();
        v.defaults.insert("a".into(), "1".into());
        v.env.insert("a".into(), "2".into());
        v.cli.insert("b".into(), "x".into());
        v
    }

    #[test]
    fn substitution_and_precedence() {
        let v = vars();
        assert_eq!(substitute("${a}/${b}", &v).unwrap(), "2/x");
        assert_eq!(substitute("$$5 ${b}$", &v).unwrap(), "$5 x$");
        assert!(
            substitute("${nope}", &v)
                .unwrap_err()
                .contains("--var nope")
        );
        assert!(substitute("${a", &v).is_err());
        assert!(substitute("${a b}", &v).is_err());
    }

    #[test]
    fn cli_vars_need_key_value() {
        assert!(Vars::from_cli(&["x".into()]).is_err());
        assert!(Vars::from_cli(&["a b=1".into()]).is_err());
        let v = Vars::from_cli(&["k=v=w".into()]).unwrap();
        assert_eq!(v.get("k"), Some("v=w"));
    }
}
