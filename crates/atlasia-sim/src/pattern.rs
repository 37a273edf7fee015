//! A string that matches a simple regular expression, for JSON Schema `pattern`. Covers what
//! schemas use in practice (literals, `.`, classes, `\d\w\s`, groups, alternation, the usual
//! quantifiers, anchors); anything else (lookaround, back-references) yields `None` and the
//! caller falls back to a plain string.

/// A string matching `pattern`. `extra` adds that many repetitions to each unbounded
/// quantifier, so a caller can grow the result to reach a `minLength`.
pub(crate) fn sample(pattern: &str, extra: usize) -> Option<String> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut p = Parser {
        s: &chars,
        i: 0,
        extra,
    };
    let out = p.alternation()?;
    // A stray `)` left over means the pattern was not what we understood.
    (p.i == chars.len()).then_some(out)
}

struct Parser<'a> {
    s: &'a [char],
    i: usize,
    extra: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<char> {
        self.s.get(self.i).copied()
    }

    fn next(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.i += 1;
        Some(c)
    }

    fn eat(&mut self, c: char) -> bool {
        if self.peek() == Some(c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    /// Branches separated by `|`; the first one is the sample, the others are only parsed.
    fn alternation(&mut self) -> Option<String> {
        let first = self.sequence()?;
        while self.eat('|') {
            self.sequence()?;
        }
        Some(first)
    }

    fn sequence(&mut self) -> Option<String> {
        let mut out = String::new();
        while let Some(c) = self.peek() {
            if c == '|' || c == ')' {
                break;
            }
            let atom = self.atom()?;
            let (min, max) = self.quantifier()?;
            let n = match max {
                Some(max) => (min + self.extra).min(max),
                None => min + self.extra,
            };
            for _ in 0..n {
                out.push_str(&atom);
            }
        }
        Some(out)
    }

    /// One atom's sample text (zero-width assertions give "").
    fn atom(&mut self) -> Option<String> {
        let c = self.next()?;
        Some(match c {
            '^' | '$' => String::new(),
            '.' => "a".into(),
            '(' => {
                if self.eat('?') {
                    match self.next()? {
                        ':' => {}
                        // Named groups: (?<name>…) or (?P<name>…); `(?<=`/`(?<!` look behind.
                        'P' if self.eat('<') => while self.next()? != '>' {},
                        '<' if !matches!(self.peek(), Some('=' | '!')) => {
                            while self.next()? != '>' {}
                        }
                        // Inline flags such as (?i) change no sample we produce.
                        f if f.is_ascii_alphabetic() => {
                            while self.peek()?.is_ascii_alphabetic() || self.peek() == Some('-') {
                                self.i += 1;
                            }
                            if self.eat(')') {
                                return Some(String::new());
                            }
                            if !self.eat(':') {
                                return None;
                            }
                        }
                        _ => return None, // lookaround
                    }
                }
                let inner = self.alternation()?;
                if !self.eat(')') {
                    return None;
                }
                inner
            }
            '[' => self.class()?.sample()?.to_string(),
            '\\' => match self.escape()? {
                Escape::Char(c) => c.to_string(),
                Escape::Class(set) => set.sample()?.to_string(),
                Escape::Empty => String::new(),
            },
            '*' | '+' | '?' => return None,
            other => other.to_string(),
        })
    }

    /// `(min, max)` repetitions of the atom just read; `(1, Some(1))` when none follows.
    fn quantifier(&mut self) -> Option<(usize, Option<usize>)> {
        let q = match self.peek() {
            Some('*') => {
                self.i += 1;
                (0, None)
            }
            Some('+') => {
                self.i += 1;
                (1, None)
            }
            Some('?') => {
                self.i += 1;
                (0, Some(1))
            }
            Some('{') => match self.braces() {
                Some(q) => q,
                // Not a quantifier: `{` is a literal, read as the next atom.
                None => return Some((1, Some(1))),
            },
            _ => return Some((1, Some(1))),
        };
        // Lazy or possessive suffixes do not change what matches.
        if !self.eat('?') {
            self.eat('+');
        }
        Some(q)
    }

    /// `{n}`, `{n,}` or `{n,m}` at the cursor; the cursor moves only when it is one.
    fn braces(&mut self) -> Option<(usize, Option<usize>)> {
        let rest: String = self.s[self.i..].iter().collect();
        let end = rest.find('}')?;
        let body = &rest[1..end];
        let q = match body.split_once(',') {
            None => {
                let n = body.parse().ok()?;
                (n, Some(n))
            }
            Some((lo, "")) => (lo.parse().ok()?, None),
            Some((lo, hi)) => (lo.parse().ok()?, Some(hi.parse().ok()?)),
        };
        self.i += rest[..=end].chars().count();
        Some(q)
    }

    /// After a backslash.
    fn escape(&mut self) -> Option<Escape> {
        let c = self.next()?;
        Some(match c {
            'd' => Escape::Class(Class::digits()),
            'w' => Escape::Class(Class::word()),
            's' => Escape::Class(Class::space()),
            'D' | 'W' | 'S' => Escape::Class(Class {
                negated: true,
                items: match c {
                    'D' => Class::digits().items,
                    'W' => Class::word().items,
                    _ => Class::space().items,
                },
            }),
            'b' | 'B' | 'A' | 'z' | 'Z' => Escape::Empty,
            'n' => Escape::Char('\n'),
            't' => Escape::Char('\t'),
            'r' => Escape::Char('\r'),
            'f' => Escape::Char('\u{c}'),
            'v' => Escape::Char('\u{b}'),
            '0' => Escape::Char('\0'),
            'x' => Escape::Char(self.hex(2)?),
            'u' => Escape::Char(self.hex(4)?),
            '1'..='9' | 'k' | 'p' | 'P' => return None, // back-references, Unicode classes
            other => Escape::Char(other),
        })
    }

    fn hex(&mut self, digits: usize) -> Option<char> {
        let end = self.i + digits;
        let text: String = self.s.get(self.i..end)?.iter().collect();
        self.i = end;
        char::from_u32(u32::from_str_radix(&text, 16).ok()?)
    }

    /// After `[`.
    fn class(&mut self) -> Option<Class> {
        let negated = self.eat('^');
        let mut items = Vec::new();
        let mut first = true;
        loop {
            let c = self.next()?;
            if c == ']' && !first {
                break;
            }
            first = false;
            let lo = if c == '\\' {
                match self.escape()? {
                    Escape::Char(c) => c,
                    Escape::Class(set) if !set.negated => {
                        items.extend(set.items);
                        continue;
                    }
                    _ => return None,
                }
            } else if c == '[' && self.peek() == Some(':') {
                return None; // POSIX classes
            } else {
                c
            };
            if self.peek() == Some('-') && self.s.get(self.i + 1).is_some_and(|n| *n != ']') {
                self.i += 1;
                let hi = match self.next()? {
                    '\\' => match self.escape()? {
                        Escape::Char(c) => c,
                        _ => return None,
                    },
                    c => c,
                };
                items.push((lo, hi));
            } else {
                items.push((lo, lo));
            }
        }
        Some(Class { negated, items })
    }
}

enum Escape {
    Char(char),
    Class(Class),
    Empty,
}

/// A character class as inclusive ranges.
struct Class {
    negated: bool,
    items: Vec<(char, char)>,
}

impl Class {
    fn digits() -> Self {
        Self {
            negated: false,
            items: vec![('0', '9')],
        }
    }

    fn word() -> Self {
        Self {
            negated: false,
            items: vec![('a', 'z'), ('A', 'Z'), ('0', '9'), ('_', '_')],
        }
    }

    fn space() -> Self {
        Self {
            negated: false,
            items: vec![(' ', ' '), ('\t', '\t'), ('\n', '\n'), ('\r', '\r')],
        }
    }

    fn contains(&self, c: char) -> bool {
        self.items.iter().any(|(lo, hi)| (*lo..=*hi).contains(&c))
    }

    /// A member: the start of the first range, or for a negated class the first of a few
    /// ordinary characters that is not excluded.
    fn sample(&self) -> Option<char> {
        if self.negated {
            "a0xA_-. ~!".chars().find(|c| !self.contains(*c))
        } else {
            self.items.first().map(|(lo, _)| *lo)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::sample;

    #[test]
    fn samples_common_schema_patterns() {
        let cases = [
            ("^[a-z]+$", "a"),
            ("^[A-Z]{3}$", "AAA"),
            ("^\\d{4}-\\d{2}-\\d{2}$", "0000-00-00"),
            ("^(feat|fix|chore)/[a-z0-9-]+$", "feat/a"),
            ("^v?\\d+\\.\\d+\\.\\d+$", "0.0.0"),
            ("^[^\\s]+$", "a"),
            ("^(?:ab|cd)*x$", "x"),
            ("^[-_a-z]+$", "-"),
            ("^[\\w.]+@[\\w]+\\.com$", "a@a.com"),
            ("^#[0-9a-fA-F]{6}$", "#000000"),
            ("abc", "abc"),
            ("^\\$\\{[A-Z_]+\\}$", "${A}"),
            ("^(?<year>\\d{2})$", "00"),
            ("^a{2,}b{1,3}$", "aab"),
        ];
        for (pattern, want) in cases {
            assert_eq!(sample(pattern, 0).as_deref(), Some(want), "{pattern}");
        }
    }

    #[test]
    fn extra_grows_unbounded_quantifiers_only() {
        assert_eq!(sample("^[a-z]+$", 2).as_deref(), Some("aaa"));
        assert_eq!(sample("^x{2}$", 5).as_deref(), Some("xx"));
        assert_eq!(sample("^x{1,3}$", 5).as_deref(), Some("xxx"));
    }

    #[test]
    fn declines_what_it_cannot_honour() {
        for p in [
            "^(?=a)b$",
            "(a)\\1",
            "^[[:alpha:]]$",
            "(abc",
            "abc)",
            "\\p{L}",
        ] {
            assert_eq!(sample(p, 0), None, "{p}");
        }
    }
}
