"""Synthetic textbook-style documents, deterministic from a seed.

Kinds of lesson: worked arithmetic word problems, linear equations solved step by step, small
Python exercises whose stated output the generator checks by running the code, and definitions
with a worked example. Phi-3 used an LLM to write such text; `--generator=module:function` plugs in
any callable `(rng: random.Random, index: int) -> dict` (an LLM-backed one, say) in place of the
templates here, and it must return a record {"text", "metadata"} like `template_document`.

    python -m phi3_jax.data.synthetic --out=DIR --docs=N --seed=S [--docs_per_shard=K]
    python -m phi3_jax.data.synthetic --generator=llm --topics=FILE --out=DIR --docs=N --seed=S
        (--endpoint=URL | --serve_workdir=RUN) [--max_tokens=T --temperature=X --top_p=P]

`--generator=llm` has a language model write them (phi3_jax.data.synthetic_llm); the templates
stay for the bundled demo.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import math
import random
from collections.abc import Callable, Sequence
from fractions import Fraction

from phi3_jax.data.shards import write_shards

Generator = Callable[[random.Random, int], dict]

_NAMES = ("Maya", "Omar", "Lena", "Kofi", "Aiko", "Diego", "Priya", "Tom", "Sofia", "Yusuf")
_ITEMS = (
    ("pencil", "pencils"),
    ("notebook", "notebooks"),
    ("apple", "apples"),
    ("ticket", "tickets"),
)


class ExerciseOutputError(AssertionError):
    """A generated Python exercise does not print what its text says it prints."""


def run_python(code: str) -> str:
    """What `code` prints when run in a fresh namespace."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "<exercise>", "exec"), {"__name__": "__main__"})
    return out.getvalue()


def arithmetic_lesson(rng: random.Random) -> tuple[str, str]:
    name = rng.choice(_NAMES)
    one, many = rng.choice(_ITEMS)
    price, count = rng.randint(2, 9), rng.randint(3, 12)
    total = price * count
    paid = (total // 10 + 1) * 10 + rng.choice((0, 10, 20))
    text = (
        f"# Worked problem: buying {many}\n\n"
        f"Multiplication tells us the cost of several equal items: the total is the price of one "
        f"item times the number of items. Subtraction then tells us the change.\n\n"
        f"**Problem.** A shop sells one {one} for ${price}. {name} buys {count} {many} and pays "
        f"with ${paid}. How much change does {name} get?\n\n"
        f"**Solution.** First find the total cost: {count} × ${price} = ${total}. "
        f"Then subtract it from the amount paid: ${paid} − ${total} = ${paid - total}. "
        f"So {name} gets ${paid - total} in change.\n\n"
        f"**Check.** Adding the change back to the cost gives ${total} + ${paid - total} = ${paid}, "
        f"the amount paid, so the answer is right."
    )
    return "arithmetic", text


def equation_lesson(rng: random.Random) -> tuple[str, str]:
    a, x = rng.randint(2, 9), rng.randint(-10, 10)
    b = rng.randint(-20, 20)
    c = a * x + b
    sign, mag = ("+", b) if b >= 0 else ("−", -b)
    undo = f"subtract {mag} from" if b >= 0 else f"add {mag} to"
    text = (
        f"# Solving a linear equation\n\n"
        f"A linear equation such as {a}x {sign} {mag} = {c} is solved by undoing the operations "
        f"applied to x, in reverse order, doing the same thing to both sides.\n\n"
        f"**Step 1.** {undo.capitalize()} both sides: {a}x = {c - b}.\n\n"
        f"**Step 2.** Divide both sides by {a}: x = {Fraction(c - b, a)}.\n\n"
        f"**Check.** Substituting x = {x}: {a} × {x} {sign} {mag} = {a * x} {sign} {mag} = {c}. "
        f"Both sides agree, so x = {x} is the solution."
    )
    return "algebra", text


def _fibonacci(n: int) -> list[int]:
    seq = [0, 1]
    while len(seq) < n:
        seq.append(seq[-1] + seq[-2])
    return seq[:n]


def _python_exercise(rng: random.Random) -> tuple[str, str, str]:
    """(task, code, expected output) of one exercise; the output is worked out without the code."""
    n = rng.randint(4, 12)
    words = rng.sample(["river", "stone", "cloud", "maple", "ember", "orbit", "lemon", "quartz"], 4)
    word = words[0]
    choices = {
        "squares": (
            f"Print the sum of the squares of the whole numbers from 1 to {n}.",
            f"total = 0\nfor i in range(1, {n} + 1):\n    total += i * i\nprint(total)\n",
            f"{n * (n + 1) * (2 * n + 1) // 6}\n",
        ),
        "evens": (
            f"Print the even numbers below {2 * n} as a list, using a list comprehension.",
            f"evens = [k for k in range({2 * n}) if k % 2 == 0]\nprint(evens)\n",
            f"{list(range(0, 2 * n, 2))}\n",
        ),
        "factorial": (
            f"Write a recursive function for the factorial and print {n}!.",
            "def factorial(k):\n    if k <= 1:\n        return 1\n    return k * factorial(k - 1)\n\n"
            f"print(factorial({n}))\n",
            f"{math.prod(range(1, n + 1))}\n",
        ),
        "fibonacci": (
            f"Print the first {n} Fibonacci numbers, starting from 0 and 1.",
            f"a, b = 0, 1\nfor _ in range({n}):\n    print(a, end=' ')\n    a, b = b, a + b\nprint()\n",
            "".join(f"{k} " for k in _fibonacci(n)) + "\n",
        ),
        "words": (
            f"Sort the words {words} by length, then alphabetically, and print them joined by commas.",
            f"words = {words!r}\nprint(', '.join(sorted(words, key=lambda w: (len(w), w))))\n",
            ", ".join(sorted(words, key=lambda w: (len(w), w))) + "\n",
        ),
        "counts": (
            f"Count how often each letter occurs in {word!r} and print the counts in order.",
            f"from collections import Counter\n\nfor letter, count in sorted(Counter({word!r}).items()):\n"
            f"    print(letter, count)\n",
            "".join(f"{c} {word.count(c)}\n" for c in sorted(set(word))),
        ),
    }
    return choices[rng.choice(sorted(choices))]


def python_lesson(rng: random.Random) -> tuple[str, str]:
    task, code, expected = _python_exercise(rng)
    if (actual := run_python(code)) != expected:
        raise ExerciseOutputError(f"exercise prints {actual!r}, text says {expected!r}:\n{code}")
    text = (
        f"# Python exercise\n\n"
        f"**Task.** {task}\n\n"
        f"**Solution.**\n\n```python\n{code}```\n\n"
        f"Each line does one step, so the program reads like the description of the task. "
        f"Running it prints:\n\n```\n{expected}```\n"
    )
    return "python", text


def definition_lesson(rng: random.Random) -> tuple[str, str]:
    numbers = sorted(rng.sample(range(2, 60), 5))
    mean = Fraction(sum(numbers), len(numbers))
    w, h = rng.randint(2, 15), rng.randint(2, 15)
    p = rng.choice([p for p in range(11, 98) if all(p % d for d in range(2, p))])
    entries = (
        (
            "mean",
            "The mean (or average) of a list of numbers is their sum divided by how many there are.",
            f"For {numbers}, the sum is {sum(numbers)} and there are {len(numbers)} numbers, so the "
            f"mean is {sum(numbers)} / {len(numbers)} = {float(mean):g}.",
        ),
        (
            "area of a rectangle",
            "The area of a rectangle is the number of unit squares that cover it: width times height.",
            f"A rectangle {w} cm wide and {h} cm high has an area of {w} × {h} = {w * h} square "
            f"centimetres, and a perimeter of 2 × ({w} + {h}) = {2 * (w + h)} cm.",
        ),
        (
            "prime number",
            "A prime number is a whole number greater than 1 whose only divisors are 1 and itself.",
            f"{p} is prime: none of the numbers from 2 to {int(p**0.5)} divides it evenly. "
            f"{p + 1} is not prime, because 2 divides it.",
        ),
    )
    term, definition, example = rng.choice(entries)
    text = (
        f"# Definition: {term}\n\n{definition}\n\n**Example.** {example}\n\n"
        f"**Why it matters.** Knowing the exact definition lets us check an answer instead of "
        f"guessing: every claim in the example above follows from the definition alone."
    )
    return "definition", text


_LESSONS = (arithmetic_lesson, equation_lesson, python_lesson, definition_lesson)


def template_document(rng: random.Random, index: int) -> dict:
    """One textbook-style record {"text", "metadata"} from the built-in templates."""
    kind, text = _LESSONS[index % len(_LESSONS)](rng)
    return {"text": text, "metadata": {"source": "synthetic", "kind": kind}}


def load_generator(spec: str) -> Generator:
    """`templates`, or `package.module:function` naming a generator callable."""
    if spec == "templates":
        return template_document
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def documents(n: int, seed: int, generator: Generator = template_document) -> list[dict]:
    """`n` records with ids `synthetic/<seed>/<index>`; each document has its own seeded rng."""
    records = []
    for i in range(n):
        record = generator(random.Random(f"{seed}/{i}"), i)
        records.append({"id": f"synthetic/{seed}/{i}", **record})
    return records


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m phi3_jax.data.synthetic")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--docs", type=int, required=True, help="number of documents")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--docs_per_shard", type=int, default=2000)
    parser.add_argument(
        "--generator", default="templates", help="templates, llm or module:function"
    )
    llm = parser.add_argument_group("--generator=llm")
    llm.add_argument("--topics", default=None, help="seed topics, one per line")
    from phi3_jax.data.annotate import add_endpoint_flags  # only the llm generator needs it

    add_endpoint_flags(llm)
    llm.add_argument("--max_tokens", type=int, default=1024)
    llm.add_argument("--temperature", type=float, default=0.8)
    llm.add_argument("--top_p", type=float, default=0.95)
    args = parser.parse_args(argv)
    if args.generator == "llm":
        from phi3_jax.data import synthetic_llm  # only the llm generator needs it

        if not args.topics:
            raise SystemExit("error: --generator=llm needs --topics=FILE")
        try:
            summary = synthetic_llm.generate_documents(
                args.topics,
                args.out,
                docs=args.docs,
                seed=args.seed,
                endpoint=args.endpoint,
                serve_workdir=args.serve_workdir,
                model=args.model,
                max_tokens=args.max_tokens,
                temperature=args.temperature,
                top_p=args.top_p,
            )
        except (FileNotFoundError, ValueError) as e:
            raise SystemExit(f"error: {e}") from e
        print(f"kept {summary['kept']} of {summary['generated']}, dropped {summary['dropped']}")
        return
    records = documents(args.docs, args.seed, load_generator(args.generator))
    paths = write_shards(records, args.out, args.docs_per_shard)
    print(f"wrote {len(records)} documents in {len(paths)} shards to {args.out}")


if __name__ == "__main__":
    main()
