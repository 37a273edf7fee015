//! A tiny calculator: checked integer arithmetic and an evaluator for one
//! `<number> <operator> <number>` expression.

use std::fmt;

/// Why an expression could not be evaluated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CalcError {
    /// The expression is not `<number> <operator> <number>`.
    Syntax(String),
    /// An operand is not a whole number.
    NotANumber(String),
    /// The operator is not supported.
    UnknownOperator(String),
    /// Division by zero.
    DivisionByZero,
    /// The result does not fit in an `i64`.
    Overflow,
}

impl fmt::Display for CalcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CalcError::Syntax(e) => write!(f, "expected `<number> <operator> <number>`, got `{e}`"),
            CalcError::NotANumber(s) => write!(f, "`{s}` is not a whole number"),
            CalcError::UnknownOperator(op) => write!(f, "unknown operator `{op}`"),
            CalcError::DivisionByZero => write!(f, "division by zero"),
            CalcError::Overflow => write!(f, "the result does not fit in 64 bits"),
        }
    }
}

impl std::error::Error for CalcError {}

/// `a / b`, rounded towards zero.
pub fn checked_div(a: i64, b: i64) -> Result<i64, CalcError> {
    if b == 0 {
        return Err(CalcError::DivisionByZero);
    }
    a.checked_div(b).ok_or(CalcError::Overflow)
}

fn number(s: &str) -> Result<i64, CalcError> {
    s.parse().map_err(|_| CalcError::NotANumber(s.to_string()))
}

/// Evaluates `<number> <operator> <number>`, e.g. `"6 * 7"`.
pub fn eval(expr: &str) -> Result<i64, CalcError> {
    let parts: Vec<&str> = expr.split_whitespace().collect();
    let [a, op, b] = parts.as_slice() else {
        return Err(CalcError::Syntax(expr.to_string()));
    };
    let (a, b) = (number(a)?, number(b)?);
    match *op {
        "+" => a.checked_add(b).ok_or(CalcError::Overflow),
        "-" => a.checked_sub(b).ok_or(CalcError::Overflow),
        "*" => a.checked_mul(b).ok_or(CalcError::Overflow),
        "/" => checked_div(a, b),
        other => Err(CalcError::UnknownOperator(other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_four_operations() {
        assert_eq!(eval("6 * 7"), Ok(42));
        assert_eq!(eval("40 + 2"), Ok(42));
        assert_eq!(eval("50 - 8"), Ok(42));
        assert_eq!(eval("85 / 2"), Ok(42));
        assert_eq!(eval("-7 / 2"), Ok(-3));
    }

    #[test]
    fn errors_are_reported() {
        assert_eq!(eval("1 / 0"), Err(CalcError::DivisionByZero));
        assert_eq!(eval("1 +"), Err(CalcError::Syntax("1 +".into())));
        assert_eq!(eval("x + 1"), Err(CalcError::NotANumber("x".into())));
        assert_eq!(eval("2 ^ 3"), Err(CalcError::UnknownOperator("^".into())));
        assert_eq!(eval("9223372036854775807 + 1"), Err(CalcError::Overflow));
    }
}
