"""bench/lerobot_sac_step.py's respelling of Python 3.12-only lines for 3.11 (the LeRobot side of
`make bench-lerobot`): what it rewrites must compile and mean the same at run time."""
import importlib.util
import sys
import typing
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / 'bench' / 'lerobot_sac_step.py'

SOURCE_312 = '''"""A module using PEP 695 syntax."""
from __future__ import annotations


class Base:
    pass


type Alias = dict[str, int]


class Pipeline[TInput, TOutput](Base):
    def run(self, data: TInput) -> TOutput:
        return data


class Box[T]:
    def __init__(self, item: T):
        self.item = item


def identity[T: int](value: T) -> T:
    return value
'''


def load_bench():
    spec = importlib.util.spec_from_file_location('lerobot_sac_step', BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_respelled_module_compiles_and_keeps_its_meaning(tmp_path):
    package = tmp_path / 'pkg'
    package.mkdir()
    (package / 'modern.py').write_text(SOURCE_312)
    (package / 'plain.py').write_text('x = 1\n')
    rewritten = load_bench().make_importable_on_311(package)
    if sys.version_info >= (3, 12):  # nothing to respell where the syntax is valid
        assert rewritten == []
        return
    assert rewritten == ['modern.py']
    assert (package / 'plain.py').read_text() == 'x = 1\n'
    spec = importlib.util.spec_from_file_location('modern', package / 'modern.py')
    modern = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(modern)
    assert modern.Alias == dict[str, int]
    assert issubclass(modern.Pipeline, modern.Base)
    assert typing.Generic in modern.Pipeline.__mro__
    assert modern.Pipeline[int, str]().run(3) == 3  # subscriptable as before
    assert modern.Box[int](5).item == 5
    assert modern.identity(7) == 7
    assert modern.__doc__ == 'A module using PEP 695 syntax.'
    # a second pass finds nothing left to do
    assert load_bench().make_importable_on_311(package) == []
