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
    for part in parts(text)? {
        match part {
            Part::Text(t) => out.push_str(&t),
            Part::Var(name) => match vars.get(&name) {
                Some(v) => out.push_str(v),
                None => {
                    return Err(format!(
                        "variable '{name}' has no value: give --var {name}=VALUE, set \
                         {ENV_PREFIX}{name}, or a default under variables:"
                    ));
                }
            },
        }
    }
    Ok(out)
}

/// The environment variable that carries `${name}` into a command: `KCHAOS_VAR_<name>`, with '-' (not
/// allowed in a shell name) written as '_'.
pub fn env_name(name: &str) -> String {
    format!("{ENV_PREFIX}{}", name.replace('-', "_"))
}

/// Where the shell scanner is.
#[derive(Clone, Copy, PartialEq)]
enum Quoting {
    Plain,
    Single,
    Double,
    Comment,
}

/// What to write instead of a `${name}` that is refused inside a command.
fn how_instead(name: &str) -> String {
    let env = env_name(name);
    format!(
        "pass it as an argument of its own (\"${{{name}}}\": the value becomes that one argument, \
         never text a program parses), or read it from the environment, where kchaos sets {env} \
         for every command (e.g. [sh, -c, 'echo \"${env}\"'])"
    )
}

/// Why a whole argument at `i` of `words` would run its value as code, if it would: the script of an
/// interpreter's `-c`/`-e` (`sh -c`, `timeout 5 bash -ec`, `python3 -c`, `su -c`, `perl -e`), or a word
/// after `ssh` or `watch`, which join their arguments into a line for a shell. A scenario that means to
/// run a value as code writes that itself with the environment variable.
fn code_argument(words: &[&str], i: usize) -> Option<&'static str> {
    fn base(w: &str) -> &str {
        let w = w.trim_matches(|c| c == '"' || c == '\'');
        w.rsplit('/').next().unwrap_or(w)
    }
    const SHELLS: &[&str] = &[
        "sh", "bash", "dash", "zsh", "ksh", "mksh", "ash", "busybox", "su", "runuser", "fish",
        "csh", "tcsh",
    ];
    const SCRIPTED: &[&str] = &[
        "perl", "ruby", "node", "nodejs", "php", "lua", "Rscript", "tclsh",
    ];
    let before = &words[..i.min(words.len())];
    if before
        .iter()
        .any(|w| matches!(base(w), "ssh" | "watch" | "sshpass"))
    {
        return Some("ssh and watch join their arguments into a line that a shell runs");
    }
    let flags = before.last()?.strip_prefix('-')?;
    if flags.is_empty() || !flags.chars().all(|c| c.is_ascii_alphabetic()) {
        return None;
    }
    let interpreter = |names: &[&str], flag: char| {
        flags.contains(flag)
            && before[..before.len() - 1].iter().any(|w| {
                let b = base(w);
                names.contains(&b) || (flag == 'c' && b.starts_with("python"))
            })
    };
    (interpreter(SHELLS, 'c') || interpreter(SCRIPTED, 'e'))
        .then_some("it is the script of an interpreter's -c or -e, so the value would run as code")
}

/// The parts of a `${..}` text: literal text (`$$` already made `$`) and variable names.
enum Part {
    Text(String),
    Var(String),
}

fn parts(text: &str) -> Result<Vec<Part>, String> {
    let mut out = Vec::new();
    let mut lit = String::new();
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        lit.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(more) = after.strip_prefix('$') {
            lit.push('$');
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
            if !lit.is_empty() {
                out.push(Part::Text(std::mem::take(&mut lit)));
            }
            out.push(Part::Var(name.to_owned()));
            rest = &body[end + 1..];
        } else {
            lit.push('$');
            rest = after;
        }
    }
    lit.push_str(rest);
    if !lit.is_empty() {
        out.push(Part::Text(lit));
    }
    Ok(out)
}

/// Replaces `${name}` in shell text with a quoted reference to an environment variable that holds the
/// value, and records that variable in `env`: the value itself never becomes shell text. A `${name}` is
/// accepted only as a whole word (`${x}` or `"${x}"`), which the shell hands to the program as one
/// argument, and not where that argument is a script (`sh -c ${x}`, `ssh host ${x}`): inside quotes or
/// a larger word the value would be spliced into a string that a program after the shell may parse
/// again (`timeout 5 sh -c "echo ${x}"`, `python3 -c "os.system('${x}')"`), so it is refused with how to
/// write it instead. `$$` is a literal `$`, as in `substitute`.
pub fn substitute_shell(
    text: &str,
    vars: &Vars,
    env: &mut BTreeMap<String, String>,
) -> Result<String, String> {
    let boundary = |c: char| c.is_whitespace() || ";&|()<>".contains(c);
    let mut out = String::with_capacity(text.len() + 16);
    let mut quoting = Quoting::Plain;
    // The words of the current simple command so far, and the one being read (raw, with quotes).
    let mut words: Vec<String> = Vec::new();
    let mut word = String::new();
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c == '$' && quoting != Quoting::Comment {
            match text[i + 1..].chars().next() {
                Some('$') => {
                    chars.next();
                    out.push('$');
                    word.push_str("$$");
                }
                Some('{') => {
                    let body = &text[i + 2..];
                    let Some(end) = body.find('}') else {
                        return Err(format!(
                            "'{text}': '${{' without a closing '}}' (write $$ for a literal $)"
                        ));
                    };
                    let name = &body[..end];
                    let after = &text[i + 2 + end + 1..];
                    // A whole word: `${x}` alone, or `"${x}"` alone.
                    let whole = match quoting {
                        Quoting::Plain => {
                            word.is_empty() && after.chars().next().is_none_or(boundary)
                        }
                        Quoting::Double => {
                            word == "\""
                                && after.starts_with('"')
                                && after[1..].chars().next().is_none_or(boundary)
                        }
                        _ => false,
                    };
                    if !whole {
                        let mut end_of_word = after
                            .find(|c: char| quoting == Quoting::Plain && boundary(c))
                            .unwrap_or(after.len());
                        if quoting != Quoting::Plain {
                            end_of_word = after.find('\n').unwrap_or(after.len());
                        }
                        return Err(format!(
                            "'{word}${{{name}}}{}': ${{{name}}} is part of a larger word or quoted text, \
                             where its value would be spliced into a string that a program may run as \
                             code (a shell after timeout, env, sudo, nsenter or ssh; python3 -c); {}",
                            &after[..end_of_word],
                            how_instead(name)
                        ));
                    }
                    let mut so_far: Vec<&str> = words.iter().map(String::as_str).collect();
                    so_far.push("");
                    if let Some(why) = code_argument(&so_far, so_far.len() - 1) {
                        return Err(format!(
                            "${{{name}}} after '{}': {why}; {}",
                            words.join(" "),
                            how_instead(name)
                        ));
                    }
                    let reference = env_reference(name, vars, env)?;
                    out.push_str(&match quoting {
                        Quoting::Plain => format!("\"{reference}\""),
                        _ => reference,
                    });
                    word.push_str("${}");
                    // Skip "{name}".
                    while chars.next_if(|&(j, _)| j <= i + 2 + end).is_some() {}
                }
                _ => {
                    out.push('$');
                    word.push('$');
                }
            }
            continue;
        }
        out.push(c);
        match (quoting, c) {
            (Quoting::Plain | Quoting::Double, '\\') => {
                word.push(c);
                // An escaped quote or backslash does not change the quoting; a '$' is still ours.
                if let Some(&(_, next)) = chars.peek()
                    && next != '$'
                {
                    out.push(next);
                    word.push(next);
                    chars.next();
                }
                continue;
            }
            (Quoting::Plain, '\'') => quoting = Quoting::Single,
            (Quoting::Plain, '"') => quoting = Quoting::Double,
            (Quoting::Plain, '#') if word.is_empty() => quoting = Quoting::Comment,
            (Quoting::Single, '\'') | (Quoting::Double, '"') => quoting = Quoting::Plain,
            (Quoting::Comment, '\n') => quoting = Quoting::Plain,
            _ => {}
        }
        match quoting {
            Quoting::Comment => {}
            Quoting::Plain if boundary(c) => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
                if c != ' ' && c != '\t' && c != '<' && c != '>' {
                    // A new simple command.
                    words.clear();
                }
            }
            _ => word.push(c),
        }
    }
    Ok(out)
}

/// `${KCHAOS_VAR_name}` for `name`, its value put in `env` (under another name if a different value
/// already took that one: `a-b` and `a_b` both map to KCHAOS_VAR_a_b).
fn env_reference(
    name: &str,
    vars: &Vars,
    env: &mut BTreeMap<String, String>,
) -> Result<String, String> {
    if !valid_name(name) {
        return Err(format!(
            "'${{{name}}}': a variable name is letters, digits, '_' and '-'"
        ));
    }
    let Some(value) = vars.get(name) else {
        return Err(format!(
            "variable '{name}' has no value: give --var {name}=VALUE, set {ENV_PREFIX}{name}, \
             or a default under variables:"
        ));
    };
    let base = env_name(name);
    let mut key = base.clone();
    let mut n = 1;
    while env.get(&key).is_some_and(|v| v != value) {
        n += 1;
        key = format!("{base}_{n}");
    }
    env.insert(key.clone(), value.to_owned());
    Ok(format!("${{{key}}}"))
}

/// One element of an argv command: `${name}` alone becomes the value, one argument that no shell
/// parses; a `${name}` inside a larger element is refused (whatever program comes first, it may hand
/// that text to a shell: `timeout 5 sh -c "echo ${x}"`, `ssh host "..."`), as is a whole `${name}`
/// where it is an interpreter's script.
fn argv_element(text: &str, raw: &[String], i: usize, vars: &Vars) -> Result<String, String> {
    let parts = parts(text)?;
    let value = |name: &str| {
        vars.get(name).map(str::to_owned).ok_or_else(|| {
            format!(
                "variable '{name}' has no value: give --var {name}=VALUE, set {ENV_PREFIX}{name}, \
                 or a default under variables:"
            )
        })
    };
    match parts.as_slice() {
        [] => Ok(String::new()),
        [Part::Var(name)] => {
            let words: Vec<&str> = raw.iter().map(String::as_str).collect();
            if let Some(why) = code_argument(&words, i) {
                return Err(format!(
                    "${{{name}}} after '{}': {why}; {}",
                    words[..i].join(" "),
                    how_instead(name)
                ));
            }
            value(name)
        }
        parts => {
            if let Some(name) = parts.iter().find_map(|p| match p {
                Part::Var(n) => Some(n),
                Part::Text(_) => None,
            }) {
                return Err(format!(
                    "'{text}': ${{{name}}} is part of a larger argument, where its value would be \
                     spliced into text that a program may run as code (a shell after timeout, env, \
                     sudo, nsenter or ssh; python3 -c); {}",
                    how_instead(name)
                ));
            }
            Ok(parts
                .iter()
                .map(|p| match p {
                    Part::Text(t) | Part::Var(t) => t.as_str(),
                })
                .collect())
        }
    }
}

/// A command to run: argv, and the environment that carries the values of the variables it uses.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CommandLine {
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
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

    /// The key of a renamed field that `f` holds: `new`, or its `old` name (which still works for
    /// one release, with a deprecation line); None when neither is there, or both (an error).
    pub fn renamed<'k>(&mut self, f: &Fields<'_>, new: &'k str, old: &'k str) -> Option<&'k str> {
        match (f.has(new), f.has(old)) {
            (true, true) => {
                let mark = f.get(old).map_or(f.mark, |n| n.mark);
                self.err(
                    mark,
                    &f.path_of(old),
                    format!("give {new} or its old name {old}, not both"),
                );
                None
            }
            (false, true) => {
                crate::output::deprecated(&f.path_of(old), &f.path_of(new));
                Some(old)
            }
            (true, false) => Some(new),
            (false, false) => None,
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
        self.parsed(node, path, units::parse_duration)
    }

    /// A bandwidth ("10mbit"), in bits per second.
    pub fn rate(&mut self, node: &Node, path: &str) -> Option<u64> {
        self.parsed(node, path, units::parse_rate)
    }

    /// A size in bytes ("64k", "1m").
    pub fn size(&mut self, node: &Node, path: &str) -> Option<u64> {
        self.parsed(node, path, units::parse_size)
    }

    /// The node's text through `parse`; its error is reported at the node.
    fn parsed<T>(
        &mut self,
        node: &Node,
        path: &str,
        parse: impl Fn(&str) -> Result<T, crate::error::BadInput>,
    ) -> Option<T> {
        let t = self.text(node, path)?;
        match parse(&t) {
            Ok(v) => Some(v),
            Err(e) => {
                self.err(node.mark, path, e.0);
                None
            }
        }
    }

    /// A value written in `unit` (a ramp's from/to, a budget's cap), as the f64 the runner holds.
    pub fn in_unit(&mut self, unit: crate::kind::Unit, node: &Node, path: &str) -> Option<f64> {
        use crate::kind::Unit;
        match unit {
            Unit::Percent => self.percent(node, path),
            Unit::Duration => self.duration(node, path).map(|d| d.as_secs_f64()),
            Unit::Rate => self.rate(node, path).map(|r| r as f64),
        }
    }

    pub fn percent(&mut self, node: &Node, path: &str) -> Option<f64> {
        self.parsed(node, path, units::parse_percent)
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

    /// A `command:` field: one string runs through `/bin/sh -c`, a list is argv. A `${var}` must be a
    /// whole argument: in argv the value is that element, in shell text a quoted reference to an
    /// environment variable that carries it (never the value itself); inside a larger argument it is
    /// refused. Every variable's value is in the command's environment as `KCHAOS_VAR_<name>`.
    pub fn command(&mut self, node: &Node, path: &str) -> Option<CommandLine> {
        let mut env = BTreeMap::new();
        let argv = match &node.value {
            Value::Scalar(text) => vec![
                "/bin/sh".to_owned(),
                "-c".to_owned(),
                substitute_shell(text, self.vars, &mut env)
                    .map_err(|e| self.err(node.mark, path, e))
                    .ok()?,
            ],
            _ => {
                let items = self.list(node, path, true);
                let raw: Vec<String> = items
                    .iter()
                    .map(|n| match &n.value {
                        Value::Scalar(s) => s.clone(),
                        _ => String::new(),
                    })
                    .collect();
                let mut argv = Vec::new();
                let mut failed = false;
                for (i, item) in items.into_iter().enumerate() {
                    let p = format!("{path}[{i}]");
                    let arg = match &item.value {
                        Value::Scalar(s) => argv_element(s, &raw, i, self.vars)
                            .map_err(|e| self.err(item.mark, &p, e))
                            .ok(),
                        _ => self.text(item, &p),
                    };
                    match arg {
                        Some(a) => argv.push(a),
                        None => failed = true,
                    }
                }
                if failed {
                    return None;
                }
                argv
            }
        };
        if argv.first().is_none_or(|p| p.is_empty()) {
            self.err(node.mark, path, "a command needs a program to run");
            return None;
        }
        // Every variable, so a script reads any of them as "$KCHAOS_VAR_name" (a reference made
        // above keeps its own name if two variables share one).
        for (name, value) in self.vars.resolved() {
            env.entry(env_name(&name)).or_insert(value);
        }
        Some(CommandLine { argv, env })
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

    /// Runs `text` with `sh -c` and `env`; returns its stdout.
    fn sh(text: &str, env: &BTreeMap<String, String>) -> String {
        let out = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(text)
            .envs(env)
            .output()
            .unwrap();
        assert!(out.status.success(), "{text}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    }

    #[test]
    fn hostile_values_reach_a_shell_command_only_as_data() {
        let dir = std::env::temp_dir().join(format!("kchaos-fields-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pwned = dir.join("pwned");
        let p = pwned.display();
        let hostile = [
            format!("$(touch {p})"),
            format!("; touch {p}"),
            format!("`touch {p}`"),
            format!("x\ntouch {p}"),
            format!("' ; touch {p}; echo '"),
            format!("\" ; touch {p}; echo \""),
            format!("$$ ${{HOME}} * && touch {p} #"),
        ];
        // The variable as a whole word, bare or in double quotes, in every place a word can be.
        let scripts = [
            "printf '%s' ${x}",
            "printf '%s' \"${x}\"",
            "printf '%s' ${x}; # it's ${x}",
            "true && printf '%s' \"${x}\">/dev/stdout",
        ];
        for value in &hostile {
            let mut v = Vars::default();
            v.cli.insert("x".into(), value.clone());
            for script in scripts {
                let mut env = BTreeMap::new();
                let text = substitute_shell(script, &v, &mut env).unwrap();
                assert!(
                    !text.contains("touch"),
                    "{script}: the value is in the text: {text}"
                );
                assert_eq!(env.get("KCHAOS_VAR_x"), Some(value), "{script}");
                assert_eq!(sh(&text, &env), *value, "{script} with {value:?}: {text}");
                assert!(
                    !pwned.exists(),
                    "{script} with {value:?} ran the value: {text}"
                );
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A `${x}` that a program after the shell could parse again: inside quotes, part of a word, the
    /// script of a nested shell or interpreter, an argument of ssh. Each is refused with how to write it.
    #[test]
    fn variables_inside_words_or_scripts_are_refused_in_shell_text() {
        let mut v = Vars::default();
        v.cli.insert("x".into(), "; id".into());
        for script in [
            "printf '%s' '${x}'",
            "printf '%s' pre${x}post",
            "printf '%s' \"a b ${x}\"",
            "timeout 5 sh -c \"echo ${x}\"",
            "timeout 5 sh -c 'echo ${x}'",
            "env bash -ec ${x}",
            "nice sh -c \"${x}\"",
            "ssh host ${x}",
            "python3 -c \"import os; os.system('${x}')\"",
            "true; sudo sh -c ${x}",
            "perl -e ${x}",
        ] {
            let mut env = BTreeMap::new();
            let e = substitute_shell(script, &v, &mut env).unwrap_err();
            assert!(
                e.contains("KCHAOS_VAR_x") && e.contains("${x}"),
                "{script}: {e}"
            );
        }
        // A new command after ';' starts its words afresh; a file name after > is a plain word.
        let mut env = BTreeMap::new();
        assert!(substitute_shell("sh -c true; cat ${x} > ${x}", &v, &mut env).is_ok());
    }

    #[test]
    fn shell_references_name_valid_variables() {
        let mut v = Vars::default();
        v.cli.insert("my-var".into(), "1".into());
        v.cli.insert("my_var".into(), "2".into());
        let mut env = BTreeMap::new();
        let text = substitute_shell("echo ${my-var} ${my_var} $$1", &v, &mut env).unwrap();
        assert_eq!(
            text,
            "echo \"${KCHAOS_VAR_my_var}\" \"${KCHAOS_VAR_my_var_2}\" $1"
        );
        assert_eq!(sh(&text.replace(" $1", ""), &env), "1 2\n");
        assert!(substitute_shell("${nope}", &v, &mut env).is_err());
        assert!(substitute_shell("${a", &v, &mut env).is_err());
    }

    #[test]
    fn command_fields_keep_values_out_of_shell_text() {
        let mut v = Vars::default();
        v.cli.insert("x".into(), "; touch /tmp/kchaos-never".into());
        let mut ctx = Ctx {
            file: "s.yaml".into(),
            vars: &v,
            errors: Vec::new(),
        };
        let node = |text: &str| crate::experiment::yaml::parse(text).unwrap();
        // A string: sh -c with a reference.
        let c = ctx.command(&node("\"echo ${x}\""), "command").unwrap();
        assert_eq!(c.argv, ["/bin/sh", "-c", "echo \"${KCHAOS_VAR_x}\""]);
        assert_eq!(c.env["KCHAOS_VAR_x"], "; touch /tmp/kchaos-never");
        // argv: the value is one argument as is.
        let c = ctx.command(&node("[ls, \"${x}\"]"), "command").unwrap();
        assert_eq!(c.argv, ["ls", "; touch /tmp/kchaos-never"]);
        assert_eq!(c.env["KCHAOS_VAR_x"], "; touch /tmp/kchaos-never");
        let c = ctx
            .command(
                &node("[/bin/bash, -ec, 'echo \"$KCHAOS_VAR_x\" \"$1\"', sh, \"${x}\"]"),
                "command",
            )
            .unwrap();
        assert_eq!(
            c.argv,
            [
                "/bin/bash",
                "-ec",
                "echo \"$KCHAOS_VAR_x\" \"$1\"",
                "sh",
                "; touch /tmp/kchaos-never"
            ]
        );
        assert!(ctx.errors.is_empty(), "{:?}", ctx.errors);
        assert!(ctx.command(&node("[]"), "command").is_none());
        assert!(ctx.command(&node("[ls, \"${nope}\"]"), "command").is_none());
        assert_eq!(ctx.errors.len(), 2, "{:?}", ctx.errors);
        // Inside a larger element, whatever program comes first; or an interpreter's script.
        for bad in [
            "[timeout, \"5\", sh, -c, \"echo ${x}\"]",
            "[curl, \"http://${x}/\"]",
            "[sh, -c, \"echo ${x}\"]",
            "[sh, -c, \"${x}\"]",
            "[env, bash, -ec, \"${x}\"]",
            "[ssh, host, \"${x}\"]",
            "[python3, -c, \"${x}\"]",
            "[kubectl, exec, p, --, sh, -c, \"${x}\"]",
        ] {
            ctx.errors.clear();
            assert!(ctx.command(&node(bad), "command").is_none(), "{bad}");
            let e = &ctx.errors[0].message;
            assert!(e.contains("KCHAOS_VAR_x"), "{bad}: {e}");
        }
    }

    #[test]
    fn cli_vars_need_key_value() {
        assert!(Vars::from_cli(&["x".into()]).is_err());
        assert!(Vars::from_cli(&["a b=1".into()]).is_err());
        let v = Vars::from_cli(&["k=v=w".into()]).unwrap();
        assert_eq!(v.get("k"), Some("v=w"));
    }
}
