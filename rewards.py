"""
Answer extraction, answer equivalence, and THOR's two rewards (paper §4, digest §8).

In:  a model response (str) or an extracted answer, and a gold answer (str; an int/float is read as text).
Out: extract_answer(text) -> str | None       content of the last \\boxed{..}/\\fbox{..}, else a fallback
     is_equiv(pred, gold) -> bool             never raises, never hangs
     grade_many(pairs, workers) -> list[bool]  is_equiv over many pairs, symbolic work on all cores
     episode_reward(response, gold) -> float   1.0 correct, 0.0 otherwise (episode-level RL, Eq. 4)
     step_reward(exec_result) -> float         1.0 iff the code call succeeded (step-level RL, Eq. 6-8)
     read_problems(path) -> list[dict]         {"id", "problem", "answer", ...} from any problem file:
                                               ours, or a shared benchmark / training set as it is

is_equiv is a cascade, cheapest first; the first three steps run in-process and decide most pairs
(85% of bench/grade_bench.py's mix, at ~4k pairs/s on one core):
  1. exact string match;
  2. Hendrycks-style normalisation (\\left, \\dfrac, units, \\%, ^\\circ, \\text{}, "x =", 1,000,
     spaces, trailing ".") then string match; so 50\\% = 50 (not 0.5) and 90^\\circ = 90; text
     answers and multiple-choice letters stop here (case-insensitive), as do numerals with a base
     (2516_8 = 2516, but 66_3 != 66_8);
  3. plain numbers (integers, decimals, fractions, 3.6e-10, 10^{-6}) compared as exact rationals;
  4. symbolic equivalence by math-verify (LaTeX: surds, pi, sets, intervals, matrices, tuples) or by a
     whitelisted sympy parse of Python syntax (sqrt(2)/2, x**2 + 1, oo, Rational(3, 4)), in a persistent
     grader process with a deadline: an overrun kills the process and counts as "not equal".
     math-verify's own timeouts use SIGALRM, which only works in the main thread, so they are off.
     Inside the grader three of math-verify's comparison functions are replaced (numbers: the policy
     below; expressions: agreement at random points instead of simplify; relations: proportionality
     instead of sympy.solve, which can run for a minute on a Minerva ODE).

Numeric policy (REL_TOL). Exactly written numbers must be exactly equal: 0.5 = 1/2 and 025 = 25, but
2^{1009} != 2^{1009}+1. Where a decimal is involved a relative error of 1e-6 is allowed, so Python's
0.3333333333333333 or 1.4142135623730951 match 1/3 or \\sqrt{2}, while hand-rounded 0.333, 1.414 or
3.14 do not (MATH asks for exact answers, and a policy that may round would farm reward), and decimals
are not re-rounded: 1.2968 != 1.3 (Minerva asks for the stated precision). math-verify's rule (round
both to 6 decimal places) would call 3.61e-10 and 3.6e-10 equal, so it is replaced in the grader.
"""

import ast
import base64
import functools
import json
import os
import pickle
import re
import select
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction

REL_TOL = 1e-6      # relative tolerance whenever a decimal is compared (see the numeric policy above)
TIMEOUT_S = 5.0     # deadline of one symbolic comparison in the grader process, seconds
MAX_LEN = 1000      # longer answers are only ever matched exactly (the longest OlympiadBench gold is ~300)

# -----------------------------------------------------------------------------
# Extraction

# A ```python block: the fence line (anything after "python" on it), the code, the closing fence. The one
# definition: the sampler (model.py) runs the blocks it finds with it, TIRGen parses the critic with it,
# and extract_code reads a code answer with it.
CODE_BLOCK = re.compile(r"```python[^\n]*\n(.*?)```", re.S)


def extract_answer(text):
    """Content of the last \\boxed{...} or \\fbox{...} (nested braces); None if it is unclosed.
    Without a box: the Minerva "final answer is $...$" line, then "The answer is ...", else None."""
    if not isinstance(text, str):
        return None
    boxes = list(re.finditer(r"\\(?:boxed|fbox)\s*", text))
    if boxes:
        i = boxes[-1].end()
        if not text.startswith("{", i):  # "\boxed 5": up to the next $ or line end
            return re.match(r"[^$\n]*", text[i:]).group().strip() or None
        depth, j = 0, i
        while j < len(text):
            if text[j] == "\\":  # \{ \} and \\ neither open nor close the box
                j += 2
                continue
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            if depth == 0:
                return text[i + 1:j].strip() or None
            j += 1
        return None  # cut off mid-answer; an earlier box is an intermediate result, not the answer
    found = (re.findall(r"final answer is\s*\$(.+?)\$", text, re.I | re.S)
             or re.findall(r"the answer is[:\s]*(.+?)(?:\.?\s*$|\.\s|\n)", text, re.I))
    return (found[-1].strip().strip("$").strip() or None) if found else None


# -----------------------------------------------------------------------------
# Normalisation (after Hendrycks et al.'s MATH grader) and plain numbers

_UNICODE = {"\u2212": "-", "\u03c0": "\\pi", "\u221e": "\\infty", "\u221a": "\\sqrt", "\u00d7": "\\times",
            "\u22c5": "\\cdot", "\u00b7": "\\cdot", "\u00b0": "", "\u2264": "\\le", "\u2265": "\\ge"}
_NUM = r"-?(?:\d+\.?\d*|\.\d+)"
_BASE = re.compile(r"(\w+)_\{?(\d+)\}?")  # a numeral in base b
_MATH_WORD = r"(?!(?:pi|oo|ln|log|exp|sqrt|sin|cos|tan|sec|csc|cot)(?![a-zA-Z]))"
_UNIT_TEXT = r"\\(?:text|mbox|mathrm|textrm)\{(?:\s+[a-zA-Z]|[a-zA-Z]{2})[a-zA-Z .]*\}(?:\^\{?[23]\}?)?"


def normalize(s):
    """Canonical string form of an answer; equal forms are equal answers (the converse need not hold)."""
    s = "".join(_UNICODE.get(c, c) for c in s).replace("\n", " ").strip()
    for _ in range(3):  # answer-wide wrappers: $..$, \(..\), \[..\], \boxed{..}
        s = re.sub(r"^\$+(.*?)\$+$|^\\\((.*)\\\)$|^\\\[(.*)\\\]$|^\\boxed\{(.*)\}$",
                   lambda m: next(g for g in m.groups() if g is not None), s, flags=re.S).strip()
    s = re.sub(r"(?<!\\)\\!\s*", "", s)                                 # 10,\!080 -> 10,080
    s = re.sub(r"\\(?:left|right|[bB]igg?[lr]?)(?![a-zA-Z])|\\displaystyle|(?<!\\)\\[,;: ]|\\q?quad|~", " ", s)
    s = re.sub(r"\\[dt]frac", r"\\frac", s).replace("{,}", ",")
    s = re.sub(r"\^\s*\{?\\circ\}?|\\circ|\\%|%|\\\$|\$", "", s)          # degrees, percent, dollars
    s = re.sub(r"(?<=[\d}])\s*" + _UNIT_TEXT + r"\s*$", "", s)                # 10\text{ cm}^2 -> 10
    s = re.sub(r"^(" + _NUM + r")\s+" + _MATH_WORD + r"[a-zA-Z]{2,}\.?(?:\s+[a-zA-Z]{2,})?(?:\^\{?[23]\}?)?$",
               r"\1", s)                                                  # 10 cm -> 10
    s = re.sub(r"\\(?:text|textbf|textrm|mathrm|mbox|mathbf)\{([^{}]*)\}", r"\1", s).strip()
    s = re.sub(r"(?<![a-zA-Z\\])(?:infinity|inf)(?![a-zA-Z])", r"\\infty", s)
    if re.fullmatch(r"(?:[a-zA-Z]\s*=\s*)?-?\d{1,3}(?:,\d{3})+(?:\.\d+)?", s):  # thousands separators: 1,000
        s = s.replace(",", "")
    s = re.sub(r"\s+", " ", s)
    s = re.sub(r"(?<![a-zA-Z]) | (?![a-zA-Z])", "", s)                    # spaces stay only as in "\pi r"
    lhs = r"(^|,)([a-zA-Z](?:_\{?\w+\}?)?(?:\([a-z]\))?)(?:=(?![=<>])|\\in(?![a-zA-Z]))"  # x = 3, x \in [1,2]
    if len({m[1] for m in re.findall(lhs, s)}) == 1:  # one variable only: "a=3, b=2" is not the set {2, 3}
        s = re.sub(lhs, r"\1", s)
    s = re.sub(r"^\(([A-E])\)$", r"\1", s)                                # multiple choice: (C) -> C
    s = re.sub(r"(?<![\w.])(\d+(?:\.\d+)?)[eE]([-+]?\d{1,3})(?![\w.])", r"\1\\times10^{\2}", s)  # 1e-6
    s = re.sub(r"\\times10\^([-+]?\d)(?!\d)", r"\\times10^{\1}", s.replace("\\cdot10^", "\\times10^"))
    s = re.sub(r"\\sqrt(\w)", r"\\sqrt{\1}", s)                           # \sqrt3 -> \sqrt{3}
    s = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", s)                   # \frac12 -> \frac{1}{2}
    s = re.sub(r"\\frac(\d)\{", r"\\frac{\1}{", s)
    s = re.sub(r"\\frac\{([^{}]*)\}(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"^(-?\d+)/(\d+)$", r"\\frac{\1}{\2}", s)
    return re.sub(r"(?<![\d.])\.(\d)", r"0.\1", s).rstrip(".")           # .5 -> 0.5, "5." -> 5


def _number(s):
    """(exact value, written as a decimal?) for a plain number in normalised form, else None."""
    m = re.fullmatch(r"(-?)(?:(\d+)(?=\\frac))?\\frac\{(-?\d+)\}\{(-?\d+)\}", s)  # fraction, mixed number
    if m and int(m[4]) != 0:
        v = Fraction(int(m[3]), int(m[4])) + int(m[2] or 0)
        return (-v if m[1] else v), False
    m = re.fullmatch(r"(" + _NUM + r")(?:\\times10\^\{([-+]?\d{1,3})\})?", s)  # 12, -0.5, 3.61\times10^{-10}
    if m:
        return Fraction(m[1]) * Fraction(10) ** int(m[2] or 0), "." in m[1]
    m = re.fullmatch(r"10\^\{?([-+]?\d{1,3})\}?", s)                           # 10^{-6}
    return (Fraction(10) ** int(m[1]), False) if m else None


def _numbers_equal(x, y):
    (a, a_dec), (b, b_dec) = x, y
    return a == b or ((a_dec or b_dec) and abs(a - b) <= REL_TOL * max(abs(a), abs(b)))


def _well_formed(s):
    depth = 0
    for c in re.sub(r"\\[{}]", "", s):
        depth += {"{": 1, "}": -1}.get(c, 0)
        if depth < 0:
            return False
    return depth == 0 and not re.search(r"\\(?:frac|sqrt)$|\\frac\{[^{}]*\}$|[\^_]$", s)  # "\frac{1}", "2^"


def _is_text(s):
    # A word answer ("east", "Navin", "yes") or a choice letter is compared as a string, never as a
    # product of symbols (math-verify reads "east" as e*a*s*t).
    return bool(re.fullmatch(r"[A-Za-z]{3,}(?: [A-Za-z]+)*|[A-E]|[Nn]o", s))


def _fast_verdict(pred, gold):
    """True/False if decided in-process, else the normalised (pred, gold) for the symbolic step."""
    pred, gold = (repr(x) if type(x) in (int, float) else x for x in (pred, gold))  # AMC23 golds: 27.0
    if not isinstance(pred, str) or not isinstance(gold, str):
        return False
    if pred.strip() == gold.strip():
        return bool(pred.strip())
    if len(pred) > MAX_LEN or len(gold) > MAX_LEN or not (pred + gold).replace("\n", " ").isprintable():
        return False
    p, g = normalize(pred), normalize(gold)
    if not p or not g or not _well_formed(p) or not _well_formed(g):
        return False
    if p == g or _is_text(p) or _is_text(g):
        return p.lower() == g.lower()
    m, n = _BASE.fullmatch(p), _BASE.fullmatch(g)
    if m or n:  # 2516_8: math-verify drops the base, so 66_3 would equal 66_8
        return (m[1] if m else p) == (n[1] if n else g) and not (m and n and m[2] != n[2])
    x, y = _number(p), _number(g)
    if x and y:
        return _numbers_equal(x, y)
    equation = re.compile(r"(?<![<>!\\])=")
    if equation.search(p) and not equation.search(g):
        return False  # math-verify would compare only the right-hand side: "2x+1=3" is not the answer 3
    return p, g


def _decide(pred, gold):
    try:
        return _fast_verdict(pred, gold)
    except Exception:
        return False

# -----------------------------------------------------------------------------
# Symbolic equivalence (runs inside a grader process; sympy/math-verify are imported only there)

_PY_NAMES = ("sqrt pi oo E I exp log ln Rational Integer Float Abs factorial binomial sin cos tan asin acos "
             "atan Matrix").split()
_PY_HINT = re.compile(r"\*\*|\d\s*\*\s*[\w(]|(?<![a-zA-Z])(?:" + "|".join(_PY_NAMES) + r")(?![a-zA-Z])")


def _parse_python(s):
    """sympy value of Python/sympy output such as sqrt(2)/2, x**2 + 1, oo, Rational(3, 4), [2, -3].
    parse_expr evaluates its input, so only numbers, operators, whitelisted names and one-letter
    variables get through (no attributes, strings, dunders)."""
    import sympy
    from sympy.parsing.sympy_parser import (convert_xor, implicit_multiplication, parse_expr,
                                            standard_transformations)
    names = re.findall(r"[A-Za-z_]\w*", s)
    if len(s) > 300 or not re.fullmatch(r"[\w\s+\-*/^().,\[\]{}]*", s) or re.search(r"[A-Za-z_)\]]\s*\.", s) \
            or any(n not in _PY_NAMES and not re.fullmatch(r"[a-zA-Z]\d*", n) for n in names):
        return None
    local = {n: getattr(sympy, n) for n in _PY_NAMES if n != "ln"} | {"ln": sympy.log, "e": sympy.E}
    local |= {n: sympy.Symbol(n.lower(), real=True) for n in names if n not in local}  # as latex2sympy does
    v = parse_expr(s, local_dict=local, transformations=standard_transformations
                   + (implicit_multiplication, convert_xor))
    if isinstance(v, (list, set)):  # a list of solve() results is a set of answers
        return sympy.FiniteSet(*v)
    return sympy.Tuple(*v) if isinstance(v, tuple) else v


def _numeric_eq(a, b, *_):
    """The numeric policy, replacing math_verify.grader.sympy_numeric_eq (see the docstring)."""
    from sympy import Float, MatrixBase, N
    if a.free_symbols or b.free_symbols:
        return False  # expressions go to _identity_eq
    a, b = a.doit(), b.doit()  # unevaluated 2**1009 -> Integer, -Matrix -> Matrix
    if isinstance(a, MatrixBase) or isinstance(b, MatrixBase):
        return isinstance(a, MatrixBase) and isinstance(b, MatrixBase) and a.shape == b.shape \
            and all(_numeric_eq(x, y) for x, y in zip(a, b))
    if a.is_Rational and b.is_Rational:
        return a == b  # exact, even for 2^{1009} + 1
    if not (a.is_number and b.is_number):
        return False
    va, vb = N(a, 50), N(b, 50)
    if not (va.is_finite and vb.is_finite):
        return va == vb  # oo - (-oo) is oo, which no tolerance may absorb
    tol = REL_TOL if a.has(Float) or b.has(Float) else 1e-30
    return bool(abs(va - vb) <= tol * max(abs(va), abs(vb)))


def _at_random_points(exprs, n=3):
    """Values of the expressions at n random points (mixed signs, so that sqrt(x^2) != x), to 30
    digits; None if one of them does not evaluate to a finite number."""
    import random
    from sympy import Derivative, Expr, N, Rational, Symbol
    from sympy.core.function import AppliedUndef
    if not all(isinstance(e, Expr) for e in exprs):
        return None
    # dv/dt and f(t) stay opaque: substituting numbers would turn d(3/7)/dt into 0
    exprs = [e.xreplace({x: Symbol(str(x)) for x in e.atoms(Derivative, AppliedUndef)}) for e in exprs]
    free = sorted(set().union(*(e.free_symbols for e in exprs)), key=str)
    rng, rows = random.Random(0), []
    for _ in range(n):
        point = {s: Rational(rng.choice([-1, 1]) * rng.randint(1, 999), rng.randint(1, 99)) for s in free}
        row = [N(e.subs(point), 30) for e in exprs]
        if not all(v.is_number and v.is_finite for v in row):
            return None
        rows.append(row)
    return rows


def _identity_eq(a, b, _simplify_eq=None):
    """Replaces math_verify.grader.sympy_symbolic_eq, i.e. simplify(a - b) == 0, which takes ~0.3 s
    even when a != b: a and b must agree at three random points. Expressions that do not evaluate
    (unknown functions) still go to simplify."""
    from sympy import Float, MatrixBase, MatrixExpr
    a, b = (x.doit() if isinstance(x, MatrixExpr) else x for x in (a, b))  # -Matrix -> Matrix
    if isinstance(a, MatrixBase) and isinstance(b, MatrixBase):
        return a.shape == b.shape and all(_identity_eq(x, y, _simplify_eq) for x, y in zip(a, b))
    if not (a.free_symbols or b.free_symbols):
        return False  # numbers were decided by _numeric_eq
    rows = _at_random_points([a, b])
    if rows is None:
        return _simplify_eq(a, b)
    tol = REL_TOL if a.has(Float) or b.has(Float) else 1e-20
    return all(abs(va - vb) <= tol * max(abs(va), abs(vb)) for va, vb in rows)


def _same_relation(gold, pred, *_):
    """Replaces math_verify.grader.sympy_solve_and_compare, whose sympy.solve can run for a minute on
    a Minerva differential equation: two relations of one kind are the same iff lhs - rhs of one is a
    constant multiple of the other's, a positive one for inequalities (2x + 2 = 0 and x = -1;
    2x > 4 and x > 2, but not -x > -2)."""
    from sympy import Eq
    from sympy.core.relational import Relational
    if not (isinstance(gold, Relational) and type(gold) is type(pred) and gold.free_symbols and pred.free_symbols):
        return False
    rows = _at_random_points([gold.lhs - gold.rhs, pred.lhs - pred.rhs])
    if rows is None or any(p == 0 for _, p in rows):
        return False
    ratios = [g / p for g, p in rows]
    r0 = ratios[0]
    return (r0.is_real and (r0 > 0 or isinstance(gold, Eq)) and r0 != 0
            and all(abs(r - r0) <= 1e-20 * abs(r0) for r in ratios))


@functools.lru_cache(maxsize=4096)  # the gold of an RL group is graded G=16 times
def _parse(s):
    """(sympy value, string) for math-verify's verify; () if unparseable."""
    import sympy
    from latex2sympy2_extended import NormalizationConfig
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse
    if "\\" not in s and _PY_HINT.search(s):
        v = _parse_python(s)
        parsed = [v, s] if v is not None else []
    else:  # units=False: its unit list has "c", "t", "m", and "\frac{1}{\sqrt{2}}c" would lose its c
        latex = LatexExtractionConfig(normalization_config=NormalizationConfig(
            basic_latex=True, units=False, malformed_operators=False, nits=True, boxed="all", equations=False))
        parsed = parse("$" + s + "$", [latex, ExprExtractionConfig()], parsing_timeout=None)
    # latex2sympy reads the i of "6+9i" as a real symbol, Python prints the imaginary unit as I
    return tuple(v.subs({x: sympy.I for x in v.free_symbols if x.name == "i"}) if hasattr(v, "subs") else v
                 for v in parsed)


def _symbolic_equiv(pred, gold):
    from math_verify import verify
    g, p = _parse(gold), _parse(pred)
    # gold first: verify is asymmetric; allow_set_relation_comp lets x <= 0 match (-\infty, 0]
    return bool(g and p and verify(list(g), list(p), allow_set_relation_comp=True, timeout_seconds=None))

# -----------------------------------------------------------------------------
# Grader processes: persistent, one request at a time each, killed and replaced on overrun

class _GraderPool:
    def __init__(self):
        self.pid, self.size, self.busy, self.idle = os.getpid(), os.cpu_count() or 1, 0, []
        self.cond = threading.Condition()

    def _start(self):
        proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--grader"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, bufsize=0,
                                start_new_session=True)
        if self._readline(proc, 120.0) != "ready":  # importing sympy is not part of any deadline
            self._kill(proc)
            raise RuntimeError("grader process did not start")
        return proc

    @staticmethod
    def _readline(proc, timeout):
        """One line from the process, or None if it did not come within `timeout` seconds."""
        buf, deadline, poll = b"", time.monotonic() + timeout, select.poll()  # poll: fds > 1024 are fine
        poll.register(proc.stdout, select.POLLIN)
        while not buf.endswith(b"\n") and poll.poll(max(0.0, deadline - time.monotonic()) * 1000):
            chunk = os.read(proc.stdout.fileno(), 64)
            if not chunk:
                break
            buf += chunk
        return buf.decode().strip() if buf.endswith(b"\n") else None

    @staticmethod
    def _kill(proc):
        proc.kill()
        proc.wait()
        proc.stdin.close()
        proc.stdout.close()

    def equiv(self, pred, gold, timeout):
        """True/False from a grader process, None if it overran `timeout` (it is then killed)."""
        if self.pid != os.getpid():  # we were forked: the parent's processes and lock are not ours
            self.__init__()
        with self.cond:
            self.cond.wait_for(lambda: self.busy < self.size)
            self.busy += 1
            proc = self.idle.pop() if self.idle else None
        answer = None
        try:
            if proc is None or proc.poll() is not None:
                proc = self._start()  # lazily: a killed process is replaced by the next call
            proc.stdin.write((json.dumps([pred, gold]) + "\n").encode())
            answer = self._readline(proc, timeout)
        finally:
            if answer is None and proc is not None:
                self._kill(proc)
            with self.cond:
                self.busy -= 1
                if answer is not None:
                    self.idle.append(proc)
                self.cond.notify()
        return None if answer is None else answer == "1"


_POOL = _GraderPool()
_CACHE = {}  # (pred, gold) -> verdict; an RL group of G=16 samples repeats the same answers many times


def _symbolic(pred, gold, timeout):
    if (pred, gold) not in _CACHE:
        try:
            verdict = _POOL.equiv(pred, gold, timeout)
        except Exception as e:  # e.g. the grader cannot start: say so, since every such pair now fails
            warnings.warn(f"rewards.py: symbolic grading failed ({type(e).__name__}); counted as not equal")
            return False
        if verdict is None:  # a timeout may be load, not the pair: do not remember it
            return False
        if len(_CACHE) > 100_000:
            _CACHE.clear()
        _CACHE[pred, gold] = verdict
    return _CACHE[pred, gold]


def _grader_main():
    import resource
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))  # 10**10**10 fails with MemoryError
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # whatever a library prints must not corrupt the protocol on stdout
    import math_verify.grader as mv  # our numeric policy and a faster identity test, see those functions
    mv.sympy_numeric_eq = _numeric_eq
    mv.sympy_symbolic_eq = functools.partial(_identity_eq, _simplify_eq=mv.sympy_symbolic_eq)
    mv.sympy_solve_and_compare = _same_relation
    out.write("ready\n")
    out.flush()
    for line in sys.stdin:
        try:
            ok = _symbolic_equiv(*json.loads(line))
        except BaseException:  # MemoryError, RecursionError, sympy internals: not equal
            ok = False
        out.write("1\n" if ok else "0\n")
        out.flush()

# -----------------------------------------------------------------------------
# Public API

def http_json(url, body=None, tries=3, timeout_s=600.0, flag=""):
    """GET (body None) or POST JSON to an OpenAI-compatible server (the LLM judge, a served TIRGen agent);
    retries with a back-off, then stops the run with the last error, naming the `flag` that gave the URL."""
    headers = {"Content-Type": "application/json"}
    if os.environ.get("OPENAI_API_KEY"):
        headers["Authorization"] = "Bearer " + os.environ["OPENAI_API_KEY"]
    req = urllib.request.Request(url, None if body is None else json.dumps(body).encode(), headers)
    for i in range(tries):
        try:
            with urllib.request.urlopen(req, timeout=timeout_s) as resp:
                return json.loads(resp.read())
        except (urllib.error.URLError, OSError, ValueError) as e:  # HTTP errors, timeouts, bad JSON
            if i == tries - 1:
                raise SystemExit(f"{flag + ' ' if flag else ''}{url}: {e} ({tries} tries)")
            time.sleep(2 ** i)


def is_equiv(pred, gold, timeout=TIMEOUT_S):
    """Is the predicted answer the gold answer? Never raises; returns within about `timeout` seconds
    (plus, rarely, the start of a fresh grader process)."""
    verdict = _decide(pred, gold)
    return verdict if isinstance(verdict, bool) else _symbolic(*verdict, timeout)


def grade_many(pairs, workers=None, timeout=TIMEOUT_S):
    """[is_equiv(pred, gold) for pred, gold in pairs]; the pairs that need symbolic comparison are
    spread over `workers` grader processes (default: one per core)."""
    verdicts = [_decide(pred, gold) for pred, gold in pairs]
    todo = [i for i, v in enumerate(verdicts) if not isinstance(v, bool)]
    workers = workers or os.cpu_count() or 1
    with _POOL.cond:
        _POOL.size = max(_POOL.size, workers)
    with ThreadPoolExecutor(workers) as ex:
        for i, ok in zip(todo, ex.map(lambda i: _symbolic(*verdicts[i], timeout), todo)):
            verdicts[i] = ok
    return verdicts


def has_repetition(text, n=50, max_count=20):
    """THOR's degenerate-decoding check (digest §8, released math_verifier.check_repetition): some
    n-character substring occurs more than max_count times."""
    return max(Counter(text[i:i + n] for i in range(len(text) - n + 1)).values(), default=0) > max_count


def episode_reward(response, gold):
    """Episode-level reward (paper §4.2): 1.0 iff the last boxed answer equals the gold.
    As in THOR's RL reward (digest §8), a degenerate, repetitive response scores 0. The check skips
    the ```output blocks: the environment wrote those, and a printed decimal expansion such as
    0.384615384615... would otherwise fail it (it does in the released code's own example)."""
    if not isinstance(response, str):
        return 0.0
    written = re.sub(r"```output\n.*?```", "", response, flags=re.S)
    if has_repetition(written):
        return 0.0
    return 1.0 if is_equiv(extract_answer(response), gold) else 0.0


def step_reward(exec_result):
    """Step-level reward (paper §4.3, Eq. 6-8): 1.0 iff the code call succeeded (sandbox ExecResult.ok:
    it exited normally and printed something)."""
    return 1.0 if getattr(exec_result, "ok", False) else 0.0


# -----------------------------------------------------------------------------
# Code answers (HumanEval, HumanEval+, MBPP+): the twins of extract_answer and is_equiv for code tasks.
# The rule is EvalPlus's (evalplus 0.3.1, written out here, not imported): a solution passes when, on
# every test input, its output equals the reference solution's (canonical_solution) output, up to `atol`
# for floats, with a few special oracles; "base" uses base_input (HumanEval's or MBPP's own tests),
# "plus" base_input and plus_input. A task without inputs (plain HumanEval) runs its `check` instead.

CHECK_TIMEOUT_S = 300.0  # sandbox backstop per (task, solution) cell; the per-input limits below act first
CHECK_MEMORY_MB = 4096   # evalplus's memory limit; Mbpp/255's largest input needs over 2 GB
_KEEP = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Assign, ast.AnnAssign)


def extract_code(text, entry_point):
    """The final solution of a code task: the last ```python block that parses and defines the
    function `entry_point` at top level, keeping its imports, definitions and assignments only (the
    test calls and prints the model ran while reasoning are dropped, as evalplus's sanitizer does).
    None if no block defines it."""
    for block in reversed(CODE_BLOCK.findall(text if isinstance(text, str) else "")):
        try:
            body = ast.parse(block).body
        except (SyntaxError, ValueError):
            continue
        if any(isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef)) and s.name == entry_point for s in body):
            lines = block.splitlines()
            return "\n".join("\n".join(lines[min([s.lineno] + [d.lineno for d in getattr(s, "decorator_list", [])]) - 1:
                                             s.end_lineno]) for s in body if isinstance(s, _KEEP)) + "\n"
    return None


def _deep_tuple(x):
    return tuple(map(_deep_tuple, x)) if isinstance(x, list) else x


# MBPP+ stores its inputs as JSON, which has no tuples, sets or complex numbers. Task number -> how
# one input's argument list is restored (evalplus's mbpp_deserialize_inputs, for the tasks of v0.2.0).
_MBPP_ARGS = {
    **dict.fromkeys([2, 116, 132, 222, 261, 273, 394, 421, 424, 429, 470, 560, 579, 596, 616, 630, 726, 740, 744,
                     809], lambda a: [tuple(x) for x in a]),
    **dict.fromkeys([63, 64, 70, 94, 120, 237, 272, 299, 409, 473, 614, 780],
                    lambda a: [[tuple(y) for y in x] for x in a]),
    **dict.fromkeys([75, 413, 753], lambda a: [[tuple(y) for y in a[0]], a[1]]),
    **dict.fromkeys([106, 750], lambda a: [a[0], tuple(a[1])]),
    **dict.fromkeys([250, 405, 446, 720, 763, 808], lambda a: [tuple(a[0]), a[1]]),
    **dict.fromkeys([259, 445], lambda a: [tuple(tuple(y) for y in x) for x in a]),
    **dict.fromkeys([580, 615, 791], _deep_tuple),
    124: lambda a: [float(a[0]), complex(a[1])],
    252: lambda a: [complex(a[0])],
    278: lambda a: [tuple(tuple(x) if isinstance(x, list) else x for x in a[0])],
    722: lambda a: [{k: tuple(v) for k, v in a[0].items()}, *a[1:]],
}
# Special oracles, by entry point (evalplus/eval/_special_oracle.py): MBPP+ tasks whose outputs are
# compared as sets, or only as "not None" (their reference outputs are not serialisable), and two
# whose reference is one of several right answers.
_ORACLES = {**dict.fromkeys(["similar_elements", "find_char_long", "common_in_nested_lists", "extract_singly",
                             "larg_nnum", "find_dissimilar", "Diff"], "set"),
            **dict.fromkeys(["check_str", "text_match_three", "text_starta_endb"], "not_none"),
            "surface_Area": "pyramid", "digit_distance_nums": "digits"}


def _test_inputs(task, key):
    inputs = task.get(key) or []  # Mbpp/793's plus_input is {}: no extra inputs
    convert = _MBPP_ARGS.get(int(task["id"].split("/")[-1])) if task["id"].startswith("Mbpp/") else None
    return [convert(a) for a in inputs] if convert else inputs


# The program of one sandbox cell that grades a solution: evalplus_harness.py, read as text (its docstring
# says what it checks and how).
@functools.cache
def _harness():
    """Read once, when the first code answer is checked: every stage imports rewards.py, few grade code."""
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "evalplus_harness.py")) as f:
        return f.read()


def check_code(sandbox, jobs):
    """EvalPlus verdicts for [(task, solution)] (tasks as read_code_tasks returns them, solutions as
    extract_code does): [{"passed_base": bool, "passed_plus": bool | None (no plus tests),
    "error": the first failure, or None}], one sandbox cell per job (a Sandbox with CHECK_TIMEOUT_S
    and CHECK_MEMORY_MB; None if no solution needs one). Whatever the solution does (loops, exit(),
    huge output, kills) is a failure."""
    cells, out = [], []
    for task, solution in jobs:
        plus = "base_input" in task
        nonce = os.urandom(8).hex()
        out.append(dict(passed_base=False, passed_plus=False if plus else None, error=None, nonce=nonce))
        if solution is None:
            out[-1]["error"] = f"no ```python block defines {task['entry_point']}"
            continue
        oracle = ("find_zero" if task["id"] == "HumanEval/32" and plus else
                  _ORACLES.get(task["entry_point"]) if task["id"].startswith("Mbpp/") else None)
        payload = dict(nonce=nonce, entry_point=task["entry_point"], solution=solution, oracle=oracle,
                       reference=task["prompt"] + task["canonical_solution"], atol=task.get("atol", 0),
                       test=None if plus else task["test"], base=_test_inputs(task, "base_input") if plus else [()],
                       plus=_test_inputs(task, "plus_input") if plus else None)
        blob = base64.b64encode(pickle.dumps(payload)).decode()
        cells.append((len(out) - 1, _harness().replace("__PAYLOAD__", blob)))
    for (i, _), res in zip(cells, sandbox.run_many([c for _, c in cells]) if cells else []):
        line = next((x for x in res.stdout.splitlines() if x.startswith(out[i]["nonce"])), None)
        if line is None:  # the cell died before its verdict: exit(), os._exit, a signal, the time limit ...
            out[i]["error"] = res.error or "no verdict (the solution ended the process)"
            continue
        v = json.loads(line[len(out[i]["nonce"]):])
        out[i].update(passed_base=v["base"], passed_plus=v["plus"], error=v["error"])
    for v in out:
        del v["nonce"]
    return out


# -----------------------------------------------------------------------------
# Problem files: the one reader every stage uses (docs/design.md), for our files and the shared ones as they are


def read_jsonl(path):
    """(line number, object) for each non-blank line; a malformed line stops with `file:line: reason`."""
    if not os.path.isfile(path):
        raise SystemExit(f"{path}: no such file")
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise SystemExit(f"{path}:{n}: invalid JSON ({e.msg})")
            if not isinstance(obj, dict):
                raise SystemExit(f"{path}:{n}: not a JSON object")
            yield n, obj


def repair_jsonl(path):
    """Before appending to an output file: a last line without its newline is what a kill mid-write
    leaves. A whole JSON object gets its newline; anything else is cut off with a one-line warning
    (the run then writes that record again)."""
    if not os.path.isfile(path):
        return
    with open(path, "rb+") as f:
        data = f.read()
        if not data or data.endswith(b"\n"):
            return
        cut = data.rfind(b"\n") + 1
        try:
            whole = isinstance(json.loads(data[cut:]), dict)
        except ValueError:
            whole = False
        if whole:
            f.write(b"\n")
            return
        f.truncate(cut)
    print(f"warning: {path}: dropped a torn last line ({len(data) - cut} bytes: a run killed mid-write)",
          file=sys.stderr)


def _gold(r):
    """The gold answer of a record in any of the shared schemas, or None (docs/design.md, "Benchmark and
    training files")."""
    a = r.get("answer")
    if isinstance(a, str) and "####" in a:     # GSM8K: worked solution, then "#### 1,234"
        return a.split("####")[-1].strip().replace(",", "")
    if isinstance(a, bool):
        raise ValueError("field 'answer' is a boolean")
    if isinstance(a, (int, float)):            # AMC23 stores 27.0
        return str(int(a)) if float(a).is_integer() else repr(a)
    if isinstance(a, str):
        return a
    if isinstance(r.get("final_answer"), list):  # OlympiadBench: ["$12$", ...]
        return ", ".join(x.replace("$", "") for x in r["final_answer"])
    if isinstance(r.get("solution"), str):     # Minerva, full MATH test: the solution's last \boxed{}
        gold = extract_answer(r["solution"]) if "\\boxed" in r["solution"] or "\\fbox" in r["solution"] else None
        if gold is None:
            raise ValueError("no answer field and no \\boxed{} in 'solution'")
        return gold
    return None


def read_problems(path, need_answer=True, check=None):
    """Problem records {"id": str, "problem": str, "answer": str, ...}, every other field carried along.
    Reads our files and the shared ones as they are: the problem is `problem`, or `question` (GSM8K;
    OlympiadBench, after its `context`); the gold answer is `answer` (GSM8K's after "####", AMC's
    27.0 -> "27"), OlympiadBench's `final_answer`, or the last \\boxed{} of `solution` (Minerva);
    the id is `id` (an integer is read as its string), `unique_id` or `idx`, else `<file stem>-<line>`.
    A bad record stops the run with `file:line: reason` (`check(record)` may return one more reason);
    so do a duplicate id and an empty file. With need_answer, a record whose gold answer is empty (MATH
    train's two `\\boxed{}`) is skipped and counted in one printed line."""
    stem = os.path.splitext(os.path.basename(path))[0]
    out, seen, unanswered = [], set(), []
    for n, r in read_jsonl(path):
        where = f"{path}:{n}"
        if "task_id" in r and "entry_point" in r:
            raise SystemExit(f"{where}: a code task (task_id, entry_point), not a math problem: "
                             "score code benchmarks with eval.py --benchmarks")
        problem = r.get("problem", r.get("question"))
        if not isinstance(problem, str) or not problem.strip():
            raise SystemExit(f"{where}: missing field 'problem' (or 'question'): a non-empty string")
        if "problem" not in r and r.get("context"):
            problem = r["context"] + "\n" + problem
        try:
            answer = _gold(r)
        except ValueError as e:
            raise SystemExit(f"{where}: {e}")
        if need_answer and answer is None:
            raise SystemExit(f"{where}: missing field 'answer' (or 'final_answer', or 'solution' with a \\boxed{{}})")
        if need_answer and not answer.strip():
            unanswered.append(n)  # e.g. MATH train's two `\\boxed{}`: no gold, nothing to grade against
            continue
        pid = next((r[k] for k in ("id", "unique_id", "idx") if r.get(k) not in (None, "")), f"{stem}-{n}")
        if not isinstance(pid, (str, int)) or isinstance(pid, bool):
            raise SystemExit(f"{where}: field 'id' must be a string or an integer")
        pid = str(pid)
        if pid in seen:
            raise SystemExit(f"{where}: duplicate id {pid!r}")
        seen.add(pid)
        rec = {**r, "id": pid, "problem": problem, **({"answer": answer} if answer is not None else {})}
        if check and check(rec):
            raise SystemExit(f"{where}: {check(rec)}")
        out.append(rec)
    if unanswered:
        lines = ", ".join(map(str, unanswered[:5])) + (", ..." if len(unanswered) > 5 else "")
        print(f"{path}: skipped {len(unanswered)} record(s) without a gold answer (line {lines})", file=sys.stderr)
    if not out:
        raise SystemExit(f"{path}: no problems" + (" with a gold answer ('answer', 'final_answer' or a \\boxed{} "
                                                   "in 'solution')" if unanswered else ""))
    return out



def read_code_tasks(path):
    """Code tasks of HumanEval / HumanEval+ / MBPP+ files as they are (docs/design.md, "Benchmark and training
    files"), each with "id" = its task_id; a task needs its tests: base_input and plus_input (EvalPlus) or
    test (HumanEval)."""
    out, seen = [], set()
    for n, r in read_jsonl(path):
        tests = ["base_input", "plus_input"] if "base_input" in r else ["test"]
        for k in ["task_id", "prompt", "entry_point", "canonical_solution"] + tests:
            if k not in r or k not in ("base_input", "plus_input") and not isinstance(r[k], str):
                raise SystemExit(f"{path}:{n}: missing field {k!r} (a code task has task_id, prompt, entry_point, "
                                 "canonical_solution and its tests: base_input and plus_input, or test)")
        if r["task_id"] in seen:
            raise SystemExit(f"{path}:{n}: duplicate task_id {r['task_id']!r}")
        seen.add(r["task_id"])
        out.append({**r, "id": r["task_id"]})
    if not out:
        raise SystemExit(f"{path}: no code tasks")
    return out


if __name__ == "__main__" and sys.argv[1:] == ["--grader"]:
    _grader_main()
