//! Bounds and static types of rule conditions.
//!
//! A condition is compiled and evaluated on whatever thread serves the call
//! (a Tokio worker has a 2 MiB stack), and the CEL parser and interpreter
//! recurse over the expression. So before parsing, a scan of the text bounds
//! how deep the parse can go; after parsing, a walk without recursion bounds
//! the tree's depth, size and evaluation cost. Only then is the tree walked
//! recursively, to infer every sub-expression's type and refuse what can
//! never be evaluated (`score.behavior >= '30'`), in every branch.
//!
//! Operator typing is not a table written here: each operator is tried once
//! on sample values of the operand types with the interpreter itself, so the
//! check and the evaluation cannot disagree.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, OnceLock};

use cel::common::ast::{EntryExpr, Expr, IdedExpr, LiteralValue};
use cel::objects::ValueType;
use cel::{ExecutionError, Program, Value};

/// Deepest bracket nesting accepted: `((…))`, `[[…]]`, `f(g(…))`.
pub const MAX_NESTING: usize = 24;
/// Deepest expression tree accepted (a chain `a + b + …` is as deep as it
/// is long; `&&` and `||` chains are balanced by the parser).
pub const MAX_DEPTH: usize = 32;
/// Most nodes an expression may have.
pub const MAX_NODES: usize = 2048;
/// Most comprehensions (`all`, `exists`, `map`, `filter`) nested in one another.
pub const MAX_COMPREHENSION_NESTING: usize = 2;
/// Largest evaluation cost accepted: nodes visited, each multiplied by the
/// sizes of the comprehension ranges it runs in.
pub const MAX_COST: u64 = 100_000;
/// What a comprehension over data (not a literal) is assumed to range over:
/// a lead has at most 100 attributes, a rule set few models and types.
const DATA_RANGE: u64 = 128;

/// Why a condition is refused, with the part of it at fault.
#[derive(Debug, Clone, PartialEq)]
pub struct ExprError {
    pub message: String,
    /// The offending sub-expression as written, when one can be named.
    pub snippet: Option<String>,
}

impl ExprError {
    fn plain(message: impl Into<String>) -> Self {
        Self { message: message.into(), snippet: None }
    }
}

/// Bounds a condition's text before it is parsed: bracket nesting, and an
/// upper bound of the tree's depth counted from the operators between
/// brackets (each element of a list, map or call counted apart).
pub fn scan(source: &str) -> Result<(), ExprError> {
    struct Level {
        /// Operators in the current element.
        ops: usize,
        /// Deepest bracketed child of the current element.
        child: usize,
        /// Deepest finished element.
        best: usize,
    }
    impl Level {
        fn depth(&self) -> usize {
            self.best.max(self.ops + self.child)
        }
    }
    let chars: Vec<char> = source.chars().collect();
    let mut stack = vec![Level { ops: 0, child: 0, best: 0 }];
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        match c {
            '\'' | '"' => i = skip_string(&chars, i, false),
            'r' | 'R' | 'b' | 'B' if matches!(next, Some('\'' | '"')) => {
                i = skip_string(&chars, i + 1, matches!(c, 'r' | 'R'))
            }
            'r' | 'R' | 'b' | 'B'
                if matches!(next, Some('r' | 'R' | 'b' | 'B')) && matches!(chars.get(i + 2), Some('\'' | '"')) =>
            {
                i = skip_string(&chars, i + 2, true)
            }
            '(' | '[' | '{' => {
                if stack.len() > MAX_NESTING {
                    return Err(ExprError::plain(format!("brackets nested deeper than {MAX_NESTING}")));
                }
                stack.push(Level { ops: 0, child: 0, best: 0 });
                i += 1;
            }
            ')' | ']' | '}' => {
                if stack.len() > 1 {
                    let closed = stack.pop().map_or(0, |l| l.depth() + 1);
                    if let Some(top) = stack.last_mut() {
                        top.child = top.child.max(closed);
                    }
                }
                i += 1;
            }
            ',' => {
                if let Some(top) = stack.last_mut() {
                    top.best = top.depth();
                    top.ops = 0;
                    top.child = 0;
                }
                i += 1;
            }
            c if c.is_alphabetic() || c == '_' => {
                let start = i;
                while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                if word == "in"
                    && let Some(top) = stack.last_mut()
                {
                    top.ops += 1;
                }
            }
            c if c.is_ascii_digit() => {
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric()
                        || (chars[i] == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
                        || (matches!(chars[i], '+' | '-') && matches!(chars[i - 1], 'e' | 'E')))
                {
                    i += 1;
                }
            }
            // The parser balances `&&` and `||` chains: each side is an element.
            '&' | '|' if next == Some(c) => {
                if let Some(top) = stack.last_mut() {
                    top.best = top.depth();
                    top.ops = 0;
                    top.child = 0;
                }
                i += 2;
            }
            '+' | '-' | '*' | '/' | '%' | '<' | '>' | '=' | '!' | '?' | ':' | '.' => {
                if let Some(top) = stack.last_mut() {
                    top.ops += 1;
                }
                i += if matches!((c, next), ('=' | '!' | '<' | '>', Some('='))) { 2 } else { 1 };
            }
            _ => i += 1,
        }
        if stack.last().is_some_and(|top| top.ops + top.child > MAX_DEPTH) {
            return Err(ExprError::plain(format!(
                "too deep: more than {MAX_DEPTH} operators in a chain (split the condition or use && and ||)"
            )));
        }
    }
    Ok(())
}

/// The index after the string literal whose opening quote is at `open`.
fn skip_string(chars: &[char], open: usize, raw: bool) -> usize {
    let quote = chars[open];
    let triple = chars.get(open + 1) == Some(&quote) && chars.get(open + 2) == Some(&quote);
    let mut i = open + if triple { 3 } else { 1 };
    while i < chars.len() {
        if !raw && chars[i] == '\\' {
            i += 2;
            continue;
        }
        if chars[i] == quote && (!triple || (chars.get(i + 1) == Some(&quote) && chars.get(i + 2) == Some(&quote))) {
            return i + if triple { 3 } else { 1 };
        }
        i += 1;
    }
    i
}

/// Bounds a parsed condition without recursion: depth, node count,
/// comprehension nesting and evaluation cost. Refuses message literals
/// (conditions have no message types).
pub fn bound(program: &Program) -> Result<(), ExprError> {
    let root = program.expression();
    // (node, depth, comprehension nesting, cost multiplier)
    let mut stack: Vec<(&IdedExpr, usize, usize, u64)> = vec![(root, 1, 0, 1)];
    let (mut nodes, mut cost) = (0usize, 0u64);
    while let Some((node, depth, nesting, weight)) = stack.pop() {
        nodes += 1;
        cost = cost.saturating_add(weight);
        if depth > MAX_DEPTH {
            return Err(ExprError::plain(format!("nested deeper than {MAX_DEPTH} levels")));
        }
        if nodes > MAX_NODES {
            return Err(ExprError::plain(format!("more than {MAX_NODES} terms")));
        }
        if cost > MAX_COST {
            return Err(ExprError::plain(format!(
                "too costly to evaluate (over {MAX_COST} steps): fewer or smaller nested all/exists/map/filter"
            )));
        }
        let d = depth + 1;
        match &node.expr {
            Expr::Call(call) => {
                stack.extend(call.target.iter().map(|t| (t.as_ref(), d, nesting, weight)));
                stack.extend(call.args.iter().map(|a| (a, d, nesting, weight)));
            }
            Expr::Comprehension(c) => {
                if nesting >= MAX_COMPREHENSION_NESTING {
                    return Err(ExprError {
                        message: format!("all/exists/map/filter nested more than {MAX_COMPREHENSION_NESTING} deep"),
                        snippet: snippet(program, node),
                    });
                }
                let range = match &c.iter_range.expr {
                    Expr::List(l) => l.elements.len() as u64,
                    Expr::Map(m) => m.entries.len() as u64,
                    _ => DATA_RANGE,
                }
                .max(1);
                let inner = weight.saturating_mul(range);
                stack.push((&c.iter_range, d, nesting, weight));
                stack.push((&c.accu_init, d, nesting, weight));
                stack.push((&c.result, d, nesting, weight));
                stack.push((&c.loop_cond, d, nesting + 1, inner));
                stack.push((&c.loop_step, d, nesting + 1, inner));
            }
            Expr::List(list) => stack.extend(list.elements.iter().map(|e| (e, d, nesting, weight))),
            Expr::Map(map) => {
                for entry in &map.entries {
                    match &entry.expr {
                        EntryExpr::MapEntry(e) => {
                            stack.push((&e.key, d, nesting, weight));
                            stack.push((&e.value, d, nesting, weight));
                        }
                        EntryExpr::StructField(_) => return Err(ExprError::plain("a map entry needs a key")),
                    }
                }
            }
            Expr::Select(select) => stack.push((&select.operand, d, nesting, weight)),
            Expr::Struct(s) => {
                return Err(ExprError {
                    message: format!("'{}{{…}}': conditions have no message types", s.type_name),
                    snippet: snippet(program, node),
                });
            }
            Expr::Unspecified => return Err(ExprError::plain("incomplete expression")),
            Expr::Ident(_) | Expr::Literal(_) => {}
        }
    }
    Ok(())
}

/// The text of `node` and everything under it, as written.
fn snippet(program: &Program, node: &IdedExpr) -> Option<String> {
    let info = program.source_info();
    let (mut start, mut stop) = (u32::MAX, 0u32);
    let mut stack = vec![node];
    while let Some(n) = stack.pop() {
        if let Some((s, e)) = info.offset_for(n.id) {
            start = start.min(s);
            stop = stop.max(e);
        }
        match &n.expr {
            Expr::Call(c) => {
                stack.extend(c.target.iter().map(|t| t.as_ref()));
                stack.extend(c.args.iter());
            }
            Expr::Select(s) => stack.push(&s.operand),
            Expr::List(l) => stack.extend(l.elements.iter()),
            Expr::Map(m) => {
                for entry in &m.entries {
                    if let EntryExpr::MapEntry(e) = &entry.expr {
                        stack.push(&e.key);
                        stack.push(&e.value);
                    }
                }
            }
            Expr::Comprehension(c) => stack.push(&c.iter_range),
            _ => {}
        }
    }
    if start > stop {
        return None;
    }
    let source: Vec<char> = info.source.chars().collect();
    let mut stop = stop as usize;
    let mut start = start as usize;
    // A call's range starts at its bracket: take the function name too.
    if source.get(start) == Some(&'(') {
        while start > 0 && source.get(start - 1).is_some_and(|c| c.is_alphanumeric() || *c == '_') {
            start -= 1;
        }
    }
    // A selection's range ends at its dot: take the field name too.
    while source.get(stop).is_some_and(|c| *c == '.' || c.is_alphanumeric() || *c == '_')
        && source.get(stop + 1).is_some_and(|c| c.is_alphanumeric() || *c == '_')
    {
        stop += 1;
    }
    let text: String = source.iter().skip(start).take(stop + 1 - start).collect();
    // A call's range may stop before its closing bracket: close what is open.
    let opened = text.matches(['(', '[']).count();
    let closed = text.matches([')', ']']).count();
    let mut text = text;
    if opened > closed {
        let rest: String = source.iter().skip(stop + 1).collect();
        let mut need = opened - closed;
        for c in rest.chars() {
            text.push(c);
            if matches!(c, ')' | ']') {
                need -= 1;
                if need == 0 {
                    break;
                }
            }
        }
    }
    let text = text.trim().to_owned();
    (!text.is_empty()).then_some(text)
}

/// What a sub-expression is known to be.
#[derive(Debug, Clone, PartialEq)]
enum Ty {
    /// Not known before evaluation (a macro variable, an index into data).
    Dyn,
    Of(Kind),
    /// A map whose fields are known: one of the condition's variables.
    Record(Rec),
    /// A map whose values are all of one type (`lead.attributes`).
    MapOf(Box<Ty>),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Rec {
    Score,
    Scores,
    Signals,
    Tally,
    Lead,
}

impl Ty {
    /// The runtime kind, if known.
    fn kind(&self) -> Option<Kind> {
        match self {
            Ty::Dyn => None,
            Ty::Of(k) => Some(*k),
            Ty::Record(_) | Ty::MapOf(_) => Some(Kind::Map),
        }
    }
}

/// "an int", "a string".
fn article(kind: &str) -> String {
    if kind.starts_with(['a', 'e', 'i', 'o', 'u']) { format!("an {kind}") } else { format!("a {kind}") }
}

fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Double => "double",
        Kind::Int => "int",
        Kind::UInt => "uint",
        Kind::String => "string",
        Kind::Bool => "bool",
        Kind::Bytes => "bytes",
        Kind::Duration => "duration",
        Kind::Timestamp => "timestamp",
        Kind::List => "list",
        Kind::Map => "map",
        Kind::Null => "null",
        Kind::Other => "value",
    }
}

/// A value's kind, as the interpreter's `ValueType` (which cannot be compared).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Int,
    UInt,
    Double,
    String,
    Bytes,
    Bool,
    Duration,
    Timestamp,
    Null,
    List,
    Map,
    Other,
}

impl Kind {
    fn of(t: ValueType) -> Kind {
        match t {
            ValueType::Int => Kind::Int,
            ValueType::UInt => Kind::UInt,
            ValueType::Float => Kind::Double,
            ValueType::String => Kind::String,
            ValueType::Bytes => Kind::Bytes,
            ValueType::Bool => Kind::Bool,
            ValueType::Duration => Kind::Duration,
            ValueType::Timestamp => Kind::Timestamp,
            ValueType::Null => Kind::Null,
            ValueType::List => Kind::List,
            ValueType::Map => Kind::Map,
            _ => Kind::Other,
        }
    }
}

/// What the interpreter says of an operator or function on sample values.
#[derive(Debug, Clone, PartialEq)]
enum Trial {
    /// It evaluates, to a value of this kind.
    Gives(Kind),
    /// It fails for these values only (division by zero, a bad number text…).
    Depends,
    /// It can never evaluate for operands of these kinds.
    Never,
}

fn sample(k: Kind) -> Option<Value> {
    Some(match k {
        Kind::Int => Value::Int(3),
        Kind::UInt => Value::UInt(3),
        Kind::Double => Value::Float(1.5),
        Kind::String => Value::String(Arc::new("A".to_owned())),
        Kind::Bytes => Value::Bytes(Arc::new(b"A".to_vec())),
        Kind::Bool => Value::Bool(true),
        Kind::Duration => Value::Duration(chrono::Duration::seconds(1)),
        Kind::Timestamp => Value::Timestamp(chrono::DateTime::from_timestamp(1, 0)?.fixed_offset()),
        Kind::Null => Value::Null,
        Kind::List => Value::List(Arc::new(Vec::new())),
        Kind::Map => Value::Map(cel::objects::Map { map: Arc::new(HashMap::new()) }),
        Kind::Other => return None,
    })
}

/// Evaluates `source` (over variables `a` and `b`) with samples of the
/// given kinds, once per combination.
fn trial(source: &str, kinds: &[Kind]) -> Trial {
    type Trials = HashMap<(String, Vec<Kind>), Trial>;
    static CACHE: OnceLock<Mutex<Trials>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let key = (source.to_owned(), kinds.to_vec());
    if let Some(t) = cache.lock().ok().and_then(|c| c.get(&key).cloned()) {
        return t;
    }
    let result = (|| {
        let program = Program::compile(source).ok()?;
        let mut ctx = cel::Context::default();
        for (name, kind) in ["a", "b", "c"].iter().zip(kinds) {
            ctx.add_variable_from_value(*name, sample(*kind)?);
        }
        let _ = ctx.add_function("days", super::qualify::days);
        Some(match super::qualify::execute(&program, &ctx) {
            Ok(v) => Trial::Gives(Kind::of(v.type_of())),
            Err(
                ExecutionError::NoSuchOverload(_)
                | ExecutionError::UnsupportedBinaryOperator(..)
                | ExecutionError::ValuesNotComparable(..)
                | ExecutionError::UnexpectedType { .. }
                | ExecutionError::UnsupportedTargetType { .. }
                | ExecutionError::NotSupportedAsMethod { .. }
                | ExecutionError::UnsupportedIndex(..)
                | ExecutionError::UnsupportedKeyType(_)
                | ExecutionError::UndeclaredReference(_)
                | ExecutionError::InvalidArgumentCount { .. },
            ) => Trial::Never,
            Err(_) => Trial::Depends,
        })
    })()
    .unwrap_or(Trial::Depends);
    if let Ok(mut c) = cache.lock() {
        // Function names come from rule files: keep the cache small.
        if c.len() >= 4096 {
            c.clear();
        }
        c.insert(key, result.clone());
    }
    result
}

/// The source an operator is tried with, over `a`, `b` (and `c`).
fn operator_source(name: &str) -> Option<&'static str> {
    Some(match name {
        "_+_" => "a + b",
        "_-_" => "a - b",
        "_*_" => "a * b",
        "_/_" => "a / b",
        "_%_" => "a % b",
        "_==_" => "a == b",
        "_!=_" => "a != b",
        "_<_" => "a < b",
        "_<=_" => "a <= b",
        "_>_" => "a > b",
        "_>=_" => "a >= b",
        "-_" => "-a",
        "_[_]" => "a[b]",
        "@in" => "a in b",
        _ => return None,
    })
}

fn operator_symbol(name: &str) -> &str {
    name.trim_matches('_').trim_start_matches('@')
}

/// What the condition's names are, from the checked rule set.
pub struct Names<'a> {
    pub signal_types: &'a BTreeSet<String>,
    pub models: &'a BTreeSet<String>,
}

/// Infers the type of every sub-expression of a bounded condition and
/// refuses the first that can never evaluate, or a result that is not a
/// boolean. Call after [`bound`] (it recurses as deep as the tree).
pub fn check_types(program: &Program, names: &Names<'_>) -> Result<(), ExprError> {
    let checker = Checker { program, names, scopes: Vec::new() };
    let mut checker = checker;
    let ty = checker.infer(program.expression())?;
    match ty.kind() {
        None | Some(Kind::Bool) => Ok(()),
        Some(k) => Err(ExprError::plain(format!("the condition must be true or false, not a {}", kind_name(k)))),
    }
}

struct Checker<'p, 'n> {
    program: &'p Program,
    names: &'n Names<'n>,
    /// Variables bound by comprehensions, innermost last.
    scopes: Vec<(String, Ty)>,
}

impl Checker<'_, '_> {
    fn error(&self, node: &IdedExpr, message: String) -> ExprError {
        ExprError { message, snippet: snippet(self.program, node) }
    }

    fn variable(&self, name: &str) -> Ty {
        if let Some((_, ty)) = self.scopes.iter().rev().find(|(n, _)| n == name) {
            return ty.clone();
        }
        match name {
            "score" => Ty::Record(Rec::Score),
            "scores" => Ty::Record(Rec::Scores),
            "signals" => Ty::Record(Rec::Signals),
            "lead" => Ty::Record(Rec::Lead),
            "grade" | "stage" => Ty::Of(Kind::String),
            "now" => Ty::Of(Kind::Timestamp),
            _ => Ty::Dyn,
        }
    }

    fn field(&self, node: &IdedExpr, operand: &Ty, field: &str) -> Result<Ty, ExprError> {
        let string = Ty::Of(Kind::String);
        Ok(match operand {
            Ty::Record(Rec::Score) => match field {
                "total" | "behavior" | "fit" => Ty::Of(Kind::Double),
                "grade" => string,
                _ => return Err(self.error(node, format!("a score has no field '{field}'"))),
            },
            Ty::Record(Rec::Scores) if self.names.models.contains(field) => Ty::Record(Rec::Score),
            Ty::Record(Rec::Scores) => return Err(self.error(node, format!("scores.{field}: no such model"))),
            Ty::Record(Rec::Signals) if self.names.signal_types.contains(field) => Ty::Record(Rec::Tally),
            Ty::Record(Rec::Signals) => {
                return Err(self.error(node, format!("signals.{field}: not a declared signal type")));
            }
            Ty::Record(Rec::Tally) => match field {
                "count" => Ty::Of(Kind::Int),
                "last_at" => Ty::Of(Kind::Timestamp),
                f if f.starts_with("count_") && f.ends_with('d') => Ty::Of(Kind::Int),
                _ => return Err(self.error(node, format!("signal counts have no field '{field}'"))),
            },
            Ty::Record(Rec::Lead) => match field {
                "attributes" => Ty::MapOf(Box::new(string)),
                "created_at" => Ty::Of(Kind::Timestamp),
                "account_id" => string,
                _ => return Err(self.error(node, format!("a lead has no field '{field}'"))),
            },
            Ty::MapOf(value) => (**value).clone(),
            Ty::Dyn | Ty::Of(Kind::Map) => Ty::Dyn,
            Ty::Of(k) => return Err(self.error(node, format!("a {} has no fields ('.{field}')", kind_name(*k)))),
        })
    }

    fn infer(&mut self, node: &IdedExpr) -> Result<Ty, ExprError> {
        match &node.expr {
            Expr::Literal(l) => Ok(Ty::Of(match l {
                LiteralValue::Boolean(_) => Kind::Bool,
                LiteralValue::Bytes(_) => Kind::Bytes,
                LiteralValue::Double(_) => Kind::Double,
                LiteralValue::Int(_) => Kind::Int,
                LiteralValue::Null => Kind::Null,
                LiteralValue::String(_) => Kind::String,
                LiteralValue::UInt(_) => Kind::UInt,
            })),
            Expr::Ident(name) => Ok(self.variable(name)),
            Expr::Select(select) => {
                let operand = self.infer(&select.operand)?;
                let ty = self.field(node, &operand, &select.field)?;
                Ok(if select.test { Ty::Of(Kind::Bool) } else { ty })
            }
            Expr::List(list) => {
                for e in &list.elements {
                    self.infer(e)?;
                }
                Ok(Ty::Of(Kind::List))
            }
            Expr::Map(map) => {
                for entry in &map.entries {
                    if let EntryExpr::MapEntry(e) = &entry.expr {
                        self.infer(&e.key)?;
                        self.infer(&e.value)?;
                    }
                }
                Ok(Ty::Of(Kind::Map))
            }
            Expr::Comprehension(c) => {
                let range = self.infer(&c.iter_range)?;
                if let Some(k) = range.kind().filter(|k| !matches!(k, Kind::List | Kind::Map)) {
                    return Err(self.error(&c.iter_range, format!("cannot iterate over a {}", kind_name(k))));
                }
                let accu = self.infer(&c.accu_init)?;
                let depth = self.scopes.len();
                self.scopes.push((c.iter_var.clone(), Ty::Dyn));
                if let Some(v2) = &c.iter_var2 {
                    self.scopes.push((v2.clone(), Ty::Dyn));
                }
                self.scopes.push((c.accu_var.clone(), accu));
                let outcome = (|| {
                    self.infer(&c.loop_cond)?;
                    self.infer(&c.loop_step)?;
                    self.infer(&c.result)
                })();
                self.scopes.truncate(depth);
                outcome
            }
            Expr::Call(call) => self.call(node, call),
            Expr::Struct(_) | Expr::Unspecified => Err(self.error(node, "not a condition".to_owned())),
        }
    }

    fn call(&mut self, node: &IdedExpr, call: &cel::common::ast::CallExpr) -> Result<Ty, ExprError> {
        let name = call.func_name.as_str();
        let target = match &call.target {
            Some(t) => Some(self.infer(t)?),
            None => None,
        };
        let mut args = Vec::with_capacity(call.args.len());
        for a in &call.args {
            args.push(self.infer(a)?);
        }
        let bool_ty = Ty::Of(Kind::Bool);
        match name {
            "_&&_" | "_||_" | "!_" | "@not_strictly_false" => {
                for (arg, ty) in call.args.iter().zip(&args) {
                    if let Some(k) = ty.kind().filter(|k| *k != Kind::Bool) {
                        let op = if name == "!_" { "!" } else { operator_symbol(name) };
                        return Err(self.error(
                            arg,
                            format!("'{op}' needs true or false on each side; this is a {}", kind_name(k)),
                        ));
                    }
                }
                return Ok(bool_ty);
            }
            "_?_:_" => {
                if let (Some(cond), Some(k)) = (call.args.first(), args.first().and_then(Ty::kind))
                    && k != Kind::Bool
                {
                    return Err(
                        self.error(cond, format!("'?:' needs a true or false test; this is a {}", kind_name(k)))
                    );
                }
                return Ok(match (args.get(1), args.get(2)) {
                    (Some(a), Some(b)) if a == b => a.clone(),
                    _ => Ty::Dyn,
                });
            }
            "_[_]" => {
                if let (Some(Ty::MapOf(value)), Some(key)) = (args.first(), args.get(1)) {
                    if let Some(k) = key.kind().filter(|k| *k != Kind::String) {
                        return Err(self.error(node, format!("map keys here are strings, not a {}", kind_name(k))));
                    }
                    return Ok((**value).clone());
                }
            }
            "_==_" | "_!=_" => {
                let kinds = (args.first().and_then(Ty::kind), args.get(1).and_then(Ty::kind));
                if let (Some(a), Some(b)) = kinds {
                    let numeric = |k: Kind| matches!(k, Kind::Int | Kind::UInt | Kind::Double);
                    if a != b && !(numeric(a) && numeric(b)) && a != Kind::Null && b != Kind::Null {
                        let always = if name == "_==_" { "false" } else { "true" };
                        return Err(self.error(
                            node,
                            format!(
                                "'{}' of {} and {} is always {always}",
                                operator_symbol(name),
                                article(kind_name(a)),
                                article(kind_name(b))
                            ),
                        ));
                    }
                }
                return Ok(bool_ty);
            }
            _ => {}
        }
        let kinds: Option<Vec<Kind>> = target.iter().chain(&args).map(Ty::kind).collect();
        let Some(kinds) = kinds else { return Ok(known_result(name)) };
        let source = match operator_source(name) {
            Some(source) => source.to_owned(),
            None => {
                let vars = ["a", "b", "c"];
                let (recv, params) = if target.is_some() { (Some(vars[0]), &vars[1..]) } else { (None, &vars[..]) };
                let params = params[..call.args.len().min(params.len())].join(", ");
                if call.args.len() + usize::from(target.is_some()) > vars.len() {
                    return Ok(known_result(name));
                }
                match recv {
                    Some(r) => format!("{r}.{name}({params})"),
                    None => format!("{name}({params})"),
                }
            }
        };
        match trial(&source, &kinds) {
            Trial::Gives(k) => Ok(Ty::Of(k)),
            Trial::Depends => Ok(known_result(name)),
            Trial::Never => {
                let described: Vec<&str> = kinds.iter().map(|k| kind_name(*k)).collect();
                let message = match operator_source(name) {
                    Some(_) if described.len() == 2 => format!(
                        "'{}' cannot be applied to {} and {}",
                        operator_symbol(name),
                        article(described[0]),
                        article(described[1])
                    ),
                    Some(_) => format!("'{}' cannot be applied to a {}", operator_symbol(name), described.join(", ")),
                    None if target.is_some() => {
                        format!("no method '{name}' on a {} taking ({})", described[0], described[1..].join(", "))
                    }
                    None => format!("no function '{name}' taking ({})", described.join(", ")),
                };
                Err(self.error(node, message))
            }
        }
    }
}

/// The result of a standard function whose operands are not all known.
fn known_result(name: &str) -> Ty {
    Ty::Of(match name {
        "size" | "int" | "getFullYear" | "getMonth" | "getDate" | "getDayOfMonth" | "getDayOfWeek" | "getDayOfYear"
        | "getHours" | "getMinutes" | "getSeconds" | "getMilliseconds" => Kind::Int,
        "uint" => Kind::UInt,
        "double" => Kind::Double,
        "string" => Kind::String,
        "timestamp" => Kind::Timestamp,
        "duration" | "days" => Kind::Duration,
        "contains" | "startsWith" | "endsWith" | "matches" | "@in" | "_<_" | "_<=_" | "_>_" | "_>=_" => Kind::Bool,
        _ => return Ty::Dyn,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> (BTreeSet<String>, BTreeSet<String>) {
        (["demo_requested".to_owned()].into(), ["b2b".to_owned()].into())
    }

    fn check(source: &str) -> Result<(), ExprError> {
        scan(source)?;
        let program = Program::compile(source).map_err(|e| ExprError::plain(e.to_string()))?;
        bound(&program)?;
        let (signal_types, models) = names();
        check_types(&program, &Names { signal_types: &signal_types, models: &models })
    }

    #[test]
    fn accepts_the_conditions_rule_files_use() {
        for ok in [
            "signals.demo_requested.count > 0",
            "score.behavior >= 30.0 && grade in ['A', 'B', 'C']",
            "score.behavior >= 30 && score.fit > 1u",
            "has(lead.attributes.email_domain) && lead.attributes.email_domain in ['a.com', 'b.io']",
            "signals.demo_requested.count_30d > 0 || signals.demo_requested.last_at > now - days(7)",
            "stage in ['LEAD', 'MQL'] ? score.total > 10.0 : false",
            "int(lead.attributes.company_size) >= 1000",
            "lead.attributes.exists(k, k.startsWith('x')) && size(lead.attributes) > 2",
            "lead.attributes['country'] == 'de' && scores.b2b.grade == 'A'",
            "lead.created_at < now - duration('24h') && lead.account_id != ''",
            "[1, 2, 3].all(x, x > 0)",
        ] {
            assert_eq!(check(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn refuses_type_errors_in_every_branch() {
        for (bad, part) in [
            ("score.behavior >= '30' && grade in ['A','B','C']", "score.behavior >= '30'"),
            ("grade in ['A'] || score.total < 'x'", "score.total < 'x'"),
            ("stage == 'MQL' ? signals.demo_requested.count > 'a' : true", "signals.demo_requested.count > 'a'"),
            ("!(score.total + 'a' > 1.0)", "score.total + 'a'"),
            ("score.total == 'A'", "score.total == 'A'"),
            ("score.fit && true", "score.fit"),
            ("now > 5", "now > 5"),
            ("lead.attributes.size >= 10", "lead.attributes.size >= 10"),
            ("nosuchfunction(1) == 1", "nosuchfunction(1)"),
        ] {
            let error = check(bad).expect_err(bad);
            assert_eq!(error.snippet.as_deref(), Some(part), "{bad}: {error:?}");
        }
        assert!(check("score.total").unwrap_err().message.contains("true or false"));
        assert!(check("score.nope > 1").unwrap_err().message.contains("no field 'nope'"));
    }

    #[test]
    fn bounds_depth_size_and_cost() {
        let chain = vec!["score.total"; 1400].join(" + ") + " > 1.0";
        assert!(check(&chain).unwrap_err().message.contains("too deep"));
        let parens = "(".repeat(30) + "true" + &")".repeat(30);
        assert!(check(&parens).unwrap_err().message.contains("nested deeper"));
        let wide = vec!["grade == 'A'"; 300].join(" || ");
        assert_eq!(check(&wide), Ok(()));
        let costly = "lead.attributes.all(a, lead.attributes.all(b, lead.attributes.all(c, true)))";
        assert!(check(costly).is_err());
        let list = format!("grade in [{}]", vec!["'A'"; 500].join(", "));
        assert_eq!(check(&list), Ok(()));
        assert!(check("foo.Bar{x: 1} == 1").is_err());
    }
}
