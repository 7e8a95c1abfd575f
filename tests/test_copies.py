"""`# Copied from` marks: every copy in the repository equals its source; the checker catches and fixes drift."""

import textwrap

import pytest

from .check_copies import REPO_ROOT, check_copies, find_copies, main, python_files

SOURCE = '''
class Source:
    def shared(self, batch_size):
        """Doubles."""
        return batch_size * 2
'''
COPY = '''
class Copy:
    @classmethod
    # Copied from diffkit.pipelines.source.Source.shared with batch_size->num_images
    def shared(self, num_images):
        """Doubles."""
        return num_images * 2
'''


def write_tree(root, copy_text):
    (root / "pipelines").mkdir()
    (root / "pipelines" / "source.py").write_text(textwrap.dedent(SOURCE))
    (root / "pipelines" / "copy.py").write_text(textwrap.dedent(copy_text))


def test_every_marked_copy_in_the_repository_equals_its_source():
    marked = [copy for file in python_files() for copy in find_copies(file)]
    # the shared methods of the three pipeline files are marked (not only a few of them)
    references = {copy.reference.rsplit(".", 1)[-1] for copy in marked}
    assert {
        "save_config",
        "_dict_from_json_file",
        "prepare_extra_step_kwargs",
        "predict_original_sample",
        "prepare_latents",
        "postprocess_image",
    } <= references
    assert check_copies(root=REPO_ROOT) == []


def test_an_equal_copy_with_replacements_passes(tmp_path):
    write_tree(tmp_path, COPY)
    assert check_copies(root=str(tmp_path)) == []


def test_replacements_may_stand_on_the_next_comment_line(tmp_path):
    continued = COPY.replace(
        "# Copied from diffkit.pipelines.source.Source.shared with batch_size->num_images",
        "# Copied from diffkit.pipelines.source.Source.shared\n    # with batch_size->num_images",
    )
    write_tree(tmp_path, continued)
    assert check_copies(root=str(tmp_path)) == []
    drifted = continued.replace("return num_images * 2", "return num_images * 3")
    (tmp_path / "pipelines" / "copy.py").write_text(textwrap.dedent(drifted))
    assert len(check_copies(root=str(tmp_path))) == 1


def test_a_drifted_copy_fails_with_the_diff_and_fix_rewrites_it(tmp_path):
    write_tree(tmp_path, COPY.replace("return num_images * 2", "return num_images * 3"))
    problems = check_copies(root=str(tmp_path))
    assert len(problems) == 1
    assert "pipelines/copy.py:4: the copy of diffkit.pipelines.source.Source.shared differs from it" in problems[0]
    assert "-        return num_images * 2\n+        return num_images * 3" in problems[0]

    assert check_copies(fix=True, root=str(tmp_path)) == problems
    assert (tmp_path / "pipelines" / "copy.py").read_text() == textwrap.dedent(COPY)
    assert check_copies(root=str(tmp_path)) == []


def test_a_mark_that_names_nothing_or_stands_nowhere_is_an_error(tmp_path):
    write_tree(tmp_path, COPY.replace("Source.shared", "Source.missing"))
    with pytest.raises(ValueError, match="defines no 'Source.missing'"):
        check_copies(root=str(tmp_path))
    bad_mark = "# Copied from diffkit.pipelines.source.Source.shared: because\nx = 1\n"
    (tmp_path / "pipelines" / "copy.py").write_text(bad_mark)
    with pytest.raises(ValueError, match="a mark must read '# Copied from MODULE.QUALNAME'"):
        check_copies(root=str(tmp_path))


def test_the_command_exits_1_on_drift_and_0_once_fixed(tmp_path, capsys):
    write_tree(tmp_path, COPY.replace("Doubles.", "Triples."))
    assert main([], root=str(tmp_path)) == 1
    out = capsys.readouterr().out
    assert "1 marked copies differ from their sources: run `python -m tests.check_copies --fix`" in out
    assert main(["--fix"], root=str(tmp_path)) == 0
    assert main([], root=str(tmp_path)) == 0


LOOP_SOURCE = """
class Source:
    def __call__(self, steps):
        total = 0
        for step in range(steps):
            # add the step, then double
            total += step
            total *= 2
            if total > 100:
                total = 100
        return total
"""
LOOP_COPY = """
class Copy:
    def __call__(self, num_steps):
        total = 1
        for step in range(num_steps):
            # Copied from pipelines.source.Source.__call__
            # lines "# add the step" to "total = 100"
            # add the step, then double
            total += step
            total *= 2
            if total > 100:
                total = 100
            total -= 1
        return total
"""


def test_a_block_of_a_loop_is_checked_and_fixed_as_a_copy(tmp_path):
    (tmp_path / "pipelines").mkdir()
    (tmp_path / "pipelines" / "source.py").write_text(textwrap.dedent(LOOP_SOURCE))
    (tmp_path / "pipelines" / "copy.py").write_text(textwrap.dedent(LOOP_COPY))
    [copy] = find_copies("pipelines/copy.py", root=str(tmp_path))
    assert (copy.start, copy.end) == (7, 12)  # from the line below the marks to the one that starts "total = 100"
    assert check_copies(root=str(tmp_path)) == []

    drifted = LOOP_COPY.replace("total *= 2", "total *= 3")
    (tmp_path / "pipelines" / "copy.py").write_text(textwrap.dedent(drifted))
    [problem] = check_copies(root=str(tmp_path))
    assert "-            total *= 2\n+            total *= 3" in problem
    check_copies(fix=True, root=str(tmp_path))
    # the fix rewrites the block only: the lines around it stay the copy's own
    assert (tmp_path / "pipelines" / "copy.py").read_text() == textwrap.dedent(LOOP_COPY)


def test_a_block_whose_ends_are_not_found_is_an_error(tmp_path):
    (tmp_path / "pipelines").mkdir()
    (tmp_path / "pipelines" / "source.py").write_text(textwrap.dedent(LOOP_SOURCE))
    (tmp_path / "pipelines" / "copy.py").write_text(textwrap.dedent(LOOP_COPY.replace('"total = 100"', '"total = 7"')))
    with pytest.raises(ValueError, match="no line below the mark starts with 'total = 7'"):
        check_copies(root=str(tmp_path))
    (tmp_path / "pipelines" / "copy.py").write_text(textwrap.dedent(LOOP_COPY.replace('"# add the step"', '"tot"')))
    with pytest.raises(ValueError, match="4 lines of the source start with 'tot'; one must"):
        check_copies(root=str(tmp_path))
