"""Check that code marked `# Copied from MODULE.QUALNAME` still equals its source, as diffusers' utils/check_copies.py.

Each pipeline file has to load on its own as Hub remote code, so it cannot import another pipeline file: shared
methods are repeated and marked. A mark sits on the line above the copied `def` or `class` (below its decorators):

    # Copied from diffkit.pipelines.pipeline_unconditional_image.UnconditionalImagePipeline.prepare_latents
    # Copied from diffkit.pipelines.pipeline_unconditional_image.UnconditionalImagePipeline.check_inputs with a->b

`MODULE` is a dotted path from the repository root, `QUALNAME` a function, class or `Class.method`; the optional
`with A->B, C->D` replacements are applied to the source before comparing. Where they would make the line too long,
they go on the next comment line, which starts with `# with`:

    # Copied from pipelines.pipeline_class_conditional_inpaint.ClassConditionalInpaintPipeline.check_image_inputs
    # with class_labels->prompt, labels->prompts, label->prompt

A part of a function is copied as a block, so that a denoising loop stays written out in each `__call__`: a
`# lines "FIRST" to "LAST"` line after the mark names the source's lines from the first that starts with FIRST to
the next that starts with LAST (stripped of indentation), and the copy runs from the line below the comments to its
own next line that starts with LAST (after the replacements):

    # Copied from pipelines.pipeline_class_conditional_image.ClassConditionalImagePipeline.__call__
    # lines "step_output =" to "latents = callback_outputs"

Run from the repository root:

    python -m tests.check_copies          # lists every copy that differs from its source, with a diff; exit code 1
    python -m tests.check_copies --fix    # rewrites those copies from their sources
"""

import argparse
import ast
import difflib
import os
import re
import sys
import textwrap
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The folders whose Python files may hold marked copies.
CHECKED_FOLDERS = ("pipelines", "training", "model_cards", "diffkit", "benchmarks")
MARK = "# Copied from "
COPIED_FROM = re.compile(r"^\s*# Copied from (?P<reference>[\w.]+)(?:\s+with\s+(?P<replacements>\S.*))?$")
REPLACEMENTS_LINE = re.compile(r"^\s*# with (?P<replacements>\S.*)$")
BLOCK_LINE = re.compile(r'^\s*# lines "(?P<first>.+?)" to "(?P<last>.+)"$')


@dataclass
class Copy:
    file: str  # path relative to the repository root
    mark_line: int  # 1-based line of the `# Copied from` comment
    reference: str
    replacements: List[Tuple[str, str]]
    start: int  # 0-based first line of the copied definition (its `def` / `class` line) or block
    end: int  # 0-based line after its last line
    block: Optional[Tuple[str, str]] = None  # a block's first and last lines' beginnings, in the source


def parse_replacements(text: Optional[str], where: str) -> List[Tuple[str, str]]:
    if not text:
        return []
    pairs = []
    for item in text.split(","):
        if "->" not in item:
            raise ValueError(f"{where}: the replacement {item.strip()!r} is not of the form Old->New.")
        old, new = item.split("->", 1)
        pairs.append((old.strip(), new.strip()))
    return pairs


def definitions(tree: ast.AST) -> Dict[str, ast.AST]:
    """Every function and class of a module by qualified name (`f`, `C`, `C.method`)."""
    found = {}

    def visit(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                found[name] = child
                if isinstance(child, ast.ClassDef):
                    visit(child, f"{name}.")

    visit(tree, "")
    return found


def definition_lines(node: ast.AST) -> Tuple[int, int]:
    """0-based [start, end) of a definition: from its `def`/`class` line to its last line (decorators excluded)."""
    return node.lineno - 1, node.end_lineno


def find_copies(relative_file: str, root: str = REPO_ROOT) -> List[Copy]:
    with open(os.path.join(root, relative_file), encoding="utf-8") as f:
        source = f.read()
    lines = source.splitlines(keepends=True)
    by_start = {node.lineno - 1: node for node in definitions(ast.parse(source)).values()}
    copies = []
    for index, line in enumerate(lines):
        if not line.lstrip().startswith(MARK):
            continue
        where = f"{relative_file}:{index + 1}"
        match = COPIED_FROM.match(line.rstrip("\n"))
        if not match:
            raise ValueError(
                f"{where}: a mark must read '# Copied from MODULE.QUALNAME' (optionally followed by 'with Old->New'), "
                f"alone on its line: {line.strip()!r}."
            )
        following = index + 1
        block = following < len(lines) and BLOCK_LINE.match(lines[following].rstrip("\n"))
        if block:
            following += 1
        replacements_text = match.group("replacements")
        continued = following < len(lines) and REPLACEMENTS_LINE.match(lines[following].rstrip("\n"))
        if continued and replacements_text is None:
            replacements_text = continued.group("replacements")
            following += 1
        replacements = parse_replacements(replacements_text, where)
        reference = match.group("reference")
        if block:
            last = replace_all(block.group("last"), replacements)
            end = next((i + 1 for i in range(following, len(lines)) if lines[i].strip().startswith(last)), None)
            if end is None:
                raise ValueError(f"{where}: no line below the mark starts with {last!r}, the block's last line.")
            copies.append(Copy(relative_file, index + 1, reference, replacements, following, end, block.groups()))
            continue
        while following < len(lines) and lines[following].lstrip().startswith("@"):
            following += 1
        if following not in by_start:
            raise ValueError(f"{where}: '# Copied from' must stand right above a `def` or `class`.")
        start, end = definition_lines(by_start[following])
        copies.append(Copy(relative_file, index + 1, reference, replacements, start, end))
    return copies


def replace_all(text: str, replacements: List[Tuple[str, str]]) -> str:
    for old, new in replacements:
        text = text.replace(old, new)
    return text


def block_of(text: str, block: Tuple[str, str], where: str) -> str:
    """The lines of `text` from the first that starts with `block[0]` (indentation aside) to the next that starts
    with `block[1]`."""
    lines = text.splitlines(keepends=True)
    first, last = block
    starts = [i for i, line in enumerate(lines) if line.strip().startswith(first)]
    if len(starts) != 1:
        raise ValueError(f"{where}: {len(starts)} lines of the source start with {first!r}; one must.")
    end = next((i + 1 for i in range(starts[0], len(lines)) if lines[i].strip().startswith(last)), None)
    if end is None:
        raise ValueError(f"{where}: no line of the source after {first!r} starts with {last!r}.")
    return textwrap.dedent("".join(lines[starts[0] : end]))


def source_text(reference: str, where: str, root: str = REPO_ROOT) -> str:
    """The dedented text of the definition that `reference` (MODULE.QUALNAME) names."""
    parts = reference.split(".")
    if parts[0] == "diffkit":  # the installed name of the repository's top-level folders
        parts = parts[1:]
    for split in range(len(parts) - 1, 0, -1):
        module_file = os.path.join(root, *parts[:split]) + ".py"
        if os.path.isfile(module_file):
            qualname = ".".join(parts[split:])
            break
    else:
        raise ValueError(f"{where}: no module of {reference!r} is a file in the repository.")
    with open(module_file, encoding="utf-8") as f:
        source = f.read()
    node = definitions(ast.parse(source)).get(qualname)
    if node is None:
        raise ValueError(f"{where}: {os.path.relpath(module_file, root)} defines no {qualname!r}.")
    lines = source.splitlines(keepends=True)
    start, end = definition_lines(node)
    return textwrap.dedent("".join(lines[start:end]))


def expected_text(copy: Copy, indent: str, root: str = REPO_ROOT) -> str:
    where = f"{copy.file}:{copy.mark_line}"
    text = source_text(copy.reference, where, root)
    if copy.block:
        text = block_of(text, copy.block, where)
    return textwrap.indent(replace_all(text, copy.replacements), indent, lambda line: line.strip() != "")


def check_file(relative_file: str, fix: bool, root: str = REPO_ROOT) -> List[str]:
    """The diffs of the copies in `relative_file` that differ from their sources; with `fix`, rewrite them."""
    path = os.path.join(root, relative_file)
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines(keepends=True)
    problems = []
    # From the bottom up, so that a fixed copy of another length does not move the ones above it.
    for copy in reversed(find_copies(relative_file, root)):
        actual = "".join(lines[copy.start : copy.end])
        indent = re.match(r"\s*", lines[copy.start]).group(0)
        expected = expected_text(copy, indent, root)
        if actual == expected:
            continue
        diff = "".join(
            difflib.unified_diff(
                expected.splitlines(keepends=True),
                actual.splitlines(keepends=True),
                fromfile=copy.reference,
                tofile=f"{relative_file}:{copy.start + 1}",
            )
        )
        problems.append(f"{relative_file}:{copy.mark_line}: the copy of {copy.reference} differs from it:\n{diff}")
        if fix:
            lines[copy.start : copy.end] = expected.splitlines(keepends=True)
    if fix and problems:
        with open(path, "w", encoding="utf-8") as f:
            f.write("".join(lines))
    return list(reversed(problems))


def python_files(root: str = REPO_ROOT) -> List[str]:
    files = []
    for folder in CHECKED_FOLDERS:
        for directory, _, names in os.walk(os.path.join(root, folder)):
            files += [os.path.relpath(os.path.join(directory, n), root) for n in names if n.endswith(".py")]
    return sorted(files)


def check_copies(fix: bool = False, root: str = REPO_ROOT) -> List[str]:
    """The diffs of every marked copy under `root` that differs from its source; with `fix`, rewrite them."""
    problems = []
    for relative_file in python_files(root):
        problems += check_file(relative_file, fix, root)
    return problems


def main(argv=None, root: str = REPO_ROOT) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fix", action="store_true", help="Rewrite every copy that differs from its source.")
    args = parser.parse_args(argv)
    problems = check_copies(fix=args.fix, root=root)
    for problem in problems:
        print(problem)
    if problems and not args.fix:
        print(f"{len(problems)} marked copies differ from their sources: run `python -m tests.check_copies --fix`.")
        return 1
    if problems:
        print(f"Rewrote {len(problems)} marked copies from their sources.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
