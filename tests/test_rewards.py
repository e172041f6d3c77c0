"""Tests for rewards.py: the grader's case table, hostile inputs, threads, extraction, rewards.

The gold answers in CASES are written as they appear in the benchmark files in ../shared/data
(MATH500 `answer`, AIME/AMC `answer`, GSM8K `#### n`, Minerva's last \\boxed{} of `solution`,
OlympiadBench `final_answer`); the predictions are what a model writes, in LaTeX or as copied
Python/sympy output. False positives matter as much as false negatives, so at least half the rows
are non-equivalent pairs.
"""

import json
import os
import sys
import threading
import time
from types import SimpleNamespace

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from rewards import episode_reward, extract_answer, grade_many, is_equiv, read_problems, step_reward  # noqa: E402

T, F = True, False
CASES = [  # (pred, gold, expected)
    # integers: AIME (string, leading zeros), AMC (float), GSM8K (thousands separators)
    ("204", "204", T), ("25", "025", T), ("025", "25", T), ("52", "025", F),
    ("27", 27.0, T), ("27.0", 27.0, T), ("28", 27.0, F), ("2.7", 27.0, F), ("3159", 3159.0, T), ("315", 3159.0, F),
    ("70,000", "70000", T), ("70\\,000", "70000", T), ("7000", "70000", F),
    ("1450000", "1,450,000", T), ("145000", "1,450,000", F), ("1, 0, 0, 0", "1000", F), ("1,000", "1000", T),
    ("- 3", "-3", T), ("3", "-3", F), ("10", "-10", F),
    ("\\$18", "18", T), ("18 dollars", "18", T), ("18.00", "18", T), ("18.5", "18", F),
    ("10080", "10,\\!080", T), ("10,080", "10,\\!080", T), ("1008", "10,\\!080", F),
    ("11111111100", "11,\\! 111,\\! 111,\\! 100", T), ("11111111110", "11,\\! 111,\\! 111,\\! 100", F),
    ("\\$32,348", "\\$32,\\!348", T), ("32384", "\\$32,\\!348", F),
    ("2^{10}", "1024", T), ("1023", "1024", F),
    ("2^{1009}+1", "2^{1009}", F), ("123456789012345678901234567891", "123456789012345678901234567890", F),
    # fractions and decimals (numeric policy: exact, or 1e-6 relative where a decimal is involved)
    ("0.5", "\\frac{1}{2}", T), ("1/2", "\\frac{1}{2}", T), ("\\dfrac{1}{2}", "\\frac{1}{2}", T),
    ("2", "\\frac{1}{2}", F),
    ("\\frac{1}{4}", "\\frac14", T), ("0.25", "\\frac14", T), ("4", "\\frac14", F), ("\\frac{1}{5}", "\\frac14", F),
    ("0.333", "\\frac{1}{3}", F), ("0.3333333333333333", "\\frac{1}{3}", T), ("3", "\\frac{1}{3}", F),
    ("\\frac{9}{19}", "\\frac9{19}", T), ("9/19", "\\frac9{19}", T), ("19/9", "\\frac9{19}", F),
    ("5/9", "\\frac 59", T), ("\\frac{9}{5}", "\\frac 59", F),
    ("0.33", "\\dfrac{33}{100}", T), ("33", "\\dfrac{33}{100}", F),
    ("0.35625", ".35625", T), ("\\frac{57}{160}", ".35625", T), ("0.3563", ".35625", F),
    ("6.72\\times10^{-5}", ".0000672", T), ("6.72e-5", ".0000672", T), ("0.000067", ".0000672", F),
    ("\\frac{9}{2}", "4.5", T), ("4.50", "4.5", T), ("4.46", "4.5", F), ("45", "4.5", F),
    ("-35/9", "-\\frac{35}{9}", T), ("\\frac{-35}{9}", "-\\frac{35}{9}", T), ("\\frac{35}{9}", "-\\frac{35}{9}", F),
    ("-3.89", "-\\frac{35}{9}", F),
    ("137.5", "137 \\frac{1}{2}", T), ("275/2", "137 \\frac{1}{2}", T), ("137", "137 \\frac{1}{2}", F),
    ("68.5", "137 \\frac{1}{2}", F), ("1.8", "1\\frac{4}{5}", T), ("\\frac{4}{5}", "1\\frac{4}{5}", F),
    ("13.28719723183391", "\\frac{3840}{289}", T), ("13.29", "\\frac{3840}{289}", F),
    ("\\frac{1}{1005}", "\\frac{2}{1005}", F),
    # surds, pi, e
    ("\\sqrt5", "\\sqrt{5}", T), ("sqrt(5)", "\\sqrt{5}", T), ("5^{1/2}", "\\sqrt{5}", T), ("2.236", "\\sqrt{5}", F),
    ("\\sqrt{6}", "\\sqrt{5}", F),
    ("\\sqrt{242}", "11\\sqrt2", T), ("11*sqrt(2)", "11\\sqrt2", T), ("22", "11\\sqrt2", F),
    ("11\\sqrt{3}", "11\\sqrt2", F),
    ("\\sqrt{452}", "2\\sqrt{113}", T), ("\\sqrt{226}", "2\\sqrt{113}", F),
    ("\\frac{1}{\\sqrt{3}}", "\\frac{\\sqrt{3}}{3}", T), ("0.5773502691896258", "\\frac{\\sqrt{3}}{3}", T),
    ("0.577", "\\frac{\\sqrt{3}}{3}", F), ("\\sqrt{3}", "\\frac{\\sqrt{3}}{3}", F),
    ("3+2\\sqrt{2}, 3-2\\sqrt{2}", "3 \\pm 2 \\sqrt{2}", T), ("3+2\\sqrt2", "3 \\pm 2 \\sqrt{2}", F),
    ("1-\\sqrt{19},1+\\sqrt{19}", "1 \\pm \\sqrt{19}", T), ("1+\\sqrt{19}", "1 \\pm \\sqrt{19}", F),
    ("pi", "\\pi", T), ("3.14", "\\pi", F), ("\\pi^2", "\\pi", F),
    ("12 \\pi", "12\\pi", T), ("37.69911184307752", "12\\pi", T), ("12", "12\\pi", F), ("6\\pi", "12\\pi", F),
    ("\\frac{-\\pi}{6}", "-\\frac{\\pi}{6}", T), ("\\frac{\\pi}{6}", "-\\frac{\\pi}{6}", F),
    ("\\frac{11\\pi}{6}", "-\\frac{\\pi}{6}", F),
    ("6366.197723675813", "\\frac{20000}{\\pi}", T), ("6366", "\\frac{20000}{\\pi}", F),
    ("2\\pi+18", "18+2\\pi", T), ("20\\pi", "18+2\\pi", F),
    ("e^2", "e^{2}", T), ("\\exp(2)", "e^{2}", T), ("2e", "e^{2}", F),
    # complex numbers
    ("9i+6", "6+9i", T), ("6-9i", "6+9i", F), ("1 + 12i", "1 - 12i", F), ("7i-2", "-2 + 7i", T),
    ("2+7i", "-2 + 7i", F),
    ("-2+2\\sqrt{3}i", "-2+2 \\sqrt{3} i", T), ("2+2\\sqrt3 i", "-2+2 \\sqrt{3} i", F),
    # degrees, percent, units, money
    ("76", "76^\\circ", T), ("76^{\\circ}", "76^\\circ", T), ("76 degrees", "76^\\circ", T), ("104", "76^\\circ", F),
    ("76.5", "76^\\circ", F),
    ("\\frac{270}{7}", "\\frac{270}7\\text{ degrees}", T), ("38.57", "\\frac{270}7\\text{ degrees}", F),
    ("15", "15\\mbox{ cm}^2", T), ("15 cm^2", "15\\mbox{ cm}^2", T), ("16", "15\\mbox{ cm}^2", F),
    ("864 square inches", "864 \\mbox{ inches}^2", T), ("846", "864 \\mbox{ inches}^2", F),
    ("5.4", "5.4 \\text{ cents}", T), ("0.054", "5.4 \\text{ cents}", F),
    ("18.9", "\\$18.90", T), ("18.09", "\\$18.90", F), ("\\$ 36", "\\$36", T), ("\\$63", "\\$36", F),
    ("62.5", "62.5%", T), ("62.5\\%", "62.5%", T), ("0.625", "62.5%", F), ("625", "62.5%", F), ("7.5", "17.5%", F),
    # tuples, points, intervals, unions, sets, multiple answers
    ("(15, -29)", "(15,-29)", T), ("(-29,15)", "(15,-29)", F),
    ("(3, \\frac{\\pi}{2})", "\\left( 3, \\frac{\\pi}{2} \\right)", T),
    ("(3, pi/2)", "\\left( 3, \\frac{\\pi}{2} \\right)", T),
    ("(3,\\frac{\\pi}{3})", "\\left( 3, \\frac{\\pi}{2} \\right)", F),
    ("(\\frac{\\pi}{2},3)", "\\left( 3, \\frac{\\pi}{2} \\right)", F),
    ("(1.5,-13)", "\\left( \\frac{3}{2}, -13 \\right)", T),
    ("(\\frac32,13)", "\\left( \\frac{3}{2}, -13 \\right)", F),
    ("(6, 31, -1)", "(6,31,-1)", T), ("(6,-1,31)", "(6,31,-1)", F), ("(1,-16,-4,43)", "(1,-16,-4,43)", T),
    ("(1,-16,43,-4)", "(1,-16,-4,43)", F),
    ("(3, 4]", "(3,4]", T), ("[3,4]", "(3,4]", F), ("(3,4)", "(3,4]", F),
    ("(5, \\infty)", "(5,\\infty)", T), ("[5,\\infty)", "(5,\\infty)", F), ("(-\\infty,5)", "(5,\\infty)", F),
    ("x \\le 0", "(-\\infty, 0]", T), ("x < 0", "(-\\infty, 0]", F),
    ("(3,\\infty)\\cup(-\\infty,2)", "(-\\infty, 2) \\cup (3, \\infty)", T),
    ("(-\\infty,2]\\cup(3,\\infty)", "(-\\infty, 2) \\cup (3, \\infty)", F),
    ("(-\\infty, 2)", "(-\\infty, 2) \\cup (3, \\infty)", F),
    ("(9,36)\\cup(0,9)", "(0,9) \\cup (9,36)", T), ("(0,36)", "(0,9) \\cup (9,36)", F),
    ("(0.6, 8/3]", "\\left(\\frac{3}{5},\\frac{8}{3}\\right]", T),
    ("(3/5, 8/3)", "\\left(\\frac{3}{5},\\frac{8}{3}\\right]", F),
    ("[\\frac{\\pi^2}{8},\\frac{5\\pi^2}{4}]", "\\left[ \\frac{\\pi^2}{8}, \\frac{5 \\pi^2}{4} \\right]", T),
    ("[-2, 7]", "x \\in [-2,7]", T), ("(-2,7)", "x \\in [-2,7]", F),
    ("-2, 1+\\sqrt{5}, 1-\\sqrt{5}", "\\{1\\pm\\sqrt{5},-2\\}", T),
    ("\\{-2,1+\\sqrt5\\}", "\\{1\\pm\\sqrt{5},-2\\}", F),
    ("1, -2", "-2,1", T), ("-2", "-2,1", F), ("2,-1", "-2,1", F), ("7,5,3", "3, 5, 7", T), ("3,5", "3, 5, 7", F),
    ("x=2, x=-3", "2, -3", T), ("x=2", "2, -3", F), ("15, 5", "5,15", T), ("5", "5,15", F),
    ("(3,2),(1,1)", "(1,1), (3,2)", T), ("(1,1)", "(1,1), (3,2)", F),
    ("(\\sqrt{3}, -\\sqrt{3})", "(-\\sqrt{3}, \\sqrt{3})", F),
    # matrices and vectors
    ("\\begin{pmatrix}-7\\\\16\\\\5\\end{pmatrix}", "\\begin{pmatrix} -7 \\\\ 16 \\\\ 5 \\end{pmatrix}", T),
    ("\\begin{bmatrix} -7 \\\\ 16 \\\\ 5 \\end{bmatrix}", "\\begin{pmatrix} -7 \\\\ 16 \\\\ 5 \\end{pmatrix}", T),
    ("\\begin{pmatrix} -7 \\\\ 5 \\\\ 16 \\end{pmatrix}", "\\begin{pmatrix} -7 \\\\ 16 \\\\ 5 \\end{pmatrix}", F),
    ("\\begin{pmatrix} 0.2 \\\\ -3.6 \\end{pmatrix}", "\\begin{pmatrix} 1/5 \\\\ -18/5 \\end{pmatrix}", T),
    ("\\begin{pmatrix} \\frac15 \\\\ -\\frac{18}{5} \\end{pmatrix}",
     "\\begin{pmatrix} 1/5 \\\\ -18/5 \\end{pmatrix}", T),
    ("\\begin{pmatrix} 1/5 \\\\ 18/5 \\end{pmatrix}", "\\begin{pmatrix} 1/5 \\\\ -18/5 \\end{pmatrix}", F),
    ("\\begin{pmatrix}-1&0\\\\0&-1\\end{pmatrix}", "\\begin{pmatrix} -1 & 0 \\\\ 0 & -1 \\end{pmatrix}", T),
    ("\\begin{pmatrix} 1 & 0 \\\\ 0 & 1 \\end{pmatrix}", "\\begin{pmatrix} -1 & 0 \\\\ 0 & -1 \\end{pmatrix}", F),
    ("-1", "\\begin{pmatrix} -1 & 0 \\\\ 0 & -1 \\end{pmatrix}", F),
    # equations and expressions
    ("5", "x=5", T), ("x = 5", "x=5", T), ("x=6", "x=5", F), ("2x+1=3", "3", F), ("k=3", "3", T),
    ("2x+3", "y = 2x + 3", T), ("y=3+2x", "y = 2x + 3", T), ("y=2x-3", "y = 2x + 3", F),
    ("-2x", "y = -2x", T), ("y=2x", "y = -2x", F),
    ("10x-14y+22z+8=0", "5x - 7y + 11z + 4 = 0", T), ("2x > 4", "x > 2", T), ("-x > -2", "x > 2", F),
    ("x < 2", "x > 2", F),
    ("5x-7y+11z+4=0", "5x - 7y + 11z + 4 = 0", T), ("5x - 7y + 11z - 4 = 0", "5x - 7y + 11z + 4 = 0", F),
    ("x**3 + 3*x - 6", "x^3+3x-6", T), ("3x+x^3-6", "x^3+3x-6", T), ("x^3+3x+6", "x^3+3x-6", F),
    ("2(3r^2-2r-12)", "6r^2-4r-24", T), ("6r^2-4r+24", "6r^2-4r-24", F),
    ("(b+2)(a+5)", "(a+5)(b+2)", T), ("(a+2)(b+5)", "(a+5)(b+2)", F),
    ("-q+p", "p - q", T), ("q-p", "p - q", F), ("\\frac{\\cos x}{\\sin x}", "\\cot x", T), ("\\tan x", "\\cot x", F),
    ("2(k+1)", "2k+2", T), ("2k+1", "2k+2", F), ("3R", "3R^2", F),
    ("x**5 - x**4 + x**3 - x**2 + x - 1", "x^5 - x^4 + x^3 - x^2 + x - 1", T),
    ("x^5+x^4+x^3+x^2+x+1", "x^5 - x^4 + x^3 - x^2 + x - 1", F),
    ("8*n**2 + 4*n + 1", "8n^2 + 4n + 1", T), ("8n^2+4n", "8n^2 + 4n + 1", F),
    ("100\\sqrt{p}", "100 p^{\\frac{1}{2}}", T), ("100p", "100 p^{\\frac{1}{2}}", F),
    ("-(t^2+t+3)", "-t^2 - t - 3", T), ("t^2+t+3", "-t^2 - t - 3", F),
    ("2\\cos(\\pi t + \\frac{\\pi}{3})", "2 \\cos (\\pi t+\\pi / 3)", T),
    ("2\\sin(\\pi t+\\pi/3)", "2 \\cos (\\pi t+\\pi / 3)", F),
    ("\\frac{c}{\\sqrt2}", "\\frac{1}{\\sqrt{2}}c", T), ("\\frac{c}{2}", "\\frac{1}{\\sqrt{2}}c", F),
    # text answers, multiple choice, bases
    ("C", "\\text{(C)}", T), ("(C)", "\\text{(C)}", T), ("\\textbf{(C)}", "\\text{(C)}", T), ("D", "\\text{(C)}", F),
    ("(B)", "\\text{(C)}", F), ("E", "\\text{(E)}", T), ("B", "\\text{(E)}", F),
    ("east", "\\text{east}", T), ("East", "\\text{east}", T), ("west", "\\text{east}", F),
    ("\\text{west}", "\\text{east}", F),
    ("Navin", "\\text{Navin}", T), ("Evelyn", "\\text{Navin}", F), ("even", "\\text{even}", T),
    ("odd", "\\text{even}", F),
    ("ellipse", "\\text{ellipse}", T), ("hyperbola", "\\text{ellipse}", F),
    ("2516_{8}", "2516_8", T), ("1358", "2516_8", F), ("4201_5", "4210_{5}", F), ("4210_4", "4210_{5}", F),
    ("2516", "2516_8", T),
    # Python / sympy output copied into the box
    ("sqrt(2)/2", "\\frac{\\sqrt{2}}{2}", T), ("sqrt(2)/2", "\\frac{1}{2}", F), ("pi/3", "\\frac{\\pi}{3}", T),
    ("pi/6", "\\frac{\\pi}{3}", F), ("x**2 + 1", "x^2+1", T), ("x**2 - 1", "x^2+1", F),
    ("oo", "\\infty", T), ("-oo", "-\\infty", T), ("oo", "-\\infty", F), ("infinity", "\\infty", T),
    ("Rational(3, 4)", "\\frac34", T), ("Rational(4, 3)", "\\frac34", F), ("1e-6", "10^{-6}", T),
    ("1e-5", "10^{-6}", F),
    ("2*sqrt(3)", "\\sqrt{12}", T), ("sqrt(3)", "\\sqrt{12}", F), ("3*pi/2", "\\frac{3\\pi}{2}", T),
    ("E**2", "e^{2}", T), ("exp(2)", "e^{2}", T), ("exp(3)", "e^{2}", F), ("[2, -3]", "2, -3", T),
    ("[2, 3]", "2, -3", F),
    ("(15, -29)", "(15,-29)", T), ("1/5 + 2*I", "\\frac15+2i", T), ("1/5 - 2*I", "\\frac15+2i", F),
    ("0.7071067811865476", "\\frac{\\sqrt{2}}{2}", T), ("0.7071", "\\frac{\\sqrt{2}}{2}", F),
    ("factorial(5)", "120", T), ("binomial(5, 2)", "10", T), ("binomial(5, 3)", "5", F),
    ("Matrix([[-7], [16], [5]])", "\\begin{pmatrix} -7 \\\\ 16 \\\\ 5 \\end{pmatrix}", T),
    # Minerva: scientific notation and stated precision
    ("3.61\\times10^{-10}", "3.61e-10", T), ("3.61 \\times 10^{-10}", "3.61e-10", T), ("3.6e-10", "3.61e-10", F),
    ("3.61e-9", "3.61e-10", F), ("6\\times10^{13}", "6e13", T), ("60000000000000", "6e13", T), ("6e12", "6e13", F),
    ("1.30", "1.3", T), ("1.2968", "1.3", F), ("1.4", "1.3", F), ("0.777", "0.7773", F), ("10^{-5}", "1e-5", T),
    ("0.00001", "1e-5", T), ("1e-6", "1e-5", F), ("4.45 \\times 10^{15}", "4.45e15", T), ("4.5e15", "4.45e15", F),
    # OlympiadBench expressions
    ("mn - \\lfloor m/2 \\rfloor", "m n-\\lfloor m / 2\\rfloor", T),
    ("mn-\\lceil m/2\\rceil", "m n-\\lfloor m / 2\\rfloor", F),
    ("2^{1009}", "$2^{1009}$", T), ("2^{1008}", "$2^{1009}$", F),
    ("\\frac{9}{32}\\sqrt{2}", "$M=\\frac{9}{32} \\sqrt{2}$", T),
    ("\\frac{9}{32}", "$M=\\frac{9}{32} \\sqrt{2}$", F), ("1024-256\\pi", "$1024-256 \\pi$", T),
    ("256\\pi-1024", "$1024-256 \\pi$", F), ("2-\\sqrt3", "$2-\\sqrt{3}$", T), ("\\sqrt{3}-2", "$2-\\sqrt{3}$", F),
    # traps: a near miss that a loose grader would pass
    ("-\\begin{pmatrix} -7 \\\\ 16 \\\\ 5 \\end{pmatrix}", "\\begin{pmatrix} -7 \\\\ 16 \\\\ 5 \\end{pmatrix}", F),
    ("-m \\frac{d v}{d t}+b v=f", "m \\frac{d v}{d t}+b v=f", F),
    ("m\\frac{dv}{dt}+bv=f", "m \\frac{d v}{d t}+b v=f", T),
    ("\\frac{1}{\\sqrt{2}}", "\\frac{1}{\\sqrt{2}}c", F), ("x^2+1", "x^2+1=0", F), ("3\\sqrt{2}", "2\\sqrt{3}", F),
    ("\\frac{\\sqrt{3}}{2}", "\\frac{\\sqrt{2}}{3}", F), ("1000", "10^{4}", F), ("3x", "x^3", F), ("5\\%", "0.05", F),
    ("-\\infty", "\\infty", F), ("\\emptyset", "0", F), ("i", "-i", F), ("2i", "2", F), ("1/0", "\\infty", F),
    ("e", "2.718", F), ("(1,2)", "(1,2,3)", F), ("\\text{(A)}", "\\text{(C)}", F),
    ("8.56 = 56\\%", "0.56 = 56\\%", F), ("a**2 + b**2 + c**2 - 4R**2", "a^2 + b^2 + c^2 - 4R^2", T),
    ("f\\left(n\\right)=n", "f(n)=n", T), ("f(n)=n+1", "f(n)=n", F),
    # empty and missing answers
    ("", "0", F), ("0", "", F), (None, "5", F), ("5", None, F),
]


def test_case_table_agreement():
    assert len(CASES) >= 150
    n_false = sum(1 for *_, expected in CASES if not expected)
    assert n_false >= len(CASES) - n_false, "at least as many non-equivalent pairs as equivalent ones"
    got = grade_many([(pred, gold) for pred, gold, _ in CASES])
    wrong = [(pred, gold, expected) for (pred, gold, expected), g in zip(CASES, got) if g != expected]
    agreement = 1 - len(wrong) / len(CASES)
    print(f"\ngrader agreement: {agreement:.1%} on {len(CASES)} cases ({n_false} non-equivalent)")
    for pred, gold, expected in wrong:
        print(f"  disagrees: pred={pred!r} gold={gold!r} expected={expected}")
    assert agreement >= 0.98


def test_grade_many_matches_is_equiv():
    sample = CASES[::9]
    assert grade_many([(p, g) for p, g, _ in sample], workers=2) == [is_equiv(p, g) for p, g, _ in sample]


def test_malformed_inputs_false_and_fast():
    hostile = ["\\frac{", "\\boxed{1", "{{{{", "}}}}1{", "\\frac{1}{", "2^", "\\sqrt", "a" * 100_000,
               "1" * 100_000, "\\frac{1}{2}" * 10_000, "".join(chr(i) for i in range(256)),
               bytes(range(256)).decode("latin-1"), "\x00\x01\x02", "\ud800", None, b"\x00\xff", 3 + 4j, [], {}]
    t0 = time.time()
    for bad in hostile:
        assert is_equiv(bad, "1") is False
        assert is_equiv("1", bad) is False
        assert is_equiv(bad, bad if isinstance(bad, str) and len(bad) < 50 else "\\frac{1}{2}") in (True, False)
    assert time.time() - t0 < 5.0


def test_python_answers_are_not_executed(tmp_path):
    flag = tmp_path / "pwned"
    hostile = [f"__import__('os').system('touch {flag}')", "().__class__.__bases__[0].__subclasses__()",
               f"open('{flag}', 'w')", "sqrt(2).__class__", "[x for x in range(10**9)]", "lambda: 1"]
    for bad in hostile:
        assert is_equiv(bad, "0") is False
    assert not flag.exists()


def test_timeout_kills_and_recovers():
    t0 = time.time()
    assert is_equiv("9**9**9**9", "2", timeout=0.5) is False  # would run for hours in sympy
    assert time.time() - t0 < 5.0 + 0.5  # generous: includes starting a grader process
    assert is_equiv("\\sqrt{12}", "2\\sqrt{3}")  # the killed process is replaced


def test_thread_safety():
    sample = [(p, g, e) for p, g, e in CASES if isinstance(p, str) and isinstance(g, str)][::4]
    expected = [is_equiv(p, g) for p, g, _ in sample]
    results, errors = {}, []

    def run(k):
        try:
            results[k] = [is_equiv(p, g) for p, g, _ in sample]
        except Exception as e:  # is_equiv must never raise
            errors.append(e)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and all(results[k] == expected for k in range(8))


def test_extract_answer():
    assert extract_answer("so \\boxed{\\frac{1}{2}}.") == "\\frac{1}{2}"
    nested = "\\left\\{1,\\frac{\\sqrt{2}}{2}\\right\\}"
    assert extract_answer("\\boxed{" + nested + "}") == nested
    assert extract_answer("first \\boxed{3}, then \\boxed{4}") == "4"
    assert extract_answer("\\fbox{7}") == "7"
    assert extract_answer("$\\boxed 5$ done") == "5"
    matrix = "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}"
    assert extract_answer("\\boxed{" + matrix + "}") == matrix
    assert extract_answer("\\boxed{2} and then cut off \\boxed{\\frac{1}{") is None
    assert extract_answer("Final Answer: The final answer is $3.6e-10$. I hope it is correct.") == "3.6e-10"
    assert extract_answer("Therefore, the answer is $\\frac{1}{2}$.") == "\\frac{1}{2}"
    assert extract_answer("The answer is 3.5.") == "3.5"
    assert extract_answer("no answer here") is None
    assert extract_answer("\\boxed{}") is None
    assert extract_answer(None) is None


def test_tir_trajectory_reward():
    response = ("Let me compute the product first.\n```python\nprint(4821 * 937)\n```\n"
                "```output\n4517277\n```\nSo the answer is \\boxed{4517277}.")
    assert episode_reward(response, "4517277") == 1.0
    assert episode_reward(response, "4517278") == 0.0
    assert episode_reward("no box", "1") == 0.0 and episode_reward(None, "1") == 0.0


def test_repetition_gets_zero_reward():
    loop = "We need to check the case again because it is not yet clear. " * 25
    assert episode_reward(loop + "\\boxed{6}", "6") == 0.0
    # a printed decimal expansion is the environment's text, not degenerate decoding (digest §8)
    output = "```python\nprint(Decimal(5) / Decimal(13))\n```\n```output\n0." + "384615" * 40 + "\n```\n"
    assert episode_reward(output + "The digit is \\boxed{6}.", "6") == 1.0


def test_step_reward():
    assert step_reward(SimpleNamespace(ok=True, stdout="3\n", error=None, timed_out=False, seconds=0.1)) == 1.0
    assert step_reward(SimpleNamespace(ok=False, stdout="", error="NameError: x", timed_out=False, seconds=0.1)) == 0.0
    assert step_reward(SimpleNamespace(ok=False, stdout="", error="timeout", timed_out=True, seconds=5.0)) == 0.0

# -----------------------------------------------------------------------------
# read_problems: the one reader of problem files, ours and the shared sets' schemas as they are


def _write(path, *rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def test_read_problems_maps_every_schema(tmp_path):
    ps = read_problems(_write(tmp_path / "mix.jsonl",
                              {"id": 60, "problem": "AIME", "answer": "204"},                    # integer id
                              {"problem": "AMC", "answer": 27.0},                                # no id, float answer
                              {"question": "GSM", "answer": "48/2 = 24\n#### 1,072"},            # GSM8K
                              {"id": 7, "context": "C.", "question": "Oly", "final_answer": ["$12$", "$x$"]},
                              {"idx": 3, "problem": "Minerva", "solution": "so \\boxed{1.6}."},
                              {"unique_id": "test/a/1.json", "problem": "MATH", "answer": "\\frac12", "level": 2}))
    assert [(p["id"], p["problem"], p["answer"]) for p in ps] == [
        ("60", "AIME", "204"), ("mix-2", "AMC", "27"), ("mix-3", "GSM", "1072"), ("7", "C.\nOly", "12, x"),
        ("3", "Minerva", "1.6"), ("test/a/1.json", "MATH", "\\frac12")]
    assert ps[5]["level"] == 2  # extra fields are carried along


def test_read_problems_errors_and_skips(tmp_path, capsys):
    bad = [([{"id": "a", "problem": "p"}], ":1: missing field 'answer'"),
           ([{"id": "a", "answer": "1"}], ":1: missing field 'problem'"),
           ([{"id": "a", "problem": "p", "answer": "1"}, {"id": "a", "problem": "q", "answer": "2"}],
            ":2: duplicate id 'a'"),
           ([{"id": [1], "problem": "p", "answer": "1"}], ":1: field 'id' must be a string or an integer"),
           ([{"task_id": "HumanEval/0", "entry_point": "f", "prompt": "def f():"}], ":1: a code task"),
           (["{\"id\": 1,"], ":1: invalid JSON"), ([""], ": no problems")]
    for rows, message in bad:
        path = _write(tmp_path / "bad.jsonl", *rows)
        with pytest.raises(SystemExit) as e:
            read_problems(path)
        assert str(e.value).startswith(path + message), (rows, str(e.value))
    # an empty gold (MATH train has two `\boxed{}`) is skipped and counted, not an error
    path = _write(tmp_path / "train.jsonl", {"problem": "p", "answer": "1"}, {"problem": "q", "answer": ""})
    assert [p["id"] for p in read_problems(path)] == ["train-1"]
    assert "skipped 1 record(s) without a gold answer (line 2)" in capsys.readouterr().err
    # inference reads problems without answers
    assert (read_problems(_write(tmp_path / "q.jsonl", {"problem": "p"}), need_answer=False)[0]
            == {"id": "q-1", "problem": "p"})


@pytest.mark.skipif(not os.path.isdir(os.path.join(ROOT, "..", "shared", "data")), reason="needs ../shared/data")
@pytest.mark.parametrize("name, n, first", [("gsm8k_train", 7473, ("gsm8k_train-1", "72")),
                                            ("math_train", 7498, ("train/algebra/0.json", "0")),
                                            ("math_level3to5_train", 8521, ("math_level3to5_train-1", "118")),
                                            ("math_test_full", 5000, ("0", "2"))])
def test_read_problems_on_shared_training_sets(name, n, first):
    ps = read_problems(os.path.join(ROOT, "..", "shared", "data", name + ".jsonl"))
    assert len(ps) == n and (ps[0]["id"], ps[0]["answer"]) == first and all(p["answer"].strip() for p in ps)
