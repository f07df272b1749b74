import pytest

from hilserl.configuration.config import TaskConfig
from hilserl.learning.task import RewardTracker


def test_time_limit_truncates_without_terminating():
    tracker = RewardTracker(TaskConfig(episode_time_s=0.5, control_rate_hz=10))
    results = [tracker.step(False) for _ in range(5)]
    assert [r[2] for r in results] == [False] * 4 + [True]
    assert not any(r[1] for r in results)
    assert tracker.episode_return == -0.05 * 5


def test_success_terminates_after_consecutive_frames():
    tracker = RewardTracker(TaskConfig(success_frames_to_end=3))
    outcomes = [tracker.step(s) for s in (True, True, False, True, True, True)]
    assert [o[1] for o in outcomes] == [False] * 5 + [True]
    assert outcomes[0][0] == 10.0 and outcomes[2][0] == -0.05
    assert tracker.succeeded


def test_success_before_min_steps_is_ignored():
    tracker = RewardTracker(TaskConfig(min_steps_before_success=2))
    assert tracker.step(True)[1:] == (False, False)
    assert tracker.step(True)[1:] == (False, False)
    assert tracker.step(True)[1] is True


def test_seed_success_rule_from_train_yaml():
    """The seed's rule: no success before step 30, then 10 consecutive positives end it."""
    from pathlib import Path

    from hilserl.configuration.config import load_train_config
    cfg = load_train_config(Path(__file__).resolve().parents[1] / 'config' / 'train.yaml')
    tracker = RewardTracker(cfg.task)
    outcomes = [tracker.step(True) for _ in range(40)]
    assert [o[1] for o in outcomes].index(True) == 39
    assert [o[0] for o in outcomes[:30]] == [-0.05] * 30
    assert [o[0] for o in outcomes[30:]] == [10.0] * 10


def test_the_success_key_is_final_whatever_the_detector_rule():
    """A person's success key (success_source key, or over a classifier) ends the episode with
    the success reward at once, even before min_steps_before_success or a streak of frames."""
    tracker = RewardTracker(TaskConfig(min_steps_before_success=30, success_frames_to_end=10))
    assert tracker.step(False) == (-0.05, False, False)
    assert tracker.step(False, key_success=True) == (10.0, True, False)
    assert tracker.succeeded


def test_reset_starts_a_fresh_episode():
    """`succeeded` is False until an episode terminates, and reset() clears the step count, the
    streak, the return and `succeeded` (a new episode is judged on its own frames)."""
    tracker = RewardTracker(TaskConfig(episode_time_s=0.3, control_rate_hz=10,
                                       success_frames_to_end=2))
    assert tracker.succeeded is False
    assert tracker.step(True) == (10.0, False, False) and tracker.succeeded is False
    assert tracker.step(True) == (10.0, True, False) and tracker.succeeded is True
    tracker.reset()
    assert (tracker.steps, tracker.success_streak.count, tracker.episode_return,
            tracker.succeeded) == (0, 0, 0.0, False)
    assert tracker.step(True) == (10.0, False, False)  # the streak starts again
    assert tracker.step(False) == (-0.05, False, False)
    assert tracker.step(False) == (-0.05, False, True)  # 3 steps: the time limit
    assert tracker.succeeded is False and tracker.episode_return == 10.0 - 0.05 - 0.05


def test_succeeded_stays_set_once_the_episode_terminated():
    tracker = RewardTracker(TaskConfig())
    tracker.step(False, key_success=True)
    assert tracker.succeeded is True
    tracker.step(False)  # a frame after the end does not undo the success
    assert tracker.succeeded is True


def test_a_streak_completes_after_needed_consecutive_frames_and_breaks_on_one_miss():
    from hilserl.learning.task import Streak
    streak = Streak(3)
    assert [streak.update(h) for h in (True, True, False, True, True, True, True)] == \
        [False, False, False, False, False, True, True]
    streak.reset()
    assert streak.count == 0 and not streak.update(True)
    assert Streak(1).update(True) and not Streak(1).update(False)
    with pytest.raises(ValueError, match='at least 1'):
        Streak(0)
