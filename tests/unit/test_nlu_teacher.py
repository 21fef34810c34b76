"""The teacher's checkpoint averaging (``nlu_teacher.accumulate_average``): a running mean of state dicts.

Needs torch (the build extra); skipped where it is not installed, as in CI.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="the build extra (torch) is not installed")

from scripts.models.nlu_teacher import LEGACY, TeacherConfig, accumulate_average  # noqa: E402


def test_the_running_mean_of_three_states_is_their_mean() -> None:
    states = [
        {"w": torch.tensor([1.0, 2.0]), "ids": torch.tensor([0, 1])},
        {"w": torch.tensor([3.0, 6.0]), "ids": torch.tensor([0, 1])},
        {"w": torch.tensor([5.0, 1.0]), "ids": torch.tensor([7, 8])},
    ]
    average = None
    for count, state in enumerate(states):
        average = accumulate_average(average, state, count)
    assert torch.allclose(average["w"], torch.tensor([3.0, 3.0]))
    assert torch.equal(average["ids"], torch.tensor([7, 8]))  # integers are taken, not averaged


def test_the_first_state_is_copied_not_aliased() -> None:
    state = {"w": torch.tensor([1.0])}
    average = accumulate_average(None, state, 0)
    state["w"] += 1
    assert average["w"].item() == 1.0


def test_a_checkpoint_from_before_averaging_resumes_only_a_run_without_it() -> None:
    """A checkpoint saved before the field existed was trained without averaging (see LEGACY)."""
    saved = {name: value for name, value in vars(TeacherConfig()).items() if name != "average_last"}
    assert {**LEGACY, **saved} == vars(TeacherConfig(average_last=0))
    assert {**LEGACY, **saved} != vars(TeacherConfig())  # the recipe averages: such a checkpoint is not resumed
