"""Default eval sets: more counterbalanced blocks for narrower probe intervals, cached by name."""
from __future__ import annotations

import pytest

from data_prep.comco import vocabulary
from eval import eval_sets
from eval.callback import BiasEvalCallback


def test_blocks_render_whole_latin_squares_into_their_own_cache_folder(tmp_path, monkeypatch):
    calls = []

    def fake_write(out, **kw):
        calls.append(kw["items_per_setting"])
        (out / "manifest.jsonl").write_text("{}\n")

    monkeypatch.setattr("data_prep.comco.write_eval_set", fake_write)
    one = eval_sets.default_eval_set(tmp_path, 0, 32, progress=False)
    four = eval_sets.default_eval_set(tmp_path, 0, 32, progress=False, blocks=4)
    assert one.name == "comco-objects-seed0-px32" and four.name == "comco-objects-seed0-px32-b4d"
    assert calls == [None, 4 * len(vocabulary("objects"))]  # None = one block (the vocabulary size)
    assert eval_sets.default_eval_set(tmp_path, 0, 32, blocks=4) == four and len(calls) == 2  # cached
    assert eval_sets.eval_set_cache_problem(tmp_path, 0, 32, "cache_dir", blocks=4) is None


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_bad_block_counts_are_refused(tmp_path, bad):
    with pytest.raises(ValueError, match="blocks"):
        eval_sets.default_eval_set(tmp_path, 0, 32, blocks=bad)
    with pytest.raises(ValueError, match="eval_set_blocks must be an integer >= 1"):
        BiasEvalCallback(eval_set_blocks=bad, cache_dir=str(tmp_path))
