//! Meta rule expressions: Perl's boolean and arithmetic operators over rule names.
//!
//! A rule name stands for its hit count (1 for a rule that hit once, more for `multiple`
//! rules, 0 when it did not hit or does not exist). Precedence is Perl's: `!` and unary minus,
//! then `* /`, `+ -`, `< > <= >=`, `== !=`, `&&`, `||`. `&&` and `||` give 1 or 0 as a meta's
//! truth is all that matters.

use std::fmt;

/// A parsed expression. Rule references are names until [`Expr::resolve`] turns them into
/// indices.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// A number.
    Num(f64),
    /// A rule by name.
    Name(String),
    /// A rule by index.
    Rule(usize),
    /// `!e`.
    Not(Box<Expr>),
    /// `-e`.
    Neg(Box<Expr>),
    /// `a OP b`.
    Bin(Op, Box<Expr>, Box<Expr>),
}

/// A binary operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `||`
    Or,
    /// `&&`
    And,
    /// `==`
    Eq,
    /// `!=`
    Ne,
    /// `<`
    Lt,
    /// `>`
    Gt,
    /// `<=`
    Le,
    /// `>=`
    Ge,
    /// `+`
    Add,
    /// `-`
    Sub,
    /// `*`
    Mul,
    /// `/`
    Div,
}

/// A parse error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError(pub String);

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Num(f64),
    Name(String),
    Op(&'static str),
    Open,
    Close,
}

fn lex(s: &str) -> Result<Vec<Tok>, ParseError> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    const OPS: &[&str] = &[
        "&&", "||", "==", "!=", "<=", ">=", "!", "<", ">", "+", "-", "*", "/",
    ];
    'outer: while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        if c == b'(' {
            out.push(Tok::Open);
            i += 1;
            continue;
        }
        if c == b')' {
            out.push(Tok::Close);
            i += 1;
            continue;
        }
        if c.is_ascii_digit() || (c == b'.' && b.get(i + 1).is_some_and(u8::is_ascii_digit)) {
            let st = i;
            while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'.') {
                i += 1;
            }
            let n = s[st..i]
                .parse::<f64>()
                .map_err(|_| ParseError(format!("bad number `{}`", &s[st..i])))?;
            out.push(Tok::Num(n));
            continue;
        }
        if c.is_ascii_alphabetic() || c == b'_' {
            let st = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            out.push(Tok::Name(s[st..i].to_string()));
            continue;
        }
        for op in OPS {
            if s[i..].starts_with(op) {
                out.push(Tok::Op(op));
                i += op.len();
                continue 'outer;
            }
        }
        return Err(ParseError(format!(
            "unexpected `{}`",
            &s[i..].chars().next().unwrap_or(' ')
        )));
    }
    Ok(out)
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
}

fn prec(op: &str) -> Option<(u8, Op)> {
    Some(match op {
        "||" => (1, Op::Or),
        "&&" => (2, Op::And),
        "==" => (3, Op::Eq),
        "!=" => (3, Op::Ne),
        "<" => (4, Op::Lt),
        ">" => (4, Op::Gt),
        "<=" => (4, Op::Le),
        ">=" => (4, Op::Ge),
        "+" => (5, Op::Add),
        "-" => (5, Op::Sub),
        "*" => (6, Op::Mul),
        "/" => (6, Op::Div),
        _ => return None,
    })
}

impl Parser {
    fn expr(&mut self, min: u8) -> Result<Expr, ParseError> {
        let mut lhs = self.unary()?;
        while let Some(Tok::Op(op)) = self.toks.get(self.pos) {
            let Some((p, o)) = prec(op) else { break };
            if p < min {
                break;
            }
            self.pos += 1;
            let rhs = self.expr(p + 1)?;
            lhs = Expr::Bin(o, Box::new(lhs), Box::new(rhs));
        }
        Ok(lhs)
    }

    fn unary(&mut self) -> Result<Expr, ParseError> {
        let t = self.toks.get(self.pos).cloned();
        self.pos += 1;
        match t {
            Some(Tok::Op("!")) => Ok(Expr::Not(Box::new(self.unary()?))),
            Some(Tok::Op("-")) => Ok(Expr::Neg(Box::new(self.unary()?))),
            Some(Tok::Op("+")) => self.unary(),
            Some(Tok::Num(n)) => Ok(Expr::Num(n)),
            Some(Tok::Name(n)) => Ok(Expr::Name(n)),
            Some(Tok::Open) => {
                let e = self.expr(0)?;
                match self.toks.get(self.pos) {
                    Some(Tok::Close) => {
                        self.pos += 1;
                        Ok(e)
                    }
                    _ => Err(ParseError("missing `)`".into())),
                }
            }
            Some(t) => Err(ParseError(format!("unexpected {t:?}"))),
            None => Err(ParseError("expression ends too early".into())),
        }
    }
}

/// Parses an expression.
pub fn parse(s: &str) -> Result<Expr, ParseError> {
    let toks = lex(s)?;
    if toks.is_empty() {
        return Err(ParseError("empty expression".into()));
    }
    let mut p = Parser { toks, pos: 0 };
    let e = p.expr(0)?;
    if p.pos != p.toks.len() {
        return Err(ParseError(format!("unexpected {:?}", p.toks[p.pos])));
    }
    Ok(e)
}

impl Expr {
    /// The rule names it refers to.
    pub fn rule_names(&self) -> Vec<String> {
        let mut out = Vec::new();
        self.walk(&mut |e| {
            if let Expr::Name(n) = e {
                out.push(n.clone());
            }
        });
        out
    }

    /// The rule indices it refers to (after [`Expr::resolve`]).
    pub fn rule_ids(&self) -> Vec<usize> {
        let mut out = Vec::new();
        self.walk(&mut |e| {
            if let Expr::Rule(i) = e {
                out.push(*i);
            }
        });
        out
    }

    fn walk(&self, f: &mut dyn FnMut(&Expr)) {
        f(self);
        match self {
            Expr::Not(e) | Expr::Neg(e) => e.walk(f),
            Expr::Bin(_, a, b) => {
                a.walk(f);
                b.walk(f);
            }
            _ => {}
        }
    }

    /// Names to indices; a name `lookup` does not know becomes 0.
    pub fn resolve(&self, lookup: &dyn Fn(&str) -> Option<usize>) -> Expr {
        match self {
            Expr::Name(n) => match lookup(n) {
                Some(i) => Expr::Rule(i),
                None => Expr::Num(0.0),
            },
            Expr::Not(e) => Expr::Not(Box::new(e.resolve(lookup))),
            Expr::Neg(e) => Expr::Neg(Box::new(e.resolve(lookup))),
            Expr::Bin(o, a, b) => {
                Expr::Bin(*o, Box::new(a.resolve(lookup)), Box::new(b.resolve(lookup)))
            }
            e => e.clone(),
        }
    }

    /// Evaluates with `value` giving each rule's hit count.
    pub fn eval<F: Fn(usize) -> f64 + ?Sized>(&self, value: &F) -> f64 {
        let b = |x: bool| if x { 1.0 } else { 0.0 };
        match self {
            Expr::Num(n) => *n,
            Expr::Name(_) => 0.0,
            Expr::Rule(i) => value(*i),
            Expr::Not(e) => b(e.eval(value) == 0.0),
            Expr::Neg(e) => -e.eval(value),
            Expr::Bin(op, l, r) => {
                let x = l.eval(value);
                match op {
                    Op::And => b(x != 0.0 && r.eval(value) != 0.0),
                    Op::Or => b(x != 0.0 || r.eval(value) != 0.0),
                    _ => {
                        let y = r.eval(value);
                        match op {
                            Op::Eq => b(x == y),
                            Op::Ne => b(x != y),
                            Op::Lt => b(x < y),
                            Op::Gt => b(x > y),
                            Op::Le => b(x <= y),
                            Op::Ge => b(x >= y),
                            Op::Add => x + y,
                            Op::Sub => x - y,
                            Op::Mul => x * y,
                            Op::Div => {
                                if y == 0.0 {
                                    0.0
                                } else {
                                    x / y
                                }
                            }
                            Op::And | Op::Or => unreachable!(),
                        }
                    }
                }
            }
        }
    }
}

/// A value known to lie in `[lo, hi]`: a point for a rule that ran, wider for one that has
/// not run yet (`[0, 1]`, or `[0, maxhits]` for a `multiple` rule).
pub type Range = (f64, f64);

/// The truth of a value in `r`: `None` when the range holds both zero and not zero.
fn truth((lo, hi): Range) -> Option<bool> {
    if lo == 0.0 && hi == 0.0 {
        Some(false)
    } else if lo > 0.0 || hi < 0.0 {
        Some(true)
    } else {
        None
    }
}

fn of_truth(t: Option<bool>) -> Range {
    match t {
        Some(true) => (1.0, 1.0),
        Some(false) => (0.0, 0.0),
        None => (0.0, 1.0),
    }
}

/// What an arithmetic step gives; anything it cannot bound is every number.
fn bounded(lo: f64, hi: f64) -> Range {
    if lo.is_nan() || hi.is_nan() {
        (f64::NEG_INFINITY, f64::INFINITY)
    } else {
        (lo, hi)
    }
}

impl Expr {
    /// Evaluates over ranges, with `value` giving each rule's: the range every evaluation with
    /// rule values inside theirs falls in. Where every rule's range is one point it is that
    /// point, [`Expr::eval`]'s value. A point result means the rules with wider ranges cannot
    /// change the value, whatever they turn out to be.
    pub fn eval_range<F: Fn(usize) -> Range + ?Sized>(&self, value: &F) -> Range {
        match self {
            Expr::Num(n) => (*n, *n),
            Expr::Name(_) => (0.0, 0.0),
            Expr::Rule(i) => value(*i),
            Expr::Not(e) => of_truth(truth(e.eval_range(value)).map(|t| !t)),
            Expr::Neg(e) => {
                let (lo, hi) = e.eval_range(value);
                (-hi, -lo)
            }
            Expr::Bin(op, l, r) => {
                let x = l.eval_range(value);
                match op {
                    Op::And | Op::Or => {
                        // Kleene's logic: the operand value that decides alone (false for
                        // `&&`, true for `||`) decides even when the other is open.
                        let decides = *op == Op::Or;
                        let a = truth(x);
                        if a == Some(decides) {
                            return of_truth(a);
                        }
                        of_truth(match (a, truth(r.eval_range(value))) {
                            (_, Some(b)) if b == decides => Some(decides),
                            (Some(_), Some(_)) => Some(!decides),
                            _ => None,
                        })
                    }
                    _ => {
                        let y = r.eval_range(value);
                        let points = x.0 == x.1 && y.0 == y.1;
                        let apart = x.1 < y.0 || y.1 < x.0;
                        let cmp = |t: bool, f: bool| {
                            of_truth(if t {
                                Some(true)
                            } else if f {
                                Some(false)
                            } else {
                                None
                            })
                        };
                        match op {
                            Op::Eq => cmp(points && x.0 == y.0, apart),
                            Op::Ne => cmp(apart, points && x.0 == y.0),
                            Op::Lt => cmp(x.1 < y.0, x.0 >= y.1),
                            Op::Gt => cmp(x.0 > y.1, x.1 <= y.0),
                            Op::Le => cmp(x.1 <= y.0, x.0 > y.1),
                            Op::Ge => cmp(x.0 >= y.1, x.1 < y.0),
                            Op::Add => bounded(x.0 + y.0, x.1 + y.1),
                            Op::Sub => bounded(x.0 - y.1, x.1 - y.0),
                            Op::Mul if points => (x.0 * y.0, x.0 * y.0),
                            Op::Div if points && y.0 == 0.0 => (0.0, 0.0),
                            Op::Div if points => (x.0 / y.0, x.0 / y.0),
                            // Products and quotients of ranges: not worth bounding (the
                            // ruleset's metas multiply and divide numbers only).
                            Op::Mul | Op::Div => (f64::NEG_INFINITY, f64::INFINITY),
                            Op::And | Op::Or => unreachable!(),
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(s: &str, vals: &[(&str, f64)]) -> f64 {
        let e = parse(s).unwrap();
        let names: Vec<&str> = vals.iter().map(|v| v.0).collect();
        let r = e.resolve(&|n| names.iter().position(|x| *x == n));
        r.eval(&|i| vals[i].1)
    }

    #[test]
    fn precedence_is_perls() {
        assert_eq!(
            ev("A && B || C", &[("A", 1.0), ("B", 0.0), ("C", 1.0)]),
            1.0
        );
        assert_eq!(ev("A + B > 1", &[("A", 1.0), ("B", 1.0)]), 1.0);
        assert_eq!(ev("A + B > 1", &[("A", 1.0), ("B", 0.0)]), 0.0);
        assert_eq!(ev("!A && B", &[("A", 0.0), ("B", 1.0)]), 1.0);
        assert_eq!(
            ev("(A || B) && !C", &[("A", 0.0), ("B", 1.0), ("C", 1.0)]),
            0.0
        );
        assert_eq!(ev("2 * A - 1 >= 1", &[("A", 1.0)]), 1.0);
        assert_eq!(ev("MISSING || A", &[("A", 0.0)]), 0.0);
        assert_eq!(ev("A / B", &[("A", 1.0), ("B", 0.0)]), 0.0);
    }

    /// A random expression over rules 0..4, with every operator and nesting.
    fn random_expr(rng: &mut impl rand::Rng, depth: u32) -> Expr {
        if depth == 0 || rng.gen_ratio(1, 4) {
            return match rng.gen_range(0..4) {
                0 => Expr::Num(f64::from(rng.gen_range(-1..4))),
                _ => Expr::Rule(rng.gen_range(0..4)),
            };
        }
        let ops = [
            Op::Or,
            Op::And,
            Op::Eq,
            Op::Ne,
            Op::Lt,
            Op::Gt,
            Op::Le,
            Op::Ge,
            Op::Add,
            Op::Sub,
            Op::Mul,
            Op::Div,
        ];
        match rng.gen_range(0..8) {
            0 => Expr::Not(Box::new(random_expr(rng, depth - 1))),
            1 => Expr::Neg(Box::new(random_expr(rng, depth - 1))),
            _ => Expr::Bin(
                ops[rng.gen_range(0..ops.len())],
                Box::new(random_expr(rng, depth - 1)),
                Box::new(random_expr(rng, depth - 1)),
            ),
        }
    }

    #[test]
    fn ranges_hold_every_value_their_rules_can_give() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut settled = 0;
        for _ in 0..20_000 {
            let e = random_expr(&mut rng, 4);
            // Rules 0 and 1 known; rule 2 a rule not run yet (0 or 1), rule 3 a `multiple`
            // one (0 to 3).
            let known = [
                f64::from(rng.gen_range(0..3)),
                f64::from(rng.gen_range(0..2)),
            ];
            let range = |i: usize| match i {
                0 | 1 => (known[i], known[i]),
                2 => (0.0, 1.0),
                _ => (0.0, 3.0),
            };
            let (lo, hi) = e.eval_range(&range);
            for a in 0..2 {
                for b in 0..4 {
                    let vals = [known[0], known[1], f64::from(a), f64::from(b)];
                    let v = e.eval(&|i| vals[i]);
                    // Where a range is one point, it is the value itself.
                    let point = e.eval_range(&|i| (vals[i], vals[i]));
                    assert_eq!(point, (v, v), "{e:?} at {vals:?}");
                    assert!(
                        lo <= v && v <= hi,
                        "{e:?}: {v} outside [{lo}, {hi}] at {vals:?}"
                    );
                }
            }
            settled += usize::from(lo == hi && e.rule_ids().iter().any(|&i| i >= 2));
        }
        // The check above is empty unless ranges settle expressions that read unknown rules.
        assert!(settled > 2_000, "{settled}");
    }

    #[test]
    fn errors() {
        assert!(parse("A &&").is_err());
        assert!(parse("(A").is_err());
        assert!(parse("A $ B").is_err());
        assert!(parse("").is_err());
    }
}
