//! Filters in containerd's syntax, for every List call that takes them.
//!
//! ```text
//! filters   := filter ('|' filter)*        any filter may match
//! filter    := selector (',' selector)*    all selectors must match
//! selector  := fieldpath [op value]        no op: the field is present
//! fieldpath := field ('.' field)*          field: [A-Za-z0-9_]+ or "quoted"
//! op        := '==' | '!=' | '~='          ~= is a regular expression
//! value     := bare | "quoted" | /quoted/
//! ```
//!
//! A list of filter strings (as List requests carry them) matches when any
//! of them does; an empty list matches everything.

use std::fmt;

use regex::Regex;

/// Largest filter string accepted; filters come from requests.
pub const MAX_FILTER_LEN: usize = 4096;

/// What a filter is matched against: the value of a field path, if the
/// object has that field.
pub trait Adaptor {
    fn field(&self, path: &[String]) -> Option<String>;
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("filter {filter:?}: {why}")]
pub struct ParseError {
    filter: String,
    why: String,
}

impl From<ParseError> for berth_errdefs::Error {
    fn from(err: ParseError) -> Self {
        berth_errdefs::Error::invalid_argument(err.to_string())
    }
}

#[derive(Debug, Clone)]
enum Operator {
    Present,
    Equal(String),
    NotEqual(String),
    Matches(Regex),
}

#[derive(Debug, Clone)]
struct Selector {
    path: Vec<String>,
    operator: Operator,
}

impl Selector {
    fn matches(&self, adaptor: &dyn Adaptor) -> bool {
        let value = adaptor.field(&self.path);
        match &self.operator {
            Operator::Present => value.is_some(),
            Operator::Equal(want) => value.as_deref() == Some(want.as_str()),
            Operator::NotEqual(want) => value.as_deref().unwrap_or("") != want,
            Operator::Matches(re) => re.is_match(value.as_deref().unwrap_or("")),
        }
    }
}

/// A parsed set of filters: a disjunction of conjunctions of selectors.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    any_of: Vec<Vec<Selector>>,
}

impl Filter {
    /// Everything matches.
    pub fn all() -> Filter {
        Filter::default()
    }

    /// Parses one filter string (which may itself contain `|`).
    pub fn parse(input: &str) -> Result<Filter, ParseError> {
        Filter::parse_any([input])
    }

    /// Parses the filter strings of a List request: any may match.
    pub fn parse_any<I, S>(inputs: I) -> Result<Filter, ParseError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut any_of = Vec::new();
        for input in inputs {
            let input = input.as_ref();
            if input.trim().is_empty() {
                continue;
            }
            any_of.extend(Parser::new(input)?.parse()?);
        }
        Ok(Filter { any_of })
    }

    pub fn matches(&self, adaptor: &dyn Adaptor) -> bool {
        self.any_of.is_empty()
            || self
                .any_of
                .iter()
                .any(|all| all.iter().all(|s| s.matches(adaptor)))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Field(String),
    Quoted(String),
    Dot,
    Comma,
    Pipe,
    Op(&'static str),
    Value(String),
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Token::Field(s) | Token::Value(s) => write!(f, "{s}"),
            Token::Quoted(s) => write!(f, "{s:?}"),
            Token::Dot => f.write_str("'.'"),
            Token::Comma => f.write_str("','"),
            Token::Pipe => f.write_str("'|'"),
            Token::Op(op) => write!(f, "'{op}'"),
        }
    }
}

struct Parser<'a> {
    input: &'a str,
    tokens: Vec<Token>,
    position: usize,
}

impl<'a> Parser<'a> {
    fn new(input: &'a str) -> Result<Parser<'a>, ParseError> {
        if input.len() > MAX_FILTER_LEN {
            return Err(ParseError {
                filter: input.chars().take(80).collect(),
                why: format!("longer than {MAX_FILTER_LEN} bytes"),
            });
        }
        let mut parser = Parser {
            input,
            tokens: Vec::new(),
            position: 0,
        };
        parser.tokens = parser.tokenize()?;
        Ok(parser)
    }

    fn error(&self, why: impl Into<String>) -> ParseError {
        ParseError {
            filter: self.input.to_string(),
            why: why.into(),
        }
    }

    fn tokenize(&self) -> Result<Vec<Token>, ParseError> {
        let chars: Vec<char> = self.input.chars().collect();
        let mut tokens = Vec::new();
        let mut i = 0;
        // After an operator the next token is a value, which may hold any
        // character but the separators.
        let mut expect_value = false;
        while i < chars.len() {
            let c = chars[i];
            if c.is_whitespace() {
                i += 1;
                continue;
            }
            if c == '"' || (expect_value && c == '/') {
                let (text, next) = self.quoted(&chars, i)?;
                tokens.push(Token::Quoted(text));
                i = next;
                expect_value = false;
                continue;
            }
            if expect_value {
                let start = i;
                while i < chars.len() && !matches!(chars[i], ',' | '|') && !chars[i].is_whitespace()
                {
                    i += 1;
                }
                tokens.push(Token::Value(chars[start..i].iter().collect()));
                expect_value = false;
                continue;
            }
            let pair: String = chars[i..(i + 2).min(chars.len())].iter().collect();
            let op = match pair.as_str() {
                "==" => Some("=="),
                "!=" => Some("!="),
                "~=" => Some("~="),
                _ => None,
            };
            if let Some(op) = op {
                tokens.push(Token::Op(op));
                i += 2;
                expect_value = true;
                continue;
            }
            match c {
                '.' => tokens.push(Token::Dot),
                ',' => tokens.push(Token::Comma),
                '|' => tokens.push(Token::Pipe),
                c if c.is_ascii_alphanumeric() || c == '_' => {
                    let start = i;
                    while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                        i += 1;
                    }
                    tokens.push(Token::Field(chars[start..i].iter().collect()));
                    continue;
                }
                other => return Err(self.error(format!("unexpected {other:?}"))),
            }
            i += 1;
        }
        Ok(tokens)
    }

    fn quoted(&self, chars: &[char], start: usize) -> Result<(String, usize), ParseError> {
        let quote = chars[start];
        let mut out = String::new();
        let mut i = start + 1;
        while i < chars.len() {
            match chars[i] {
                '\\' if i + 1 < chars.len() => {
                    let escaped = chars[i + 1];
                    match escaped {
                        'n' => out.push('\n'),
                        't' => out.push('\t'),
                        c if c == quote || c == '\\' => out.push(c),
                        // Keep other escapes for regular expressions.
                        c => {
                            out.push('\\');
                            out.push(c);
                        }
                    }
                    i += 2;
                }
                c if c == quote => return Ok((out, i + 1)),
                c => {
                    out.push(c);
                    i += 1;
                }
            }
        }
        Err(self.error("unterminated quoted string"))
    }

    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.position)
    }

    fn next(&mut self) -> Option<Token> {
        let token = self.tokens.get(self.position).cloned();
        self.position += 1;
        token
    }

    fn parse(mut self) -> Result<Vec<Vec<Selector>>, ParseError> {
        let mut any_of = vec![self.conjunction()?];
        while let Some(token) = self.next() {
            match token {
                Token::Pipe => any_of.push(self.conjunction()?),
                other => return Err(self.error(format!("unexpected {other}"))),
            }
        }
        Ok(any_of)
    }

    fn conjunction(&mut self) -> Result<Vec<Selector>, ParseError> {
        let mut all = vec![self.selector()?];
        while self.peek() == Some(&Token::Comma) {
            self.position += 1;
            all.push(self.selector()?);
        }
        Ok(all)
    }

    fn selector(&mut self) -> Result<Selector, ParseError> {
        let mut path = vec![self.field()?];
        while self.peek() == Some(&Token::Dot) {
            self.position += 1;
            path.push(self.field()?);
        }
        let operator = match self.peek() {
            Some(Token::Op(op)) => {
                let op = *op;
                self.position += 1;
                let value = match self.next() {
                    Some(Token::Value(v)) | Some(Token::Quoted(v)) => v,
                    Some(other) => return Err(self.error(format!("expected a value, got {other}"))),
                    None => return Err(self.error(format!("expected a value after '{op}'"))),
                };
                match op {
                    "==" => Operator::Equal(value),
                    "!=" => Operator::NotEqual(value),
                    _ => Operator::Matches(
                        Regex::new(&value)
                            .map_err(|e| self.error(format!("bad regular expression: {e}")))?,
                    ),
                }
            }
            _ => Operator::Present,
        };
        Ok(Selector { path, operator })
    }

    fn field(&mut self) -> Result<String, ParseError> {
        match self.next() {
            Some(Token::Field(f)) | Some(Token::Quoted(f)) => Ok(f),
            Some(other) => Err(self.error(format!("expected a field name, got {other}"))),
            None => Err(self.error("expected a field name")),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    struct Object {
        name: &'static str,
        labels: HashMap<&'static str, &'static str>,
    }

    impl Adaptor for Object {
        fn field(&self, path: &[String]) -> Option<String> {
            match path {
                [f] if f == "name" => Some(self.name.to_string()),
                [f, rest @ ..] if f == "labels" && !rest.is_empty() => self
                    .labels
                    .get(rest.join(".").as_str())
                    .map(|v| v.to_string()),
                _ => None,
            }
        }
    }

    fn object() -> Object {
        Object {
            name: "docker.io/library/busybox:1.36",
            labels: HashMap::from([("a.b", "c"), ("containerd.io/gc.root", "x"), ("empty", "")]),
        }
    }

    #[test]
    fn table_of_cases() {
        let cases: &[(&str, bool)] = &[
            ("", true),
            ("name", true),
            ("nope", false),
            ("name==docker.io/library/busybox:1.36", true),
            ("name==\"docker.io/library/busybox:1.36\"", true),
            ("name!=docker.io/library/busybox:1.36", false),
            ("name!=other", true),
            ("labels.\"a.b\"==c", true),
            ("labels.\"a.b\"==d", false),
            ("labels.\"a.b\"", true),
            ("labels.\"containerd.io/gc.root\"", true),
            ("labels.missing", false),
            ("labels.missing!=x", true),
            ("labels.empty==\"\"", true),
            ("name~=busybox", true),
            ("name~=^busybox", false),
            ("name~=/busy.ox:1\\.36$/", true),
            ("name~=\"^docker\\.io\"", true),
            ("name==x,labels.\"a.b\"==c", false),
            ("name~=busybox,labels.\"a.b\"==c", true),
            ("name==x|labels.\"a.b\"==c", true),
            ("name==x|name==y", false),
            ("  name == other | labels.\"a.b\" == c ", true),
        ];
        let obj = object();
        for (input, want) in cases {
            let filter = Filter::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(filter.matches(&obj), *want, "{input}");
        }
    }

    #[test]
    fn several_filter_strings_are_alternatives() {
        let obj = object();
        assert!(Filter::parse_any(["name==x", "labels.\"a.b\"==c"])
            .unwrap()
            .matches(&obj));
        assert!(!Filter::parse_any(["name==x", "name==y"])
            .unwrap()
            .matches(&obj));
        assert!(Filter::parse_any(Vec::<String>::new())
            .unwrap()
            .matches(&obj));
    }

    #[test]
    fn malformed_filters_are_errors() {
        for bad in [
            "name==",
            "==x",
            "name==x,",
            "name==\"open",
            "labels.",
            "name~=(",
            "name x",
            "name=x",
            "|",
            "name;x",
        ] {
            assert!(Filter::parse(bad).is_err(), "{bad:?} parsed");
        }
        assert!(Filter::parse(&"a".repeat(MAX_FILTER_LEN + 1)).is_err());
    }
}
