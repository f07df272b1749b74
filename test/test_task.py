from hilserl.config import TaskConfig
from hilserl.task import RewardTracker


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
